//! Instance 0's private record of the machine: who holds each CPU, IRQ line and 2 MiB memory
//! chunk, and where each instance is in its life, as instance 0 itself set it up (the boot
//! plan) and changed it since (the moves it brokered, the deaths it declared, the shutdowns
//! it asked for, the resources it took back, the respawns it did).
//!
//! Every other instance can write every word of the shared region (ring 0, no
//! virtualization), so the shared owner words and state words are *hints*: instance 0 reads
//! them, checks them against this record, and where they disagree it logs and counts the
//! [`Disagreement`] and decides by the record:
//!
//! | question | answered by |
//! |---|---|
//! | which CPUs to INIT when instance `k` dies | [`Ledger::cpus_to_stop`]: the record's CPUs of `k` that are in the MADT, never the xAPIC broadcast, never one instance 0 runs on |
//! | is `k` running, stopped on request, dead? | [`Ledger::judge`]: the record's life of `k`; a state word instance 0 did not expect is restored, never obeyed |
//! | what comes back when `k` ends | [`Ledger::held_by`] and [`Ledger::reclaim_action`]: what the record gives `k`; a word naming `k` that the record does not give it is put back as the record says ([`Ledger::restore_action`]) |
//! | may `g` give resource `r` away now | [`Ledger::may_give`]: the record says `g` holds `r`, and the word agrees |
//!
//! The crate is pure logic (`no_std` with `alloc`, no `unsafe`), tested on the host. The
//! kernel keeps one `Ledger` in instance 0, behind a lock taken only for short, call-free
//! sections (never across a message).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use mk_ids::InstanceId;
use mk_shared::{
    Error, InstanceState, MAX_APIC_IDS, MAX_INSTANCES, MAX_IRQS, MEM_CHUNKS, Owner, Resource,
};

#[cfg(test)]
mod region_tests;
#[cfg(test)]
mod tests;

pub use mk_ids::XAPIC_BROADCAST;

/// What the record says of one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Who holds it (`None`: nobody; not in the plan, or a chunk two partitions share).
    pub holder: Option<InstanceId>,
    /// Instance 0 is handing it (it holds it) to this instance and has not heard back.
    pub moving_to: Option<InstanceId>,
}

impl Entry {
    /// Whether instance `k` holds it or is being given it.
    pub fn involves(&self, k: InstanceId) -> bool {
        self.holder == Some(k) || self.moving_to == Some(k)
    }

    /// Whether the shared owner word `word` is one this record allows: the holder's
    /// `Owned`; a holder other than 0 handing it back to 0 (a move's first step, a shutdown);
    /// during a hand-off from 0 to `t`, `InTransit{0 -> t}` or `Owned(t)` (taken, answer not
    /// back yet); `Free` for nobody's.
    pub fn allows(&self, word: Owner) -> bool {
        match (self.holder, self.moving_to, word) {
            (None, _, w) => w == Owner::Free,
            (Some(h), _, Owner::Owned(o)) if o == h => true,
            (Some(h), None, Owner::InTransit { from, to, .. }) => {
                from == h && to.is_supervisor() && !h.is_supervisor()
            }
            (Some(h), Some(t), Owner::InTransit { from, to, .. }) => from == h && to == t,
            (Some(_), Some(t), Owner::Owned(o)) => o == t,
            _ => false,
        }
    }

    /// The owner word this record stands for when nothing is in flight.
    pub fn owner(&self) -> Owner {
        self.holder.map_or(Owner::Free, Owner::Owned)
    }
}

/// An instance's life as instance 0 knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Not in the plan, or never started.
    Absent,
    /// Instance 0 started it and waits for it (the launcher decides how that ends).
    Starting,
    /// Up, as far as instance 0 knows: watched for signs of life.
    Running,
    /// Instance 0 asked it to shut down (or crash); it should stop, or go silent.
    StopAsked,
    /// Ended: stopped on request (`word` Stopped) or declared dead (`word` Dead), its
    /// resources back with instance 0 once `collected`.
    Ended {
        /// The state word instance 0 expects (and restores).
        word: InstanceState,
        /// Its resources are back with instance 0 (a respawn may go ahead).
        collected: bool,
    },
}

