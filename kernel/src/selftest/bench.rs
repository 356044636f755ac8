//! The `bench_*` cases of the test kernel: `cargo xtask bench` boots them and collects their
//! `BENCH` lines. The measurements themselves live in `crate::services::bench` (the shell's `bench` runs
//! them too); what is here needs the test kernel: the all-instances exchange (jobs in the
//! other instances, `super::peer::stream_among`) and the boot time.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::harness::{Outcome, plan};
use super::peer::{job, start_job, stream_among, stream_among_arg, wait_job};
use crate::arch::tsc;
use crate::instance::iid;
use crate::println;
use crate::services::bench::{SUNK, idle_stats, ns, wait_sunk};

fn parse_n(arg: &str) -> Result<usize, String> {
    match arg.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("bad sample count '{arg}'")),
    }
}

pub(super) fn bench_ipi(arg: &str) -> Outcome {
    crate::services::bench::ipi(parse_n(arg)?, iid(1))
}

pub(super) fn bench_rtt(arg: &str) -> Outcome {
    crate::services::bench::rtt(parse_n(arg)?, iid(1))
}

pub(super) fn bench_tput(arg: &str) -> Outcome {
    crate::services::bench::tput(parse_n(arg)?, iid(1))
}

pub(super) fn bench_ops(arg: &str) -> Outcome {
    crate::services::bench::ops(parse_n(arg)?)
}

/// `bench_all=N`: the first k instances (k = 2, 3, ... up to all) each send N full-size
/// messages to every other one of them, all at once; timed until every message was taken.
/// Receivers run in the default mode (halt when idle, doorbell suppression).
pub(super) fn bench_all(arg: &str) -> Outcome {
    let n = parse_n(arg)? as u64;
    let count = plan()?.partition_count();
    if count < 2 {
        return Err(String::from("needs at least two instances"));
    }
    for k in 2..=count {
        let mut want = Vec::with_capacity(k);
        for i in 0..k {
            let before = if i == 0 {
                SUNK.load(Ordering::Relaxed)
            } else {
                idle_stats(iid(i))?.sunk
            };
            want.push(before + n * (k as u64 - 1));
        }
        let start = tsc::read();
        let mut started = Vec::new();
        for i in 1..k {
            started.push((i, start_job(i, job::STREAM_AMONG, stream_among_arg(n, k))?));
        }
        let sent = stream_among(stream_among_arg(n, k));
        if sent != n * (k as u64 - 1) {
            return Err(format!("instance 0 sent {sent} messages"));
        }
        for (i, &w) in want.iter().enumerate() {
            wait_sunk(iid(i), w, 120_000)?;
        }
        let elapsed = ns(tsc::read() - start).max(1);
        for (i, before) in started {
            let s = wait_job(i, before, 10_000)?;
            if s.job_result != n * (k as u64 - 1) {
                return Err(format!("instance {i} sent {} messages", s.job_result));
            }
        }
        let total = n * (k * (k - 1)) as u64;
        let per_sec = mk_bench::scale(total, 1_000_000_000, elapsed);
        println!(
            "BENCH all.{k} unit=msg/s value={per_sec} instances={k} msgs={total} ns={elapsed} per_pair={}",
            per_sec / (k * (k - 1)) as u64
        );
    }
    Ok(())
}

/// `bench_boot`: time from instance 0's kernel entry until every instance runs (measured on
/// the TSC; the time from power-on to kernel entry is measured by xtask on the host, since the
/// TSC does not start from 0 under every hypervisor).
pub(super) fn bench_boot() -> Outcome {
    let &(entry, running) = crate::boot::start::BOOT_TSC
        .get()
        .ok_or("instance 0 did not record its boot")?;
    let count = plan()?.partition_count();
    println!(
        "BENCH boot.instances unit=ns value={} instances={count}",
        ns(running - entry)
    );
    Ok(())
}
