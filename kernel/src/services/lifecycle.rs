//! An instance's end: declared dead by instance 0 (no sign of life), or shut down on request.
//! Either way instance 0 ends up owning everything the instance held, and the instance's
//! mailboxes are marked dead so that nothing more is sent to it or taken from it.
//!
//! ```text
//!  SHUTDOWN (instance 0 -> k)                       k silent for DEAD_AFTER_BEATS periods
//!   k: reply Ok; after the drain:                    0: state Running -> Dead
//!      park its further CPUs (cli; hlt)                 mark k's mailboxes dead
//!      begin_transfer(r, k -> 0) for all it owns        reclaim(k -> 0): Owned(k) -> Owned(0),
//!      state Running -> Stopped                           transfers from/to k rolled back
//!      park itself
//!   0: sees Stopped: reclaim(k -> 0) completes
//!      the transfers, takes anything left
//! ```
//!
//! A resource is in every instant owned by exactly one instance, or in transit with its giver
//! recorded (`mk_shared::SharedRegion::reclaim` documents each case). A parked CPU does
//! nothing until an INIT-SIPI-SIPI starts it again.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mk_dispatch::Reply;
use mk_shared::{InstanceState, Owner, Reclaimed, Resource};
use mk_wire::{Message, Payload, Status};

use super::heartbeat;
use crate::arch::tsc;
use crate::cpus::smp;
use crate::instance::InstanceId;
use crate::shared::{records, region};
use crate::{info, warn};

const MAX: usize = mk_shared::MAX_INSTANCES;

/// Instance 0: per instance, TSC when it was declared dead (0: never).
pub static DECLARED_DEAD_AT: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
/// Instance 0: per instance, whether its resources were taken back after it stopped or died.
pub static COLLECTED: [AtomicBool; MAX] = [const { AtomicBool::new(false) }; MAX];

/// Instance 0, after each drain (at most once a heartbeat period): reads every state word
/// (its own included) and acts on what its own record says of that instance
/// (`mk_ledger::Ledger::judge`): takes back what an instance it asked to stop handed over,
/// declares dead every instance it has running that was silent for longer than
/// `heartbeat::dead_after_tsc`, and writes back any state word that disagrees with the record
/// (another instance wrote it), logging and counting the disagreement.
pub fn watch() {
    if !heartbeat::watch_due() {
        return;
    }
    let now = tsc::read();
    let Some(r) = region::get() else { return };
    for k in r.ids() {
        let Ok(inst) = r.instance(k) else { continue };
        let word = inst.state().map_err(|_| inst.state_word());
        let Some(v) = records::with(|l| l.judge(k, word)) else {
            return;
        };
        if let Some(to) = v.restore {
            let _ = inst.overrule_state(to);
        }
        if let Some(d) = &v.disagreement {
            match v.restore {
                Some(to) => records::note(d, &alloc::format!("wrote {} back", to.name())),
                None => records::note(d, "watching its signs of life"),
            }
        }
        if v.collect {
            collect_stopped(k);
            continue;
        }
        if v.watch_liveness {
            let silent = heartbeat::silence(k, inst.heartbeat(), now);
            if silent > heartbeat::dead_after_tsc() {
                declare_dead(k, silent);
            }
        }
    }
    repair_channels(now);
}

/// Channels instance 0 reset because an end found them faulted or their header broken.
pub static REPAIRS: AtomicU64 = AtomicU64::new(0);

