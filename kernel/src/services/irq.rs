//! IRQ forwarding: every IO APIC line has one owning instance (shared ownership table), which
//! has the line routed to its first CPU and handles its interrupts.
//!
//! | request | sent by → to | what happens |
//! |---|---|---|
//! | IRQ_FORWARD (one-way) | owner → subscriber | "line N fired": the owner forwards each interrupt of a line to the instances it forwards that line to (`forward`); the subscriber counts it |
//! | IRQ_BALANCE (call) | instance 0 → new owner, or owner → instance 0 | two-phase: the owner `begin_transfer`s the line to the target; the target routes the line's redirection entry to its own first CPU, installs its handler and `complete_transfer`s; a refusal makes the owner abort (the line stays routed to it). Lines move only through instance 0, which keeps the record of who holds each (`shared::records`): another instance takes a line only from 0, and 0 takes one back only from the holder its record names |
//! | IRQ_MASK / IRQ_UNMASK (call) | instance 0 → owner | the owner masks or unmasks the line; refused from anyone else |
//!
//! Refused with a status: a request from an instance without the authority (`Refused`: a
//! mask or unmask not from instance 0, a balance to an instance other than 0 not from
//! instance 0), a line that does not exist (`NoSuchResource`), a request to an
//! instance that does not own the line, or a balance the sender has not started
//! (`NotOwner`). The IO APIC is shared hardware: every access to it holds the cross-instance
//! IO APIC lock (`arch::x86::ioapic`); a wait for it that times out (another instance holds it
//! too long or corrupted it) fails the operation with `Busy`, logged and counted in the lock.
//!
//! Interrupt handlers only count (and acknowledge the device); the forwarding messages go out
//! after the next drain of the mailboxes, in thread context.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use mk_dispatch::Reply;
use mk_shared::{MAX_IRQS, Owner, Resource};
use mk_wire::{IoIrqPayload, IrqFlags, Kind, Message, Payload, Status};

use crate::arch::vectors;
use crate::arch::{cpu, interrupts, ioapic};
use crate::instance::InstanceId;
use crate::messaging;
use crate::shared::{records, region};

/// Per line (owner side): bit k set = forward this line's interrupts to instance k.
static FORWARD_TO: [AtomicU32; MAX_IRQS] = [const { AtomicU32::new(0) }; MAX_IRQS];
/// Per line (owner side): interrupts taken and not yet forwarded.
static PENDING: [AtomicU64; MAX_IRQS] = [const { AtomicU64::new(0) }; MAX_IRQS];
/// Lines with interrupts waiting in `PENDING` (bit = line): the drain's check that nothing
/// is to be forwarded is one load, not one per line.
static PENDING_LINES: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(MAX_IRQS <= 64, "PENDING_LINES has one bit per line");
/// Lines (owner side, bit = line) whose device a driver task in a subscriber instance drives:
/// the owner neither acknowledges the device nor masks the line (edge-triggered lines: the
/// driver's reading the device ends the interrupt condition, and the next one is a new edge).
static DRIVEN_ELSEWHERE: AtomicU64 = AtomicU64::new(0);
/// Per line (subscriber side): IRQ_FORWARD deliveries received.
pub static FORWARDED_IN: [AtomicU64; MAX_IRQS] = [const { AtomicU64::new(0) }; MAX_IRQS];
/// GSI of the RTC, whose every interrupt must be acknowledged (u32::MAX: unknown).
static RTC_GSI: AtomicU32 = AtomicU32::new(u32::MAX);
/// GSI of COM2, whose received bytes must be taken to acknowledge it (u32::MAX: unknown).
static COM2_GSI: AtomicU32 = AtomicU32::new(u32::MAX);

/// Most forwards of one line sent per drain; the rest wait for the next one.
const FORWARD_BURST: u64 = 8;

pub fn set_rtc_gsi(gsi: u32) {
    RTC_GSI.store(gsi, Ordering::Relaxed);
}

pub fn set_com2_gsi(gsi: u32) {
    COM2_GSI.store(gsi, Ordering::Relaxed);
}

/// COM2's GSI (u32::MAX if unknown).
pub fn com2_gsi() -> u32 {
    COM2_GSI.load(Ordering::Relaxed)
}

