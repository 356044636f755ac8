//! Physical frame allocator bookkeeping for one kernel instance.
//!
//! Every kernel instance of the multikernel owns a share of the machine's physical memory (its
//! partition, see `mk-plan`) and hands out 4 KiB frames from it with a [`FrameAllocator`]. This
//! crate is the pure bookkeeping part of that allocator: it never touches the memory it manages,
//! needs no heap (the heap is built from the frames it hands out) and contains no `unsafe`.
//!
//! # Design
//!
//! * **Coverage.** An allocator covers a fixed window of frame numbers
//!   `base_frame .. base_frame + frame_count` (a frame number is a physical address `>> 12`).
//!   The window is chosen by the kernel, typically from the lowest to the highest frame of its
//!   partition; frames inside the window that do not belong to the instance simply stay
//!   *not owned*.
//! * **Two bitmaps in caller storage.** The caller passes a `&mut [u64]` (a static array in the
//!   kernel) of at least [`bitmap_words`]`(frame_count)` words. The first half is the *owned*
//!   bitmap (the frame belongs to this allocator), the second half the *free* bitmap (the frame
//!   is owned and may be handed out). A frame is therefore in one of three states:
//!
//!   | owned | free | state                                   |
//!   |-------|------|-----------------------------------------|
//!   | 0     | 0    | not owned (hole, other partition, MMIO) |
//!   | 1     | 1    | free                                    |
//!   | 1     | 0    | allocated                               |
//!
//!   The invariant `free ⊆ owned` always holds, and bits past `frame_count` are always zero.
//!   The cost is 2 bits per covered frame: 64 GiB of coverage needs 4 MiB of storage.
//! * **Everything starts not owned.** [`FrameAllocator::new`] clears the storage; the kernel then
//!   calls [`FrameAllocator::add_range`] for every usable range of its partition. Adding a frame
//!   twice is an error, never a silent double count.
//! * **Hotplug.** [`FrameAllocator::remove_range`] takes a range back out (memory hot-remove, or
//!   handing memory to another instance). It is all-or-nothing: it is refused with
//!   [`FrameError::NotOwned`] if any frame in it is not owned, and with [`FrameError::InUse`] if
//!   any frame in it is allocated; on error nothing changes.
//! * **Allocation.** [`FrameAllocator::alloc`] is *next-fit*: a cursor remembers the bitmap word
//!   of the last allocation and the search resumes there, skipping 64 fully allocated frames per
//!   word compare, wrapping around once. [`FrameAllocator::alloc_contiguous`] is *first-fit* from
//!   the bottom of the window and aligns the **physical** frame number (so `align_frames = 512`
//!   gives a 2 MiB-aligned block usable for a huge page).
//! * **Errors, not corruption.** Freeing a frame that is free (double free), not owned or outside
//!   the window returns an error and leaves the bitmaps untouched. Every multi-frame operation
//!   validates the whole range before changing anything.
//!
//! The allocator is not synchronised: the kernel wraps it in its own lock (it is per instance,
//! so the lock is only contended by that instance's CPUs).
//!
//! # Example
//!
//! ```
//! use mk_frames::{FrameAllocator, bitmap_words};
//!
//! // Cover 1 GiB starting at physical 16 MiB.
//! const FRAMES: u64 = (1 << 30) / 4096;
//! let mut storage = [0u64; bitmap_words(FRAMES)];
//! let mut frames = FrameAllocator::new(&mut storage, 0x1000, FRAMES).unwrap();
//! frames.add_range(0x1000, 256).unwrap(); // the usable part of the partition
//! let f = frames.alloc().unwrap();
//! assert!(frames.is_allocated(f));
//! frames.free(f).unwrap();
//! assert!(frames.free(f).is_err()); // double free is rejected
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

/// Size of a frame in bytes.
pub const FRAME_SIZE: u64 = 4096;
/// `log2(FRAME_SIZE)`: a frame number is a physical address shifted right by this.
pub const FRAME_SHIFT: u32 = 12;

const BITS: usize = u64::BITS as usize;

/// Number of `u64` words of storage an allocator covering `frame_count` frames needs
/// (two bitmaps of one bit per frame).
pub const fn bitmap_words(frame_count: u64) -> usize {
    // Cannot overflow: `u64::MAX.div_ceil(64) * 2 < 2^59`.
    (frame_count.div_ceil(BITS as u64) * 2) as usize
}

/// A physical frame, by number (physical address `>> 12`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame(u64);

impl Frame {
    /// The frame with this number.
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The frame containing physical address `addr`.
    pub const fn containing_address(addr: u64) -> Self {
        Self(addr >> FRAME_SHIFT)
    }

