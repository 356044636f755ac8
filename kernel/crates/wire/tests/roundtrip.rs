//! Round trips for every kind and each malformed case.

mod common;

use common::*;
use mk_wire::*;

fn all_kinds() -> Vec<Kind> {
    let mut v = Kind::TYPED.to_vec();
    v.push(Kind::User(0));
    v.push(Kind::User(0xffff));
    v
}

#[test]
fn every_request_round_trips() {
    for kind in all_kinds() {
        let msg = request(kind);
        let mut slot = [0xAAu8; SLOT_SIZE];
        let used = encode(&msg, &mut slot).unwrap();
        assert_eq!(used, HEADER_LEN + msg.payload.encoded_len(), "{kind:?}");
        assert_eq!(decode(&slot), Ok(msg), "{kind:?}");
        // Without NEEDS_REPLY too, and a one-way message may have id 0.
        let oneway = Message::request(InstanceId::new(9), kind, 0, request_payload(kind));
        assert_eq!(decode(&encoded(&oneway)), Ok(oneway), "{kind:?}");
    }
}

#[test]
fn every_reply_round_trips() {
    for kind in all_kinds() {
        let req = request(kind);
        let ok = Message::reply_to(&req, InstanceId::new(2), Status::Ok, reply_payload(kind));
        let back = decode(&encoded(&ok)).unwrap();
        assert_eq!(back, ok, "{kind:?}");
        assert!(back.is_reply());
        assert_eq!(back.msg_id, req.msg_id);
        assert_eq!(back.timestamp, req.timestamp);
        for status in Status::ALL.into_iter().skip(1) {
            let payload = if let Kind::User(_) = kind {
                reply_payload(kind)
            } else {
                Payload::Empty
            };
            let err = Message::reply_to(&req, InstanceId::new(2), status, payload);
            assert_eq!(decode(&encoded(&err)), Ok(err), "{kind:?} {status:?}");
        }
    }
}

/// `make_reply_to` writes in place the header `reply_to` builds, whatever the message held
/// before (another kind, sender, flags, status, id), keeping its payload: for every kind and
/// status, with a high-priority request, and with a large-data payload.
#[test]
fn make_reply_to_writes_what_reply_to_builds() {
    let large = Payload::LargeData(LargeDataPayload {
        pool_frame: 0x4000,
        page_count: 1,
        generation: 7,
        byte_len: 100,
    });
    for kind in all_kinds() {
        let req = request(kind).with_flags(MsgFlags::HIGH_PRIORITY);
        for status in Status::ALL {
            for payload in [reply_payload(kind), Payload::Empty, large] {
                let built = Message::reply_to(&req, InstanceId::new(2), status, payload);
                let mut stale = Message::request(InstanceId::new(7), Kind::Heartbeat, 99, payload)
                    .with_flags(MsgFlags::NEEDS_REPLY);
                stale.status = Status::Busy;
                stale.timestamp = 12345;
                stale.make_reply_to(&req, InstanceId::new(2), status);
                assert_eq!(stale, built, "{kind:?} {status:?} {payload:?}");
            }
        }
    }
}

#[test]
fn large_data_round_trips_for_any_kind() {
    let large = Payload::LargeData(LargeDataPayload {
        pool_frame: 0x4000,
        page_count: 3,
        generation: 0x0FFF_FFFF,
        byte_len: 3 * 4096 - 1,
    });
    for kind in all_kinds() {
        let msg =
            Message::request(InstanceId::new(1), kind, 3, large).with_flags(MsgFlags::LARGE_DATA);
        assert_eq!(decode(&encoded(&msg)), Ok(msg));
        let reply = Message::reply_to(&msg, InstanceId::new(2), Status::Ok, large);
        assert!(reply.flags.contains(MsgFlags::LARGE_DATA));
        assert_eq!(decode(&encoded(&reply)), Ok(reply));
    }
}

#[test]
fn user_payload_sizes() {
    for len in [0usize, 1, 100, MAX_PAYLOAD] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let msg = Message::request(
            InstanceId::new(1),
            Kind::User(0x42),
            0,
            Payload::User(UserPayload::new(&data).unwrap()),
        );
        let back = decode(&encoded(&msg)).unwrap();
        let Payload::User(u) = back.payload else {
            panic!()
        };
        assert_eq!(u.as_bytes(), &data[..]);
    }
    assert!(UserPayload::new(&[0; MAX_PAYLOAD + 1]).is_none());
}

