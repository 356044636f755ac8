//! User address spaces: one top-level page table per task, whose lower half maps that task's
//! memory and whose upper half is the instance's kernel half, shared.
//!
//! # Layout of the user half (PML4 entries 0..256, addresses below `0x0000_8000_0000_0000`)
//!
//! ```text
//!  0x0000_0000_0000 .. 0x0000_0000_1000    page 0: never mapped (null pointers fault)
//!  USER_START   0x1000 .. ANON_START       the program region: the ELF image, at
//!                                          PROGRAM_BASE (0x40_0000) for position-independent
//!                                          programs, at its link addresses for fixed ones
//!  ANON_START   0x1000_0000_0000 .. ANON_END 0x2000_0000_0000
//!                                          anonymous memory (the `map` system call), first
//!                                          fit, an unmapped page after every mapping
//!  ANON_END .. STACK_BOTTOM - 4 KiB        never mapped (its last page: the stack's guard)
//!  STACK_BOTTOM .. STACK_TOP = USER_END    the user stack, 64 KiB, RW + NX
//!  USER_END 0x7FFF_FFFF_F000 .. 2^47       the last user page: never mapped, so no user
//!                                          instruction can sit next to the non-canonical
//!                                          hole (the `sysret` hazard)
//! ```
//!
//! Every mapping lies inside one of the three regions ([`map_zeroed`](AddressSpace::map_zeroed)
//! refuses anything else), so the stack's guard page and the gaps stay unmapped for good.
//!
//! # The kernel half
//!
//! A space's top-level entries 256..512 are copies of the instance's own table's, taken when the
//! space is created: the tables below them are shared, so every later change to the kernel's
//! mappings shows in every space, except a new top-level entry. `paging` therefore refuses to
//! create one once a space exists (`paging::KERNEL_HALF_FROZEN`); every slot the kernel uses is
//! taken while it boots (heap, MMIO window, physical map, image, stacks). No user-half entry is
//! ever copied from the kernel's table (the trampoline's identity page lives there).
//!
//! # Access from the kernel
//!
//! The kernel reaches a space's memory only through the physical map, after walking the space's
//! own tables ([`read_user`](AddressSpace::read_user) and the like): never through the user
//! address, so no SMAP toggling, no fault in the kernel, and a space that is not loaded (a task
//! that is not running) works the same as the loaded one.
//!
//! # Concurrency
//!
//! A space is changed through `&mut self` only, and its frames (tables and pages) belong to it
//! alone: the owner of the value is the only one to touch them, besides the CPU running its task
//! (which sets accessed/dirty bits). A task runs on one CPU at a time; when a page of the loaded
//! space is unmapped the running CPU's TLB entry is invalidated here; other CPUs reload CR3 when
//! they switch to the space, which drops its stale entries (user pages are never global). A
//! space must not be dropped while another CPU has it loaded (the scheduler's rule); on the
//! running CPU, `Drop` switches to the kernel's table first.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{FrameAllocator, PageTable, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::frames::{self, PageTableFrames};
use super::paging;

/// Page size of every user mapping.
pub const PAGE_SIZE: u64 = 4096;
/// Lowest user address that can be mapped (page 0 never is).
pub const USER_START: u64 = 0x1000;
/// One past the highest user address that can be mapped (the last page below the canonical
/// hole never is).
pub const USER_END: u64 = 0x0000_7FFF_FFFF_F000;
/// Where a position-independent program is loaded (its link address 0 runs there).
pub const PROGRAM_BASE: u64 = 0x40_0000;
/// The program region is `[USER_START, PROGRAM_END)`.
pub const PROGRAM_END: u64 = ANON_START;
/// The anonymous-memory region is `[ANON_START, ANON_END)`.
pub const ANON_START: u64 = 0x1000_0000_0000;
pub const ANON_END: u64 = 0x2000_0000_0000;
/// Size of the user stack.
pub const STACK_SIZE: u64 = 64 * 1024;
/// One past the top of the user stack.
pub const STACK_TOP: u64 = USER_END;
/// The lowest stack page; the page under it is the guard, never mapped.
pub const STACK_BOTTOM: u64 = STACK_TOP - STACK_SIZE;
/// Most bytes one [`AddressSpace::read_user`] / `write_user` / `load_bytes` copies.
pub const MAX_COPY: u64 = 64 << 20;

const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Flags of every user-half table entry above the leaves: the leaf decides.
const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE);

/// Most bytes one [`AddressSpace::map_device`] maps.
pub const MAX_DEVICE_MAP: u64 = 16 << 20;
/// Marks a leaf entry that maps device memory (an available bit, ignored by the CPU): the
/// frame is not the space's, so it is never freed, and the kernel never copies through it.
const DEVICE: PageTableFlags = PageTableFlags::BIT_9;

