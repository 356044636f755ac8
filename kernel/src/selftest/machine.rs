//! Cases about the machine's shape: instances in memory above 4 GiB, more CPUs than instances,
//! NUMA placement. The boots that run them (`tests/src/lib.rs`, the `tcg-shape-*` boots) give
//! QEMU the machine type, topology, memory size and NUMA nodes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::harness::{Outcome, ensure, plan};
use super::peer::{report, wait_report};
use crate::println;

const FOUR_GIB: u64 = 1 << 32;

/// `above_4g=N`: at least N instances have all their memory above 4 GiB, and every instance's
/// top-level page table (which further CPUs load from the trampoline's 32-bit code) is a low
/// page: instance 0's moved there at boot, the others' were built there.
pub(super) fn above_4g(arg: &str) -> Outcome {
    let want: usize = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let plan = plan()?;
    let high: Vec<usize> = plan
        .partitions()
        .filter(|p| !p.memory.is_empty() && p.memory.iter().all(|r| r.start >= FOUR_GIB))
        .map(|p| p.index)
        .collect();
    println!("above_4g: instances with all their memory above 4 GiB: {high:?}");
    ensure(high.len() >= want, || {
        format!(
            "{} instances lie above 4 GiB, expected at least {want}",
            high.len()
        )
    })?;
    let root = crate::memory::paging::root();
    let launcher = crate::cpus::launch::LAUNCH
        .get()
        .ok_or("instance 0 kept no launcher")?;
    ensure(launcher.roots.first() == Some(&root), || {
        format!(
            "instance 0's top-level table is at {root:#x}, not its low page {:?}",
            launcher.roots.first()
        )
    })?;
    ensure(
        launcher
            .roots
            .iter()
            .all(|&r| r > 0 && r < crate::memory::frames::LOW_MEMORY_END),
        || {
            format!(
                "top-level pages {:x?} are not all below 1 MiB",
                launcher.roots
            )
        },
    )?;
    for p in plan.partitions() {
        let (state, _) = crate::shared::region::status(crate::instance::of_partition(p.index));
        ensure(state == "running", || {
            format!("instance {} is {state}", p.index)
        })?;
    }
    Ok(())
}

/// `cpus_grouped=N`: the machine has N enabled CPUs and every one of them runs in the instance
/// the plan put it in (each instance reports as many CPUs online as its partition has); with
/// more CPUs than `MAX_INSTANCES`, the default plan made `MAX_INSTANCES` instances whose CPU
/// counts differ by at most one.
pub(super) fn cpus_grouped(arg: &str) -> Outcome {
    let want: usize = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let plan = plan()?;
    let mut all: Vec<u32> = plan
        .partitions()
        .flat_map(|p| p.cpus.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    ensure(all.len() == want, || {
        format!(
            "the plan places {} distinct CPUs, expected {want}",
            all.len()
        )
    })?;
    let count = plan.partition_count();
    ensure(count == want.min(mk_plan::MAX_INSTANCES), || {
        format!(
            "{count} instances for {want} CPUs, expected {}",
            want.min(mk_plan::MAX_INSTANCES)
        )
    })?;
    let sizes: Vec<usize> = plan.partitions().map(|p| p.cpus.len()).collect();
    let (lo, hi) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    ensure(hi - lo <= 1, || format!("uneven groups: {sizes:?}"))?;
    let mut line = String::new();
    for p in plan.partitions() {
        let online = if p.index == 0 {
            u64::from(crate::cpus::smp::ONLINE.load(Ordering::SeqCst))
        } else {
            wait_report(p.index, report::ONLINE)?
        };
        ensure(online == p.cpus.len() as u64, || {
            format!(
                "instance {} has {online} CPUs online, its partition {}",
                p.index,
                p.cpus.len()
            )
        })?;
        line.push_str(&format!(" {}:{online}", p.index));
    }
    println!("cpus_grouped: {want} CPUs in {count} instances, online per instance:{line}");
    Ok(())
}

/// `apic_ids=A,B,...`: the MADT's enabled CPUs have exactly these APIC IDs (in any order), and
/// each instance's first CPU reports the APIC ID the plan gave it. Sparse IDs (several sockets
/// with a core count that is not a power of two) must work like dense ones.
pub(super) fn apic_ids(platform: &crate::platform::acpi::Platform, arg: &str) -> Outcome {
    let mut want = arg
        .split(',')
        .map(str::parse::<u32>)
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| format!("bad argument '{arg}', expected APIC IDs A,B,..."))?;
    let mut found: Vec<u32> = platform.enabled_cpus().map(|p| p.apic_id).collect();
    want.sort_unstable();
    found.sort_unstable();
    println!("apic_ids: the MADT lists {found:?}");
    ensure(found == want, || {
        format!("MADT APIC IDs {found:?}, expected {want:?}")
    })?;
    for p in plan()?.partitions().skip(1) {
        let apic = wait_report(p.index, report::APIC_ID)?;
        ensure(apic == u64::from(p.cpus[0]), || {
            format!(
                "instance {} runs on APIC ID {apic}, plan says {}",
                p.index, p.cpus[0]
            )
        })?;
    }
    Ok(())
}

/// `numa_nodes=N`: the SRAT names N nodes, and every instance's memory lies on the node of its
/// first CPU, as the SRAT instance 0 read says (the plan's own record of the node agrees).
pub(super) fn numa_placement(platform: &crate::platform::acpi::Platform, arg: &str) -> Outcome {
    let want: u32 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let numa = platform.numa();
    let plan = plan()?;
    ensure(plan.nodes() == want, || {
        format!(
            "the SRAT names {} nodes, expected {want} ({} CPUs, {} memory ranges listed)",
            plan.nodes(),
            numa.cpus.len(),
            numa.memory.len()
        )
    })?;
    let mut line = String::new();
    for p in plan.partitions() {
        let node = numa.node_of_cpu(p.cpus[0]);
        ensure(p.node == node, || {
            format!(
                "instance {}: plan says node {}, its CPU is on {node}",
                p.index, p.node
            )
        })?;
        for r in p.memory {
            let (lo, hi) = (
                numa.node_of_address(r.start),
                numa.node_of_address(r.end() - 1),
            );
            ensure(lo == Some(node) && hi == Some(node), || {
                format!(
                    "instance {} (CPU node {node}) has {r} on nodes {lo:?}..{hi:?}",
                    p.index
                )
            })?;
        }
        line.push_str(&format!(" {}:{node}", p.index));
    }
    println!("numa_nodes: {want} nodes; instance:node{line}");
    Ok(())
}
