//! The TSS's I/O permission bitmap: which I/O ports ring 3 may use on this CPU.
//!
//! Ring 3 runs with IOPL 0 (the system call and interrupt return paths clear it), so an `in` or
//! `out` from a task is allowed only if every port it touches has its bit clear in the bitmap
//! that follows the running CPU's TSS; otherwise it raises #GP and the task ends like any
//! fault. Every CPU's bitmap covers all 65536 ports and starts with every bit set (every port
//! denied). A user-space driver granted ports gets exactly those, on the CPU that runs it, for
//! as long as it runs there: the scheduler calls `cpu::set_user_io_ports` (the safe entry
//! point, which knows the running CPU's slot; this module stays below `cpu` and `gdt`) with
//! the task's ports each time it switches a task in, so no task ever runs with another task's
//! ports.
//!
//! ```text
//!  TssBlock (one per CPU slot, static for the bootstrap CPU, leaked once per slot otherwise)
//!  ┌──────────────┬──────────────────────────────┬────┬───────────────────────────────┐
//!  │ TSS 104 B    │ bitmap 8192 B (1 = denied)   │0xFF│ allowed ranges (for the CPU)  │
//!  └──────────────┴──────────────────────────────┴────┴───────────────────────────────┘
//!   iomap_base ──────►                      TSS limit ┘
//! ```
//!
//! The trailing 0xFF byte is the architecture's: the CPU reads two bytes for an access that
//! may straddle a byte boundary, and the byte after the last must deny. The ranges allowed now
//! are kept beside the bitmap (outside the TSS limit, where the CPU never looks), so that
//! switching between tasks that have no ports (nearly all) costs two loads and no write.

use core::sync::atomic::{AtomicPtr, Ordering};

use x86_64::structures::tss::TaskStateSegment;

/// Ports the bitmap covers: all of them.
pub const PORTS: usize = 1 << 16;
/// Bytes of the bitmap proper (one bit per port).
const BITMAP_BYTES: usize = PORTS / 8;
/// Ranges a CPU remembers individually; beyond that it remembers only "more than that" and
/// denies everything again by rewriting the whole bitmap (rare: a task with many port ranges).
pub const MAX_RANGES: usize = 4;

/// The ranges ring 3 may use on one CPU now, as `[start, end)` with `end <= 0x10000`.
#[derive(Clone, Copy)]
struct Allowed {
    ranges: [(u32, u32); MAX_RANGES],
    len: u8,
    /// More ranges were allowed than `ranges` holds: the whole bitmap must be reset.
    overflow: bool,
}

impl Allowed {
    const NONE: Self = Self {
        ranges: [(0, 0); MAX_RANGES],
        len: 0,
        overflow: false,
    };

    fn is_empty(&self) -> bool {
        self.len == 0 && !self.overflow
    }

    fn as_slice(&self) -> &[(u32, u32)] {
        &self.ranges[..usize::from(self.len)]
    }
}

/// A CPU's TSS with its I/O permission bitmap right behind it (the bitmap must lie within
/// 0xDFFF bytes of the TSS's start; here it follows it directly).
#[repr(C)]
pub struct TssBlock {
    /// The TSS proper (first: its address is the block's).
    pub tss: TaskStateSegment,
    /// One bit per port (set = denied), then the required 0xFF byte.
    iomap: [u8; BITMAP_BYTES + 1],
    /// What the bitmap allows now (the CPU never reads this: it is past the TSS limit).
    allowed: Allowed,
}

/// Offset of the bitmap from the TSS's start (what `iomap_base` holds).
const IOMAP_OFFSET: usize = core::mem::offset_of!(TssBlock, iomap);
const _: () = assert!(IOMAP_OFFSET == core::mem::size_of::<TaskStateSegment>());
const _: () = assert!(IOMAP_OFFSET <= 0xDFFF);

impl TssBlock {
    /// A zeroed TSS whose bitmap denies every port.
    pub const fn new() -> Self {
        let mut tss = TaskStateSegment::new();
        tss.iomap_base = IOMAP_OFFSET as u16;
        Self {
            tss,
            iomap: [0xFF; BITMAP_BYTES + 1],
            allowed: Allowed::NONE,
        }
    }

    /// The bitmap with its terminating byte, for the TSS descriptor (whose limit must cover
    /// it).
    pub fn iomap(&self) -> &[u8] {
        &self.iomap
    }

    /// Back to "every port denied" with a fresh TSS (a CPU reusing the block of a slot whose
    /// previous CPU parked).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Sets (`deny`) or clears the bits of ports `[start, end)` (`end <= PORTS`).
    fn set_bits(&mut self, start: u32, end: u32, deny: bool) {
        let (start, end) = (start as usize, (end as usize).min(PORTS));
        let mut p = start;
        // Bit by bit up to a byte boundary, whole bytes, then bit by bit again.
        while p < end && !p.is_multiple_of(8) {
            self.set_bit(p, deny);
            p += 1;
        }
        let whole_end = p + (end - p) / 8 * 8;
        if whole_end > p {
            self.iomap[p / 8..whole_end / 8].fill(if deny { 0xFF } else { 0 });
            p = whole_end;
        }
        while p < end {
            self.set_bit(p, deny);
            p += 1;
        }
    }

