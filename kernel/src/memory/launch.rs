//! Building a new instance's world from instance 0: a fresh copy of the kernel image, page
//! tables that map only the instance's own memory (plus the shared region and the trampoline
//! page), a stack, and the `BootInfo` + boot descriptor it starts with.
//!
//! Everything is allocated from the new partition's own memory with a bump allocator, front to
//! back; what the bump used is reported to the new instance as not usable, the rest as usable.
//! Instance 0 writes these frames through its physical-memory map, which still covers the whole
//! machine at this point (it drops the other partitions from it once all instances run).

use bootloader_api::BootInfo;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind, Optional};
use mk_plan::MemRange;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags, PhysFrame,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::memory::frames::{phys_offset, phys_to_virt};
use crate::platform::descriptor::BootDescriptor;

/// Where the new instance's boot stack ends (PML4 slot 510; the kernel image is in slot 511).
const STACK_TOP: u64 = 0xFFFF_FF00_0010_0000;
const STACK_PAGES: u64 = 64;
const MAX_REGIONS: usize = 32;

/// What the trampoline needs to start the instance's first CPU.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    pub cr3: u64,
    pub entry: u64,
    pub stack_top: u64,
    pub boot_info: u64,
}

/// Why another instance's address space could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchBuildError {
    /// The partition is too small for the image, the tables and the stack (the plan's fault).
    TooSmall,
    /// Its memory overlaps this instance's own (the caller's argument).
    NotForeign,
    /// The top-level page is not a low page other than the trampoline's (the caller's argument).
    BadRootPage(u64),
    /// The top-level page is not in this instance's physical map (this instance's set-up).
    RootNotMapped(u64),
    /// Mapping this virtual address into the new tables failed.
    Map(u64),
    /// The kernel ELF file does not parse (the file's fault).
    ElfParse,
    /// The kernel ELF file does not load (the file's fault).
    ElfLoad,
}

impl core::fmt::Display for LaunchBuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall => {
                write!(
                    f,
                    "partition too small for the instance's image, tables and stack"
                )
            }
            Self::NotForeign => write!(f, "the new instance's memory overlaps this instance's own"),
            Self::BadRootPage(p) => write!(
                f,
                "the top-level page must be a page between 4 KiB and 1 MiB, not the trampoline's (got {p:#x})"
            ),
            Self::RootNotMapped(p) => write!(
                f,
                "the new instance's top-level page {p:#x} is not in this instance's physical map"
            ),
            Self::Map(va) => write!(
                f,
                "mapping {va:#x} into the new instance's page tables failed"
            ),
            Self::ElfParse => write!(f, "the kernel ELF does not parse"),
            Self::ElfLoad => write!(f, "loading the kernel image failed"),
        }
    }
}

/// Front-to-back allocator over a partition's ranges.
struct Bump<'a> {
    ranges: &'a [MemRange],
    index: usize,
    next: u64,
}

impl Bump<'_> {
    /// `pages` contiguous zeroed frames.
    fn alloc(&mut self, pages: u64) -> Result<u64, LaunchBuildError> {
        while let Some(r) = self.ranges.get(self.index) {
            let start = self.next.max(r.start);
            if start + pages * 4096 <= r.end() {
                self.next = start + pages * 4096;
                // SAFETY: the frames belong to the partition being built, which no instance
                // uses yet; the physical map covers them.
                unsafe {
                    core::ptr::write_bytes(
                        phys_to_virt(start) as *mut u8,
                        0,
                        (pages * 4096) as usize,
                    )
                };
                return Ok(start);
            }
            self.index += 1;
            self.next = self.ranges.get(self.index).map_or(0, |r| r.start);
        }
        Err(LaunchBuildError::TooSmall)
    }

    /// How much of range `i` the bump has consumed (from its start).
    fn used_in(&self, i: usize) -> u64 {
        let r = self.ranges[i];
        match i.cmp(&self.index) {
            core::cmp::Ordering::Less => r.len,
            core::cmp::Ordering::Equal => self.next.saturating_sub(r.start).min(r.len),
            core::cmp::Ordering::Greater => 0,
        }
    }
}

// SAFETY: frames come from the partition under construction, are unused and zeroed.
unsafe impl FrameAllocator<Size4KiB> for Bump<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.alloc(1).ok()?;
        Some(PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

fn map4k(
    m: &mut OffsetPageTable<'_>,
    bump: &mut Bump<'_>,
    va: u64,
    pa: u64,
    flags: PageTableFlags,
) -> Result<(), LaunchBuildError> {
    let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(va));
    let frame = PhysFrame::containing_address(PhysAddr::new(pa));
    // SAFETY: these page tables are not active on any CPU; mapping into them cannot alias
    // anything we use.
    unsafe { m.map_to(page, frame, flags, bump) }
        .map(|f| f.ignore())
        .map_err(|_| LaunchBuildError::Map(va))
}

