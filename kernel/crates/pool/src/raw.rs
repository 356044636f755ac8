//! The only module with `unsafe`: it turns the caller's raw pool pointer into typed references
//! (after checking null, alignment and bounds).
//!
//! Metadata (header, owner words) is handed out only as types implementing [`AtomicOnly`]:
//! made only of atomics, valid for every bit pattern, so other instances writing the same
//! physical memory through their own mappings, even wrongly, are never a data race in ours.
//! Data pages are plain bytes; the two `unsafe` accessors ([`Raw::bytes`], [`Raw::bytes_mut`])
//! pass the exclusivity obligation on to their callers, and the safe path hands out
//! `&[AtomicU8]`.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use crate::{Error, Header, PAGE};

/// Types made only of atomics (and arrays / `repr(C)` structs of them).
///
/// # Safety
///
/// Implementors must be valid for every initialised bit pattern and contain no non-atomic
/// field, so that a shared reference to them over memory other parties write concurrently is
/// sound.
pub(crate) unsafe trait AtomicOnly {}

// SAFETY: an atomic integer is valid for any bit pattern and is interior-mutable.
unsafe impl AtomicOnly for AtomicU64 {}
// SAFETY: as above.
unsafe impl AtomicOnly for AtomicU32 {}
// SAFETY: as above.
unsafe impl AtomicOnly for AtomicU8 {}
// SAFETY: `Header` is `repr(C)` with only `AtomicU32`/`AtomicU64` fields (and arrays of them),
// laid out without padding (asserted next to its definition).
unsafe impl AtomicOnly for Header {}

/// The caller's region: base and length, valid for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct Raw<'a> {
    base: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: `Raw` produces shared references to atomics, usable from any thread, and raw byte
// slices only through `unsafe` functions whose callers take over the aliasing obligations.
unsafe impl Send for Raw<'_> {}
// SAFETY: as above.
unsafe impl Sync for Raw<'_> {}

impl<'a> Raw<'a> {
    /// Checks `base` (non-null, 4 KiB aligned, `base + len` not wrapping) and records it.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be readable and writable memory, initialised (any byte values),
    /// that stays mapped for the lifetime `'a` and is accessed only through this crate, in this
    /// and in other instances, following the ownership protocol (see [`crate::Pool::attach`]).
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Result<Self, Error> {
        let Some(base) = NonNull::new(base) else {
            return Err(Error::Misaligned);
        };
        if !(base.as_ptr() as usize).is_multiple_of(PAGE) {
            return Err(Error::Misaligned);
        }
        if (base.as_ptr() as usize).checked_add(len).is_none() {
            return Err(Error::RegionTooSmall {
                need: usize::MAX,
                have: len,
            });
        }
        Ok(Self {
            base,
            len,
            _life: PhantomData,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `offset .. offset + count * size_of::<T>()` lies in the region and is aligned for `T`.
    fn check<T>(&self, offset: usize, count: usize) -> Result<(), Error> {
        let need = count
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .ok_or(Error::RegionTooSmall {
                need: usize::MAX,
                have: self.len,
            })?;
        if need > self.len {
            return Err(Error::RegionTooSmall {
                need,
                have: self.len,
            });
        }
        // The base is page aligned, so the offset decides the alignment.
        if !offset.is_multiple_of(align_of::<T>()) || align_of::<T>() > PAGE {
            return Err(Error::Misaligned);
        }
        Ok(())
    }

    /// A `T` at `offset` bytes from the base.
    pub(crate) fn view<T: AtomicOnly>(&self, offset: usize) -> Result<&'a T, Error> {
        self.check::<T>(offset, 1)?;
        // SAFETY: `check` verified `offset + size_of::<T>() <= len` (no overflow) and the
        // alignment; `Raw::new`'s contract makes the memory valid, initialised and alive for
        // 'a; `T: AtomicOnly` is valid for any bits and sound to share with concurrent writers.
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<T>() })
    }

    /// `count` consecutive `T`s starting `offset` bytes from the base.
    pub(crate) fn view_slice<T: AtomicOnly>(
        &self,
        offset: usize,
        count: usize,
    ) -> Result<&'a [T], Error> {
        self.check::<T>(offset, count)?;
        // SAFETY: as in `view`, for `count` elements (bounds checked with overflow checks).
        Ok(unsafe {
            core::slice::from_raw_parts(self.base.as_ptr().add(offset).cast::<T>(), count)
        })
    }

    /// `len` plain bytes at `offset`, shared.
    ///
    /// # Safety
    ///
    /// For `'a`, nobody (in this or any other instance, through any view of this crate) may
    /// write these bytes: the caller must own the pages, or otherwise know that nobody writes
    /// them, for as long as the slice lives.
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> Result<&'a [u8], Error> {
        self.check::<u8>(offset, len)?;
        // SAFETY: in bounds (checked); valid and initialised for 'a by `Raw::new`'s contract;
        // no concurrent writer by this function's contract.
        Ok(unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(offset), len) })
    }

    /// `len` plain bytes at `offset`, exclusive.
    ///
    /// # Safety
    ///
    /// For `'a`, nothing else (in this or any other instance, through any view of this crate)
    /// may read or write these bytes.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(
        &self,
        offset: usize,
        len: usize,
    ) -> Result<&'a mut [u8], Error> {
        self.check::<u8>(offset, len)?;
        // SAFETY: in bounds (checked); valid and initialised for 'a by `Raw::new`'s contract;
        // exclusive by this function's contract.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) })
    }
}
