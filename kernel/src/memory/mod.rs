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

/// Virtual address the kernel image is loaded at, in every instance (the xtask's `--gdb` relies
/// on it).
pub const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;

/// Brings up frames, paging and the heap from the bootloader's hand-over.
pub fn init(boot_info: &'static BootInfo) -> Result<(), &'static str> {
    let phys_offset = boot_info
        .physical_memory_offset
        .into_option()
        .ok_or("the bootloader did not map physical memory")?;
    let usable = boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| (r.start, r.end));
    frames::init(phys_offset, usable)?;
    paging::init(phys_offset)?;
    heap::init()?;
    Ok(())
}

/// The bytes of the ramdisk the bootloader loaded (the plan, in images written to USB sticks),
/// at most `max` of them.
pub fn ramdisk(boot_info: &BootInfo, max: usize) -> Option<&'static [u8]> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    let len = usize::try_from(boot_info.ramdisk_len).ok()?.min(max);
    // SAFETY: the bootloader mapped the ramdisk at `addr` for `ramdisk_len` bytes, for good,
    // and nothing writes it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Reads the word at `virt`, which must not be mapped: the read faults (tests announce the
/// fault first with `arch::interrupts::expect_page_fault`, whose continuation takes over).
/// Refused when `virt` is mapped.
pub fn read_unmapped(virt: u64) -> Result<u64, &'static str> {
    if paging::translate(virt).is_some() {
        return Err("the address is mapped");
    }
    // SAFETY: nothing is mapped at `virt` (checked just above, on this instance's own page
    // tables, which only this instance changes), so the read touches no memory: it raises a
    // page fault before it completes.
    Ok(unsafe { core::ptr::read_volatile(virt as *const u64) })
}
