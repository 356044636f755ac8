//! The IDT: a reporting handler for every CPU exception, the local APIC's vectors, and a small
//! table of device interrupt handlers that drivers register at run time.
//!
//! Every vector another instance can send is gated per CPU (`mk-surface`, issue 15 item 10):
//! timer ticks closer than half a period to the last one taken, and probe and device
//! interrupts beyond their rate, are counted and acknowledged but run nothing; an NMI, a vector
//! with no handler and a local APIC error are counted and survived (reported from thread
//! context by [`surface`], at a limited rate, never logged from the handler).
//!
//! An unexpected exception prints a report (vector, name, RIP, error code, CR2 for page faults)
//! and stops the kernel through `platform::failure::fatal`. Two exceptions have hooks for the
//! tests that provoke them on purpose: the breakpoint returns, and a page fault at an address
//! announced with `expect_page_fault` calls the announced continuation instead of stopping.
//!
//! From ring 3: every handler that can interrupt user code swaps GS first (so the per-CPU block
//! is reachable whatever the task did with its GS) and swaps it back last. An exception in user
//! code ends the task through the tasks layer's [`set_user_fault_handler`] hook instead of
//! stopping the kernel; an interrupt from user code calls the [`set_user_return_hook`] on its
//! way back (where the scheduler preempts the task).

use core::sync::atomic::{AtomicU64, Ordering};

use mk_hook::{Full, Hook, HookList};

use spin::Lazy;
use x86_64::PrivilegeLevel;
use x86_64::instructions::segmentation::GS;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::gdt;
use super::vectors;

/// Total local APIC timer interrupts taken by this instance (all its CPUs).
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
/// Breakpoints taken (they return).
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(build_idt);

pub fn init() {
    IDT.load();
}

/// Loads the same IDT on a further CPU.
#[allow(dead_code)] // used once further CPUs join an instance
pub fn load_on_this_cpu() {
    IDT.load();
}

/// What a user task did wrong, for the tasks layer: the exception's vector and name, where
/// (`rip`), the error code, and the faulting address for a page fault.
#[derive(Debug, Clone, Copy)]
pub struct UserFault {
    pub vector: u8,
    pub name: &'static str,
    pub rip: u64,
    pub code: u64,
    pub addr: Option<u64>,
}

static USER_FAULT: Hook<fn(&UserFault) -> !> = Hook::new();
static USER_RETURN: Hook<fn()> = Hook::new();

/// Installs what ends a task that took an exception in ring 3 (it does not return: it leaves
/// the faulting task for good).
pub fn set_user_fault_handler(handler: fn(&UserFault) -> !) -> Result<(), Full> {
    USER_FAULT.set(handler)
}

/// Installs what runs at the end of every interrupt taken in ring 3, before returning there
/// (the scheduler's preemption point; it may switch to another context and come back later).
pub fn set_user_return_hook(hook: fn()) -> Result<(), Full> {
    USER_RETURN.set(hook)
}

/// Whether `frame` interrupted ring 3.
fn from_user(frame: &InterruptStackFrame) -> bool {
    frame.code_segment.rpl() == PrivilegeLevel::Ring3
}

fn swapgs() {
    // SAFETY: called in pairs around handlers that interrupted ring 3 (whose GS base is the
    // user's, with this CPU's PerCpu in KERNEL_GS_BASE): the first swap makes the per-CPU block
    // reachable, the second restores the user's before `iretq`.
    unsafe { GS::swap() };
}

/// Start of a handler: swaps GS if it interrupted ring 3; returns whether it did.
fn enter(frame: &InterruptStackFrame) -> bool {
    let user = from_user(frame);
    if user {
        swapgs();
    }
    user
}

/// End of a handler that [`enter`]ed: the user-return hook, then GS back.
fn leave(user: bool) {
    if user {
        if let Some(hook) = USER_RETURN.get() {
            hook();
        }
        swapgs();
    }
}

/// An exception: ends the task if it came from ring 3 (and a handler is installed), otherwise
/// reports and stops this instance.
fn exception(frame: &InterruptStackFrame, fault: UserFault, report: core::fmt::Arguments<'_>) -> ! {
    if enter(frame)
        && let Some(handler) = USER_FAULT.get()
    {
        handler(&fault);
    }
    crate::platform::failure::fatal(report)
}