/// User pages (data frames) held by all the spaces of this instance.
static USER_FRAMES: AtomicU64 = AtomicU64::new(0);
/// Page-table frames (roots included) held by all the spaces of this instance.
static TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);
/// Spaces alive in this instance.
static SPACES: AtomicU64 = AtomicU64::new(0);
/// Frames the allocator refused to take back (should stay 0: a bookkeeping bug otherwise).
static FREE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// What the user address spaces of this instance hold, from the instance's frame allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceUsage {
    /// Spaces alive.
    pub spaces: u64,
    /// User pages mapped in them.
    pub user_frames: u64,
    /// Their page-table frames, roots included.
    pub table_frames: u64,
    /// Frames the allocator refused back when they were freed (0 unless something is wrong).
    pub free_errors: u64,
}

/// The instance's totals over all its user address spaces.
pub fn usage() -> SpaceUsage {
    SpaceUsage {
        spaces: SPACES.load(Ordering::Relaxed),
        user_frames: USER_FRAMES.load(Ordering::Relaxed),
        table_frames: TABLE_FRAMES.load(Ordering::Relaxed),
        free_errors: FREE_ERRORS.load(Ordering::Relaxed),
    }
}

/// Access rights of a user mapping (always readable and user accessible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perm {
    pub write: bool,
    pub exec: bool,
}

impl Perm {
    /// Read only, not executable.
    pub const R: Self = Self {
        write: false,
        exec: false,
    };
    /// Read and write, not executable.
    pub const RW: Self = Self {
        write: true,
        exec: false,
    };
    /// Read and execute.
    pub const RX: Self = Self {
        write: false,
        exec: true,
    };

    fn flags(self) -> PageTableFlags {
        let mut f = PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE;
        if self.write {
            f |= PageTableFlags::WRITABLE;
        }
        if !self.exec {
            f |= PageTableFlags::NO_EXECUTE;
        }
        f
    }
}

/// Why a change to an address space was refused. `OutOfFrames` and `AnonFull` are the
/// instance's state (its memory, the space's anonymous region); every other case is the
/// caller's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceError {
    /// This instance's frame allocator is empty.
    OutOfFrames,
    /// No room left in the anonymous region for `len` bytes.
    AnonFull { len: u64 },
    /// The range is empty (zero pages or bytes).
    Empty,
    /// `va` is not page aligned.
    Unaligned { va: u64 },
    /// `[va, va + pages * 4 KiB)` is not wholly inside one region of the user half (program,
    /// anonymous, stack), or wraps around.
    OutsideRegions { va: u64, pages: u64 },
    /// Writable and executable at once (W^X).
    WriteExecute,
    /// The page at `va` is mapped already.
    AlreadyMapped { va: u64 },
    /// The page at `va` is not mapped.
    NotMapped { va: u64 },
    /// `[va, va + pages * 4 KiB)` is not inside the anonymous region.
    NotAnon { va: u64, pages: u64 },
    /// The physical address `phys` of a device mapping is not page aligned.
    PhysUnaligned { phys: u64 },
    /// A device mapping of `len` bytes is above [`MAX_DEVICE_MAP`].
    DeviceTooLarge { len: u64 },
    /// `[phys, phys + len)` is not device memory: it overlaps this instance's own memory, or
    /// lies beyond the physical address space.
    NotDevice { phys: u64, len: u64 },
}

impl SpaceError {
    /// The system call error this is, for a task's request.
    pub fn abi_error(self) -> mk_abi::Error {
        match self {
            Self::OutOfFrames | Self::AnonFull { .. } => mk_abi::Error::OutOfMemory,
            Self::Empty | Self::DeviceTooLarge { .. } => mk_abi::Error::BadLength,
            Self::WriteExecute | Self::PhysUnaligned { .. } | Self::NotDevice { .. } => {
                mk_abi::Error::BadArgument
            }
            Self::Unaligned { .. }
            | Self::OutsideRegions { .. }
            | Self::AlreadyMapped { .. }
            | Self::NotMapped { .. }
            | Self::NotAnon { .. } => mk_abi::Error::BadAddress,
        }
    }
}

impl core::fmt::Display for SpaceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("this instance is out of physical frames"),
            Self::AnonFull { len } => {
                write!(f, "no room for {len} bytes in the anonymous-memory region")
            }
            Self::Empty => f.write_str("empty range"),
            Self::Unaligned { va } => write!(f, "{va:#x} is not page aligned"),
            Self::OutsideRegions { va, pages } => write!(
                f,
                "{pages} pages at {va:#x} are not inside one user region (program, anonymous, stack)"
            ),
            Self::WriteExecute => f.write_str("a mapping may not be both writable and executable"),
            Self::AlreadyMapped { va } => write!(f, "the page at {va:#x} is already mapped"),
            Self::NotMapped { va } => write!(f, "the page at {va:#x} is not mapped"),
            Self::NotAnon { va, pages } => write!(
                f,
                "{pages} pages at {va:#x} are not in the anonymous-memory region"
            ),
            Self::PhysUnaligned { phys } => {
                write!(f, "physical address {phys:#x} is not page aligned")
            }
            Self::DeviceTooLarge { len } => write!(
                f,
                "a device mapping of {len} bytes is above the limit of {MAX_DEVICE_MAP}"
            ),
            Self::NotDevice { phys, len } => write!(
                f,
                "{len} bytes at physical {phys:#x} are not device memory (this instance's memory, or beyond the physical address space)"
            ),
        }
    }
}

