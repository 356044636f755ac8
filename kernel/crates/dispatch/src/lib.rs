//! The per-instance message dispatcher: everything between "a mailbox slot from peer P holds a
//! message" and "this handler ran / this call got its reply", as pure logic.
//!
//! # Receive path
//!
//! The mailbox layer (another crate) hands each slot to [`Dispatcher::dispatch`] with the
//! instance id of the mailbox pair's peer. The dispatcher, in order:
//!
//! 1. decodes and validates the slot with [`mk_wire::decode`] (version, flags, known
//!    type/subtype, payload length and exact size, status, message id, payload values);
//! 2. checks that the sender id written in the header is the peer the mailbox pair belongs to
//!    ([`Reject::SenderMismatch`]): the pair, not the header, tells who really sent it;
//! 3. gives a reply (`REPLY` flag) to the [pending-call table](PendingCalls), which matches it
//!    by message id *and* peer; a reply that matches nothing is [`Reject::StaleReply`];
//! 4. gives a request to the handler registered for its (type, subtype), else for its type,
//!    else rejects it ([`Reject::NoHandler`]);
//! 5. if the request has `NEEDS_REPLY` and the handler answered, returns the encoded-ready
//!    reply message in [`DispatchOutcome::Handled`] for the caller to send back
//!    ([`Dispatcher::dispatch_into`] writes it into the caller's buffer instead).
//!
//! No handler ever sees a message that failed a check. Every rejection is counted by reason
//! ([`RejectReason`]) in the dispatcher's counters and in the peer's [`PeerTelemetry`]; a
//! rejection never disturbs the next message. Rejections are meant to be logged through the
//! [`LogLimiter`] ([`Dispatcher::log_limiter`]), which lets a burst through per window and
//! counts what it drops.
//!
//! # Send path (calls)
//!
//! [`Dispatcher::prepare_call`] allocates a message id (monotonic per instance, never 0),
//! builds the request with `NEEDS_REPLY` and a timestamp, and records the call with its deadline
//! in the pending table. The caller encodes and sends the message, then polls the
//! [`CallToken`] ([`Dispatcher::poll_call`]) until it is `Ready` or `TimedOut`. Someone (a
//! timer tick) calls [`Dispatcher::expire_calls`] to time calls out; a reply that arrives later
//! is stale and counted, nothing more. Latencies of completed calls go into the peer's log2
//! histogram.
//!
//! # Concurrency
//!
//! All of it works through `&self` from any number of CPUs of the instance: counters and the
//! pending table are atomics (see [`pending`] for its state machine), the registry is behind a
//! `spin::RwLock` held only to copy a handler reference out (see [`Registry`] for the
//! interrupt rule on registration). Time comes from a `fn() -> u64` clock given at
//! construction (TSC, tick counter, or a test double); the unit is the caller's.
//!
//! ```
//! use mk_dispatch::*;
//! use mk_wire::*;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! static NOW: AtomicU64 = AtomicU64::new(0);
//! fn clock() -> u64 { NOW.load(Ordering::Relaxed) }
//! static PEERS: [PeerTelemetry; 2] = [const { PeerTelemetry::new() }; 2];
//! // Instance 1 answers pings; instance 0 calls it.
//! static B: Dispatcher<'static, 8, 8> = Dispatcher::new(InstanceId::new(1), clock, &PEERS, 1000, 10);
//! static A: Dispatcher<'static, 8, 8> = Dispatcher::new(InstanceId::ZERO, clock, &[], 1000, 10);
//!
//! fn pong(m: &Message) -> Option<Reply> { Some(Reply::ok(m.payload)) }
//! B.registry().register(HandlerKey::Kind(Kind::Ping), &(pong as fn(&Message) -> Option<Reply>)).unwrap();
//!
//! let ping = Payload::Ping(PingPayload { nonce: 1, sent_at: 0 });
//! let (req, token) = A.prepare_call(InstanceId::new(1), Kind::Ping, ping, 100).unwrap();
//! let mut slot = [0u8; SLOT_SIZE];
//! encode(&req, &mut slot).unwrap();
//! let DispatchOutcome::Handled { reply: Some(reply), .. } = B.dispatch(InstanceId::ZERO, &slot).unwrap() else { panic!() };
//! encode(&reply, &mut slot).unwrap();
//! NOW.store(5, Ordering::Relaxed);
//! assert!(matches!(A.dispatch(InstanceId::new(1), &slot), Ok(DispatchOutcome::ReplyDelivered { latency: 5, .. })));
//! assert!(matches!(A.poll_call(&token), CallState::Ready(m) if m.payload == ping));
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod pending;
mod ratelimit;
mod registry;
mod telemetry;

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mk_wire::{DecodeError, Kind, Message, MsgFlags, Payload, Received, Slot, Status, UserPayload};

