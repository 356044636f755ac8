//! [`MailboxMatrix`]: the `n * (n - 1)` channels of a shared region, and the creator's controls.

use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::channel::{ReceiverEnd, SenderEnd};
use crate::layout::{Channel, MAGIC, RegionHeader, Summary, VERSION};
use crate::{ChannelState, Error, InstanceId, MAX_INSTANCES, MSG_SIZE, SLOTS};
use mk_raw::Raw;

/// Bytes of shared memory needed for `n` instances: one header line, one summary line per
/// receiver, and one channel per ordered pair of distinct instances (`n * (n - 1)`), each
/// [`CHANNEL_SIZE`] bytes.
pub const fn region_size(n: usize) -> usize {
    channels_offset(n) + n * n.saturating_sub(1) * size_of::<Channel>()
}

/// Where the channels start: after the header line and the `n` summary lines.
const fn channels_offset(n: usize) -> usize {
    size_of::<RegionHeader>() + n * size_of::<Summary>()
}

/// The header line at the start of `raw` (which must be 64-byte aligned).
fn view_header<'a>(raw: Raw<'a>) -> Result<&'a RegionHeader, Error> {
    raw.ensure_aligned(core::mem::align_of::<Channel>())?;
    Ok(raw.at(0)?)
}

/// The `n` receivers' summary lines after the header line.
fn view_summaries<'a>(raw: Raw<'a>, n: usize) -> Result<&'a [Summary], Error> {
    Ok(raw.slice(size_of::<RegionHeader>(), n)?)
}

/// The `n * (n - 1)` channels after the summary lines.
fn view_channels<'a>(raw: Raw<'a>, n: usize) -> Result<&'a [Channel], Error> {
    Ok(raw.slice(channels_offset(n), n * n.saturating_sub(1))?)
}

/// Bytes of one channel (4 control lines + the ring).
pub const CHANNEL_SIZE: usize = size_of::<Channel>();

/// Snapshot of one channel's counters (each written by one side only, readable by anyone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Channel state.
    pub state: ChannelState,
    /// Reset count.
    pub generation: u32,
    /// Sender: messages sent (running count, starts at 0 on init / reset).
    pub sent: u64,
    /// Sender: `try_send` calls that found the ring full.
    pub full: u64,
    /// Sender: timed sends that gave up with `Busy`.
    pub busy: u64,
    /// Sender: sends that asked for a doorbell.
    pub doorbells_rung: u64,
    /// Sender: sends whose doorbell was suppressed.
    pub doorbells_suppressed: u64,
    /// Sender: saw an impossible acknowledgement.
    pub tx_fault: bool,
    /// Receiver: acknowledged (consumed) running count.
    pub acked: u64,
    /// Receiver: messages received.
    pub received: u64,
    /// Receiver: doorbells reported spurious.
    pub spurious: u64,
    /// Receiver: times it armed the wake flag.
    pub sleeps: u64,
    /// Receiver: wake flag currently set.
    pub armed: bool,
    /// Receiver: saw an impossible slot sequence number.
    pub rx_fault: bool,
}

/// This instance's view of the shared region: `n * (n - 1)` channels, one per ordered pair.
///
/// The view itself is local memory (each instance has its own, possibly at a different virtual
/// address of the region); it also records which ends this instance has claimed so that no
/// channel gets two senders or two receivers from here. The region holds no pointers, only
/// offsets implied by the layout, so it works at any mapping address.
pub struct MailboxMatrix<'a> {
    header: &'a RegionHeader,
    summaries: &'a [Summary],
    channels: &'a [Channel],
    n: usize,
    /// Bit `to` of `tx_claims[from]`: a `SenderEnd(from, to)` exists in this view.
    tx_claims: [AtomicU64; MAX_INSTANCES],
    rx_claims: [AtomicU64; MAX_INSTANCES],
}

impl<'a> MailboxMatrix<'a> {
    /// Formats the region for `n` instances (the creator, instance 0, does this once before
    /// any other instance attaches): every channel is zeroed, gets its header and becomes
    /// [`ChannelState::Active`]; the region magic is written last. `raw` must start 64-byte
    /// aligned, and no other instance may use it until `init` has returned.
    pub fn init(raw: Raw<'a>, n: usize) -> Result<Self, Error> {
        Self::init_with_start(raw, n, 0)
    }

