//! The instance's physical frame allocator: `mk-frames` bookkeeping behind a lock, with its
//! bitmaps stored in the first usable frames large enough to hold them.

use core::sync::atomic::{AtomicU64, Ordering};

use mk_frames::{FRAME_SIZE, Frame, FrameAllocator, FrameError, bitmap_words};
use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::structures::paging::{PhysFrame, Size4KiB};

/// Frames below 1 MiB are never handed out: real-mode code (the AP trampoline) needs them, and
/// firmware leaves data there on real machines.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

static ALLOCATOR: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);

/// Virtual address at which physical address `phys` is mapped (the physical map).
pub fn phys_to_virt(phys: u64) -> u64 {
    phys_offset() + phys
}

/// Where the physical map starts. Every instance uses the same offset (instance 0 got it from
/// the bootloader and gives it on), but maps only its own memory there.
pub fn phys_offset() -> u64 {
    PHYS_OFFSET.load(Ordering::Relaxed)
}

pub fn init(
    phys_offset: u64,
    usable: impl Iterator<Item = (u64, u64)> + Clone,
) -> Result<(), FrameInitError> {
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    let align = |a: u64| a.div_ceil(FRAME_SIZE) * FRAME_SIZE;
    let ranges = usable.map(move |(s, e)| (align(s.max(LOW_MEMORY_END)), e & !(FRAME_SIZE - 1)));
    let top_frame = ranges
        .clone()
        .filter(|(s, e)| s < e)
        .map(|(_, e)| e / FRAME_SIZE)
        .max()
        .ok_or(FrameInitError::NoUsableMemory)?;
    let words = bitmap_words(top_frame);
    let bytes = (words as u64 * 8).div_ceil(FRAME_SIZE) * FRAME_SIZE;
    let (bitmap_start, _) = ranges
        .clone()
        .find(|(s, e)| e.saturating_sub(*s) >= bytes)
        .ok_or(FrameInitError::NoRoomForBitmap { bytes })?;
    // SAFETY: [bitmap_start, bitmap_start + bytes) is usable RAM per the bootloader's memory
    // map, mapped through the physical-memory map at `phys_offset`, aligned for u64, and it is
    // excluded from the allocator below, so nothing else will ever use it.
    let storage: &'static mut [u64] =
        unsafe { core::slice::from_raw_parts_mut((phys_offset + bitmap_start) as *mut u64, words) };
    let mut alloc = FrameAllocator::new(storage, 0, top_frame).map_err(FrameInitError::Bitmap)?;
    for (start, end) in ranges {
        let (mut s, e) = (start, end);
        if s == bitmap_start {
            s += bytes;
        }
        if s < e {
            alloc
                .add_range(s / FRAME_SIZE, (e - s) / FRAME_SIZE)
                .map_err(|cause| FrameInitError::Overlap {
                    start: s,
                    end: e,
                    cause,
                })?;
        }
    }
    *ALLOCATOR.lock() = Some(alloc);
    Ok(())
}

/// Why [`init`] could not set up the frame allocator from the bootloader's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameInitError {
    /// The memory map lists no usable frame above 1 MiB (the bootloader's or firmware's map).
    NoUsableMemory,
    /// No usable range is large enough for the allocator's bitmaps, `bytes` long (the memory
    /// map is too fragmented).
    NoRoomForBitmap { bytes: u64 },
    /// The allocator refused its bitmap storage (a sizing bug here).
    Bitmap(FrameError),
    /// The usable range `[start, end)` overlaps one added before (the memory map's fault).
    Overlap {
        start: u64,
        end: u64,
        cause: FrameError,
    },
}

impl core::fmt::Display for FrameInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoUsableMemory => f.write_str("no usable memory above 1 MiB"),
            Self::NoRoomForBitmap { bytes } => {
                write!(f, "no usable range holds the frame bitmap ({bytes} bytes)")
            }
            Self::Bitmap(e) => write!(f, "frame bitmap: {e}"),
            Self::Overlap { start, end, cause } => write!(
                f,
                "overlapping usable ranges in the memory map ({start:#x}..{end:#x}: {cause})"
            ),
        }
    }
}

