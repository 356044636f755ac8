//! Per-CPU state, reached through the GS base.
//!
//! Each CPU that runs this kernel owns one `PerCpu`, leaked for the CPU's lifetime; the GS base
//! points at it and its first word points at itself, so `current()` is one `mov` from `gs:[0]`
//! with no MSR read (an MSR read exits to the hypervisor under virtualisation).

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

use super::apic::Lapic;

#[repr(C)]
pub struct PerCpu {
    /// Must stay the first field: `current()` loads it from `gs:[0]`.
    self_ptr: *const PerCpu,
    /// `gs:[8]`: top of the kernel stack the system call entry switches to (the running
    /// task's). Read by `syscall.rs`'s entry code; written by [`PerCpu::set_kernel_stack`].
    syscall_rsp: AtomicU64,
    /// `gs:[16]`: scratch for the user stack pointer during system call entry.
    user_rsp: AtomicU64,
    /// `gs:[24]`: the context that last switched away on this CPU (see `switch.rs`).
    switched_out: AtomicU64,
    /// Index of this CPU within its instance (0 = the instance's first CPU).
    pub index: u32,
    /// The CPU's local APIC ID (the x2APIC ID in x2APIC mode).
    pub apic_id: u32,
    /// Local APIC timer ticks seen by this CPU.
    pub ticks: AtomicU64,
    /// CR0 as this CPU read it when it installed its block (nothing in the kernel writes CR0
    /// after the trampoline), for the check that every CPU runs with its caches on.
    pub cr0: u64,
    /// This CPU's local APIC; touched only by this CPU.
    lapic: UnsafeCell<Option<Lapic>>,
}

/// CR0.CD (caches disabled) and CR0.NW (not write-through): both must be clear on every CPU.
pub const CR0_CD_NW: u64 = (1 << 30) | (1 << 29);

/// Set once the bootstrap CPU has a `PerCpu`; before that, `try_current` returns `None`.
static BSP_READY: AtomicBool = AtomicBool::new(false);

/// Installs `percpu` as the running CPU's per-CPU block.
pub fn install(index: u32, apic_id: u32) -> &'static PerCpu {
    let block: &'static mut PerCpu = alloc::boxed::Box::leak(alloc::boxed::Box::new(PerCpu {
        self_ptr: core::ptr::null(),
        syscall_rsp: AtomicU64::new(0),
        user_rsp: AtomicU64::new(0),
        switched_out: AtomicU64::new(0),
        index,
        apic_id,
        ticks: AtomicU64::new(0),
        cr0: x86_64::registers::control::Cr0::read_raw(),
        lapic: UnsafeCell::new(None),
    }));
    block.self_ptr = block as *const PerCpu;
    GsBase::write(VirtAddr::from_ptr(block as *const PerCpu));
    BSP_READY.store(true, Ordering::Release);
    block
}

/// The running CPU's block, if it has one yet.
pub fn try_current() -> Option<&'static PerCpu> {
    if !BSP_READY.load(Ordering::Acquire) {
        return None;
    }
    let ptr: *const PerCpu;
    // SAFETY: once `install` ran on this CPU, GS base points at a leaked `PerCpu` whose first
    // word is its own address. Every CPU calls `install` before it logs or takes interrupts,
    // and the bootstrap CPU did so before BSP_READY became true.
    unsafe {
        asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, preserves_flags, readonly));
    }
    // SAFETY: see above: the pointer is to a leaked, never-freed block.
    Some(unsafe { &*ptr })
}

pub fn current() -> &'static PerCpu {
    try_current().expect("per-CPU state not installed on this CPU")
}

/// Offsets of the fields the entry code reads through `gs` (checked against the struct).
pub const SYSCALL_RSP_OFFSET: usize = 8;
pub const USER_RSP_OFFSET: usize = 16;
const _: () = assert!(core::mem::offset_of!(PerCpu, syscall_rsp) == SYSCALL_RSP_OFFSET);
const _: () = assert!(core::mem::offset_of!(PerCpu, user_rsp) == USER_RSP_OFFSET);
pub const SWITCHED_OUT_OFFSET: usize = 24;
const _: () = assert!(core::mem::offset_of!(PerCpu, switched_out) == SWITCHED_OUT_OFFSET);

impl PerCpu {
    /// Makes `top` the kernel stack this CPU enters on a system call or on an interrupt or
    /// exception from ring 3 (the task about to run's own kernel stack).
    /// Takes the stack pointer `switch.rs` left here (0 when there is none).
    pub(super) fn take_switched_out(&self) -> u64 {
        self.switched_out.swap(0, Ordering::Relaxed)
    }

