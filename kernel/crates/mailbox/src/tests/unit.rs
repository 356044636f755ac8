use core::sync::atomic::Ordering;

use super::{Region, check_msg, id, make_msg};
use crate::channel::{Cursor, seq_back, seq_next, seq_of};
use crate::{
    CHANNEL_SIZE, ChannelState, DoorbellMode, Error, MSG_SIZE, MailboxMatrix, RateLimiter,
    ReceiverEnd, SLOTS, SenderEnd, VERSION, region_size,
};

fn seq_in(m: &[u8; MSG_SIZE]) -> u32 {
    u32::from_le_bytes(m[0..4].try_into().unwrap())
}

#[test]
fn sizes() {
    assert_eq!(CHANNEL_SIZE, 256 + SLOTS * 256);
    // Header line, one summary line per receiver, the channels.
    assert_eq!(region_size(2), 64 + 2 * 64 + 2 * CHANNEL_SIZE);
    assert_eq!(region_size(16), 64 + 16 * 64 + 240 * CHANNEL_SIZE);
}

#[test]
fn ends_are_send() {
    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}
    is_send::<SenderEnd<'static>>();
    is_send::<ReceiverEnd<'static>>();
    is_sync::<MailboxMatrix<'static>>();
}

#[test]
fn seq_helpers() {
    assert_eq!(seq_of(0), 1);
    assert_eq!(seq_of(u32::MAX as u64 - 1), u32::MAX);
    assert_eq!(seq_of(u32::MAX as u64), 1);
    assert_eq!(seq_next(u32::MAX), 1);
    assert_eq!(seq_next(7), 8);
    assert_eq!(seq_back(1, 1), u32::MAX);
    assert_eq!(seq_back(5, 16), u32::MAX - 11);
    assert_eq!(seq_back(100, 16), 84);
    for c in [0u64, 5, u32::MAX as u64 - 3, u32::MAX as u64 * 3 + 2] {
        assert_eq!(seq_next(seq_of(c)), seq_of(c + 1));
        assert_eq!(seq_back(seq_of(c + 16), 16), seq_of(c));
    }
}

/// A receiver's cursor keeps the sequence number of the lap before as it advances, across the
/// wrap of the sequence numbers (which skip 0).
#[test]
fn cursor_keeps_the_lap_before() {
    for start in [0u64, 3, u32::MAX as u64 - 40, u32::MAX as u64 * 2 - 1] {
        let mut at = Cursor::at(start);
        for _ in 0..100 {
            assert_eq!(at.expected, seq_of(at.consumed));
            assert_eq!(at.lapped, seq_back(at.expected, crate::SLOTS as u32));
            assert_ne!(at.lapped, 0);
            at.advance();
        }
    }
}

#[test]
fn empty_full_and_refill() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let mut buf = [0u8; MSG_SIZE];
    assert_eq!(rx.try_recv(&mut buf), Ok(false));
    assert_eq!(rx.drain(|_| panic!("nothing to drain")), Ok(0));
    assert!(!rx.has_pending().unwrap());

    for i in 0..SLOTS as u64 {
        let _ = tx.try_send(&make_msg(0, 1, i)).unwrap();
    }
    assert_eq!(tx.try_send(&make_msg(0, 1, 99)), Err(Error::Full));
    assert_eq!(tx.try_send(&make_msg(0, 1, 99)), Err(Error::Full));
    assert_eq!(tx.free_slots(), Ok(0));
    assert!(rx.has_pending().unwrap());

    // One out, one in: nothing overwritten.
    assert_eq!(rx.try_recv(&mut buf), Ok(true));
    assert_eq!(check_msg(0, 1, &buf), 0);
    assert_eq!(seq_in(&buf), 1);
    assert_eq!(tx.free_slots(), Ok(1));
    let _ = tx.try_send(&make_msg(0, 1, SLOTS as u64)).unwrap();
    assert_eq!(tx.try_send(&make_msg(0, 1, 99)), Err(Error::Full));

    let mut next = 1;
    let got = rx
        .drain(|msg| {
            assert_eq!(check_msg(0, 1, msg), next);
            next += 1;
        })
        .unwrap();
    assert_eq!(got, SLOTS);
    assert_eq!(rx.drain(|_| ()), Ok(0));

    let s = m.stats(id(0), id(1)).unwrap();
    assert_eq!(
        (s.sent, s.received, s.acked, s.full),
        (SLOTS as u64 + 1, SLOTS as u64 + 1, SLOTS as u64 + 1, 3)
    );
    assert_eq!(s.state, ChannelState::Active);
    // The other direction is untouched.
    assert_eq!(m.stats(id(1), id(0)).unwrap().sent, 0);
}

