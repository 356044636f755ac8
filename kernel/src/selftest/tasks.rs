//! User space, driven from instance 0 through the task-control service (`services::tasks`):
//! programs of the ramdisk run as ring-3 tasks in the other instances, and these cases check
//! what a user relies on: they run, on the CPUs they should; bad system calls and faults end
//! only the task at fault; memory comes back; CPU and memory moves carry the tasks along.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mk_abi::TaskId;
use mk_shared::{Owner, Resource};

use super::harness::{Outcome, ensure, number, plan};
use crate::arch::tsc;
use crate::instance::{InstanceId, iid};
use crate::println;
use crate::services::tasks::{self, TaskRow, TaskStatus};
use crate::shared::region;

pub(super) fn spawn(k: InstanceId, line: &str, hint: Option<u32>) -> Result<TaskId, String> {
    tasks::spawn(k, line, hint).map_err(|e| format!("spawn {line:?} on instance {k}: {e}"))
}

/// Waits up to `ms` for task `id` of instance `k` to end; returns its status.
pub(super) fn wait_status(k: InstanceId, id: TaskId, ms: u64) -> Result<u64, String> {
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    loop {
        match tasks::status(k, id).map_err(|e| format!("status of {id} on {k}: {e}"))? {
            TaskStatus::Ended(s) => return Ok(s),
            TaskStatus::Unknown => return Err(format!("task {id} of instance {k} is unknown")),
            TaskStatus::Alive if tsc::read() > deadline => {
                return Err(format!(
                    "task {id} of instance {k} still runs after {ms} ms"
                ));
            }
            TaskStatus::Alive => tsc::spin_micros(5_000),
        }
    }
}

pub(super) fn run_to_end(k: InstanceId, line: &str, ms: u64) -> Result<u64, String> {
    let id = spawn(k, line, None)?;
    wait_status(k, id, ms)
}

fn rows(k: InstanceId) -> Result<Vec<TaskRow>, String> {
    tasks::list(k).map_err(|e| format!("ps of instance {k}: {e}"))
}

fn stats(k: InstanceId) -> Result<[u64; 8], String> {
    tasks::stats(k).map_err(|e| format!("stats of instance {k}: {e}"))
}

fn kill_all(k: InstanceId, ids: &[TaskId]) -> Outcome {
    for &id in ids {
        tasks::kill(k, id).map_err(|e| format!("kill {id} on {k}: {e}"))?;
        let s = wait_status(k, id, 5_000)?;
        ensure(s == mk_abi::STATUS_KILLED, || {
            format!("killed task {id} of {k} ended with status {s}")
        })?;
    }
    Ok(())
}

/// CPU time (us) of each of `ids` on instance `k`, as its scheduler charged it.
fn cpu_times(k: InstanceId, ids: &[TaskId]) -> Result<Vec<u64>, String> {
    let all = rows(k)?;
    ids.iter()
        .map(|id| {
            all.iter()
                .find(|r| r.id == *id)
                .map(|r| r.cpu_time_us)
                .ok_or_else(|| format!("task {id} of instance {k} is gone"))
        })
        .collect()
}

pub(super) fn sleep_ms(ms: u64) {
    tsc::spin_micros(ms * 1000);
}

fn ping(k: InstanceId, nonce: u64) -> Outcome {
    let p = mk_wire::PingPayload {
        nonce,
        sent_at: nonce,
    };
    let reply = crate::messaging::call(k, mk_wire::Kind::Ping, mk_wire::Payload::Ping(p), 2000)
        .map_err(|e| format!("ping {nonce} to instance {k}: {e:?}"))?;
    ensure(reply.payload == mk_wire::Payload::Ping(p), || {
        format!("ping {nonce} to instance {k}: reply {:?}", reply.payload)
    })
}

