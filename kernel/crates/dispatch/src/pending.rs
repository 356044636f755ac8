//! The table of outstanding calls (requests sent with `NEEDS_REPLY` that wait for a reply).
//!
//! Fixed capacity, no allocation, and no lock that a CPU can wait on: each slot has one atomic
//! word holding a generation (upper 56 bits) and a state (lower 8 bits). Every transition is a
//! compare-and-swap on that word, so a reply and a timeout racing for the same call resolve to
//! exactly one winner, and a slot reused for a new call (new generation) cannot be completed by
//! a late reply to the old one.
//!
//! ```text
//!   FREE --begin_call--> SETUP --> WAITING --complete--> FILLING --> DONE --poll--> FREE
//!                                     |                                  (reply handed over)
//!                                     +--expire--> EXPIRED --poll--> FREE (TimedOut)
//! ```
//! The reply is stored behind a `spin::Mutex` that only the owner of the FILLING or the
//! taking transition touches, so it is never contended.

use core::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use mk_ids::InstanceId;
use mk_wire::Message;

const FREE: u64 = 0;
const SETUP: u64 = 1;
const WAITING: u64 = 2;
const FILLING: u64 = 3;
const DONE: u64 = 4;
const EXPIRED: u64 = 5;
const TAKING: u64 = 6;

const fn pack(generation: u64, state: u64) -> u64 {
    (generation << 8) | state
}

const fn generation(word: u64) -> u64 {
    word >> 8
}

const fn state(word: u64) -> u64 {
    word & 0xff
}

/// Names one outstanding call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallToken {
    index: usize,
    generation: u64,
    /// Id of the request (and of the expected reply).
    pub msg_id: u64,
    /// Instance the request went to; only it may answer.
    pub peer: InstanceId,
}

/// Why a call could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallError {
    /// Every slot of the table holds an outstanding call.
    TableFull,
    /// Message id 0 cannot be correlated.
    ZeroMsgId,
    /// The request message is not valid (see [`mk_wire::Message::validate`]).
    Invalid(mk_wire::EncodeError),
}

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "no alloc in the kernel: the message travels by value (about 300 bytes)"
)]
pub enum CallState {
    /// Still waiting (or the reply is being stored right now).
    Pending,
    /// The reply; the slot is free again.
    Ready(Message),
    /// The deadline passed first; the slot is free again.
    TimedOut,
    /// The token is not (or no longer) outstanding: already collected or cancelled.
    Invalid,
}

/// A reply matched an outstanding call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The call.
    pub token: CallToken,
    /// Ticks from `begin_call` to the reply.
    pub latency: u64,
}

/// A reply matched no outstanding call: unknown id, already timed out, or from another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaleReply {
    /// The reply's id.
    pub msg_id: u64,
}

#[derive(Debug)]
struct CallSlot {
    word: AtomicU64,
    msg_id: AtomicU64,
    peer: AtomicU64,
    started: AtomicU64,
    deadline: AtomicU64,
    reply: spin::Mutex<Option<Message>>,
}

impl CallSlot {
    const fn new() -> Self {
        Self {
            word: AtomicU64::new(pack(0, FREE)),
            msg_id: AtomicU64::new(0),
            peer: AtomicU64::new(0),
            started: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            reply: spin::Mutex::new(None),
        }
    }
}

/// Fixed table of `N` outstanding calls.
#[derive(Debug)]
pub struct PendingCalls<const N: usize> {
    slots: [CallSlot; N],
    completed: AtomicU64,
    timed_out: AtomicU64,
    stale: AtomicU64,
}

