//! The user library of multikernel: what a ring-3 program links with.
//!
//! - system calls: [`raw_syscall`] and safe wrappers ([`exit`], [`yield_now`], [`sleep_ms`],
//!   [`clock_ns`], [`write`], [`spawn`], [`wait`], [`kill`], [`map`], [`unmap`], [`whoami`]),
//!   plus [`Mapping`], anonymous memory that unmaps itself;
//! - capability IPC: [`ipc`] (endpoints, messages, capabilities, notifications, interrupts,
//!   the name service), over [`syscall_msg`]; I/O ports: [`inb`], [`outb`];
//! - [`print!`] and [`println!`]: formatted into a buffer on the stack, one `write` per line
//!   when the line fits ([`LINE`] bytes);
//! - [`entry!`]: defines `_start` for a `fn main(args: Args) -> impl Exit`;
//! - the panic handler: prints the panic and exits with status [`PANIC_STATUS`].
//!
//! # Entry ABI (the kernel's loader follows it)
//!
//! The kernel enters the program's ELF entry point `_start` in ring 3 with `rdi` = a user
//! pointer to the argument string (UTF-8, not NUL-terminated, words separated by spaces, the
//! first word the program's name), `rsi` = its length, and `rsp` 16-byte aligned minus 8, as
//! just after a `call`: exactly a SysV `extern "C" fn(*const u8, usize)`. Returning from
//! `main` exits with status 0 (or what `main` returned, see [`Exit`]). See
//! `docs/user-programs.md`.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

// The only module with `unsafe`.
#[allow(unsafe_code)]
mod sys;

use core::fmt::{self, Write as _};

pub use mk_abi::{self as abi, Error, Sys, TaskId};
#[doc(hidden)]
pub use sys::_start;
pub use sys::{
    Mapping, Mmio, USER_END, cli, div, hlt, inb, outb, raw_syscall, rdtsc, read_byte, syscall_buf,
    syscall_msg, ud2, write_byte, writes_caller_memory,
};

pub mod ipc;

/// Exit status of a task that panicked.
pub const PANIC_STATUS: u64 = 101;
/// Size of the stack buffer `print!`/`println!` format into: longer output goes out in
/// several `write` calls.
pub const LINE: usize = 512;

fn call(n: Sys, a: [u64; 6]) -> Result<u64, Error> {
    mk_abi::decode(raw_syscall(n as u64, a[0], a[1], a[2], a[3], a[4], a[5]).0)
}

/// Ends the task with `status` (`0..=255` by convention).
pub fn exit(status: u64) -> ! {
    sys::exit(status)
}

/// Gives the CPU to the next ready task.
pub fn yield_now() {
    let _ = call(Sys::Yield, [0; 6]);
}

/// Blocks for at least `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    let _ = call(Sys::Sleep, [ms, 0, 0, 0, 0, 0]);
}

/// Nanoseconds since this instance booted.
pub fn clock_ns() -> u64 {
    call(Sys::Clock, [0; 6]).unwrap_or(0)
}

/// Writes `text` to the instance's console in one call (at most `mk_abi::MAX_WRITE` bytes:
/// longer text goes out in several calls, split at character boundaries).
pub fn write(text: &str) -> Result<(), Error> {
    let mut rest = text;
    while !rest.is_empty() {
        let (chunk, tail) = split_at_most(rest, mk_abi::MAX_WRITE as usize);
        call(
            Sys::Write,
            [chunk.as_ptr() as u64, chunk.len() as u64, 0, 0, 0, 0],
        )?;
        rest = tail;
    }
    Ok(())
}

/// `text` split after at most `max` bytes, at a character boundary (at least one character
/// when `max` is smaller than the first one, so that progress is made).
fn split_at_most(text: &str, max: usize) -> (&str, &str) {
    if text.len() <= max {
        return (text, "");
    }
    let mut at = max;
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    if at == 0 {
        at = text.chars().next().map_or(text.len(), char::len_utf8);
    }
    text.split_at(at)
}

