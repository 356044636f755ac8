//! CPU hotplug: a CPU leaves one instance and really runs in another.
//!
//! Instance 0 brokers every move, and every hand-off is two-phase in the shared ownership
//! table (`begin_transfer` with a generation, `complete_transfer` by the receiver, or
//! `abort_transfer` back to the giver):
//!
//! ```text
//!  instance 0 (broker)              giver g                         receiver r
//!  CPU_REMOVE{apic} ──────────────► checks: sender is 0, g owns it,
//!                                   not g's first (or last) CPU
//!                                   parks it (cli; hlt), republishes
//!                                   its CPU list, begin_transfer
//!                                   (cpu, g -> 0) = G1
//!           ◄──────────────────────── Ok {apic, generation G1}
//!  complete_transfer(cpu, 0, G1): owned by 0, parked
//!  begin_transfer(cpu, 0 -> r) = G2
//!  CPU_ADD{apic, G2, Commit} ──────────────────────────────────────► complete_transfer(cpu, r, G2)
//!                                                                    INIT-SIPI-SIPI into r's own
//!                                                                    trampoline and page tables;
//!                                                                    the CPU joins r, republishes
//!           ◄────────────────────────────────────────────────────────── Ok
//! ```
//!
//! If the receiver refuses or does not answer in time, instance 0 aborts its transfer: the
//! CPU stays with instance 0, parked (documented, recoverable: a later move can give it to
//! anyone). If the giver refuses, nothing has changed.

use mk_dispatch::Reply;
use mk_shared::{Owner, Resource};
use mk_wire::{CpuFlags, CpuPayload, HandoffPhase, Kind, Message, Payload, Status};

use super::moves::{self, MoveError};
use crate::cpus::smp;
use crate::instance::InstanceId;
use crate::messaging;
use crate::shared::{records, region};

/// How long the giver waits for the CPU to park.
const PARK_TIMEOUT_MS: u64 = 1000;
/// How long the broker waits for each step's reply.
const STEP_TIMEOUT_MS: u64 = 5000;

/// Report word in which a CPU that joined an instance writes its APIC ID (low 32 bits) and
/// the instance's count of joins so far (high 32 bits): tests read it to see that the CPU runs
/// the receiver's code.
pub const REPORT_JOINED: usize = 5;
static JOINS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn payload(apic: u32, generation: u32, phase: HandoffPhase) -> Payload {
    Payload::Cpu(CpuPayload {
        apic_id: apic,
        numa_node: crate::platform::acpi::node_of_cpu(apic),
        flags: CpuFlags::empty(),
        generation,
        phase,
    })
}

/// CPU_REMOVE, in the giver: park the CPU and hand it to instance 0.
pub fn handle_remove(m: &Message) -> Option<Reply> {
    let Payload::Cpu(p) = m.payload else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    Some(match remove(m.sender, p.apic_id) {
        Ok(g) => Reply::ok(payload(p.apic_id, g, HandoffPhase::Prepare)),
        Err(status) => Reply::error(status),
    })
}

fn remove(sender: InstanceId, apic: u32) -> Result<u32, Status> {
    if !sender.is_supervisor() {
        return Err(Status::Refused);
    }
    let me = crate::instance::id();
    let r = region::get().ok_or(Status::InternalError)?;
    match r.owner(Resource::Cpu(apic)) {
        Ok(Owner::Owned(o)) if o == me => {}
        Ok(_) => return Err(Status::NotOwner),
        Err(_) => return Err(Status::NoSuchResource),
    }
    match smp::slot_of(apic) {
        None => return Err(Status::InvalidArgument),
        // The first CPU serves the mailboxes; it is also the last CPU of a one-CPU instance.
        Some(0) => return Err(Status::Refused),
        Some(_) => {}
    }
    if let Err(e) = smp::park_cpu(apic, PARK_TIMEOUT_MS) {
        crate::warn!("CPU {apic} did not leave: {e}");
        return Err(Status::Timeout);
    }
    super::entry::publish();
    let g = r
        .begin_transfer(Resource::Cpu(apic), me, InstanceId::ZERO)
        .map_err(|e| {
            crate::error!("CPU {apic} parked but not handed over: {e:?}");
            Status::InternalError
        })?;
    crate::info!("CPU {apic} left instance {me} (parked), handed to instance 0");
    Ok(g)
}

/// CPU_ADD, in the receiver: take the CPU under the broker's generation and start it here.
pub fn handle_add(m: &Message) -> Option<Reply> {
    let Payload::Cpu(p) = m.payload else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    Some(match add(m.sender, p.apic_id, p.generation) {
        Ok(()) => Reply::ok(payload(p.apic_id, p.generation, HandoffPhase::Commit)),
        Err(status) => Reply::error(status),
    })
}