pub use mk_ids::InstanceId;

pub use pending::{CallError, CallState, CallToken, Completed, PendingCalls, StaleReply};
pub use ratelimit::{LogDecision, LogLimiter};
pub use registry::{Handler, HandlerKey, Registry, RegistryError, Reply};
pub use telemetry::{
    LATENCY_BUCKETS, LatencyHistogram, PeerTelemetry, RejectCounters, RejectReason,
    TelemetrySnapshot, latency_bucket,
};

/// Why [`Dispatcher::dispatch`] refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The slot does not hold a valid message.
    Malformed(DecodeError),
    /// The header names another sender than the mailbox pair's peer.
    SenderMismatch {
        /// The mailbox pair's peer.
        expected: InstanceId,
        /// The header's sender.
        found: InstanceId,
    },
    /// No handler for this kind or its type.
    NoHandler(Kind),
    /// A reply that matches no outstanding call to this peer.
    StaleReply {
        /// The reply's id.
        msg_id: u64,
    },
}

impl Reject {
    /// The counter this rejection goes to.
    pub const fn reason(&self) -> RejectReason {
        match self {
            Self::Malformed(e) => RejectReason::of_decode(e),
            Self::SenderMismatch { .. } => RejectReason::SenderMismatch,
            Self::NoHandler(_) => RejectReason::NoHandler,
            Self::StaleReply { .. } => RejectReason::StaleReply,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed message: {e}"),
            Self::SenderMismatch { expected, found } => {
                write!(f, "sender {found} in a message from instance {expected}")
            }
            Self::NoHandler(kind) => write!(f, "no handler for {kind:?}"),
            Self::StaleReply { msg_id } => write!(f, "stale reply {msg_id}"),
        }
    }
}

impl core::error::Error for Reject {}

/// What [`Dispatcher::dispatch`] did with a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "no alloc in the kernel: the message travels by value (about 300 bytes)"
)]
pub enum DispatchOutcome {
    /// A handler ran on a request.
    Handled {
        /// The request's kind.
        kind: Kind,
        /// The request's id.
        msg_id: u64,
        /// The reply to send back to the peer: `Some` when the request has `NEEDS_REPLY` and
        /// the handler answered. Already validated: [`mk_wire::encode`] accepts it.
        reply: Option<Message>,
    },
    /// A reply completed an outstanding call; collect it with [`Dispatcher::poll_call`].
    ReplyDelivered {
        /// The call.
        token: CallToken,
        /// Ticks between the call and its reply.
        latency: u64,
    },
}

/// What [`Dispatcher::dispatch_into`] did with a valid message: a [`DispatchOutcome`] whose
/// reply was written where the caller asked. A reply is message-sized: returned by value it
/// would be copied at every level it passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// A handler ran on a request.
    Handled {
        /// The request's kind.
        kind: Kind,
        /// The request's id.
        msg_id: u64,
        /// Whether a reply was written (the request has `NEEDS_REPLY` and the handler
        /// answered); already validated: [`mk_wire::encode`] accepts it.
        replied: bool,
    },
    /// A reply completed an outstanding call; collect it with [`Dispatcher::poll_call`].
    ReplyDelivered {
        /// The call.
        token: CallToken,
        /// Ticks between the call and its reply.
        latency: u64,
    },
}

/// Monotonic message ids, never 0.
#[derive(Debug)]
pub struct MsgIdAllocator {
    next: AtomicU64,
}

