//! The in-kernel measurements of the messaging path, shared by `cargo xtask bench` (through
//! the test kernel's `bench_*` cases) and the shell's `bench` command: instance 0 measures,
//! a peer instance answers. Each figure is printed as a `BENCH` line (format and statistics:
//! `mk-bench`), which xtask collects. A measurement fails only when it could not be taken (an
//! answer that never came, a message that did not arrive); how fast anything was never fails
//! it.
//!
//! Times are TSC ticks converted with this instance's calibration. Every latency figure is
//! the median, p99, min and max over N samples, after N/10 (at least 10) warm-up samples that
//! are thrown away.
//!
//! The peer's serve loop is switched between the notification modes by a CONTROL message
//! before each measurement:
//!
//! ```text
//!  polling   the receiver never halts: it spins on its mailboxes (no IPI needed)
//!  ipi       the receiver halts as soon as its inbox is empty; each message needs a doorbell
//!  adaptive  the receiver polls for ADAPTIVE_POLL_US, then arms the doorbell and halts
//! ```
//!
//! Every instance registers the two USER handlers this needs (CONTROL and SINK) at start
//! (`services::init`), in every build.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mk_bench::{Summary, SummaryFields};
use mk_mailbox::DoorbellMode;
use mk_wire::{Kind, Message, Payload, UserPayload};

use crate::arch::{cpu, interrupts, tsc};
use crate::instance::InstanceId;
use crate::messaging::{self, call_patiently};
use crate::println;

/// A measurement that could not be taken, and why.
pub type Outcome = Result<(), String>;

/// A USER payload of little-endian words (the CONTROL requests and replies; the test kernel's
/// too).
pub fn words_payload(words: &[u64]) -> Payload {
    Payload::User(UserPayload::from_words(words).expect("a few words fit in a message"))
}

/// The words of a USER payload (none for any other payload).
pub fn payload_words(p: &Payload) -> Vec<u64> {
    match p {
        Payload::User(u) => u.words().collect(),
        _ => Vec::new(),
    }
}

/// USER subtypes of the benchmark.
pub mod user {
    /// Call: payload = op, argument (2 x u64); see `op`.
    pub const CONTROL: u16 = 5;
    /// One-way: a full-size message that is only counted.
    pub const SINK: u16 = 6;
}

/// CONTROL operations.
mod op {
    /// Set the serve loop's idle poll: argument µs, or `FOREVER`.
    pub const IDLE_POLL: u64 = 1;
    /// Reply: polling ns, halted ns, halts, SINK messages taken (4 x u64).
    pub const STATS: u64 = 2;
    /// Answer every probe IPI with one to APIC ID `argument` (`FOREVER`: stop answering).
    pub const ECHO: u64 = 3;
}

const FOREVER: u64 = u64::MAX;
/// The adaptive mode's polling budget.
const ADAPTIVE_POLL_US: u64 = 50;
/// A reply or an echo that takes longer than this is a failed measurement.
const ANSWER_TIMEOUT_MS: u64 = 1000;

/// SINK messages this instance took.
pub static SUNK: AtomicU64 = AtomicU64::new(0);
/// CONTROL requests refused: from an instance other than 0, or an echo aimed at ourselves.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Where probe IPIs are echoed to (`FOREVER`: nowhere).
static ECHO_TO: AtomicU64 = AtomicU64::new(FOREVER);