/// Why a copy between the kernel and a user address space was refused. Every case is the
/// caller's argument (a task's pointer or length), never the kernel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFault {
    /// `va + len` wraps around.
    Wraps { va: u64, len: u64 },
    /// The range reaches `USER_END` or beyond (the kernel half, the non-canonical hole).
    OutsideUser { va: u64, len: u64 },
    /// `len` is above the limit `max`.
    TooLong { len: u64, max: u64 },
    /// The page at `va` is not mapped (or not user accessible).
    NotMapped { va: u64 },
    /// The page at `va` is not writable.
    ReadOnly { va: u64 },
    /// The page at `va` maps device memory, which the kernel never copies through.
    Device { va: u64 },
    /// The bytes at `va` are not UTF-8.
    NotUtf8 { va: u64 },
}

impl UserFault {
    /// The system call error this is.
    pub fn abi_error(self) -> mk_abi::Error {
        match self {
            Self::TooLong { .. } => mk_abi::Error::BadLength,
            Self::NotUtf8 { .. } => mk_abi::Error::BadArgument,
            Self::Wraps { .. }
            | Self::OutsideUser { .. }
            | Self::NotMapped { .. }
            | Self::ReadOnly { .. }
            | Self::Device { .. } => mk_abi::Error::BadAddress,
        }
    }
}

impl core::fmt::Display for UserFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Wraps { va, len } => write!(f, "{len} bytes at {va:#x} wrap around"),
            Self::OutsideUser { va, len } => {
                write!(f, "{len} bytes at {va:#x} reach outside user memory")
            }
            Self::TooLong { len, max } => write!(f, "{len} bytes is above the limit of {max}"),
            Self::NotMapped { va } => write!(f, "user address {va:#x} is not mapped"),
            Self::ReadOnly { va } => write!(f, "user address {va:#x} is not writable"),
            Self::Device { va } => write!(f, "user address {va:#x} maps device memory"),
            Self::NotUtf8 { va } => write!(f, "the text at {va:#x} is not UTF-8"),
        }
    }
}

/// A task's address space: its own top-level table (see the module's documentation).
#[derive(Debug)]
pub struct AddressSpace {
    /// Physical address of the top-level table.
    root: u64,
    /// User pages mapped (frames this space owns).
    user_frames: u64,
    /// Device pages mapped ([`map_device`](Self::map_device): frames it does not own).
    device_pages: u64,
    /// Page-table frames of the user half (the root not included).
    table_frames: u64,
    /// Mapped ranges `[start, end)` of the anonymous region, sorted, disjoint.
    anon: Vec<(u64, u64)>,
}

/// Index into the table of `level` (4 = top) for `va`.
const fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// A fresh zeroed frame from the instance's allocator.
fn zeroed_frame() -> Option<u64> {
    PageTableFrames
        .allocate_frame()
        .map(|f| f.start_address().as_u64())
}

