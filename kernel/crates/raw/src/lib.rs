//! The one raw view of memory shared between multikernel instances.
//!
//! Every crate that lays tables out in shared memory (mk-shared, mk-mailbox, mk-pool) reaches
//! it through [`Raw`]: a base and a length, checked once (non-null, no address overflow), then
//! carved into typed references by offset with every access bounds- and alignment-checked.
//! Metadata is handed out only as types implementing [`AtomicOnly`]: made only of atomics,
//! valid for every bit pattern, so another instance writing the same physical memory through
//! its own mapping, even wrongly, is never a data race in ours, only a value to validate.
//!
//! This crate holds the only `unsafe` of that stack: [`Raw::new`] (the caller vouches for the
//! memory), the accessors' pointer casts, the two plain-byte accessors [`Raw::bytes`] and
//! [`Raw::bytes_mut`] (which pass an exclusivity obligation on to their callers) and the
//! [`atomic_struct!`] macro, which implements [`AtomicOnly`] for a `repr(C)` struct after the
//! compiler has checked that every field type implements it. With it the crates above are
//! `#![forbid(unsafe_code)]`.
//!
//! ```text
//!  Raw { base, len }          at::<T>(off)        -> &'a T     T: AtomicOnly, in bounds, aligned
//!  +------------------------+ slice::<T>(off, n)  -> &'a [T]   idem, n elements
//!  | ... | T | ... [T; n] . | sub(off, len)       -> Raw<'a>   a window, for carving a layout
//!  +------------------------+ zero()                           every byte 0, through atomics
//! ```

#![cfg_attr(not(test), no_std)]
// `allow_internal_unsafe` lets `atomic_struct!` expand to an `unsafe impl` inside crates that
// `forbid(unsafe_code)`: the impl is this crate's promise, backed by the compile-time field
// checks the macro emits next to it.
#![feature(allow_internal_unsafe)]
#![allow(internal_features)]

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize, Ordering,
};

/// Everything that can go wrong: the same answer for the same mistake in every crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A null base pointer.
    Null,
    /// An address not aligned for the type asked for (or for the alignment a layout needs).
    Misaligned,
    /// The view is shorter than the access needs. `need` is the end offset the access needs
    /// (`usize::MAX` if computing it overflowed, or if `base + len` would wrap the address
    /// space); `have` is the view's length.
    RegionTooSmall {
        /// Bytes needed from the view's start.
        need: usize,
        /// Bytes in the view.
        have: usize,
    },
}

/// Types made only of atomics (integers, arrays of them, `repr(C)` structs of them): valid for
/// every initialised bit pattern and interior-mutable through `&`, so a shared reference to one
/// over memory that others write concurrently is sound.
///
/// Implement it for your own structs with [`atomic_struct!`], which checks every field.
///
/// # Safety
///
/// An implementor must contain nothing but fields that implement `AtomicOnly` themselves (and
/// padding): every initialised bit pattern is then a valid value, and all its state is in
/// `UnsafeCell`s accessed atomically. `AtomicBool` and `AtomicPtr` do not qualify.
pub unsafe trait AtomicOnly {}

macro_rules! atomic_integers {
    ($($t:ty),*) => {$(
        // SAFETY: an atomic integer is a `repr(C)` `UnsafeCell` of an integer: valid for every
        // bit pattern and mutated only atomically.
        unsafe impl AtomicOnly for $t {}
    )*};
}

atomic_integers!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);

// SAFETY: an array of `AtomicOnly` elements has no other bytes than theirs.
unsafe impl<T: AtomicOnly, const N: usize> AtomicOnly for [T; N] {}

/// Compile-time check used by [`atomic_struct!`]: only compiles for `T: AtomicOnly`.
#[doc(hidden)]
pub const fn assert_atomic_only<T: AtomicOnly>() {}

