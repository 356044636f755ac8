//! Capability IPC between tasks, within an instance and across instances: `mk-ipc`'s state
//! behind one lock, the blocking and waking around it, and the cross-instance routes over the
//! mailboxes (`USER` messages `IPC_REQUEST`, `IPC_ANSWER`, `IPC_FORGET`; `mk_ipc::wire`).
//! `docs/ipc.md` is the reference.
//!
//! ```text
//!  instance a: task T                                   instance b: task S (server)
//!  call(h) ── syscall ──► Ipc::send: cap h → Endpoint{b, e}
//!            pending call (token), T blocks   ──IPC_REQUEST(e, token, T)──►  handler: Ipc::incoming
//!                                                                             queue at e, wake S
//!                                                                S: recv → parcel (sender a/T)
//!            handler: Ipc::answer_in(b, token) ◄──IPC_ANSWER(token)──  S: reply → Effect::Answer
//!            wake T; T: finish_call → reply
//! ```
//!
//! Locking: the IPC lock is taken with interrupts off, before the scheduler's lock (never
//! after). A task that waits marks itself blocked while it holds the IPC lock, so a wake-up
//! (which needs that lock to find the task) cannot come between. Messages to other instances
//! go out with no lock held: requests at once from the caller's system call (a full mailbox
//! makes `send` fail with `Busy` and `call` wait), answers and endpoint deaths through an
//! outbox flushed at once and by the poll hook (asked for while messages wait in it).

#![forbid(unsafe_code)]

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use mk_abi::ipc::{Handle, IpcMsg, MAX_INLINE, Rights};
use mk_abi::{Error, Received, TaskId};
use mk_dispatch::{HandlerKey, Reply};
use mk_ipc::wire::{self, Encoded, IPC_ANSWER, IPC_FORGET, IPC_REQUEST};
use mk_ipc::{Cap, Delivery, Effect, Ipc, Object, Parcel, Sent};
use mk_sched::Block;
use mk_shared::InstanceState;
use mk_wire::{Kind, Message, Payload, UserPayload};
use spin::Mutex;

use crate::arch::tsc;
use crate::instance::InstanceId;
use crate::memory::space::PageRun;
use crate::messaging::{self, HandlerFn, SendError};
use crate::shared::region;
use crate::tasks::sched;

static IPC: Mutex<Option<Ipc>> = Mutex::new(None);

/// Page runs held by capabilities (`pages`), by the id their capability names. Taken with
/// interrupts off, after the IPC lock if both are held.
static PAGE_RUNS: Mutex<mk_ipc::Slots<PageRun>> = Mutex::new(mk_ipc::Slots::new(MAX_RUNS));
/// Most page runs an instance holds at once.
const MAX_RUNS: usize = 256;
/// Page runs that could not cross to another instance (the shared pool was full, or the
/// receiver found the pages not handed to it): their messages went without them.
pub static PAGES_LOST: AtomicU64 = AtomicU64::new(0);

fn runs<R>(f: impl FnOnce(&mut mk_ipc::Slots<PageRun>) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut PAGE_RUNS.lock()))
}

/// Answers and endpoint deaths waiting for room in a mailbox: `(to, subtype, bytes)`.
static OUTBOX: Mutex<VecDeque<(InstanceId, u16, Encoded)>> = Mutex::new(VecDeque::new());
/// Most messages the outbox holds; beyond, one is dropped and counted (never silently).
const OUTBOX_MAX: usize = 512;
/// How many messages the outbox holds (read without its lock by every drain).
static OUTBOX_LEN: AtomicUsize = AtomicUsize::new(0);
/// When the drain next looks for calls waiting on stopped instances (TSC).
static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);
/// How often it looks (ms): the bound on `PeerDead` after instance 0 declared a death.
const WATCH_MS: u64 = 2;
/// Messages dropped because the outbox was full, and malformed IPC messages received.
pub static OUTBOX_DROPPED: AtomicU64 = AtomicU64::new(0);
pub static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on the IPC state, with interrupts off.
fn with<R>(f: impl FnOnce(&mut Ipc) -> R) -> Option<R> {
    x86_64::instructions::interrupts::without_interrupts(|| IPC.lock().as_mut().map(f))
}

