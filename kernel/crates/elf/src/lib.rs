//! Parser and loader for the kernel's own ELF image (a static PIE), so that every kernel instance
//! of the multikernel runs a **fresh copy** of the kernel.
//!
//! # Why
//!
//! Instance 0 is started by the bootloader, which hands over the kernel ELF file it loaded
//! (`BootInfo.kernel_addr` / `kernel_len`). Before instance 0 starts another instance on the CPUs
//! of another partition it must give that instance its *own* copy of the kernel: its own `.data`
//! and `.bss` (statics, locks, allocators are per instance) and, as a bonus, a text and rodata
//! that are not modified by instance 0's runtime state. The pristine ELF file is the only source
//! of such a copy: instance 0's loaded image has already been written to.
//!
//! The kernel is built for `x86_64-unknown-none` as a **static PIE**: linked at virtual base 0,
//! `ET_DYN`, with a `.rela.dyn` of `R_X86_64_RELATIVE` relocations (newer linkers may pack them as
//! `DT_RELR`). The bootloader loads instance 0 at the fixed virtual base
//! `KERNEL_BASE = 0xFFFF_FFFF_8000_0000`, and so does this crate for every other instance: each
//! copy is relocated for **the same virtual base**, but lives in different physical frames (taken
//! from the target partition) and is mapped at `KERNEL_BASE` by that instance's **own page
//! tables**. Pointers inside the copy therefore point into the copy, never into instance 0.
//!
//! # How
//!
//! 1. [`Elf::parse`] validates the file header (ELF64, little endian, version 1, `EM_X86_64`,
//!    `ET_DYN` or `ET_EXEC`, header sizes), the program header table (in bounds), every
//!    `PT_LOAD` (file range inside the file, `p_filesz <= p_memsz`, no address overflow, sorted by
//!    `p_vaddr` and not overlapping, as the ELF specification requires) and the `PT_DYNAMIC`
//!    relocation tags. It never panics, whatever the input (fuzzed in `tests/fuzz.rs`), and all
//!    later accessors work on validated data.
//! 2. [`Elf::span`] gives the page-aligned link-time range `[min, end)` covered by the loadable
//!    segments; [`Elf::image_size`] is its length, the number of bytes of memory to reserve
//!    (physically contiguous or not: [`load`] only sees a byte buffer).
//! 3. [`load`] zeroes the buffer, copies the file bytes of every [`Segment`] (the remaining
//!    `mem_size - file_size` bytes stay zero: that is `.bss`) and applies every [`Relocation`]
//!    for the chosen `base`, then returns the entry point at `base`.
//! 4. The caller maps the image page by page with [`Elf::page_flags`] (or per segment with
//!    [`Segment::flags`] and [`Segment::page_range`]): text `R X`, rodata `R`, data `RW` + NX.
//!
//! Link-time virtual address `v` lives at `image[v - span().0]` and runs at `base + v`.
//!
//! # Relocations
//!
//! From `PT_DYNAMIC` the crate reads `DT_RELA` / `DT_RELASZ` / `DT_RELAENT` (entries of 24
//! bytes) and `DT_RELR` / `DT_RELRSZ` / `DT_RELRENT` (packed relative relocations, implicit
//! addend = the 64-bit value already at the location). `DT_RELA` and `DT_RELR` hold link-time
//! addresses; they are translated to file offsets through the `PT_LOAD` whose file-backed part
//! contains the whole table. In a static PIE only `R_X86_64_RELATIVE` (8) is expected
//! (`R_X86_64_NONE` (0) is skipped); anything else is
//! [`ElfError::UnsupportedRelocation`]. `DT_REL`-style tables and PLT relocations
//! (`DT_JMPREL` with a non-zero `DT_PLTRELSZ`) are [`ElfError::UnsupportedDynamic`].
//!
//! # API
//!
//! * [`Elf::parse`]`(&[u8]) -> Result<Elf, ElfError>`
//! * [`Elf::kind`], [`Elf::entry`] (link time), [`Elf::span`], [`Elf::image_size`],
//!   [`Elf::bytes`]
//! * [`Elf::load_segments`] -> [`Segments`] (iterator of [`Segment`])
//! * [`Elf::relocations`] -> `Result<`[`Relocations`]`, ElfError>` (iterator of [`Relocation`])
//! * [`Elf::page_flags`]`(page) -> Option<SegmentFlags>`, [`segment_flags`]`(p_flags)`
//! * [`load`]`(&Elf, base, &mut [u8]) -> Result<u64, ElfError>` (entry at `base`)
//!
//! `ET_EXEC` files are accepted for completeness but can only be loaded at `base == 0`
//! (their addresses are absolute).
//!
//! # Example
//!
//! ```no_run
//! # fn kernel_file() -> &'static [u8] { &[] }
//! const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;
//! let elf = mk_elf::Elf::parse(kernel_file()).unwrap();
//! let mut image = vec![0u8; elf.image_size() as usize]; // in the kernel: frames of the partition
//! let entry = mk_elf::load(&elf, KERNEL_BASE, &mut image).unwrap();
//! let (min, end) = elf.span();
//! let mut page = min;
//! while page < end {
//!     if let Some(flags) = elf.page_flags(page) {
//!         // map KERNEL_BASE + page -> frame of image[page - min], writable = flags.write,
//!         // no-execute = !flags.execute
//!     }
//!     page += mk_elf::PAGE_SIZE;
//! }
//! # let _ = entry;
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(
    missing_docs,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

/// Page size used for [`Elf::span`] and the page helpers (4 KiB).
pub const PAGE_SIZE: u64 = 4096;

/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a shared object / position-independent executable.
pub const ET_DYN: u16 = 3;
/// Program header type of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type of the dynamic section.
pub const PT_DYNAMIC: u32 = 2;
/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;

/// Dynamic tag: end of the dynamic array.
pub const DT_NULL: u64 = 0;
/// Dynamic tag: size of the PLT relocations.
pub const DT_PLTRELSZ: u64 = 2;
/// Dynamic tag: address of the `Elf64_Rela` table.
pub const DT_RELA: u64 = 7;
/// Dynamic tag: size in bytes of the `Elf64_Rela` table.
pub const DT_RELASZ: u64 = 8;
/// Dynamic tag: size of one `Elf64_Rela` entry (24).
pub const DT_RELAENT: u64 = 9;
/// Dynamic tag: address of an `Elf64_Rel` table (unsupported).
pub const DT_REL: u64 = 17;
/// Dynamic tag: size of the `Elf64_Rel` table (unsupported).
pub const DT_RELSZ: u64 = 18;
/// Dynamic tag: size of one `Elf64_Rel` entry (unsupported).
pub const DT_RELENT: u64 = 19;
/// Dynamic tag: address of the PLT relocations.
pub const DT_JMPREL: u64 = 23;
/// Dynamic tag: size in bytes of the RELR table.
pub const DT_RELRSZ: u64 = 35;
/// Dynamic tag: address of the RELR table.
pub const DT_RELR: u64 = 36;
/// Dynamic tag: size of one RELR entry (8).
pub const DT_RELRENT: u64 = 37;

/// Relocation type: none (skipped).
pub const R_X86_64_NONE: u32 = 0;
/// Relocation type: `base + addend`.
pub const R_X86_64_RELATIVE: u32 = 8;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const DYN_SIZE: usize = 16;
const RELA_SIZE: usize = 24;
const RELR_SIZE: usize = 8;
/// `e_phnum` escape meaning "the real count is in section header 0" (not supported).
const PN_XNUM: u16 = 0xFFFF;
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// Everything that can be wrong with an ELF file or a load request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than the ELF header.
    Truncated,
    /// The file does not start with `\x7fELF`.
    BadMagic,
    /// `EI_CLASS` is not `ELFCLASS64` (2).
    UnsupportedClass(u8),
    /// `EI_DATA` is not `ELFDATA2LSB` (1).
    UnsupportedEndianness(u8),
    /// `EI_VERSION` or `e_version` is not 1.
    UnsupportedVersion,
    /// `e_machine` is not `EM_X86_64`.
    UnsupportedMachine(u16),
    /// `e_type` is neither `ET_DYN` nor `ET_EXEC`.
    UnsupportedType(u16),
    /// `e_ehsize` is not 64.
    BadHeaderSize(u16),
    /// `e_phentsize` is not 56.
    BadProgramHeaderSize(u16),
    /// `e_phnum` is `PN_XNUM` (extended numbering is not supported).
    TooManyProgramHeaders,
    /// The program header table does not fit in the file.
    ProgramHeadersOutOfBounds,
    /// There is no non-empty `PT_LOAD` segment.
    NoLoadSegments,
    /// The file range of program header `index` is outside the file.
    SegmentOutOfFile {
        /// Index in the program header table.
        index: usize,
    },
    /// Program header `index` has `p_filesz > p_memsz`.
    FileSizeExceedsMemSize {
        /// Index in the program header table.
        index: usize,
    },
    /// `PT_LOAD` `index` is not sorted by address or overlaps the previous one.
    OverlappingSegments {
        /// Index in the program header table.
        index: usize,
    },
    /// An address computation overflows (segment end, page rounding, `base + address`).
    AddressOverflow,
    /// More than one `PT_DYNAMIC`.
    MultipleDynamic,
    /// The file range of `PT_DYNAMIC` is outside the file.
    DynamicOutOfFile,
    /// The dynamic section is inconsistent (missing size or entry size, wrong entry size, ...).
    MalformedDynamic(&'static str),
    /// A dynamic tag that this loader cannot honour (`DT_REL*`, PLT relocations).
    UnsupportedDynamic {
        /// The offending tag.
        tag: u64,
    },
    /// The table named by `tag` (`DT_RELA` or `DT_RELR`) is not inside the file-backed part of
    /// a single `PT_LOAD`.
    TableNotMapped {
        /// `DT_RELA` or `DT_RELR`.
        tag: u64,
    },
    /// A relocation other than `R_X86_64_NONE` / `R_X86_64_RELATIVE`.
    UnsupportedRelocation {
        /// `ELF64_R_TYPE(r_info)`.
        ty: u32,
    },
    /// The RELR table starts with a bitmap or its addresses overflow.
    MalformedRelr,
    /// [`load`]: `base` is not page aligned.
    MisalignedBase,
    /// [`load`]: an `ET_EXEC` file can only be loaded at `base == 0`.
    FixedAddress,
    /// [`load`]: the buffer is not exactly [`Elf::image_size`] bytes long.
    ImageSizeMismatch {
        /// [`Elf::image_size`].
        expected: u64,
        /// Length of the buffer passed in.
        actual: usize,
    },
    /// [`load`]: the entry point is not inside a loadable segment.
    EntryOutOfImage,
    /// [`load`]: the 8 bytes a relocation writes are not inside one loadable segment.
    RelocationOutOfImage {
        /// Link-time address of the relocation.
        offset: u64,
    },
    /// [`load`]: `base + addend` overflows.
    RelocationOverflow {
        /// Link-time address of the relocation.
        offset: u64,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "file shorter than the ELF header"),
            Self::BadMagic => write!(f, "not an ELF file"),
            Self::UnsupportedClass(c) => write!(f, "unsupported ELF class {c} (want ELF64)"),
            Self::UnsupportedEndianness(d) => {
                write!(f, "unsupported data encoding {d} (want little endian)")
            }
            Self::UnsupportedVersion => write!(f, "unsupported ELF version"),
            Self::UnsupportedMachine(m) => write!(f, "unsupported machine {m} (want x86_64)"),
            Self::UnsupportedType(t) => write!(f, "unsupported ELF type {t} (want DYN or EXEC)"),
            Self::BadHeaderSize(s) => write!(f, "bad ELF header size {s}"),
            Self::BadProgramHeaderSize(s) => write!(f, "bad program header size {s}"),
            Self::TooManyProgramHeaders => write!(f, "extended program header numbering"),
            Self::ProgramHeadersOutOfBounds => write!(f, "program header table outside the file"),
            Self::NoLoadSegments => write!(f, "no loadable segment"),
            Self::SegmentOutOfFile { index } => write!(f, "segment {index} outside the file"),
            Self::FileSizeExceedsMemSize { index } => {
                write!(f, "segment {index} has file size > memory size")
            }
            Self::OverlappingSegments { index } => {
                write!(f, "segment {index} unsorted or overlapping")
            }
            Self::AddressOverflow => write!(f, "address overflow"),
            Self::MultipleDynamic => write!(f, "more than one PT_DYNAMIC"),
            Self::DynamicOutOfFile => write!(f, "PT_DYNAMIC outside the file"),
            Self::MalformedDynamic(why) => write!(f, "malformed dynamic section: {why}"),
            Self::UnsupportedDynamic { tag } => write!(f, "unsupported dynamic tag {tag:#x}"),
            Self::TableNotMapped { tag } => {
                write!(f, "table of dynamic tag {tag} not in a loadable segment")
            }
            Self::UnsupportedRelocation { ty } => write!(f, "unsupported relocation type {ty}"),
            Self::MalformedRelr => write!(f, "malformed RELR table"),
            Self::MisalignedBase => write!(f, "load base not page aligned"),
            Self::FixedAddress => write!(f, "ET_EXEC can only be loaded at base 0"),
            Self::ImageSizeMismatch { expected, actual } => {
                write!(f, "image buffer is {actual} bytes, need {expected}")
            }
            Self::EntryOutOfImage => write!(f, "entry point outside the loadable segments"),
            Self::RelocationOutOfImage { offset } => {
                write!(f, "relocation at {offset:#x} outside the loadable segments")
            }
            Self::RelocationOverflow { offset } => {
                write!(f, "relocation at {offset:#x}: base + addend overflows")
            }
        }
    }
}

