//! Rate limit for rejection log lines: at most `burst` lines per window of `window` ticks.
//! Lock-free; time is passed in.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// What to do with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Print it; first print `suppressed` lines were dropped since the last printed one (only
    /// non-zero on the first line of a window).
    Log {
        /// Lines dropped before this one.
        suppressed: u64,
    },
    /// Drop it (counted).
    Suppress,
}

/// Fixed-window log limiter. Windows are aligned on multiples of `window` ticks.
#[derive(Debug)]
pub struct LogLimiter {
    window: u64,
    burst: u64,
    /// Window number (upper 40 bits, wrapping) and lines logged in it (lower 24 bits).
    state: AtomicU64,
    pending_suppressed: AtomicU64,
    total_suppressed: AtomicU64,
}

impl LogLimiter {
    /// At most `burst` lines (capped at 2^24 - 1) per `window` ticks (0 is taken as 1).
    pub const fn new(window: u64, burst: u32) -> Self {
        let burst = burst as u64;
        Self {
            window: if window == 0 { 1 } else { window },
            burst: if burst > COUNT_MASK {
                COUNT_MASK
            } else {
                burst
            },
            state: AtomicU64::new(0),
            pending_suppressed: AtomicU64::new(0),
            total_suppressed: AtomicU64::new(0),
        }
    }

    /// Decides for one line at tick `now`.
    pub fn check(&self, now: u64) -> LogDecision {
        let win = (now / self.window) & (u64::MAX >> COUNT_BITS);
        let mut cur = self.state.load(Relaxed);
        loop {
            let (w, count) = (cur >> COUNT_BITS, cur & COUNT_MASK);
            let (next, first) = if w != win {
                (win << COUNT_BITS, true)
            } else if count < self.burst {
                (cur, false)
            } else {
                self.pending_suppressed.fetch_add(1, Relaxed);
                self.total_suppressed.fetch_add(1, Relaxed);
                return LogDecision::Suppress;
            };
            if self.burst == 0 {
                // Nothing is ever logged; still move to the new window.
                let _ = self.state.compare_exchange(cur, next, Relaxed, Relaxed);
                self.pending_suppressed.fetch_add(1, Relaxed);
                self.total_suppressed.fetch_add(1, Relaxed);
                return LogDecision::Suppress;
            }
            match self
                .state
                .compare_exchange_weak(cur, next + 1, Relaxed, Relaxed)
            {
                Ok(_) => {
                    let suppressed = if first {
                        self.pending_suppressed.swap(0, Relaxed)
                    } else {
                        0
                    };
                    return LogDecision::Log { suppressed };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Lines dropped since the limiter was made.
    pub fn total_suppressed(&self) -> u64 {
        self.total_suppressed.load(Relaxed)
    }
}
