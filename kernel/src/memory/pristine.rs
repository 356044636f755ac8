//! The kernel's ELF file as it was before this instance wrote to its own statics.
//!
//! Instance 0 builds every other instance from the ELF file the bootloader left in memory
//! (`BootInfo::kernel_addr`). But the bootloader maps the kernel's writable segments straight
//! onto the frames of that file: it copies a page only when it has to write it itself (a
//! relocation, the start of `.bss`). So every store instance 0 makes to a static whose page had
//! no relocation lands in the file, and a copy built from the file later would start with
//! instance 0's values instead of the initial ones (measured: instance 1 inherited instance 0's
//! filled-in GDT and panicked appending to it).
//!
//! `capture` therefore runs first thing at kernel entry, before any static is written, and
//! keeps the file bytes of the writable segments in `.bss` (fresh, zeroed frames, never part
//! of the file). `kernel_file` later gives a copy of the file with those bytes put back.
//!
//! ```text
//!   ELF file frames  [ headers | .rodata | .text | .data.rel.ro | .data ]
//!                                                   ▲ mapped in place, written by instance 0
//!   SNAPSHOT (.bss)  [ .data.rel.ro | .data ]  ◄── copied at entry, before the first store
//! ```

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use bootloader_api::BootInfo;

/// Room for the writable segments' file bytes (about 90 KiB today).
const SNAPSHOT_BYTES: usize = 256 * 1024;
/// At most this many writable segments.
const MAX_SEGMENTS: usize = 4;

struct Snapshot {
    bytes: [u8; SNAPSHOT_BYTES],
    /// (file offset, length) of each saved segment, stored one after the other in `bytes`.
    segments: [(usize, usize); MAX_SEGMENTS],
}

static mut SNAPSHOT: Snapshot = Snapshot {
    bytes: [0; SNAPSHOT_BYTES],
    segments: [(0, 0); MAX_SEGMENTS],
};
/// Segments saved; `usize::MAX` when the capture failed (and why is in `FAILURE`).
static SAVED: AtomicUsize = AtomicUsize::new(0);
static FAILURE: spin::Once<PristineError> = spin::Once::new();

/// Why the pristine kernel file cannot be had (the bootloader's hand-over or the image itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PristineError {
    /// The bootloader gave no physical-memory mapping to read the file through.
    NoPhysicalMap,
    /// The kernel ELF does not parse.
    ElfParse,
    /// The snapshot buffer could not be reached (never expected: it is a static).
    NullStatic,
    /// A writable segment lies outside the file.
    SegmentOutsideFile,
    /// The writable segments outgrew the snapshot buffer.
    SnapshotFull,
    /// More writable segments than the snapshot keeps.
    TooManySegments,
}

impl core::fmt::Display for PristineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoPhysicalMap => "no physical-memory mapping for the kernel file",
            Self::ElfParse => "the kernel ELF does not parse",
            Self::NullStatic => "null static",
            Self::SegmentOutsideFile => "a writable segment lies outside the file",
            Self::SnapshotFull => "the writable segments outgrew the snapshot buffer",
            Self::TooManySegments => "too many writable segments",
        })
    }
}

/// The ELF file through the bootloader's physical-memory mapping.
fn file(boot_info: &BootInfo) -> Option<&'static [u8]> {
    let offset = boot_info.physical_memory_offset.into_option()?;
    let start = offset.checked_add(boot_info.kernel_addr)?;
    // SAFETY: the bootloader maps all physical memory at `offset`, and the kernel ELF file lies
    // at `kernel_addr` for `kernel_len` bytes; it is only read here.
    Some(unsafe { core::slice::from_raw_parts(start as *const u8, boot_info.kernel_len as usize) })
}

/// Saves the file bytes of the kernel's writable segments. Must run before the kernel writes
/// any static (first thing in `boot::primary::start`, instance 0). A failure is remembered and
/// reported by `kernel_file`, when an instance is to be built.
pub fn capture(boot_info: &BootInfo) {
    let result = (|| {
        let bytes = file(boot_info).ok_or(PristineError::NoPhysicalMap)?;
        let elf = mk_elf::Elf::parse(bytes).map_err(|_| PristineError::ElfParse)?;
        // SAFETY: called once at entry on the only running CPU, before anything else refers to
        // SNAPSHOT (`kernel_file` reads it only after SAVED is published below).
        let snap = unsafe { (&raw mut SNAPSHOT).as_mut() }.ok_or(PristineError::NullStatic)?;
        let mut used = 0;
        let mut count = 0;
        for seg in elf.load_segments().filter(|s| s.flags.write) {
            let (start, len) = (seg.file_offset as usize, seg.file_size as usize);
            let src = bytes
                .get(start..start.saturating_add(len))
                .ok_or(PristineError::SegmentOutsideFile)?;
            let dst = snap
                .bytes
                .get_mut(used..used + len)
                .ok_or(PristineError::SnapshotFull)?;
            *snap
                .segments
                .get_mut(count)
                .ok_or(PristineError::TooManySegments)? = (start, len);
            dst.copy_from_slice(src);
            used += len;
            count += 1;
        }
        Ok(count)
    })();
    match result {
        Ok(count) => SAVED.store(count, Ordering::Release),
        Err(e) => {
            FAILURE.call_once(|| e);
            SAVED.store(usize::MAX, Ordering::Release);
        }
    }
}

/// A copy of the kernel ELF file with its writable segments as they were at entry: the image
/// to build other instances from.
pub fn kernel_file(boot_info: &BootInfo) -> Result<Vec<u8>, PristineError> {
    let count = SAVED.load(Ordering::Acquire);
    if count == usize::MAX {
        return Err(FAILURE.get().copied().unwrap_or(PristineError::NullStatic));
    }
    let mut out = file(boot_info)
        .ok_or(PristineError::NoPhysicalMap)?
        .to_vec();
    // SAFETY: SNAPSHOT was written once by `capture` before SAVED was published (Acquire
    // above) and is never written again; shared reads are fine.
    let snap = unsafe { (&raw const SNAPSHOT).as_ref() }.ok_or(PristineError::NullStatic)?;
    let mut used = 0;
    for &(start, len) in &snap.segments[..count.min(MAX_SEGMENTS)] {
        out[start..start + len].copy_from_slice(&snap.bytes[used..used + len]);
        used += len;
    }
    Ok(out)
}