/// Acknowledges the device behind `line`, where it needs it (an edge left unacknowledged
/// holds the device's line forever): the RTC (register C), COM2 (take the received bytes).
fn acknowledge_device(line: usize) {
    let gsi = line as u32;
    if gsi == RTC_GSI.load(Ordering::Relaxed) {
        crate::platform::rtc::acknowledge();
    } else if gsi == COM2_GSI.load(Ordering::Relaxed) {
        crate::platform::com2::drain();
    }
}

/// The RTC's GSI (u32::MAX if unknown).
pub fn rtc_gsi() -> u32 {
    RTC_GSI.load(Ordering::Relaxed)
}

fn line_of(irq: u32) -> Result<usize, Status> {
    if (irq as usize) < MAX_IRQS.min(ioapic::line_count() as usize) {
        Ok(irq as usize)
    } else {
        Err(Status::NoSuchResource)
    }
}

fn owns(line: usize) -> Result<(), Status> {
    let me = crate::instance::id();
    let r = region::get().ok_or(Status::InternalError)?;
    match r.owner(Resource::Irq(line as u32)) {
        Ok(Owner::Owned(o)) if o == me => Ok(()),
        _ => Err(Status::NotOwner),
    }
}

/// The line's interrupt handler in its owner (interrupts off: counts only). A line bound to a
/// task's notification (a user-space driver) is the task's: the kernel does not touch the
/// device, sets the task's bit and masks the line until the task acknowledges it.
fn on_irq(line: usize) {
    if super::ipc::irq_fired(line) {
        if let Err(e) = ioapic::mask(line as u32) {
            chip_failed("masking for its driver task", line, e);
        }
    } else if DRIVEN_ELSEWHERE.load(Ordering::Relaxed) & (1 << line) == 0 {
        acknowledge_device(line);
    }
    if FORWARD_TO[line].load(Ordering::Relaxed) != 0 {
        PENDING[line].fetch_add(1, Ordering::Relaxed);
        // Release: whoever sees the bit (Acquire) sees the count.
        PENDING_LINES.fetch_or(1 << line, Ordering::Release);
        messaging::want_poll_hook();
    }
}

/// Routes `line` (owned by this instance) to this CPU and handles it here.
fn take_line(line: usize) -> Result<(), Status> {
    interrupts::set_irq_handler(line, on_irq).map_err(|_| Status::NoSuchResource)?;
    let apic = cpu::current().apic_id;
    ioapic::route(line as u32, vectors::IRQ_BASE + line as u8, apic, false)
        .map_err(|e| chip_failed("routing", line, e))?;
    // An edge the old owner never acknowledged would hold the device forever (a driver task
    // bound to the line acknowledges it itself).
    if !super::ipc::irq_bound(line) && DRIVEN_ELSEWHERE.load(Ordering::Relaxed) & (1 << line) == 0 {
        acknowledge_device(line);
    }
    Ok(())
}

/// Owner: starts handling `line` here (instance 0 at boot owns every line but routes none).
pub fn claim_local(line: usize) -> Result<(), Status> {
    owns(line)?;
    take_line(line)
}

/// Owner: forwards every interrupt of `line` to instance `to` from now on.
pub fn forward(line: usize, to: InstanceId) -> Result<(), Status> {
    owns(line)?;
    if to.index() >= 32 || to == crate::instance::id() {
        return Err(Status::InvalidArgument);
    }
    FORWARD_TO[line].fetch_or(1 << to.index(), Ordering::SeqCst);
    Ok(())
}

/// Owner: forwards every interrupt of `line` to instance `to`, where a driver task drives
/// the device (its notification gets each one): from now on this instance leaves the device
/// alone. Ends with a balance of the line. (Only the tests forward lines to driver tasks so
/// far: the shell hands a line over with `irq route`, a balance.)
#[cfg_attr(not(feature = "qemu-tests"), allow(dead_code))]
pub fn forward_to_driver(line: usize, to: InstanceId) -> Result<(), Status> {
    forward(line, to)?;
    DRIVEN_ELSEWHERE.fetch_or(1 << line, Ordering::SeqCst);
    Ok(())
}

