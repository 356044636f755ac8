//! The instance's page tables through `x86_64`'s `OffsetPageTable`, and the virtual windows the
//! kernel carves for itself out of unused top-level slots.

use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, Translate, UnmapError};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::frames::{self, PageTableFrames};

static MAPPER: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// Set (under the mapper's lock) when the first user address space copies the kernel half
/// (`space.rs`). Every address space holds a copy of the upper half's 256 top-level entries,
/// taken when it is created, and shares the tables below them; a top-level entry created later
/// would be missing from the spaces that exist, and the kernel would fault there while one of
/// them is loaded. So from then on nothing may create an upper-half top-level entry:
/// [`claim_free_slot`] refuses, and so do [`map`] and [`map_phys`] for an address whose
/// top-level entry is empty. The slots the kernel uses (the heap's, the MMIO window's, the
/// physical map's, the kernel image's, the boot stack's) are all taken while the instance
/// boots, before any task exists; changes below existing entries are shared and need nothing.
static KERNEL_HALF_FROZEN: AtomicBool = AtomicBool::new(false);

/// Index of the top-level entry that maps `virt`.
const fn top_index(virt: u64) -> usize {
    ((virt >> 39) & 511) as usize
}

/// Whether mapping `virt` would have to create an upper-half top-level entry after
/// [`KERNEL_HALF_FROZEN`] was set.
fn needs_new_slot(m: &OffsetPageTable<'static>, virt: u64) -> bool {
    let i = top_index(virt);
    i >= 256 && KERNEL_HALF_FROZEN.load(Ordering::Relaxed) && m.level_4_table()[i].is_unused()
}

/// Copies the upper half (entries 256..512) of the instance's own top-level table (the
/// mapper's, whatever CR3 holds now) into `dst`, and freezes that half (see
/// [`KERNEL_HALF_FROZEN`]). For `space.rs`, when it builds a user address space.
pub(super) fn copy_kernel_half(dst: &mut PageTable) {
    with(|m| {
        KERNEL_HALF_FROZEN.store(true, Ordering::Relaxed);
        let src = m.level_4_table();
        for i in 256..512 {
            dst[i] = src[i].clone();
        }
    })
}

/// Physical address of the instance's own top-level table (the one the kernel runs on when no
/// user address space is loaded).
pub fn kernel_root() -> u64 {
    with(|m| {
        let table: *const PageTable = m.level_4_table();
        table as u64 - m.phys_offset().as_u64()
    })
}

pub fn init(phys_offset: u64) {
    let (root, _) = Cr3::read();
    let virt = phys_offset + root.start_address().as_u64();
    // SAFETY: CR3 holds the active level-4 table, which the physical map makes reachable at
    // `virt`; this is the only `OffsetPageTable` over it (it lives in MAPPER).
    let table: &'static mut PageTable = unsafe { &mut *(virt as *mut PageTable) };
    // SAFETY: `phys_offset` is where the bootloader mapped all physical memory.
    let mapper = unsafe { OffsetPageTable::new(table, VirtAddr::new(phys_offset)) };
    *MAPPER.lock() = Some(mapper);
}

/// Runs `f` on the page tables (never from interrupt handlers: see `frames::with`).
fn with<R>(f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    f(MAPPER.lock().as_mut().expect("paging not initialised"))
}

/// Claims an unused top-level slot in the upper half and returns its base address.
pub fn claim_free_slot() -> Result<u64, PagingError> {
    with(|m| {
        if KERNEL_HALF_FROZEN.load(Ordering::Relaxed) {
            return Err(PagingError::KernelHalfFrozen);
        }
        let table = m.level_4_table_mut();
        let index = (256..512)
            .rev()
            .find(|&i| table[i].is_unused())
            .ok_or(PagingError::NoFreeSlot)?;
        // Mark the slot taken with an empty, present level-3 table, so a second claim cannot
        // return it before anything is mapped there.
        let frame = x86_64::structures::paging::FrameAllocator::<Size4KiB>::allocate_frame(
            &mut PageTableFrames,
        )
        .ok_or(PagingError::OutOfFrames)?;
        table[index].set_frame(frame, PageTableFlags::PRESENT | PageTableFlags::WRITABLE);
        let sign_extended = 0xFFFF_0000_0000_0000 | ((index as u64) << 39);
        Ok(sign_extended)
    })
}