/// Maps [pa, pa+len) at `phys_offset + pa` (2 MiB pages where alignment allows).
fn map_phys(
    m: &mut OffsetPageTable<'_>,
    bump: &mut Bump<'_>,
    r: MemRange,
) -> Result<(), LaunchBuildError> {
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let off = phys_offset();
    let mut pa = r.start & !0xFFF;
    while pa < r.end() {
        if pa.is_multiple_of(Size2MiB::SIZE) && pa + Size2MiB::SIZE <= r.end() {
            let page: Page<Size2MiB> = Page::containing_address(VirtAddr::new(off + pa));
            let frame = PhysFrame::containing_address(PhysAddr::new(pa));
            // SAFETY: as in `map4k`.
            unsafe { m.map_to(page, frame, flags, bump) }
                .map(|f| f.ignore())
                .map_err(|_| LaunchBuildError::Map(off + pa))?;
            pa += Size2MiB::SIZE;
        } else {
            map4k(m, bump, off + pa, pa, flags)?;
            pa += 4096;
        }
    }
    Ok(())
}

/// Whether `ranges` are free of everything this instance uses: its frame allocator's memory and
/// the first 1 MiB, where the firmware's data and the trampolines are. Building writes every
/// frame it takes from `ranges` (through the physical map), so only such ranges are safe.
fn foreign(ranges: &[MemRange]) -> bool {
    ranges.iter().all(|r| {
        r.start >= crate::memory::frames::LOW_MEMORY_END
            && !crate::memory::frames::owns_any(r.start, r.end())
    })
}

