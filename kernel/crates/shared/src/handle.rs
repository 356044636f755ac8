//! [`SharedRegion`]: formatting, attaching, and the typed accessors.

use core::sync::atomic::{AtomicU64, Ordering};

use mk_mailbox::MailboxMatrix;

use crate::instance::Instance;
use crate::layout::{
    ALL_TABLES, Header, InstanceEntry, Layout, LockLine, MAGIC, TableId, VERSION, build_params,
    layout,
};
use crate::lock::{LockName, TicketLock};
use crate::owner::{Owner, Resource, Words};
use crate::{
    Error, InstanceId, MAX_APIC_IDS, MAX_INSTANCES, MAX_IRQS, MEM_CHUNK_SHIFT, MEM_CHUNKS,
};
use mk_raw::Raw;

/// This instance's handle on the shared region. Holds only references into the region (no
/// pointers are stored *in* the region), so every instance can map it at its own address.
pub struct SharedRegion<'a> {
    raw: Raw<'a>,
    header: &'a Header,
    console: &'a LockLine,
    ioapic: &'a LockLine,
    instances: &'a [InstanceEntry],
    cpus: &'a [AtomicU64],
    irqs: &'a [AtomicU64],
    memory: &'a [AtomicU64],
    layout: Layout,
}

impl<'a> SharedRegion<'a> {
    /// Instance 0, once, before any other instance starts: zeroes and formats the region for
    /// `instances` instances (header, console lock, instance table, ownership tables, mailbox
    /// matrix), recording `now_tsc` as creation time. The magic is stored last with Release.
    /// `raw` must start 4 KiB aligned; no other instance may use it until `init` has returned.
    pub fn init(raw: Raw<'a>, instances: usize, now_tsc: u64) -> Result<Self, Error> {
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(Error::BadInstanceCount(instances));
        }
        raw.ensure_aligned(crate::PAGE)?;
        let layout = layout(instances);
        raw.ensure_len(layout.total)?;
        let r = Self::views(raw, layout)?;
        let h = r.header;
        h.magic.store(0, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.instances.store(instances as u32, Ordering::Relaxed);
        h.total_size.store(layout.total as u64, Ordering::Relaxed);
        h.created_tsc.store(now_tsc, Ordering::Relaxed);
        for (field, value) in h.params().into_iter().zip(build_params()) {
            field.store(value, Ordering::Relaxed);
        }
        for (desc, id) in h.tables.iter().zip(ALL_TABLES) {
            let t = layout.table(id);
            desc.offset.store(t.offset as u32, Ordering::Relaxed);
            desc.size.store(t.size as u32, Ordering::Relaxed);
        }
        for w in &h._reserved {
            w.store(0, Ordering::Relaxed);
        }
        for c in [r.console, r.ioapic] {
            for w in [&c.next, &c.serving, &c.holder, &c._reserved] {
                w.store(0, Ordering::Relaxed);
            }
            for w in [
                &c.acquired,
                &c.forced,
                &c.stale_unlocks,
                &c.requeued,
                &c.timed_out,
                &c.repaired,
            ] {
                w.store(0, Ordering::Relaxed);
            }
        }
        for e in r.instances {
            e.clear();
        }
        for w in r.cpus.iter().chain(r.irqs).chain(r.memory) {
            w.store(0, Ordering::Relaxed);
        }
        if instances >= 2 {
            MailboxMatrix::init(r.mailbox_region()?, instances).map_err(Error::Mailbox)?;
        }
        // Release: an attacher that sees the magic (Acquire) sees everything above.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(r)
    }

