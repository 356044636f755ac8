//! Doorbells: the IPI on `MESSAGE_IPI` that wakes a receiver, on both sides (issue 15,
//! item 10).
//!
//! * Sending: a doorbell for instance `k` goes to the CPU `k` published as its first, but only
//!   if the boot plan gave that APIC ID to `k` ([`mk_surface::Book`], built at boot from this
//!   instance's private copy of the plan: [`learn_plan`]); a broadcast ID, another instance's
//!   CPU or one in no partition is refused, counted ([`REFUSED`]) and logged at most once a
//!   second. The message is still delivered: the receiver looks at every mailbox on each
//!   timer tick.
//! * Receiving: each CPU has its own doorbell bucket ([`mk_surface::Bucket`]); a CPU flooded
//!   past it blocks the doorbell's priority class (CR8) for [`THROTTLE_MS`], during which its
//!   serve loop polls instead of halting ([`throttled`]), and only that CPU lowers it again
//!   ([`end_throttle`], from its own timer tick).
//!
//! [`report`] logs, from thread context and at most once a second, what the interrupt
//! surface counted since (floods dropped, NMIs, unexpected vectors, refused doorbells).

use core::sync::atomic::{AtomicU64, Ordering};

use mk_dispatch::PeerTelemetry;
use mk_surface::{Book, Bucket, Every, Rate, Refusal};
use spin::Once;

use crate::arch::{cpu, interrupts, tsc};
use crate::instance::InstanceId;
use crate::shared::region;

/// Doorbells a CPU accepts before throttling: a burst, then one per `IPI_TOKEN_US`.
const IPI_BURST: u64 = 256;
const IPI_TOKEN_US: u64 = 50;
/// How long a throttled CPU keeps the doorbell vector blocked (it polls on timer ticks).
pub const THROTTLE_MS: u64 = 20;

/// One CPU's doorbell state: its bucket, and the TSC until which it keeps the doorbell's
/// class blocked (0: not throttled). Touched only by that CPU, in its handlers.
struct CpuThrottle {
    bucket: Bucket,
    until: AtomicU64,
}

static THROTTLE: [CpuThrottle; cpu::MAX_SLOTS] = [const {
    CpuThrottle {
        bucket: Bucket::new(),
        until: AtomicU64::new(0),
    }
}; cpu::MAX_SLOTS];

/// Times a doorbell flood made one of this instance's CPUs block the doorbell vector.
pub static THROTTLES: AtomicU64 = AtomicU64::new(0);
/// Doorbells not sent because the target's published CPU is not one the plan gave it.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// The plan's APIC IDs per instance, this instance's own copy.
static BOOK: Once<Book> = Once::new();

/// Records, once at boot, the plan's CPUs of every instance (`(instance, APIC ID)` pairs):
/// instance 0 from its plan, every other instance from its boot descriptor. An entry the book
/// refuses (a broadcast ID, an ID given twice) is left out and returned as an error after the
/// others are in: no doorbell ever goes to it.
pub fn learn_plan(cpus: impl Iterator<Item = (u16, u32)>) -> Result<(), mk_surface::BookError> {
    let mut book = Book::new();
    let mut first_error = Ok(());
    for (k, apic) in cpus {
        if let Err(e) = book.record(k, apic)
            && first_error.is_ok()
        {
            first_error = Err(e);
        }
    }
    BOOK.call_once(|| book);
    first_error
}

/// Runs in the doorbell's IPI handler. Handling happens in thread context (the serve loop);
/// here we only enforce the doorbell rate, per CPU: a CPU that is flooded gets the doorbell's
/// class blocked (CR8, task priority = its class) for `THROTTLE_MS`, during which it polls
/// instead (its serve loop does not halt), so no peer can keep a CPU in its interrupt handler.
pub(super) fn on_ipi() {
    let Some(me) = cpu::try_current() else {
        return;
    };
    let Some(t) = THROTTLE.get(me.index as usize) else {
        return;
    };
    let now = tsc::read();
    let rate = Rate::per_micros(IPI_BURST, IPI_TOKEN_US, tsc::ticks_per_ms());
    if !t.bucket.admit(now, rate).taken() {
        t.until
            .store(now + THROTTLE_MS * tsc::ticks_per_ms(), Ordering::Relaxed);
        THROTTLES.fetch_add(1, Ordering::Relaxed);
        // Raising the task priority only holds back the doorbell's class on this CPU; its
        // own timer tick lowers it again (`end_throttle`).
        cpu::set_task_priority(crate::arch::vectors::MESSAGE_CLASS);
    }
}

/// From the timer tick (every CPU's): ends this CPU's doorbell throttle once its time is up.
pub(super) fn end_throttle() {
    let Some(t) = cpu::try_current().and_then(|c| THROTTLE.get(c.index as usize)) else {
        return;
    };
    let until = t.until.load(Ordering::Relaxed);
    if until != 0 && tsc::read() >= until {
        t.until.store(0, Ordering::Relaxed);
        // Back to the normal task priority (nothing else in this kernel raises it).
        cpu::set_task_priority(0);
    }
}