macro_rules! report_no_code {
    ($name:ident, $vector:expr, $text:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            let fault = UserFault {
                vector: $vector,
                name: $text,
                rip: frame.instruction_pointer.as_u64(),
                code: 0,
                addr: None,
            };
            exception(
                &frame,
                fault,
                format_args!(
                    "EXCEPTION {} ({}) at RIP {:#x}, RSP {:#x}, RFLAGS {:#x}",
                    $vector,
                    $text,
                    frame.instruction_pointer.as_u64(),
                    frame.stack_pointer.as_u64(),
                    frame.cpu_flags.bits()
                ),
            );
        }
    };
}

macro_rules! report_with_code {
    ($name:ident, $vector:expr, $text:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            let fault = UserFault {
                vector: $vector,
                name: $text,
                rip: frame.instruction_pointer.as_u64(),
                code,
                addr: None,
            };
            exception(
                &frame,
                fault,
                format_args!(
                    "EXCEPTION {} ({}) at RIP {:#x}, error code {:#x}, RSP {:#x}",
                    $vector,
                    $text,
                    frame.instruction_pointer.as_u64(),
                    code,
                    frame.stack_pointer.as_u64()
                ),
            );
        }
    };
}

report_no_code!(divide_error, 0, "divide error");
report_no_code!(debug, 1, "debug");
report_no_code!(overflow, 4, "overflow");
report_no_code!(bound_range, 5, "bound range exceeded");
report_no_code!(invalid_opcode, 6, "invalid opcode");
report_no_code!(device_not_available, 7, "device not available");
report_with_code!(invalid_tss, 10, "invalid TSS");
report_with_code!(segment_not_present, 11, "segment not present");
report_with_code!(stack_segment, 12, "stack-segment fault");
report_with_code!(general_protection, 13, "general protection");
report_no_code!(x87_floating_point, 16, "x87 floating point");
report_with_code!(alignment_check, 17, "alignment check");
report_no_code!(simd_floating_point, 19, "SIMD floating point");
report_no_code!(virtualization, 20, "virtualization");
report_with_code!(control_protection, 21, "control protection");
report_no_code!(hv_injection, 28, "hypervisor injection");
report_with_code!(vmm_communication, 29, "VMM communication");
report_with_code!(security, 30, "security");

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    if from_user(&frame) {
        swapgs();
    }
    crate::platform::failure::fatal(format_args!(
        "EXCEPTION 8 (double fault) at RIP {:#x}, error code {code:#x}, RSP {:#x}",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64()
    ));
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    if from_user(&frame) {
        swapgs();
    }
    crate::platform::failure::fatal(format_args!(
        "EXCEPTION 18 (machine check) at RIP {:#x}",
        frame.instruction_pointer.as_u64()
    ));
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    if from_user(&frame) {
        let fault = UserFault {
            vector: 3,
            name: "breakpoint",
            rip: frame.instruction_pointer.as_u64(),
            code: 0,
            addr: None,
        };
        exception(&frame, fault, format_args!("breakpoint in user mode"));
    }
    BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
    crate::info!(
        "breakpoint at RIP {:#x}, returning",
        frame.instruction_pointer.as_u64()
    );
}

/// A page fault the running code provokes on purpose: the faulting address and where to go.
static EXPECTED_FAULT_ADDR: AtomicU64 = AtomicU64::new(u64::MAX);
static EXPECTED_FAULT_THEN: Hook<fn(u64, u64) -> !> = Hook::new();

/// Announces that touching `addr` will fault and that the fault should call `then(cr2, code)`
/// (which does not return) instead of stopping the kernel.
pub fn expect_page_fault(addr: u64, then: fn(u64, u64) -> !) {
    if let Err(e) = EXPECTED_FAULT_THEN.set(then) {
        crate::platform::failure::fatal(format_args!("expect_page_fault: {e}"));
    }
    EXPECTED_FAULT_ADDR.store(addr, Ordering::SeqCst);
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let cr2 = Cr2::read_raw();
    if from_user(&frame) {
        let fault = UserFault {
            vector: 14,
            name: "page fault",
            rip: frame.instruction_pointer.as_u64(),
            code: code.bits(),
            addr: Some(cr2),
        };
        exception(
            &frame,
            fault,
            format_args!("page fault in user mode at {cr2:#x}"),
        );
    }
    if cr2 == EXPECTED_FAULT_ADDR.load(Ordering::SeqCst)
        && let Some(then) = EXPECTED_FAULT_THEN.get()
    {
        then(cr2, code.bits());
    }
    crate::platform::failure::fatal(format_args!(
        "EXCEPTION 14 (page fault) at RIP {:#x}: CR2 {cr2:#x}, error code {:#x} ({:?})",
        frame.instruction_pointer.as_u64(),
        code.bits(),
        code
    ));
}

