//! Task control across instances: the shell (and the tests) in one instance start, end and
//! list the tasks of another through `USER` messages handled here. A request for the running
//! instance itself takes the local path, with the same results.
//!
//! | subtype | request payload | reply payload (status Ok) |
//! |---|---|---|
//! | `SPAWN` (0x101) | bytes: CPU hint (u32 LE, `u32::MAX` any), grant count (u8), 16 bytes per device grant (kind u8: 1 IRQ, 2 I/O ports, 3 MMIO; 3 zero bytes; u32 line, `base \| len << 16` or pages; u64 physical address), then the command line | word: `mk_abi::encode` of the spawn result (task id or error) |
//! | `KILL` (0x102) | word: task id | word: `mk_abi::encode` of the result |
//! | `LIST` (0x103) | word: first slot to list | word: count, then per task: id, state and CPU, CPU time (us), name (8 bytes) |
//! | `STATS` (0x104) | none | words: tasks, switches, system calls, errors, faults, kills, exits, free frames |
//! | `STATUS` (0x105) | word: task id | words: 0 and the exit status if it ended recently; 1 if it still runs; 2 if unknown |
//! | `CAPS` (0x106) | words: task id, first slot | word: count, then per capability: handle, `kind \| rights << 8 \| instance << 16`, object id (at most 9) |
//! | `IPC_STATS` (0x107) | none | words: the IPC counters (`IPC_COUNTERS` names them) |
//!
//! The sender is not checked: any instance may control another's tasks (these are the
//! operator's and the tests' requests; a task's authority is its capabilities, `ipc.rs`).
//! Every field is validated: an id that names no task gets an error.

#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mk_abi::TaskId;
use mk_dispatch::{HandlerKey, Reply};
use mk_wire::{Kind, Message, Payload, Status, UserPayload};

use crate::instance::InstanceId;
use crate::messaging::{self, HandlerFn};
pub use crate::services::ipc::Grant;
use crate::tasks::sched;

pub mod user {
    pub const SPAWN: u16 = 0x101;
    pub const KILL: u16 = 0x102;
    pub const LIST: u16 = 0x103;
    pub const STATS: u16 = 0x104;
    pub const STATUS: u16 = 0x105;
    pub const CAPS: u16 = 0x106;
    pub const IPC_STATS: u16 = 0x107;
}

/// One task as `LIST` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: TaskId,
    pub state: &'static str,
    pub cpu: u8,
    pub cpu_time_us: u64,
    pub name: String,
}

/// Tasks per `LIST` reply: a count word, then 3 words and 8 name bytes per task.
const ROWS_PER_REPLY: usize = (mk_wire::MAX_PAYLOAD - 8) / 32;

static HANDLERS: [(u16, HandlerFn); 7] = [
    (user::SPAWN, handle_spawn),
    (user::KILL, handle_kill),
    (user::LIST, handle_list),
    (user::STATS, handle_stats),
    (user::STATUS, handle_status),
    (user::CAPS, handle_caps),
    (user::IPC_STATS, handle_ipc_stats),
];

/// Capabilities per `CAPS` reply.
const CAPS_PER_REPLY: usize = (mk_wire::MAX_PAYLOAD - 8) / 24;

pub fn register() -> Result<(), Kind> {
    let Some(d) = messaging::dispatcher() else {
        return Err(Kind::User(user::SPAWN));
    };
    for (sub, handler) in &HANDLERS {
        d.registry()
            .register(HandlerKey::Kind(Kind::User(*sub)), handler)
            .map_err(|_| Kind::User(*sub))?;
    }
    Ok(())
}

fn bytes(m: &Message) -> &[u8] {
    match &m.payload {
        Payload::User(u) => u.as_bytes(),
        _ => &[],
    }
}

fn words(m: &Message) -> Vec<u64> {
    match &m.payload {
        Payload::User(u) => u.words().collect(),
        _ => Vec::new(),
    }
}

fn reply_words(w: &[u64]) -> Option<Reply> {
    Some(match UserPayload::from_words(w) {
        Some(p) => Reply::ok(Payload::User(p)),
        None => Reply::error(Status::InternalError),
    })
}