/// Registers the benchmark's handlers (in every instance of a test boot).
pub fn register() {
    use messaging::HandlerFn;
    use mk_dispatch::{HandlerKey, Reply};
    let Some(d) = messaging::dispatcher() else {
        return;
    };
    fn control(m: &Message) -> Option<Reply> {
        // Only the supervisor measures (the shell's `bench`, `cargo xtask bench`): another
        // instance must not pin this one's CPU or aim its probe echoes (issue 15).
        if !m.sender.is_supervisor() {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return Some(Reply::error(mk_wire::Status::Refused));
        }
        let w = payload_words(&m.payload);
        let [op, arg] = w[..] else {
            return Some(Reply::error(mk_wire::Status::InvalidArgument));
        };
        let words = match op {
            op::IDLE_POLL => {
                messaging::set_idle_poll((arg != FOREVER).then_some(arg));
                Vec::new()
            }
            op::STATS => alloc::vec![
                ns(messaging::IDLE.polling.load(Ordering::Relaxed)),
                ns(messaging::IDLE.halted.load(Ordering::Relaxed)),
                messaging::IDLE.halts.load(Ordering::Relaxed),
                SUNK.load(Ordering::Relaxed),
            ],
            op::ECHO => {
                // An echo to one of our own CPUs (or the xAPIC broadcast 0xFF, or beyond)
                // would answer itself forever, above the timer's priority.
                if arg != FOREVER
                    && (arg >= 0xFF || crate::cpus::smp::cpu_list().contains(&(arg as u32)))
                {
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    return Some(Reply::error(mk_wire::Status::InvalidArgument));
                }
                ECHO_TO.store(arg, Ordering::SeqCst);
                if interrupts::set_probe_handler(echo).is_err() {
                    return Some(Reply::error(mk_wire::Status::InternalError));
                }
                Vec::new()
            }
            _ => return Some(Reply::error(mk_wire::Status::InvalidArgument)),
        };
        Some(Reply::ok(words_payload(&words)))
    }
    fn sink(_: &Message) -> Option<Reply> {
        SUNK.fetch_add(1, Ordering::Relaxed);
        None
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::CONTROL)),
        &(control as HandlerFn),
    );
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::SINK)),
        &(sink as HandlerFn),
    );
}

/// The probe vector's handler in an echoing instance: answer at once.
fn echo() {
    let to = ECHO_TO.load(Ordering::Relaxed);
    if to != FOREVER
        && let Some(cpu) = cpu::try_current()
    {
        cpu.with_lapic_in_handler(|l| l.send_ipi(crate::arch::vectors::PROBE_IPI, to as u32));
    }
}

pub fn ns(ticks: u64) -> u64 {
    mk_bench::scale(ticks, 1_000_000, tsc::ticks_per_ms())
}

/// Sends a CONTROL call to `to`; returns the reply's words.
fn control(to: InstanceId, op: u64, arg: u64) -> Result<Vec<u64>, String> {
    let reply = call_patiently(to, Kind::User(user::CONTROL), words_payload(&[op, arg]))
        .map_err(|e| format!("control call to instance {to}: {e:?}"))?;
    if reply.status != mk_wire::Status::Ok {
        return Err(format!(
            "control call to instance {to}: status {:?}",
            reply.status
        ));
    }
    Ok(payload_words(&reply.payload))
}

/// Sets instance `to`'s idle polling: `Some(µs)` before its serve loop halts (0: at once),
/// `None` for polling forever.
pub fn set_idle_poll(to: InstanceId, micros: Option<u64>) -> Result<(), String> {
    control(to, op::IDLE_POLL, micros.unwrap_or(FOREVER)).map(|_| ())
}

/// Instance `to`'s idle accounting and sink count.
pub struct IdleSnapshot {
    pub polling_ns: u64,
    pub halted_ns: u64,
    pub halts: u64,
    pub sunk: u64,
}

pub fn idle_stats(to: InstanceId) -> Result<IdleSnapshot, String> {
    let w = control(to, op::STATS, 0)?;
    let [polling_ns, halted_ns, halts, sunk] = w[..] else {
        return Err(format!("stats reply of {} words", w.len()));
    };
    Ok(IdleSnapshot {
        polling_ns,
        halted_ns,
        halts,
        sunk,
    })
}

/// Takes `n` samples of `one` after the warm-up; returns their summary in ns.
fn sample(n: usize, mut one: impl FnMut() -> Result<u64, String>) -> Result<Summary, String> {
    for _ in 0..(n / 10).max(10) {
        one()?;
    }
    let mut ticks = Vec::with_capacity(n);
    for _ in 0..n {
        ticks.push(one()?);
    }
    Ok(Summary::of(&mut ticks).ok_or("no samples")?.map(ns))
}