impl core::error::Error for ElfError {}

/// Kind of ELF file (`e_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfKind {
    /// `ET_DYN`: position independent, loadable at any page-aligned base.
    Dyn,
    /// `ET_EXEC`: absolute addresses, loadable at base 0 only.
    Exec,
}

/// Access rights of a segment (from `p_flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentFlags {
    /// `PF_R`.
    pub read: bool,
    /// `PF_W`: map writable.
    pub write: bool,
    /// `PF_X`: map executable (otherwise set NX).
    pub execute: bool,
}

impl SegmentFlags {
    /// Union of two sets of rights (for a page shared by two segments).
    pub const fn union(self, other: Self) -> Self {
        Self {
            read: self.read || other.read,
            write: self.write || other.write,
            execute: self.execute || other.execute,
        }
    }

    /// Writable and executable at once (a W^X violation the caller may want to refuse).
    pub const fn is_write_execute(self) -> bool {
        self.write && self.execute
    }
}

/// Decodes `p_flags` into [`SegmentFlags`] (unknown bits are ignored).
pub const fn segment_flags(p_flags: u32) -> SegmentFlags {
    SegmentFlags {
        read: p_flags & PF_R != 0,
        write: p_flags & PF_W != 0,
        execute: p_flags & PF_X != 0,
    }
}

