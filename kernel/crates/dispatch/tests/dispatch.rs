//! Host tests of the dispatcher.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mk_dispatch::*;
use mk_wire::*;

static ZERO: AtomicU64 = AtomicU64::new(0);
fn zero_clock() -> u64 {
    ZERO.load(Relaxed)
}

type D<'a> = Dispatcher<'a, 8, 4>;

/// Instance `i` (test shorthand).
fn iid(i: u16) -> InstanceId {
    InstanceId::new(i)
}

fn peers() -> Vec<PeerTelemetry> {
    (0..4).map(|_| PeerTelemetry::new()).collect()
}

fn ping_payload() -> Payload {
    Payload::Ping(PingPayload {
        nonce: 3,
        sent_at: 4,
    })
}

fn echo(m: &Message) -> Option<Reply> {
    Some(Reply::ok(m.payload))
}
const ECHO: &dyn Handler = &(echo as fn(&Message) -> Option<Reply>);

fn refuse(_: &Message) -> Option<Reply> {
    Some(Reply::error(Status::Refused))
}
const REFUSE: &dyn Handler = &(refuse as fn(&Message) -> Option<Reply>);

/// A handler with context: counts what it sees.
struct Counting {
    seen: AtomicU64,
}
impl Handler for Counting {
    fn handle(&self, _: &Message) -> Option<Reply> {
        self.seen.fetch_add(1, Relaxed);
        None
    }
}

fn slot_of(msg: &Message) -> Slot {
    let mut s = [0u8; SLOT_SIZE];
    encode(msg, &mut s).unwrap();
    s
}

fn ping_from(sender: InstanceId, id: u64) -> Slot {
    slot_of(
        &Message::request(sender, Kind::Ping, id, ping_payload()).with_flags(MsgFlags::NEEDS_REPLY),
    )
}

#[test]
fn register_and_unregister_errors() {
    let d: D = Dispatcher::new(iid(0), zero_clock, &[], 100, 10);
    let r = d.registry();
    assert!(r.is_empty());
    assert_eq!(r.register(HandlerKey::Type(MsgType::System), ECHO), Ok(()));
    assert_eq!(
        r.register(HandlerKey::Type(MsgType::System), REFUSE),
        Err(RegistryError::AlreadyRegistered)
    );
    // A kind key is a different key from its type's.
    assert_eq!(r.register(HandlerKey::Kind(Kind::Ping), REFUSE), Ok(()));
    assert_eq!(
        r.register(HandlerKey::Kind(Kind::Ping), ECHO),
        Err(RegistryError::AlreadyRegistered)
    );
    assert_eq!(r.len(), 2);
    assert_eq!(r.unregister(HandlerKey::Kind(Kind::Ping)), Ok(()));
    assert_eq!(
        r.unregister(HandlerKey::Kind(Kind::Ping)),
        Err(RegistryError::NotRegistered)
    );
    assert_eq!(
        r.unregister(HandlerKey::Type(MsgType::Io)),
        Err(RegistryError::NotRegistered)
    );
    assert!(r.is_registered(HandlerKey::Type(MsgType::System)));
    // Re-registering after unregistering works.
    assert_eq!(r.register(HandlerKey::Kind(Kind::Ping), ECHO), Ok(()));

    let small: Registry<2> = Registry::new();
    small.register(HandlerKey::Type(MsgType::Io), ECHO).unwrap();
    small
        .register(HandlerKey::Type(MsgType::User), ECHO)
        .unwrap();
    assert_eq!(
        small.register(HandlerKey::Type(MsgType::System), ECHO),
        Err(RegistryError::Full)
    );
    small.unregister(HandlerKey::Type(MsgType::Io)).unwrap();
    small
        .register(HandlerKey::Type(MsgType::System), ECHO)
        .unwrap();
}

