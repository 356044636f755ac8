//! The region of physical memory shared by all multikernel instances: its layout and typed,
//! race-free access to it.
//!
//! Kernel instances share nothing but this region (each maps it, possibly at a different
//! virtual address) and the interrupt controller. Instance 0 formats it once with
//! [`SharedRegion::init`] before starting anyone else; the others [`SharedRegion::attach`]. It
//! holds: a header, the two shared locks, the instance table, the ownership tables for CPUs, IRQ
//! lines and memory, and the mk-mailbox matrix. This crate is pure logic (`no_std`, no `alloc`),
//! tested on the host with threads standing in for instances.
//!
//! # Layout
//!
//! All offsets are from the region base, which must be 4 KiB aligned; nothing in the region is
//! a pointer. Sizes are fixed by this build's constants except the mailbox matrix, which depends
//! on the instance count `n` ([`region_size`]`(n)`, [`layout`]`(n)`):
//!
//! ```text
//!  offset     size      table                                          written by
//!  0x00000       128    Header (2 lines): magic "MKSHARED" (u64), version,  instance 0, once
//!                       n, total size, creation TSC, build parameters
//!                       (header size, MAX_INSTANCES, CPU/IRQ entries, memory
//!                       chunks, chunk shift, CPUs/ranges per instance);
//!                       line 1: directory of (offset u32, size u32) for the
//!                       six tables below, in this order
//!  0x00080       128    Locks (2 lines, one ticket lock each): line 0 the   every instance
//!                       console lock, line 1 the IO APIC lock; each: next  (ticket lock)
//!                       ticket, serving, holder, counters (acquired/forced/
//!                       stale/requeued/timed out/repaired)
//!  0x00100    12 288    Instance table: MAX_INSTANCES (16) entries x 768 B  see below
//!  0x03100     2 048    CPU owner words: 256 x u64, index = APIC ID         compare-exchange
//!  0x03900       512    IRQ owner words: 64 x u64, index = GSI              compare-exchange
//!  0x03b00   262 144    Memory owner words: 32 768 x u64, one per 2 MiB     compare-exchange
//!                       chunk of physical memory below 64 GiB
//!  0x44000   mailbox    mk-mailbox matrix, 4 KiB aligned:                   see mk-mailbox
//!                       64 + n(n-1) x 4 352 B (none if n = 1)
//!  total = 0x44000 + mailbox, rounded up to 4 KiB:
//!          n = 2: 0x47000 (290 816 B)   n = 4: 0x51000   n = 16: 0x144000 (1 327 104 B)
//!
//!  one instance entry (768 B = 12 lines)
//!  +0    status:    state u32, last error u32, boot TSC u64, ready TSC u64
//!                   (state: CAS by self and instance 0; boot TSC: instance 0; rest: self)
//!  +64   heartbeat: count u64                                            self only
//!  +128  resources: seq u32 (seqlock), cpu count u32, range count u32,   self only
//!                   total bytes u64
//!  +192  APIC IDs:  64 x u32                                             self only
//!  +448  ranges:    16 x (start u64, len u64)                            self only
//!  +704  reports:   present bits u64, 7 x u64 free-form report words    self only
//! ```
//!
//! The header is read-only after `init`, so it sits in every cache at no cost. Each instance
//! entry line has a single regular writer; the heartbeat, the one frequently written word, has
//! a line of its own. Owner words are written rarely (boot, hotplug, reclaim) and packed eight
//! to a line.
//!
//! # Ownership words
//!
//! Every CPU (by APIC ID, < [`MAX_APIC_IDS`]), IRQ line (by GSI, < [`MAX_IRQS`]) and 2 MiB
//! memory chunk (< [`MEM_CHUNKS`], i.e. physical memory below 64 GiB) has one `AtomicU64`
//! encoding [`Owner`]: `Free`, `Owned(i)` or `InTransit { from, to, generation }` (tag in bits
//! 0..8, owner/from in 8..16, to in 16..24, generation in 32..64). It changes only by
//! compare-exchange, so a resource is never owned by two instances. A transfer:
//!
//! 1. `from` stops using the resource, then [`SharedRegion::begin_transfer`] →
//!    `InTransit{from, to, g}`, with `g` one more than the resource's last generation; `from`
//!    tells `to` (resource, `g`) by mailbox.
//! 2. `to` calls [`SharedRegion::complete_transfer`]`(r, to, g)` → `Owned(to)`, or `from` (or
//!    instance 0 on behalf of a dead `to`) calls [`SharedRegion::abort_transfer`]`(r, from, g)`
//!    → `Owned(from)`. Wrong party: [`Error::WrongOwner`]; stale generation:
//!    [`Error::WrongGeneration`]; nothing in transit: [`Error::NotInTransit`].
//!
//! [`SharedRegion::claim`] takes a free resource (`expected = None`) or one owned by
//! `expected` (instance 0 handing out the plan or reclaiming a dead instance's resources);
//! [`SharedRegion::release`] frees one. An in-transit resource can be neither claimed, released
//! nor transferred again ([`Error::InTransit`]) until the transfer is completed or aborted.
//!
//! Memory is tracked in 2 MiB chunks: [`SharedRegion::claim_memory`] takes a 2 MiB-aligned
//! range, all or nothing. Partition boundaries that are not 2 MiB aligned (e.g. a sized
//! partition of 1 MiB + 4 KiB) put one chunk in two partitions; only one of them can own it in
//! the table, so the plan should use 2 MiB multiples for memory that is ever transferred.
//!
//! # Memory ordering rules
//!
//! * **Format / attach.** `init` writes everything Relaxed, then the magic with **Release**;
//!   `attach` loads the magic with **Acquire** before reading anything else.
//! * **Publish, then read.** A writer stores data Relaxed and then the word that announces it
//!   with **Release** (state transition, heartbeat, last error, seqlock end); readers load that
//!   word with **Acquire** first. TSCs of an entry are published by its state transition: read
//!   [`Instance::state`] first.
//! * **Resources** (CPU list, ranges) are a seqlock: writer `seq` odd, Release fence, Relaxed
//!   stores, `seq` even with Release; reader `seq` Acquire, Relaxed loads, Acquire fence, `seq`
//!   again; retry on odd or changed. No torn list is ever returned.
//! * **State words and owner words** change only by compare-exchange with **AcqRel** (Acquire
//!   on failure): the previous owner's use of a resource happens-before the next owner's.
//! * **Shared locks:** ticket `fetch_add` Relaxed; wait for `serving` with Acquire; unlock
//!   by compare-exchange `serving: t -> t + 1` with Release; forces and repairs of `serving`
//!   by compare-exchange with AcqRel.
//! * Single-writer counters (heartbeat) are a load plus a store, no locked instruction.
//!
//! # The shared locks
//!
//! [`TicketLock`] is the lock type of the only two cross-instance locks: the console lock
//! ([`SharedRegion::console`]), only for the shared serial port so that lines of different
//! instances never interleave mid-line, and the IO APIC lock ([`SharedRegion::ioapic_lock`]),
//! only around an IO APIC's index/data register pair. Both are ticket locks whose every wait is
//! bounded in time by a clock the caller passes ([`WaitBound`], in ticks; the kernel uses the
//! TSC and [`CONSOLE_WAIT`] / [`IOAPIC_WAIT`]), never by a count of polls that a writer could
//! reset:
//!
//! * `serving` standing still for [`WaitBound::stall`]: the holder is presumed dead, the waiter
//!   advances `serving` by compare-exchange ([`LockStats::forced`]); an unlock that finds its
//!   lock broken leaves `serving` alone ([`LockStats::stale_unlocks`]).
//! * `serving` more than [`MAX_QUEUE`] behind the waiter's ticket or ahead of `next` (a stray
//!   or hostile write): the waiter sets it to its ticket ([`LockStats::repaired`]).
//! * [`WaitBound::total`] passed since the call, however `serving` moved meanwhile: the console
//!   waiter goes on without the lock ([`TicketLock::lock_or_bypass`]; its guard unlocks nothing)
//!   and the IO APIC waiter gets [`LockTimedOut`] ([`TicketLock::try_lock`]); both count
//!   [`LockStats::timed_out`].
//!
//! So a broken or hostile instance can garble console lines and fail IO APIC operations, but
//! can delay no other instance's wait beyond its bound. Everything else between instances is
//! lock-free (owner words) or single-writer (instance entries, mailboxes).
//!
//! All shared memory is accessed only through atomics, so even a broken peer cannot cause a
//! data race, only values that the decoders reject ([`Error::Corrupt`]). The crate has no
//! `unsafe` (`forbid(unsafe_code)`): memory comes in as an [`mk_raw::Raw`] view, which does the
//! checked casts.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod allocation;
mod handle;
mod instance;
mod layout;
mod lock;
mod owner;

