//! The shell's commands. Each checks what it can before acting (the instance exists and runs,
//! the resource is where the command says) and reports the outcome in one or a few lines. The
//! moves go through the same brokers the services use (`services::cpu::move_cpu`,
//! `services::memory::move_memory`, `services::irq::balance`), which move a resource with
//! compare-exchanges on the ownership table and roll back on any refusal: a command that fails
//! leaves every resource with exactly one owner.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mk_shared::{InstanceState, Resource};
use mk_shell::{COMMANDS, Command, format_size};
use mk_wire::{Kind, Payload, PingPayload, ShutdownFlags, Status};

use crate::arch::tsc;
use crate::instance::InstanceId;
use crate::messaging::{self, CallFailure, SendError};
use crate::println;
use crate::services::moves::MoveError;
use crate::services::{self, heartbeat, lifecycle};
use crate::shared::region;

type Outcome = Result<(), String>;

pub fn run(command: Command) {
    let outcome = match command {
        Command::Help(topic) => {
            help(topic);
            Ok(())
        }
        Command::Instances => instances(),
        Command::Stats => stats(),
        Command::Ping { instance, count } => ping(instance, count),
        Command::CpuMove { apic, to } => cpu_move(apic, to),
        Command::MemMove { bytes, from, to } => mem_move(bytes, from, to),
        Command::IrqRoute { line, to } => irq_route(line, to),
        Command::IrqMask { line, mask } => irq_mask(line, mask),
        Command::Shutdown { instance } => shutdown(instance),
        Command::Respawn { instance } => respawn(instance),
        Command::Crash { instance } => crash(instance),
        Command::Bench { rounds, instance } => bench(rounds, instance),
        Command::Ps => ps(),
        Command::Spawn {
            instance,
            line,
            grants,
        } => spawn(instance, &line, &grants),
        Command::Caps { instance, task } => caps(instance, task),
        Command::Kill { instance, task } => kill(instance, task),
        Command::Programs => programs(),
    };
    if let Err(message) = outcome {
        println!("error: {message}");
    }
}

fn help(topic: Option<&'static mk_shell::CommandInfo>) {
    match topic {
        Some(c) => {
            println!("usage: {}", c.usage);
            println!("  {}", c.about);
        }
        None => {
            println!("commands:");
            for c in COMMANDS {
                if c.usage.len() < 28 {
                    println!("  {:<28}{}", c.usage, c.about);
                } else {
                    println!("  {}", c.usage);
                    println!("  {:<28}{}", "", c.about);
                }
            }
            println!("keys: arrows (history, cursor), Backspace, Delete, Home/End, Ctrl-C, Ctrl-U");
        }
    }
}

fn shared() -> Result<&'static mk_shared::SharedRegion<'static>, String> {
    region::get().ok_or_else(|| String::from("no other instances run (single-instance boot)"))
}

fn state_of(k: InstanceId) -> Result<InstanceState, String> {
    let r = shared()?;
    let inst = r.instance(k).map_err(|_| {
        format!(
            "no instance {k} (instances are 0..{})",
            r.instance_count().saturating_sub(1)
        )
    })?;
    inst.state()
        .map_err(|e| format!("instance {k}'s state word is corrupt: {e:?}"))
}

/// Instance `k` exists, is not instance 0, and runs.
fn running_peer(k: InstanceId, what: &str) -> Outcome {
    if k.is_supervisor() {
        return Err(format!(
            "instance 0 is this shell's own instance: cannot {what} it"
        ));
    }
    match state_of(k)? {
        InstanceState::Running => Ok(()),
        s => Err(format!(
            "instance {k} is {}, not running",
            InstanceState::name(s)
        )),
    }
}

fn ms_since(t: u64) -> u64 {
    tsc::read().saturating_sub(t) / tsc::ticks_per_ms()
}