/// After a drain: sends the IRQ_FORWARD messages the handlers have queued up.
pub fn flush_forwards() {
    if PENDING_LINES.load(Ordering::Relaxed) == 0 {
        return;
    }
    let me = crate::instance::id();
    let mut lines = PENDING_LINES.swap(0, Ordering::Acquire);
    while lines != 0 {
        let line = lines.trailing_zeros() as usize;
        lines &= lines - 1;
        let subscribers = FORWARD_TO[line].load(Ordering::Relaxed);
        if PENDING[line].load(Ordering::Relaxed) == 0 {
            continue;
        }
        if subscribers == 0 {
            // Kept for a later subscriber, as before the summary word.
            PENDING_LINES.fetch_or(1 << line, Ordering::Relaxed);
            continue;
        }
        let n = PENDING[line].swap(0, Ordering::Relaxed).min(FORWARD_BURST);
        let msg = Message::request(me, Kind::IrqForward, 0, payload(line));
        for to in InstanceId::all(32).filter(|k| subscribers & (1 << k.index()) != 0) {
            for _ in 0..n {
                // Never wait: a subscriber that does not keep up loses deliveries, not us.
                let _ = messaging::try_send(to, &msg);
            }
        }
    }
}

fn payload(line: usize) -> Payload {
    Payload::IoIrq(IoIrqPayload {
        irq: line as u32,
        vector: u32::from(vectors::IRQ_BASE) + line as u32,
        device_id: 0,
        flags: IrqFlags::empty(),
    })
}

fn irq_of(m: &Message) -> Result<usize, Status> {
    match m.payload {
        Payload::IoIrq(p) => line_of(p.irq),
        _ => Err(Status::InvalidArgument),
    }
}

/// IRQ_FORWARD, in a subscriber: one delivery.
pub fn handle_forward(m: &Message) -> Option<Reply> {
    if let Ok(line) = irq_of(m) {
        FORWARDED_IN[line].fetch_add(1, Ordering::Relaxed);
        // A driver task of this instance bound to the line gets it as a notification.
        super::ipc::irq_fired(line);
    }
    None
}

/// A driver task acknowledges an interrupt of `line`: the owner unmasks it. A line forwarded
/// from another instance is never masked (its owner does not know the task), so there is
/// nothing to do.
pub fn acknowledge_for_task(line: usize) -> Result<(), mk_abi::Error> {
    let line = line_of(line as u32).map_err(|_| mk_abi::Error::BadArgument)?;
    if owns(line).is_err() {
        return Ok(());
    }
    ioapic::unmask(line as u32).map_err(|e| {
        chip_failed("unmasking for its driver task", line, e);
        mk_abi::Error::Busy
    })
}

/// IRQ_MASK and IRQ_UNMASK, in the owner: only instance 0 (which brokered the line to this
/// instance) may ask; anyone else is refused.
pub fn handle_mask(m: &Message) -> Option<Reply> {
    if !m.sender.is_supervisor() {
        return Some(reply(Err(Status::Refused)));
    }
    let result = irq_of(m).and_then(|line| set_masked_here(line, m.kind == Kind::IrqMask));
    Some(reply(result))
}

/// Owner: masks (`mask`) or unmasks `line`, which this instance must own.
pub fn set_masked_here(line: usize, mask: bool) -> Result<(), Status> {
    let line = line_of(line as u32)?;
    owns(line)?;
    let gsi = line as u32;
    if mask {
        ioapic::mask(gsi).map_err(|e| chip_failed("masking", line, e))
    } else {
        ioapic::unmask(gsi).map_err(|e| chip_failed("unmasking", line, e))?;
        if !super::ipc::irq_bound(line) {
            acknowledge_device(line);
        }
        Ok(())
    }
}

/// An IO APIC operation on `line` failed: logs it (the caller only passes on a status) and
/// gives the status: `Busy` when the shared IO APIC lock timed out (another instance's fault;
/// try again), `InternalError` otherwise (this instance's chip table).
fn chip_failed(what: &str, line: usize, e: ioapic::IoApicError) -> Status {
    crate::warn!("IRQ line {line}: {what} failed: {e}");
    match e {
        ioapic::IoApicError::SharedLock(_) => Status::Busy,
        _ => Status::InternalError,
    }
}

/// Replies to the IRQ requests carry no payload (`mk_wire::expected_payload`).
fn reply(result: Result<(), Status>) -> Reply {
    match result {
        Ok(()) => Reply::ok(Payload::Empty),
        Err(s) => Reply::error(s),
    }
}

