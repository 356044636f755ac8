//! Messaging between instances: the per-pair mailboxes of the shared region (`mk-mailbox`),
//! the wire format (`mk-wire`), the dispatcher (`mk-dispatch`) and IPIs as doorbells.
//!
//! ```text
//!  sender (instance a)                         receiver (instance b)
//!  encode(msg) ─► mailbox a→b slot ──────────► drain (b's first CPU, in its serve loop)
//!       │          (seq published last)            └─► dispatcher: validate, handler
//!       └─ receiver armed? ─► IPI on MESSAGE_IPI ─► wakes b from hlt (the handler only counts)
//! ```
//!
//! Messages are handled in thread context, never inside the IPI handler: the IPI only wakes the
//! instance's first CPU from `hlt`, and that CPU's serve loop (or any code waiting for a reply,
//! through [`poll`]) drains the mailboxes. So handlers may take locks and send replies.
//!
//! Doorbell suppression: a receiver arms its mailboxes (a flag on its own cache line) only just
//! before it halts; a sender rings only when it finds the flag set. `set_doorbell_mode` turns
//! the suppression off (always ring) so that both can be measured.

#![forbid(unsafe_code)]

pub mod bulk;
pub mod doorbell;
mod replies;

pub use replies::{REPLIES_DROPPED, REPLIES_QUEUED, waiting as replies_waiting};

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mk_dispatch::{CallState, Dispatched, Dispatcher, HandlerKey, PeerTelemetry, Reply};
use mk_hook::{Full, Hook};
use mk_mailbox::{DoorbellMode, Inbox, MailboxMatrix, ReceiverEnd, SenderEnd};
use mk_wire::{Kind, Message, Payload, Received, Slot};
use spin::{Mutex, Once};

use crate::arch::{interrupts, tsc};
pub use crate::instance::InstanceId;
use crate::shared::region;
use doorbell::Doorbell;
pub use doorbell::{THROTTLES, doorbell_cpu};

const MAX_PEERS: usize = mk_shared::MAX_INSTANCES;

/// How long a sender waits for room in a full mailbox before `Busy` (generous: under an
/// emulating hypervisor a receiver may take that long to come back to its mailboxes).
pub const SEND_TIMEOUT_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Messaging is not up in this instance.
    NotReady,
    /// No such instance, or it is this one.
    NoSuchInstance(InstanceId),
    /// The peer is not running (booting, stopped or dead).
    NotRunning(InstanceId),
    /// The mailbox stayed full for `SEND_TIMEOUT_MS`.
    Busy,
    /// The message does not encode (a bug in the caller).
    Invalid,
    /// The mailbox refused it (dead, reset or corrupt channel).
    Mailbox(mk_mailbox::Error),
}

