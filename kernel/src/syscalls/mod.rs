//! The system calls: one function per call behind [`dispatch`], which the hardware layer's
//! `SYSCALL` entry calls with the user's registers. `docs/syscalls.md` is the reference (number,
//! registers, result, errors, preconditions); `mk-abi` holds the numbers and error codes that
//! the user library shares.
//!
//! Nothing a task passes is trusted: pointers are checked against the task's own address space
//! and copied through the kernel's physical map (`memory::space`), lengths against the call's
//! limit, task ids against the scheduler's generations. A bad argument returns an error and
//! changes nothing.

#![forbid(unsafe_code)]

mod ipc;
mod user;

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use mk_abi::{Error, Sys, TaskId};

use crate::arch::syscall::{self, SyscallFrame};
use crate::arch::{cpu, tsc};
use crate::tasks::sched;

/// System calls taken, and refused with an error, since boot (all tasks of this instance).
pub static CALLS: AtomicU64 = AtomicU64::new(0);
pub static ERRORS: AtomicU64 = AtomicU64::new(0);

/// Installs the dispatcher as this instance's system call handler.
pub fn init() -> Result<(), mk_hook::Full> {
    syscall::set_handler(dispatch)
}

/// Sets up `SYSCALL` on the running CPU (every CPU of the instance, as it comes up).
pub fn init_this_cpu() {
    syscall::init_this_cpu();
}

use user::{SysResult, copy_in, current};

/// Decodes the call in `frame`, runs it, and writes its result to `rax` (and `rdx`).
///
/// Each call's function is kept out of line (`#[inline(never)]` on every `sys_*`): inlined,
/// they made this one function with a frame of over 2 KiB, whose prologue and epilogue every
/// call paid, a refused one included (`sys.null` 115 -> 106 instructions without them).
fn dispatch(frame: &mut SyscallFrame) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let (number, a) = frame.call();
    let result = match Sys::from_raw(number) {
        None => Err(Error::NoSuchCall),
        Some(Sys::Exit) => sys_exit(a[0]),
        Some(Sys::Yield) => sys_yield(),
        Some(Sys::Sleep) => sys_sleep(a[0]),
        Some(Sys::Clock) => sys_clock(),
        Some(Sys::Write) => sys_write(a[0], a[1]),
        Some(Sys::Spawn) => sys_spawn(a[0], a[1], a[2], a[3], a[4]),
        Some(Sys::Wait) => sys_wait(a[0]),
        Some(Sys::Kill) => sys_kill(a[0]),
        Some(Sys::Map) => sys_map(a[0], a[1]),
        Some(Sys::Unmap) => sys_unmap(a[0], a[1]),
        Some(Sys::WhoAmI) => sys_whoami(frame),
        Some(Sys::Endpoint) => ipc::sys_endpoint(),
        Some(Sys::Send) => ipc::sys_send(a[0], a[1]),
        Some(Sys::Call) => ipc::sys_call(a[0], a[1], a[2]),
        Some(Sys::Recv) => ipc::sys_recv(a[0], a[1]),
        Some(Sys::Reply) => ipc::sys_reply(a[0]),
        Some(Sys::ReplyRecv) => ipc::sys_reply_recv(a[0], a[1]),
        Some(Sys::CapCopy) => ipc::sys_cap_copy(a[0], a[1], a[2]),
        Some(Sys::CapDrop) => ipc::sys_cap_drop(a[0]),
        Some(Sys::Notification) => ipc::sys_notification(a[0]),
        Some(Sys::Signal) => ipc::sys_signal(a[0], a[1]),
        Some(Sys::IrqBind) => ipc::sys_irq_bind(a[0], a[1], a[2]),
        Some(Sys::IrqAck) => ipc::sys_irq_ack(a[0]),
        Some(Sys::MmioMap) => ipc::sys_mmio_map(a[0]),
        Some(Sys::CapInfo) => ipc::sys_cap_info(a[0], frame),
        Some(Sys::Pages) => ipc::sys_pages(a[0], a[1]),
        Some(Sys::PagesMap) => ipc::sys_pages_map(a[0]),
    };
    if result.is_err() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    frame.rax = mk_abi::encode(result);
    // A task killed while it was in the kernel ends on its way out (`kill` asks the task's CPU
    // to reschedule, so the scheduler is consulted only then).
    if sched::resched_requested() && sched::kill_pending() {
        sched::exit_current(mk_abi::STATUS_KILLED);
    }
}

fn copy_in_str(ptr: u64, len: u64, max: u64) -> Result<String, Error> {
    let bytes = copy_in(ptr, len, max)?;
    String::from_utf8(bytes).map_err(|_| Error::BadArgument)
}

