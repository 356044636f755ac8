//! Memory hotplug: a physical range leaves one instance's frame allocator and joins another's.
//!
//! Ranges move in whole 2 MiB chunks, the grain of the shared ownership table. Instance 0
//! brokers every move, two-phase per chunk, like CPU moves (`cpu.rs`):
//!
//! ```text
//!  instance 0 (broker)            giver g                           receiver r
//!  MEM_REMOVE{start, pages} ────► sender 0? 2 MiB aligned? every
//!                                 chunk Owned(g)? every frame free?
//!                                 remove_range from the allocator,
//!                                 unmap from the physical map,
//!                                 begin_transfer(chunk, g -> 0) each
//!          ◄──────────────────────── Ok
//!  complete_transfer(chunk, 0) each; begin_transfer(chunk, 0 -> r) each
//!  MEM_ADD{start, pages} ───────────────────────────────────────────► every chunk in transit to r?
//!                                                                    inside r's frame bitmap?
//!                                                                    map it, add_range, complete
//!          ◄──────────────────────────────────────────────────────────── Ok
//! ```
//!
//! A giver that refuses changes nothing. A receiver that refuses or does not answer leaves the
//! range with instance 0, unmapped and unused (documented, recoverable: a later move can give
//! it to anyone). Known limits: the giver flushes only its own TLB when it unmaps (the memory
//! must not be in use on its other CPUs, which in this kernel only idle), and a receiver can
//! take only ranges its frame bitmap covers (below the top of its own memory at boot).

use mk_dispatch::Reply;
use mk_shared::{MEM_CHUNK_SIZE, Owner, Resource};
use mk_wire::{HandoffPhase, Kind, MemPayload, MemType, Message, Payload, Status};

use super::moves::{self, MoveError};
use crate::instance::InstanceId;
use crate::memory::{frames, paging};
use crate::messaging;
use crate::shared::{records, region};

/// How long the broker waits for each step's reply.
const STEP_TIMEOUT_MS: u64 = 10_000;

fn payload(start: u64, len: u64, phase: HandoffPhase) -> Payload {
    Payload::Mem(MemPayload {
        start_frame: start / 4096,
        page_count: len / 4096,
        numa_node: crate::platform::acpi::node_of_address(start),
        mem_type: MemType::Normal,
        generation: 0,
        phase,
    })
}

/// The chunks of `[start, start + len)`, if it is a non-empty, 2 MiB aligned range.
fn chunks(start: u64, len: u64) -> Result<impl Iterator<Item = Resource>, Status> {
    if len == 0 || !start.is_multiple_of(MEM_CHUNK_SIZE) || !len.is_multiple_of(MEM_CHUNK_SIZE) {
        return Err(Status::InvalidArgument);
    }
    let end = start.checked_add(len).ok_or(Status::InvalidArgument)?;
    Ok((start..end)
        .step_by(MEM_CHUNK_SIZE as usize)
        .map(Resource::memory_at))
}

fn range_of(p: &Payload) -> Option<(u64, u64)> {
    match p {
        Payload::Mem(m) => Some((
            m.start_frame.checked_mul(4096)?,
            m.page_count.checked_mul(4096)?,
        )),
        _ => None,
    }
}

/// MEM_REMOVE, in the giver.
pub fn handle_remove(m: &Message) -> Option<Reply> {
    let Some((start, len)) = range_of(&m.payload) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    if !m.sender.is_supervisor() {
        return Some(Reply::error(Status::Refused));
    }
    Some(match remove(start, len) {
        Ok(()) => Reply::ok(payload(start, len, HandoffPhase::Prepare)),
        Err(s) => Reply::error(s),
    })
}

/// Takes `[start, start + len)` out of this instance and hands its chunks to instance 0.
fn remove(start: u64, len: u64) -> Result<(), Status> {
    let me = crate::instance::id();
    let r = region::get().ok_or(Status::InternalError)?;
    for c in chunks(start, len)? {
        match r.owner(c) {
            Ok(Owner::Owned(o)) if o == me => {}
            Ok(_) => return Err(Status::NotOwner),
            Err(_) => return Err(Status::NoSuchResource),
        }
    }
    // The table says this instance owns every chunk: frames its allocator does not hold are
    // what it was built with (kernel image, boot page tables, stack), in use like allocated
    // ones. (A large partition's boot page tables reach past its first 2 MiB chunk.)
    frames::with(|a| a.remove_range(start / 4096, len / 4096)).map_err(|e| match e {
        mk_frames::FrameError::InUse | mk_frames::FrameError::NotOwned => Status::Busy,
        _ => Status::NotOwner,
    })?;
    if let Err(e) = paging::unmap_phys(start, start + len) {
        crate::error!("unmapping {start:#x}+{len:#x}: {e}");
        let _ = frames::with(|a| a.add_range(start / 4096, len / 4096));
        return Err(Status::InternalError);
    }
    let mut begun = alloc::vec::Vec::new();
    for c in chunks(start, len)? {
        match r.begin_transfer(c, me, InstanceId::ZERO) {
            Ok(g) => begun.push((c, g)),
            Err(e) => {
                // Put everything back as it was.
                for (c, g) in begun {
                    let _ = r.abort_transfer(c, me, g);
                }
                let _ = paging::map_phys(start, start + len);
                let _ = frames::with(|a| a.add_range(start / 4096, len / 4096));
                crate::error!("handing {c:?} over: {e:?}");
                return Err(Status::InternalError);
            }
        }
    }
    super::entry::publish();
    crate::info!(
        "memory {start:#x}..{:#x} ({} MiB) left instance {me}, handed to instance 0",
        start + len,
        len >> 20
    );
    Ok(())
}