#[test]
fn ring_wraps_many_laps_in_order() {
    let mut r = Region::new(3);
    let m = r.init(3);
    let mut tx = m.sender_end(id(2), id(1)).unwrap();
    let mut rx = m.receiver_end(id(2), id(1)).unwrap();
    assert_eq!((rx.from(), rx.to()), (id(2), id(1)));
    let (mut sent, mut recvd) = (0u64, 0u64);
    for round in 0..200u64 {
        let burst = 1 + round % (SLOTS as u64 + 3);
        for _ in 0..burst {
            match tx.try_send(&make_msg(2, 1, sent)) {
                Ok(_) => sent += 1,
                Err(Error::Full) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        let limit = 1 + (round as usize * 7) % SLOTS;
        rx.drain_max(limit, |msg| {
            assert_eq!(check_msg(2, 1, msg), recvd);
            assert_eq!(seq_in(msg), seq_of(recvd));
            recvd += 1;
        })
        .unwrap();
    }
    rx.drain_max(usize::MAX, |msg| {
        assert_eq!(check_msg(2, 1, msg), recvd);
        recvd += 1;
    })
    .unwrap();
    assert_eq!(sent, recvd);
    assert!(sent > 10 * SLOTS as u64);
}

#[test]
fn drain_into_copies_in_order_and_stops_at_the_room_given() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut bufs = [[0u8; MSG_SIZE]; SLOTS + 4];
    for round in 0..100usize {
        while tx.try_send(&make_msg(0, 1, sent)).is_ok() {
            sent += 1;
        }
        // Room for 0..=SLOTS+3 messages: never more than the room, nor than a ring.
        let room = round % (SLOTS + 4);
        let n = rx.drain_into(&mut bufs[..room]).unwrap();
        assert_eq!(n, room.min(SLOTS));
        for msg in &bufs[..n] {
            assert_eq!(check_msg(0, 1, msg), recvd);
            assert_eq!(seq_in(msg), seq_of(recvd));
            recvd += 1;
        }
    }
    assert_eq!(rx.drain_into(&mut bufs).unwrap(), (sent - recvd) as usize);
    assert_eq!(m.stats(id(0), id(1)).unwrap().received, sent);
}

#[test]
fn drain_into_parts_puts_each_messages_head_and_tail_where_asked_in_order() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let (mut sent, mut recvd) = (0u64, 0u64);
    // Each element keeps its parts apart, the tail first: nothing relies on them adjoining.
    let mut out = [([0u8; MSG_SIZE - crate::HEAD], 0u8, [0u8; crate::HEAD]); SLOTS + 4];
    for round in 0..60usize {
        while tx.try_send(&make_msg(0, 1, sent)).is_ok() {
            sent += 1;
        }
        let room = round % (SLOTS + 4);
        let n = rx
            .drain_into_parts(&mut out[..room], |(tail, _, head)| Some((head, tail)))
            .unwrap();
        assert_eq!(n, room.min(SLOTS));
        for (tail, _, head) in &out[..n] {
            let mut msg = [0u8; MSG_SIZE];
            msg[..crate::HEAD].copy_from_slice(head);
            msg[crate::HEAD..].copy_from_slice(tail);
            assert_eq!(check_msg(0, 1, &msg), recvd);
            assert_eq!(seq_in(&msg), seq_of(recvd));
            recvd += 1;
        }
    }
    assert_eq!(m.stats(id(0), id(1)).unwrap().received, recvd);
}

