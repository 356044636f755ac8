//! Starting a CPU: INIT, then two start-up IPIs pointing at a trampoline page, then wait until it
//! reports from long mode. Used by instance 0 for each partition's first CPU and by every
//! instance for the further CPUs of its own partition (each instance has its own trampoline page,
//! so two instances can start CPUs at the same time).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::arch::cpu::PerCpu;
use crate::arch::trampoline::{self, Params};
use crate::arch::{apic, cpu, gdt, interrupts, tsc, vectors};
use crate::platform::descriptor;
use crate::{info, instance};

use mk_hook::{Full, Hook};

const AP_STACK_SIZE: usize = 64 * 1024;

/// Why a CPU did not start or park, and whose side it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuError {
    /// The trampoline page is unusable (this instance's set-up).
    Trampoline(trampoline::TrampolineError),
    /// This CPU has no local APIC to send the IPIs with (this instance's set-up).
    NoLocalApic,
    /// The CPU did not reach long mode within 2 s of its start-up IPI (the CPU's side).
    NoLongMode,
    /// The CPU reached long mode but did not come online within 2 s (its kernel's side).
    NotOnline,
    /// No such slot, or no free one (this instance has `MAX_CPUS` CPUs).
    NoSlot,
    /// This instance's page-table root is above 4 GiB, which the trampoline cannot load.
    RootAbove4G(u64),
    /// This instance has no trampoline page to start CPUs through.
    NoTrampoline,
    /// Not an online CPU of this instance (the caller's argument).
    NotOnlineHere(u32),
    /// The first CPU serves the mailboxes and cannot leave (the caller's argument).
    FirstCpu,
    /// The CPU did not park in time (the CPU's side).
    ParkTimeout(u32),
}

impl core::fmt::Display for CpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Trampoline(e) => e.fmt(f),
            Self::NoLocalApic => write!(f, "no local APIC"),
            Self::NoLongMode => {
                write!(
                    f,
                    "the CPU did not reach long mode within 2 s of its start-up IPI"
                )
            }
            Self::NotOnline => write!(f, "the CPU reached long mode but did not come online"),
            Self::NoSlot => write!(f, "no free CPU slot"),
            Self::RootAbove4G(p) => write!(
                f,
                "this instance's page-table root {p:#x} is above 4 GiB; the trampoline loads CR3 from 32-bit code"
            ),
            Self::NoTrampoline => write!(f, "this instance has no trampoline page"),
            Self::NotOnlineHere(a) => {
                write!(f, "APIC ID {a} is not an online CPU of this instance")
            }
            Self::FirstCpu => write!(f, "the first CPU serves the mailboxes and cannot leave"),
            Self::ParkTimeout(a) => write!(f, "the CPU with APIC ID {a} did not park in time"),
        }
    }
}

