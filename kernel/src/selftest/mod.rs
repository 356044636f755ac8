//! In-kernel test scenarios, compiled in with the `qemu-tests` feature and chosen at boot by the
//! harness through the fw_cfg file `opt/multikernel/tests`: a space-separated list of
//! `name[=argument]`. Several cases share one boot (boots are slow under nested KVM); each
//! stands alone and reports on serial, in the form the harness parses:
//!
//! ```text
//! TEST <name> PASS
//! TEST <name> FAIL: <reason>
//! TESTS DONE
//! ```
//!
//! A case that ends the boot by design (the expected page fault) must come last.

#![forbid(unsafe_code)]

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{apic, interrupts, pit};
use crate::memory::{self, frames};
use crate::messaging::call_patiently;
use crate::platform::acpi::Platform;
use crate::platform::qemu::{self, ExitCode};
use crate::println;
use crate::services::bench::{payload_words, words_payload};

mod bench;
mod machine;
mod services;
mod start;

static ANY_FAILED: AtomicBool = AtomicBool::new(false);

type Outcome = Result<(), String>;

pub fn run(platform: &Platform, list: Option<String>) -> ! {
    let Some(list) = list else {
        println!("TEST harness FAIL: no fw_cfg file opt/multikernel/tests");
        qemu::exit(ExitCode::Failure);
    };
    register_test_handlers();
    for spec in list.split_whitespace() {
        let (name, arg) = spec.split_once('=').unwrap_or((spec, ""));
        let outcome = match name {
            "madt_cpus" => madt_cpus(platform, arg),
            "apic_mode" => apic_mode(arg),
            "breakpoint" => breakpoint(),
            "heap_stress" => heap_stress(),
            "frames_unique" => frames_unique(),
            "timer_rate" => timer_rate(),
            "ipi_self" => ipi_self(),
            "ioapic_rtc" => ioapic_rtc(platform),
            "plan_rejected" => plan_rejected(),
            "instances" => instances(arg),
            "instance_cpus" => instance_cpus(arg),
            "local_cpus" => local_cpus(arg),
            "isolation" => isolation(),
            "memory_accounting" => memory_accounting(),
            "ownership" => ownership(),
            "msg_ping" => msg_ping(arg),
            "msg_order" => msg_order(arg),
            "msg_reject" => msg_reject(),
            "msg_flood" => msg_flood(arg),
            "telemetry_shared" => telemetry_shared(),
            "msg_ping_all" => msg_ping_all(arg),
            "msg_stress" => msg_stress(arg),
            "msg_busy" => msg_busy(),
            "msg_bulk" => msg_bulk(arg),
            "bench_ipi" => bench::bench_ipi(arg),
            "bench_rtt" => bench::bench_rtt(arg),
            "bench_tput" => bench::bench_tput(arg),
            "bench_all" => bench::bench_all(arg),
            "bench_boot" => bench::bench_boot(),
            "bench_ops" => bench::bench_ops(arg),
            // The operator's shell, driven by the harness over COM1: it never returns.
            "shell" => {
                crate::shell::start();
                crate::messaging::serve_forever()
            }
            "query" => services::query(),
            "heartbeats" => services::heartbeats(),
            "crash" => services::crash(arg),
            "shutdown" => services::shutdown(arg),
            "respawn" => services::respawn(arg),
            "cpu_hotplug" => services::cpu_hotplug(),
            "mem_hotplug" => services::mem_hotplug(),
            "irq_forwarding" => services::irq_forwarding(arg),
            "serial_irq" => services::serial_irq(arg),
            "storm" => services::storm(arg),
            "doorbell_always" => {
                crate::messaging::set_doorbell_mode(mk_mailbox::DoorbellMode::Always);
                Ok(())
            }
            "start_wait" => start::start_wait(arg),
            "slow_start" => start::slow_start(arg),
            "start_adopted" => start::start_adopted(arg),
            "start_gave_up" => start::start_gave_up(arg),
            "above_4g" => machine::above_4g(arg),
            "cpus_grouped" => machine::cpus_grouped(arg),
            "apic_ids" => machine::apic_ids(platform, arg),
            "numa_nodes" => machine::numa_placement(platform, arg),
            "page_fault" => page_fault(),
            "panic" => panic!("deliberate panic requested by the test harness"),
            _ => Err(format!("unknown test case '{name}'")),
        };
        report(name, outcome);
    }
    finish()
}