/// Instance 0, with the watch: resets every channel between two instances its record has
/// running that an end found faulted (`mk_mailbox::MailboxMatrix::needs_repair`: it set the
/// line's fault flag) or whose header no longer reads as instance 0 wrote it. Both ends then
/// get `Reset` and claim the new incarnation; messages in flight on it are lost (they were
/// garbled or stuck already). At most once a second per channel, so that a peer that keeps
/// breaking its channel costs instance 0 one reset a second. The reset runs while the ends
/// may be active: an end that was between its check and its store when the reset ran may
/// garble the new incarnation's first slot, which then faults and is reset again.
fn repair_channels(now: u64) {
    static LAST: spin::Mutex<[u64; MAX * MAX]> = spin::Mutex::new([0; MAX * MAX]);
    let Some(m) = records::mailboxes() else {
        return;
    };
    let running = |k: InstanceId| {
        records::with(|l| {
            matches!(
                l.life(k),
                mk_ledger::Life::Running | mk_ledger::Life::StopAsked
            )
        }) == Some(true)
    };
    let ids: alloc::vec::Vec<InstanceId> = m.ids().filter(|&k| running(k)).collect();
    let second = 1000 * tsc::ticks_per_ms();
    let mut last = LAST.lock();
    for &from in &ids {
        for &to in ids.iter().filter(|&&t| t != from) {
            let Err(why) = m.needs_repair(from, to) else {
                continue;
            };
            let Some(at) = last.get_mut(from.index() * MAX + to.index()) else {
                continue;
            };
            if *at != 0 && now.wrapping_sub(*at) < second {
                continue;
            }
            *at = now;
            match m.reset_channel(from, to) {
                Ok(()) => {
                    REPAIRS.fetch_add(1, Ordering::Relaxed);
                    warn!("mailbox {from} -> {to} was {why:?}: reset");
                }
                Err(e) => warn!("mailbox {from} -> {to} was {why:?}; reset failed: {e:?}"),
            }
        }
    }
}

/// Instance 0: asks instance `k` to shut down (`flags` as SHUTDOWN carries them), noting in
/// its record that a `Stopped` word is now expected of `k` (only then is one collected). A
/// refusal or a failed call puts the record back to running. The reply's status on an answer.
///
/// The answer may take [`STOP_ANSWER_MS`]: under a nested, loaded KVM, 2 s once passed without
/// one (a CI run), though the handler only sets a flag.
pub fn request_stop(k: InstanceId, flags: mk_wire::ShutdownFlags) -> Result<Status, StopError> {
    match records::with(|l| l.ask_stop(k)) {
        Some(Ok(())) => {}
        Some(Err(life)) => return Err(StopError::NotRunning(life)),
        None => return Err(StopError::NoRecord),
    }
    let request = Payload::Shutdown(mk_wire::ShutdownPayload {
        reason: mk_wire::ShutdownReason::Requested,
        flags,
        deadline_ticks: 0,
    });
    let answer = crate::messaging::call(k, mk_wire::Kind::Shutdown, request, STOP_ANSWER_MS);
    if !matches!(&answer, Ok(reply) if reply.status == Status::Ok) {
        records::with(|l| l.stop_refused(k));
    }
    answer.map(|reply| reply.status).map_err(StopError::Call)
}

/// How long [`request_stop`] waits for the answer (ms).
pub const STOP_ANSWER_MS: u64 = 5000;

/// Why [`request_stop`] sent nothing, or got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopError {
    /// This instance keeps no record (it is not instance 0).
    NoRecord,
    /// Instance 0's record does not have the instance running (the caller's argument).
    NotRunning(mk_ledger::Life),
    /// The call failed (the instance did not answer).
    Call(crate::messaging::CallFailure),
}

/// Instance 0: declares instance `k` dead (it was silent for `silent` TSC ticks) and takes
/// back everything its record gives it. The state word becomes `Dead` whatever it held.
pub fn declare_dead(k: InstanceId, silent: u64) {
    let Some(r) = region::get() else { return };
    let Ok(inst) = r.instance(k) else { return };
    if records::with(|l| l.declare_dead(k)) != Some(Ok(())) {
        return;
    }
    let _ = inst.overrule_state(InstanceState::Dead);
    let (stopped, got) = stop_and_take_back(r, k);
    warn!(
        "instance {k} declared dead after {} ms without a sign of life; stopped its CPUs {stopped:?}; took back {} CPU(s), {} IRQ line(s), {} MiB, rolled back {} transfer(s)",
        silent / tsc::ticks_per_ms(),
        got.cpus(),
        got.irqs(),
        u64::from(got.memory_chunks()) * (mk_shared::MEM_CHUNK_SIZE >> 20),
        got.rolled_back
    );
}

