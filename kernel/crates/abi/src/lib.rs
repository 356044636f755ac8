//! The system call ABI of multikernel, shared by the kernel (which decodes calls) and the user
//! library (which makes them). `docs/syscalls.md` is the reference; this crate is its code.
//!
//! # Convention (x86_64 `syscall`)
//!
//! | register | on entry            | on return                                   |
//! |----------|---------------------|---------------------------------------------|
//! | `rax`    | call number ([`Sys`]) | result: `>= 0` a value, `< 0` an [`Error`] |
//! | `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9` | arguments 0 to 5 | `rdx`: second value (`whoami`) |
//! | `rcx`, `r11` | —           | clobbered by `syscall`/`sysret`             |
//!
//! Every other register is preserved. A negative `rax` is `-(error code)`; [`decode`] turns the
//! raw pair into a `Result`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

/// System call numbers (in `rax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Sys {
    /// `exit(status)`: ends the calling task. Does not return.
    Exit = 0,
    /// `yield()`: gives the CPU to the next ready task. Returns 0.
    Yield = 1,
    /// `sleep(ms)`: blocks for at least `ms` milliseconds. Returns 0.
    Sleep = 2,
    /// `clock()`: nanoseconds since this instance booted (monotonic).
    Clock = 3,
    /// `write(ptr, len)`: writes `len <= MAX_WRITE` bytes of UTF-8 to the instance's console,
    /// prefixed with instance and task. Returns `len`.
    Write = 4,
    /// `spawn(name_ptr, name_len, args_ptr, args_len, cpu_hint)`: starts program `name` from
    /// the ramdisk with the argument string `args` (words split by spaces), on CPU `cpu_hint`
    /// of this instance or anywhere ([`NO_CPU`]). Returns the new task's id ([`TaskId::raw`]).
    Spawn = 5,
    /// `wait(task)`: blocks until the caller's child `task` ends; returns its exit status
    /// (`0..=255` from `exit`, or a `KILLED_*`/`FAULT_*` status).
    Wait = 6,
    /// `kill(task)`: ends task `task` of this instance. Returns 0.
    Kill = 7,
    /// `map(len, flags)`: maps `len` bytes (rounded up to pages) of zeroed anonymous memory,
    /// readable and writable, never executable. Returns its address.
    Map = 8,
    /// `unmap(addr, len)`: unmaps pages the caller mapped with `map`. Returns 0.
    Unmap = 9,
    /// `whoami()`: returns the caller's task id in `rax` and `instance << 32 | cpu` in `rdx`.
    WhoAmI = 10,
    /// `endpoint()`: creates an endpoint owned by the caller (destroyed when it exits).
    /// Returns a handle with `SEND | RECV | GRANT` rights.
    Endpoint = 11,
    /// `send(handle, msg_ptr)`: sends the [`IpcMsg`] at `msg_ptr` through the endpoint
    /// capability `handle` (right `SEND`) without waiting: `Busy` when the endpoint's queue
    /// (of this instance) or the mailbox to its instance is full. A one-way message that
    /// finds a remote endpoint full or gone is dropped there and counted (`dropped`).
    /// Returns 0.
    Send = 12,
    /// `call(handle, msg_ptr, timeout_ms)`: sends the message at `msg_ptr` and waits for the
    /// reply, which overwrites it (label, data, capabilities, badge 0, sender: the replier).
    /// `timeout_ms` 0 means [`DEFAULT_CALL_TIMEOUT_MS`]. Returns the reply's label.
    Call = 13,
    /// `recv(handle, msg_ptr)`: waits for a message or notification on the endpoint `handle`
    /// (right `RECV`) and writes it at `msg_ptr`. Returns a [`Received`] kind.
    Recv = 14,
    /// `reply(msg_ptr)`: answers the last call the caller received and has not answered (a
    /// task holds up to 16; a 17th received answers the oldest with `Busy`). Returns 0;
    /// `NothingToReply` if there is none.
    Reply = 15,
    /// `reply_recv(handle, msg_ptr)`: `reply(msg_ptr)` then `recv(handle, msg_ptr)` (the
    /// reply is sent even if the receive then fails; with no call to answer it only
    /// receives). Returns what `recv` returns.
    ReplyRecv = 16,
    /// `cap_copy(handle, rights, badge)`: a new handle to the same object with
    /// `rights & old rights`; `badge` (nonzero) is set if the old one had none. Returns it.
    CapCopy = 17,
    /// `cap_drop(handle)`: deletes the caller's capability. Returns 0.
    CapDrop = 18,
    /// `notification(endpoint)`: creates a notification delivered through the endpoint
    /// `endpoint` (right `RECV`): its bits arrive at that endpoint's `recv`. Returns a handle
    /// with `SEND` (signal) rights.
    Notification = 19,
    /// `signal(handle, bits)`: ORs `bits` into the notification `handle` (right `SEND`).
    Signal = 20,
    /// `irq_bind(irq, notification, bit)`: every interrupt of the line of IRQ capability
    /// `irq` sets bit `bit` (0..64) of the notification, and masks the line until
    /// `irq_ack`. Returns 0.
    IrqBind = 21,
    /// `irq_ack(irq)`: unmasks the line after an interrupt was handled. Returns 0.
    IrqAck = 22,
    /// `mmio_map(handle)`: maps the MMIO range of the capability into the caller (uncached,
    /// read-write, never executable). Returns its address.
    MmioMap = 23,
    /// `cap_info(handle)`: what the capability is: `kind | rights << 8 | instance << 16`
    /// in `rax`, the object's id in `rdx`. (For tests and tools.)
    CapInfo = 24,
    /// `pages(addr, len)`: takes the caller's pages `addr..addr + len` (mapped with `map`,
    /// page aligned, at most [`ipc::MAX_GRANT_PAGES`]) out of its address space into a page
    /// run; returns a capability to it (`SEND | GRANT`, move only) to pass in a message.
    Pages = 25,
    /// `pages_map(handle)`: maps the page run into the caller (read-write, never
    /// executable) and consumes the capability. Returns the address (the length: `cap_info`).
    PagesMap = 26,
}

