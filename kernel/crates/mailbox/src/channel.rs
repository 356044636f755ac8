//! The two ends of one channel: [`SenderEnd`] and [`ReceiverEnd`].

use core::sync::atomic::{AtomicU64, Ordering, fence};

use crate::layout::{Channel, MAGIC, VERSION, bump};
use crate::{ChannelState, Error, InstanceId, MSG_SIZE, SLOTS};

/// Sequence number of the message with running count `count` (0-based): 1-based, wrapping
/// `u32` that skips 0 (0 marks a never-used slot).
#[inline]
pub(crate) const fn seq_of(count: u64) -> u32 {
    (count % (u32::MAX as u64)) as u32 + 1
}

/// The sequence number after `seq`.
#[inline]
pub(crate) const fn seq_next(seq: u32) -> u32 {
    if seq == u32::MAX { 1 } else { seq + 1 }
}

/// The sequence number `back` messages before `seq` (in the same 0-skipping domain).
#[inline]
pub(crate) const fn seq_back(seq: u32, back: u32) -> u32 {
    let m = u32::MAX as u64;
    (((seq as u64 - 1) + m - (back as u64 % m)) % m) as u32 + 1
}

/// What the caller must do after a successful send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the caller must send the IPI when need_doorbell is true"]
pub struct SendOutcome {
    /// True: send the doorbell IPI to the receiver (it is, or may be, going to sleep). False:
    /// the receiver was awake when the message was published and will see it without an IPI.
    pub need_doorbell: bool,
}

/// Whether [`SenderEnd`] suppresses doorbells to a receiver that is awake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DoorbellMode {
    /// Ask for an IPI only when the receiver has armed its wake flag (the default).
    #[default]
    Suppress,
    /// Ask for an IPI after every message (for measurement, or a receiver that never arms).
    Always,
}

/// Checks the channel header; returns the generation on success.
pub(crate) fn attach_check(chan: &Channel, from: InstanceId, to: InstanceId) -> Result<u32, Error> {
    let h = &chan.header;
    // Acquire: pairs with the creator's Release store of `Active` at init / reset, so the lines
    // and slots it prepared are visible before we read our starting counts.
    let state = ChannelState::from_raw(h.state.load(Ordering::Acquire));
    let magic = h.magic.load(Ordering::Relaxed);
    if magic == 0 && state == ChannelState::Uninit {
        return Err(Error::NotInitialised);
    }
    if magic != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != VERSION {
        return Err(Error::VersionMismatch {
            found: version,
            expected: VERSION,
        });
    }
    if h.from.load(Ordering::Relaxed) != u32::from(from.raw())
        || h.to.load(Ordering::Relaxed) != u32::from(to.raw())
        || h.slots.load(Ordering::Relaxed) as usize != SLOTS
        || h.slot_size.load(Ordering::Relaxed) as usize != MSG_SIZE
    {
        return Err(Error::Corrupt);
    }
    state.usable()?;
    Ok(h.generation.load(Ordering::Relaxed))
}

/// Per-operation check: state Active and same generation as at attach, and this end found no
/// fault. A reset is reported before a fault: a faulted end learns that instance 0 reset the
/// channel (and claims the new one) instead of staying faulted for good.
#[inline(always)]
fn op_check(chan: &Channel, generation: u32, fault: bool) -> Result<(), Error> {
    let h = &chan.header;
    // Acquire: if a reset completed (Release store of Active) we also see its new generation.
    ChannelState::from_raw(h.state.load(Ordering::Acquire)).usable()?;
    if h.generation.load(Ordering::Relaxed) != generation {
        return Err(Error::Reset);
    }
    if fault {
        return Err(Error::Corrupt);
    }
    Ok(())
}

/// Where a receiver is in its ring: messages consumed (running count, mirrors `rx.ack`), the
/// sequence number the next slot holds when full, and the one it holds when it is empty
/// (`SLOTS` messages back: the lap before), kept so that a look compares and computes nothing.
#[derive(Clone, Copy)]
pub(crate) struct Cursor {
    pub(crate) consumed: u64,
    pub(crate) expected: u32,
    pub(crate) lapped: u32,
}