#[test]
fn query_reply_sizes() {
    for n in [0usize, 1, QUERY_REPLY_MAX_APIC_IDS] {
        let mut q = QueryReply::new();
        let ids: Vec<u32> = (0..n as u32).collect();
        q.set_apic_ids(&ids).unwrap();
        assert_eq!(q.encoded_len(), QUERY_REPLY_FIXED + 4 * n);
        let req = request(Kind::Query);
        let msg = Message::reply_to(&req, InstanceId::new(2), Status::Ok, Payload::QueryReply(q));
        let back = decode(&encoded(&msg)).unwrap();
        let Payload::QueryReply(b) = back.payload else {
            panic!()
        };
        assert_eq!(b.apic_ids(), &ids[..]);
    }
    assert_eq!(
        QUERY_REPLY_FIXED + 4 * QUERY_REPLY_MAX_APIC_IDS,
        MAX_PAYLOAD
    );
    let mut q = QueryReply::new();
    assert!(q.set_apic_ids(&[0; QUERY_REPLY_MAX_APIC_IDS + 1]).is_err());
    assert!(query_reply().has_irq(255) && query_reply().has_irq(4) && !query_reply().has_irq(5));
}

#[test]
fn layout_is_as_documented() {
    let msg = Message::request(
        InstanceId::new(0x0102),
        Kind::MemAdd,
        0x1122_3344_5566_7788,
        Payload::Mem(mem()),
    )
    .with_flags(MsgFlags::NEEDS_REPLY | MsgFlags::HIGH_PRIORITY)
    .with_timestamp(0x99);
    let mut slot = [0u8; SLOT_SIZE];
    slot[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    encode(&msg, &mut slot).unwrap();
    assert_eq!(
        &slot[SEQ_OFFSET..SEQ_OFFSET + SEQ_LEN],
        &[0xde, 0xad, 0xbe, 0xef],
        "seq untouched"
    );
    assert_eq!(slot[4], PROTOCOL_VERSION);
    assert_eq!(slot[5], 0x06);
    assert_eq!(&slot[6..8], &[0x02, 0x01]);
    assert_eq!(&slot[8..10], &0x2000u16.to_le_bytes());
    assert_eq!(&slot[10..12], &0x2003u16.to_le_bytes());
    assert_eq!(&slot[12..14], &(MemPayload::SIZE as u16).to_le_bytes());
    assert_eq!(&slot[14..16], &[0, 0]);
    assert_eq!(&slot[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&slot[24..32], &0x99u64.to_le_bytes());
    assert_eq!(&slot[32..40], &0x10_0000u64.to_le_bytes());
    assert_eq!(&slot[40..48], &512u64.to_le_bytes());
    assert_eq!(&slot[52..56], &4u32.to_le_bytes(), "mem_type Dma32");
    assert_eq!(&slot[56..64], &7u64.to_le_bytes(), "generation");
    assert_eq!(&slot[64..68], &2u32.to_le_bytes(), "phase commit");
    assert!(slot[72..].iter().all(|b| *b == 0));
    let raw = RawHeader::read(&slot);
    assert_eq!(raw.seq, 0xefbe_adde);
    assert_eq!(raw.sender, 0x0102);
    // The seq bytes do not affect decoding.
    slot[..4].copy_from_slice(&[0; 4]);
    assert_eq!(decode(&slot), Ok(msg));
}

#[test]
fn encode_zeroes_stale_tail() {
    let mut slot = [0xFFu8; SLOT_SIZE];
    let msg = Message::request(
        InstanceId::new(1),
        Kind::Heartbeat,
        0,
        request_payload(Kind::Heartbeat),
    );
    let used = encode(&msg, &mut slot).unwrap();
    assert!(slot[used..].iter().all(|b| *b == 0));
    assert_eq!(&slot[..4], &[0xFF; 4]);
}

/// Encodes a valid ping, then lets `f` corrupt the raw slot.
fn corrupt(f: impl FnOnce(&mut Slot)) -> Result<Message, DecodeError> {
    let mut slot = encoded(&request(Kind::Ping));
    f(&mut slot);
    decode(&slot)
}

fn put16(slot: &mut Slot, off: usize, v: u16) {
    slot[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn malformed_headers_rejected() {
    use DecodeError::*;
    assert_eq!(corrupt(|s| s[4] = 0), Err(BadVersion { found: 0 }));
    assert_eq!(corrupt(|s| s[4] = 2), Err(BadVersion { found: 2 }));
    assert_eq!(corrupt(|s| s[5] = 0x10), Err(BadFlags { found: 0x10 }));
    assert_eq!(corrupt(|s| s[5] = 0x03), Err(BadFlags { found: 0x03 }));
    assert_eq!(corrupt(|s| put16(s, 8, 0x5000)), Err(UnknownType(0x5000)));
    assert_eq!(corrupt(|s| put16(s, 8, 0)), Err(UnknownType(0)));
    assert_eq!(
        corrupt(|s| put16(s, 10, 0x3004)),
        Err(UnknownSubtype {
            ty: 0x3000,
            sub: 0x3004
        })
    );
    // A valid subtype of another type.
    assert_eq!(
        corrupt(|s| put16(s, 10, 0x1001)),
        Err(UnknownSubtype {
            ty: 0x3000,
            sub: 0x1001
        })
    );
    assert_eq!(corrupt(|s| put16(s, 12, 225)), Err(PayloadTooLong(225)));
    assert_eq!(
        corrupt(|s| put16(s, 12, 0xffff)),
        Err(PayloadTooLong(0xffff))
    );
    assert_eq!(
        corrupt(|s| put16(s, 12, 15)),
        Err(PayloadSizeMismatch {
            expected: 16,
            found: 15
        })
    );
    assert_eq!(
        corrupt(|s| put16(s, 12, 224)),
        Err(PayloadSizeMismatch {
            expected: 16,
            found: 224
        })
    );
    assert_eq!(
        corrupt(|s| {
            s[5] = 0x01;
            put16(s, 14, 10)
        }),
        Err(BadStatus(10))
    );
    assert_eq!(corrupt(|s| put16(s, 14, 1)), Err(StatusInRequest(1)));
    assert_eq!(corrupt(|s| s[16..24].fill(0)), Err(ZeroMsgId));
    // An error reply must have an empty payload.
    assert_eq!(
        corrupt(|s| {
            s[5] = 0x01;
            put16(s, 14, 1)
        }),
        Err(PayloadSizeMismatch {
            expected: 0,
            found: 16
        })
    );
    // LARGE_DATA on an error reply.
    assert_eq!(
        corrupt(|s| {
            s[5] = 0x09;
            put16(s, 14, 1)
        }),
        Err(BadFlags { found: 0x09 })
    );
    // LARGE_DATA with a ping-sized payload.
    assert_eq!(
        corrupt(|s| s[5] = 0x0a),
        Err(PayloadSizeMismatch {
            expected: 24,
            found: 16
        })
    );
}

/// A USER header is checked on a shorter path (any subtype, no table): the same refusals as
/// any other kind's, LARGE_DATA included.
#[test]
fn malformed_user_headers_rejected() {
    use DecodeError::*;
    let user = |f: &dyn Fn(&mut Slot)| {
        let msg = Message::request(
            InstanceId::new(1),
            Kind::User(0xbeef),
            5,
            Payload::User(UserPayload::new(&[1; 9]).unwrap()),
        );
        let mut slot = encoded(&msg);
        f(&mut slot);
        decode(&slot)
    };
    assert_eq!(user(&|_| {}).map(|m| m.kind), Ok(Kind::User(0xbeef)));
    assert_eq!(user(&|s| s[4] = 9), Err(BadVersion { found: 9 }));
    assert_eq!(user(&|s| s[5] = 0x03), Err(BadFlags { found: 0x03 }));
    assert_eq!(user(&|s| put16(s, 12, 225)), Err(PayloadTooLong(225)));
    assert_eq!(user(&|s| put16(s, 14, 10)), Err(BadStatus(10)));
    assert_eq!(user(&|s| put16(s, 14, 1)), Err(StatusInRequest(1)));
    assert_eq!(
        user(&|s| {
            s[5] = 0x02;
            s[16..24].fill(0)
        }),
        Err(ZeroMsgId)
    );
    // LARGE_DATA on an error reply.
    assert_eq!(
        user(&|s| {
            s[5] = 0x09;
            put16(s, 14, 1)
        }),
        Err(BadFlags { found: 0x09 })
    );
    // LARGE_DATA with a 9-byte payload.
    assert_eq!(
        user(&|s| s[5] = 0x08),
        Err(PayloadSizeMismatch {
            expected: 24,
            found: 9
        })
    );
}

fn corrupt_payload(kind: Kind, off: usize, bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut slot = encoded(&request(kind));
    slot[HEADER_LEN + off..HEADER_LEN + off + bytes.len()].copy_from_slice(bytes);
    decode(&slot)
}

#[test]
fn malformed_payloads_rejected() {
    use DecodeError::BadPayload;
    use PayloadFault::*;
    let le = |v: u32| v.to_le_bytes();
    assert_eq!(
        corrupt_payload(Kind::IrqMask, 12, &le(0x10)),
        Err(BadPayload(IrqFlags))
    );
    assert_eq!(
        corrupt_payload(Kind::IrqMask, 12, &le(0x0c)),
        Err(BadPayload(IrqTrigger))
    );
    assert_eq!(
        corrupt_payload(Kind::IrqMask, 4, &le(256)),
        Err(BadPayload(IrqVector))
    );
    assert_eq!(
        corrupt_payload(Kind::CpuAdd, 8, &le(0x80)),
        Err(BadPayload(CpuFlags))
    );
    assert_eq!(
        corrupt_payload(Kind::CpuAdd, 16, &le(4)),
        Err(BadPayload(HandoffPhase))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 20, &le(3)),
        Err(BadPayload(MemType))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 32, &le(9)),
        Err(BadPayload(HandoffPhase))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 36, &le(1)),
        Err(BadPayload(ReservedNonZero))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 8, &[0; 8]),
        Err(BadPayload(MemRange))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 0, &u64::MAX.to_le_bytes()),
        Err(BadPayload(MemRange))
    );
    assert_eq!(
        corrupt_payload(Kind::MemAdd, 0, &(MAX_FRAME - 511).to_le_bytes()),
        Err(BadPayload(MemRange))
    );
    assert_eq!(
        corrupt_payload(Kind::Shutdown, 0, &le(0)),
        Err(BadPayload(ShutdownReason))
    );
    assert_eq!(
        corrupt_payload(Kind::Shutdown, 4, &le(8)),
        Err(BadPayload(ShutdownFlags))
    );
    assert_eq!(
        corrupt_payload(Kind::Query, 0, &le(0x100)),
        Err(BadPayload(QueryFlags))
    );
    assert_eq!(
        corrupt_payload(Kind::Query, 4, &le(1)),
        Err(BadPayload(ReservedNonZero))
    );
}