/// Called on every timer tick (on every CPU), e.g. to end a doorbell throttle or to beat the
/// heartbeat. Hooks run with interrupts off and must not allocate or take locks that thread
/// context holds.
static TICK_HOOKS: HookList<fn()> = HookList::new();

/// Adds a timer-tick hook.
pub fn add_tick_hook(hook: fn()) -> Result<(), Full> {
    TICK_HOOKS.add(hook)
}

extern "x86-interrupt" fn lapic_timer(frame: InterruptStackFrame) {
    let user = enter(&frame);
    if !gates().is_none_or(|g| g.timer.admit(super::tsc::read(), tick_min_gap()).taken()) {
        // Forged (another instance's IPI on the timer vector), or a real tick right behind
        // a forged one: the hooks ran less than half a period ago.
        super::cpu::eoi();
        leave_quietly(user);
        return;
    }
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    handle_held_back();
    for hook in TICK_HOOKS.iter() {
        hook();
    }
    if let Some(cpu) = super::cpu::try_current() {
        cpu.ticks.fetch_add(1, Ordering::Relaxed);
    }
    super::cpu::eoi();
    leave(user);
}

/// Local APIC error interrupts (a peer sending an illegal vector causes them): counted,
/// reported by [`surface`].
static LAPIC_ERRORS: AtomicU64 = AtomicU64::new(0);

extern "x86-interrupt" fn lapic_error(frame: InterruptStackFrame) {
    let user = enter(&frame);
    LAPIC_ERRORS.fetch_add(1, Ordering::Relaxed);
    super::cpu::eoi();
    leave_quietly(user);
}

/// NMIs taken. Another instance can send one at any time (delivery mode NMI): it is counted
/// and survived, reported by [`surface`]. Nothing else here: an NMI may land anywhere, even
/// inside a lock's critical section or between the two `swapgs` of an entry, so the handler
/// touches neither GS nor any lock.
static NMIS: AtomicU64 = AtomicU64::new(0);

extern "x86-interrupt" fn nmi(_frame: InterruptStackFrame) {
    NMIS.fetch_add(1, Ordering::Relaxed);
}

/// Interrupts on vectors with no handler of their own (another instance's IPIs on any vector
/// from 0x20 up), and the last such vector.
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);
static LAST_UNEXPECTED: AtomicU64 = AtomicU64::new(0);

extern "x86-interrupt" fn unexpected<const VECTOR: u8>(frame: InterruptStackFrame) {
    let user = enter(&frame);
    UNEXPECTED.fetch_add(1, Ordering::Relaxed);
    LAST_UNEXPECTED.store(u64::from(VECTOR), Ordering::Relaxed);
    // Vectors from 0x20 up come only through the local APIC (nothing here executes `int`),
    // which holds the vector in service until the EOI.
    super::cpu::eoi();
    leave_quietly(user);
}

/// End of a handler that [`enter`]ed and did nothing for the task (a dropped or unexpected
/// interrupt): GS back, without the user-return hook, so a flood makes no scheduling
/// decisions.
fn leave_quietly(user: bool) {
    if user {
        swapgs();
    }
}

/// One CPU's gates for the vectors another instance can send.
struct Gates {
    timer: mk_surface::TickGate,
    probe: mk_surface::Bucket,
    device: [mk_surface::Bucket; vectors::IRQ_COUNT],
}

static GATES: [Gates; super::cpu::MAX_SLOTS] = [const {
    Gates {
        timer: mk_surface::TickGate::new(),
        probe: mk_surface::Bucket::new(),
        device: [const { mk_surface::Bucket::new() }; vectors::IRQ_COUNT],
    }
}; super::cpu::MAX_SLOTS];

/// The running CPU's gates (only its own handlers use them).
fn gates() -> Option<&'static Gates> {
    GATES.get(super::cpu::try_current()?.index as usize)
}

/// Half the timer's period in TSC ticks (0, taking every tick, until the timer runs).
fn tick_min_gap() -> u64 {
    match u64::from(super::apic::tick_rate()) {
        0 => 0,
        hz => super::tsc::ticks_per_ms() * 1000 / hz / 2,
    }
}

/// The probe vector: a burst of 4096 (more than the benchmark's round trips per figure), then
/// one per 10 µs.
fn probe_rate() -> mk_surface::Rate {
    mk_surface::Rate::per_micros(4096, 10, super::tsc::ticks_per_ms())
}

/// Each device line: a burst of 256, then one per 50 µs (20,000 a second: above the RTC's
/// fastest periodic rate and a serial line's byte rate).
fn device_rate() -> mk_surface::Rate {
    mk_surface::Rate::per_micros(256, 50, super::tsc::ticks_per_ms())
}