impl Cursor {
    pub(crate) fn at(consumed: u64) -> Self {
        let expected = seq_of(consumed);
        Self {
            consumed,
            expected,
            lapped: seq_back(expected, SLOTS as u32),
        }
    }

    #[inline]
    pub(crate) fn advance(&mut self) {
        self.consumed = self.consumed.wrapping_add(1);
        self.expected = seq_next(self.expected);
        self.lapped = seq_next(self.lapped);
    }
}

/// Copies the next (full) slot of `chan` out into `out` and acknowledges it, at `at`.
#[inline]
fn take_slot(chan: &Channel, at: &mut Cursor, out: &mut [u8; MSG_SIZE]) {
    let (head, tail) = out.split_at_mut(crate::HEAD);
    // Both conversions hold by the constants' sizes (the compiler drops the check).
    if let (Ok(head), Ok(tail)) = (head.try_into(), tail.try_into()) {
        take_slot_parts(chan, at, head, tail);
    }
}

/// [`take_slot`] into a header and a tail kept apart ([`crate::layout::Slot::read_parts`]).
#[inline]
fn take_slot_parts(
    chan: &Channel,
    at: &mut Cursor,
    head: &mut [u8; crate::HEAD],
    tail: &mut [u8; MSG_SIZE - crate::HEAD],
) {
    let slot = &chan.slots[(at.consumed % SLOTS as u64) as usize];
    head[0..4].copy_from_slice(&at.expected.to_le_bytes());
    slot.read_parts(head, tail);
    at.advance();
    // Release: our loads of the slot above happen before the sender's Acquire load of this ack,
    // hence before it overwrites the slot. From here on only the copy is used.
    chan.rx.ack.store(at.consumed, Ordering::Release);
    bump(&chan.rx.received);
}

/// A message as a sender hands it over: whole, or in two parts ([`SenderEnd::try_send_parts`]).
/// (An enum rather than a closure: the send is inlined into its callers, closure and all.)
#[derive(Clone, Copy)]
enum Outgoing<'m> {
    Whole(&'m [u8; MSG_SIZE]),
    Parts(&'m [u8; crate::HEAD], &'m [u8]),
}

/// The sending end of channel `from -> to`. One per channel (claimed from the
/// [`crate::MailboxMatrix`]); released on drop.
pub struct SenderEnd<'a> {
    chan: &'a Channel,
    /// The receiver's summary word, where this end sets bit `from` after each message.
    summary: &'a AtomicU64,
    claim: &'a AtomicU64,
    bit: u64,
    from: InstanceId,
    to: InstanceId,
    generation: u32,
    /// Messages published (running count), mirrors `tx.sent`.
    sent: u64,
    /// Last acknowledgement read from the receiver (bounds-checked).
    acked: u64,
    next_seq: u32,
    mode: DoorbellMode,
    fault: bool,
}

impl<'a> SenderEnd<'a> {
    pub(crate) fn attach(
        chan: &'a Channel,
        summary: &'a AtomicU64,
        claim: &'a AtomicU64,
        bit: u64,
        from: InstanceId,
        to: InstanceId,
    ) -> Result<Self, Error> {
        let generation = attach_check(chan, from, to)?;
        // Our own line: only we (and the creator before Active) write it; but any instance
        // can, so the counts must at least agree with the receiver's (at most a ring apart).
        let sent = chan.tx.sent.load(Ordering::Relaxed);
        if sent.wrapping_sub(chan.rx.ack.load(Ordering::Relaxed)) > SLOTS as u64 {
            chan.tx.fault.store(1, Ordering::Relaxed);
            return Err(Error::Corrupt);
        }
        let fault = chan.tx.fault.load(Ordering::Relaxed) != 0;
        Ok(Self {
            chan,
            summary,
            claim,
            bit,
            from,
            to,
            generation,
            sent,
            // Conservative: assume every slot may still be occupied until we read the ack (the
            // first send that needs a slot does), so no trust in the peer's line at attach.
            acked: sent.wrapping_sub(SLOTS as u64),
            next_seq: seq_of(sent),
            mode: DoorbellMode::default(),
            fault,
        })
    }