/// The programs of this instance's ramdisk: name, size, and whether the loader would take it.
fn programs() -> Outcome {
    let archive = crate::memory::ramdisk::archive()
        .ok_or_else(|| String::from("no ramdisk archive (the image carries no programs)"))?;
    println!(
        "{:<16}{:>10}  ELF  ({} KiB archive)",
        "program",
        "size",
        archive.len() >> 10
    );
    let mut count = 0;
    for name in crate::memory::ramdisk::programs() {
        let elf = crate::memory::ramdisk::program(name).unwrap_or(&[]);
        let check = match mk_elf::Elf::parse(elf) {
            Ok(_) => String::from("ok"),
            Err(e) => format!("{e:?}"),
        };
        println!("{:<16}{:>10}  {check}", name, format_size(elf.len() as u64));
        count += 1;
    }
    println!("{count} program(s)");
    if let Some(plan) = crate::memory::ramdisk::file(mk_ramdisk::PLAN_PATH) {
        println!(
            "and a partition plan: {}",
            core::str::from_utf8(plan).unwrap_or("(not UTF-8)").trim()
        );
    }
    Ok(())
}

fn instances() -> Outcome {
    let r = shared()?;
    println!(
        "{:<5}{:<9}{:<18}{:>10}{:>6}{:>10}{:>12}",
        "inst", "state", "CPUs (APIC IDs)", "memory", "node", "uptime", "last beat"
    );
    let plan = crate::cpus::launch::PLAN.get();
    for k in r.ids() {
        let Ok(inst) = r.instance(k) else { continue };
        let state = inst.state().map_or("corrupt", InstanceState::name);
        let holds = matches!(
            inst.state(),
            Ok(InstanceState::Running | InstanceState::Booting)
        );
        let (cpus, memory) = match inst.resources() {
            _ if !holds => (String::new(), String::from("-")),
            Ok(res) => (
                res.cpus()
                    .iter()
                    .map(|c| format!("{c}"))
                    .collect::<Vec<_>>()
                    .join(","),
                format!("{} MiB", res.total_bytes >> 20),
            ),
            Err(_) => (String::from("?"), String::from("?")),
        };
        let running = inst.state() == Ok(InstanceState::Running);
        let boot = if k.is_supervisor() {
            crate::boot::start::BOOT_TSC.get().map_or(0, |b| b.0)
        } else {
            inst.boot_tsc()
        };
        let uptime = if running && boot != 0 {
            format!(
                "{}.{} s",
                ms_since(boot) / 1000,
                ms_since(boot) % 1000 / 100
            )
        } else {
            String::from("-")
        };
        let beat = match (k.is_supervisor(), heartbeat::last_sign(k)) {
            (true, _) => String::from("(self)"),
            (_, Some(t)) if running => format!("{} ms ago", ms_since(t)),
            _ => String::from("-"),
        };
        let cpus = if cpus.is_empty() {
            String::from("-")
        } else {
            cpus
        };
        // The NUMA node the plan placed its memory on (0 without SRAT).
        let node = plan
            .and_then(|p| p.partition(k.index()))
            .map_or(String::from("-"), |p| format!("{}", p.node));
        println!("{k:<5}{state:<9}{cpus:<18}{memory:>10}{node:>6}{uptime:>10}{beat:>12}");
    }
    Ok(())
}