impl Default for MsgIdAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl MsgIdAllocator {
    /// Starts at 1.
    pub const fn new() -> Self {
        Self {
            next: AtomicU64::new(1),
        }
    }

    /// The next id (unique for 2^64 - 1 calls).
    pub fn next_id(&self) -> u64 {
        let id = self.next.fetch_add(1, Relaxed);
        if id == 0 {
            // Wrapped after 2^64 ids: skip 0.
            self.next.fetch_add(1, Relaxed)
        } else {
            id
        }
    }
}

/// The dispatcher of one instance: `H` handler slots, `P` outstanding calls, telemetry for
/// peers `0..peers.len()` (indexed by instance id; peers outside the slice are not tracked).
pub struct Dispatcher<'a, const H: usize, const P: usize> {
    instance: InstanceId,
    clock: fn() -> u64,
    registry: Registry<H>,
    pending: PendingCalls<P>,
    rejects: RejectCounters,
    handled: AtomicU64,
    log: LogLimiter,
    ids: MsgIdAllocator,
    peers: &'a [PeerTelemetry],
}

impl<const H: usize, const P: usize> fmt::Debug for Dispatcher<'_, H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("instance", &self.instance)
            .field("registry", &self.registry)
            .field("outstanding", &self.pending.outstanding())
            .field("rejected", &self.rejects.total())
            .finish_non_exhaustive()
    }
}

impl<'a, const H: usize, const P: usize> Dispatcher<'a, H, P> {
    /// A dispatcher for instance `instance`, reading time from `clock`, keeping telemetry in
    /// `peers`, and letting at most `log_burst` rejection log lines through per `log_window`
    /// ticks.
    pub const fn new(
        instance: InstanceId,
        clock: fn() -> u64,
        peers: &'a [PeerTelemetry],
        log_window: u64,
        log_burst: u32,
    ) -> Self {
        Self {
            instance,
            clock,
            registry: Registry::new(),
            pending: PendingCalls::new(),
            rejects: RejectCounters::new(),
            handled: AtomicU64::new(0),
            log: LogLimiter::new(log_window, log_burst),
            ids: MsgIdAllocator::new(),
            peers,
        }
    }

    /// This instance's id (the sender id of the replies it builds).
    pub const fn instance(&self) -> InstanceId {
        self.instance
    }

    /// The handler registry.
    pub const fn registry(&self) -> &Registry<H> {
        &self.registry
    }

    /// The pending-call table.
    pub const fn pending(&self) -> &PendingCalls<P> {
        &self.pending
    }

    /// Rejections of all peers, by reason.
    pub const fn rejects(&self) -> &RejectCounters {
        &self.rejects
    }

    /// The rejection log limiter: on `Err(reject)`, log only if
    /// `log_limiter().check(now)` says so.
    pub const fn log_limiter(&self) -> &LogLimiter {
        &self.log
    }

