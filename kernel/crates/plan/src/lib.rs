//! The partition plan: which CPUs and how much memory each kernel instance gets.
//!
//! The multikernel splits the machine into *partitions*, each run by its own kernel instance.
//! The split is described by a short text, the **plan spec**, given by the user
//! (`cargo xtask run --smp 8 --partitions 2:256M,2:256M,4`) and delivered to the kernel at boot.
//! This crate parses that text into a [`PlanSpec`] and *resolves* it against the machine (the
//! CPUs from the MADT, the usable ranges of the memory map) into a [`Plan`]: concrete APIC ids
//! and physical memory ranges per partition. It is pure logic: `no_std`, no heap (every result
//! lives in fixed-capacity arrays), no `unsafe`, and the parser never panics on any input.
//!
//! # Plan spec syntax
//!
//! ```text
//! spec      := partition ( "," partition )*          at most MAX_INSTANCES partitions
//! partition := cpus [ ":" size ] [ "@" node ]
//! cpus      := decimal number >= 1                   CPUs of this partition
//! size      := decimal number [ K | M | G | T ]      bytes, binary units, either case;
//!                                                    > 0 and a multiple of 4 KiB
//! node      := decimal number < MAX_NODES            NUMA node (ACPI SRAT proximity
//!                                                    domain) the memory must come from
//! ```
//!
//! ASCII whitespace around any token is ignored (the kernel reads the text from a file that
//! may end in a newline). Examples: `2,2,4`, `2:256M,2:256M,4`, `1:1G, 3`, `2@0,2:1G@1`. A partition without
//! a size shares the memory left by the sized ones evenly with the other unsized partitions.
//! Errors carry the byte offset (`pos`) of the offending text. [`PlanSpec`]'s `Display` writes
//! the canonical form (largest exact unit), and `parse(display(spec)) == spec`.
//!
//! The default plan ([`PlanSpec::default_for`]) is one instance per CPU with memory split
//! evenly; with more than [`MAX_INSTANCES`] CPUs the CPUs are spread as evenly as possible over
//! [`MAX_INSTANCES`] instances.
//!
//! # NUMA
//!
//! [`PlanSpec::resolve_numa`] also takes the machine's [`Numa`] topology (from the ACPI SRAT:
//! each CPU's node, each memory range's node). A partition's node is the one its spec names
//! (`@N`), else the node of its first CPU. Placement (step 5) then takes a partition's memory
//! from its node first, lowest address first; a partition whose node was not named takes what
//! its node lacks from anywhere (lowest first), while a named node must hold all of it
//! ([`PlanError::NodeTooSmall`], [`PlanError::NoSuchNode`]). Without NUMA information
//! ([`Numa::NONE`], what [`PlanSpec::resolve`] passes) every partition is on node 0 and the
//! placement is exactly the one described below.
//!
//! # Resolving
//!
//! [`PlanSpec::resolve`] takes the CPUs' APIC ids in MADT order with the **bootstrap CPU
//! first** (the caller moves it to the front if needed), the usable physical memory ranges,
//! and the size of the region shared by all instances. It proceeds in this order:
//!
//! 1. **CPUs.** Partitions take consecutive CPUs: partition 0 the first `n0` (so it owns the
//!    bootstrap CPU), partition 1 the next `n1`, and so on. Asking for more CPUs than exist is
//!    [`PlanError::MoreCpusThanExist`]; asking for fewer is allowed, and the leftover CPUs stay
//!    parked ([`Plan::parked_cpus`]).
//! 2. **Normalise memory.** The usable ranges may come in any order and may touch or overlap;
//!    they are merged, then each merged range is shrunk to whole 4 KiB pages (sub-page slivers
//!    are dropped). [`Plan::usable_bytes`] is the total after this step.
//! 3. **Shared region.** `shared_bytes` is rounded up to a multiple of 2 MiB and carved as one
//!    2 MiB-aligned block at the **top of the highest range that can hold it** (high memory is
//!    the least precious: low memory holds the real-mode trampoline and DMA-able pages).
//!    `shared_bytes == 0` means no shared region. The slack between the block and the end of its
//!    range stays in the pool.
//! 4. **Partition sizes.** Sized partitions get exactly their size. What remains is split
//!    evenly between the unsized partitions, each share rounded **down to a multiple of 2 MiB**.
//!    The remainder of that division (and everything, if all partitions are sized) stays
//!    **unassigned** ([`Plan::unassigned`]), where an instance may later take it by hotplug.
//! 5. **Placement.** Partitions are laid out in order from the **lowest address** upwards, each
//!    taking the next bytes of the (sorted) pool, so partition 0 (the bootstrap instance) gets
//!    the low memory, and each partition's memory is a short list of page-aligned ranges (at
//!    most [`MAX_PARTITION_RANGES`], else [`PlanError::TooFragmented`]).
//!
//! The accounting identity `Σ partition bytes + shared + Σ unassigned == usable_bytes` holds
//! exactly, and no two ranges of the plan overlap.
//!
//! # Example
//!
//! ```
//! use mk_plan::{MemRange, PlanSpec};
//!
//! let spec = PlanSpec::parse("2:256M,2:256M,4").unwrap();
//! let apic_ids = [0, 1, 2, 3, 4, 5, 6, 7]; // MADT order, bootstrap CPU first
//! let usable = [MemRange::new(0x10_0000, 2 << 30)];
//! let plan = spec.resolve(&apic_ids, usable, 2 << 20).unwrap();
//! let p0 = plan.partition(0).unwrap();
//! assert_eq!(p0.cpus, [0, 1]);
//! assert_eq!(p0.memory, [MemRange::new(0x10_0000, 256 << 20)]);
//! assert_eq!(plan.partition_of_cpu(5), Some(2));
//! let shared = plan.shared().unwrap();
//! assert_eq!(shared.start % (2 << 20), 0);
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod srat;

