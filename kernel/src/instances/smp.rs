//! Starting a CPU: INIT, then two start-up IPIs pointing at a trampoline page, then wait until it
//! reports from long mode. Used by instance 0 for each partition's first CPU and by every
//! instance for the further CPUs of its own partition (each instance has its own trampoline page,
//! so two instances can start CPUs at the same time).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use super::descriptor;
use crate::arch::cpu::PerCpu;
use crate::arch::trampoline::{self, Params};
use crate::arch::{apic, cpu, gdt, interrupts, tsc};
use crate::memory::frames::phys_to_virt;
use crate::{info, instance};

const AP_STACK_SIZE: usize = 64 * 1024;

/// Starts the CPU with APIC ID `apic_id` in the trampoline at physical `page` (which the caller
/// reserved and can reach through its physical map) with `params`.
pub fn start_cpu(apic_id: u32, page: u64, params: Params) -> Result<(), &'static str> {
    let page_virt = phys_to_virt(page);
    // SAFETY: `page` is this instance's trampoline page (reserved below 1 MiB, mapped at
    // `page_virt`), and no other CPU is running the trampoline from it now: starts from one
    // instance are sequential.
    let vector = unsafe { trampoline::install(page, page_virt, params) };
    let this = cpu::current();
    this.with_lapic(|l| l.send_init(apic_id))
        .ok_or("no local APIC")?;
    // INIT must be processed before the SIPI (KVM drops an early SIPI).
    tsc::spin_micros(10_000);
    this.with_lapic(|l| l.send_startup(vector, apic_id));
    tsc::spin_micros(200);
    if !trampoline::started(page_virt) {
        this.with_lapic(|l| l.send_startup(vector, apic_id));
    }
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while !trampoline::started(page_virt) {
        if tsc::read() > deadline {
            return Err("the CPU did not reach long mode within 2 s of its start-up IPI");
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// CPUs of this instance that are up (the first one included).
pub static ONLINE: AtomicU32 = AtomicU32::new(0);
/// The per-CPU blocks of this instance's CPUs, by index (for status and tests).
pub static CPUS: [AtomicPtr<PerCpu>; descriptor::MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; descriptor::MAX_CPUS];

/// How many of this instance's CPUs have taken at least one timer interrupt.
pub fn cpus_ticking() -> u32 {
    CPUS.iter()
        .filter_map(|p| {
            let p = p.load(Ordering::Acquire);
            // SAFETY: non-null entries point at leaked per-CPU blocks (see `register`).
            (!p.is_null()).then(|| unsafe { &*p })
        })
        .filter(|c| c.ticks.load(Ordering::Relaxed) > 0)
        .count() as u32
}

/// Records a CPU of this instance as online.
pub fn register(cpu: &'static PerCpu) {
    if let Some(slot) = CPUS.get(cpu.index as usize) {
        slot.store(cpu as *const PerCpu as *mut PerCpu, Ordering::Release);
    }
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

/// Starts one further CPU of this instance on its own stack.
fn start_ap(index: u32, apic_id: u32, page: u64) -> Result<(), &'static str> {
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; AP_STACK_SIZE].into_boxed_slice());
    let top = (stack.as_ptr() as u64 + AP_STACK_SIZE as u64) & !0xF;
    let (cr3, _) = x86_64::registers::control::Cr3::read();
    let params = Params {
        cr3: cr3.start_address().as_u64(),
        stack: top,
        entry: ap_entry as *const () as u64,
        arg: u64::from(index),
        started: 0,
        _pad: 0,
    };
    start_cpu(apic_id, page, params)?;
    // Wait until it has installed its per-CPU state (it counts itself online).
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while ONLINE.load(Ordering::SeqCst) <= index {
        if tsc::read() > deadline {
            return Err("the CPU reached long mode but did not come online");
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Where a further CPU of an instance lands from the trampoline, on its own stack, with its
/// index in the instance.
extern "C" fn ap_entry(index: u64) -> ! {
    gdt::init_ap();
    interrupts::load_on_this_cpu();
    let lapic = super::secondary::bring_up_lapic(apic::timer_hz_div16());
    let apic_id = lapic.id();
    let this = cpu::install(index as u32, apic_id);
    this.set_lapic(lapic);
    register(this);
    info!(
        "CPU {index} (APIC ID {apic_id}) joined instance {}",
        instance::id()
    );
    x86_64::instructions::interrupts::enable();
    loop {
        x86_64::instructions::hlt();
        if PARK.load(Ordering::SeqCst) {
            park_this_cpu();
        }
    }
}

/// Set when the instance stops: its further CPUs park at their next wake-up.
pub static PARK: AtomicBool = AtomicBool::new(false);
/// Further CPUs of this instance that have parked.
pub static PARKED: AtomicU32 = AtomicU32::new(0);

/// Parks the running CPU: interrupts off, halted for good. Only INIT (a new start through a
/// trampoline) gets it going again.
pub fn park_this_cpu() -> ! {
    if cpu::try_current().is_some_and(|c| c.index != 0) {
        PARKED.fetch_add(1, Ordering::SeqCst);
    }
    cpu::halt_forever()
}