    /// The frame number.
    pub const fn number(self) -> u64 {
        self.0
    }

    /// The physical address of the first byte of the frame.
    pub const fn start_address(self) -> u64 {
        self.0 << FRAME_SHIFT
    }
}

/// A run of `count` consecutive frames starting at frame number `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRange {
    /// First frame number.
    pub start: u64,
    /// Number of frames.
    pub count: u64,
}

impl FrameRange {
    /// One past the last frame number.
    pub const fn end(self) -> u64 {
        self.start + self.count
    }
}

/// Why a frame allocator operation was refused. A refused operation changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// [`FrameAllocator::new`]: the storage has fewer words than [`bitmap_words`] asks for.
    StorageTooSmall {
        /// Words needed.
        needed: usize,
        /// Words given.
        have: usize,
    },
    /// The range is not inside the frames this allocator covers (or its end overflows).
    OutOfRange,
    /// [`FrameAllocator::add_range`]: a frame in the range is already owned.
    AlreadyOwned,
    /// A frame is not owned by this allocator (never added, removed, or outside the window).
    NotOwned,
    /// [`FrameAllocator::remove_range`] / [`FrameAllocator::alloc_range`]: a frame in the range
    /// is allocated.
    InUse,
    /// [`FrameAllocator::free`]: the frame is owned but not allocated (double free).
    NotAllocated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StorageTooSmall { needed, have } => {
                write!(
                    f,
                    "bitmap storage too small: need {needed} words, have {have}"
                )
            }
            Self::OutOfRange => f.write_str("frame range outside the allocator's coverage"),
            Self::AlreadyOwned => f.write_str("frame already owned by the allocator"),
            Self::NotOwned => f.write_str("frame not owned by the allocator"),
            Self::InUse => f.write_str("frame is allocated"),
            Self::NotAllocated => f.write_str("frame is not allocated (double free)"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Bitmap frame allocator over the frames `base_frame .. base_frame + frame_count`.
/// See the [crate docs](crate) for the design.
pub struct FrameAllocator<'a> {
    owned: &'a mut [u64],
    free: &'a mut [u64],
    base: u64,
    /// Covered frames (bits in use in each bitmap).
    len: usize,
    owned_count: u64,
    free_count: u64,
    /// Word index where the next-fit search for [`FrameAllocator::alloc`] resumes.
    cursor: usize,
}

impl fmt::Debug for FrameAllocator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("base_frame", &self.base)
            .field("frame_count", &self.len)
            .field("owned", &self.owned_count)
            .field("free", &self.free_count)
            .finish()
    }
}

impl<'a> FrameAllocator<'a> {
    /// An allocator covering `frame_count` frames from `base_frame`, with its bitmaps in
    /// `storage` (at least [`bitmap_words`]`(frame_count)` words; extra words are left unused).
    /// The storage is cleared: every frame starts **not owned**.
    pub fn new(
        storage: &'a mut [u64],
        base_frame: u64,
        frame_count: u64,
    ) -> Result<Self, FrameError> {
        base_frame
            .checked_add(frame_count)
            .ok_or(FrameError::OutOfRange)?;
        let len = usize::try_from(frame_count).map_err(|_| FrameError::OutOfRange)?;
        let needed = bitmap_words(frame_count);
        if storage.len() < needed {
            return Err(FrameError::StorageTooSmall {
                needed,
                have: storage.len(),
            });
        }
        let words = needed / 2;
        let (owned, rest) = storage.split_at_mut(words);
        let free = rest.split_at_mut(words).0;
        owned.fill(0);
        free.fill(0);
        Ok(Self {
            owned,
            free,
            base: base_frame,
            len,
            owned_count: 0,
            free_count: 0,
            cursor: 0,
        })
    }

    /// The window of frame numbers this allocator can manage.
    pub fn coverage(&self) -> FrameRange {
        FrameRange {
            start: self.base,
            count: self.len as u64,
        }
    }

    /// Frames currently owned (free + allocated).
    pub fn owned_count(&self) -> u64 {
        self.owned_count
    }

    /// Frames owned and not allocated.
    pub fn free_count(&self) -> u64 {
        self.free_count
    }

    /// Frames owned and allocated.
    pub fn allocated_count(&self) -> u64 {
        self.owned_count - self.free_count
    }

    /// Whether `frame` is owned by this allocator (free or allocated).
    pub fn is_owned(&self, frame: Frame) -> bool {
        self.index(frame).is_some_and(|i| get(self.owned, i))
    }

