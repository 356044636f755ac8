//! Test cases of the services (`crate::services`): QUERY answers, heartbeats arrive, a
//! crashed instance is declared dead within the documented bound and its resources come back
//! while the others go on, a SHUTDOWN gives every resource back and parks the CPUs; CPUs,
//! memory chunks and IRQ lines move between instances (hotplug, forwarding, a random storm).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mk_shared::{InstanceState, Owner, Resource};
use mk_wire::{Kind, Message, Payload, QueryPayload, QueryWhat, ShutdownFlags, Status};

use super::harness::{Outcome, ensure, plan, wait_until};
use super::peer::{self, job, start_job, user, wait_job};
use crate::arch::tsc;
use crate::instance::iid;
use crate::messaging;
use crate::println;
use crate::services::bench::{payload_words, words_payload};
use crate::services::{heartbeat, lifecycle};
use crate::shared::region;

pub(super) fn parse_instance(arg: &str) -> Result<usize, String> {
    let k: usize = arg.parse().map_err(|_| format!("bad instance '{arg}'"))?;
    let count = plan()?.partition_count();
    if k == 0 || k >= count {
        return Err(format!("instance {k} is not one of 1..{count}"));
    }
    Ok(k)
}

pub(super) fn state(k: usize) -> Result<InstanceState, String> {
    region::get()
        .ok_or("no shared region")?
        .instance(iid(k))
        .and_then(|i| i.state())
        .map_err(|e| format!("instance {k}: {e:?}"))
}

/// `query`: every running instance answers QUERY with its own CPUs (as it published them),
/// its memory (no more than its partition), exactly the IRQ lines the ownership table gives
/// it, and counters that show it handled messages.
pub(super) fn query() -> Outcome {
    let plan = plan()?;
    let all = QueryWhat::CPUS | QueryWhat::MEMORY | QueryWhat::IRQS | QueryWhat::COUNTERS;
    for p in plan.partitions().skip(1) {
        if state(p.index)? != InstanceState::Running {
            continue;
        }
        let reply = messaging::call(
            iid(p.index),
            Kind::Query,
            Payload::Query(QueryPayload { what: all }),
            2000,
        )
        .map_err(|e| format!("query to instance {}: {e:?}", p.index))?;
        let Payload::QueryReply(q) = reply.payload else {
            return Err(format!(
                "instance {} answered with {:?}",
                p.index, reply.payload
            ));
        };
        ensure(q.what == all, || format!("sections {:?}", q.what))?;
        let listed = region::get()
            .and_then(|r| r.instance(iid(p.index)).ok())
            .and_then(|i| i.resources().ok())
            .map(|res| res.cpus().to_vec())
            .unwrap_or_default();
        ensure(q.apic_ids() == listed, || {
            format!(
                "instance {}: CPUs {:?}, published {listed:?}",
                p.index,
                q.apic_ids()
            )
        })?;
        // The instance publishes its allocator's ranges, at most RANGES_PER_INSTANCE of them
        // (after memory moves there may be more): all of its memory, or a part.
        let (published, complete) = region::get()
            .and_then(|r| r.instance(iid(p.index)).ok())
            .and_then(|i| i.resources().ok())
            .map_or((0, false), |res| {
                (
                    res.total_bytes,
                    res.ranges().len() < mk_shared::RANGES_PER_INSTANCE,
                )
            });
        ensure(
            q.memory_bytes > 0
                && (q.memory_bytes == published || !complete && q.memory_bytes > published)
                && q.free_memory_bytes < q.memory_bytes,
            || {
                format!(
                    "instance {}: {} bytes owned, {} free, {published} published",
                    p.index, q.memory_bytes, q.free_memory_bytes
                )
            },
        )?;
        let r = region::get().ok_or("no shared region")?;
        let owned = |l: usize| {
            l < mk_shared::MAX_IRQS
                && r.owner(Resource::Irq(l as u32)) == Ok(Owner::Owned(iid(p.index)))
        };
        ensure((0..256).all(|l| q.has_irq(l) == owned(l)), || {
            format!(
                "instance {}'s IRQ lines differ from the ownership table",
                p.index
            )
        })?;
        ensure(q.messages_handled > 0 && q.uptime_ticks > 0, || {
            format!(
                "instance {}: {} handled, uptime {}",
                p.index, q.messages_handled, q.uptime_ticks
            )
        })?;
        println!(
            "query: instance {} has CPUs {:?}, {} MiB ({} MiB free), handled {} messages",
            p.index,
            q.apic_ids(),
            q.memory_bytes >> 20,
            q.free_memory_bytes >> 20,
            q.messages_handled
        );
    }
    Ok(())
}

