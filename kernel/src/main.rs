//! The multikernel kernel: one instance of it runs on each CPU partition.
//!
//! This file is the boot path of the bootstrap CPU: console, descriptor tables, memory, ACPI,
//! interrupt controllers, timer. Everything that touches hardware sits below `arch/`,
//! `memory/` and `platform/`; pure logic lives in the host-tested crates under `kernel/crates/`.

#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
// Driver APIs (IO APIC routing, IPIs, the RTC, fw_cfg, exits) are exercised by the in-kernel
// tests; the kernel users run calls them only once the services of later milestones (IRQ
// forwarding, messaging) do. Until then, their being unused in that build is expected.
#![cfg_attr(not(feature = "qemu-tests"), allow(dead_code, unused_imports))]

extern crate alloc;

mod arch;
mod bench;
mod console;
mod instance;
mod instances;
mod memory;
mod messaging;
mod platform;
#[cfg(feature = "qemu-tests")]
mod selftest;
mod services;
mod shell;

use bootloader_api::config::Mapping;
use bootloader_api::info::FrameBuffer;
use bootloader_api::{BootInfo, BootloaderConfig, entry_point};

use arch::{apic, cpu, gdt, interrupts, ioapic, pic, tsc};

/// Periodic LAPIC timer rate.
pub const TICK_HZ: u32 = 100;

