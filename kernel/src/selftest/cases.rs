//! The table of the self-tests: every case by name, with the function that runs it. The names
//! are those of `mk_cases::NAMES`, in the same order, which is checked when this file compiles:
//! a case added to one list and not the other, or misspelled in either, fails the build. The
//! host checks every boot of `tests/src/lib.rs` against the same list (`cargo test -p
//! qemu-tests`).

use alloc::string::String;

use super::harness::{self, Case, Ctx, Outcome};
use super::{
    bench, hardware, instances, ipc, machine, messaging, rogue, services, spaces, start, tasks,
};
use crate::platform::acpi::Platform;

/// Runs the boot's cases (instance 0): the entry point from `main.rs`.
pub fn run(platform: &Platform, list: Option<String>) -> ! {
    harness::run(CASES, &Ctx { platform }, list)
}

/// Every case, in the order of `mk_cases::NAMES`.
pub(super) static CASES: &[Case] = &[
    // The hardware layer.
    case("madt_cpus", |c, arg| hardware::madt_cpus(c.platform, arg)),
    case("apic_mode", |_, arg| hardware::apic_mode(arg)),
    case("breakpoint", |_, _| hardware::breakpoint()),
    case("heap_stress", |_, _| hardware::heap_stress()),
    case("frames_unique", |_, _| hardware::frames_unique()),
    case("timer_rate", |_, _| hardware::timer_rate()),
    case("ipi_self", |_, _| hardware::ipi_self()),
    case("irq_held_back", |_, _| hardware::irq_held_back()),
    case("ioapic_rtc", |c, _| hardware::ioapic_rtc(c.platform)),
    case("io_bitmap", |_, _| hardware::io_bitmap()),
    // Instances and the partition plan.
    case("plan_rejected", |_, _| instances::plan_rejected()),
    case("instances", |_, arg| instances::instances(arg)),
    case("instance_cpus", |_, arg| instances::instance_cpus(arg)),
    case("local_cpus", |_, arg| instances::local_cpus(arg)),
    case("isolation", |_, _| instances::isolation()),
    case("memory_accounting", |_, _| instances::memory_accounting()),
    case("ownership", |_, _| instances::ownership()),
    case("cpu_caches", |_, _| instances::cpu_caches()),
    // User address spaces and the program loader.
    case("address_spaces", |_, _| spaces::address_spaces()),
    case("ramdisk_programs", |_, _| instances::ramdisk_programs()),
    // Messaging.
    case("msg_ping", |_, arg| messaging::msg_ping(arg)),
    case("msg_handler_call", |_, _| messaging::msg_handler_call()),
    case("msg_order", |_, arg| messaging::msg_order(arg)),
    case("msg_reject", |_, _| messaging::msg_reject()),
    case("msg_flood", |_, arg| messaging::msg_flood(arg)),
    case("telemetry_shared", |_, _| messaging::telemetry_shared()),
    case("msg_ping_all", |_, arg| messaging::msg_ping_all(arg)),
    case("msg_stress", |_, arg| messaging::msg_stress(arg)),
    case("msg_busy", |_, _| messaging::msg_busy()),
    case("msg_bulk", |_, arg| messaging::msg_bulk(arg)),
    // Benchmarks.
    case("bench_ipi", |_, arg| bench::bench_ipi(arg)),
    case("bench_rtt", |_, arg| bench::bench_rtt(arg)),
    case("ipi_rate", |_, arg| bench::ipi_rate(arg)),
    case("bench_tput", |_, arg| bench::bench_tput(arg)),
    case("bench_all", |_, arg| bench::bench_all(arg)),
    case("bench_boot", |_, _| bench::bench_boot()),
    case("bench_ops", |_, arg| bench::bench_ops(arg)),
    case("bench_path", |_, arg| bench::bench_path(arg)),
    case("bench_budget", |_, arg| bench::bench_budget(arg)),
    // The operator's shell, driven by the harness over COM1: it never returns.
    case("shell", |_, _| {
        crate::shell::start();
        crate::messaging::serve_forever()
    }),
    // Services.
    case("query", |_, _| services::query()),
    case("heartbeats", |_, _| services::heartbeats()),
    case("crash", |_, arg| services::crash(arg)),
    case("shutdown", |_, arg| services::shutdown(arg)),
    case("respawn", |_, arg| services::respawn(arg)),
    case("cpu_hotplug", |_, _| services::cpu_hotplug()),
    case("mem_hotplug", |_, _| services::mem_hotplug()),
    case("irq_forwarding", |_, arg| services::irq_forwarding(arg)),
    case("serial_irq", |_, arg| services::serial_irq(arg)),
    case("storm", |_, arg| services::storm(arg)),
    case("forged_words", |_, arg| services::forged_words(arg)),
    // A rogue instance (issue 15).
    case("rogue_requests", |_, arg| rogue::rogue_requests(arg)),
    case("rogue_scribble_own", |_, arg| {
        rogue::rogue_scribble_own(arg)
    }),
    case("rogue_no_drain", |_, arg| rogue::rogue_no_drain(arg)),
    case("rogue_locks", |_, arg| rogue::rogue_locks(arg)),
    case("rogue_scribble_all", |_, arg| {
        rogue::rogue_scribble_all(arg)
    }),
    case("interrupt_flood", |_, arg| services::interrupt_flood(arg)),
    // Instance 0's wait for the instances it starts.
    case("start_wait", |_, arg| start::start_wait(arg)),
    case("slow_start", |_, arg| start::slow_start(arg)),
    case("start_adopted", |_, arg| start::start_adopted(arg)),
    case("start_gave_up", |_, arg| start::start_gave_up(arg)),
    case("doorbell_always", |_, _| messaging::doorbell_always()),
    // The machine's shape.
    case("above_4g", |_, arg| machine::above_4g(arg)),
    case("cpus_grouped", |_, arg| machine::cpus_grouped(arg)),
    case("apic_ids", |c, arg| machine::apic_ids(c.platform, arg)),
    case("numa_nodes", |c, arg| {
        machine::numa_placement(c.platform, arg)
    }),
    // Ending the boot: the expected page fault (must come last), the deliberate panic.
    // User space.
    case("user_ring3", |_, arg| tasks::user_ring3(arg)),
    case("user_hello", |_, _| tasks::user_hello()),
    case("user_fuzz", |_, arg| tasks::user_fuzz(arg)),
    case("user_faults", |_, _| tasks::user_faults()),
    case("user_reap", |_, arg| tasks::user_reap(arg)),
    case("user_preempt", |_, _| tasks::user_preempt()),
    case("user_smp", |_, arg| tasks::user_smp(arg)),
    case("user_cpu_move", |_, arg| tasks::user_cpu_move(arg)),
    case("user_mem_add", |_, arg| tasks::user_mem_add(arg)),
    case("user_crash_pings", |_, arg| tasks::user_crash_pings(arg)),
    case("bench_control", |_, _| services::bench_control()),
    case("ipc_local", |_, arg| ipc::ipc_local(arg)),
    case("ipc_remote", |_, arg| ipc::ipc_remote(arg)),
    case("ipc_all_pairs", |_, arg| ipc::ipc_all_pairs(arg)),
    case("ipc_forge", |_, arg| ipc::ipc_forge(arg)),
    case("ipc_grant", |_, _| ipc::ipc_grant()),
    case("ipc_peer_dead", |_, arg| ipc::ipc_peer_dead(arg)),
    case("ipc_com2", |_, arg| ipc::ipc_com2(arg)),
    case("ipc_devices", |_, _| ipc::ipc_devices()),
    case("ipc_pages", |_, arg| ipc::ipc_pages(arg)),
    case("bench_ipc", |_, arg| ipc::bench_ipc(arg)),
    case("bench_user", |_, arg| tasks::bench_user(arg)),
    case("page_fault", |_, _| hardware::page_fault()),
    case("panic", |_, _| {
        panic!("deliberate panic requested by the test harness")
    }),
];

const fn case(name: &'static str, run: fn(&Ctx<'_>, &str) -> Outcome) -> Case {
    Case { name, run }
}

/// Whether `table` names exactly `mk_cases::NAMES`, in order.
const fn same_names(table: &[Case]) -> bool {
    let names = mk_cases::NAMES;
    if table.len() != names.len() {
        return false;
    }
    let mut i = 0;
    while i < table.len() {
        if !mk_cases::same(table[i].name, names[i]) {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(
    same_names(CASES),
    "selftest::cases::CASES must name exactly mk_cases::NAMES, in the same order"
);