use core::fmt;

/// Most partitions (kernel instances) a plan can have.
pub const MAX_INSTANCES: usize = 16;
/// Most CPUs [`PlanSpec::resolve`] accepts.
pub const MAX_CPUS: usize = 512;
/// Most usable memory ranges, after merging touching and overlapping ones.
pub const MAX_MEMORY_RANGES: usize = 64;
/// Most memory ranges a single partition can be given.
pub const MAX_PARTITION_RANGES: usize = 16;
/// Most unassigned ranges a plan can list (never exceeded: see [`Plan::unassigned`]).
pub const MAX_UNASSIGNED: usize = MAX_MEMORY_RANGES + 1;
/// Page size: every range of a resolved plan is aligned to it, and sizes must be multiples of it.
pub const PAGE_SIZE: u64 = 4096;
/// Alignment of the shared region, and granule of the even split between unsized partitions.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Most NUMA nodes a plan can name (`@N` with N below this).
pub const MAX_NODES: u32 = 64;
/// Room in the working pool of free ranges: the merged ranges, the shared region's split, and
/// one split per range a partition takes from the middle of a range (NUMA placement).
const POOL_CAPACITY: usize = MAX_MEMORY_RANGES + 1 + MAX_INSTANCES * MAX_PARTITION_RANGES;

/// The machine's NUMA topology as the ACPI SRAT describes it: the node (proximity domain) of
/// each CPU, by APIC ID, and of each memory range. Empty slices: one node, no constraints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Numa<'a> {
    /// `(APIC ID, node)`.
    pub cpus: &'a [(u32, u32)],
    /// `(range, node)`.
    pub memory: &'a [(MemRange, u32)],
}

impl Numa<'_> {
    /// No NUMA information: a single node 0.
    pub const NONE: Numa<'static> = Numa {
        cpus: &[],
        memory: &[],
    };

    /// The node of the CPU with APIC ID `apic` (0 if the SRAT does not list it).
    pub fn node_of_cpu(&self, apic: u32) -> u32 {
        self.cpus
            .iter()
            .find(|&&(a, _)| a == apic)
            .map_or(0, |&(_, n)| n)
    }

    /// The node of physical address `addr`, if a memory range of the SRAT holds it.
    pub fn node_of_address(&self, addr: u64) -> Option<u32> {
        self.memory
            .iter()
            .find(|(r, _)| r.start <= addr && addr < r.end())
            .map(|&(_, n)| n)
    }

    /// Whether the SRAT described memory at all (else placement is unconstrained).
    pub fn has_memory(&self) -> bool {
        !self.memory.is_empty()
    }

    /// The lowest page-aligned piece of `[s, e)` that lies on `node`.
    fn lowest_on(&self, node: u32, s: u64, e: u64) -> Option<(u64, u64)> {
        self.memory
            .iter()
            .filter(|&&(_, n)| n == node)
            .filter_map(|(r, _)| {
                let lo = s.max(r.start).checked_next_multiple_of(PAGE_SIZE)?;
                let hi = e.min(r.end()) & !(PAGE_SIZE - 1);
                (lo < hi).then_some((lo, hi))
            })
            .min()
    }
}

// ---------------------------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------------------------

/// One partition as the user asked for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PartitionSpec {
    /// Number of CPUs (at least 1).
    pub cpus: u32,
    /// Memory in bytes (a non-zero multiple of [`PAGE_SIZE`]), or `None` for an even share of
    /// what the sized partitions leave.
    pub memory: Option<u64>,
    /// The NUMA node its memory must come from (`@N`), or `None`: its first CPU's node.
    pub node: Option<u32>,
}

/// A parsed plan: between 1 and [`MAX_INSTANCES`] partitions.
#[derive(Clone, Copy)]
pub struct PlanSpec {
    parts: [PartitionSpec; MAX_INSTANCES],
    len: usize,
}