    /// The sending instance.
    pub fn from(&self) -> InstanceId {
        self.from
    }

    /// The receiving instance.
    pub fn to(&self) -> InstanceId {
        self.to
    }

    /// Selects doorbell suppression (default) or "always ring".
    pub fn set_doorbell_mode(&mut self, mode: DoorbellMode) {
        self.mode = mode;
    }

    /// The current doorbell mode.
    pub fn doorbell_mode(&self) -> DoorbellMode {
        self.mode
    }

    /// Messages sent so far on this channel (running count since init / reset).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn mark_fault(&mut self) -> Error {
        self.fault = true;
        self.chan.tx.fault.store(1, Ordering::Relaxed);
        Error::Corrupt
    }

    /// Re-reads the receiver's acknowledgement. The peer can write anything there, so it must
    /// lie in `[acked, sent]` (wrapping): it never goes back and never acknowledges a message
    /// not yet sent. Anything else marks the channel corrupt on our side.
    fn refresh_ack(&mut self) -> Result<(), Error> {
        // Acquire: pairs with the receiver's Release store of `ack` after copying slots out, so
        // its reads of those slots happen before our next writes to them.
        let ack = self.chan.rx.ack.load(Ordering::Acquire);
        if ack.wrapping_sub(self.acked) > self.sent.wrapping_sub(self.acked) {
            return Err(self.mark_fault());
        }
        self.acked = ack;
        Ok(())
    }

    #[inline]
    fn in_flight(&self) -> u64 {
        self.sent.wrapping_sub(self.acked)
    }

    /// Free slots, after re-reading the acknowledgement.
    pub fn free_slots(&mut self) -> Result<usize, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        self.refresh_ack()?;
        Ok(SLOTS - self.in_flight() as usize)
    }

    #[inline(always)]
    fn send_inner(&mut self, msg: Outgoing<'_>, count_full: bool) -> Result<SendOutcome, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        if self.in_flight() >= SLOTS as u64 {
            self.refresh_ack()?;
            if self.in_flight() >= SLOTS as u64 {
                if count_full {
                    bump(&self.chan.tx.full);
                }
                return Err(Error::Full);
            }
        }
        let slot = &self.chan.slots[(self.sent % SLOTS as u64) as usize];
        match msg {
            Outgoing::Whole(msg) => slot.write_payload(msg),
            Outgoing::Parts(head, tail) => slot.write_parts(head, tail),
        }
        // Release: the payload stores above happen before any Acquire load that reads this
        // sequence number, i.e. before the receiver's copy.
        slot.seq.store(self.next_seq, Ordering::Release);
        // Release: a receiver whose `take` (Acquire) reads our bit sees the message above.
        self.summary
            .fetch_or(1 << (self.from.index() & 63), Ordering::Release);
        self.sent = self.sent.wrapping_add(1);
        self.next_seq = seq_next(self.next_seq);
        self.chan.tx.sent.store(self.sent, Ordering::Relaxed);
        Ok(self.doorbell())
    }

    /// Decides whether the receiver needs an IPI for the message just published.
    ///
    /// Race argument (store-buffering / Dekker): the receiver does `armed = 1; fence(SeqCst);
    /// load slot.seq`, we do `store slot.seq; fence(SeqCst); load armed`. The two SeqCst fences
    /// are totally ordered; whichever comes second is guaranteed to see the other side's store.
    /// So either the receiver's re-check sees our message (and does not halt), or we see
    /// `armed == 1` (and ring): never both miss. Reading a stale `armed == 1` after the receiver
    /// has woken only costs a spurious IPI, which the receiver tolerates.
    #[inline(always)]
    fn doorbell(&mut self) -> SendOutcome {
        let need = match self.mode {
            DoorbellMode::Always => true,
            DoorbellMode::Suppress => {
                fence(Ordering::SeqCst);
                self.chan.wake.armed.load(Ordering::Relaxed) != 0
            }
        };
        if need {
            bump(&self.chan.tx.doorbells_rung);
        } else {
            bump(&self.chan.tx.doorbells_suppressed);
        }
        SendOutcome {
            need_doorbell: need,
        }
    }

    /// Sends `msg` if a slot is free, else returns [`Error::Full`] at once. Bytes 0..4 of `msg`
    /// are ignored: the mailbox puts the sequence number there. The message is never
    /// overwritten or dropped once `Ok` is returned.
    pub fn try_send(&mut self, msg: &[u8; MSG_SIZE]) -> Result<SendOutcome, Error> {
        self.send_inner(Outgoing::Whole(msg), true)
    }

    /// [`Self::try_send`] of a message given in two parts, copied straight into the slot: its
    /// first [`crate::HEAD`] bytes (0..4 ignored, as in `try_send`) and `tail`, the bytes after
    /// them. The slot's bytes past the tail are not cleared (they hold an earlier message of
    /// this sender): for formats that carry their own length, like the wire crate's.
    /// [`Error::TooLong`] if the parts do not fit a slot (nothing sent).
    #[inline(always)]
    pub fn try_send_parts(
        &mut self,
        head: &[u8; crate::HEAD],
        tail: &[u8],
    ) -> Result<SendOutcome, Error> {
        if tail.len() > MSG_SIZE - crate::HEAD {
            return Err(Error::TooLong {
                len: crate::HEAD + tail.len(),
            });
        }
        self.send_inner(Outgoing::Parts(head, tail), true)
    }

    /// Sends `msg`, waiting while the ring is full until `now() >= deadline`, then returns
    /// [`Error::Busy`] (the message was not sent; the caller still owns it). `now` is any
    /// monotonic clock the caller has (TSC, APIC timer ticks, or a spin counter).
    pub fn send_timeout(
        &mut self,
        msg: &[u8; MSG_SIZE],
        mut now: impl FnMut() -> u64,
        deadline: u64,
    ) -> Result<SendOutcome, Error> {
        loop {
            match self.send_inner(Outgoing::Whole(msg), false) {
                Err(Error::Full) => {
                    if now() >= deadline {
                        bump(&self.chan.tx.busy);
                        return Err(Error::Busy);
                    }
                    core::hint::spin_loop();
                }
                other => return other,
            }
        }
    }

    /// [`Self::send_timeout`] with a budget of `spins` retries instead of a clock.
    pub fn send_spin(&mut self, msg: &[u8; MSG_SIZE], spins: u64) -> Result<SendOutcome, Error> {
        let mut n = 0u64;
        self.send_timeout(
            msg,
            || {
                n += 1;
                n
            },
            spins,
        )
    }
}