fn stats() -> Outcome {
    let r = shared()?;
    println!(
        "{:<10}{:>10}{:>10}{:>8}{:>8}{:>10}{:>8}{:>9}",
        "mailbox", "sent", "received", "full", "IPIs", "no-IPI", "calls", "timeouts"
    );
    for from in r.ids() {
        let Some(row) = region::telemetry_row(from) else {
            continue;
        };
        for to in r.ids().filter(|&to| to != from) {
            let Some(out) = row.get(to.index()) else {
                continue;
            };
            let received = region::telemetry_row(to)
                .and_then(|r| r.get(from.index()))
                .map_or(0, |t| t.received.load(Ordering::Relaxed));
            let sent = out.sent.load(Ordering::Relaxed);
            if sent == 0 && received == 0 {
                continue;
            }
            println!(
                "{:<10}{sent:>10}{received:>10}{:>8}{:>8}{:>10}{:>8}{:>9}",
                format!("{from} -> {to}"),
                out.busy.load(Ordering::Relaxed),
                out.ipis_sent.load(Ordering::Relaxed),
                out.ipis_suppressed.load(Ordering::Relaxed),
                out.calls_completed.load(Ordering::Relaxed),
                out.calls_timed_out.load(Ordering::Relaxed),
            );
        }
    }
    let (handled, rejected) = messaging::counters();
    println!("instance 0's dispatcher: {handled} handled, {rejected} rejected");
    println!(
        "instance 0's record: {} disagreement(s) with the shared tables (logged, not obeyed)",
        crate::shared::records::disagreements()
    );
    for lock in [r.console(), r.ioapic_lock()] {
        let s = lock.stats();
        println!(
            "shared {}: {} acquired, {} forced, {} stale unlocks, {} requeued, {} timed out, \
             {} repaired",
            lock.name().name(),
            s.acquired,
            s.forced,
            s.stale_unlocks,
            s.requeued,
            s.timed_out,
            s.repaired
        );
    }
    let mut head = alloc::format!("{:<6}", "ipc");
    for name in services::tasks::IPC_COUNTERS {
        head.push_str(&alloc::format!("{name:>9} "));
    }
    println!("{head}");
    for k in r.ids() {
        if k != crate::instance::id() && !matches!(state_of(k), Ok(InstanceState::Running)) {
            continue;
        }
        match services::tasks::ipc_stats(k) {
            Ok(c) => {
                let mut line = alloc::format!("{:<6}", alloc::format!("{k}"));
                for v in c {
                    line.push_str(&alloc::format!("{v:>9} "));
                }
                println!("{line}");
            }
            Err(e) => println!("{k}: {e}"),
        }
    }
    Ok(())
}

/// One PING call; its round trip in TSC ticks.
fn ping_once(k: InstanceId, nonce: u64) -> Result<u64, CallFailure> {
    let sent_at = tsc::read();
    let reply = messaging::call(
        k,
        Kind::Ping,
        Payload::Ping(PingPayload { nonce, sent_at }),
        1000,
    )?;
    let rtt = tsc::read().saturating_sub(sent_at);
    match reply.payload {
        Payload::Ping(p) if p.nonce == nonce && reply.status == Status::Ok => Ok(rtt),
        _ => Err(CallFailure::Send(SendError::Invalid)),
    }
}

fn micros(ticks: u64) -> String {
    let ns = mk_bench::scale(ticks, 1_000_000, tsc::ticks_per_ms());
    format!("{}.{:03} us", ns / 1000, ns % 1000)
}

fn ping(k: InstanceId, count: u32) -> Outcome {
    running_peer(k, "ping")?;
    let mut rtts = Vec::new();
    for seq in 0..u64::from(count) {
        match ping_once(k, seq) {
            Ok(rtt) => {
                println!("reply from instance {k}: seq={seq} time={}", micros(rtt));
                rtts.push(rtt);
            }
            Err(e) => println!("no reply from instance {k}: seq={seq}: {}", call_failure(e)),
        }
    }
    let answered = rtts.len();
    match mk_bench::Summary::of(&mut rtts) {
        Some(s) => println!(
            "{count} sent, {answered} answered; min {} median {} max {}",
            micros(s.min),
            micros(s.median),
            micros(s.max)
        ),
        None => println!("{count} sent, 0 answered"),
    }
    if answered == count as usize {
        Ok(())
    } else {
        Err(format!(
            "{} of {count} pings unanswered",
            count as usize - answered
        ))
    }
}

fn call_failure(e: CallFailure) -> String {
    match e {
        CallFailure::Timeout => String::from("no answer in time"),
        CallFailure::Send(SendError::NotRunning(k)) => format!("instance {k} is not running"),
        CallFailure::Send(e) => format!("send failed: {e:?}"),
    }
}

fn move_error(e: MoveError) -> String {
    match e {
        MoveError::Refused(s) => format!("the giver refused ({s:?}); nothing moved"),
        MoveError::Call(c) => format!(
            "{}; the resource stays with its recorded owner",
            call_failure(c)
        ),
        MoveError::ReceiverRefused(s) => {
            format!("the receiver refused ({s:?}); the resource is held by instance 0")
        }
        MoveError::Table(e) => format!("the ownership table refused a step ({e:?})"),
        MoveError::Record(refusal) => format!("{refusal}; nothing moved"),
    }
}