#[test]
fn a_message_sent_in_parts_arrives_as_head_then_tail() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let head: [u8; crate::HEAD] = core::array::from_fn(|i| 0xa0 ^ i as u8);
    let mut out = [0u8; MSG_SIZE];
    // Every tail length, whole words or not, up to a full slot; a longer one is refused.
    for len in 0..=MSG_SIZE - crate::HEAD {
        let tail: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let _ = tx.try_send_parts(&head, &tail).unwrap();
        assert!(rx.try_recv(&mut out).unwrap());
        assert_eq!(out[4..crate::HEAD], head[4..], "head, tail of {len}");
        assert_eq!(
            out[crate::HEAD..crate::HEAD + len],
            tail[..],
            "tail of {len}"
        );
    }
    let long = [0u8; MSG_SIZE - crate::HEAD + 1];
    assert_eq!(
        tx.try_send_parts(&head, &long),
        Err(Error::TooLong { len: MSG_SIZE + 1 })
    );
    assert!(
        !rx.try_recv(&mut out).unwrap(),
        "a refused message was sent"
    );
}

fn run_across(start: u64, count: u64) -> Vec<u32> {
    let mut r = Region::new(2);
    let m = r.init_at(2, start);
    let mut tx = m.sender_end(id(1), id(0)).unwrap();
    let mut rx = m.receiver_end(id(1), id(0)).unwrap();
    let mut seqs = Vec::new();
    let mut n = 0u64;
    while n < count {
        for _ in 0..5 {
            let _ = tx.try_send(&make_msg(1, 0, n)).unwrap();
            n += 1;
        }
        rx.drain(|msg| {
            check_msg(1, 0, msg);
            seqs.push(seq_in(msg));
        })
        .unwrap();
    }
    assert_eq!(tx.sent(), start.wrapping_add(count));
    assert_eq!(rx.received(), start.wrapping_add(count));
    seqs
}

#[test]
fn seq_wraps_past_u32_max_skipping_zero() {
    let seqs = run_across(u32::MAX as u64 - 20, 100);
    assert_eq!(seqs.len(), 100);
    assert_eq!(seqs[0], u32::MAX - 19);
    let i = seqs.iter().position(|&s| s == u32::MAX).unwrap();
    assert_eq!(seqs[i + 1], 1, "sequence numbers skip 0");
    assert!(!seqs.contains(&0));
    for w in seqs.windows(2) {
        assert_eq!(w[1], seq_next(w[0]));
    }
}

#[test]
fn running_count_wraps_past_u64_max() {
    let seqs = run_across(u64::MAX - 30, 100);
    assert_eq!(seqs.len(), 100);
    for w in seqs.windows(2) {
        assert_eq!(w[1], seq_next(w[0]));
    }
}

#[test]
fn corrupt_ack_ahead_of_sent_is_detected() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    for i in 0..SLOTS as u64 {
        let _ = tx.try_send(&make_msg(0, 1, i)).unwrap();
    }
    // The peer acknowledges messages never sent.
    m.chan(id(0), id(1))
        .unwrap()
        .rx
        .ack
        .store(SLOTS as u64 + 5, Ordering::Release);
    assert_eq!(tx.try_send(&make_msg(0, 1, 0)), Err(Error::Corrupt));
    // Sticky, and visible to anyone.
    assert_eq!(tx.try_send(&make_msg(0, 1, 0)), Err(Error::Corrupt));
    assert_eq!(tx.free_slots(), Err(Error::Corrupt));
    assert!(m.stats(id(0), id(1)).unwrap().tx_fault);
}

#[test]
fn corrupt_ack_going_backwards_is_detected() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    for i in 0..SLOTS as u64 {
        let _ = tx.try_send(&make_msg(0, 1, i)).unwrap();
    }
    assert_eq!(rx.drain_max(8, |_| ()), Ok(8));
    assert_eq!(tx.free_slots(), Ok(8));
    m.chan(id(0), id(1))
        .unwrap()
        .rx
        .ack
        .store(2, Ordering::Release);
    assert_eq!(tx.free_slots(), Err(Error::Corrupt));
    // A value far outside [acked, sent] too.
    let mut r2 = Region::new(2);
    let m2 = r2.init(2);
    let mut tx2 = m2.sender_end(id(0), id(1)).unwrap();
    m2.chan(id(0), id(1))
        .unwrap()
        .rx
        .ack
        .store(u64::MAX / 2, Ordering::Release);
    assert_eq!(tx2.free_slots(), Err(Error::Corrupt));
}