#[test]
fn kind_handler_beats_type_handler() {
    let peers = peers();
    let d: D = Dispatcher::new(iid(0), zero_clock, &peers, 100, 10);
    d.registry()
        .register(HandlerKey::Type(MsgType::System), ECHO)
        .unwrap();
    d.registry()
        .register(HandlerKey::Kind(Kind::Ping), REFUSE)
        .unwrap();
    let out = d.dispatch(iid(1), &ping_from(iid(1), 5)).unwrap();
    let DispatchOutcome::Handled {
        reply: Some(reply),
        kind,
        msg_id,
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!((kind, msg_id), (Kind::Ping, 5));
    assert_eq!(reply.status, Status::Refused);
    assert_eq!(reply.sender, InstanceId::ZERO);
    assert_eq!(reply.msg_id, 5);
    assert!(reply.is_reply());
    // Heartbeat falls back to the type handler (echo).
    let hb = Message::request(
        iid(1),
        Kind::Heartbeat,
        9,
        Payload::Heartbeat(HeartbeatPayload {
            counter: 1,
            uptime_ticks: 2,
        }),
    )
    .with_flags(MsgFlags::NEEDS_REPLY);
    let DispatchOutcome::Handled { reply: Some(r), .. } =
        d.dispatch(iid(1), &slot_of(&hb)).unwrap()
    else {
        panic!()
    };
    assert_eq!((r.status, r.payload), (Status::Ok, hb.payload));
    // The reply encodes and decodes as the peer will see it.
    assert_eq!(decode(&slot_of(&r)), Ok(r));
    assert_eq!(d.handled(), 2);
}

#[test]
fn unregistered_type_is_rejected() {
    let peers = peers();
    let d: D = Dispatcher::new(iid(0), zero_clock, &peers, 100, 10);
    let s = ping_from(iid(2), 1);
    let err = d.dispatch(iid(2), &s).unwrap_err();
    assert_eq!(err, Reject::NoHandler(Kind::Ping));
    assert_eq!(d.rejects().get(RejectReason::NoHandler), 1);
    assert_eq!(peers[2].snapshot().rejected(RejectReason::NoHandler), 1);
    let reply = d.reply_for_reject(&s, &err).unwrap();
    assert_eq!(
        (reply.status, reply.msg_id, reply.payload),
        (Status::Unsupported, 1, Payload::Empty)
    );
    assert!(reply.validate().is_ok());
    // USER kinds get an (empty) opaque payload.
    let u = slot_of(
        &Message::request(
            iid(2),
            Kind::User(7),
            3,
            Payload::User(UserPayload::new(b"x").unwrap()),
        )
        .with_flags(MsgFlags::NEEDS_REPLY),
    );
    let err = d.dispatch(iid(2), &u).unwrap_err();
    let reply = d.reply_for_reject(&u, &err).unwrap();
    assert!(reply.validate().is_ok());
    // One-way messages get no answer; nor do other rejections.
    let oneway = slot_of(&Message::request(iid(2), Kind::Ping, 0, ping_payload()));
    let err = d.dispatch(iid(2), &oneway).unwrap_err();
    assert_eq!(d.reply_for_reject(&oneway, &err), None);
    let err = d.dispatch(iid(3), &s).unwrap_err();
    assert_eq!(d.reply_for_reject(&s, &err), None);
    // After registering, the same slot goes through.
    d.registry()
        .register(HandlerKey::Type(MsgType::System), ECHO)
        .unwrap();
    assert!(d.dispatch(iid(2), &s).is_ok());
}

#[test]
fn each_validation_failure_is_counted_and_the_next_message_still_dispatched() {
    static SEEN: Counting = Counting {
        seen: AtomicU64::new(0),
    };
    let peers = peers();
    let d: D = Dispatcher::new(iid(0), zero_clock, &peers, 100, 10);
    d.registry()
        .register(HandlerKey::Type(MsgType::System), &SEEN)
        .unwrap();
    let good = ping_from(iid(1), 10);
    let put16 =
        |s: &mut Slot, off: usize, v: u16| s[off..off + 2].copy_from_slice(&v.to_le_bytes());
    type Corruption = Box<dyn Fn(&mut Slot)>;
    let cases: Vec<(RejectReason, Corruption)> = vec![
        (RejectReason::BadVersion, Box::new(|s| s[4] = 9)),
        (RejectReason::BadFlags, Box::new(|s| s[5] = 0x80)),
        (
            RejectReason::UnknownType,
            Box::new(move |s| put16(s, 8, 0x7000)),
        ),
        (
            RejectReason::UnknownSubtype,
            Box::new(move |s| put16(s, 10, 0x30ff)),
        ),
        (
            RejectReason::PayloadTooLong,
            Box::new(move |s| put16(s, 12, 300)),
        ),
        (
            RejectReason::PayloadSizeMismatch,
            Box::new(move |s| put16(s, 12, 8)),
        ),
        (
            RejectReason::BadStatus,
            Box::new(move |s| {
                s[5] = 0x01;
                put16(s, 14, 99)
            }),
        ),
        (
            RejectReason::StatusInRequest,
            Box::new(move |s| put16(s, 14, 2)),
        ),
        (RejectReason::ZeroMsgId, Box::new(|s| s[16..24].fill(0))),
        (
            RejectReason::SenderMismatch,
            Box::new(move |s| put16(s, 6, 3)),
        ),
        (RejectReason::StaleReply, Box::new(|s| s[5] = 0x01)),
    ];
    let mut bad_payload = Message::request(
        iid(1),
        Kind::IrqMask,
        0,
        Payload::IoIrq(IoIrqPayload {
            irq: 1,
            vector: 2,
            device_id: 0,
            flags: IrqFlags::empty(),
        }),
    );
    bad_payload.sender = iid(1);
    let mut bp = slot_of(&bad_payload);
    bp[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&300u32.to_le_bytes());

    let mut expected_handled = 0;
    for (i, (reason, corrupt)) in cases.iter().enumerate() {
        let mut s = good;
        corrupt(&mut s);
        let err = d.dispatch(iid(1), &s).unwrap_err();
        assert_eq!(err.reason(), *reason, "case {i}: {err}");
        assert_eq!(d.rejects().get(*reason), 1, "{reason:?}");
        assert_eq!(peers[1].rejected.get(*reason), 1, "{reason:?}");
        // The next, valid message is dispatched normally.
        assert!(matches!(
            d.dispatch(iid(1), &good),
            Ok(DispatchOutcome::Handled { .. })
        ));
        expected_handled += 1;
    }
    let err = d.dispatch(iid(1), &bp).unwrap_err();
    assert_eq!(
        err,
        Reject::Malformed(DecodeError::BadPayload(PayloadFault::IrqVector))
    );
    assert_eq!(d.rejects().get(RejectReason::BadPayload), 1);

    assert_eq!(
        SEEN.seen.load(Relaxed),
        expected_handled,
        "no handler saw a bad message"
    );
    assert_eq!(d.rejects().total(), cases.len() as u64 + 1);
    let snap = peers[1].snapshot();
    assert_eq!(snap.rejected_total(), cases.len() as u64 + 1);
    assert_eq!(snap.received, 2 * cases.len() as u64 + 1);
    // The rejection with NoHandler is the only reason not exercised here.
    assert_eq!(d.rejects().get(RejectReason::NoHandler), 0);
}

#[test]
fn replies_follow_needs_reply_and_are_validated() {
    fn bad(_: &Message) -> Option<Reply> {
        // A CPU payload for a ping: not encodable.
        Some(Reply::ok(Payload::Cpu(CpuPayload {
            apic_id: 0,
            numa_node: 0,
            flags: CpuFlags::empty(),
            generation: 0,
            phase: HandoffPhase::None,
        })))
    }
    fn none(_: &Message) -> Option<Reply> {
        None
    }
    let d: D = Dispatcher::new(iid(5), zero_clock, &[], 100, 10);
    d.registry()
        .register(
            HandlerKey::Kind(Kind::Ping),
            &(bad as fn(&Message) -> Option<Reply>),
        )
        .unwrap();
    d.registry()
        .register(
            HandlerKey::Kind(Kind::Heartbeat),
            &(none as fn(&Message) -> Option<Reply>),
        )
        .unwrap();
    d.registry()
        .register(HandlerKey::Type(MsgType::User), ECHO)
        .unwrap();

    let DispatchOutcome::Handled { reply: Some(r), .. } =
        d.dispatch(iid(1), &ping_from(iid(1), 8)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (r.status, r.payload, r.sender),
        (Status::InternalError, Payload::Empty, iid(5))
    );
    let hb = Message::request(
        iid(1),
        Kind::Heartbeat,
        9,
        Payload::Heartbeat(HeartbeatPayload {
            counter: 1,
            uptime_ticks: 2,
        }),
    )
    .with_flags(MsgFlags::NEEDS_REPLY);
    assert!(matches!(
        d.dispatch(iid(1), &slot_of(&hb)),
        Ok(DispatchOutcome::Handled { reply: None, .. })
    ));
    // A one-way USER message: the handler's answer is dropped.
    let u = Message::request(
        iid(1),
        Kind::User(1),
        0,
        Payload::User(UserPayload::new(b"abc").unwrap()),
    );
    assert!(matches!(
        d.dispatch(iid(1), &slot_of(&u)),
        Ok(DispatchOutcome::Handled { reply: None, .. })
    ));
    // Closures with captured context work as handlers too.
    static TOTAL: AtomicU64 = AtomicU64::new(0);
    let r: Registry<1> = Registry::new();
    r.register(HandlerKey::Type(MsgType::Io), &|_: &Message| {
        TOTAL.fetch_add(1, Relaxed);
        None
    })
    .unwrap();
    assert!(r.lookup(Kind::IrqMask).is_some());
}

static CALL_NOW: AtomicU64 = AtomicU64::new(0);
fn call_clock() -> u64 {
    CALL_NOW.load(Relaxed)
}

#[test]
fn call_reply_timeout_and_stale() {
    let peers_a = peers();
    let a: D = Dispatcher::new(iid(0), call_clock, &peers_a, 100, 10);
    let b: D = Dispatcher::new(iid(1), call_clock, &[], 100, 10);
    b.registry()
        .register(HandlerKey::Type(MsgType::System), ECHO)
        .unwrap();
    CALL_NOW.store(1000, Relaxed);

    // A call answered in time.
    let (req, token) = a
        .prepare_call(iid(1), Kind::Ping, ping_payload(), 50)
        .unwrap();
    assert!(req.needs_reply() && req.msg_id != 0 && req.sender == iid(0) && req.timestamp == 1000);
    assert_eq!(a.poll_call(&token), CallState::Pending);
    let DispatchOutcome::Handled {
        reply: Some(reply), ..
    } = b.dispatch(iid(0), &slot_of(&req)).unwrap()
    else {
        panic!()
    };
    assert_eq!(reply.timestamp, 1000, "reply echoes the request timestamp");
    CALL_NOW.store(1020, Relaxed);
    let reply_slot = slot_of(&reply);
    // From the wrong mailbox: a sender mismatch, the call stays pending.
    assert_eq!(
        a.dispatch(iid(2), &reply_slot),
        Err(Reject::SenderMismatch {
            expected: iid(2),
            found: iid(1)
        })
    );
    let out = a.dispatch(iid(1), &reply_slot).unwrap();
    assert_eq!(out, DispatchOutcome::ReplyDelivered { token, latency: 20 });
    assert_eq!(a.expire_calls(), 0);
    assert_eq!(a.poll_call(&token), CallState::Ready(reply));
    assert_eq!(a.poll_call(&token), CallState::Invalid, "collected once");
    // A duplicate reply is stale.
    assert_eq!(
        a.dispatch(iid(1), &reply_slot),
        Err(Reject::StaleReply { msg_id: req.msg_id })
    );

    // A call that times out; its late reply is stale.
    let (req2, token2) = a
        .prepare_call(iid(1), Kind::Ping, ping_payload(), 50)
        .unwrap();
    assert!(req2.msg_id > req.msg_id);
    CALL_NOW.store(1069, Relaxed);
    assert_eq!(a.expire_calls(), 0);
    CALL_NOW.store(1070, Relaxed);
    assert_eq!(a.expire_calls(), 1);
    assert_eq!(a.poll_call(&token2), CallState::TimedOut);
    let DispatchOutcome::Handled {
        reply: Some(late), ..
    } = b.dispatch(iid(0), &slot_of(&req2)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        a.dispatch(iid(1), &slot_of(&late)),
        Err(Reject::StaleReply {
            msg_id: req2.msg_id
        })
    );

    // A reply from another peer than the one called is stale even with the right id.
    let (req3, token3) = a
        .prepare_call(iid(1), Kind::Ping, ping_payload(), 50)
        .unwrap();
    let mut forged = Message::reply_to(&req3, iid(2), Status::Ok, ping_payload());
    forged.sender = iid(2);
    assert_eq!(
        a.dispatch(iid(2), &slot_of(&forged)),
        Err(Reject::StaleReply {
            msg_id: req3.msg_id
        })
    );
    assert_eq!(a.poll_call(&token3), CallState::Pending);
    assert!(a.cancel_call(&token3));
    assert_eq!(a.poll_call(&token3), CallState::Invalid);
    assert!(!a.cancel_call(&token3));

    let snap = peers_a[1].snapshot();
    assert_eq!(snap.calls_completed, 1);
    assert_eq!(snap.calls_timed_out, 1);
    assert_eq!(snap.latency[latency_bucket(20)], 1);
    assert_eq!(snap.latency_max, 20);
    assert_eq!(snap.rejected(RejectReason::StaleReply), 2);
    assert_eq!(peers_a[2].snapshot().rejected(RejectReason::StaleReply), 1);
    assert_eq!(a.pending().stale(), 3);
    assert_eq!(a.pending().outstanding(), 0);
}

#[test]
fn pending_table_capacity_and_reuse() {
    let t: PendingCalls<2> = PendingCalls::new();
    assert_eq!(t.begin_call(iid(1), 0, 0, 10), Err(CallError::ZeroMsgId));
    let t1 = t.begin_call(iid(1), 1, 0, 10).unwrap();
    let _t2 = t.begin_call(iid(1), 2, 0, 10).unwrap();
    assert_eq!(t.begin_call(iid(1), 3, 0, 10), Err(CallError::TableFull));
    let mut expired = vec![];
    assert_eq!(t.expire(10, |tok| expired.push(tok.msg_id)), 2);
    expired.sort();
    assert_eq!(expired, [1, 2]);
    // Expired but uncollected calls keep their slot.
    assert_eq!(t.begin_call(iid(1), 3, 0, 10), Err(CallError::TableFull));
    assert_eq!(t.poll(&t1), CallState::TimedOut);
    let t3 = t.begin_call(iid(1), 3, 20, 30).unwrap();
    // The old token does not see the new call in the reused slot.
    assert_eq!(t.poll(&t1), CallState::Invalid);
    assert!(!t.cancel(&t1));
    let r = Message::reply_to(
        &Message::request(iid(0), Kind::Ping, 3, Payload::Empty),
        iid(1),
        Status::Busy,
        Payload::Empty,
    );
    let done = t.complete(iid(1), &r, 25).unwrap();
    assert_eq!((done.token, done.latency), (t3, 5));
    assert_eq!(t.complete(iid(1), &r, 26), Err(StaleReply { msg_id: 3 }));
    assert_eq!(t.poll(&t3), CallState::Ready(r));
    let invalid = Message::request(iid(0), Kind::Ping, 1, Payload::Empty);
    let d: D = Dispatcher::new(iid(0), zero_clock, &[], 1, 1);
    assert!(matches!(
        d.prepare_call(iid(1), Kind::Ping, Payload::Empty, 5),
        Err(CallError::Invalid(EncodeError::PayloadMismatch { .. }))
    ));
    assert!(invalid.validate().is_err());
}

#[test]
fn prepare_call_in_stamps_the_request_where_it_lies() {
    let d: D = Dispatcher::new(iid(0), zero_clock, &[], 1, 1);
    // Whatever the caller put in sender, id and status is replaced; its flags are kept.
    let mut req = Message::request(iid(5), Kind::Ping, 77, ping_payload())
        .with_flags(MsgFlags::HIGH_PRIORITY);
    req.status = Status::Busy;
    let token = d.prepare_call_in(iid(1), &mut req, 50).unwrap();
    assert_eq!(req.sender, iid(0));
    assert_ne!(req.msg_id, 77);
    assert_ne!(req.msg_id, 0);
    assert_eq!(req.status, Status::Ok);
    assert_eq!(req.flags, MsgFlags::HIGH_PRIORITY | MsgFlags::NEEDS_REPLY);
    assert_eq!(req.payload, ping_payload());
    assert!(req.validate().is_ok());
    assert_eq!(d.poll_call(&token), CallState::Pending);
    // The next call gets the next id, the same as `prepare_call` would give.
    let (second, _) = d
        .prepare_call(iid(1), Kind::Ping, ping_payload(), 50)
        .unwrap();
    assert_eq!(second.msg_id, req.msg_id + 1);
    // A request that does not validate records no call.
    let mut bad = Message::request(iid(0), Kind::Ping, 0, Payload::Empty);
    let before = d.pending().outstanding();
    assert!(matches!(
        d.prepare_call_in(iid(1), &mut bad, 5),
        Err(CallError::Invalid(EncodeError::PayloadMismatch { .. }))
    ));
    assert_eq!(d.pending().outstanding(), before);
}

#[test]
fn log_limiter_bursts_and_reports_suppressed() {
    let l = LogLimiter::new(100, 3);
    for _ in 0..3 {
        assert_eq!(l.check(10), LogDecision::Log { suppressed: 0 });
    }
    for _ in 0..5 {
        assert_eq!(l.check(99), LogDecision::Suppress);
    }
    assert_eq!(l.check(100), LogDecision::Log { suppressed: 5 });
    assert_eq!(l.check(150), LogDecision::Log { suppressed: 0 });
    assert_eq!(l.check(199), LogDecision::Log { suppressed: 0 });
    assert_eq!(l.check(199), LogDecision::Suppress);
    // Skipping several windows.
    assert_eq!(l.check(10_000), LogDecision::Log { suppressed: 1 });
    assert_eq!(l.total_suppressed(), 6);
    let never = LogLimiter::new(0, 0);
    assert_eq!(never.check(0), LogDecision::Suppress);
    assert_eq!(never.check(5), LogDecision::Suppress);
    assert_eq!(never.total_suppressed(), 2);
}

#[test]
fn latency_buckets_are_log2() {
    assert_eq!(latency_bucket(0), 0);
    assert_eq!(latency_bucket(1), 1);
    assert_eq!(latency_bucket(2), 2);
    assert_eq!(latency_bucket(3), 2);
    assert_eq!(latency_bucket(4), 3);
    assert_eq!(latency_bucket(1023), 10);
    assert_eq!(latency_bucket(1024), 11);
    assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    let h = LatencyHistogram::new();
    for t in [0, 1, 3, 3, 1 << 50] {
        h.record(t);
    }
    let (b, max, sum) = h.snapshot();
    assert_eq!((b[0], b[1], b[2], b[LATENCY_BUCKETS - 1]), (1, 1, 2, 1));
    assert_eq!(max, 1 << 50);
    assert_eq!(sum, 7 + (1 << 50));
}

#[test]
fn send_side_telemetry() {
    let p = PeerTelemetry::new();
    p.record_sent();
    p.record_sent();
    p.record_busy();
    p.record_ipi_sent();
    p.record_ipi_suppressed();
    p.record_spurious_ipi();
    p.set_queue_depth(7);
    p.set_queue_depth(2);
    let s = p.snapshot();
    assert_eq!(
        (
            s.sent,
            s.busy,
            s.ipis_sent,
            s.ipis_suppressed,
            s.spurious_ipis,
            s.queue_depth,
            s.queue_depth_max
        ),
        (2, 1, 1, 1, 1, 2, 7)
    );
}

#[test]
fn concurrent_dispatch_counters_add_up() {
    static SEEN: Counting = Counting {
        seen: AtomicU64::new(0),
    };
    const THREADS: u16 = 4;
    const PER: u64 = 2000;
    // Senders 1..=3, and mismatches dispatched as if from mailbox 2..=4.
    let peers: Vec<PeerTelemetry> = (0..5).map(|_| PeerTelemetry::new()).collect();
    let d: Dispatcher<8, 64> = Dispatcher::new(iid(0), zero_clock, &peers, 100, 10);
    d.registry()
        .register(HandlerKey::Type(MsgType::System), &SEEN)
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let d = &d;
            s.spawn(move || {
                let sender = t % 3 + 1;
                let good = ping_from(iid(sender), 1);
                let mut bad = good;
                bad[4] = 0;
                for i in 0..PER {
                    if i % 4 == 0 {
                        assert!(d.dispatch(iid(sender), &bad).is_err());
                    } else if i % 4 == 1 {
                        assert!(d.dispatch(iid(sender + 1), &good).is_err());
                    } else {
                        assert!(d.dispatch(iid(sender), &good).is_ok());
                    }
                    // Registry churn on an unrelated key, concurrently with lookups.
                    if i % 100 == 0 {
                        let key = HandlerKey::Kind(Kind::User(t));
                        d.registry().register(key, ECHO).unwrap();
                        d.registry().unregister(key).unwrap();
                    }
                }
            });
        }
    });
    let total = u64::from(THREADS) * PER;
    assert_eq!(SEEN.seen.load(Relaxed), total / 2);
    assert_eq!(d.handled(), total / 2);
    assert_eq!(d.rejects().get(RejectReason::BadVersion), total / 4);
    assert_eq!(d.rejects().get(RejectReason::SenderMismatch), total / 4);
    let received: u64 = peers.iter().map(|p| p.snapshot().received).sum();
    let rejected: u64 = peers.iter().map(|p| p.snapshot().rejected_total()).sum();
    assert_eq!(received, total);
    assert_eq!(rejected, total / 2);
}