impl Life {
    /// The state word this life should show, if one is fixed.
    pub fn expected_word(self) -> Option<InstanceState> {
        match self {
            Self::Absent => Some(InstanceState::Empty),
            Self::Starting => None,
            Self::Running => Some(InstanceState::Running),
            Self::StopAsked => None,
            Self::Ended { word, .. } => Some(word),
        }
    }
}

impl fmt::Display for Life {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("absent"),
            Self::Starting => f.write_str("starting"),
            Self::Running => f.write_str("running"),
            Self::StopAsked => f.write_str("asked to stop"),
            Self::Ended { word, collected } => write!(
                f,
                "{}{}",
                word.name(),
                if *collected { ", collected" } else { "" }
            ),
        }
    }
}

/// A shared word that disagrees with the record: logged and counted by instance 0, never
/// obeyed. Someone other than instance 0 wrote it (a buggy or hostile instance), or a
/// transfer the record knows nothing of was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// An instance's state word.
    State {
        instance: InstanceId,
        record: Life,
        /// The word, decoded, or its raw value when it does not decode.
        word: Result<InstanceState, u32>,
    },
    /// A resource's owner word.
    Owner {
        resource: Resource,
        record: Entry,
        /// The word, decoded, or its raw value when it does not decode.
        word: Result<Owner, u64>,
    },
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::State {
                instance,
                record,
                word,
            } => {
                write!(f, "instance {instance}'s state word says ")?;
                match word {
                    Ok(s) => f.write_str(s.name())?,
                    Err(raw) => write!(f, "{raw:#x} (not a state)")?,
                }
                write!(f, ", instance 0's record says {record}")
            }
            Self::Owner {
                resource,
                record,
                word,
            } => {
                write!(f, "{resource:?}: the owner word says ")?;
                match word {
                    Ok(o) => write!(f, "{o:?}")?,
                    Err(raw) => write!(f, "{raw:#x} (not an owner)")?,
                }
                write!(f, ", instance 0's record says {:?}", record.owner())?;
                if let Some(t) = record.moving_to {
                    write!(f, " (being handed to instance {t})")?;
                }
                Ok(())
            }
        }
    }
}

/// Why instance 0 refuses to move a resource, or to act on a request about one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such resource in the record's tables (the caller's argument).
    NoSuchResource(Resource),
    /// The record does not give the resource to the instance named as its giver (the
    /// caller's argument, or the shared table it was read from, is wrong).
    NotHolder {
        resource: Resource,
        holder: Option<InstanceId>,
        named: InstanceId,
    },
    /// Instance 0 is in the middle of handing it to this instance: wait for that to end.
    Moving { resource: Resource, to: InstanceId },
    /// The shared owner word disagrees with the record (someone else wrote it): nothing is
    /// moved on its say-so.
    Word(Disagreement),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchResource(r) => write!(f, "there is no {r:?}"),
            Self::NotHolder {
                resource,
                holder: Some(h),
                named,
            } => write!(
                f,
                "{resource:?} is instance {h}'s by instance 0's record, not instance {named}'s"
            ),
            Self::NotHolder {
                resource,
                holder: None,
                named,
            } => write!(
                f,
                "{resource:?} is nobody's by instance 0's record, not instance {named}'s"
            ),
            Self::Moving { resource, to } => {
                write!(
                    f,
                    "{resource:?} is being handed to instance {to}; try again"
                )
            }
            Self::Word(d) => write!(f, "refused, the shared table disagrees: {d}"),
        }
    }
}