    /// Any other instance: attaches to a region instance 0 formatted. Checks magic, version,
    /// this build's parameters, the table directory and that `raw` covers the recorded size.
    pub fn attach(raw: Raw<'a>) -> Result<Self, Error> {
        raw.ensure_aligned(crate::PAGE)?;
        let h: &Header = raw.at(0)?;
        let magic = h.magic.load(Ordering::Acquire);
        if magic == 0 {
            return Err(Error::NotInitialised);
        }
        if magic != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(Error::VersionMismatch {
                found: version,
                expected: VERSION,
            });
        }
        let n = h.instances.load(Ordering::Relaxed) as usize;
        if !(1..=MAX_INSTANCES).contains(&n) {
            return Err(Error::BadInstanceCount(n));
        }
        let layout = layout(n);
        if h.total_size.load(Ordering::Relaxed) != layout.total as u64
            || h.params()
                .into_iter()
                .zip(build_params())
                .any(|(f, v)| f.load(Ordering::Relaxed) != v)
            || h.tables.iter().zip(ALL_TABLES).any(|(d, id)| {
                let t = layout.table(id);
                d.offset.load(Ordering::Relaxed) as usize != t.offset
                    || d.size.load(Ordering::Relaxed) as usize != t.size
            })
        {
            return Err(Error::LayoutMismatch);
        }
        raw.ensure_len(layout.total)?;
        Self::views(raw, layout)
    }

    /// Instance 0 only: writes the header back as `init` wrote it, from this handle's layout
    /// and the build's parameters (a stray or hostile write into it would make every later
    /// `attach`, a respawned instance's among them, fail). The creation time is not checked
    /// by `attach` and is left as it is. Returns how many words had changed (0: intact).
    pub fn restore_header(&self) -> usize {
        use mk_raw::{put_back_u32, put_back_u64};
        let h = self.header;
        let mut fixed = put_back_u32(&h.version, VERSION)
            + put_back_u32(&h.instances, self.layout.instances as u32)
            + put_back_u64(&h.total_size, self.layout.total as u64);
        for (field, value) in h.params().into_iter().zip(build_params()) {
            fixed += put_back_u32(field, value);
        }
        for (desc, id) in h.tables.iter().zip(ALL_TABLES) {
            let t = self.layout.table(id);
            fixed += put_back_u32(&desc.offset, t.offset as u32)
                + put_back_u32(&desc.size, t.size as u32);
        }
        for w in &h._reserved {
            fixed += put_back_u32(w, 0);
        }
        // Release, last, as in `init`: an attacher that sees the magic sees the fields above.
        fixed + usize::from(h.magic.swap(MAGIC, Ordering::Release) != MAGIC)
    }

    fn views(raw: Raw<'a>, layout: Layout) -> Result<Self, Error> {
        let t = |id| layout.table(id);
        Ok(Self {
            raw,
            header: raw.at(0)?,
            console: raw.at(t(TableId::Console).offset)?,
            ioapic: raw.at(t(TableId::Console).offset + core::mem::size_of::<LockLine>())?,
            instances: raw.slice(t(TableId::Instances).offset, MAX_INSTANCES)?,
            cpus: raw.slice(t(TableId::Cpus).offset, MAX_APIC_IDS)?,
            irqs: raw.slice(t(TableId::Irqs).offset, MAX_IRQS)?,
            memory: raw.slice(t(TableId::Memory).offset, MEM_CHUNKS)?,
            layout,
        })
    }

    /// Instances the region was formatted for.
    pub fn instance_count(&self) -> usize {
        self.layout.instances
    }

    /// Where everything lives.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes in use (≤ the length given to `init` / `attach`).
    pub fn size(&self) -> usize {
        self.layout.total
    }

    /// TSC of instance 0 when it formatted the region.
    pub fn created_tsc(&self) -> u64 {
        self.header.created_tsc.load(Ordering::Relaxed)
    }

    /// Entry of instance `i` (`< instance_count()`).
    #[inline]
    pub fn instance(&self, i: InstanceId) -> Result<Instance<'a>, Error> {
        let e = self
            .instances
            .get(i.index())
            .filter(|_| i.index() < self.layout.instances)
            .ok_or(Error::BadInstance(i))?;
        Ok(Instance { id: i, e })
    }

    /// The ids of the instances the region was formatted for, `0..instance_count()`.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = InstanceId> + Clone + use<> {
        InstanceId::all(self.layout.instances)
    }

    /// The console lock (lock line 0): taken around every line written to the shared serial
    /// port, with [`TicketLock::lock_or_bypass`].
    pub fn console(&self) -> TicketLock<'a> {
        TicketLock {
            line: self.console,
            name: LockName::Console,
        }
    }

    /// The IO APIC lock (lock line 1): the same ticket lock as the console's, held by whichever
    /// instance programs an IO APIC (an index write followed by a data access must not
    /// interleave with another instance's), taken with [`TicketLock::try_lock`].
    pub fn ioapic_lock(&self) -> TicketLock<'a> {
        TicketLock {
            line: self.ioapic,
            name: LockName::IoApic,
        }
    }

    fn word(&self, r: Resource) -> Result<(Words, &'a AtomicU64), Error> {
        let (table, i) = match r {
            Resource::Cpu(i) => (self.cpus, i),
            Resource::Irq(i) => (self.irqs, i),
            Resource::Memory(i) => (self.memory, i),
        };
        let w = table.get(i as usize).ok_or(Error::BadResource(r))?;
        Ok((
            Words {
                instances: self.layout.instances,
            },
            w,
        ))
    }

    /// Where `r`'s owner word lies in this address space: for the rogue-instance tests,
    /// which write garbage into another instance's word.
    pub fn owner_word_addr(&self, r: Resource) -> Result<usize, Error> {
        let (_, w) = self.word(r)?;
        Ok(core::ptr::from_ref(w).addr())
    }

    /// Current owner (Acquire).
    pub fn owner(&self, r: Resource) -> Result<Owner, Error> {
        let (t, w) = self.word(r)?;
        t.owner(w)
    }

    /// `by` takes `r`: from free if `expected` is `None`, else from `Owned(expected)` (instance
    /// 0 distributing or reclaiming a dead instance's resources). Compare-exchange, AcqRel.
    pub fn claim(
        &self,
        r: Resource,
        by: InstanceId,
        expected: Option<InstanceId>,
    ) -> Result<(), Error> {
        let (t, w) = self.word(r)?;
        t.claim(w, by, expected)
    }

    /// The owner `by` gives `r` up (`Owned(by) -> Free`, Release half of AcqRel).
    pub fn release(&self, r: Resource, by: InstanceId) -> Result<(), Error> {
        let (t, w) = self.word(r)?;
        t.release(w, by)
    }

    /// The owner `from`, having stopped using `r`, starts handing it to `to`:
    /// `Owned(from) -> InTransit{from, to, g}` with a fresh generation `g`, returned (to be sent
    /// to `to`, e.g. in a mailbox message).
    pub fn begin_transfer(
        &self,
        r: Resource,
        from: InstanceId,
        to: InstanceId,
    ) -> Result<u32, Error> {
        let (t, w) = self.word(r)?;
        t.begin_transfer(w, from, to)
    }

    /// The receiver `to` takes `r`: `InTransit{_, to, generation} -> Owned(to)` (Acquire half:
    /// it sees everything `from` did before `begin_transfer`).
    pub fn complete_transfer(
        &self,
        r: Resource,
        to: InstanceId,
        generation: u32,
    ) -> Result<(), Error> {
        let (t, w) = self.word(r)?;
        t.complete_transfer(w, to, generation)
    }

    /// `InTransit{from, _, generation} -> Owned(from)`: the sender takes `r` back (refused, or
    /// `to` died: instance 0 may call it on `from`'s behalf).
    pub fn abort_transfer(
        &self,
        r: Resource,
        from: InstanceId,
        generation: u32,
    ) -> Result<(), Error> {
        let (t, w) = self.word(r)?;
        t.abort_transfer(w, from, generation)
    }

    /// Claims every 2 MiB chunk of `start..start + len` (both 2 MiB aligned, `len > 0`) for
    /// `by`, as [`Self::claim`] does one; all or nothing: on an error the chunks claimed so far
    /// are put back (each by compare-exchange from the value we installed).
    pub fn claim_memory(
        &self,
        start: u64,
        len: u64,
        by: InstanceId,
        expected: Option<InstanceId>,
    ) -> Result<(), Error> {
        let chunks = memory_chunks(start, len)?;
        let t = Words {
            instances: self.layout.instances,
        };
        // `memory_chunks` checked the chunk numbers against the table size.
        for c in chunks.clone() {
            if let Err(e) = t.claim(&self.memory[c as usize], by, expected) {
                self.undo(&t, chunks.start..c, by, expected);
                return Err(e);
            }
        }
        Ok(())
    }

    fn undo(
        &self,
        t: &Words,
        done: core::ops::Range<u32>,
        by: InstanceId,
        prev: Option<InstanceId>,
    ) {
        for c in done {
            let w = &self.memory[c as usize];
            let _ = match prev {
                None => t.release(w, by),
                Some(p) => t.claim(w, p, Some(by)),
            };
        }
    }

    /// The mailbox matrix's window of the region (for `mk_mailbox::MailboxMatrix::attach`);
    /// empty for a single-instance region.
    pub fn mailbox_region(&self) -> Result<Raw<'a>, Error> {
        let t = self.layout.mailbox;
        Ok(self.raw.sub(t.offset, t.size)?)
    }

    /// A mailbox view over the matrix (formatted by `init`), for this instance's ends.
    pub fn mailbox(&self) -> Result<MailboxMatrix<'a>, mk_mailbox::Error> {
        let t = self.layout.mailbox;
        if self.layout.instances < 2 {
            return Err(mk_mailbox::Error::BadInstanceCount(self.layout.instances));
        }
        MailboxMatrix::attach(self.raw.sub(t.offset, t.size)?)
    }

    /// Length of the memory given to `init` / `attach`.
    pub fn mapped_len(&self) -> usize {
        self.raw.len()
    }

    /// Every resource and its owner, in table order (CPUs, IRQ lines, memory chunks); free
    /// ones included. A word that does not decode is reported as its error.
    pub fn resources(&self) -> impl Iterator<Item = (Resource, Result<Owner, Error>)> + '_ {
        let words = Words {
            instances: self.layout.instances,
        };
        let table = move |t: &'a [AtomicU64], make: fn(u32) -> Resource| {
            t.iter()
                .enumerate()
                .map(move |(i, w)| (make(i as u32), words.owner(w)))
        };
        table(self.cpus, Resource::Cpu)
            .chain(table(self.irqs, Resource::Irq))
            .chain(table(self.memory, Resource::Memory))
    }

    /// Instance 0 takes back what `dead` held, into `into`, once `dead` is dead or stopped:
    ///
    /// * `Owned(dead)` becomes `Owned(into)`;
    /// * `InTransit{from: dead, to: into, g}` (handed back before stopping) is completed;
    /// * `InTransit{from: dead, to, g}` to another instance: the giver is gone before
    ///   completing, so the transfer rolls back (`abort_transfer`) and the resource is
    ///   reclaimed like an owned one;
    /// * `InTransit{from, to: dead, g}`: the receiver is gone, so the transfer rolls back to
    ///   `from`, which still runs.
    ///
    /// Each step is one compare-exchange, so a resource has exactly one owner at every
    /// instant; a word that changes under us (a live peer completing a transfer from `dead`
    /// at the same moment) is simply re-read and handled in its new state. A word that does
    /// not decode (a stray or hostile write) is skipped and counted in
    /// [`Reclaimed::corrupt`]: it stops nothing else from coming back, and the caller learns
    /// that the scan did not take back everything it may have had to.
    ///
    /// This trusts the words: whatever a word says `dead` holds comes back. Instance 0 keeps
    /// its own record of who holds what and reclaims by that record with
    /// [`Self::reclaim_resource`] one resource at a time; this whole-table scan is for callers
    /// without such a record (and the tests).
    pub fn reclaim(&self, dead: InstanceId, into: InstanceId) -> Result<Reclaimed, Error> {
        let words = Words {
            instances: self.layout.instances,
        };
        words.check(dead)?;
        words.check(into)?;
        let mut out = Reclaimed::default();
        for (table, kind) in [(self.cpus, 0), (self.irqs, 1), (self.memory, 2)] {
            for w in table {
                match reclaim_word(&words, w, dead, into) {
                    Ok(step) => {
                        out.rolled_back += step.rolled_back;
                        if step.took {
                            out.count[kind] += 1;
                        }
                    }
                    Err(_) => out.corrupt += 1,
                }
            }
        }
        Ok(out)
    }

    /// [`Self::reclaim`] for the one resource `r`: what `dead` held of it (owned, or in transit
    /// from or to it) goes to `into` or back to the live giver, by the same compare-exchanges.
    /// Returns what was done and the owner the word holds afterwards; a word that does not
    /// decode is [`Error::Corrupt`] and left alone.
    pub fn reclaim_resource(
        &self,
        r: Resource,
        dead: InstanceId,
        into: InstanceId,
    ) -> Result<ReclaimStep, Error> {
        let (t, w) = self.word(r)?;
        t.check(dead)?;
        t.check(into)?;
        reclaim_word(&t, w, dead, into)
    }

    /// Instance 0 only, when its own record of who holds `r` overrules the shared word (a
    /// word that does not decode, or names an owner instance 0 never gave `r` to): the word
    /// becomes `owner` outright (one atomic swap, AcqRel), keeping the generation bits it
    /// held. Returns the raw word it replaced, for the log. Never a transfer: `owner` must be
    /// `Free` or `Owned`.
    pub fn overrule_owner(&self, r: Resource, owner: Owner) -> Result<u64, Error> {
        let (t, w) = self.word(r)?;
        match owner {
            Owner::Free => {}
            Owner::Owned(o) => t.check(o)?,
            Owner::InTransit { .. } => return Err(Error::WrongOwner { found: owner }),
        }
        let old = w.load(Ordering::Acquire);
        let generation = (old >> 32) as u32;
        Ok(w.swap(crate::owner::encode(owner, generation), Ordering::AcqRel))
    }
}