impl PartialEq for PlanSpec {
    fn eq(&self, other: &Self) -> bool {
        self.partitions() == other.partitions()
    }
}

impl Eq for PlanSpec {}

impl fmt::Debug for PlanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.partitions()).finish()
    }
}

/// Why a plan spec text was rejected. `pos` is a byte offset into the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The text is empty or only whitespace.
    Empty,
    /// A partition is empty (`2,,4`, a trailing comma) or has 0 CPUs (`0`).
    EmptyPartition {
        /// Where the partition starts.
        pos: usize,
    },
    /// The CPU count is missing, not a decimal number, or does not fit in a `u32`.
    BadNumber {
        /// The offending character (or the number's start, if it overflows).
        pos: usize,
    },
    /// The size is missing, not a number with an optional `K`/`M`/`G`/`T` suffix, zero, or
    /// overflows 64 bits.
    BadSize {
        /// The offending character (or the size's start).
        pos: usize,
    },
    /// The size is not a multiple of 4 KiB.
    UnalignedSize {
        /// The size's start.
        pos: usize,
    },
    /// More than [`MAX_INSTANCES`] partitions.
    TooManyPartitions,
    /// The node after `@` is missing, not a decimal number, or not below [`MAX_NODES`].
    BadNode {
        /// The offending character (or the node's start).
        pos: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("empty partition plan"),
            Self::EmptyPartition { pos } => write!(f, "empty partition (no CPUs) at offset {pos}"),
            Self::BadNumber { pos } => write!(f, "bad CPU count at offset {pos}"),
            Self::BadSize { pos } => write!(f, "bad memory size at offset {pos} (use e.g. 256M)"),
            Self::UnalignedSize { pos } => {
                write!(f, "memory size at offset {pos} is not a multiple of 4K")
            }
            Self::TooManyPartitions => write!(f, "more than {MAX_INSTANCES} partitions"),
            Self::BadNode { pos } => write!(
                f,
                "bad NUMA node at offset {pos} (expected @N, N below {MAX_NODES})"
            ),
        }
    }
}

impl core::error::Error for ParseError {}

impl PlanSpec {
    const EMPTY: Self = Self {
        parts: [PartitionSpec {
            cpus: 0,
            memory: None,
            node: None,
        }; MAX_INSTANCES],
        len: 0,
    };