impl Drop for SenderEnd<'_> {
    fn drop(&mut self) {
        self.claim.fetch_and(!self.bit, Ordering::Release);
    }
}

/// The receiving end of channel `from -> to`. The pair identity is the channel's: a message read
/// here was sent by instance [`ReceiverEnd::from`], whatever its header claims.
pub struct ReceiverEnd<'a> {
    chan: &'a Channel,
    claim: &'a AtomicU64,
    bit: u64,
    from: InstanceId,
    to: InstanceId,
    generation: u32,
    at: Cursor,
    fault: bool,
    /// Where `drain` copies each message before handing it out: kept here so that a drain does
    /// not clear a fresh 256-byte buffer every time (every byte is overwritten by the copy).
    buf: [u8; MSG_SIZE],
}

impl<'a> ReceiverEnd<'a> {
    pub(crate) fn attach(
        chan: &'a Channel,
        claim: &'a AtomicU64,
        bit: u64,
        from: InstanceId,
        to: InstanceId,
    ) -> Result<Self, Error> {
        let generation = attach_check(chan, from, to)?;
        let consumed = chan.rx.ack.load(Ordering::Relaxed);
        // As for the sender: the counts must agree (the ring holds at most SLOTS messages).
        if chan.tx.sent.load(Ordering::Relaxed).wrapping_sub(consumed) > SLOTS as u64 {
            chan.rx.fault.store(1, Ordering::Relaxed);
            return Err(Error::Corrupt);
        }
        let fault = chan.rx.fault.load(Ordering::Relaxed) != 0;
        Ok(Self {
            chan,
            claim,
            bit,
            from,
            to,
            generation,
            at: Cursor::at(consumed),
            fault,
            buf: [0; MSG_SIZE],
        })
    }

