//! Test cases of the instances: the partition plan (taken or rejected), every instance up on
//! its CPUs, each isolated from the others' memory, the shared ownership tables, and the
//! memory adding up.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::harness::{Outcome, ensure, number, plan};
use super::peer::{
    PROBE_COUNTER, PROBE_PHYS_IN_0, REQUIRED_PROGRAMS, job, ramdisk_check, report, start_job,
    wait_job, wait_report,
};
use crate::instance::iid;
use crate::memory::{self, frames};
use crate::println;

/// The plan given at boot was rejected (with a logged reason) and the default plan runs.
pub(super) fn plan_rejected() -> Outcome {
    match crate::boot::start::PLAN_REJECTED.get() {
        Some(reason) => {
            println!("plan_rejected: {reason}");
            Ok(())
        }
        None => Err("the plan was accepted".into()),
    }
}

/// `instances=N`: N instances run, each reported its own id (its table slot) and the APIC ID
/// of the CPU the plan gave it first.
pub(super) fn instances(expected: &str) -> Outcome {
    let expected: usize = number(expected)?;
    let plan = plan()?;
    ensure(plan.partition_count() == expected, || {
        format!("{} partitions, expected {expected}", plan.partition_count())
    })?;
    for p in plan.partitions() {
        let (state, _) = crate::shared::region::status(iid(p.index));
        ensure(state == "running", || {
            format!("instance {} is {state}", p.index)
        })?;
        if p.index == 0 {
            continue;
        }
        let apic = wait_report(p.index, report::APIC_ID)?;
        println!("instances: instance {} runs on APIC ID {apic}", p.index);
        ensure(apic == u64::from(p.cpus[0]), || {
            format!(
                "instance {} reports APIC ID {apic}, plan says {}",
                p.index, p.cpus[0]
            )
        })?;
    }
    Ok(())
}

/// `local_cpus=N`: instance 0 itself runs on N CPUs, all taking timer interrupts.
pub(super) fn local_cpus(arg: &str) -> Outcome {
    let n: u32 = number(arg)?;
    crate::arch::tsc::spin_micros(200_000);
    let online = crate::cpus::smp::ONLINE.load(Ordering::SeqCst);
    let ticking = crate::cpus::smp::cpus_ticking();
    println!("local_cpus: instance 0 has {online} CPUs online, {ticking} taking timer interrupts");
    for c in crate::arch::cpu::online().take(online as usize) {
        println!(
            "local_cpus: cpu {} apic {} ticks {}",
            c.index,
            c.apic_id,
            c.ticks.load(Ordering::SeqCst)
        );
    }
    ensure(online == n && ticking == n, || {
        format!("{online} online, {ticking} ticking, expected {n}")
    })
}

/// `instance_cpus=I:N`: instance I has N CPUs online.
pub(super) fn instance_cpus(arg: &str) -> Outcome {
    let (i, n) = arg
        .split_once(':')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("bad argument '{arg}', expected INSTANCE:CPUS"))?;
    let online = wait_report(i, report::ONLINE)?;
    let ticking = wait_report(i, report::TICKING)?;
    println!(
        "instance_cpus: instance {i} has {online} CPUs online, {ticking} taking timer interrupts"
    );
    ensure(online == n, || {
        format!("instance {i} has {online} CPUs online, expected {n}")
    })?;
    ensure(ticking == n, || {
        format!("only {ticking} of instance {i}'s {n} CPUs take interrupts")
    })
}