/// `heartbeats`: within 3 s, three HEARTBEAT messages from every other instance reach
/// instance 0 and every shared beat counter moves.
pub(super) fn heartbeats() -> Outcome {
    let r = region::get().ok_or("no shared region")?;
    let count = plan()?.partition_count();
    let before: Vec<u64> = (0..count)
        .map(|k| heartbeat::RECEIVED[k].load(Ordering::SeqCst))
        .collect();
    let counters: Vec<u64> = (0..count)
        .map(|k| r.instance(iid(k)).map_or(0, |i| i.heartbeat()))
        .collect();
    let deadline = tsc::read() + 3000 * tsc::ticks_per_ms();
    loop {
        messaging::poll();
        let behind: Vec<usize> = (1..count)
            .filter(|&k| {
                heartbeat::RECEIVED[k].load(Ordering::SeqCst) < before[k] + 3
                    || r.instance(iid(k)).map_or(0, |i| i.heartbeat()) <= counters[k]
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        ensure(tsc::read() < deadline, || {
            format!("instance(s) {behind:?}: no three beats, or a still beat counter, within 3 s")
        })?;
    }
}

/// What instance `k` owns now, by the ownership table.
pub(super) fn held_by(k: usize) -> Result<Vec<Resource>, String> {
    let r = region::get().ok_or("no shared region")?;
    Ok(r.resources()
        .filter(|(_, o)| *o == Ok(Owner::Owned(iid(k))))
        .map(|(res, _)| res)
        .collect())
}

/// Nothing in the ownership tables names instance `k` any more, and everything it `held`
/// before it went is instance 0's now.
pub(super) fn check_taken_back(k: usize, held: &[Resource]) -> Outcome {
    let r = region::get().ok_or("no shared region")?;
    let left: Vec<Resource> = r
        .resources()
        .filter(|(_, o)| match o {
            Ok(Owner::Owned(x)) => *x == iid(k),
            Ok(Owner::InTransit { from, to, .. }) => *from == iid(k) || *to == iid(k),
            _ => false,
        })
        .map(|(res, _)| res)
        .collect();
    ensure(left.is_empty(), || {
        format!(
            "instance {k} still holds {} resource(s), e.g. {:?}",
            left.len(),
            left.first()
        )
    })?;
    ensure(!held.is_empty(), || format!("instance {k} held nothing"))?;
    for &res in held {
        ensure(r.owner(res) == Ok(Owner::Owned(iid(0))), || {
            format!("{res:?} of instance {k}: {:?}", r.owner(res))
        })?;
    }
    Ok(())
}

/// Messages still flow among the running instances: instance 0 pings each, and each asks
/// (as a job) to ping every running instance.
pub(super) fn survivors_talk() -> Outcome {
    let running: Vec<usize> = peer::others().collect();
    ensure(!running.is_empty(), || {
        String::from("no instance left running")
    })?;
    let mut started = Vec::new();
    for &k in &running {
        started.push((k, start_job(k, job::PING_ALL, 10)?));
    }
    let mine = peer::ping_all(10);
    // Every job ends before anything is judged (a caller may try again).
    let mut answered = Vec::new();
    for (k, before) in started {
        answered.push((k, wait_job(k, before, 60_000)?.job_result));
    }
    ensure(mine == 10 * running.len() as u64, || {
        format!("instance 0: {mine} pings answered")
    })?;
    for (k, got) in answered {
        // Every running instance but itself: the others and instance 0.
        ensure(got == 10 * running.len() as u64, || {
            format!("instance {k}: {got} pings answered")
        })?;
    }
    println!("survivors: instances 0 and {running:?} still exchange messages");
    Ok(())
}

/// `crash=K`: instance 0 starts handing a memory chunk to K and K starts handing one of its
/// own to a third instance; then K panics on purpose; instance 0 declares it dead within
/// `DEAD_AFTER_BEATS + 1` heartbeat periods of its last sign of life (plus 2 s for instance
/// 0's own polling and the crash message's travel), takes everything it held back, both
/// hand-offs end with exactly one owner (rolled back), and the other instances go on
/// exchanging messages. Sending to K is then refused.
pub(super) fn crash(arg: &str) -> Outcome {
    let k = parse_instance(arg)?;
    ensure(state(k)? == InstanceState::Running, || {
        format!("instance {k} is not running")
    })?;
    let held = held_by(k)?;
    let r = region::get().ok_or("no shared region")?;
    // Two hand-offs cut short by the crash: instance 0 starts giving K a memory chunk (K never
    // takes it), and K starts giving one of its chunks to another instance (and never finishes).
    let chunk_size = mk_shared::MEM_CHUNK_SIZE;
    let top0 = plan()?
        .partition(0)
        .ok_or("no instance 0")?
        .memory
        .iter()
        .map(|m| m.end())
        .max()
        .unwrap_or(0);
    let incoming = Resource::memory_at((top0 & !(chunk_size - 1)) - chunk_size);
    crate::shared::records::with(|l| l.start_handoff(incoming, iid(k)))
        .ok_or("instance 0 keeps no record")?
        .map_err(|e| format!("recording a hand-off to {k}: {e}"))?;
    let g_in = r
        .begin_transfer(incoming, iid(0), iid(k))
        .map_err(|e| format!("starting a hand-off to {k}: {e:?}"))?;
    let Some(&Resource::Memory(out_chunk)) = held
        .iter()
        .rev()
        .find(|res| matches!(res, Resource::Memory(_)))
    else {
        return Err(format!("instance {k} holds no memory chunk"));
    };
    let outgoing = Resource::Memory(out_chunk);
    let third = peer::others()
        .find(|&x| x != k)
        .ok_or("no third instance")?;
    let jobs = start_job(
        k,
        job::HANDOFF_BEGIN,
        (u64::from(out_chunk) * chunk_size) | (third as u64) << 48,
    )?;
    let g_out = wait_job(k, jobs, 10_000)?.job_result;
    ensure(g_out != 0, || {
        format!("instance {k} could not start its hand-off")
    })?;
    let crash = Message::request(iid(0), Kind::User(user::CRASH), 1, peer::user_payload(&[]));
    messaging::send(iid(k), &crash).map_err(|e| format!("crash request: {e:?}"))?;
    let sent = tsc::read();
    // Messages queued behind the crash request: K never takes them. A respawned K must not
    // get them either (`respawn`).
    for _ in 0..3 {
        let _ = messaging::try_send(iid(k), &peer::sequenced_message(k));
    }
    let bound = heartbeat::dead_after_tsc() * (heartbeat::DEAD_AFTER_BEATS + 1)
        / heartbeat::DEAD_AFTER_BEATS
        + 2000 * tsc::ticks_per_ms();
    while state(k)? != InstanceState::Dead {
        ensure(tsc::read() - sent < 2 * bound, || {
            format!("instance {k} not declared dead within 2 x the bound")
        })?;
        messaging::poll();
    }
    let took = lifecycle::DECLARED_DEAD_AT[k].load(Ordering::SeqCst) - sent;
    let ms = took / tsc::ticks_per_ms();
    println!(
        "crash: instance {k} declared dead {ms} ms after the crash request (bound {} ms)",
        bound / tsc::ticks_per_ms()
    );
    ensure(took <= bound, || {
        format!(
            "declared dead after {ms} ms, bound {} ms",
            bound / tsc::ticks_per_ms()
        )
    })?;
    check_taken_back(k, &held)?;
    // Both cut-short hand-offs ended with exactly one owner, and cannot complete late.
    ensure(r.owner(incoming) == Ok(Owner::Owned(iid(0))), || {
        format!(
            "{incoming:?} (was being given to {k}): {:?}",
            r.owner(incoming)
        )
    })?;
    ensure(
        r.complete_transfer(incoming, iid(k), g_in).is_err()
            && r.complete_transfer(outgoing, iid(third), (g_out - 1) as u32)
                .is_err(),
        || String::from("a cut-short hand-off could still complete"),
    )?;
    println!(
        "crash: the hand-offs cut short ({incoming:?} to {k}, {outgoing:?} from {k} to {third}) rolled back; each has one owner"
    );
    let ping = Payload::Ping(mk_wire::PingPayload {
        nonce: 1,
        sent_at: 0,
    });
    ensure(
        messaging::call(iid(k), Kind::Ping, ping, 100).is_err(),
        || format!("instance {k} still answers"),
    )?;
    survivors_talk()
}

/// `forged_words=K:V:T` (issue 15, items 1, 2, 8, 9): instance K writes its id into every
/// other CPU's owner word (instance 0's and V's included), APIC ID 255's and one of V's memory
/// chunks', garbage into one of its own chunks' word, forges a hand-off of V's IRQ line (the
/// RTC's, given to V first) to T and asks T to take it, asks instance 0 to mask it, and writes
/// `Stopped` into V's state word (`Dead` goes into instance 0's too); then it crashes. Nothing
/// of that is obeyed: T and instance 0 refuse the requests; the moves the shell would make of
/// V's CPU and chunk with K as the giver are refused; within a few watch periods both state
/// words are running again and V still answers; the disagreements are counted; when K is
/// declared dead only K's own CPUs are stopped (V's still take timer interrupts), everything
/// K held comes back (the garbage word included), every forged word is written back as
/// instance 0's record says, and V's line still interrupts V.
pub(super) fn forged_words(arg: &str) -> Outcome {
    let mut parts = arg.split(':').map(parse_instance);
    let (Some(k), Some(v), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad argument '{arg}' (want K:V:T)"));
    };
    let (k, v, t) = (k?, v?, t?);
    ensure(k != v && k != t, || {
        String::from("K must differ from V and T")
    })?;
    let r = region::get().ok_or("no shared region")?;
    let held = held_by(k)?;
    let v_cpus: Vec<u32> = r
        .resources()
        .filter_map(|(res, o)| match (res, o) {
            (Resource::Cpu(c), Ok(Owner::Owned(x))) if x == iid(v) => Some(c),
            _ => None,
        })
        .collect();
    let zero_cpus: Vec<u32> = crate::cpus::smp::cpu_list();
    // V's line: the RTC's, interrupting V.
    let line = rtc_to(v)?;
    let top_chunk = |i: usize, held: &[Resource]| {
        held.iter()
            .filter_map(|res| match res {
                Resource::Memory(c) => Some(*c),
                _ => None,
            })
            .max()
            .ok_or_else(|| format!("instance {i} holds no memory chunk"))
    };
    let v_chunk = top_chunk(v, &held_by(v)?)?;
    let k_chunk = top_chunk(k, &held)?;
    ensure(v_chunk < 1 << 20 && k_chunk < 1 << 20, || {
        format!("chunks {v_chunk} and {k_chunk}: over 20 bits")
    })?;
    let before = crate::shared::records::disagreements();
    let jobs = start_job(
        k,
        job::FORGE,
        v as u64
            | u64::from(line) << 8
            | (t as u64) << 16
            | u64::from(v_chunk) << 24
            | u64::from(k_chunk) << 44,
    )?;
    let answers = wait_job(k, jobs, 10_000)?.job_result;
    let refused = u64::from(Status::Refused.code()) + 1;
    ensure(answers == refused | refused << 16, || {
        format!(
            "instance {t} answered the forged balance with code {}, instance 0 the mask with {} (want Refused for both)",
            (answers & 0xFFFF) as i64 - 1,
            (answers >> 16) as i64 - 1
        )
    })?;
    // The moves the shell makes, asked to move V's CPU and memory as K's (the words say so,
    // or did until instance 0 wrote them back): refused, by instance 0's record.
    let chunk_size = mk_shared::MEM_CHUNK_SIZE;
    for (what, refused) in [
        (
            format!(
                "CPU {} of instance {v}",
                v_cpus.first().copied().unwrap_or(0)
            ),
            crate::services::cpu::move_cpu(
                v_cpus.first().copied().ok_or("V has no CPU")?,
                iid(k),
                iid(0),
            )
            .is_err(),
        ),
        (
            format!("memory chunk {v_chunk} of instance {v}"),
            crate::services::memory::move_memory(
                u64::from(v_chunk) * chunk_size,
                chunk_size,
                iid(k),
                iid(t),
            )
            .is_err(),
        ),
    ] {
        ensure(refused, || {
            format!("a move of {what}, presented as instance {k}'s, was not refused")
        })?;
    }
    // Instance 0's own word, as K could have written it (done here: while it says dead, K's
    // reply telling the job's result could not reach instance 0).
    r.instance(iid(0))
        .map_err(|e| format!("{e:?}"))?
        .overrule_state(InstanceState::Dead)
        .map_err(|raw| format!("instance 0's state word was {raw:#x}"))?;
    // A few watch periods: both state words are written back.
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while state(v)? != InstanceState::Running || state(0)? != InstanceState::Running {
        ensure(tsc::read() < deadline, || {
            format!(
                "after 2 s instance {v} is {:?}, instance 0 is {:?}",
                state(v),
                state(0)
            )
        })?;
        messaging::poll();
    }
    ensure(!lifecycle::COLLECTED[v].load(Ordering::SeqCst), || {
        format!("instance {v} was collected on a forged Stopped")
    })?;
    let ticks_before: Vec<u64> = v_cpus
        .iter()
        .map(|&c| ticks_in(v, c))
        .collect::<Result<_, _>>()?;
    // K crashes: instance 0 declares it dead and reclaims by its record.
    let crash = Message::request(iid(0), Kind::User(user::CRASH), 1, peer::user_payload(&[]));
    messaging::send(iid(k), &crash).map_err(|e| format!("crash request: {e:?}"))?;
    let deadline = tsc::read() + 2 * heartbeat::dead_after_tsc() + 5000 * tsc::ticks_per_ms();
    while !lifecycle::COLLECTED[k].load(Ordering::SeqCst) {
        ensure(tsc::read() < deadline, || {
            format!("instance {k} was not declared dead and collected in time")
        })?;
        messaging::poll();
    }
    check_taken_back(k, &held)?;
    for (&c, &b) in v_cpus.iter().zip(&ticks_before) {
        ensure(
            r.owner(Resource::Cpu(c)) == Ok(Owner::Owned(iid(v))),
            || format!("CPU {c} of instance {v}: {:?}", r.owner(Resource::Cpu(c))),
        )?;
        let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
        while ticks_in(v, c)? <= b {
            ensure(tsc::read() < deadline, || {
                format!("CPU {c} of instance {v} takes no timer interrupts after {k} died")
            })?;
            messaging::poll();
        }
    }
    for &c in &zero_cpus {
        ensure(
            r.owner(Resource::Cpu(c)) == Ok(Owner::Owned(iid(0))),
            || format!("CPU {c} of instance 0: {:?}", r.owner(Resource::Cpu(c))),
        )?;
    }
    ensure(
        r.owner(Resource::Cpu(0xFF)) == Ok(Owner::Free)
            && r.owner(Resource::Irq(line)) == Ok(Owner::Owned(iid(v)))
            && r.owner(Resource::Memory(v_chunk)) == Ok(Owner::Owned(iid(v))),
        || {
            format!(
                "APIC ID 255: {:?}, line {line}: {:?}, chunk {v_chunk}: {:?}",
                r.owner(Resource::Cpu(0xFF)),
                r.owner(Resource::Irq(line)),
                r.owner(Resource::Memory(v_chunk))
            )
        },
    )?;
    wait_growth(
        &format!("RTC interrupts in instance {v} after {k} died"),
        10,
        || Ok(irq_stats(v, line as usize)?.0),
    )?;
    let after = crate::shared::records::disagreements();
    ensure(after > before, || {
        String::from("no disagreement was counted")
    })?;
    println!(
        "forged_words: instance {k}'s forged owner and state words and requests were refused or written back ({} disagreement(s) counted); when it died only its own CPUs were stopped and instance {v} ran on, its line {line} still interrupting it; moves of {v}'s CPU and memory presented as {k}'s were refused",
        after - before
    );
    Ok(())
}

/// `interrupt_flood=K:V:N` (issue 15, item 10): instance K publishes 0xFF (the xAPIC
/// broadcast) as its first CPU and sends up to N IPIs on each of the timer, probe and a device
/// vector into V's first CPU, plus NMIs and IPIs on a vector with no handler (for at most 5 s:
/// under TCG a million per vector would take minutes, hence N). Meanwhile V answers every ping
/// within 2 s, and afterwards it is running, not declared dead, its first CPU took no more
/// timer interrupts than twice its clock's rate allows (the forged ones were not counted),
/// and it still answers. Instance 0 rings K's doorbell neither at 0xFF nor, once K's entry
/// names V's first CPU, at V: both refusals are counted, and K gets its messages at its next
/// tick. K's entry is put back at the end.
pub(super) fn interrupt_flood(arg: &str) -> Outcome {
    let mut parts = arg.split(':');
    let (Some(k), Some(v), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad argument '{arg}' (want K:V:N)"));
    };
    let (k, v) = (parse_instance(k)?, parse_instance(v)?);
    let n: u64 = n.parse().map_err(|_| format!("bad count '{n}'"))?;
    ensure(k != v, || String::from("K must differ from V"))?;
    let r = region::get().ok_or("no shared region")?;
    let entry = |i: usize| {
        r.instance(iid(i))
            .and_then(|e| e.resources())
            .map_err(|e| format!("instance {i}'s entry: {e:?}"))
    };
    let saved = entry(k)?;
    let v_first = *entry(v)?.cpus().first().ok_or("V published no CPU")?;
    let ping = |to: usize, nonce: u64| -> Outcome {
        let p = Payload::Ping(mk_wire::PingPayload { nonce, sent_at: 0 });
        messaging::call(iid(to), Kind::Ping, p, 2000)
            .map(|_| ())
            .map_err(|e| format!("instance {to} did not answer a ping within 2 s: {e:?}"))
    };
    let ticks_before = ticks_in(v, v_first)?;
    let started = tsc::read();
    let jobs = start_job(k, job::FLOOD, v as u64 | n << 8)?;
    // The flood lasts at most 5 s: ping V every 10 ms for 6 s.
    let mut pings = 0u64;
    while tsc::read() - started < 6000 * tsc::ticks_per_ms() {
        ping(v, pings)?;
        pings += 1;
        tsc::spin_micros(10_000);
    }
    let sent = wait_job(k, jobs, 20_000)?.job_result;
    let elapsed_ms = (tsc::read() - started) / tsc::ticks_per_ms();
    let ticks = ticks_in(v, v_first)? - ticks_before;
    let allowed = 2 * elapsed_ms * u64::from(crate::arch::apic::tick_rate()) / 1000 + 20;
    ensure(sent > 0, || String::from("the rogue sent no IPI"))?;
    ensure(ticks <= allowed, || {
        format!(
            "CPU {v_first} of instance {v} counted {ticks} timer ticks in {elapsed_ms} ms (at most {allowed}): forged ticks ran its hooks"
        )
    })?;
    ensure(
        state(v)? == InstanceState::Running
            && !lifecycle::COLLECTED[v].load(Ordering::SeqCst)
            && lifecycle::DECLARED_DEAD_AT[v].load(Ordering::SeqCst) == 0,
        || format!("instance {v} was declared dead or collected during the flood"),
    )?;
    ping(v, pings)?;
    // Doorbells for K: at the broadcast, then at V's CPU, K's entry forged so by this test
    // right before each check (K itself published 0xFF when the flood began, but its own
    // once-a-second check has put its entry right again since). Where a doorbell for K would
    // go is asked directly (a ping rings only if K sleeps, which it need not), then K must
    // still get a ping. Should K's check fall between the forgery and the question, the
    // attempt is made again (at most 3 times).
    let refused = || crate::messaging::doorbell::REFUSED.load(Ordering::SeqCst);
    let kentry = r.instance(iid(k)).map_err(|e| format!("{e:?}"))?;
    let forged_ping = |first_cpu: u32, nonce: u64| -> Result<bool, String> {
        let mut redirected = false;
        for _ in 0..3 {
            kentry
                .publish_resources(&[first_cpu], saved.ranges())
                .map_err(|e| format!("{e:?}"))?;
            let before = refused();
            let target = crate::messaging::doorbell::doorbell_cpu(iid(k));
            redirected = target.is_none() && refused() > before;
            let answered = ping(k, nonce);
            kentry
                .publish_resources(saved.cpus(), saved.ranges())
                .map_err(|e| format!("{e:?}"))?;
            answered?;
            if redirected {
                break;
            }
        }
        Ok(redirected)
    };
    ensure(forged_ping(0xFF, 1)?, || {
        format!("a doorbell for instance {k} went to the broadcast ID in its entry")
    })?;
    ensure(forged_ping(v_first, 2)?, || {
        format!("a doorbell for instance {k} went to instance {v}'s CPU {v_first}")
    })?;
    println!(
        "interrupt_flood: instance {k} sent {sent} IPIs into instance {v} in {elapsed_ms} ms; {v} answered all {pings} pings within 2 s, counted {ticks} ticks (at most {allowed}) and stayed alive; doorbells for {k} at 0xFF and at {v}'s CPU were refused"
    );
    Ok(())
}

/// `shutdown=K`: instance K, asked by SHUTDOWN, answers, parks every one of its CPUs, hands
/// every resource back; instance 0 takes them, and K is no longer sent to.
pub(super) fn shutdown(arg: &str) -> Outcome {
    let k = parse_instance(arg)?;
    let cpus = region::get()
        .and_then(|r| r.instance(iid(k)).ok())
        .and_then(|i| i.resources().ok())
        .map_or(0, |res| res.cpus().len()) as u64;
    let held = held_by(k)?;
    let status = lifecycle::request_stop(iid(k), ShutdownFlags::RETURN_RESOURCES)
        .map_err(|e| format!("shutdown call: {e:?}"))?;
    ensure(status == mk_wire::Status::Ok, || {
        format!("shutdown answered {status:?}")
    })?;
    let deadline = tsc::read() + 5000 * tsc::ticks_per_ms();
    while !lifecycle::COLLECTED[k].load(Ordering::SeqCst) {
        ensure(tsc::read() < deadline, || {
            format!(
                "instance {k} did not stop within 5 s (state {:?})",
                state(k)
            )
        })?;
        messaging::poll();
    }
    ensure(state(k)? == InstanceState::Stopped, || {
        format!("instance {k} is {:?}", state(k))
    })?;
    let parked = peer::wait_report(k, lifecycle::REPORT_PARKED)?;
    ensure(parked == cpus, || {
        format!("{parked} of instance {k}'s {cpus} CPUs parked")
    })?;
    check_taken_back(k, &held)?;
    let ping = Payload::Ping(mk_wire::PingPayload {
        nonce: 1,
        sent_at: 0,
    });
    ensure(
        matches!(
            messaging::call(iid(k), Kind::Ping, ping, 100),
            Err(messaging::CallFailure::Send(
                messaging::SendError::NotRunning(_)
            ))
        ),
        || format!("sending to stopped instance {k} was not refused"),
    )?;
    println!(
        "shutdown: instance {k} stopped, its {cpus} CPU(s) parked, every resource back with instance 0"
    );
    Ok(())
}

/// Timer interrupts CPU `apic` took in instance `k` (asked of `k`).
pub(super) fn ticks_in(k: usize, apic: u32) -> Result<u64, String> {
    let reply = messaging::call_patiently(
        iid(k),
        Kind::User(user::CPU_TICKS),
        words_payload(&[u64::from(apic)]),
    )
    .map_err(|e| format!("ticks call to instance {k}: {e:?}"))?;
    if reply.status != mk_wire::Status::Ok {
        return Err(format!(
            "instance {k} has no CPU {apic} ({:?})",
            reply.status
        ));
    }
    payload_words(&reply.payload)
        .first()
        .copied()
        .ok_or_else(|| String::from("empty ticks reply"))
}

/// Moves `apic` from `from` to `to` and checks that it runs there: the ownership table names
/// `to`; `to` lists it among its CPUs and `from` no longer does; the CPU itself wrote its APIC
/// ID into `to`'s report word from `to`'s code; and it takes `to`'s timer interrupts.
fn move_and_check(apic: u32, from: usize, to: usize) -> Outcome {
    use crate::services::cpu::{REPORT_JOINED, move_cpu};
    let r = region::get().ok_or("no shared region")?;
    let joins_before = region::read_report(iid(to), REPORT_JOINED).map_or(0, |v| v >> 32);
    move_cpu(apic, iid(from), iid(to))
        .map_err(|e| format!("moving CPU {apic} {from} -> {to}: {e:?}"))?;
    ensure(
        r.owner(Resource::Cpu(apic)) == Ok(Owner::Owned(iid(to))),
        || format!("CPU {apic}: {:?}", r.owner(Resource::Cpu(apic))),
    )?;
    let listed = |k: usize| {
        r.instance(iid(k))
            .and_then(|i| i.resources())
            .is_ok_and(|res| res.cpus().contains(&apic))
    };
    ensure(listed(to) && !listed(from), || {
        format!(
            "CPU {apic} listed by {to}: {}, by {from}: {}",
            listed(to),
            listed(from)
        )
    })?;
    // The CPU writes it from its own entry, which may run after the receiver answered.
    let joined = || region::read_report(iid(to), REPORT_JOINED).unwrap_or(0);
    wait_until(
        &format!("instance {to}'s join report naming CPU {apic}"),
        2000,
        || {
            let j = joined();
            Ok(j & 0xFFFF_FFFF == u64::from(apic) && j >> 32 > joins_before)
        },
    )
    .map_err(|e| format!("{e} (it is {:#x})", joined()))?;
    let t0 = ticks_in(to, apic)?;
    tsc::spin_micros(100_000);
    let t1 = ticks_in(to, apic)?;
    ensure(t1 > t0, || {
        format!("CPU {apic} took no timer interrupt in instance {to} ({t0} -> {t1})")
    })?;
    ensure(ticks_in(from, apic).is_err(), || {
        format!("instance {from} still has CPU {apic}")
    })?;
    println!(
        "cpu_hotplug: CPU {apic} moved from instance {from} to {to}, runs there ({} ticks in 100 ms)",
        t1 - t0
    );
    Ok(())
}

/// `cpu_hotplug` (plan 1,2,1): instance 1's second CPU moves to instance 2 and runs there,
/// then back; removing an instance's first (or only) CPU, a CPU it does not own, or a CPU that
/// does not exist is refused, and leaves every CPU where it was.
pub(super) fn cpu_hotplug() -> Outcome {
    use crate::services::cpu::move_cpu;
    use crate::services::moves::MoveError;
    let plan = plan()?;
    let (p1, p2) = (
        plan.partition(1).ok_or("no instance 1")?,
        plan.partition(2).ok_or("no instance 2")?,
    );
    ensure(p1.cpus.len() == 2 && p2.cpus.len() == 1, || {
        String::from("needs the plan 1,2,1")
    })?;
    let (first1, second1, only2) = (p1.cpus[0], p1.cpus[1], p2.cpus[0]);
    move_and_check(second1, 1, 2)?;
    move_and_check(second1, 2, 1)?;
    // Instance 0's record refuses what the giver does not hold, or what does not exist,
    // before the giver is asked; the giver refuses its first or only CPU.
    let not_holder = |apic: u32, holder: usize| {
        MoveError::Record(mk_ledger::Refusal::NotHolder {
            resource: Resource::Cpu(apic),
            holder: Some(iid(holder)),
            named: iid(1),
        })
    };
    let refusals = [
        (
            first1,
            1,
            2,
            MoveError::Refused(Status::Refused),
            "instance 1's first CPU",
        ),
        (
            only2,
            2,
            1,
            MoveError::Refused(Status::Refused),
            "instance 2's only CPU",
        ),
        (
            only2,
            1,
            2,
            not_holder(only2, 2),
            "a CPU instance 1 does not own",
        ),
        (
            300,
            1,
            2,
            MoveError::Record(mk_ledger::Refusal::NoSuchResource(Resource::Cpu(300))),
            "a CPU that does not exist",
        ),
    ];
    for (apic, from, to, want, what) in refusals {
        let got = move_cpu(apic, iid(from), iid(to));
        ensure(got == Err(want), || {
            format!("moving {what} gave {got:?}, expected {want:?}")
        })?;
    }
    let r = region::get().ok_or("no shared region")?;
    for (apic, owner) in [(first1, 1), (second1, 1), (only2, 2)] {
        ensure(
            r.owner(Resource::Cpu(apic)) == Ok(Owner::Owned(iid(owner))),
            || {
                format!(
                    "after the refusals CPU {apic}: {:?}",
                    r.owner(Resource::Cpu(apic))
                )
            },
        )?;
    }
    println!(
        "cpu_hotplug: first CPU, only CPU, foreign CPU and unknown CPU refused; nothing moved"
    );
    Ok(())
}

/// `mem_hotplug` (instances 1 and 2 other than 0): 16 MiB at the top of instance 1's memory
/// move to instance 2, which allocates, fills and checks all of it; instance 1 reading it
/// afterwards faults; moving memory that is in use, a range that is not 2 MiB aligned, or a
/// range the giver does not own is refused and changes nothing.
pub(super) fn mem_hotplug() -> Outcome {
    use crate::services::memory::move_memory;
    use crate::services::moves::MoveError;
    const MIB: u64 = 1 << 20;
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    let plan = plan()?;
    let (p1, p2) = (
        plan.partition(1).ok_or("no instance 1")?,
        plan.partition(2).ok_or("no instance 2")?,
    );
    let top = p1.memory.iter().map(|m| m.end()).max().ok_or("no memory")? & !(chunk - 1);
    let (start, len) = (top - 16 * MIB, 16 * MIB);
    let r = region::get().ok_or("no shared region")?;
    let owners = |s: u64, l: u64| -> Vec<Result<Owner, mk_shared::Error>> {
        (s..s + l)
            .step_by(chunk as usize)
            .map(|a| r.owner(Resource::memory_at(a)))
            .collect()
    };
    ensure(
        owners(start, len)
            .iter()
            .all(|o| *o == Ok(Owner::Owned(iid(1)))),
        || format!("{start:#x}+16 MiB is not all instance 1's"),
    )?;

    // Refusals first: nothing may move.
    let low1 = p1.memory[0].start.next_multiple_of(chunk);
    let low2 = p2.memory[0].start.next_multiple_of(chunk);
    for (s, l, want, what) in [
        (
            low1,
            chunk,
            MoveError::Refused(Status::Busy),
            "instance 1's memory in use",
        ),
        (
            start + 4096,
            len - chunk,
            MoveError::Refused(Status::InvalidArgument),
            "a range not 2 MiB aligned",
        ),
        (
            low2,
            chunk,
            MoveError::Record(mk_ledger::Refusal::NotHolder {
                resource: Resource::memory_at(low2),
                holder: Some(iid(2)),
                named: iid(1),
            }),
            "memory instance 1 does not own (by instance 0's record)",
        ),
    ] {
        let got = move_memory(s, l, iid(1), iid(2));
        ensure(got == Err(want), || {
            format!("moving {what} gave {got:?}, expected {want:?}")
        })?;
    }
    ensure(
        owners(low1, chunk) == [Ok(Owner::Owned(iid(1)))]
            && owners(low2, chunk) == [Ok(Owner::Owned(iid(2)))],
        || String::from("a refused move changed the ownership table"),
    )?;

    move_memory(start, len, iid(1), iid(2)).map_err(|e| format!("moving 16 MiB: {e:?}"))?;
    ensure(
        owners(start, len)
            .iter()
            .all(|o| *o == Ok(Owner::Owned(iid(2)))),
        || format!("after the move: {:?}", owners(start, len).first()),
    )?;
    let before = start_job(2, job::FILL_CHECK, start | (16 << 48))?;
    let done = wait_job(2, before, 120_000)?;
    ensure(done.job_result == len / 8, || {
        format!(
            "instance 2 found {} of {} words right",
            done.job_result,
            len / 8
        )
    })?;
    let probe = start + 8 * MIB;
    start_job(1, job::PROBE_FAULT, probe)?;
    let want = crate::memory::frames::phys_to_virt(probe);
    let deadline = tsc::read() + 5000 * tsc::ticks_per_ms();
    loop {
        messaging::poll();
        match region::read_report(iid(1), peer::REPORT_PROBE) {
            Some(v) if v == want => break,
            Some(u64::MAX) => return Err(String::from("instance 1 read the memory it gave away")),
            _ => {}
        }
        ensure(tsc::read() < deadline, || {
            String::from("instance 1's probe did not report")
        })?;
    }
    println!(
        "mem_hotplug: {start:#x}..{:#x} moved from instance 1 to 2, filled and checked there; instance 1 faults on it; refusals left the table unchanged",
        start + len
    );
    Ok(())
}

/// (direct interrupts, forwarded deliveries) of `line` in instance `k`.
pub(super) fn irq_stats(k: usize, line: usize) -> Result<(u64, u64), String> {
    if k == 0 {
        return Ok((
            crate::arch::interrupts::IRQ_COUNTS[line].load(Ordering::Relaxed),
            crate::services::irq::FORWARDED_IN[line].load(Ordering::Relaxed),
        ));
    }
    let reply = messaging::call_patiently(
        iid(k),
        Kind::User(user::IRQ_STATS),
        words_payload(&[line as u64]),
    )
    .map_err(|e| format!("irq stats call to instance {k}: {e:?}"))?;
    match payload_words(&reply.payload)[..] {
        [direct, forwarded, ..] => Ok((direct, forwarded)),
        _ => Err(format!("irq stats reply {:?}", reply.status)),
    }
}

/// (bytes, their sum) instance `k` took from COM2.
fn com2_stats(k: usize) -> Result<(u64, u64), String> {
    let reply = messaging::call_patiently(iid(k), Kind::User(user::IRQ_STATS), words_payload(&[0]))
        .map_err(|e| format!("irq stats call to instance {k}: {e:?}"))?;
    match payload_words(&reply.payload)[..] {
        [_, _, bytes, sum] => Ok((bytes, sum)),
        _ => Err(format!("irq stats reply {:?}", reply.status)),
    }
}

/// `serial_irq=K`: COM2 in loopback, a device that really raises receive interrupts: its line
/// is balanced from instance 0 to K; each of 32 bytes sent through it comes back as a receive
/// interrupt that K takes (reading the byte acknowledges it): K got exactly those 32 bytes.
pub(super) fn serial_irq(arg: &str) -> Outcome {
    use crate::platform::com2;
    use crate::services::irq;
    let k = parse_instance(arg)?;
    ensure(com2::present(), || {
        String::from("no UART at COM2 (the harness passes a second -serial)")
    })?;
    let gsi = irq::com2_gsi();
    com2::init_loopback();
    irq::balance(gsi as usize, iid(k))
        .map_err(|s| format!("balancing COM2's line {gsi} to {k}: {s:?}"))?;
    let (bytes0, sum0) = com2_stats(k)?;
    let (irqs0, _) = irq_stats(k, gsi as usize)?;
    let mut sum = 0;
    for i in 0..32u64 {
        let b = (i * 7 + 1) as u8;
        sum += u64::from(b);
        com2::send(b);
        // One byte at a time: the UART has no FIFO in this mode, so wait until K took it.
        let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
        while com2_stats(k)?.0 < bytes0 + i + 1 {
            ensure(tsc::read() < deadline, || {
                format!("instance {k} did not receive byte {i} within 2 s")
            })?;
        }
    }
    let (bytes, got_sum) = com2_stats(k)?;
    let (irqs, _) = irq_stats(k, gsi as usize)?;
    ensure(
        bytes - bytes0 == 32 && got_sum - sum0 == sum && irqs > irqs0,
        || {
            format!(
                "instance {k}: {} bytes (sum {}, want {sum}) in {} interrupts",
                bytes - bytes0,
                got_sum - sum0,
                irqs - irqs0
            )
        },
    )?;
    irq::request_mask(iid(k), gsi, true).map_err(|s| format!("mask: {s:?}"))?;
    println!(
        "serial_irq: COM2 receive line {gsi} balanced to instance {k}: 32 bytes in {} interrupts, intact",
        irqs - irqs0
    );
    Ok(())
}

/// Gives the RTC's line to instance `v` (through instance 0: another holder hands it back
/// first; instance 0 claims it and starts the RTC's periodic interrupt), unless `v` holds it
/// already, and waits until `v` counts its interrupts. Returns the line (GSI).
pub(super) fn rtc_to(v: usize) -> Result<u32, String> {
    use crate::services::irq;
    let gsi = irq::rtc_gsi();
    let line = gsi as usize;
    let reg = region::get().ok_or("no shared region")?;
    let holder = reg.owner(Resource::Irq(gsi));
    if let Ok(Owner::Owned(x)) = holder
        && x != iid(v)
        && !x.is_supervisor()
    {
        let jobs = start_job(x.index(), job::BALANCE_LINE, u64::from(gsi))?;
        let refused = wait_job(x.index(), jobs, 10_000)?.job_result;
        ensure(refused == 0, || {
            format!(
                "instance {x} did not hand line {line} back (code {})",
                refused as i64 - 1
            )
        })?;
    }
    if holder != Ok(Owner::Owned(iid(v))) {
        irq::claim_local(line).map_err(|s| format!("claiming line {line}: {s:?}"))?;
        crate::platform::rtc::start_periodic(10);
        irq::balance(line, iid(v)).map_err(|s| format!("balancing line {line} to {v}: {s:?}"))?;
    }
    wait_growth(&format!("RTC interrupts in instance {v}"), 10, || {
        Ok(irq_stats(v, line)?.0)
    })?;
    Ok(gsi)
}

/// Waits (draining, up to 5 s) until `get` has grown by at least `by` from its first value.
pub(super) fn wait_growth(
    what: &str,
    by: u64,
    mut get: impl FnMut() -> Result<u64, String>,
) -> Outcome {
    let first = get()?;
    let deadline = tsc::read() + 5000 * tsc::ticks_per_ms();
    loop {
        messaging::poll();
        let now = get()?;
        if now >= first + by {
            return Ok(());
        }
        ensure(tsc::read() < deadline, || {
            format!("{what}: {} more in 5 s, wanted {by}", now - first)
        })?;
        tsc::spin_micros(20_000);
    }
}

/// Checks that `get` stays put (at most one more, in flight) over 300 ms.
fn stays(what: &str, mut get: impl FnMut() -> Result<u64, String>) -> Outcome {
    let first = get()?;
    let deadline = tsc::read() + 300 * tsc::ticks_per_ms();
    while tsc::read() < deadline {
        messaging::poll();
    }
    let now = get()?;
    ensure(now <= first + 1, || {
        format!("{what}: {} more in 300 ms", now - first)
    })
}

/// `irq_forwarding=F:B`: the RTC's periodic interrupt (a real interrupting device), owned by
/// instance 0, is forwarded to instance F and counted there; balanced to instance B, which then
/// takes it directly (and instance 0 no more); masked by B on request, no more deliveries;
/// unmasked, deliveries resume. Requests about the line to an instance that does not own it, or
/// about a line that does not exist, and a balance nobody started, are refused.
pub(super) fn irq_forwarding(arg: &str) -> Outcome {
    use crate::services::irq;
    let (f, b) = arg
        .split_once(':')
        .and_then(|(f, b)| Some((f.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .ok_or_else(|| format!("bad argument '{arg}' (want F:B)"))?;
    let gsi = irq::rtc_gsi();
    let line = gsi as usize;
    ensure(line < mk_shared::MAX_IRQS, || format!("RTC GSI {gsi}"))?;
    irq::claim_local(line).map_err(|s| format!("claiming line {line}: {s:?}"))?;
    crate::platform::rtc::start_periodic(10); // 64 Hz
    irq::forward(line, iid(f)).map_err(|s| format!("forwarding: {s:?}"))?;
    wait_growth("forwarded deliveries", 10, || Ok(irq_stats(f, line)?.1))?;
    println!("irq_forwarding: RTC line {line} forwarded to instance {f}, counted there");

    irq::balance(line, iid(b)).map_err(|s| format!("balancing to {b}: {s:?}"))?;
    let r = region::get().ok_or("no shared region")?;
    ensure(
        r.owner(Resource::Irq(gsi)) == Ok(Owner::Owned(iid(b))),
        || format!("line {line}: {:?}", r.owner(Resource::Irq(gsi))),
    )?;
    wait_growth("direct interrupts in the new owner", 10, || {
        Ok(irq_stats(b, line)?.0)
    })?;
    stays("interrupts still reaching instance 0", || {
        Ok(irq_stats(0, line)?.0)
    })?;
    println!("irq_forwarding: line {line} balanced to instance {b}, which takes it directly");

    irq::request_mask(iid(b), gsi, true).map_err(|s| format!("mask: {s:?}"))?;
    stays("interrupts while masked", || Ok(irq_stats(b, line)?.0))?;
    irq::request_mask(iid(b), gsi, false).map_err(|s| format!("unmask: {s:?}"))?;
    wait_growth("interrupts after unmasking", 10, || {
        Ok(irq_stats(b, line)?.0)
    })?;
    println!("irq_forwarding: masked, no deliveries; unmasked, deliveries resume");

    let refusals = [
        (
            "mask at a non-owner",
            irq::request_mask(iid(f), gsi, true),
            Status::NotOwner,
        ),
        (
            "mask of a line that does not exist",
            irq::request_mask(iid(b), 200, true),
            Status::NoSuchResource,
        ),
        (
            "a balance nobody started",
            irq::request_balance_unprepared(iid(f), gsi),
            Status::NotOwner,
        ),
        (
            "a balance by a non-owner",
            irq::balance(line, iid(f)),
            Status::NotOwner,
        ),
    ];
    for (what, got, want) in refusals {
        ensure(got == Err(want), || {
            format!("{what}: {got:?}, expected {want:?}")
        })?;
    }
    ensure(
        r.owner(Resource::Irq(gsi)) == Ok(Owner::Owned(iid(b))),
        || String::from("a refused request moved the line"),
    )?;
    irq::request_mask(iid(b), gsi, true).map_err(|s| format!("final mask: {s:?}"))?;
    crate::platform::rtc::stop_periodic();
    println!(
        "irq_forwarding: requests to a non-owner, for an unknown line, and unprepared balances refused"
    );
    Ok(())
}

/// A small xorshift generator for the storm (seeded from the TSC, printed for replay).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Who owns what: per kind (CPU, IRQ, memory chunk), per owner, the count; and how many
/// resources are in transit.
struct Census {
    owned: [[u64; mk_shared::MAX_INSTANCES]; 3],
    in_transit: u64,
}

fn census() -> Result<Census, String> {
    let r = region::get().ok_or("no shared region")?;
    let mut c = Census {
        owned: [[0; mk_shared::MAX_INSTANCES]; 3],
        in_transit: 0,
    };
    for (res, owner) in r.resources() {
        let kind = match res {
            Resource::Cpu(_) => 0,
            Resource::Irq(_) => 1,
            Resource::Memory(_) => 2,
        };
        match owner.map_err(|e| format!("{res:?}: {e:?}"))? {
            Owner::Owned(o) => c.owned[kind][o.index()] += 1,
            Owner::InTransit { .. } => c.in_transit += 1,
            Owner::Free => {}
        }
    }
    Ok(c)
}

/// Memory (bytes) instance `k` has in its frame allocator, asked with QUERY.
fn memory_of(k: usize) -> Result<u64, String> {
    let reply = messaging::call(
        iid(k),
        Kind::Query,
        Payload::Query(QueryPayload {
            what: QueryWhat::MEMORY,
        }),
        5000,
    )
    .map_err(|e| format!("query to instance {k}: {e:?}"))?;
    match reply.payload {
        Payload::QueryReply(q) => Ok(q.memory_bytes),
        other => Err(format!("query reply {other:?}")),
    }
}

/// `storm=N` (plan 1,2,1,1): N random moves among the instances: instance 1's second CPU
/// from wherever it is to any other instance, a random 2 MiB chunk of one instance's memory to
/// another (refusals for memory in use are part of the game), and idle IRQ lines from their
/// owner to another instance. Afterwards nothing is in transit, every kind of resource has as
/// many owned items as before, the CPU runs where the table says, and each instance's frame
/// allocator grew or shrank by exactly the memory chunks the table says it gained or lost.
pub(super) fn storm(arg: &str) -> Outcome {
    use crate::services::{cpu, irq, memory};
    const LINES: [u32; 4] = [5, 9, 10, 11];
    let n: u64 = arg.parse().map_err(|_| format!("bad count '{arg}'"))?;
    let plan = plan()?;
    let count = plan.partition_count();
    let floating = plan.partition(1).ok_or("no instance 1")?.cpus[1];
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    let tops: Vec<u64> = plan
        .partitions()
        .map(|p| p.memory.iter().map(|m| m.end()).max().unwrap_or(0))
        .collect();
    let r = region::get().ok_or("no shared region")?;
    let before = census()?;
    let disagreements_before = crate::shared::records::disagreements();
    let mem_before: Vec<u64> = (1..count).map(memory_of).collect::<Result<_, _>>()?;
    let chunks_before: Vec<u64> = (0..count).map(|k| before.owned[2][k]).collect();
    let seed = tsc::read() | 1;
    let mut rng = Rng(seed);
    let mut moved = [0u64; 3];
    let mut refused = [0u64; 3];
    let owner_of = |res: Resource| match r.owner(res) {
        Ok(Owner::Owned(o)) => Ok(o.index()),
        other => Err(format!("{res:?} is {other:?}")),
    };
    for i in 0..n {
        match rng.below(3) {
            0 => {
                let from = owner_of(Resource::Cpu(floating))?;
                let to = (from + 1 + rng.below(count as u64 - 1) as usize) % count;
                cpu::move_cpu(floating, iid(from), iid(to))
                    .map_err(|e| format!("move {i}: CPU {floating} {from} -> {to}: {e:?}"))?;
                moved[0] += 1;
            }
            1 => {
                let from = 1 + rng.below(count as u64 - 1) as usize;
                let mine: Vec<u64> = (0..tops.iter().copied().max().unwrap_or(0))
                    .step_by(chunk as usize)
                    .filter(|&a| r.owner(Resource::memory_at(a)) == Ok(Owner::Owned(iid(from))))
                    .collect();
                // A receiver whose frame bitmap covers the chunk (its memory reaches above it).
                let Some(&start) = mine.get(rng.below(mine.len() as u64) as usize) else {
                    continue;
                };
                let takers: Vec<usize> = (1..count)
                    .filter(|&t| t != from && tops[t] > start + chunk)
                    .collect();
                let Some(&to) = takers.get(rng.below(takers.len() as u64) as usize) else {
                    continue;
                };
                match memory::move_memory(start, chunk, iid(from), iid(to)) {
                    Ok(()) => moved[1] += 1,
                    Err(crate::services::moves::MoveError::Refused(Status::Busy)) => {
                        refused[1] += 1
                    }
                    Err(e) => {
                        return Err(format!("move {i}: memory {start:#x} {from} -> {to}: {e:?}"));
                    }
                }
            }
            _ => {
                let line = LINES[rng.below(LINES.len() as u64) as usize];
                let from = owner_of(Resource::Irq(line))?;
                let to = (from + 1 + rng.below(count as u64 - 1) as usize) % count;
                // Lines move through instance 0 (its record of who holds each): an owner
                // other than 0 hands the line back, and instance 0 hands it on.
                let result = if from == 0 {
                    irq::balance(line as usize, iid(to))
                        .map_or_else(|s| u64::from(s.code()) + 1, |()| 0)
                } else {
                    let jobs = start_job(from, job::BALANCE_LINE, u64::from(line))?;
                    match wait_job(from, jobs, 10_000)?.job_result {
                        0 if to != 0 => irq::balance(line as usize, iid(to))
                            .map_or_else(|s| u64::from(s.code()) + 1, |()| 0),
                        other => other,
                    }
                };
                ensure(result == 0, || {
                    format!(
                        "move {i}: IRQ line {line} {from} -> {to}: status code {}",
                        result - 1
                    )
                })?;
                moved[2] += 1;
            }
        }
    }
    let after = census()?;
    let disagreements = crate::shared::records::disagreements();
    ensure(disagreements == disagreements_before, || {
        format!(
            "{} disagreement(s) between instance 0's record and the shared table during the storm",
            disagreements - disagreements_before
        )
    })?;
    ensure(after.in_transit == 0, || {
        format!("{} resources left in transit", after.in_transit)
    })?;
    for (kind, name) in ["CPUs", "IRQ lines", "memory chunks"].iter().enumerate() {
        let (b, a): (u64, u64) = (
            before.owned[kind].iter().sum(),
            after.owned[kind].iter().sum(),
        );
        ensure(a == b, || format!("{name}: {b} owned before, {a} after"))?;
    }
    let cpu_owner = owner_of(Resource::Cpu(floating))?;
    let runs = if cpu_owner == 0 {
        crate::cpus::smp::slot_of(floating).is_some()
    } else {
        ticks_in(cpu_owner, floating).is_ok()
    };
    ensure(runs, || {
        format!("CPU {floating} is instance {cpu_owner}'s but does not run there")
    })?;
    for k in 1..count {
        let gained = after.owned[2][k] as i64 - chunks_before[k] as i64;
        let grew = memory_of(k)? as i64 - mem_before[k - 1] as i64;
        ensure(grew == gained * chunk as i64, || {
            format!("instance {k}: allocator changed by {grew} bytes, the table by {gained} chunks")
        })?;
    }
    println!(
        "storm (seed {seed:#x}): {n} moves: {} CPU, {} memory ({} refused: in use), {} IRQ; nothing in transit, every count and every allocator adds up",
        moved[0], moved[1], refused[1], moved[2]
    );
    Ok(())
}

/// `respawn=K` (after `crash=K` or `shutdown=K`): instance 0 starts K again from a fresh copy of
/// the kernel on the resources it holds back; K runs, owns its CPUs again, answers pings and
/// pings every running instance; the messages queued for the old K (by `crash`) are not
/// delivered to the new one: it sees exactly the sequenced messages sent after the respawn, in
/// order from 0.
pub(super) fn respawn(arg: &str) -> Outcome {
    let k = parse_instance(arg)?;
    crate::services::lifecycle::respawn(iid(k)).map_err(|e| format!("respawning {k}: {e}"))?;
    ensure(state(k)? == InstanceState::Running, || {
        format!("instance {k} is {:?}", state(k))
    })?;
    let r = region::get().ok_or("no shared region")?;
    let cpus = r
        .instance(iid(k))
        .and_then(|i| i.resources())
        .map(|res| res.cpus().to_vec())
        .map_err(|e| format!("{e:?}"))?;
    for &c in &cpus {
        ensure(
            r.owner(Resource::Cpu(c)) == Ok(Owner::Owned(iid(k))),
            || format!("CPU {c}: {:?}", r.owner(Resource::Cpu(c))),
        )?;
    }
    peer::SEQ_SEND[k].store(0, Ordering::SeqCst);
    for _ in 0..3 {
        messaging::send(iid(k), &peer::sequenced_message(k))
            .map_err(|e| format!("sending to the new instance {k}: {e:?}"))?;
    }
    let s = peer::peer_stats(k)?;
    ensure(s.in_order == 3 && s.bad == 0, || {
        format!(
            "the new instance {k} saw {} in order and {} bad (stale messages delivered?)",
            s.in_order, s.bad
        )
    })?;
    survivors_talk()?;
    println!("respawn: instance {k} runs again on CPUs {cpus:?}; no stale message reached it");
    Ok(())
}

/// `bench_control`: the benchmark's CONTROL requests (which pin a CPU in polling, or aim probe
/// echoes) are taken from instance 0 only: instance 2 asking instance 1 is refused (`Refused`)
/// and instance 1's idle poll is left alone; an echo aimed at instance 1's own CPU, or at the
/// xAPIC broadcast, is refused even from instance 0 (it would answer itself forever).
pub(super) fn bench_control() -> Outcome {
    use crate::services::bench::{user as bench_user, words_payload};
    let jobs = start_job(2, job::CONTROL_TO, 1)?;
    let status = wait_job(2, jobs, 10_000)?.job_result;
    ensure(
        status == u64::from(mk_wire::Status::Refused.code()) + 1,
        || {
            format!(
                "instance 1 answered instance 2's CONTROL with status code {}",
                status.wrapping_sub(1)
            )
        },
    )?;
    let r = region::get().ok_or("no shared region")?;
    let own = r
        .instance(iid(1))
        .and_then(|i| i.resources())
        .map(|res| res.cpus().to_vec())
        .map_err(|e| format!("{e:?}"))?;
    let &cpu = own.first().ok_or("instance 1 has no CPU")?;
    for target in [u64::from(cpu), 0xFF] {
        let reply = messaging::call(
            iid(1),
            Kind::User(bench_user::CONTROL),
            words_payload(&[3, target]),
            2000,
        )
        .map_err(|e| format!("echo request: {e:?}"))?;
        ensure(reply.status == mk_wire::Status::InvalidArgument, || {
            format!(
                "an echo to APIC ID {target:#x} was answered {:?}",
                reply.status
            )
        })?;
    }
    println!(
        "bench_control: CONTROL refused from instance 2; echoes at the target's own CPU or the broadcast refused"
    );
    Ok(())
}