/// What instance 0 should do about an instance after reading its state word
/// ([`Ledger::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Check its signs of life (declare it dead if silent too long).
    pub watch_liveness: bool,
    /// It stopped as asked: take back what it handed over.
    pub collect: bool,
    /// Write this state into its word (the record overrules what is there).
    pub restore: Option<InstanceState>,
    /// What disagreed (new since the last report for this instance), to log.
    pub disagreement: Option<Disagreement>,
}

/// How instance 0 takes one resource of a dead instance back ([`Ledger::reclaim_action`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimAction {
    /// The word agrees with the record (or shows the dead instance giving away what the
    /// record gives it): reclaim by compare-exchange (`SharedRegion::reclaim_resource`).
    Step,
    /// The word disagrees: overrule it with `Owned(0)` (the record decides), and log this.
    Overrule(Disagreement),
}

const NOBODY: u8 = 0xFF;

/// One table of slots and how its index names a resource.
type Table<'a> = (&'a [Slot], fn(u32) -> Resource);

#[derive(Clone, Copy)]
struct Slot {
    holder: u8,
    moving: u8,
}

impl Slot {
    const EMPTY: Self = Self {
        holder: NOBODY,
        moving: NOBODY,
    };
}

fn id_of(b: u8) -> Option<InstanceId> {
    (b != NOBODY).then(|| InstanceId::new(u16::from(b)))
}

/// Instance 0's record (see the crate documentation).
pub struct Ledger {
    instances: usize,
    /// APIC IDs the MADT lists (sorted): nothing else is ever sent an INIT.
    madt: Vec<u32>,
    cpus: Vec<Slot>,
    irqs: Vec<Slot>,
    memory: Vec<Slot>,
    life: [Life; MAX_INSTANCES],
    /// Per instance, the last disagreeing state word reported (reported once per value).
    reported_state: [Option<u32>; MAX_INSTANCES],
    disagreements: u64,
}