fn report(name: &str, outcome: Outcome) {
    match outcome {
        Ok(()) => println!("TEST {name} PASS"),
        Err(reason) => {
            ANY_FAILED.store(true, Ordering::SeqCst);
            println!("TEST {name} FAIL: {reason}");
        }
    }
}

fn finish() -> ! {
    println!("TESTS DONE");
    if ANY_FAILED.load(Ordering::SeqCst) {
        qemu::exit(ExitCode::Failure)
    } else {
        qemu::exit(ExitCode::Success)
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg()) }
}

/// The MADT lists exactly as many enabled CPUs as QEMU's `-smp`.
fn madt_cpus(platform: &Platform, expected: &str) -> Outcome {
    let expected: usize = expected
        .parse()
        .map_err(|_| format!("bad argument '{expected}'"))?;
    let found = platform.enabled_cpus().count();
    let ids: Vec<u32> = platform.enabled_cpus().map(|p| p.apic_id).collect();
    println!("madt_cpus: {found} enabled CPUs, APIC IDs {ids:?}");
    ensure(found == expected, || {
        format!("MADT lists {found} CPUs, expected {expected}")
    })?;
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    ensure(unique.len() == ids.len(), || {
        format!("duplicate APIC IDs {ids:?}")
    })
}

/// The local APIC runs in the mode the CPU supports: x2APIC under KVM, xAPIC under TCG.
fn apic_mode(expected: &str) -> Outcome {
    let mode = apic::mode().ok_or("local APIC not initialised")?;
    let want = match expected {
        "x2apic" => apic::Mode::X2Apic,
        "xapic" => apic::Mode::XApic,
        other => return Err(format!("bad argument '{other}'")),
    };
    ensure(mode == want, || {
        format!(
            "local APIC in {} mode, expected {}",
            mode.name(),
            want.name()
        )
    })
}

/// `int3` is reported and execution continues after it.
fn breakpoint() -> Outcome {
    let before = interrupts::BREAKPOINTS.load(Ordering::SeqCst);
    x86_64::instructions::interrupts::int3();
    let after = interrupts::BREAKPOINTS.load(Ordering::SeqCst);
    ensure(after == before + 1, || {
        format!("breakpoint count went from {before} to {after}")
    })
}

/// Many allocations of many sizes, each filled with its own pattern, freed in a scrambled order
/// and reused; every byte is checked before it is freed.
fn heap_stress() -> Outcome {
    let (used_before, _) = memory::heap::usage();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..4u64 {
        let mut blocks: Vec<(u8, Vec<u8>)> = Vec::new();
        for i in 0..2000u64 {
            let size = match next() % 10 {
                0 => (next() % 65536) as usize + 1,
                1..=3 => (next() % 4096) as usize + 1,
                _ => (next() % 256) as usize + 1,
            };
            let tag = (i ^ round) as u8;
            blocks.push((tag, vec![tag; size]));
            if next() % 3 == 0 && !blocks.is_empty() {
                let victim = (next() as usize) % blocks.len();
                let (tag, block) = blocks.swap_remove(victim);
                check_block(tag, &block)?;
            }
        }
        while !blocks.is_empty() {
            let victim = (next() as usize) % blocks.len();
            let (tag, block) = blocks.swap_remove(victim);
            check_block(tag, &block)?;
        }
    }
    let big = vec![0xA5u8; 2 * 1024 * 1024];
    check_block(0xA5, &big)?;
    drop(big);
    let (used_after, _) = memory::heap::usage();
    ensure(used_after == used_before, || {
        format!("heap use went from {used_before} to {used_after} bytes: a leak")
    })
}

