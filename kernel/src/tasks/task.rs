//! A task: a program's address space, its kernel stack and saved context, and where it starts.
//! `spawn` builds one from a program of the ramdisk.

use alloc::string::String;

use crate::arch::switch::{Context, Stack};
use crate::memory::space::AddressSpace;

use super::loader;

/// The scheduler's payload for one task.
pub struct Task {
    /// The program's name (the first word of its arguments).
    pub program: String,
    pub space: AddressSpace,
    /// Its kernel stack: system calls and interrupts from ring 3 run here.
    pub stack: Stack,
    /// Its suspended kernel context while it does not run (`None` while it runs).
    pub context: Option<Context>,
    /// Where it enters ring 3 the first time (taken when it starts).
    pub start: Option<Start>,
    /// I/O ports `(base, len)` it may use from ring 3 (a driver granted device capabilities;
    /// empty for every other task). Set in the TSS's bitmap of whichever CPU switches it in
    /// (a change shows from its next switch in), and denied again when another task follows.
    pub io_ports: alloc::vec::Vec<(u16, u16)>,
    /// Device capabilities it gets at its first entry (taken then).
    pub grants: alloc::vec::Vec<mk_ipc::Cap>,
}

/// The first entry into ring 3.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub rip: u64,
    pub rsp: u64,
    pub arg0: u64,
    pub arg1: u64,
}

/// Why a task could not be started, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// The caller's program name is not in the ramdisk.
    NoSuchProgram,
    /// The caller's arguments are empty or too long.
    BadArguments,
    /// The program is not a loadable ELF (the ramdisk's content).
    BadProgram(loader::LoadError),
    /// This instance has no memory for the address space (its state).
    OutOfMemory,
    /// The task table is full, or the CPU hint names no online CPU of this instance.
    Scheduler(mk_sched::SpawnError),
}

impl core::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchProgram => f.write_str("no such program in the ramdisk"),
            Self::BadArguments => f.write_str("bad arguments"),
            Self::BadProgram(e) => write!(f, "the program cannot be loaded: {e}"),
            Self::OutOfMemory => f.write_str("out of memory"),
            Self::Scheduler(e) => write!(f, "{e}"),
        }
    }
}

impl SpawnError {
    /// The system call error for it.
    pub fn abi(&self) -> mk_abi::Error {
        match self {
            Self::NoSuchProgram => mk_abi::Error::NoSuchProgram,
            Self::BadArguments => mk_abi::Error::BadLength,
            Self::BadProgram(e) => e.abi_error(),
            Self::OutOfMemory => mk_abi::Error::OutOfMemory,
            Self::Scheduler(mk_sched::SpawnError::TooManyTasks) => mk_abi::Error::TooManyTasks,
            Self::Scheduler(_) => mk_abi::Error::BadArgument,
        }
    }
}

impl Task {
    /// Builds a task for `args` (its first word names a program of the ramdisk): a fresh
    /// address space with the program loaded, a kernel stack whose context starts at `entry`.
    pub fn new(args: &str, entry: extern "C" fn(u64) -> !) -> Result<Self, SpawnError> {
        let args = args.trim();
        if args.is_empty() || args.len() as u64 > mk_abi::MAX_ARGS {
            return Err(SpawnError::BadArguments);
        }
        let name = args.split_whitespace().next().unwrap_or_default();
        let elf = crate::memory::ramdisk::program(name).ok_or(SpawnError::NoSuchProgram)?;
        let mut space = AddressSpace::new().map_err(|_| SpawnError::OutOfMemory)?;
        let loaded = loader::load(&mut space, elf, args).map_err(|e| match e {
            loader::LoadError::Map(crate::memory::space::SpaceError::OutOfFrames) => {
                SpawnError::OutOfMemory
            }
            other => SpawnError::BadProgram(other),
        })?;
        let mut stack = Stack::new();
        let context = stack.prepare(entry, 0);
        Ok(Task {
            program: name.into(),
            space,
            stack,
            context: Some(context),
            start: Some(Start {
                rip: loaded.entry,
                rsp: loaded.stack_top,
                arg0: loaded.args_ptr,
                arg1: loaded.args_len,
            }),
            io_ports: alloc::vec::Vec::new(),
            grants: alloc::vec::Vec::new(),
        })
    }
}