#[test]
fn corrupt_slot_seq_is_detected() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let _ = tx.try_send(&make_msg(0, 1, 0)).unwrap();
    assert_eq!(rx.drain(|_| ()), Ok(1));
    // The peer writes a sequence number that is neither the next, the last lap's nor 0.
    m.chan(id(0), id(1)).unwrap().slots[1]
        .seq
        .store(12345, Ordering::Release);
    assert_eq!(
        rx.drain(|_| panic!("delivered garbage")),
        Err(Error::Corrupt)
    );
    assert_eq!(rx.has_pending(), Err(Error::Corrupt));
    assert!(m.stats(id(0), id(1)).unwrap().rx_fault);
}

#[test]
fn faulted_ends_learn_of_a_reset() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let chan = m.chan(id(0), id(1)).unwrap();
    chan.slots[0].seq.store(777, Ordering::Release);
    chan.rx.ack.store(u64::MAX / 2, Ordering::Release);
    assert_eq!(rx.has_pending(), Err(Error::Corrupt));
    assert_eq!(tx.free_slots(), Err(Error::Corrupt));
    // Instance 0 resets the channel: both faulted ends are told so (not `Corrupt` forever),
    // drop themselves and claim the new incarnation, which works.
    m.reset_channel(id(0), id(1)).unwrap();
    assert_eq!(rx.has_pending(), Err(Error::Reset));
    assert_eq!(tx.free_slots(), Err(Error::Reset));
    drop((tx, rx));
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let _ = tx.try_send(&make_msg(0, 1, 9)).unwrap();
    assert_eq!(rx.drain(|_| ()), Ok(1));
}

#[test]
fn version_and_magic_checked() {
    let mut r = Region::new(3);
    {
        let m = r.init(3);
        let c = m.chan(id(1), id(2)).unwrap();
        c.header.version.store(VERSION + 1, Ordering::Release);
        assert_eq!(
            m.receiver_end(id(1), id(2)).err(),
            Some(Error::VersionMismatch {
                found: VERSION + 1,
                expected: VERSION
            })
        );
        assert_eq!(
            m.sender_end(id(1), id(2)).err(),
            Some(Error::VersionMismatch {
                found: VERSION + 1,
                expected: VERSION
            })
        );
        // Other channels are fine, and the failed claim was released.
        assert!(m.sender_end(id(2), id(1)).is_ok());
        c.header.version.store(VERSION, Ordering::Release);
        assert!(m.sender_end(id(1), id(2)).is_ok());
        c.header.magic.store(0xdead_beef, Ordering::Release);
        assert_eq!(m.sender_end(id(1), id(2)).err(), Some(Error::BadMagic));
        // A header placed at the wrong pair is rejected.
        let c2 = m.chan(id(0), id(2)).unwrap();
        c2.header.from.store(1, Ordering::Release);
        assert_eq!(m.sender_end(id(0), id(2)).err(), Some(Error::Corrupt));
    }
    assert!(r.attach().is_ok());
    // Region header version.
    r.poke(4, &(VERSION + 7).to_ne_bytes());
    assert_eq!(
        r.attach().err(),
        Some(Error::VersionMismatch {
            found: VERSION + 7,
            expected: VERSION
        })
    );
}

#[test]
fn attach_checks() {
    let mut r = Region::new(2);
    assert_eq!(r.attach().err(), Some(Error::NotInitialised));
    let len = r.len();
    let raw = r.raw();
    let short = MailboxMatrix::init(raw.sub(0, len - 64).unwrap(), 2);
    assert_eq!(
        short.err(),
        Some(Error::RegionTooSmall {
            need: len,
            have: len - 64
        })
    );
    let misaligned = MailboxMatrix::init(raw.sub(8, len - 64).unwrap(), 2);
    assert_eq!(misaligned.err(), Some(Error::Misaligned));
    let bad_n = MailboxMatrix::init(raw, 1);
    assert_eq!(bad_n.err(), Some(Error::BadInstanceCount(1)));

    r.init(2);
    let m = r.attach().unwrap();
    assert_eq!(m.instances(), 2);
    assert_eq!(m.size(), region_size(2));
    assert_eq!(
        m.sender_end(id(0), id(0)).err(),
        Some(Error::BadPair {
            from: id(0),
            to: id(0)
        })
    );
    assert_eq!(
        m.sender_end(id(0), id(2)).err(),
        Some(Error::BadPair {
            from: id(0),
            to: id(2)
        })
    );
    // A zeroed channel reads as not initialised.
    let c = m.chan(id(0), id(1)).unwrap();
    c.header.state.store(0, Ordering::Release);
    c.header.magic.store(0, Ordering::Release);
    assert_eq!(
        m.receiver_end(id(0), id(1)).err(),
        Some(Error::NotInitialised)
    );
}