#[cfg(test)]
mod tests;

pub use allocation::{
    Allocation, AllocationLayout, TELEMETRY_ROWS, Telemetry, allocation_layout, allocation_size,
};
pub use handle::{ReclaimStep, Reclaimed, SharedRegion, memory_chunks};
pub use instance::{Instance, InstanceResources, InstanceState, RESOURCE_READ_RETRIES};
pub use layout::{
    INSTANCE_ENTRY_SIZE, Layout, MAGIC, PAGE, REPORT_WORDS, Table, VERSION, layout, region_size,
};
pub use lock::{
    Acquired, CONSOLE_WAIT, EMERGENCY_WAIT, IOAPIC_WAIT, LockGuard, LockName, LockStats,
    LockTimedOut, MAX_QUEUE, TicketLock, WaitBound, WaitMs,
};
pub use mk_ids::InstanceId;
pub use owner::{Owner, Resource};

/// Cache line size everything is aligned to.
pub const CACHE_LINE: usize = 64;
/// Most instances (entries in the instance table), as in mk-plan.
pub const MAX_INSTANCES: usize = 16;
/// Entries of the CPU owner table: APIC IDs `0..MAX_APIC_IDS` (xAPIC IDs are 8-bit).
pub const MAX_APIC_IDS: usize = 256;
/// Entries of the IRQ owner table: GSIs `0..MAX_IRQS`.
pub const MAX_IRQS: usize = 64;
/// log2 of the memory chunk size (2 MiB, a large page).
pub const MEM_CHUNK_SHIFT: u32 = 21;
/// Bytes per memory chunk.
pub const MEM_CHUNK_SIZE: u64 = 1 << MEM_CHUNK_SHIFT;
/// Physical memory covered by the memory owner table (64 GiB).
pub const MAX_PHYS_MEMORY: u64 = 64 << 30;
/// Entries of the memory owner table.
pub const MEM_CHUNKS: usize = (MAX_PHYS_MEMORY >> MEM_CHUNK_SHIFT) as usize;
/// APIC IDs an instance can publish.
pub const CPUS_PER_INSTANCE: usize = 64;
/// Memory ranges an instance can publish (as mk-plan's `MAX_PARTITION_RANGES`).
pub const RANGES_PER_INSTANCE: usize = 16;