/// Starts program `name` from the ramdisk with the argument string `args` (its first word
/// should be `name`, by convention), on CPU `cpu_hint` of this instance or anywhere (`None`).
pub fn spawn(name: &str, args: &str, cpu_hint: Option<u32>) -> Result<TaskId, Error> {
    let cpu = cpu_hint.map_or(mk_abi::NO_CPU, u64::from);
    call(
        Sys::Spawn,
        [
            name.as_ptr() as u64,
            name.len() as u64,
            args.as_ptr() as u64,
            args.len() as u64,
            cpu,
            0,
        ],
    )
    .map(TaskId::from_raw)
}

/// Waits until the caller's child `task` ends; returns its exit status (`0..=255` from
/// `exit`, `mk_abi::STATUS_KILLED`, or `mk_abi::STATUS_FAULT + vector`).
pub fn wait(task: TaskId) -> Result<u64, Error> {
    call(Sys::Wait, [task.raw(), 0, 0, 0, 0, 0])
}

/// Ends task `task` of this instance.
pub fn kill(task: TaskId) -> Result<(), Error> {
    call(Sys::Kill, [task.raw(), 0, 0, 0, 0, 0]).map(|_| ())
}

/// Maps `len` bytes (rounded up to pages) of zeroed, readable and writable memory; returns its
/// address. [`Mapping`] is the safe way to use it.
pub fn map(len: usize) -> Result<*mut u8, Error> {
    call(Sys::Map, [len as u64, 0, 0, 0, 0, 0]).map(|a| a as *mut u8)
}

/// Unmaps `len` bytes at `ptr`, which [`map`] returned. Touching them afterwards faults.
pub fn unmap(ptr: *mut u8, len: usize) -> Result<(), Error> {
    call(Sys::Unmap, [ptr as u64, len as u64, 0, 0, 0, 0]).map(|_| ())
}

/// The caller's task id, instance and CPU (the CPU it runs on at the time of the call).
pub fn whoami() -> (TaskId, u32, u32) {
    let (rax, rdx) = raw_syscall(Sys::WhoAmI as u64, 0, 0, 0, 0, 0, 0);
    (TaskId::from_raw(rax), (rdx >> 32) as u32, rdx as u32)
}

/// A formatting buffer of `N` bytes on the stack; full, it flushes to the console.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Where the output goes (the console; tests capture it).
    sink: fn(&str),
}

fn console_sink(text: &str) {
    let _ = write(text);
}

impl<const N: usize> LineBuf<N> {
    pub const fn new() -> Self {
        Self::with_sink(console_sink)
    }

    pub const fn with_sink(sink: fn(&str)) -> Self {
        Self {
            buf: [0; N],
            len: 0,
            sink,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            // Only whole `&str`s are ever appended, split at character boundaries.
            if let Ok(text) = core::str::from_utf8(&self.buf[..self.len]) {
                (self.sink)(text);
            }
            self.len = 0;
        }
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while !rest.is_empty() {
            let room = N - self.len;
            let (chunk, tail) = split_at_most(rest, room);
            if chunk.len() > room {
                // Not even one character fits: make room.
                self.flush();
                continue;
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk.as_bytes());
            self.len += chunk.len();
            rest = tail;
            if self.len == N {
                self.flush();
            }
        }
        Ok(())
    }
}

impl<const N: usize> Drop for LineBuf<N> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What `print!` and `println!` call.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>, newline: bool) {
    let mut buf = LineBuf::<LINE>::new();
    let _ = buf.write_fmt(args);
    if newline {
        let _ = buf.write_str("\n");
    }
}

/// Prints to the instance's console (one `write` when it fits in [`LINE`] bytes).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(::core::format_args!($($arg)*), false) };
}

/// Prints a line to the instance's console (one `write` when it fits in [`LINE`] bytes).
#[macro_export]
macro_rules! println {
    () => { $crate::_print(::core::format_args!(""), true) };
    ($($arg:tt)*) => { $crate::_print(::core::format_args!($($arg)*), true) };
}

