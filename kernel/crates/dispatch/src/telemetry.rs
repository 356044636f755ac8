//! Rejection counters, per-peer telemetry and the call latency histogram. Everything is an
//! atomic updated with `Relaxed` ordering: the numbers are statistics, read at any time from
//! any CPU of any instance (a [`PeerTelemetry`] may live in shared memory; it is `repr(C)` and
//! all-atomic, so every instance built from this crate reads the same layout).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mk_wire::DecodeError;

/// Why the dispatcher refused a slot; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    /// [`DecodeError::BadVersion`].
    BadVersion,
    /// [`DecodeError::BadFlags`].
    BadFlags,
    /// [`DecodeError::UnknownType`].
    UnknownType,
    /// [`DecodeError::UnknownSubtype`].
    UnknownSubtype,
    /// [`DecodeError::PayloadTooLong`].
    PayloadTooLong,
    /// [`DecodeError::PayloadSizeMismatch`].
    PayloadSizeMismatch,
    /// [`DecodeError::BadStatus`].
    BadStatus,
    /// [`DecodeError::StatusInRequest`].
    StatusInRequest,
    /// [`DecodeError::ZeroMsgId`].
    ZeroMsgId,
    /// [`DecodeError::BadPayload`].
    BadPayload,
    /// The header's sender is not the mailbox pair's peer.
    SenderMismatch,
    /// No handler for the message's type or kind.
    NoHandler,
    /// A reply that matches no outstanding call (unknown, late, or from the wrong peer).
    StaleReply,
}

impl RejectReason {
    /// Number of reasons.
    pub const COUNT: usize = 13;

    /// All reasons, in counter order.
    pub const ALL: [RejectReason; Self::COUNT] = [
        Self::BadVersion,
        Self::BadFlags,
        Self::UnknownType,
        Self::UnknownSubtype,
        Self::PayloadTooLong,
        Self::PayloadSizeMismatch,
        Self::BadStatus,
        Self::StatusInRequest,
        Self::ZeroMsgId,
        Self::BadPayload,
        Self::SenderMismatch,
        Self::NoHandler,
        Self::StaleReply,
    ];

    /// Counter index.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The reason for a decode error.
    pub const fn of_decode(e: &DecodeError) -> Self {
        match e {
            DecodeError::BadVersion { .. } => Self::BadVersion,
            DecodeError::BadFlags { .. } => Self::BadFlags,
            DecodeError::UnknownType(_) => Self::UnknownType,
            DecodeError::UnknownSubtype { .. } => Self::UnknownSubtype,
            DecodeError::PayloadTooLong(_) => Self::PayloadTooLong,
            DecodeError::PayloadSizeMismatch { .. } => Self::PayloadSizeMismatch,
            DecodeError::BadStatus(_) => Self::BadStatus,
            DecodeError::StatusInRequest(_) => Self::StatusInRequest,
            DecodeError::ZeroMsgId => Self::ZeroMsgId,
            DecodeError::BadPayload(_) => Self::BadPayload,
        }
    }
}

mk_raw::atomic_struct! {
    #[repr(C)]
    /// One counter per [`RejectReason`].
    #[derive(Debug)]
    pub struct RejectCounters {
        counts: [AtomicU64; RejectReason::COUNT],
    }
}

impl Default for RejectCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl RejectCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; RejectReason::COUNT],
        }
    }

    /// Counts one rejection.
    pub fn record(&self, reason: RejectReason) {
        if let Some(c) = self.counts.get(reason.index()) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Rejections for `reason` so far.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts
            .get(reason.index())
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Rejections for all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Current values, indexed by [`RejectReason::index`].
    pub fn snapshot(&self) -> [u64; RejectReason::COUNT] {
        let mut out = [0; RejectReason::COUNT];
        for (o, c) in out.iter_mut().zip(&self.counts) {
            *o = c.load(Relaxed);
        }
        out
    }
}

/// Buckets of the latency histogram.
pub const LATENCY_BUCKETS: usize = 40;

/// The histogram bucket of a latency: 0 for 0 ticks, `b` for `2^(b-1) <= ticks < 2^b`, the
/// last bucket for everything from `2^(LATENCY_BUCKETS - 2)` up.
pub const fn latency_bucket(ticks: u64) -> usize {
    let b = (u64::BITS - ticks.leading_zeros()) as usize;
    if b < LATENCY_BUCKETS {
        b
    } else {
        LATENCY_BUCKETS - 1
    }
}

mk_raw::atomic_struct! {
    #[repr(C)]
    /// Log2 histogram of call latencies in ticks.
    #[derive(Debug)]
    pub struct LatencyHistogram {
        buckets: [AtomicU64; LATENCY_BUCKETS],
        max: AtomicU64,
        sum: AtomicU64,
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS],
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one latency.
    pub fn record(&self, ticks: u64) {
        if let Some(b) = self.buckets.get(latency_bucket(ticks)) {
            b.fetch_add(1, Relaxed);
        }
        self.max.fetch_max(ticks, Relaxed);
        self.sum.fetch_add(ticks, Relaxed);
    }

    /// Current bucket counts, largest latency, sum of latencies.
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS], u64, u64) {
        let mut out = [0; LATENCY_BUCKETS];
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            *o = b.load(Relaxed);
        }
        (out, self.max.load(Relaxed), self.sum.load(Relaxed))
    }
}