/// Everything that can go wrong. Never a panic: every check of shared memory returns one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Null or not 4 KiB-aligned base (or a table not aligned for its type).
    Misaligned,
    /// The memory given is shorter than the layout needs.
    RegionTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Magic is 0: instance 0 has not formatted the region (yet).
    NotInitialised,
    /// Magic wrong: not a shared region.
    BadMagic,
    /// Formatted by another layout version.
    VersionMismatch {
        /// Version in shared memory.
        found: u32,
        /// This build's [`VERSION`].
        expected: u32,
    },
    /// Header size, build parameters or table directory differ from this build's.
    LayoutMismatch,
    /// Instance count not in `1..=MAX_INSTANCES`.
    BadInstanceCount(usize),
    /// Instance id not below the region's instance count.
    BadInstance(InstanceId),
    /// Resource index beyond its table.
    BadResource(Resource),
    /// A memory range not 2 MiB aligned or empty.
    Unaligned {
        /// Start given.
        start: u64,
        /// Length given.
        len: u64,
    },
    /// More CPUs / ranges than an entry holds.
    TooMany {
        /// Count given.
        given: usize,
        /// Capacity.
        max: usize,
    },
    /// Not a life-cycle transition.
    BadTransition {
        /// Current (or expected) state.
        from: InstanceState,
        /// Requested state.
        to: InstanceState,
    },
    /// [`Instance::transition`]: the state was not the expected one.
    StateChanged {
        /// State found.
        found: InstanceState,
    },
    /// A seqlock read kept failing (the writer died mid-publish).
    Busy,
    /// The resource is not in the state the operation needs (not owned by the caller, not
    /// free, or in transit to / from someone else).
    WrongOwner {
        /// What the owner word holds.
        found: Owner,
    },
    /// The resource is in transit; complete or abort that transfer first.
    InTransit {
        /// Sender.
        from: InstanceId,
        /// Receiver.
        to: InstanceId,
        /// Transfer generation.
        generation: u32,
    },
    /// Complete / abort of a resource that is not in transit.
    NotInTransit {
        /// What the owner word holds.
        found: Owner,
    },
    /// Complete / abort with another transfer's generation.
    WrongGeneration {
        /// Generation given.
        given: u32,
        /// Generation of the transfer in progress.
        found: u32,
    },
    /// Transfer from an instance to itself.
    SameInstance(InstanceId),
    /// A shared word holds a value this build never writes.
    Corrupt(u64),
    /// Formatting the mailbox matrix failed.
    Mailbox(mk_mailbox::Error),
    /// Formatting or attaching to the page pool of the shared allocation failed.
    Pool(mk_pool::Error),
}

impl From<mk_raw::Error> for Error {
    fn from(e: mk_raw::Error) -> Self {
        match e {
            mk_raw::Error::Null | mk_raw::Error::Misaligned => Self::Misaligned,
            mk_raw::Error::RegionTooSmall { need, have } => Self::RegionTooSmall { need, have },
        }
    }
}