static MATRIX: Once<MailboxMatrix<'static>> = Once::new();
/// This instance's summary word in the shared region: which peers published since we last
/// looked (`mk_mailbox::Inbox`). An empty poll is this one load and the two words below.
static INBOX: Once<Inbox<'static>> = Once::new();
/// Peers whose last drain took a whole ring (more may be waiting): looked at again next poll.
static LEFTOVER: AtomicU64 = AtomicU64::new(0);
/// Work for the next poll besides the flagged mailboxes: [`WORK_HOOK`], [`WORK_SCAN`].
static WORK: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Run the poll hook (the services' duties): asked by [`want_poll_hook`] and every timer tick.
const WORK_HOOK: u32 = 1;
/// Look at every peer's mailbox, flagged or not: every timer tick, so that a summary bit a
/// broken peer cleared delays messages by a tick at most, and so that the mailboxes of a peer
/// started again are claimed.
const WORK_SCAN: u32 = 2;
/// This instance's sending ends (to each peer) and receiving ends (from each peer), under
/// separate locks: a CPU waiting for room to send must still be able to drain its inbox (the
/// peer may be waiting for room in it).
static SENDERS: Once<Mutex<Senders>> = Once::new();
static RECEIVERS: Once<Mutex<Vec<Option<ReceiverEnd<'static>>>>> = Once::new();
/// The sending ends, by peer, and the buffers a message is encoded into under the same lock,
/// right before its two parts are copied into a ring (`mk_wire::encode_parts`): the header,
/// and a payload other than USER (a USER payload is copied from the message itself).
struct Senders {
    ends: Vec<Option<SenderEnd<'static>>>,
    header: [u8; mk_wire::HEADER_LEN],
    scratch: [u8; mk_wire::MAX_PAYLOAD],
}

/// What `publish` sends: a message to encode, or a slot already encoded (tests' malformed
/// slots).
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Message(&'a Message),
    Slot(&'a Slot),
}

/// The CPU that drains the mailboxes (1 + its index; 0: none). One CPU drains at a time; that
/// CPU may drain again from inside a handler (a handler that makes a call waits for its reply
/// by polling), up to [`MAX_DEPTH`] levels deep.
static POLLER: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// How deep the poller is in nested polls (touched only by the CPU in `POLLER`).
static DEPTH: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// Most nested polls: a handler's call, whose handler makes a call...
const MAX_DEPTH: usize = 4;
/// The messages one drain took, copied out of the rings straight into these buffers, one
/// batch per nesting level: they are dispatched after the receiving ends are unlocked, so that
/// a handler can poll again. Each is copied in two parts (`mk_wire::Received`): its header,
/// and its payload straight into the payload of the message it is decoded as in place, so a
/// USER message is copied once in all; a message of another kind is decoded into `other`.
struct Batch {
    len: usize,
    slots: [Taken; BATCH],
    other: Message,
    /// Where the dispatcher writes a handler's reply (sent before the next is dispatched).
    reply: Message,
}

/// One message of a [`Batch`]: what was copied out of the ring, and the peer whose ring it
/// was (the channel's identity, not the header's claim).
struct Taken {
    from: InstanceId,
    rx: Received,
}
/// Messages one poll takes at most (two rings' worth); what is left waits for the next poll.
const BATCH: usize = 2 * mk_mailbox::SLOTS;
static BATCHES: [Mutex<Batch>; MAX_DEPTH] = [const {
    Mutex::new(Batch {
        len: 0,
        slots: [const {
            Taken {
                from: InstanceId::ZERO,
                rx: Received::new(),
            }
        }; BATCH],
        other: Message::BLANK,
        reply: Message::BLANK,
    })
}; MAX_DEPTH];
/// Fallback per-peer counters, used only if the shared telemetry table is missing.
static LOCAL_TELEMETRY: [PeerTelemetry; MAX_PEERS] = [const { PeerTelemetry::new() }; MAX_PEERS];

/// This instance's per-peer counters: its row of the shared telemetry table, readable by every
/// instance (found once: every message counts in it).
fn telemetry_row() -> &'static [PeerTelemetry] {
    static ROW: Once<&'static [PeerTelemetry]> = Once::new();
    ROW.call_once(|| region::telemetry_row(crate::instance::id()).unwrap_or(&LOCAL_TELEMETRY))
}

fn telemetry(peer: InstanceId) -> Option<&'static PeerTelemetry> {
    telemetry_row().get(peer.index())
}
static DISPATCHER: Once<Dispatcher<'static, 32, 64>> = Once::new();
/// Message IPIs that found nothing new in any mailbox.
pub static SPURIOUS_IPIS: AtomicU64 = AtomicU64::new(0);

fn clock() -> u64 {
    tsc::read()
}

pub fn dispatcher() -> Option<&'static Dispatcher<'static, 32, 64>> {
    DISPATCHER.get()
}

/// Brings up this instance's ends of every mailbox pair and the dispatcher, with a PING
/// handler. Called once the shared region is attached.
pub fn init(me: InstanceId) -> Result<(), InitError> {
    let region = region::get().ok_or(InitError::NoRegion)?;
    let n = region.instance_count();
    let matrix = MATRIX.try_call_once(|| region.mailbox().map_err(InitError::Matrix))?;
    INBOX.try_call_once(|| matrix.inbox(me).map_err(InitError::Matrix))?;
    let mut senders: Vec<Option<SenderEnd<'static>>> = (0..n).map(|_| None).collect();
    let mut receivers: Vec<Option<ReceiverEnd<'static>>> = (0..n).map(|_| None).collect();
    for p in region.ids().filter(|&p| p != me) {
        // A peer's channels are dead when instance 0 gave up on it or it died before we came
        // up: its ends are claimed later, once it is started again (`reattach_sender`, and the
        // drain for receivers).
        match matrix.sender_end(me, p) {
            Ok(end) => senders[p.index()] = Some(end),
            Err(mk_mailbox::Error::Dead) => {}
            Err(e) => return Err(InitError::SenderEnd(e)),
        }
        match matrix.receiver_end(p, me) {
            Ok(end) => receivers[p.index()] = Some(end),
            Err(mk_mailbox::Error::Dead) => {}
            Err(e) => return Err(InitError::ReceiverEnd(e)),
        }
    }
    SENDERS.call_once(|| {
        Mutex::new(Senders {
            ends: senders,
            header: [0; mk_wire::HEADER_LEN],
            scratch: [0; mk_wire::MAX_PAYLOAD],
        })
    });
    RECEIVERS.call_once(|| Mutex::new(receivers));
    let ms = tsc::ticks_per_ms();
    let d = DISPATCHER.call_once(|| Dispatcher::new(me, clock, telemetry_row(), 1000 * ms, 8));
    d.registry()
        .register(HandlerKey::Kind(Kind::Ping), &(pong as HandlerFn))
        .map_err(|_| InitError::PingHandler)?;
    interrupts::set_message_handler(doorbell::on_ipi).map_err(|_| InitError::DoorbellHook)?;
    interrupts::add_tick_hook(on_tick).map_err(|_| InitError::TimerHook)?;
    Ok(())
}