static RACE_NOW: AtomicU64 = AtomicU64::new(0);
fn race_clock() -> u64 {
    RACE_NOW.load(Relaxed)
}

#[test]
fn concurrent_calls_replies_and_expiry_end_each_call_once() {
    const CALLERS: usize = 3;
    const CALLS: usize = 500;
    let peers = peers();
    let a: Dispatcher<1, 16> = Dispatcher::new(iid(0), race_clock, &peers, 100, 10);
    let ids = std::sync::Mutex::new(Vec::new());
    let (ready, timed_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // A ticking clock and an expiry thread racing the replies.
        let stop = &stop;
        let a = &a;
        s.spawn(move || {
            while !stop.load(Relaxed) {
                RACE_NOW.fetch_add(1, Relaxed);
                a.expire_calls();
                std::thread::yield_now();
            }
        });
        let mut callers = vec![];
        for _ in 0..CALLERS {
            let (ids, ready, timed_out) = (&ids, &ready, &timed_out);
            callers.push(s.spawn(move || {
                for _ in 0..CALLS {
                    let (req, token) = loop {
                        match a.prepare_call(iid(1), Kind::Ping, ping_payload(), 2) {
                            Ok(x) => break x,
                            Err(CallError::TableFull) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    };
                    ids.lock().unwrap().push(req.msg_id);
                    let reply = Message::reply_to(&req, iid(1), Status::Ok, req.payload);
                    let _ = a.dispatch(iid(1), &slot_of(&reply));
                    loop {
                        match a.poll_call(&token) {
                            CallState::Pending => std::thread::yield_now(),
                            CallState::Ready(m) => {
                                assert_eq!(m.msg_id, req.msg_id);
                                ready.fetch_add(1, Relaxed);
                                break;
                            }
                            CallState::TimedOut => {
                                timed_out.fetch_add(1, Relaxed);
                                break;
                            }
                            CallState::Invalid => panic!("lost call"),
                        }
                    }
                }
            }));
        }
        for c in callers {
            c.join().unwrap();
        }
        stop.store(true, Relaxed);
    });
    let total = (CALLERS * CALLS) as u64;
    let (ready, timed_out) = (ready.load(Relaxed), timed_out.load(Relaxed));
    assert_eq!(ready + timed_out, total);
    let snap = peers[1].snapshot();
    assert_eq!(snap.calls_completed, ready);
    assert_eq!(snap.calls_timed_out, timed_out);
    // Every reply either completed its call or was stale because the call had expired.
    assert_eq!(snap.rejected(RejectReason::StaleReply), total - ready);
    assert_eq!(a.pending().outstanding(), 0);
    let mut ids = ids.into_inner().unwrap();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, total, "message ids are unique");
}