fn check_block(tag: u8, block: &[u8]) -> Outcome {
    match block.iter().position(|&b| b != tag) {
        None => Ok(()),
        Some(at) => Err(format!(
            "heap block of {} bytes corrupted at offset {at}: {:#x} instead of {tag:#x}",
            block.len(),
            block[at]
        )),
    }
}

/// The frame allocator never hands out one frame twice: allocate many frames, stamp each with
/// its own address through the physical map, check every stamp, then free them all.
fn frames_unique() -> Outcome {
    let (free_before, _) = frames::counts();
    let want = free_before.min(16_384) as usize;
    let mut held = Vec::with_capacity(want);
    for _ in 0..want {
        held.push(frames::OwnedFrames::take_one().ok_or("allocator ran dry early")?);
    }
    let got: Vec<u64> = held.iter().map(frames::OwnedFrames::phys).collect();
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    ensure(unique.len() == got.len(), || {
        format!(
            "{} duplicate frames among {}",
            got.len() - unique.len(),
            got.len()
        )
    })?;
    ensure(got.iter().all(|&a| a >= frames::LOW_MEMORY_END), || {
        "a frame below 1 MiB was handed out".into()
    })?;
    for f in &mut held {
        let addr = f.phys();
        f.words_mut()[0] = addr;
    }
    for f in &held {
        let (addr, stamp) = (f.phys(), f.words()[0]);
        ensure(stamp == addr, || {
            format!("frame {addr:#x} holds stamp {stamp:#x}: shared with another frame")
        })?;
    }
    for f in held {
        let addr = f.phys();
        f.release().map_err(|e| format!("freeing {addr:#x}: {e}"))?;
    }
    let double = frames::free(x86_64::structures::paging::PhysFrame::containing_address(
        x86_64::PhysAddr::new(got[0]),
    ));
    ensure(double.is_err(), || "a double free was accepted".into())?;
    let (free_after, _) = frames::counts();
    println!("frames_unique: {want} frames allocated, all distinct, all returned");
    ensure(free_after == free_before, || {
        format!("free frames {free_before} before, {free_after} after")
    })
}

/// The LAPIC timer ticks at its calibrated rate within 10 %, measured against the PIT.
fn timer_rate() -> Outcome {
    let rate = apic::tick_rate();
    ensure(rate > 0, || "the timer is not running".into())?;
    let this = crate::arch::cpu::current();
    const WINDOW_MS: u64 = 1000;
    let start = this.ticks.load(Ordering::SeqCst);
    for _ in 0..WINDOW_MS / 50 {
        pit::wait_micros(50_000);
    }
    let ticks = this.ticks.load(Ordering::SeqCst) - start;
    let expected = u64::from(rate) * WINDOW_MS / 1000;
    println!("timer_rate: {ticks} ticks in {WINDOW_MS} ms of PIT time, expected {expected}");
    ensure(
        ticks * 10 >= expected * 9 && ticks * 10 <= expected * 11,
        || format!("{ticks} ticks in {WINDOW_MS} ms, expected {expected} +/- 10 %"),
    )
}

/// A fixed IPI to our own APIC ID through the ICR arrives on the message vector: exercises the
/// x2APIC MSR path under KVM and the xAPIC MMIO path (with its destination-field fix) under TCG.
fn ipi_self() -> Outcome {
    let this = crate::arch::cpu::current();
    let count = || interrupts::MESSAGE_IPIS.load(Ordering::SeqCst);
    let before = count();
    const SENT: u64 = 10;
    // One at a time: IPIs of one vector that are pending together coalesce into one (the IRR
    // has one bit per vector), so each must land before the next is sent.
    for i in 1..=SENT {
        this.with_lapic(|l| l.send_ipi(crate::arch::vectors::MESSAGE_IPI, this.apic_id))
            .ok_or("no local APIC")?;
        let deadline = crate::arch::tsc::read() + 100 * crate::arch::tsc::ticks_per_ms();
        while count() < before + i && crate::arch::tsc::read() < deadline {
            core::hint::spin_loop();
        }
    }
    let got = count() - before;
    ensure(got == SENT, || format!("{got} of {SENT} self-IPIs arrived"))
}

