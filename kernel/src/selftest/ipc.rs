//! Capability IPC between tasks (`services::ipc`), driven from instance 0: user programs of
//! the ramdisk (`echo`, `pingpong`, `forge`, `grant`/`grantee`, `sink`/`caller`, `com2drv`/
//! `com2client`, `ipcfuzz`, `ioport`, `mmio`) run as tasks in the instances and end with status
//! 0 only when everything they checked held: every reply intact and in order, every forgery
//! refused, capabilities moved, copied and revoked as they should, the device bytes intact.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mk_abi::TaskId;
use mk_shared::{InstanceState, Owner, Resource};
use mk_wire::{Kind, Message};

use super::harness::{Outcome, ensure, number, wait_until};
use super::peer::{self, job, start_job, user, wait_job};
use super::tasks::{run_to_end, spawn, wait_status};
use crate::arch::tsc;
use crate::instance::{InstanceId, iid};
use crate::messaging;
use crate::println;
use crate::services::tasks::{self as control, Grant};
use crate::shared::region;

fn expect_zero(k: InstanceId, what: &str, status: u64) -> Outcome {
    ensure(status == 0, || {
        format!("{what} on instance {k} ended with status {status}")
    })
}

fn ipc_stats(k: InstanceId) -> Result<[u64; 15], String> {
    control::ipc_stats(k).map_err(|e| format!("ipc stats of {k}: {e}"))
}

/// Runs a server `echo NAME` on `server` and `pingpong NAME N quit` on `client`; both must end
/// with 0 (the client checked every reply: label, length and bytes, in order).
fn ping_pong(
    server: InstanceId,
    client: InstanceId,
    name: &str,
    n: u64,
) -> Result<(TaskId, TaskId), String> {
    let s = spawn(server, &format!("echo {name}"), None)?;
    let c = spawn(client, &format!("pingpong {name} {n} quit"), None)?;
    Ok((s, c))
}

fn finish_pair(
    server: InstanceId,
    client: InstanceId,
    (s, c): (TaskId, TaskId),
    ms: u64,
) -> Outcome {
    expect_zero(client, "pingpong", wait_status(client, c, ms)?)?;
    expect_zero(server, "echo", wait_status(server, s, 10_000)?)
}

/// `ipc_local=N`: N calls between two tasks of instance 1.
pub(super) fn ipc_local(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let k = iid(1);
    let before = ipc_stats(k)?;
    let pair = ping_pong(k, k, "local", n)?;
    finish_pair(k, k, pair, 900_000)?;
    let after = ipc_stats(k)?;
    ensure(after[0] - before[0] > n && after[3] - before[3] > n, || {
        format!(
            "instance {k} counted {} calls and {} replies for {n}",
            after[0] - before[0],
            after[3] - before[3]
        )
    })?;
    println!(
        "ipc_local: {n} calls between two tasks of instance {k}, every reply intact and in order"
    );
    Ok(())
}