/// A USER handler that refuses with `Reply::error` (no payload) is answered with its own
/// status and an empty USER payload, not `InternalError`.
#[test]
fn a_user_refusal_keeps_its_status() {
    let d: D = Dispatcher::new(iid(0), zero_clock, &[], 100, 10);
    d.registry()
        .register(HandlerKey::Kind(Kind::User(5)), REFUSE)
        .unwrap();
    let req = Message::request(
        iid(2),
        Kind::User(5),
        4,
        Payload::User(UserPayload::new(b"op").unwrap()),
    )
    .with_flags(MsgFlags::NEEDS_REPLY);
    let DispatchOutcome::Handled { reply: Some(r), .. } =
        d.dispatch(iid(2), &slot_of(&req)).unwrap()
    else {
        panic!("a reply")
    };
    assert_eq!(r.status, Status::Refused);
    assert!(r.validate().is_ok());
    assert_eq!(decode(&slot_of(&r)), Ok(r));
}

/// The registry's hash index finds every handler registered, whatever the order of
/// registrations and removals, and nothing once removed: a full table of USER kinds (whose
/// codes differ in a few low bits, the hash's hard case) plus type handlers.
#[test]
fn a_full_registry_finds_each_handler_through_its_index() {
    static HANDLERS: [fn(&Message) -> Option<Reply>; 2] = [echo, refuse];
    let reg: Registry<32> = Registry::new();
    let mut keys: Vec<(HandlerKey, usize)> = Vec::new();
    for (i, t) in [MsgType::Io, MsgType::System].into_iter().enumerate() {
        reg.register(HandlerKey::Type(t), &HANDLERS[i % 2]).unwrap();
        keys.push((HandlerKey::Type(t), i % 2));
    }
    for n in 0..30u16 {
        let key = HandlerKey::Kind(Kind::User(0x100 + n * 3));
        reg.register(key, &HANDLERS[usize::from(n % 2)]).unwrap();
        keys.push((key, usize::from(n % 2)));
    }
    assert_eq!(
        reg.register(HandlerKey::Kind(Kind::User(1)), &HANDLERS[0]),
        Err(RegistryError::Full)
    );
    let which = |h: &'static dyn Handler| {
        let ping = Message::request(iid(1), Kind::Ping, 1, ping_payload());
        // echo answers Ok, refuse Refused.
        usize::from(h.handle(&ping).map(|r| r.status) == Some(Status::Refused))
    };
    for &(key, h) in &keys {
        let kind = match key {
            HandlerKey::Kind(k) => k,
            HandlerKey::Type(MsgType::Io) => Kind::IrqMask,
            HandlerKey::Type(_) => Kind::Heartbeat,
        };
        assert_eq!(reg.lookup(kind).map(which), Some(h), "{key:?}");
    }
    // Remove every other USER kind: the rest are still found, the removed ones are not.
    for (n, &(key, _)) in keys.iter().enumerate().skip(2) {
        if n % 2 == 0 {
            reg.unregister(key).unwrap();
        }
    }
    for (n, &(key, h)) in keys.iter().enumerate().skip(2) {
        let HandlerKey::Kind(kind) = key else {
            unreachable!()
        };
        let want = (n % 2 == 1).then_some(h);
        assert_eq!(reg.lookup(kind).map(which), want, "{key:?}");
    }
    assert!(reg.lookup(Kind::User(0x7777)).is_none());
}

