//! The console lock: the one cross-instance lock, only for the shared serial port.

use core::sync::atomic::Ordering;

use crate::InstanceId;
use crate::layout::ConsoleLine;

/// A sensible spin bound for [`Console::lock`] in the kernel: far longer than printing one log
/// line at 115 200 baud (~10 ms for 100 characters), short enough that a dead holder costs one
/// visible hiccup. Spins of `spin_loop` take roughly 10-100 ns each.
pub const CONSOLE_FORCE_SPINS: u32 = 1 << 24;

/// Handle on the console ticket lock.
#[derive(Clone, Copy)]
pub struct Console<'a> {
    pub(crate) line: &'a ConsoleLine,
}

/// Counters of the console lock (each updated with `fetch_add`, read Relaxed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Successful acquisitions.
    pub acquired: u64,
    /// Locks broken by a waiter after its spin bound (holder presumed dead).
    pub forced: u64,
    /// Unlocks that found their lock already broken (the holder was slow, not dead).
    pub stale_unlocks: u64,
    /// Waiters whose ticket was skipped by a force and who queued again.
    pub requeued: u64,
    /// Last holder (instance), if any.
    pub holder: Option<InstanceId>,
}

/// Held console lock; unlocks on drop.
pub struct ConsoleGuard<'a> {
    line: &'a ConsoleLine,
    ticket: u32,
    forced: bool,
}

impl<'a> Console<'a> {
    /// Takes the lock for instance `by`, spinning with `spin_loop`; see [`Self::lock_with`].
    pub fn lock(&self, by: InstanceId, max_spins: u32) -> ConsoleGuard<'a> {
        self.lock_with(by, max_spins, core::hint::spin_loop)
    }

    /// Takes the lock for instance `by`, calling `relax` between polls.
    ///
    /// Ticket lock: take `ticket = next.fetch_add(1)` (Relaxed), wait until `serving == ticket`
    /// (Acquire: the previous holder's output is done before ours starts). If `serving` does not
    /// move for `max_spins` polls, its holder is presumed dead: we advance it by
    /// compare-exchange `serving: s -> s + 1` (so two waiters forcing at once skip only one
    /// ticket) and count a broken lock. If `serving` moves past our ticket (someone forced while
    /// it was our turn and we did not notice), we take a new ticket. Never blocks forever while
    /// other instances keep running: every stall is bounded by `max_spins` polls per dead ticket.
    ///
    /// Callers hold it with interrupts disabled and only to write one line to the shared serial
    /// port: an interrupt handler logging on the same CPU would otherwise wait for the force.
    pub fn lock_with(
        &self,
        by: InstanceId,
        max_spins: u32,
        mut relax: impl FnMut(),
    ) -> ConsoleGuard<'a> {
        let l = self.line;
        let mut forced = false;
        'queue: loop {
            let ticket = l.next.fetch_add(1, Ordering::Relaxed);
            let mut seen = l.serving.load(Ordering::Acquire);
            let mut spins = 0u32;
            while seen != ticket {
                // Our turn passed (wrapping comparison): queue again.
                if (seen.wrapping_sub(ticket) as i32) > 0 {
                    l.requeued.fetch_add(1, Ordering::Relaxed);
                    continue 'queue;
                }
                relax();
                let now = l.serving.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    spins = 0;
                    continue;
                }
                spins = spins.saturating_add(1);
                if spins >= max_spins {
                    if l.serving
                        .compare_exchange(
                            seen,
                            seen.wrapping_add(1),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        l.forced.fetch_add(1, Ordering::Relaxed);
                        forced = true;
                    }
                    spins = 0;
                    seen = l.serving.load(Ordering::Acquire);
                }
            }
            l.holder.store(u32::from(by.raw()) + 1, Ordering::Relaxed);
            l.acquired.fetch_add(1, Ordering::Relaxed);
            return ConsoleGuard {
                line: l,
                ticket,
                forced,
            };
        }
    }

    /// Counters and last holder.
    pub fn stats(&self) -> ConsoleStats {
        let l = self.line;
        ConsoleStats {
            acquired: l.acquired.load(Ordering::Relaxed),
            forced: l.forced.load(Ordering::Relaxed),
            stale_unlocks: l.stale_unlocks.load(Ordering::Relaxed),
            requeued: l.requeued.load(Ordering::Relaxed),
            holder: match l.holder.load(Ordering::Relaxed) {
                0 => None,
                h => u16::try_from(h - 1).ok().map(InstanceId::new),
            },
        }
    }
}

impl ConsoleGuard<'_> {
    /// Whether this acquisition broke a lock held (presumably) by a dead instance.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// Our ticket number.
    pub fn ticket(&self) -> u32 {
        self.ticket
    }
}

impl Drop for ConsoleGuard<'_> {
    /// Compare-exchange `serving: ticket -> ticket + 1` (Release: our output happens-before the
    /// next holder's). If it fails, our lock was broken meanwhile: leave `serving` alone (it
    /// belongs to someone else now) and count a stale unlock.
    fn drop(&mut self) {
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