/// Wakes the tasks the last operations named (with the IPC lock held: waking takes the
/// scheduler's lock, which comes after it) and takes the other effects, to be carried out
/// once the lock is let go.
fn wake_and_take(i: &mut Ipc) -> Vec<Effect> {
    for t in i.take_wakes() {
        let _ = sched::wake(t);
    }
    if i.has_effects() {
        i.take_effects()
    } else {
        Vec::new()
    }
}

/// Runs `f` on the IPC state, then carries out the effects it left (lock let go).
fn with_effects<R>(f: impl FnOnce(&mut Ipc) -> R) -> Result<R, Error> {
    let (r, effects) = with(|i| {
        let r = f(i);
        (r, wake_and_take(i))
    })
    .ok_or(Error::NoSuchTask)?;
    run(effects);
    Ok(r)
}

static HANDLERS: [(u16, HandlerFn); 3] = [
    (IPC_REQUEST, handle_request),
    (IPC_ANSWER, handle_answer),
    (IPC_FORGET, handle_forget),
];

/// Sets up the IPC state of instance `me`, its message handlers and the task-exit hook.
pub fn init(me: InstanceId) -> Result<(), Kind> {
    *IPC.lock() = Some(Ipc::new(me.index() as u8));
    let Some(d) = messaging::dispatcher() else {
        return Err(Kind::User(IPC_REQUEST));
    };
    for (sub, handler) in &HANDLERS {
        d.registry()
            .register(HandlerKey::Kind(Kind::User(*sub)), handler)
            .map_err(|_| Kind::User(*sub))?;
    }
    sched::set_exit_hook(task_ended);
    sched::set_start_hook(task_started);
    Ok(())
}

/// A task's first entry: its device capabilities go into its table (handles 1, 2, ... in the
/// order granted), and its I/O ports are opened.
fn task_started(id: TaskId, caps: Vec<Cap>) {
    for c in caps {
        if let Some(Err(e)) = with(|i| i.grant(id, c)) {
            crate::warn!(
                "task {id}: device capability {:?} not granted: {e}",
                c.object
            );
        }
    }
    sync_io_ports(id);
}

fn task_ended(id: TaskId) {
    let _ = with_effects(|i| i.task_exited(id));
}

/// Carries out effects: wakes, answers and deaths to other instances.
fn run(effects: Vec<Effect>) {
    for e in effects {
        match e {
            Effect::Forward {
                to,
                dst,
                call,
                parcel,
            } => {
                let (parcel, leases) = export_or_drop(parcel, to);
                free_exported(&leases);
                post(to, IPC_REQUEST, wire::encode_request(dst, call, &parcel));
            }
            Effect::Answer { to, token, result } => {
                let result = result.map(|p| {
                    let (p, leases) = export_or_drop(p, to);
                    // An answer is final: the local runs go now (their bytes are in the pool).
                    free_exported(&leases);
                    p
                });
                post(to, IPC_ANSWER, wire::encode_answer(token, &result));
            }
            Effect::Forget { endpoint } => post(0, IPC_FORGET, wire::encode_forget(endpoint)),
            Effect::Release { run } => drop(runs(|r| r.remove(run))),
            Effect::Unbound { line } => {
                crate::info!(
                    "irq line {line}: its driver task ended; the line stays masked until the next driver acknowledges it"
                );
            }
        }
    }
}

fn message(sub: u16, bytes: &[u8]) -> Option<Message> {
    let p = UserPayload::new(bytes)?;
    Some(Message::request(
        crate::instance::id(),
        Kind::User(sub),
        0,
        Payload::User(p),
    ))
}

