//! The interrupt surface (issue 15, item 10): what another instance can do to this one by
//! sending it interrupts, and the pure logic that bounds it. No `unsafe`, no hardware: the
//! kernel's interrupt handlers (`arch`) and its doorbell (`messaging::doorbell`) feed these
//! the TSC and act on the verdicts; everything here is tested on the host.
//!
//! Any instance can send any fixed IPI to any APIC ID (ring 0, no virtualization). What it
//! must not achieve by that is to keep a CPU of another instance in its interrupt handlers,
//! make that instance's periodic work (timer hooks) run faster than its clock, or make
//! device handlers and the benchmark's probe handler run at its rate. So each vector a peer
//! can send gets a gate, kept per CPU (each CPU's handlers touch only their own):
//!
//! * [`Bucket`] (doorbell, probe, each device line): a token bucket; past it the interrupt is
//!   only counted and acknowledged ([`Verdict::Drop`]), and the doorbell's caller also raises
//!   the task priority for a while;
//! * [`TickGate`] (timer): a tick is taken only if at least half a period passed since the
//!   last one taken, so forged timer IPIs cannot make the tick hooks run more than twice as
//!   often as the clock says.
//!
//! And where a doorbell goes: [`Book`] holds, from the boot plan (a private copy, never the
//! shared table), the APIC IDs each instance's CPUs may have; a sender rings only an APIC ID
//! the book gives the target instance, never a broadcast ([`Book::target`]).
//!
//! The gates are made of atomics with plain loads and stores: one CPU (the owner, in its
//! handlers, interrupts off) writes each, so no read-modify-write is needed; were two CPUs to
//! share one, counts would be approximate, never unsound.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

/// What a gate says about one interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: run the handler.
    Take,
    /// Over the rate: count it, acknowledge it, run nothing. `first` is true for the first
    /// drop since the gate last took one (the start of a flood: count it once, e.g. to log).
    Drop { first: bool },
}

impl Verdict {
    pub fn taken(self) -> bool {
        self == Verdict::Take
    }
}

/// The rate of a [`Bucket`]: `burst` interrupts at once, then one per `ticks_per_token`
/// (TSC ticks). `ticks_per_token == 0`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u64,
    pub ticks_per_token: u64,
}

impl Rate {
    /// `burst`, then one every `micros` µs, for a clock of `ticks_per_ms` ticks per ms.
    pub const fn per_micros(burst: u64, micros: u64, ticks_per_ms: u64) -> Self {
        Self {
            burst,
            ticks_per_token: micros.saturating_mul(ticks_per_ms) / 1000,
        }
    }
}

/// A token bucket over the caller's clock, writable through `&self` by its one owner.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Tokens left, plus one (0: never used, the bucket is full).
    tokens: AtomicU64,
    /// Tick up to which refills were credited.
    last: AtomicU64,
    /// Interrupts dropped, in all.
    dropped: AtomicU64,
    /// Floods: runs of drops (a drop after a take, or the first drop).
    floods: AtomicU64,
    /// Whether the last verdict was a drop.
    dropping: AtomicU64,
}

impl Bucket {
    pub const fn new() -> Self {
        Self {
            tokens: AtomicU64::new(0),
            last: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            floods: AtomicU64::new(0),
            dropping: AtomicU64::new(0),
        }
    }