    /// `init`, with every channel's running count starting at `start` (tests use a value near
    /// the `u32` sequence wrap point).
    pub(crate) fn init_with_start(raw: Raw<'a>, n: usize, start: u64) -> Result<Self, Error> {
        if !(2..=MAX_INSTANCES).contains(&n) {
            return Err(Error::BadInstanceCount(n));
        }
        let header = view_header(raw)?;
        let need = region_size(n);
        raw.ensure_len(need)?;
        let summaries = view_summaries(raw, n)?;
        let channels = view_channels(raw, n)?;
        header.magic.store(0, Ordering::Relaxed);
        for s in summaries {
            s.pending.store(0, Ordering::Relaxed);
            s._reserved
                .iter()
                .for_each(|w| w.store(0, Ordering::Relaxed));
        }
        header.version.store(VERSION, Ordering::Relaxed);
        header.instances.store(n as u32, Ordering::Relaxed);
        header.slots.store(SLOTS as u32, Ordering::Relaxed);
        header
            .channel_size
            .store(CHANNEL_SIZE as u32, Ordering::Relaxed);
        header.region_size.store(need as u64, Ordering::Relaxed);
        let m = Self::new_view(header, summaries, channels, n);
        for from in InstanceId::all(n) {
            for to in InstanceId::all(n).filter(|&t| t != from) {
                let c = m.chan(from, to)?;
                let h = &c.header;
                h.state
                    .store(ChannelState::Resetting as u32, Ordering::Relaxed);
                c.clear(start);
                h.magic.store(MAGIC, Ordering::Relaxed);
                h.version.store(VERSION, Ordering::Relaxed);
                h.generation.store(0, Ordering::Relaxed);
                h.from.store(from.raw().into(), Ordering::Relaxed);
                h.to.store(to.raw().into(), Ordering::Relaxed);
                h.slots.store(SLOTS as u32, Ordering::Relaxed);
                h.slot_size.store(MSG_SIZE as u32, Ordering::Relaxed);
                // Release: everything above is visible to an end that sees Active (Acquire).
                h.state
                    .store(ChannelState::Active as u32, Ordering::Release);
            }
        }
        // Release: an attacher that sees the magic (Acquire) sees the formatted region.
        header.magic.store(MAGIC, Ordering::Release);
        Ok(m)
    }

