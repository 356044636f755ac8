//! The one module of the user library with `unsafe`: the `syscall` instruction, the entry
//! point's argument string, and the instructions the fault-test programs execute on purpose.

use core::arch::asm;

/// Makes system call `n` with arguments `a0..a5` (in `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`) and
/// returns the raw `rax` and `rdx` (see `mk_abi` for the convention; [`mk_abi::decode`] turns
/// `rax` into a `Result`).
///
/// Safe: no system call writes into the caller's memory, and a bad number or argument is
/// refused with an error. A call can end the task (`exit`, `kill` of itself) or unmap pages
/// the program still uses (`unmap`), after which touching them faults and the kernel ends the
/// task: what follows is a fault, never a silent corruption.
#[inline(always)]
pub fn raw_syscall(n: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> (u64, u64) {
    let rax: u64;
    let rdx: u64;
    // SAFETY: `syscall` enters the kernel, which preserves every register but rax, rdx (the
    // results), rcx and r11 (declared clobbered) and does not touch the user stack (so no
    // red-zone concern either way); it writes no user memory.
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

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` and `len` are what `map` returned: the kernel mapped `len` bytes there,
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