/// Every CPU of every instance runs with its caches on: CR0.CD and CR0.NW clear, as each CPU
/// read its own CR0 when it came up (instance 0's CPUs from their per-CPU blocks, the others'
/// through the `CPU_TICKS` call, whose reply carries the CPU's CR0). The trampoline loads CR0
/// whole; INIT alone would leave CD and NW as they were.
pub(super) fn cpu_caches() -> Outcome {
    use crate::arch::cpu::{self, CR0_CD_NW};
    use crate::services::bench::{payload_words, words_payload};
    let plan = plan()?;
    let mut checked = 0;
    for c in cpu::online() {
        println!("cpu_caches: instance 0 CPU {} CR0 {:#x}", c.apic_id, c.cr0);
        ensure(c.cr0 & CR0_CD_NW == 0, || {
            format!(
                "instance 0 CPU {}: CR0 {:#x} has CD or NW set",
                c.apic_id, c.cr0
            )
        })?;
        checked += 1;
    }
    for p in plan.partitions().skip(1) {
        for &apic in p.cpus {
            let reply = crate::messaging::call_patiently(
                iid(p.index),
                mk_wire::Kind::User(super::peer::user::CPU_TICKS),
                words_payload(&[u64::from(apic)]),
            )
            .map_err(|e| format!("CR0 call to instance {}: {e:?}", p.index))?;
            let cr0 = payload_words(&reply.payload)
                .get(1)
                .copied()
                .ok_or_else(|| format!("instance {} gave no CR0 for CPU {apic}", p.index))?;
            println!("cpu_caches: instance {} CPU {apic} CR0 {cr0:#x}", p.index);
            ensure(cr0 & CR0_CD_NW == 0, || {
                format!(
                    "instance {} CPU {apic}: CR0 {cr0:#x} has CD or NW set",
                    p.index
                )
            })?;
            checked += 1;
        }
    }
    println!("cpu_caches: {checked} CPUs, CD and NW clear on every one");
    Ok(())
}

/// Isolation: every other instance's read of instance 0's memory faulted at that address, and
/// the static each instance bumped in its copy shows only its own increment, here as there.
/// Then instance 0 checks that it no longer maps another instance's memory either.
pub(super) fn isolation() -> Outcome {
    let plan = plan()?;
    PROBE_COUNTER.fetch_add(1, Ordering::SeqCst);
    for p in plan.partitions().skip(1) {
        let fault = wait_report(p.index, report::FAULT)?;
        let want = frames::phys_to_virt(PROBE_PHYS_IN_0);
        ensure(fault == want, || {
            format!(
                "instance {}: probe fault at {fault:#x}, expected {want:#x}",
                p.index
            )
        })?;
        let counter = wait_report(p.index, report::COUNTER)?;
        let own = 1000 * p.index as u64 + 1;
        ensure(counter == own, || {
            format!(
                "instance {}: its counter copy holds {counter}, expected {own}",
                p.index
            )
        })?;
    }
    let mine = PROBE_COUNTER.load(Ordering::SeqCst);
    ensure(mine == 1, || {
        format!("instance 0's counter holds {mine}: another instance wrote it")
    })?;
    if let Some(p1) = plan.partition(1) {
        let addr = frames::phys_to_virt(p1.memory[0].start);
        ensure(memory::paging::translate(addr).is_none(), || {
            format!("instance 0 still maps instance 1's memory at {addr:#x}")
        })?;
    }
    println!(
        "isolation: {} instances faulted on instance 0's memory; counters private",
        plan.partition_count() - 1
    );
    Ok(())
}

/// The shared ownership tables say which instance owns each CPU and memory chunk, as the plan
/// does, and every IO APIC line belongs to instance 0.
pub(super) fn ownership() -> Outcome {
    use mk_shared::{Owner, Resource};
    let plan = plan()?;
    let r = crate::shared::region::get().ok_or("no shared region")?;
    for p in plan.partitions() {
        for &apic in p.cpus {
            let o = r.owner(Resource::Cpu(apic)).map_err(|e| format!("{e:?}"))?;
            ensure(o == Owner::Owned(iid(p.index)), || {
                format!(
                    "CPU {apic}: table says {o:?}, plan says instance {}",
                    p.index
                )
            })?;
        }
        for m in p.memory {
            let chunk = mk_shared::MEM_CHUNK_SIZE;
            let first = m.start.next_multiple_of(chunk);
            let mut a = first;
            while a + chunk <= m.end() {
                let o = r
                    .owner(Resource::memory_at(a))
                    .map_err(|e| format!("{e:?}"))?;
                ensure(o == Owner::Owned(iid(p.index)), || {
                    format!(
                        "memory {a:#x}: table says {o:?}, plan says instance {}",
                        p.index
                    )
                })?;
                a += chunk;
            }
        }
    }
    let irqs = crate::arch::ioapic::line_count();
    for gsi in 0..irqs {
        let o = r.owner(Resource::Irq(gsi)).map_err(|e| format!("{e:?}"))?;
        ensure(o == Owner::Owned(iid(0)), || format!("IRQ {gsi}: {o:?}"))?;
    }
    println!("ownership: CPUs, memory chunks and {irqs} IRQ lines each have their one owner");
    Ok(())
}