/// What [`SharedRegion::reclaim_resource`] did to one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimStep {
    /// The word went to the reclaimer (claimed from `dead`, or a hand-back completed).
    pub took: bool,
    /// Transfers to or from `dead` rolled back on the way.
    pub rolled_back: u32,
    /// The word's owner afterwards.
    pub now: Owner,
}

/// One word of [`SharedRegion::reclaim`]. Bounded: every pass either changes the word or
/// finds it settled.
fn reclaim_word(
    words: &Words,
    w: &AtomicU64,
    dead: InstanceId,
    into: InstanceId,
) -> Result<ReclaimStep, Error> {
    let mut rolled_back = 0;
    let mut now = words.owner(w)?;
    for _ in 0..8 {
        match now {
            Owner::Owned(o) if o == dead => {
                if words.claim(w, into, Some(dead)).is_ok() {
                    return Ok(ReclaimStep {
                        took: true,
                        rolled_back,
                        now: Owner::Owned(into),
                    });
                }
            }
            Owner::InTransit {
                from,
                to,
                generation,
            } if from == dead && to == into => {
                // Handed back before stopping: the reclaimer completes it.
                if words.complete_transfer(w, into, generation).is_ok() {
                    return Ok(ReclaimStep {
                        took: true,
                        rolled_back,
                        now: Owner::Owned(into),
                    });
                }
            }
            Owner::InTransit {
                from,
                to,
                generation,
            } if from == dead || to == dead => {
                if words.abort_transfer(w, from, generation).is_ok() {
                    rolled_back += 1;
                }
                // Re-read: now Owned(from) (reclaimed next pass if from == dead).
            }
            _ => break,
        }
        now = words.owner(w)?;
    }
    Ok(ReclaimStep {
        took: false,
        rolled_back,
        now,
    })
}

