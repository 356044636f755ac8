//! The shared locks: two ticket locks in the shared region, one for the shared serial port
//! (the console lock) and one for the IO APICs' index/data register pairs (the IO APIC lock).
//!
//! Every wait is bounded in *time*, by a clock the caller passes (the TSC in the kernel): a
//! broken or hostile instance that stops, rewinds or keeps toggling `serving` can delay a waiter
//! by at most [`WaitBound::total`]. Then the console waiter goes on without the lock
//! ([`TicketLock::lock_or_bypass`]) and the IO APIC waiter fails its operation
//! ([`TicketLock::try_lock`] returns [`LockTimedOut`]); both count it in
//! [`LockStats::timed_out`].

use core::fmt;
use core::sync::atomic::Ordering;

use crate::InstanceId;
use crate::layout::LockLine;

/// Most tickets that can legitimately stand between `serving` and a waiter's ticket: every CPU
/// (at most [`crate::MAX_APIC_IDS`]) waits for one lock at a time, twice if it panics while
/// holding it, plus the tickets of waiters that gave up and were not yet skipped. A `serving`
/// farther behind a waiter's ticket than this was not written by the protocol: the waiter
/// repairs it (see [`TicketLock::try_lock`]).
pub const MAX_QUEUE: u32 = 1024;

/// How long one wait may last, in milliseconds; [`WaitMs::ticks`] converts it for a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitMs {
    /// `serving` standing still this long: its holder is presumed dead.
    pub stall: u64,
    /// The whole wait, from the call.
    pub total: u64,
}

impl WaitMs {
    /// The bound in ticks of a clock running at `ticks_per_ms` (at least 1 tick each).
    pub const fn ticks(self, ticks_per_ms: u64) -> WaitBound {
        let t = if ticks_per_ms == 0 { 1 } else { ticks_per_ms };
        WaitBound {
            stall: sat_mul(self.stall, t),
            total: sat_mul(self.total, t),
        }
    }
}

const fn sat_mul(a: u64, b: u64) -> u64 {
    match a.checked_mul(b) {
        Some(v) if v > 0 => v,
        Some(_) => 1,
        None => u64::MAX,
    }
}

/// The console lock in the kernel. A line of 512 bytes takes 44 ms at 115 200 baud, so a holder
/// that has not let go after 50 ms is presumed dead; a waiter writes without the lock after
/// 100 ms in all (a garbled line at worst, and every instance keeps running).
pub const CONSOLE_WAIT: WaitMs = WaitMs {
    stall: 50,
    total: 100,
};

/// The console lock on the panic path: the report goes out after 20 ms at most.
pub const EMERGENCY_WAIT: WaitMs = WaitMs {
    stall: 10,
    total: 20,
};

/// The IO APIC lock in the kernel: a holder writes an index and reads or writes a data
/// register (microseconds, interrupts off), so 1 ms without progress means a dead holder, and
/// after 5 ms in all the operation fails.
pub const IOAPIC_WAIT: WaitMs = WaitMs { stall: 1, total: 5 };

/// How long one wait may last, in ticks of the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitBound {
    /// `serving` standing still this long: its holder is presumed dead and `serving` is
    /// advanced past it.
    pub stall: u64,
    /// The whole wait, from the call: then the waiter gives up.
    pub total: u64,
}

/// Which shared lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockName {
    /// The console lock (lock line 0): the shared serial port.
    Console,
    /// The IO APIC lock (lock line 1): the IO APICs' register pairs.
    IoApic,
}

impl LockName {
    /// Human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Console => "console lock",
            Self::IoApic => "IO APIC lock",
        }
    }
}

/// A wait for a shared lock hit its [`WaitBound::total`]: another instance held the lock that
/// long, or wrote its `serving` word outside the protocol. Nothing was done under the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockTimedOut {
    /// The lock.
    pub lock: LockName,
    /// Ticks waited (at least the bound's total).
    pub waited: u64,
    /// The waiter's last ticket.
    pub ticket: u32,
    /// `serving` when it gave up.
    pub serving: u32,
}

impl fmt::Display for LockTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the shared {} timed out after {} ticks (ticket {}, serving {}): another instance \
             holds it too long or corrupted it",
            self.lock.name(),
            self.waited,
            self.ticket,
            self.serving
        )
    }
}

/// Handle on one shared ticket lock.
#[derive(Clone, Copy)]
pub struct TicketLock<'a> {
    pub(crate) line: &'a LockLine,
    pub(crate) name: LockName,
}

