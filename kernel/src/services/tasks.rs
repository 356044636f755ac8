//! Task control across instances: the shell (and the tests) in one instance start, end and
//! list the tasks of another through `USER` messages handled here. A request for the running
//! instance itself takes the local path, with the same results.
//!
//! | subtype | request payload | reply payload (status Ok) |
//! |---|---|---|
//! | `SPAWN` (0x101) | bytes: CPU hint (u32 LE, `u32::MAX` any), then the command line | word: `mk_abi::encode` of the spawn result (task id or error) |
//! | `KILL` (0x102) | word: task id | word: `mk_abi::encode` of the result |
//! | `LIST` (0x103) | word: first slot to list | word: count, then per task: id, state and CPU, CPU time (us), name (8 bytes) |
//! | `STATS` (0x104) | none | words: tasks, switches, system calls, errors, faults, kills, exits, free frames |
//! | `STATUS` (0x105) | word: task id | words: 0 and the exit status if it ended recently; 1 if it still runs; 2 if unknown |
//!
//! The sender is not checked: any instance may control another's tasks (issue 14 brings
//! capabilities). Every field is validated: an id that names no task gets an error.

#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mk_abi::TaskId;
use mk_dispatch::{HandlerKey, Reply};
use mk_wire::{Kind, Message, Payload, Status, UserPayload};

use crate::instance::InstanceId;
use crate::messaging::{self, HandlerFn};
use crate::tasks::sched;

pub mod user {
    pub const SPAWN: u16 = 0x101;
    pub const KILL: u16 = 0x102;
    pub const LIST: u16 = 0x103;
    pub const STATS: u16 = 0x104;
    pub const STATUS: u16 = 0x105;
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

static HANDLERS: [(u16, HandlerFn); 5] = [
    (user::SPAWN, handle_spawn),
    (user::KILL, handle_kill),
    (user::LIST, handle_list),
    (user::STATS, handle_stats),
    (user::STATUS, handle_status),
];

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

fn spawn_here(args: &str, hint: Option<usize>) -> Result<TaskId, mk_abi::Error> {
    sched::spawn(args, None, hint).map_err(|e| {
        crate::warn!("spawn {args:?}: {e}");
        e.abi()
    })
}

fn handle_spawn(m: &Message) -> Option<Reply> {
    let b = bytes(m);
    let (Some(hint), Some(text)) = (b.get(..4), b.get(4..)) else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    let hint = u32::from_le_bytes([hint[0], hint[1], hint[2], hint[3]]);
    let Ok(text) = core::str::from_utf8(text) else {
        return reply_words(&[mk_abi::encode(Err(mk_abi::Error::BadArgument))]);
    };
    let hint = (hint != u32::MAX).then_some(hint as usize);
    reply_words(&[mk_abi::encode(spawn_here(text, hint).map(TaskId::raw))])
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
    if on == crate::instance::id() {
        return spawn_here(args, hint.map(|h| h as usize)).map_err(ControlError::Refused);
    }
    let mut b = Vec::with_capacity(4 + args.len());
    b.extend_from_slice(&hint.unwrap_or(u32::MAX).to_le_bytes());
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