/// Why [`init`] could not bring messaging up in this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The shared region is not attached (a boot-order bug in this instance).
    NoRegion,
    /// The mailbox matrix in the shared region does not check (instance 0's formatting).
    Matrix(mk_mailbox::Error),
    /// A sending end could not be claimed (already claimed here, or the channel is bad).
    SenderEnd(mk_mailbox::Error),
    /// A receiving end could not be claimed.
    ReceiverEnd(mk_mailbox::Error),
    /// The PING handler's slot was taken.
    PingHandler,
    /// No free doorbell hook in this instance's interrupt table.
    DoorbellHook,
    /// No free timer hook in this instance's interrupt table.
    TimerHook,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRegion => f.write_str("no shared region"),
            Self::Matrix(e) => write!(f, "no mailbox matrix: {e:?}"),
            Self::SenderEnd(e) => write!(f, "claiming a sender end: {e:?}"),
            Self::ReceiverEnd(e) => write!(f, "claiming a receiver end: {e:?}"),
            Self::PingHandler => f.write_str("registering the PING handler"),
            Self::DoorbellHook => f.write_str("no free doorbell hook"),
            Self::TimerHook => f.write_str("no free timer hook"),
        }
    }
}

/// A handler as a plain function.
pub type HandlerFn = fn(&Message) -> Option<Reply>;

/// PING: answer with the same payload.
fn pong(m: &Message) -> Option<Reply> {
    Some(Reply::ok(m.payload))
}

/// Sets doorbell suppression on (default) or off for every peer.
pub fn set_doorbell_mode(mode: DoorbellMode) {
    if let Some(senders) = SENDERS.get() {
        for s in senders.lock().ends.iter_mut().flatten() {
            s.set_doorbell_mode(mode);
        }
    }
}

/// Timer-tick hook: asks the next poll for the tick's duties, and ends this CPU's doorbell
/// throttle once its time is up.
fn on_tick() {
    WORK.fetch_or(WORK_HOOK | WORK_SCAN, Ordering::Relaxed);
    doorbell::end_throttle();
}

/// Sends an encoded slot to `to` (the low-level path; tests use it to send malformed slots),
/// waiting up to `SEND_TIMEOUT_MS` for room.
pub fn send_slot(to: InstanceId, slot: &Slot) -> Result<(), SendError> {
    send_slot_within(to, slot, SEND_TIMEOUT_MS)
}

/// Like `send`, but fails with `Busy` at once when the mailbox is full.
pub fn try_send(to: InstanceId, msg: &Message) -> Result<(), SendError> {
    send_within(to, msg, 0)
}

/// Sends `msg`, waiting up to `wait_ms` for room (draining our own inbox meanwhile).
pub fn send_within(to: InstanceId, msg: &Message, wait_ms: u64) -> Result<(), SendError> {
    send_out_within(to, Outgoing::Message(msg), wait_ms)
}

fn send_slot_within(to: InstanceId, slot: &Slot, wait_ms: u64) -> Result<(), SendError> {
    send_out_within(to, Outgoing::Slot(slot), wait_ms)
}

fn send_out_within(to: InstanceId, out: Outgoing<'_>, wait_ms: u64) -> Result<(), SendError> {
    let mut doorbell = Doorbell::default();
    let sent = publish(to, out, wait_ms, &mut doorbell);
    // The counters are looked up only for a doorbell owed (most sends owe none).
    if doorbell.owed {
        doorbell.ring(to, telemetry(to));
    }
    sent
}

/// Sends `msgs` to `to` in order, with at most one doorbell for the whole batch (rung at the
/// end, or earlier if the mailbox fills while the receiver sleeps). Returns how many were
/// sent; on an error, the messages before it were sent.
pub fn send_batch(
    to: InstanceId,
    msgs: &[Message],
    wait_ms: u64,
) -> (usize, Result<(), SendError>) {
    let mut doorbell = Doorbell::default();
    let mut sent = 0;
    let mut result = Ok(());
    for msg in msgs {
        if let Err(e) = publish(to, Outgoing::Message(msg), wait_ms, &mut doorbell) {
            result = Err(e);
            break;
        }
        sent += 1;
    }
    doorbell.ring(to, telemetry(to));
    (sent, result)
}

