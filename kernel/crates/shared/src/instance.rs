//! Instance table entries: life cycle, heartbeat, published resources.

use core::sync::atomic::{Ordering, fence};

use crate::layout::{InstanceEntry, REPORT_WORDS};
use crate::{CPUS_PER_INSTANCE, Error, InstanceId, RANGES_PER_INSTANCE};

/// Life cycle of an instance, as recorded in its entry.
///
/// ```text
///   Empty --(0: start_boot)--> Booting --(self: mark_running)--> Running
///     ^                          |  \                               |
///     |                          |   (self: failed boot)            (self: stop)
///  (0: after reclaiming)         v    `--------------------------> Stopped --(0: start_boot)-->
///     |                                                             |         Booting
///   Dead <--(0: declared dead, from Booting / Running / Stopped)----'
///   Stopped --(0)--> Empty
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InstanceState {
    /// No instance in this slot (zeroed memory).
    Empty = 0,
    /// Instance 0 has started it; it has not declared itself ready.
    Booting = 1,
    /// Up and serving.
    Running = 2,
    /// Stopped in an orderly way (its resources may be reclaimed).
    Stopped = 3,
    /// Declared dead by instance 0 (no heartbeat, crash); its resources are to be reclaimed.
    Dead = 4,
}

impl InstanceState {
    /// The state's name as people read it (tables, screen headers, the shell): `empty`,
    /// `booting`, `running`, `stopped`, `dead`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Dead => "dead",
        }
    }

    /// Decodes a state word.
    pub const fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Empty,
            1 => Self::Booting,
            2 => Self::Running,
            3 => Self::Stopped,
            4 => Self::Dead,
            _ => return None,
        })
    }

    /// Whether `self -> to` is a transition of the life cycle (who may do it is documented on
    /// [`Instance::set_state`]).
    pub const fn can_become(self, to: Self) -> bool {
        use InstanceState::*;
        matches!(
            (self, to),
            (Empty | Stopped, Booting)
                | (Booting, Running)
                | (Booting | Running, Stopped)
                | (Booting | Running | Stopped, Dead)
                | (Dead | Stopped, Empty)
        )
    }
}

/// A consistent snapshot of an instance's published resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceResources {
    cpu_count: usize,
    apic_ids: [u32; CPUS_PER_INSTANCE],
    range_count: usize,
    ranges: [(u64, u64); RANGES_PER_INSTANCE],
    /// Sum of the ranges' lengths.
    pub total_bytes: u64,
}

impl InstanceResources {
    /// APIC IDs of the instance's CPUs.
    pub fn cpus(&self) -> &[u32] {
        &self.apic_ids[..self.cpu_count]
    }

    /// `(start, len)` of each memory range.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.range_count]
    }
}

/// Seqlock read attempts before [`Instance::resources`] gives up with [`Error::Busy`].
pub const RESOURCE_READ_RETRIES: u32 = 1 << 16;

/// Accessor for one instance table entry.
///
/// Who writes what: the instance itself writes its heartbeat, resources, last error, ready TSC
/// and its own state transitions (`Booting -> Running`, `-> Stopped`); instance 0 writes the boot
/// TSC and the transitions `-> Booting`, `-> Dead` and `-> Empty`. State changes are
/// compare-exchanges, so the two writers of the state word cannot lose each other's update.
#[derive(Clone, Copy)]
pub struct Instance<'a> {
    pub(crate) id: InstanceId,
    pub(crate) e: &'a InstanceEntry,
}