    /// Parses a plan spec (see the [crate docs](crate) for the syntax). Never panics.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let b = text.as_bytes();
        if b.iter().all(u8::is_ascii_whitespace) {
            return Err(ParseError::Empty);
        }
        let mut spec = Self::EMPTY;
        let mut start = 0;
        loop {
            let end = b[start..]
                .iter()
                .position(|&c| c == b',')
                .map_or(b.len(), |i| start + i);
            if spec.len == MAX_INSTANCES {
                return Err(ParseError::TooManyPartitions);
            }
            spec.parts[spec.len] = parse_partition(b, start, end)?;
            spec.len += 1;
            if end == b.len() {
                return Ok(spec);
            }
            start = end + 1;
        }
    }

    /// The default plan for a machine with `cpus` CPUs: one instance per CPU, memory split
    /// evenly. Above [`MAX_INSTANCES`] CPUs, the CPUs are spread over [`MAX_INSTANCES`]
    /// instances, the first ones getting one more. `0` is taken as 1 (there is always a
    /// bootstrap CPU).
    pub fn default_for(cpus: u32) -> Self {
        let cpus = cpus.max(1);
        let n = (cpus as usize).min(MAX_INSTANCES);
        let each = cpus / n as u32;
        let extra = (cpus % n as u32) as usize;
        let mut spec = Self::EMPTY;
        for (i, p) in spec.parts[..n].iter_mut().enumerate() {
            p.cpus = each + u32::from(i < extra);
        }
        spec.len = n;
        spec
    }

    /// The partitions, in order (partition 0 is the bootstrap instance).
    pub fn partitions(&self) -> &[PartitionSpec] {
        &self.parts[..self.len]
    }

    /// Total CPUs asked for.
    pub fn total_cpus(&self) -> u64 {
        self.partitions().iter().map(|p| u64::from(p.cpus)).sum()
    }

    /// Resolves the spec against the machine. `cpus`: APIC ids in MADT order, bootstrap CPU
    /// first. `usable`: usable physical memory as `(start, len)` ranges, in any order, possibly
    /// touching or overlapping. `shared_bytes`: size of the region shared by all instances
    /// (0 for none). See the [crate docs](crate) for the rules.
    pub fn resolve(
        &self,
        cpus: &[u32],
        usable: impl IntoIterator<Item = MemRange>,
        shared_bytes: u64,
    ) -> Result<Plan, PlanError> {
        self.resolve_numa(cpus, usable, shared_bytes, &Numa::NONE)
    }

    /// [`resolve`](Self::resolve) on a machine with NUMA topology `numa`: each partition's
    /// memory comes from its node (see the [crate docs](crate)).
    pub fn resolve_numa(
        &self,
        cpus: &[u32],
        usable: impl IntoIterator<Item = MemRange>,
        shared_bytes: u64,
        numa: &Numa<'_>,
    ) -> Result<Plan, PlanError> {
        let mut plan = Plan::EMPTY;

        // 1. CPUs.
        if cpus.is_empty() {
            return Err(PlanError::NoCpus);
        }
        if cpus.len() > MAX_CPUS {
            return Err(PlanError::TooManyCpus {
                have: cpus.len(),
                max: MAX_CPUS,
            });
        }
        for (i, &id) in cpus.iter().enumerate() {
            if cpus[..i].contains(&id) {
                return Err(PlanError::DuplicateCpu { apic_id: id });
            }
        }
        let asked = self.total_cpus();
        let have = cpus.len() as u64;
        if asked > have {
            return Err(PlanError::MoreCpusThanExist { asked, have });
        }
        plan.cpus[..cpus.len()].copy_from_slice(cpus);
        plan.cpu_count = cpus.len();
        let mut next_cpu = 0;
        for (slot, spec) in plan.parts.iter_mut().zip(self.partitions()) {
            slot.cpu_first = next_cpu;
            slot.cpu_count = spec.cpus as usize;
            next_cpu += spec.cpus as usize;
        }
        plan.assigned_cpus = next_cpu;
        plan.part_count = self.len;

        // 2. Normalise memory: merge, then shrink to whole pages.
        let mut merged = RangeSet::new();
        for r in usable {
            merged.insert(r.start, r.start.saturating_add(r.len))?;
        }
        let mut pool = RangeSet::new();
        for &(s, e) in merged.as_slice() {
            let e = e & !(PAGE_SIZE - 1);
            match s.checked_next_multiple_of(PAGE_SIZE) {
                Some(s) if s < e => pool.push(s, e),
                _ => {}
            }
        }
        plan.usable_bytes = pool.total();

        // 3. Shared region: top of the highest range that can hold it.
        if shared_bytes > 0 {
            let len = shared_bytes
                .checked_next_multiple_of(LARGE_PAGE_SIZE)
                .ok_or(PlanError::SharedRegionDoesNotFit {
                    bytes: shared_bytes,
                })?;
            let found = pool
                .as_slice()
                .iter()
                .enumerate()
                .rev()
                .find_map(|(i, &(s, e))| {
                    let top = e & !(LARGE_PAGE_SIZE - 1);
                    (top >= len && top - len >= s).then(|| (i, top - len, top))
                });
            let (i, lo, hi) = found.ok_or(PlanError::SharedRegionDoesNotFit { bytes: len })?;
            pool.cut(i, lo, hi);
            plan.shared = Some(MemRange { start: lo, len });
        }

        // 4. Sizes.
        let available = pool.total();
        let sized = self
            .partitions()
            .iter()
            .filter_map(|p| p.memory)
            .fold(0u64, u64::saturating_add);
        if sized > available {
            return Err(PlanError::MoreMemoryThanExists {
                asked: sized,
                have: available,
            });
        }
        let unsized_count = self
            .partitions()
            .iter()
            .filter(|p| p.memory.is_none())
            .count() as u64;
        let mut share = match unsized_count {
            0 => 0,
            n => ((available - sized) / n) & !(LARGE_PAGE_SIZE - 1),
        };
        // With NUMA, the even share must also fit on each node beside that node's sized
        // partitions (else a partition would spill onto another node).
        if numa.has_memory() {
            for (index, p) in self.partitions().iter().enumerate() {
                let first = plan.parts[index].cpu_first;
                let node = p.node.unwrap_or_else(|| numa.node_of_cpu(cpus[first]));
                let on_node = |q: &(usize, &PartitionSpec)| {
                    let f = plan.parts[q.0].cpu_first;
                    q.1.node.unwrap_or_else(|| numa.node_of_cpu(cpus[f])) == node
                };
                let parts = self.partitions().iter().enumerate();
                let unsized_here = parts
                    .clone()
                    .filter(on_node)
                    .filter(|q| q.1.memory.is_none())
                    .count() as u64;
                let sized_here: u64 = parts.filter(on_node).filter_map(|q| q.1.memory).sum();
                let free: u64 = pool
                    .as_slice()
                    .iter()
                    .map(|&(s, e)| {
                        let mut total = 0;
                        let mut at = s;
                        while let Some((lo, hi)) = numa.lowest_on(node, at, e) {
                            total += hi - lo;
                            at = hi;
                        }
                        total
                    })
                    .sum();
                if unsized_here > 0 && free > sized_here {
                    let fits = ((free - sized_here) / unsized_here) & !(LARGE_PAGE_SIZE - 1);
                    share = share.min(fits.max(LARGE_PAGE_SIZE));
                }
            }
        }

        // 5. Placement: each partition takes the lowest free bytes (of its node first).
        for (index, (slot, spec)) in plan.parts.iter_mut().zip(self.partitions()).enumerate() {
            let bytes = spec.memory.unwrap_or(share);
            if bytes == 0 {
                return Err(PlanError::NoMemoryForPartition {
                    partition: index,
                    left: available - sized,
                });
            }
            let first_cpu = cpus[slot.cpu_first];
            let node = spec.node.unwrap_or_else(|| numa.node_of_cpu(first_cpu));
            slot.node = node;
            let mut need = bytes;
            if numa.has_memory() {
                take_lowest(&mut pool, slot, &mut need, index, |s, e| {
                    numa.lowest_on(node, s, e)
                })?;
                if need > 0 && spec.node.is_some() {
                    let on_node = numa.memory.iter().any(|&(_, n)| n == node);
                    return Err(if on_node {
                        PlanError::NodeTooSmall {
                            partition: index,
                            node,
                        }
                    } else {
                        PlanError::NoSuchNode {
                            partition: index,
                            node,
                        }
                    });
                }
            }
            take_lowest(&mut pool, slot, &mut need, index, |s, e| Some((s, e)))?;
            if need > 0 {
                // Unreachable: the sizes add up to at most `available`.
                return Err(PlanError::MoreMemoryThanExists {
                    asked: sized,
                    have: available,
                });
            }
            slot.ranges[..slot.range_count].sort_unstable_by_key(|r| r.start);
            slot.bytes = bytes;
        }
        plan.nodes = numa
            .cpus
            .iter()
            .map(|&(_, n)| n)
            .chain(numa.memory.iter().map(|&(_, n)| n))
            .max()
            .map_or(1, |n| n + 1);

        // The rest stays unassigned.
        for &(s, e) in pool.as_slice() {
            if plan.unassigned_count == MAX_UNASSIGNED {
                return Err(PlanError::TooFragmented {
                    partition: plan.part_count - 1,
                });
            }
            plan.unassigned[plan.unassigned_count] = MemRange {
                start: s,
                len: e - s,
            };
            plan.unassigned_count += 1;
        }
        Ok(plan)
    }
}

