//! What the self-tests run outside the case functions, mostly in the instances other than 0 on
//! instance 0's request: the report words each instance fills when it comes up (and its
//! isolation probe), the handlers of the test messages (sequenced messages, counters, bulk
//! data, crash, CPU ticks, IRQ counts), the jobs the serve loop's idle hook runs when instance
//! 0 asks, and instance 0's side of asking: `start_job`, `wait_job`, `peer_stats`.
//!
//! Nothing here reports a verdict: it is the ground the cases (`super::hardware`,
//! `super::instances`, `super::messaging`, `super::services`, `super::bench`) stand on.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use crate::arch::interrupts;
use crate::instance::iid;
use crate::memory::frames;
use crate::messaging::{self, call_patiently};
use crate::services::bench::{payload_words, sink_message, words_payload};
use crate::shared::region;

/// A static each instance bumps in its own copy of the kernel: by `1000 * id + 1`. If two
/// instances shared `.data`, one would see the other's increment.
pub(super) static PROBE_COUNTER: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);
/// Physical address the isolation probe reads: in partition 0 in every plan (partition 0 starts
/// at 1 MiB), so in no other instance's memory.
pub(super) const PROBE_PHYS_IN_0: u64 = 0x20_0000;

/// Report slots every instance fills in the shared region for instance 0 to check.
pub(super) mod report {
    pub const APIC_ID: usize = 0;
    pub const ONLINE: usize = 1;
    pub const COUNTER: usize = 2;
    /// CR2 of the isolation fault, or u64::MAX when the read did not fault.
    pub const FAULT: usize = 3;
    /// CPUs of the instance that took timer interrupts within 200 ms of coming up.
    pub const TICKING: usize = 4;
}

/// What an instance other than 0 runs in a test boot: fill the report, then probe isolation.
pub fn run_in_instance(desc: &crate::platform::descriptor::BootDescriptor) -> ! {
    use crate::cpus::smp;
    use crate::shared::region;
    let id = u64::from(desc.instance_id);
    PROBE_COUNTER.fetch_add(1000 * id + 1, Ordering::SeqCst);
    region::report(
        report::APIC_ID,
        u64::from(crate::arch::cpu::current().apic_id),
    );
    region::report(
        report::ONLINE,
        u64::from(smp::ONLINE.load(Ordering::SeqCst)),
    );
    region::report(report::COUNTER, PROBE_COUNTER.load(Ordering::SeqCst));
    // Every online CPU should take a timer tick soon; a CPU that came up last (under a slow
    // hypervisor, seconds after the first) gets up to 3 s.
    let deadline = crate::arch::tsc::read() + 3000 * crate::arch::tsc::ticks_per_ms();
    crate::arch::tsc::spin_micros(200_000);
    while smp::cpus_ticking() < smp::ONLINE.load(Ordering::SeqCst)
        && crate::arch::tsc::read() < deadline
    {
        crate::arch::tsc::spin_micros(10_000);
    }
    region::report(report::TICKING, u64::from(smp::cpus_ticking()));
    register_test_handlers();
    if desc.tests().split_whitespace().any(|t| t == "isolation") {
        interrupts::expect_page_fault(frames::phys_to_virt(PROBE_PHYS_IN_0), |cr2, _| {
            crate::shared::region::report(report::FAULT, cr2);
            crate::info!("isolation probe: reading instance 0's memory faulted at {cr2:#x}");
            idle()
        });
        match crate::memory::read_unmapped(frames::phys_to_virt(PROBE_PHYS_IN_0)) {
            Ok(v) => crate::error!(
                "isolation probe: read {v:#x} from instance 0's memory without a fault"
            ),
            Err(e) => crate::error!("isolation probe: instance 0's memory: {e}"),
        }
        region::report(report::FAULT, u64::MAX);
    }
    idle()
}

fn idle() -> ! {
    x86_64::instructions::interrupts::enable();
    crate::messaging::serve_forever()
}

