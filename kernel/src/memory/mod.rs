//! Memory management of one kernel instance: the physical frame allocator, the page tables and
//! the heap, plus uncached mappings for device registers.
//!
//! Virtual layout (instance 0, from the bootloader's page tables; see docs/memory-layout.md):
//! the bootloader places the kernel image, its stack, the boot info and the physical-memory map
//! at addresses of its choosing. We take two unused top-level (PML4) slots in the upper half for
//! ourselves: one for the heap, one for MMIO windows.

pub mod frames;
pub mod heap;
pub mod launch;
pub mod mmio;
pub mod paging;
pub mod pristine;
pub mod ramdisk;
pub mod space;

/// Virtual address the kernel image is loaded at, in every instance (the xtask's `--gdb` relies
/// on it).
pub const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;

/// Brings up frames, paging and the heap from the bootloader's hand-over.
pub fn init(boot_info: &'static BootInfo) -> Result<(), InitError> {
    let phys_offset = boot_info
        .physical_memory_offset
        .into_option()
        .ok_or(InitError::NoPhysicalMap)?;
    let usable = boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| (r.start, r.end));
    frames::init(phys_offset, usable).map_err(InitError::Frames)?;
    paging::init(phys_offset);
    heap::init().map_err(InitError::Heap)?;
    Ok(())
}

/// Why [`init`] could not bring up this instance's memory management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The bootloader handed over no physical-memory map (its configuration).
    NoPhysicalMap,
    /// The frame allocator could not be set up.
    Frames(frames::FrameInitError),
    /// The heap could not be mapped.
    Heap(paging::PagingError),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoPhysicalMap => f.write_str("the bootloader did not map physical memory"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Heap(e) => write!(f, "heap: {e}"),
        }
    }
}

/// The bytes of the ramdisk the bootloader loaded for instance 0 (the archive of `ramdisk`).
pub fn boot_ramdisk(boot_info: &BootInfo) -> Option<&'static [u8]> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    let len = usize::try_from(boot_info.ramdisk_len).ok()?;
    if len == 0 {
        return None;
    }
    // SAFETY: the bootloader mapped the ramdisk at `addr` for `ramdisk_len` bytes, for good,
    // and nothing writes it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Reads the word at `virt`, which must not be mapped: the read faults (tests announce the
/// fault first with `arch::interrupts::expect_page_fault`, whose continuation takes over).
/// Refused when `virt` is mapped.
pub fn read_unmapped(virt: u64) -> Result<u64, AddressMapped> {
    if paging::translate(virt).is_some() {
        return Err(AddressMapped { virt });
    }
    // SAFETY: nothing is mapped at `virt` (checked just above, on this instance's own page
    // tables, which only this instance changes), so the read touches no memory: it raises a
    // page fault before it completes.
    Ok(unsafe { core::ptr::read_volatile(virt as *const u64) })
}

/// [`read_unmapped`] refused: the caller's address `virt` is mapped, so reading it would not
/// fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressMapped {
    pub virt: u64,
}

impl core::fmt::Display for AddressMapped {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "the address is mapped ({:#x})", self.virt)
    }
}

/// The shared allocation at physical `phys..phys + len`, through the physical map, as the raw
/// view mk-shared, mk-mailbox and mk-pool work on. Refused unless the range is page aligned,
/// wholly mapped, and outside this instance's frame allocator and the first 1 MiB: memory no
/// Rust object of this kernel lives in, which every instance then reaches only through atomics.
pub fn shared_window(phys: u64, len: u64) -> Result<mk_raw::Raw<'static>, WindowError> {
    let end = phys.checked_add(len).ok_or(WindowError::Wraps)?;
    if len == 0 || !phys.is_multiple_of(4096) || !len.is_multiple_of(4096) {
        return Err(WindowError::Unaligned);
    }
    if phys < frames::LOW_MEMORY_END {
        return Err(WindowError::LowMemory);
    }
    if frames::owns_any(phys, end) {
        return Err(WindowError::OwnMemory);
    }
    let virt = frames::phys_to_virt(phys);
    if paging::translate(virt) != Some(phys) || paging::translate(virt + len - 1) != Some(end - 1) {
        return Err(WindowError::NotMapped);
    }
    // SAFETY: the range is mapped for the kernel's lifetime (the physical map is never torn
    // down for it), is not memory this kernel's allocator manages (checked above), so no Rust
    // object of this instance lives there, and every instance reaches it only through mk-raw's
    // atomic accesses.
    unsafe { mk_raw::Raw::new(virt as *mut u8, len as usize) }.map_err(|_| WindowError::Null)
}

/// Why [`shared_window`] refused a range. Every case is the caller's argument (the plan's or
/// the boot descriptor's shared range), checked against this instance's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowError {
    Wraps,
    Unaligned,
    LowMemory,
    OwnMemory,
    NotMapped,
    Null,
}

impl core::fmt::Display for WindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Wraps => "the shared range wraps around",
            Self::Unaligned => "the shared range is empty or not page aligned",
            Self::LowMemory => "the shared range reaches below 1 MiB",
            Self::OwnMemory => "the shared range overlaps this instance's own memory",
            Self::NotMapped => "the shared range is not in the physical map",
            Self::Null => "null shared range",
        })
    }
}