fn spawn_here(args: &str, hint: Option<usize>, grants: &[Grant]) -> Result<TaskId, mk_abi::Error> {
    let caps = crate::services::ipc::grant_caps(grants)?;
    sched::spawn_with(args, None, hint, caps).map_err(|e| {
        crate::warn!("spawn {args:?}: {e}");
        e.abi()
    })
}

/// Most device grants one spawn carries.
pub const MAX_GRANTS: usize = 4;

fn encode_grant(g: &Grant) -> [u8; 16] {
    let (kind, x, y) = match *g {
        Grant::Irq(line) => (1u8, u32::from(line), 0u64),
        Grant::IoPorts { base, len } => (2, u32::from(base) | u32::from(len) << 16, 0),
        Grant::Mmio { phys, pages } => (3, pages, phys),
    };
    let mut b = [0u8; 16];
    b[0] = kind;
    b[4..8].copy_from_slice(&x.to_le_bytes());
    b[8..16].copy_from_slice(&y.to_le_bytes());
    b
}

fn decode_grant(b: &[u8]) -> Option<Grant> {
    let x = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let y = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    if b.get(1..4)? != [0, 0, 0] {
        return None;
    }
    let g = match b[0] {
        1 => Grant::Irq(u8::try_from(x).ok()?),
        2 => Grant::IoPorts {
            base: x as u16,
            len: (x >> 16) as u16,
        },
        3 => Grant::Mmio { phys: y, pages: x },
        _ => return None,
    };
    g.validate().ok()
}

fn handle_spawn(m: &Message) -> Option<Reply> {
    let b = bytes(m);
    let (Some(hint), Some(&n)) = (b.get(..4), b.get(4)) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    let n = usize::from(n);
    let Some(text) = b.get(5 + 16 * n..).filter(|_| n <= MAX_GRANTS) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    let mut grants = Vec::new();
    for k in 0..n {
        match decode_grant(&b[5 + 16 * k..5 + 16 * (k + 1)]) {
            Some(g) => grants.push(g),
            None => return reply_words(&[mk_abi::encode(Err(mk_abi::Error::BadArgument))]),
        }
    }
    let hint = u32::from_le_bytes([hint[0], hint[1], hint[2], hint[3]]);
    let Ok(text) = core::str::from_utf8(text) else {
        return reply_words(&[mk_abi::encode(Err(mk_abi::Error::BadArgument))]);
    };
    let hint = (hint != u32::MAX).then_some(hint as usize);
    reply_words(&[mk_abi::encode(
        spawn_here(text, hint, &grants).map(TaskId::raw),
    )])
}

fn handle_caps(m: &Message) -> Option<Reply> {
    let w = words(m);
    let (Some(&task), first) = (w.first(), w.get(1).copied().unwrap_or(0)) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    reply_words(&caps_words(TaskId::from_raw(task), first))
}

fn caps_words(id: TaskId, first: u64) -> Vec<u64> {
    let me = crate::instance::id().index() as u8;
    let caps: Vec<_> = crate::services::ipc::caps_of(id)
        .into_iter()
        .filter(|(h, _)| u64::from(h.slot()) >= first)
        .take(CAPS_PER_REPLY)
        .collect();
    let mut w = alloc::vec![caps.len() as u64];
    for (h, c) in caps {
        let (instance, object) = c.object.locate(me);
        w.extend_from_slice(&[
            h.0,
            c.object.kind() as u64 | u64::from(c.rights.bits()) << 8 | u64::from(instance) << 16,
            object,
        ]);
    }
    w
}

/// One capability as `CAPS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRow {
    pub handle: mk_abi::ipc::Handle,
    pub kind: &'static str,
    pub rights: mk_abi::ipc::Rights,
    pub instance: u8,
    pub object: u64,
}