/// One validated, non-empty `PT_LOAD` segment (link-time addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Link-time virtual address of the first byte.
    pub vaddr: u64,
    /// Size in memory (`>= file_size`; the tail is zero filled: `.bss`).
    pub mem_size: u64,
    /// Offset of the first byte in the file.
    pub file_offset: u64,
    /// Number of bytes taken from the file.
    pub file_size: u64,
    /// Access rights.
    pub flags: SegmentFlags,
}

impl Segment {
    /// Link-time address one past the last byte (`vaddr + mem_size`, cannot overflow).
    pub const fn end(&self) -> u64 {
        self.vaddr.saturating_add(self.mem_size)
    }

    /// Page-aligned link-time range `[start, end)` of the pages this segment touches
    /// (cannot overflow: checked by [`Elf::parse`]).
    pub const fn page_range(&self) -> (u64, u64) {
        (align_down(self.vaddr), align_up_saturating(self.end()))
    }

    /// Access rights (same as the `flags` field).
    pub const fn flags(&self) -> SegmentFlags {
        self.flags
    }

    /// Whether the link-time range `[addr, addr + len)` lies inside this segment's memory.
    const fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.vaddr && end <= self.end(),
            None => false,
        }
    }
}

/// The addend of a [`Relocation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addend {
    /// `DT_RELA`: the value written is `base + addend`.
    Explicit(i64),
    /// `DT_RELR`: the value written is `base + (u64 already at the location)`.
    Implicit,
}