/// Instance 0 gave up starting instance `k` (its launch failed): stops its CPUs, wherever its
/// boot got to, and takes back everything it was given, so that it ends stopped and
/// reclaimed, never running while instance 0 counts it out. The record decides (it has `k`
/// starting); the state word becomes `Dead` whatever it held.
pub fn give_up(k: InstanceId, why: &dyn core::fmt::Display) {
    let Some(r) = region::get() else { return };
    let Ok(inst) = r.instance(k) else { return };
    if records::with(|l| l.declare_dead(k)) != Some(Ok(())) {
        return;
    }
    let _ = inst.overrule_state(InstanceState::Dead);
    let (stopped, got) = stop_and_take_back(r, k);
    warn!(
        "instance {k} did not start: {why}; stopped its CPUs {stopped:?}; took back {} CPU(s), {} MiB",
        got.cpus(),
        u64::from(got.memory_chunks()) * (mk_shared::MEM_CHUNK_SIZE >> 20),
    );
}

/// Instance 0, once instance `k` is dead: INIT to its CPUs, then its resources back.
fn stop_and_take_back(
    r: &mk_shared::SharedRegion<'_>,
    k: InstanceId,
) -> (alloc::vec::Vec<u32>, Reclaimed) {
    if let Some(d) = DECLARED_DEAD_AT.get(k.index()) {
        d.store(tsc::read(), Ordering::SeqCst);
    }
    let stopped = stop_cpus_of(k);
    (stopped, take_back(r, k))
}

/// Instance 0: instance `k` stopped on request; takes back what it handed over (once).
pub fn collect_stopped(k: InstanceId) {
    if COLLECTED
        .get(k.index())
        .is_none_or(|c| c.load(Ordering::SeqCst))
    {
        return;
    }
    let Some(r) = region::get() else { return };
    // What `k` sent before it wrote `Stopped` (its answer to SHUTDOWN, its last heartbeats) is
    // taken before its channels are marked dead.
    crate::messaging::drain_from(k, 100);
    let got = take_back(r, k);
    info!(
        "instance {k} stopped; took back {} CPU(s), {} IRQ line(s), {} MiB",
        got.cpus(),
        got.irqs(),
        u64::from(got.memory_chunks()) * (mk_shared::MEM_CHUNK_SIZE >> 20)
    );
}

/// Stops with an INIT IPI every CPU that instance 0's record gives the dead instance `k` (or
/// has instance 0 handing to it), that the MADT lists, and that instance 0 does not run on
/// (`mk_ledger::Ledger::cpus_to_stop`; never the xAPIC broadcast ID): a crashed instance's
/// other CPUs would otherwise go on running its code from memory that instance 0 is about to
/// take back. The shared owner words play no part: a forged one names a CPU that is not `k`'s.
/// INIT leaves a CPU waiting for a start-up IPI, which any later start sends.
fn stop_cpus_of(k: InstanceId) -> alloc::vec::Vec<u32> {
    let here = smp::cpu_list();
    let stopped = records::with(|l| l.cpus_to_stop(k, &here)).unwrap_or_default();
    for &apic in &stopped {
        crate::arch::cpu::current().with_lapic(|l| l.send_init(apic));
    }
    stopped
}

/// Instance 0: takes back, into itself, everything its record gives the ended instance `k`
/// (`mk_ledger::Ledger::reclaim`: by compare-exchange where the owner word agrees, by
/// overruling it where it does not; words naming `k` for resources the record gives
/// elsewhere written back), after marking its mailboxes dead through the view cached at boot.
/// Every disagreement is logged. `k` counts as collected only if nothing of its record is
/// left.
fn take_back(r: &mk_shared::SharedRegion<'_>, k: InstanceId) -> Reclaimed {
    if let Some(m) = records::mailboxes() {
        let _ = m.mark_instance_dead(k);
    }
    let Some(out) = records::with(|l| l.reclaim(r, k)) else {
        return Reclaimed::default();
    };
    for (d, fix) in &out.disagreements {
        let action = match fix {
            mk_ledger::Fix::TakenBack => alloc::string::String::from("taken back all the same"),
            mk_ledger::Fix::WrittenBack(o) => alloc::format!("written back as {o:?}"),
            mk_ledger::Fix::NotFixed => alloc::string::String::from("could not be written"),
        };
        records::note(d, &action);
    }
    if out.left == 0 {
        if let Some(c) = COLLECTED.get(k.index()) {
            c.store(true, Ordering::SeqCst);
        }
    } else {
        warn!(
            "instance {k}: {} resource(s) of instance 0's record did not come back; not collected",
            out.left
        );
    }
    out.got
}