#[inline(never)]
fn sys_exit(status: u64) -> SysResult {
    sched::EXITS.fetch_add(1, Ordering::Relaxed);
    sched::exit_current(status & 0xFF)
}

#[inline(never)]
fn sys_yield() -> SysResult {
    sched::yield_now();
    Ok(0)
}

/// Longest sleep one call takes (a day), so that the deadline cannot overflow.
const MAX_SLEEP_MS: u64 = 86_400_000;

#[inline(never)]
fn sys_sleep(ms: u64) -> SysResult {
    if ms > MAX_SLEEP_MS {
        return Err(Error::BadArgument);
    }
    let until = tsc::read().saturating_add(ms.saturating_mul(tsc::ticks_per_ms()));
    sched::sleep_until(until);
    Ok(0)
}

#[inline(never)]
fn sys_clock() -> SysResult {
    Ok(tsc::nanos())
}

#[inline(never)]
fn sys_write(ptr: u64, len: u64) -> SysResult {
    let text = copy_in(ptr, len, mk_abi::MAX_WRITE)?;
    let me = current()?;
    // Control characters (terminal escapes, NUL...) become '.': a task's text reaches the
    // operator's terminal and the logs, never their control.
    let text: String = String::from_utf8_lossy(&text)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '.'
            } else {
                c
            }
        })
        .collect();
    for line in text.lines() {
        crate::println!("[i{} {me}] {line}", crate::instance::id());
    }
    Ok(len)
}

#[inline(never)]
fn sys_spawn(name_ptr: u64, name_len: u64, args_ptr: u64, args_len: u64, hint: u64) -> SysResult {
    let me = current()?;
    if name_len == 0 {
        return Err(Error::BadLength);
    }
    let name = copy_in_str(name_ptr, name_len, mk_abi::MAX_NAME)?;
    if name.contains(char::is_whitespace) {
        return Err(Error::BadArgument);
    }
    let args = if args_len == 0 {
        String::new()
    } else {
        copy_in_str(args_ptr, args_len, mk_abi::MAX_ARGS - mk_abi::MAX_NAME - 1)?
    };
    let hint = match hint {
        mk_abi::NO_CPU => None,
        n => Some(usize::try_from(n).map_err(|_| Error::BadArgument)?),
    };
    let line = if args.is_empty() {
        name
    } else {
        alloc::format!("{name} {args}")
    };
    sched::spawn(&line, Some(me), hint)
        .map(TaskId::raw)
        .map_err(|e| e.abi())
}

#[inline(never)]
fn sys_wait(raw: u64) -> SysResult {
    let child = TaskId::from_raw(raw);
    if Some(child) == sched::current() {
        return Err(Error::NotChild);
    }
    sched::wait(child).map_err(sched_error)
}

#[inline(never)]
fn sys_kill(raw: u64) -> SysResult {
    let target = TaskId::from_raw(raw);
    if Some(target) == sched::current() {
        return Err(Error::NotChild);
    }
    sched::kill(target).map(|()| 0).map_err(sched_error)
}

fn sched_error(e: mk_sched::SchedError) -> Error {
    match e {
        mk_sched::SchedError::NotChild => Error::NotChild,
        _ => Error::NoSuchTask,
    }
}

#[inline(never)]
fn sys_map(len: u64, flags: u64) -> SysResult {
    if flags != 0 {
        return Err(Error::BadArgument);
    }
    if len == 0 || len > mk_abi::MAX_MAP {
        return Err(Error::BadLength);
    }
    let me = current()?;
    sched::with(|s| {
        let t = s.get_mut(me).ok_or(Error::NoSuchTask)?;
        t.space.map_anon(len).map_err(|e| e.abi_error())
    })
    .ok_or(Error::NoSuchTask)?
}

#[inline(never)]
fn sys_unmap(addr: u64, len: u64) -> SysResult {
    if len == 0 || len > mk_abi::MAX_MAP {
        return Err(Error::BadLength);
    }
    let me = current()?;
    sched::with(|s| {
        let t = s.get_mut(me).ok_or(Error::NoSuchTask)?;
        t.space
            .unmap_anon(addr, len.div_ceil(4096))
            .map(|()| 0)
            .map_err(|e| e.abi_error())
    })
    .ok_or(Error::NoSuchTask)?
}

#[inline(never)]
fn sys_whoami(frame: &mut SyscallFrame) -> SysResult {
    let me = current()?;
    let cpu = u64::from(cpu::current().index);
    frame.rdx = (crate::instance::id().index() as u64) << 32 | cpu;
    Ok(me.raw())
}
