//! [`RateLimiter`]: a token bucket over caller-supplied ticks, to bound how much work a peer
//! that floods doorbells can make us do.

/// Token bucket: holds up to `burst` tokens, gains one every `ticks_per_token` ticks of the
/// caller's clock (TSC, timer ticks...), and [`RateLimiter::allow`] spends one.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    burst: u64,
    ticks_per_token: u64,
    tokens: u64,
    /// Tick up to which refills have been credited.
    last: u64,
    denied: u64,
}

impl RateLimiter {
    /// A full bucket of `burst` tokens at tick `now`. `ticks_per_token == 0` means unlimited.
    pub const fn new(burst: u64, ticks_per_token: u64, now: u64) -> Self {
        Self {
            burst,
            ticks_per_token,
            tokens: burst,
            last: now,
            denied: 0,
        }
    }

    fn refill(&mut self, now: u64) {
        // A clock that goes backwards (or another CPU's slightly behind TSC) credits nothing.
        if now <= self.last {
            return;
        }
        let elapsed = now - self.last;
        let add = elapsed / self.ticks_per_token;
        if add == 0 {
            return;
        }
        self.tokens = self.tokens.saturating_add(add).min(self.burst);
        // Keep the fractional progress towards the next token unless the bucket is full.
        self.last = if self.tokens == self.burst {
            now
        } else {
            self.last + add * self.ticks_per_token
        };
    }

    /// Takes one token at tick `now`: `true` if allowed, `false` if the peer is over its rate
    /// (the caller then e.g. masks or ignores its doorbells until later).
    pub fn allow(&mut self, now: u64) -> bool {
        if self.ticks_per_token == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.denied = self.denied.wrapping_add(1);
            false
        }
    }

    /// Tokens left as of the last call.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Calls refused so far.
    pub fn denied(&self) -> u64 {
        self.denied
    }
}