/// Set by the SHUTDOWN handler; acted on after the drain that sent the reply.
static SHUTDOWN_ASKED: AtomicBool = AtomicBool::new(false);

/// Set by a SHUTDOWN carrying `CRASH`: the instance panics after the drain that replied.
static CRASH_ASKED: AtomicBool = AtomicBool::new(false);

/// SHUTDOWN, in an instance other than 0. Only instance 0 (which takes the resources back)
/// may ask; anyone else is refused.
pub fn handle_shutdown(m: &Message) -> Option<Reply> {
    if !m.sender.is_supervisor() {
        return Some(Reply::error(Status::Refused));
    }
    ASKED_AT.store(tsc::read(), Ordering::SeqCst);
    if let Payload::Shutdown(p) = m.payload
        && p.flags.contains(mk_wire::ShutdownFlags::CRASH)
    {
        CRASH_ASKED.store(true, Ordering::SeqCst);
        crate::messaging::want_poll_hook();
        return Some(Reply::ok(Payload::Empty));
    }
    SHUTDOWN_ASKED.store(true, Ordering::SeqCst);
    // Carried out by the poll hook, once the reply has left (`finish_shutdown_if_asked`).
    crate::messaging::want_poll_hook();
    Some(Reply::ok(Payload::Empty))
}

/// When the SHUTDOWN was taken (TSC).
static ASKED_AT: AtomicU64 = AtomicU64::new(0);

/// How long a stopping instance waits for its answer to leave (ms): a reply that found
/// instance 0's mailbox full waits in the reply queue, and an instance that stopped with it
/// there would leave instance 0 waiting for an answer that cannot come.
pub const ANSWER_GRACE_MS: u64 = 2000;

/// After a drain: carries out a requested shutdown once its answer has left (or
/// [`ANSWER_GRACE_MS`] have passed); until then asks the next poll to look again.
pub fn finish_shutdown_if_asked() {
    if !CRASH_ASKED.load(Ordering::SeqCst) && !SHUTDOWN_ASKED.load(Ordering::SeqCst) {
        return;
    }
    // The poll that runs this hook flushed the reply queue just before.
    let grace = ASKED_AT.load(Ordering::SeqCst) + ANSWER_GRACE_MS * tsc::ticks_per_ms();
    if crate::messaging::replies_waiting(InstanceId::ZERO) > 0 && tsc::read() < grace {
        crate::messaging::want_poll_hook();
        return;
    }
    if CRASH_ASKED.load(Ordering::SeqCst) {
        panic!("deliberate crash requested by instance 0 (SHUTDOWN with CRASH)");
    }
    if SHUTDOWN_ASKED.load(Ordering::SeqCst) {
        shut_down();
    }
}

/// What instance `me` may own: its published CPUs, the 2 MiB chunks of its published memory,
/// every IRQ line. (Walking these instead of the whole tables matters where every instruction
/// is expensive.)
fn own_resources(r: &mk_shared::SharedRegion<'_>, me: InstanceId) -> alloc::vec::Vec<Resource> {
    let mut out = alloc::vec::Vec::new();
    if let Ok(res) = r.instance(me).and_then(|i| i.resources()) {
        out.extend(res.cpus().iter().map(|&c| Resource::Cpu(c)));
        let chunk = mk_shared::MEM_CHUNK_SIZE;
        for &(start, len) in res.ranges() {
            let (first, end) = (start.next_multiple_of(chunk), (start + len) & !(chunk - 1));
            out.extend(
                (first..end)
                    .step_by(chunk as usize)
                    .map(Resource::memory_at),
            );
        }
    }
    out.extend((0..mk_shared::MAX_IRQS as u32).map(Resource::Irq));
    out.retain(|&res| r.owner(res) == Ok(Owner::Owned(me)));
    out
}