fn print_summary(name: &str, s: &Summary, extra: &str) {
    println!(
        "BENCH {name} {} {extra}",
        SummaryFields {
            unit: "ns",
            summary: s
        }
    );
}

/// The raw IPI round trip (`bench_ipi=N`), no mailbox: this instance sends a probe IPI to
/// the peer's first CPU, whose handler answers with one; we spin until it arrives. Once with
/// the peer polling (its CPU is running: the floor of an IPI), once with it halted (the IPI
/// also has to wake it: the floor of an IPI-notified message).
pub fn ipi(n: usize, peer: InstanceId) -> Outcome {
    let peer_cpu =
        messaging::doorbell_cpu(peer).ok_or_else(|| format!("instance {peer} has no CPU"))?;
    let me = cpu::current().apic_id;
    control(peer, op::ECHO, u64::from(me))?;
    let timeout = ANSWER_TIMEOUT_MS * tsc::ticks_per_ms();
    let probe = || {
        let before = interrupts::PROBE_IPIS.load(Ordering::Acquire);
        let start = tsc::read();
        cpu::current().with_lapic(|l| l.send_ipi(crate::arch::vectors::PROBE_IPI, peer_cpu));
        while interrupts::PROBE_IPIS.load(Ordering::Acquire) == before {
            if tsc::read() - start > timeout {
                return Err(String::from("no answer to a probe IPI"));
            }
            core::hint::spin_loop();
        }
        Ok(tsc::read() - start)
    };
    let result = (|| {
        for (name, idle) in [("ipi_raw.polling", FOREVER), ("ipi_raw.halted", 0)] {
            control(peer, op::IDLE_POLL, idle)?;
            let s = sample(n, probe)?;
            print_summary(name, &s, "");
        }
        Ok(())
    })();
    control(peer, op::ECHO, FOREVER)?;
    control(peer, op::IDLE_POLL, 0)?;
    result
}

/// `bench_rtt=N`, `rtt`: the round trip of a minimal message (a PING call and its reply, through
/// the mailboxes and the dispatcher on both sides), in each notification mode. The adaptive
/// mode runs twice: with requests back to back (the receiver finds the next one while
/// polling) and with a 500 µs pause between them (longer than its polling budget, so it
/// halts). Each line also gives the share of the receiver's time spent polling an empty inbox
/// and how often it halted.
pub fn rtt(n: usize, peer: InstanceId) -> Outcome {
    let timeout = ANSWER_TIMEOUT_MS;
    let variants = [
        ("rtt.polling", FOREVER, 0),
        ("rtt.ipi", 0, 0),
        ("rtt.adaptive", ADAPTIVE_POLL_US, 0),
        ("rtt.adaptive_paced", ADAPTIVE_POLL_US, 500),
    ];
    let result = (|| {
        for (name, idle, gap_us) in variants {
            control(peer, op::IDLE_POLL, idle)?;
            let before = idle_stats(peer)?;
            let start = tsc::read();
            let mut nonce = 0;
            let s = sample(n, || {
                if gap_us > 0 {
                    tsc::spin_micros(gap_us);
                }
                nonce += 1;
                let ping = Payload::Ping(mk_wire::PingPayload { nonce, sent_at: 0 });
                let t0 = tsc::read();
                let reply = messaging::call(peer, Kind::Ping, ping, timeout)
                    .map_err(|e| format!("{name}: ping {nonce}: {e:?}"))?;
                let t = tsc::read() - t0;
                if reply.payload != ping {
                    return Err(format!(
                        "{name}: ping {nonce} answered with another payload"
                    ));
                }
                Ok(t)
            })?;
            let elapsed = ns(tsc::read() - start).max(1);
            let after = idle_stats(peer)?;
            let polling = after.polling_ns - before.polling_ns;
            print_summary(
                name,
                &s,
                &format!(
                    "idle_poll_us={} gap_us={gap_us} receiver_polling_permille={} receiver_halted_permille={} receiver_halts={}",
                    if idle == FOREVER {
                        String::from("forever")
                    } else {
                        format!("{idle}")
                    },
                    polling.saturating_mul(1000) / elapsed,
                    (after.halted_ns - before.halted_ns).saturating_mul(1000) / elapsed,
                    after.halts - before.halts
                ),
            );
        }
        Ok(())
    })();
    control(peer, op::IDLE_POLL, 0)?;
    result
}