/// Who holds `res` by instance 0's record (the shared table is only a hint), refusing with
/// a clear error when the word disagrees (someone else wrote it; logged and counted).
fn holder_of(res: Resource, what: &str) -> Result<InstanceId, String> {
    let r = shared()?;
    let entry = crate::shared::records::with(|l| l.entry(res))
        .ok_or_else(|| String::from("instance 0 keeps no record (single-instance boot)"))?
        .ok_or_else(|| format!("there is no {what}"))?;
    if let Some(to) = entry.moving_to {
        return Err(format!("{what} is being moved to instance {to}; try again"));
    }
    let holder = entry
        .holder
        .ok_or_else(|| format!("{what} is owned by no instance"))?;
    let word = r.owner(res);
    if let Some(Err(d)) = crate::shared::records::with(|l| l.check_word(res, word)) {
        crate::shared::records::note(&d, "the command is refused");
        return Err(format!(
            "{what}: the shared table disagrees with instance 0's record ({d}); nothing moved"
        ));
    }
    Ok(holder)
}

fn destination(to: InstanceId) -> Outcome {
    if to.is_supervisor() {
        return Ok(());
    }
    match state_of(to)? {
        InstanceState::Running => Ok(()),
        s => Err(format!(
            "instance {to} is {}, not running",
            InstanceState::name(s)
        )),
    }
}

fn cpu_move(apic: u32, to: InstanceId) -> Outcome {
    let what = format!("CPU {apic}");
    let from = holder_of(Resource::Cpu(apic), &what)?;
    if from == to {
        return Err(format!("{what} already belongs to instance {to}"));
    }
    destination(to)?;
    if !from.is_supervisor() {
        running_peer(from, "take a CPU from")?;
        let cpus = shared()?
            .instance(from)
            .ok()
            .and_then(|i| i.resources().ok())
            .map_or(0, |res| res.cpus().len());
        if cpus <= 1 {
            return Err(format!(
                "{what} is instance {from}'s last CPU; an instance keeps at least one"
            ));
        }
    }
    services::cpu::move_cpu(apic, from, to).map_err(move_error)?;
    println!("CPU {apic} moved from instance {from} to instance {to}");
    Ok(())
}

fn mem_move(bytes: u64, from: InstanceId, to: InstanceId) -> Outcome {
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    if from.is_supervisor() || to.is_supervisor() {
        return Err(String::from(
            "memory moves only between instances other than 0 (instance 0's allocator holds the shared region and the images)",
        ));
    }
    if from == to {
        return Err(format!("instance {from} cannot give memory to itself"));
    }
    if !bytes.is_multiple_of(chunk) {
        return Err(format!(
            "{} is not a multiple of {} (the ownership table's chunk)",
            format_size(bytes),
            format_size(chunk)
        ));
    }
    running_peer(from, "take memory from")?;
    destination(to)?;
    // The chunks `from` holds by instance 0's record (never the shared table, which any
    // instance can write), highest first; candidate ranges are runs of consecutive chunks. The
    // move checks each chunk's word against the record again.
    let mut owned: Vec<u32> = crate::shared::records::with(|l| l.held_by(from))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|res| match res {
            Resource::Memory(c) => Some(c),
            _ => None,
        })
        .collect();
    owned.sort_unstable_by(|a, b| b.cmp(a));
    let need = (bytes / chunk) as usize;
    let mut tried = 0;
    let mut last = None;
    for window in owned.windows(need) {
        let consecutive = window.windows(2).all(|w| w[0] == w[1] + 1);
        if !consecutive {
            continue;
        }
        let start = u64::from(window[need - 1]) * chunk;
        match services::memory::move_memory(start, bytes, from, to) {
            Ok(()) => {
                println!(
                    "moved {} at {start:#x} from instance {from} to instance {to}",
                    format_size(bytes)
                );
                return Ok(());
            }
            // In use there: try a lower range, a few times.
            Err(MoveError::Refused(Status::Busy)) if tried < 4 => {
                tried += 1;
                last = Some(MoveError::Refused(Status::Busy));
            }
            Err(e) => return Err(move_error(e)),
        }
    }
    Err(match last {
        Some(e) => format!("every range tried was in use: {}", move_error(e)),
        None => format!(
            "instance {from} owns no {} of consecutive 2 MiB chunks",
            format_size(bytes)
        ),
    })
}