/// Whether this CPU keeps the doorbell's class blocked now (a peer rang it past its rate). No
/// doorbell reaches it until its timer tick ends the throttle: its serve loop polls meanwhile
/// rather than halt (a message sent to a halted, throttled CPU would wait for a tick).
pub(super) fn throttled() -> bool {
    cpu::try_current()
        .and_then(|c| THROTTLE.get(c.index as usize))
        .is_some_and(|t| t.until.load(Ordering::Relaxed) != 0)
}

/// Limits the log lines about refused doorbells to one a second.
static REFUSAL_LOG: Every = Every::new();

/// APIC ID of the CPU that serves `peer`'s mailboxes: the first CPU it published in the shared
/// table, if the plan gave that CPU to `peer`; otherwise `None`, counted in [`REFUSED`] and
/// logged (at most once a second) with what the peer published.
pub fn doorbell_cpu(peer: InstanceId) -> Option<u32> {
    let published = region::get()
        .and_then(|r| r.instance(peer).ok())
        .and_then(|i| i.resources().ok())
        .and_then(|res| res.cpus().first().copied());
    let book = BOOK.get();
    match book.map_or(Err(Refusal::NoPlan), |b| b.target(peer.raw(), published)) {
        Ok(apic) => Some(apic),
        Err(why) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = REFUSAL_LOG.check(tsc::read(), 1000 * tsc::ticks_per_ms()) {
                crate::warn!(
                    "no doorbell for instance {peer}: {why} (its shared entry is at fault; it gets its messages at its next timer tick; {suppressed} more refusal(s) not logged)"
                );
            }
            None
        }
    }
}

/// A doorbell owed to a receiver: some message published since the last ring found it armed.
#[derive(Default)]
pub(super) struct Doorbell {
    pub(super) owed: bool,
}

impl Doorbell {
    /// Sends the IPI if one is owed, to the CPU [`doorbell_cpu`] allows, and counts it in
    /// `telemetry` (the sender's counters for `to`).
    #[inline]
    pub(super) fn ring(&mut self, to: InstanceId, telemetry: Option<&PeerTelemetry>) {
        if core::mem::take(&mut self.owed) {
            Self::send(to, telemetry);
        }
    }

    /// The IPI itself, out of line: most sends owe none (the receiver was awake).
    #[inline(never)]
    fn send(to: InstanceId, telemetry: Option<&PeerTelemetry>) {
        if let Some(apic) = doorbell_cpu(to) {
            cpu::current().with_lapic(|l| l.send_ipi(crate::arch::vectors::MESSAGE_IPI, apic));
            if let Some(t) = telemetry {
                t.record_ipi_sent();
            }
        }
    }
}

/// What [`report`] last logged, to log only what changed.
static REPORTED: spin::Mutex<Option<(interrupts::Surface, u64, u64)>> = spin::Mutex::new(None);
static REPORT_LOG: Every = Every::new();

/// Logs, at most once a second and only when something changed, what the interrupt surface
/// counted: interrupts dropped by the flood gates, doorbell throttles and refusals, NMIs,
/// unexpected vectors, local APIC errors. Thread context only (the services' poll hook).
///
/// The counters are looked at only when a line would be allowed (once a second): summing
/// them reads every CPU slot's gates (64 slots of 34 gates, about 85 KiB), and the poll hook
/// runs on every timer tick and whenever a poll is asked for. Summed on each run, under
/// this machine's nested KVM it took most of every instance's time in its poll loops
/// (`call` waiting for a reply spent it in `surface()`), and `kvm-inst4` stopped making
/// progress.
pub fn report() {
    let now = tsc::read();
    if REPORT_LOG.check(now, 1000 * tsc::ticks_per_ms()).is_none() {
        return;
    }
    let s = interrupts::surface();
    let mine = (
        s,
        THROTTLES.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    );
    let Some(mut last) = REPORTED.try_lock() else {
        return;
    };
    let before = last.unwrap_or_default();
    // Timer drops alone do not make a line: real ticks that come bunched (after interrupts
    // were off a while, or a vCPU that was not scheduled) are dropped too, at up to the tick
    // rate under emulation. They are reported with the rest when something else changed.
    let quiet = (
        interrupts::Surface {
            timer_dropped: before.0.timer_dropped,
            ..s
        },
        mine.1,
        mine.2,
    ) == before;
    if quiet {
        return;
    }
    *last = Some(mine);
    let (p, (t, r)) = (before.0, (before.1, before.2));
    crate::warn!(
        "interrupt surface since the last report: {} timer, {} probe, {} device interrupt(s) dropped (over their rate: another instance's IPIs on those vectors), {} doorbell throttle(s), {} doorbell(s) refused, {} NMI(s), {} on vectors with no handler (last {:#x}), {} local APIC error(s); survived",
        s.timer_dropped - p.timer_dropped,
        s.probe_dropped - p.probe_dropped,
        s.device_dropped - p.device_dropped,
        mine.1 - t,
        mine.2 - r,
        s.nmis - p.nmis,
        s.unexpected - p.unexpected,
        s.last_unexpected,
        s.lapic_errors - p.lapic_errors,
    );
}
