//! The kernel console: every log line goes to the serial port (COM1) and to this instance's
//! pane on the framebuffer.
//!
//! Real machines often have no serial port, and QEMU tests read only serial; so both sinks get
//! every line. A line is formatted into a fixed buffer first and written under one lock with
//! interrupts off, so lines from different CPUs (and, later, instances that share the serial
//! port) never interleave mid-line.

mod framebuffer;
mod serial;
mod shared;

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};

use bootloader_api::BootInfo;
use bootloader_api::info::Optional;
use spin::Mutex;

use crate::arch::tsc;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        }
    }
}

/// Lines above this level are dropped.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Serialises whole lines across CPUs.
static LINE_LOCK: Mutex<()> = Mutex::new(());

/// Brings up both sinks. Called once, first thing at boot, by instance 0 (which owns the
/// serial port's configuration and the framebuffer): the console takes the framebuffer out of
/// `boot_info` (nothing else draws on it).
pub fn init(boot_info: &mut BootInfo) {
    serial::init();
    let fb = core::mem::replace(&mut boot_info.framebuffer, Optional::None);
    if let Some(fb) = fb.into_option() {
        framebuffer::init(fb);
    }
}

/// For instances other than 0: write to the serial port instance 0 configured, without
/// resetting it (a reset would garble instance 0's output). The framebuffer comes later
/// (`attach_framebuffer`), once this instance can map it.
pub fn init_guest() {
    serial::attach();
}

use shared::shared;
pub use shared::use_shared;

/// Shows (or hides) debug lines.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// A line being built in a fixed buffer; overlong lines are cut, never allocated.
struct LineBuf {
    bytes: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        // A line cut at the buffer's end is cut between characters, never inside one: the
        // log stays UTF-8 (the test harness reads it as text).
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Writes one log line: `[i<instance> c<cpu>] LEVEL message`.
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if level as u8 > MAX_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let mut line = LineBuf {
        bytes: [0; 512],
        len: 0,
    };
    let (instance, cpu) = crate::arch::cpu::log_identity();
    let _ = write!(line, "[i{instance} c{cpu}] {} ", level.tag());
    let _ = line.write_fmt(args);
    write_raw_line(&line.bytes[..line.len]);
}

/// Writes a line with no prefix (tables, test markers the harness parses).
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut line = LineBuf {
        bytes: [0; 512],
        len: 0,
    };
    let _ = line.write_fmt(args);
    write_raw_line(&line.bytes[..line.len]);
}

fn write_raw_line(bytes: &[u8]) {
    locked(|| {
        serial::write_bytes(bytes);
        serial::write_bytes(b"\n");
        // Still under the console lock: panes are re-laid under it (see framebuffer.rs).
        framebuffer::write_line(bytes);
    });
}

/// The shell's echo on the serial terminal: raw bytes (characters, escape sequences), no
/// newline added, under the same locks as whole lines so they never land inside one.
pub fn shell_echo(bytes: &[u8]) {
    locked(|| serial::write_bytes(bytes));
}

/// Runs `f` holding this instance's line lock and the cross-instance console lock (once the
/// shared region exists), interrupts off: how every line and every drawing goes out.
fn locked<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _guard = LINE_LOCK.lock();
        // Bounded (`CONSOLE_WAIT`): after it the line goes out without the lock, counted in
        // the lock's `timed_out`, rather than freezing this CPU with interrupts off.
        let _shared = shared().map(|r| {
            r.console().lock_or_bypass(
                crate::instance::id(),
                tsc::wait_bound(mk_shared::CONSOLE_WAIT),
                tsc::read,
                core::hint::spin_loop,
            )
        });
        f()
    })
}

/// The line being typed, on the framebuffer: redrawn in place on the pane's current row.
pub fn shell_input(prompt: &str, line: &str) {
    locked(|| framebuffer::input_line(&[prompt.as_bytes(), line.as_bytes()]));
}

/// A typed line, entered: stays on the framebuffer as a line of the log.
pub fn shell_commit(prompt: &str, line: &str) {
    let mut text = LineBuf {
        bytes: [0; 512],
        len: 0,
    };
    let _ = text.write_str(prompt);
    let _ = text.write_str(line);
    locked(|| framebuffer::write_line(&text.bytes[..text.len]));
}

/// Re-lays this instance's pane if instances started, stopped or died, and refreshes its
/// header; at most every `REFRESH_MS` (the poll hook calls it once per timer tick).
pub fn refresh_screen() {
    let now = crate::arch::tsc::read();
    let every = REFRESH_MS * crate::arch::tsc::ticks_per_ms();
    let last = LAST_REFRESH.load(Ordering::Relaxed);
    if now.saturating_sub(last) < every
        || LAST_REFRESH
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    locked(framebuffer::refresh);
}

const REFRESH_MS: u64 = 100;
static LAST_REFRESH: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Instance 0: the framebuffer, for the boot descriptors of the other instances.
pub fn framebuffer_desc() -> crate::platform::descriptor::FramebufferDesc {
    framebuffer::describe()
}

/// Another instance: maps the framebuffer instance 0 described and draws its pane on it.
pub fn attach_framebuffer(desc: &crate::platform::descriptor::FramebufferDesc) {
    if desc.phys == 0 || desc.len == 0 {
        return;
    }
    match crate::memory::mmio::map_memory(desc.phys, desc.len) {
        // SAFETY: `virt` maps the whole framebuffer, writable, for good; only the console
        // draws on it.
        Ok(virt) => unsafe { framebuffer::attach(virt, desc) },
        Err(e) => crate::warn!("framebuffer not mapped: {e}"),
    }
}

/// A byte typed on the serial terminal, if one waits.
pub fn serial_read() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(serial::read_byte)
}

/// Last-resort output for the panic handler: takes no lock of this instance that the panicking
/// CPU might hold. It does queue for the cross-instance console lock, for `EMERGENCY_WAIT` at
/// most (then it writes anyway), so that the other instances' lines, which go on, do not cut
/// into the report.
pub fn emergency_write(args: fmt::Arguments<'_>) {
    let mut line = LineBuf {
        bytes: [0; 512],
        len: 0,
    };
    let (instance, cpu) = crate::arch::cpu::log_identity();
    let _ = write!(line, "[i{instance} c{cpu}] ");
    let _ = line.write_fmt(args);
    line.len = line.len.min(line.bytes.len() - 1);
    line.bytes[line.len] = b'\n';
    let text = &line.bytes[..=line.len];
    let shared = shared().map(|r| {
        r.console().lock_or_bypass(
            instance,
            tsc::wait_bound(mk_shared::EMERGENCY_WAIT),
            tsc::read,
            core::hint::spin_loop,
        )
    });
    serial::force_write_bytes(text);
    framebuffer::force_write_line(&text[..text.len() - 1]);
    drop(shared);
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Error, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Warn, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Info, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::console::log($crate::console::Level::Debug, format_args!($($arg)*)) };
}
/// A raw line with no prefix, for output that programs parse (test markers, tables).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print_line(format_args!($($arg)*)) };
}