/// Sends now if the outbox is empty and the mailbox has room, else queues.
fn post(to: u8, sub: u16, e: Encoded) {
    let to = InstanceId::new(u16::from(to));
    let mut q = x86_64::instructions::interrupts::without_interrupts(|| {
        let mut o = OUTBOX.lock();
        if o.len() >= OUTBOX_MAX {
            o.pop_front();
            OUTBOX_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        o.push_back((to, sub, e));
        OUTBOX_LEN.store(o.len(), Ordering::Relaxed);
        o.len()
    });
    // Flushed in order; at most the whole outbox per post.
    while q > 0 && flush_one() {
        q -= 1;
    }
    if OUTBOX_LEN.load(Ordering::Relaxed) != 0 {
        // What did not fit goes out from the next poll.
        messaging::want_poll_hook();
    }
}

/// Sends the outbox's oldest message if its mailbox has room (or drops it if the peer is
/// gone); whether one left.
fn flush_one() -> bool {
    let Some((to, sub, e)) = x86_64::instructions::interrupts::without_interrupts(|| {
        let mut o = OUTBOX.lock();
        let first = o.pop_front();
        OUTBOX_LEN.store(o.len(), Ordering::Relaxed);
        first
    }) else {
        return false;
    };
    let Some(m) = message(sub, e.as_bytes()) else {
        MALFORMED.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    match messaging::try_send(to, &m) {
        Ok(()) => true,
        Err(SendError::Busy | SendError::Mailbox(mk_mailbox::Error::Full)) => {
            x86_64::instructions::interrupts::without_interrupts(|| {
                let mut o = OUTBOX.lock();
                o.push_front((to, sub, e));
                OUTBOX_LEN.store(o.len(), Ordering::Relaxed);
            });
            false
        }
        // The peer stopped: whoever waited there is failed by its own kernel or not at all.
        Err(_) => {
            OUTBOX_DROPPED.fetch_add(1, Ordering::Relaxed);
            true
        }
    }
}

/// Whether instance `k` is not running (for calls waiting on it).
fn stopped(k: u8) -> bool {
    let Some(r) = region::get() else { return false };
    !matches!(
        r.instance(InstanceId::new(u16::from(k)))
            .and_then(|i| i.state()),
        Ok(InstanceState::Running)
    )
}

/// The poll hook's IPC duties (run when asked and once per timer tick): flush the outbox, fail
/// the calls waiting on instances that stopped, and (instance 0) drop their names.
///
/// Cheap when there is nothing to do: one load for the outbox, one clock read for the watch,
/// which runs every `WATCH_MS` at most (in practice once per tick).
pub fn on_poll() {
    if OUTBOX_LEN.load(Ordering::Relaxed) != 0 {
        while flush_one() {}
        if OUTBOX_LEN.load(Ordering::Relaxed) != 0 {
            // Still no room: try again at the next poll.
            messaging::want_poll_hook();
        }
    }
    let now = tsc::read();
    if now < NEXT_WATCH.load(Ordering::Relaxed) {
        return;
    }
    NEXT_WATCH.store(now + WATCH_MS * tsc::ticks_per_ms(), Ordering::Relaxed);
    let waits = with(|i| i.waits_remote() || (i.me() == 0 && i.names.iter().next().is_some()));
    if waits != Some(true) {
        return;
    }
    let _ = with_effects(|i| {
        i.expire(0, stopped);
        if i.me() == 0 {
            i.names.retain(|e| e.instance == 0 || !stopped(e.instance));
        }
    });
}

fn request_bytes(m: &Message) -> &[u8] {
    match &m.payload {
        Payload::User(u) => u.as_bytes(),
        _ => &[],
    }
}

fn malformed(m: &Message, what: &dyn core::fmt::Display) {
    let n = MALFORMED.fetch_add(1, Ordering::Relaxed);
    if n < 8 {
        crate::warn!(
            "ipc: malformed {:?} from instance {}: {what}",
            m.kind,
            m.sender
        );
    }
}

fn handle_request(m: &Message) -> Option<Reply> {
    match wire::decode_request(request_bytes(m)) {
        Ok((dst, call, parcel)) => {
            let from = m.sender.index() as u8;
            let parcel = import(parcel, m.sender);
            let _ = with_effects(|i| i.incoming(from, dst, call, parcel));
        }
        Err(e) => malformed(m, &format_args!("{e:?}")),
    }
    None
}

fn handle_answer(m: &Message) -> Option<Reply> {
    match wire::decode_answer(request_bytes(m)) {
        Ok((token, result)) => {
            let from = m.sender.index() as u8;
            let result = result.map(|p| import(p, m.sender));
            let _ = with_effects(|i| i.answer_in(from, token, result));
        }
        Err(e) => malformed(m, &format_args!("{e:?}")),
    }
    None
}

fn handle_forget(m: &Message) -> Option<Reply> {
    match wire::decode_forget(request_bytes(m)) {
        Ok(ep) => {
            let from = m.sender.index() as u8;
            with(|i| {
                if i.me() == 0 {
                    i.names.forget_endpoint(from, ep);
                }
            });
        }
        Err(e) => malformed(m, &format_args!("{e:?}")),
    }
    None
}

/// A device a task is given at spawn (by whoever starts it: the shell, a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// An interrupt line (IO APIC input) of this instance, or forwarded to it.
    Irq(u8),
    /// I/O ports `base..base + len`.
    IoPorts { base: u16, len: u16 },
    /// Physical pages `phys..phys + pages * 4096`.
    Mmio { phys: u64, pages: u32 },
}

impl Grant {
    pub fn cap(self) -> Cap {
        let object = match self {
            Self::Irq(line) => Object::Irq { line },
            Self::IoPorts { base, len } => Object::IoPorts { base, len },
            Self::Mmio { phys, pages } => Object::Mmio { phys, pages },
        };
        Cap::new(object, Rights::SEND)
    }

    /// Checks a grant read from a request (a line that exists, ports that do not wrap, page-
    /// aligned memory of at most 16 MiB).
    pub fn validate(self) -> Result<Self, Error> {
        let ok = match self {
            Self::Irq(line) => usize::from(line) < mk_shared::MAX_IRQS,
            Self::IoPorts { base, len } => len > 0 && u32::from(base) + u32::from(len) <= 0x1_0000,
            Self::Mmio { phys, pages } => {
                phys % 4096 == 0 && pages > 0 && pages <= 4096 && phys < (1 << 52)
            }
        };
        if ok {
            Ok(self)
        } else {
            Err(Error::BadArgument)
        }
    }
}

/// The capabilities for `grants`, each checked.
pub fn grant_caps(grants: &[Grant]) -> Result<Vec<Cap>, Error> {
    grants
        .iter()
        .map(|g| g.validate().map(Grant::cap))
        .collect()
}

/// Copies the I/O port ranges task `id`'s capabilities grant into its task record.
fn sync_io_ports(id: TaskId) {
    let ports = with(|i| i.io_ports(id)).unwrap_or_default();
    sched::set_io_ports(id, ports);
}

/// The parcel of a message a task passed (label: 32 bits; data checked).
fn parcel_of(msg: &IpcMsg) -> Result<Parcel, Error> {
    if msg.label > u64::from(u32::MAX) {
        return Err(Error::BadArgument);
    }
    if msg.len > MAX_INLINE as u64 {
        return Err(Error::BadLength);
    }
    Parcel::new(msg.label as u32, msg.bytes()).ok_or(Error::BadLength)
}

/// Writes a delivery into the message the task will get back.
fn fill(out: &mut IpcMsg, d: &Delivery) {
    let data = d.parcel.data();
    *out = IpcMsg::empty();
    out.label = u64::from(d.parcel.label);
    out.len = data.len() as u64;
    out.data[..data.len()].copy_from_slice(data);
    out.caps = d.handles;
    out.badge = d.parcel.badge;
    out.sender_instance = u64::from(d.parcel.sender_instance);
    out.sender_task = d.parcel.sender_task.raw();
}

fn ticks_after_ms(ms: u64) -> u64 {
    tsc::read().saturating_add(ms.saturating_mul(tsc::ticks_per_ms()))
}

/// Sends a forward now: `Ok` once the mailbox took it.
fn forward_now(to: u8, sub: u16, e: &Encoded) -> Result<(), SendError> {
    let m = message(sub, e.as_bytes()).ok_or(SendError::Invalid)?;
    messaging::try_send(InstanceId::new(u16::from(to)), &m)
}

fn is_full(e: SendError) -> bool {
    matches!(
        e,
        SendError::Busy | SendError::Mailbox(mk_mailbox::Error::Full)
    )
}

/// A forward ready to go: destination, encoding, and the page runs it carries through the
/// pool (freed once sent, taken back if it cannot be).
struct Outgoing {
    to: u8,
    encoded: Encoded,
    leases: Vec<Exported>,
}

/// Splits the forward (at most one) out of a send's effects and runs the others. If a page
/// run it carries cannot go (the pool is full), nothing goes: `OutOfMemory`, and the sender
/// keeps its capabilities (its moves are committed only once the forward went).
fn split_forward(effects: Vec<Effect>) -> Result<Option<Outgoing>, Error> {
    let mut forward = None;
    let mut rest = Vec::new();
    let mut refused = false;
    for e in effects {
        match e {
            Effect::Forward {
                to,
                dst,
                call,
                parcel,
            } if forward.is_none() && !refused => {
                let (parcel, leases, failed) = export(parcel, to);
                if failed.is_empty() {
                    forward = Some(Outgoing {
                        to,
                        encoded: wire::encode_request(dst, call, &parcel),
                        leases,
                    });
                } else {
                    cancel_exported(leases);
                    refused = true;
                }
            }
            other => rest.push(other),
        }
    }
    run(rest);
    if refused {
        return Err(Error::OutOfMemory);
    }
    Ok(forward)
}

/// A page run copied into the shared pool for another instance.
struct Exported {
    run: mk_ipc::ObjId,
    lease: mk_pool::Lease,
}

/// Puts the page runs `p` carries into the shared pool, handed over to instance `to`
/// (`Object::PoolPages`). A run the pool cannot take is left out of the parcel and returned
/// in the third list (still held here: the caller decides).
fn export(mut p: Parcel, to: u8) -> (Parcel, Vec<Exported>, Vec<mk_ipc::ObjId>) {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for slot in p.caps.iter_mut() {
        let Some(Cap {
            object: Object::Pages { id, .. },
            ..
        }) = *slot
        else {
            continue;
        };
        match to_pool(id, to) {
            Some((frame, e)) => {
                let (pages, generation) = (e.lease.pages, e.lease.generation);
                out.push(e);
                *slot = slot.map(|c| Cap {
                    object: Object::PoolPages {
                        frame,
                        pages,
                        generation,
                    },
                    ..c
                });
            }
            None => {
                failed.push(id);
                *slot = None;
            }
        }
    }
    (p, out, failed)
}

/// An answer or a late forward, already committed: a run that could not go is freed and
/// counted (`PAGES_LOST`).
fn export_or_drop(p: Parcel, to: u8) -> (Parcel, Vec<Exported>) {
    let (p, out, failed) = export(p, to);
    for id in failed {
        PAGES_LOST.fetch_add(1, Ordering::Relaxed);
        drop(runs(|r| r.remove(id)));
    }
    (p, out)
}

fn to_pool(run: mk_ipc::ObjId, to: u8) -> Option<(u64, Exported)> {
    let (pool, pool_phys) = region::pool()?;
    let me = crate::instance::id().raw();
    let data = runs(|r| r.get(run).map(PageRun::to_bytes))?;
    let pages = (data.len() / 4096) as u32;
    let lease = pool.alloc(me, pages).ok()?;
    let written = pool.checked_write(lease.first, lease.pages, me, &data);
    let handed = match written {
        Ok(()) => pool.hand_over(lease, me, u16::from(to)),
        Err(e) => Err(e),
    };
    let lease = match handed {
        Ok(l) => l,
        Err(_) => {
            let _ = pool.release(lease, me);
            return None;
        }
    };
    let offset = pool.page_phys_offset(lease.first).ok()? as u64;
    Some(((pool_phys + offset) >> 12, Exported { run, lease }))
}

/// The forward went: the runs it carried are the receiver's now (in the pool).
fn free_exported(e: &[Exported]) {
    for x in e {
        drop(runs(|r| r.remove(x.run)));
    }
}

/// The forward could not go: the pool pages come back, the runs stay the sender's.
fn cancel_exported(e: Vec<Exported>) {
    let Some((pool, _)) = region::pool() else {
        return;
    };
    let me = crate::instance::id().raw();
    for x in e {
        if let Ok(l) = pool.cancel(x.lease, me) {
            let _ = pool.release(l, me);
        }
    }
}

/// Takes the pool pages a parcel from `from` carries (they must be in transit from it to
/// us), copies them into page runs of this instance and gives the parcel capabilities to
/// those; a run that is not ours to take is left out (counted in `PAGES_LOST`).
fn import(mut p: Parcel, from: InstanceId) -> Parcel {
    for slot in p.caps.iter_mut() {
        let Some(Cap {
            object:
                Object::PoolPages {
                    frame,
                    pages,
                    generation,
                },
            ..
        }) = *slot
        else {
            continue;
        };
        let local = from_pool(frame, pages, generation, from).and_then(|run| {
            let n = run.pages() as u32;
            runs(|r| r.insert(run)).ok().map(|id| (id, n))
        });
        *slot = match local {
            Some((id, pages)) => slot.map(|c| Cap {
                object: Object::Pages { id, pages },
                ..c
            }),
            None => {
                PAGES_LOST.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
    }
    p
}

fn from_pool(frame: u64, pages: u32, generation: u32, from: InstanceId) -> Option<PageRun> {
    let p = mk_wire::LargeDataPayload {
        pool_frame: frame,
        page_count: pages,
        generation,
        byte_len: u64::from(pages) * 4096,
    };
    let data = messaging::bulk::receive_large(from, &p).ok()?;
    PageRun::from_bytes(&data).ok()
}

/// `send`: task `me` sends `msg` through `h` without waiting.
pub fn send(me: TaskId, h: Handle, msg: &IpcMsg) -> Result<(), Error> {
    let parcel = parcel_of(msg)?;
    let (sent, effects) = with(|i| {
        let s = i.send(me, h, parcel, msg.caps, msg.cap_move, None);
        (s, wake_and_take(i))
    })
    .ok_or(Error::NoSuchTask)?;
    sent?;
    if let Some(out) = split_forward(effects)? {
        match forward_now(out.to, IPC_REQUEST, &out.encoded) {
            Ok(()) => free_exported(&out.leases),
            Err(err) => {
                cancel_exported(out.leases);
                return Err(if is_full(err) {
                    Error::Busy
                } else {
                    Error::PeerDead
                });
            }
        }
        with(|i| i.commit_moves(me, msg.caps, msg.cap_move));
    }
    Ok(())
}

/// `call`: task `me` sends `msg` through `h` and waits up to `timeout_ms` for the reply,
/// which replaces `msg`. Returns the reply's label.
pub fn call(me: TaskId, h: Handle, msg: &mut IpcMsg, timeout_ms: u64) -> Result<u64, Error> {
    let timeout_ms = match timeout_ms {
        0 => mk_abi::ipc::DEFAULT_CALL_TIMEOUT_MS,
        t if t > mk_abi::ipc::MAX_CALL_TIMEOUT_MS => return Err(Error::BadArgument),
        t => t,
    };
    let parcel = parcel_of(msg)?;
    let deadline = ticks_after_ms(timeout_ms);
    let (sent, effects) = with(|i| {
        let s = i.send(me, h, parcel, msg.caps, msg.cap_move, Some(deadline));
        (s, wake_and_take(i))
    })
    .ok_or(Error::NoSuchTask)?;
    let mut sent: Sent = sent?;
    if let Some(answer) = sent.answered.take() {
        run(effects);
        return finish(me, msg, answer?, [mk_abi::ipc::NO_CAP; 2]);
    }
    let Some(token) = sent.token else {
        return Err(Error::BadArgument);
    };
    let forward = match split_forward(effects) {
        Ok(f) => f,
        Err(e) => {
            with(|i| i.cancel_call(token));
            return Err(e);
        }
    };
    if let Some(out) = forward {
        // A full mailbox makes the caller wait (a tick at a time) until its deadline.
        loop {
            match forward_now(out.to, IPC_REQUEST, &out.encoded) {
                Ok(()) => {
                    free_exported(&out.leases);
                    break;
                }
                Err(err) if is_full(err) && tsc::read() < deadline => {
                    sched::sleep_until(ticks_after_ms(1).min(deadline));
                }
                Err(err) => {
                    cancel_exported(out.leases);
                    with(|i| i.cancel_call(token));
                    return Err(if is_full(err) {
                        Error::TimedOut
                    } else {
                        Error::PeerDead
                    });
                }
            }
        }
        with(|i| i.commit_moves(me, msg.caps, msg.cap_move));
    }
    loop {
        let outcome = with(|i| match i.finish_call(me, token) {
            Some(r) => Some(r),
            None if tsc::read() >= deadline => {
                i.fail_call(token, Error::TimedOut);
                i.counters.timeouts += 1;
                i.finish_call(me, token)
            }
            None => {
                sched::block_current(Block::Sleep { until: deadline });
                None
            }
        })
        .ok_or(Error::NoSuchTask)?;
        match outcome {
            Some(Ok(d)) => {
                let handles = d.handles;
                return finish(me, msg, d.parcel, handles);
            }
            Some(Err(e)) => return Err(e),
            None => sched::reschedule(),
        }
    }
}

fn finish(
    me: TaskId,
    msg: &mut IpcMsg,
    mut parcel: Parcel,
    handles: [u64; 2],
) -> Result<u64, Error> {
    // Capabilities of an answer given at once (the name service in this instance) are
    // installed here; a delivered answer's already are.
    let handles = if parcel.caps.iter().any(Option::is_some) {
        let caps = core::mem::take(&mut parcel.caps);
        let mut hs = [mk_abi::ipc::NO_CAP; 2];
        for (k, c) in caps.iter().enumerate() {
            if let Some(c) = c {
                hs[k] = with(|i| i.grant(me, *c))
                    .and_then(Result::ok)
                    .map_or(mk_abi::ipc::NO_CAP, |h| h.0);
            }
        }
        hs
    } else {
        handles
    };
    let label = u64::from(parcel.label);
    fill(
        msg,
        &Delivery {
            kind: Received::Message,
            parcel,
            handles,
        },
    );
    Ok(label)
}

/// `recv`: task `me` waits on its endpoint `h` for a message or notification bits.
pub fn recv(me: TaskId, h: Handle, out: &mut IpcMsg) -> Result<Received, Error> {
    loop {
        let got = with(|i| {
            let r = i.recv(me, h);
            if matches!(r, Ok(None)) {
                sched::block_current(Block::Event);
            }
            r
        })
        .ok_or(Error::NoSuchTask)??;
        if let Some(d) = got {
            fill(out, &d);
            return Ok(d.kind);
        }
        sched::reschedule();
        if sched::kill_pending() {
            sched::exit_current(mk_abi::STATUS_KILLED);
        }
    }
}

/// `reply`: task `me` answers the last call it received.
pub fn reply(me: TaskId, msg: &IpcMsg) -> Result<(), Error> {
    let parcel = parcel_of(msg)?;
    with_effects(|i| i.reply(me, parcel, msg.caps, msg.cap_move))?
}

pub fn create_endpoint(me: TaskId) -> Result<Handle, Error> {
    with(|i| i.create_endpoint(me)).ok_or(Error::NoSuchTask)?
}

pub fn create_notification(me: TaskId, ep: Handle) -> Result<Handle, Error> {
    with(|i| i.create_notification(me, ep)).ok_or(Error::NoSuchTask)?
}

pub fn signal(me: TaskId, h: Handle, bits: u64) -> Result<(), Error> {
    with_effects(|i| i.signal(me, h, bits))?
}

pub fn copy_cap(me: TaskId, h: Handle, rights: u64, badge: u64) -> Result<Handle, Error> {
    let rights = u8::try_from(rights)
        .ok()
        .and_then(Rights::from_bits)
        .ok_or(Error::BadArgument)?;
    let badge = u32::try_from(badge).map_err(|_| Error::BadArgument)?;
    with(|i| i.copy_cap(me, h, rights, badge)).ok_or(Error::NoSuchTask)?
}

pub fn drop_cap(me: TaskId, h: Handle) -> Result<(), Error> {
    let was_ports = with(|i| {
        let c = i.cap(me, h)?;
        i.drop_cap(me, h)?;
        Ok::<bool, Error>(matches!(c.object, Object::IoPorts { .. }))
    })
    .ok_or(Error::NoSuchTask)??;
    if was_ports {
        // The running task loses the ports now, not at its next switch.
        sync_io_ports(me);
    }
    Ok(())
}

/// `cap_info`: `(kind | rights << 8 | instance << 16, object id)`.
pub fn cap_info(me: TaskId, h: Handle) -> Result<(u64, u64), Error> {
    let (cap, here) = with(|i| i.cap(me, h).map(|c| (c, i.me()))).ok_or(Error::NoSuchTask)??;
    let (instance, object) = cap.object.locate(here);
    Ok((
        cap.object.kind() as u64 | u64::from(cap.rights.bits()) << 8 | u64::from(instance) << 16,
        object,
    ))
}

/// Every capability of task `id` (for the shell's `caps`); none for a task that does not
/// run (any more).
pub fn caps_of(id: TaskId) -> Vec<(Handle, Cap)> {
    let alive = sched::with(|s| {
        s.state(id)
            .is_some_and(|st| !matches!(st, mk_sched::State::Exited { .. }))
    });
    if alive != Some(true) {
        return Vec::new();
    }
    with(|i| i.caps_of(id)).unwrap_or_default()
}

/// `irq_bind`: binds the line of `irq` to bit `bit` of notification `n`. The line's
/// interrupts are then the task's: the kernel masks the line at each, and `irq_ack` unmasks.
pub fn irq_bind(me: TaskId, irq: Handle, n: Handle, bit: u64) -> Result<u8, Error> {
    with(|i| i.irq_bind(me, irq, n, bit)).ok_or(Error::NoSuchTask)?
}

/// The line task `me` may acknowledge with its capability `irq`.
pub fn irq_line(me: TaskId, irq: Handle) -> Result<u8, Error> {
    with(|i| i.irq_line(me, irq)).ok_or(Error::NoSuchTask)?
}

/// An interrupt of `line` (in its handler, interrupts off): whether a task took it.
/// (The IPC lock is only ever held with interrupts off, so it is never held by the context
/// this interrupt came from; another CPU holds it for a few hundred instructions at most.)
pub fn irq_fired(line: usize) -> bool {
    with_effects(|i| i.irq_fired(line)).unwrap_or(false)
}

pub fn irq_bound(line: usize) -> bool {
    with(|i| i.irq_bound(line)).unwrap_or(false)
}

/// `pages`: takes task `me`'s pages `va..va + len` out of its address space into a page run
/// and gives it a capability to the run.
pub fn grant_pages(me: TaskId, va: u64, len: u64) -> Result<Handle, Error> {
    if len == 0 || va % 4096 != 0 {
        return Err(Error::BadArgument);
    }
    let pages = len.div_ceil(4096);
    if pages > mk_abi::ipc::MAX_GRANT_PAGES {
        return Err(Error::BadLength);
    }
    if with(|i| i.cap_room(me)) != Some(true) {
        return Err(Error::TooManyCaps);
    }
    let run = sched::with(|s| {
        let t = s.get_mut(me).ok_or(Error::NoSuchTask)?;
        t.space.take_anon(va, pages).map_err(|e| e.abi_error())
    })
    .ok_or(Error::NoSuchTask)??;
    let id = runs(|r| r.insert(run)).map_err(|_| Error::OutOfMemory)?;
    match with(|i| i.new_pages(me, id, pages as u32)) {
        Some(Ok(h)) => Ok(h),
        other => {
            drop(runs(|r| r.remove(id)));
            Err(other.map_or(Error::NoSuchTask, |r| r.err().unwrap_or(Error::TooManyCaps)))
        }
    }
}

/// `pages_map`: maps the page run of task `me`'s capability `h` into it (the capability is
/// used up). Returns the address.
pub fn map_pages(me: TaskId, h: Handle) -> Result<u64, Error> {
    let (id, _) = with(|i| i.take_pages(me, h)).ok_or(Error::NoSuchTask)??;
    let run = runs(|r| r.remove(id)).ok_or(Error::Stale)?;
    sched::with(|s| {
        let t = s.get_mut(me).ok_or(Error::NoSuchTask)?;
        // On an error the run is dropped (freed) with the capability already used up.
        t.space.map_run(run).map_err(|(e, _run)| e.abi_error())
    })
    .ok_or(Error::NoSuchTask)?
}

/// Page runs this instance holds (for the tests: none may leak).
pub fn page_runs() -> usize {
    runs(|r| r.len())
}

/// The MMIO range of task `me`'s capability `h`.
pub fn mmio(me: TaskId, h: Handle) -> Result<(u64, u32), Error> {
    with(|i| i.mmio(me, h)).ok_or(Error::NoSuchTask)?
}

/// This instance's IPC counters.
pub fn counters() -> mk_ipc::Counters {
    with(|i| i.counters).unwrap_or_default()
}