fn irq_route(line: u32, to: InstanceId) -> Outcome {
    let what = format!("IRQ line {line}");
    let owner = holder_of(Resource::Irq(line), &what)?;
    if owner == to {
        return Err(format!("{what} already belongs to instance {to}"));
    }
    if !owner.is_supervisor() {
        return Err(format!(
            "{what} belongs to instance {owner}: only its owner can hand it on, and the shell runs in instance 0"
        ));
    }
    running_peer(to, "route a line to")?;
    services::irq::balance(line as usize, to).map_err(|s| {
        format!("instance {to} did not take {what} ({s:?}); it stays with instance 0")
    })?;
    println!("{what} now delivered to instance {to}");
    Ok(())
}

fn irq_mask(line: u32, mask: bool) -> Outcome {
    let what = format!("IRQ line {line}");
    let owner = holder_of(Resource::Irq(line), &what)?;
    let verb = if mask { "masked" } else { "unmasked" };
    let result = if owner.is_supervisor() {
        services::irq::set_masked_here(line as usize, mask)
    } else {
        services::irq::request_mask(owner, line, mask)
    };
    result.map_err(|s| format!("instance {owner} did not change {what} ({s:?})"))?;
    println!("{what} {verb} by its owner, instance {owner}");
    Ok(())
}

/// Polls the mailboxes until `done` or `ms` pass; true if done.
fn wait_for(ms: u64, done: impl Fn() -> bool) -> bool {
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    while !done() {
        if tsc::read() > deadline {
            return false;
        }
        messaging::poll();
        core::hint::spin_loop();
    }
    true
}

fn request_stop(k: InstanceId, flags: ShutdownFlags) -> Outcome {
    match lifecycle::request_stop(k, flags) {
        Ok(Status::Ok) => Ok(()),
        Ok(status) => Err(format!("instance {k} refused ({status:?})")),
        Err(lifecycle::StopError::Call(e)) => Err(call_failure(e)),
        Err(lifecycle::StopError::NotRunning(life)) => Err(format!(
            "instance {k} is {life} by instance 0's record, not running"
        )),
        Err(lifecycle::StopError::NoRecord) => Err(String::from("instance 0 keeps no record")),
    }
}

fn shutdown(k: InstanceId) -> Outcome {
    running_peer(k, "shut down")?;
    request_stop(k, ShutdownFlags::RETURN_RESOURCES)?;
    if !wait_for(5000, || {
        lifecycle::COLLECTED
            .get(k.index())
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }) {
        return Err(format!("instance {k} agreed but did not stop within 5 s"));
    }
    println!("instance {k} stopped; its resources are back with instance 0");
    Ok(())
}

fn crash(k: InstanceId) -> Outcome {
    running_peer(k, "crash")?;
    let asked = tsc::read();
    request_stop(k, ShutdownFlags::CRASH)?;
    println!("instance {k} told to panic; waiting for the heartbeat watch to notice");
    let bound = heartbeat::dead_after_tsc() / tsc::ticks_per_ms() + 5000;
    if !wait_for(bound, || {
        lifecycle::COLLECTED
            .get(k.index())
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }) {
        return Err(format!(
            "instance {k} was not declared dead within {bound} ms"
        ));
    }
    let dead_at = lifecycle::DECLARED_DEAD_AT
        .get(k.index())
        .map_or(0, |d| d.load(Ordering::SeqCst));
    println!(
        "instance {k} declared dead {} ms after the request; its resources are back with instance 0",
        dead_at.saturating_sub(asked) / tsc::ticks_per_ms()
    );
    Ok(())
}

fn respawn(k: InstanceId) -> Outcome {
    if k.is_supervisor() {
        return Err(String::from("instance 0 is this shell's own instance"));
    }
    // Instance 0's record decides whether it ended (`lifecycle::respawn` says why not).
    state_of(k)?;
    lifecycle::respawn(k).map_err(|e| format!("instance {k} not started again: {e}"))?;
    println!("instance {k} running again");
    Ok(())
}