/// What the gates and the survived vectors counted, over this instance's CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Surface {
    /// Timer interrupts dropped (less than half a period after the last one taken).
    pub timer_dropped: u64,
    /// Probe interrupts dropped (over its rate).
    pub probe_dropped: u64,
    /// Device interrupts dropped (over their line's rate), and the floods (runs of drops).
    pub device_dropped: u64,
    pub device_floods: u64,
    pub nmis: u64,
    /// Interrupts on vectors with no handler, and the last such vector.
    pub unexpected: u64,
    pub last_unexpected: u8,
    pub lapic_errors: u64,
}

/// The interrupt surface's counters (see [`Surface`]).
pub fn surface() -> Surface {
    let mut s = Surface {
        nmis: NMIS.load(Ordering::Relaxed),
        unexpected: UNEXPECTED.load(Ordering::Relaxed),
        last_unexpected: LAST_UNEXPECTED.load(Ordering::Relaxed) as u8,
        lapic_errors: LAPIC_ERRORS.load(Ordering::Relaxed),
        ..Surface::default()
    };
    for g in &GATES {
        s.timer_dropped += g.timer.dropped();
        s.probe_dropped += g.probe.dropped();
        for d in &g.device {
            s.device_dropped += d.dropped();
            s.device_floods += d.floods();
        }
    }
    s
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {
    // A spurious interrupt needs no EOI (local APIC and PIC alike), and touches no per-CPU
    // state, so it needs no GS swap either.
}

/// Device interrupt handlers, one per IO APIC line.
static IRQ_HANDLERS: [Hook<fn(usize)>; vectors::IRQ_COUNT] =
    [const { Hook::new() }; vectors::IRQ_COUNT];
/// Interrupts taken per line (whether or not a handler was registered).
pub static IRQ_COUNTS: [AtomicU64; vectors::IRQ_COUNT] =
    [const { AtomicU64::new(0) }; vectors::IRQ_COUNT];

/// Lines whose interrupt the gate held back (over the line's rate), one bit each: the next
/// timer tick this instance takes handles each of them once. A device that interrupts faster
/// than the rate (a serial line in loopback under emulation, with nothing pacing its bytes)
/// has its interrupt delayed by a tick at most, never lost: an edge the handler never saw
/// would leave the device waiting for good. A flood of forged interrupts on the line still
/// runs its handler at most at the rate, plus once a tick.
static HELD_BACK: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(vectors::IRQ_COUNT <= 64);

/// Runs the handler of `line`, counted.
#[inline]
fn handle_line(line: usize) {
    if let Some(count) = IRQ_COUNTS.get(line) {
        count.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(handler) = IRQ_HANDLERS.get(line).and_then(Hook::get) {
        handler(line);
    }
}

/// The lines whose interrupt the gate holds back right now, waiting for the next tick (one
/// bit per line).
pub fn held_back_lines() -> u64 {
    HELD_BACK.load(Ordering::Relaxed)
}

/// From a tick taken: handles once each line the gate held back since the last tick.
fn handle_held_back() {
    if HELD_BACK.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut lines = HELD_BACK.swap(0, Ordering::Relaxed);
    while lines != 0 {
        let line = lines.trailing_zeros() as usize;
        lines &= lines - 1;
        handle_line(line);
    }
}

/// Installs `handler` for IO APIC line `line` (vector IRQ_BASE + line). Handlers run with
/// interrupts off and must not allocate.
pub fn set_irq_handler(line: usize, handler: fn(usize)) -> Result<(), IrqHandlerError> {
    let slot = IRQ_HANDLERS
        .get(line)
        .ok_or(IrqHandlerError::NoSuchLine { line })?;
    slot.set(handler)
        .map_err(|_| IrqHandlerError::HookFull { line })
}

/// Why [`set_irq_handler`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqHandlerError {
    /// The caller's `line` is beyond the IO APIC lines this kernel has vectors for.
    NoSuchLine { line: usize },
    /// The line's hook holds as many handlers as it can (this instance's state).
    HookFull { line: usize },
}

impl core::fmt::Display for IrqHandlerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchLine { line } => write!(f, "no such IRQ line ({line})"),
            Self::HookFull { line } => write!(f, "the line's handler hook is full (line {line})"),
        }
    }
}

extern "x86-interrupt" fn device_irq<const LINE: usize>(frame: InterruptStackFrame) {
    let user = enter(&frame);
    if !gates().is_none_or(|g| {
        g.device[LINE]
            .admit(super::tsc::read(), device_rate())
            .taken()
    }) {
        HELD_BACK.fetch_or(1 << LINE, Ordering::Relaxed);
        super::cpu::eoi();
        leave_quietly(user);
        return;
    }
    handle_line(LINE);
    super::cpu::eoi();
    leave(user);
}