/// How many system calls there are (numbers `0..COUNT`).
pub const COUNT: u64 = 27;

impl Sys {
    /// The call with number `n`, if there is one.
    pub const fn from_raw(n: u64) -> Option<Self> {
        Some(match n {
            0 => Self::Exit,
            1 => Self::Yield,
            2 => Self::Sleep,
            3 => Self::Clock,
            4 => Self::Write,
            5 => Self::Spawn,
            6 => Self::Wait,
            7 => Self::Kill,
            8 => Self::Map,
            9 => Self::Unmap,
            10 => Self::WhoAmI,
            11 => Self::Endpoint,
            12 => Self::Send,
            13 => Self::Call,
            14 => Self::Recv,
            15 => Self::Reply,
            16 => Self::ReplyRecv,
            17 => Self::CapCopy,
            18 => Self::CapDrop,
            19 => Self::Notification,
            20 => Self::Signal,
            21 => Self::IrqBind,
            22 => Self::IrqAck,
            23 => Self::MmioMap,
            24 => Self::CapInfo,
            25 => Self::Pages,
            26 => Self::PagesMap,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::Yield => "yield",
            Self::Sleep => "sleep",
            Self::Clock => "clock",
            Self::Write => "write",
            Self::Spawn => "spawn",
            Self::Wait => "wait",
            Self::Kill => "kill",
            Self::Map => "map",
            Self::Unmap => "unmap",
            Self::WhoAmI => "whoami",
            Self::Endpoint => "endpoint",
            Self::Send => "send",
            Self::Call => "call",
            Self::Recv => "recv",
            Self::Reply => "reply",
            Self::ReplyRecv => "reply_recv",
            Self::CapCopy => "cap_copy",
            Self::CapDrop => "cap_drop",
            Self::Notification => "notification",
            Self::Signal => "signal",
            Self::IrqBind => "irq_bind",
            Self::IrqAck => "irq_ack",
            Self::MmioMap => "mmio_map",
            Self::CapInfo => "cap_info",
            Self::Pages => "pages",
            Self::PagesMap => "pages_map",
        }
    }
}

/// `spawn`'s `cpu_hint` for "any CPU".
pub const NO_CPU: u64 = u64::MAX;
/// Most bytes one `write` takes.
pub const MAX_WRITE: u64 = 4096;
/// Most bytes of a program name or an argument string.
pub const MAX_NAME: u64 = 64;
pub const MAX_ARGS: u64 = 1024;
/// Most bytes one `map` call maps (16 MiB).
pub const MAX_MAP: u64 = 16 << 20;

/// Exit status of a task ended by `kill` (from a task or the shell).
pub const STATUS_KILLED: u64 = 256;
/// Exit status of a task ended by a fault: `STATUS_FAULT + vector` (14 page fault, 13 general
/// protection, 0 divide error, 6 invalid opcode...).
pub const STATUS_FAULT: u64 = 512;

/// What a system call refused, and whose fault it is: every one of these is the caller's
/// (a bad argument) or the instance's state (`OutOfMemory`, `TooManyTasks`); the kernel never
/// fails a call for its own reasons without saying so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Error {
    /// No system call has this number (the caller's `rax`).
    NoSuchCall = 1,
    /// A pointer argument is not in the caller's mapped user memory with the access needed.
    BadAddress = 2,
    /// A length is zero where it must not be, or beyond the call's limit.
    BadLength = 3,
    /// No task of this instance has this id (or it ended and its slot was reused).
    NoSuchTask = 4,
    /// The ramdisk has no program of this name.
    NoSuchProgram = 5,
    /// This instance has no memory left for the request.
    OutOfMemory = 6,
    /// This instance's task table is full.
    TooManyTasks = 7,
    /// The task is not the caller's child (wait), or is the caller itself (wait, kill).
    NotChild = 8,
    /// Another argument is out of range (a CPU hint that names no CPU, unknown flags, text
    /// that is not UTF-8, a program that is not a valid ELF).
    BadArgument = 9,
    /// The handle names no capability of the caller (never was, dropped, or moved away).
    NoSuchCap = 10,
    /// The capability lacks the right the call needs, or is of the wrong kind.
    NoRight = 11,
    /// The endpoint's queue or the mailbox to its instance is full (`send`); try again.
    Busy = 12,
    /// The object is gone: its owner exited (an endpoint) or it was destroyed. A fresh
    /// capability is needed (look the service up again).
    Stale = 13,
    /// No reply within the call's timeout.
    TimedOut = 14,
    /// The instance that hosts the object stopped (crashed, shut down, respawned).
    PeerDead = 15,
    /// `reply` with no call received and unanswered.
    NothingToReply = 16,
    /// The name service has no such name.
    NotFound = 17,
    /// The name service already has this name (registered by a live endpoint).
    Exists = 18,
    /// The caller's capability table is full.
    TooManyCaps = 19,
}