/// MEM_ADD, in the receiver.
pub fn handle_add(m: &Message) -> Option<Reply> {
    let Some((start, len)) = range_of(&m.payload) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    if !m.sender.is_supervisor() {
        return Some(Reply::error(Status::Refused));
    }
    Some(match add(start, len) {
        Ok(()) => Reply::ok(payload(start, len, HandoffPhase::Commit)),
        Err(s) => Reply::error(s),
    })
}

/// Takes `[start, start + len)`, in transit from instance 0 to this one, into use.
fn add(start: u64, len: u64) -> Result<(), Status> {
    let me = crate::instance::id();
    let r = region::get().ok_or(Status::InternalError)?;
    let mut gens = alloc::vec::Vec::new();
    for c in chunks(start, len)? {
        match r.owner(c) {
            Ok(Owner::InTransit { to, generation, .. }) if to == me => gens.push((c, generation)),
            Ok(_) => return Err(Status::NotOwner),
            Err(_) => return Err(Status::NoSuchResource),
        }
    }
    let covered = frames::with(|a| {
        let cov = a.coverage();
        start / 4096 >= cov.start && (start + len) / 4096 <= cov.start + cov.count
    });
    if !covered {
        return Err(Status::Refused);
    }
    paging::map_phys(start, start + len).map_err(|e| {
        crate::error!("mapping added memory {start:#x}+{len:#x}: {e}");
        Status::InternalError
    })?;
    frames::with(|a| a.add_range(start / 4096, len / 4096)).map_err(|_| Status::InternalError)?;
    for (c, g) in gens {
        r.complete_transfer(c, me, g)
            .map_err(|_| Status::StaleGeneration)?;
    }
    super::entry::publish();
    crate::info!(
        "memory {start:#x}..{:#x} ({} MiB) joined instance {me}",
        start + len,
        len >> 20
    );
    Ok(())
}

/// Instance 0: moves `[start, start + len)` from instance `from` to instance `to` (both other
/// than 0). Instance 0's record must give every chunk to `from` and every owner word must
/// agree, before anything is asked of `from` and again when it has handed them back; the
/// record follows every step.
pub fn move_memory(
    start: u64,
    len: u64,
    from: InstanceId,
    to: InstanceId,
) -> Result<(), MoveError> {
    if from.is_supervisor() || to.is_supervisor() || from == to {
        return Err(MoveError::Refused(Status::InvalidArgument));
    }
    let list: alloc::vec::Vec<Resource> = chunks(start, len).map_err(MoveError::Refused)?.collect();
    let r = region::get().ok_or(MoveError::Refused(Status::InternalError))?;
    for &c in &list {
        moves::check_giver(c, from)?;
    }
    let reply = messaging::call(
        from,
        Kind::MemRemove,
        payload(start, len, HandoffPhase::Prepare),
        STEP_TIMEOUT_MS,
    )
    .map_err(MoveError::Call)?;
    if reply.status != Status::Ok {
        return Err(MoveError::Refused(reply.status));
    }
    for &c in &list {
        match r.owner(c) {
            Ok(Owner::InTransit {
                from: f,
                to,
                generation,
            }) if f == from && to.is_supervisor() => {
                moves::check_handed_back(r, c, from, generation)?;
                r.complete_transfer(c, InstanceId::ZERO, generation)
                    .map_err(MoveError::Table)?;
                records::with(|l| l.give(c, InstanceId::ZERO));
            }
            Ok(found) => {
                return Err(MoveError::Table(mk_shared::Error::WrongOwner { found }));
            }
            Err(e) => return Err(MoveError::Table(e)),
        }
    }
    let mut begun = alloc::vec::Vec::new();
    let mut failed = None;
    for &c in &list {
        if let Some(Err(refusal)) = records::with(|l| l.start_handoff(c, to)) {
            failed = Some(MoveError::Record(refusal));
            break;
        }
        match r.begin_transfer(c, InstanceId::ZERO, to) {
            Ok(g) => begun.push((c, g)),
            Err(e) => {
                moves::settle_handoff(r, c, to, false);
                failed = Some(MoveError::Table(e));
                break;
            }
        }
    }
    let result = match failed {
        Some(e) => Err(e),
        None => super::moves::receiver_answer(messaging::call(
            to,
            Kind::MemAdd,
            payload(start, len, HandoffPhase::Commit),
            STEP_TIMEOUT_MS,
        )),
    };
    for (c, g) in begun {
        if result.is_err() {
            // Roll back: the range stays with instance 0 (unmapped), free for a later move.
            let _ = r.abort_transfer(c, InstanceId::ZERO, g);
        }
        moves::settle_handoff(r, c, to, result.is_ok());
    }
    result
}