/// A full-size (256-byte) SINK message.
pub fn sink_message(id: u64) -> Message {
    Message::request(
        crate::instance::id(),
        Kind::User(user::SINK),
        id,
        Payload::User(UserPayload::new(&[0x5a; mk_wire::MAX_PAYLOAD]).expect("fits")),
    )
}

/// Waits until instance `to` has taken `want` SINK messages in total, draining our inbox.
pub fn wait_sunk(to: InstanceId, want: u64, timeout_ms: u64) -> Result<(), String> {
    let deadline = tsc::read() + timeout_ms * tsc::ticks_per_ms();
    loop {
        let got = if to == crate::instance::id() {
            messaging::poll();
            SUNK.load(Ordering::Relaxed)
        } else {
            idle_stats(to)?.sunk
        };
        if got >= want {
            return Ok(());
        }
        if tsc::read() > deadline {
            return Err(format!(
                "instance {to} took {got} of {want} messages in {timeout_ms} ms"
            ));
        }
        // Under TCG's round robin (instruction-count mode) a vCPU that spins without `pause`
        // keeps the others from running: the peers this waits for would starve.
        core::hint::spin_loop();
    }
}

/// `bench_tput=N`, `tput`: one-way throughput of N full 256-byte messages from this instance
/// to the peer: with doorbell suppression (the default), with a doorbell for every message,
/// with batches of 16 messages under one doorbell, and to a polling receiver. Timed from the
/// first send until the peer has taken the last message.
pub fn tput(n: usize, peer: InstanceId) -> Outcome {
    let n = n as u64;
    let variants = [
        ("tput.suppress", 0, DoorbellMode::Suppress, 1),
        ("tput.always", 0, DoorbellMode::Always, 1),
        ("tput.batch16", 0, DoorbellMode::Suppress, 16),
        ("tput.polling", FOREVER, DoorbellMode::Suppress, 1),
    ];
    let row =
        crate::shared::region::telemetry_row(crate::instance::id()).ok_or("no telemetry table")?;
    let result = (|| {
        for (name, idle, mode, batch) in variants {
            control(peer, op::IDLE_POLL, idle)?;
            messaging::set_doorbell_mode(mode);
            let before = idle_stats(peer)?;
            let ipis_before = row[peer.index()].snapshot().ipis_sent;
            let batch_msgs: Vec<Message> = (0..batch).map(|i| sink_message(i + 1)).collect();
            let start = tsc::read();
            let mut sent = 0;
            while sent < n {
                let k = batch.min(n - sent) as usize;
                let (ok, r) = messaging::send_batch(peer, &batch_msgs[..k], 5000);
                sent += ok as u64;
                r.map_err(|e| format!("{name}: message {sent}: {e:?}"))?;
            }
            wait_sunk(peer, before.sunk + n, 60_000)?;
            let elapsed = ns(tsc::read() - start).max(1);
            let after = idle_stats(peer)?;
            let per_sec = mk_bench::scale(n, 1_000_000_000, elapsed);
            println!(
                "BENCH {name} unit=msg/s value={per_sec} msgs={n} ns={elapsed} bytes_per_s={} ipis={} receiver_halts={}",
                per_sec * mk_wire::SLOT_SIZE as u64,
                row[peer.index()].snapshot().ipis_sent - ipis_before,
                after.halts - before.halts
            );
        }
        Ok(())
    })();
    messaging::set_doorbell_mode(DoorbellMode::Suppress);
    control(peer, op::IDLE_POLL, 0)?;
    result
}

