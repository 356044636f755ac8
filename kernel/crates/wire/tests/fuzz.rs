//! Property tests: decoding never panics, and valid messages survive mutation checks.

mod common;

use common::*;
use mk_wire::*;
use proptest::prelude::*;

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        proptest::sample::select(Kind::TYPED.to_vec()),
        any::<u16>().prop_map(Kind::User),
    ]
}

/// A valid message of any kind, request or reply.
fn message_strategy() -> impl Strategy<Value = Message> {
    (
        kind_strategy(),
        any::<bool>(),
        proptest::sample::select(Status::ALL.to_vec()),
        any::<u16>(),
        1u64..,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        any::<bool>(),
    )
        .prop_map(|(kind, reply, status, sender, id, ts, user, high)| {
            let mut req =
                Message::request(InstanceId::new(sender), kind, id, request_payload(kind))
                    .with_flags(MsgFlags::NEEDS_REPLY)
                    .with_timestamp(ts);
            if high {
                req = req.with_flags(MsgFlags::HIGH_PRIORITY);
            }
            let user = Payload::User(UserPayload::new(&user).unwrap());
            if let Kind::User(_) = kind {
                req.payload = user;
            }
            if !reply {
                return req;
            }
            let payload = match (kind, status) {
                (Kind::User(_), _) => user,
                (_, Status::Ok) => reply_payload(kind),
                _ => Payload::Empty,
            };
            Message::reply_to(
                &req,
                InstanceId::new(sender.wrapping_add(1)),
                status,
                payload,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_slots_never_panic(bytes in proptest::collection::vec(any::<u8>(), SLOT_SIZE)) {
        let slot: Slot = bytes.try_into().unwrap();
        let _ = RawHeader::read(&slot);
        if let Ok(msg) = decode(&slot) {
            // Whatever decodes re-encodes to the same message.
            let mut again = [0u8; SLOT_SIZE];
            encode(&msg, &mut again).unwrap();
            prop_assert_eq!(decode(&again), Ok(msg));
        }
    }

    #[test]
    fn random_headers_over_valid_payloads_never_panic(
        msg in message_strategy(),
        header in proptest::collection::vec(any::<u8>(), HEADER_LEN - SEQ_LEN),
    ) {
        let mut slot = encoded(&msg);
        slot[SEQ_LEN..HEADER_LEN].copy_from_slice(&header);
        let _ = decode(&slot);
    }

    #[test]
    fn valid_messages_round_trip(msg in message_strategy(), seq in any::<[u8; 4]>()) {
        let mut slot = [0u8; SLOT_SIZE];
        slot[..4].copy_from_slice(&seq);
        let used = encode(&msg, &mut slot).unwrap();
        prop_assert_eq!(used, msg.encoded_len());
        prop_assert_eq!(&slot[..4], &seq[..]);
        prop_assert_eq!(decode(&slot), Ok(msg));
    }

    /// The two parts a sender copies into a slot make the same message as `encode`, whatever
    /// the slot held before behind the payload.
    #[test]
    fn encoded_parts_decode_like_encode(msg in message_strategy(), stale in any::<u8>()) {
        let mut header = [0u8; HEADER_LEN];
        let mut scratch = [0u8; MAX_PAYLOAD];
        let payload = encode_parts(&msg, &mut header, &mut scratch).unwrap();
        let mut slot = [stale; SLOT_SIZE];
        slot[SEQ_LEN..HEADER_LEN].copy_from_slice(&header[SEQ_LEN..]);
        slot[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        prop_assert_eq!(HEADER_LEN + payload.len(), msg.encoded_len());
        prop_assert_eq!(decode(&slot), Ok(msg));
    }

    /// `encode_parts` (a USER message takes a shorter path there) refuses exactly what
    /// `encode` refuses, with the same error, and writes the same header for what it takes:
    /// messages with any flag bits, status, id and either payload, valid or not.
    #[test]
    fn encode_parts_refuses_like_encode(
        msg in message_strategy(),
        flags in any::<u8>(),
        status in proptest::sample::select(Status::ALL.to_vec()),
        zero_id in any::<bool>(),
        user_payload in any::<bool>(),
    ) {
        let mut msg = msg;
        msg.flags = MsgFlags::from_bits_retain(flags);
        msg.status = status;
        if zero_id {
            msg.msg_id = 0;
        }
        if user_payload {
            msg.payload = Payload::User(UserPayload::new(&[7; 9]).unwrap());
        }
        let mut slot = [0u8; SLOT_SIZE];
        let whole = encode(&msg, &mut slot);
        let mut header = [0u8; HEADER_LEN];
        let mut scratch = [0u8; MAX_PAYLOAD];
        let parts = encode_parts(&msg, &mut header, &mut scratch);
        match (whole, parts) {
            (Ok(len), Ok(payload)) => {
                prop_assert_eq!(&header[SEQ_LEN..], &slot[SEQ_LEN..HEADER_LEN]);
                prop_assert_eq!(payload, &slot[HEADER_LEN..len]);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "encode {:?}, encode_parts {:?}", a, b.map(|p| p.len())),
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in message_strategy(),
        edits in proptest::collection::vec((0..SLOT_SIZE, any::<u8>()), 1..8),
    ) {
        let mut slot = encoded(&msg);
        for (i, b) in edits {
            slot[i] = b;
        }
        if let Ok(m) = decode(&slot) {
            let mut again = [0u8; SLOT_SIZE];
            prop_assert!(encode(&m, &mut again).is_ok());
        }
    }

    /// A receiver decodes every message into the one `Message` it keeps: whatever that held
    /// before (a longer USER payload, another kind, a failed decode), the result is the message
    /// a fresh decode gives, and a refusal is the same refusal.
    #[test]
    fn decoding_into_a_reused_message_equals_a_fresh_decode(
        msgs in proptest::collection::vec(message_strategy(), 1..6),
        flip in proptest::option::of(0..SLOT_SIZE * 8),
    ) {
        let mut kept = Message::request(InstanceId::ZERO, Kind::Ping, 0, Payload::Empty);
        let (mut rx, mut other) = (Received::new(), kept);
        for msg in msgs {
            let mut slot = encoded(&msg);
            if let Some(bit) = flip {
                slot[bit / 8] ^= 1 << (bit % 8);
            }
            match (decode(&slot), decode_into(&slot, &mut kept)) {
                (Ok(fresh), Ok(())) => prop_assert_eq!(fresh, kept),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "decode {:?}, decode_into {:?}", a, b),
            }
            // The same through a `Received` kept across the messages, copied in two parts
            // with the slot's bytes past the payload not zero (a sender leaves there what it
            // sent before; `decode` ignores them, and so must the payload kept in place).
            let mut stale = slot;
            let used = HEADER_LEN + usize::from(u16::from_le_bytes([slot[12], slot[13]]));
            for b in stale.iter_mut().skip(used) {
                *b = 0xa5;
            }
            let (head, payload) = rx.parts_mut().expect("a Received keeps its USER payload");
            head.copy_from_slice(&stale[..HEADER_LEN]);
            payload.copy_from_slice(&stale[HEADER_LEN..]);
            match (decode(&slot), rx.decode(&mut other)) {
                (Ok(fresh), Ok(m)) => prop_assert_eq!(&fresh, m),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "decode {:?}, Received {:?}", a, b),
            }
        }
    }

    #[test]
    fn single_bit_flips_never_panic(msg in message_strategy(), bit in 0..SLOT_SIZE * 8) {
        let mut slot = encoded(&msg);
        slot[bit / 8] ^= 1 << (bit % 8);
        let _ = decode(&slot);
    }
}
