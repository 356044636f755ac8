//! The boot path of every instance but 0: it starts on the first CPU of its partition, from the
//! `BootInfo` and boot descriptor instance 0 built for it, with page tables that map only its own
//! memory and the shared region.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use bootloader_api::BootInfo;

use super::descriptor::{self, BootDescriptor};
use super::{region, smp};
use crate::arch::cpu::PerCpu;
use crate::arch::trampoline::Params;
use crate::arch::{apic, cpu, gdt, interrupts, tsc};
use crate::{console, fatal, info, instance, memory};

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

fn register(cpu: &'static PerCpu) {
    if let Some(slot) = CPUS.get(cpu.index as usize) {
        slot.store(cpu as *const PerCpu as *mut PerCpu, Ordering::Release);
    }
}
const AP_STACK_SIZE: usize = 64 * 1024;

pub fn main(boot_info: &'static BootInfo, desc: &'static BootDescriptor) -> ! {
    console::init_guest();
    instance::set_id(desc.instance_id);
    gdt::init_bsp();
    interrupts::init();
    if let Err(e) = memory::init(boot_info) {
        fatal(format_args!("memory init failed: {e}"));
    }
    tsc::set_ticks_per_ms(desc.tsc_per_ms);
    if let Err(e) = region::attach(desc.shared_phys, desc.shared_len) {
        fatal(format_args!("shared region: {e}"));
    }
    console::use_shared_lock();
    if let Err(e) = crate::messaging::init(desc.instance_id as usize) {
        crate::error!("messaging: {e}");
    }
    let lapic = bring_up_lapic(desc.lapic_hz_div16);
    let apic_id = lapic.id();
    let this = cpu::install(0, apic_id);
    this.set_lapic(lapic);
    register(this);
    ONLINE.store(1, Ordering::SeqCst);
    x86_64::instructions::interrupts::enable();

    for (index, &ap) in desc.cpus().iter().enumerate().skip(1) {
        if let Err(e) = start_ap(index as u32, ap, desc.trampoline_page) {
            crate::error!("CPU with APIC ID {ap} did not start: {e}");
        }
    }
    let (free, owned) = memory::frames::counts();
    region::publish_running(desc.instance_id, desc.cpus(), ONLINE.load(Ordering::SeqCst));
    info!(
        "instance {} up: APIC ID {apic_id}, {} of {} CPUs online, {} MiB ({} MiB free)",
        desc.instance_id,
        ONLINE.load(Ordering::SeqCst),
        desc.cpu_count,
        (owned * 4096) >> 20,
        (free * 4096) >> 20
    );

    #[cfg(feature = "qemu-tests")]
    if !desc.tests().is_empty() {
        crate::selftest::run_in_instance(desc);
    }

    crate::messaging::serve_forever()
}

/// Enables the running CPU's local APIC with the timer rate instance 0 measured.
fn bring_up_lapic(hz_div16: u64) -> apic::Lapic {
    let xapic_virt = apic::xapic_window().unwrap_or_else(|e| fatal(format_args!("{e}")));
    let mut lapic =
        apic::init_this_cpu(xapic_virt).unwrap_or_else(|e| fatal(format_args!("local APIC: {e}")));
    lapic.set_timer_hz(hz_div16);
    lapic.start_periodic(crate::TICK_HZ);
    lapic
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
    smp::start_cpu(apic_id, page, params)?;
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
    let lapic = bring_up_lapic(apic::timer_hz_div16());
    let apic_id = lapic.id();
    let this = cpu::install(index as u32, apic_id);
    this.set_lapic(lapic);
    register(this);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    info!(
        "CPU {index} (APIC ID {apic_id}) joined instance {}",
        instance::id()
    );
    x86_64::instructions::interrupts::enable();
    loop {
        x86_64::instructions::hlt();
    }
}