/// One `R_X86_64_RELATIVE` relocation: write the 64-bit little-endian value
/// `base + addend` at link-time address `offset` (runtime `base + offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relocation {
    /// Link-time address of the 8 bytes to patch.
    pub offset: u64,
    /// What to add to the base.
    pub addend: Addend,
}

/// A table in the file: byte offset and number of entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Table {
    offset: usize,
    count: usize,
}

/// A parsed and validated ELF64 x86_64 executable borrowing the file bytes.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    kind: ElfKind,
    entry: u64,
    phoff: usize,
    phnum: usize,
    min: u64,
    end: u64,
    rela: Table,
    relr: Table,
}

/// A program header, raw.
#[derive(Clone, Copy, Debug)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_filesz: u64,
    p_memsz: u64,
}

fn read<const N: usize>(bytes: &[u8], off: usize) -> Option<[u8; N]> {
    bytes.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], off: usize) -> Option<u16> {
    read(bytes, off).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    read(bytes, off).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    read(bytes, off).map(u64::from_le_bytes)
}

const fn align_down(v: u64) -> u64 {
    v & !PAGE_MASK
}

fn align_up(v: u64) -> Option<u64> {
    Some(v.checked_add(PAGE_MASK)? & !PAGE_MASK)
}

const fn align_up_saturating(v: u64) -> u64 {
    match v.checked_add(PAGE_MASK) {
        Some(x) => x & !PAGE_MASK,
        None => !PAGE_MASK,
    }
}

/// `start..start + len` as a `usize` range inside `len_limit`, or `None`.
fn file_range(start: u64, len: u64, len_limit: usize) -> Option<core::ops::Range<usize>> {
    let start = usize::try_from(start).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= len_limit).then_some(start..end)
}