/// Moves up to `*need` bytes from `pool` to `slot`, lowest first, taking from each pool range
/// the piece `pick(start, end)` chooses (its lowest acceptable part), until `*need` is 0 or no
/// range offers a piece. A piece that continues the slot's last range extends it.
fn take_lowest(
    pool: &mut RangeSet,
    slot: &mut PartSlot,
    need: &mut u64,
    index: usize,
    pick: impl Fn(u64, u64) -> Option<(u64, u64)>,
) -> Result<(), PlanError> {
    while *need > 0 {
        let Some((i, lo, hi)) = pool
            .as_slice()
            .iter()
            .enumerate()
            .find_map(|(i, &(s, e))| pick(s, e).map(|(lo, hi)| (i, lo, hi)))
        else {
            return Ok(());
        };
        let take = (*need).min(hi - lo);
        pool.cut(i, lo, lo + take);
        match slot.ranges[..slot.range_count].last_mut() {
            Some(last) if last.end() == lo => last.len += take,
            _ => {
                if slot.range_count == MAX_PARTITION_RANGES {
                    return Err(PlanError::TooFragmented { partition: index });
                }
                slot.ranges[slot.range_count] = MemRange {
                    start: lo,
                    len: take,
                };
                slot.range_count += 1;
            }
        }
        *need -= take;
    }
    Ok(())
}

impl Default for PlanSpec {
    /// A single instance with one CPU and all the memory.
    fn default() -> Self {
        Self::default_for(1)
    }
}

impl fmt::Display for PlanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.partitions().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", p.cpus)?;
            if let Some(bytes) = p.memory {
                write!(f, ":{}", Size(bytes))?;
            }
            if let Some(node) = p.node {
                write!(f, "@{node}")?;
            }
        }
        Ok(())
    }
}

impl core::str::FromStr for PlanSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

/// `lo .. hi` without ASCII whitespace at either end.
fn trim(b: &[u8], mut lo: usize, mut hi: usize) -> (usize, usize) {
    while lo < hi && b[lo].is_ascii_whitespace() {
        lo += 1;
    }
    while hi > lo && b[hi - 1].is_ascii_whitespace() {
        hi -= 1;
    }
    (lo, hi)
}

