//! The one module of the user library with `unsafe`: the `syscall` instruction (and the
//! messages the kernel writes through it), the entry point's argument string, I/O port access,
//! and the instructions the fault-test programs execute on purpose.

use core::arch::asm;

use mk_abi::Sys;
use mk_abi::ipc::{IPC_MSG_SIZE, IpcMsg};

/// Whether call number `n` may write the caller's memory: `call`, `recv` and `reply_recv`
/// write an [`IpcMsg`] (`IPC_MSG_SIZE` bytes) at their second argument, `msg_ptr`. Decided on
/// the low byte alone, conservatively: a kernel that ignored the upper bits of `rax` would
/// still never be handed one of these with a user pointer by [`raw_syscall`].
pub const fn writes_caller_memory(n: u64) -> bool {
    let low = (n & 0xFF) as u8;
    low == Sys::Call as u8 || low == Sys::Recv as u8 || low == Sys::ReplyRecv as u8
}

/// The first address above the user half: a pointer at or above it is never memory of the
/// task (the kernel half or a non-canonical address).
/// The end of the user half of the address space (a pointer at or above it is never the
/// task's own memory).
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Makes system call `n` with arguments `a0..a5` (in `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`) and
/// returns the raw `rax` and `rdx` (see `mk_abi` for the convention; [`mk_abi::decode`] turns
/// `rax` into a `Result`).
///
/// Safe because it never lets the kernel write memory Rust knows about:
///
/// - most calls write no user memory: they only read it (`write`, `spawn`, `send`, `reply`),
///   and a bad number or argument is refused with an error;
/// - `call`, `recv` and `reply_recv` write an [`IpcMsg`] at `msg_ptr` (`a1`): this function
///   makes them only when `a1` is 0 or not a user address (at or above `USER_END`), which the
///   kernel refuses without writing; with any other `a1` it returns `-BadAddress` without
///   entering the kernel. Make them with [`syscall_msg`] (a `&mut IpcMsg`) or [`syscall_buf`]
///   (a `&mut [u8]`), or through `crate::ipc`.
///
/// A call can end the task (`exit`, `kill` of itself) or unmap pages the program still uses
/// (`unmap`), after which touching them faults and the kernel ends the task: what follows is a
/// fault, never a silent corruption.
#[inline(always)]
pub fn raw_syscall(n: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> (u64, u64) {
    if writes_caller_memory(n) && a1 != 0 && a1 < USER_END {
        return (mk_abi::encode(Err(mk_abi::Error::BadAddress)), 0);
    }
    // SAFETY: the call writes no memory of the task (checked above: the only calls that write
    // one were refused unless the kernel will refuse their pointer).
    unsafe { syscall(n, a0, a1, a2, a3, a4, a5) }
}

/// Makes system call `n` with `msg` as its second argument (`msg_ptr`): for `send`, `call`,
/// `recv`, `reply` and `reply_recv` (`reply` takes it as its first: pass it as `a0` yourself
/// with [`raw_syscall`], or use `crate::ipc`). The kernel may read and write all of `msg`.
#[inline(always)]
pub fn syscall_msg(n: u64, a0: u64, msg: &mut IpcMsg, a2: u64, a3: u64) -> (u64, u64) {
    let ptr = core::ptr::from_mut(msg) as u64;
    // SAFETY: the only memory the kernel may write is at `ptr` (the second argument), 224 bytes:
    // `msg` exactly, borrowed mutably for the whole call, and every bit pattern is a valid
    // `IpcMsg` (integers only). The pointer-to-integer cast exposes the pointer, and the `asm!`
    // has no `nomem`/`readonly` option: the compiler assumes `msg` may have changed.
    unsafe { syscall(n, a0, ptr, a2, a3, 0, 0) }
}

/// Makes system call `n` with `buf[offset..]` as its second argument (`msg_ptr`), for tests
/// that pass unaligned or odd pointers into their own memory. Refused with `-BadLength`
/// without entering the kernel unless `offset + IPC_MSG_SIZE <= buf.len()` (the kernel may
/// write that much there).
#[inline(always)]
pub fn syscall_buf(n: u64, a0: u64, buf: &mut [u8], offset: usize, a2: u64, a3: u64) -> (u64, u64) {
    if offset
        .checked_add(IPC_MSG_SIZE)
        .is_none_or(|end| end > buf.len())
    {
        return (mk_abi::encode(Err(mk_abi::Error::BadLength)), 0);
    }
    let ptr = buf[offset..].as_mut_ptr() as u64;
    // SAFETY: the kernel writes at most `IPC_MSG_SIZE` bytes at `ptr` (the second argument),
    // which lie within `buf` (checked above), borrowed mutably for the whole call; any bytes
    // are valid `u8`s. As for `syscall_msg`, the pointer is exposed and the `asm!` may write.
    unsafe { syscall(n, a0, ptr, a2, a3, 0, 0) }
}

/// The `syscall` instruction itself.
///
/// # Safety
///
/// If the call writes the caller's memory (`call`, `recv`, `reply_recv`: [`IPC_MSG_SIZE`]
/// bytes at `a1`), `a1` must be 0, outside the user half, or point to that many bytes the
/// caller may write for the call's duration (no live shared reference to them, and the
/// pointer derived from a mutable borrow that outlives the call).
#[inline(always)]
unsafe fn syscall(n: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> (u64, u64) {
    let rax: u64;
    let rdx: u64;
    // SAFETY: `syscall` enters the kernel, which preserves every register but rax, rdx (the
    // results), rcx and r11 (declared clobbered) and does not touch the user stack (so no
    // red-zone concern either way). The only user memory it writes is the message of `call`,
    // `recv` and `reply_recv`, which the caller vouches for; no `nomem`/`readonly` option, so
    // the compiler assumes any memory whose address escaped may have been read or written.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n => rax,
            in("rdi") a0,
            in("rsi") a1,
            inlateout("rdx") a2 => rdx,
            in("r10") a3,
            in("r8") a4,
            in("r9") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (rax, rdx)
}

/// Reads the I/O port `port` (`in al, dx`).
///
/// Works only where the kernel granted the task an I/O-port capability covering `port` (it
/// opens those ports in the task's I/O permission bitmap); anywhere else the instruction
/// raises #GP in ring 3 and the kernel ends the task (status `STATUS_FAULT + 13`).
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: in ring 3 `in` either faults (#GP, which ends the task: nothing runs on) or reads
    // a port the kernel granted this task; it touches no memory of the program and no register
    // but the declared output.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes `value` to the I/O port `port` (`out dx, al`). Like [`inb`], only on ports the
/// kernel granted through an I/O-port capability; elsewhere #GP ends the task.
pub fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`: the write faults or reaches a device the kernel gave this task
    // (whose effects, DMA included, the kernel vouched for by granting it); no memory or
    // register of the program changes.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// `exit(status)`: never returns.
pub fn exit(status: u64) -> ! {
    raw_syscall(mk_abi::Sys::Exit as u64, status, 0, 0, 0, 0, 0);
    // The kernel never returns from exit; if it ever did, fault rather than run on.
    loop {
        ud2();
    }
}

/// The argument string the kernel passed to `_start`.
///
/// # Safety
///
/// `ptr..ptr + len` must be readable for the program's whole life and never written (the
/// entry ABI: the kernel maps the argument string read-only before entering `_start`), or
/// `len` must be 0.
pub unsafe fn entry_args(ptr: *const u8, len: usize) -> &'static [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees the range is readable, lasts and is never written.
    unsafe { core::slice::from_raw_parts(ptr, len) }
}

/// Reads the byte at `addr` with a volatile load (the fault tests: the read should fault).
///
/// # Safety
///
/// `addr` must be readable, or the read must fault (which ends the task): a read of memory
/// the program's Rust objects live in is a data race if they are being written.
pub unsafe fn read_byte(addr: u64) -> u8 {
    // SAFETY: as the caller guarantees.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Writes `value` at `addr` with a volatile store (the fault tests: the write should fault).
///
/// # Safety
///
/// The store must fault (which ends the task) or hit memory no Rust object relies on.
pub unsafe fn write_byte(addr: u64, value: u8) {
    // SAFETY: as the caller guarantees.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

/// Executes `hlt`, a privileged instruction: in ring 3 it raises #GP and the kernel ends the
/// task.
pub fn hlt() {
    // SAFETY: in ring 3 `hlt` only raises #GP; it touches no memory and no register.
    unsafe { asm!("hlt", options(nomem, nostack)) }
}

/// Executes `cli`, privileged at IOPL 0: in ring 3 it raises #GP.
pub fn cli() {
    // SAFETY: as for `hlt`: it raises #GP in ring 3 (user tasks run at IOPL 0).
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// The CPU's time-stamp counter (`rdtsc`, allowed in ring 3). Under QEMU's instruction-count
/// mode it counts guest instructions (1 GHz), so differences are instruction counts.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into edx:eax (declared outputs); it touches
    // no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Executes `ud2`: raises #UD.
pub fn ud2() {
    // SAFETY: `ud2` only raises #UD; it touches no memory and no register.
    unsafe { asm!("ud2", options(nomem, nostack)) }
}

/// Divides `dividend` by `divisor` with the `div` instruction, which raises #DE when `divisor`
/// is 0 (Rust's `/` would panic first instead).
pub fn div(dividend: u64, divisor: u64) -> u64 {
    let quotient: u64;
    // SAFETY: `div` reads rdx:rax and the divisor register and writes rax, rdx (declared); a
    // zero divisor raises #DE, which ends the task.
    unsafe {
        asm!(
            "div {d}",
            d = in(reg) divisor,
            inlateout("rax") dividend => quotient,
            inlateout("rdx") 0u64 => _,
            options(nomem, nostack),
        );
    }
    quotient
}

/// Anonymous memory from [`crate::map`], unmapped when dropped.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` zeroed bytes (`len > 0`).
    pub fn new(len: usize) -> Result<Self, mk_abi::Error> {
        if len == 0 {
            return Err(mk_abi::Error::BadLength);
        }
        let ptr = crate::map(len)?;
        if ptr.is_null() {
            return Err(mk_abi::Error::BadAddress);
        }
        Ok(Self { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives these pages away: the kernel takes them out of this task into a page run and
    /// returns a capability to it (move it in a message; the receiver maps it with
    /// [`Mapping::from_pages`]). The memory is gone from this task on success.
    pub fn grant(self) -> Result<mk_abi::ipc::Handle, mk_abi::Error> {
        let h = crate::ipc::pages(self.ptr, self.len)?;
        // The kernel unmapped the pages: nothing to unmap on drop.
        core::mem::forget(self);
        Ok(h)
    }

    /// Maps the page run of capability `h` (received in a message) into this task; the
    /// capability is used up.
    pub fn from_pages(h: mk_abi::ipc::Handle) -> Result<Self, mk_abi::Error> {
        let info = crate::ipc::cap_info(h)?;
        if info.kind != Some(mk_abi::ipc::CapKind::Pages) {
            return Err(mk_abi::Error::NoRight);
        }
        let len = ((info.object >> 48) as usize) * 4096;
        let ptr = crate::ipc::pages_map(h)?;
        if ptr.is_null() || len == 0 {
            return Err(mk_abi::Error::BadAddress);
        }
        Ok(Self { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`, shared: `len` mapped readable bytes of this task.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` and `len` are what `map` (or `pages_map`) returned: the kernel mapped `len` bytes there,
        // readable and writable, for this task alone, and nothing else in the program holds
        // them; the slice borrows `self` mutably, and the memory is unmapped only on drop.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = crate::unmap(self.ptr, self.len);
    }
}

/// What `_start` (from [`crate::entry!`]) runs: builds [`crate::Args`], calls `main`, exits
/// with its status.
///
/// # Safety
///
/// `ptr` and `len` must be what the kernel passed to `_start` (the entry ABI): a read-only
/// argument string that lasts as long as the program.
#[doc(hidden)]
pub unsafe fn _start<R: crate::Exit>(ptr: *const u8, len: usize, main: fn(crate::Args) -> R) -> ! {
    // SAFETY: the caller passes the kernel's argument string on.
    let bytes = unsafe { entry_args(ptr, len) };
    // Not UTF-8 (the kernel checks it is): run with no arguments rather than not at all.
    let text = core::str::from_utf8(bytes).unwrap_or("");
    exit(main(crate::Args::new(text)).status())
}

/// A device's registers mapped into this task by `mmio_map` (an MMIO capability): read and
/// written only through bounds-checked volatile accesses.
pub struct Mmio {
    base: *mut u8,
    len: usize,
}

impl Mmio {
    /// Maps the MMIO capability `h` (its length from `cap_info`).
    pub fn map(h: mk_abi::ipc::Handle) -> Result<Self, mk_abi::Error> {
        let info = crate::ipc::cap_info(h)?;
        if info.kind != Some(mk_abi::ipc::CapKind::Mmio) {
            return Err(mk_abi::Error::NoRight);
        }
        let pages = (info.object & 0xFFF) as usize;
        let base = crate::ipc::mmio_map(h)?;
        Ok(Self {
            base,
            len: pages * 4096,
        })
    }

    /// The 32-bit register at byte `offset` (aligned, inside the range), or `None`.
    pub fn read32(&self, offset: usize) -> Option<u32> {
        if offset % 4 != 0 || offset + 4 > self.len {
            return None;
        }
        // SAFETY: `base..base + len` is this task's mapping of the capability's pages (the
        // kernel mapped them, uncached, for the task's whole life: nothing unmaps them but
        // this task's own `unmap`, which this type never calls); `offset` is aligned and in
        // range, and a volatile read of device memory has no effect on the program's memory.
        Some(unsafe { core::ptr::read_volatile(self.base.add(offset).cast::<u32>()) })
    }
}