/// The direct table (typed kinds and USER subtypes below 256) gives what the hashed keys
/// give: a kind's own handler, else its type's, else none; and follows registrations and
/// removals, on either side of the table's edge (USER 255 and 256).
#[test]
fn the_direct_table_finds_kind_then_type_handlers() {
    static HANDLERS: [fn(&Message) -> Option<Reply>; 2] = [echo, refuse];
    let reg: Registry<8> = Registry::new();
    let which = |h: &'static dyn Handler| {
        let ping = Message::request(iid(1), Kind::Ping, 1, ping_payload());
        usize::from(h.handle(&ping).map(|r| r.status) == Some(Status::Refused))
    };
    let find = |k: Kind| reg.lookup(k).map(which);
    for k in [Kind::Ping, Kind::User(6), Kind::User(255), Kind::User(256)] {
        assert_eq!(find(k), None, "{k:?}");
    }
    reg.register(HandlerKey::Type(MsgType::User), &HANDLERS[0])
        .unwrap();
    reg.register(HandlerKey::Kind(Kind::User(6)), &HANDLERS[1])
        .unwrap();
    reg.register(HandlerKey::Kind(Kind::User(256)), &HANDLERS[1])
        .unwrap();
    reg.register(HandlerKey::Kind(Kind::Ping), &HANDLERS[1])
        .unwrap();
    assert_eq!(find(Kind::User(6)), Some(1));
    assert_eq!(find(Kind::User(7)), Some(0));
    assert_eq!(find(Kind::User(255)), Some(0));
    assert_eq!(find(Kind::User(256)), Some(1));
    assert_eq!(find(Kind::User(257)), Some(0));
    assert_eq!(find(Kind::Ping), Some(1));
    assert_eq!(find(Kind::Heartbeat), None);
    reg.unregister(HandlerKey::Kind(Kind::User(6))).unwrap();
    assert_eq!(find(Kind::User(6)), Some(0));
    reg.unregister(HandlerKey::Type(MsgType::User)).unwrap();
    assert_eq!(find(Kind::User(6)), None);
    assert_eq!(find(Kind::User(256)), Some(1));
    reg.unregister(HandlerKey::Kind(Kind::Ping)).unwrap();
    assert_eq!(find(Kind::Ping), None);
}