    /// Whether `frame` is owned and free.
    pub fn is_free(&self, frame: Frame) -> bool {
        self.index(frame).is_some_and(|i| get(self.free, i))
    }

    /// Whether `frame` is owned and allocated.
    pub fn is_allocated(&self, frame: Frame) -> bool {
        self.index(frame)
            .is_some_and(|i| get(self.owned, i) && !get(self.free, i))
    }

    /// Adds `count` frames from `start` as owned and free. Refused with
    /// [`FrameError::OutOfRange`] if the range leaves the coverage and with
    /// [`FrameError::AlreadyOwned`] if any frame in it is already owned. `count == 0` is a no-op.
    pub fn add_range(&mut self, start: u64, count: u64) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let (lo, hi) = self.span(start, count).ok_or(FrameError::OutOfRange)?;
        if any(self.owned, lo, hi) {
            return Err(FrameError::AlreadyOwned);
        }
        set(self.owned, lo, hi);
        set(self.free, lo, hi);
        self.owned_count += count;
        self.free_count += count;
        Ok(())
    }

    /// Takes `count` frames from `start` out of the allocator (memory hot-remove). All or
    /// nothing: refused with [`FrameError::NotOwned`] if any frame is not owned (or outside the
    /// coverage), else with [`FrameError::InUse`] if any frame is allocated. `count == 0` is a
    /// no-op.
    pub fn remove_range(&mut self, start: u64, count: u64) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let (lo, hi) = self.span(start, count).ok_or(FrameError::NotOwned)?;
        if !all(self.owned, lo, hi) {
            return Err(FrameError::NotOwned);
        }
        // Owned everywhere, so "allocated somewhere" is "not free somewhere".
        if !all(self.free, lo, hi) {
            return Err(FrameError::InUse);
        }
        clear(self.owned, lo, hi);
        clear(self.free, lo, hi);
        self.owned_count -= count;
        self.free_count -= count;
        Ok(())
    }

    /// Allocates one frame (next-fit from where the last allocation was found).
    pub fn alloc(&mut self) -> Option<Frame> {
        if self.free_count == 0 {
            return None;
        }
        let words = self.free.len();
        for k in 0..words {
            let w = (self.cursor + k) % words;
            let word = self.free[w];
            if word != 0 {
                let bit = word.trailing_zeros() as usize;
                self.free[w] = word & !(1 << bit);
                self.free_count -= 1;
                self.cursor = w;
                return Some(Frame(self.base + (w * BITS + bit) as u64));
            }
        }
        None
    }

    /// Allocates `count` consecutive frames whose first frame number is a multiple of
    /// `align_frames` (`0` and `1` both mean no alignment), first-fit from the bottom of the
    /// coverage. Returns the first frame; `None` if `count == 0` or no such run is free.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Option<Frame> {
        if count == 0 || count > self.free_count {
            return None;
        }
        let count = usize::try_from(count).ok()?;
        let align = align_frames.max(1);
        let mut pos = 0;
        loop {
            let first = find(self.free, pos, self.len, false)?;
            let start_frame = (self.base + first as u64).checked_next_multiple_of(align)?;
            let start = usize::try_from(start_frame - self.base).ok()?;
            let end = start.checked_add(count)?;
            if end > self.len {
                // Every later candidate starts at or after `start`.
                return None;
            }
            match find(self.free, start, end, true) {
                None => {
                    clear(self.free, start, end);
                    self.free_count -= count as u64;
                    return Some(Frame(start_frame));
                }
                Some(used) => pos = used + 1,
            }
        }
    }

    /// Allocates the specific frames `start .. start + count` (e.g. frames the bootloader
    /// already used). All or nothing: [`FrameError::NotOwned`] if any is not owned,
    /// else [`FrameError::InUse`] if any is already allocated.
    pub fn alloc_range(&mut self, start: u64, count: u64) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let (lo, hi) = self.span(start, count).ok_or(FrameError::NotOwned)?;
        if !all(self.owned, lo, hi) {
            return Err(FrameError::NotOwned);
        }
        if !all(self.free, lo, hi) {
            return Err(FrameError::InUse);
        }
        clear(self.free, lo, hi);
        self.free_count -= count;
        Ok(())
    }

    /// Frees one allocated frame. [`FrameError::NotOwned`] if the frame is not owned by this
    /// allocator, [`FrameError::NotAllocated`] if it is already free (double free).
    pub fn free(&mut self, frame: Frame) -> Result<(), FrameError> {
        self.free_range(frame.0, 1)
    }

    /// Frees `count` allocated frames from `start` (e.g. a block from
    /// [`FrameAllocator::alloc_contiguous`]). All or nothing, with the errors of
    /// [`FrameAllocator::free`].
    pub fn free_range(&mut self, start: u64, count: u64) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let (lo, hi) = self.span(start, count).ok_or(FrameError::NotOwned)?;
        if !all(self.owned, lo, hi) {
            return Err(FrameError::NotOwned);
        }
        if any(self.free, lo, hi) {
            return Err(FrameError::NotAllocated);
        }
        set(self.free, lo, hi);
        self.free_count += count;
        Ok(())
    }

    /// The maximal runs of owned frames (free or allocated), in ascending order.
    pub fn owned_ranges(&self) -> Runs<'_> {
        Runs {
            bits: self.owned,
            pos: 0,
            len: self.len,
            base: self.base,
        }
    }

    /// The maximal runs of free frames, in ascending order.
    pub fn free_ranges(&self) -> Runs<'_> {
        Runs {
            bits: self.free,
            pos: 0,
            len: self.len,
            base: self.base,
        }
    }

    /// Bit index of `frame`, if covered.
    fn index(&self, frame: Frame) -> Option<usize> {
        let i = usize::try_from(frame.0.checked_sub(self.base)?).ok()?;
        (i < self.len).then_some(i)
    }

    /// Bit indices `lo .. hi` of a non-empty frame range, if entirely covered.
    fn span(&self, start: u64, count: u64) -> Option<(usize, usize)> {
        let lo = usize::try_from(start.checked_sub(self.base)?).ok()?;
        let hi = lo.checked_add(usize::try_from(count).ok()?)?;
        (hi <= self.len).then_some((lo, hi))
    }
}