/// Builds instance `desc.instance_id` in `ranges` and returns how to start it. The ranges must
/// be memory this instance has given up (checked: none of it is in its allocator or below
/// 1 MiB).
///
/// The instance's top-level page table goes in `root_page`, a low page (below 1 MiB, beside
/// its trampoline page) that belongs to the new instance from then on: the trampoline loads CR3
/// from 32-bit code, so the root must be below 4 GiB, while its partition may lie anywhere.
/// Every lower-level table is in the partition. Respawning the instance reuses both pages.
pub fn prepare(
    ranges: &[MemRange],
    shared: MemRange,
    kernel_elf: &[u8],
    trampoline_page: u64,
    root_page: u64,
    desc: &BootDescriptor,
) -> Result<Launch, LaunchBuildError> {
    if !foreign(ranges) {
        return Err(LaunchBuildError::NotForeign);
    }
    if root_page == 0
        || root_page >= crate::memory::frames::LOW_MEMORY_END
        || !root_page.is_multiple_of(4096)
        || root_page == trampoline_page
    {
        return Err(LaunchBuildError::BadRootPage(root_page));
    }
    let root_virt = phys_to_virt(root_page);
    if crate::memory::paging::translate(root_virt) != Some(root_page) {
        return Err(LaunchBuildError::RootNotMapped(root_page));
    }
    let mut bump = Bump {
        ranges,
        index: 0,
        next: ranges.first().map_or(0, |r| r.start),
    };
    let pml4 = root_page;
    // SAFETY: the low page is reserved for this instance's root (outside every frame
    // allocator, mapped at `root_virt`, checked above); the instance being built does not run.
    unsafe { core::ptr::write_bytes(root_virt as *mut u8, 0, 4096) };
    // SAFETY: the PML4 frame was just zeroed; instance 0 reaches it through its physical map,
    // and `OffsetPageTable` uses that same map for the lower-level tables.
    let mut m = unsafe {
        OffsetPageTable::new(
            &mut *(phys_to_virt(pml4) as *mut PageTable),
            VirtAddr::new(phys_offset()),
        )
    };

    // 1. A fresh copy of the kernel image, relocated for KERNEL_BASE.
    let elf = mk_elf::Elf::parse(kernel_elf).map_err(|_| LaunchBuildError::ElfParse)?;
    let (lo, hi) = elf.span();
    let pages = (hi - lo) / 4096;
    let image_pa = bump.alloc(pages)?;
    // SAFETY: `pages` frames from `image_pa` were just allocated to this image, contiguous and
    // reached through the physical map.
    let image = unsafe {
        core::slice::from_raw_parts_mut(phys_to_virt(image_pa) as *mut u8, (hi - lo) as usize)
    };
    let entry = mk_elf::load(&elf, crate::memory::KERNEL_BASE, image)
        .map_err(|_| LaunchBuildError::ElfLoad)?;
    for i in 0..pages {
        let va = lo + i * 4096;
        // Pages no segment touches stay unmapped.
        let Some(seg) = elf.page_flags(va) else {
            continue;
        };
        let (write, exec) = (seg.write, seg.execute);
        let mut flags = PageTableFlags::PRESENT;
        if write {
            flags |= PageTableFlags::WRITABLE;
        }
        if !exec {
            flags |= PageTableFlags::NO_EXECUTE;
        }
        map4k(
            &mut m,
            &mut bump,
            crate::memory::KERNEL_BASE + va,
            image_pa + i * 4096,
            flags,
        )?;
    }

    // 2. The boot stack, with an unmapped guard page below it.
    let stack_pa = bump.alloc(STACK_PAGES)?;
    let stack_bottom = STACK_TOP - STACK_PAGES * 4096;
    for i in 0..STACK_PAGES {
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        map4k(
            &mut m,
            &mut bump,
            stack_bottom + i * 4096,
            stack_pa + i * 4096,
            flags,
        )?;
    }

    // 3. The trampoline page, identity-mapped: the AP runs on from it right after paging is on.
    map4k(
        &mut m,
        &mut bump,
        trampoline_page,
        trampoline_page,
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
    )?;

    // 4. BootInfo, its memory map and the descriptor, in one page.
    let info_pa = bump.alloc(1)?;

    // 5. The instance's own copy of the boot ramdisk (the programs), reached through its
    // physical map like everything it owns; the descriptor says where.
    let mut desc = *desc;
    if let Some(archive) = super::ramdisk::archive() {
        let len = archive.len() as u64;
        let archive_pa = bump.alloc(len.div_ceil(4096).max(1))?;
        // SAFETY: the frames were just allocated to this instance, contiguous, for at least
        // `len` bytes, and are reached through instance 0's physical map; the archive is
        // instance 0's own, which it never writes.
        unsafe {
            core::ptr::copy_nonoverlapping(
                archive.as_ptr(),
                phys_to_virt(archive_pa) as *mut u8,
                archive.len(),
            );
        }
        desc.archive_virt = phys_offset() + archive_pa;
        desc.archive_len = len;
    }

    // 6. The instance's physical map: its own memory, the shared region, its trampoline page
    // (through which it starts its further CPUs) and its top-level page (which its paging
    // code edits through the map); nothing else.
    for r in ranges {
        map_phys(&mut m, &mut bump, *r)?;
    }
    map_phys(&mut m, &mut bump, shared)?;
    map_phys(&mut m, &mut bump, MemRange::new(trampoline_page, 4096))?;
    map_phys(&mut m, &mut bump, MemRange::new(root_page, 4096))?;

    // Now that the bump is done, the memory map: what it used is "bootloader", the rest usable.
    let info_va = phys_offset() + info_pa;
    let regions_offset = 1024u64;
    let desc_offset = 2048u64;
    // SAFETY: the page at `info_pa` is ours and zeroed; the three objects lie at disjoint,
    // aligned offsets within it (sizes checked below).
    unsafe {
        let regions = (phys_to_virt(info_pa) + regions_offset) as *mut MemoryRegion;
        let mut n = 0usize;
        for (i, r) in ranges.iter().enumerate() {
            let used = bump.used_in(i);
            for (start, end, kind) in [
                (r.start, r.start + used, MemoryRegionKind::Bootloader),
                (r.start + used, r.end(), MemoryRegionKind::Usable),
            ] {
                if start < end && n < MAX_REGIONS {
                    regions.add(n).write(MemoryRegion { start, end, kind });
                    n += 1;
                }
            }
        }
        let regions_slice: &'static mut [MemoryRegion] =
            core::slice::from_raw_parts_mut((info_va + regions_offset) as *mut MemoryRegion, n);
        const _: () = assert!(core::mem::size_of::<BootInfo>() <= 1024);
        const _: () = assert!(MAX_REGIONS * core::mem::size_of::<MemoryRegion>() <= 1024);
        const _: () = assert!(core::mem::size_of::<BootDescriptor>() <= 2048);
        let mut info = BootInfo::new(regions_slice.into());
        info.physical_memory_offset = Optional::Some(phys_offset());
        info.ramdisk_addr = Optional::Some(info_va + desc_offset);
        info.ramdisk_len = core::mem::size_of::<BootDescriptor>() as u64;
        info.kernel_image_offset = crate::memory::KERNEL_BASE;
        (phys_to_virt(info_pa) as *mut BootInfo).write(info);
        ((phys_to_virt(info_pa) + desc_offset) as *mut BootDescriptor).write(desc);
    }
    Ok(Launch {
        cr3: pml4,
        entry,
        stack_top: STACK_TOP,
        boot_info: info_va,
    })
}