#[test]
fn one_end_each_per_view() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let tx = m.sender_end(id(0), id(1)).unwrap();
    assert_eq!(
        m.sender_end(id(0), id(1)).err(),
        Some(Error::AlreadyClaimed)
    );
    let rx = m.receiver_end(id(0), id(1)).unwrap();
    assert_eq!(
        m.receiver_end(id(0), id(1)).err(),
        Some(Error::AlreadyClaimed)
    );
    drop(tx);
    drop(rx);
    assert!(m.sender_end(id(0), id(1)).is_ok());
    assert!(m.receiver_end(id(0), id(1)).is_ok());
}

#[test]
fn two_views_see_the_same_channels() {
    // Two instances mapping the region at different addresses: simulate by copying the
    // formatted bytes into another buffer and attaching there (offset-only layout).
    let mut r = Region::new(2);
    {
        let m = r.init(2);
        let mut tx = m.sender_end(id(0), id(1)).unwrap();
        for i in 0..3 {
            let _ = tx.try_send(&make_msg(0, 1, i)).unwrap();
        }
    }
    let mut copy = r.copy();
    let m = copy.attach().unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let mut n = 0;
    rx.drain(|msg| {
        assert_eq!(check_msg(0, 1, msg), n);
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 3);
}

#[test]
fn dead_and_reset_drop_stale_messages() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(1), id(0)).unwrap();
    let mut rx = m.receiver_end(id(1), id(0)).unwrap();
    for i in 0..5 {
        let _ = tx.try_send(&make_msg(1, 0, i)).unwrap();
    }
    assert_eq!(rx.drain_max(2, |_| ()), Ok(2));

    m.mark_instance_dead(id(1)).unwrap();
    assert_eq!(m.state(id(1), id(0)), Ok(ChannelState::Dead));
    assert_eq!(m.state(id(0), id(1)), Ok(ChannelState::Dead));
    assert_eq!(tx.try_send(&make_msg(1, 0, 9)), Err(Error::Dead));
    assert_eq!(rx.drain(|_| ()), Err(Error::Dead));
    assert_eq!(m.sender_end(id(0), id(1)).err(), Some(Error::Dead));

    // Both sides have stopped (the test is the only user); instance 1 "respawns".
    m.reset_instance(id(1)).unwrap();
    assert_eq!(m.state(id(1), id(0)), Ok(ChannelState::Active));
    let s = m.stats(id(1), id(0)).unwrap();
    assert_eq!((s.generation, s.sent, s.acked, s.received), (1, 0, 0, 0));
    // Old ends are refused.
    assert_eq!(tx.try_send(&make_msg(1, 0, 9)), Err(Error::Reset));
    assert_eq!(rx.drain(|_| ()), Err(Error::Reset));
    drop((tx, rx));

    let mut tx = m.sender_end(id(1), id(0)).unwrap();
    let mut rx = m.receiver_end(id(1), id(0)).unwrap();
    // The three undelivered messages of the old incarnation are gone.
    assert_eq!(rx.drain(|_| panic!("stale message delivered")), Ok(0));
    let _ = tx.try_send(&make_msg(1, 0, 100)).unwrap();
    let mut got = Vec::new();
    rx.drain(|msg| got.push((check_msg(1, 0, msg), seq_in(msg))))
        .unwrap();
    assert_eq!(got, vec![(100, 1)]);
}

