//! The in-kernel test cases by name, shared by the two sides that must agree on them: the test
//! kernel (`kernel/src/selftest/cases.rs`, whose table is checked against [`NAMES`] when it
//! compiles) and the host's list of boots (`tests/src/lib.rs`, whose every case is checked
//! against [`NAMES`] by `cargo test`). A misspelled case then fails a build or a host test,
//! not a QEMU boot.
//!
//! A boot's case list, as the harness writes it into the fw_cfg file `opt/multikernel/tests`
//! and the kernel reads it, is whitespace-separated `name` or `name=argument`; the argument is
//! everything after the first `=` (it may itself hold `=` or `:`), empty without one:
//!
//! ```
//! let specs: Vec<_> = mk_cases::specs("madt_cpus=2 breakpoint  instance_cpus=1:3").collect();
//! assert_eq!(specs, [("madt_cpus", "2"), ("breakpoint", ""), ("instance_cpus", "1:3")]);
//! assert!(mk_cases::is_known("breakpoint"));
//! assert_eq!(mk_cases::first_unknown("madt_cpus=2 brekpoint"), Some("brekpoint"));
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// Every case the test kernel knows, in the order of its table. A case ending the boot by
/// design (`page_fault`, `panic`) or never returning (`shell`) is a case like the others here;
/// where it may stand in a list is the host's business.
pub const NAMES: &[&str] = &[
    // The hardware layer.
    "madt_cpus",
    "apic_mode",
    "breakpoint",
    "heap_stress",
    "frames_unique",
    "timer_rate",
    "ipi_self",
    "irq_held_back",
    "ioapic_rtc",
    "io_bitmap",
    // Instances and the partition plan.
    "plan_rejected",
    "instances",
    "instance_cpus",
    "local_cpus",
    "isolation",
    "memory_accounting",
    "ownership",
    "cpu_caches",
    // User address spaces and the program loader.
    "address_spaces",
    "ramdisk_programs",
    // Messaging.
    "msg_ping",
    "msg_handler_call",
    "msg_order",
    "msg_reject",
    "msg_flood",
    "telemetry_shared",
    "msg_ping_all",
    "msg_stress",
    "msg_busy",
    "msg_bulk",
    // Benchmarks (`cargo xtask bench`).
    "bench_ipi",
    "bench_rtt",
    "ipi_rate",
    "bench_tput",
    "bench_all",
    "bench_boot",
    "bench_ops",
    "bench_path",
    "bench_budget",
    // The operator's shell, driven over COM1 (never returns).
    "shell",
    // Services.
    "query",
    "heartbeats",
    "crash",
    "shutdown",
    "respawn",
    "cpu_hotplug",
    "mem_hotplug",
    "irq_forwarding",
    "serial_irq",
    "storm",
    "forged_words",
    // A rogue instance: unauthorised requests, scribbling, lock torture.
    "rogue_requests",
    "rogue_scribble_own",
    "rogue_no_drain",
    "rogue_locks",
    "rogue_scribble_all",
    "interrupt_flood",
    // Instance 0's wait for the instances it starts (forced deadlines, a slowed boot).
    "start_wait",
    "slow_start",
    "start_adopted",
    "start_gave_up",
    // Switches the doorbells to always-ring for the cases after it.
    "doorbell_always",
    // The machine's shape: memory above 4 GiB, APIC IDs, CPU grouping, NUMA placement.
    "above_4g",
    "cpus_grouped",
    "apic_ids",
    "numa_nodes",
    // User space (tasks in the other instances).
    "user_ring3",
    "user_hello",
    "user_fuzz",
    "user_faults",
    "user_reap",
    "user_preempt",
    "user_smp",
    "user_cpu_move",
    "user_mem_add",
    "user_crash_pings",
    "bench_control",
    "ipc_local",
    "ipc_remote",
    "ipc_all_pairs",
    "ipc_forge",
    "ipc_grant",
    "ipc_peer_dead",
    "ipc_com2",
    "ipc_devices",
    "ipc_pages",
    "bench_ipc",
    "bench_user",
    // End the boot: the expected page fault, the deliberate panic.
    "page_fault",
    "panic",
];

/// One entry of a case list split into its name and argument (`""` without `=`).
pub fn split(spec: &str) -> (&str, &str) {
    spec.split_once('=').unwrap_or((spec, ""))
}

/// The entries of a case list, in order, each split by [`split`].
pub fn specs(list: &str) -> impl Iterator<Item = (&str, &str)> {
    list.split_whitespace().map(split)
}

/// Whether `name` is one of [`NAMES`].
pub fn is_known(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The name of the first entry of `list` that is not a known case, if any.
pub fn first_unknown(list: &str) -> Option<&str> {
    specs(list).map(|(name, _)| name).find(|n| !is_known(n))
}

/// `a == b`, usable in constants (the kernel's table is compared with [`NAMES`] at compile
/// time).
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plain() {
        for (i, a) in NAMES.iter().enumerate() {
            assert!(!a.is_empty());
            assert!(
                a.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{a}"
            );
            assert!(!NAMES[..i].contains(a), "{a} twice");
        }
    }

    #[test]
    fn split_at_the_first_equals_sign() {
        assert_eq!(split("msg_ping=200"), ("msg_ping", "200"));
        assert_eq!(split("isolation"), ("isolation", ""));
        assert_eq!(split("x=a=b"), ("x", "a=b"));
        assert_eq!(split("x="), ("x", ""));
    }

    #[test]
    fn specs_split_on_any_whitespace() {
        let got: Vec<_> = specs("  a=1\tb \n c=2:3 ").collect();
        assert_eq!(got, [("a", "1"), ("b", ""), ("c", "2:3")]);
        assert_eq!(specs("").count(), 0);
    }

    #[test]
    fn unknown_names_are_found() {
        assert_eq!(first_unknown("instances=2 msg_ping=50 page_fault"), None);
        assert_eq!(first_unknown("instances=2 msg_pong=50"), Some("msg_pong"));
        // The name is what precedes `=`: an argument never makes a name known.
        assert_eq!(first_unknown("madt_cpus_=1"), Some("madt_cpus_"));
        assert!(!is_known("Instances"));
    }

    #[test]
    fn same_is_string_equality() {
        for a in ["", "a", "ab", "query", "queries"] {
            for b in ["", "a", "ab", "query", "queries"] {
                assert_eq!(same(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }
}
