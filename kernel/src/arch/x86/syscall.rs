//! The system call entry: `SYSCALL` from ring 3 lands in `mk_syscall_entry`, which switches to
//! the running task's kernel stack, saves the user registers as a [`SyscallFrame`], calls the
//! handler the tasks layer installed, and returns with `SYSRET`.
//!
//! ```text
//!  ring 3: syscall ──► swapgs (GS = this CPU's PerCpu), save user rsp in gs:[16],
//!                      rsp = gs:[8] (the task's kernel stack), push SyscallFrame
//!                      handler(&mut frame)      (interrupts off on entry: SFMASK clears IF)
//!                      pop frame, rsp = user rsp, swapgs, sysretq ──► ring 3
//! ```
//!
//! `STAR` makes `SYSCALL` load the kernel selectors (0x08/0x10) and `SYSRET` the user ones
//! (0x23/0x1b): the GDT layout of `gdt.rs`. `SYSRET` to a non-canonical address would fault in
//! ring 0 on Intel CPUs; the return address is always the instruction after a `syscall` in the
//! user half, whose top page is never mapped, so it is canonical.

use core::arch::global_asm;

use mk_hook::Full;
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::{PrivilegeLevel, VirtAddr};

use super::cpu::{SYSCALL_RSP_OFFSET, USER_RSP_OFFSET};
use super::gdt;

/// The user registers at a system call, as the entry code pushed them. The handler reads the
/// number and arguments and writes the results into `rax` and `rdx`. The callee-saved
/// registers (`rbx`, `rbp`, `r12`-`r15`) are not in it: the handler is Rust code, which keeps
/// them, and a task that blocks keeps them in its suspended context.
#[repr(C)]
#[derive(Debug)]
pub struct SyscallFrame {
    pub r9: u64,
    pub r8: u64,
    pub r10: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rax: u64,
    /// The user's return address (`rcx` at `syscall`).
    pub rip: u64,
    /// The user's flags (`r11` at `syscall`).
    pub rflags: u64,
    pub rsp: u64,
}

impl SyscallFrame {
    /// The call number and its six arguments.
    pub fn call(&self) -> (u64, [u64; 6]) {
        (
            self.rax,
            [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9],
        )
    }
}

global_asm!(
    ".global mk_syscall_entry",
    "mk_syscall_entry:",
    "swapgs",
    "mov gs:[{user_rsp}], rsp",
    "mov rsp, gs:[{kernel_rsp}]",
    "push qword ptr gs:[{user_rsp}]",
    "push r11",
    "push rcx",
    "push rax",
    "push rdi",
    "push rsi",
    "push rdx",
    "push r10",
    "push r8",
    "push r9",
    "mov rdi, rsp",
    "call {dispatch}",
    "pop r9",
    "pop r8",
    "pop r10",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    "pop rax",
    "pop rcx",
    "pop r11",
    "pop rsp",
    "swapgs",
    "sysretq",
    user_rsp = const USER_RSP_OFFSET,
    kernel_rsp = const SYSCALL_RSP_OFFSET,
    dispatch = sym dispatch,
);

unsafe extern "C" {
    fn mk_syscall_entry();
}

/// The tasks layer's system call handler: installed once per instance and never replaced, so
/// a `Once` (one load to find it on every call) rather than a replaceable `Hook`.
static HANDLER: spin::Once<fn(&mut SyscallFrame)> = spin::Once::new();

/// Installs the system call handler (once per instance; `Full` if one is already installed).
pub fn set_handler(handler: fn(&mut SyscallFrame)) -> Result<(), Full> {
    let mut installed = false;
    HANDLER.call_once(|| {
        installed = true;
        handler
    });
    if installed {
        Ok(())
    } else {
        Err(Full { capacity: 1 })
    }
}

/// Flags a task may keep across a system call: the arithmetic flags and DF. IF is always set
/// on return (a task cannot turn interrupts off), TF, IOPL, AC and the rest are cleared.
const USER_FLAGS_KEPT: u64 = 0x8D5 | 0x400;

extern "C" fn dispatch(frame: &mut SyscallFrame) {
    match HANDLER.get() {
        Some(handler) => handler(frame),
        None => frame.rax = mk_abi::encode(Err(mk_abi::Error::NoSuchCall)),
    }
    frame.rflags = (frame.rflags & USER_FLAGS_KEPT) | 0x202;
    // The entry code returns with SYSRET: interrupts must stay off until then.
    x86_64::instructions::interrupts::disable();
}

/// Sets up `SYSCALL`/`SYSRET` on the running CPU, and SMEP/SMAP where the CPU has them (the
/// kernel reaches user memory only through the physical map, never through user addresses).
pub fn init_this_cpu() {
    let star = Star::write(
        SegmentSelector::new(gdt::USER_CODE >> 3, PrivilegeLevel::Ring3),
        SegmentSelector::new(gdt::USER_DATA >> 3, PrivilegeLevel::Ring3),
        SegmentSelector::new(gdt::KERNEL_CODE >> 3, PrivilegeLevel::Ring0),
        SegmentSelector::new(gdt::KERNEL_DATA >> 3, PrivilegeLevel::Ring0),
    );
    if let Err(e) = star {
        crate::platform::failure::fatal(format_args!("STAR: {e}"));
    }
    LStar::write(VirtAddr::new(entry_address()));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
    // SAFETY: enabling SYSCALL only adds an entry path, to the code installed in LSTAR above.
    unsafe { Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS)) };
    let ext = core::arch::x86_64::__cpuid_count(7, 0);
    let mut cr4 = Cr4Flags::empty();
    if ext.ebx & (1 << 7) != 0 {
        cr4 |= Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION;
    }
    if ext.ebx & (1 << 20) != 0 {
        cr4 |= Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION;
    }
    // SAFETY: SMEP forbids ring 0 to execute user pages, SMAP to touch them without STAC: the
    // kernel does neither (its text is supervisor-only, and it copies user memory through the
    // physical map).
    unsafe { Cr4::update(|f| f.insert(cr4)) };
}

/// The address `LSTAR` holds: where `SYSCALL` enters the kernel.
pub fn entry_address() -> u64 {
    mk_syscall_entry as *const () as u64
}

/// Whether the running CPU has SMEP and SMAP turned on.
pub fn protections() -> (bool, bool) {
    let f = Cr4::read();
    (
        f.contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION),
        f.contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION),
    )
}