/// The capabilities of task `id` of instance `on` (the name service for a task that never
/// used IPC; nothing for a task that does not exist).
pub fn caps(on: InstanceId, id: TaskId) -> Result<Vec<CapRow>, ControlError> {
    let mut rows = Vec::new();
    let mut first = 0u64;
    loop {
        let w = if on == crate::instance::id() {
            caps_words(id, first)
        } else {
            call(on, user::CAPS, UserPayload::from_words(&[id.raw(), first]))?
        };
        let n = w.first().copied().unwrap_or(0) as usize;
        for e in w.get(1..).unwrap_or(&[]).as_chunks::<3>().0.iter().take(n) {
            let handle = mk_abi::ipc::Handle(e[0]);
            rows.push(CapRow {
                handle,
                kind: mk_abi::ipc::CapKind::from_raw(e[1] as u8).map_or("?", |k| k.name()),
                rights: mk_abi::ipc::Rights::from_bits_truncate((e[1] >> 8) as u8),
                instance: (e[1] >> 16) as u8,
                object: e[2],
            });
            first = u64::from(handle.slot()) + 1;
        }
        if n < CAPS_PER_REPLY {
            return Ok(rows);
        }
    }
}

/// The names of the IPC counters, in the order `ipc_stats` gives them.
pub const IPC_COUNTERS: [&str; 15] = [
    "calls",
    "sends",
    "receives",
    "replies",
    "notifications",
    "interrupts",
    "out",
    "in",
    "answers",
    "refused",
    "dropped",
    "timeouts",
    "peer_dead",
    "runs",
    "runs_lost",
];

fn local_ipc_stats() -> [u64; 15] {
    let c = crate::services::ipc::counters();
    [
        c.calls,
        c.sends,
        c.receives,
        c.replies,
        c.notifications,
        c.interrupts,
        c.forwarded_out,
        c.forwarded_in,
        c.answers_in,
        c.refused,
        c.dropped,
        c.timeouts,
        c.peer_dead,
        crate::services::ipc::page_runs() as u64,
        crate::services::ipc::PAGES_LOST.load(Ordering::Relaxed),
    ]
}

fn handle_ipc_stats(_m: &Message) -> Option<Reply> {
    reply_words(&local_ipc_stats())
}

/// The IPC counters of instance `on` (named by [`IPC_COUNTERS`]).
pub fn ipc_stats(on: InstanceId) -> Result<[u64; 15], ControlError> {
    if on == crate::instance::id() {
        return Ok(local_ipc_stats());
    }
    let w = call(on, user::IPC_STATS, None)?;
    let mut out = [0u64; 15];
    for (o, v) in out.iter_mut().zip(w) {
        *o = v;
    }
    Ok(out)
}

fn handle_kill(m: &Message) -> Option<Reply> {
    let Some(&raw) = words(m).first() else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    let r = sched::kill(TaskId::from_raw(raw))
        .map(|()| 0)
        .map_err(|_| mk_abi::Error::NoSuchTask);
    reply_words(&[mk_abi::encode(r)])
}

fn local_rows(first: usize) -> (Vec<TaskRow>, bool) {
    let per_us = crate::arch::tsc::ticks_per_ms().max(1000) / 1000;
    let all: Vec<TaskRow> = sched::with(|s| {
        s.tasks()
            .filter(|t| t.id.index as usize >= first)
            .map(|t| TaskRow {
                id: t.id,
                state: match t.state {
                    mk_sched::State::Ready => "ready",
                    mk_sched::State::Running { .. } => "running",
                    mk_sched::State::Blocked(_) => "blocked",
                    mk_sched::State::Exited { .. } => "exited",
                },
                cpu: t.cpu as u8,
                cpu_time_us: t.cpu_time / per_us,
                name: t.name.into(),
            })
            .collect()
    })
    .unwrap_or_default();
    let more = all.len() > ROWS_PER_REPLY;
    (all.into_iter().take(ROWS_PER_REPLY).collect(), more)
}

fn state_code(s: &str) -> u64 {
    match s {
        "ready" => 0,
        "running" => 1,
        "blocked" => 2,
        _ => 3,
    }
}

fn state_name(code: u64) -> &'static str {
    match code {
        0 => "ready",
        1 => "running",
        2 => "blocked",
        _ => "exited",
    }
}