/// `bench_ops=N`: what the primitive operations on the message path cost on this machine, each
/// timed over N repetitions (ns per operation, mean): a memory write to the shared region, a
/// lock round trip, reading the TSC, turning interrupts off and on, a local APIC register read,
/// polling empty mailboxes, encoding a full message. Under a hypervisor that traps privileged
/// instructions these differ by orders of magnitude; this shows which ones the path pays for.
pub fn ops(n: usize) -> Outcome {
    let n = n as u64;
    // A counter in the shared region nobody reads: this instance's entry for itself.
    let me = crate::instance::id();
    let shared = crate::shared::region::telemetry_row(me).ok_or("no telemetry table")?;
    let lock = spin::Mutex::new(0u64);
    let msg = sink_message(1);
    let mut slot = [0u8; mk_wire::SLOT_SIZE];
    // Each operation runs up to N times, in rounds of 16, and stops early once 200 ms have
    // passed (some cost milliseconds under an emulating hypervisor).
    let budget = 200 * tsc::ticks_per_ms();
    let time = |name: &str, op: &mut dyn FnMut()| {
        let start = tsc::read();
        let mut done = 0;
        while done < n && tsc::read() - start < budget {
            for _ in 0..16 {
                op();
            }
            done += 16;
        }
        let per_op = ns(tsc::read() - start) / done;
        println!("BENCH op.{name} unit=ns_per_op value={per_op} n={done}");
    };
    time("empty", &mut || core::hint::black_box(()));
    time("shared_atomic_add", &mut || {
        shared[me.index()].record_busy()
    });
    time("spin_lock", &mut || *lock.lock() += 1);
    time("rdtsc", &mut || {
        core::hint::black_box(tsc::read());
    });
    time("cli_sti", &mut || {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::interrupts::enable();
    });
    time("without_interrupts", &mut || {
        x86_64::instructions::interrupts::without_interrupts(|| ())
    });
    time("lapic_read", &mut || {
        core::hint::black_box(cpu::current().with_lapic(|l| l.id()));
    });
    let (poll_ticks, peers) = poll_empty_ticks(n.clamp(16, 256) as usize);
    println!(
        "BENCH op.poll_empty unit=ns_per_op value={} ticks={poll_ticks} peers={peers} n={}",
        ns(poll_ticks),
        n.clamp(16, 256)
    );
    time("encode_full", &mut || {
        core::hint::black_box(mk_wire::encode(&msg, &mut slot).is_ok());
    });
    time("decode_full", &mut || {
        core::hint::black_box(mk_wire::decode(&slot).is_ok());
    });
    let ping = Message::request(
        InstanceId::ZERO,
        Kind::Ping,
        0,
        Payload::Ping(mk_wire::PingPayload {
            nonce: 1,
            sent_at: 2,
        }),
    );
    time("encode_ping", &mut || {
        core::hint::black_box(mk_wire::encode(&ping, &mut slot).is_ok());
    });
    time("copy_256", &mut || {
        let copy = core::hint::black_box(slot);
        core::hint::black_box(copy);
    });
    Ok(())
}

/// Ticks one TSC read costs as seen by the next one: the floor of [`timed`], subtracted from
/// every single-operation timing (the median of 64).
pub fn tsc_floor() -> u64 {
    median_ticks(64, || timed(|| ()))
}

/// Ticks `f` took, timed alone between two TSC reads (the floor included).
pub fn timed(f: impl FnOnce()) -> u64 {
    let t0 = tsc::read();
    f();
    tsc::read().wrapping_sub(t0)
}

