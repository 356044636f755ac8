//! The IPC system calls (`docs/ipc.md`): one function per call. Each copies the task's
//! message in (checked against the task's own address space), lets `services::ipc` do the
//! work, and copies the result out; a bad pointer fails before anything is sent.

use mk_abi::ipc::{Handle, IPC_MSG_SIZE, IpcMsg};
use mk_abi::{Error, Received};

use crate::arch::syscall::SyscallFrame;
use crate::services::ipc;
use crate::tasks::sched;

use super::user::{self, SysResult, current};

fn read_msg(ptr: u64) -> Result<IpcMsg, Error> {
    let mut b = [0u8; IPC_MSG_SIZE];
    user::copy_in_to(ptr, &mut b)?;
    Ok(IpcMsg::from_bytes(&b))
}

fn write_msg(ptr: u64, msg: &IpcMsg) -> Result<(), Error> {
    user::copy_out(ptr, &msg.to_bytes())
}

/// Fails with `BadAddress` before anything happens if the task could not take a message at
/// `ptr` (a receive must not consume a message it cannot deliver).
fn check_writable(ptr: u64) -> Result<(), Error> {
    user::check_out(ptr, IPC_MSG_SIZE as u64)
}

#[inline(never)]
pub fn sys_endpoint() -> SysResult {
    ipc::create_endpoint(current()?).map(|h| h.0)
}

#[inline(never)]
pub fn sys_send(h: u64, ptr: u64) -> SysResult {
    let msg = read_msg(ptr)?;
    ipc::send(current()?, Handle(h), &msg).map(|()| 0)
}

#[inline(never)]
pub fn sys_call(h: u64, ptr: u64, timeout_ms: u64) -> SysResult {
    let mut msg = read_msg(ptr)?;
    check_writable(ptr)?;
    let label = ipc::call(current()?, Handle(h), &mut msg, timeout_ms)?;
    write_msg(ptr, &msg)?;
    Ok(label)
}

fn recv_into(h: u64, ptr: u64) -> SysResult {
    check_writable(ptr)?;
    recv_checked(h, ptr)
}

/// [`recv_into`] once `ptr` was found writable (only the task itself changes its address
/// space, and it is in this system call).
fn recv_checked(h: u64, ptr: u64) -> SysResult {
    let mut msg = IpcMsg::empty();
    let kind: Received = ipc::recv(current()?, Handle(h), &mut msg)?;
    write_msg(ptr, &msg)?;
    Ok(kind as u64)
}

#[inline(never)]
pub fn sys_recv(h: u64, ptr: u64) -> SysResult {
    recv_into(h, ptr)
}

#[inline(never)]
pub fn sys_reply(ptr: u64) -> SysResult {
    let msg = read_msg(ptr)?;
    ipc::reply(current()?, &msg).map(|()| 0)
}

/// With no call to answer (a server's first round), it only receives.
#[inline(never)]
pub fn sys_reply_recv(h: u64, ptr: u64) -> SysResult {
    let msg = read_msg(ptr)?;
    check_writable(ptr)?;
    match ipc::reply(current()?, &msg) {
        Ok(()) | Err(Error::NothingToReply) => {}
        Err(e) => return Err(e),
    }
    recv_checked(h, ptr)
}

#[inline(never)]
pub fn sys_cap_copy(h: u64, rights: u64, badge: u64) -> SysResult {
    ipc::copy_cap(current()?, Handle(h), rights, badge).map(|h| h.0)
}

#[inline(never)]
pub fn sys_cap_drop(h: u64) -> SysResult {
    ipc::drop_cap(current()?, Handle(h)).map(|()| 0)
}

#[inline(never)]
pub fn sys_notification(ep: u64) -> SysResult {
    ipc::create_notification(current()?, Handle(ep)).map(|h| h.0)
}

#[inline(never)]
pub fn sys_signal(h: u64, bits: u64) -> SysResult {
    ipc::signal(current()?, Handle(h), bits).map(|()| 0)
}

#[inline(never)]
pub fn sys_irq_bind(irq: u64, n: u64, bit: u64) -> SysResult {
    ipc::irq_bind(current()?, Handle(irq), Handle(n), bit).map(|_| 0)
}

#[inline(never)]
pub fn sys_irq_ack(irq: u64) -> SysResult {
    let line = ipc::irq_line(current()?, Handle(irq))?;
    crate::services::irq::acknowledge_for_task(usize::from(line)).map(|()| 0)
}

#[inline(never)]
pub fn sys_mmio_map(h: u64) -> SysResult {
    let me = current()?;
    let (phys, pages) = ipc::mmio(me, Handle(h))?;
    sched::with(|s| {
        let t = s.get_mut(me).ok_or(Error::NoSuchTask)?;
        t.space
            .map_device(phys, u64::from(pages) * 4096)
            .map_err(|e| e.abi_error())
    })
    .ok_or(Error::NoSuchTask)?
}

#[inline(never)]
pub fn sys_cap_info(h: u64, frame: &mut SyscallFrame) -> SysResult {
    let (info, object) = ipc::cap_info(current()?, Handle(h))?;
    frame.rdx = object;
    Ok(info)
}

#[inline(never)]
pub fn sys_pages(addr: u64, len: u64) -> SysResult {
    ipc::grant_pages(current()?, addr, len).map(|h| h.0)
}

#[inline(never)]
pub fn sys_pages_map(h: u64) -> SysResult {
    ipc::map_pages(current()?, Handle(h))
}