/// `hello` in every other instance: it runs in ring 3 there, learns its instance with
/// `whoami` (checked against its argument) and prints through `write`.
pub(super) fn user_hello() -> Outcome {
    let plan = plan()?;
    for p in plan.partitions().skip(1) {
        let k = iid(p.index);
        let before = stats(k)?;
        let status = run_to_end(k, &format!("hello {k}"), 20_000)?;
        ensure(status == 0, || {
            format!("hello on instance {k} ended with {status}")
        })?;
        let after = stats(k)?;
        ensure(after[2] > before[2], || {
            format!("instance {k} counted no system call for hello")
        })?;
    }
    Ok(())
}

/// `N`: in every other instance, N `crash` tasks one after the other: each enters ring 3 in
/// its own address space and reads address 0 at once, without a system call; each must end
/// with the page fault's status, and the instance still answers pings. (The boot that runs
/// only this is the nested-KVM one, where SYSCALL from ring 3 does not reach ring 0.)
pub(super) fn user_ring3(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let plan = plan()?;
    for p in plan.partitions().skip(1) {
        let k = iid(p.index);
        let before = stats(k)?[4];
        for i in 0..n {
            let status = run_to_end(k, "crash", 60_000)?;
            ensure(status == mk_abi::STATUS_FAULT + 14, || {
                format!("crash {i} on instance {k} ended with {status}, not a page fault")
            })?;
            ping(k, i)?;
        }
        let faults = stats(k)?[4] - before;
        ensure(faults == n, || {
            format!("instance {k} counted {faults} faults for {n} crashes")
        })?;
    }
    Ok(())
}

/// `fuzz SEED N`: N random system calls with hostile arguments; every one must come back
/// (the task ends normally), and the instance still answers messages.
pub(super) fn user_fuzz(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let k = iid(1);
    let before = stats(k)?;
    let status = run_to_end(k, &format!("fuzz 12345 {n}"), 600_000)?;
    ensure(status == 0, || format!("fuzz ended with status {status}"))?;
    let after = stats(k)?;
    println!(
        "user_fuzz: {} calls, {} refused with an error",
        after[2] - before[2],
        after[3] - before[3]
    );
    ensure(after[2] - before[2] >= n, || {
        format!("only {} system calls counted", after[2] - before[2])
    })?;
    for i in 0..10 {
        ping(k, i)?;
    }
    Ok(())
}

/// Faulting tasks end with the fault's status, one by one, while a `spin` task on the same
/// instance goes on. The shared region's physical address is read as a user pointer too.
pub(super) fn user_faults() -> Outcome {
    let k = iid(1);
    let spin = spawn(k, "spin", None)?;
    let shared = region::pool().map_or(0, |p| p.1);
    let cases: [(String, u64); 7] = [
        (String::from("fault kernel-read"), 14),
        (format!("fault phys {shared:#x}"), 14),
        (String::from("fault null"), 14),
        (String::from("fault write-text"), 14),
        (String::from("fault gp"), 13),
        (String::from("fault div0"), 0),
        (String::from("fault ud"), 6),
    ];
    let t0 = cpu_times(k, &[spin])?[0];
    for (line, vector) in &cases {
        let status = run_to_end(k, line, 20_000)?;
        ensure(status == mk_abi::STATUS_FAULT + vector, || {
            format!("'{line}' ended with status {status}, not the fault {vector}")
        })?;
    }
    sleep_ms(200);
    let t1 = cpu_times(k, &[spin])?[0];
    ensure(t1 > t0, || {
        format!("spin made no progress during the faults ({t0} -> {t1} us)")
    })?;
    kill_all(k, &[spin])?;
    for i in 0..5 {
        ping(k, i)?;
    }
    Ok(())
}

/// N tasks spawned and reaped (by a `spawner` task) leave the instance's free frames as they
/// were.
pub(super) fn user_reap(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let k = iid(1);
    let before = stats(k)?[7];
    let status = run_to_end(k, &format!("spawner hello {n}"), 900_000)?;
    ensure(status == 0, || {
        format!("spawner ended with status {status}")
    })?;
    // A task's end is recorded under the scheduler's lock, and its address space is freed
    // when the CPU it ran on is back in its loop: the last task's frames may come back a
    // moment after its status is seen. Up to 2 s for them; a leak never comes back.
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    let mut after = stats(k)?[7];
    while after != before && tsc::read() < deadline {
        sleep_ms(10);
        after = stats(k)?[7];
    }
    println!("user_reap: {n} tasks; free frames {before} before, {after} after");
    ensure(before == after, || {
        format!("free frames {before} before, {after} 2 s after {n} tasks")
    })
}