fn free_frame(phys: u64) {
    if frames::free(PhysFrame::containing_address(PhysAddr::new(phys))).is_err() {
        FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Entry `i` of the page table at physical `table`.
///
/// `table` is always one of a space's table frames (its root, or a table it allocated and
/// linked in), and `i < 512` (from [`index`] or a loop bound); callers keep to that, which
/// makes the access below sound.
fn read_entry(table: u64, i: usize) -> u64 {
    debug_assert!(i < 512);
    let p = (frames::phys_to_virt(table) as *const u64).wrapping_add(i);
    // SAFETY: `table` is a page-table frame of a space (see above), from this instance's
    // allocator and so in its physical map; `i < 512` keeps the read inside the frame, which
    // is aligned for u64. Volatile: the CPU may set accessed/dirty bits in it.
    unsafe { core::ptr::read_volatile(p) }
}

/// Writes entry `i` of the page table at physical `table` (same contract as [`read_entry`],
/// and the caller holds the space mutably, so no one else writes the entry; entries of the
/// kernel half are never written).
fn write_entry(table: u64, i: usize, value: u64) {
    debug_assert!(i < 512);
    let p = (frames::phys_to_virt(table) as *mut u64).wrapping_add(i);
    // SAFETY: as in `read_entry`; the space's tables belong to it alone, and it is held
    // mutably by the caller.
    unsafe { core::ptr::write_volatile(p, value) }
}

fn present(e: u64) -> bool {
    e & PageTableFlags::PRESENT.bits() != 0
}

fn huge(e: u64) -> bool {
    e & PageTableFlags::HUGE_PAGE.bits() != 0
}

/// Whether `[va, va + pages pages)` lies inside one region; `None` if it wraps.
fn region_of(va: u64, pages: u64) -> Option<(u64, u64)> {
    let end = pages
        .checked_mul(PAGE_SIZE)
        .and_then(|l| va.checked_add(l))?;
    [
        (USER_START, PROGRAM_END),
        (ANON_START, ANON_END),
        (STACK_BOTTOM, STACK_TOP),
    ]
    .into_iter()
    .find(|&(s, e)| va >= s && end <= e)
}

impl AddressSpace {
    /// A space with an empty user half and the instance's kernel half.
    pub fn new() -> Result<Self, SpaceError> {
        let root = zeroed_frame().ok_or(SpaceError::OutOfFrames)?;
        // SAFETY: `root` is a fresh zeroed frame from this instance's allocator, in its
        // physical map, aligned, and nothing else refers to it yet.
        let table = unsafe { &mut *(frames::phys_to_virt(root) as *mut PageTable) };
        paging::copy_kernel_half(table);
        SPACES.fetch_add(1, Ordering::Relaxed);
        TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            root,
            user_frames: 0,
            device_pages: 0,
            table_frames: 0,
            anon: Vec::new(),
        })
    }

    /// Physical address of the top-level table (what CR3 holds while the space is loaded).
    pub fn root_phys(&self) -> u64 {
        self.root
    }

    /// User pages mapped.
    pub fn mapped_pages(&self) -> u64 {
        self.user_frames
    }

    /// Device pages mapped (not in [`mapped_pages`](Self::mapped_pages): not the space's).
    pub fn device_pages(&self) -> u64 {
        self.device_pages
    }

    /// Page-table frames of the user half (the root not counted).
    pub fn table_pages(&self) -> u64 {
        self.table_frames
    }

    /// The mapped ranges `[start, end)` of the anonymous region, in address order.
    pub fn anon_ranges(&self) -> &[(u64, u64)] {
        &self.anon
    }

    /// Loads the space on the running CPU (writes CR3; the TLB's user entries go).
    pub fn activate(&self) {
        let (_, flags) = Cr3::read();
        // SAFETY: the root's upper half is the instance's kernel half (copied at creation; no
        // top-level entry was added since: `paging::KERNEL_HALF_FROZEN`), so the kernel's code,
        // data, stacks, heap and windows stay mapped as they were; the lower half maps only
        // frames this space owns, which no Rust object of the kernel lives in.
        unsafe {
            Cr3::write(
                PhysFrame::containing_address(PhysAddr::new(self.root)),
                flags,
            )
        };
    }

    /// Whether the running CPU has this space loaded.
    pub fn is_active(&self) -> bool {
        Cr3::read().0.start_address().as_u64() == self.root
    }

    /// Walks to the leaf entry of `va`: `(entry, effective flags)`, where USER and WRITABLE
    /// hold only if every level has them, NO_EXECUTE if any level has it.
    fn walk(&self, va: u64) -> Option<(u64, PageTableFlags)> {
        if va >= USER_END {
            return None;
        }
        let mut table = self.root;
        let mut and = PageTableFlags::all();
        let mut or = PageTableFlags::empty();
        for level in [4, 3, 2] {
            let e = read_entry(table, index(va, level));
            if !present(e) || huge(e) {
                return None;
            }
            let f = PageTableFlags::from_bits_truncate(e);
            and &= f;
            or |= f & PageTableFlags::NO_EXECUTE;
            table = e & ADDR_MASK;
        }
        let e = read_entry(table, index(va, 1));
        if !present(e) {
            return None;
        }
        let leaf = PageTableFlags::from_bits_truncate(e);
        let keep = PageTableFlags::USER_ACCESSIBLE | PageTableFlags::WRITABLE;
        let flags = (leaf & !keep) | (leaf & keep & and) | or;
        Some((e, flags))
    }

    /// The physical address `va` maps to and the page's effective flags, if it is mapped.
    pub fn translate(&self, va: u64) -> Option<(u64, PageTableFlags)> {
        self.walk(va)
            .map(|(e, f)| ((e & ADDR_MASK) | (va & (PAGE_SIZE - 1)), f))
    }

    /// Checks `[va, va + pages)` for a mapping request: non-empty, aligned, inside a region.
    fn check_pages(va: u64, pages: u64) -> Result<(u64, u64), SpaceError> {
        if pages == 0 {
            return Err(SpaceError::Empty);
        }
        if !va.is_multiple_of(PAGE_SIZE) {
            return Err(SpaceError::Unaligned { va });
        }
        region_of(va, pages).ok_or(SpaceError::OutsideRegions { va, pages })
    }

    /// Maps `pages` fresh zeroed pages at `va` with `perm`. The range must be page aligned,
    /// inside one region of the user half, and not mapped at all; writable and executable
    /// together is refused (W^X). On failure nothing of the range stays mapped.
    pub fn map_zeroed(&mut self, va: u64, pages: u64, perm: Perm) -> Result<(), SpaceError> {
        let (region, _) = Self::check_pages(va, pages)?;
        if perm.write && perm.exec {
            return Err(SpaceError::WriteExecute);
        }
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            if self.walk(page).is_some() {
                return Err(SpaceError::AlreadyMapped { va: page });
            }
        }
        let flags = perm.flags();
        for i in 0..pages {
            if let Err(e) = self.map_page(va + i * PAGE_SIZE, flags) {
                self.unmap_pages(va, i);
                return Err(e);
            }
        }
        if region == ANON_START {
            self.anon.push((va, va + pages * PAGE_SIZE));
            self.anon.sort_unstable();
        }
        Ok(())
    }

    /// Maps one fresh zeroed frame at `va` (not mapped: checked by the caller).
    fn map_page(&mut self, va: u64, flags: PageTableFlags) -> Result<(), SpaceError> {
        let table = self.leaf_table(va)?;
        let frame = zeroed_frame().ok_or(SpaceError::OutOfFrames)?;
        write_entry(table, index(va, 1), frame | flags.bits());
        self.user_frames += 1;
        USER_FRAMES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The last-level table for `va`, with the tables above it created as needed.
    fn leaf_table(&mut self, va: u64) -> Result<u64, SpaceError> {
        let mut table = self.root;
        for level in [4, 3, 2] {
            let i = index(va, level);
            let e = read_entry(table, i);
            table = if present(e) {
                e & ADDR_MASK
            } else {
                let t = zeroed_frame().ok_or(SpaceError::OutOfFrames)?;
                write_entry(table, i, t | TABLE_FLAGS.bits());
                self.table_frames += 1;
                TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
                t
            };
        }
        Ok(table)
    }

    /// Maps `len` bytes (rounded up to pages, at most [`MAX_DEVICE_MAP`]) of device memory at
    /// physical `phys` (page aligned) in the anonymous region, user accessible, writable, not
    /// executable and uncached (PCD|PWT), and returns its address. The frames stay the
    /// device's: unmapping the range (`unmap_anon`) or dropping the space never frees them,
    /// and `read_user`/`write_user` refuse the range. Memory this instance's allocator
    /// manages is refused; which device a task may map is its caller's decision.
    pub fn map_device(&mut self, phys: u64, len: u64) -> Result<u64, SpaceError> {
        if len == 0 {
            return Err(SpaceError::Empty);
        }
        if len > MAX_DEVICE_MAP {
            return Err(SpaceError::DeviceTooLarge { len });
        }
        if !phys.is_multiple_of(PAGE_SIZE) {
            return Err(SpaceError::PhysUnaligned { phys });
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let end = phys
            .checked_add(pages * PAGE_SIZE)
            .filter(|&e| e <= ADDR_MASK + PAGE_SIZE)
            .ok_or(SpaceError::NotDevice { phys, len })?;
        if frames::owns_any(phys, end) {
            return Err(SpaceError::NotDevice { phys, len });
        }
        let va = self
            .find_free_anon(len)
            .ok_or(SpaceError::AnonFull { len })?;
        let flags =
            Perm::RW.flags() | PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH | DEVICE;
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            match self.leaf_table(page) {
                Ok(table) => {
                    write_entry(table, index(page, 1), (phys + i * PAGE_SIZE) | flags.bits());
                    self.device_pages += 1;
                }
                Err(e) => {
                    // Nothing of the range stays mapped (device pages are not freed).
                    self.unmap_pages(va, i);
                    return Err(e);
                }
            }
        }
        self.anon.push((va, va + pages * PAGE_SIZE));
        self.anon.sort_unstable();
        Ok(va)
    }

    /// Unmaps and frees the mapped pages of `[va, va + pages)` (those not mapped are skipped).
    /// The tables stay (freed with the space).
    fn unmap_pages(&mut self, va: u64, pages: u64) {
        let active = self.is_active();
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            let mut table = self.root;
            let mut found = true;
            for level in [4, 3, 2] {
                let e = read_entry(table, index(page, level));
                if !present(e) || huge(e) {
                    found = false;
                    break;
                }
                table = e & ADDR_MASK;
            }
            if !found {
                continue;
            }
            let e = read_entry(table, index(page, 1));
            if !present(e) {
                continue;
            }
            write_entry(table, index(page, 1), 0);
            if active {
                x86_64::instructions::tlb::flush(VirtAddr::new(page));
            }
            if e & DEVICE.bits() != 0 {
                // The device's frame, not the space's: only the mapping goes.
                self.device_pages -= 1;
                continue;
            }
            free_frame(e & ADDR_MASK);
            self.user_frames -= 1;
            USER_FRAMES.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Unmaps `pages` pages at `va` and frees their frames. Every page of the range must be
    /// mapped (else nothing is unmapped).
    pub fn unmap(&mut self, va: u64, pages: u64) -> Result<(), SpaceError> {
        let (region, _) = Self::check_pages(va, pages)?;
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            if self.walk(page).is_none() {
                return Err(SpaceError::NotMapped { va: page });
            }
        }
        self.unmap_pages(va, pages);
        if region == ANON_START {
            self.forget_anon(va, va + pages * PAGE_SIZE);
        }
        Ok(())
    }

    /// [`unmap`](Self::unmap) for a task's request: the range must also lie in the anonymous
    /// region (a task never unmaps its program or its stack).
    pub fn unmap_anon(&mut self, va: u64, pages: u64) -> Result<(), SpaceError> {
        match region_of(va, pages) {
            Some((ANON_START, _)) => self.unmap(va, pages),
            _ if pages == 0 => Err(SpaceError::Empty),
            _ => Err(SpaceError::NotAnon { va, pages }),
        }
    }

    /// Drops `[start, end)` from the anonymous ranges, splitting those it cuts.
    fn forget_anon(&mut self, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.anon.len() + 1);
        for &(s, e) in &self.anon {
            if e <= start || s >= end {
                kept.push((s, e));
                continue;
            }
            if s < start {
                kept.push((s, start));
            }
            if e > end {
                kept.push((end, e));
            }
        }
        self.anon = kept;
    }

    /// Where `len` bytes (rounded up to pages) would fit in the anonymous region: the lowest
    /// address with an unmapped page after every existing mapping and after the new one.
    pub fn find_free_anon(&self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let bytes = len.checked_next_multiple_of(PAGE_SIZE)?;
        let mut at = ANON_START;
        for &(s, e) in &self.anon {
            if at.checked_add(bytes)?.checked_add(PAGE_SIZE)? <= s {
                return Some(at);
            }
            at = at.max(e + PAGE_SIZE);
        }
        (at.checked_add(bytes)?.checked_add(PAGE_SIZE)? <= ANON_END).then_some(at)
    }

    /// Maps `len` bytes (rounded up to pages) of zeroed memory, readable and writable, not
    /// executable, in the anonymous region, and returns its address (the `map` system call;
    /// the caller enforces `mk_abi::MAX_MAP`).
    pub fn map_anon(&mut self, len: u64) -> Result<u64, SpaceError> {
        if len == 0 {
            return Err(SpaceError::Empty);
        }
        let va = self
            .find_free_anon(len)
            .ok_or(SpaceError::AnonFull { len })?;
        self.map_zeroed(va, len.div_ceil(PAGE_SIZE), Perm::RW)?;
        Ok(va)
    }

    /// The page-table frame holding the last-level entry of `page`, if its tables exist.
    fn leaf_of(&self, page: u64) -> Option<u64> {
        let mut table = self.root;
        for level in [4, 3, 2] {
            let e = read_entry(table, index(page, level));
            if !present(e) || huge(e) {
                return None;
            }
            table = e & ADDR_MASK;
        }
        Some(table)
    }

    /// Takes `pages` pages at `va` out of the space (the `pages` system call): every page
    /// must be mapped in the anonymous region and be memory, not a device. They are unmapped
    /// and their frames handed over in a [`PageRun`], with their contents. Nothing changes on
    /// an error.
    pub fn take_anon(&mut self, va: u64, pages: u64) -> Result<PageRun, SpaceError> {
        match region_of(va, pages) {
            Some((ANON_START, _)) if pages > 0 => {}
            _ if pages == 0 => return Err(SpaceError::Empty),
            _ => return Err(SpaceError::NotAnon { va, pages }),
        }
        let mut run = Vec::with_capacity(pages as usize);
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            let (e, flags) = self.walk(page).ok_or(SpaceError::NotMapped { va: page })?;
            if flags.contains(DEVICE) {
                return Err(SpaceError::NotAnon { va, pages });
            }
            run.push(e & ADDR_MASK);
        }
        let active = self.is_active();
        for i in 0..pages {
            let page = va + i * PAGE_SIZE;
            if let Some(table) = self.leaf_of(page) {
                write_entry(table, index(page, 1), 0);
            }
            if active {
                x86_64::instructions::tlb::flush(VirtAddr::new(page));
            }
            self.user_frames -= 1;
            USER_FRAMES.fetch_sub(1, Ordering::Relaxed);
        }
        self.forget_anon(va, va + pages * PAGE_SIZE);
        Ok(PageRun { frames: run })
    }

    /// Maps the pages of `run` in the anonymous region (read-write, not executable), which
    /// become the space's (freed with it); returns their address. On an error the run is
    /// given back untouched.
    pub fn map_run(&mut self, mut run: PageRun) -> Result<u64, (SpaceError, PageRun)> {
        let pages = run.frames.len() as u64;
        let Some(va) = self.find_free_anon(pages * PAGE_SIZE) else {
            return Err((
                SpaceError::AnonFull {
                    len: pages * PAGE_SIZE,
                },
                run,
            ));
        };
        for (i, &frame) in run.frames.iter().enumerate() {
            let page = va + i as u64 * PAGE_SIZE;
            match self.leaf_table(page) {
                Ok(table) => write_entry(table, index(page, 1), frame | Perm::RW.flags().bits()),
                Err(e) => {
                    // Take back what was mapped (the frames stay the run's).
                    for k in 0..i as u64 {
                        let p = va + k * PAGE_SIZE;
                        if let Some(t) = self.leaf_of(p) {
                            write_entry(t, index(p, 1), 0);
                        }
                    }
                    return Err((e, run));
                }
            }
        }
        self.user_frames += pages;
        USER_FRAMES.fetch_add(pages, Ordering::Relaxed);
        self.anon.push((va, va + pages * PAGE_SIZE));
        self.anon.sort_unstable();
        run.frames.clear();
        Ok(va)
    }

    /// Checks `[va, va + len)` for a copy and that every page is mapped, user accessible, and
    /// writable if `write`. Returns where `va` is in the physical map when the whole range
    /// lies in one page (a system call's small buffers, the common case): the copy then needs
    /// no second walk. `None`: it spans pages (or is empty); copy it by [`Self::pieces`].
    fn check_copy(&self, va: u64, len: u64, write: bool) -> Result<Option<u64>, UserFault> {
        if len > MAX_COPY {
            return Err(UserFault::TooLong { len, max: MAX_COPY });
        }
        let end = va.checked_add(len).ok_or(UserFault::Wraps { va, len })?;
        if end > USER_END {
            return Err(UserFault::OutsideUser { va, len });
        }
        let first = va & !(PAGE_SIZE - 1);
        let mut page = first;
        let mut first_entry = None;
        while page < end {
            let (e, flags) = self.walk(page).ok_or(UserFault::NotMapped { va: page })?;
            if !flags.contains(PageTableFlags::USER_ACCESSIBLE) {
                return Err(UserFault::NotMapped { va: page });
            }
            if write && !flags.contains(PageTableFlags::WRITABLE) {
                return Err(UserFault::ReadOnly { va: page });
            }
            // Registers, not memory: a copy could have side effects on the device.
            if flags.contains(DEVICE) {
                return Err(UserFault::Device { va: page });
            }
            first_entry.get_or_insert(e);
            page += PAGE_SIZE;
        }
        Ok(match first_entry {
            Some(e) if len > 0 && end <= first + PAGE_SIZE => {
                Some(frames::phys_to_virt((e & ADDR_MASK) + (va - first)))
            }
            _ => None,
        })
    }

    /// Runs `f(frame's kernel address, offset in buf, length)` for each page-sized piece of
    /// `[va, va + len)`, checked by `check_copy` before.
    fn pieces(&self, va: u64, len: u64, mut f: impl FnMut(u64, usize, usize)) {
        let mut done = 0u64;
        while done < len {
            let at = va + done;
            let in_page = at & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min(len - done);
            if let Some((e, _)) = self.walk(at) {
                f(
                    frames::phys_to_virt((e & ADDR_MASK) + in_page),
                    done as usize,
                    n as usize,
                );
            }
            done += n;
        }
    }

    /// Whether `[va, va + len)` could be written by `write_user` (mapped, user accessible,
    /// writable, not a device): a check before an operation whose result must be deliverable.
    pub fn check_user_writable(&self, va: u64, len: u64) -> Result<(), UserFault> {
        self.check_copy(va, len, true).map(|_| ())
    }

    /// Copies `buf.len()` bytes from user address `va` (every page mapped and user accessible).
    pub fn read_user(&self, va: u64, buf: &mut [u8]) -> Result<(), UserFault> {
        let len = buf.len() as u64;
        if let Some(src) = self.check_copy(va, len, false)? {
            // SAFETY: `src..src + len` is inside one user frame of this space (walked just
            // now by `check_copy`), in the physical map; the frame holds only user bytes, no
            // Rust object, and `buf` is a kernel buffer, so the ranges do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, buf.as_mut_ptr(), buf.len()) }
            return Ok(());
        }
        self.pieces(va, len, |src, off, n| {
            // SAFETY: `src..src + n` is inside one user frame of this space (walked just now),
            // in the physical map; the frame holds only user bytes, no Rust object, and `buf`
            // is a kernel buffer, so the ranges do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, buf[off..].as_mut_ptr(), n) }
        });
        Ok(())
    }

    /// Copies `data` to user address `va` (every page mapped, user accessible and writable).
    /// Nothing is written unless all of it can be.
    pub fn write_user(&mut self, va: u64, data: &[u8]) -> Result<(), UserFault> {
        let len = data.len() as u64;
        let one_page = self.check_copy(va, len, true)?;
        self.copy_in(va, data, one_page);
        Ok(())
    }

    /// Copies `data` to user address `va` whatever the pages' write permission (for the
    /// program loader, which fills read-only and executable pages); they must be mapped and
    /// user accessible.
    pub fn load_bytes(&mut self, va: u64, data: &[u8]) -> Result<(), UserFault> {
        let len = data.len() as u64;
        let one_page = self.check_copy(va, len, false)?;
        self.copy_in(va, data, one_page);
        Ok(())
    }

    /// Copies `data` to user address `va`, checked by `check_copy`, which gave `one_page`.
    fn copy_in(&mut self, va: u64, data: &[u8], one_page: Option<u64>) {
        if let Some(dst) = one_page {
            // SAFETY: `dst..dst + data.len()` is inside one user frame of this space (walked
            // by `check_copy` just before, under the same `&mut self`), in the physical map,
            // holding only user bytes; `&mut self` makes this the only writer from the
            // kernel; `data` is a kernel buffer, so no overlap.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) }
            return;
        }
        self.pieces(va, data.len() as u64, |dst, off, n| {
            // SAFETY: `dst..dst + n` is inside one user frame of this space (walked just now),
            // in the physical map, holding only user bytes; `&mut self` makes this the only
            // writer from the kernel; `data` is a kernel buffer, so no overlap.
            unsafe { core::ptr::copy_nonoverlapping(data[off..].as_ptr(), dst as *mut u8, n) }
        });
    }

    /// The `len` bytes at user address `va` as UTF-8 text, `len` at most `max`.
    pub fn read_user_str(&self, va: u64, len: u64, max: u64) -> Result<String, UserFault> {
        if len > max {
            return Err(UserFault::TooLong { len, max });
        }
        self.check_copy(va, len, false)?;
        let mut buf = alloc::vec![0u8; len as usize];
        self.read_user(va, &mut buf)?;
        String::from_utf8(buf).map_err(|_| UserFault::NotUtf8 { va })
    }
}

