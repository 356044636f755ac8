//! The program loader: an ELF executable (mk-elf validates it) into a task's address space,
//! with its stack and its argument string.
//!
//! * `ET_DYN` (position independent, the user programs' form) runs at `PROGRAM_BASE`: link
//!   address `v` at `PROGRAM_BASE + v`, its `R_X86_64_RELATIVE` relocations applied for that
//!   base. `ET_EXEC` runs at its link addresses.
//! * Every page of the image must lie in the program region `[USER_START, PROGRAM_END)` of the
//!   user half; each is mapped with the union of the rights of the segments touching it: read
//!   only, read-write + NX, or read-execute. A page both writable and executable is refused
//!   (W^X), as is an image larger than [`MAX_IMAGE`].
//! * The stack is `STACK_SIZE` bytes under `STACK_TOP`, read-write + NX, above an unmapped
//!   guard page.
//!
//! # Entry ABI (the user library follows it)
//!
//! The program starts at its ELF entry with `rdi` = the user address of the argument string
//! (UTF-8, not NUL terminated; its first word is the program name), `rsi` = its length, and
//! `rsp` ≡ 8 (mod 16), as just after a `call`; the string sits at the top of the stack, above
//! `rsp`, and the word at `rsp` (the "return address") is 0. The scheduler puts
//! [`Loaded::args_ptr`] and [`Loaded::args_len`] in `rdi` and `rsi`.
//!
//! Everything about the file is checked before anything is mapped; if mapping or copying fails
//! later, what was mapped is unmapped again, so a failed load leaves the space as it was.

use alloc::vec::Vec;

use mk_elf::{Addend, Elf, ElfError, ElfKind, SegmentFlags};

use crate::memory::space::{
    AddressSpace, PAGE_SIZE, PROGRAM_BASE, PROGRAM_END, Perm, STACK_BOTTOM, STACK_SIZE, STACK_TOP,
    SpaceError, USER_START, UserFault,
};

/// Most bytes of memory a program's image may take (its span, `.bss` included).
pub const MAX_IMAGE: u64 = 64 << 20;

/// Where a loaded program starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Its entry point (the first instruction).
    pub entry: u64,
    /// The initial `rsp`: 8 below a multiple of 16.
    pub stack_top: u64,
    /// The argument string's user address (for `rdi`).
    pub args_ptr: u64,
    /// Its length in bytes (for `rsi`).
    pub args_len: u64,
}

/// Why a program could not be loaded, and whose fault: the file's (`Elf`, `WriteExecute`,
/// `OutsideProgramArea`, `TooLarge`, `EntryOutside`, `Relocation`), the caller's
/// (`ArgsTooLong`), the instance's (`Map` with `SpaceError::OutOfFrames`; other `Map` and `Copy`
/// cases mean the caller's space was not empty where the program goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// The file is not a valid ELF executable for this machine.
    Elf(ElfError),
    /// The argument string is `len` bytes, above `max`.
    ArgsTooLong { len: u64, max: u64 },
    /// The page at link address `vaddr` would be writable and executable.
    WriteExecute { vaddr: u64 },
    /// The image would run at `[start, end)`, not inside the program region of the user half.
    OutsideProgramArea { start: u64, end: u64 },
    /// The image spans `size` bytes, above `max`.
    TooLarge { size: u64, max: u64 },
    /// The entry point `entry` (runtime) is not in an executable segment.
    EntryOutside { entry: u64 },
    /// A relocation at link address `offset` targets no segment, or its value overflows.
    Relocation { offset: u64 },
    /// Mapping the image or the stack failed.
    Map(SpaceError),
    /// Copying into the space failed.
    Copy(UserFault),
}

impl LoadError {
    /// The system call error this is (for `spawn`).
    pub fn abi_error(self) -> mk_abi::Error {
        match self {
            Self::ArgsTooLong { .. } => mk_abi::Error::BadLength,
            Self::Map(SpaceError::OutOfFrames) => mk_abi::Error::OutOfMemory,
            _ => mk_abi::Error::BadArgument,
        }
    }
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        Self::Elf(e)
    }
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Elf(e) => write!(f, "not a loadable program: {e}"),
            Self::ArgsTooLong { len, max } => {
                write!(f, "argument string of {len} bytes (at most {max})")
            }
            Self::WriteExecute { vaddr } => write!(
                f,
                "the program's page at {vaddr:#x} is both writable and executable"
            ),
            Self::OutsideProgramArea { start, end } => write!(
                f,
                "the program would occupy {start:#x}..{end:#x}, outside the user program region"
            ),
            Self::TooLarge { size, max } => {
                write!(f, "the program's image is {size} bytes (at most {max})")
            }
            Self::EntryOutside { entry } => write!(
                f,
                "the entry point {entry:#x} is not in an executable segment"
            ),
            Self::Relocation { offset } => {
                write!(f, "the relocation at {offset:#x} is outside the image")
            }
            Self::Map(e) => write!(f, "mapping the program: {e}"),
            Self::Copy(e) => write!(f, "copying the program: {e}"),
        }
    }
}

fn perm_of(flags: SegmentFlags) -> Perm {
    Perm {
        write: flags.write,
        exec: flags.execute,
    }
}

