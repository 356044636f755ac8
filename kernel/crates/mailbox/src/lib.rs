//! Lock-free mailboxes between multikernel instances.
//!
//! Kernel instances share nothing but a region of physical memory (mapped in each, possibly at
//! different virtual addresses) and the interrupt controller. They talk through 256-byte
//! messages placed in one single-producer/single-consumer *channel* per ordered pair
//! `(from, to)`, with an IPI as the doorbell. This crate is the pure logic: it builds for the host
//! (tested with threads standing in for instances) and for the kernel (`no_std`, no `alloc`).
//!
//! # Layout
//!
//! [`MailboxMatrix`] formats a caller-supplied region (an [`mk_raw::Raw`] view, 64-byte aligned)
//! as one header line, one summary line per receiver ([`Inbox`]: which senders published since
//! it last looked), then `n * (n - 1)` channels, row-major by sender, the diagonal omitted:
//! channel `(from, to)` is number `from * (n - 1) + (to if to < from else to - 1)`.
//! [`region_size`]`(n)` = 64 + 64n + n(n-1) × [`CHANNEL_SIZE`] (4 352 bytes with [`SLOTS`] =
//! 16), e.g. 1 045 568 bytes for 16 instances. The region holds no pointers, so the mapping address does
//! not matter.
//!
//! ```text
//!  offset  region
//!  0       RegionHeader   magic "MKMB", version, n, SLOTS, channel size, region size  (creator)
//!  64+64r  Summary of r   pending: bit p set by sender p after a message (senders; r clears)
//!  H       channel (0,1)  H = 64 + 64n
//!  H+C     channel (0,2)  ... one per ordered pair, C = CHANNEL_SIZE bytes each
//!
//!  offset  one channel (#[repr(C, align(64))]), one writer per cache line
//!  0       +------------------------------------------------------------+
//!          | header: magic, version, state, generation, from, to,      |  creator only
//!          |         slots, slot size                                   |  (init, dead, reset)
//!  64      +------------------------------------------------------------+
//!          | tx: sent, full, busy, doorbells rung / suppressed, fault   |  sender only
//!  128     +------------------------------------------------------------+
//!          | rx: ack (consumed count), received, spurious, fault        |  receiver only
//!  192     +------------------------------------------------------------+
//!          | wake: armed ("asleep, ring me"), sleeps                    |  receiver only
//!  256     +------------------------------------------------------------+
//!          | slot 0: [0..4) seq u32 | [4..256) message bytes            |  sender only
//!  512     +------------------------------------------------------------+   (4 lines each)
//!          | slot 1 ... slot SLOTS-1                                    |
//!  256+256*SLOTS ----------------------------------------------------------+
//! ```
//!
//! No word is written by both sides (as in Barrelfish's UMP channels): there is no shared head
//! index. The sender owns the slots and its tx line; the receiver owns its rx (acknowledgement)
//! line and its wake line. `armed` has a line of its own because the sender reads it after every
//! send while the receiver rewrites `ack` after every message: together they would bounce one
//! line between the caches per message. Counters live on the line of the side that counts them,
//! so any instance can read them ([`MailboxMatrix::stats`]) while only one writes each.
//!
//! # Protocol
//!
//! Both sides keep a running 64-bit count of messages (sender: sent, receiver: consumed, which
//! it publishes as `ack`); message `c` goes to slot `c % SLOTS` with sequence number
//! `seq(c) = c mod (2^32 - 1) + 1`: 1-based, wrapping `u32`, never 0 (0 marks a never-used slot),
//! each side advancing it locally. Bytes 0..4 of every message belong to the mailbox (the wire
//! crate's `seq` field): `send` ignores them and the received copy carries the sequence number
//! there, little-endian (the slot holds it as a native `u32`, the same bytes on x86_64).
//!
//! * **Send** (`try_send`): if `sent - acked == SLOTS`, re-read `ack` (Acquire) and bounds-check
//!   it: it must lie in `[acked, sent]`, otherwise the peer is broken and the channel is marked
//!   corrupt ([`Error::Corrupt`]), never a panic or an out-of-bounds index. Still full:
//!   [`Error::Full`] at once ([`SenderEnd::send_timeout`] retries until a deadline, then
//!   [`Error::Busy`]). Else copy message bytes 4..256 into the slot (Relaxed stores), then store
//!   the slot's `seq` with **Release**. A published message is never overwritten or lost.
//! * **Receive** (`drain`/`try_recv`): load the next slot's `seq` with **Acquire**; equal to the
//!   expected number means full. The whole slot is **copied** into a local `[u8; 256]` (Relaxed
//!   loads) before anyone looks at it, since the peer could change shared memory under us; then
//!   `ack` = consumed count is stored with **Release** and only then is the copy handed out. A
//!   `seq` other than expected, the previous lap's (`SLOTS` back) or 0 marks the channel corrupt.
//!   The pair identity is the channel's ([`ReceiverEnd::from`]), not what a message claims.
//!
//! # Memory ordering argument
//!
//! 1. *Payload visibility.* Sender: payload stores →(program order) `seq` Release store.
//!    Receiver: `seq` Acquire load reads it →(program order) payload loads. Release/Acquire
//!    synchronisation makes the payload stores happen-before the copy.
//! 2. *Slot reuse.* Receiver: copy loads → `ack` Release store. Sender: `ack` Acquire load
//!    reads it → stores into that slot on the next lap. So the copy happens-before the
//!    overwrite and cannot observe it (and the sender only reuses a slot whose message was
//!    acknowledged, so nothing is lost). `seq` values of one slot on consecutive laps differ
//!    because `SLOTS < 2^32 - 1`, so a stale slot never looks full.
//! 3. *Doorbell suppression* (a store-buffering / Dekker pattern). Receiver going to sleep
//!    ([`ReceiverEnd::arm`]): `armed = 1` (SeqCst); `fence(SeqCst)`; re-check the next slot's
//!    `seq`; halt only if empty. Sender ([`SenderEnd::try_send`]): store `seq` (Release);
//!    `fence(SeqCst)`; load `armed`; `need_doorbell = armed`. The two SeqCst fences are totally
//!    ordered, and the side whose fence comes second must see the other's store: either the
//!    receiver's re-check finds the message, or the sender sees `armed` and rings. A lost
//!    wake-up would need both loads to miss, which the fences forbid. On waking the receiver
//!    clears `armed` ([`ReceiverEnd::disarm`]) and drains; a sender that still reads the old 1
//!    only causes a spurious IPI, which `drain` returning 0 lets the caller count
//!    ([`ReceiverEnd::record_spurious`]) and [`RateLimiter`] lets it throttle. The kernel arms
//!    with interrupts disabled and halts with `sti; hlt`, so an IPI landing between the
//!    re-check and `hlt` still wakes it. With [`DoorbellMode::Always`] every send asks for an
//!    IPI (to measure the difference).
//! 4. *Init / reset / dead.* The creator writes a channel's fields, then its `state = Active`
//!    with Release (and the region magic last, Release); ends load them with Acquire before
//!    trusting anything. Every operation checks `state` and `generation`: [`Error::Dead`] after
//!    [`MailboxMatrix::mark_dead`], [`Error::Reset`] for an end older than the last
//!    [`MailboxMatrix::reset_channel`], which zeroes both lines and the ring and bumps the
//!    generation so no stale message is delivered. Reset is only done while neither side is
//!    active (see its documentation).
//!
//! All shared memory is accessed only through atomics (a `Relaxed` aligned atomic access is a
//! plain `mov` on x86_64), so even a peer that breaks the protocol cannot cause a data race,
//! only garbage, which the bounds checks and the wire crate's validation catch. The
//! crate has no `unsafe` (`forbid(unsafe_code)`): the region comes in as an [`mk_raw::Raw`]
//! view, which does the bounds- and alignment-checked casts.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod channel;
mod layout;
mod matrix;
mod rate;