    /// One interrupt at tick `now`.
    pub fn admit(&self, now: u64, rate: Rate) -> Verdict {
        if rate.ticks_per_token == 0 {
            return Verdict::Take;
        }
        let (mut tokens, mut last) = match self.tokens.load(Ordering::Relaxed) {
            0 => (rate.burst, now),
            t => (t - 1, self.last.load(Ordering::Relaxed)),
        };
        // A clock behind `last` (another CPU's TSC, a wrap) credits nothing.
        if now > last {
            let add = (now - last) / rate.ticks_per_token;
            if add > 0 {
                tokens = tokens.saturating_add(add).min(rate.burst);
                last = if tokens == rate.burst {
                    now
                } else {
                    last + add * rate.ticks_per_token
                };
            }
        }
        let verdict = if tokens > 0 {
            tokens -= 1;
            self.dropping.store(0, Ordering::Relaxed);
            Verdict::Take
        } else {
            let first = self.dropping.swap(1, Ordering::Relaxed) == 0;
            self.dropped
                .store(self.dropped.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            if first {
                self.floods
                    .store(self.floods.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            Verdict::Drop { first }
        };
        self.last.store(last, Ordering::Relaxed);
        self.tokens.store(tokens + 1, Ordering::Relaxed);
        verdict
    }

    /// Interrupts dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Floods so far (runs of drops).
    pub fn floods(&self) -> u64 {
        self.floods.load(Ordering::Relaxed)
    }
}

/// The timer's gate: a tick is taken only if at least `min_gap` ticks of the clock passed
/// since the last one taken.
#[derive(Debug, Default)]
pub struct TickGate {
    /// Clock at the last tick taken, plus one (0: none yet).
    last: AtomicU64,
    dropped: AtomicU64,
}

impl TickGate {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// One timer interrupt at `now`; `min_gap` is half the timer's period (0: take all).
    pub fn admit(&self, now: u64, min_gap: u64) -> Verdict {
        let last = self.last.load(Ordering::Relaxed);
        // A clock that went back (`now < last`) takes the tick: the gate must never stop the
        // timer for good.
        if last == 0 || now < last - 1 || now - (last - 1) >= min_gap {
            self.last.store(now.saturating_add(1), Ordering::Relaxed);
            return Verdict::Take;
        }
        let d = self.dropped.load(Ordering::Relaxed);
        self.dropped.store(d + 1, Ordering::Relaxed);
        Verdict::Drop { first: d == 0 }
    }

    /// Timer interrupts dropped (forged, or a real one right behind a forged one).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// At most one report per period: for log lines about floods, whose cause may repeat millions
/// of times a second.
#[derive(Debug, Default)]
pub struct Every {
    /// Clock at the last report, plus one (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Every {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to report now (`Some(reports suppressed since the last one)`), at most once per
    /// `period`. Several CPUs may call it: a race at worst lets two reports through.
    pub fn check(&self, now: u64, period: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now >= last - 1 && now - (last - 1) < period {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last.store(now.saturating_add(1), Ordering::Relaxed);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Most CPUs a [`Book`] holds (the plan's limit, `mk_plan::MAX_CPUS`).
pub const BOOK_CPUS: usize = 512;

/// The xAPIC broadcast destination (and what `icr_dest` makes of x2APIC ID 255).
pub use mk_ids::XAPIC_BROADCAST;
/// The x2APIC broadcast destination.
pub const X2APIC_BROADCAST: u32 = u32::MAX;

/// The APIC IDs the boot plan gave each instance: where a doorbell for it may go. Built once
/// at boot from a private copy of the plan (instance 0's own plan; the boot descriptor
/// instance 0 wrote into every other instance's memory), never from the shared table.
///
/// An instance's mailboxes are served by its first CPU; that CPU is always one the plan gave
/// it (a first CPU never moves, and a respawn starts on the first of the plan's CPUs that
/// instance 0 holds), so the plan's list is the whole set of right answers.
#[derive(Debug, Clone)]
pub struct Book {
    apic: [u32; BOOK_CPUS],
    owner: [u16; BOOK_CPUS],
    len: usize,
}

/// Why [`Book::record`] refused an entry (the plan given at boot is at fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookError {
    /// More than [`BOOK_CPUS`] CPUs.
    Full,
    /// A broadcast ID as a CPU.
    Broadcast(u32),
    /// The same APIC ID given to two instances.
    Twice { apic: u32, first: u16, second: u16 },
}

/// Why [`Book::target`] would not ring: the target instance's published word is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target published no CPU (or its entry does not read).
    NothingPublished,
    /// It published a broadcast destination.
    Broadcast { published: u32 },
    /// It published an APIC ID the plan did not give it (another instance's, or none's).
    NotInPlan { published: u32, owner: Option<u16> },
    /// The book has no plan yet (a boot-order bug in this instance).
    NoPlan,
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NothingPublished => f.write_str("it published no CPU"),
            Self::Broadcast { published } => {
                write!(f, "it published the broadcast destination {published:#x}")
            }
            Self::NotInPlan {
                published,
                owner: Some(o),
            } => write!(
                f,
                "it published APIC ID {published}, which the plan gave instance {o}"
            ),
            Self::NotInPlan {
                published,
                owner: None,
            } => write!(
                f,
                "it published APIC ID {published}, which is in no partition"
            ),
            Self::NoPlan => f.write_str("this instance has no copy of the plan"),
        }
    }
}

impl Default for Book {
    fn default() -> Self {
        Self::new()
    }
}

impl Book {
    pub const fn new() -> Self {
        Self {
            apic: [0; BOOK_CPUS],
            owner: [0; BOOK_CPUS],
            len: 0,
        }
    }

    /// Records that the plan gave `apic` to `instance`.
    pub fn record(&mut self, instance: u16, apic: u32) -> Result<(), BookError> {
        if apic == XAPIC_BROADCAST || apic == X2APIC_BROADCAST {
            return Err(BookError::Broadcast(apic));
        }
        if let Some(first) = self.owner_of(apic) {
            if first == instance {
                return Ok(());
            }
            return Err(BookError::Twice {
                apic,
                first,
                second: instance,
            });
        }
        let i = self.len;
        if i >= BOOK_CPUS {
            return Err(BookError::Full);
        }
        self.apic[i] = apic;
        self.owner[i] = instance;
        self.len = i + 1;
        Ok(())
    }

    /// CPUs recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The instance the plan gave `apic` to.
    pub fn owner_of(&self, apic: u32) -> Option<u16> {
        self.apic[..self.len]
            .iter()
            .position(|&a| a == apic)
            .map(|i| self.owner[i])
    }

    /// Where a doorbell for `instance` goes, given the CPU it published (`None`: none or
    /// unreadable): that CPU if the plan gave it to `instance`, else the refusal.
    pub fn target(&self, instance: u16, published: Option<u32>) -> Result<u32, Refusal> {
        if self.len == 0 {
            return Err(Refusal::NoPlan);
        }
        let published = published.ok_or(Refusal::NothingPublished)?;
        if published == XAPIC_BROADCAST || published == X2APIC_BROADCAST {
            return Err(Refusal::Broadcast { published });
        }
        match self.owner_of(published) {
            Some(o) if o == instance => Ok(published),
            owner => Err(Refusal::NotInPlan { published, owner }),
        }
    }
}

#[cfg(test)]
mod tests;