/// The RTC's periodic interrupt, routed through the IO APIC to this CPU, arrives; masked, it
/// stops; unmasked, it comes back.
fn ioapic_rtc(platform: &Platform) -> Outcome {
    use crate::arch::ioapic;
    use crate::platform::rtc;
    let (gsi, _flags) = platform.isa_irq_to_gsi(rtc::ISA_IRQ);
    let line = gsi as usize;
    let count = || interrupts::IRQ_COUNTS[line].load(Ordering::SeqCst);
    interrupts::set_irq_handler(line, |_| rtc::acknowledge())?;
    let vector = crate::arch::vectors::IRQ_BASE + gsi as u8;
    ioapic::route(gsi, vector, crate::arch::cpu::current().apic_id, false)?;
    rtc::start_periodic(6); // 1024 Hz
    let wait = |ms: u64| {
        for _ in 0..ms / 10 {
            pit::wait_micros(10_000);
        }
    };
    let c0 = count();
    wait(200);
    let c1 = count();
    ioapic::mask(gsi)?;
    wait(20); // let an interrupt in flight land
    let c2 = count();
    wait(200);
    let c3 = count();
    ioapic::unmask(gsi)?;
    rtc::acknowledge(); // the RTC holds its line until register C is read
    wait(200);
    let c4 = count();
    rtc::stop_periodic();
    ioapic::mask(gsi)?;
    println!(
        "ioapic_rtc: GSI {gsi}: {} in 200 ms routed, {} while masked, {} after unmask",
        c1 - c0,
        c3 - c2,
        c4 - c3
    );
    ensure(c1 - c0 >= 20, || {
        format!("only {} RTC interrupts in 200 ms", c1 - c0)
    })?;
    ensure(c3 == c2, || {
        format!("{} interrupts arrived while masked", c3 - c2)
    })?;
    ensure(c4 - c3 >= 20, || {
        format!("only {} interrupts after unmasking", c4 - c3)
    })
}

// ---- Instances ------------------------------------------------------------------------------