/// Publishes one slot in the mailbox to `to`, waiting up to `wait_ms` for room. Records in
/// `doorbell` whether the receiver needs waking; rings it before waiting for room (a sleeping
/// receiver would never make room).
fn publish(
    to: InstanceId,
    out: Outgoing<'_>,
    wait_ms: u64,
    doorbell: &mut Doorbell,
) -> Result<(), SendError> {
    let region = region::get().ok_or(SendError::NotReady)?;
    let inst = region
        .instance(to)
        .map_err(|_| SendError::NoSuchInstance(to))?;
    if !inst.is_running() && !trusted_running(to) {
        return Err(SendError::NotRunning(to));
    }
    let senders = SENDERS.get().ok_or(SendError::NotReady)?;
    // One attempt first, the common case: a ring with room. Waiting for room, and claiming
    // a channel reset under us, are out of line (`publish_again`).
    let outcome = match attempt(senders, to, out)? {
        Ok(o) => o,
        Err(e) => publish_again(senders, to, out, wait_ms, doorbell, e)?,
    };
    let t = telemetry(to);
    if let Some(t) = t {
        t.record_sent();
    }
    if outcome.need_doorbell {
        doorbell.owed = true;
    } else if let Some(t) = t {
        t.record_ipi_suppressed();
    }
    Ok(())
}

/// One attempt to publish `out` to `to`, under the senders' lock: the mailbox's answer, or
/// the caller's error (no such instance, a message that does not encode).
#[inline(always)]
fn attempt(
    senders: &Mutex<Senders>,
    to: InstanceId,
    out: Outgoing<'_>,
) -> Result<Result<mk_mailbox::SendOutcome, mk_mailbox::Error>, SendError> {
    let mut senders = senders.lock();
    let Senders {
        ends,
        header,
        scratch,
    } = &mut *senders;
    Ok(
        match ends
            .get_mut(to.index())
            .ok_or(SendError::NoSuchInstance(to))?
        {
            // Encoded again on every attempt: a drain while we waited may have used the
            // buffer for a reply.
            Some(sender) => match out {
                Outgoing::Message(m) => {
                    let payload = mk_wire::encode_parts(m, header, scratch)
                        .map_err(|_| SendError::Invalid)?;
                    sender.try_send_parts(header, payload)
                }
                Outgoing::Slot(slot) => sender.try_send(slot),
            },
            // Not claimed at init (the channel was dead then): claim it (`publish_again`).
            None => Err(mk_mailbox::Error::Dead),
        },
    )
}

/// What [`publish`] does when its first attempt did not go through (`first`): waits up to
/// `wait_ms` for room (ringing the doorbell, draining our own inbox), claims a channel that was
/// reset under us (once), and tries again.
#[cold]
#[inline(never)]
fn publish_again(
    senders: &Mutex<Senders>,
    to: InstanceId,
    out: Outgoing<'_>,
    wait_ms: u64,
    doorbell: &mut Doorbell,
    first: mk_mailbox::Error,
) -> Result<mk_mailbox::SendOutcome, SendError> {
    // The deadline is taken only once the mailbox turns out to be full: the fast path reads no
    // clock (RDTSC may exit to the hypervisor).
    let mut deadline = None;
    let mut reattached = false;
    let mut result = Err(first);
    loop {
        match result {
            Ok(o) => return Ok(o),
            Err(mk_mailbox::Error::Full)
                if wait_ms > 0
                    && tsc::read()
                        < *deadline
                            .get_or_insert_with(|| tsc::read() + wait_ms * tsc::ticks_per_ms()) =>
            {
                doorbell.ring(to, telemetry(to));
                // Drain our own inbox while we wait: the peer may be waiting for room in it.
                poll();
                core::hint::spin_loop();
            }
            Err(mk_mailbox::Error::Full | mk_mailbox::Error::Busy) => {
                if let Some(t) = telemetry(to) {
                    t.record_busy();
                }
                return Err(SendError::Busy);
            }
            // The peer was started again and its channels reset: this end belongs to the old
            // incarnation. Claim the new one (once) and go on.
            Err(mk_mailbox::Error::Reset | mk_mailbox::Error::Dead) if !reattached => {
                reattached = true;
                reattach_sender(to)?;
            }
            Err(e) => return Err(SendError::Mailbox(e)),
        }
        result = attempt(senders, to, out)?;
    }
}

/// Whether `to` runs for all this instance knows without its state word, which any instance
/// can overwrite (the send path reads the word first, and asks this only when it says "not
/// running"): instance 0 runs as long as anyone does; instance 0 itself asks its own record.
fn trusted_running(to: InstanceId) -> bool {
    to.is_supervisor()
        || crate::shared::records::with(|l| {
            matches!(
                l.life(to),
                mk_ledger::Life::Running | mk_ledger::Life::StopAsked
            )
        }) == Some(true)
}

