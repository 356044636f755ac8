//! Kernel contexts and the way into ring 3.
//!
//! A context is a suspended kernel stack with the callee-saved registers and the flags on top.
//! [`switch_to`] suspends the running context and resumes another; the suspended one is left
//! in the running CPU's hand-off slot, and whoever runs next takes it with [`take_saved`] and
//! keeps it for its owner. The scheduler of each CPU runs in that CPU's boot context, and every
//! task has a context of its own on its own kernel stack (xv6's scheme: task → scheduler →
//! task, so a task's stack is never in use when the scheduler frees it).
//!
//! ```text
//!  a suspended context's stack, lowest address first (where its saved rsp points):
//!    rflags  r15  r14  r13  r12  rbx  rbp  return address
//!  a fresh one (`Stack::prepare`): r15 = entry, r14 = argument, return address = mk_task_start,
//!  which calls entry(argument) on the empty, 16-byte aligned stack
//! ```
//!
//! A [`Context`] can be neither copied nor cloned: resuming it consumes it, so one suspended
//! stack is never resumed twice. Its stack must outlive it: the tasks layer keeps a task's
//! context next to the task's [`Stack`], and drops both together.

use alloc::boxed::Box;
use core::arch::global_asm;

global_asm!(
    ".global mk_switch",
    "mk_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "pushfq",
    "mov gs:[{switched_out}], rsp",
    "mov rsp, rdi",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".global mk_task_start",
    "mk_task_start:",
    "mov rdi, r14",
    "call r15",
    "ud2",
    ".global mk_enter_user",
    "mk_enter_user:",
    "cli",
    "push {user_ss}",
    "push rsi",
    "push 0x202",
    "push {user_cs}",
    "push rdi",
    "mov rdi, rdx",
    "mov rsi, rcx",
    "xor eax, eax",
    "xor ebx, ebx",
    "xor ecx, ecx",
    "xor edx, edx",
    "xor ebp, ebp",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    "swapgs",
    "iretq",
    user_ss = const super::gdt::USER_DATA,
    user_cs = const super::gdt::USER_CODE,
    switched_out = const super::cpu::SWITCHED_OUT_OFFSET,
);

unsafe extern "C" {
    fn mk_switch(load: u64);
    fn mk_task_start();
    fn mk_enter_user(rip: u64, rsp: u64, arg0: u64, arg1: u64) -> !;
}

/// Size of a task's kernel stack.
pub const KERNEL_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct StackBytes([u8; KERNEL_STACK_SIZE]);

/// A task's kernel stack (heap-allocated, freed with the task).
pub struct Stack {
    bytes: Box<StackBytes>,
}

/// A suspended kernel context: where its stack pointer was when it switched away.
#[derive(Debug)]
pub struct Context {
    rsp: u64,
}

impl Stack {
    pub fn new() -> Self {
        // Built in place: a 32 KiB array on the caller's stack first could overflow it.
        let bytes = alloc::boxed::Box::<StackBytes>::new_zeroed();
        // SAFETY: an all-zero byte array is a valid `StackBytes`.
        let bytes = unsafe { bytes.assume_init() };
        Self { bytes }
    }

    /// The stack's top (16-byte aligned): what RSP0 and the system call entry use.
    pub fn top(&self) -> u64 {
        self.bytes.0.as_ptr() as u64 + KERNEL_STACK_SIZE as u64
    }

    /// A context that, when switched to, calls `entry(arg)` on this stack (with interrupts
    /// off). `entry` must never return.
    pub fn prepare(&mut self, entry: extern "C" fn(u64) -> !, arg: u64) -> Context {
        let top = self.top();
        let words: [u64; 8] = [
            0,                                 // rflags: interrupts off
            entry as usize as u64,             // r15
            arg,                               // r14
            0,                                 // r13
            0,                                 // r12
            0,                                 // rbx
            0,                                 // rbp
            mk_task_start as *const () as u64, // return address
        ];
        let rsp = top - 8 * words.len() as u64;
        let offset = KERNEL_STACK_SIZE - 8 * words.len();
        for (i, w) in words.iter().enumerate() {
            let at = offset + 8 * i;
            self.bytes.0[at..at + 8].copy_from_slice(&w.to_ne_bytes());
        }
        Context { rsp }
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

/// Suspends the running context and resumes `to`. Returns when something resumes this one;
/// the context that ran just before (the one that resumed us) is then in the hand-off slot.
/// Interrupts must be off (each side's flags are saved and restored with it).
pub fn switch_to(to: Context) {
    debug_assert!(!x86_64::instructions::interrupts::are_enabled());
    // SAFETY: `to` was made by `Stack::prepare` or taken from the hand-off slot after a switch,
    // and is consumed here, so it is a suspended frame resumed once; its stack is alive (the
    // owner keeps the stack with the context). The running context's frame is pushed on the
    // running stack and its rsp left in this CPU's slot (gs:[switched_out]).
    unsafe { mk_switch(to.rsp) };
}

/// Takes the context that last switched away on this CPU, if it has not been taken yet. Every
/// context calls it right after it was resumed (and a fresh one when it starts).
pub fn take_saved() -> Option<Context> {
    let rsp = super::cpu::current().take_switched_out();
    (rsp != 0).then_some(Context { rsp })
}

/// Leaves ring 0 for good on this stack: enters ring 3 at `rip` with stack `rsp`, `rdi = arg0`,
/// `rsi = arg1`, every other register zero, interrupts on. The running CPU's kernel stack
/// (RSP0) and the task's address space must be set first.
pub fn enter_user(rip: u64, rsp: u64, arg0: u64, arg1: u64) -> ! {
    // SAFETY: the selectors are the GDT's user segments (ring 3), so the `iretq` cannot raise
    // privilege; `rip`/`rsp` are user addresses the loader mapped in the active address space
    // (a bad one faults in ring 3, which ends the task). GS is swapped to the user's before
    // the `iretq` and back by every entry from ring 3.
    unsafe { mk_enter_user(rip, rsp, arg0, arg1) }
}