impl Error {
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => Self::NoSuchCall,
            2 => Self::BadAddress,
            3 => Self::BadLength,
            4 => Self::NoSuchTask,
            5 => Self::NoSuchProgram,
            6 => Self::OutOfMemory,
            7 => Self::TooManyTasks,
            8 => Self::NotChild,
            9 => Self::BadArgument,
            10 => Self::NoSuchCap,
            11 => Self::NoRight,
            12 => Self::Busy,
            13 => Self::Stale,
            14 => Self::TimedOut,
            15 => Self::PeerDead,
            16 => Self::NothingToReply,
            17 => Self::NotFound,
            18 => Self::Exists,
            19 => Self::TooManyCaps,
            _ => return None,
        })
    }

    pub const fn code(self) -> u64 {
        self as u64
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoSuchCall => "no such system call",
            Self::BadAddress => "bad address",
            Self::BadLength => "bad length",
            Self::NoSuchTask => "no such task",
            Self::NoSuchProgram => "no such program",
            Self::OutOfMemory => "out of memory",
            Self::TooManyTasks => "too many tasks",
            Self::NotChild => "not a child of the caller",
            Self::BadArgument => "bad argument",
            Self::NoSuchCap => "no such capability",
            Self::NoRight => "capability lacks the right",
            Self::Busy => "busy",
            Self::Stale => "object gone (stale capability)",
            Self::TimedOut => "timed out",
            Self::PeerDead => "the object's instance stopped",
            Self::NothingToReply => "nothing to reply to",
            Self::NotFound => "no such name",
            Self::Exists => "name already registered",
            Self::TooManyCaps => "capability table full",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The highest error code.
pub const LAST_ERROR: u64 = 19;

/// The `rax` value for a result.
pub const fn encode(result: Result<u64, Error>) -> u64 {
    match result {
        Ok(v) => v,
        Err(e) => (e.code() as i64).wrapping_neg() as u64,
    }
}

/// The result a raw `rax` carries. Values from `-4095` to `-1` are errors (codes unknown to
/// this version read as `NoSuchCall`); everything else is a value.
pub const fn decode(rax: u64) -> Result<u64, Error> {
    let signed = rax as i64;
    if signed < 0 && signed >= -4095 {
        match Error::from_code(signed.unsigned_abs()) {
            Some(e) => Err(e),
            None => Err(Error::NoSuchCall),
        }
    } else {
        Ok(rax)
    }
}

/// A task's id within its instance: a slot index and the slot's generation, so that an id of
/// a task that ended never names the task that reuses its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub index: u32,
    pub generation: u32,
}

impl TaskId {
    /// The register encoding: `generation << 32 | index`.
    pub const fn raw(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    pub const fn from_raw(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

/// `t3.1`: slot 3, generation 1.
impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}.{}", self.index, self.generation)
    }
}

pub mod ipc;
pub use ipc::{Handle, IpcMsg, Received, Rights};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_round_trips() {
        for n in 0..COUNT {
            let s = Sys::from_raw(n).expect("numbers 0..COUNT are calls");
            assert_eq!(s as u64, n);
        }
        assert_eq!(Sys::from_raw(COUNT), None);
        assert_eq!(Sys::from_raw(u64::MAX), None);
    }

    #[test]
    fn results_round_trip() {
        for code in 1..=LAST_ERROR {
            let e = Error::from_code(code).expect("codes 1..=LAST_ERROR are errors");
            assert_eq!(decode(encode(Err(e))), Err(e));
        }
        for v in [0, 1, 4096, u64::MAX / 2, (-4096i64) as u64] {
            assert_eq!(decode(encode(Ok(v))), Ok(v));
        }
    }

    #[test]
    fn task_ids_round_trip() {
        let t = TaskId {
            index: 7,
            generation: 3,
        };
        assert_eq!(TaskId::from_raw(t.raw()), t);
        assert_eq!(t.to_string(), "t7.3");
    }
}