/// Drops this instance's sending end towards `to` and claims the channel's current one.
fn reattach_sender(to: InstanceId) -> Result<(), SendError> {
    let me = crate::instance::id();
    let matrix = MATRIX.get().ok_or(SendError::NotReady)?;
    let senders = SENDERS.get().ok_or(SendError::NotReady)?;
    let mut senders = senders.lock();
    let slot = senders
        .ends
        .get_mut(to.index())
        .ok_or(SendError::NoSuchInstance(to))?;
    // Release the old claim before taking the new one.
    *slot = None;
    *slot = Some(matrix.sender_end(me, to).map_err(SendError::Mailbox)?);
    Ok(())
}

/// Sends `msg` (fire and forget), waiting up to `SEND_TIMEOUT_MS` for room.
pub fn send(to: InstanceId, msg: &Message) -> Result<(), SendError> {
    send_within(to, msg, SEND_TIMEOUT_MS)
}

/// Sends a request and waits (draining the mailboxes meanwhile) for its reply, up to
/// `timeout_ms`. Returns the reply message.
pub fn call(
    to: InstanceId,
    kind: Kind,
    payload: Payload,
    timeout_ms: u64,
) -> Result<Message, CallFailure> {
    let d = dispatcher().ok_or(CallFailure::Send(SendError::NotReady))?;
    let mut req = Message::request(crate::instance::id(), kind, 0, payload);
    let token = d
        .prepare_call_in(to, &mut req, timeout_ms * tsc::ticks_per_ms())
        .map_err(|_| CallFailure::Send(SendError::Invalid))?;
    if let Err(e) = send(to, &req) {
        d.cancel_call(&token);
        return Err(CallFailure::Send(e));
    }
    let deadline = tsc::read().saturating_add(timeout_ms * tsc::ticks_per_ms());
    loop {
        poll();
        match d.poll_call(&token) {
            CallState::Ready(reply) => return Ok(reply),
            CallState::TimedOut => return Err(CallFailure::Timeout),
            CallState::Invalid => return Err(CallFailure::Timeout),
            CallState::Pending => {
                // The pending table is swept only once this call is due (a sweep looks at
                // every entry): what expires before is the business of its own caller.
                if tsc::read() >= deadline {
                    d.expire_calls();
                }
                core::hint::spin_loop();
            }
        }
    }
}