impl Instance<'_> {
    /// Which instance this entry describes.
    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// Whether the state word says `Running` (Acquire, as [`Self::state`]): the send path's
    /// check, one load and one compare, inlined into the caller.
    #[inline]
    pub fn is_running(&self) -> bool {
        self.e.status.state.load(Ordering::Acquire) == InstanceState::Running as u32
    }

    /// Current state (Acquire: what the writer published before the transition is visible).
    pub fn state(&self) -> Result<InstanceState, Error> {
        let v = self.e.status.state.load(Ordering::Acquire);
        InstanceState::from_raw(v).ok_or(Error::Corrupt(u64::from(v)))
    }

    /// Moves to `to` if that is a life-cycle transition from the current state; returns the
    /// previous state. Compare-exchange with AcqRel (Release publishes the caller's earlier
    /// writes, e.g. TSCs and resources, to whoever reads the new state with Acquire).
    ///
    /// `Booting -> Running`, `-> Stopped`: the instance itself. `-> Booting`, `-> Dead`,
    /// `-> Empty`: instance 0.
    pub fn set_state(&self, to: InstanceState) -> Result<InstanceState, Error> {
        let word = &self.e.status.state;
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let from = InstanceState::from_raw(cur).ok_or(Error::Corrupt(u64::from(cur)))?;
            if !from.can_become(to) {
                return Err(Error::BadTransition { from, to });
            }
            match word.compare_exchange_weak(cur, to as u32, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(from),
                Err(now) => cur = now,
            }
        }
    }

    /// Instance 0 only, when its own record of the instance's life overrules the word (the
    /// word holds garbage, or a state instance 0 never saw it reach, e.g. `Stopped` written by
    /// a third instance): the word becomes `to` outright (one atomic swap, AcqRel), whatever
    /// it held. Returns the previous word, decoded if it decodes (`Err(raw)` otherwise), for
    /// the log. Not a life-cycle transition: [`Self::set_state`] is for those.
    pub fn overrule_state(&self, to: InstanceState) -> Result<InstanceState, u32> {
        let old = self.e.status.state.swap(to as u32, Ordering::AcqRel);
        InstanceState::from_raw(old).ok_or(old)
    }

    /// Where the entry lies in this address space (address, bytes): for the rogue-instance
    /// tests, which scribble over their own entry.
    pub fn span(&self) -> (usize, usize) {
        (
            core::ptr::from_ref(self.e).addr(),
            size_of::<InstanceEntry>(),
        )
    }

    /// The raw state word (diagnostics: what a corrupt word held).
    pub fn state_word(&self) -> u32 {
        self.e.status.state.load(Ordering::Acquire)
    }

    /// Exactly `expected -> to` (compare-exchange, AcqRel), failing with
    /// [`Error::StateChanged`] if the state is not `expected`.
    pub fn transition(&self, expected: InstanceState, to: InstanceState) -> Result<(), Error> {
        if !expected.can_become(to) {
            return Err(Error::BadTransition { from: expected, to });
        }
        self.e
            .status
            .state
            .compare_exchange(
                expected as u32,
                to as u32,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|v| match InstanceState::from_raw(v) {
                Some(found) => Error::StateChanged { found },
                None => Error::Corrupt(u64::from(v)),
            })
    }

    /// Instance 0, before starting the instance: records `now_tsc` as boot time, clears the
    /// ready time, heartbeat and last error, then `Empty | Stopped -> Booting` (Release).
    pub fn start_boot(&self, now_tsc: u64) -> Result<(), Error> {
        let from = self.state()?;
        if !from.can_become(InstanceState::Booting) {
            return Err(Error::BadTransition {
                from,
                to: InstanceState::Booting,
            });
        }
        let s = &self.e.status;
        s.boot_tsc.store(now_tsc, Ordering::Relaxed);
        s.ready_tsc.store(0, Ordering::Relaxed);
        s.last_error.store(0, Ordering::Relaxed);
        self.e.heartbeat.count.store(0, Ordering::Relaxed);
        self.transition(from, InstanceState::Booting)
    }

    /// The instance itself: records `now_tsc` as ready time, then `Booting -> Running`
    /// (Release: resources published before are visible to whoever sees `Running`).
    pub fn mark_running(&self, now_tsc: u64) -> Result<(), Error> {
        self.e.status.ready_tsc.store(now_tsc, Ordering::Relaxed);
        self.transition(InstanceState::Booting, InstanceState::Running)
    }

    /// TSC when instance 0 started it (read after [`Self::state`] for a consistent view).
    pub fn boot_tsc(&self) -> u64 {
        self.e.status.boot_tsc.load(Ordering::Relaxed)
    }

    /// TSC when it declared itself running (0: not yet).
    pub fn ready_tsc(&self) -> u64 {
        self.e.status.ready_tsc.load(Ordering::Relaxed)
    }

    /// The instance itself: one heartbeat. Single writer, so a plain load and a Release store
    /// (no locked instruction); returns the new count.
    pub fn beat(&self) -> u64 {
        let c = &self.e.heartbeat.count;
        let n = c.load(Ordering::Relaxed).wrapping_add(1);
        c.store(n, Ordering::Release);
        n
    }

    /// Heartbeat count (Acquire). A watcher compares successive values to spot a dead instance.
    pub fn heartbeat(&self) -> u64 {
        self.e.heartbeat.count.load(Ordering::Acquire)
    }

    /// The instance itself: publishes report word `slot` (value Relaxed, then its presence bit
    /// with Release). Out-of-range slots are refused.
    pub fn set_report(&self, slot: usize, value: u64) -> Result<(), Error> {
        let word = self.e.reports.words.get(slot).ok_or(Error::TooMany {
            given: slot + 1,
            max: REPORT_WORDS,
        })?;
        word.store(value, Ordering::Relaxed);
        self.e
            .reports
            .present
            .fetch_or(1 << slot, Ordering::Release);
        Ok(())
    }

    /// Report word `slot`, if the instance published it (presence bit with Acquire, then the
    /// value).
    pub fn report(&self, slot: usize) -> Option<u64> {
        let word = self.e.reports.words.get(slot)?;
        let present = self.e.reports.present.load(Ordering::Acquire);
        (present & (1 << slot) != 0).then(|| word.load(Ordering::Relaxed))
    }

    /// The instance itself: records an error code (Release).
    pub fn set_last_error(&self, code: u32) {
        self.e.status.last_error.store(code, Ordering::Release);
    }

    /// Last error code (Acquire; 0: none).
    pub fn last_error(&self) -> u32 {
        self.e.status.last_error.load(Ordering::Acquire)
    }

    /// The instance itself: publishes its CPUs (APIC IDs) and memory ranges `(start, len)`,
    /// replacing what it published before. Seqlock write: `seq` odd (Relaxed) + Release fence,
    /// Relaxed field stores, `seq` even with Release. Readers never see a torn list.
    pub fn publish_resources(&self, cpus: &[u32], ranges: &[(u64, u64)]) -> Result<(), Error> {
        if cpus.len() > CPUS_PER_INSTANCE {
            return Err(Error::TooMany {
                given: cpus.len(),
                max: CPUS_PER_INSTANCE,
            });
        }
        if ranges.len() > RANGES_PER_INSTANCE {
            return Err(Error::TooMany {
                given: ranges.len(),
                max: RANGES_PER_INSTANCE,
            });
        }
        let total = ranges
            .iter()
            .try_fold(0u64, |t, &(_, len)| t.checked_add(len))
            .ok_or(Error::TooMany {
                given: usize::MAX,
                max: u64::MAX as usize,
            })?;
        let r = &self.e.res;
        // Single writer: `seq` is even here unless a previous writer died mid-way; make it odd.
        let s = r.seq.load(Ordering::Relaxed) | 1;
        r.seq.store(s, Ordering::Relaxed);
        fence(Ordering::Release);
        r.cpu_count.store(cpus.len() as u32, Ordering::Relaxed);
        r.range_count.store(ranges.len() as u32, Ordering::Relaxed);
        r.total_bytes.store(total, Ordering::Relaxed);
        for (slot, &id) in self.e.apic_ids.0.iter().zip(cpus) {
            slot.store(id, Ordering::Relaxed);
        }
        for (slot, &(start, len)) in self.e.ranges.0.iter().zip(ranges) {
            slot.start.store(start, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
        }
        r.seq.store(s.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Consistent snapshot of the published resources. Seqlock read: `seq` (Acquire, must be
    /// even), Relaxed field loads, Acquire fence, `seq` again (must be unchanged); retried up to
    /// [`RESOURCE_READ_RETRIES`] times, then [`Error::Busy`] (writer died mid-publish).
    pub fn resources(&self) -> Result<InstanceResources, Error> {
        let r = &self.e.res;
        for _ in 0..RESOURCE_READ_RETRIES {
            let s1 = r.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let mut out = InstanceResources {
                cpu_count: (r.cpu_count.load(Ordering::Relaxed) as usize).min(CPUS_PER_INSTANCE),
                apic_ids: [0; CPUS_PER_INSTANCE],
                range_count: (r.range_count.load(Ordering::Relaxed) as usize)
                    .min(RANGES_PER_INSTANCE),
                ranges: [(0, 0); RANGES_PER_INSTANCE],
                total_bytes: r.total_bytes.load(Ordering::Relaxed),
            };
            for (o, a) in out.apic_ids.iter_mut().zip(&self.e.apic_ids.0) {
                *o = a.load(Ordering::Relaxed);
            }
            for (o, w) in out.ranges.iter_mut().zip(&self.e.ranges.0) {
                *o = (
                    w.start.load(Ordering::Relaxed),
                    w.len.load(Ordering::Relaxed),
                );
            }
            fence(Ordering::Acquire);
            if r.seq.load(Ordering::Relaxed) == s1 {
                // Only the published prefix is meaningful; clear the rest for `Eq`.
                out.apic_ids[out.cpu_count..].fill(0);
                out.ranges[out.range_count..].fill((0, 0));
                return Ok(out);
            }
        }
        Err(Error::Busy)
    }
}