    fn set_bit(&mut self, port: usize, deny: bool) {
        let (byte, bit) = (port / 8, 1u8 << (port % 8));
        if deny {
            self.iomap[byte] |= bit;
        } else {
            self.iomap[byte] &= !bit;
        }
    }

    fn allows(&self, port: u16) -> bool {
        let port = usize::from(port);
        self.iomap[port / 8] & (1 << (port % 8)) == 0
    }

    /// Makes the bitmap allow exactly `wanted` (normalised ranges, at most `MAX_RANGES` unless
    /// `overflow`), given what it allows now.
    fn apply(&mut self, wanted: &[(u32, u32)], more: &[(u16, u16)], overflow: bool) {
        let old = self.allowed;
        if old.overflow {
            self.iomap[..BITMAP_BYTES].fill(0xFF);
        } else {
            for &(s, e) in old.as_slice() {
                self.set_bits(s, e, true);
            }
        }
        for &(s, e) in wanted {
            self.set_bits(s, e, false);
        }
        // Ranges beyond those remembered are allowed too; the overflow flag makes the next
        // change deny the whole bitmap again.
        for &(base, len) in more {
            let (s, e) = clamp(base, len);
            self.set_bits(s, e, false);
        }
        let mut allowed = Allowed::NONE;
        allowed.ranges[..wanted.len()].copy_from_slice(wanted);
        allowed.len = wanted.len() as u8;
        allowed.overflow = overflow;
        self.allowed = allowed;
    }
}

/// `(base, len)` as `[start, end)`, clamped at the last port (a range that would wrap past
/// 0xFFFF ends there).
fn clamp(base: u16, len: u16) -> (u32, u32) {
    let start = u32::from(base);
    (start, (start + u32::from(len)).min(PORTS as u32))
}

/// Each CPU slot's block (null until its CPU loaded a GDT), for the functions below and
/// `gdt::set_kernel_stack`. A slot's block is reused by the next CPU to take the slot.
static BLOCK_OF_SLOT: [AtomicPtr<TssBlock>; SLOTS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; SLOTS];

/// CPU slots of one instance (`cpu::MAX_SLOTS`, which checks that they agree; not named here
/// because `cpu` is above this module).
pub const SLOTS: usize = 64;

/// Records `block` as the block of CPU slot `slot` (by `gdt`, when a CPU loads its TSS).
pub(super) fn publish(slot: usize, block: *mut TssBlock) {
    if let Some(entry) = BLOCK_OF_SLOT.get(slot) {
        entry.store(block, Ordering::Release);
    }
}

/// The block of slot `slot`, if a CPU has used the slot (for reuse by `gdt::init_ap`).
pub(super) fn block_of(slot: usize) -> Option<*mut TssBlock> {
    let p = BLOCK_OF_SLOT.get(slot)?.load(Ordering::Acquire);
    (!p.is_null()).then_some(p)
}

/// Makes ring 3 on the CPU in `slot` allowed exactly the ports of `ranges` (see
/// `cpu::set_user_io_ports`, the safe entry point, which passes the running CPU's slot).
///
/// # Safety
///
/// `slot` must be the running CPU's slot, and the caller must be in thread context (not an
/// interrupt handler): then this is the only code touching the slot's block for the duration
/// (its only other user, `gdt::set_kernel_stack`, also runs on this CPU in thread context).
pub(super) unsafe fn set_on_slot(slot: usize, ranges: &[(u16, u16)]) {
    let Some(block) = block_of(slot) else {
        return;
    };
    // SAFETY: `block` is the running CPU's own block (the caller's contract; published by
    // `gdt::load` on this CPU, leaked or static, never freed), and nothing else on this CPU
    // uses it meanwhile (the caller's contract), so this is the only reference. The CPU itself
    // reads the bitmap only for an I/O instruction in ring 3, which cannot run while this CPU
    // is here in ring 0.
    let block = unsafe { &mut *block };
    if ranges.is_empty() && block.allowed.is_empty() {
        return;
    }
    let mut wanted = [(0u32, 0u32); MAX_RANGES];
    let mut n = 0;
    let mut rest = ranges.iter();
    for &(base, len) in rest.by_ref() {
        if len == 0 {
            continue;
        }
        wanted[n] = clamp(base, len);
        n += 1;
        if n == MAX_RANGES {
            break;
        }
    }
    let more = rest.as_slice();
    let overflow = more.iter().any(|&(_, len)| len != 0);
    let wanted = &wanted[..n];
    // The same task back on its CPU (a driver alone there): nothing to change.
    if !overflow && !block.allowed.overflow && block.allowed.as_slice() == wanted {
        return;
    }
    block.apply(wanted, more, overflow);
}

/// Whether ring 3 may use `port` on the CPU in `slot` now.
///
/// # Safety
///
/// As for [`set_on_slot`]: the running CPU's slot, from thread context.
pub(super) unsafe fn allowed_on_slot(slot: usize, port: u16) -> bool {
    let Some(block) = block_of(slot) else {
        return false;
    };
    // SAFETY: as in `set_on_slot` (a read of the running CPU's own block, which nothing else
    // writes while this CPU is here).
    let block = unsafe { &*block };
    block.allows(port)
}