    pub fn set_kernel_stack(&self, top: u64) {
        self.syscall_rsp.store(top, Ordering::Relaxed);
        super::gdt::set_kernel_stack(self.index as usize, top);
    }

    /// Runs `f` with this CPU's local APIC.
    ///
    /// Interrupts are off for the duration, so an interrupt handler on this CPU (which may also
    /// want the APIC, for EOI) cannot run in the middle of it.
    pub fn with_lapic<R>(&self, f: impl FnOnce(&mut Lapic) -> R) -> Option<R> {
        x86_64::instructions::interrupts::without_interrupts(|| self.with_lapic_in_handler(f))
    }

    /// `with_lapic` for interrupt handlers, which run with interrupts already off: skips the
    /// save/disable/restore of the interrupt flag (each of which traps under a deprivileged
    /// hypervisor).
    pub fn with_lapic_in_handler<R>(&self, f: impl FnOnce(&mut Lapic) -> R) -> Option<R> {
        // SAFETY: the cell is only reached through `current()`, i.e. by the CPU that owns it,
        // and callers run with interrupts off (an interrupt gate, or `with_lapic`), so nothing
        // on this CPU can re-enter: this is the only live reference.
        let slot = unsafe { &mut *self.lapic.get() };
        slot.as_mut().map(f)
    }

    pub fn set_lapic(&self, lapic: Lapic) {
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: as in `with_lapic`.
            unsafe { *self.lapic.get() = Some(lapic) };
        });
    }
}

/// Most CPUs one instance can have (slots of the registry below).
pub const MAX_SLOTS: usize = 64;
const _: () = assert!(MAX_SLOTS == super::ioperm::SLOTS);

/// The per-CPU blocks of this instance's online CPUs, by index: a block is published here once
/// its CPU is up and removed when the CPU parks (the block itself stays allocated for good).
static SLOTS: [AtomicPtr<PerCpu>; MAX_SLOTS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_SLOTS];

/// Publishes `cpu` in the slot of its index (ignored beyond `MAX_SLOTS`).
pub fn publish(cpu: &'static PerCpu) -> bool {
    SLOTS.get(cpu.index as usize).is_some_and(|slot| {
        slot.store(cpu as *const PerCpu as *mut PerCpu, Ordering::Release);
        true
    })
}

/// Removes the CPU in slot `index` from the registry.
pub fn withdraw(index: usize) {
    if let Some(slot) = SLOTS.get(index) {
        slot.store(core::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// The online CPU in slot `index`, if any.
pub fn by_slot(index: usize) -> Option<&'static PerCpu> {
    let p = SLOTS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries were stored by `publish` from a `&'static PerCpu` (a block
    // leaked by `install` and never freed).
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The online CPUs of this instance, by slot.
pub fn online() -> impl Iterator<Item = &'static PerCpu> {
    (0..MAX_SLOTS).filter_map(by_slot)
}

/// `(instance id, cpu index)` for log line prefixes.
pub fn log_identity() -> (crate::instance::InstanceId, u32) {
    let cpu = try_current().map_or(0, |c| c.index);
    (crate::instance::id(), cpu)
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Lets ring 3 on the running CPU use the I/O ports of `ranges` (`(base, len)`; a range that
/// would wrap past 0xFFFF is clamped there) from now on, and denies every other port again
/// (see `ioperm`). The scheduler calls it each time it switches a task in, with that task's
/// ports: empty for nearly all tasks, and then, if the CPU allowed none either, it costs a
/// few loads and writes nothing. From thread context only (not in an interrupt handler).
pub fn set_user_io_ports(ranges: &[(u16, u16)]) {
    if let Some(cpu) = try_current() {
        // SAFETY: `cpu.index` is the running CPU's slot, and this is thread context (the
        // function's contract: no interrupt handler calls it, nor `gdt::set_kernel_stack`).
        unsafe { super::ioperm::set_on_slot(cpu.index as usize, ranges) };
    }
}

/// Whether ring 3 may use I/O port `port` on the running CPU now (for the tests).
pub fn user_io_ports_allowed(port: u16) -> bool {
    try_current().is_some_and(|cpu| {
        // SAFETY: as in `set_user_io_ports`: the running CPU's own slot, thread context.
        unsafe { super::ioperm::allowed_on_slot(cpu.index as usize, port) }
    })
}

/// Holds back, on the running CPU, every interrupt vector of priority class `class` and below
/// (the task priority, CR8); 0 lets every vector through again.
pub fn set_task_priority(class: u8) {
    x86_64::registers::control::Cr8::write_raw(u64::from(class & 0xF));
}

/// End of interrupt on the running CPU. Only for interrupt handlers.
pub fn eoi() {
    if let Some(cpu) = try_current() {
        cpu.with_lapic_in_handler(|l| l.eoi());
    }
}
