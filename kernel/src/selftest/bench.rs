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

/// The two sides of one message with no contention, and an empty poll, in TSC ticks (each
/// the median of its samples, the TSC floor taken off).
struct PathFigures {
    /// `op.send`: `messaging::send` of one full 256-byte SINK message (encoding included) into
    /// a ring with room, the receiver awake (no doorbell) and quiet.
    send: u64,
    /// `op.recv`: what one message adds to a `poll()`: copied out of the ring, validated,
    /// dispatched to the SINK handler (a counter), acknowledged.
    recv: u64,
    /// `op.poll_empty`: one `poll()` finding nothing.
    poll_empty: u64,
    /// `op.send.ring` and `op.recv.ring`: the mailbox's own share of `send` and `recv`.
    ring: crate::services::bench::RingTicks,
    peers: usize,
    /// Sends that rang a doorbell (the receiver was armed), left out of `send`.
    send_ipis: u64,
    samples: (usize, usize),
}

/// Measures [`PathFigures`] against instance 1, `rounds` rounds of 15 sends and as many
/// single receives. The peer runs no instruction while instance 0 times its side: during the
/// sends it halts without arming its doorbell (`job::QUIET`), during a receive it is halted in
/// its serve loop; in instruction-count mode, where every CPU's instructions advance the one
/// clock, each figure is then instance 0's own instructions.
fn measure_path(rounds: usize) -> Result<PathFigures, String> {
    use crate::services::bench::{poll_empty_ticks, sink_message, timed, tsc_floor};
    let peer = iid(1);
    let floor = tsc_floor();
    let (poll_empty, peers) = poll_empty_ticks(64);
    let ring = crate::services::bench::ring_ticks(64)?;
    let msg = sink_message(1);
    let row =
        crate::shared::region::telemetry_row(crate::instance::id()).ok_or("no telemetry table")?;
    let mut send_ipis = 0;
    let mut sends = Vec::new();
    for _ in 0..rounds {
        let sunk = crate::services::bench::idle_stats(peer)?.sunk;
        let before = start_job(1, job::QUIET, 20)?;
        // Let the peer reach its halt (its job runs from the serve loop's idle hook).
        yield_micros(2000);
        for i in 0..15 {
            let ipis = row[1].snapshot().ipis_sent;
            let mut r = Ok(());
            let t = timed(|| r = crate::messaging::try_send(peer, &msg));
            r.map_err(|e| format!("op.send: message {i} of a round: {e:?}"))?;
            // A send that found the receiver armed (it rang a doorbell) is not the figure.
            if row[1].snapshot().ipis_sent == ipis {
                sends.push(t.saturating_sub(floor));
            } else {
                send_ipis += 1;
            }
        }
        wait_job(1, before, 10_000)?;
        wait_sunk(peer, sunk + 15, 10_000)?;
    }
    let peer_row = crate::shared::region::telemetry_row(peer).ok_or("no telemetry table")?;
    let mut recvs = Vec::new();
    let mut attempts = 0;
    let mut seen = String::new();
    while recvs.len() < rounds {
        attempts += 1;
        if attempts > 4 * rounds + 10 {
            return Err(format!(
                "op.recv: only {} clean samples in {attempts} attempts (taken/sunk of the first: {seen})",
                recvs.len()
            ));
        }
        // The peer first halts 5 ms, so that the SINK comes after this call has returned and
        // we have stopped draining (else the call's own polls would take it).
        let before = start_job(1, job::SINKS, 1 | (5 << 32))?;
        let sent_before = peer_row[0].snapshot().sent;
        let sunk_before = SUNK.load(Ordering::Relaxed);
        // Wait, without draining, until the message is in our inbox and the peer halted.
        let deadline = tsc::read() + 1000 * tsc::ticks_per_ms();
        while peer_row[0].snapshot().sent == sent_before {
            if tsc::read() > deadline {
                return Err("op.recv: the peer sent nothing".into());
            }
            core::hint::spin_loop();
        }
        yield_micros(2000);
        // The timer ticks of the wait asked for the poll hook (heartbeats, the failure
        // watch) and for a look at every mailbox: done per tick, not per message, so run the
        // hook first and leave the look to the next tick: the figure is the message's.
        crate::messaging::settle_tick_work();
        let mut taken = 0;
        let t = timed(|| taken = crate::messaging::poll());
        let sunk = SUNK.load(Ordering::Relaxed) - sunk_before;
        wait_job(1, before, 10_000)?;
        if attempts <= 8 {
            seen.push_str(&format!("{taken}/{sunk} "));
        }
        // Another message in the same drain (a heartbeat) spoils the sample.
        if taken == 1 && sunk == 1 {
            recvs.push(t.saturating_sub(floor).saturating_sub(poll_empty));
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    Ok(PathFigures {
        samples: (sends.len(), recvs.len()),
        send: median(&mut sends),
        recv: median(&mut recvs),
        poll_empty,
        ring,
        peers,
        send_ipis,
    })
}

/// Waits `micros` on the TSC with `pause` in the loop: under TCG's round robin a vCPU that
/// spins without it keeps the other vCPUs from running (QEMU switches vCPUs on `pause`).
fn yield_micros(micros: u64) {
    let until = tsc::read() + micros * tsc::ticks_per_ms() / 1000;
    while tsc::read() < until {
        core::hint::spin_loop();
    }
}

fn print_path(f: &PathFigures) {
    let (ns_send, ns_recv, ns_poll) = (ns(f.send), ns(f.recv), ns(f.poll_empty));
    println!(
        "BENCH op.send unit=ns_per_op value={ns_send} ticks={} n={} ipis={}",
        f.send, f.samples.0, f.send_ipis
    );
    println!(
        "BENCH op.recv unit=ns_per_op value={ns_recv} ticks={} n={}",
        f.recv, f.samples.1
    );
    println!(
        "BENCH op.poll_empty unit=ns_per_op value={ns_poll} ticks={} peers={} n=64",
        f.poll_empty, f.peers
    );
    for (name, ticks) in [("op.send.ring", f.ring.send), ("op.recv.ring", f.ring.recv)] {
        println!(
            "BENCH {name} unit=ns_per_op value={} ticks={ticks} n=64",
            ns(ticks)
        );
    }
}

/// Whether the guest runs under QEMU's instruction-count mode: the TSC then calibrates at
/// about 1 000 MHz (one tick per instruction), and the budgets' counts can be checked.
pub(super) fn instruction_count_mode() -> bool {
    (990..=1010).contains(&(tsc::ticks_per_ms() / 1000))
}

/// `ipi_rate=N`, in instruction-count mode: N PING calls back to back to instance 1, which
/// halts between them (no idle polling), so that each is a doorbell. A round trip is about
/// 3 000 instructions (3 µs of the guest's clock), far beyond the doorbell's budget (20 000 a
/// second after a burst of 256): instance 1's first CPU gets throttled. Checks that it was,
/// and that no call waited for a timer tick meanwhile (each under 1 000 000 instructions; a
/// tick is 10 000 000): a throttled CPU polls rather than halt (it used to halt, and answer
/// at its next tick only).
pub(super) fn ipi_rate(arg: &str) -> Outcome {
    if !instruction_count_mode() {
        return Err(String::from(
            "not in instruction-count mode: the figures would be times, not instruction counts",
        ));
    }
    let n = parse_n(arg)?;
    let peer = iid(1);
    let before = super::peer::peer_stats(1)?.throttles;
    crate::services::bench::set_idle_poll(peer, Some(0))?;
    let mut worst = 0;
    for nonce in 0..n as u64 {
        let ping = mk_wire::Payload::Ping(mk_wire::PingPayload { nonce, sent_at: 0 });
        let t0 = tsc::read();
        let reply = crate::messaging::call(peer, mk_wire::Kind::Ping, ping, 1000)
            .map_err(|e| format!("ping {nonce}: {e:?}"))?;
        worst = worst.max(ns(tsc::read() - t0));
        if reply.payload != ping {
            return Err(format!("ping {nonce} answered with another payload"));
        }
    }
    let throttles = super::peer::peer_stats(1)?.throttles - before;
    println!(
        "ipi_rate: {n} calls to a halting instance 1; its doorbell throttled {throttles} time(s); the slowest round trip {worst} instructions"
    );
    if throttles == 0 {
        return Err(format!(
            "instance 1 was never throttled: {n} calls did not test a throttled receiver"
        ));
    }
    if worst >= 1_000_000 {
        return Err(format!(
            "a call took {worst} instructions: it waited for a timer tick while instance 1 was throttled"
        ));
    }
    Ok(())
}

/// `bench_path=R`: `op.send`, `op.recv` and `op.poll_empty` (R rounds), as `BENCH` lines.
pub(super) fn bench_path(arg: &str) -> Outcome {
    let f = measure_path(parse_n(arg)?)?;
    print_path(&f);
    Ok(())
}

/// `bench_budget=R`: the same figures, in instruction-count mode, each checked against its
/// budget in `mk_bench::budgets` (the one file where they are written). Fails naming every
/// figure over its budget; fails too when the TSC does not run at 1 GHz (not in
/// instruction-count mode: the figures would be times, not instruction counts).
pub(super) fn bench_budget(arg: &str) -> Outcome {
    if !instruction_count_mode() {
        let mhz = tsc::ticks_per_ms() / 1000;
        return Err(format!(
            "the TSC runs at {mhz} MHz: not QEMU's instruction-count mode (1 instruction = 1 ns)"
        ));
    }
    let f = measure_path(parse_n(arg)?)?;
    print_path(&f);
    if f.samples.0 == 0 {
        return Err(format!(
            "op.send: every send rang a doorbell ({}): the receiver was never awake",
            f.send_ipis
        ));
    }
    let mut over = Vec::new();
    for (figure, value) in [
        ("op.send", ns(f.send)),
        ("op.recv", ns(f.recv)),
        ("op.poll_empty", ns(f.poll_empty)),
    ] {
        let b = mk_bench::budgets::budget_of(figure).ok_or("a figure without a budget")?;
        println!(
            "bench_budget: {figure} {value} instructions, budget {}, aim {}",
            b.budget, b.aim
        );
        if let Err(e) = mk_bench::budgets::check(figure, value) {
            over.push(format!("{e}"));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(over.join("; "))
    }
}