/// The median of `n` results of `one`.
pub fn median_ticks(n: usize, mut one: impl FnMut() -> u64) -> u64 {
    let mut v: Vec<u64> = (0..n.max(1)).map(|_| one()).collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// The mailbox's own share of `op.send` and `op.recv` (TSC ticks, each the median of `n`, the
/// TSC floor taken off): the same 256-byte SINK message, encoded once beforehand, sent into a
/// ring with room by `SenderEnd::try_send_parts` (the ring's checks, the copy, the sequence
/// number, the summary bit, the doorbell check) and drained by `ReceiverEnd::drain_into_parts`
/// (the ring's checks, the copy, the acknowledgement). No encoding, validation, lock, state
/// word, telemetry or dispatch: what `messaging` adds on top is the difference. The channel is
/// a private one (a two-instance mailbox matrix in this instance's heap, both ends here), so
/// nobody else sees its messages.
pub fn ring_ticks(n: usize) -> Result<RingTicks, String> {
    use mk_mailbox::{InstanceId as Id, MailboxMatrix, Raw};
    use mk_raw::{PAGE, Page};
    let pages: Vec<Page> = (0..mk_mailbox::region_size(2).div_ceil(PAGE))
        .map(|_| Page::default())
        .collect();
    let matrix = MailboxMatrix::init(Raw::from_pages(&pages), 2)
        .map_err(|e| format!("a private mailbox matrix: {e:?}"))?;
    let (a, b) = (Id::new(0), Id::new(1));
    let mut tx = matrix
        .sender_end(a, b)
        .map_err(|e| format!("its sending end: {e:?}"))?;
    let mut rx = matrix
        .receiver_end(a, b)
        .map_err(|e| format!("its receiving end: {e:?}"))?;
    let msg = sink_message(1);
    let mut header = [0; mk_wire::HEADER_LEN];
    let mut scratch = [0; mk_wire::MAX_PAYLOAD];
    let payload = mk_wire::encode_parts(&msg, &mut header, &mut scratch)
        .map_err(|e| format!("encoding a SINK message: {e:?}"))?;
    let mut out = [mk_wire::Received::new()];
    let floor = tsc_floor();
    let (mut sends, mut recvs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n.max(1) {
        let mut sent = Err(mk_mailbox::Error::Full);
        let t = timed(|| sent = tx.try_send_parts(&header, payload));
        match sent {
            Ok(o) if !o.need_doorbell => {}
            other => return Err(format!("message {i} into the private ring: {other:?}")),
        }
        sends.push(t.saturating_sub(floor));
        let mut taken = Ok(0);
        let t = timed(|| taken = rx.drain_into_parts(&mut out, |r| r.parts_mut()));
        if taken != Ok(1) {
            return Err(format!("message {i} out of the private ring: {taken:?}"));
        }
        // Checked after the timing: what came out is what went in (bytes 0..4 of the header
        // are the mailbox's sequence number).
        let intact = out[0].parts_mut().is_some_and(|(head, tail)| {
            head[4..] == header[4..] && tail.get(..payload.len()) == Some(payload)
        });
        if !intact {
            return Err(format!("message {i} came out of the private ring changed"));
        }
        recvs.push(t.saturating_sub(floor));
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    Ok(RingTicks {
        send: median(sends),
        recv: median(recvs),
    })
}

/// [`ring_ticks`]' two figures.
pub struct RingTicks {
    /// `op.send.ring`: one message into the ring.
    pub send: u64,
    /// `op.recv.ring`: one message out of it.
    pub recv: u64,
}

/// `op.poll_empty`: one `poll()` of this instance's empty inbox (its summary word read: no
/// peer flagged a message, no poll hook asked for), timed alone, the median of `n`, the TSC floor taken off; and
/// how many peers it looked at. Each call is timed on its own (no loop around it), so that in
/// instruction-count mode the figure is the poll's own instructions.
pub fn poll_empty_ticks(n: usize) -> (u64, usize) {
    let floor = tsc_floor();
    let t = median_ticks(n, || {
        timed(|| {
            core::hint::black_box(messaging::poll());
        })
    });
    let peers = crate::shared::region::get().map_or(0, |r| r.instance_count().saturating_sub(1));
    (t.saturating_sub(floor), peers)
}