/// A static each instance bumps in its own copy of the kernel: by `1000 * id + 1`. If two
/// instances shared `.data`, one would see the other's increment.
static PROBE_COUNTER: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Physical address the isolation probe reads: in partition 0 in every plan (partition 0 starts
/// at 1 MiB), so in no other instance's memory.
const PROBE_PHYS_IN_0: u64 = 0x20_0000;

/// Report slots every instance fills in the shared region for instance 0 to check.
mod report {
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
    crate::arch::tsc::spin_micros(200_000);
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

// ---- Messaging -----------------------------------------------------------------------------

/// USER subtypes the messaging tests use.
mod user {
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
    /// (error `NoSuchResource` if it is not one of this instance's CPUs).
    pub const CPU_TICKS: u16 = 8;
    /// Call: payload = an IRQ line; reply = the interrupts of that line this instance took
    /// directly, the IRQ_FORWARD deliveries of it it received, and the bytes (and their sum)
    /// it took from COM2 (4 x u64).
    pub const IRQ_STATS: u16 = 9;
}

/// Jobs an instance runs from its serve loop when instance 0 asks.
mod job {
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
}

const MAX_I: usize = mk_shared::MAX_INSTANCES;
type Counters = [core::sync::atomic::AtomicU64; MAX_I];
/// Receiving side, per sender: next expected sequence, messages in order, bad ones.
static SEQ_NEXT: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
static SEQ_OK: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
static SEQ_BAD: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
/// Sending side, per receiver: next sequence number to send.
static SEQ_SEND: Counters = [const { core::sync::atomic::AtomicU64::new(0) }; MAX_I];
static JOB: spin::Mutex<Option<(u64, u64)>> = spin::Mutex::new(None);
static JOBS_DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static JOB_RESULT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Word `i` of the pattern that follows sequence number `seq`. Words, not bytes: under an
/// emulating hypervisor every instruction costs, and the check runs for every message.
fn pattern(seq: u64, i: usize) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn user_payload(bytes: &[u8]) -> mk_wire::Payload {
    mk_wire::Payload::User(mk_wire::UserPayload::new(bytes).expect("fits in a message"))
}

/// The next sequenced message from this instance to `to`.
fn sequenced_message(to: usize) -> mk_wire::Message {
    let seq = SEQ_SEND[to].fetch_add(1, Ordering::SeqCst);
    let mut bytes = [0u8; 208];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, w) in bytes[8..].as_chunks_mut::<8>().0.iter_mut().enumerate() {
        *w = pattern(seq, i).to_le_bytes();
    }
    mk_wire::Message::request(
        crate::instance::id() as u16,
        mk_wire::Kind::User(user::SEQUENCED),
        seq + 1,
        user_payload(&bytes),
    )
}

/// Sends `msg` to `to`, draining our own inbox while the peer's is full; gives up after 5 s.
fn send_patiently(to: usize, msg: &mk_wire::Message) -> Result<(), String> {
    crate::messaging::send_within(to, msg, 5000).map_err(|e| {
        let me = crate::instance::id() as usize;
        let stats = crate::shared::region::get()
            .and_then(|r| r.mailbox().ok())
            .map(|m| (m.stats(me, to), m.stats(to, me)));
        format!("to instance {to}: {e:?}; channel stats {stats:?}")
    })
}

/// The other instances that are running (stopped and dead ones are left out).
fn others() -> impl Iterator<Item = usize> {
    let me = crate::instance::id() as usize;
    let region = crate::shared::region::get();
    let n = region.map_or(0, |r| r.instance_count());
    (0..n).filter(move |&i| {
        i != me
            && region
                .and_then(|r| r.instance(i).ok())
                .map(|inst| inst.state())
                == Some(Ok(mk_shared::InstanceState::Running))
    })
}

/// Sends `n` sequenced messages to every other instance, interleaved. Returns how many went.
///
/// Drains its own inbox as it goes (every round, and whenever a peer's mailbox is full): the
/// peers stream to us at the same time, and a sender that only drains when it is itself
/// blocked starves a peer whose mailbox to us is full while ours to it never fills.
fn stream_all(n: u64) -> Result<u64, String> {
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
fn ping_all(n: u64) -> u64 {
    let mut ok = 0;
    for to in others() {
        for i in 0..n {
            let ping = mk_wire::PingPayload {
                nonce: i,
                sent_at: to as u64,
            };
            let payload = mk_wire::Payload::Ping(ping);
            if let Ok(reply) = crate::messaging::call(to, mk_wire::Kind::Ping, payload, 2000)
                && reply.payload == payload
            {
                ok += 1;
            }
        }
    }
    ok
}

/// The serve loop's hook: runs a job instance 0 asked for.
fn run_job() {
    let Some((kind, arg)) = JOB.lock().take() else {
        return;
    };
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
        job::STREAM_AMONG => bench::stream_among(arg),
        job::FILL_CHECK => services::fill_check(arg),
        job::PROBE_FAULT => services::probe_fault(arg),
        job::HANDOFF_BEGIN => crate::shared::region::get().map_or(0, |r| {
            let chunk = mk_shared::Resource::memory_at(arg & 0xFFFF_FFFF_FFFF);
            let me = crate::instance::id() as usize;
            r.begin_transfer(chunk, me, (arg >> 48) as usize)
                .map_or(0, |g| u64::from(g) + 1)
        }),
        job::BALANCE_LINE => {
            match crate::services::irq::balance((arg & 0xFFFF_FFFF) as usize, (arg >> 32) as usize)
            {
                Ok(()) => 0,
                Err(s) => u64::from(s.code()) + 1,
            }
        }
        _ => 0,
    };
    JOB_RESULT.store(result, Ordering::SeqCst);
    JOBS_DONE.fetch_add(1, Ordering::SeqCst);
}

/// The receiving side of the messaging tests, in every instance: per-sender order and
/// contents of sequenced messages, counters on request, jobs.
fn register_test_handlers() {
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
        if m.sender == 0 {
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
            .map(|c| c.ticks.load(Ordering::Relaxed));
        Some(match ticks {
            Some(t) => Reply::ok(words_payload(&[t])),
            None => Reply::error(mk_wire::Status::NoSuchResource),
        })
    }
    let _ = d.registry().register(
        HandlerKey::Kind(Kind::User(user::CPU_TICKS)),
        &(cpu_ticks as HandlerFn),
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
struct PeerStats {
    in_order: u64,
    bad: u64,
    rejected: u64,
    spurious_ipis: u64,
    throttles: u64,
    jobs_done: u64,
    job_result: u64,
}

fn peer_stats_from(to: usize, from: usize) -> Result<PeerStats, String> {
    let reply = call_patiently(
        to,
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
fn peer_stats(to: usize) -> Result<PeerStats, String> {
    peer_stats_from(to, crate::instance::id() as usize)
}

/// Asks instance `to` to run a job; returns its jobs-done count from before.
fn start_job(to: usize, kind: u64, arg: u64) -> Result<u64, String> {
    let before = peer_stats(to)?.jobs_done;
    call_patiently(
        to,
        mk_wire::Kind::User(user::JOB),
        words_payload(&[kind, arg]),
    )
    .map_err(|e| format!("job call to instance {to}: {e:?}"))?;
    Ok(before)
}

/// Waits (draining our inbox) until instance `to` finished the job started after `before`.
fn wait_job(to: usize, before: u64, timeout_ms: u64) -> Result<PeerStats, String> {
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

/// `msg_ping_all=N`: every instance pings every other instance N times and gets every reply.
fn msg_ping_all(arg: &str) -> Outcome {
    let n: u64 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
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
fn msg_stress(arg: &str) -> Outcome {
    let n: u64 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
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
                let st = matrix.stats(a, b).map_err(|e| format!("{e:?}"))?;
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

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `msg_bulk=BYTES`: data larger than a message goes to instance 1 through shared pool pages;
/// the checksum it computes matches ours, and every pool page is free again afterwards.
fn msg_bulk(arg: &str) -> Outcome {
    let n: usize = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let data: Vec<u8> = (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let (pool, _) = crate::shared::region::pool().ok_or("no pool")?;
    let free_before = pool.free_pages();
    let start = crate::arch::tsc::read();
    let reply =
        crate::messaging::bulk::call_large(1, mk_wire::Kind::User(user::BULK), &data, 60_000)
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
fn msg_busy() -> Outcome {
    let before = peer_stats(1)?.in_order;
    let jobs = start_job(1, job::PAUSE, 300)?;
    let mut sent = 0u64;
    let busy = loop {
        let msg = sequenced_message(1);
        match crate::messaging::try_send(1, &msg) {
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
fn msg_ping(arg: &str) -> Outcome {
    let n: u64 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let plan = plan()?;
    for p in plan.partitions().skip(1) {
        let start = crate::arch::tsc::read();
        for i in 0..n {
            let ping = mk_wire::PingPayload {
                nonce: i ^ 0x5a5a,
                sent_at: i,
            };
            let reply = crate::messaging::call(
                p.index,
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
fn msg_order(arg: &str) -> Outcome {
    let n: u64 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
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
fn telemetry_shared() -> Outcome {
    let theirs = crate::shared::region::telemetry_row(1).ok_or("no telemetry table")?;
    let ours = crate::shared::region::telemetry_row(0).ok_or("no telemetry table")?;
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
fn msg_flood(arg: &str) -> Outcome {
    let n: u64 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
    let before = peer_stats(1)?;
    let target = crate::messaging::doorbell_cpu(1).ok_or("instance 1 has no CPU published")?;
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
    let reply = crate::messaging::call(1, mk_wire::Kind::Ping, mk_wire::Payload::Ping(ping), 2000)
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
fn msg_reject() -> Outcome {
    let rejected0 = peer_stats(1)?.rejected;
    let ping = mk_wire::Message::request(
        0,
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
        crate::messaging::send_slot(1, slot).map_err(|e| format!("{e:?}"))?;
    }
    let reply = crate::messaging::call(
        1,
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

fn plan() -> Result<&'static mk_plan::Plan, String> {
    crate::cpus::launch::PLAN
        .get()
        .map(|p| &**p)
        .ok_or_else(|| "no partition plan".into())
}

/// Waits (bounded) until instance `id` has filled report `slot`.
fn wait_report(id: usize, slot: usize) -> Result<u64, String> {
    let deadline = crate::arch::tsc::read() + 5000 * crate::arch::tsc::ticks_per_ms();
    loop {
        if let Some(v) = crate::shared::region::read_report(id, slot) {
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

/// The plan given at boot was rejected (with a logged reason) and the default plan runs.
fn plan_rejected() -> Outcome {
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
fn instances(expected: &str) -> Outcome {
    let expected: usize = expected
        .parse()
        .map_err(|_| format!("bad argument '{expected}'"))?;
    let plan = plan()?;
    ensure(plan.partition_count() == expected, || {
        format!("{} partitions, expected {expected}", plan.partition_count())
    })?;
    for p in plan.partitions() {
        let (state, _) = crate::shared::region::status(p.index);
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
fn local_cpus(arg: &str) -> Outcome {
    let n: u32 = arg.parse().map_err(|_| format!("bad argument '{arg}'"))?;
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
fn instance_cpus(arg: &str) -> Outcome {
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

/// Isolation: every other instance's read of instance 0's memory faulted at that address, and
/// the static each instance bumped in its copy shows only its own increment, here as there.
/// Then instance 0 checks that it no longer maps another instance's memory either.
fn isolation() -> Outcome {
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
fn ownership() -> Outcome {
    use mk_shared::{Owner, Resource};
    let plan = plan()?;
    let r = crate::shared::region::get().ok_or("no shared region")?;
    for p in plan.partitions() {
        for &apic in p.cpus {
            let o = r.owner(Resource::Cpu(apic)).map_err(|e| format!("{e:?}"))?;
            ensure(o == Owner::Owned(p.index), || {
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
                ensure(o == Owner::Owned(p.index), || {
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
        ensure(o == Owner::Owned(0), || format!("IRQ {gsi}: {o:?}"))?;
    }
    println!("ownership: CPUs, memory chunks and {irqs} IRQ lines each have their one owner");
    Ok(())
}

/// The instances' memory, the shared region and what instance 0 keeps in reserve add up to the
/// usable memory, with no overlap.
fn memory_accounting() -> Outcome {
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

const FAULT_ADDR: u64 = 0x0000_5a5a_0000_1238;

/// Touching an unmapped address is reported as a page fault with CR2 = that address. Ends the
/// boot (the fault continuation reports and finishes), so it must be the last case.
fn page_fault() -> Outcome {
    ensure(memory::paging::translate(FAULT_ADDR).is_none(), || {
        format!("{FAULT_ADDR:#x} is mapped; pick another address")
    })?;
    interrupts::expect_page_fault(FAULT_ADDR, page_fault_taken);
    // The fault handler recognises the announced address and continues in `page_fault_taken`,
    // which never returns here.
    let value = memory::read_unmapped(FAULT_ADDR)?;
    Err(format!(
        "read {value:#x} from an unmapped address without a fault"
    ))
}

fn page_fault_taken(cr2: u64, code: u64) -> ! {
    // Not-present read fault from ring 0: error code bits P=0, W=0, U=0.
    let outcome = ensure(cr2 == FAULT_ADDR, || {
        format!("CR2 {cr2:#x}, expected {FAULT_ADDR:#x}")
    })
    .and_then(|()| {
        ensure(code & 0b111 == 0, || {
            format!("error code {code:#x}, expected a not-present kernel read")
        })
    });
    println!("page_fault: CR2 {cr2:#x}, error code {code:#x}");
    report("page_fault", outcome);
    finish()
}