fn handle_list(m: &Message) -> Option<Reply> {
    let first = words(m).first().copied().unwrap_or(0) as usize;
    let (rows, _) = local_rows(first);
    let mut w = alloc::vec![rows.len() as u64];
    for r in &rows {
        let mut name = [0u8; 8];
        let n = r.name.len().min(8);
        name[..n].copy_from_slice(&r.name.as_bytes()[..n]);
        w.extend_from_slice(&[
            r.id.raw(),
            state_code(r.state) << 8 | u64::from(r.cpu),
            r.cpu_time_us,
            u64::from_le_bytes(name),
        ]);
    }
    reply_words(&w)
}

/// This instance's task counters: tasks, switches, system calls, errors, faults, kills,
/// exits, free frames.
pub fn local_stats() -> [u64; 8] {
    [
        sched::with(|s| s.count() as u64).unwrap_or(0),
        sched::SWITCHES.load(Ordering::Relaxed),
        crate::syscalls::CALLS.load(Ordering::Relaxed),
        crate::syscalls::ERRORS.load(Ordering::Relaxed),
        sched::FAULTS.load(Ordering::Relaxed),
        sched::KILLS.load(Ordering::Relaxed),
        sched::EXITS.load(Ordering::Relaxed),
        crate::memory::frames::counts().0,
    ]
}

fn handle_stats(_m: &Message) -> Option<Reply> {
    reply_words(&local_stats())
}

/// How task `id` of this instance is: ended (with its status), alive, or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Ended(u64),
    Alive,
    Unknown,
}

fn local_status(id: TaskId) -> TaskStatus {
    // The scheduler first, the record of ended tasks second: a task's exit is recorded before
    // the scheduler lets it go, so a task gone from the scheduler is in the record, even if
    // it ended on another CPU between the two looks.
    let alive = sched::with(|s| {
        s.state(id)
            .is_some_and(|st| !matches!(st, mk_sched::State::Exited { .. }))
    });
    if alive == Some(true) {
        return TaskStatus::Alive;
    }
    match sched::recent_exit(id) {
        Some(status) => TaskStatus::Ended(status),
        None => TaskStatus::Unknown,
    }
}

fn handle_status(m: &Message) -> Option<Reply> {
    let Some(&raw) = words(m).first() else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    reply_words(&match local_status(TaskId::from_raw(raw)) {
        TaskStatus::Ended(s) => [0, s],
        TaskStatus::Alive => [1, 0],
        TaskStatus::Unknown => [2, 0],
    })
}

/// How task `id` of instance `on` is.
pub fn status(on: InstanceId, id: TaskId) -> Result<TaskStatus, ControlError> {
    if on == crate::instance::id() {
        return Ok(local_status(id));
    }
    let w = call(on, user::STATUS, UserPayload::from_words(&[id.raw()]))?;
    Ok(match (w.first(), w.get(1)) {
        (Some(0), Some(&s)) => TaskStatus::Ended(s),
        (Some(1), _) => TaskStatus::Alive,
        _ => TaskStatus::Unknown,
    })
}

/// Why a task-control request to an instance failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// The instance did not answer in time (or is not running).
    Unreachable(InstanceId),
    /// The request could not be sent to the instance.
    Send(InstanceId, messaging::SendError),
    /// It answered with an error status.
    Status(Status),
    /// The operation itself was refused.
    Refused(mk_abi::Error),
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreachable(i) => write!(f, "instance {i} did not answer"),
            Self::Send(i, e) => write!(f, "cannot send to instance {i}: {e:?}"),
            Self::Status(s) => write!(f, "instance answered {s:?}"),
            Self::Refused(e) => write!(f, "{e}"),
        }
    }
}

fn call(to: InstanceId, sub: u16, payload: Option<UserPayload>) -> Result<Vec<u64>, ControlError> {
    let payload = payload
        .or_else(|| UserPayload::new(&[]))
        .map_or(Payload::Empty, Payload::User);
    let reply = messaging::call_patiently(to, Kind::User(sub), payload).map_err(|e| match e {
        messaging::CallFailure::Timeout => ControlError::Unreachable(to),
        messaging::CallFailure::Send(e) => ControlError::Send(to, e),
    })?;
    if reply.status != Status::Ok {
        return Err(ControlError::Status(reply.status));
    }
    Ok(words(&reply))
}