    /// The sending instance (the channel's identity, not anything read from a message).
    pub fn from(&self) -> InstanceId {
        self.from
    }

    /// The receiving instance.
    pub fn to(&self) -> InstanceId {
        self.to
    }

    /// Messages received so far on this channel (running count since init / reset).
    pub fn received(&self) -> u64 {
        self.at.consumed
    }

    fn mark_fault(&mut self) -> Error {
        self.fault = true;
        self.chan.rx.fault.store(1, Ordering::Relaxed);
        Error::Corrupt
    }

    /// Is the next slot full? A correct sender leaves the slot holding either the expected
    /// sequence number (full), the one `SLOTS` earlier (the previous lap, already consumed) or 0
    /// (never used). Anything else was written by a broken peer: the channel is corrupt.
    #[inline]
    fn peek(&mut self) -> Result<bool, Error> {
        self.look().map_err(|()| self.mark_fault())
    }

    /// [`Self::peek`] without marking the fault (`Err(())`: the slot is corrupt).
    #[inline]
    fn look(&self) -> Result<bool, ()> {
        let slot = &self.chan.slots[(self.at.consumed % SLOTS as u64) as usize];
        // Acquire: pairs with the sender's Release store of seq; the payload is visible.
        let seq = slot.seq.load(Ordering::Acquire);
        if seq == self.at.expected {
            Ok(true)
        } else if seq == 0 || seq == self.at.lapped {
            Ok(false)
        } else {
            Err(())
        }
    }

    /// Copies the next (full) slot out and acknowledges it.
    #[inline]
    fn take(&mut self, out: &mut [u8; MSG_SIZE]) {
        take_slot(self.chan, &mut self.at, out);
    }