/// USER subtypes the messaging tests use.
pub(super) mod user {
    /// One-way: payload = sequence number (u64 LE) + 25 pattern words derived from it (LE); the
    /// sequence is per (sender, receiver) pair.
    pub const SEQUENCED: u16 = 1;
    /// Call: payload = a sender id (u64); reply = `super::StatsWords` (7 x u64 LE).
    pub const STATS: u16 = 2;
    /// Call: payload = job kind, argument (2 x u64); queued for the serve loop, answered at once.
    pub const JOB: u16 = 3;
    /// Call with a `LargeData` payload (shared pool pages); reply = FNV-1a of the data, length.
    pub const BULK: u16 = 4;
    /// One-way, from instance 0: panic on purpose (the failure-detection test).
    pub const CRASH: u16 = 7;
    /// Call: payload = an APIC ID; reply = the timer interrupts that CPU took in this instance
    /// and the CR0 that CPU read when it came up (2 x u64; error `NoSuchResource` if it is not
    /// one of this instance's CPUs).
    pub const CPU_TICKS: u16 = 8;
    /// Call: payload = an IRQ line; reply = the interrupts of that line this instance took
    /// directly, the IRQ_FORWARD deliveries of it it received, and the bytes (and their sum)
    /// it took from COM2 (4 x u64).
    pub const IRQ_STATS: u16 = 9;
    /// Call: payload = an instance; the handler itself calls that instance (a ping) before it
    /// answers; reply = 1 if its call was answered, 0 if not (2 x u64: that, the ping's nonce).
    pub const RELAY: u16 = 13;
}

/// Jobs an instance runs from its serve loop when instance 0 asks.
pub(super) mod job {
    /// Stop draining the mailboxes for `arg` ms.
    pub const PAUSE: u64 = 1;
    /// Send `arg` sequenced messages to every other instance, interleaved.
    pub const STREAM_ALL: u64 = 2;
    /// `arg` PING calls to every other instance.
    pub const PING_ALL: u64 = 3;
    /// The benchmark's exchange among the first instances (`bench::stream_among`).
    pub const STREAM_AMONG: u64 = 4;
    /// Allocate, fill and check the memory at `arg & 0xFFFF_FFFF_FFFF` (physical) for
    /// `arg >> 48` MiB; result: the words found right (`services::fill_check`).
    pub const FILL_CHECK: u64 = 5;
    /// Read the physical address `arg`, which must fault (`services::probe_fault`).
    pub const PROBE_FAULT: u64 = 6;
    /// Balance IRQ line `arg & 0xFFFF_FFFF` to instance `arg >> 32` (this instance owns it);
    /// result: 0 on success, else the refusal's status code + 1.
    pub const BALANCE_LINE: u64 = 7;
    /// Start handing the 2 MiB memory chunk at `arg & 0xFFFF_FFFF_FFFF` to instance
    /// `arg >> 48` in the ownership table, and go no further (a hand-off cut short by a
    /// crash); result: the transfer's generation + 1, or 0 if refused.
    pub const HANDOFF_BEGIN: u64 = 8;
    /// Halt for `arg` ms without arming the doorbells and without draining: the instance is
    /// "awake" as a sender sees it (no doorbell owed) yet runs no instructions, so instance 0
    /// can time its own side of a message alone (`op.send`; instruction-count mode counts
    /// every CPU's instructions in one clock).
    pub const QUIET: u64 = 9;
    /// Halt `arg >> 32` ms (as `QUIET`), then send `arg & 0xFFFF_FFFF` SINK messages to
    /// instance 0 (`op.recv`: instance 0 has stopped draining by then); result: how many went.
    pub const SINKS: u64 = 10;
    /// Look up the programs `ramdisk_programs` needs in this instance's own ramdisk; result:
    /// `super::ramdisk_check()`.
    pub const RAMDISK: u64 = 11;
    /// Send a benchmark CONTROL request (set the idle poll to forever) to instance `arg`, as
    /// a hostile peer would; result: the reply's status code + 1 (0: no reply).
    pub const CONTROL_TO: u64 = 12;
    /// Behave as a hostile instance against the shared words (issue 15, items 1, 2, 8, 9):
    /// victim `arg & 0xFF`, IRQ line `(arg >> 8) & 0xFF` (the victim's), accomplice
    /// `(arg >> 16) & 0xFF`, memory chunks `(arg >> 24) & 0xF_FFFF` (the victim's) and
    /// `arg >> 44` (its own): write this instance's id into every other CPU's owner word, into
    /// APIC ID 255's and into the victim's chunk's; garbage into its own chunk's word; put the
    /// line "in transit" from this instance to the accomplice and ask it to take
    /// the line (IRQ_BALANCE), then ask instance 0 to mask it (IRQ_MASK); last, `Stopped` into
    /// the victim's state word. Result: the balance's
    /// status code + 1 (0: no answer) in bits 0..16, the mask's in bits 16..32.
    pub const FORGE: u64 = 13;
    /// Behave as a hostile instance against the interrupt surface (issue 15, item 10):
    /// publish 0xFF (the xAPIC broadcast) as this instance's first CPU, then send up to
    /// `arg >> 8` IPIs on each of the timer, probe and a device vector, and a few NMIs and
    /// IPIs on a vector with no handler, into the first CPU of instance `arg & 0xFF`, for
    /// at most 5 s; result: the IPIs sent.
    pub const FLOOD: u64 = 14;
}