/// Report word in which a stopping instance leaves how many of its CPUs parked.
pub const REPORT_PARKED: usize = 6;

fn shut_down() -> ! {
    let me = crate::instance::id();
    // The heartbeat goes on until the very end: handing resources back takes a while on a slow
    // machine, and instance 0 must not take this instance for dead in the middle of it.
    // Further CPUs first: they park from their idle loop at their next timer tick.
    let others = smp::ONLINE.load(Ordering::SeqCst).saturating_sub(1);
    let parked_before = smp::PARKED.load(Ordering::SeqCst);
    smp::PARK.store(true, Ordering::SeqCst);
    let deadline = tsc::read() + 1000 * tsc::ticks_per_ms();
    while smp::PARKED.load(Ordering::SeqCst) - parked_before < others && tsc::read() < deadline {
        core::hint::spin_loop();
    }
    let parked = smp::PARKED.load(Ordering::SeqCst) - parked_before;
    let mut handed = 0;
    if let Some(r) = region::get() {
        for res in own_resources(r, me) {
            if r.begin_transfer(res, me, InstanceId::ZERO).is_ok() {
                handed += 1;
            }
        }
        region::report(REPORT_PARKED, u64::from(parked) + 1);
        crate::platform::failure::STOPPED.store(true, Ordering::SeqCst);
        if let Ok(inst) = r.instance(me) {
            let _ = inst.set_state(InstanceState::Stopped);
        }
    }
    info!(
        "instance {me} stopped: {parked} further CPU(s) parked, {handed} resource(s) handed back to instance 0; parking this CPU"
    );
    smp::park_this_cpu()
}

/// Instance 0: starts instance `k` again (it is stopped or dead, and its resources are back)
/// with a fresh copy of the kernel image, on the resources of its partition that instance 0
/// holds: its CPUs that are instance 0's (parked first if instance 0 runs them), its memory
/// minus any 2 MiB chunk someone else holds now. Its mailboxes are reset first (new
/// generation: nothing sent to the old incarnation is delivered to the new one; every peer
/// re-attaches on its next use).
pub fn respawn(k: InstanceId) -> Result<(), RespawnError> {
    use RespawnError as E;
    let r = region::get().ok_or(E::NoRegion)?;
    let inst = r.instance(k).map_err(|_| E::NoSuchInstance)?;
    // The record decides whether `k` ended and came back, not its state word (which `k` or
    // anyone else may have written).
    match records::with(|l| l.may_respawn(k)) {
        None => return Err(E::NoPlan),
        Some(Ok(())) => {}
        Some(Err(mk_ledger::Life::Ended {
            collected: false, ..
        })) => return Err(E::NotCollected),
        Some(Err(life)) => return Err(E::NotEnded(life)),
    }
    let (Some(collected), Some(dead_at)) =
        (COLLECTED.get(k.index()), DECLARED_DEAD_AT.get(k.index()))
    else {
        return Err(E::NoSuchInstance);
    };
    let plan = crate::cpus::launch::PLAN.get().ok_or(E::NoPlan)?;
    let p = plan.partition(k.index()).ok_or(E::NoSuchInstance)?;
    let mut cpus = alloc::vec::Vec::new();
    for &c in p.cpus {
        if !with_instance_0(r, Resource::Cpu(c)) {
            continue;
        }
        if smp::slot_of(c).is_some() {
            smp::park_cpu(c, 1000).map_err(|e| E::Park(c, e))?;
        }
        cpus.push(c);
    }
    if cpus.is_empty() {
        return Err(E::NoCpu);
    }
    // Instance 0 may have parked CPUs of its own above: its entry says so at once.
    super::entry::publish();
    let memory = usable_part(r, p.memory);
    if memory.is_empty() {
        return Err(E::NoMemory);
    }
    let launcher = crate::cpus::launch::LAUNCH.get().ok_or(E::NoPlan)?;
    // A stray or hostile write into the region's header, the mailboxes' or the page pool's
    // would fail the new instance's attach: each is written back as instance 0 formatted it.
    let fixed = r.restore_header()
        + records::mailboxes().map_or(0, |m| m.restore_header())
        + region::pool().map_or(0, |(pool, _)| pool.restore_header());
    if fixed > 0 {
        warn!("respawning {k}: {fixed} word(s) of the shared headers were written over; restored");
    }
    // From here on the record has it starting: whatever fails, `give_up` stops what may
    // have started and takes back what it was given, by the record.
    records::with(|l| l.starting(k));
    collected.store(false, Ordering::SeqCst);
    dead_at.store(0, Ordering::SeqCst);
    heartbeat::forget(k);
    if let Err(e) = hand_over(r, &inst, k, &cpus, &memory) {
        for m in &memory {
            let _ = crate::memory::paging::unmap_phys(m.start, m.end());
        }
        give_up(k, &e);
        return Err(e);
    }
    let result = launcher.launch(k, &memory, &cpus);
    for m in &memory {
        let _ = crate::memory::paging::unmap_phys(m.start, m.end());
    }
    match result {
        Ok(_) => {
            info!(
                "instance {k} respawned on CPUs {cpus:?}, {} MiB",
                memory.iter().map(|m| m.len).sum::<u64>() >> 20
            );
            Ok(())
        }
        Err(e) => {
            // Its state is Dead already (the launcher's guarantee): stop what may have started
            // and take the resources back, as after a failed start at boot.
            give_up(k, &e);
            Err(E::Launch(e))
        }
    }
}