/// The decimal number `b[lo..hi]`; `Err(pos)` at the first non-digit, or at `lo` if empty or
/// overflowing.
fn digits(b: &[u8], lo: usize, hi: usize) -> Result<u64, usize> {
    if lo == hi {
        return Err(lo);
    }
    let mut v = 0u64;
    for (i, &c) in b.iter().enumerate().take(hi).skip(lo) {
        if !c.is_ascii_digit() {
            return Err(i);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or(lo)?;
    }
    Ok(v)
}

fn parse_partition(b: &[u8], start: usize, end: usize) -> Result<PartitionSpec, ParseError> {
    let (lo, hi) = trim(b, start, end);
    if lo == hi {
        return Err(ParseError::EmptyPartition { pos: lo });
    }
    let at = b[lo..hi].iter().position(|&c| c == b'@').map(|i| lo + i);
    let node = match at {
        None => None,
        Some(a) => {
            let (nlo, nhi) = trim(b, a + 1, hi);
            let n = digits(b, nlo, nhi).map_err(|pos| ParseError::BadNode { pos })?;
            match u32::try_from(n) {
                Ok(n) if n < MAX_NODES => Some(n),
                _ => return Err(ParseError::BadNode { pos: nlo }),
            }
        }
    };
    let hi = at.unwrap_or(hi);
    let colon = b[lo..hi].iter().position(|&c| c == b':').map(|i| lo + i);
    let (clo, chi) = trim(b, lo, colon.unwrap_or(hi));
    let cpus = digits(b, clo, chi).map_err(|pos| ParseError::BadNumber { pos })?;
    let cpus = u32::try_from(cpus).map_err(|_| ParseError::BadNumber { pos: clo })?;
    if cpus == 0 {
        return Err(ParseError::EmptyPartition { pos: clo });
    }
    let memory = match colon {
        None => None,
        Some(c) => Some(parse_size(b, c + 1, hi)?),
    };
    Ok(PartitionSpec { cpus, memory, node })
}

fn parse_size(b: &[u8], start: usize, end: usize) -> Result<u64, ParseError> {
    let (lo, hi) = trim(b, start, end);
    let num_end = b[lo..hi]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .map_or(hi, |i| lo + i);
    let value = digits(b, lo, num_end).map_err(|pos| ParseError::BadSize { pos })?;
    let shift = match &b[num_end..hi] {
        [] => 0,
        [b'K' | b'k'] => 10,
        [b'M' | b'm'] => 20,
        [b'G' | b'g'] => 30,
        [b'T' | b't'] => 40,
        _ => return Err(ParseError::BadSize { pos: num_end }),
    };
    let bytes = value
        .checked_mul(1 << shift)
        .ok_or(ParseError::BadSize { pos: lo })?;
    if bytes == 0 {
        return Err(ParseError::BadSize { pos: lo });
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(ParseError::UnalignedSize { pos: lo });
    }
    Ok(bytes)
}

/// A byte count written with the largest unit that divides it exactly (`256M`, `1G`, `12K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
                if self.0.is_multiple_of(1 << shift) {
                    return write!(f, "{}{unit}", self.0 >> shift);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Resolved plan
// ---------------------------------------------------------------------------------------------

/// A physical memory range of `len` bytes from `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl MemRange {
    /// The range `start .. start + len`.
    pub const fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }

    /// One past the last byte (saturating at `u64::MAX`).
    pub const fn end(self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

impl fmt::Display for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end())
    }
}

/// Why a plan could not be resolved against the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No CPU was given.
    NoCpus,
    /// More than [`MAX_CPUS`] CPUs were given.
    TooManyCpus {
        /// CPUs given.
        have: usize,
        /// [`MAX_CPUS`].
        max: usize,
    },
    /// The same APIC id was given twice.
    DuplicateCpu {
        /// The repeated id.
        apic_id: u32,
    },
    /// The plan asks for more CPUs than the machine has.
    MoreCpusThanExist {
        /// CPUs in the plan.
        asked: u64,
        /// CPUs in the machine.
        have: u64,
    },
    /// More than [`MAX_MEMORY_RANGES`] separate usable ranges (counted after merging the ranges
    /// seen so far, in the order given: a sorted memory map hits this only if it really has
    /// that many separate ranges).
    TooManyMemoryRanges {
        /// [`MAX_MEMORY_RANGES`].
        max: usize,
    },
    /// No usable range can hold the 2 MiB-aligned shared region.
    SharedRegionDoesNotFit {
        /// The shared region's size, rounded up to 2 MiB.
        bytes: u64,
    },
    /// The sized partitions ask for more memory than is usable (after the shared region).
    MoreMemoryThanExists {
        /// Sum of the sizes asked (saturating).
        asked: u64,
        /// Usable bytes left after the shared region.
        have: u64,
    },
    /// An unsized partition would get less than 2 MiB.
    NoMemoryForPartition {
        /// The partition.
        partition: usize,
        /// Bytes left for all unsized partitions.
        left: u64,
    },
    /// A partition would need more than [`MAX_PARTITION_RANGES`] memory ranges.
    TooFragmented {
        /// The partition.
        partition: usize,
    },
    /// A partition names a NUMA node that has no memory in the SRAT.
    NoSuchNode {
        /// The partition.
        partition: usize,
        /// The node it names.
        node: u32,
    },
    /// A partition names a NUMA node whose free memory is smaller than its size.
    NodeTooSmall {
        /// The partition.
        partition: usize,
        /// The node it names.
        node: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoCpus => f.write_str("no CPUs"),
            Self::TooManyCpus { have, max } => write!(f, "{have} CPUs, at most {max} supported"),
            Self::DuplicateCpu { apic_id } => write!(f, "APIC id {apic_id} listed twice"),
            Self::MoreCpusThanExist { asked, have } => {
                write!(f, "plan asks for {asked} CPUs, the machine has {have}")
            }
            Self::TooManyMemoryRanges { max } => {
                write!(f, "more than {max} separate usable memory ranges")
            }
            Self::SharedRegionDoesNotFit { bytes } => {
                write!(
                    f,
                    "no usable range holds a 2M-aligned shared region of {}",
                    Size(bytes)
                )
            }
            Self::MoreMemoryThanExists { asked, have } => {
                write!(
                    f,
                    "plan asks for {} of memory, {} usable",
                    Size(asked),
                    Size(have)
                )
            }
            Self::NoMemoryForPartition { partition, left } => write!(
                f,
                "partition {partition} gets no memory: {} left for the partitions without a size",
                Size(left)
            ),
            Self::TooFragmented { partition } => write!(
                f,
                "partition {partition} would need more than {MAX_PARTITION_RANGES} memory ranges"
            ),
            Self::NoSuchNode { partition, node } => write!(
                f,
                "partition {partition} names NUMA node {node}, which has no memory"
            ),
            Self::NodeTooSmall { partition, node } => write!(
                f,
                "partition {partition} does not fit in the free memory of NUMA node {node}"
            ),
        }
    }
}