fn add(sender: InstanceId, apic: u32, generation: u32) -> Result<(), Status> {
    if !sender.is_supervisor() {
        return Err(Status::Refused);
    }
    let me = crate::instance::id();
    let r = region::get().ok_or(Status::InternalError)?;
    match r.owner(Resource::Cpu(apic)) {
        Ok(Owner::InTransit {
            to, generation: g, ..
        }) if to == me && g == generation => {}
        Ok(Owner::InTransit { to, .. }) if to == me => return Err(Status::StaleGeneration),
        Ok(_) => return Err(Status::NotOwner),
        Err(_) => return Err(Status::NoSuchResource),
    }
    r.complete_transfer(Resource::Cpu(apic), me, generation)
        .map_err(|_| Status::StaleGeneration)?;
    join(apic)
}

/// Starts CPU `apic` (owned by this instance, parked) here.
fn join(apic: u32) -> Result<(), Status> {
    let slot = smp::start_joining_cpu(apic).map_err(|e| {
        crate::error!("CPU {apic} did not start in this instance: {e}");
        Status::InternalError
    })?;
    super::entry::publish();
    crate::info!(
        "CPU {apic} joined instance {} in slot {slot}",
        crate::instance::id()
    );
    Ok(())
}

/// Instance 0: moves CPU `apic` from instance `from` to instance `to` (either may be 0).
/// Instance 0's record must give the CPU to `from` and the owner word must agree; the giver's
/// hand-back must show in the word with the generation it reports (both checked, never taken
/// on trust); the record follows every step.
pub fn move_cpu(apic: u32, from: InstanceId, to: InstanceId) -> Result<(), MoveError> {
    let r = region::get().ok_or(MoveError::Refused(Status::InternalError))?;
    let cpu = Resource::Cpu(apic);
    if from == to {
        return Err(MoveError::Refused(Status::InvalidArgument));
    }
    moves::check_giver(cpu, from)?;
    // Step 1: the giver parks it and hands it to instance 0.
    if from.is_supervisor() {
        smp::park_cpu(apic, PARK_TIMEOUT_MS).map_err(|_| MoveError::Refused(Status::Refused))?;
        super::entry::publish();
    } else {
        let reply = messaging::call(
            from,
            Kind::CpuRemove,
            payload(apic, 0, HandoffPhase::Prepare),
            STEP_TIMEOUT_MS,
        )
        .map_err(MoveError::Call)?;
        if reply.status != Status::Ok {
            return Err(MoveError::Refused(reply.status));
        }
        let Payload::Cpu(p) = reply.payload else {
            return Err(MoveError::Refused(Status::InternalError));
        };
        moves::check_handed_back(r, cpu, from, p.generation)?;
        r.complete_transfer(cpu, InstanceId::ZERO, p.generation)
            .map_err(MoveError::Table)?;
        records::with(|l| l.give(cpu, InstanceId::ZERO));
    }
    // Step 2: instance 0 hands it to the receiver, which starts it.
    if to.is_supervisor() {
        return join(apic).map_err(MoveError::ReceiverRefused);
    }
    match records::with(|l| l.start_handoff(cpu, to)) {
        Some(Ok(())) => {}
        Some(Err(refusal)) => return Err(MoveError::Record(refusal)),
        None => return Err(MoveError::Refused(Status::InternalError)),
    }
    let g = match r.begin_transfer(cpu, InstanceId::ZERO, to) {
        Ok(g) => g,
        Err(e) => {
            moves::settle_handoff(r, cpu, to, false);
            return Err(MoveError::Table(e));
        }
    };
    let outcome = messaging::call(
        to,
        Kind::CpuAdd,
        payload(apic, g, HandoffPhase::Commit),
        STEP_TIMEOUT_MS,
    );
    let result = super::moves::receiver_answer(outcome);
    if result.is_err() {
        // Roll back if the receiver did not take it: the CPU stays parked with instance 0.
        let _ = r.abort_transfer(cpu, InstanceId::ZERO, g);
    }
    moves::settle_handoff(r, cpu, to, result.is_ok());
    result
}

/// Called on a CPU that just joined its instance (from the AP entry): leaves its APIC ID in
/// the instance's report word, written by code running on that CPU in that instance.
pub fn joined(apic: u32) {
    let joins = JOINS.fetch_add(1, core::sync::atomic::Ordering::SeqCst) + 1;
    region::report(REPORT_JOINED, u64::from(apic) | (u64::from(joins) << 32));
}
