//! Test cases of the messaging layer between instances: calls, order under back-pressure,
//! rejection of malformed messages, IPI floods, a full mailbox, bulk data through the page
//! pool, every pair streaming at once, the shared telemetry. The receiving side (handlers,
//! counters, jobs) is in `super::peer`.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::harness::{Outcome, ensure, number, plan};
use super::peer::{
    PeerStats, SEQ_BAD, SEQ_OK, SEQ_SEND, fnv1a, job, peer_stats, peer_stats_from, ping_all,
    send_patiently, sequenced_message, start_job, stream_all, user, wait_job,
};
use crate::instance::iid;
use crate::println;
use crate::services::bench::payload_words;

/// `msg_ping_all=N`: every instance pings every other instance N times and gets every reply.
pub(super) fn msg_ping_all(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let count = plan()?.partition_count();
    let mut started = Vec::new();
    for k in 1..count {
        started.push((k, start_job(k, job::PING_ALL, n)?));
    }
    let mine = ping_all(n);
    let want = n * (count as u64 - 1);
    ensure(mine == want, || {
        format!("instance 0: {mine} of {want} pings answered")
    })?;
    for (k, before) in started {
        let s = wait_job(k, before, 60_000)?;
        ensure(s.job_result == want, || {
            format!("instance {k}: {} of {want} pings answered", s.job_result)
        })?;
    }
    println!("msg_ping_all: {count} instances each pinged every other {n} times, all answered");
    Ok(())
}

/// `msg_stress=N`: every ordered pair carries N sequenced messages at once; every receiver saw
/// each sender's N in order and intact, and the mailboxes' own counters (in the shared region)
/// agree: for every pair, sent == received.
pub(super) fn msg_stress(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let count = plan()?.partition_count();
    // Baselines: what each receiver already counted from each sender.
    let mut base = alloc::vec![alloc::vec![0u64; count]; count];
    for (to, row) in base.iter_mut().enumerate() {
        for (from, cell) in row.iter_mut().enumerate() {
            if from != to {
                *cell = if to == 0 {
                    SEQ_OK[from].load(Ordering::SeqCst)
                } else {
                    peer_stats_from(to, from)?.in_order
                };
            }
        }
    }
    let start = crate::arch::tsc::read();
    let mut started = Vec::new();
    for k in 1..count {
        started.push((k, start_job(k, job::STREAM_ALL, n)?));
    }
    let sent = stream_all(n)?;
    for (k, before) in started {
        let s = wait_job(k, before, 600_000)?;
        ensure(s.job_result == n * (count as u64 - 1), || {
            format!(
                "instance {k} sent {} of {}",
                s.job_result,
                n * (count as u64 - 1)
            )
        })?;
    }
    ensure(sent == n * (count as u64 - 1), || {
        format!("instance 0 sent {sent}")
    })?;
    // Let the last messages land, then check every receiver.
    let deadline = crate::arch::tsc::read() + 10_000 * crate::arch::tsc::ticks_per_ms();
    for (to, row) in base.iter().enumerate() {
        for (from, &b) in row.iter().enumerate() {
            if from == to {
                continue;
            }
            loop {
                let (ok, bad) = if to == 0 {
                    crate::messaging::poll();
                    (
                        SEQ_OK[from].load(Ordering::SeqCst),
                        SEQ_BAD[from].load(Ordering::SeqCst),
                    )
                } else {
                    let s = peer_stats_from(to, from)?;
                    (s.in_order, s.bad)
                };
                ensure(bad == 0, || format!("{from}->{to}: {bad} bad messages"))?;
                if ok - b == n {
                    break;
                }
                ensure(crate::arch::tsc::read() < deadline, || {
                    format!("{from}->{to}: {} of {n} arrived", ok - b)
                })?;
            }
        }
    }
    let ms = (crate::arch::tsc::read() - start) / crate::arch::tsc::ticks_per_ms();
    // The channels' own counters, read from the shared region.
    let matrix = crate::shared::region::get()
        .ok_or("no shared region")?
        .mailbox()
        .map_err(|e| format!("{e:?}"))?;
    // Heartbeats keep flowing to instance 0 meanwhile: a channel to 0 may hold a beat not yet
    // drained, so each channel gets up to 2 s (draining) to show sent == received.
    for a in 0..count {
        for b in (0..count).filter(|&b| b != a) {
            let deadline = crate::arch::tsc::read() + 2000 * crate::arch::tsc::ticks_per_ms();
            loop {
                let st = matrix.stats(iid(a), iid(b)).map_err(|e| format!("{e:?}"))?;
                if st.sent == st.received {
                    break;
                }
                ensure(crate::arch::tsc::read() < deadline, || {
                    format!(
                        "{a}->{b}: mailbox says {} sent, {} received",
                        st.sent, st.received
                    )
                })?;
                crate::messaging::poll();
            }
        }
    }
    println!(
        "msg_stress: {} ordered pairs x {n} messages in {ms} ms, all in order; mailbox counters agree",
        count * (count - 1)
    );
    Ok(())
}