impl<'a> Elf<'a> {
    /// Parses and validates `bytes` as an ELF64 little-endian x86_64 `ET_DYN`/`ET_EXEC` file.
    ///
    /// Validates the header, the program header table, every `PT_LOAD` and the relocation tags
    /// of `PT_DYNAMIC` (see the crate docs). The relocation *entries* are checked by
    /// [`Elf::relocations`]. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let ident: [u8; 16] = read(bytes, 0).ok_or(ElfError::Truncated)?;
        let [m0, m1, m2, m3, class, data, version, ..] = ident;
        if [m0, m1, m2, m3] != *b"\x7fELF" {
            return Err(ElfError::BadMagic);
        }
        if class != 2 {
            return Err(ElfError::UnsupportedClass(class));
        }
        if data != 1 {
            return Err(ElfError::UnsupportedEndianness(data));
        }
        if bytes.len() < EHDR_SIZE {
            return Err(ElfError::Truncated);
        }
        let field16 = |off| u16_at(bytes, off).ok_or(ElfError::Truncated);
        let e_type = field16(16)?;
        let e_machine = field16(18)?;
        let e_version = u32_at(bytes, 20).ok_or(ElfError::Truncated)?;
        let e_entry = u64_at(bytes, 24).ok_or(ElfError::Truncated)?;
        let e_phoff = u64_at(bytes, 32).ok_or(ElfError::Truncated)?;
        let e_ehsize = field16(52)?;
        let e_phentsize = field16(54)?;
        let e_phnum = field16(56)?;

        if version != 1 || e_version != 1 {
            return Err(ElfError::UnsupportedVersion);
        }
        if e_machine != EM_X86_64 {
            return Err(ElfError::UnsupportedMachine(e_machine));
        }
        let kind = match e_type {
            ET_DYN => ElfKind::Dyn,
            ET_EXEC => ElfKind::Exec,
            other => return Err(ElfError::UnsupportedType(other)),
        };
        if usize::from(e_ehsize) != EHDR_SIZE {
            return Err(ElfError::BadHeaderSize(e_ehsize));
        }
        if e_phnum == PN_XNUM {
            return Err(ElfError::TooManyProgramHeaders);
        }
        if usize::from(e_phentsize) != PHDR_SIZE && e_phnum != 0 {
            return Err(ElfError::BadProgramHeaderSize(e_phentsize));
        }
        let phnum = usize::from(e_phnum);
        let table_len = (PHDR_SIZE as u64).saturating_mul(u64::from(e_phnum));
        let phoff = file_range(e_phoff, table_len, bytes.len())
            .ok_or(ElfError::ProgramHeadersOutOfBounds)?
            .start;

        let mut elf = Elf {
            bytes,
            kind,
            entry: e_entry,
            phoff,
            phnum,
            min: 0,
            end: 0,
            rela: Table::default(),
            relr: Table::default(),
        };

        let mut span: Option<(u64, u64)> = None;
        let mut dynamic: Option<core::ops::Range<usize>> = None;
        for index in 0..phnum {
            let ph = elf.phdr(index).ok_or(ElfError::ProgramHeadersOutOfBounds)?;
            match ph.p_type {
                PT_LOAD => {
                    if file_range(ph.p_offset, ph.p_filesz, bytes.len()).is_none() {
                        return Err(ElfError::SegmentOutOfFile { index });
                    }
                    if ph.p_filesz > ph.p_memsz {
                        return Err(ElfError::FileSizeExceedsMemSize { index });
                    }
                    let end = ph
                        .p_vaddr
                        .checked_add(ph.p_memsz)
                        .ok_or(ElfError::AddressOverflow)?;
                    align_up(end).ok_or(ElfError::AddressOverflow)?;
                    if ph.p_memsz == 0 {
                        continue;
                    }
                    span = match span {
                        None => Some((ph.p_vaddr, end)),
                        Some((min, prev_end)) if ph.p_vaddr >= prev_end => Some((min, end)),
                        Some(_) => return Err(ElfError::OverlappingSegments { index }),
                    };
                }
                PT_DYNAMIC => {
                    if dynamic.is_some() {
                        return Err(ElfError::MultipleDynamic);
                    }
                    dynamic = Some(
                        file_range(ph.p_offset, ph.p_filesz, bytes.len())
                            .ok_or(ElfError::DynamicOutOfFile)?,
                    );
                }
                _ => {}
            }
        }
        let (min, end) = span.ok_or(ElfError::NoLoadSegments)?;
        elf.min = align_down(min);
        elf.end = align_up(end).ok_or(ElfError::AddressOverflow)?;
        // The image must be addressable as one buffer on this machine.
        usize::try_from(elf.image_size()).map_err(|_| ElfError::AddressOverflow)?;