/// The instances' memory, the shared region and what instance 0 keeps in reserve add up to the
/// usable memory, with no overlap.
pub(super) fn memory_accounting() -> Outcome {
    let plan = plan()?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for p in plan.partitions() {
        ranges.extend(p.memory.iter().map(|r| (r.start, r.end())));
    }
    let shared = plan.shared().ok_or("no shared region")?;
    ranges.push((shared.start, shared.end()));
    ranges.extend(plan.unassigned().iter().map(|r| (r.start, r.end())));
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        ensure(w[0].1 <= w[1].0, || {
            format!("ranges {:#x?} and {:#x?} overlap", w[0], w[1])
        })?;
    }
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    println!(
        "memory_accounting: {} MiB in partitions + shared + reserve = {} MiB usable",
        total >> 20,
        plan.usable_bytes() >> 20
    );
    ensure(total == plan.usable_bytes(), || {
        format!("{total} bytes accounted, {} usable", plan.usable_bytes())
    })?;
    // And instance 0's allocator owns no frame of another partition or the shared region.
    let foreign = frames::with(|a| {
        plan.partitions()
            .skip(1)
            .flat_map(|p| p.memory.iter().copied())
            .chain(core::iter::once(shared))
            .any(|r| (r.start / 4096..r.end() / 4096).any(|f| a.is_owned(mk_frames::Frame::new(f))))
    });
    ensure(!foreign, || {
        "instance 0's allocator still owns foreign frames".into()
    })
}

/// The boot ramdisk holds the programs `hello`, `spin` and `init`, each an ELF the loader
/// takes, in instance 0 and, in its own copy, in every other instance (the same archive,
/// byte for byte, by its hash).
pub(super) fn ramdisk_programs() -> Outcome {
    let want = (1u64 << REQUIRED_PROGRAMS.len()) - 1;
    let mine = ramdisk_check();
    let missing = |word: u64| {
        REQUIRED_PROGRAMS
            .iter()
            .enumerate()
            .filter(|&(i, _)| word & (1 << i) == 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
    };
    ensure(mine != 0, || {
        String::from("instance 0 has no ramdisk archive")
    })?;
    ensure(mine & want == want, || {
        format!(
            "instance 0's ramdisk lacks (or cannot parse) {:?}; it holds {:?}",
            missing(mine),
            memory::ramdisk::programs().collect::<Vec<_>>()
        )
    })?;
    let plan = plan()?;
    let mut checked = 0;
    for p in plan.partitions().skip(1) {
        let before = start_job(p.index, job::RAMDISK, 0)?;
        let theirs = wait_job(p.index, before, 10_000)?.job_result;
        ensure(theirs != 0, || {
            format!("instance {} has no ramdisk archive", p.index)
        })?;
        ensure(theirs & want == want, || {
            format!(
                "instance {}'s ramdisk lacks (or cannot parse) {:?}",
                p.index,
                missing(theirs)
            )
        })?;
        ensure(theirs == mine, || {
            format!(
                "instance {}'s ramdisk differs from instance 0's (check {theirs:#x}, ours {mine:#x})",
                p.index
            )
        })?;
        checked += 1;
    }
    println!(
        "ramdisk_programs: {} KiB archive, programs {:?}, the same in {checked} other instance(s)",
        memory::ramdisk::archive().map_or(0, <[u8]>::len) >> 10,
        memory::ramdisk::programs().collect::<Vec<_>>()
    );
    Ok(())
}
