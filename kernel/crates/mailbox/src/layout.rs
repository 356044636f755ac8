//! The `#[repr(C, align(64))]` structures that live in shared memory.
//!
//! Every field is an atomic: the peer is another kernel that may be buggy or may scribble on the
//! region at any time, so even an unexpected concurrent write is a value we read, never a data
//! race (undefined behaviour) in our instance. On x86_64 a `Relaxed` atomic load or store of an
//! aligned word is a plain `mov`, so this costs nothing over ordinary accesses.
//!
//! Each structure documents which party writes it. "Creator" is the instance that formats the
//! region (instance 0) and is the only one that may later mark channels dead or reset them.

use core::mem::size_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{CACHE_LINE, MSG_SIZE, SLOTS};

/// Magic in the region header and every channel header: `"MKMB"` little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MKMB");

/// Protocol version. Bump on any change of layout or of the protocol; attaching to a region or
/// channel with another version fails with [`crate::Error::VersionMismatch`].
///
/// 2: the receivers' summary lines after the region header.
pub const VERSION: u32 = 2;

/// Single writer helper: a counter that only one party writes needs no read-modify-write
/// instruction (no `lock` prefix), a load and a store of its own previous value suffice.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// First line of the region. Written by the creator only, before anyone attaches.
    pub(crate) struct RegionHeader {
        /// [`MAGIC`], stored last (Release) by `init`, so an attacher that sees it sees the rest.
        pub magic: AtomicU32,
        pub version: AtomicU32,
        /// Number of instances `n`; the region holds `n * (n - 1)` channels.
        pub instances: AtomicU32,
        /// [`SLOTS`] the creator was built with.
        pub slots: AtomicU32,
        /// `size_of::<Channel>()` the creator was built with.
        pub channel_size: AtomicU32,
        pub _reserved: AtomicU32,
        /// Total bytes used, header included.
        pub region_size: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// A receiver's summary line: which senders published since the receiver last looked.
    /// Sender `from` sets bit `from` of `pending` (`fetch_or`, Release) after every message it
    /// publishes to this receiver; the receiver takes the word (`swap(0)`, Acquire) and drains
    /// only the channels whose bits were set. So an empty poll is one load, whatever the number
    /// of peers.
    ///
    /// The word has many writers, unlike every other word of the region: each sender owns only
    /// its bit, and the receiver only clears. It is a hint: a bit set for nothing costs one
    /// empty look at a channel; a bit a broken peer clears delays that peer's messages only
    /// until the receiver's periodic look at every channel (its caller's duty, e.g. once per
    /// timer tick), and the receiver looks at every channel anyway before it sleeps
    /// ([`crate::ReceiverEnd::arm`]).
    pub(crate) struct Summary {
        pub pending: AtomicU64,
        pub _reserved: [AtomicU64; 7],
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 0 of a channel. Written by the creator only (init, mark dead, reset); read by both ends
    /// on every operation, so it stays shared in every cache.
    pub(crate) struct ChannelHeader {
        pub magic: AtomicU32,
        pub version: AtomicU32,
        /// A [`crate::ChannelState`] value.
        pub state: AtomicU32,
        /// Bumped by every reset; an end attached under another generation gets `Error::Reset`.
        pub generation: AtomicU32,
        /// The sending instance, as placed by the creator (checked on attach).
        pub from: AtomicU32,
        /// The receiving instance.
        pub to: AtomicU32,
        pub slots: AtomicU32,
        pub slot_size: AtomicU32,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 1: the sender's line. Written by the sender only (and by the creator at init / reset).
    pub(crate) struct TxLine {
        /// Messages published so far (the running count; the channel starts at 0 or at the test
        /// start value). Used to resume on attach and for statistics; the receiver never reads it.
        pub sent: AtomicU64,
        /// `try_send` calls that found the ring full.
        pub full: AtomicU64,
        /// `send_timeout` / `send_spin` calls that gave up.
        pub busy: AtomicU64,
        /// Sends that told the caller to ring the doorbell.
        pub doorbells_rung: AtomicU64,
        /// Sends where the doorbell was suppressed because the receiver was not armed.
        pub doorbells_suppressed: AtomicU64,
        /// Non-zero once the sender saw an impossible acknowledgement.
        pub fault: AtomicU32,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 2: the receiver's acknowledgement line. Written by the receiver only.
    pub(crate) struct RxLine {
        /// Messages consumed (copied out) so far, same running count as `TxLine::sent`. Stored with
        /// Release after the copy, loaded by the sender with Acquire to learn which slots are free.
        pub ack: AtomicU64,
        /// Messages received.
        pub received: AtomicU64,
        /// Doorbells the receiver's owner reported as spurious (nothing new to read).
        pub spurious: AtomicU64,
        /// Non-zero once the receiver saw an impossible slot sequence number.
        pub fault: AtomicU32,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// Line 3: the receiver's wake line. Written by the receiver only, and rarely (when it goes to
    /// sleep and when it wakes), while the sender reads `armed` after every send: keeping it off the
    /// acknowledgement line, which the receiver writes per message, stops that line from bouncing
    /// between the two caches on every message.
    pub(crate) struct WakeLine {
        /// 1: "I am going to sleep, ring me". 0: awake, no doorbell needed.
        pub armed: AtomicU32,
        pub _reserved: AtomicU32,
        /// How many times the receiver armed (went towards sleep).
        pub sleeps: AtomicU64,
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// One 256-byte message slot. Written by the sender only (and zeroed by the creator).
    ///
    /// Bytes 0..4 are the sequence number owned by the mailbox protocol; bytes 4..256 carry the
    /// message's other 252 bytes, kept in native byte order so that the slot's memory image is the
    /// message's bytes.
    pub(crate) struct Slot {
        /// 0 = never used since init/reset; otherwise the 1-based sequence number of the message
        /// the slot holds. Stored last with Release; it is what makes the slot "full".
        pub seq: AtomicU32,
        /// Message bytes 4..8.
        pub head: AtomicU32,
        /// Message bytes 8..256.
        pub body: [AtomicU64; (MSG_SIZE - 8) / 8],
    }
}

impl Slot {
    /// Copies message bytes 4..256 into the slot (each word an atomic store, as `Relaxed`: the
    /// Release store of `seq` that follows publishes them). The body goes in one run of word
    /// moves (`mk_raw::copy_to_words`).
    #[inline]
    pub fn write_payload(&self, msg: &[u8; MSG_SIZE]) {
        let (head, body) = msg[4..].split_at(4);
        let mut word = [0u8; 4];
        word.copy_from_slice(head);
        self.head.store(u32::from_ne_bytes(word), Ordering::Relaxed);
        mk_raw::copy_to_words(&self.body, body);
    }

    /// Writes a message given as its first [`crate::HEAD`] bytes and the `tail` after them
    /// (at most `MSG_SIZE - HEAD` bytes, checked by the caller): bytes 4..HEAD of `head`, then
    /// `tail`, each word an atomic store. The slot's bytes past the tail keep what they held (a
    /// message this sender sent before): the reader's format must not look past its length.
    #[inline(always)]
    pub fn write_parts(&self, head: &[u8; crate::HEAD], tail: &[u8]) {
        const HEAD_WORDS: usize = (crate::HEAD - 8) / 8;
        let mut word = [0u8; 4];
        word.copy_from_slice(&head[4..8]);
        self.head.store(u32::from_ne_bytes(word), Ordering::Relaxed);
        let (head_words, tail_words) = self.body.split_at(HEAD_WORDS);
        mk_raw::copy_to_words(head_words, &head[8..]);
        mk_raw::copy_to_words(tail_words, tail);
        let (whole, rest) = tail.as_chunks::<8>();
        if !rest.is_empty()
            && let Some(last) = tail_words.get(whole.len())
        {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            last.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
    }

    /// Copies message bytes 4..256 out of the slot, in two places: bytes 4..[`crate::HEAD`]
    /// into `head[4..]` and the bytes after them into `tail` (each word an atomic load, as
    /// `Relaxed`: ordered after the Acquire load of `seq` that preceded it and before the
    /// Release store of the acknowledgement after it). A receiver that keeps a message's
    /// header and payload apart has the payload copied once, straight to where it is used.
    #[inline]
    pub fn read_parts(
        &self,
        head: &mut [u8; crate::HEAD],
        tail: &mut [u8; MSG_SIZE - crate::HEAD],
    ) {
        const HEAD_WORDS: usize = (crate::HEAD - 8) / 8;
        head[4..8].copy_from_slice(&self.head.load(Ordering::Relaxed).to_ne_bytes());
        let (head_words, tail_words) = self.body.split_at(HEAD_WORDS);
        mk_raw::copy_from_words(&mut head[8..], head_words);
        mk_raw::copy_from_words(tail, tail_words);
    }

    pub fn zero(&self) {
        self.seq.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
        for w in &self.body {
            w.store(0, Ordering::Relaxed);
        }
    }
}

mk_raw::atomic_struct! {
    #[repr(C, align(64))]
    /// One channel: header line, sender line, two receiver lines, then the ring.
    pub(crate) struct Channel {
        pub header: ChannelHeader,
        pub tx: TxLine,
        pub rx: RxLine,
        pub wake: WakeLine,
        pub slots: [Slot; SLOTS],
    }
}

impl Channel {
    /// Zeroes both ends' lines and the ring, and sets the running counts to `start`. Creator
    /// only, while neither end is active (see `MailboxMatrix::reset_channel`).
    pub fn clear(&self, start: u64) {
        let tx = &self.tx;
        tx.sent.store(start, Ordering::Relaxed);
        for c in [
            &tx.full,
            &tx.busy,
            &tx.doorbells_rung,
            &tx.doorbells_suppressed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        tx.fault.store(0, Ordering::Relaxed);
        let rx = &self.rx;
        rx.ack.store(start, Ordering::Relaxed);
        rx.received.store(0, Ordering::Relaxed);
        rx.spurious.store(0, Ordering::Relaxed);
        rx.fault.store(0, Ordering::Relaxed);
        self.wake.armed.store(0, Ordering::Relaxed);
        self.wake.sleeps.store(0, Ordering::Relaxed);
        for s in &self.slots {
            s.zero();
        }
    }
}

const _: () = {
    assert!(size_of::<RegionHeader>() == CACHE_LINE);
    assert!(size_of::<Summary>() == CACHE_LINE);
    assert!(size_of::<ChannelHeader>() == CACHE_LINE);
    assert!(size_of::<TxLine>() == CACHE_LINE);
    assert!(size_of::<RxLine>() == CACHE_LINE);
    assert!(size_of::<WakeLine>() == CACHE_LINE);
    assert!(size_of::<Slot>() == MSG_SIZE);
    assert!(size_of::<Channel>() == 4 * CACHE_LINE + SLOTS * MSG_SIZE);
    assert!(core::mem::align_of::<Channel>() == CACHE_LINE);
    assert!(SLOTS.is_power_of_two());
};