#[cfg(test)]
mod tests;

pub use channel::{DoorbellMode, ReceiverEnd, SendOutcome, SenderEnd};
pub use layout::{MAGIC, VERSION};
pub use matrix::{CHANNEL_SIZE, ChannelStats, Inbox, MailboxMatrix, region_size};
pub use mk_ids::InstanceId;
pub use mk_raw::Raw;
pub use rate::RateLimiter;

/// Size of a message and of a slot, in bytes.
pub const MSG_SIZE: usize = 256;

/// The first part of a message sent in two parts ([`SenderEnd::try_send_parts`]): a header
/// of this many bytes (a multiple of 8), then the rest.
pub const HEAD: usize = 32;

/// Slots in each channel's ring (a power of two).
pub const SLOTS: usize = 16;

/// Cache line size everything is aligned to.
pub const CACHE_LINE: usize = 64;

/// Most instances a region can be formatted for.
pub const MAX_INSTANCES: usize = 64;

/// State word of a channel, written by the region's creator only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum ChannelState {
    /// Never formatted (zeroed memory) or an unknown value.
    #[default]
    Uninit = 0,
    /// Usable.
    Active = 1,
    /// A side died: ends get [`Error::Dead`] until the creator resets the channel.
    Dead = 2,
    /// The creator is resetting it.
    Resetting = 3,
}

impl ChannelState {
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            1 => Self::Active,
            2 => Self::Dead,
            3 => Self::Resetting,
            _ => Self::Uninit,
        }
    }

    pub(crate) fn usable(self) -> Result<(), Error> {
        match self {
            Self::Active => Ok(()),
            Self::Dead => Err(Error::Dead),
            Self::Uninit | Self::Resetting => Err(Error::NotInitialised),
        }
    }
}

/// Everything that can go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The ring is full (`try_send`); retry later. The message was not sent.
    Full,
    /// `send_timeout`/`send_spin` waited until the deadline and the ring stayed full.
    Busy,
    /// The region or channel has not been formatted (or is being reset).
    NotInitialised,
    /// The channel was marked dead by the creator.
    Dead,
    /// The channel was reset after this end was claimed: drop it and claim a new one.
    Reset,
    /// The peer broke the protocol (impossible ack or sequence number) or a header does not
    /// match its place. Sticky until a reset.
    Corrupt,
    /// Magic number wrong: not a mailbox region / channel.
    BadMagic,
    /// Made by another protocol version.
    VersionMismatch {
        /// Version in shared memory.
        found: u32,
        /// This build's [`VERSION`].
        expected: u32,
    },
    /// Made by a build with another ring or channel size.
    LayoutMismatch,
    /// The region is shorter than the layout needs.
    RegionTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// Null or not 64-byte aligned base.
    Misaligned,
    /// Instance count not in `2..=MAX_INSTANCES`.
    BadInstanceCount(usize),
    /// No channel for this pair (out of range, or `from == to`).
    BadPair {
        /// Sender asked for.
        from: InstanceId,
        /// Receiver asked for.
        to: InstanceId,
    },
    /// That end is already claimed in this view.
    AlreadyClaimed,
    /// A message given in parts is longer than a slot ([`SenderEnd::try_send_parts`]).
    TooLong {
        /// Bytes given, both parts together.
        len: usize,
    },
}

impl From<mk_raw::Error> for Error {
    fn from(e: mk_raw::Error) -> Self {
        match e {
            mk_raw::Error::Null | mk_raw::Error::Misaligned => Self::Misaligned,
            mk_raw::Error::RegionTooSmall { need, have } => Self::RegionTooSmall { need, have },
        }
    }
}