impl<const N: usize> Default for PendingCalls<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PendingCalls<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [const { CallSlot::new() }; N],
            completed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    /// `msg_id`'s home slot: where [`begin_call`](Self::begin_call) looks first for a free
    /// slot and [`complete`](Self::complete) first for the call. Ids drawn one after another
    /// from a counter (`next_msg_id`) have different homes, so a call usually sits in its own
    /// and a reply finds it at the first look, however many calls are outstanding.
    const fn home(msg_id: u64) -> usize {
        (msg_id % N as u64) as usize
    }

    /// Every slot with its index, from `msg_id`'s home on, wrapping around.
    fn slots_from_home(&self, msg_id: u64) -> impl Iterator<Item = (usize, &CallSlot)> {
        let home = Self::home(msg_id);
        let (before, after) = self.slots.split_at(home);
        (home..).zip(after).chain(before.iter().enumerate())
    }

    /// Records a call to `peer` with id `msg_id`, started at `now`, that times out at
    /// `deadline` (tick at or after which [`expire`](Self::expire) gives up on it).
    pub fn begin_call(
        &self,
        peer: InstanceId,
        msg_id: u64,
        now: u64,
        deadline: u64,
    ) -> Result<CallToken, CallError> {
        if msg_id == 0 {
            return Err(CallError::ZeroMsgId);
        }
        for (index, slot) in self.slots_from_home(msg_id) {
            let word = slot.word.load(Relaxed);
            if state(word) != FREE {
                continue;
            }
            let generation = generation(word).wrapping_add(1) & (u64::MAX >> 8);
            if slot
                .word
                .compare_exchange(word, pack(generation, SETUP), Acquire, Relaxed)
                .is_err()
            {
                continue;
            }
            slot.msg_id.store(msg_id, Relaxed);
            slot.peer.store(u64::from(peer.raw()), Relaxed);
            slot.started.store(now, Relaxed);
            slot.deadline.store(deadline, Relaxed);
            slot.word.store(pack(generation, WAITING), Release);
            return Ok(CallToken {
                index,
                generation,
                msg_id,
                peer,
            });
        }
        Err(CallError::TableFull)
    }

    /// Hands `reply` (from `peer`, received at `now`) to the call it answers.
    pub fn complete(
        &self,
        peer: InstanceId,
        reply: &Message,
        now: u64,
    ) -> Result<Completed, StaleReply> {
        for (index, slot) in self.slots_from_home(reply.msg_id) {
            let word = slot.word.load(Acquire);
            if state(word) != WAITING
                || slot.msg_id.load(Relaxed) != reply.msg_id
                || slot.peer.load(Relaxed) != u64::from(peer.raw())
            {
                continue;
            }
            let started = slot.started.load(Relaxed);
            let generation = generation(word);
            if slot
                .word
                .compare_exchange(word, pack(generation, FILLING), AcqRel, Relaxed)
                .is_err()
            {
                // Expired or reused meanwhile: not ours any more.
                continue;
            }
            *slot.reply.lock() = Some(*reply);
            slot.word.store(pack(generation, DONE), Release);
            self.completed.fetch_add(1, Relaxed);
            return Ok(Completed {
                token: CallToken {
                    index,
                    generation,
                    msg_id: reply.msg_id,
                    peer,
                },
                latency: now.saturating_sub(started),
            });
        }
        self.stale.fetch_add(1, Relaxed);
        Err(StaleReply {
            msg_id: reply.msg_id,
        })
    }

    /// Times out every call whose deadline is at or before `now`, calling `on_expired` for
    /// each; returns how many. Their owners see [`CallState::TimedOut`] on the next poll.
    pub fn expire(&self, now: u64, mut on_expired: impl FnMut(CallToken)) -> usize {
        let mut n = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let word = slot.word.load(Acquire);
            if state(word) != WAITING || slot.deadline.load(Relaxed) > now {
                continue;
            }
            let token = CallToken {
                index,
                generation: generation(word),
                msg_id: slot.msg_id.load(Relaxed),
                peer: InstanceId::new(slot.peer.load(Relaxed) as u16),
            };
            if slot
                .word
                .compare_exchange(word, pack(token.generation, EXPIRED), AcqRel, Relaxed)
                .is_ok()
            {
                n += 1;
                self.timed_out.fetch_add(1, Relaxed);
                on_expired(token);
            }
        }
        n
    }

    /// Where the call stands; collecting a reply or a timeout frees the slot.
    pub fn poll(&self, token: &CallToken) -> CallState {
        let Some(slot) = self.slots.get(token.index) else {
            return CallState::Invalid;
        };
        let word = slot.word.load(Acquire);
        if generation(word) != token.generation {
            return CallState::Invalid;
        }
        match state(word) {
            WAITING | FILLING => CallState::Pending,
            DONE => {
                if slot
                    .word
                    .compare_exchange(word, pack(token.generation, TAKING), AcqRel, Relaxed)
                    .is_err()
                {
                    return CallState::Invalid;
                }
                // The reply is copied once, straight into the answer (not taken out of the slot
                // and then moved into it).
                let mut reply = slot.reply.lock();
                let answer = match &*reply {
                    Some(m) => CallState::Ready(*m),
                    None => CallState::Invalid,
                };
                *reply = None;
                drop(reply);
                slot.word.store(pack(token.generation, FREE), Release);
                answer
            }
            EXPIRED => {
                if slot
                    .word
                    .compare_exchange(word, pack(token.generation, FREE), AcqRel, Relaxed)
                    .is_ok()
                {
                    CallState::TimedOut
                } else {
                    CallState::Invalid
                }
            }
            _ => CallState::Invalid,
        }
    }

    /// Abandons the call and frees its slot, dropping any reply. Returns `false` when the token
    /// is not outstanding, or when a reply is being stored this instant (poll again).
    pub fn cancel(&self, token: &CallToken) -> bool {
        let Some(slot) = self.slots.get(token.index) else {
            return false;
        };
        let word = slot.word.load(Acquire);
        if generation(word) != token.generation {
            return false;
        }
        match state(word) {
            WAITING | EXPIRED => slot
                .word
                .compare_exchange(word, pack(token.generation, FREE), AcqRel, Relaxed)
                .is_ok(),
            DONE => matches!(self.poll(token), CallState::Ready(_)),
            _ => false,
        }
    }

    /// Calls currently outstanding (waiting, or answered or expired but not yet collected).
    pub fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| state(s.word.load(Relaxed)) != FREE)
            .count()
    }

    /// Replies matched so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Relaxed)
    }

    /// Calls timed out so far.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Relaxed)
    }

    /// Replies that matched nothing so far.
    pub fn stale(&self) -> u64 {
        self.stale.load(Relaxed)
    }

    /// Capacity.
    pub const fn capacity(&self) -> usize {
        N
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iid(i: u16) -> InstanceId {
        InstanceId::new(i)
    }

    fn reply(msg_id: u64) -> Message {
        Message::request(iid(1), mk_wire::Kind::Ping, msg_id, mk_wire::Payload::Empty)
    }

    /// Ids from a counter land each in its home slot, and a reply is matched there.
    #[test]
    fn a_call_sits_in_its_home_slot() {
        let table = PendingCalls::<8>::new();
        let tokens: Vec<_> = (1..=8)
            .map(|id| table.begin_call(iid(1), id, 0, 100).unwrap())
            .collect();
        for t in &tokens {
            assert_eq!(t.index, PendingCalls::<8>::home(t.msg_id), "{t:?}");
        }
        for t in tokens.iter().rev() {
            let done = table.complete(iid(1), &reply(t.msg_id), 5).unwrap();
            assert_eq!(done.token, *t);
            assert!(matches!(table.poll(t), CallState::Ready(m) if m.msg_id == t.msg_id));
        }
        assert_eq!(table.outstanding(), 0);
    }

    /// A home taken by another call: the next free slot after it (wrapping), and the reply
    /// still finds it.
    #[test]
    fn a_taken_home_sends_the_call_on_and_the_reply_after_it() {
        let table = PendingCalls::<4>::new();
        let a = table.begin_call(iid(1), 3, 0, 100).unwrap();
        let b = table.begin_call(iid(1), 7, 0, 100).unwrap();
        let c = table.begin_call(iid(1), 11, 0, 100).unwrap();
        assert_eq!((a.index, b.index, c.index), (3, 0, 1));
        assert_eq!(table.complete(iid(1), &reply(11), 0).unwrap().token, c);
        assert_eq!(table.complete(iid(1), &reply(7), 0).unwrap().token, b);
        assert_eq!(table.complete(iid(1), &reply(3), 0).unwrap().token, a);
        assert_eq!(
            table.complete(iid(1), &reply(3), 0),
            Err(StaleReply { msg_id: 3 })
        );
    }
}