/// Programs every ramdisk must hold, each a loadable ELF (`ramdisk_programs`).
pub(super) const REQUIRED_PROGRAMS: [&str; 3] = ["hello", "spin", "init"];

/// What this instance's ramdisk holds, in one word: bit `i` set if `REQUIRED_PROGRAMS[i]` is
/// there and parses with mk-elf; the bits above the eighth are from a hash of the whole
/// archive, so two instances with the same word hold the same archive (0 there: none).
pub(super) fn ramdisk_check() -> u64 {
    let Some(archive) = crate::memory::ramdisk::archive() else {
        return 0;
    };
    let found = REQUIRED_PROGRAMS
        .iter()
        .enumerate()
        .filter(|(_, name)| {
            crate::memory::ramdisk::program(name).is_some_and(|elf| mk_elf::Elf::parse(elf).is_ok())
        })
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    (fnv1a(archive) & !0xFF) | 1 << 7 | found
}

const MAX_I: usize = mk_shared::MAX_INSTANCES;
type Counters = [core::sync::atomic::AtomicU64; MAX_I];
/// Receiving side, per sender: next expected sequence, messages in order, bad ones.
static SEQ_NEXT: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
pub(super) static SEQ_OK: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
pub(super) static SEQ_BAD: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
/// Sending side, per receiver: next sequence number to send.
pub(super) static SEQ_SEND: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
static JOB: spin::Mutex<Option<(u64, u64)>> = spin::Mutex::new(None);
static JOBS_DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static JOB_RESULT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Word `i` of the pattern that follows sequence number `seq`. Words, not bytes: under an
/// emulating hypervisor every instruction costs, and the check runs for every message.
fn pattern(seq: u64, i: usize) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

pub(super) fn user_payload(bytes: &[u8]) -> mk_wire::Payload {
    mk_wire::Payload::User(mk_wire::UserPayload::new(bytes).expect("fits in a message"))
}

/// The next sequenced message from this instance to `to`.
pub(super) fn sequenced_message(to: usize) -> mk_wire::Message {
    let seq = SEQ_SEND[to].fetch_add(1, Ordering::SeqCst);
    let mut bytes = [0u8; 208];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, w) in bytes[8..].as_chunks_mut::<8>().0.iter_mut().enumerate() {
        *w = pattern(seq, i).to_le_bytes();
    }
    mk_wire::Message::request(
        crate::instance::id(),
        mk_wire::Kind::User(user::SEQUENCED),
        seq + 1,
        user_payload(&bytes),
    )
}

/// Sends `msg` to `to`, draining our own inbox while the peer's is full; gives up after 5 s.
pub(super) fn send_patiently(to: usize, msg: &mk_wire::Message) -> Result<(), String> {
    crate::messaging::send_within(iid(to), msg, 5000).map_err(|e| {
        let me = crate::instance::id().index();
        let stats = crate::shared::region::get()
            .and_then(|r| r.mailbox().ok())
            .map(|m| (m.stats(iid(me), iid(to)), m.stats(iid(to), iid(me))));
        format!("to instance {to}: {e:?}; channel stats {stats:?}")
    })
}

/// The other instances that are running (stopped and dead ones are left out).
pub(super) fn others() -> impl Iterator<Item = usize> {
    let me = crate::instance::id().index();
    let region = crate::shared::region::get();
    let n = region.map_or(0, |r| r.instance_count());
    (0..n).filter(move |&i| {
        i != me
            && region
                .and_then(|r| r.instance(iid(i)).ok())
                .map(|inst| inst.state())
                == Some(Ok(mk_shared::InstanceState::Running))
    })
}