    /// Telemetry of `peer`, if tracked.
    pub fn peer(&self, peer: InstanceId) -> Option<&'a PeerTelemetry> {
        self.peers.get(peer.index())
    }

    /// Requests handed to a handler so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Relaxed)
    }

    /// A fresh message id.
    pub fn next_msg_id(&self) -> u64 {
        self.ids.next_id()
    }

    /// Handles one slot received from `expected_sender`'s mailbox.
    pub fn dispatch(
        &self,
        expected_sender: InstanceId,
        slot: &Slot,
    ) -> Result<DispatchOutcome, Reject> {
        let mut other = Message::BLANK;
        self.dispatch_received(expected_sender, &mut Received::from_slot(slot), &mut other)
    }

    /// [`dispatch`](Self::dispatch) of a message copied out of its slot in two parts
    /// ([`mk_wire::Received`]: a USER payload is then copied once in all), decoded in place; a
    /// message of another kind is decoded into `other`.
    pub fn dispatch_received(
        &self,
        expected_sender: InstanceId,
        rx: &mut Received,
        other: &mut Message,
    ) -> Result<DispatchOutcome, Reject> {
        let mut reply = Message::BLANK;
        Ok(
            match self.dispatch_into(expected_sender, rx, other, &mut reply)? {
                Dispatched::Handled {
                    kind,
                    msg_id,
                    replied,
                } => DispatchOutcome::Handled {
                    kind,
                    msg_id,
                    reply: replied.then_some(reply),
                },
                Dispatched::ReplyDelivered { token, latency } => {
                    DispatchOutcome::ReplyDelivered { token, latency }
                }
            },
        )
    }

    /// [`dispatch_received`](Self::dispatch_received), the reply (if any) written into
    /// `reply` rather than returned: what a receive loop calls, with a reply buffer of its
    /// own. `reply` is left as it was when no reply is written.
    pub fn dispatch_into(
        &self,
        expected_sender: InstanceId,
        rx: &mut Received,
        other: &mut Message,
        reply: &mut Message,
    ) -> Result<Dispatched, Reject> {
        let peer = self.count_received(expected_sender);
        let result = self.dispatch_decoded(expected_sender, rx.decode(other), peer, reply);
        self.count_rejected(result, peer)
    }

    /// Counts a message from `sender`; its counters, if it has a row.
    #[inline]
    fn count_received(&self, sender: InstanceId) -> Option<&PeerTelemetry> {
        let peer = self.peer(sender);
        if let Some(p) = peer {
            p.received.fetch_add(1, Relaxed);
        }
        peer
    }

    /// Counts a rejection in `result`, if it is one, and hands `result` on.
    #[inline]
    fn count_rejected(
        &self,
        result: Result<Dispatched, Reject>,
        peer: Option<&PeerTelemetry>,
    ) -> Result<Dispatched, Reject> {
        if let Err(reject) = &result {
            self.rejects.record(reject.reason());
            if let Some(p) = peer {
                p.rejected.record(reject.reason());
            }
        }
        result
    }

    #[inline]
    fn dispatch_decoded(
        &self,
        expected_sender: InstanceId,
        decoded: Result<&Message, DecodeError>,
        peer: Option<&PeerTelemetry>,
        reply: &mut Message,
    ) -> Result<Dispatched, Reject> {
        let msg = decoded.map_err(Reject::Malformed)?;
        if msg.sender != expected_sender {
            return Err(Reject::SenderMismatch {
                expected: expected_sender,
                found: msg.sender,
            });
        }
        if msg.is_reply() {
            let now = (self.clock)();
            let done = self
                .pending
                .complete(expected_sender, msg, now)
                .map_err(|s| Reject::StaleReply { msg_id: s.msg_id })?;
            if let Some(p) = peer {
                p.calls_completed.fetch_add(1, Relaxed);
                p.latency.record(done.latency);
            }
            return Ok(Dispatched::ReplyDelivered {
                token: done.token,
                latency: done.latency,
            });
        }
        let handler = self
            .registry
            .lookup(msg.kind)
            .ok_or(Reject::NoHandler(msg.kind))?;
        self.handled.fetch_add(1, Relaxed);
        let answer = handler.handle(msg);
        let replied = match &answer {
            Some(r) if msg.needs_reply() => {
                self.build_reply_into(msg, r, reply);
                true
            }
            _ => false,
        };
        Ok(Dispatched::Handled {
            kind: msg.kind,
            msg_id: msg.msg_id,
            replied,
        })
    }

    /// Writes into `out` the reply to `request` that `answer` makes, its payload copied once
    /// and its header written in place; a handler answer that would not encode becomes an
    /// `InternalError` reply, except an error answer without the payload its kind's replies
    /// carry (`Reply::error` to a USER request): it keeps its status, with the kind's empty
    /// payload.
    #[inline]
    fn build_reply_into(&self, request: &Message, answer: &Reply, out: &mut Message) {
        out.payload = answer.payload;
        out.make_reply_to(request, self.instance, answer.status);
        if out.validate().is_err() {
            *out = self.refusal(request, answer.status);
        }
    }

    /// What a `status` answer to `request` that would not encode becomes (see
    /// [`build_reply_into`](Self::build_reply_into)).
    #[cold]
    #[inline(never)]
    fn refusal(&self, request: &Message, status: Status) -> Message {
        if status != Status::Ok {
            let refusal = self.error_reply(request, status);
            if refusal.validate().is_ok() {
                return refusal;
            }
        }
        self.error_reply(request, Status::InternalError)
    }

    /// An error reply to `request` from this instance (empty payload; an empty opaque payload
    /// for USER kinds).
    pub fn error_reply(&self, request: &Message, status: Status) -> Message {
        let payload = match request.kind {
            Kind::User(_) => UserPayload::new(&[]).map_or(Payload::Empty, Payload::User),
            _ => Payload::Empty,
        };
        Message::reply_to(request, self.instance, status, payload)
    }

    /// For a slot that [`dispatch`](Self::dispatch) rejected with [`Reject::NoHandler`]: the
    /// `Unsupported` reply to send when the request waits for one. `None` for any other
    /// rejection (a message that failed validation or came from the wrong sender gets no
    /// answer) or when no reply is expected.
    pub fn reply_for_reject(&self, slot: &Slot, reject: &Reject) -> Option<Message> {
        let Reject::NoHandler(_) = reject else {
            return None;
        };
        let msg = mk_wire::decode(slot).ok()?;
        msg.needs_reply()
            .then(|| self.error_reply(&msg, Status::Unsupported))
    }

    /// Starts a call to `peer`: allocates an id, builds the request (`NEEDS_REPLY`, this
    /// instance as sender, timestamp = now) and records it with deadline now + `timeout`.
    /// Encode and send the message, then [`poll_call`](Self::poll_call) the token.
    pub fn prepare_call(
        &self,
        peer: InstanceId,
        kind: Kind,
        payload: Payload,
        timeout: u64,
    ) -> Result<(Message, CallToken), CallError> {
        let mut msg = Message::request(self.instance, kind, 0, payload);
        let token = self.prepare_call_in(peer, &mut msg, timeout)?;
        Ok((msg, token))
    }

    /// [`prepare_call`](Self::prepare_call) for a request the caller built (its kind, payload
    /// and flags), made the call's request in place: this instance as sender, a new id,
    /// `NEEDS_REPLY` (and `LARGE_DATA` for a large-data payload) added, status `Ok`,
    /// timestamp = now. A message is about 280 bytes: stamping it where it lies saves the
    /// copy that returning it would make. On error no call is recorded (the request may
    /// have been stamped).
    #[inline]
    pub fn prepare_call_in(
        &self,
        peer: InstanceId,
        request: &mut Message,
        timeout: u64,
    ) -> Result<CallToken, CallError> {
        let now = (self.clock)();
        let id = self.next_msg_id();
        request.sender = self.instance;
        request.msg_id = id;
        request.status = Status::Ok;
        request.timestamp = now;
        request.flags = request.flags.union(MsgFlags::NEEDS_REPLY);
        if let Payload::LargeData(_) = request.payload {
            request.flags = request.flags.union(MsgFlags::LARGE_DATA);
        }
        request.validate().map_err(CallError::Invalid)?;
        self.pending
            .begin_call(peer, id, now, now.saturating_add(timeout))
    }

    /// Records a call whose request the caller built itself (with id `msg_id`).
    pub fn begin_call(
        &self,
        peer: InstanceId,
        msg_id: u64,
        timeout: u64,
    ) -> Result<CallToken, CallError> {
        let now = (self.clock)();
        self.pending
            .begin_call(peer, msg_id, now, now.saturating_add(timeout))
    }

    /// Where a call stands (see [`PendingCalls::poll`]).
    pub fn poll_call(&self, token: &CallToken) -> CallState {
        self.pending.poll(token)
    }

    /// Abandons a call (see [`PendingCalls::cancel`]).
    pub fn cancel_call(&self, token: &CallToken) -> bool {
        self.pending.cancel(token)
    }

    /// Times out the calls whose deadline has passed; counts them in their peer's telemetry.
    /// Returns how many.
    pub fn expire_calls(&self) -> usize {
        let now = (self.clock)();
        self.pending.expire(now, |token| {
            if let Some(p) = self.peer(token.peer) {
                p.calls_timed_out.fetch_add(1, Relaxed);
            }
        })
    }
}
