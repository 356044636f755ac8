//! The capability IPC core of one instance, pure logic (host-tested): every task's capability
//! table, the endpoints and notifications the instance hosts, the calls its tasks wait on,
//! interrupt bindings, and (in instance 0) the system-wide name table. `docs/ipc.md` is the
//! reference.
//!
//! The kernel keeps one [`Ipc`] behind a lock. Operations never block and never send: they
//! return what the kernel must do next ([`Effect`]: wake a task, send a message to another
//! instance), so that the kernel can block, switch and use the mailboxes with the lock let
//! go. Everything a task names is checked here: handles against its own table (generations),
//! rights against the call, objects against their generations.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod caps;
pub mod endpoints;
pub mod names;
pub mod parcel;
pub mod wire;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use mk_abi::ipc::{Handle, MAX_CAPS, NO_CAP, Rights, names as labels};
use mk_abi::{Error, Received, TaskId};

pub use caps::{Cap, CapTable, ObjId, Object};
pub use endpoints::{Endpoint, Notification, QUEUE_DEPTH, Slots};
pub use names::Names;
pub use parcel::{CallToken, Envelope, Parcel, ReplyTo};

/// The name service's destination id in cross-instance messages.
pub const NAME_SERVICE_ID: ObjId = ObjId {
    index: u16::MAX,
    generation: 0,
};
/// Most calls this instance's tasks wait on at once.
pub const MAX_CALLS: usize = 256;
/// Most unanswered calls one task holds (received, not yet replied to).
pub const MAX_PENDING_REPLIES: usize = 16;
/// Interrupt lines that can be bound to notifications.
pub const MAX_LINES: usize = 64;
/// The sender of what a kernel itself sends (the name service's replies, errors).
pub const KERNEL_TASK: TaskId = TaskId {
    index: 0,
    generation: 0,
};

/// What the kernel must do after an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a request (`call` names the caller's pending call) to endpoint `dst` of
    /// instance `to`.
    Forward {
        to: u8,
        dst: ObjId,
        call: Option<CallToken>,
        parcel: Parcel,
    },
    /// Send the answer of call `token` to instance `to`.
    Answer {
        to: u8,
        token: CallToken,
        result: Result<Parcel, Error>,
    },
    /// Tell instance 0's name service that endpoint `endpoint` of this instance is gone.
    Forget { endpoint: ObjId },
    /// Interrupt line `line` lost its binding (its task exited): the kernel takes it back.
    Unbound { line: u8 },
    /// Page run `run` has no holder any more (its capability was dropped, or died with a
    /// task or an undelivered message): the kernel frees its pages.
    Release { run: ObjId },
}

/// A call waiting for its answer.
#[derive(Debug)]
struct PendingCall {
    caller: TaskId,
    /// The instance the answer must come from.
    target: u8,
    deadline: u64,
    outcome: Option<Result<Parcel, Error>>,
}

/// What a task receives: the parcel, with its capabilities installed as handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub kind: Received,
    pub parcel: Parcel,
    pub handles: [u64; MAX_CAPS],
}

/// A task's IPC state.
#[derive(Debug, Default)]
pub struct TaskIpc {
    pub caps: CapTable,
    /// Calls received and not answered yet; `reply` answers the last.
    pub replies: Vec<ReplyTo>,
}

/// How a send went.
#[derive(Debug, Default)]
pub struct Sent {
    /// The pending call (for `call`), to wait on with [`Ipc::finish_call`].
    pub token: Option<CallToken>,
    /// Answered at once (calls to the name service in instance 0).
    pub answered: Option<Result<Parcel, Error>>,
}

/// Counters since boot (this instance).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub sends: u64,
    pub calls: u64,
    pub receives: u64,
    pub replies: u64,
    pub notifications: u64,
    pub interrupts: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub answers_in: u64,
    pub refused: u64,
    /// One-way messages from another instance that found their endpoint full or gone.
    pub dropped: u64,
    pub timeouts: u64,
    pub peer_dead: u64,
}

#[derive(Debug, Clone, Copy)]
struct IrqBinding {
    notification: ObjId,
    bit: u8,
    owner: TaskId,
}