/// Runs `f` on the allocator. Like the heap, the allocator is never used from interrupt
/// handlers, so its lock cannot be wanted by a handler that interrupted its holder.
pub fn with<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
    let mut guard = ALLOCATOR.lock();
    f(guard.as_mut().expect("frame allocator not initialised"))
}

pub fn alloc() -> Option<PhysFrame<Size4KiB>> {
    with(|a| a.alloc()).map(to_phys_frame)
}

pub fn free(frame: PhysFrame<Size4KiB>) -> Result<(), FrameError> {
    with(|a| a.free(Frame::containing_address(frame.start_address().as_u64())))
}

fn to_phys_frame(f: Frame) -> PhysFrame<Size4KiB> {
    PhysFrame::containing_address(PhysAddr::new(f.start_address()))
}

/// Frames taken from this instance's allocator for one user, who reaches them as words through
/// the physical map; they go back to the allocator when dropped (or by `release`).
pub struct OwnedFrames {
    start: u64,
    pages: u64,
}

impl OwnedFrames {
    /// Any one free frame.
    pub fn take_one() -> Option<Self> {
        let f = with(|a| a.alloc())?;
        Some(Self {
            start: f.start_address(),
            pages: 1,
        })
    }

    /// The `pages` frames from physical address `start` (page aligned), if all are free.
    pub fn take_range(start: u64, pages: u64) -> Result<Self, FrameError> {
        with(|a| a.alloc_range(start / FRAME_SIZE, pages))?;
        Ok(Self {
            start: start & !(FRAME_SIZE - 1),
            pages,
        })
    }

    /// Physical address of the first frame.
    pub fn phys(&self) -> u64 {
        self.start
    }

    /// The frames' contents, as words.
    pub fn words(&self) -> &[u64] {
        // SAFETY: the frames were allocated to `self` alone (the allocator never hands a frame
        // out twice) and stay so until `self` is dropped; the physical map covers them; any bit
        // pattern is a valid `u64`.
        unsafe {
            core::slice::from_raw_parts(
                phys_to_virt(self.start) as *const u64,
                (self.pages * FRAME_SIZE / 8) as usize,
            )
        }
    }

    /// The frames' contents, as words, for writing.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`; `&mut self` makes this the only reference.
        unsafe {
            core::slice::from_raw_parts_mut(
                phys_to_virt(self.start) as *mut u64,
                (self.pages * FRAME_SIZE / 8) as usize,
            )
        }
    }

    /// Gives the frames back now, with the allocator's verdict.
    pub fn release(self) -> Result<(), FrameError> {
        let result = with(|a| a.free_range(self.start / FRAME_SIZE, self.pages));
        core::mem::forget(self);
        result
    }
}

impl Drop for OwnedFrames {
    fn drop(&mut self) {
        let _ = with(|a| a.free_range(self.start / FRAME_SIZE, self.pages));
    }
}

/// Whether any byte of `[start, end)` (physical) is memory this instance's allocator manages.
pub fn owns_any(start: u64, end: u64) -> bool {
    with(|a| {
        a.owned_ranges().any(|run| {
            let (s, e) = (run.start * FRAME_SIZE, (run.start + run.count) * FRAME_SIZE);
            s < end && start < e
        })
    })
}

/// `(free, owned)` frame counts.
pub fn counts() -> (u64, u64) {
    with(|a| (a.free_count(), a.owned_count()))
}

/// Adapter for `x86_64`'s mapper, which asks for page-table frames.
pub struct PageTableFrames;

// SAFETY: every frame returned comes from the instance's allocator, is unused (the allocator
// never hands out a frame twice) and is mapped in the physical map for zeroing.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for PageTableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let frame = alloc()?;
        // SAFETY: the frame is ours and unused; the physical map covers it.
        unsafe {
            core::ptr::write_bytes(
                phys_to_virt(frame.start_address().as_u64()) as *mut u8,
                0,
                FRAME_SIZE as usize,
            );
        }
        Some(frame)
    }
}
