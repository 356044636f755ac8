//! The kernel heap: `linked_list_allocator` over pages mapped in a window of our own.
//!
//! Its lock is a plain spinlock, so an interrupt handler that allocated on a CPU that was
//! already inside the allocator would deadlock. The rule is therefore: **interrupt handlers
//! never allocate** (they count, acknowledge and hand work to the interrupted context). We do not
//! turn interrupts off around each allocation instead: under a deprivileged hypervisor such as
//! this project's kvm-pvm test host, every `cli`/`sti` traps, and a heap stress test went from
//! under a second to minutes with it.

use linked_list_allocator::LockedHeap;
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

use super::paging::{self, PagingError};

/// Initial heap size.
pub const HEAP_SIZE: u64 = 8 * 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Maps the heap's pages in a window of its own and hands them to the allocator.
pub fn init() -> Result<(), PagingError> {
    let base = paging::claim_free_slot()?;
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let first = Page::containing_address(VirtAddr::new(base));
    let last = Page::containing_address(VirtAddr::new(base + HEAP_SIZE - 1));
    for page in Page::range_inclusive(first, last) {
        paging::map_new(page, flags)?;
    }
    // SAFETY: [base, base + HEAP_SIZE) was just mapped to fresh frames, is used by nothing
    // else, and `init` runs once.
    unsafe {
        HEAP.lock().init(base as *mut u8, HEAP_SIZE as usize);
    }
    Ok(())
}

/// `(used, free)` bytes.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
