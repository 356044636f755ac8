//! The only module with `unsafe`: it turns the caller's raw shared-memory pointer into typed
//! references, after checking null, alignment and length.
//!
//! Soundness rests on two facts: (1) every structure it hands out consists only of atomics
//! (`UnsafeCell`-based, valid for every bit pattern), so other instances writing the same
//! physical memory through their own mappings, even wrongly, are never a data race in ours; and
//! (2) the caller's contract on [`view_header`] / [`view_channels`] that the memory is valid,
//! initialised and mapped for the whole lifetime `'a`.

use core::mem::{align_of, size_of};

use crate::Error;
use crate::layout::{Channel, RegionHeader};

fn check(base: *mut u8, len: usize, need: usize) -> Result<(), Error> {
    if base.is_null() || !(base as usize).is_multiple_of(align_of::<Channel>()) {
        return Err(Error::Misaligned);
    }
    if len < need {
        return Err(Error::RegionTooSmall { need, have: len });
    }
    Ok(())
}

/// Views the first cache line of the region as its header.
///
/// # Safety
///
/// `base..base + len` must be readable and writable memory, initialised (any byte values),
/// that stays mapped and is not used by anything but this crate's atomics (in this and in other
/// instances) for the lifetime `'a`.
pub(crate) unsafe fn view_header<'a>(base: *mut u8, len: usize) -> Result<&'a RegionHeader, Error> {
    check(base, len, size_of::<RegionHeader>())?;
    // SAFETY: `check` verified non-null, 64-byte alignment (>= align_of RegionHeader) and that
    // `len` covers the header; the caller guarantees the memory is valid, initialised and alive
    // for 'a. RegionHeader is only atomics, valid for any initialised bit pattern, and shared
    // references to atomics are fine under concurrent access from other instances.
    Ok(unsafe { &*base.cast::<RegionHeader>() })
}

/// Views the `count` channels that follow the header.
///
/// # Safety
///
/// Same contract as [`view_header`].
pub(crate) unsafe fn view_channels<'a>(
    base: *mut u8,
    len: usize,
    count: usize,
) -> Result<&'a [Channel], Error> {
    let need = count
        .checked_mul(size_of::<Channel>())
        .and_then(|b| b.checked_add(size_of::<RegionHeader>()))
        .ok_or(Error::RegionTooSmall {
            need: usize::MAX,
            have: len,
        })?;
    check(base, len, need)?;
    // SAFETY: `base + size_of::<RegionHeader>()` is within the region (checked above) and
    // 64-byte aligned because `base` is and the header is exactly one cache line.
    let first = unsafe { base.add(size_of::<RegionHeader>()) }.cast::<Channel>();
    // SAFETY: `first .. first + count` channels lie inside `base..base + len` (checked: `need`
    // <= `len`, no overflow), are aligned, and the caller guarantees validity for 'a. Channel is
    // only atomics, so any initialised bytes are a valid value and sharing is sound.
    Ok(unsafe { core::slice::from_raw_parts(first, count) })
}