/// Respawn's hand-over to `k` (not running): its CPUs and memory, in the table and the
/// record; fresh mailboxes (new generation: nothing sent to the old incarnation is delivered
/// to the new one); an `Empty` state word (the record says it ended, whatever the word
/// holds); its memory mapped into instance 0 while the new copy is built.
fn hand_over(
    r: &mk_shared::SharedRegion<'_>,
    inst: &mk_shared::Instance<'_>,
    k: InstanceId,
    cpus: &[u32],
    memory: &[mk_plan::MemRange],
) -> Result<(), RespawnError> {
    use RespawnError as E;
    for &c in cpus {
        r.claim(Resource::Cpu(c), k, Some(InstanceId::ZERO))
            .map_err(|e| E::Claim(c, e))?;
        records::with(|l| l.give(Resource::Cpu(c), k));
    }
    for m in memory {
        for chunk in whole_chunks(m.start, m.end()) {
            r.claim(chunk, k, Some(InstanceId::ZERO))
                .map_err(|e| E::ClaimMemory(chunk, e))?;
            records::with(|l| l.give(chunk, k));
        }
    }
    if let Some(m) = records::mailboxes() {
        m.reset_instance(k).map_err(E::Mailboxes)?;
    }
    let _ = inst.overrule_state(InstanceState::Empty);
    // Instance 0 keeps other partitions unmapped: map this one while building the new copy.
    for m in memory {
        crate::memory::paging::map_phys(m.start, m.end()).map_err(E::Map)?;
    }
    Ok(())
}

