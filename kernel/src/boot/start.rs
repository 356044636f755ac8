//! Instance 0's side: read and resolve the partition plan, keep only its own partition, set up
//! the shared region, and start every other instance.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;
use mk_plan::{MemRange, Plan, PlanSpec};

use crate::arch::tsc;
use crate::cpus::launch::{LAUNCH, Launcher, PLAN};
use crate::cpus::smp;
use crate::instance::InstanceId;
use crate::memory::frames;
use crate::platform::acpi::Platform;
use crate::shared::region;
use crate::shared::region::{StartWait, Started};
use crate::{error, info, println, warn};

/// Where the plan text comes from, in order: QEMU's fw_cfg file `opt/multikernel/plan` (tests
/// and `cargo xtask run --partitions`), then the file `plan` of the boot ramdisk's archive
/// (images written to USB sticks).
fn plan_text() -> Option<String> {
    if let Some(text) = crate::platform::qemu::read_string("opt/multikernel/plan") {
        return Some(text);
    }
    crate::memory::ramdisk::plan().map(String::from)
}

/// Start-up waits a test kernel forces: `start_wait=K:FIRST_MS:QUIET_MS` in its case list
/// (the case of that name then checks the option was taken).
pub fn start_waits(tests: &str) -> Vec<(usize, StartWait)> {
    tests
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("start_wait="))
        .filter_map(|arg| {
            let mut it = arg.split(':').map(str::parse::<u64>);
            let (Some(Ok(k)), Some(Ok(first)), Some(Ok(quiet)), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                warn!("start_wait={arg}: expected INSTANCE:FIRST_MS:QUIET_MS; ignored");
                return None;
            };
            Some((
                k as usize,
                StartWait {
                    first_sign_ms: first,
                    quiet_ms: quiet,
                },
            ))
        })
        .collect()
}

/// The usable memory the plan divides: the bootloader's usable ranges above 1 MiB.
fn usable_ranges(boot_info: &BootInfo) -> Vec<MemRange> {
    boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .filter_map(|r| {
            let start = r.start.max(frames::LOW_MEMORY_END);
            (start < r.end).then(|| MemRange::new(start, r.end - start))
        })
        .collect()
}

/// The machine has too few usable pages below 640 KiB for the instances of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotEnoughLowPages {
    pub have: usize,
    pub need: usize,
}

impl core::fmt::Display for NotEnoughLowPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "not enough usable pages below 640 KiB for the AP trampolines and top-level tables (two per instance): {} of {}",
            self.have, self.need
        )
    }
}

/// Low pages for starting CPUs, two per instance from usable memory below 640 KiB: its
/// trampoline page, and the page of its top-level page table (the trampoline loads CR3 from
/// 32-bit code, so the root must be below 4 GiB wherever the instance's partition lies).
/// Returns (trampolines, roots), each indexed by instance.
fn trampoline_pages(
    boot_info: &BootInfo,
    count: usize,
) -> Result<(Vec<u64>, Vec<u64>), NotEnoughLowPages> {
    let mut pages = Vec::new();
    for r in boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable && r.start < 0xA0000)
    {
        let mut p = r.start.max(0x1000).next_multiple_of(4096);
        while p + 4096 <= r.end.min(0xA0000) && pages.len() < 2 * count {
            pages.push(p);
            p += 4096;
        }
    }
    if pages.len() < 2 * count {
        return Err(NotEnoughLowPages {
            have: pages.len(),
            need: 2 * count,
        });
    }
    let roots = pages.split_off(count);
    Ok((pages, roots))
}

/// Why the given plan was rejected, if it was (the default plan runs instead).
pub static PLAN_REJECTED: spin::Once<String> = spin::Once::new();

/// TSC readings of instance 0's boot: at kernel entry, and once every instance of the plan
/// was running (or given up on). The TSC counts from power-on, so these are times since then.
pub static BOOT_TSC: spin::Once<(u64, u64)> = spin::Once::new();