    /// Receives one message into `out` if there is one: `Ok(true)`; `Ok(false)` if empty. The
    /// message is copied out of shared memory before this returns, so the caller validates a
    /// private copy the peer can no longer change.
    pub fn try_recv(&mut self, out: &mut [u8; MSG_SIZE]) -> Result<bool, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        if !self.peek()? {
            return Ok(false);
        }
        self.take(out);
        Ok(true)
    }

    /// Hands up to `limit` waiting messages, in order, to `f` and returns how many. Each is
    /// copied to a local buffer and acknowledged before `f` sees it. Returning 0 after a doorbell
    /// means the IPI was spurious (see [`Self::record_spurious`]).
    pub fn drain_max(
        &mut self,
        limit: usize,
        mut f: impl FnMut(&[u8; MSG_SIZE]),
    ) -> Result<usize, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        // The empty case (the common one when polling) returns before the buffer is made:
        // clearing 256 bytes costs more than the rest of an empty drain.
        if limit == 0 || !self.peek()? {
            return Ok(0);
        }
        let mut n = 0;
        loop {
            take_slot(self.chan, &mut self.at, &mut self.buf);
            n += 1;
            f(&self.buf);
            if n >= limit || !self.peek()? {
                return Ok(n);
            }
        }
    }

    /// Copies up to `out.len()` (at most [`SLOTS`]) waiting messages, in order, straight into
    /// `out` and acknowledges them; returns how many. One copy per message, out of shared memory
    /// into the caller's buffers, which the peer can no longer change. A corrupt slot after
    /// some messages ends the drain with those (they were acknowledged: they must reach the
    /// caller); the next call reports it ([`Error::Corrupt`]).
    pub fn drain_into(&mut self, out: &mut [[u8; MSG_SIZE]]) -> Result<usize, Error> {
        self.drain_into_parts(out, |buf| {
            let (head, tail) = buf.split_first_chunk_mut::<{ crate::HEAD }>()?;
            Some((head, tail.try_into().ok()?))
        })
    }

    /// [`Self::drain_into`] for a caller that keeps each message's header and the bytes after
    /// it apart: `parts` gives, for each element of `out`, where its first [`crate::HEAD`]
    /// bytes and the rest go (`None`: not there, the drain ends before it). Still one copy
    /// per message out of shared memory.
    pub fn drain_into_parts<E>(
        &mut self,
        out: &mut [E],
        mut parts: impl FnMut(
            &mut E,
        )
            -> Option<(&mut [u8; crate::HEAD], &mut [u8; MSG_SIZE - crate::HEAD])>,
    ) -> Result<usize, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        let mut n = 0;
        for e in out.iter_mut().take(SLOTS) {
            match self.look() {
                Ok(true) => {}
                Ok(false) => break,
                Err(()) if n == 0 => return Err(self.mark_fault()),
                Err(()) => break,
            }
            let Some((head, tail)) = parts(e) else { break };
            take_slot_parts(self.chan, &mut self.at, head, tail);
            n += 1;
        }
        Ok(n)
    }

    /// [`Self::drain_max`] with a limit of one ring's worth ([`SLOTS`]), so that a peer that
    /// keeps sending cannot hold the receiver in one call forever.
    pub fn drain(&mut self, f: impl FnMut(&[u8; MSG_SIZE])) -> Result<usize, Error> {
        self.drain_max(SLOTS, f)
    }

    /// Is a message waiting? (Does not consume it.)
    pub fn has_pending(&mut self) -> Result<bool, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        self.peek()
    }

    /// Announces "I am going to sleep, ring me", then re-checks the ring. Returns `Ok(true)` if
    /// the receiver may halt now (nothing pending, flag left armed), `Ok(false)` if a message
    /// slipped in (flag cleared again; drain and retry).
    ///
    /// The kernel must call this with interrupts disabled and halt with `sti; hlt`, so a doorbell
    /// that arrives between the re-check and the `hlt` still ends the `hlt`. A receiver of
    /// several channels arms all of them first and halts only if every one returned `true`
    /// (disarming the others otherwise). See the sender's `doorbell` for the race argument.
    pub fn arm(&mut self) -> Result<bool, Error> {
        op_check(self.chan, self.generation, self.fault)?;
        bump(&self.chan.wake.sleeps);
        self.chan.wake.armed.store(1, Ordering::SeqCst);
        // Orders the store of `armed` before the load of the slot's seq (store-load: needs a
        // full fence; pairs with the sender's fence between its seq store and armed load).
        fence(Ordering::SeqCst);
        if self.peek()? {
            self.disarm();
            return Ok(false);
        }
        Ok(true)
    }

    /// Clears the armed flag: call on waking, before draining. Relaxed is enough: if the
    /// sender still sees 1 it rings needlessly (a spurious IPI); if it sees 0, we are awake and
    /// the drain that follows, or the next `arm` re-check, finds its message.
    pub fn disarm(&mut self) {
        let armed = &self.chan.wake.armed;
        if armed.load(Ordering::Relaxed) != 0 {
            armed.store(0, Ordering::Relaxed);
        }
    }

    /// Is the wake flag set?
    pub fn is_armed(&self) -> bool {
        self.chan.wake.armed.load(Ordering::Relaxed) != 0
    }

    /// Counts a doorbell that found nothing new on this channel.
    pub fn record_spurious(&self) {
        bump(&self.chan.rx.spurious);
    }
}

impl Drop for ReceiverEnd<'_> {
    fn drop(&mut self) {
        self.claim.fetch_and(!self.bit, Ordering::Release);
    }
}