        if let Some(range) = dynamic {
            elf.parse_dynamic(range)?;
        }
        Ok(elf)
    }

    fn phdr(&self, index: usize) -> Option<Phdr> {
        let off = self.phoff.checked_add(index.checked_mul(PHDR_SIZE)?)?;
        let b = self.bytes;
        Some(Phdr {
            p_type: u32_at(b, off)?,
            p_flags: u32_at(b, off.checked_add(4)?)?,
            p_offset: u64_at(b, off.checked_add(8)?)?,
            p_vaddr: u64_at(b, off.checked_add(16)?)?,
            p_filesz: u64_at(b, off.checked_add(32)?)?,
            p_memsz: u64_at(b, off.checked_add(40)?)?,
        })
    }

    fn parse_dynamic(&mut self, range: core::ops::Range<usize>) -> Result<(), ElfError> {
        let dynamic = self.bytes.get(range).ok_or(ElfError::DynamicOutOfFile)?;
        let (mut rela, mut relasz, mut relaent) = (None, None, None);
        let (mut relr, mut relrsz, mut relrent) = (None, None, None);
        let (mut jmprel, mut pltrelsz) = (false, 0u64);
        for entry in dynamic.as_chunks::<DYN_SIZE>().0 {
            let (Some(tag), Some(val)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                break;
            };
            match tag {
                DT_NULL => break,
                DT_RELA => rela = Some(val),
                DT_RELASZ => relasz = Some(val),
                DT_RELAENT => relaent = Some(val),
                DT_RELR => relr = Some(val),
                DT_RELRSZ => relrsz = Some(val),
                DT_RELRENT => relrent = Some(val),
                DT_REL | DT_RELSZ | DT_RELENT => return Err(ElfError::UnsupportedDynamic { tag }),
                DT_JMPREL => jmprel = true,
                DT_PLTRELSZ => pltrelsz = val,
                _ => {}
            }
        }
        if jmprel && pltrelsz != 0 {
            return Err(ElfError::UnsupportedDynamic { tag: DT_JMPREL });
        }
        self.rela = self.table(DT_RELA, rela, relasz, relaent, RELA_SIZE)?;
        self.relr = self.table(DT_RELR, relr, relrsz, relrent, RELR_SIZE)?;
        Ok(())
    }

    /// Locates a relocation table given its `addr`, `size` and `ent` tags.
    fn table(
        &self,
        tag: u64,
        addr: Option<u64>,
        size: Option<u64>,
        ent: Option<u64>,
        want_ent: usize,
    ) -> Result<Table, ElfError> {
        let (addr, size) = match (addr, size) {
            (None, None) => return Ok(Table::default()),
            (Some(a), Some(s)) => (a, s),
            (Some(_), None) => return Err(ElfError::MalformedDynamic("table without size")),
            (None, Some(_)) => return Err(ElfError::MalformedDynamic("size without table")),
        };
        match ent {
            Some(e) if e == want_ent as u64 => {}
            Some(_) => return Err(ElfError::MalformedDynamic("bad relocation entry size")),
            None => return Err(ElfError::MalformedDynamic("missing relocation entry size")),
        }
        let want_ent = want_ent as u64;
        if size.checked_rem(want_ent) != Some(0) {
            return Err(ElfError::MalformedDynamic(
                "table size not a multiple of entry size",
            ));
        }
        if size == 0 {
            return Ok(Table::default());
        }
        let offset = self
            .vaddr_to_file(addr, size)
            .ok_or(ElfError::TableNotMapped { tag })?;
        let count = size
            .checked_div(want_ent)
            .and_then(|c| usize::try_from(c).ok())
            .ok_or(ElfError::TableNotMapped { tag })?;
        Ok(Table { offset, count })
    }

    /// File offset of link-time range `[addr, addr + len)` if it lies in the file-backed part
    /// of one `PT_LOAD`.
    fn vaddr_to_file(&self, addr: u64, len: u64) -> Option<usize> {
        let end = addr.checked_add(len)?;
        self.load_segments().find_map(|s| {
            let file_end = s.vaddr.checked_add(s.file_size)?;
            if addr >= s.vaddr && end <= file_end {
                let off = s.file_offset.checked_add(addr.checked_sub(s.vaddr)?)?;
                file_range(off, len, self.bytes.len()).map(|r| r.start)
            } else {
                None
            }
        })
    }

    /// The whole file.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `ET_DYN` or `ET_EXEC`.
    pub const fn kind(&self) -> ElfKind {
        self.kind
    }

    /// Link-time entry point (`e_entry`); it runs at `base + entry()`.
    pub const fn entry(&self) -> u64 {
        self.entry
    }

    /// Page-aligned link-time range `(min_vaddr, max_vaddr_end)` covering every loadable
    /// segment.
    pub const fn span(&self) -> (u64, u64) {
        (self.min, self.end)
    }

    /// Size in bytes of the image buffer [`load`] wants (`span().1 - span().0`, a multiple of
    /// [`PAGE_SIZE`]).
    pub const fn image_size(&self) -> u64 {
        self.end.saturating_sub(self.min)
    }

    /// The non-empty `PT_LOAD` segments, in address order.
    pub fn load_segments(&self) -> Segments<'a> {
        Segments {
            elf: *self,
            index: 0,
        }
    }

    /// Rights for the page at link-time address `page` (rounded down): the union of the flags
    /// of every segment touching it, or `None` if no segment touches it (a hole in the span;
    /// it may be left unmapped).
    pub fn page_flags(&self, page: u64) -> Option<SegmentFlags> {
        let page = align_down(page);
        self.load_segments()
            .filter(|s| {
                let (start, end) = s.page_range();
                page >= start && page < end
            })
            .map(|s| s.flags)
            .reduce(SegmentFlags::union)
    }

    /// The relocations to apply: the `DT_RELA` table (`R_X86_64_NONE` skipped) followed by the
    /// `DT_RELR` table. Every entry is validated here, so the iterator itself cannot fail:
    /// any type other than `R_X86_64_NONE`/`R_X86_64_RELATIVE` is
    /// [`ElfError::UnsupportedRelocation`], a bad RELR stream [`ElfError::MalformedRelr`].
    /// Target addresses are checked against the image by [`load`].
    pub fn relocations(&self) -> Result<Relocations<'a>, ElfError> {
        for i in 0..self.rela.count {
            let (_, info, _) = self
                .rela_entry(i)
                .ok_or(ElfError::TableNotMapped { tag: DT_RELA })?;
            let ty = rela_type(info);
            if ty != R_X86_64_NONE && ty != R_X86_64_RELATIVE {
                return Err(ElfError::UnsupportedRelocation { ty });
            }
        }
        for r in self.relr_iter() {
            r?;
        }
        Ok(Relocations {
            elf: *self,
            rela_index: 0,
            relr: self.relr_iter(),
        })
    }

    fn rela_entry(&self, index: usize) -> Option<(u64, u64, i64)> {
        let off = self
            .rela
            .offset
            .checked_add(index.checked_mul(RELA_SIZE)?)?;
        let b = self.bytes;
        Some((
            u64_at(b, off)?,
            u64_at(b, off.checked_add(8)?)?,
            i64::from_le_bytes(read(b, off.checked_add(16)?)?),
        ))
    }

    fn relr_iter(&self) -> RelrIter<'a> {
        RelrIter {
            bytes: self.bytes,
            table: self.relr,
            index: 0,
            next_addr: None,
            bitmap: 0,
            bitmap_base: 0,
        }
    }
}