mk_raw::atomic_struct! {
    #[repr(C)]
    /// Counters of one direction of a peer pair, as seen by the instance that owns them. The
    /// dispatcher updates `received`, `rejected`, `calls_*` and `latency`; the mailbox / kernel
    /// updates the send-side and IPI fields through the `record_*` methods.
    #[derive(Debug, Default)]
    pub struct PeerTelemetry {
        /// Messages sent to the peer.
        pub sent: AtomicU64,
        /// Slots received from the peer and given to the dispatcher (rejected ones included).
        pub received: AtomicU64,
        /// Sends that found the peer's mailbox full.
        pub busy: AtomicU64,
        /// IPIs sent to the peer.
        pub ipis_sent: AtomicU64,
        /// IPIs not sent because the peer was already notified.
        pub ipis_suppressed: AtomicU64,
        /// IPIs from the peer that found no message.
        pub spurious_ipis: AtomicU64,
        /// Messages waiting in the mailbox at the last look (a gauge).
        pub queue_depth: AtomicU64,
        /// Highest `queue_depth` seen.
        pub queue_depth_max: AtomicU64,
        /// Calls to the peer answered in time.
        pub calls_completed: AtomicU64,
        /// Calls to the peer that timed out.
        pub calls_timed_out: AtomicU64,
        /// Rejected slots from the peer, by reason.
        pub rejected: RejectCounters,
        /// Latency of completed calls.
        pub latency: LatencyHistogram,
    }
}

impl PeerTelemetry {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            ipis_sent: AtomicU64::new(0),
            ipis_suppressed: AtomicU64::new(0),
            spurious_ipis: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            queue_depth_max: AtomicU64::new(0),
            calls_completed: AtomicU64::new(0),
            calls_timed_out: AtomicU64::new(0),
            rejected: RejectCounters::new(),
            latency: LatencyHistogram::new(),
        }
    }

    /// One message sent.
    pub fn record_sent(&self) {
        self.sent.fetch_add(1, Relaxed);
    }

    /// One send found the mailbox full.
    pub fn record_busy(&self) {
        self.busy.fetch_add(1, Relaxed);
    }

    /// One IPI sent.
    pub fn record_ipi_sent(&self) {
        self.ipis_sent.fetch_add(1, Relaxed);
    }

    /// One IPI skipped.
    pub fn record_ipi_suppressed(&self) {
        self.ipis_suppressed.fetch_add(1, Relaxed);
    }

    /// One IPI with nothing to read.
    pub fn record_spurious_ipi(&self) {
        self.spurious_ipis.fetch_add(1, Relaxed);
    }

    /// Sets the queue depth gauge.
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Relaxed);
        self.queue_depth_max.fetch_max(depth, Relaxed);
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> TelemetrySnapshot {
        let (latency, latency_max, latency_sum) = self.latency.snapshot();
        TelemetrySnapshot {
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            busy: self.busy.load(Relaxed),
            ipis_sent: self.ipis_sent.load(Relaxed),
            ipis_suppressed: self.ipis_suppressed.load(Relaxed),
            spurious_ipis: self.spurious_ipis.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            queue_depth_max: self.queue_depth_max.load(Relaxed),
            calls_completed: self.calls_completed.load(Relaxed),
            calls_timed_out: self.calls_timed_out.load(Relaxed),
            rejected: self.rejected.snapshot(),
            latency,
            latency_max,
            latency_sum,
        }
    }
}

/// A copy of a [`PeerTelemetry`] at one moment (each counter read separately, so counters
/// updated concurrently may be off by the updates in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetrySnapshot {
    /// See [`PeerTelemetry::sent`].
    pub sent: u64,
    /// See [`PeerTelemetry::received`].
    pub received: u64,
    /// See [`PeerTelemetry::busy`].
    pub busy: u64,
    /// See [`PeerTelemetry::ipis_sent`].
    pub ipis_sent: u64,
    /// See [`PeerTelemetry::ipis_suppressed`].
    pub ipis_suppressed: u64,
    /// See [`PeerTelemetry::spurious_ipis`].
    pub spurious_ipis: u64,
    /// See [`PeerTelemetry::queue_depth`].
    pub queue_depth: u64,
    /// See [`PeerTelemetry::queue_depth_max`].
    pub queue_depth_max: u64,
    /// See [`PeerTelemetry::calls_completed`].
    pub calls_completed: u64,
    /// See [`PeerTelemetry::calls_timed_out`].
    pub calls_timed_out: u64,
    /// Rejections by [`RejectReason::index`].
    pub rejected: [u64; RejectReason::COUNT],
    /// Latency buckets (see [`latency_bucket`]).
    pub latency: [u64; LATENCY_BUCKETS],
    /// Largest latency.
    pub latency_max: u64,
    /// Sum of latencies (mean = sum / calls_completed).
    pub latency_sum: u64,
}

impl TelemetrySnapshot {
    /// Rejections for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(reason.index()).copied().unwrap_or(0)
    }

    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}