/// Virtual address the kernel image is loaded at (the xtask's `--gdb` relies on it).
pub const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // A fixed link-time view for debuggers: the kernel image sits in the top 2 GiB, and every
    // mapping the bootloader chooses goes to the upper half, leaving the lower half empty.
    config.mappings.kernel_base = Mapping::FixedAddress(KERNEL_BASE);
    config.mappings.dynamic_range_start = Some(0xFFFF_8000_0000_0000);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let boot_tsc = tsc::read();
    if let Some(desc) = instances::descriptor(boot_info) {
        instances::secondary::main(boot_info, desc);
    }
    // Before any static is written: the ELF file's writable segments are mapped in place.
    instances::pristine::capture(boot_info);
    let framebuffer = boot_info.framebuffer.as_mut().map(|fb| {
        // SAFETY: the framebuffer descriptor is used only by the console from here on; the rest
        // of the boot path reads other fields of `boot_info` and never touches this one.
        unsafe { &mut *(fb as *mut FrameBuffer) }
    });
    console::init(framebuffer);
    if cfg!(debug_assertions) {
        console::set_max_level(console::Level::Debug);
    }
    info!("multikernel {} booting", env!("CARGO_PKG_VERSION"));

    gdt::init_bsp();
    interrupts::init();

    let boot_info: &'static BootInfo = boot_info;
    if let Err(e) = memory::init(boot_info) {
        fatal(format_args!("memory init failed: {e}"));
    }
    let (free, owned) = memory::frames::counts();
    info!(
        "memory: {} MiB usable, {} MiB free; kernel ELF at {:#x} ({} KiB), image base {:#x}",
        (owned * 4096) >> 20,
        (free * 4096) >> 20,
        boot_info.kernel_addr,
        boot_info.kernel_len >> 10,
        boot_info.kernel_image_offset,
    );

    let tsc_per_ms = tsc::calibrate(50);
    info!("TSC: {}.{:03} MHz", tsc_per_ms / 1000, tsc_per_ms % 1000);

    let Some(rsdp) = boot_info.rsdp_addr.into_option() else {
        fatal(format_args!("the bootloader found no ACPI RSDP"));
    };
    let platform = match platform::acpi::discover(rsdp) {
        Ok(p) => p,
        Err(e) => fatal(format_args!("ACPI: {e}")),
    };
    for p in &platform.processors {
        debug!(
            "MADT: CPU uid {} APIC ID {} {}",
            p.uid,
            p.apic_id,
            if p.enabled {
                "enabled"
            } else if p.online_capable {
                "online-capable"
            } else {
                "disabled"
            }
        );
    }
    for o in &platform.overrides {
        debug!(
            "MADT: ISA IRQ {} -> GSI {} flags {:#x}",
            o.irq, o.gsi, o.flags
        );
    }
    info!(
        "ACPI: {} CPUs ({} enabled), {} IO APICs, {} ISA overrides, HPET {}",
        platform.processors.len(),
        platform.enabled_cpus().count(),
        platform.io_apics.len(),
        platform.overrides.len(),
        if platform.hpet_base.is_some() {
            "present"
        } else {
            "absent"
        }
    );

    pic::remap_and_mask();
    let xapic_virt =
        apic::xapic_window().unwrap_or_else(|e| fatal(format_args!("mapping the xAPIC: {e}")));
    let mut lapic =
        apic::init_this_cpu(xapic_virt).unwrap_or_else(|e| fatal(format_args!("local APIC: {e}")));
    let apic_id = lapic.id();
    let timer_hz = lapic.calibrate_timer(50);
    lapic.start_periodic(TICK_HZ);
    let this_cpu = cpu::install(0, apic_id);
    this_cpu.set_lapic(lapic);
    instances::smp::register(this_cpu);
    info!(
        "local APIC: {} mode, APIC ID {apic_id}, timer {} kHz (/16), ticking at {TICK_HZ} Hz",
        apic::mode().map_or("?", apic::Mode::name),
        timer_hz / 1000
    );

    for chip in &platform.io_apics {
        let virt = memory::mmio::map(u64::from(chip.address), 0x20)
            .unwrap_or_else(|e| fatal(format_args!("mapping IO APIC: {e}")));
        // SAFETY: `virt` maps this IO APIC's register window uncached, permanently.
        match unsafe { ioapic::add(virt, chip.gsi_base) } {
            Ok(lines) => info!(
                "IO APIC {} at {:#x}: GSIs {}..{}",
                chip.id,
                chip.address,
                chip.gsi_base,
                chip.gsi_base + lines
            ),
            Err(e) => warn!("IO APIC {}: {e}", chip.id),
        }
    }

    x86_64::instructions::interrupts::enable();
    let cpus = platform.enabled_cpus().count();
    let boot_ms = (tsc::read() - boot_tsc) / tsc::ticks_per_ms();
    info!("up: {cpus} CPUs in the MADT, this one APIC ID {apic_id}, kernel boot {boot_ms} ms");

    #[cfg(feature = "qemu-tests")]
    let tests = platform::qemu::read_string("opt/multikernel/tests");
    #[cfg(not(feature = "qemu-tests"))]
    let tests: Option<alloc::string::String> = None;
    instances::start::start_all(boot_info, &platform, tests.as_deref(), boot_tsc);

    #[cfg(feature = "qemu-tests")]
    selftest::run(&platform, tests);

    #[cfg(not(feature = "qemu-tests"))]
    {
        shell::start();
        messaging::serve_forever()
    }
}

/// Reports an unrecoverable error on every console and stops: test kernels end QEMU with a
/// failure, others halt this CPU.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    console::emergency_write(format_args!("FATAL: {args}"));
    stop_after_failure()
}

/// After a panic or fatal error. An instance other than 0 stops beating and halts: instance 0
/// notices the silence, declares it dead and takes its resources back, and the other instances
/// go on. Instance 0 ends a test run (QEMU exits with failure) or halts.
fn stop_after_failure() -> ! {
    services::heartbeat::STOPPED.store(true, core::sync::atomic::Ordering::SeqCst);
    if instance::id() != 0 {
        cpu::halt_forever()
    }
    #[cfg(feature = "qemu-tests")]
    platform::qemu::exit(platform::qemu::ExitCode::Failure);
    #[cfg(not(feature = "qemu-tests"))]
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(loc) => console::emergency_write(format_args!(
            "PANIC at {}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        )),
        None => console::emergency_write(format_args!("PANIC: {}", info.message())),
    }
    stop_after_failure()
}