#[test]
fn doorbell_suppression() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    assert_eq!(tx.doorbell_mode(), DoorbellMode::Suppress);

    // Receiver awake: no IPI.
    assert!(!tx.try_send(&make_msg(0, 1, 0)).unwrap().need_doorbell);
    // Arming with a message pending refuses to sleep and leaves the flag clear.
    assert_eq!(rx.arm(), Ok(false));
    assert!(!rx.is_armed());
    assert_eq!(rx.drain(|_| ()), Ok(1));
    // Nothing pending: may sleep, flag set; the next send must ring.
    assert_eq!(rx.arm(), Ok(true));
    assert!(rx.is_armed());
    assert!(tx.try_send(&make_msg(0, 1, 1)).unwrap().need_doorbell);
    assert!(tx.try_send(&make_msg(0, 1, 2)).unwrap().need_doorbell);
    // Woken: disarm, drain; further sends are silent.
    rx.disarm();
    assert!(!rx.is_armed());
    assert_eq!(rx.drain(|_| ()), Ok(2));
    assert!(!tx.try_send(&make_msg(0, 1, 3)).unwrap().need_doorbell);
    // A doorbell with nothing new is counted by the caller as spurious.
    assert_eq!(rx.drain(|_| ()), Ok(1));
    assert_eq!(rx.drain(|_| ()), Ok(0));
    rx.record_spurious();

    // Suppression off: always ring.
    tx.set_doorbell_mode(DoorbellMode::Always);
    for i in 0..3 {
        assert!(tx.try_send(&make_msg(0, 1, 4 + i)).unwrap().need_doorbell);
    }
    let s = m.stats(id(0), id(1)).unwrap();
    assert_eq!(
        (
            s.doorbells_rung,
            s.doorbells_suppressed,
            s.spurious,
            s.sleeps
        ),
        (5, 2, 1, 2)
    );
}

#[test]
fn timed_send_gives_busy_and_keeps_messages() {
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    for i in 0..SLOTS as u64 {
        let _ = tx.send_spin(&make_msg(0, 1, i), 10).unwrap();
    }
    assert_eq!(tx.send_spin(&make_msg(0, 1, 99), 100), Err(Error::Busy));
    let mut t = 0u64;
    let clock = || {
        t += 3;
        t
    };
    assert_eq!(
        tx.send_timeout(&make_msg(0, 1, 99), clock, 50),
        Err(Error::Busy)
    );
    assert_eq!(m.stats(id(0), id(1)).unwrap().busy, 2);
    assert_eq!(m.stats(id(0), id(1)).unwrap().full, 0);
    assert_eq!(
        rx.drain_max(1, |m| assert_eq!(check_msg(0, 1, m), 0)),
        Ok(1)
    );
    let _ = tx.send_spin(&make_msg(0, 1, SLOTS as u64), 0).unwrap();
    let mut next = 1;
    rx.drain(|m| {
        assert_eq!(check_msg(0, 1, m), next);
        next += 1;
    })
    .unwrap();
    assert_eq!(next, SLOTS as u64 + 1);
}

#[test]
fn rate_limiter() {
    let mut rl = RateLimiter::new(3, 10, 1000);
    assert!(rl.allow(1000));
    assert!(rl.allow(1000));
    assert!(rl.allow(1001));
    assert!(!rl.allow(1005));
    assert_eq!(rl.denied(), 1);
    // One token per 10 ticks, fractional progress kept.
    assert!(rl.allow(1010));
    assert!(!rl.allow(1015));
    assert!(rl.allow(1020));
    // Clock going backwards credits nothing, and does not panic.
    assert!(!rl.allow(500));
    // Long idle refills to the burst only.
    assert!(rl.allow(1_000_000));
    assert_eq!(rl.tokens(), 2);
    assert!(rl.allow(1_000_000));
    assert!(rl.allow(1_000_000));
    assert!(!rl.allow(1_000_000));
    assert!(rl.allow(u64::MAX));
    // Unlimited.
    let mut free = RateLimiter::new(0, 0, 0);
    assert!((0..100).all(|_| free.allow(0)));
    // Steady flood at 1 per tick against 1 per 10 ticks: about a tenth gets through.
    let mut rl = RateLimiter::new(5, 10, 0);
    let allowed = (0..10_000u64).filter(|&t| rl.allow(t)).count();
    assert!((1000..=1006).contains(&allowed), "{allowed}");
}

