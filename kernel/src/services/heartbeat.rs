//! Heartbeats and failure detection.
//!
//! Every instance but 0 beats on its first CPU's LAPIC timer: every `PERIOD_TICKS` ticks the
//! timer interrupt bumps the instance's beat counter in the shared instance table and marks a
//! HEARTBEAT message due, which the next drain of the mailboxes sends to instance 0 (messages
//! are never sent from an interrupt handler). Instance 0 records, per instance, the last time
//! it saw either sign of life: a HEARTBEAT message, or the shared counter moving. The counter
//! keeps an instance that is busy in a long handler (and so sends no message for a while) from
//! being declared dead while its CPU is plainly alive; a crashed instance stops both, since its
//! panic handler turns interrupts off and halts.
//!
//! ```text
//!   instance k, timer tick ─► count += 1 (shared) ─► due ─► drain ─► HEARTBEAT ─► instance 0
//!   instance 0, every drain: for each running k, last sign of life older than
//!   DEAD_AFTER_BEATS periods? ─► lifecycle::declare_dead(k)
//! ```
//!
//! The bound: an instance is declared dead between `DEAD_AFTER_BEATS` and
//! `DEAD_AFTER_BEATS + 1` periods after its last sign of life (2.0 to 2.1 s), plus however
//! long instance 0 goes without draining its mailboxes.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mk_dispatch::Reply;
use mk_wire::{HeartbeatPayload, Kind, Message, Payload};

use crate::arch::{cpu, interrupts, tsc};
use crate::instance::InstanceId;
use crate::shared::region;

/// Timer ticks between beats (100 ms at the 100 Hz tick).
pub const PERIOD_TICKS: u64 = 10;
/// Periods without a sign of life after which instance 0 declares an instance dead.
pub const DEAD_AFTER_BEATS: u64 = 20;

static DUE: AtomicBool = AtomicBool::new(false);
static SENT: AtomicU64 = AtomicU64::new(0);

const MAX: usize = mk_shared::MAX_INSTANCES;
/// Instance 0: HEARTBEAT messages received, per instance.
pub static RECEIVED: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// Instance 0: TSC of the last sign of life, per instance (0: none seen yet).
static LAST_SIGN: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// Instance 0: the shared beat counter as last seen, per instance.
static LAST_COUNT: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// Instance 0: TSC of the last watch pass.
static LAST_WATCH: AtomicU64 = AtomicU64::new(0);

fn period_ticks_tsc() -> u64 {
    PERIOD_TICKS * tsc::ticks_per_ms() * 1000 / u64::from(crate::arch::apic::TICK_HZ)
}

/// The longest silence tolerated, in TSC ticks.
pub fn dead_after_tsc() -> u64 {
    DEAD_AFTER_BEATS * period_ticks_tsc()
}

/// Timer tick (every CPU, interrupts off): the first CPU of an instance other than 0 beats.
pub fn on_tick() {
    let me = crate::instance::id();
    if me.is_supervisor() || crate::platform::failure::stopped() {
        return;
    }
    let Some(c) = cpu::try_current() else { return };
    if c.index != 0 || c.ticks.load(Ordering::Relaxed) % PERIOD_TICKS != 0 {
        return;
    }
    if let Some(inst) = region::get().and_then(|r| r.instance(me).ok()) {
        inst.beat();
    }
    DUE.store(true, Ordering::Release);
}

/// After a drain, in an instance other than 0: sends the HEARTBEAT that came due, if any. It
/// never waits for room: a beat that finds instance 0's mailbox full is dropped (the shared
/// counter still shows this instance alive).
pub fn send_if_due() {
    if !DUE.swap(false, Ordering::AcqRel) || crate::platform::failure::stopped() {
        return;
    }
    let counter = SENT.fetch_add(1, Ordering::Relaxed) + 1;
    let beat = Message::request(
        crate::instance::id(),
        Kind::Heartbeat,
        0,
        Payload::Heartbeat(HeartbeatPayload {
            counter,
            uptime_ticks: interrupts::TIMER_TICKS.load(Ordering::Relaxed),
        }),
    );
    let _ = crate::messaging::try_send(InstanceId::ZERO, &beat);
}

/// Instance 0's HEARTBEAT handler: a sign of life.
pub fn handle(m: &Message) -> Option<Reply> {
    let from = m.sender.index();
    if let (Some(r), Some(l)) = (RECEIVED.get(from), LAST_SIGN.get(from)) {
        r.fetch_add(1, Ordering::Relaxed);
        l.store(tsc::read(), Ordering::Relaxed);
    }
    None
}

/// Instance 0: whether a watch pass is due (at most one a period); if so, starts it now.
pub fn watch_due() -> bool {
    let now = tsc::read();
    let last = LAST_WATCH.load(Ordering::Relaxed);
    if now.saturating_sub(last) < period_ticks_tsc() {
        return false;
    }
    LAST_WATCH.store(now, Ordering::Relaxed);
    true
}

/// Instance 0: how long instance `k` has been silent (TSC ticks) at `now`, given its shared
/// beat counter `count` as read now: a counter that moved is a sign of life.
pub fn silence(k: InstanceId, count: u64, now: u64) -> u64 {
    let (Some(last_count), Some(last_sign)) = (LAST_COUNT.get(k.index()), LAST_SIGN.get(k.index()))
    else {
        return 0;
    };
    if last_count.swap(count, Ordering::Relaxed) != count || last_sign.load(Ordering::Relaxed) == 0
    {
        last_sign.store(now, Ordering::Relaxed);
    }
    now.saturating_sub(last_sign.load(Ordering::Relaxed))
}

/// Instance 0: when instance `k` last gave a sign of life (TSC), if it has.
pub fn last_sign(k: InstanceId) -> Option<u64> {
    LAST_SIGN
        .get(k.index())
        .map(|t| t.load(Ordering::Relaxed))
        .filter(|&t| t != 0)
}

/// Instance 0: forgets instance `k`'s last sign of life (before it is started again).
pub fn forget(k: InstanceId) {
    if let Some(l) = LAST_SIGN.get(k.index()) {
        l.store(0, Ordering::Relaxed);
    }
}
