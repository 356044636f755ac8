//! Instance 0's boot path, on the bootstrap CPU: console, descriptor tables, memory, ACPI,
//! interrupt controllers, timer; then the partition plan and every other instance (`start`).

use alloc::string::String;

use bootloader_api::BootInfo;

use crate::arch::{apic, cpu, gdt, interrupts, ioapic, pic, tsc};
use crate::platform::acpi::Platform;
use crate::platform::failure::fatal;
use crate::{console, debug, info, memory, platform, warn};

/// What instance 0's boot hands to the top of the kernel.
pub struct Primary {
    /// The machine, as ACPI describes it.
    pub platform: Platform,
    /// The test kernel's list of scenarios to run (from QEMU's fw_cfg), if any.
    #[cfg_attr(not(feature = "qemu-tests"), allow(dead_code))]
    pub tests: Option<String>,
}

/// Instance 0's boot: from the bootloader's `BootInfo` to every instance started. Returns what
/// the top of the kernel (shell or self-tests) needs.
pub fn start(boot_info: &'static mut BootInfo, boot_tsc: u64) -> Primary {
    // Before any static is written: the ELF file's writable segments are mapped in place.
    crate::memory::pristine::capture(boot_info);
    console::init(boot_info);
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
    match memory::ramdisk::init(memory::boot_ramdisk(boot_info)) {
        Ok(()) => info!(
            "ramdisk: {} KiB, programs: {}",
            memory::ramdisk::archive().map_or(0, <[u8]>::len) >> 10,
            ProgramList
        ),
        Err(e) => crate::warn!("ramdisk: {e}; running without user programs"),
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
    lapic.start_periodic(apic::TICK_HZ);
    let this_cpu = cpu::install(0, apic_id);
    this_cpu.set_lapic(lapic);
    crate::cpus::smp::register(this_cpu);
    super::tasks::start_tasks();
    info!(
        "local APIC: {} mode, APIC ID {apic_id}, timer {} kHz (/16), ticking at {} Hz",
        apic::mode().map_or("?", apic::Mode::name),
        timer_hz / 1000,
        apic::TICK_HZ
    );

    for chip in &platform.io_apics {
        match ioapic::add(u64::from(chip.address), chip.gsi_base) {
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
    super::start::start_all(boot_info, &platform, tests.as_deref(), boot_tsc);
    Primary { platform, tests }
}

/// The ramdisk's program names, space-separated (for the boot log).
struct ProgramList;

impl core::fmt::Display for ProgramList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut any = false;
        for (i, name) in memory::ramdisk::programs().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(name)?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}