/// Two `spin` tasks pinned to one CPU both make progress (the timer preempts them).
pub(super) fn user_preempt() -> Outcome {
    let k = iid(1);
    let a = spawn(k, "spin", Some(0))?;
    let b = spawn(k, "spin", Some(0))?;
    let first = cpu_times(k, &[a, b])?;
    sleep_ms(500);
    let second = cpu_times(k, &[a, b])?;
    kill_all(k, &[a, b])?;
    ensure(second[0] > first[0] && second[1] > first[1], || {
        format!("CPU time of the two spins: {first:?} then {second:?} us")
    })
}

/// An instance with 3 CPUs runs 3 `spin` tasks on its 3 CPUs at once: the scheduler spreads
/// them over 3 different CPUs, and in a window of wall-clock time they get together more than
/// 2.5 windows of CPU time, which only 3 CPUs running them side by side can give. (The first
/// CPU's task is never seen "running" by `ps`: that CPU answers `ps` between task slices.)
pub(super) fn user_smp(arg: &str) -> Outcome {
    let k = iid(number::<usize>(arg)?);
    let ids: Vec<TaskId> = (0..3)
        .map(|_| spawn(k, "spin", None))
        .collect::<Result<_, _>>()?;
    sleep_ms(200);
    let start = tsc::read();
    let t0: u64 = cpu_times(k, &ids)?.iter().sum();
    sleep_ms(1000);
    let t1: u64 = cpu_times(k, &ids)?.iter().sum();
    let wall_us = (tsc::read() - start) * 1000 / tsc::ticks_per_ms();
    let all = rows(k)?;
    let mut cpus: Vec<u8> = all
        .iter()
        .filter(|r| ids.contains(&r.id))
        .map(|r| r.cpu)
        .collect();
    cpus.sort_unstable();
    cpus.dedup();
    kill_all(k, &ids)?;
    println!(
        "user_smp: 3 spins on CPUs {cpus:?} of instance {k}: {} us of CPU time in {wall_us} us",
        t1 - t0
    );
    ensure(cpus.len() == 3, || {
        format!("the 3 spins are on CPUs {cpus:?}")
    })?;
    ensure((t1 - t0) * 2 > wall_us * 5, || {
        format!(
            "the 3 spins got {} us of CPU time in {wall_us} us: not 3 CPUs at once",
            t1 - t0
        )
    })
}

/// The APIC IDs instance `k` owns.
fn cpus_of(k: InstanceId) -> Result<Vec<u32>, String> {
    let r = region::get().ok_or("no shared region")?;
    let mut cpus: Vec<u32> = r
        .resources()
        .filter_map(|(res, owner)| match (res, owner) {
            (Resource::Cpu(a), Ok(Owner::Owned(o))) if o == k => Some(a),
            _ => None,
        })
        .collect();
    cpus.sort_unstable();
    Ok(cpus)
}