const fn rela_type(info: u64) -> u32 {
    (info & 0xFFFF_FFFF) as u32
}

/// Iterator over the validated non-empty `PT_LOAD` segments of an [`Elf`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    elf: Elf<'a>,
    index: usize,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        while self.index < self.elf.phnum {
            let ph = self.elf.phdr(self.index);
            self.index = self.index.saturating_add(1);
            match ph {
                Some(ph) if ph.p_type == PT_LOAD && ph.p_memsz != 0 => {
                    return Some(Segment {
                        vaddr: ph.p_vaddr,
                        mem_size: ph.p_memsz,
                        file_offset: ph.p_offset,
                        file_size: ph.p_filesz,
                        flags: segment_flags(ph.p_flags),
                    });
                }
                Some(_) => {}
                None => return None,
            }
        }
        None
    }
}

/// Decoder of a `DT_RELR` stream (addresses of relocations with implicit addends).
#[derive(Clone, Debug)]
struct RelrIter<'a> {
    bytes: &'a [u8],
    table: Table,
    index: usize,
    /// Address following the last address entry (where the next bitmap starts).
    next_addr: Option<u64>,
    /// Remaining bits of the current bitmap (bit `i` = address `bitmap_base + 8 * i`).
    bitmap: u64,
    bitmap_base: u64,
}

impl RelrIter<'_> {
    fn fail(&mut self) -> Option<Result<u64, ElfError>> {
        self.index = self.table.count;
        self.bitmap = 0;
        Some(Err(ElfError::MalformedRelr))
    }
}

impl Iterator for RelrIter<'_> {
    type Item = Result<u64, ElfError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.bitmap != 0 {
                let bit = u64::from(self.bitmap.trailing_zeros());
                self.bitmap &= self.bitmap.wrapping_sub(1);
                // bit <= 62, and bitmap_base + 63 * 8 was checked when the bitmap was read.
                return match self.bitmap_base.checked_add(bit.saturating_mul(8)) {
                    Some(a) => Some(Ok(a)),
                    None => self.fail(),
                };
            }
            if self.index >= self.table.count {
                return None;
            }
            let off = self
                .index
                .checked_mul(RELR_SIZE)
                .and_then(|o| o.checked_add(self.table.offset));
            let Some(entry) = off.and_then(|o| u64_at(self.bytes, o)) else {
                return self.fail();
            };
            self.index = self.index.saturating_add(1);
            if entry & 1 == 0 {
                // An address: relocate it, bitmaps continue right after it.
                let Some(next) = entry.checked_add(8) else {
                    return self.fail();
                };
                self.next_addr = Some(next);
                return Some(Ok(entry));
            }
            // A bitmap of the 63 words starting at `next_addr`.
            let Some(base) = self.next_addr else {
                return self.fail();
            };
            let Some(next) = base.checked_add(63 * 8) else {
                return self.fail();
            };
            self.bitmap = entry >> 1;
            self.bitmap_base = base;
            self.next_addr = Some(next);
        }
    }
}