/// Instance 0's work at boot; `boot_tsc` is the TSC at kernel entry.
pub fn start_all(
    boot_info: &'static BootInfo,
    platform: &Platform,
    tests: Option<&str>,
    boot_tsc: u64,
) {
    let this_apic = crate::arch::cpu::current().apic_id;
    // The bootstrap CPU first, then the others in MADT order.
    let mut cpus: Vec<u32> = alloc::vec![this_apic];
    cpus.extend(
        platform
            .enabled_cpus()
            .map(|p| p.apic_id)
            .filter(|&a| a != this_apic),
    );
    let usable = usable_ranges(boot_info);
    let default = PlanSpec::default_for(cpus.len() as u32);
    let spec = match plan_text() {
        None => default,
        Some(text) => match PlanSpec::parse(&text) {
            Ok(spec) => spec,
            Err(e) => {
                let reason = alloc::format!("partition plan '{text}' rejected: {e}");
                warn!("{reason}; using the default plan ({default})");
                PLAN_REJECTED.call_once(|| reason);
                default
            }
        },
    };
    let shared_bytes = region::size_for(spec.partitions().len());
    let numa = platform.numa();
    if plan_nodes(&numa) > 1 {
        info!(
            "NUMA: {} nodes in the SRAT ({} CPUs, {} memory ranges listed)",
            plan_nodes(&numa),
            numa.cpus.len(),
            numa.memory.len()
        );
    }
    let plan = match spec.resolve_numa(&cpus, usable.iter().copied(), shared_bytes, &numa) {
        Ok(plan) => plan,
        Err(e) => {
            let reason = alloc::format!("partition plan '{spec}' does not fit this machine: {e}");
            warn!("{reason}; using the default plan ({default})");
            PLAN_REJECTED.call_once(|| reason);
            match default.resolve_numa(
                &cpus,
                usable.iter().copied(),
                region::size_for(default.partitions().len()),
                &numa,
            ) {
                Ok(plan) => plan,
                Err(e) => crate::platform::failure::fatal(format_args!(
                    "even the default plan does not fit: {e}"
                )),
            }
        }
    };
    let plan = PLAN.call_once(|| Box::new(plan));
    for line in alloc::format!("{plan}").lines() {
        info!("plan: {line}");
    }
    let Some(shared) = plan.shared() else {
        crate::platform::failure::fatal(format_args!("the plan has no shared region"));
    };

    // Instance 0 keeps its partition and the unassigned reserve; everything else leaves its
    // frame allocator now, before anything else is started.
    for p in plan.partitions().skip(1) {
        for r in p.memory {
            give_away(*r);
        }
    }
    give_away(shared);

    let count = plan.partition_count();
    if let Err(e) = region::init(shared, count) {
        crate::platform::failure::fatal(format_args!("shared region: {e}"));
    }
    let me = plan.partition(0).expect("partition 0 exists");
    crate::services::irq::set_rtc_gsi(platform.isa_irq_to_gsi(crate::platform::rtc::ISA_IRQ).0);
    crate::services::irq::set_com2_gsi(platform.isa_irq_to_gsi(crate::platform::com2::ISA_IRQ).0);
    if count > 1 {
        if let Err(e) = crate::messaging::init(InstanceId::ZERO) {
            error!("messaging: {e}");
        } else if let Err(e) = crate::services::init(InstanceId::ZERO) {
            error!("services: {e}");
        }
    }
    region::set_booting(InstanceId::ZERO, boot_tsc);
    if let Err(e) = region::publish_running(InstanceId::ZERO, me.cpus) {
        error!("instance 0 cannot declare itself running: {e:?}");
    }
    if let Err(e) = region::record_ownership(plan) {
        error!("ownership tables: {e}");
    }
    // Instance 0's private record of the same, before anyone else runs: what it decides by.
    if let Err(e) = crate::shared::records::init(plan, &cpus, crate::arch::ioapic::line_count()) {
        error!("instance 0's records: {e}");
    }
    // Where doorbells may go: the plan's CPUs of each instance (never the shared table).
    let plan_cpus = plan
        .partitions()
        .flat_map(|p| p.cpus.iter().map(move |&c| (p.index as u16, c)));
    if let Err(e) = crate::messaging::doorbell::learn_plan(plan_cpus) {
        error!("the plan's CPUs for doorbells: {e:?}; no doorbell goes to that CPU");
    }
    if let Some(r) = region::get() {
        crate::console::use_shared(r);
    }

    let (pages, roots) = match trampoline_pages(boot_info, count) {
        Ok(p) => p,
        Err(e) => crate::platform::failure::fatal(format_args!("{e}")),
    };
    // Instance 0's own top-level table moves to its low page: the bootloader may have put it
    // above 4 GiB, out of reach of the trampoline's 32-bit CR3 load. Only this CPU runs yet.
    if let Err(e) = crate::memory::paging::move_root(roots[0]) {
        error!("instance 0 cannot move its top-level page table below 4 GiB: {e}");
    }
    // Instance 0's own further CPUs, through its own trampoline page (identity-mapped: the AP
    // runs on from it right after turning paging on with instance 0's page tables). Mapped even
    // for a single-CPU instance 0: CPUs may join it later.
    match crate::memory::paging::identity_map(pages[0]) {
        Ok(()) => {
            smp::TRAMPOLINE.store(pages[0], core::sync::atomic::Ordering::SeqCst);
            smp::start_further_cpus(me.cpus, pages[0]);
        }
        Err(e) => error!("instance 0 cannot start its further CPUs: {e}"),
    }
    // The kernel file with its writable segments as they were before instance 0 ran (see
    // `pristine`): every instance starts from the initial values of its statics.
    let kernel_file = if count > 1 {
        match crate::memory::pristine::kernel_file(boot_info) {
            Ok(f) => f,
            Err(e) => crate::platform::failure::fatal(format_args!("the kernel file to copy: {e}")),
        }
    } else {
        Vec::new()
    };
    let ioapics: Vec<(u64, u32)> = platform
        .io_apics
        .iter()
        .map(|c| (u64::from(c.address), c.gsi_base))
        .collect();
    let how = LAUNCH.call_once(|| Launcher {
        kernel_file,
        trampolines: pages.clone(),
        roots,
        shared,
        count,
        ioapics,
        rtc_gsi: platform.isa_irq_to_gsi(crate::platform::rtc::ISA_IRQ).0,
        com2_gsi: platform.isa_irq_to_gsi(crate::platform::com2::ISA_IRQ).0,
        tests: tests.map(String::from),
        waits: tests.map(start_waits).unwrap_or_default(),
    });
    for p in plan.partitions().skip(1) {
        let k = crate::instance::of_partition(p.index);
        match how.launch(k, p.memory, p.cpus) {
            Ok(Started::InTime) => {}
            Ok(Started::AtDeadline) => {
                info!("instance {k} reported running as instance 0 gave up waiting: adopted")
            }
            Err(e) => crate::services::lifecycle::give_up(k, &e),
        }
    }
    BOOT_TSC.call_once(|| (boot_tsc, tsc::read()));
    // Instance 0 now keeps mapped only what it owns (and the shared region).
    for p in plan.partitions().skip(1) {
        for r in p.memory {
            if let Err(e) = crate::memory::paging::unmap_phys(r.start, r.end()) {
                error!("cannot unmap instance {}'s memory {r}: {e}", p.index);
            }
        }
    }
    print_table(plan);
}