/// `A:B`: instance A (2 CPUs, 4 `spin` tasks) gives a CPU to instance B (2 `spin` tasks).
/// No task of A is lost, B's progress (the CPU time its tasks get, per window) rises, and the
/// moved CPU runs B's tasks.
pub(super) fn user_cpu_move(arg: &str) -> Outcome {
    let (a, b) = arg.split_once(':').ok_or("expected A:B")?;
    let (a, b) = (iid(number::<usize>(a)?), iid(number::<usize>(b)?));
    let a_ids: Vec<TaskId> = (0..4)
        .map(|_| spawn(a, "spin", None))
        .collect::<Result<_, _>>()?;
    let b_ids: Vec<TaskId> = (0..2)
        .map(|_| spawn(b, "spin", None))
        .collect::<Result<_, _>>()?;
    let window = |ids: &[TaskId]| -> Result<u64, String> {
        let t0: u64 = cpu_times(b, ids)?.iter().sum();
        sleep_ms(1000);
        let t1: u64 = cpu_times(b, ids)?.iter().sum();
        Ok(t1 - t0)
    };
    sleep_ms(200);
    let before = window(&b_ids)?;
    let cpus = cpus_of(a)?;
    let apic = *cpus.last().ok_or("instance A has no CPU")?;
    ensure(cpus.len() >= 2, || {
        format!("instance {a} has CPUs {cpus:?}, needs 2")
    })?;
    crate::services::cpu::move_cpu(apic, a, b)
        .map_err(|e| format!("moving CPU {apic} from {a} to {b}: {e:?}"))?;
    sleep_ms(200);
    let after = window(&b_ids)?;
    // Every task of A is still there, and they all still make progress.
    let alive = rows(a)?
        .iter()
        .filter(|r| a_ids.contains(&r.id) && r.state != "exited")
        .count();
    ensure(alive == 4, || {
        format!("instance {a} has {alive} of its 4 spins left")
    })?;
    let a0 = cpu_times(a, &a_ids)?;
    sleep_ms(500);
    let a1 = cpu_times(a, &a_ids)?;
    let mut on_new = false;
    for _ in 0..50 {
        on_new |= rows(b)?
            .iter()
            .any(|r| b_ids.contains(&r.id) && r.state == "running" && r.cpu >= 1);
        if on_new {
            break;
        }
        sleep_ms(20);
    }
    kill_all(a, &a_ids)?;
    kill_all(b, &b_ids)?;
    println!(
        "user_cpu_move: instance {b}'s 2 spins got {before} us of CPU per second before, {after} after the move"
    );
    ensure(a0.iter().zip(&a1).all(|(x, y)| y > x), || {
        format!("instance {a}'s spins stalled after the move: {a0:?} -> {a1:?}")
    })?;
    ensure(on_new, || {
        format!("no task of {b} ran on the moved CPU (slot 1)")
    })?;
    ensure(after > before + before / 4, || {
        format!("instance {b}'s progress did not rise: {before} -> {after} us per second")
    })
}

/// `K:FROM`: after instance FROM gives instance K more memory than K has free, a task of K
/// maps and touches more than K had free before.
pub(super) fn user_mem_add(arg: &str) -> Outcome {
    let (k, from) = arg.split_once(':').ok_or("expected K:FROM")?;
    let (k, from) = (iid(number::<usize>(k)?), iid(number::<usize>(from)?));
    let free = stats(k)?[7] * 4096;
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    let bytes = (free + 8 * chunk).next_multiple_of(chunk);
    move_memory(bytes, from, k)?;
    let want = free + 4 * chunk;
    let status = run_to_end(k, &format!("alloc {want}"), 600_000)?;
    println!(
        "user_mem_add: instance {k} had {} MiB free; got {} MiB; a task touched {} MiB",
        free >> 20,
        bytes >> 20,
        want >> 20
    );
    ensure(status == 0, || {
        format!("alloc {want} ended with status {status}")
    })
}

fn move_memory(bytes: u64, from: InstanceId, to: InstanceId) -> Outcome {
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    let r = region::get().ok_or("no shared region")?;
    let mut owned: Vec<u32> = r
        .resources()
        .filter_map(|(res, owner)| match (res, owner) {
            (Resource::Memory(c), Ok(Owner::Owned(o))) if o == from => Some(c),
            _ => None,
        })
        .collect();
    owned.sort_unstable_by(|a, b| b.cmp(a));
    let need = (bytes / chunk) as usize;
    let mut last = String::from("no run of free chunks long enough");
    for window in owned.windows(need) {
        if !window.windows(2).all(|w| w[0] == w[1] + 1) {
            continue;
        }
        let start = u64::from(window[need - 1]) * chunk;
        match crate::services::memory::move_memory(start, bytes, from, to) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:?} (at {start:#x})"),
        }
    }
    Err(format!(
        "could not move {} MiB from {from} to {to}: {last}",
        bytes >> 20
    ))
}