/// Maps `page` to `frame` with `flags`.
pub fn map(
    page: Page<Size4KiB>,
    frame: PhysFrame<Size4KiB>,
    flags: PageTableFlags,
) -> Result<(), TableError> {
    with(|m| {
        if needs_new_slot(m, page.start_address().as_u64()) {
            return Err(TableError::NewTopLevelEntry);
        }
        // SAFETY: callers map pages inside the windows this kernel claimed, to frames they own
        // (from the frame allocator) or to device registers; no existing Rust reference can
        // alias a page that was not mapped before.
        unsafe { m.map_to(page, frame, flags, &mut PageTableFrames) }
            .map(|flush| flush.flush())
            .map_err(TableError::from)
    })
}

/// Maps a fresh frame at `page`.
pub fn map_new(page: Page<Size4KiB>, flags: PageTableFlags) -> Result<(), PagingError> {
    let frame = frames::alloc().ok_or(PagingError::OutOfFrames)?;
    map(page, frame, flags).map_err(|cause| {
        // The frame never got mapped: give it back.
        let _ = frames::free(frame);
        PagingError::Map {
            virt: page.start_address().as_u64(),
            cause,
        }
    })
}

/// Removes physical memory `[start, end)` (4 KiB aligned) from the physical map, splitting the
/// map's 2 MiB pages where the range starts or ends inside one. Instance 0 calls it for every
/// other partition once they run, so that it keeps mapped only what it owns.
pub fn unmap_phys(start: u64, end: u64) -> Result<(), PagingError> {
    use x86_64::structures::paging::mapper::{MappedFrame, TranslateResult};
    use x86_64::structures::paging::{PageSize, Size2MiB};
    let off = super::frames::phys_offset();
    with(|m| {
        let mut pa = start;
        while pa < end {
            match m.translate(VirtAddr::new(off + pa)) {
                TranslateResult::Mapped {
                    frame: MappedFrame::Size2MiB(_),
                    flags,
                    ..
                } => {
                    let chunk = pa & !(Size2MiB::SIZE - 1);
                    let huge: Page<Size2MiB> = Page::containing_address(VirtAddr::new(off + chunk));
                    m.unmap(huge)
                        .map_err(|e| PagingError::UnmapHuge {
                            phys: chunk,
                            cause: e.into(),
                        })?
                        .1
                        .flush();
                    // Keep the parts of the chunk outside the range, as 4 KiB pages.
                    let small = flags & !PageTableFlags::HUGE_PAGE;
                    for q in (chunk..chunk + Size2MiB::SIZE).step_by(4096) {
                        if q < start || q >= end {
                            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(off + q));
                            let frame = PhysFrame::containing_address(PhysAddr::new(q));
                            // SAFETY: re-creates the mapping that the huge page had for `q`.
                            unsafe { m.map_to(page, frame, small, &mut PageTableFrames) }
                                .map_err(|e| PagingError::SplitHuge {
                                    phys: q,
                                    cause: e.into(),
                                })?
                                .flush();
                        }
                    }
                    pa = chunk + Size2MiB::SIZE;
                }
                TranslateResult::Mapped {
                    frame: MappedFrame::Size4KiB(_),
                    ..
                } => {
                    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(off + pa));
                    m.unmap(page)
                        .map_err(|e| PagingError::Unmap {
                            phys: pa,
                            cause: e.into(),
                        })?
                        .1
                        .flush();
                    pa += 4096;
                }
                TranslateResult::Mapped { .. } => {
                    return Err(PagingError::GiantPage { phys: pa });
                }
                _ => pa += 4096,
            }
        }
        Ok(())
    })
}

/// Adds physical memory `[start, end)` (4 KiB aligned) to the physical map, writable and not
/// executable, with 2 MiB pages where the range allows (memory hot-add). Nothing in the range
/// may be mapped already.
pub fn map_phys(start: u64, end: u64) -> Result<(), PagingError> {
    use x86_64::structures::paging::{PageSize, Size2MiB};
    let off = super::frames::phys_offset();
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    with(|m| {
        let mut pa = start;
        while pa < end {
            if needs_new_slot(m, off + pa) {
                return Err(PagingError::KernelHalfFrozen);
            }
            if pa.is_multiple_of(Size2MiB::SIZE) && end - pa >= Size2MiB::SIZE {
                let page: Page<Size2MiB> = Page::containing_address(VirtAddr::new(off + pa));
                let frame: PhysFrame<Size2MiB> = PhysFrame::containing_address(PhysAddr::new(pa));
                // SAFETY: the range was just handed to this instance (nothing here refers to
                // it yet); it is mapped in the physical-map window, at its physical offset.
                unsafe { m.map_to(page, frame, flags, &mut PageTableFrames) }
                    .map_err(|e| PagingError::MapAddedHuge {
                        phys: pa,
                        cause: e.into(),
                    })?
                    .flush();
                pa += Size2MiB::SIZE;
            } else {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(off + pa));
                let frame = PhysFrame::containing_address(PhysAddr::new(pa));
                // SAFETY: as above.
                unsafe { m.map_to(page, frame, flags, &mut PageTableFrames) }
                    .map_err(|e| PagingError::MapAdded {
                        phys: pa,
                        cause: e.into(),
                    })?
                    .flush();
                pa += 4096;
            }
        }
        Ok(())
    })
}