/// Defines a `repr(C)` struct and implements [`AtomicOnly`] for it, after checking at compile
/// time that every field type implements `AtomicOnly`. The `#[repr(C)]` (optionally
/// `#[repr(C, align(N))]`) attribute comes first; doc comments and other attributes follow.
///
/// ```
/// use core::sync::atomic::{AtomicU32, AtomicU64};
/// mk_raw::atomic_struct! {
///     #[repr(C, align(64))]
///     /// A cache line of counters.
///     pub struct Line {
///         pub count: AtomicU64,
///         pub words: [AtomicU32; 4],
///     }
/// }
/// mk_raw::atomic_struct! {
///     #[repr(C)]
///     pub struct Pair(pub AtomicU64, pub AtomicU64);
/// }
/// ```
///
/// A field of another type does not compile:
///
/// ```compile_fail
/// mk_raw::atomic_struct! {
///     #[repr(C)]
///     pub struct Bad { pub plain: u64 }
/// }
/// ```
#[macro_export]
#[allow_internal_unsafe]
macro_rules! atomic_struct {
    (
        #[repr(C $(, align($align:literal))?)]
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        #[repr(C $(, align($align))?)]
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field : $ty),*
        }
        const _: () = { $($crate::assert_atomic_only::<$ty>();)* };
        // SAFETY: every field type implements `AtomicOnly` (checked just above), so the struct
        // consists of atomics and padding only.
        unsafe impl $crate::AtomicOnly for $name {}
    };
    (
        #[repr(C $(, align($align:literal))?)]
        $(#[$meta:meta])*
        $vis:vis struct $name:ident ($($(#[$fmeta:meta])* $fvis:vis $ty:ty),* $(,)?);
    ) => {
        #[repr(C $(, align($align))?)]
        $(#[$meta])*
        $vis struct $name ($($(#[$fmeta])* $fvis $ty),*);
        const _: () = { $($crate::assert_atomic_only::<$ty>();)* };
        // SAFETY: as for the struct form above.
        unsafe impl $crate::AtomicOnly for $name {}
    };
}

/// A view of `len` bytes of memory at `base`, valid for `'a`: the caller's shared memory, or a
/// window of it ([`Raw::sub`]). `Copy`, `Send` and `Sync`: it only ever hands out shared
/// references to atomics (plain bytes only through `unsafe` functions).
#[derive(Clone, Copy)]
pub struct Raw<'a> {
    base: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: `Raw` produces shared references to atomics, usable from any thread, and plain byte
// slices only through `unsafe` functions whose callers take over the aliasing obligations.
unsafe impl Send for Raw<'_> {}
// SAFETY: as above.
unsafe impl Sync for Raw<'_> {}

impl core::fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Raw")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

/// A 4 KiB-aligned page of atomic bytes: memory a test (or any safe caller) can own and view
/// through [`Raw::from_pages`] without `unsafe`.
#[repr(C, align(4096))]
pub struct Page(pub [AtomicU8; PAGE]);

/// Bytes of a [`Page`].
pub const PAGE: usize = 4096;

impl Page {
    /// A page of `byte`s.
    pub fn filled(byte: u8) -> Self {
        Self(core::array::from_fn(|_| AtomicU8::new(byte)))
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::filled(0)
    }
}

impl<'a> Raw<'a> {
    /// Records `base..base + len` after checking that `base` is not null and the range does
    /// not wrap the address space.
    ///
    /// # Safety
    ///
    /// For all of `'a`, `base..base + len` must be readable and writable memory, initialised
    /// (any byte values), that stays mapped, and that everyone (this and every other instance,
    /// through any mapping) accesses only through atomics, except for byte ranges handed out
    /// by [`Raw::bytes`] / [`Raw::bytes_mut`] under their own contracts.
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<Self, Error> {
        let base = NonNull::new(base).ok_or(Error::Null)?;
        if base.as_ptr().addr().checked_add(len).is_none() {
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

    /// Views memory the caller owns as atomics: always sound, no `unsafe` needed (host tests,
    /// or a kernel's static buffer).
    pub fn from_pages(pages: &'a [Page]) -> Self {
        Self {
            base: NonNull::from(pages).cast(),
            len: size_of_val(pages),
            _life: PhantomData,
        }
    }

    /// Bytes in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The view's start address in this mapping (for diagnostics and tests; other instances
    /// see the same memory elsewhere).
    pub fn addr(&self) -> usize {
        self.base.as_ptr().addr()
    }

    /// Whether the view's start is a multiple of `align` (a power of two) in this mapping.
    pub fn is_aligned_to(&self, align: usize) -> bool {
        self.base.as_ptr().addr().is_multiple_of(align)
    }

    /// `Ok` if the view holds at least `need` bytes, else [`Error::RegionTooSmall`]: the one
    /// size check of every layout (`need` being the layout's total).
    pub fn ensure_len(&self, need: usize) -> Result<(), Error> {
        if self.len < need {
            return Err(Error::RegionTooSmall {
                need,
                have: self.len,
            });
        }
        Ok(())
    }

    /// `Ok` if the view starts at a multiple of `align`, else [`Error::Misaligned`]: the base
    /// alignment a layout needs (4 KiB for pages, 64 for cache lines).
    pub fn ensure_aligned(&self, align: usize) -> Result<(), Error> {
        if self.is_aligned_to(align) {
            Ok(())
        } else {
            Err(Error::Misaligned)
        }
    }

    /// `offset .. offset + count * size_of::<T>()` lies in the view and starts aligned for `T`.
    fn check<T>(&self, offset: usize, count: usize) -> Result<(), Error> {
        let need = count
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(offset))
            .unwrap_or(usize::MAX);
        if need > self.len {
            return Err(Error::RegionTooSmall {
                need,
                have: self.len,
            });
        }
        // No wrap: `base + offset <= base + len`, which `new` checked.
        if !(self.base.as_ptr().addr() + offset).is_multiple_of(align_of::<T>()) {
            return Err(Error::Misaligned);
        }
        Ok(())
    }

    /// A window `offset .. offset + len` of this view.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Raw<'a>, Error> {
        self.check::<u8>(offset, len)?;
        Ok(Self {
            // SAFETY: `offset <= self.len` (checked), so the result stays inside the original
            // allocation, and it is not null because `base + offset` does not wrap.
            base: unsafe { self.base.add(offset) },
            len,
            _life: PhantomData,
        })
    }

    /// The `T` at `offset` bytes from the start.
    pub fn at<T: AtomicOnly>(&self, offset: usize) -> Result<&'a T, Error> {
        self.check::<T>(offset, 1)?;
        // SAFETY: `check` verified `offset + size_of::<T>() <= len` (no overflow) and the
        // alignment; `Raw::new`'s contract makes the memory valid, initialised and alive for
        // 'a; `T: AtomicOnly` is valid for any bits and sound to share with concurrent writers.
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<T>() })
    }

    /// `count` consecutive `T`s starting `offset` bytes from the start.
    pub fn slice<T: AtomicOnly>(&self, offset: usize, count: usize) -> Result<&'a [T], Error> {
        self.check::<T>(offset, count)?;
        // SAFETY: as in `at`, for `count` elements (bounds checked with overflow checks).
        Ok(unsafe {
            core::slice::from_raw_parts(self.base.as_ptr().add(offset).cast::<T>(), count)
        })
    }

    /// Sets every byte of the view to 0, through Relaxed atomic stores (8 bytes at a time
    /// where aligned).
    pub fn zero(&self) {
        let addr = self.base.as_ptr().addr();
        let head = addr.next_multiple_of(8).wrapping_sub(addr).min(self.len);
        let words = (self.len - head) / 8;
        let tail = head + words * 8;
        let zero_bytes = |from: usize, to: usize| {
            if let Ok(bytes) = self.slice::<AtomicU8>(from, to - from) {
                bytes.iter().for_each(|b| b.store(0, Ordering::Relaxed));
            }
        };
        zero_bytes(0, head);
        if let Ok(w) = self.slice::<AtomicU64>(head, words) {
            w.iter().for_each(|w| w.store(0, Ordering::Relaxed));
        }
        zero_bytes(tail, self.len);
    }

    /// Copies `src` to `offset..offset + src.len()`, byte by byte through Relaxed atomic stores
    /// (sound whoever else writes there; plain moves on x86_64).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        let dst = self.slice::<AtomicU8>(offset, src.len())?;
        for (d, &s) in dst.iter().zip(src) {
            d.store(s, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `offset..offset + dst.len()` into `dst` through Relaxed atomic loads. The copy is
    /// stable even if the shared bytes are not: validate the copy, not the shared memory.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        let src = self.slice::<AtomicU8>(offset, dst.len())?;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// `len` plain bytes at `offset`, shared.
    ///
    /// # Safety
    ///
    /// For `'a`, nobody (in this or any other instance, through any view) may write these
    /// bytes: the caller must own them (e.g. pool pages), or otherwise know that nobody writes
    /// them, for as long as the slice lives.
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> Result<&'a [u8], Error> {
        self.check::<u8>(offset, len)?;
        // SAFETY: in bounds (checked); valid and initialised for 'a by `Raw::new`'s contract;
        // no concurrent writer by this function's contract.
        Ok(unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(offset), len) })
    }

    /// `len` plain bytes at `offset`, exclusive.
    ///
    /// # Safety
    ///
    /// For `'a`, nothing else (in this or any other instance, through any view) may read or
    /// write these bytes.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, offset: usize, len: usize) -> Result<&'a mut [u8], Error> {
        self.check::<u8>(offset, len)?;
        // SAFETY: in bounds (checked); valid and initialised for 'a by `Raw::new`'s contract;
        // exclusive by this function's contract.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) })
    }
}

/// Puts `want` back into a shared header word that a stray or hostile writer may have changed
/// (one swap, `Relaxed`); 1 if it held something else, 0 if it was intact: the creator's
/// `restore_header`s add these up.
pub fn put_back_u32(word: &AtomicU32, want: u32) -> usize {
    usize::from(word.swap(want, Ordering::Relaxed) != want)
}

/// [`put_back_u32`] for a 64-bit word.
pub fn put_back_u64(word: &AtomicU64, want: u64) -> usize {
    usize::from(word.swap(want, Ordering::Relaxed) != want)
}

/// Copies the bytes of `src` into the words of `dst` (native byte order), as a run of 8-byte
/// aligned stores, each one atomic (like a `Relaxed` store): the way into a message slot others
/// may read concurrently. Copies `min(dst.len(), src.len() / 8)` words. On x86_64 one `rep movsq` (what a message costs is counted
/// in instructions, and the loop of atomic stores costs two or three per word).
#[inline(always)]
pub fn copy_to_words(dst: &[AtomicU64], src: &[u8]) {
    let n = dst.len().min(src.len() / 8);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rep movsq` moves `n` quadwords from `src` (valid for `8 n` bytes; x86_64 reads
    // unaligned quadwords) to `dst` (valid for `n` aligned `AtomicU64`s). Each quadword move is an aligned 8-byte
    // store, which x86_64 performs atomically, so concurrent readers of `dst` (other CPUs,
    // other instances) see each word old or new, exactly as with `Relaxed` atomic stores;
    // `AtomicU64` permits writes through `&` (interior mutability), and inline assembly is
    // outside the Rust memory model's data-race rules. The direction flag is clear on entry
    // (Rust's ABI guarantees it) and the clobbered registers are declared.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") n => _,
            inout("rdi") dst.as_ptr() => _,
            inout("rsi") src.as_ptr() => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, s) in dst.iter().zip(src.as_chunks::<8>().0) {
        d.store(u64::from_ne_bytes(*s), Ordering::Relaxed);
    }
}

/// Copies the words of `src` out into the bytes of `dst` (native byte order), each word read
/// atomically (like a `Relaxed` load): the copy out of a message slot that the peer may change
/// under us. Copies `min(dst.len() / 8, src.len())` words; the result is a private copy to validate. On x86_64 one
/// `rep movsq`.
#[inline(always)]
pub fn copy_from_words(dst: &mut [u8], src: &[AtomicU64]) {
    let n = (dst.len() / 8).min(src.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rep movsq` moves `n` quadwords from `src` (valid for `n` aligned `AtomicU64`s)
    // to `dst` (valid for `8 n` bytes, exclusively ours: `&mut`; x86_64 writes unaligned
    // quadwords). Each quadword load from `src` is an
    // aligned 8-byte load, atomic on x86_64, as a `Relaxed` atomic load would be; a concurrent
    // writer (another instance) can only make the copy hold other values, which the caller
    // validates. Inline assembly is outside the Rust memory model's data-race rules. The
    // direction flag is clear on entry (Rust's ABI) and the clobbered registers are declared.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") n => _,
            inout("rdi") dst.as_mut_ptr() => _,
            inout("rsi") src.as_ptr() => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, s) in dst.as_chunks_mut::<8>().0.iter_mut().zip(src) {
        *d = s.load(Ordering::Relaxed).to_ne_bytes();
    }
}

#[cfg(test)]
mod tests;