/// Counters of a shared lock (each updated with `fetch_add`, read Relaxed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Successful acquisitions.
    pub acquired: u64,
    /// Locks broken by a waiter after `serving` stood still for [`WaitBound::stall`] (holder
    /// presumed dead).
    pub forced: u64,
    /// Unlocks that found their lock already broken (the holder was slow, not dead).
    pub stale_unlocks: u64,
    /// Waiters whose ticket was skipped by a force and who queued again.
    pub requeued: u64,
    /// Waits that reached [`WaitBound::total`]: the console waiter went on without the lock,
    /// the IO APIC waiter failed its operation.
    pub timed_out: u64,
    /// `serving` found corrupt (more than [`MAX_QUEUE`] tickets behind a waiter's, or ahead of
    /// `next`) and set to the waiter's ticket.
    pub repaired: u64,
    /// Last holder (instance), if any.
    pub holder: Option<InstanceId>,
}

/// How a [`LockGuard`] came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Our turn came.
    Normally,
    /// We broke a lock (stalled holder) or repaired a corrupt `serving` on the way.
    Forced,
    /// The wait timed out and we go on without the lock (console only): nothing to unlock.
    Bypassed,
}

/// Held (or, for the console, bypassed) shared lock; unlocks on drop.
pub struct LockGuard<'a> {
    line: &'a LockLine,
    ticket: u32,
    how: Acquired,
}

impl<'a> TicketLock<'a> {
    /// Which lock this is.
    pub fn name(&self) -> LockName {
        self.name
    }