/// The program's argument string: words separated by spaces, the first one its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    text: &'static str,
}

impl Args {
    /// Arguments from a string (what `_start` does with the kernel's; tests).
    pub const fn new(text: &'static str) -> Self {
        Self { text }
    }

    /// The whole string, name included.
    pub fn as_str(&self) -> &'static str {
        self.text
    }

    /// The program's name (the first word), empty if there is none.
    pub fn name(&self) -> &'static str {
        self.text.split_whitespace().next().unwrap_or("")
    }

    /// The arguments after the name.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + 'static {
        self.text.split_whitespace().skip(1)
    }

    /// Argument `i` after the name (0 is the first argument).
    pub fn get(&self, i: usize) -> Option<&'static str> {
        self.iter().nth(i)
    }

    /// Argument `i` as a number (decimal, or hexadecimal with `0x`), if present and valid.
    pub fn number(&self, i: usize) -> Option<u64> {
        parse_number(self.get(i)?)
    }
}

/// `123` or `0x7b` (underscores allowed) as a number.
pub fn parse_number(text: &str) -> Option<u64> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(d))?;
        any = true;
    }
    any.then_some(value)
}

/// What `main` may return: its exit status.
pub trait Exit {
    fn status(self) -> u64;
}

impl Exit for () {
    fn status(self) -> u64 {
        0
    }
}

impl Exit for u64 {
    fn status(self) -> u64 {
        self
    }
}

/// `Err(e)` prints `error: e` and exits with status 1.
impl<E: fmt::Display> Exit for Result<(), E> {
    fn status(self) -> u64 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                println!("error: {e}");
                1
            }
        }
    }
}

/// Defines the program's entry point `_start` for `fn main(args: Args) -> R` where `R:`
/// [`Exit`] (`()`, `u64` or `Result<(), impl Display>`):
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// #![forbid(unsafe_code)]
/// use mk_user::{Args, println};
/// mk_user::entry!(main);
/// fn main(args: Args) {
///     println!("hello from {}", args.name());
/// }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn _start(args: *const u8, len: usize) -> ! {
            // SAFETY: the kernel enters `_start` with its argument string in rdi/rsi (the
            // entry ABI), which are this function's two arguments.
            unsafe { $crate::_start(args, len, $main) }
        }
    };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut buf = LineBuf::<LINE>::new();
    let _ = writeln!(buf, "panic: {info}");
    buf.flush();
    exit(PANIC_STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static OUT: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn capture(text: &str) {
        OUT.lock().unwrap().push(text.to_string());
    }

    #[test]
    fn line_buffer_writes_whole_lines_and_splits_long_ones() {
        OUT.lock().unwrap().clear();
        {
            let mut b = LineBuf::<8>::with_sink(capture);
            write!(b, "abc {}", 12).unwrap();
            b.flush();
            write!(b, "0123456789é").unwrap();
        }
        let out = OUT.lock().unwrap().clone();
        assert_eq!(out, ["abc 12", "01234567", "89é"]);
    }

    #[test]
    fn split_keeps_characters_whole() {
        assert_eq!(split_at_most("héllo", 2), ("h", "éllo"));
        assert_eq!(split_at_most("éa", 1), ("é", "a"));
        assert_eq!(split_at_most("abc", 5), ("abc", ""));
    }

    #[test]
    fn arguments() {
        let a = Args::new("spin  3 0x10 x");
        assert_eq!(a.name(), "spin");
        assert_eq!(a.iter().collect::<Vec<_>>(), ["3", "0x10", "x"]);
        assert_eq!(a.number(0), Some(3));
        assert_eq!(a.number(1), Some(16));
        assert_eq!(a.number(2), None);
        assert_eq!(a.get(3), None);
        assert_eq!(Args::new("").name(), "");
        assert_eq!(parse_number("18446744073709551616"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("1_000"), Some(1000));
    }
}