/// Moves this instance's top-level page table to the page at physical `pa`, which must lie
/// below 4 GiB (further CPUs load CR3 from the trampoline's 32-bit code) and be reachable
/// through the physical map, and switches the running CPU to it. The lower levels are shared
/// with the old table, which is no longer used. Call it only while this CPU is the instance's
/// only one (other CPUs would keep the old root). Instance 0 moves its table, wherever the
/// bootloader put it, to its low page next to its trampoline page.
pub fn move_root(pa: u64) -> Result<(), PagingError> {
    if pa == 0 || pa >= 1 << 32 || !pa.is_multiple_of(4096) {
        return Err(PagingError::RootNotLow { phys: pa });
    }
    let off = super::frames::phys_offset();
    if translate(off + pa) != Some(pa) {
        return Err(PagingError::RootNotMapped { phys: pa });
    }
    with(|m| {
        let (old, flags) = Cr3::read();
        if old.start_address().as_u64() == pa {
            return Ok(());
        }
        let new = (off + pa) as *mut PageTable;
        // SAFETY: the page at `pa` is reserved for this table (a low page outside every frame
        // allocator, given to this instance) and mapped at `new` (checked); the copy makes it
        // an exact copy of the active table, so switching CR3 to it changes no mapping. The
        // mapper is rebuilt over the new table, and the old one is never reached again.
        unsafe {
            core::ptr::copy_nonoverlapping(m.level_4_table() as *const PageTable, new, 1);
            Cr3::write(PhysFrame::containing_address(PhysAddr::new(pa)), flags);
            *m = OffsetPageTable::new(&mut *new, VirtAddr::new(off));
        }
        Ok(())
    })
}

/// Physical address of the running CPU's top-level page table.
pub fn root() -> u64 {
    Cr3::read().0.start_address().as_u64()
}

/// Maps the page at physical `pa` at the same virtual address (for the AP trampoline).
pub fn identity_map(pa: u64) -> Result<(), PagingError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(pa));
    let frame = PhysFrame::containing_address(PhysAddr::new(pa));
    if translate(pa) == Some(pa) {
        return Ok(());
    }
    map(
        page,
        frame,
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
    )
    .map_err(|e| PagingError::IdentityMap { phys: pa, cause: e })
}

/// The physical address `virt` maps to, if it is mapped.
pub fn translate(virt: u64) -> Option<u64> {
    with(|m| m.translate_addr(VirtAddr::new(virt)).map(PhysAddr::as_u64))
}

/// What the page-table walker refused: `x86_64`'s `MapToError` and `UnmapError`, reduced to a
/// plain value (with the frame as an address) so that the errors carrying it stay `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// A page table was needed and the frame allocator is empty (this instance's memory).
    OutOfFrames,
    /// The page lies inside a huge page mapped above it (the caller's range, or this
    /// instance's layout).
    InsideHugePage,
    /// The page is already mapped, to the frame at this physical address (the caller's range).
    AlreadyMapped(u64),
    /// The page is not mapped (the caller's range).
    NotMapped,
    /// The entry points to this invalid physical address (this instance's page tables).
    InvalidFrame(u64),
    /// The page would need a new upper-half top-level entry, and user address spaces exist
    /// that would not see it (this instance's state: the kernel half is frozen).
    NewTopLevelEntry,
}

impl<S: x86_64::structures::paging::PageSize> From<MapToError<S>> for TableError {
    fn from(e: MapToError<S>) -> Self {
        match e {
            MapToError::FrameAllocationFailed => Self::OutOfFrames,
            MapToError::ParentEntryHugePage => Self::InsideHugePage,
            MapToError::PageAlreadyMapped(frame) => {
                Self::AlreadyMapped(frame.start_address().as_u64())
            }
        }
    }
}

