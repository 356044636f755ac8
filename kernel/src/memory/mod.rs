//! Memory management of one kernel instance: the physical frame allocator, the page tables and
//! the heap, plus uncached mappings for device registers.
//!
//! Virtual layout (instance 0, from the bootloader's page tables; see docs/memory-layout.md):
//! the bootloader places the kernel image, its stack, the boot info and the physical-memory map
//! at addresses of its choosing. We take two unused top-level (PML4) slots in the upper half for
//! ourselves: one for the heap, one for MMIO windows.

pub mod frames;
pub mod heap;
pub mod mmio;
pub mod paging;

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