/// Sends `n` sequenced messages to every other instance, interleaved. Returns how many went.
///
/// Drains its own inbox as it goes (every round, and whenever a peer's mailbox is full): the
/// peers stream to us at the same time, and a sender that only drains when it is itself
/// blocked starves a peer whose mailbox to us is full while ours to it never fills.
pub(super) fn stream_all(n: u64) -> Result<u64, String> {
    let mut sent = 0;
    for _ in 0..n {
        for to in others() {
            send_patiently(to, &sequenced_message(to))?;
            sent += 1;
        }
        crate::messaging::poll();
    }
    Ok(sent)
}

/// `n` PING calls to every other instance. Returns how many came back right.
pub(super) fn ping_all(n: u64) -> u64 {
    let mut ok = 0;
    for to in others() {
        for i in 0..n {
            let ping = mk_wire::PingPayload {
                nonce: i,
                sent_at: to as u64,
            };
            let payload = mk_wire::Payload::Ping(ping);
            if let Ok(reply) = crate::messaging::call(iid(to), mk_wire::Kind::Ping, payload, 2000)
                && reply.payload == payload
            {
                ok += 1;
            }
        }
    }
    ok
}

/// The jobs of other test modules (`rogue`), for the kinds this file does not know: the job's
/// result (0 for a kind nobody knows).
static MORE_JOBS: mk_hook::Hook<fn(u64, u64) -> u64> = mk_hook::Hook::new();

pub(super) fn set_more_jobs(run: fn(u64, u64) -> u64) -> Result<(), mk_hook::Full> {
    MORE_JOBS.set(run)
}

/// The serve loop's hook: runs a job instance 0 asked for. It runs on every pass of the
/// loop, so the look is kept apart from the jobs (whose frame is large). The job is taken out
/// before it runs: the lock must not be held while it runs (a job may never return, as the
/// probe whose fault handler serves on from there).
fn run_job() {
    let job = JOB.lock().take();
    if let Some((kind, arg)) = job {
        run_job_now(kind, arg);
    }
}

#[inline(never)]
fn run_job_now(kind: u64, arg: u64) {
    let result = match kind {
        job::PAUSE => {
            crate::arch::tsc::spin_micros(arg * 1000);
            0
        }
        job::STREAM_ALL => stream_all(arg).unwrap_or_else(|e| {
            crate::error!("stream job: {e}");
            0
        }),
        job::PING_ALL => ping_all(arg),
        job::STREAM_AMONG => stream_among(arg),
        job::QUIET => {
            quiet(arg);
            0
        }
        job::SINKS => {
            quiet(arg >> 32);
            let msg = sink_message(1);
            (0..arg & 0xFFFF_FFFF)
                .take_while(|_| messaging::try_send(iid(0), &msg).is_ok())
                .count() as u64
        }
        job::FILL_CHECK => fill_check(arg),
        job::RAMDISK => ramdisk_check(),
        job::PROBE_FAULT => probe_fault(arg),
        job::HANDOFF_BEGIN => crate::shared::region::get().map_or(0, |r| {
            let chunk = mk_shared::Resource::memory_at(arg & 0xFFFF_FFFF_FFFF);
            let me = crate::instance::id().index();
            r.begin_transfer(chunk, iid(me), iid((arg >> 48) as usize))
                .map_or(0, |g| u64::from(g) + 1)
        }),
        job::CONTROL_TO => {
            let p = crate::services::bench::words_payload(&[1, u64::MAX]);
            match messaging::call(
                iid(arg as usize),
                mk_wire::Kind::User(crate::services::bench::user::CONTROL),
                p,
                2000,
            ) {
                Ok(reply) => u64::from(reply.status.code()) + 1,
                Err(_) => 0,
            }
        }
        job::FORGE => forge(arg),
        job::FLOOD => flood(arg),
        job::BALANCE_LINE => {
            match crate::services::irq::balance(
                (arg & 0xFFFF_FFFF) as usize,
                iid((arg >> 32) as usize),
            ) {
                Ok(()) => 0,
                Err(s) => u64::from(s.code()) + 1,
            }
        }
        kind => MORE_JOBS.get().map_or(0, |more| more(kind, arg)),
    };
    JOB_RESULT.store(result, Ordering::SeqCst);
    JOBS_DONE.fetch_add(1, Ordering::SeqCst);
}

