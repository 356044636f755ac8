//! The only module with `unsafe`: it turns the caller's raw shared-memory pointer into typed
//! references (after checking null, alignment and bounds) and hands the mailbox part to
//! mk-mailbox.
//!
//! Soundness rests on two facts: (1) every type it hands out implements [`AtomicOnly`]: it
//! consists only of atomics (`UnsafeCell`-based, valid for every bit pattern), so other
//! instances writing the same physical memory through their own mappings, even wrongly, are
//! never a data race in ours; and (2) the contract of [`Raw::new`] that the memory is valid,
//! initialised and mapped for the whole lifetime `'a` and used by nothing but this crate and
//! mk-mailbox.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use mk_mailbox::MailboxMatrix;

use crate::Error;
use crate::layout::{ConsoleLine, Header, InstanceEntry, PAGE};

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
// SAFETY: `Header` is `repr(C)` with only `AtomicU32`/`AtomicU64` fields (and arrays of
// `repr(C)` structs of them); padding is never read.
unsafe impl AtomicOnly for Header {}
// SAFETY: `ConsoleLine` is `repr(C)` with only atomic fields.
unsafe impl AtomicOnly for ConsoleLine {}
// SAFETY: `InstanceEntry` is `repr(C)` of `repr(C)` lines whose fields are all atomics or
// arrays of atomics.
unsafe impl AtomicOnly for InstanceEntry {}

/// The caller's region: base and length, valid for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct Raw<'a> {
    base: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: `Raw` only ever produces shared references to atomics (and hands the pointer to
// mk-mailbox, which does the same), which may be used from any thread.
unsafe impl Send for Raw<'_> {}
// SAFETY: as above.
unsafe impl Sync for Raw<'_> {}

impl<'a> Raw<'a> {
    /// Checks `base` (non-null, 4 KiB aligned) and records the region.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be readable and writable memory, initialised (any byte values),
    /// that stays mapped for the lifetime `'a` and is accessed by nothing but this crate and
    /// mk-mailbox (through atomics), in this and in other instances.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Result<Self, Error> {
        let Some(base) = NonNull::new(base) else {
            return Err(Error::Misaligned);
        };
        if !(base.as_ptr() as usize).is_multiple_of(PAGE) {
            return Err(Error::Misaligned);
        }
        if (base.as_ptr() as usize).checked_add(len).is_none() {
            return Err(Error::RegionTooSmall { need: 0, have: len });
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
        // SAFETY: `check` verified that `offset + size_of::<T>() <= len` (no overflow) and the
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

    /// Base pointer plus `offset` (never dereferenced here).
    pub(crate) fn ptr_at(&self, offset: usize) -> *mut u8 {
        self.base.as_ptr().wrapping_add(offset)
    }

    /// Formats the mailbox matrix at `offset..offset + size` for `n` instances.
    pub(crate) fn init_mailbox(
        &self,
        offset: usize,
        size: usize,
        n: usize,
    ) -> Result<(), mk_mailbox::Error> {
        self.check::<u8>(offset, size)
            .map_err(|_| mk_mailbox::Error::RegionTooSmall {
                need: offset.saturating_add(size),
                have: self.len,
            })?;
        // SAFETY: the sub-range lies inside the region (checked above), which `Raw::new`'s
        // contract makes valid for 'a and reserved to this crate and mk-mailbox; the mailbox
        // table is disjoint from every table this crate views. `init` is only called by
        // `SharedRegion::init`, whose contract says no other instance uses the region yet.
        unsafe { MailboxMatrix::init(self.ptr_at(offset), size, n) }.map(|_| ())
    }

    /// Attaches to the mailbox matrix at `offset..offset + size`.
    pub(crate) fn attach_mailbox(
        &self,
        offset: usize,
        size: usize,
    ) -> Result<MailboxMatrix<'a>, mk_mailbox::Error> {
        self.check::<u8>(offset, size)
            .map_err(|_| mk_mailbox::Error::RegionTooSmall {
                need: offset.saturating_add(size),
                have: self.len,
            })?;
        // SAFETY: as in `init_mailbox`: in bounds, valid for 'a, used only through mk-mailbox's
        // atomics in this range.
        unsafe { MailboxMatrix::attach(self.ptr_at(offset), size) }
    }
}
