//! Replies waiting for room, per peer (issue 15, item 6).
//!
//! A handler's reply is sent from inside a poll. It used to wait there for room (up to
//! `SEND_TIMEOUT_MS`), so a peer that sent requests and never drained its inbox held the
//! answering instance about a second per request. Now a reply that finds the peer's mailbox
//! full waits here instead, behind the peer's earlier ones (order per peer is kept: while a
//! peer has replies waiting, new ones queue behind them), and goes out on a later timer tick.
//!
//! ```text
//!  handler ─► reply ─► peer's queue empty? ── yes ─► try_send ─ Ok ──────────────► sent
//!                         │ no                          └─ Busy ─► queue (tail)
//!                         └───────────────────────────────────────► queue (tail)
//!  every tick ─► flush: each non-empty queue (a bit per peer), front first, until Busy
//!  queue full (PER_PEER) or peer gone ─► dropped, counted, logged at a limited rate
//! ```

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use mk_wire::Message;
use spin::Mutex;

use crate::arch::tsc;
use crate::instance::InstanceId;

/// What one attempt to send a reply did (the sender is the caller's: this file knows nothing
/// of mailboxes).
pub(super) enum Attempt {
    Sent,
    /// The peer's mailbox is full: try again later.
    Full,
    /// The peer cannot take it (stopped, dead, channel reset or faulted): why.
    Gone(alloc::string::String),
}

/// Replies kept per peer at most; past that the newest is dropped (a peer that does not drain
/// cannot make this instance hold more).
pub const PER_PEER: usize = 16;

/// Replies that had to wait for room.
pub static REPLIES_QUEUED: AtomicU64 = AtomicU64::new(0);
/// Replies dropped: the peer's queue was full, or the peer went away.
pub static REPLIES_DROPPED: AtomicU64 = AtomicU64::new(0);

static QUEUES: Mutex<Vec<VecDeque<Message>>> = Mutex::new(Vec::new());
/// The peers whose queue holds replies (bit = the peer's index). Changed only under the
/// queues' lock, as a queue turns non-empty or empty; read without it, so that a reply to a
/// peer with nothing waiting (the common case) is sent without the lock, and a tick with
/// nothing waiting anywhere flushes nothing.
static WAITING: AtomicU64 = AtomicU64::new(0);

/// Sends `reply` to `peer` now if its mailbox has room and no earlier reply waits; else queues
/// it behind them. Never waits.
pub(super) fn send(peer: InstanceId, reply: &Message, try_send: impl Fn(&Message) -> Attempt) {
    let index = peer.index();
    if index >= mk_shared::MAX_INSTANCES {
        return dropped(peer, "no such instance");
    }
    let bit = 1u64 << index;
    // Replies wait for this peer: this one goes behind them. Else (the common case) it is sent
    // without the lock: only a flush, which only empties queues, runs beside the one polling
    // CPU that sends replies, so a clear bit stays clear until this reply queues. Acquire:
    // pairs with the flush's Release as it emptied the queue (its replies went first).
    let mut held = None;
    if WAITING.load(Ordering::Acquire) & bit != 0 {
        let mut queues = lock_queues();
        if let Some(q) = queues.get_mut(index)
            && !q.is_empty()
        {
            return queue_behind(q, peer, reply);
        }
        // Emptied by a flush since: sent now, under the lock.
        held = Some(queues);
    }
    match try_send(reply) {
        Attempt::Sent => return,
        Attempt::Full => {}
        Attempt::Gone(why) => return dropped(peer, &why),
    }
    let mut queues = held.unwrap_or_else(lock_queues);
    match queues.get_mut(index) {
        Some(q) => queue_behind(q, peer, reply),
        None => dropped(peer, "no such instance"),
    }
}

/// The queues, one per possible peer.
fn lock_queues() -> spin::MutexGuard<'static, Vec<VecDeque<Message>>> {
    let mut queues = QUEUES.lock();
    if queues.len() < mk_shared::MAX_INSTANCES {
        queues.resize_with(mk_shared::MAX_INSTANCES, VecDeque::new);
    }
    queues
}

/// Queues `reply` at the tail of `peer`'s queue `q` (under the queues' lock), or drops it if
/// the queue is full.
fn queue_behind(q: &mut VecDeque<Message>, peer: InstanceId, reply: &Message) {
    if q.len() >= PER_PEER {
        return dropped(peer, "its reply queue is full");
    }
    q.push_back(*reply);
    WAITING.fetch_or(1u64 << peer.index(), Ordering::Relaxed);
    REPLIES_QUEUED.fetch_add(1, Ordering::Relaxed);
}

/// Sends what waits, each peer's replies in order, until a mailbox is full again (timer tick).
/// Looks only at the peers with replies waiting; nothing at all when none has.
pub(super) fn flush(try_send: impl Fn(InstanceId, &Message) -> Attempt) {
    if WAITING.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(mut queues) = QUEUES.try_lock() else {
        return;
    };
    let mut waiting = WAITING.load(Ordering::Relaxed);
    while waiting != 0 {
        let i = waiting.trailing_zeros() as usize;
        waiting &= waiting - 1;
        let Some(q) = queues.get_mut(i) else {
            continue;
        };
        let peer = InstanceId::new(i as u16);
        while let Some(reply) = q.front() {
            match try_send(peer, reply) {
                Attempt::Sent => {
                    q.pop_front();
                }
                Attempt::Full => break,
                Attempt::Gone(why) => {
                    // Nobody waits for these any more.
                    let n = q.len();
                    q.clear();
                    REPLIES_DROPPED.fetch_add(n as u64 - 1, Ordering::Relaxed);
                    dropped(peer, &why);
                }
            }
        }
        if q.is_empty() {
            // Release: the sends above come before a fast-path reply that reads the bit clear.
            WAITING.fetch_and(!(1u64 << i), Ordering::Release);
        }
    }
}

/// Counts a dropped reply; logs at most 4 lines a second.
fn dropped(peer: InstanceId, why: &str) {
    static LOG: mk_dispatch::LogLimiter = mk_dispatch::LogLimiter::new(0, 4);
    REPLIES_DROPPED.fetch_add(1, Ordering::Relaxed);
    if let mk_dispatch::LogDecision::Log { suppressed } = LOG.check(tsc::seconds()) {
        crate::warn!("reply to instance {peer} dropped: {why} ({suppressed} similar suppressed)");
    }
}

/// Replies waiting for room in `peer`'s mailbox.
pub fn waiting(peer: InstanceId) -> usize {
    QUEUES.lock().get(peer.index()).map_or(0, VecDeque::len)
}