impl core::error::Error for PlanError {}

#[derive(Clone, Copy, Debug)]
struct PartSlot {
    cpu_first: usize,
    cpu_count: usize,
    ranges: [MemRange; MAX_PARTITION_RANGES],
    range_count: usize,
    bytes: u64,
    node: u32,
}

/// A resolved plan: concrete CPUs and memory per partition. Built by [`PlanSpec::resolve`].
#[derive(Clone, Debug)]
pub struct Plan {
    parts: [PartSlot; MAX_INSTANCES],
    part_count: usize,
    cpus: [u32; MAX_CPUS],
    cpu_count: usize,
    assigned_cpus: usize,
    shared: Option<MemRange>,
    unassigned: [MemRange; MAX_UNASSIGNED],
    unassigned_count: usize,
    usable_bytes: u64,
    /// NUMA nodes the topology named (1 without NUMA information).
    nodes: u32,
}

/// One resolved partition (a view into a [`Plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition<'p> {
    /// Its index (instance number); 0 is the bootstrap instance.
    pub index: usize,
    /// Its CPUs' APIC ids; the first one starts the instance.
    pub cpus: &'p [u32],
    /// Its memory: page-aligned, disjoint, ascending ranges.
    pub memory: &'p [MemRange],
    /// Total bytes of `memory`.
    pub bytes: u64,
    /// The NUMA node its memory was placed on (0 without NUMA information).
    pub node: u32,
}

impl Plan {
    const EMPTY: Self = Self {
        parts: [PartSlot {
            cpu_first: 0,
            cpu_count: 0,
            ranges: [MemRange { start: 0, len: 0 }; MAX_PARTITION_RANGES],
            range_count: 0,
            bytes: 0,
            node: 0,
        }; MAX_INSTANCES],
        part_count: 0,
        cpus: [0; MAX_CPUS],
        cpu_count: 0,
        assigned_cpus: 0,
        shared: None,
        unassigned: [MemRange { start: 0, len: 0 }; MAX_UNASSIGNED],
        unassigned_count: 0,
        usable_bytes: 0,
        nodes: 1,
    };

    /// Number of partitions.
    pub fn partition_count(&self) -> usize {
        self.part_count
    }

