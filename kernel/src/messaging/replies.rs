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
//!  every tick ─► flush: each queue, front first, until Busy
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

/// Sends `reply` to `peer` now if its mailbox has room and no earlier reply waits; else queues
/// it behind them. Never waits.
pub(super) fn send(peer: InstanceId, reply: &Message, try_send: impl Fn(&Message) -> Attempt) {
    let mut queues = QUEUES.lock();
    if queues.len() < mk_shared::MAX_INSTANCES {
        queues.resize_with(mk_shared::MAX_INSTANCES, VecDeque::new);
    }
    let Some(q) = queues.get_mut(peer.index()) else {
        return dropped(peer, "no such instance");
    };
    if q.is_empty() {
        match try_send(reply) {
            Attempt::Sent => return,
            Attempt::Full => {}
            Attempt::Gone(why) => return dropped(peer, &why),
        }
    }
    if q.len() >= PER_PEER {
        return dropped(peer, "its reply queue is full");
    }
    q.push_back(*reply);
    REPLIES_QUEUED.fetch_add(1, Ordering::Relaxed);
}

/// Sends what waits, each peer's replies in order, until a mailbox is full again (timer tick).
pub(super) fn flush(try_send: impl Fn(InstanceId, &Message) -> Attempt) {
    let Some(mut queues) = QUEUES.try_lock() else {
        return;
    };
    for (i, q) in queues.iter_mut().enumerate() {
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