/// `call` with a 2 s timeout, tried again for up to 5 s while the peer's mailbox is full.
pub fn call_patiently(
    to: InstanceId,
    kind: Kind,
    payload: Payload,
) -> Result<Message, CallFailure> {
    let deadline = tsc::read() + 5000 * tsc::ticks_per_ms();
    loop {
        match call(to, kind, payload, 2000) {
            Err(CallFailure::Send(SendError::Busy)) if tsc::read() < deadline => {}
            other => return other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    Send(SendError),
    Timeout,
}

/// Drains the mailboxes of the peers that published since the last look (the instance's
/// summary word, `mk_mailbox::Inbox`): dispatches each message, sends the replies handlers
/// produce, and runs the poll hook when asked to ([`want_poll_hook`], and every timer tick,
/// when every peer's mailbox is looked at too). Returns how many messages were taken. An
/// empty poll reads three words. A handler may call it again (through `call`): the nested
/// drain takes the messages that came in since, its reply among them.
#[inline]
pub fn poll() -> usize {
    let Some(inbox) = INBOX.get() else {
        return 0;
    };
    if inbox.pending() | LEFTOVER.load(Ordering::Relaxed) == 0 && WORK.load(Ordering::Relaxed) == 0
    {
        return 0;
    }
    poll_flagged(inbox)
}

/// Drains `peer`'s mailbox now, up to `wait_ms` while another CPU of this instance drains
/// (instance 0, before it marks the channels of an instance that stopped dead: what that
/// instance sent before it wrote `Stopped`, the answer to SHUTDOWN among them, is still in the
/// ring, and a dead channel is drained no more).
pub fn drain_from(peer: InstanceId, wait_ms: u64) {
    let bit = 1u64 << (peer.index() & 63);
    LEFTOVER.fetch_or(bit, Ordering::Relaxed);
    let deadline = tsc::read() + wait_ms * tsc::ticks_per_ms();
    // A drain takes the bit; one that filled its batch (or took a whole ring) sets it again.
    while LEFTOVER.load(Ordering::Relaxed) & bit != 0 && tsc::read() < deadline {
        poll();
        core::hint::spin_loop();
    }
}

/// For a measurement that wants a poll's own cost without the timer tick's duties in it:
/// runs the poll hook now if a poll was asked to, and leaves the tick's look at every mailbox
/// to the next tick (the flagged mailboxes are still drained by the next poll). Drains nothing.
pub fn settle_tick_work() {
    let work = WORK.swap(0, Ordering::Acquire);
    if work & WORK_HOOK != 0
        && let Some(hook) = POLL_HOOK.get()
    {
        hook();
    }
}

/// Asks the next poll to run the poll hook: for work queued outside a drain (an interrupt to
/// forward, an IPC answer waiting for room, a shutdown asked for). Every timer tick asks too.
pub fn want_poll_hook() {
    WORK.fetch_or(WORK_HOOK, Ordering::Release);
}

#[inline(never)]
fn poll_flagged(inbox: &Inbox<'static>) -> usize {
    let (Some(receivers), Some(d)) = (RECEIVERS.get(), dispatcher()) else {
        return 0;
    };
    let me = crate::arch::cpu::try_current().map_or(0, |c| c.index) + 1;
    let outermost = match POLLER.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => true,
        Err(owner) if owner == me => false,
        // Another CPU drains: it will take what is there.
        Err(_) => return 0,
    };
    let work = if WORK.load(Ordering::Relaxed) == 0 {
        0
    } else {
        WORK.swap(0, Ordering::Acquire)
    };
    let mut peers = inbox.take();
    if LEFTOVER.load(Ordering::Relaxed) != 0 {
        peers |= LEFTOVER.swap(0, Ordering::Relaxed);
    }
    if work & WORK_SCAN != 0 {
        peers = u64::MAX;
    }
    let depth = DEPTH.load(Ordering::Relaxed);
    let taken = if depth < MAX_DEPTH {
        DEPTH.store(depth + 1, Ordering::Relaxed);
        let taken = poll_locked(&BATCHES[depth], receivers, d, peers);
        DEPTH.store(depth, Ordering::Relaxed);
        taken
    } else {
        // Too deep to drain here: the outer levels will look again.
        LEFTOVER.fetch_or(peers, Ordering::Relaxed);
        0
    };
    if outermost {
        POLLER.store(0, Ordering::Release);
    }
    if work & WORK_HOOK != 0 {
        replies::flush(reply_attempt);
        if let Some(hook) = POLL_HOOK.get() {
            hook();
        }
    }
    taken
}

/// Work done by a poll when asked ([`want_poll_hook`]) and once per timer tick (the services'
/// duties: interrupts to forward, heartbeats, failure detection). It may send; it must guard
/// itself against re-entry (a send that waits for room drains, and so calls it again), and ask
/// again ([`want_poll_hook`]) for work it could not finish.
static POLL_HOOK: Hook<fn()> = Hook::new();

pub fn set_poll_hook(hook: fn()) -> Result<(), Full> {
    POLL_HOOK.set(hook)
}

fn poll_locked(
    batch: &Mutex<Batch>,
    receivers: &Mutex<Vec<Option<ReceiverEnd<'static>>>>,
    d: &Dispatcher<'static, 32, 64>,
    peers: u64,
) -> usize {
    // Only this CPU, at this nesting depth, uses this batch.
    let mut batch = batch.lock();
    let batch = &mut *batch;
    batch.len = 0;
    {
        let mut receivers = receivers.lock();
        let me = crate::instance::id();
        // Only the flagged peers' mailboxes, lowest first. A bit past the last peer (only a
        // broken peer sets one) ends the walk: every bit after it is past the last peer too.
        let mut flagged = peers;
        while flagged != 0 {
            let index = flagged.trailing_zeros() as usize;
            flagged &= flagged - 1;
            let Some(slot) = receivers.get_mut(index) else {
                break;
            };
            let peer = InstanceId::new(index as u16);
            if slot.is_none() {
                if peer == me {
                    continue;
                }
                // A peer whose channels were marked dead may have been started again (reset
                // channels): take the new receiving end. Fails quietly while still dead.
                *slot = MATRIX.get().and_then(|m| m.receiver_end(peer, me).ok());
            }
            let Some(r) = slot else { continue };
            let start = batch.len;
            let room = batch.slots.get_mut(start..).unwrap_or_default();
            let room_len = room.len();
            // Each message's sender is recorded as it is copied.
            match r.drain_into_parts(room, |t| {
                t.from = peer;
                t.rx.parts_mut()
            }) {
                Ok(n) => {
                    batch.len = start + n;
                    // A whole ring, or the batch full: more may be waiting, look again next
                    // poll.
                    if n == mk_mailbox::SLOTS || n == room_len {
                        LEFTOVER.fetch_or(1u64 << index, Ordering::Relaxed);
                    }
                }
                Err(mk_mailbox::Error::Dead) => {
                    // The peer stopped or died (instance 0 marked its channels dead): nothing
                    // more will come until it is started again.
                    crate::info!("mailbox from instance {peer} is dead; no longer drained");
                    *slot = None;
                    unfence(peer);
                }
                Err(mk_mailbox::Error::Reset) => {
                    // Started again, or repaired: the next drain takes the new end.
                    *slot = None;
                    unfence(peer);
                }
                Err(e) => fence(peer, e),
            }
        }
    }
    let taken = batch.len;
    // Dispatched with the receiving ends unlocked: a handler may drain again. Replies go out
    // as they come (a reply that waits for room drains one level deeper, into the next batch).
    let Batch {
        slots,
        other,
        reply,
        ..
    } = batch;
    for t in slots.iter_mut().take(taken) {
        dispatch_one(d, t.from, &mut t.rx, other, reply);
    }
    taken
}

/// Dispatches one slot of a batch from `peer`, and sends the reply its handler made (or the
/// refusal a request without handler gets); logs a rejection, at a limited rate.
#[inline]
fn dispatch_one(
    d: &Dispatcher<'static, 32, 64>,
    peer: InstanceId,
    rx: &mut Received,
    other: &mut Message,
    reply: &mut Message,
) {
    match d.dispatch_into(peer, rx, other, reply) {
        Ok(Dispatched::Handled { replied: true, .. }) => send_reply(peer, reply),
        Ok(_) => {}
        Err(reject) => {
            // Only a request without handler is answered: the slot is put back together
            // for that one (not for every malformed message of a flood).
            if matches!(reject, mk_dispatch::Reject::NoHandler(_))
                && let Some(reply) = d.reply_for_reject(&rx.slot(), &reject)
            {
                send_reply(peer, &reply);
            }
            if let mk_dispatch::LogDecision::Log { suppressed } = d.log_limiter().check(tsc::read())
            {
                crate::warn!(
                    "rejected a message from instance {peer}: {reject} ({suppressed} similar suppressed)"
                );
            }
        }
    }
}

/// A reply never waits inside a poll for room in the peer's mailbox: what finds it full waits
/// in the peer's reply queue (`replies`), in order, for a later timer tick.
fn send_reply(peer: InstanceId, reply: &Message) {
    replies::send(peer, reply, |m| reply_attempt(peer, m));
}

/// One attempt to send a reply, never waiting for room.
fn reply_attempt(peer: InstanceId, reply: &Message) -> replies::Attempt {
    match try_send(peer, reply) {
        Ok(()) => replies::Attempt::Sent,
        Err(SendError::Busy) => replies::Attempt::Full,
        Err(e) => replies::Attempt::Gone(alloc::format!("{e:?}")),
    }
}

/// Peers whose channel to this instance was found faulted (a sequence number no correct
/// sender writes, counters that do not check): the fault is counted and logged once, and the
/// channel is drained no more (each look costs one check) until instance 0 resets it
/// (`lifecycle::repair_channels`), which the end learns as `Reset`.
static FENCED: AtomicU64 = AtomicU64::new(0);
/// Channels fenced so far (each fault once).
pub static FENCES: AtomicU64 = AtomicU64::new(0);

fn fence(peer: InstanceId, e: mk_mailbox::Error) {
    static LOG: mk_dispatch::LogLimiter = mk_dispatch::LogLimiter::new(0, 4);
    let bit = 1u64 << (peer.index() & 63);
    if FENCED.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
        return;
    }
    FENCES.fetch_add(1, Ordering::Relaxed);
    // At most 4 lines a second, whatever the peers do.
    if let mk_dispatch::LogDecision::Log { suppressed } = LOG.check(tsc::seconds()) {
        crate::warn!(
            "mailbox from instance {peer}: {e:?}; fenced until instance 0 resets it ({suppressed} similar suppressed)"
        );
    }
}

