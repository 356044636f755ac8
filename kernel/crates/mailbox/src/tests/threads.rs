//! Multi-threaded tests: each thread plays one kernel instance.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{Region, check_msg, id, make_msg};
use crate::{Error, MSG_SIZE, ReceiverEnd, SLOTS, SenderEnd};

/// Spins a little, then yields: the test machine may have fewer cores than threads.
struct Backoff(u32);

impl Backoff {
    fn snooze(&mut self) {
        self.0 += 1;
        if self.0 < 64 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

fn pump_sender(tx: &mut SenderEnd<'_>, count: u64) {
    let (from, to) = (tx.from().index(), tx.to().index());
    let mut n = 0;
    let mut backoff = Backoff(0);
    while n < count {
        match tx.try_send(&make_msg(from, to, n)) {
            Ok(_) => {
                n += 1;
                backoff.0 = 0;
            }
            Err(Error::Full) => backoff.snooze(),
            Err(e) => panic!("send: {e:?}"),
        }
    }
}

/// Sends each end's next messages (numbered per pair, up to `per_pair`) until its ring is
/// full; whether any went.
fn pump_each(txs: &mut [SenderEnd<'_>], sent: &mut [u64], per_pair: u64) -> bool {
    let mut progress = false;
    for (tx, n) in txs.iter_mut().zip(sent.iter_mut()) {
        while *n < per_pair {
            match tx.try_send(&make_msg(tx.from().index(), tx.to().index(), *n)) {
                Ok(_) => {
                    *n += 1;
                    progress = true;
                }
                Err(Error::Full) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    progress
}

fn pump_receiver(rx: &mut ReceiverEnd<'_>, count: u64) {
    let (from, to) = (rx.from().index(), rx.to().index());
    let mut next = 0;
    let mut backoff = Backoff(0);
    while next < count {
        let got = rx
            .drain(|msg| {
                // In order, no loss, no duplicate, bytes intact.
                assert_eq!(check_msg(from, to, msg), next);
                next += 1;
            })
            .unwrap();
        if got == 0 {
            backoff.snooze();
        } else {
            backoff.0 = 0;
        }
    }
}

#[test]
fn two_threads_millions_in_order() {
    let count: u64 = if cfg!(debug_assertions) {
        300_000
    } else {
        5_000_000
    };
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let t0 = Instant::now();
    thread::scope(|s| {
        s.spawn(move || pump_sender(&mut tx, count));
        s.spawn(move || pump_receiver(&mut rx, count));
    });
    let dt = t0.elapsed();
    let st = m.stats(id(0), id(1)).unwrap();
    assert_eq!((st.sent, st.received, st.acked), (count, count, count));
    assert!(!st.tx_fault && !st.rx_fault);
    eprintln!(
        "two_threads: {count} messages in {dt:?}: {:.2} M msg/s, {:.0} MB/s; full {}",
        count as f64 / dt.as_secs_f64() / 1e6,
        count as f64 * MSG_SIZE as f64 / dt.as_secs_f64() / 1e6,
        st.full
    );
}

/// Messages per ordered pair in the all-to-all tests.
const PER_PAIR: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    200_000
};

#[test]
fn all_to_all_over_the_matrix() {
    const N: usize = 4;
    let per_pair = PER_PAIR;
    let mut r = Region::new(N);
    let m = r.init(N);
    // Claim every end here and move them to their instance's thread (ends are Send).
    let mut instances: Vec<(Vec<SenderEnd<'_>>, Vec<ReceiverEnd<'_>>)> = (0..N)
        .map(|me| {
            let peers = (0..N).filter(move |&p| p != me);
            let me = id(me);
            (
                peers
                    .clone()
                    .map(|p| m.sender_end(me, id(p)).unwrap())
                    .collect(),
                peers.map(|p| m.receiver_end(id(p), me).unwrap()).collect(),
            )
        })
        .collect();
    let t0 = Instant::now();
    thread::scope(|s| {
        for (mut txs, mut rxs) in instances.drain(..) {
            s.spawn(move || {
                let mut sent = vec![0u64; txs.len()];
                let mut next = vec![0u64; rxs.len()];
                let mut backoff = Backoff(0);
                loop {
                    let mut progress = pump_each(&mut txs, &mut sent, per_pair);
                    for (rx, next) in rxs.iter_mut().zip(next.iter_mut()) {
                        let (from, to) = (rx.from().index(), rx.to().index());
                        let got = rx
                            .drain(|msg| {
                                assert_eq!(check_msg(from, to, msg), *next);
                                *next += 1;
                            })
                            .unwrap();
                        progress |= got > 0;
                    }
                    if sent.iter().chain(next.iter()).all(|&c| c == per_pair) {
                        break;
                    }
                    if progress {
                        backoff.0 = 0;
                    } else {
                        backoff.snooze();
                    }
                }
            });
        }
    });
    let dt = t0.elapsed();
    for from in 0..N {
        for to in (0..N).filter(|&t| t != from) {
            let st = m.stats(id(from), id(to)).unwrap();
            assert_eq!((st.sent, st.received), (per_pair, per_pair), "{from}->{to}");
        }
    }
    let total = per_pair * (N * (N - 1)) as u64;
    eprintln!(
        "all_to_all: {N} threads, {total} messages in {dt:?}: {:.2} M msg/s",
        total as f64 / dt.as_secs_f64() / 1e6
    );
}

#[test]
fn send_timeout_against_a_stalling_receiver() {
    let count: u64 = if cfg!(debug_assertions) {
        50_000
    } else {
        500_000
    };
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(1), id(0)).unwrap();
    let mut rx = m.receiver_end(id(1), id(0)).unwrap();
    let first_busy = AtomicBool::new(false);
    let busy_seen = AtomicU64::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            let epoch = Instant::now();
            let clock = || epoch.elapsed().as_nanos() as u64;
            for n in 0..count {
                let msg = make_msg(1, 0, n);
                loop {
                    let deadline = clock() + 200_000; // 200 µs
                    match tx.send_timeout(&msg, clock, deadline) {
                        Ok(_) => break,
                        Err(Error::Busy) => {
                            // Not sent: the message is still ours; try again.
                            busy_seen.fetch_add(1, Ordering::Relaxed);
                            first_busy.store(true, Ordering::Release);
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
        });
        s.spawn(|| {
            // Stall until the sender has hit Busy at least once, then stall now and then.
            while !first_busy.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(1));
            }
            let mut next = 0u64;
            while next < count {
                let got = rx
                    .drain(|msg| {
                        assert_eq!(check_msg(1, 0, msg), next);
                        next += 1;
                    })
                    .unwrap();
                if got > 0 && next % 50_000 < got as u64 {
                    thread::sleep(Duration::from_millis(2));
                } else if got == 0 {
                    thread::yield_now();
                }
            }
        });
    });
    let st = m.stats(id(1), id(0)).unwrap();
    let busy = busy_seen.load(Ordering::Relaxed);
    assert!(busy >= 1);
    assert_eq!(st.busy, busy);
    assert_eq!((st.sent, st.received), (count, count));
    eprintln!("send_timeout: {count} messages, {busy} Busy returns");
}

#[test]
fn sleeping_receiver_never_misses_a_doorbell() {
    let count: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let mut r = Region::new(2);
    let m = r.init(2);
    let mut tx = m.sender_end(id(0), id(1)).unwrap();
    let mut rx = m.receiver_end(id(0), id(1)).unwrap();
    let (mut ipis, mut spurious, mut sleeps) = (0u64, 0u64, 0u64);
    thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut next = 0u64;
            while next < count {
                let got = rx
                    .drain(|msg| {
                        assert_eq!(check_msg(0, 1, msg), next);
                        next += 1;
                    })
                    .unwrap();
                if got > 0 {
                    continue;
                }
                // "cli; arm; re-check; sti; hlt": park() returns at once if an unpark (the
                // IPI) came in between, as a pending interrupt ends hlt.
                sleeps += 1;
                if rx.arm().unwrap() {
                    let t = Instant::now();
                    thread::park_timeout(Duration::from_secs(5));
                    rx.disarm();
                    if !rx.has_pending().unwrap() {
                        spurious += 1;
                        rx.record_spurious();
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(5) || !rx.has_pending().unwrap(),
                        "lost wake-up: message pending while asleep"
                    );
                }
            }
        });
        let wake = receiver.thread().clone();
        let mut n = 0;
        while n < count {
            match tx.try_send(&make_msg(0, 1, n)) {
                Ok(out) => {
                    n += 1;
                    if out.need_doorbell {
                        ipis += 1;
                        wake.unpark();
                    }
                    // Pause now and then so the receiver does go to sleep.
                    if n % 1000 == 0 {
                        thread::yield_now();
                    }
                }
                Err(Error::Full) => std::hint::spin_loop(),
                Err(e) => panic!("{e:?}"),
            }
        }
    });
    let st = m.stats(id(0), id(1)).unwrap();
    assert_eq!(st.received, count);
    assert_eq!(st.doorbells_rung, ipis);
    assert_eq!(st.doorbells_rung + st.doorbells_suppressed, count);
    assert_eq!(st.sleeps, sleeps);
    assert_eq!(st.spurious, spurious);
    eprintln!(
        "doorbells: {count} messages, {ipis} IPIs, {} suppressed, {sleeps} sleeps, {spurious} spurious",
        st.doorbells_suppressed
    );
}