impl Ledger {
    /// An empty record for `instances` instances (`1..=MAX_INSTANCES`) on a machine whose
    /// MADT lists the CPUs `madt` (APIC IDs; the broadcast ID and IDs beyond the owner table
    /// are dropped). Instance 0 is running; the others are absent until [`Self::starting`].
    pub fn new(instances: usize, madt: &[u32]) -> Result<Self, Error> {
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(Error::BadInstanceCount(instances));
        }
        let mut madt: Vec<u32> = madt
            .iter()
            .copied()
            .filter(|&a| a != XAPIC_BROADCAST && (a as usize) < MAX_APIC_IDS)
            .collect();
        madt.sort_unstable();
        madt.dedup();
        let mut life = [Life::Absent; MAX_INSTANCES];
        life[0] = Life::Running;
        Ok(Self {
            instances,
            madt,
            cpus: alloc::vec![Slot::EMPTY; MAX_APIC_IDS],
            irqs: alloc::vec![Slot::EMPTY; MAX_IRQS],
            memory: alloc::vec![Slot::EMPTY; MEM_CHUNKS],
            life,
            reported_state: [None; MAX_INSTANCES],
            disagreements: 0,
        })
    }

    /// Instances the record is for.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// Disagreements found so far (every one logged by the caller).
    pub fn disagreements(&self) -> u64 {
        self.disagreements
    }

    fn check(&self, k: InstanceId) -> Result<(), Error> {
        if k.index() < self.instances {
            Ok(())
        } else {
            Err(Error::BadInstance(k))
        }
    }

    fn slot(&self, r: Resource) -> Option<&Slot> {
        match r {
            Resource::Cpu(i) => self.cpus.get(i as usize),
            Resource::Irq(i) => self.irqs.get(i as usize),
            Resource::Memory(i) => self.memory.get(i as usize),
        }
    }

    fn slot_mut(&mut self, r: Resource) -> Result<&mut Slot, Error> {
        match r {
            Resource::Cpu(i) => self.cpus.get_mut(i as usize),
            Resource::Irq(i) => self.irqs.get_mut(i as usize),
            Resource::Memory(i) => self.memory.get_mut(i as usize),
        }
        .ok_or(Error::BadResource(r))
    }

    /// What the record says of `r` (`None`: no such resource).
    pub fn entry(&self, r: Resource) -> Option<Entry> {
        self.slot(r).map(|s| Entry {
            holder: id_of(s.holder),
            moving_to: id_of(s.moving),
        })
    }

    /// Who holds `r` by the record.
    pub fn holder(&self, r: Resource) -> Option<InstanceId> {
        self.entry(r).and_then(|e| e.holder)
    }

    /// Records that `k` holds `r` and nothing is in flight: the plan at boot, and every step
    /// instance 0 itself completed (a hand-back it took, a hand-off acknowledged, a reclaim).
    pub fn give(&mut self, r: Resource, k: InstanceId) -> Result<(), Error> {
        self.check(k)?;
        *self.slot_mut(r)? = Slot {
            holder: k.index() as u8,
            moving: NOBODY,
        };
        Ok(())
    }

    /// Records every 2 MiB chunk wholly inside `[start, start + len)` as `k`'s (a
    /// partition's range in the plan; partial chunks at its edges stay nobody's, as in the
    /// shared table).
    pub fn give_range(&mut self, start: u64, len: u64, k: InstanceId) -> Result<(), Error> {
        let size = mk_shared::MEM_CHUNK_SIZE;
        let end = start
            .checked_add(len)
            .ok_or(Error::Unaligned { start, len })?;
        let (first, last) = (start.next_multiple_of(size), end & !(size - 1));
        let mut a = first;
        while a < last {
            self.give(Resource::memory_at(a), k)?;
            a += size;
        }
        Ok(())
    }

    /// Whether `giver` may give `r` away now: the record says `giver` holds it, nothing is
    /// in flight, and the shared word (`word`, as read now) agrees. A disagreeing word is
    /// counted and refused.
    pub fn may_give(
        &mut self,
        r: Resource,
        giver: InstanceId,
        word: Result<Owner, Error>,
    ) -> Result<(), Refusal> {
        let e = self.entry(r).ok_or(Refusal::NoSuchResource(r))?;
        if let Some(to) = e.moving_to {
            return Err(Refusal::Moving { resource: r, to });
        }
        if e.holder != Some(giver) {
            return Err(Refusal::NotHolder {
                resource: r,
                holder: e.holder,
                named: giver,
            });
        }
        self.check_word(r, word).map_err(Refusal::Word)
    }

    /// Checks the shared owner word of `r` against the record; a disagreement is counted and
    /// returned (to log).
    pub fn check_word(
        &mut self,
        r: Resource,
        word: Result<Owner, Error>,
    ) -> Result<(), Disagreement> {
        let e = self.entry(r).unwrap_or_default();
        let ok = matches!(word, Ok(w) if e.allows(w));
        if ok {
            return Ok(());
        }
        Err(self.count(Disagreement::Owner {
            resource: r,
            record: e,
            word: word_of(word),
        }))
    }

    /// Checks that the word shows `from` handing `r` to instance 0 with generation `g`, as
    /// `from` says it did (a move's first step); the record must give `r` to `from`. Anything
    /// else is counted and returned: the generation the giver reports is never taken on
    /// trust.
    pub fn check_handed_back(
        &mut self,
        r: Resource,
        from: InstanceId,
        g: u32,
        word: Result<Owner, Error>,
    ) -> Result<(), Disagreement> {
        let e = self.entry(r).unwrap_or_default();
        let expected = Owner::InTransit {
            from,
            to: InstanceId::ZERO,
            generation: g,
        };
        if e.holder == Some(from) && e.moving_to.is_none() && word == Ok(expected) {
            return Ok(());
        }
        Err(self.count(Disagreement::Owner {
            resource: r,
            record: e,
            word: word_of(word),
        }))
    }

    /// Instance 0 starts handing `r`, which the record gives it, to `to`.
    pub fn start_handoff(&mut self, r: Resource, to: InstanceId) -> Result<(), Refusal> {
        self.check(to).map_err(|_| Refusal::NoSuchResource(r))?;
        let e = self.entry(r).ok_or(Refusal::NoSuchResource(r))?;
        if let Some(t) = e.moving_to {
            return Err(Refusal::Moving { resource: r, to: t });
        }
        if e.holder != Some(InstanceId::ZERO) {
            return Err(Refusal::NotHolder {
                resource: r,
                holder: e.holder,
                named: InstanceId::ZERO,
            });
        }
        if let Ok(s) = self.slot_mut(r) {
            s.moving = to.index() as u8;
        }
        Ok(())
    }

    /// The hand-off of `r` ended: `taken` (the receiver holds it now) or not (instance 0
    /// keeps it). Nothing if no hand-off was in flight.
    pub fn end_handoff(&mut self, r: Resource, taken: bool) {
        if let Ok(s) = self.slot_mut(r) {
            if s.moving == NOBODY {
                return;
            }
            if taken {
                s.holder = s.moving;
            }
            s.moving = NOBODY;
        }
    }

    /// The CPUs to stop with an INIT when instance `k` ends: those the record gives `k` (or
    /// has instance 0 handing to `k`), that the MADT lists, that are not the broadcast ID and
    /// not among `running_here` (the CPUs instance 0 itself runs on). Whatever the shared
    /// words say.
    pub fn cpus_to_stop(&self, k: InstanceId, running_here: &[u32]) -> Vec<u32> {
        self.madt
            .iter()
            .copied()
            .filter(|&a| {
                a != XAPIC_BROADCAST
                    && !running_here.contains(&a)
                    && self.entry(Resource::Cpu(a)).is_some_and(|e| e.involves(k))
            })
            .collect()
    }

    /// Every resource the record gives `k` or has instance 0 handing to `k`, in table order.
    pub fn held_by(&self, k: InstanceId) -> Vec<Resource> {
        let k = k.index();
        let mut out = Vec::new();
        let tables: [Table<'_>; 3] = [
            (&self.cpus, Resource::Cpu),
            (&self.irqs, Resource::Irq),
            (&self.memory, Resource::Memory),
        ];
        for (table, make) in tables {
            for (i, s) in table.iter().enumerate() {
                if usize::from(s.holder) == k || usize::from(s.moving) == k {
                    out.push(make(i as u32));
                }
            }
        }
        out
    }

    /// How to take `r`, which the record gives the ended instance `dead` (see
    /// [`Self::held_by`]), back into instance 0, given its word as read now: by the usual
    /// compare-exchanges when the word agrees with the record or shows `dead` handing it
    /// somewhere (its own act on what it held); else the record overrules the word (counted).
    pub fn reclaim_action(
        &mut self,
        r: Resource,
        dead: InstanceId,
        word: Result<Owner, Error>,
    ) -> ReclaimAction {
        let e = self.entry(r).unwrap_or_default();
        let agrees = match word {
            Ok(w) if e.allows(w) => true,
            Ok(Owner::InTransit { from, .. }) => from == dead && e.holder == Some(dead),
            _ => false,
        };
        if agrees {
            ReclaimAction::Step
        } else {
            ReclaimAction::Overrule(self.count(Disagreement::Owner {
                resource: r,
                record: e,
                word: word_of(word),
            }))
        }
    }

    /// A word that names the ended instance `dead` (as owner, giver or receiver) for a
    /// resource the record does *not* give it: `dead` (or someone) forged it. Returns the
    /// owner the record stands for, to write back, and the disagreement (counted); `None` if
    /// the word does not name `dead`, the record does give it `dead`, or instance 0 has a
    /// hand-off of `r` in flight (left to that hand-off).
    pub fn restore_action(
        &mut self,
        r: Resource,
        dead: InstanceId,
        word: Result<Owner, Error>,
    ) -> Option<(Owner, Disagreement)> {
        let e = self.entry(r)?;
        let names = match word {
            Ok(Owner::Owned(o)) => o == dead,
            Ok(Owner::InTransit { from, to, .. }) => from == dead || to == dead,
            _ => false,
        };
        if !names || e.involves(dead) || e.moving_to.is_some() {
            return None;
        }
        let d = self.count(Disagreement::Owner {
            resource: r,
            record: e,
            word: word_of(word),
        });
        Some((e.owner(), d))
    }

    /// Instance `k`'s life in the record.
    pub fn life(&self, k: InstanceId) -> Life {
        self.life.get(k.index()).copied().unwrap_or(Life::Absent)
    }

    fn set_life(&mut self, k: InstanceId, life: Life) {
        if let Some(l) = self.life.get_mut(k.index()) {
            *l = life;
        }
        if let Some(r) = self.reported_state.get_mut(k.index()) {
            *r = None;
        }
    }

    /// Instance 0 is starting (or restarting) `k`.
    pub fn starting(&mut self, k: InstanceId) {
        if !k.is_supervisor() {
            self.set_life(k, Life::Starting);
        }
    }

    /// `k` reported running while instance 0 waited for it (the launcher's verdict).
    pub fn started(&mut self, k: InstanceId) {
        if !k.is_supervisor() {
            self.set_life(k, Life::Running);
        }
    }

    /// Instance 0 asks `k` to shut down (or crash): a `Stopped` word is expected from now on.
    /// Refused unless the record has `k` running.
    pub fn ask_stop(&mut self, k: InstanceId) -> Result<(), Life> {
        match self.life(k) {
            Life::Running if !k.is_supervisor() => {
                self.set_life(k, Life::StopAsked);
                Ok(())
            }
            other => Err(other),
        }
    }

    /// `k` refused (or never got) the request to stop: it runs on.
    pub fn stop_refused(&mut self, k: InstanceId) {
        if self.life(k) == Life::StopAsked {
            self.set_life(k, Life::Running);
        }
    }

    /// Instance 0 declared `k` dead (silent too long, or its start failed). Refused for
    /// instance 0 itself and for an instance that already ended.
    pub fn declare_dead(&mut self, k: InstanceId) -> Result<(), Life> {
        match self.life(k) {
            l @ Life::Ended { .. } => Err(l),
            l if k.is_supervisor() || k.index() >= self.instances => Err(l),
            _ => {
                self.set_life(
                    k,
                    Life::Ended {
                        word: InstanceState::Dead,
                        collected: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// `k`'s resources are back with instance 0: it may be respawned.
    pub fn collected(&mut self, k: InstanceId) {
        let word = match self.life(k) {
            Life::Ended { word, .. } => word,
            Life::StopAsked => InstanceState::Stopped,
            _ => return,
        };
        self.set_life(
            k,
            Life::Ended {
                word,
                collected: true,
            },
        );
    }

    /// Whether instance 0 may start `k` again: only once it ended and its resources are
    /// back. Returns its life otherwise.
    pub fn may_respawn(&self, k: InstanceId) -> Result<(), Life> {
        match self.life(k) {
            Life::Ended {
                collected: true, ..
            } if !k.is_supervisor() => Ok(()),
            other => Err(other),
        }
    }

    /// What to do about instance `k` given its state word as read now. The record decides:
    ///
    /// * running: watch its signs of life; any other word is restored to `Running` (another
    ///   instance wrote it, or `k` wrote garbage);
    /// * asked to stop: `Stopped` is collected; `Running` is watched (not stopped yet);
    ///   anything else is watched and reported;
    /// * starting: left to the launcher (`Running` is adopted);
    /// * ended or absent: never watched nor collected again; a word other than the one
    ///   instance 0 left there is restored.
    ///
    /// A disagreement is counted and returned once per distinct word value.
    pub fn judge(&mut self, k: InstanceId, word: Result<InstanceState, u32>) -> Verdict {
        let record = self.life(k);
        let mut v = Verdict {
            watch_liveness: false,
            collect: false,
            restore: None,
            disagreement: None,
        };
        let disagrees = match (record, word) {
            (Life::Starting, Ok(InstanceState::Running)) => {
                self.started(k);
                v.watch_liveness = true;
                false
            }
            (Life::Starting, _) => false,
            (Life::Running, Ok(InstanceState::Running)) => {
                v.watch_liveness = !k.is_supervisor();
                false
            }
            (Life::Running, _) => {
                v.watch_liveness = !k.is_supervisor();
                v.restore = Some(InstanceState::Running);
                true
            }
            (Life::StopAsked, Ok(InstanceState::Stopped)) => {
                v.collect = true;
                false
            }
            (Life::StopAsked, Ok(InstanceState::Running)) => {
                v.watch_liveness = true;
                false
            }
            (Life::StopAsked, _) => {
                v.watch_liveness = true;
                true
            }
            (l @ (Life::Ended { .. } | Life::Absent), w) => {
                let expected = l.expected_word();
                let ok = expected.is_some_and(|e| w == Ok(e));
                if !ok {
                    v.restore = expected;
                }
                !ok
            }
        };
        if disagrees {
            let raw = match word {
                Ok(s) => s as u32,
                Err(raw) => raw,
            };
            let seen = self.reported_state.get_mut(k.index());
            if let Some(seen) = seen
                && *seen != Some(raw)
            {
                *seen = Some(raw);
                v.disagreement = Some(self.count(Disagreement::State {
                    instance: k,
                    record,
                    word,
                }));
            }
        } else if let Some(seen) = self.reported_state.get_mut(k.index()) {
            *seen = None;
        }
        v
    }

    fn count(&mut self, d: Disagreement) -> Disagreement {
        self.disagreements += 1;
        d
    }
}

/// What instance 0 did about one disagreement found while reclaiming ([`Ledger::reclaim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fix {
    /// The record gives the resource to the dead instance: the word was overruled with
    /// `Owned(0)`.
    TakenBack,
    /// The word named the dead instance for a resource the record gives elsewhere: written
    /// back as the record says.
    WrittenBack(Owner),
    /// The word could not be written (no such resource in the region: a bug).
    NotFixed,
}

/// What [`Ledger::reclaim`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reclaim {
    /// Taken back (by compare-exchange or by overruling the word), rolled back, and not
    /// back (`corrupt`: resources of the record whose word could not be written).
    pub got: mk_shared::Reclaimed,
    /// Every disagreement found (counted), and what was done about it: to log.
    pub disagreements: Vec<(Disagreement, Fix)>,
    /// Resources the record still gives the dead instance afterwards (0: it is collected).
    pub left: usize,
}

impl Ledger {
    /// Instance 0 takes back, into itself, everything the record gives the ended instance
    /// `dead` (or has instance 0 handing to it), deciding by the record:
    ///
    /// * a word that agrees with the record, or shows `dead` handing the resource somewhere
    ///   (its own act on what it held), goes through the usual compare-exchanges
    ///   (`SharedRegion::reclaim_resource`: claimed, hand-back completed, transfers rolled
    ///   back); if it ends anywhere but with instance 0 (it changed meanwhile) it is
    ///   overruled;
    /// * any other word (corrupt, `Free`, naming another instance) is overruled with
    ///   `Owned(0)`: counted and reported, never a reason to stop;
    /// * then every word naming `dead` for a resource the record gives elsewhere (a forgery)
    ///   is written back as the record says, counted and reported.
    ///
    /// The record then gives instance 0 everything that came back; the instance is collected
    /// only if nothing of the record is left ([`Reclaim::left`]). Sends nothing: call it
    /// under the kernel's lock.
    pub fn reclaim(&mut self, r: &mk_shared::SharedRegion<'_>, dead: InstanceId) -> Reclaim {
        let zero = InstanceId::ZERO;
        let mut out = Reclaim::default();
        if dead.is_supervisor() || self.check(dead).is_err() {
            out.left = self.held_by(dead).len();
            return out;
        }
        for res in self.held_by(dead) {
            let word = r.owner(res);
            let (back, took) = match self.reclaim_action(res, dead, word) {
                ReclaimAction::Step => match r.reclaim_resource(res, dead, zero) {
                    Ok(step) => {
                        out.got.rolled_back += step.rolled_back;
                        if step.now == Owner::Owned(zero) {
                            (true, step.took)
                        } else {
                            // It changed under us: the record decides.
                            let d = self.count(Disagreement::Owner {
                                resource: res,
                                record: self.entry(res).unwrap_or_default(),
                                word: Ok(step.now),
                            });
                            let back = r.overrule_owner(res, Owner::Owned(zero)).is_ok();
                            out.disagreements.push((d, fix_taken(back)));
                            (back, back)
                        }
                    }
                    Err(e) => {
                        let d = self.count(Disagreement::Owner {
                            resource: res,
                            record: self.entry(res).unwrap_or_default(),
                            word: word_of(Err(e)),
                        });
                        let back = r.overrule_owner(res, Owner::Owned(zero)).is_ok();
                        out.disagreements.push((d, fix_taken(back)));
                        (back, back)
                    }
                },
                ReclaimAction::Overrule(d) => {
                    let back = r.overrule_owner(res, Owner::Owned(zero)).is_ok();
                    out.disagreements.push((d, fix_taken(back)));
                    (back, back)
                }
            };
            if back {
                // `give` cannot fail: `res` came from the record, 0 is an instance.
                let _ = self.give(res, zero);
                if took {
                    out.got.count[kind(res)] += 1;
                }
            } else {
                out.got.corrupt += 1;
            }
        }
        let mut restores = Vec::new();
        for (res, word) in r.resources() {
            if let Some(x) = self.restore_action(res, dead, word) {
                restores.push((res, x));
            }
        }
        for (res, (owner, d)) in restores {
            let fix = match r.overrule_owner(res, owner) {
                Ok(_) => Fix::WrittenBack(owner),
                Err(_) => Fix::NotFixed,
            };
            out.disagreements.push((d, fix));
        }
        out.left = self.held_by(dead).len();
        if out.left == 0 {
            self.collected(dead);
        }
        out
    }
}

fn fix_taken(back: bool) -> Fix {
    if back { Fix::TakenBack } else { Fix::NotFixed }
}

/// Index of `res`'s table in `Reclaimed::count`.
fn kind(res: Resource) -> usize {
    match res {
        Resource::Cpu(_) => 0,
        Resource::Irq(_) => 1,
        Resource::Memory(_) => 2,
    }
}

fn word_of(word: Result<Owner, Error>) -> Result<Owner, u64> {
    word.map_err(|e| match e {
        Error::Corrupt(raw) => raw,
        _ => u64::MAX,
    })
}

/// Who may send a request of a kind that changes what an instance holds or whether it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Only instance 0 (SHUTDOWN, CPU/MEM_REMOVE and _ADD, IRQ_BALANCE to anyone but 0,
    /// IRQ_MASK/UNMASK).
    Supervisor,
    /// Instance 0, or the instance that (by instance 0's record) holds the resource: an
    /// IRQ_BALANCE handing a line back to instance 0.
    SupervisorOrHolder,
}

impl Ledger {
    /// Whether `sender` may ask for an operation needing `authority` on `r`: instance 0
    /// always; a holder only where `authority` allows and the record says it holds `r`.
    pub fn authorizes(&self, sender: InstanceId, authority: Authority, r: Resource) -> bool {
        sender.is_supervisor()
            || (authority == Authority::SupervisorOrHolder && self.holder(r) == Some(sender))
    }
}
