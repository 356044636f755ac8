//! Starting a CPU: INIT, then two start-up IPIs pointing at a trampoline page, then wait until it
//! reports from long mode. Used by instance 0 for each partition's first CPU and by every
//! instance for the further CPUs of its own partition (each instance has its own trampoline page,
//! so two instances can start CPUs at the same time).

use crate::arch::trampoline::{self, Params};
use crate::arch::{cpu, tsc};
use crate::memory::frames::phys_to_virt;

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
