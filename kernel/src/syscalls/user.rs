//! The running task's identity and memory, as the system calls reach them: every pointer a
//! task passes is checked against its own address space and copied through the kernel's
//! physical map (`memory::space`), never dereferenced.

use alloc::vec;

use mk_abi::{Error, TaskId};

use crate::tasks::sched;

/// What a system call function returns (`rax`: a value or an error).
pub(crate) type SysResult = Result<u64, Error>;

pub(crate) fn current() -> Result<TaskId, Error> {
    sched::current().ok_or(Error::NoSuchTask)
}

/// Copies `len` bytes from the running task's memory at `ptr`, up to `max`.
pub(crate) fn copy_in(ptr: u64, len: u64, max: u64) -> Result<alloc::vec::Vec<u8>, Error> {
    if len > max {
        return Err(Error::BadLength);
    }
    let mut buf = vec![0u8; len as usize];
    copy_in_to(ptr, &mut buf)?;
    Ok(buf)
}

/// Copies `buf.len()` bytes from the running task's memory at `ptr` (no allocation).
pub(crate) fn copy_in_to(ptr: u64, buf: &mut [u8]) -> Result<(), Error> {
    sched::with_running(|t| t.space.read_user(ptr, buf).map_err(|_| Error::BadAddress))
        .ok_or(Error::NoSuchTask)?
}

/// Whether the running task's memory at `ptr..ptr + len` is writable by the kernel's copies.
pub(crate) fn check_out(ptr: u64, len: u64) -> Result<(), Error> {
    sched::with_running(|t| {
        t.space
            .check_user_writable(ptr, len)
            .map_err(|_| Error::BadAddress)
    })
    .ok_or(Error::NoSuchTask)?
}

/// Copies `data` into the running task's memory at `ptr`.
pub(crate) fn copy_out(ptr: u64, data: &[u8]) -> Result<(), Error> {
    sched::with_running_mut(|t| t.space.write_user(ptr, data).map_err(|_| Error::BadAddress))
        .ok_or(Error::NoSuchTask)?
}