/// Iterator over maximal runs of set bits, as frame ranges. See
/// [`FrameAllocator::owned_ranges`] and [`FrameAllocator::free_ranges`].
#[derive(Clone, Debug)]
pub struct Runs<'b> {
    bits: &'b [u64],
    pos: usize,
    len: usize,
    base: u64,
}

impl Iterator for Runs<'_> {
    type Item = FrameRange;

    fn next(&mut self) -> Option<FrameRange> {
        let start = find(self.bits, self.pos, self.len, false)?;
        let end = find(self.bits, start, self.len, true).unwrap_or(self.len);
        self.pos = end;
        Some(FrameRange {
            start: self.base + start as u64,
            count: (end - start) as u64,
        })
    }
}

// ---- bitmap primitives over bit indices `lo .. hi` ----

/// The words touched by bits `lo .. hi`, each with the mask of the bits in range.
fn masks(lo: usize, hi: usize) -> impl Iterator<Item = (usize, u64)> {
    let mut lo = lo;
    core::iter::from_fn(move || {
        if lo >= hi {
            return None;
        }
        let w = lo / BITS;
        let word_end = hi.min((w + 1) * BITS);
        let n = word_end - lo;
        let mask = if n == BITS {
            !0
        } else {
            ((1u64 << n) - 1) << (lo % BITS)
        };
        lo = word_end;
        Some((w, mask))
    })
}

fn get(bits: &[u64], i: usize) -> bool {
    bits[i / BITS] & (1 << (i % BITS)) != 0
}

fn any(bits: &[u64], lo: usize, hi: usize) -> bool {
    masks(lo, hi).any(|(w, m)| bits[w] & m != 0)
}

fn all(bits: &[u64], lo: usize, hi: usize) -> bool {
    masks(lo, hi).all(|(w, m)| bits[w] & m == m)
}

fn set(bits: &mut [u64], lo: usize, hi: usize) {
    masks(lo, hi).for_each(|(w, m)| bits[w] |= m);
}

fn clear(bits: &mut [u64], lo: usize, hi: usize) {
    masks(lo, hi).for_each(|(w, m)| bits[w] &= !m);
}

/// First index in `from .. limit` whose bit is set (`inverted == false`) or clear
/// (`inverted == true`).
fn find(bits: &[u64], from: usize, limit: usize, inverted: bool) -> Option<usize> {
    if from >= limit {
        return None;
    }
    let flip = if inverted { !0 } else { 0 };
    let mut w = from / BITS;
    let mut word = (bits[w] ^ flip) & (!0 << (from % BITS));
    loop {
        if word != 0 {
            let i = w * BITS + word.trailing_zeros() as usize;
            return (i < limit).then_some(i);
        }
        w += 1;
        if w * BITS >= limit {
            return None;
        }
        word = bits[w] ^ flip;
    }
}

#[cfg(test)]
mod tests;