/// The doorbell vector. Messaging installs its drain function here.
static MESSAGE_HANDLER: Hook<fn()> = Hook::new();
pub static MESSAGE_IPIS: AtomicU64 = AtomicU64::new(0);

pub fn set_message_handler(handler: fn()) -> Result<(), Full> {
    MESSAGE_HANDLER.set(handler)
}

extern "x86-interrupt" fn message_ipi(frame: InterruptStackFrame) {
    let user = enter(&frame);
    MESSAGE_IPIS.fetch_add(1, Ordering::Relaxed);
    if let Some(handler) = MESSAGE_HANDLER.get() {
        handler();
    }
    super::cpu::eoi();
    leave(user);
}

/// Wake-up IPIs taken (all CPUs of this instance).
pub static WAKE_IPIS: AtomicU64 = AtomicU64::new(0);

/// The wake-up vector: nothing to do but EOI. Arriving is the point: the CPU leaves `hlt`,
/// and an interrupted ring-3 task passes the user-return hook, where the scheduler sees the
/// woken task and preempts.
extern "x86-interrupt" fn wake_ipi(frame: InterruptStackFrame) {
    let user = enter(&frame);
    WAKE_IPIS.fetch_add(1, Ordering::Relaxed);
    super::cpu::eoi();
    leave(user);
}

/// The probe vector's handler (the benchmark installs one that answers, or one that counts).
static PROBE_HANDLER: Hook<fn()> = Hook::new();
pub static PROBE_IPIS: AtomicU64 = AtomicU64::new(0);

pub fn set_probe_handler(handler: fn()) -> Result<(), Full> {
    PROBE_HANDLER.set(handler)
}

extern "x86-interrupt" fn probe_ipi(frame: InterruptStackFrame) {
    let user = enter(&frame);
    if !gates().is_none_or(|g| g.probe.admit(super::tsc::read(), probe_rate()).taken()) {
        super::cpu::eoi();
        leave_quietly(user);
        return;
    }
    PROBE_IPIS.fetch_add(1, Ordering::Release);
    if let Some(handler) = PROBE_HANDLER.get() {
        handler();
    }
    super::cpu::eoi();
    leave(user);
}

macro_rules! device_vectors {
    ($idt:ident, $($line:literal)*) => {
        $( $idt[vectors::IRQ_BASE + $line].set_handler_fn(device_irq::<$line>); )*
    };
}

/// Every vector from 0x20 up gets [`unexpected`] first; the ones with a handler of their own
/// are set over it afterwards.
macro_rules! unexpected_vectors {
    ($idt:ident; $($hi:literal)*) => {
        $( unexpected_vectors!(@row $idt $hi; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15); )*
    };
    (@row $idt:ident $hi:literal; $($lo:literal)*) => {
        $( $idt[$hi * 16 + $lo].set_handler_fn(unexpected::<{ $hi * 16 + $lo }>); )*
    };
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    unexpected_vectors!(idt; 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available
        .set_handler_fn(device_not_available);
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception
        .set_handler_fn(control_protection);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    idt.vmm_communication_exception
        .set_handler_fn(vmm_communication);
    idt.security_exception.set_handler_fn(security);
    // SAFETY: the IST indices name stacks that gdt::init_* placed in this CPU's TSS before the
    // IDT is loaded, and that are used by nothing else.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(gdt::DOUBLE_FAULT_IST);
        idt.non_maskable_interrupt
            .set_handler_fn(nmi)
            .set_stack_index(gdt::NMI_IST);
        idt.machine_check
            .set_handler_fn(machine_check)
            .set_stack_index(gdt::MACHINE_CHECK_IST);
    }
    idt[vectors::PIC_SPURIOUS_1].set_handler_fn(spurious);
    idt[vectors::PIC_SPURIOUS_2].set_handler_fn(spurious);
    idt[vectors::LAPIC_TIMER].set_handler_fn(lapic_timer);
    idt[vectors::MESSAGE_IPI].set_handler_fn(message_ipi);
    idt[vectors::PROBE_IPI].set_handler_fn(probe_ipi);
    idt[vectors::WAKE_IPI].set_handler_fn(wake_ipi);
    idt[vectors::LAPIC_ERROR].set_handler_fn(lapic_error);
    idt[vectors::SPURIOUS].set_handler_fn(spurious);
    device_vectors!(idt, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    idt
}