    /// For the console: takes the lock for instance `by`, or, once `bound.total` ticks of
    /// `clock` have passed, goes on without it (output may then interleave with the holder's;
    /// counted in [`LockStats::timed_out`]). Dropping a bypassed guard leaves the lock alone.
    pub fn lock_or_bypass(
        &self,
        by: InstanceId,
        bound: WaitBound,
        clock: impl FnMut() -> u64,
        relax: impl FnMut(),
    ) -> LockGuard<'a> {
        match self.try_lock(by, bound, clock, relax) {
            Ok(g) => g,
            Err(e) => LockGuard {
                line: self.line,
                ticket: e.ticket,
                how: Acquired::Bypassed,
            },
        }
    }

    /// Takes the lock for instance `by`, calling `relax` between polls of `serving` and reading
    /// `clock` (any monotonic tick counter: the TSC in the kernel) once per poll; fails with
    /// [`LockTimedOut`] once `bound.total` ticks have passed since the call.
    ///
    /// Ticket lock: take `ticket = next.fetch_add(1)` (Relaxed), wait until `serving == ticket`
    /// (Acquire: the previous holder's work is done before ours starts). Then:
    ///
    /// * `serving` has not changed for `bound.stall` ticks: its holder is presumed dead, and
    ///   so are the tickets between it and ours (abandoned by waiters that timed out, or
    ///   taken by a dead instance); we take our turn by compare-exchange `s -> ticket` (of
    ///   two waiters forcing at once one wins; a live waiter skipped this way sees `serving`
    ///   past its ticket and queues again) and count a force. One stall per acquisition,
    ///   however many tickets were abandoned: waiters that time out faster than stalls pass
    ///   cannot keep the lock from recovering.
    /// * `serving` moved past our ticket (someone forced while it was our turn): take a new
    ///   ticket and go on waiting, still against the deadline of the call.
    /// * `serving` is more than [`MAX_QUEUE`] tickets behind ours, or ahead of `next`: no run
    ///   of the protocol leaves it there (a stray or hostile write did; `serving` never passes
    ///   `next` and never lags by more than the waiters there can be). We set it to our ticket
    ///   by compare-exchange, which takes the lock, and count a repair. (Far *ahead* of our
    ///   ticket but not of `next` is legitimate, if we were skipped long ago: we queue again.)
    /// * `serving` stepped back since our last look: only a repair of a corrupt value moves it
    ///   back, so a writer did; we repair it the same way (to our ticket). A writer toggling
    ///   `serving` between two tickets behind ours so gets the next waiter its turn at once.
    ///
    /// Every poll checks the deadline first, and no step waits for anything but `relax`: a
    /// writer that rewinds or toggles `serving` (each change restarts the stall timer) cannot
    /// make the call last longer than `bound.total` plus one poll; only one that moves it
    /// forward, never to our ticket, can make it last that long.
    ///
    /// Callers hold it with interrupts disabled and only for short work: an interrupt handler
    /// taking the same lock on the same CPU would otherwise wait for the bound.
    pub fn try_lock(
        &self,
        by: InstanceId,
        bound: WaitBound,
        mut clock: impl FnMut() -> u64,
        mut relax: impl FnMut(),
    ) -> Result<LockGuard<'a>, LockTimedOut> {
        let l = self.line;
        let start = clock();
        let mut how = Acquired::Normally;
        'queue: loop {
            let ticket = l.next.fetch_add(1, Ordering::Relaxed);
            let mut seen = l.serving.load(Ordering::Acquire);
            let mut since = clock();
            loop {
                if seen == ticket {
                    l.holder.store(u32::from(by.raw()) + 1, Ordering::Relaxed);
                    l.acquired.fetch_add(1, Ordering::Relaxed);
                    return Ok(LockGuard {
                        line: l,
                        ticket,
                        how,
                    });
                }
                let now = clock();
                let waited = now.wrapping_sub(start);
                if waited >= bound.total {
                    l.timed_out.fetch_add(1, Ordering::Relaxed);
                    return Err(LockTimedOut {
                        lock: self.name,
                        waited,
                        ticket,
                        serving: seen,
                    });
                }
                // Wrapping distances: `ahead > 0` when our turn has passed; `behind` tickets
                // still to serve before ours.
                let ahead = seen.wrapping_sub(ticket) as i32;
                let behind = ticket.wrapping_sub(seen);
                let next = l.next.load(Ordering::Relaxed);
                if (ahead < 0 && behind > MAX_QUEUE) || seen.wrapping_sub(next) as i32 > 0 {
                    match l.serving.compare_exchange(
                        seen,
                        ticket,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            l.repaired.fetch_add(1, Ordering::Relaxed);
                            how = Acquired::Forced;
                            seen = ticket;
                        }
                        Err(now_serving) => {
                            seen = now_serving;
                            since = now;
                        }
                    }
                    continue;
                }
                if ahead > 0 {
                    l.requeued.fetch_add(1, Ordering::Relaxed);
                    continue 'queue;
                }
                if now.wrapping_sub(since) >= bound.stall {
                    since = now;
                    if l.serving
                        .compare_exchange(seen, ticket, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        l.forced.fetch_add(1, Ordering::Relaxed);
                        how = Acquired::Forced;
                        // What we wrote is what we go by: the lock is ours now, even if a
                        // writer changed the word again since.
                        seen = ticket;
                    } else {
                        seen = l.serving.load(Ordering::Acquire);
                    }
                    continue;
                }
                relax();
                let s = l.serving.load(Ordering::Acquire);
                if s != seen {
                    // `serving` only ever moves forward (unlocks and forces add one), except
                    // when a waiter repairs a corrupt value: a step back means a stray or
                    // hostile write, which we repair like a value far behind (to our ticket).
                    // Without this a writer toggling `serving` between two tickets behind ours
                    // would keep every waiter from its turn until its bound ran out.
                    if (s.wrapping_sub(seen) as i32) < 0
                        && l.serving
                            .compare_exchange(s, ticket, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        l.repaired.fetch_add(1, Ordering::Relaxed);
                        how = Acquired::Forced;
                        seen = ticket;
                        continue;
                    }
                    seen = s;
                    since = now;
                }
            }
        }
    }

    /// The raw words `(next, serving)` (diagnostics, and the rogue-instance tests).
    pub fn words(&self) -> (u32, u32) {
        (
            self.line.next.load(Ordering::Relaxed),
            self.line.serving.load(Ordering::Relaxed),
        )
    }

    /// Writes `serving` outright, as a stray or hostile writer could (any instance maps the
    /// lock line): for the rogue-instance tests, which torture the lock. No use of the lock
    /// calls it.
    pub fn overrule_serving(&self, serving: u32) {
        self.line.serving.store(serving, Ordering::Relaxed);
    }

    /// Counters and last holder.
    pub fn stats(&self) -> LockStats {
        let l = self.line;
        LockStats {
            acquired: l.acquired.load(Ordering::Relaxed),
            forced: l.forced.load(Ordering::Relaxed),
            stale_unlocks: l.stale_unlocks.load(Ordering::Relaxed),
            requeued: l.requeued.load(Ordering::Relaxed),
            timed_out: l.timed_out.load(Ordering::Relaxed),
            repaired: l.repaired.load(Ordering::Relaxed),
            holder: match l.holder.load(Ordering::Relaxed) {
                0 => None,
                h => u16::try_from(h - 1).ok().map(InstanceId::new),
            },
        }
    }
}

impl LockGuard<'_> {
    /// Whether this acquisition broke a lock held (presumably) by a dead instance, or repaired
    /// a corrupt `serving`.
    pub fn forced(&self) -> bool {
        self.how == Acquired::Forced
    }

    /// Whether the wait timed out and the caller goes on without the lock.
    pub fn bypassed(&self) -> bool {
        self.how == Acquired::Bypassed
    }

    /// How the guard was obtained.
    pub fn acquired(&self) -> Acquired {
        self.how
    }

    /// Our (last) ticket number.
    pub fn ticket(&self) -> u32 {
        self.ticket
    }
}

impl Drop for LockGuard<'_> {
    /// Held: compare-exchange `serving: ticket -> ticket + 1` (Release: our work happens-before
    /// the next holder's). If it fails, our lock was broken meanwhile: leave `serving` alone (it
    /// belongs to someone else now) and count a stale unlock. Bypassed: nothing was held, and
    /// nothing is written.
    fn drop(&mut self) {
        if self.how == Acquired::Bypassed {
            return;
        }
        let l = self.line;
        if l.serving
            .compare_exchange(
                self.ticket,
                self.ticket.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            l.stale_unlocks.fetch_add(1, Ordering::Relaxed);
        }
    }
}