/// How many nodes the SRAT names (1 without one).
fn plan_nodes(numa: &mk_plan::Numa<'_>) -> u32 {
    numa.cpus
        .iter()
        .map(|&(_, n)| n)
        .chain(numa.memory.iter().map(|&(_, n)| n))
        .max()
        .map_or(1, |n| n + 1)
}

fn give_away(r: MemRange) {
    if let Err(e) = frames::with(|a| a.remove_range(r.start / 4096, r.len / 4096)) {
        crate::platform::failure::fatal(format_args!(
            "instance 0 cannot give away {r}: {e} (it allocated there before the plan was known)"
        ));
    }
}

/// The table of instances, once all are up.
pub fn print_table(plan: &Plan) {
    println!("+----+----------------------+-----------+------+---------+-----------+");
    println!("| id | CPUs (APIC IDs)      | memory    | node | state   | boot time |");
    println!("+----+----------------------+-----------+------+---------+-----------+");
    for p in plan.partitions() {
        let mut ids = String::new();
        for (i, a) in p.cpus.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            ids.push_str(&alloc::format!("{a}"));
        }
        let (state, boot_ms) = region::status(crate::instance::of_partition(p.index));
        println!(
            "| {:>2} | {:<20} | {:>5} MiB | {:>4} | {:<7} | {:>6} ms |",
            p.index,
            ids,
            p.bytes >> 20,
            p.node,
            state,
            boot_ms
        );
    }
    println!("+----+----------------------+-----------+------+---------+-----------+");
}