fn unfence(peer: InstanceId) {
    FENCED.fetch_and(!(1u64 << (peer.index() & 63)), Ordering::Relaxed);
}

/// Work the serve loop runs between drains (tests use it to run jobs that send).
static IDLE_HOOK: Hook<fn()> = Hook::new();

pub fn set_idle_hook(hook: fn()) -> Result<(), Full> {
    IDLE_HOOK.set(hook)
}

/// Adaptive notification: how long (TSC ticks) the serve loop keeps polling an empty inbox
/// before it arms the doorbell and halts. 0 halts at once (the default); `u64::MAX` never
/// halts (pure polling: lowest latency, a CPU spent spinning, no IPIs needed).
static IDLE_POLL_TICKS: AtomicU64 = AtomicU64::new(0);

/// Sets how long the serve loop polls before halting: `Some(µs)`, or `None` for "forever".
pub fn set_idle_poll(micros: Option<u64>) {
    let ticks = micros.map_or(u64::MAX, |us| us.saturating_mul(tsc::ticks_per_ms()) / 1000);
    IDLE_POLL_TICKS.store(ticks, Ordering::Relaxed);
}

/// Where the serve loop's idle time went, in TSC ticks: spent polling an empty inbox, spent
/// halted; and how many times it halted.
pub struct IdleStats {
    pub polling: AtomicU64,
    pub halted: AtomicU64,
    pub halts: AtomicU64,
}