/// What [`SharedRegion::reclaim`] took back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Resources now owned by the reclaiming instance: CPUs, IRQ lines, memory chunks.
    pub count: [u32; 3],
    /// Transfers rolled back (to or from the dead instance).
    pub rolled_back: u32,
    /// Words that did not decode: skipped, so whatever they stood for did not come back.
    pub corrupt: u32,
}

impl Reclaimed {
    pub fn cpus(&self) -> u32 {
        self.count[0]
    }
    pub fn irqs(&self) -> u32 {
        self.count[1]
    }
    pub fn memory_chunks(&self) -> u32 {
        self.count[2]
    }
}

/// The 2 MiB chunk numbers covering `start..start + len`, both 2 MiB aligned.
pub fn memory_chunks(start: u64, len: u64) -> Result<core::ops::Range<u32>, Error> {
    let mask = (1u64 << MEM_CHUNK_SHIFT) - 1;
    if start & mask != 0 || len & mask != 0 || len == 0 {
        return Err(Error::Unaligned { start, len });
    }
    let end = start
        .checked_add(len)
        .ok_or(Error::Unaligned { start, len })?;
    let (a, b) = (start >> MEM_CHUNK_SHIFT, end >> MEM_CHUNK_SHIFT);
    if b > MEM_CHUNKS as u64 {
        return Err(Error::BadResource(Resource::Memory(
            a.min(u64::from(u32::MAX)) as u32,
        )));
    }
    Ok(a as u32..b as u32)
}
