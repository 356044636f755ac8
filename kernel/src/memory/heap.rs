//! The kernel heap: `linked_list_allocator` over pages mapped in a window of our own.
//!
//! Its lock is a plain spinlock, so an interrupt handler that allocated on a CPU that was
//! already inside the allocator would deadlock. The wrapper turns interrupts off around every
//! call; handlers are still asked not to allocate.

use core::alloc::{GlobalAlloc, Layout};

use linked_list_allocator::LockedHeap;
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

use super::paging;

/// Initial heap size.
pub const HEAP_SIZE: u64 = 8 * 1024 * 1024;

struct IrqSafeHeap(LockedHeap);

// SAFETY: forwards to `LockedHeap`, which upholds the `GlobalAlloc` contract; turning
// interrupts off around the calls changes nothing about the memory handed out.
unsafe impl GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe { self.0.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe {
            self.0.dealloc(ptr, layout)
        })
    }
}

#[global_allocator]
static HEAP: IrqSafeHeap = IrqSafeHeap(LockedHeap::empty());

pub fn init() -> Result<(), &'static str> {
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
        HEAP.0
            .lock()
            .init(base as *mut u8, HEAP_SIZE as usize);
    }
    Ok(())
}

/// `(used, free)` bytes.
pub fn usage() -> (usize, usize) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let heap = HEAP.0.lock();
        (heap.used(), heap.free())
    })
}