/// Every pair's mailbox: messages sent (by the sender's count) equal messages received (by
/// the receiver's), once traffic has stopped.
fn counters_reconciled(ids: &[usize]) -> Outcome {
    let settle = |_: ()| -> Result<bool, String> {
        for &a in ids {
            for &b in ids.iter().filter(|&&b| b != a) {
                let sent = region::telemetry_row(iid(a))
                    .and_then(|r| r.get(b))
                    .map_or(0, |t| t.sent.load(core::sync::atomic::Ordering::Relaxed));
                let got = region::telemetry_row(iid(b))
                    .and_then(|r| r.get(a))
                    .map_or(0, |t| {
                        t.received.load(core::sync::atomic::Ordering::Relaxed)
                    });
                if sent != got {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    // Heartbeats and replies may be in flight: equal at some instant within 2 s.
    wait_until(
        "mailbox counters reconciled (sent = received per pair)",
        2_000,
        || settle(()),
    )
}

/// `ipc_remote=N`: N calls from a task of instance 2 to a server task of instance 1.
pub(super) fn ipc_remote(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let (s, c) = (iid(1), iid(2));
    let before = ipc_stats(s)?;
    let pair = ping_pong(s, c, "remote", n)?;
    finish_pair(s, c, pair, 900_000)?;
    let after = ipc_stats(s)?;
    ensure(after[7] - before[7] >= n, || {
        format!(
            "instance {s} took {} requests from other instances for {n}",
            after[7] - before[7]
        )
    })?;
    counters_reconciled(&[0, 1, 2])?;
    println!(
        "ipc_remote: {n} calls from instance {c} to instance {s}, intact and in order; mailbox counters reconciled"
    );
    Ok(())
}

/// `ipc_all_pairs=N`: a server in each of instances 1 to 4, and in each of them a client of
/// every other one's server, all at once: N calls each. (Instance 0 runs this harness, not
/// tasks.)
pub(super) fn ipc_all_pairs(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let ids: Vec<usize> = (1..5).collect();
    let mut servers = Vec::new();
    for &i in &ids {
        servers.push((iid(i), spawn(iid(i), &format!("echo all{i}"), None)?));
    }
    let mut clients = Vec::new();
    for &c in &ids {
        for &s in ids.iter().filter(|&&s| s != c) {
            clients.push((
                iid(c),
                spawn(iid(c), &format!("pingpong all{s} {n}"), None)?,
            ));
        }
    }
    for (k, id) in clients {
        expect_zero(k, "pingpong", wait_status(k, id, 900_000)?)?;
    }
    // The servers end with a quit call each.
    for &i in &ids {
        let status = run_to_end(iid(i), &format!("pingpong all{i} 1 quit"), 60_000)?;
        expect_zero(iid(i), "pingpong (quit)", status)?;
    }
    for (k, id) in servers {
        expect_zero(k, "echo", wait_status(k, id, 10_000)?)?;
    }
    counters_reconciled(&[0, 1, 2, 3, 4])?;
    println!(
        "ipc_all_pairs: 12 clients x {n} calls among instances 1 to 4 at once, intact and in order; mailbox counters reconciled"
    );
    Ok(())
}

/// `ipc_forge=SEED:N`: forged handles (random, another task's, dropped, stale) and wrong
/// rights are refused and deliver nothing (`forge`); N random IPC system calls with random
/// handles, labels, lengths and pointers return errors only, and the instance still answers
/// (`ipcfuzz`).
pub(super) fn ipc_forge(arg: &str) -> Outcome {
    let (seed, n) = arg.split_once(':').ok_or("ipc_forge=SEED:N")?;
    let (seed, n): (u64, u64) = (number(seed)?, number(n)?);
    let k = iid(1);
    expect_zero(
        k,
        "forge",
        run_to_end(k, &format!("forge {seed} {n}"), 300_000)?,
    )?;
    expect_zero(
        k,
        "ipcfuzz",
        run_to_end(k, &format!("ipcfuzz {seed} {n}"), 600_000)?,
    )?;
    // Another task's handles: a server's endpoint handle (slot 1, generation 1), used by a
    // task that holds nothing there, is refused (`forge` tries small slots and generations).
    let s = spawn(k, "echo forged", None)?;
    let status = run_to_end(k, &format!("forge {} 200", seed ^ 0x5555), 300_000)?;
    expect_zero(k, "forge beside a server", status)?;
    expect_zero(
        k,
        "pingpong (quit)",
        run_to_end(k, "pingpong forged 1 quit", 60_000)?,
    )?;
    expect_zero(k, "echo", wait_status(k, s, 10_000)?)?;
    println!(
        "ipc_forge: forged and stale handles refused, {n} fuzzed IPC calls survived (seed {seed:#x})"
    );
    Ok(())
}

/// `ipc_grant`: a server in instance 1 passes capabilities to a client in instance 2: a copy
/// with fewer rights and a badge, then one moved; when the server exits, what the client holds
/// is stale (an error, never a new object in the reused slot); the exited task has nothing.
pub(super) fn ipc_grant() -> Outcome {
    let (s, c) = (iid(1), iid(2));
    let server = spawn(s, "grant granted", None)?;
    let client = spawn(c, "grantee granted", None)?;
    expect_zero(c, "grantee", wait_status(c, client, 120_000)?)?;
    expect_zero(s, "grant", wait_status(s, server, 10_000)?)?;
    let caps = control::caps(s, server).map_err(|e| format!("caps: {e}"))?;
    ensure(caps.is_empty(), || {
        format!("the exited server still holds {caps:?}")
    })?;
    println!(
        "ipc_grant: copy with fewer rights and a badge, move, revocation on exit: as specified"
    );
    Ok(())
}

/// `ipc_peer_dead=K`: 8 callers in instance 1 wait on a server task of instance K that never
/// replies; K crashes: every caller gets `PeerDead` (not its 30 s timeout) once instance 0
/// declares K dead; after K is respawned, a fresh lookup finds a new server and calls work.
pub(super) fn ipc_peer_dead(arg: &str) -> Outcome {
    let k: usize = number(arg)?;
    let (callers_in, dead) = (iid(1), iid(k));
    spawn(dead, "sink doomed", None)?;
    let mut callers = Vec::new();
    for _ in 0..8 {
        callers.push(spawn(callers_in, "caller doomed 30000", None)?);
    }
    // All 8 calls are queued at the sink before the crash.
    wait_until("8 calls reach the sink", 60_000, || {
        Ok(ipc_stats(dead)?[7] >= 8)
    })?;
    let crash = Message::request(iid(0), Kind::User(user::CRASH), 1, peer::user_payload(&[]));
    messaging::send(dead, &crash).map_err(|e| format!("crash request: {e:?}"))?;
    let crashed = tsc::read();
    let state = |k: InstanceId| {
        region::get()
            .ok_or("no shared region")?
            .instance(k)
            .and_then(|i| i.state())
            .map_err(|e| format!("{e:?}"))
    };
    wait_until("the crashed instance declared dead", 60_000, || {
        Ok(state(dead)? == InstanceState::Dead)
    })?;
    let declared = tsc::read();
    for id in &callers {
        let status = wait_status(callers_in, *id, 20_000)?;
        ensure(status == mk_abi::Error::PeerDead.code(), || {
            format!(
                "caller {id} ended with {status}, want PeerDead ({})",
                mk_abi::Error::PeerDead.code()
            )
        })?;
    }
    let all_failed = tsc::read();
    let ms = |t: u64| t / tsc::ticks_per_ms();
    println!(
        "ipc_peer_dead: instance {dead} declared dead {} ms after its crash; all 8 callers got PeerDead within {} ms of that",
        ms(declared - crashed),
        ms(all_failed - declared)
    );
    crate::services::lifecycle::respawn(dead).map_err(|e| format!("respawning {dead}: {e}"))?;
    let s = spawn(dead, "echo doomed", None)?;
    expect_zero(
        callers_in,
        "pingpong after respawn",
        run_to_end(callers_in, "pingpong doomed 100 quit", 120_000)?,
    )?;
    expect_zero(dead, "echo", wait_status(dead, s, 10_000)?)?;
    println!("ipc_peer_dead: after respawning instance {dead}, a fresh lookup and 100 calls work");
    Ok(())
}

fn com2_line() -> Result<usize, String> {
    let gsi = crate::services::irq::com2_gsi();
    ensure(gsi != u32::MAX && crate::platform::com2::present(), || {
        String::from("no COM2 (the harness passes a second -serial)")
    })?;
    Ok(gsi as usize)
}

fn driver(k: InstanceId, line: usize) -> Result<TaskId, String> {
    control::spawn_with(
        k,
        "com2drv",
        None,
        &[
            Grant::Irq(line as u8),
            Grant::IoPorts {
                base: 0x2F8,
                len: 8,
            },
        ],
    )
    .map_err(|e| format!("spawn com2drv on {k}: {e}"))
}

fn kill(k: InstanceId, id: TaskId) -> Outcome {
    control::kill(k, id).map_err(|e| format!("kill {id} on {k}: {e}"))?;
    let s = wait_status(k, id, 10_000)?;
    ensure(s == mk_abi::STATUS_KILLED, || {
        format!("killed {id} ended with {s}")
    })
}

/// `ipc_com2=TOTAL`: COM2 (loopback) driven by a user task, which holds the line (IRQ
/// capability) and the UART's ports (I/O-port capability) and serves `write` calls;
/// `com2client` in instance 2 writes TOTAL bytes through it and checks that every byte came
/// back (count and checksum). First the line stays instance 0's, which forwards each
/// interrupt (IRQ_FORWARD) to a driver in instance 4; then that driver is killed and the line
/// balanced to instance 1, where a driver takes it directly; that one is killed mid-stream and
/// started again; later killed again while the line goes to instance 3 (handed back to
/// instance 0, which balances it on: lines move only through instance 0), where a new driver
/// takes over. The client retries through each (a fresh lookup).
pub(super) fn ipc_com2(arg: &str) -> Outcome {
    let total: u64 = number(arg)?;
    let line = com2_line()?;
    let (d1, c, d3, d4) = (iid(1), iid(2), iid(3), iid(4));
    let irqs = |k: InstanceId| Ok::<u64, String>(ipc_stats(k)?[5]);
    // Forwarded: instance 0 takes the line and forwards it to the driver in instance 4.
    crate::services::irq::claim_local(line)
        .map_err(|s| format!("taking COM2's line {line}: {s:?}"))?;
    crate::services::irq::forward_to_driver(line, d4)
        .map_err(|s| format!("forwarding COM2's line {line} to {d4}: {s:?}"))?;
    let forwarded_before = irqs(d4)?;
    let zeroth = driver(d4, line)?;
    let client = spawn(c, &format!("com2client {total}"), None)?;
    wait_until(
        "the driver in instance 4 takes 1/8 of the stream through IRQ_FORWARD",
        300_000,
        || Ok(irqs(d4)? >= forwarded_before + total / 8),
    )?;
    kill(d4, zeroth)?;
    let forwarded = irqs(d4)? - forwarded_before;
    crate::services::irq::balance(line, d1)
        .map_err(|s| format!("balancing COM2's line {line} to {d1}: {s:?}"))?;
    let first = driver(d1, line)?;
    let at_start = irqs(d1)?;
    wait_until("the first driver takes 1/4 of the stream", 300_000, || {
        Ok(irqs(d1)? >= at_start + total / 4)
    })?;
    kill(d1, first)?;
    let second = driver(d1, line)?;
    let mid = irqs(d1)?;
    wait_until("the restarted driver takes another 1/4", 300_000, || {
        Ok(irqs(d1)? >= mid + total / 4)
    })?;
    kill(d1, second)?;
    // Lines move through instance 0 (its record of who holds each, issue 15): instance 1
    // hands the line back, instance 0 hands it on to instance 3.
    let jobs = start_job(1, job::BALANCE_LINE, line as u64)?;
    let result = wait_job(1, jobs, 10_000)?.job_result;
    ensure(result == 0, || {
        format!(
            "instance 1 could not hand line {line} back to instance 0 (status {})",
            result - 1
        )
    })?;
    crate::services::irq::balance(line, d3)
        .map_err(|s| format!("balancing COM2's line {line} on to {d3}: {s:?}"))?;
    let r = region::get().ok_or("no shared region")?;
    ensure(
        r.owner(Resource::Irq(line as u32)) == Ok(Owner::Owned(d3)),
        || {
            format!(
                "line {line} owned by {:?} after the balance",
                r.owner(Resource::Irq(line as u32))
            )
        },
    )?;
    let third_before = irqs(d3)?;
    let third = driver(d3, line)?;
    let status = wait_status(c, client, 600_000)?;
    expect_zero(c, "com2client (count and checksum of every byte)", status)?;
    let third_irqs = irqs(d3)? - third_before;
    ensure(third_irqs > 0, || {
        String::from("the driver in instance 3 took no interrupt")
    })?;
    kill(d3, third)?;
    println!(
        "ipc_com2: {total} bytes through user-space COM2 drivers intact: instance {d4} ({forwarded} interrupts forwarded by instance 0), instance {d1} (killed and restarted), then instance {d3} ({third_irqs} interrupts) after IRQ_BALANCE"
    );
    Ok(())
}

/// `ipc_devices`: device access only by capability: a task reading a COM2 port without an
/// I/O-port capability faults (general protection), with one it reads; `mmio` maps the HPET's
/// registers with an MMIO capability and reads its capabilities word, and without one its
/// `mmio_map` is refused.
pub(super) fn ipc_devices() -> Outcome {
    let k = iid(1);
    let status = run_to_end(k, "ioport 0x2ff", 30_000)?;
    ensure(status == mk_abi::STATUS_FAULT + 13, || {
        format!("a port read without a capability ended with {status}, want a #GP fault")
    })?;
    let with = control::spawn_with(
        k,
        "ioport 0x2ff",
        None,
        &[Grant::IoPorts {
            base: 0x2F8,
            len: 8,
        }],
    )
    .map_err(|e| format!("{e}"))?;
    expect_zero(
        k,
        "ioport with the capability",
        wait_status(k, with, 30_000)?,
    )?;
    let outside = control::spawn_with(
        k,
        "ioport 0x300",
        None,
        &[Grant::IoPorts {
            base: 0x2F8,
            len: 8,
        }],
    )
    .map_err(|e| format!("{e}"))?;
    let status = wait_status(k, outside, 30_000)?;
    ensure(status == mk_abi::STATUS_FAULT + 13, || {
        format!("a port outside the granted range ended with {status}")
    })?;
    let hpet = control::spawn_with(
        k,
        "mmio",
        None,
        &[Grant::Mmio {
            phys: 0xFED0_0000,
            pages: 1,
        }],
    )
    .map_err(|e| format!("{e}"))?;
    expect_zero(k, "mmio with the capability", wait_status(k, hpet, 30_000)?)?;
    let status = run_to_end(k, "mmio", 30_000)?;
    ensure(status == 2, || {
        format!("mmio without a capability ended with {status}, want 2 (refused)")
    })?;
    println!("ipc_devices: I/O ports and MMIO only through capabilities");
    Ok(())
}

/// `ipc_pages=KIB:ROUNDS`: pages granted in calls, both ways: `bulk` maps KIB KiB, fills
/// them, grants them (they leave its address space) to `bulksrv`, which maps them, checks
/// them and grants them back changed; within instance 1, then from instance 2 to 1 (through
/// the shared page pool, ownership checked). Afterwards no page run is left in either
/// instance, none was lost, and the pool has every page back.
pub(super) fn ipc_pages(arg: &str) -> Outcome {
    let (kib, rounds) = arg.split_once(':').ok_or("ipc_pages=KIB:ROUNDS")?;
    let (kib, rounds): (u64, u64) = (number(kib)?, number(rounds)?);
    let (s, c) = (iid(1), iid(2));
    let pool = || region::pool().map(|(p, _)| p.free_pages()).ok_or("no pool");
    let pool_before = pool()?;
    for (client, name) in [(s, "pagesl"), (c, "pagesr")] {
        let server = spawn(s, &format!("bulksrv {name}"), None)?;
        let status = run_to_end(client, &format!("bulk {name} {kib} {rounds} quit"), 300_000)?;
        expect_zero(client, "bulk", status)?;
        expect_zero(s, "bulksrv", wait_status(s, server, 10_000)?)?;
    }
    for k in [s, c] {
        let st = ipc_stats(k)?;
        ensure(st[13] == 0 && st[14] == 0, || {
            format!("instance {k}: {} page runs left, {} lost", st[13], st[14])
        })?;
    }
    let pool_after = pool()?;
    ensure(pool_after == pool_before, || {
        format!("the shared pool had {pool_before} free pages, now {pool_after}")
    })?;
    println!(
        "ipc_pages: {rounds} x {kib} KiB granted both ways within instance {s} and from {c} to {s} (through the pool), intact; no run left or lost, the pool whole"
    );
    Ok(())
}

/// `bench_ipc=N`: user-to-user call round trips within instance 1 and (if there is an
/// instance 2) from instance 2 to 1 (`pingpong` prints them as `BENCH ipc.rtt.benchl` and
/// `ipc.rtt.benchr`), beside the kernel-to-kernel PING round trip from instance 0 to 1 in the
/// same run (`ipc.kernel_rtt`).
pub(super) fn bench_ipc(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let s = iid(1);
    let pair = ping_pong(s, s, "benchl", n)?;
    finish_pair(s, s, pair, 900_000)?;
    if super::harness::plan()?.partitions().count() > 2 {
        let c = iid(2);
        let pair = ping_pong(s, c, "benchr", n)?;
        finish_pair(s, c, pair, 900_000)?;
    } else {
        println!("bench_ipc: no instance 2 (run with --smp 3 or more): no cross-instance figure");
    }
    let start = tsc::read();
    for i in 0..n {
        let p = mk_wire::Payload::Ping(mk_wire::PingPayload {
            nonce: i,
            sent_at: i,
        });
        messaging::call(s, Kind::Ping, p, 2000).map_err(|e| format!("ping {i}: {e:?}"))?;
    }
    let per = (tsc::read() - start) * 1_000_000 / tsc::ticks_per_ms() / n.max(1);
    println!("BENCH ipc.kernel_rtt unit=ns_per_op value={per} n={n}");
    Ok(())
}