/// Iterator over the validated relocations of an [`Elf`] (see [`Elf::relocations`]).
#[derive(Clone, Debug)]
pub struct Relocations<'a> {
    elf: Elf<'a>,
    rela_index: usize,
    relr: RelrIter<'a>,
}

impl Iterator for Relocations<'_> {
    type Item = Relocation;

    fn next(&mut self) -> Option<Relocation> {
        while self.rela_index < self.elf.rela.count {
            let entry = self.elf.rela_entry(self.rela_index);
            self.rela_index = self.rela_index.saturating_add(1);
            match entry {
                Some((offset, info, addend)) if rela_type(info) == R_X86_64_RELATIVE => {
                    return Some(Relocation {
                        offset,
                        addend: Addend::Explicit(addend),
                    });
                }
                // R_X86_64_NONE (anything else was rejected by `Elf::relocations`).
                Some(_) => {}
                None => self.rela_index = self.elf.rela.count,
            }
        }
        match self.relr.next()? {
            Ok(offset) => Some(Relocation {
                offset,
                addend: Addend::Implicit,
            }),
            Err(_) => None,
        }
    }
}

/// Loads `elf` into `image` for the virtual base `base` and returns the runtime entry point
/// `base + elf.entry()`.
///
/// `image` stands for the runtime virtual range `[base + span().0, base + span().1)` and must be
/// exactly [`Elf::image_size`] bytes long; `base` must be page aligned (and 0 for `ET_EXEC`).
/// The buffer is zeroed, the file bytes of each segment are copied to `vaddr - span().0` (the
/// rest of `mem_size` stays zero: `.bss`), then every relocation writes the little-endian `u64`
/// `base + addend` at `offset - span().0`; the 8 bytes must lie inside one segment.
///
/// Everything about the file is validated before the buffer is touched, except the relocation
/// targets: on [`ElfError::RelocationOutOfImage`] / [`ElfError::RelocationOverflow`] the buffer
/// contents are unspecified (but never outside `image`).
pub fn load(elf: &Elf<'_>, base: u64, image: &mut [u8]) -> Result<u64, ElfError> {
    if base & PAGE_MASK != 0 {
        return Err(ElfError::MisalignedBase);
    }
    if elf.kind == ElfKind::Exec && base != 0 {
        return Err(ElfError::FixedAddress);
    }
    let (min, end) = elf.span();
    let expected = elf.image_size();
    if usize::try_from(expected) != Ok(image.len()) {
        return Err(ElfError::ImageSizeMismatch {
            expected,
            actual: image.len(),
        });
    }
    // The whole runtime range must exist (the last byte is at base + end - 1).
    base.checked_add(end.saturating_sub(1))
        .ok_or(ElfError::AddressOverflow)?;
    if !elf.load_segments().any(|s| s.contains(elf.entry, 1)) {
        return Err(ElfError::EntryOutOfImage);
    }
    let entry = base
        .checked_add(elf.entry)
        .ok_or(ElfError::AddressOverflow)?;
    let relocations = elf.relocations()?;

    image.fill(0);
    for seg in elf.load_segments() {
        // Validated by `Elf::parse`; re-checked without panicking.
        let src = file_range(seg.file_offset, seg.file_size, elf.bytes.len())
            .and_then(|r| elf.bytes.get(r))
            .ok_or(ElfError::SegmentOutOfFile { index: 0 })?;
        let dst = seg
            .vaddr
            .checked_sub(min)
            .and_then(|start| file_range(start, seg.file_size, image.len()))
            .and_then(|r| image.get_mut(r))
            .ok_or(ElfError::AddressOverflow)?;
        dst.copy_from_slice(src);
    }

    for r in relocations {
        let offset = r.offset;
        if !elf.load_segments().any(|s| s.contains(offset, 8)) {
            return Err(ElfError::RelocationOutOfImage { offset });
        }
        let slot = offset
            .checked_sub(min)
            .and_then(|start| file_range(start, 8, image.len()))
            .and_then(|range| image.get_mut(range))
            .ok_or(ElfError::RelocationOutOfImage { offset })?;
        let value = match r.addend {
            Addend::Explicit(addend) => base.checked_add_signed(addend),
            Addend::Implicit => {
                let current: [u8; 8] = (&*slot)
                    .try_into()
                    .map_err(|_| ElfError::RelocationOutOfImage { offset })?;
                base.checked_add(u64::from_le_bytes(current))
            }
        }
        .ok_or(ElfError::RelocationOverflow { offset })?;
        slot.copy_from_slice(&value.to_le_bytes());
    }
    Ok(entry)
}
