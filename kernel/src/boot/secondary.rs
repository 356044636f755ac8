//! The boot path of every instance but 0: it starts on the first CPU of its partition, from the
//! `BootInfo` and boot descriptor instance 0 built for it, with page tables that map only its own
//! memory and the shared region.

use core::sync::atomic::Ordering;

use bootloader_api::BootInfo;

use crate::arch::{cpu, gdt, interrupts, tsc};
use crate::cpus::smp;
use crate::platform::descriptor::BootDescriptor;
use crate::platform::failure::fatal;
use crate::shared::region;
use crate::{console, info, instance, memory};

pub fn start(boot_info: &'static BootInfo, desc: &'static BootDescriptor) {
    console::init_guest();
    let me = instance::of_partition(desc.instance_id as usize);
    instance::set_id(me);
    gdt::init_bsp();
    interrupts::init();
    if let Err(e) = memory::init(boot_info) {
        fatal(format_args!("memory init failed: {e}"));
    }
    if let Err(e) = memory::ramdisk::init(desc.archive()) {
        crate::warn!("ramdisk: {e}; running without user programs");
    }
    tsc::set_ticks_per_ms(desc.tsc_per_ms);
    console::attach_framebuffer(&desc.framebuffer);
    if let Err(e) = region::attach(desc.shared_phys, desc.shared_len) {
        fatal(format_args!("shared region: {e}"));
    }
    if let Some(r) = region::get() {
        console::use_shared(r);
    }
    // From here on, every stage is a sign of progress for instance 0, which waits for us.
    region::boot_progress();
    if let Err(e) = crate::messaging::doorbell::learn_plan(desc.plan_cpus()) {
        crate::warn!("the boot descriptor's plan: {e:?}; no doorbell goes to that CPU");
    }
    if let Err(e) = crate::messaging::init(me) {
        crate::error!("messaging: {e}");
    } else if let Err(e) = crate::services::init(me) {
        crate::error!("services: {e}");
    }
    region::boot_progress();
    let lapic = smp::bring_up_lapic(desc.lapic_hz_div16);
    let apic_id = lapic.id();
    let this = cpu::install(0, apic_id);
    this.set_lapic(lapic);
    smp::register(this);
    super::tasks::start_tasks();
    // The timer beats the heartbeat counter from now on (the heartbeat service's tick hook).
    x86_64::instructions::interrupts::enable();

    attach_ioapics(desc);
    crate::services::irq::set_rtc_gsi(desc.rtc_gsi);
    crate::services::irq::set_com2_gsi(desc.com2_gsi);
    smp::TRAMPOLINE.store(desc.trampoline_page, Ordering::SeqCst);
    smp::start_further_cpus(desc.cpus(), desc.trampoline_page);
    #[cfg(feature = "qemu-tests")]
    slow_start(desc);
    let (free, owned) = memory::frames::counts();
    if let Err(e) = region::publish_running(me, desc.cpus()) {
        // Instance 0 gave up on us before we got here (or our entry is unusable): we are not
        // running for anyone. Stop beating, park our CPUs and halt; instance 0 stops our CPUs
        // with INIT and takes our resources back.
        crate::platform::failure::STOPPED.store(true, Ordering::SeqCst);
        crate::warn!(
            "instance {me}: instance 0 no longer waits for this instance ({e:?}); stopping"
        );
        smp::PARK.store(true, Ordering::SeqCst);
        cpu::halt_forever();
    }
    info!(
        "instance {} up: APIC ID {apic_id}, {} of {} CPUs online, {} MiB ({} MiB free)",
        me,
        smp::ONLINE.load(Ordering::SeqCst),
        desc.cpu_count,
        (owned * 4096) >> 20,
        (free * 4096) >> 20
    );
}

/// Maps and joins the IO APICs instance 0 set up (it owns every line at first; the IRQ
/// services hand lines over).
fn attach_ioapics(desc: &BootDescriptor) {
    let n = (desc.ioapic_count as usize).min(crate::platform::descriptor::MAX_IOAPICS);
    for i in 0..n {
        if let Err(e) = crate::arch::ioapic::attach(desc.ioapic_phys[i], desc.ioapic_gsi_base[i]) {
            crate::error!("IO APIC at {:#x}: {e}", desc.ioapic_phys[i]);
        }
    }
}

/// A test kernel's `slow_start=K:MS` (in its case list): instance K spends MS ms more before
/// reporting running, its timer beating meanwhile, like a slow but progressing boot.
#[cfg(feature = "qemu-tests")]
fn slow_start(desc: &BootDescriptor) {
    for arg in desc
        .tests()
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("slow_start="))
    {
        if let Some((k, ms)) = arg.split_once(':')
            && k.parse() == Ok(desc.instance_id)
            && let Ok(ms) = ms.parse::<u64>()
        {
            info!("slow start: {ms} ms more before reporting running");
            tsc::spin_micros(ms * 1000);
        }
    }
}
