//! The `#[repr(C, align(64))]` structures that live in the shared region, and where they go.
//!
//! Every field is an atomic, so another instance writing the same physical memory (even
//! wrongly) is never a data race in ours, only a value we read and validate. Each structure
//! says who writes it.

use core::mem::size_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{
    CACHE_LINE, CPUS_PER_INSTANCE, MAX_APIC_IDS, MAX_INSTANCES, MAX_IRQS, MEM_CHUNK_SHIFT,
    MEM_CHUNKS, RANGES_PER_INSTANCE,
};

/// Region magic: `"MKSHARED"` little-endian, stored last (Release) by `init`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MKSHARED");

/// Layout version. Bump on any change of layout or protocol; `attach` to a region of another
/// version fails with [`crate::Error::VersionMismatch`].
pub const VERSION: u32 = 3;

/// Page alignment required of the region base and used for the mailbox offset.
pub const PAGE: usize = 4096;

/// Number of tables listed in the header directory.
pub(crate) const TABLES: usize = 6;

mk_raw::atomic_struct! {
    #[repr(C)]
    /// One header directory entry: byte offset and size of a table, from the region base.
    pub(crate) struct TableDesc {
        pub offset: AtomicU32,
        pub size: AtomicU32,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Header: two cache lines. Written by instance 0 only, once, before any other instance starts;
    /// read-only afterwards (so sharing it among all caches costs nothing).
    pub(crate) struct Header {
        // Line 0: identity and build parameters.
        /// [`MAGIC`], stored last with Release.
        pub magic: AtomicU64,
        pub version: AtomicU32,
        /// Instances the region was formatted for (`1..=MAX_INSTANCES`).
        pub instances: AtomicU32,
        /// Bytes in use ([`crate::region_size`]).
        pub total_size: AtomicU64,
        /// TSC of instance 0 when it formatted the region.
        pub created_tsc: AtomicU64,
        pub header_size: AtomicU32,
        pub max_instances: AtomicU32,
        pub cpu_entries: AtomicU32,
        pub irq_entries: AtomicU32,
        pub mem_chunks: AtomicU32,
        pub mem_chunk_shift: AtomicU32,
        pub cpus_per_instance: AtomicU32,
        pub ranges_per_instance: AtomicU32,
        // Line 1: table directory, in [`Table`] order.
        pub tables: [TableDesc; TABLES],
        pub _reserved: [AtomicU32; 4],
    }
}

/// Index of a table in the header directory.
#[derive(Clone, Copy)]
pub(crate) enum TableId {
    Console = 0,
    Instances = 1,
    Cpus = 2,
    Irqs = 3,
    Memory = 4,
    Mailbox = 5,
}

/// Lines of the lock table: the console lock, then the IO APIC lock (same ticket lock).
pub(crate) const LOCK_LINES: usize = 2;

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// A lock line (ticket lock). Every instance writes it. Line 0 guards the shared serial port,
    /// line 1 the IO APICs' index/data register pairs.
    pub(crate) struct LockLine {
        /// Next ticket to hand out (`fetch_add`).
        pub next: AtomicU32,
        /// Ticket now allowed in; advanced by the holder on unlock or by a waiter that forces.
        pub serving: AtomicU32,
        /// Instance + 1 of the current holder (0: none yet), for diagnostics only.
        pub holder: AtomicU32,
        pub _reserved: AtomicU32,
        /// Acquisitions.
        pub acquired: AtomicU64,
        /// Locks broken by a waiter after `serving` stood still for its stall bound (holder
        /// presumed dead).
        pub forced: AtomicU64,
        /// Unlocks that found their lock already broken.
        pub stale_unlocks: AtomicU64,
        /// Waiters whose turn was skipped by a force and who took a new ticket.
        pub requeued: AtomicU64,
        /// Waits that hit their time bound (console: went on without the lock; IO APIC: the
        /// operation failed).
        pub timed_out: AtomicU64,
        /// Corrupt `serving` values a waiter replaced by its ticket.
        pub repaired: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 0 of an instance entry: life cycle.
    pub(crate) struct StatusLine {
        /// An [`crate::InstanceState`]; transitions by compare-exchange.
        pub state: AtomicU32,
        /// Last error code the instance reported (0: none). Instance only.
        pub last_error: AtomicU32,
        /// TSC when instance 0 started booting it. Instance 0 only.
        pub boot_tsc: AtomicU64,
        /// TSC when it declared itself running. Instance only.
        pub ready_tsc: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 1: heartbeat, the one frequently written word, alone on its line. Instance only.
    pub(crate) struct HeartbeatLine {
        pub count: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 2: resource summary and the sequence word of the resource seqlock. Instance only.
    pub(crate) struct ResourceHead {
        /// Seqlock: odd while `publish_resources` is writing lines 2..=10.
        pub seq: AtomicU32,
        pub cpu_count: AtomicU32,
        pub range_count: AtomicU32,
        pub _reserved: AtomicU32,
        pub total_bytes: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C)]
    /// One published memory range.
    pub(crate) struct RangeWords {
        pub start: AtomicU64,
        pub len: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Lines 3..=6: APIC IDs of the instance's CPUs. Instance only.
    pub(crate) struct ApicIds(pub [AtomicU32; CPUS_PER_INSTANCE]);
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Lines 7..=10: the instance's memory ranges. Instance only.
    pub(crate) struct Ranges(pub [RangeWords; RANGES_PER_INSTANCE]);
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 11: report words, free-form values the instance publishes for diagnostics and tests
    /// (e.g. "CPUs online", "fault address of the isolation probe"). Instance only.
    pub(crate) struct ReportLine {
        /// Bit `i` set: `words[i]` holds a published value.
        pub present: AtomicU64,
        pub words: [AtomicU64; REPORT_WORDS],
    }
}

/// Number of report words per instance.
pub const REPORT_WORDS: usize = 7;

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// One instance table entry (12 cache lines).
    pub(crate) struct InstanceEntry {
        pub status: StatusLine,
        pub heartbeat: HeartbeatLine,
        pub res: ResourceHead,
        pub apic_ids: ApicIds,
        pub ranges: Ranges,
        pub reports: ReportLine,
    }
}

impl InstanceEntry {
    pub fn clear(&self) {
        let s = &self.status;
        s.state.store(0, Ordering::Relaxed);
        s.last_error.store(0, Ordering::Relaxed);
        s.boot_tsc.store(0, Ordering::Relaxed);
        s.ready_tsc.store(0, Ordering::Relaxed);
        self.heartbeat.count.store(0, Ordering::Relaxed);
        let r = &self.res;
        r.seq.store(0, Ordering::Relaxed);
        r.cpu_count.store(0, Ordering::Relaxed);
        r.range_count.store(0, Ordering::Relaxed);
        r.total_bytes.store(0, Ordering::Relaxed);
        for a in &self.apic_ids.0 {
            a.store(0, Ordering::Relaxed);
        }
        for w in &self.ranges.0 {
            w.start.store(0, Ordering::Relaxed);
            w.len.store(0, Ordering::Relaxed);
        }
        self.reports.present.store(0, Ordering::Relaxed);
        for w in &self.reports.words {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// Bytes of one instance table entry.
pub const INSTANCE_ENTRY_SIZE: usize = size_of::<InstanceEntry>();

/// Offset and size of one table, in bytes from the region base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Byte offset from the region base.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl Table {
    /// First byte after the table.
    pub const fn end(&self) -> usize {
        self.offset + self.size
    }
}

/// Where everything lives in a region formatted for a given number of instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Instances the region is formatted for.
    pub instances: usize,
    /// Header (2 cache lines).
    pub header: Table,
    /// The lock lines (2 cache lines): the console lock, then the IO APIC lock.
    pub console: Table,
    /// Instance table, always [`MAX_INSTANCES`] entries.
    pub instance_table: Table,
    /// CPU owner words, indexed by APIC ID.
    pub cpus: Table,
    /// IRQ owner words, indexed by GSI.
    pub irqs: Table,
    /// Memory owner words, one per 2 MiB chunk of physical memory.
    pub memory: Table,
    /// The mk-mailbox matrix (4 KiB-aligned offset; size 0 for a single instance).
    pub mailbox: Table,
    /// Total bytes, rounded up to 4 KiB.
    pub total: usize,
}

const fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Layout of a region formatted for `instances` (not checked here; see `SharedRegion::init`).
pub const fn layout(instances: usize) -> Layout {
    let header = Table {
        offset: 0,
        size: size_of::<Header>(),
    };
    let console = Table {
        offset: header.end(),
        size: LOCK_LINES * size_of::<LockLine>(),
    };
    let instance_table = Table {
        offset: console.end(),
        size: MAX_INSTANCES * INSTANCE_ENTRY_SIZE,
    };
    let cpus = Table {
        offset: instance_table.end(),
        size: MAX_APIC_IDS * 8,
    };
    let irqs = Table {
        offset: cpus.end(),
        size: MAX_IRQS * 8,
    };
    let memory = Table {
        offset: irqs.end(),
        size: MEM_CHUNKS * 8,
    };
    let mailbox = Table {
        offset: round_up(memory.end(), PAGE),
        size: if instances >= 2 {
            mk_mailbox::region_size(instances)
        } else {
            0
        },
    };
    Layout {
        instances,
        header,
        console,
        instance_table,
        cpus,
        irqs,
        memory,
        mailbox,
        total: round_up(mailbox.end(), PAGE),
    }
}

/// Bytes of shared memory a region for `instances` instances needs (a multiple of 4 KiB).
pub const fn region_size(instances: usize) -> usize {
    layout(instances).total
}

impl Layout {
    pub(crate) fn table(&self, id: TableId) -> Table {
        match id {
            TableId::Console => self.console,
            TableId::Instances => self.instance_table,
            TableId::Cpus => self.cpus,
            TableId::Irqs => self.irqs,
            TableId::Memory => self.memory,
            TableId::Mailbox => self.mailbox,
        }
    }
}

pub(crate) const ALL_TABLES: [TableId; TABLES] = [
    TableId::Console,
    TableId::Instances,
    TableId::Cpus,
    TableId::Irqs,
    TableId::Memory,
    TableId::Mailbox,
];

/// Header fields describing this build, checked by `attach`.
pub(crate) fn build_params() -> [u32; 8] {
    [
        size_of::<Header>() as u32,
        MAX_INSTANCES as u32,
        MAX_APIC_IDS as u32,
        MAX_IRQS as u32,
        MEM_CHUNKS as u32,
        MEM_CHUNK_SHIFT,
        CPUS_PER_INSTANCE as u32,
        RANGES_PER_INSTANCE as u32,
    ]
}

impl Header {
    pub(crate) fn params(&self) -> [&AtomicU32; 8] {
        [
            &self.header_size,
            &self.max_instances,
            &self.cpu_entries,
            &self.irq_entries,
            &self.mem_chunks,
            &self.mem_chunk_shift,
            &self.cpus_per_instance,
            &self.ranges_per_instance,
        ]
    }
}

const _: () = {
    assert!(size_of::<Header>() == 2 * CACHE_LINE);
    assert!(size_of::<LockLine>() == CACHE_LINE);
    assert!(size_of::<StatusLine>() == CACHE_LINE);
    assert!(size_of::<HeartbeatLine>() == CACHE_LINE);
    assert!(size_of::<ResourceHead>() == CACHE_LINE);
    assert!(size_of::<ApicIds>() == 4 * CACHE_LINE);
    assert!(size_of::<Ranges>() == 4 * CACHE_LINE);
    assert!(INSTANCE_ENTRY_SIZE == 12 * CACHE_LINE);
    assert!(MAX_INSTANCES <= mk_mailbox::MAX_INSTANCES);
    // Everything must fit the u32 offsets of the header directory.
    assert!(region_size(MAX_INSTANCES) < u32::MAX as usize);
    assert!(layout(MAX_INSTANCES).mailbox.offset.is_multiple_of(PAGE));
    assert!(
        layout(MAX_INSTANCES)
            .console
            .offset
            .is_multiple_of(CACHE_LINE)
    );
    assert!(
        layout(MAX_INSTANCES)
            .instance_table
            .offset
            .is_multiple_of(CACHE_LINE)
    );
    assert!(layout(MAX_INSTANCES).cpus.offset.is_multiple_of(CACHE_LINE));
    assert!(layout(MAX_INSTANCES).irqs.offset.is_multiple_of(CACHE_LINE));
    assert!(
        layout(MAX_INSTANCES)
            .memory
            .offset
            .is_multiple_of(CACHE_LINE)
    );
};