#[test]
fn needs_repair_finds_faults_and_broken_headers_and_a_reset_repairs_them() {
    let mut r = Region::new(3);
    let m = r.init(3);
    let pairs = [(id(0), id(1)), (id(1), id(2)), (id(2), id(0))];
    for &(a, b) in &pairs {
        assert_eq!(m.needs_repair(a, b), Ok(()));
    }
    // A bogus acknowledgement seen by the sender; a hit on the header's identity; counters
    // that disagree, found at attach (which sets the fault flag for the watch to see).
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    m.chan(id(0), id(1))
        .unwrap()
        .rx
        .ack
        .store(u64::MAX / 3, Ordering::Release);
    assert_eq!(tx.free_slots(), Err(Error::Corrupt));
    m.chan(id(1), id(2))
        .unwrap()
        .header
        .magic
        .store(0xdead, Ordering::Relaxed);
    m.chan(id(2), id(0))
        .unwrap()
        .tx
        .sent
        .store(1000, Ordering::Relaxed);
    assert_eq!(m.receiver_end(id(2), id(0)).err(), Some(Error::Corrupt));
    for &(a, b) in &pairs {
        assert!(m.needs_repair(a, b).is_err(), "{a:?} -> {b:?}");
    }
    for &(a, b) in &pairs {
        m.reset_channel(a, b).unwrap();
        assert_eq!(m.needs_repair(a, b), Ok(()));
    }
    drop(tx);
    let mut tx = m.sender_end(id(2), id(0)).unwrap();
    let mut rx = m.receiver_end(id(2), id(0)).unwrap();
    let _ = tx.try_send(&make_msg(2, 0, 1)).unwrap();
    assert_eq!(rx.drain(|_| ()), Ok(1));
    // A dead channel waits for its instance's respawn: not the watch's to repair.
    m.mark_dead(id(1), id(2)).unwrap();
    assert_eq!(m.needs_repair(id(1), id(2)), Ok(()));
}

#[test]
fn drain_into_hands_out_what_it_took_before_a_corrupt_slot() {
    type Parts = ([u8; crate::HEAD], [u8; MSG_SIZE - crate::HEAD]);
    fn parts(e: &mut Parts) -> Option<(&mut [u8; crate::HEAD], &mut [u8; MSG_SIZE - crate::HEAD])> {
        Some((&mut e.0, &mut e.1))
    }
    // Whole buffers (`drain_into`), then parts kept apart (`drain_into_parts`).
    for apart in [false, true] {
        let mut r = Region::new(2);
        let m = r.init(2);
        let mut tx = m.sender_end(id(0), id(1)).unwrap();
        let mut rx = m.receiver_end(id(0), id(1)).unwrap();
        for i in 0..2 {
            let _ = tx.try_send(&make_msg(0, 1, i)).unwrap();
        }
        m.chan(id(0), id(1)).unwrap().slots[2]
            .seq
            .store(4242, Ordering::Release);
        let (mut whole, mut split) = (
            [[0u8; MSG_SIZE]; 8],
            [([0; crate::HEAD], [0; MSG_SIZE - crate::HEAD]); 8],
        );
        let mut drain = |rx: &mut crate::ReceiverEnd<'_>| {
            if apart {
                rx.drain_into_parts(&mut split, parts)
            } else {
                rx.drain_into(&mut whole)
            }
        };
        // The two good messages (acknowledged) come out; the corrupt slot is reported next.
        assert_eq!(drain(&mut rx), Ok(2), "apart: {apart}");
        assert_eq!(drain(&mut rx), Err(Error::Corrupt), "apart: {apart}");
        let second = if apart {
            split[1].0
        } else {
            whole[1][..crate::HEAD].try_into().unwrap()
        };
        assert_eq!(u64::from_le_bytes(second[4..12].try_into().unwrap()), 1);
    }
}

#[test]
fn restore_header_undoes_any_write_into_it() {
    // The header's words (the rest of its cache line is padding).
    let header = 32;
    for offset in (0..header).step_by(4) {
        let r = Region::new(3);
        let m = MailboxMatrix::init(r.raw(), 3).unwrap();
        assert_eq!(m.restore_header(), 0, "an intact header needs nothing");
        r.poke(offset, &0xffff_fffeu32.to_ne_bytes());
        assert_eq!(m.restore_header(), 1, "offset {offset}");
        let again = MailboxMatrix::attach(r.raw()).unwrap();
        assert_eq!(again.instances(), 3);
    }
}