/// N tasks crash one after another (a `spawner` of `crash`) while instance 0 pings the
/// instance: every ping is answered, every crash counted.
pub(super) fn user_crash_pings(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let k = iid(1);
    let before = stats(k)?[4];
    let spawner = spawn(k, &format!("spawner crash {n}"), None)?;
    let mut pings = 0u64;
    let deadline = tsc::read() + 900_000 * tsc::ticks_per_ms();
    let status = loop {
        ping(k, pings)?;
        pings += 1;
        match tasks::status(k, spawner).map_err(|e| format!("{e}"))? {
            TaskStatus::Ended(s) => break s,
            TaskStatus::Unknown => return Err(String::from("the spawner vanished")),
            TaskStatus::Alive if tsc::read() > deadline => {
                return Err(String::from("the spawner did not finish"));
            }
            TaskStatus::Alive => {}
        }
    };
    let faults = stats(k)?[4] - before;
    println!("user_crash_pings: {faults} task crashes, {pings} pings answered meanwhile");
    ensure(status == 0, || {
        format!("spawner ended with status {status}")
    })?;
    ensure(faults >= n, || {
        format!("only {faults} of {n} crashes counted")
    })
}

/// `sysbench`'s exit status for a figure over the budget it was given (its `OVER_BUDGET`).
const SYSBENCH_OVER_BUDGET: u64 = 3;

/// `bench_user=N`: the system call and task switch figures, measured by `sysbench` tasks in
/// instance 1 (they print the `BENCH` lines): N refused system calls, then two tasks pinned to
/// the instance's first CPU yielding to each other N times each. In instruction-count mode
/// (the TSC at 1 000 MHz: one instruction per tick) the null call is also held to its budget
/// (`mk_bench::budgets`), and so is the switch with N = `TASK_SWITCH_N` (the budget boot's):
/// `sysbench` ends with status 3 when a figure is over.
pub(super) fn bench_user(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let k = iid(1);
    let budget = mk_bench::budgets::budget_of("sys.null").ok_or("sys.null has no budget")?;
    let switch = mk_bench::budgets::budget_of("task.switch").ok_or("task.switch has no budget")?;
    let judged = super::bench::instruction_count_mode();
    let line = if judged {
        println!(
            "bench_user: sys.null budget {}, aim {}; task.switch budget {} (at N = {}), aim {}",
            budget.budget,
            budget.aim,
            switch.budget,
            mk_bench::budgets::TASK_SWITCH_N,
            switch.aim
        );
        format!("sysbench null {n} {}", budget.budget)
    } else {
        format!("sysbench null {n}")
    };
    let status = run_to_end(k, &line, 600_000)?;
    ensure(status == 0, || {
        if status == SYSBENCH_OVER_BUDGET {
            format!(
                "sys.null over its budget of {} instructions (kernel/crates/bench/src/budgets.rs; the figure is in instance 1's BENCH line)",
                budget.budget
            )
        } else {
            format!("sysbench null ended with {status}")
        }
    })?;
    let line = if judged && n == mk_bench::budgets::TASK_SWITCH_N {
        format!("sysbench yield {n} {}", switch.budget)
    } else {
        format!("sysbench yield {n}")
    };
    let a = spawn(k, &line, Some(0))?;
    let b = spawn(k, &line, Some(0))?;
    for id in [a, b] {
        let status = wait_status(k, id, 600_000)?;
        ensure(status == 0, || {
            if status == SYSBENCH_OVER_BUDGET {
                format!(
                    "task.switch over its budget of {} instructions (kernel/crates/bench/src/budgets.rs; the figure is in instance 1's BENCH line)",
                    switch.budget
                )
            } else {
                format!("sysbench yield ended with {status}")
            }
        })?;
    }
    Ok(())
}