/// `dispatch_into` writes the reply into the caller's buffer (the one `dispatch` returns),
/// and leaves the buffer as it was for a request that gets none and for a rejected message.
#[test]
fn dispatch_into_writes_the_reply_where_asked_and_nothing_else() {
    let d: D = Dispatcher::new(iid(5), zero_clock, &[], 100, 10);
    d.registry()
        .register(HandlerKey::Kind(Kind::Ping), ECHO)
        .unwrap();
    let untouched = Message::request(iid(3), Kind::Heartbeat, 77, Payload::Empty);
    let mut other = untouched;
    let mut reply = untouched;

    let slot = ping_from(iid(1), 8);
    let DispatchOutcome::Handled {
        reply: Some(returned),
        ..
    } = d.dispatch(iid(1), &slot).unwrap()
    else {
        panic!("no reply from dispatch");
    };
    let done = d.dispatch_into(
        iid(1),
        &mut Received::from_slot(&slot),
        &mut other,
        &mut reply,
    );
    assert_eq!(
        done,
        Ok(Dispatched::Handled {
            kind: Kind::Ping,
            msg_id: 8,
            replied: true
        })
    );
    assert_eq!(reply, returned);
    assert_eq!(reply.payload, ping_payload());
    assert_eq!((reply.sender, reply.msg_id), (iid(5), 8));
    assert!(reply.is_reply());

    // One-way: handled, no reply written.
    let oneway = slot_of(&Message::request(iid(1), Kind::Ping, 9, ping_payload()));
    let mut reply = untouched;
    let done = d.dispatch_into(
        iid(1),
        &mut Received::from_slot(&oneway),
        &mut other,
        &mut reply,
    );
    assert!(matches!(
        done,
        Ok(Dispatched::Handled { replied: false, .. })
    ));
    assert_eq!(reply, untouched);

    // From the wrong peer: rejected, no reply written.
    let done = d.dispatch_into(
        iid(2),
        &mut Received::from_slot(&slot),
        &mut other,
        &mut reply,
    );
    assert!(matches!(done, Err(Reject::SenderMismatch { .. })));
    assert_eq!(reply, untouched);
}