/// The IPC state of one instance.
#[derive(Debug)]
pub struct Ipc {
    me: u8,
    pub endpoints: Slots<Endpoint>,
    pub notifications: Slots<Notification>,
    calls: Vec<(u16, Option<PendingCall>)>,
    tasks: BTreeMap<TaskId, TaskIpc>,
    irqs: [Option<IrqBinding>; MAX_LINES],
    pub names: Names,
    pub counters: Counters,
    /// What the last operations left for the kernel to do ([`Ipc::take_effects`]).
    effects: Vec<Effect>,
    /// Tasks to wake ([`Ipc::take_wakes`]; kept apart, and its capacity kept, so that the
    /// common path allocates nothing).
    wakes: Vec<TaskId>,
}

impl Ipc {
    pub fn new(me: u8) -> Self {
        Self {
            me,
            endpoints: Slots::new(endpoints::MAX_OBJECTS),
            notifications: Slots::new(endpoints::MAX_OBJECTS),
            calls: Vec::new(),
            tasks: BTreeMap::new(),
            irqs: [None; MAX_LINES],
            names: Names::new(),
            counters: Counters::default(),
            effects: Vec::new(),
            wakes: Vec::with_capacity(8),
        }
    }

    /// The effects the operations since the last call left: the kernel carries them out
    /// (in order) after letting the lock go.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        core::mem::take(&mut self.effects)
    }

    /// Whether effects wait (cheaper than taking an empty vector).
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    pub fn me(&self) -> u8 {
        self.me
    }

    fn task(&mut self, id: TaskId) -> &mut TaskIpc {
        self.tasks.entry(id).or_default()
    }

    /// Task `id`'s capabilities (empty for a task that never used IPC but holds the name
    /// service: every task does).
    pub fn caps_of(&self, id: TaskId) -> Vec<(Handle, Cap)> {
        match self.tasks.get(&id) {
            Some(t) => t.caps.iter().collect(),
            None => CapTable::new().iter().collect(),
        }
    }

    /// Gives task `id` a capability (device grants at spawn).
    pub fn grant(&mut self, id: TaskId, cap: Cap) -> Result<Handle, Error> {
        self.task(id).caps.insert(cap)
    }

    /// The capability `h` of task `id`.
    pub fn cap(&self, id: TaskId, h: Handle) -> Result<Cap, Error> {
        match self.tasks.get(&id) {
            Some(t) => t.caps.get(h),
            None => CapTable::new().get(h),
        }
    }

    fn cap_with(&mut self, id: TaskId, h: Handle, need: Rights) -> Result<Cap, Error> {
        self.task(id).caps.get_with(h, need)
    }

    pub fn create_endpoint(&mut self, id: TaskId) -> Result<Handle, Error> {
        if self.task(id).caps.free() == 0 {
            return Err(Error::TooManyCaps);
        }
        let ep = self.endpoints.insert(Endpoint::new(id))?;
        let cap = Cap::new(
            Object::Endpoint {
                instance: self.me,
                id: ep,
            },
            Rights::all(),
        );
        self.task(id).caps.insert(cap)
    }

    pub fn create_notification(&mut self, id: TaskId, ep: Handle) -> Result<Handle, Error> {
        let cap = self.cap_with(id, ep, Rights::RECV)?;
        let endpoint = self.local_endpoint(cap.object)?;
        if self.endpoints.get(endpoint).is_none() {
            return Err(Error::Stale);
        }
        if self.task(id).caps.free() == 0 {
            return Err(Error::TooManyCaps);
        }
        let n = self.notifications.insert(Notification {
            owner: id,
            endpoint,
        })?;
        self.task(id)
            .caps
            .insert(Cap::new(Object::Notification { id: n }, Rights::SEND))
    }

    fn local_endpoint(&self, object: Object) -> Result<ObjId, Error> {
        match object {
            Object::Endpoint { instance, id } if instance == self.me => Ok(id),
            _ => Err(Error::NoRight),
        }
    }

    /// ORs `bits` into notification `n`; the tasks to wake.
    fn notify(&mut self, n: ObjId, bits: u64) -> Result<(), Error> {
        let endpoint = self.notifications.get(n).ok_or(Error::Stale)?.endpoint;
        let ep = self.endpoints.get_mut(endpoint).ok_or(Error::Stale)?;
        ep.bits |= bits;
        self.counters.notifications += 1;
        self.wake_waiters(endpoint);
        Ok(())
    }

    /// Every task waiting in `recv` on endpoint `ep` is to be woken (each retries).
    fn wake_waiters(&mut self, ep: ObjId) {
        if let Some(e) = self.endpoints.get_mut(ep) {
            self.wakes.append(&mut e.waiters);
        }
    }

    /// The tasks to wake after the operations since the last call (the kernel wakes them with
    /// the IPC lock still held: waking takes only the scheduler's lock, and allocates
    /// nothing).
    pub fn take_wakes(&mut self) -> alloc::vec::Drain<'_, TaskId> {
        self.wakes.drain(..)
    }

    pub fn signal(&mut self, id: TaskId, h: Handle, bits: u64) -> Result<(), Error> {
        let cap = self.cap_with(id, h, Rights::SEND)?;
        let Object::Notification { id: n } = cap.object else {
            return Err(Error::NoRight);
        };
        self.notify(n, bits)
    }

    /// A parcel that will never be delivered: the page runs it carries are released.
    fn discard(&mut self, parcel: &Parcel) {
        for cap in parcel.caps.iter().flatten() {
            self.release(cap);
        }
    }

    fn release(&mut self, cap: &Cap) {
        if let Object::Pages { id, .. } = cap.object {
            self.effects.push(Effect::Release { run: id });
        }
    }

    /// Whether task `id` has a free capability slot.
    pub fn cap_room(&mut self, id: TaskId) -> bool {
        self.task(id).caps.free() > 0
    }

    /// Gives task `id` a capability to the kernel's page run `run` of `pages` pages (just
    /// taken out of its address space).
    pub fn new_pages(&mut self, id: TaskId, run: ObjId, pages: u32) -> Result<Handle, Error> {
        self.task(id).caps.insert(Cap::new(
            Object::Pages { id: run, pages },
            Rights::SEND | Rights::GRANT,
        ))
    }

    /// Task `id` consumes its page run capability `h` (to map the run): the run and its size.
    pub fn take_pages(&mut self, id: TaskId, h: Handle) -> Result<(ObjId, u32), Error> {
        let Object::Pages { id: run, pages } = self.cap_with(id, h, Rights::SEND)?.object else {
            return Err(Error::NoRight);
        };
        self.task(id).caps.remove(h)?;
        Ok((run, pages))
    }

    pub fn copy_cap(
        &mut self,
        id: TaskId,
        h: Handle,
        rights: Rights,
        badge: u32,
    ) -> Result<Handle, Error> {
        self.task(id).caps.copy(h, rights, badge)
    }

    pub fn drop_cap(&mut self, id: TaskId, h: Handle) -> Result<(), Error> {
        let cap = self.task(id).caps.remove(h)?;
        self.release(&cap);
        Ok(())
    }

    /// The capabilities a message carries, checked (`GRANT`, transferable), not yet taken.
    fn check_caps(
        &mut self,
        id: TaskId,
        handles: [u64; MAX_CAPS],
        moves: u64,
    ) -> Result<[Option<Cap>; MAX_CAPS], Error> {
        if moves >> MAX_CAPS != 0 {
            return Err(Error::BadArgument);
        }
        let mut out = [None; MAX_CAPS];
        for (i, &raw) in handles.iter().enumerate() {
            if raw == NO_CAP {
                if moves & (1 << i) != 0 {
                    return Err(Error::BadArgument);
                }
                continue;
            }
            if i > 0 && handles[..i].contains(&raw) {
                return Err(Error::BadArgument);
            }
            let cap = self.cap_with(id, Handle(raw), Rights::GRANT)?;
            if !cap.object.transferable() || (cap.object.move_only() && moves & (1 << i) == 0) {
                return Err(Error::NoRight);
            }
            out[i] = Some(cap);
        }
        Ok(out)
    }

    /// Takes the moved capabilities out of task `id`'s table, once the message carrying
    /// them was accepted.
    pub fn commit_moves(&mut self, id: TaskId, handles: [u64; MAX_CAPS], moves: u64) {
        for (i, &raw) in handles.iter().enumerate() {
            if moves & (1 << i) != 0 && raw != NO_CAP {
                let _ = self.task(id).caps.remove(Handle(raw));
            }
        }
    }

    fn start_call(
        &mut self,
        caller: TaskId,
        target: u8,
        deadline: u64,
    ) -> Result<CallToken, Error> {
        let index = match self.calls.iter().position(|c| c.1.is_none()) {
            Some(i) => i,
            None if self.calls.len() < MAX_CALLS => {
                self.calls.push((0, None));
                self.calls.len() - 1
            }
            None => return Err(Error::Busy),
        };
        let slot = &mut self.calls[index];
        slot.0 = slot.0.wrapping_add(1).max(1);
        slot.1 = Some(PendingCall {
            caller,
            target,
            deadline,
            outcome: None,
        });
        Ok(CallToken(u32::from(slot.0) << 16 | index as u32))
    }

    fn call_slot(&mut self, token: CallToken) -> Option<&mut PendingCall> {
        let index = (token.0 & 0xFFFF) as usize;
        let generation = (token.0 >> 16) as u16;
        match self.calls.get_mut(index) {
            Some((g, Some(c))) if *g == generation => Some(c),
            _ => None,
        }
    }

    /// Forgets a pending call (its caller gave up, or the request never left).
    pub fn cancel_call(&mut self, token: CallToken) {
        let index = (token.0 & 0xFFFF) as usize;
        let generation = (token.0 >> 16) as u16;
        let gone = match self.calls.get_mut(index) {
            Some((g, c)) if *g == generation => c.take(),
            _ => None,
        };
        if let Some(PendingCall {
            outcome: Some(Ok(parcel)),
            ..
        }) = gone
        {
            self.discard(&parcel);
        }
    }

    /// Settles call `token` with `result`, if it still waits (and, for an answer from
    /// another instance, if that instance is the one called): the caller to wake.
    fn settle(
        &mut self,
        token: CallToken,
        from: Option<u8>,
        result: Result<Parcel, Error>,
    ) -> Option<TaskId> {
        let taken = match self.call_slot(token) {
            Some(c) if c.outcome.is_none() && from.is_none_or(|f| f == c.target) => {
                c.outcome = Some(result);
                return Some(c.caller);
            }
            _ => result,
        };
        // Too late (timed out, forgotten) or not the callee's: what it carries is dropped.
        if let Ok(parcel) = taken {
            self.discard(&parcel);
        }
        None
    }

    /// Task `id` sends `parcel` (label and data; the kernel sets sender and badge) with the
    /// capabilities `handles` through its capability `h`; `deadline` makes it a call.
    pub fn send(
        &mut self,
        id: TaskId,
        h: Handle,
        mut parcel: Parcel,
        handles: [u64; MAX_CAPS],
        moves: u64,
        deadline: Option<u64>,
    ) -> Result<Sent, Error> {
        let result = self.send_inner(id, h, &mut parcel, handles, moves, deadline);
        if result.is_err() {
            self.counters.refused += 1;
        } else if deadline.is_some() {
            self.counters.calls += 1;
        } else {
            self.counters.sends += 1;
        }
        result
    }

    fn send_inner(
        &mut self,
        id: TaskId,
        h: Handle,
        parcel: &mut Parcel,
        handles: [u64; MAX_CAPS],
        moves: u64,
        deadline: Option<u64>,
    ) -> Result<Sent, Error> {
        let cap = self.cap_with(id, h, Rights::SEND)?;
        parcel.caps = self.check_caps(id, handles, moves)?;
        parcel.badge = u64::from(cap.badge);
        parcel.sender_instance = self.me;
        parcel.sender_task = id;
        let parcel = parcel.clone();
        let mut sent = Sent::default();
        match cap.object {
            Object::NameService => {
                self.mark_named(&parcel);
                if self.me == 0 {
                    let answer = self.names_request(&parcel);
                    self.commit_moves(id, handles, moves);
                    self.discard(&parcel);
                    if deadline.is_some() {
                        sent.answered = Some(answer);
                    }
                } else {
                    sent.token = match deadline {
                        Some(d) => Some(self.start_call(id, 0, d)?),
                        None => None,
                    };
                    self.effects.push(Effect::Forward {
                        to: 0,
                        dst: NAME_SERVICE_ID,
                        call: sent.token,
                        parcel,
                    });
                }
            }
            Object::Endpoint { instance, id: ep } if instance == self.me => {
                if self.endpoints.get(ep).is_none() {
                    return Err(Error::Stale);
                }
                let token = match deadline {
                    Some(d) => Some(self.start_call(id, self.me, d)?),
                    None => None,
                };
                let env = Envelope {
                    parcel,
                    reply: token.map(|token| ReplyTo::Local { caller: id, token }),
                };
                let pushed = self.endpoints.get_mut(ep).ok_or(Error::Stale)?.push(env);
                match pushed {
                    Ok(()) => {
                        self.commit_moves(id, handles, moves);
                        sent.token = token;
                        self.wake_waiters(ep);
                    }
                    // The capabilities are still the sender's (moves happen on success only).
                    Err((e, _)) => {
                        if let Some(t) = token {
                            self.cancel_call(t);
                        }
                        return Err(e);
                    }
                }
            }
            Object::Endpoint { instance, id: ep } => {
                sent.token = match deadline {
                    Some(d) => Some(self.start_call(id, instance, d)?),
                    None => None,
                };
                self.counters.forwarded_out += 1;
                self.effects.push(Effect::Forward {
                    to: instance,
                    dst: ep,
                    call: sent.token,
                    parcel,
                });
            }
            _ => return Err(Error::NoRight),
        }
        Ok(sent)
    }

    /// A registration names one of our endpoints: its death must reach the name service.
    fn mark_named(&mut self, parcel: &Parcel) {
        if parcel.label != labels::REGISTER {
            return;
        }
        if let Some(Some(Cap {
            object: Object::Endpoint { instance, id },
            ..
        })) = parcel.caps.first()
            && *instance == self.me
            && let Some(ep) = self.endpoints.get_mut(*id)
        {
            ep.named = true;
        }
    }

    /// Installs a parcel's capabilities in task `id`'s table; their handles (`NO_CAP` for
    /// one that did not fit).
    fn install(&mut self, id: TaskId, parcel: &mut Parcel) -> [u64; MAX_CAPS] {
        let mut handles = [NO_CAP; MAX_CAPS];
        for (i, cap) in parcel.caps.iter_mut().enumerate() {
            if let Some(c) = cap.take() {
                match self.task(id).caps.insert(c) {
                    Ok(h) => handles[i] = h.0,
                    Err(_) => self.release(&c),
                }
            }
        }
        handles
    }

    /// Task `id` receives on its endpoint capability `h`: a notification's bits first, then
    /// the oldest message. `None`: nothing there, and the task is now among the endpoint's
    /// waiters (the kernel blocks it, and wakes it when [`Ipc::take_wakes`] names it).
    pub fn recv(&mut self, id: TaskId, h: Handle) -> Result<Option<Delivery>, Error> {
        let cap = self.cap_with(id, h, Rights::RECV)?;
        let epid = self.local_endpoint(cap.object)?;
        let ep = self.endpoints.get_mut(epid).ok_or(Error::Stale)?;
        if ep.bits != 0 {
            let bits = core::mem::take(&mut ep.bits);
            let mut parcel = Parcel::new(0, &[]).unwrap_or_else(|| unreachable!());
            parcel.badge = bits;
            parcel.sender_instance = self.me;
            parcel.sender_task = KERNEL_TASK;
            self.counters.receives += 1;
            return Ok(Some(Delivery {
                kind: Received::Notification,
                parcel,
                handles: [NO_CAP; MAX_CAPS],
            }));
        }
        let Some(env) = ep.queue.pop_front() else {
            if !ep.waiters.contains(&id) {
                ep.waiters.push(id);
            }
            return Ok(None);
        };
        self.counters.receives += 1;
        let mut parcel = env.parcel;
        let handles = self.install(id, &mut parcel);
        let kind = match env.reply {
            Some(to) => {
                let t = self.task(id);
                if t.replies.len() >= MAX_PENDING_REPLIES {
                    let oldest = t.replies.remove(0);
                    self.answer(oldest, Err(Error::Busy));
                }
                self.task(id).replies.push(to);
                Received::Call
            }
            None => Received::Message,
        };
        Ok(Some(Delivery {
            kind,
            parcel,
            handles,
        }))
    }

    /// Sends `result` to whoever waits on `to`.
    fn answer(&mut self, to: ReplyTo, result: Result<Parcel, Error>) {
        match to {
            ReplyTo::Local { token, .. } => {
                if let Some(caller) = self.settle(token, None, result) {
                    self.wakes.push(caller);
                }
            }
            ReplyTo::Remote { instance, token } => self.effects.push(Effect::Answer {
                to: instance,
                token,
                result,
            }),
        }
    }

    /// Task `id` answers the last call it received with `parcel` and the capabilities
    /// `handles`.
    pub fn reply(
        &mut self,
        id: TaskId,
        mut parcel: Parcel,
        handles: [u64; MAX_CAPS],
        moves: u64,
    ) -> Result<(), Error> {
        let result = (|| {
            if self.task(id).replies.is_empty() {
                return Err(Error::NothingToReply);
            }
            parcel.caps = self.check_caps(id, handles, moves)?;
            Ok(())
        })();
        if let Err(e) = result {
            self.counters.refused += 1;
            return Err(e);
        }
        let to = self.task(id).replies.pop().ok_or(Error::NothingToReply)?;
        self.commit_moves(id, handles, moves);
        parcel.badge = 0;
        parcel.sender_instance = self.me;
        parcel.sender_task = id;
        self.counters.replies += 1;
        self.answer(to, Ok(parcel));
        Ok(())
    }

    /// The outcome of call `token` of task `id`, if it came (the call is then over and its
    /// capabilities are installed in the caller's table); `None` while it waits.
    pub fn finish_call(&mut self, id: TaskId, token: CallToken) -> Option<Result<Delivery, Error>> {
        let c = self.call_slot(token)?;
        if c.caller != id {
            return None;
        }
        let outcome = c.outcome.take()?;
        self.cancel_call(token);
        Some(outcome.map(|mut parcel| {
            let handles = self.install(id, &mut parcel);
            Delivery {
                kind: Received::Message,
                parcel,
                handles,
            }
        }))
    }

    /// Whether call `token` still waits (no outcome yet).
    pub fn call_waiting(&mut self, token: CallToken) -> bool {
        self.call_slot(token).is_some_and(|c| c.outcome.is_none())
    }

    /// Ends call `token` with `error` if it still waits (its caller gave up or could not
    /// send); the caller is the running task, so nothing is woken.
    pub fn fail_call(&mut self, token: CallToken, error: Error) {
        if let Some(c) = self.call_slot(token)
            && c.outcome.is_none()
        {
            c.outcome = Some(Err(error));
        }
    }

    /// A request from instance `from` (the channel's sender, never the payload's) for
    /// endpoint `dst` of this instance (or the name service).
    pub fn incoming(&mut self, from: u8, dst: ObjId, call: Option<CallToken>, mut parcel: Parcel) {
        self.counters.forwarded_in += 1;
        parcel.sender_instance = from;
        let reply = call.map(|token| ReplyTo::Remote {
            instance: from,
            token,
        });
        if dst == NAME_SERVICE_ID {
            let answer = if self.me == 0 {
                self.names_request(&parcel)
            } else {
                Err(Error::BadArgument)
            };
            self.discard(&parcel);
            if let Some(to) = reply {
                self.answer(to, answer);
            }
            return;
        }
        let env = Envelope { parcel, reply };
        let pushed = match self.endpoints.get_mut(dst) {
            None => Err((Error::Stale, env)),
            Some(ep) => ep.push(env),
        };
        match pushed {
            Ok(()) => self.wake_waiters(dst),
            Err((e, env)) => {
                self.discard(&env.parcel);
                match reply {
                    Some(to) => self.answer(to, Err(e)),
                    None => self.counters.dropped += 1,
                }
            }
        }
    }

    /// The answer from instance `from` to call `token` of one of our tasks.
    pub fn answer_in(&mut self, from: u8, token: CallToken, result: Result<Parcel, Error>) {
        self.counters.answers_in += 1;
        let result = result.map(|mut p| {
            p.sender_instance = from;
            p
        });
        if let Some(caller) = self.settle(token, Some(from), result) {
            self.wakes.push(caller);
        }
    }

    /// Ends every call past its deadline (`TimedOut`) or waiting on an instance `dead` says
    /// has stopped (`PeerDead`), waking the callers.
    pub fn expire(&mut self, now: u64, dead: impl Fn(u8) -> bool) {
        let me = self.me;
        let mut wake = Vec::new();
        let (mut timeouts, mut peer_dead) = (0, 0);
        for (_, slot) in &mut self.calls {
            let Some(c) = slot else { continue };
            if c.outcome.is_some() {
                continue;
            }
            if c.target != me && dead(c.target) {
                c.outcome = Some(Err(Error::PeerDead));
                peer_dead += 1;
            } else if now >= c.deadline {
                c.outcome = Some(Err(Error::TimedOut));
                timeouts += 1;
            } else {
                continue;
            }
            wake.push(c.caller);
        }
        self.counters.timeouts += timeouts;
        self.counters.peer_dead += peer_dead;
        self.wakes.extend(wake);
    }

    /// The earliest deadline of a waiting call (for the kernel's timer).
    pub fn next_deadline(&self) -> Option<u64> {
        self.calls
            .iter()
            .filter_map(|(_, c)| c.as_ref())
            .filter(|c| c.outcome.is_none())
            .map(|c| c.deadline)
            .min()
    }

    /// Whether any call waits on another instance (the kernel then watches for deaths).
    pub fn waits_remote(&self) -> bool {
        self.calls
            .iter()
            .filter_map(|(_, c)| c.as_ref())
            .any(|c| c.outcome.is_none() && c.target != self.me)
    }

    /// Task `id` ended: its capabilities are revoked, the endpoints and notifications it
    /// owns destroyed (calls queued there and calls it received unanswered fail with
    /// `Stale`), its interrupt bindings dropped, its own pending calls forgotten.
    pub fn task_exited(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.remove(&id) {
            for to in t.replies {
                self.answer(to, Err(Error::Stale));
            }
            for (_, cap) in t.caps.iter() {
                self.release(&cap);
            }
        }
        let owned: Vec<ObjId> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.owner == id)
            .map(|(i, _)| i)
            .collect();
        for epid in owned {
            let Some(ep) = self.endpoints.remove(epid) else {
                continue;
            };
            // Whoever waits in `recv` on it (through a copied capability) finds it gone.
            self.wakes.extend(ep.waiters.iter().copied());
            for env in ep.queue {
                self.discard(&env.parcel);
                if let Some(to) = env.reply {
                    self.answer(to, Err(Error::Stale));
                }
            }
            if ep.named {
                if self.me == 0 {
                    self.names.forget_endpoint(0, epid);
                } else {
                    self.effects.push(Effect::Forget { endpoint: epid });
                }
            }
        }
        let notes: Vec<ObjId> = self
            .notifications
            .iter()
            .filter(|(_, n)| n.owner == id)
            .map(|(i, _)| i)
            .collect();
        for n in notes {
            self.notifications.remove(n);
        }
        for line in 0..MAX_LINES {
            if self.irqs[line].is_some_and(|b| b.owner == id) {
                self.irqs[line] = None;
                self.effects.push(Effect::Unbound { line: line as u8 });
            }
        }
        let mut forgotten = Vec::new();
        for (_, slot) in &mut self.calls {
            if slot.as_ref().is_some_and(|c| c.caller == id)
                && let Some(PendingCall {
                    outcome: Some(Ok(parcel)),
                    ..
                }) = slot.take()
            {
                forgotten.push(parcel);
            }
        }
        for parcel in forgotten {
            self.discard(&parcel);
        }
        for (_, ep) in self.endpoints_mut() {
            ep.waiters.retain(|w| *w != id);
        }
    }

    fn endpoints_mut(&mut self) -> impl Iterator<Item = (ObjId, &mut Endpoint)> + '_ {
        self.endpoints.iter_mut()
    }

    /// Instance `k` stopped: calls waiting on it fail (`PeerDead`), and (in instance 0) its
    /// names are dropped.
    pub fn instance_stopped(&mut self, k: u8) {
        self.expire(0, |i| i == k);
        if self.me == 0 {
            self.names.forget_instance(k);
        }
    }

    /// Binds interrupt line of task `id`'s IRQ capability `irq` to bit `bit` of its
    /// notification `n`. Returns the line.
    pub fn irq_bind(&mut self, id: TaskId, irq: Handle, n: Handle, bit: u64) -> Result<u8, Error> {
        let Object::Irq { line } = self.cap_with(id, irq, Rights::SEND)?.object else {
            return Err(Error::NoRight);
        };
        let Object::Notification { id: nid } = self.cap_with(id, n, Rights::SEND)?.object else {
            return Err(Error::NoRight);
        };
        if bit >= 64 || usize::from(line) >= MAX_LINES {
            return Err(Error::BadArgument);
        }
        if self.notifications.get(nid).is_none() {
            return Err(Error::Stale);
        }
        if let Some(b) = self.irqs[usize::from(line)]
            && b.owner != id
        {
            return Err(Error::Busy);
        }
        self.irqs[usize::from(line)] = Some(IrqBinding {
            notification: nid,
            bit: bit as u8,
            owner: id,
        });
        Ok(line)
    }

    /// The line of task `id`'s IRQ capability `irq`, bound by it (for `irq_ack`).
    pub fn irq_line(&mut self, id: TaskId, irq: Handle) -> Result<u8, Error> {
        let Object::Irq { line } = self.cap_with(id, irq, Rights::SEND)?.object else {
            return Err(Error::NoRight);
        };
        match self.irqs.get(usize::from(line)).copied().flatten() {
            Some(b) if b.owner == id => Ok(line),
            _ => Err(Error::BadArgument),
        }
    }

    /// Whether `line` is bound to a task's notification.
    pub fn irq_bound(&self, line: usize) -> bool {
        self.irqs.get(line).is_some_and(Option::is_some)
    }

    /// An interrupt of `line` arrived (taken here, or forwarded by its owner): sets the bound
    /// notification bit. Returns whether the line is bound (else the kernel handles it).
    pub fn irq_fired(&mut self, line: usize) -> bool {
        let Some(Some(b)) = self.irqs.get(line).copied() else {
            return false;
        };
        self.counters.interrupts += 1;
        if self.notify(b.notification, 1 << b.bit).is_err() {
            self.irqs[line] = None;
        }
        true
    }

    /// The I/O port ranges task `id`'s capabilities grant.
    pub fn io_ports(&self, id: TaskId) -> Vec<(u16, u16)> {
        self.tasks.get(&id).map_or_else(Vec::new, |t| {
            t.caps
                .iter()
                .filter_map(|(_, c)| match c.object {
                    Object::IoPorts { base, len } if c.rights.contains(Rights::SEND) => {
                        Some((base, len))
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// The MMIO range of task `id`'s capability `h`.
    pub fn mmio(&mut self, id: TaskId, h: Handle) -> Result<(u64, u32), Error> {
        match self.cap_with(id, h, Rights::SEND)?.object {
            Object::Mmio { phys, pages } => Ok((phys, pages)),
            _ => Err(Error::NoRight),
        }
    }

    /// A request to the name service (instance 0 only), from the parcel's sender.
    fn names_request(&mut self, p: &Parcel) -> Result<Parcel, Error> {
        let name = names::check_name(p.data())?;
        let by = (p.sender_instance, p.sender_task);
        match p.label {
            labels::REGISTER => {
                let Some(Cap {
                    object: Object::Endpoint { instance, id },
                    rights,
                    ..
                }) = p.caps[0]
                else {
                    return Err(Error::BadArgument);
                };
                // Only a receiver publishes an endpoint: a client cannot widen what it was
                // given by registering it and looking it up again.
                if !rights.contains(Rights::RECV) {
                    return Err(Error::NoRight);
                }
                // A name of one of our own endpoints that died is free again.
                let endpoints = &self.endpoints;
                self.names
                    .retain(|e| e.instance != 0 || endpoints.get(e.endpoint).is_some());
                self.names.register(names::Entry {
                    name: name.into(),
                    instance,
                    endpoint: id,
                    by,
                })?;
                if instance == 0
                    && let Some(ep) = self.endpoints.get_mut(id)
                {
                    ep.named = true;
                }
                Ok(Parcel::new(0, &[])
                    .unwrap_or_else(|| unreachable!())
                    .from(0, KERNEL_TASK))
            }
            labels::LOOKUP => {
                let e = self.names.lookup(name).ok_or(Error::NotFound)?;
                let mut reply = Parcel::new(0, &[])
                    .unwrap_or_else(|| unreachable!())
                    .from(0, KERNEL_TASK);
                reply.caps[0] = Some(Cap::new(
                    Object::Endpoint {
                        instance: e.instance,
                        id: e.endpoint,
                    },
                    Rights::SEND | Rights::GRANT,
                ));
                Ok(reply)
            }
            labels::UNREGISTER => {
                self.names.unregister(name, by)?;
                Ok(Parcel::new(0, &[])
                    .unwrap_or_else(|| unreachable!())
                    .from(0, KERNEL_TASK))
            }
            _ => Err(Error::BadArgument),
        }
    }
}

#[cfg(test)]
mod tests;