impl From<UnmapError> for TableError {
    fn from(e: UnmapError) -> Self {
        match e {
            UnmapError::ParentEntryHugePage => Self::InsideHugePage,
            UnmapError::PageNotMapped => Self::NotMapped,
            UnmapError::InvalidFrameAddress(pa) => Self::InvalidFrame(pa.as_u64()),
        }
    }
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("out of frames for page tables"),
            Self::InsideHugePage => f.write_str("the page is part of a huge page"),
            Self::AlreadyMapped(pa) => write!(f, "the page is already mapped (to {pa:#x})"),
            Self::NotMapped => f.write_str("the page is not mapped"),
            Self::InvalidFrame(pa) => write!(f, "invalid frame address {pa:#x} in the entry"),
            Self::NewTopLevelEntry => f.write_str(
                "the page needs a new kernel top-level entry, and user address spaces exist",
            ),
        }
    }
}

/// Why a change to this instance's page tables failed. Addresses are physical (`phys`) or
/// virtual (`virt`) as named; `cause` is what the page-table walker said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// Every top-level slot of the upper half is in use (this instance's layout).
    NoFreeSlot,
    /// User address spaces exist, each with its copy of the upper half's top-level entries:
    /// no new one may be created (this instance's state; see `KERNEL_HALF_FROZEN`).
    KernelHalfFrozen,
    /// The frame allocator is empty (this instance's memory).
    OutOfFrames,
    /// Mapping a fresh frame at `virt` failed.
    Map { virt: u64, cause: TableError },
    /// Unmapping the 2 MiB page of the physical map that holds `phys` failed.
    UnmapHuge { phys: u64, cause: TableError },
    /// Re-mapping `phys`, kept from a 2 MiB page being split, failed.
    SplitHuge { phys: u64, cause: TableError },
    /// Unmapping the page of the physical map at `phys` failed.
    Unmap { phys: u64, cause: TableError },
    /// The physical map covers `phys` with a 1 GiB page (the bootloader's choice, which this
    /// kernel does not split).
    GiantPage { phys: u64 },
    /// Mapping a 2 MiB page of added memory at `phys` failed.
    MapAddedHuge { phys: u64, cause: TableError },
    /// Mapping a page of added memory at `phys` failed.
    MapAdded { phys: u64, cause: TableError },
    /// Identity-mapping the trampoline page at `phys` failed.
    IdentityMap { phys: u64, cause: TableError },
    /// The caller's new top-level page `phys` is null, unaligned or not below 4 GiB.
    RootNotLow { phys: u64 },
    /// The caller's new top-level page `phys` is not in this instance's physical map.
    RootNotMapped { phys: u64 },
}

impl core::fmt::Display for PagingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoFreeSlot => f.write_str("no free top-level page-table slot"),
            Self::KernelHalfFrozen => f.write_str(
                "no new kernel top-level page-table entry once user address spaces exist",
            ),
            Self::OutOfFrames => f.write_str("out of physical frames"),
            Self::Map { virt, cause } => write!(f, "mapping {virt:#x} failed: {cause}"),
            Self::UnmapHuge { phys, cause } => write!(
                f,
                "unmapping a 2 MiB page of the physical map (at {phys:#x}): {cause}"
            ),
            Self::SplitHuge { phys, cause } => write!(
                f,
                "splitting a 2 MiB page of the physical map (at {phys:#x}): {cause}"
            ),
            Self::Unmap { phys, cause } => write!(
                f,
                "unmapping a page of the physical map (at {phys:#x}): {cause}"
            ),
            Self::GiantPage { phys } => write!(
                f,
                "the physical map uses 1 GiB pages (at {phys:#x}); not supported"
            ),
            Self::MapAddedHuge { phys, cause } => write!(
                f,
                "mapping a 2 MiB page of added memory (at {phys:#x}): {cause}"
            ),
            Self::MapAdded { phys, cause } => {
                write!(f, "mapping a page of added memory (at {phys:#x}): {cause}")
            }
            Self::IdentityMap { phys, cause } => write!(
                f,
                "identity-mapping the trampoline page ({phys:#x}) failed: {cause}"
            ),
            Self::RootNotLow { phys } => write!(
                f,
                "the top-level page table must move to a page below 4 GiB (not {phys:#x})"
            ),
            Self::RootNotMapped { phys } => write!(
                f,
                "the new top-level page ({phys:#x}) is not in this instance's physical map"
            ),
        }
    }
}