/// Starts the CPU with APIC ID `apic_id` in the trampoline at physical `page` (which the caller
/// reserved and can reach through its physical map) with `params`.
pub fn start_cpu(apic_id: u32, page: u64, params: Params) -> Result<(), CpuError> {
    let vector = trampoline::install_at(page, params).map_err(CpuError::Trampoline)?;
    let this = cpu::current();
    this.with_lapic(|l| l.send_init(apic_id))
        .ok_or(CpuError::NoLocalApic)?;
    // INIT must be processed before the SIPI (KVM drops an early SIPI).
    tsc::spin_micros(10_000);
    this.with_lapic(|l| l.send_startup(vector, apic_id));
    tsc::spin_micros(200);
    if !trampoline::started(page) {
        this.with_lapic(|l| l.send_startup(vector, apic_id));
    }
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while !trampoline::started(page) {
        if tsc::read() > deadline {
            return Err(CpuError::NoLongMode);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// CPUs of this instance that are up (the first one included).
pub static ONLINE: AtomicU32 = AtomicU32::new(0);

/// How many of this instance's CPUs have taken at least one timer interrupt.
pub fn cpus_ticking() -> u32 {
    cpu::online()
        .filter(|c| c.ticks.load(Ordering::Relaxed) > 0)
        .count() as u32
}

/// Records a CPU of this instance as online.
pub fn register(cpu: &'static PerCpu) {
    cpu::publish(cpu);
    ONLINE.fetch_add(1, Ordering::SeqCst);
}

/// Starts the further CPUs of this instance (`cpus[1..]`; `cpus[0]` is the running one)
/// through its own trampoline page, one after the other.
pub fn start_further_cpus(cpus: &[u32], page: u64) {
    for (index, &ap) in cpus.iter().enumerate().skip(1) {
        if let Err(e) = start_ap(index as u32, ap, page) {
            crate::error!("CPU with APIC ID {ap} did not start: {e}");
        }
    }
}

/// Kernel stacks of the CPU slots, allocated on first use and reused by later CPUs in the same
/// slot (see `gdt::IST_STACKS` for why that is safe).
static AP_STACKS: spin::Mutex<[u64; descriptor::MAX_CPUS]> =
    spin::Mutex::new([0; descriptor::MAX_CPUS]);

/// Starts one further CPU of this instance in slot `index`.
fn start_ap(index: u32, apic_id: u32, page: u64) -> Result<(), CpuError> {
    let top = {
        let mut stacks = AP_STACKS.lock();
        let slot = stacks.get_mut(index as usize).ok_or(CpuError::NoSlot)?;
        if *slot == 0 {
            let stack: &'static mut [u8] =
                Box::leak(alloc::vec![0u8; AP_STACK_SIZE].into_boxed_slice());
            *slot = (stack.as_ptr() as u64 + AP_STACK_SIZE as u64) & !0xF;
        }
        *slot
    };
    // This instance's top-level table: a low page (see `memory::launch::prepare`, and
    // `paging::move_root` for instance 0), as the trampoline loads CR3 from 32-bit code.
    let cr3 = crate::memory::paging::root();
    if cr3 >= 1 << 32 {
        return Err(CpuError::RootAbove4G(cr3));
    }
    let params = Params {
        cr3,
        stack: top,
        entry: ap_entry as *const () as u64,
        arg: u64::from(index),
        started: 0,
        _pad: 0,
    };
    start_cpu(apic_id, page, params)?;
    // Wait until it has installed its per-CPU state (it registers itself in its slot).
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while cpu::by_slot(index as usize).is_none() {
        if tsc::read() > deadline {
            return Err(CpuError::NotOnline);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Enables the running CPU's local APIC with the timer rate instance 0 measured.
pub fn bring_up_lapic(hz_div16: u64) -> apic::Lapic {
    let xapic_virt = apic::xapic_window()
        .unwrap_or_else(|e| crate::platform::failure::fatal(format_args!("{e}")));
    let mut lapic = apic::init_this_cpu(xapic_virt)
        .unwrap_or_else(|e| crate::platform::failure::fatal(format_args!("local APIC: {e}")));
    lapic.set_timer_hz(hz_div16);
    lapic.start_periodic(apic::TICK_HZ);
    lapic
}

/// Called on a further CPU once it is online in this instance, with its APIC ID (the CPU
/// service records the join).
static ON_JOIN: Hook<fn(u32)> = Hook::new();

/// Installs the function every further CPU calls once it is online.
pub fn on_cpu_joined(hook: fn(u32)) -> Result<(), Full> {
    ON_JOIN.set(hook)
}

/// Where a further CPU of an instance lands from the trampoline, on its own stack, with its
/// index in the instance.
extern "C" fn ap_entry(index: u64) -> ! {
    gdt::init_ap(index as usize);
    interrupts::load_on_this_cpu();
    crate::arch::syscall::init_this_cpu();
    let lapic = bring_up_lapic(apic::timer_hz_div16());
    let apic_id = lapic.id();
    let this = cpu::install(index as u32, apic_id);
    this.set_lapic(lapic);
    register(this);
    if let Some(hook) = ON_JOIN.get() {
        hook(apic_id);
    }
    info!(
        "CPU {index} (APIC ID {apic_id}) joined instance {}",
        instance::id()
    );
    x86_64::instructions::interrupts::enable();
    let slot = index as usize;
    if let Some(work) = IDLE_WORK.get() {
        work.joined(slot);
    }
    loop {
        let worked = IDLE_WORK.get().is_some_and(|w| (w.run)());
        if park_requested(slot) {
            if let Some(work) = IDLE_WORK.get() {
                work.leaving(slot);
            }
            park_this_cpu();
        }
        if !worked {
            // Interrupts off from the kick check to `hlt` (`sti; hlt` leaves no gap): a task
            // made ready here after `run` looked is either seen as a kick now or its IPI ends
            // the `hlt`, never left until the next tick.
            x86_64::instructions::interrupts::disable();
            if take_kick(slot) {
                x86_64::instructions::interrupts::enable();
            } else {
                x86_64::instructions::interrupts::enable_and_hlt();
            }
        }
    }
}

/// Wake-up IPIs sent by this instance ([`kick`]).
pub static KICKS: AtomicU64 = AtomicU64::new(0);

/// Per CPU slot: a kick was sent and the CPU has not yet looked (see [`take_kick`]).
static KICK_PENDING: [AtomicBool; descriptor::MAX_CPUS] =
    [const { AtomicBool::new(false) }; descriptor::MAX_CPUS];

/// Gets the CPU in `slot` to look for work now: marks it kicked, then sends it the wake-up IPI
/// (which takes it out of `hlt`, or a task it runs in ring 3 back to its scheduler). Returns
/// whether an IPI went out (not if the slot has no online CPU or this CPU has no local APIC).
/// Call it after the work is visible (the task made ready, its lock let go).
pub fn kick(slot: usize) -> bool {
    let (Some(target), Some(pending)) = (cpu::by_slot(slot), KICK_PENDING.get(slot)) else {
        return false;
    };
    // Before the IPI: a CPU between its last look for work and `hlt` sees the flag (with
    // interrupts off) and does not halt, even if the IPI was taken before it disabled them.
    pending.store(true, Ordering::SeqCst);
    let Some(this) = cpu::try_current() else {
        return false;
    };
    let sent = this
        .with_lapic(|l| l.send_ipi(vectors::WAKE_IPI, target.apic_id))
        .is_some();
    if sent {
        KICKS.fetch_add(1, Ordering::Relaxed);
    }
    sent
}

/// Whether the CPU in `slot` was kicked since it last asked (and clears it). An idle loop asks
/// with interrupts off, just before `hlt`: if it was kicked, it looks for work again instead.
pub fn take_kick(slot: usize) -> bool {
    KICK_PENDING
        .get(slot)
        .is_some_and(|p| p.swap(false, Ordering::SeqCst))
}

/// What a further CPU does besides halting: run tasks (installed by the tasks layer).
pub struct IdleWork {
    /// Runs some work; true if there was any (the CPU does not halt then).
    pub run: fn() -> bool,
    /// The CPU in this slot joined the instance.
    pub joined: fn(usize),
    /// The CPU in this slot is about to park (leave the instance).
    pub leaving: fn(usize),
}

impl IdleWork {
    fn joined(&self, slot: usize) {
        (self.joined)(slot);
    }
    fn leaving(&self, slot: usize) {
        (self.leaving)(slot);
    }
}

static IDLE_WORK: spin::Once<&'static IdleWork> = spin::Once::new();

/// Installs the further CPUs' idle work (once per instance; a second call is ignored).
pub fn set_idle_work(work: &'static IdleWork) {
    IDLE_WORK.call_once(|| work);
}

/// Whether the CPU in `slot` has been asked to park (or the whole instance is stopping).
pub fn park_requested(slot: usize) -> bool {
    PARK.load(Ordering::SeqCst) || PARK_CPU.get(slot).is_some_and(|p| p.load(Ordering::SeqCst))
}

/// Set when the instance stops: its further CPUs park at their next wake-up.
pub static PARK: AtomicBool = AtomicBool::new(false);
/// Per CPU slot: park this one CPU at its next wake-up (it leaves the instance).
static PARK_CPU: [AtomicBool; descriptor::MAX_CPUS] =
    [const { AtomicBool::new(false) }; descriptor::MAX_CPUS];
/// Further CPUs of this instance that have parked.
pub static PARKED: AtomicU32 = AtomicU32::new(0);

/// Parks the running CPU: it leaves its slot, turns interrupts off and halts for good. Only
/// INIT (a new start through a trampoline, in this instance or another) gets it going again.
pub fn park_this_cpu() -> ! {
    x86_64::instructions::interrupts::disable();
    if let Some(c) = cpu::try_current()
        && c.index != 0
    {
        let i = c.index as usize;
        cpu::withdraw(i);
        PARK_CPU[i].store(false, Ordering::SeqCst);
        ONLINE.fetch_sub(1, Ordering::SeqCst);
        PARKED.fetch_add(1, Ordering::SeqCst);
    }
    cpu::halt_forever()
}

/// This instance's trampoline page (physical, identity-mapped), for starting CPUs that join it
/// later.
pub static TRAMPOLINE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// APIC IDs of this instance's online CPUs, its first CPU first.
pub fn cpu_list() -> alloc::vec::Vec<u32> {
    cpu::online().map(|c| c.apic_id).collect()
}

/// The slot of the online CPU with APIC ID `apic`.
pub fn slot_of(apic: u32) -> Option<usize> {
    cpu::online()
        .find(|c| c.apic_id == apic)
        .map(|c| c.index as usize)
}

/// Asks the further CPU with APIC ID `apic` to park, and waits (up to `ms`) until it has.
pub fn park_cpu(apic: u32, ms: u64) -> Result<(), CpuError> {
    let slot = slot_of(apic).ok_or(CpuError::NotOnlineHere(apic))?;
    if slot == 0 {
        return Err(CpuError::FirstCpu);
    }
    PARK_CPU[slot].store(true, Ordering::SeqCst);
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    while cpu::by_slot(slot).is_some() {
        if tsc::read() > deadline {
            PARK_CPU[slot].store(false, Ordering::SeqCst);
            return Err(CpuError::ParkTimeout(apic));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Starts the (parked, or never started) CPU with APIC ID `apic` in this instance, in the
/// first free slot, through this instance's trampoline page. Returns the slot.
pub fn start_joining_cpu(apic: u32) -> Result<usize, CpuError> {
    let page = TRAMPOLINE.load(Ordering::SeqCst);
    if page == 0 {
        return Err(CpuError::NoTrampoline);
    }
    let slot = (1..descriptor::MAX_CPUS)
        .find(|&i| cpu::by_slot(i).is_none())
        .ok_or(CpuError::NoSlot)?;
    start_ap(slot as u32, apic, page)?;
    Ok(slot)
}