/// Job `FORGE`: what a hostile instance can write into the shared region with the region's
/// own API (it could write anything, anywhere; these are the words instance 0 used to obey).
fn forge(arg: u64) -> u64 {
    use mk_shared::{InstanceState, Owner, Resource};
    let Some(r) = crate::shared::region::get() else {
        return 0;
    };
    let me = crate::instance::id();
    let (victim, line, accomplice) = (
        iid((arg & 0xFF) as usize),
        (arg >> 8) as u32 & 0xFF,
        iid(((arg >> 16) & 0xFF) as usize),
    );
    for apic in 0..mk_shared::MAX_APIC_IDS as u32 {
        let cpu = Resource::Cpu(apic);
        let theirs = matches!(r.owner(cpu), Ok(Owner::Owned(o)) if o != me);
        if theirs || apic == 0xFF {
            let _ = r.overrule_owner(cpu, Owner::Owned(me));
        }
    }
    // The victim's chunk "is" this instance's; one of its own chunks' words does not decode
    // (tag 0x0D): instance 0's reclaim must not stop at it.
    let chunk = |shift: u32| Resource::Memory((arg >> shift) as u32 & 0xF_FFFF);
    let _ = r.overrule_owner(chunk(24), Owner::Owned(me));
    if let Ok(addr) = r.owner_word_addr(chunk(44)) {
        crate::shared::region::scribble(addr, 0xDEAD_BEEF_0BAD_F00D);
    }
    let res = Resource::Irq(line);
    let _ = r.overrule_owner(res, Owner::Owned(me));
    let _ = r.begin_transfer(res, me, accomplice);
    let request = |to, kind| {
        let p = mk_wire::Payload::IoIrq(mk_wire::IoIrqPayload {
            irq: line,
            vector: 0,
            device_id: 0,
            flags: mk_wire::IrqFlags::empty(),
        });
        match messaging::call(to, kind, p, 2000) {
            Ok(reply) => u64::from(reply.status.code()) + 1,
            Err(_) => 0,
        }
    };
    let balance = request(accomplice, mk_wire::Kind::IrqBalance);
    let mask = request(iid(0), mk_wire::Kind::IrqMask);
    // Last: while the victim's word says stopped, nobody sends to it (replies included).
    if let Ok(v) = r.instance(victim) {
        let _ = v.overrule_state(InstanceState::Stopped);
    }
    balance | mask << 16
}

/// Job `FLOOD` (see [`job::FLOOD`]).
fn flood(arg: u64) -> u64 {
    use crate::arch::{tsc, vectors};
    let Some(r) = crate::shared::region::get() else {
        return 0;
    };
    let victim = iid((arg & 0xFF) as usize);
    let count = arg >> 8;
    let Some(target) = r
        .instance(victim)
        .and_then(|i| i.resources())
        .ok()
        .and_then(|res| res.cpus().first().copied())
    else {
        return 0;
    };
    // Doorbells meant for this instance would now go to every CPU, were senders to obey.
    if let Ok(me) = r.instance(crate::instance::id()) {
        let ranges = me
            .resources()
            .map(|res| res.ranges().to_vec())
            .unwrap_or_default();
        let _ = me.publish_resources(&[0xFF], &ranges);
    }
    let line = crate::services::irq::rtc_gsi().min(vectors::IRQ_COUNT as u32 - 1) as u8;
    let flooded = [
        vectors::LAPIC_TIMER,
        vectors::PROBE_IPI,
        vectors::IRQ_BASE + line,
    ];
    let deadline = tsc::read() + 5000 * tsc::ticks_per_ms();
    let cpu = crate::arch::cpu::current();
    let mut sent = 0;
    for i in 0..count {
        for v in flooded {
            cpu.with_lapic(|l| l.send_ipi(v, target));
        }
        sent += flooded.len() as u64;
        if i % 1000 == 0 {
            cpu.with_lapic(|l| {
                l.send_nmi(target);
                l.send_ipi(0x99, target);
            });
            sent += 2;
            if tsc::read() > deadline {
                break;
            }
        }
    }
    sent
}