fn bench(rounds: u32, k: InstanceId) -> Outcome {
    running_peer(k, "measure against")?;
    let n = rounds as usize;
    println!(
        "in-kernel measurements against instance {k}, {n} samples each (ns; `cargo xtask bench` runs the same and compares them with host baselines)"
    );
    crate::services::bench::ipi(n, k)?;
    crate::services::bench::rtt(n, k)?;
    crate::services::bench::tput(n, k)?;
    crate::services::bench::ops(n)?;
    Ok(())
}

/// The instances whose tasks `ps` lists: this one, and every other that runs.
fn task_instances() -> Vec<InstanceId> {
    let me = crate::instance::id();
    let mut out = alloc::vec![me];
    if let Some(r) = region::get() {
        out.extend(
            r.ids()
                .filter(|&k| k != me)
                .filter(|&k| state_of(k) == Ok(InstanceState::Running)),
        );
    }
    out
}

fn ps() -> Outcome {
    println!(
        "{:<6}{:<10}{:<12}{:<10}{:>5}{:>14}",
        "inst", "task", "program", "state", "cpu", "cpu time"
    );
    for k in task_instances() {
        match services::tasks::list(k) {
            Ok(rows) => {
                for t in rows {
                    println!(
                        "{:<6}{:<10}{:<12}{:<10}{:>5}{:>11} ms",
                        k,
                        format!("{}", t.id),
                        t.name,
                        t.state,
                        t.cpu,
                        t.cpu_time_us / 1000
                    );
                }
            }
            Err(e) => println!("{k:<6}({e})"),
        }
    }
    Ok(())
}

fn task_target(k: InstanceId) -> Outcome {
    if k == crate::instance::id() {
        return Ok(());
    }
    match state_of(k)? {
        InstanceState::Running => Ok(()),
        s => Err(format!(
            "instance {k} is {}, not running",
            InstanceState::name(s)
        )),
    }
}

fn spawn(k: InstanceId, line: &str, grants: &[mk_shell::GrantSpec]) -> Outcome {
    task_target(k)?;
    let grants: alloc::vec::Vec<services::tasks::Grant> = grants
        .iter()
        .map(|g| match *g {
            mk_shell::GrantSpec::Irq(line) => services::tasks::Grant::Irq(line),
            mk_shell::GrantSpec::IoPorts { base, len } => {
                services::tasks::Grant::IoPorts { base, len }
            }
            mk_shell::GrantSpec::Mmio { phys, pages } => {
                services::tasks::Grant::Mmio { phys, pages }
            }
        })
        .collect();
    let id = services::tasks::spawn_with(k, line, None, &grants)
        .map_err(|e| format!("spawn on instance {k}: {e}"))?;
    println!("instance {k}: started {line:?} as task {id}");
    Ok(())
}

fn caps(k: InstanceId, task: u64) -> Outcome {
    task_target(k)?;
    let id = mk_abi::TaskId::from_raw(task);
    let rows =
        services::tasks::caps(k, id).map_err(|e| format!("caps of {id} on instance {k}: {e}"))?;
    println!(
        "{:<10}{:<14}{:<8}{:<10}object",
        "handle", "kind", "rights", "instance"
    );
    for r in rows {
        let rights: alloc::string::String = [
            (mk_abi::ipc::Rights::SEND, 's'),
            (mk_abi::ipc::Rights::RECV, 'r'),
            (mk_abi::ipc::Rights::GRANT, 'g'),
        ]
        .iter()
        .map(|(b, c)| if r.rights.contains(*b) { *c } else { '-' })
        .collect();
        println!(
            "{:<10}{:<14}{rights:<8}{:<10}{:#x}",
            alloc::format!("{}", r.handle),
            r.kind,
            r.instance,
            r.object
        );
    }
    Ok(())
}

fn kill(k: InstanceId, task: u64) -> Outcome {
    task_target(k)?;
    let id = mk_abi::TaskId::from_raw(task);
    services::tasks::kill(k, id).map_err(|e| format!("kill {id} on instance {k}: {e}"))?;
    println!("instance {k}: task {id} killed");
    Ok(())
}