/// Why [`respawn`] did not start an instance again, and whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespawnError {
    /// This instance has no shared region (a boot-order bug here).
    NoRegion,
    /// The caller named no instance of the plan.
    NoSuchInstance,
    /// The caller named an instance that is still up (starting, running, asked to stop) or
    /// never started, by instance 0's record.
    NotEnded(mk_ledger::Life),
    /// The instance ended, but instance 0 has not taken its resources back yet: try again.
    NotCollected,
    /// Instance 0 kept no plan or launcher from boot (this instance's fault).
    NoPlan,
    /// Instance 0 could not park a CPU of the partition it was running on.
    Park(u32, crate::cpus::smp::CpuError),
    /// None of the partition's CPUs is with instance 0 (another instance holds them).
    NoCpu,
    /// None of the partition's memory is with instance 0.
    NoMemory,
    /// Giving a CPU to the new instance failed in the ownership table.
    Claim(u32, mk_shared::Error),
    /// Giving a memory chunk to the new instance failed in the ownership table (its word
    /// changed after instance 0 checked it: someone else wrote it).
    ClaimMemory(Resource, mk_shared::Error),
    /// Resetting its mailboxes failed (the mailbox matrix refused).
    Mailboxes(mk_mailbox::Error),
    /// Mapping its memory into instance 0 failed (instance 0's page tables).
    Map(crate::memory::paging::PagingError),
    /// The new instance did not start (instance 0 stopped it and took its resources back).
    Launch(crate::cpus::launch::LaunchError),
}

impl core::fmt::Display for RespawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRegion => f.write_str("no shared region"),
            Self::NoSuchInstance => f.write_str("no such instance"),
            Self::NotEnded(life) => write!(
                f,
                "the instance is neither stopped nor dead by instance 0's record ({life})"
            ),
            Self::NotCollected => f.write_str("its resources are not back with instance 0 yet"),
            Self::NoPlan => f.write_str("no plan"),
            Self::Park(c, e) => write!(f, "parking CPU {c}: {e}"),
            Self::NoCpu => f.write_str("none of its CPUs is with instance 0"),
            Self::NoMemory => f.write_str("none of its memory is with instance 0"),
            Self::Claim(c, e) => write!(f, "claiming CPU {c} for it: {e:?}"),
            Self::ClaimMemory(c, e) => write!(f, "claiming {c:?} for it: {e:?}"),
            Self::Mailboxes(e) => write!(f, "resetting its mailboxes: {e:?}"),
            Self::Map(e) => write!(f, "mapping its memory: {e}"),
            Self::Launch(e) => write!(f, "the new instance did not start: {e}"),
        }
    }
}

/// The 2 MiB chunks lying wholly inside `[start, end)`.
fn whole_chunks(start: u64, end: u64) -> impl Iterator<Item = Resource> {
    let size = mk_shared::MEM_CHUNK_SIZE;
    (start.next_multiple_of(size)..end & !(size - 1))
        .step_by(size as usize)
        .map(Resource::memory_at)
}

/// Whether instance 0 holds `res` by its record, with nothing in flight, and the owner word
/// agrees (a disagreement is logged and counted, and the resource left out).
fn with_instance_0(r: &mk_shared::SharedRegion<'_>, res: Resource) -> bool {
    let word = r.owner(res);
    match records::with(|l| l.may_give(res, InstanceId::ZERO, word)) {
        Some(Ok(())) => true,
        Some(Err(mk_ledger::Refusal::Word(d))) => {
            records::note(&d, "left out of the respawn");
            false
        }
        _ => false,
    }
}

/// `ranges` less every whole 2 MiB chunk that instance 0 does not hold (by its record, the
/// word agreeing). (Partial chunks at a
/// range's edges are in no ownership word: moves are by whole chunks, so they never left.)
fn usable_part(
    r: &mk_shared::SharedRegion<'_>,
    ranges: &[mk_plan::MemRange],
) -> alloc::vec::Vec<mk_plan::MemRange> {
    let size = mk_shared::MEM_CHUNK_SIZE;
    let mut out = alloc::vec::Vec::new();
    for m in ranges {
        let (s, e) = (m.start, m.end());
        let mut run: Option<u64> = None;
        let mut a = s;
        while a < e {
            let c = a & !(size - 1);
            let next = (c + size).min(e);
            let whole = c >= s && c + size <= e;
            if !whole || with_instance_0(r, Resource::memory_at(c)) {
                run.get_or_insert(a);
            } else if let Some(rs) = run.take() {
                out.push(mk_plan::MemRange::new(rs, a - rs));
            }
            a = next;
        }
        if let Some(rs) = run {
            out.push(mk_plan::MemRange::new(rs, e - rs));
        }
    }
    out
}