/// Halts for `ms` without arming the doorbells or draining (jobs `QUIET`, `SINKS`).
fn quiet(ms: u64) {
    let until = crate::arch::tsc::read() + ms * crate::arch::tsc::ticks_per_ms();
    while crate::arch::tsc::read() < until {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// The receiving side of the messaging tests, in every instance: per-sender order and
/// contents of sequenced messages, counters on request, jobs.
pub(super) fn register_test_handlers() {
    use crate::messaging::HandlerFn;
    use mk_dispatch::{HandlerKey, Reply};
    use mk_wire::{Kind, Message, Payload};
    let Some(d) = crate::messaging::dispatcher() else {
        return;
    };
    fn sequenced(m: &Message) -> Option<Reply> {
        let from = usize::from(m.sender).min(MAX_I - 1);
        let Payload::User(p) = m.payload else {
            SEQ_BAD[from].fetch_add(1, Ordering::SeqCst);
            return None;
        };
        let b = p.as_bytes();
        let seq = b.get(..8).map_or(u64::MAX, |s| {
            u64::from_le_bytes(s.try_into().expect("8 bytes"))
        });
        let intact = b.len() == 208
            && b[8..]
                .as_chunks::<8>()
                .0
                .iter()
                .enumerate()
                .all(|(i, w)| u64::from_le_bytes(*w) == pattern(seq, i));
        if intact && seq == SEQ_NEXT[from].load(Ordering::SeqCst) {
            SEQ_OK[from].fetch_add(1, Ordering::SeqCst);
        } else {
            SEQ_BAD[from].fetch_add(1, Ordering::SeqCst);
        }
        SEQ_NEXT[from].store(seq.wrapping_add(1), Ordering::SeqCst);
        None
    }
    fn stats(m: &Message) -> Option<Reply> {
        let from = payload_words(&m.payload).first().copied().unwrap_or(0) as usize;
        let from = from.min(MAX_I - 1);
        let (_, rejected) = crate::messaging::counters();
        Some(Reply::ok(words_payload(&[
            SEQ_OK[from].load(Ordering::SeqCst),
            SEQ_BAD[from].load(Ordering::SeqCst),
            rejected,
            crate::messaging::SPURIOUS_IPIS.load(Ordering::SeqCst),
            crate::messaging::THROTTLES.load(Ordering::SeqCst),
            JOBS_DONE.load(Ordering::SeqCst),
            JOB_RESULT.load(Ordering::SeqCst),
        ])))
    }
    fn queue_job(m: &Message) -> Option<Reply> {
        let w = payload_words(&m.payload);
        if w.len() != 2 {
            return Some(Reply::error(mk_wire::Status::InvalidArgument));
        }
        *JOB.lock() = Some((w[0], w[1]));
        Some(Reply::ok(words_payload(&[])))
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::SEQUENCED)),
        &(sequenced as HandlerFn),
    );
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::STATS)),
        &(stats as HandlerFn),
    );
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::JOB)),
        &(queue_job as HandlerFn),
    );
    fn bulk(m: &Message) -> Option<Reply> {
        let Payload::LargeData(p) = m.payload else {
            return Some(Reply::error(mk_wire::Status::InvalidArgument));
        };
        match crate::messaging::bulk::receive_large(m.sender, &p) {
            Ok(data) => Some(Reply::ok(words_payload(&[fnv1a(&data), data.len() as u64]))),
            Err(e) => {
                crate::warn!("bulk transfer from instance {} refused: {e:?}", m.sender);
                Some(Reply::error(mk_wire::Status::Refused))
            }
        }
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::BULK)),
        &(bulk as HandlerFn),
    );
    fn crash(m: &Message) -> Option<Reply> {
        if m.sender.is_supervisor() {
            panic!("deliberate crash requested by instance 0 (failure-detection test)");
        }
        Some(Reply::error(mk_wire::Status::Refused))
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::CRASH)),
        &(crash as HandlerFn),
    );
    fn cpu_ticks(m: &Message) -> Option<Reply> {
        let apic = payload_words(&m.payload)
            .first()
            .copied()
            .unwrap_or(u64::MAX);
        let slot = u32::try_from(apic).ok().and_then(crate::cpus::smp::slot_of);
        let ticks = slot
            .and_then(crate::arch::cpu::by_slot)
            .map(|c| (c.ticks.load(Ordering::Relaxed), c.cr0));
        Some(match ticks {
            Some((t, cr0)) => Reply::ok(words_payload(&[t, cr0])),
            None => Reply::error(mk_wire::Status::NoSuchResource),
        })
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::CPU_TICKS)),
        &(cpu_ticks as HandlerFn),
    );
    fn relay(m: &Message) -> Option<Reply> {
        let to = payload_words(&m.payload)
            .first()
            .copied()
            .unwrap_or(u64::MAX);
        let Some(to) = u16::try_from(to).ok().map(crate::instance::InstanceId::new) else {
            return Some(Reply::error(mk_wire::Status::InvalidArgument));
        };
        let ping = mk_wire::PingPayload {
            nonce: 0x7e1a7,
            sent_at: 0,
        };
        // A call from inside a handler: it waits by draining the mailboxes again.
        let answered = crate::messaging::call(to, Kind::Ping, Payload::Ping(ping), 2000)
            .is_ok_and(|r| r.payload == Payload::Ping(ping));
        Some(Reply::ok(words_payload(&[u64::from(answered), ping.nonce])))
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::RELAY)),
        &(relay as HandlerFn),
    );
    fn irq_stats(m: &Message) -> Option<Reply> {
        let line = payload_words(&m.payload)
            .first()
            .copied()
            .unwrap_or(u64::MAX) as usize;
        let (Some(direct), Some(forwarded)) = (
            interrupts::IRQ_COUNTS.get(line),
            crate::services::irq::FORWARDED_IN.get(line),
        ) else {
            return Some(Reply::error(mk_wire::Status::NoSuchResource));
        };
        Some(Reply::ok(words_payload(&[
            direct.load(Ordering::Relaxed),
            forwarded.load(Ordering::Relaxed),
            crate::platform::com2::RECEIVED.load(Ordering::Relaxed),
            crate::platform::com2::RECEIVED_SUM.load(Ordering::Relaxed),
        ])))
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::IRQ_STATS)),
        &(irq_stats as HandlerFn),
    );
    if let Err(e) = crate::messaging::set_idle_hook(run_job) {
        crate::error!("selftest: jobs from instance 0 cannot run: {e}");
    }
}