    /// Attaches to a region another instance formatted: checks magic, version, ring size and
    /// channel size against this build.
    pub fn attach(raw: Raw<'a>) -> Result<Self, Error> {
        let header = view_header(raw)?;
        let magic = header.magic.load(Ordering::Acquire);
        if magic == 0 {
            return Err(Error::NotInitialised);
        }
        if magic != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(Error::VersionMismatch {
                found: version,
                expected: VERSION,
            });
        }
        let n = header.instances.load(Ordering::Relaxed) as usize;
        if !(2..=MAX_INSTANCES).contains(&n) {
            return Err(Error::BadInstanceCount(n));
        }
        if header.slots.load(Ordering::Relaxed) as usize != SLOTS
            || header.channel_size.load(Ordering::Relaxed) as usize != CHANNEL_SIZE
        {
            return Err(Error::LayoutMismatch);
        }
        let summaries = view_summaries(raw, n)?;
        let channels = view_channels(raw, n)?;
        Ok(Self::new_view(header, summaries, channels, n))
    }

    /// Creator only: writes the region header back as `init` wrote it, from this handle's
    /// instance count and the build (a stray or hostile write into it would make every later
    /// `attach`, a respawned instance's among them, fail). Returns how many words had changed.
    pub fn restore_header(&self) -> usize {
        use mk_raw::{put_back_u32, put_back_u64};
        let h = self.header;
        let fixed = put_back_u32(&h.version, VERSION)
            + put_back_u32(&h.instances, self.n as u32)
            + put_back_u32(&h.slots, SLOTS as u32)
            + put_back_u32(&h.channel_size, CHANNEL_SIZE as u32)
            + put_back_u32(&h._reserved, 0)
            + put_back_u64(&h.region_size, region_size(self.n) as u64);
        // Release, last, as in `init`.
        fixed + usize::from(h.magic.swap(MAGIC, Ordering::Release) != MAGIC)
    }

    fn new_view(
        header: &'a RegionHeader,
        summaries: &'a [Summary],
        channels: &'a [Channel],
        n: usize,
    ) -> Self {
        Self {
            header,
            summaries,
            channels,
            n,
            tx_claims: [const { AtomicU64::new(0) }; MAX_INSTANCES],
            rx_claims: [const { AtomicU64::new(0) }; MAX_INSTANCES],
        }
    }

    /// Number of instances the region was formatted for.
    pub fn instances(&self) -> usize {
        self.n
    }

    /// The ids of those instances, `0..instances()`.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = InstanceId> + Clone + use<> {
        InstanceId::all(self.n)
    }

    /// Bytes of the region in use.
    pub fn size(&self) -> usize {
        self.header.region_size.load(Ordering::Relaxed) as usize
    }

    fn index(&self, from: InstanceId, to: InstanceId) -> Result<usize, Error> {
        let (f, t) = (from.index(), to.index());
        if f >= self.n || t >= self.n || f == t {
            return Err(Error::BadPair { from, to });
        }
        // Row `from` holds its n-1 peers in order, skipping `from` itself.
        Ok(f * (self.n - 1) + if t > f { t - 1 } else { t })
    }

    pub(crate) fn chan(&self, from: InstanceId, to: InstanceId) -> Result<&'a Channel, Error> {
        Ok(&self.channels[self.index(from, to)?])
    }

    /// The summary word of receiver `to` (see [`Inbox`]).
    fn summary(&self, to: InstanceId) -> Result<&'a AtomicU64, Error> {
        self.summaries
            .get(to.index())
            .map(|s| &s.pending)
            .ok_or(Error::BadPair { from: to, to })
    }

    /// Where the ring of channel `from -> to` lies in this address space (address, bytes):
    /// for the rogue-instance tests, which scribble over their own outgoing slots.
    pub fn ring_span(&self, from: InstanceId, to: InstanceId) -> Result<(usize, usize), Error> {
        let slots = &self.chan(from, to)?.slots;
        Ok((core::ptr::from_ref(slots).addr(), size_of_val(slots)))
    }

    /// Receiver `to`'s summary: which senders published since it last looked.
    pub fn inbox(&self, to: InstanceId) -> Result<Inbox<'a>, Error> {
        Ok(Inbox {
            word: self.summary(to)?,
        })
    }

    fn claim(word: &AtomicU64, bit: u64) -> Result<(), Error> {
        if word.fetch_or(bit, Ordering::Acquire) & bit != 0 {
            return Err(Error::AlreadyClaimed);
        }
        Ok(())
    }

    /// Claims the sending end of `from -> to` (the caller should be instance `from`). Fails
    /// if it is already claimed in this view, the channel is not initialised, dead, of another
    /// version, or its header does not match its place.
    pub fn sender_end(&self, from: InstanceId, to: InstanceId) -> Result<SenderEnd<'_>, Error> {
        let chan = self.chan(from, to)?;
        let summary = self.summary(to)?;
        let (word, bit) = (&self.tx_claims[from.index()], 1u64 << to.index());
        Self::claim(word, bit)?;
        SenderEnd::attach(chan, summary, word, bit, from, to).inspect_err(|_| {
            word.fetch_and(!bit, Ordering::Release);
        })
    }

    /// Claims the receiving end of `from -> to` (the caller should be instance `to`).
    pub fn receiver_end(&self, from: InstanceId, to: InstanceId) -> Result<ReceiverEnd<'_>, Error> {
        let chan = self.chan(from, to)?;
        let (word, bit) = (&self.rx_claims[from.index()], 1u64 << to.index());
        Self::claim(word, bit)?;
        ReceiverEnd::attach(chan, word, bit, from, to).inspect_err(|_| {
            word.fetch_and(!bit, Ordering::Release);
        })
    }

    /// State of channel `from -> to`.
    pub fn state(&self, from: InstanceId, to: InstanceId) -> Result<ChannelState, Error> {
        let c = self.chan(from, to)?;
        Ok(ChannelState::from_raw(
            c.header.state.load(Ordering::Acquire),
        ))
    }

    /// Counters of channel `from -> to`.
    pub fn stats(&self, from: InstanceId, to: InstanceId) -> Result<ChannelStats, Error> {
        let c = self.chan(from, to)?;
        let r = Ordering::Relaxed;
        Ok(ChannelStats {
            state: ChannelState::from_raw(c.header.state.load(r)),
            generation: c.header.generation.load(r),
            sent: c.tx.sent.load(r),
            full: c.tx.full.load(r),
            busy: c.tx.busy.load(r),
            doorbells_rung: c.tx.doorbells_rung.load(r),
            doorbells_suppressed: c.tx.doorbells_suppressed.load(r),
            tx_fault: c.tx.fault.load(r) != 0,
            acked: c.rx.ack.load(r),
            received: c.rx.received.load(r),
            spurious: c.rx.spurious.load(r),
            sleeps: c.wake.sleeps.load(r),
            armed: c.wake.armed.load(r) != 0,
            rx_fault: c.rx.fault.load(r) != 0,
        })
    }

    /// Creator only: marks `from -> to` dead (e.g. one side crashed). Both ends get
    /// [`Error::Dead`] from their next operation and must stop using the channel.
    pub fn mark_dead(&self, from: InstanceId, to: InstanceId) -> Result<(), Error> {
        let c = self.chan(from, to)?;
        c.header
            .state
            .store(ChannelState::Dead as u32, Ordering::SeqCst);
        Ok(())
    }

    /// Creator only: marks every channel to or from `instance` dead.
    pub fn mark_instance_dead(&self, instance: InstanceId) -> Result<(), Error> {
        self.for_pairs_of(instance, |from, to| self.mark_dead(from, to))
    }

    /// Creator only: resets `from -> to` for a fresh start (e.g. an instance respawned). Both
    /// ends' lines and all slots are zeroed, the running counts restart at 0 and the generation
    /// is bumped, so no message of the old incarnation is delivered, and an end claimed before
    /// the reset gets [`Error::Reset`] and must be dropped and claimed again.
    ///
    /// Precondition (not checkable here): neither end is active while this runs. The protocol
    /// is: the creator first marks the channel [`Self::mark_dead`]; the dead instance is not
    /// running; the surviving instance, which sees `Dead` on its next operation, stops using the
    /// channel and confirms that to the creator out of band (its own control message or the
    /// creator *is* that instance); only then reset. Violating this cannot cause memory unsafety
    /// (every shared access is atomic) but may lose or garble messages of the new incarnation.
    pub fn reset_channel(&self, from: InstanceId, to: InstanceId) -> Result<(), Error> {
        let c = self.chan(from, to)?;
        let h = &c.header;
        // SeqCst: no end sees Active of the old generation after this point (program order
        // with the state loads of ends that start operations after it).
        h.state
            .store(ChannelState::Resetting as u32, Ordering::SeqCst);
        c.clear(0);
        // The identity too: a stray or hostile write may have hit it (see `needs_repair`).
        h.magic.store(MAGIC, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.from.store(from.raw().into(), Ordering::Relaxed);
        h.to.store(to.raw().into(), Ordering::Relaxed);
        h.slots.store(SLOTS as u32, Ordering::Relaxed);
        h.slot_size.store(MSG_SIZE as u32, Ordering::Relaxed);
        let g = h.generation.load(Ordering::Relaxed).wrapping_add(1);
        h.generation.store(g, Ordering::Relaxed);
        // Release: an end that sees Active again sees the zeroed lines and the new generation.
        h.state
            .store(ChannelState::Active as u32, Ordering::Release);
        Ok(())
    }

    /// For the creator's watch: why channel `from -> to` needs a reset to be usable again, if
    /// it does: an end found it faulted (a sequence number or acknowledgement no correct peer
    /// writes, or counters that do not check at attach), or its header no longer reads as the
    /// creator wrote it (identity, or a state no run of the protocol leaves). `Ok(())` for a
    /// healthy channel and for one marked dead (that one waits for its instance's respawn).
    pub fn needs_repair(&self, from: InstanceId, to: InstanceId) -> Result<(), Error> {
        let c = self.chan(from, to)?;
        if ChannelState::from_raw(c.header.state.load(Ordering::Acquire)) == ChannelState::Dead {
            return Ok(());
        }
        crate::channel::attach_check(c, from, to)?;
        if c.tx.fault.load(Ordering::Relaxed) != 0 || c.rx.fault.load(Ordering::Relaxed) != 0 {
            return Err(Error::Corrupt);
        }
        Ok(())
    }

    /// Creator only: resets every channel to or from `instance` (same precondition).
    pub fn reset_instance(&self, instance: InstanceId) -> Result<(), Error> {
        self.for_pairs_of(instance, |from, to| self.reset_channel(from, to))
    }

    fn for_pairs_of(
        &self,
        instance: InstanceId,
        mut f: impl FnMut(InstanceId, InstanceId) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if instance.index() >= self.n {
            return Err(Error::BadPair {
                from: instance,
                to: instance,
            });
        }
        for peer in self.ids().filter(|&p| p != instance) {
            f(instance, peer)?;
            f(peer, instance)?;
        }
        Ok(())
    }
}

/// A receiver's summary word: bit `p` set means sender `p` published a message since the
/// receiver last took the word. A hint, never trusted for more than "look at that channel"
/// (see the layout's `Summary`): the receiver must still look at every channel now and then,
/// and before it sleeps.
#[derive(Clone, Copy)]
pub struct Inbox<'a> {
    word: &'a AtomicU64,
}

impl Inbox<'_> {
    /// The senders flagged so far (one Relaxed load: the cheap test of an empty poll).
    #[inline]
    pub fn pending(&self) -> u64 {
        self.word.load(Ordering::Relaxed)
    }

    /// Takes the flagged senders, clearing the word. Acquire: pairs with each sender's Release
    /// `fetch_or`, so the messages it flagged are visible to the drain that follows. A sender
    /// that publishes after this sets its bit again, for the next look.
    #[inline]
    pub fn take(&self) -> u64 {
        if self.word.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.word.swap(0, Ordering::Acquire)
    }
}