#[test]
fn malformed_query_reply_and_large_data_rejected() {
    use DecodeError::*;
    let req = request(Kind::Query);
    let ok = Message::reply_to(
        &req,
        InstanceId::new(2),
        Status::Ok,
        Payload::QueryReply(query_reply()),
    );
    let base = encoded(&ok);
    let len = ok.payload.encoded_len() as u16;
    // Length does not match apic_count.
    let mut s = base;
    put16(&mut s, 12, len + 4);
    assert_eq!(
        decode(&s),
        Err(PayloadSizeMismatch {
            expected: len,
            found: len + 4
        })
    );
    let mut s = base;
    put16(&mut s, 12, 10);
    assert_eq!(
        decode(&s),
        Err(PayloadSizeMismatch {
            expected: QUERY_REPLY_FIXED as u16,
            found: 10
        })
    );
    // apic_count over capacity / over cpu_count.
    let mut s = base;
    put16(&mut s, HEADER_LEN + 80, 36);
    assert_eq!(decode(&s), Err(BadPayload(PayloadFault::QueryApicCount)));
    let mut s = base;
    s[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(decode(&s), Err(BadPayload(PayloadFault::QueryApicCount)));
    let mut s = base;
    put16(&mut s, HEADER_LEN + 82, 1);
    assert_eq!(decode(&s), Err(BadPayload(PayloadFault::ReservedNonZero)));

    let large = Message::request(
        InstanceId::new(1),
        Kind::User(1),
        0,
        Payload::LargeData(LargeDataPayload {
            pool_frame: 1,
            page_count: 1,
            generation: 7,
            byte_len: 4096,
        }),
    )
    .with_flags(MsgFlags::LARGE_DATA);
    let base = encoded(&large);
    let mut s = base;
    s[HEADER_LEN + 16..HEADER_LEN + 24].copy_from_slice(&4097u64.to_le_bytes());
    assert_eq!(decode(&s), Err(BadPayload(PayloadFault::LargeDataRange)));
    let mut s = base;
    s[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(decode(&s), Err(BadPayload(PayloadFault::LargeDataRange)));
    // Bytes 12..16 carry the pool generation, any value.
    let mut s = base;
    s[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    match decode(&s) {
        Ok(m) => assert!(matches!(
            m.payload,
            Payload::LargeData(LargeDataPayload {
                generation: 0xdead_beef,
                ..
            })
        )),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn encode_refuses_inconsistent_messages() {
    let mut slot = [0u8; SLOT_SIZE];
    let wrong = Message::request(InstanceId::new(1), Kind::CpuAdd, 1, Payload::Mem(mem()));
    assert_eq!(
        encode(&wrong, &mut slot),
        Err(EncodeError::PayloadMismatch {
            expected: PayloadKind::Cpu,
            found: PayloadKind::Mem
        })
    );
    let mut status = request(Kind::Ping);
    status.status = Status::Busy;
    assert_eq!(
        encode(&status, &mut slot),
        Err(EncodeError::StatusInRequest(Status::Busy))
    );
    let both = request(Kind::Ping).with_flags(MsgFlags::REPLY);
    assert_eq!(
        encode(&both, &mut slot),
        Err(EncodeError::BadFlags { found: 0x03 })
    );
    let unknown = request(Kind::Ping).with_flags(MsgFlags::from_bits_retain(0x80));
    assert_eq!(
        encode(&unknown, &mut slot),
        Err(EncodeError::BadFlags { found: 0x82 })
    );
    let zero = Message::request(
        InstanceId::new(1),
        Kind::Ping,
        0,
        request_payload(Kind::Ping),
    )
    .with_flags(MsgFlags::NEEDS_REPLY);
    assert_eq!(encode(&zero, &mut slot), Err(EncodeError::ZeroMsgId));
    let mut bad = irq();
    bad.flags = IrqFlags::EDGE_TRIGGERED | IrqFlags::LEVEL_TRIGGERED;
    let m = Message::request(InstanceId::new(1), Kind::IrqForward, 0, Payload::IoIrq(bad));
    assert_eq!(
        encode(&m, &mut slot),
        Err(EncodeError::BadPayload(PayloadFault::IrqTrigger))
    );
    let err_with_payload = Message::reply_to(
        &request(Kind::Ping),
        InstanceId::new(2),
        Status::Busy,
        request_payload(Kind::Ping),
    );
    assert_eq!(
        encode(&err_with_payload, &mut slot),
        Err(EncodeError::PayloadMismatch {
            expected: PayloadKind::Empty,
            found: PayloadKind::Ping
        })
    );
    // Nothing was written by the failed attempts.
    assert!(slot.iter().all(|b| *b == 0));
}

#[test]
fn codes_are_consistent() {
    for kind in Kind::TYPED {
        let back = Kind::from_codes(kind.msg_type().code(), kind.subtype_code()).unwrap();
        assert_eq!(back, kind);
        assert_eq!(kind.subtype_code() & 0xf000, kind.msg_type().code());
    }
    // `codes` (what the encoder writes) is the type's code and the subtype's, for every kind.
    for kind in all_kinds() {
        assert_eq!(kind.codes(), (kind.msg_type().code(), kind.subtype_code()));
        assert_eq!(Kind::from_codes(kind.codes().0, kind.codes().1), Ok(kind));
    }
    for t in MsgType::ALL {
        assert_eq!(MsgType::from_code(t.code()), Some(t));
    }
    for s in Status::ALL {
        assert_eq!(Status::from_code(s.code()), Some(s));
    }
    assert_eq!(Status::from_code(Status::ALL.len() as u16), None);
}

#[test]
fn user_payload_words() {
    let words = [0, 1, u64::MAX, 0x0102_0304_0506_0708];
    let p = UserPayload::from_words(&words).unwrap();
    assert_eq!(p.len(), 32);
    assert_eq!(p.as_bytes()[24..], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(p.words().collect::<Vec<_>>(), words);
    assert!(UserPayload::from_words(&[7; MAX_PAYLOAD / 8]).is_some());
    assert!(UserPayload::from_words(&[7; MAX_PAYLOAD / 8 + 1]).is_none());
    // A trailing partial word is not read.
    assert_eq!(UserPayload::new(&[1; 12]).unwrap().words().count(), 1);
}