/// What instance `to` counted (for messages from `from`).
pub(super) struct PeerStats {
    pub(super) in_order: u64,
    pub(super) bad: u64,
    pub(super) rejected: u64,
    pub(super) spurious_ipis: u64,
    pub(super) throttles: u64,
    pub(super) jobs_done: u64,
    pub(super) job_result: u64,
}

pub(super) fn peer_stats_from(to: usize, from: usize) -> Result<PeerStats, String> {
    let reply = call_patiently(
        iid(to),
        mk_wire::Kind::User(user::STATS),
        words_payload(&[from as u64]),
    )
    .map_err(|e| format!("stats call to instance {to}: {e:?}"))?;
    let w = payload_words(&reply.payload);
    if w.len() != 7 {
        return Err(format!("stats reply of {} words", w.len()));
    }
    Ok(PeerStats {
        in_order: w[0],
        bad: w[1],
        rejected: w[2],
        spurious_ipis: w[3],
        throttles: w[4],
        jobs_done: w[5],
        job_result: w[6],
    })
}

/// What instance `to` counted of this instance's messages.
pub(super) fn peer_stats(to: usize) -> Result<PeerStats, String> {
    peer_stats_from(to, crate::instance::id().index())
}

/// Asks instance `to` to run a job; returns its jobs-done count from before.
pub(super) fn start_job(to: usize, kind: u64, arg: u64) -> Result<u64, String> {
    let before = peer_stats(to)?.jobs_done;
    call_patiently(
        iid(to),
        mk_wire::Kind::User(user::JOB),
        words_payload(&[kind, arg]),
    )
    .map_err(|e| format!("job call to instance {to}: {e:?}"))?;
    Ok(before)
}

/// Waits (draining our inbox) until instance `to` finished the job started after `before`.
pub(super) fn wait_job(to: usize, before: u64, timeout_ms: u64) -> Result<PeerStats, String> {
    let deadline = crate::arch::tsc::read() + timeout_ms * crate::arch::tsc::ticks_per_ms();
    loop {
        let s = peer_stats(to)?;
        if s.jobs_done > before {
            return Ok(s);
        }
        if crate::arch::tsc::read() > deadline {
            return Err(format!(
                "instance {to} did not finish its job in {timeout_ms} ms"
            ));
        }
        for _ in 0..100 {
            crate::messaging::poll();
        }
    }
}