    /// Partition `index`, if it exists.
    pub fn partition(&self, index: usize) -> Option<Partition<'_>> {
        let slot = self.parts[..self.part_count].get(index)?;
        Some(Partition {
            index,
            cpus: &self.cpus[slot.cpu_first..slot.cpu_first + slot.cpu_count],
            memory: &slot.ranges[..slot.range_count],
            bytes: slot.bytes,
            node: slot.node,
        })
    }

    /// The partitions in order.
    pub fn partitions(&self) -> impl Iterator<Item = Partition<'_>> + '_ {
        (0..self.part_count).filter_map(|i| self.partition(i))
    }

    /// The partition CPU `apic_id` belongs to; `None` if it is parked or unknown.
    pub fn partition_of_cpu(&self, apic_id: u32) -> Option<usize> {
        let at = self.cpus[..self.assigned_cpus]
            .iter()
            .position(|&c| c == apic_id)?;
        self.parts[..self.part_count]
            .iter()
            .position(|p| (p.cpu_first..p.cpu_first + p.cpu_count).contains(&at))
    }

    /// CPUs not in any partition (the plan asked for fewer than exist); they stay parked.
    pub fn parked_cpus(&self) -> &[u32] {
        &self.cpus[self.assigned_cpus..self.cpu_count]
    }

    /// The region shared by all instances (2 MiB-aligned, a multiple of 2 MiB long), if one
    /// was asked for.
    pub fn shared(&self) -> Option<MemRange> {
        self.shared
    }

    /// Usable memory given to nobody: the remainder of the even split (or everything left when
    /// all partitions are sized), in ascending order. At most [`MAX_UNASSIGNED`] ranges.
    pub fn unassigned(&self) -> &[MemRange] {
        &self.unassigned[..self.unassigned_count]
    }

    /// NUMA nodes of the machine as the topology given to the resolver named them (1 without
    /// NUMA information).
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Total usable memory after merging and shrinking to whole pages: exactly the partitions'
    /// bytes + the shared region + the unassigned ranges.
    pub fn usable_bytes(&self) -> u64 {
        self.usable_bytes
    }
}

impl fmt::Display for Plan {
    /// One line per partition, then the shared region, parked CPUs and unassigned memory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.partitions() {
            write!(
                f,
                "instance {}: cpus {:?}, {}",
                p.index,
                p.cpus,
                Size(p.bytes)
            )?;
            if self.nodes > 1 {
                write!(f, " on node {}", p.node)?;
            }
            f.write_str(" in")?;
            for r in p.memory {
                write!(f, " {r}")?;
            }
            writeln!(f)?;
        }
        if let Some(s) = self.shared {
            writeln!(f, "shared: {s} ({})", Size(s.len))?;
        }
        if !self.parked_cpus().is_empty() {
            writeln!(f, "parked cpus: {:?}", self.parked_cpus())?;
        }
        let left: u64 = self.unassigned().iter().map(|r| r.len).sum();
        write!(f, "unassigned: {}", Size(left))?;
        for r in self.unassigned() {
            write!(f, " {r}")?;
        }
        writeln!(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed-capacity set of disjoint, non-touching, ascending `[start, end)` ranges.
// ---------------------------------------------------------------------------------------------

/// One slot more than [`MAX_MEMORY_RANGES`], for the split made by the shared region.
struct RangeSet {
    r: [(u64, u64); POOL_CAPACITY],
    len: usize,
}

impl RangeSet {
    fn new() -> Self {
        Self {
            r: [(0, 0); POOL_CAPACITY],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[(u64, u64)] {
        &self.r[..self.len]
    }

    fn total(&self) -> u64 {
        self.as_slice().iter().map(|&(s, e)| e - s).sum()
    }

    /// Appends a range above all others (the caller keeps the order).
    fn push(&mut self, s: u64, e: u64) {
        self.r[self.len] = (s, e);
        self.len += 1;
    }

    /// Adds `[s, e)`, merging it with every range it overlaps or touches.
    fn insert(&mut self, mut s: u64, mut e: u64) -> Result<(), PlanError> {
        if s >= e {
            return Ok(());
        }
        // Ranges `i..j` overlap or touch `[s, e)`.
        let i = self
            .as_slice()
            .iter()
            .position(|&(_, re)| re >= s)
            .unwrap_or(self.len);
        let j = self.as_slice()[i..]
            .iter()
            .position(|&(rs, _)| rs > e)
            .map_or(self.len, |k| i + k);
        if i < j {
            s = s.min(self.r[i].0);
            e = e.max(self.r[j - 1].1);
            self.r[i] = (s, e);
            self.r.copy_within(j..self.len, i + 1);
            self.len -= j - i - 1;
        } else {
            if self.len == MAX_MEMORY_RANGES {
                return Err(PlanError::TooManyMemoryRanges {
                    max: MAX_MEMORY_RANGES,
                });
            }
            self.r.copy_within(i..self.len, i + 1);
            self.r[i] = (s, e);
            self.len += 1;
        }
        Ok(())
    }

    /// Removes `[lo, hi)`, which lies inside range `i`, keeping the non-empty pieces around it.
    fn cut(&mut self, i: usize, lo: u64, hi: u64) {
        let (s, e) = self.r[i];
        let mut pieces = [(0, 0); 2];
        let mut n = 0;
        for (ps, pe) in [(s, lo), (hi, e)] {
            if ps < pe {
                pieces[n] = (ps, pe);
                n += 1;
            }
        }
        // Replace 1 entry by `n` (0, 1 or 2); there is always room for one more.
        self.r.copy_within(i + 1..self.len, i + n);
        self.r[i..i + n].copy_from_slice(&pieces[..n]);
        self.len = self.len + n - 1;
    }
}

#[cfg(test)]
mod tests;