pub static IDLE: IdleStats = IdleStats {
    polling: AtomicU64::new(0),
    halted: AtomicU64::new(0),
    halts: AtomicU64::new(0),
};

/// Polls the inbox for up to the idle-poll budget. True if something came in (and was
/// handled), false once the budget ran out with nothing.
fn idle_poll() -> bool {
    let budget = IDLE_POLL_TICKS.load(Ordering::Relaxed);
    if budget == 0 {
        return false;
    }
    let start = tsc::read();
    let until = start.saturating_add(budget);
    let found = 'poll: loop {
        // The clock is read once every 32 polls: RDTSC may exit to the hypervisor.
        for _ in 0..32 {
            if poll() > 0 {
                break 'poll true;
            }
            core::hint::spin_loop();
        }
        if tsc::read() >= until || IDLE_POLL_TICKS.load(Ordering::Relaxed) != budget {
            break false;
        }
    };
    IDLE.polling
        .fetch_add(tsc::read().saturating_sub(start), Ordering::Relaxed);
    found
}

/// The serve loop of an instance's first CPU: drain; run a slice of a ready task; when there
/// is nothing to do, poll for the idle-poll budget, then arm the mailboxes and halt until a
/// doorbell or another interrupt.
pub fn serve_forever() -> ! {
    loop {
        if poll() > 0 {
            continue;
        }
        if let Some(hook) = IDLE_HOOK.get() {
            hook();
        }
        // One slice of a task (until it blocks, yields or the next interrupt), then drain
        // again: tasks never keep the mailboxes waiting longer than a timer tick.
        if crate::tasks::sched::run_one() {
            continue;
        }
        if idle_poll() {
            continue;
        }
        // Throttled (a peer rang past the doorbell's rate): no doorbell wakes this CPU until
        // its tick ends the throttle, so a halt would keep each message sent meanwhile waiting
        // up to a tick (10 ms). Poll instead, as in pure polling mode, until then: the
        // throttle keeps the CPU out of the doorbell's handler, not from its messages.
        if doorbell::throttled() {
            core::hint::spin_loop();
            continue;
        }
        x86_64::instructions::interrupts::disable();
        // A task made ready on this CPU since `run_one` looked (its wake-up IPI may have come
        // before interrupts went off): look again rather than sleep until the next tick.
        let kicked = crate::cpus::smp::take_kick(0);
        let may_sleep = !kicked
            && RECEIVERS.get().is_some_and(|receivers| {
                receivers
                    .lock()
                    .iter_mut()
                    .flatten()
                    // A faulted end has nothing to wake us for (it is repaired on a tick).
                    .all(|r| r.arm().unwrap_or(true))
            });
        if may_sleep {
            let before = interrupts::MESSAGE_IPIS.load(Ordering::Relaxed);
            let halted_at = tsc::read();
            x86_64::instructions::interrupts::enable_and_hlt();
            IDLE.halted
                .fetch_add(tsc::read().saturating_sub(halted_at), Ordering::Relaxed);
            IDLE.halts.fetch_add(1, Ordering::Relaxed);
            let woke_by_ipi = interrupts::MESSAGE_IPIS.load(Ordering::Relaxed) != before;
            disarm_all();
            if woke_by_ipi && poll() == 0 {
                SPURIOUS_IPIS.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            disarm_all();
            if !kicked {
                // A mailbox's re-check found a message whose sender has not set its summary
                // bit yet (it does so right after publishing): look at every mailbox, rather
                // than spin on an empty-looking summary until the sender gets there.
                LEFTOVER.store(u64::MAX, Ordering::Relaxed);
            }
            x86_64::instructions::interrupts::enable();
        }
    }
}

fn disarm_all() {
    if let Some(receivers) = RECEIVERS.get() {
        for r in receivers.lock().iter_mut().flatten() {
            r.disarm();
        }
    }
}

/// Messages this instance's dispatcher handled, rejected in total.
pub fn counters() -> (u64, u64) {
    dispatcher().map_or((0, 0), |d| (d.handled(), d.rejects().total()))
}