pub(super) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Waits (bounded) until instance `id` has filled report `slot`.
pub(super) fn wait_report(id: usize, slot: usize) -> Result<u64, String> {
    let deadline = crate::arch::tsc::read() + 5000 * crate::arch::tsc::ticks_per_ms();
    loop {
        if let Some(v) = crate::shared::region::read_report(iid(id), slot) {
            return Ok(v);
        }
        if crate::arch::tsc::read() > deadline {
            return Err(format!(
                "instance {id} did not report slot {slot} within 5 s"
            ));
        }
        core::hint::spin_loop();
    }
}

/// The word written at physical address `pa` by `fill_check`.
fn fill_pattern(pa: u64) -> u64 {
    pa.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

/// Job: allocates the frames of `[start, start + mib MiB)` from this instance's frame allocator
/// (they must be free in it), writes every word, reads every word back, frees the frames.
/// Returns the words found right (0 if the frames could not be allocated).
fn fill_check(arg: u64) -> u64 {
    use crate::memory::frames;
    let start = arg & 0xFFFF_FFFF_FFFF;
    let len = (arg >> 48) << 20;
    let Ok(mut owned) = frames::OwnedFrames::take_range(start, len / 4096) else {
        crate::error!("fill_check: {start:#x}+{len:#x} is not free here");
        return 0;
    };
    let mem = owned.words_mut();
    // In blocks, draining the mailboxes between them: this takes a while where memory-bound
    // code is slow (nested KVM), and the instance must keep answering meanwhile.
    const BLOCK: usize = 8192;
    for (b, block) in mem.chunks_mut(BLOCK).enumerate() {
        for (i, w) in block.iter_mut().enumerate() {
            *w = fill_pattern(start + 8 * (b * BLOCK + i) as u64);
        }
        messaging::poll();
    }
    let mut right = 0;
    for (b, block) in mem.chunks(BLOCK).enumerate() {
        right += block
            .iter()
            .enumerate()
            .filter(|&(i, &w)| w == fill_pattern(start + 8 * (b * BLOCK + i) as u64))
            .count() as u64;
        messaging::poll();
    }
    drop(owned);
    right
}

/// Report word where `probe_fault` leaves the faulting address (u64::MAX: no fault).
pub(super) const REPORT_PROBE: usize = 3;

/// Job: reads physical address `pa` through this instance's physical map, expecting a page
/// fault; reports CR2 (or u64::MAX if the read succeeded) and goes back to serving.
fn probe_fault(pa: u64) -> u64 {
    let virt = crate::memory::frames::phys_to_virt(pa);
    crate::arch::interrupts::expect_page_fault(virt, |cr2, _| {
        region::report(REPORT_PROBE, cr2);
        crate::info!("probe: reading memory given away faulted at {cr2:#x}");
        idle()
    });
    match crate::memory::read_unmapped(virt) {
        Ok(v) => crate::error!("probe: read {v:#x} from memory this instance gave away"),
        Err(e) => crate::error!("probe: memory this instance gave away: {e}"),
    }
    region::report(REPORT_PROBE, u64::MAX);
    0
}

/// Job argument of `stream_among`: N in the low 48 bits, the number of instances above.
pub(super) fn stream_among_arg(n: u64, instances: usize) -> u64 {
    (n & ((1 << 48) - 1)) | ((instances as u64) << 48)
}

/// Sends N SINK messages to every other instance below the given count, interleaved, draining
/// our own inbox as we go. Returns how many were sent.
pub(super) fn stream_among(arg: u64) -> u64 {
    let n = arg & ((1 << 48) - 1);
    let count = (arg >> 48) as usize;
    let me = crate::instance::id().index();
    let msg = sink_message(1);
    let mut sent = 0;
    for _ in 0..n {
        for to in (0..count).filter(|&to| to != me) {
            match messaging::send_within(iid(to), &msg, 5000) {
                Ok(()) => sent += 1,
                Err(e) => {
                    crate::error!("stream to instance {to}: {e:?}");
                    return sent;
                }
            }
        }
        messaging::poll();
    }
    sent
}