/// Receivers that look only at the channels their summary word flags (and at a channel again
/// while its last drain took a whole ring) still get every message, in order: a sender's bit
/// is never lost between its message and the receiver's `take`.
#[test]
fn receivers_guided_by_the_summary_miss_nothing() {
    const N: usize = 4;
    let per_pair = PER_PAIR;
    let mut r = Region::new(N);
    let m = r.init(N);
    let mut instances: Vec<_> = (0..N)
        .map(|me| {
            let peers = (0..N).filter(move |&p| p != me);
            let me = id(me);
            (
                m.inbox(me).unwrap(),
                peers
                    .clone()
                    .map(|p| m.sender_end(me, id(p)).unwrap())
                    .collect::<Vec<_>>(),
                peers
                    .map(|p| m.receiver_end(id(p), me).unwrap())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    thread::scope(|s| {
        for (inbox, mut txs, mut rxs) in instances.drain(..) {
            s.spawn(move || {
                let mut sent = vec![0u64; txs.len()];
                let mut next = vec![0u64; rxs.len()];
                let mut leftover = 0u64;
                let mut backoff = Backoff(0);
                loop {
                    let mut progress = pump_each(&mut txs, &mut sent, per_pair);
                    let flagged = inbox.take() | core::mem::take(&mut leftover);
                    for (rx, next) in rxs.iter_mut().zip(next.iter_mut()) {
                        let (from, to) = (rx.from().index(), rx.to().index());
                        if flagged & (1 << from) == 0 {
                            continue;
                        }
                        let got = rx
                            .drain(|msg| {
                                assert_eq!(check_msg(from, to, msg), *next);
                                *next += 1;
                            })
                            .unwrap();
                        if got == SLOTS {
                            leftover |= 1 << from;
                        }
                        progress |= got > 0;
                    }
                    if sent.iter().chain(next.iter()).all(|&c| c == per_pair) {
                        break;
                    }
                    if progress {
                        backoff.0 = 0;
                    } else {
                        backoff.snooze();
                    }
                }
            });
        }
    });
    for from in 0..N {
        for to in (0..N).filter(|&t| t != from) {
            let st = m.stats(id(from), id(to)).unwrap();
            assert_eq!((st.sent, st.received), (per_pair, per_pair), "{from}->{to}");
        }
    }
}