/// IRQ_BALANCE, in the new owner: take the line the sender has started handing over. Every
/// balance goes through instance 0, which keeps the record of who holds each line: an
/// instance other than 0 takes a line only from instance 0; instance 0 takes one back only
/// from the instance its record gives the line to, the word agreeing. (So a forged in-transit
/// word cannot make anyone take another instance's line.)
pub fn handle_balance(m: &Message) -> Option<Reply> {
    let me = crate::instance::id();
    let result = irq_of(m).and_then(|line| {
        let r = region::get().ok_or(Status::InternalError)?;
        let res = Resource::Irq(line as u32);
        if !me.is_supervisor() && !m.sender.is_supervisor() {
            return Err(Status::Refused);
        }
        let generation = match r.owner(res) {
            Ok(Owner::InTransit {
                from,
                to,
                generation,
            }) if from == m.sender && to == me => generation,
            _ => return Err(Status::NotOwner),
        };
        if me.is_supervisor() {
            let word = r.owner(res);
            match records::with(|l| l.check_handed_back(res, m.sender, generation, word)) {
                Some(Ok(())) => {}
                Some(Err(d)) => {
                    records::note(&d, "the line is not taken");
                    return Err(Status::NotOwner);
                }
                None => return Err(Status::InternalError),
            }
        }
        take_line(line)?;
        r.complete_transfer(res, me, generation)
            .map_err(|_| Status::StaleGeneration)?;
        records::with(|l| l.give(res, me));
        Ok(())
    });
    Some(reply(result))
}

/// Owner: hands `line` to instance `to`, which routes it to itself. Forwarding set up here
/// stops (the new owner decides its own). Instance 0 hands a line to anyone, its record
/// agreeing; any other owner only back to instance 0 (which may then hand it on).
pub fn balance(line: usize, to: InstanceId) -> Result<(), Status> {
    let me = crate::instance::id();
    owns(line)?;
    let r = region::get().ok_or(Status::InternalError)?;
    let res = Resource::Irq(line as u32);
    if me.is_supervisor() {
        let word = r.owner(res);
        match records::with(|l| {
            l.may_give(res, me, word)
                .and_then(|()| l.start_handoff(res, to))
        }) {
            Some(Ok(())) => {}
            Some(Err(refusal)) => {
                if let mk_ledger::Refusal::Word(d) = &refusal {
                    records::note(d, "the balance is refused");
                }
                return Err(Status::NotOwner);
            }
            None => return Err(Status::InternalError),
        }
    } else if !to.is_supervisor() {
        return Err(Status::Refused);
    }
    let g = match r.begin_transfer(res, me, to) {
        Ok(g) => g,
        Err(_) => {
            super::moves::settle_handoff(r, res, to, false);
            return Err(Status::InvalidArgument);
        }
    };
    let outcome = messaging::call(to, Kind::IrqBalance, payload(line), 5000);
    let result = match outcome {
        Ok(reply) if reply.status == Status::Ok => {
            FORWARD_TO[line].store(0, Ordering::SeqCst);
            DRIVEN_ELSEWHERE.fetch_and(!(1 << line), Ordering::SeqCst);
            Ok(())
        }
        other => {
            let _ = r.abort_transfer(res, me, g);
            Err(match other {
                Ok(reply) => reply.status,
                Err(_) => Status::Timeout,
            })
        }
    };
    if me.is_supervisor() {
        super::moves::settle_handoff(r, res, to, result.is_ok());
    }
    result
}

/// Asks the owner `owner` to mask (`mask`) or unmask line `irq`.
pub fn request_mask(owner: InstanceId, irq: u32, mask: bool) -> Result<(), Status> {
    let kind = if mask { Kind::IrqMask } else { Kind::IrqUnmask };
    let p = Payload::IoIrq(IoIrqPayload {
        irq,
        vector: 0,
        device_id: 0,
        flags: IrqFlags::empty(),
    });
    match messaging::call(owner, kind, p, 5000) {
        Ok(reply) if reply.status == Status::Ok => Ok(()),
        Ok(reply) => Err(reply.status),
        Err(_) => Err(Status::Timeout),
    }
}

/// Asks instance `to` to take line `irq` with IRQ_BALANCE without having started the transfer
/// (only tests do this: it must be refused).
pub fn request_balance_unprepared(to: InstanceId, irq: u32) -> Result<(), Status> {
    let p = Payload::IoIrq(IoIrqPayload {
        irq,
        vector: 0,
        device_id: 0,
        flags: IrqFlags::empty(),
    });
    match messaging::call(to, Kind::IrqBalance, p, 5000) {
        Ok(reply) if reply.status == Status::Ok => Ok(()),
        Ok(reply) => Err(reply.status),
        Err(_) => Err(Status::Timeout),
    }
}