/// Loads the program `elf_bytes` into `space` (whose program region and stack must be empty)
/// with the argument string `args`; see the module's documentation.
pub fn load(space: &mut AddressSpace, elf_bytes: &[u8], args: &str) -> Result<Loaded, LoadError> {
    let args_len = args.len() as u64;
    if args_len > mk_abi::MAX_ARGS {
        return Err(LoadError::ArgsTooLong {
            len: args_len,
            max: mk_abi::MAX_ARGS,
        });
    }
    let elf = Elf::parse(elf_bytes)?;
    let base = match elf.kind() {
        ElfKind::Dyn => PROGRAM_BASE,
        ElfKind::Exec => 0,
    };
    let (min, end) = elf.span();
    let size = elf.image_size();
    let (start, stop) = match (base.checked_add(min), base.checked_add(end)) {
        (Some(s), Some(e)) => (s, e),
        _ => {
            return Err(LoadError::OutsideProgramArea {
                start: min,
                end: u64::MAX,
            });
        }
    };
    if start < USER_START || stop > PROGRAM_END {
        return Err(LoadError::OutsideProgramArea { start, end: stop });
    }
    if size > MAX_IMAGE {
        return Err(LoadError::TooLarge {
            size,
            max: MAX_IMAGE,
        });
    }

    // The runs of pages to map, with their rights; W^X checked before anything is mapped.
    let mut runs: Vec<(u64, u64, Perm)> = Vec::new();
    let mut page = min;
    while page < end {
        if let Some(flags) = elf.page_flags(page) {
            if flags.is_write_execute() {
                return Err(LoadError::WriteExecute { vaddr: page });
            }
            let perm = perm_of(flags);
            let va = base + page;
            match runs.last_mut() {
                Some((s, n, p)) if *p == perm && *s + *n * PAGE_SIZE == va => *n += 1,
                _ => runs.push((va, 1, perm)),
            }
        }
        page += PAGE_SIZE;
    }

    let entry = base
        .checked_add(elf.entry())
        .ok_or(LoadError::EntryOutside { entry: elf.entry() })?;
    let in_exec_segment = elf
        .load_segments()
        .any(|s| s.flags.execute && elf.entry() >= s.vaddr && elf.entry() < s.end());
    if !in_exec_segment {
        return Err(LoadError::EntryOutside { entry });
    }
    let relocations: Vec<_> = elf.relocations()?.collect();
    for r in &relocations {
        let inside = elf
            .load_segments()
            .any(|s| r.offset >= s.vaddr && r.offset.checked_add(8).is_some_and(|e| e <= s.end()));
        if !inside {
            return Err(LoadError::Relocation { offset: r.offset });
        }
    }

    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let result = fill(space, &elf, base, &runs, &relocations, args, &mut mapped);
    if result.is_err() {
        for &(va, pages) in &mapped {
            let _ = space.unmap(va, pages);
        }
    }
    let args_ptr = result?;
    Ok(Loaded {
        entry,
        stack_top: (args_ptr & !15) - 8,
        args_ptr,
        args_len,
    })
}

/// Maps and fills the image and the stack, recording in `mapped` what it mapped; returns the
/// argument string's address.
fn fill(
    space: &mut AddressSpace,
    elf: &Elf<'_>,
    base: u64,
    runs: &[(u64, u64, Perm)],
    relocations: &[mk_elf::Relocation],
    args: &str,
    mapped: &mut Vec<(u64, u64)>,
) -> Result<u64, LoadError> {
    for &(va, pages, perm) in runs {
        space.map_zeroed(va, pages, perm).map_err(LoadError::Map)?;
        mapped.push((va, pages));
    }
    for seg in elf.load_segments() {
        let bytes = usize::try_from(seg.file_offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(usize::try_from(seg.file_size).ok()?)?))
            .and_then(|r| elf.bytes().get(r))
            .ok_or(LoadError::Elf(ElfError::AddressOverflow))?;
        space
            .load_bytes(base + seg.vaddr, bytes)
            .map_err(LoadError::Copy)?;
    }
    for r in relocations {
        let at = base + r.offset;
        let value = match r.addend {
            Addend::Explicit(addend) => base.checked_add_signed(addend),
            Addend::Implicit => {
                let mut current = [0u8; 8];
                space.read_user(at, &mut current).map_err(LoadError::Copy)?;
                base.checked_add(u64::from_le_bytes(current))
            }
        }
        .ok_or(LoadError::Relocation { offset: r.offset })?;
        space
            .load_bytes(at, &value.to_le_bytes())
            .map_err(LoadError::Copy)?;
    }
    let stack_pages = STACK_SIZE / PAGE_SIZE;
    space
        .map_zeroed(STACK_BOTTOM, stack_pages, Perm::RW)
        .map_err(LoadError::Map)?;
    mapped.push((STACK_BOTTOM, stack_pages));
    // The string at the top, its start 16-byte aligned, with room under it for the zero
    // "return address" word.
    let args_ptr = (STACK_TOP - args.len() as u64) & !15;
    space
        .write_user(args_ptr, args.as_bytes())
        .map_err(LoadError::Copy)?;
    Ok(args_ptr)
}
