//! Uncached mappings of device registers (local APIC in xAPIC mode, IO APICs, HPET) in a window
//! of our own. The physical map the bootloader provides is cacheable, which is wrong for
//! registers on real hardware.

use spin::Mutex;
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use super::paging::{self, PagingError, TableError};

/// Next free address in the MMIO window (0 until the window is claimed).
static NEXT: Mutex<u64> = Mutex::new(0);

/// Maps `len` bytes of device registers at physical `phys` and returns their virtual address.
pub fn map(phys: u64, len: u64) -> Result<u64, MmioError> {
    map_with(
        phys,
        len,
        PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH,
    )
}

/// Maps `len` bytes of device memory (a framebuffer) at `phys` with the page attributes left
/// at write-back, so the firmware's MTRRs decide: write-combining where it set the
/// framebuffer so (as the bootloader's own mapping does), uncached otherwise.
pub fn map_memory(phys: u64, len: u64) -> Result<u64, MmioError> {
    map_with(phys, len, PageTableFlags::empty())
}

fn map_with(phys: u64, len: u64, caching: PageTableFlags) -> Result<u64, MmioError> {
    let mut next = NEXT.lock();
    if *next == 0 {
        *next = paging::claim_free_slot().map_err(MmioError::Window)?;
    }
    let page_off = phys & 0xFFF;
    let first_frame = phys & !0xFFF;
    let pages = (page_off + len).div_ceil(4096);
    let base = *next;
    let flags =
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE | caching;
    for i in 0..pages {
        let page: Page<Size4KiB> = Page::containing_address(VirtAddr::new(base + i * 4096));
        let frame = PhysFrame::containing_address(PhysAddr::new(first_frame + i * 4096));
        paging::map(page, frame, flags).map_err(|e| MmioError::Map {
            phys: first_frame + i * 4096,
            cause: e,
        })?;
    }
    *next = base + pages * 4096;
    Ok(base + page_off)
}

/// Why device registers (or device memory) could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// Claiming the MMIO window failed (this instance's page tables).
    Window(PagingError),
    /// Mapping the register page at physical `phys` failed.
    Map { phys: u64, cause: TableError },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Window(e) => write!(f, "no MMIO window: {e}"),
            Self::Map { phys, cause } => {
                write!(f, "mapping device registers at {phys:#x} failed: {cause}")
            }
        }
    }
}