fn first_result(w: &[u64]) -> Result<u64, ControlError> {
    let raw = w
        .first()
        .copied()
        .ok_or(ControlError::Status(Status::InternalError))?;
    mk_abi::decode(raw).map_err(ControlError::Refused)
}

/// Starts `args` as a task of instance `on` (CPU `hint` of it, or any).
pub fn spawn(on: InstanceId, args: &str, hint: Option<u32>) -> Result<TaskId, ControlError> {
    spawn_with(on, args, hint, &[])
}

/// [`spawn`] with devices the task holds from its start (handles 1, 2, ... in order).
pub fn spawn_with(
    on: InstanceId,
    args: &str,
    hint: Option<u32>,
    grants: &[Grant],
) -> Result<TaskId, ControlError> {
    if grants.len() > MAX_GRANTS {
        return Err(ControlError::Refused(mk_abi::Error::BadArgument));
    }
    if on == crate::instance::id() {
        return spawn_here(args, hint.map(|h| h as usize), grants).map_err(ControlError::Refused);
    }
    let mut b = Vec::with_capacity(5 + 16 * grants.len() + args.len());
    b.extend_from_slice(&hint.unwrap_or(u32::MAX).to_le_bytes());
    b.push(grants.len() as u8);
    for g in grants {
        b.extend_from_slice(&encode_grant(g));
    }
    b.extend_from_slice(args.as_bytes());
    let p = UserPayload::new(&b).ok_or(ControlError::Refused(mk_abi::Error::BadLength))?;
    first_result(&call(on, user::SPAWN, Some(p))?).map(TaskId::from_raw)
}

/// Ends task `id` of instance `on`.
pub fn kill(on: InstanceId, id: TaskId) -> Result<(), ControlError> {
    if on == crate::instance::id() {
        return sched::kill(id).map_err(|_| ControlError::Refused(mk_abi::Error::NoSuchTask));
    }
    let p = UserPayload::from_words(&[id.raw()]);
    first_result(&call(on, user::KILL, p)?).map(|_| ())
}

/// The tasks of instance `on`.
pub fn list(on: InstanceId) -> Result<Vec<TaskRow>, ControlError> {
    if on == crate::instance::id() {
        let mut rows = Vec::new();
        let mut first = 0;
        loop {
            let (chunk, more) = local_rows(first);
            first = chunk.last().map_or(first, |r| r.id.index as usize + 1);
            rows.extend(chunk);
            if !more {
                return Ok(rows);
            }
        }
    }
    let mut rows = Vec::new();
    let mut first = 0u64;
    loop {
        let w = call(on, user::LIST, UserPayload::from_words(&[first]))?;
        let n = w.first().copied().unwrap_or(0) as usize;
        for e in w.get(1..).unwrap_or(&[]).as_chunks::<4>().0.iter().take(n) {
            let name = e[3].to_le_bytes();
            let len = name.iter().position(|&b| b == 0).unwrap_or(8);
            rows.push(TaskRow {
                id: TaskId::from_raw(e[0]),
                state: state_name(e[1] >> 8),
                cpu: e[1] as u8,
                cpu_time_us: e[2],
                name: String::from_utf8_lossy(&name[..len]).into(),
            });
        }
        if n < ROWS_PER_REPLY {
            return Ok(rows);
        }
        first = rows.last().map_or(first, |r| u64::from(r.id.index) + 1);
    }
}

/// The task counters of instance `on` (see [`local_stats`]).
pub fn stats(on: InstanceId) -> Result<[u64; 8], ControlError> {
    if on == crate::instance::id() {
        return Ok(local_stats());
    }
    let w = call(on, user::STATS, None)?;
    let mut out = [0u64; 8];
    for (o, v) in out.iter_mut().zip(w) {
        *o = v;
    }
    Ok(out)
}