/// Loads the instance's own top-level table on the running CPU (when it leaves a task, and
/// before the task's space is dropped).
pub fn activate_kernel() {
    let root = paging::kernel_root();
    let (current, flags) = Cr3::read();
    if current.start_address().as_u64() == root {
        return;
    }
    // SAFETY: the instance's own table maps everything the kernel uses (it is the table every
    // space's kernel half was copied from); its user half maps nothing a task owns.
    unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(root)), flags) };
}

impl Drop for AddressSpace {
    /// Frees every user page and every user-half table, then the root; the kernel half is
    /// shared and left alone.
    fn drop(&mut self) {
        if self.is_active() {
            activate_kernel();
        }
        let (mut pages, mut devices, mut tables) = (0u64, 0u64, 0u64);
        for i4 in 0..256 {
            let e4 = read_entry(self.root, i4);
            if !present(e4) {
                continue;
            }
            let l3 = e4 & ADDR_MASK;
            for i3 in 0..512 {
                let e3 = read_entry(l3, i3);
                if !present(e3) || huge(e3) {
                    continue;
                }
                let l2 = e3 & ADDR_MASK;
                for i2 in 0..512 {
                    let e2 = read_entry(l2, i2);
                    if !present(e2) || huge(e2) {
                        continue;
                    }
                    let l1 = e2 & ADDR_MASK;
                    for i1 in 0..512 {
                        let e1 = read_entry(l1, i1);
                        if present(e1) && e1 & DEVICE.bits() != 0 {
                            // Device memory: not the space's to free.
                            devices += 1;
                        } else if present(e1) {
                            free_frame(e1 & ADDR_MASK);
                            pages += 1;
                        }
                    }
                    free_frame(l1);
                    tables += 1;
                }
                free_frame(l2);
                tables += 1;
            }
            free_frame(l3);
            tables += 1;
        }
        free_frame(self.root);
        USER_FRAMES.fetch_sub(pages, Ordering::Relaxed);
        TABLE_FRAMES.fetch_sub(tables + 1, Ordering::Relaxed);
        SPACES.fetch_sub(1, Ordering::Relaxed);
        if pages != self.user_frames || devices != self.device_pages || tables != self.table_frames
        {
            // The counts disagree with the walk: a bookkeeping bug, reported like a refused
            // free (the frames themselves were all given back).
            FREE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Pages of memory that belong to no address space: taken out of one (`take_anon`) or filled
/// by the kernel (`from_bytes`), until mapped into one (`map_run`). Dropping a run frees its
/// frames.
#[derive(Debug)]
pub struct PageRun {
    frames: Vec<u64>,
}

impl PageRun {
    /// A run of `data.len()` bytes rounded up to pages, holding `data` (the rest zeroed).
    pub fn from_bytes(data: &[u8]) -> Result<Self, SpaceError> {
        let pages = data.len().div_ceil(PAGE_SIZE as usize).max(1);
        let mut run = Self {
            frames: Vec::with_capacity(pages),
        };
        for chunk in 0..pages {
            let frame = zeroed_frame().ok_or(SpaceError::OutOfFrames)?;
            run.frames.push(frame);
            let from = chunk * PAGE_SIZE as usize;
            let part = &data[from.min(data.len())..(from + PAGE_SIZE as usize).min(data.len())];
            // SAFETY: `frame` was just allocated from this instance's allocator (so it is in
            // the physical map) and belongs to this run alone; `part` is at most a page long
            // and a kernel buffer, so the ranges do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    frames::phys_to_virt(frame) as *mut u8,
                    part.len(),
                );
            }
        }
        Ok(run)
    }

    pub fn pages(&self) -> u64 {
        self.frames.len() as u64
    }

    /// The run's contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = alloc::vec![0u8; self.frames.len() * PAGE_SIZE as usize];
        for (i, &frame) in self.frames.iter().enumerate() {
            let at = i * PAGE_SIZE as usize;
            // SAFETY: every frame of a run is a whole page of this instance's memory that no
            // address space maps (taken out of one, or filled by `from_bytes`) and that only
            // this run owns; `out` has room for the page at `at`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    frames::phys_to_virt(frame) as *const u8,
                    out[at..].as_mut_ptr(),
                    PAGE_SIZE as usize,
                );
            }
        }
        out
    }
}

impl Drop for PageRun {
    fn drop(&mut self) {
        for &f in &self.frames {
            free_frame(f);
        }
    }
}