/// `msg_bulk=BYTES`: data larger than a message goes to instance 1 through shared pool pages;
/// the checksum it computes matches ours, and every pool page is free again afterwards.
pub(super) fn msg_bulk(arg: &str) -> Outcome {
    let n: usize = number(arg)?;
    let data: Vec<u8> = (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let (pool, _) = crate::shared::region::pool().ok_or("no pool")?;
    let free_before = pool.free_pages();
    let start = crate::arch::tsc::read();
    let reply =
        crate::messaging::bulk::call_large(iid(1), mk_wire::Kind::User(user::BULK), &data, 60_000)
            .map_err(|e| format!("{e:?}"))?;
    let us = (crate::arch::tsc::read() - start) * 1000 / crate::arch::tsc::ticks_per_ms();
    ensure(reply.status == mk_wire::Status::Ok, || {
        format!("status {:?}", reply.status)
    })?;
    let w = payload_words(&reply.payload);
    ensure(w.len() == 2, || format!("reply of {} words", w.len()))?;
    let ours = fnv1a(&data);
    println!(
        "msg_bulk: {n} bytes through {} pool pages in {us} us; checksum {ours:#018x} here, {:#018x} there",
        n.div_ceil(4096),
        w[0]
    );
    ensure(w[0] == ours && w[1] == n as u64, || {
        "checksum or length differ".into()
    })?;
    ensure(pool.free_pages() == free_before, || {
        format!(
            "{} pool pages free, {free_before} before",
            pool.free_pages()
        )
    })
}

/// A full mailbox says `Busy` at once and loses nothing: instance 1 stops draining for a
/// while, we fill its mailbox from us until `Busy`, and every message we sent arrives after.
pub(super) fn msg_busy() -> Outcome {
    let before = peer_stats(1)?.in_order;
    let jobs = start_job(1, job::PAUSE, 300)?;
    let mut sent = 0u64;
    let busy = loop {
        let msg = sequenced_message(1);
        match crate::messaging::try_send(iid(1), &msg) {
            Ok(()) => sent += 1,
            Err(crate::messaging::SendError::Busy) => {
                // The message was not sent: take its sequence number back.
                SEQ_SEND[1].fetch_sub(1, Ordering::SeqCst);
                break true;
            }
            Err(e) => return Err(format!("{e:?}")),
        }
        if sent > 10_000 {
            break false;
        }
    };
    ensure(busy, || "the mailbox never filled".into())?;
    wait_job(1, jobs, 10_000)?;
    let deadline = crate::arch::tsc::read() + 5000 * crate::arch::tsc::ticks_per_ms();
    let mut arrived;
    loop {
        arrived = peer_stats(1)?.in_order - before;
        if arrived >= sent || crate::arch::tsc::read() > deadline {
            break;
        }
    }
    println!(
        "msg_busy: {sent} messages filled the mailbox (ring of {}), the next got Busy; {arrived} arrived",
        mk_mailbox::SLOTS
    );
    ensure(sent >= mk_mailbox::SLOTS as u64, || {
        format!(
            "Busy after {sent} messages, the ring holds {}",
            mk_mailbox::SLOTS
        )
    })?;
    ensure(arrived == sent, || format!("{arrived} of {sent} arrived"))
}

/// `msg_ping=N`: N PING calls to every other instance; each reply carries back its own nonce.
pub(super) fn msg_ping(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let plan = plan()?;
    for p in plan.partitions().skip(1) {
        let start = crate::arch::tsc::read();
        for i in 0..n {
            let ping = mk_wire::PingPayload {
                nonce: i ^ 0x5a5a,
                sent_at: i,
            };
            let reply = crate::messaging::call(
                iid(p.index),
                mk_wire::Kind::Ping,
                mk_wire::Payload::Ping(ping),
                2000,
            )
            .map_err(|e| format!("ping {i} to instance {}: {e:?}", p.index))?;
            ensure(reply.payload == mk_wire::Payload::Ping(ping), || {
                format!(
                    "ping {i} to instance {}: reply {:?}",
                    p.index, reply.payload
                )
            })?;
        }
        let us = (crate::arch::tsc::read() - start) * 1000 / crate::arch::tsc::ticks_per_ms();
        println!(
            "msg_ping: {n} round trips with instance {} in {us} us",
            p.index
        );
    }
    Ok(())
}

/// `msg_order=N`: N one-way 240-byte messages to instance 1 arrive intact and in order (the
/// mailbox fills up and the sender waits for room: nothing is lost or overwritten).
pub(super) fn msg_order(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let PeerStats {
        in_order: ok0,
        bad: bad0,
        ..
    } = peer_stats(1)?;
    let start = crate::arch::tsc::read();
    for _ in 0..n {
        send_patiently(1, &sequenced_message(1))?;
    }
    let sent_us = (crate::arch::tsc::read() - start) * 1000 / crate::arch::tsc::ticks_per_ms();
    let PeerStats {
        in_order: ok, bad, ..
    } = peer_stats(1)?;
    println!(
        "msg_order: instance 1 got {} in order and intact, {} bad; sending took {sent_us} us",
        ok - ok0,
        bad - bad0
    );
    ensure(ok - ok0 == n && bad == bad0, || {
        format!("{} of {n} in order, {} bad", ok - ok0, bad - bad0)
    })
}

/// The per-pair telemetry lives in the shared region: instance 0 reads instance 1's counters
/// for the pair (0 -> 1) directly, with no message: what instance 1 received and rejected from
/// us matches what we did (after `msg_reject`), and our own row shows our calls' latencies.
pub(super) fn telemetry_shared() -> Outcome {
    let theirs = crate::shared::region::telemetry_row(iid(1)).ok_or("no telemetry table")?;
    let ours = crate::shared::region::telemetry_row(iid(0)).ok_or("no telemetry table")?;
    let t = &theirs[0];
    let received = t.received.load(Ordering::SeqCst);
    let rejected = t.rejected.total();
    let sent = ours[1].sent.load(Ordering::SeqCst);
    let completed = ours[1].calls_completed.load(Ordering::SeqCst);
    println!(
        "telemetry_shared: instance 1 received {received} from us and rejected {rejected}; we sent {sent}, {completed} calls completed"
    );
    ensure(rejected >= 4, || {
        format!("instance 1's row shows {rejected} rejections")
    })?;
    ensure(received >= rejected && received <= sent, || {
        format!("received {received}, rejected {rejected}, sent {sent}: inconsistent")
    })?;
    ensure(completed > 0, || "no completed call in our row".into())
}

/// `msg_flood=N`: N doorbell IPIs with nothing behind them, as fast as this CPU can send
/// them, to instance 1. It counts them as spurious, throttles the doorbell when the rate is
/// beyond its budget, and keeps working: it still answers a ping right after.
pub(super) fn msg_flood(arg: &str) -> Outcome {
    let n: u64 = number(arg)?;
    let before = peer_stats(1)?;
    let target = crate::messaging::doorbell_cpu(iid(1)).ok_or("instance 1 has no CPU published")?;
    let this = crate::arch::cpu::current();
    let start = crate::arch::tsc::read();
    this.with_lapic(|l| {
        for _ in 0..n {
            l.send_ipi(crate::arch::vectors::MESSAGE_IPI, target);
        }
    })
    .ok_or("no local APIC")?;
    let flood_us = (crate::arch::tsc::read() - start) * 1000 / crate::arch::tsc::ticks_per_ms();
    let ping = mk_wire::PingPayload {
        nonce: 9,
        sent_at: 9,
    };
    let reply = crate::messaging::call(
        iid(1),
        mk_wire::Kind::Ping,
        mk_wire::Payload::Ping(ping),
        2000,
    )
    .map_err(|e| format!("instance 1 did not answer after the flood: {e:?}"))?;
    ensure(reply.payload == mk_wire::Payload::Ping(ping), || {
        "wrong ping reply".into()
    })?;
    let after = peer_stats(1)?;
    let spurious = after.spurious_ipis - before.spurious_ipis;
    let throttles = after.throttles - before.throttles;
    println!(
        "msg_flood: {n} IPIs in {flood_us} us; instance 1 counted {spurious} spurious wake-ups, throttled {throttles} times, and answered"
    );
    ensure(spurious > 0, || "no spurious IPI was counted".into())
}

/// Malformed messages (bad version, unknown type, wrong payload size, a forged sender) are
/// rejected and counted by the receiver, and the valid messages after them still arrive.
pub(super) fn msg_reject() -> Outcome {
    let rejected0 = peer_stats(1)?.rejected;
    let ping = mk_wire::Message::request(
        iid(0),
        mk_wire::Kind::Ping,
        77,
        mk_wire::Payload::Ping(mk_wire::PingPayload {
            nonce: 1,
            sent_at: 2,
        }),
    );
    let mut good = [0u8; mk_wire::SLOT_SIZE];
    mk_wire::encode(&ping, &mut good).map_err(|e| format!("{e:?}"))?;
    let mut bad_version = good;
    bad_version[mk_wire::offset::VERSION] = 99;
    let mut bad_type = good;
    bad_type[mk_wire::offset::TYPE..mk_wire::offset::TYPE + 2]
        .copy_from_slice(&0x7777u16.to_le_bytes());
    let mut bad_len = good;
    bad_len[mk_wire::offset::PAYLOAD_LEN..mk_wire::offset::PAYLOAD_LEN + 2]
        .copy_from_slice(&3u16.to_le_bytes());
    let mut forged = good;
    forged[mk_wire::offset::SENDER..mk_wire::offset::SENDER + 2]
        .copy_from_slice(&5u16.to_le_bytes());
    for slot in [&bad_version, &bad_type, &bad_len, &forged] {
        crate::messaging::send_slot(iid(1), slot).map_err(|e| format!("{e:?}"))?;
    }
    let reply = crate::messaging::call(
        iid(1),
        mk_wire::Kind::Ping,
        mk_wire::Payload::Ping(mk_wire::PingPayload {
            nonce: 3,
            sent_at: 4,
        }),
        2000,
    )
    .map_err(|e| format!("ping after the bad messages: {e:?}"))?;
    ensure(
        reply.payload
            == mk_wire::Payload::Ping(mk_wire::PingPayload {
                nonce: 3,
                sent_at: 4,
            }),
        || "wrong ping reply".into(),
    )?;
    let rejected = peer_stats(1)?.rejected;
    println!(
        "msg_reject: instance 1 rejected {} malformed messages and still answered",
        rejected - rejected0
    );
    ensure(rejected - rejected0 == 4, || {
        format!("{} rejections counted, expected 4", rejected - rejected0)
    })
}

/// `doorbell_always`: from here on the doorbell rings for every message (no suppression while
/// the receiver is awake), for the cases after it in the boot.
pub(super) fn doorbell_always() -> Outcome {
    crate::messaging::set_doorbell_mode(mk_mailbox::DoorbellMode::Always);
    Ok(())
}

/// A handler that makes a call: instance 0 asks each instance k to ping instance k+1 (and the
/// last one instance 1) from inside its handler, and answer only then. The handler's call must
/// be answered (its waiting drains the mailboxes again, where the reply arrives).
pub(super) fn msg_handler_call() -> Outcome {
    let plan = plan()?;
    let n = plan.partitions().count();
    ensure(n >= 3, || format!("needs 3 instances, the plan has {n}"))?;
    for k in 1..n {
        let to = if k + 1 < n { k + 1 } else { 1 };
        let reply = crate::messaging::call_patiently(
            iid(k),
            mk_wire::Kind::User(user::RELAY),
            crate::services::bench::words_payload(&[to as u64]),
        )
        .map_err(|e| format!("relay through instance {k}: {e:?}"))?;
        let w = payload_words(&reply.payload);
        ensure(w.first() == Some(&1), || {
            format!("instance {k}'s handler did not get instance {to}'s answer: {w:?}")
        })?;
    }
    Ok(())
}
