//! The shared locks: the force / stale-unlock / repair / time-out paths with a counting clock
//! (one tick per read, deterministic), a property over hostile writers, and threads: mutual
//! exclusion, a dead holder, and a torturer rewinding and toggling `serving` for a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Region, id};
use crate::layout::LockLine;
use crate::{Acquired, LockName, LockTimedOut, MAX_QUEUE, TicketLock, WaitBound};

/// A clock that advances one tick per read.
fn counter() -> impl FnMut() -> u64 {
    let mut t = 0;
    move || {
        t += 1;
        t
    }
}

/// A clock in nanoseconds since `origin`.
fn nanos(origin: Instant) -> impl FnMut() -> u64 {
    move || origin.elapsed().as_nanos() as u64
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

const B: WaitBound = WaitBound {
    stall: 1000,
    total: 1_000_000,
};

fn words(l: &LockLine) -> (u32, u32) {
    (
        l.next.load(Ordering::Relaxed),
        l.serving.load(Ordering::Relaxed),
    )
}

#[test]
fn force_path_and_stale_unlock() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let c = r.console();
    let lock = |by: usize, stall: u64| {
        c.try_lock(id(by), WaitBound { stall, ..B }, counter(), || {})
            .unwrap()
    };
    // Normal use.
    assert_eq!(lock(0, 1000).acquired(), Acquired::Normally);
    // Instance 1 takes the lock and dies holding it.
    core::mem::forget(lock(1, 1000));
    assert_eq!(c.stats().holder, Some(id(1)));
    // Instance 0 breaks it once `serving` stood still for the stall bound.
    let g = lock(0, 1000);
    assert!(g.forced());
    let s = c.stats();
    assert_eq!((s.forced, s.holder), (1, Some(id(0))));
    drop(g);
    // The lock works normally afterwards.
    assert!(!lock(1, 1000).forced());
    // A slow (not dead) holder: the waiter forces, then the holder's unlock is stale and must
    // not disturb the new holder.
    let slow = lock(1, 1000);
    let g = lock(0, 10);
    assert!(g.forced());
    drop(slow);
    assert_eq!(c.stats().stale_unlocks, 1);
    drop(g);
    let g = lock(1, 1000);
    assert!(!g.forced());
    drop(g);
    let s = c.stats();
    assert_eq!(
        (
            s.forced,
            s.stale_unlocks,
            s.acquired,
            s.timed_out,
            s.repaired
        ),
        (2, 1, 7, 0, 0)
    );
}

#[test]
fn toggling_serving_is_repaired_and_creeping_cannot_stretch_a_wait() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    for lock in [r.console(), r.ioapic_lock()] {
        let l = lock.line;
        let holder = lock.try_lock(id(1), B, counter(), || {}).unwrap();
        // A hostile writer flips `serving` between two tickets behind ours on every poll: the
        // step back is no move of the protocol, so the waiter repairs it and takes its turn.
        let mut flip = false;
        let toggle = || {
            flip = !flip;
            let n = l.next.load(Ordering::Relaxed);
            l.serving
                .store(n.wrapping_sub(2 + u32::from(flip)), Ordering::Relaxed);
        };
        let bound = WaitBound {
            stall: 10,
            total: 500,
        };
        let g = lock.try_lock(id(0), bound, counter(), toggle).unwrap();
        assert_eq!(g.acquired(), Acquired::Forced);
        drop(g);
        let s = lock.stats();
        assert_eq!((s.timed_out, s.forced, s.acquired), (0, 0, 2), "{s:?}");
        assert!(s.repaired >= 1, "{s:?}");
        // One that keeps writing the same ticket just behind ours, even right after we force
        // it on: a force that writes our ticket is our turn, whatever is written after it.
        let mine = l.next.load(Ordering::Relaxed);
        l.serving.store(mine.wrapping_sub(1), Ordering::Relaxed);
        let pin = || l.serving.store(mine.wrapping_sub(1), Ordering::Relaxed);
        let g = lock.try_lock(id(0), bound, counter(), pin).unwrap();
        assert_eq!((g.ticket(), g.acquired()), (mine, Acquired::Forced));
        drop(g);
        let s = lock.stats();
        assert_eq!((s.timed_out, s.forced, s.acquired), (0, 1, 3), "{s:?}");
        // One that only ever moves it forward, one ticket per poll from far (but not too
        // far) behind ours: each change restarts the stall timer and nothing looks corrupt;
        // the deadline comes before our turn does.
        let base = l.next.load(Ordering::Relaxed).wrapping_sub(1000);
        l.serving.store(base, Ordering::Relaxed);
        let mut k = 0u32;
        let creep = || {
            k += 1;
            l.serving.store(base.wrapping_add(k), Ordering::Relaxed);
        };
        let mut clock = counter();
        let mut reads = 0;
        let e = lock
            .try_lock(
                id(0),
                bound,
                || {
                    reads += 1;
                    clock()
                },
                creep,
            )
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.lock, lock.name());
        assert!(
            e.waited >= bound.total && reads <= bound.total + 2,
            "{e:?}, {reads}"
        );
        let s = lock.stats();
        assert_eq!((s.timed_out, s.forced), (1, 1), "{s:?}");
        drop(holder);
    }
    assert_eq!(r.console().name(), LockName::Console);
    assert_eq!(r.ioapic_lock().name(), LockName::IoApic);
}

#[test]
fn a_bypassed_console_guard_unlocks_nothing() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let c = r.console();
    let bound = WaitBound {
        stall: 10,
        total: 200,
    };
    let holder = c.try_lock(id(1), bound, counter(), || {}).unwrap();
    // A writer that keeps "making progress" towards a ticket it never reaches in time:
    // `serving` creeps forward from far behind, so the waiter never forces; it times out and
    // writes anyway.
    let l = c.line;
    let base = holder.ticket().wrapping_sub(1000);
    l.serving.store(base, Ordering::Relaxed);
    let mut k = 0u32;
    let g = c.lock_or_bypass(id(0), bound, counter(), || {
        k += 1;
        l.serving.store(base.wrapping_add(k), Ordering::Relaxed);
    });
    assert!(g.bypassed());
    l.serving.store(holder.ticket(), Ordering::Relaxed);
    let before = words(l);
    drop(g);
    assert_eq!(words(l), before, "a bypassed guard wrote to the lock");
    assert_eq!(c.stats().timed_out, 1);
    // The holder's unlock is not stale: nobody broke its lock.
    drop(holder);
    assert_eq!(c.stats().stale_unlocks, 0);
    // The waiter's abandoned ticket is skipped by the next waiter after one stall.
    let g = c.try_lock(id(0), bound, counter(), || {}).unwrap();
    assert!(g.forced());
    assert_eq!(c.stats().forced, 1);
}

#[test]
fn corrupt_serving_is_repaired_at_once() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let c = r.ioapic_lock();
    let l = c.line;
    drop(c.try_lock(id(0), B, counter(), || {}).unwrap());
    // Far behind: without the repair, each stall would advance it by one ticket.
    let (next, _) = words(l);
    l.serving
        .store(next.wrapping_sub(1 << 30), Ordering::Relaxed);
    let mut reads = 0;
    let g = c
        .try_lock(id(1), B, counter(), || reads += 1)
        .expect("repaired");
    assert!(g.forced());
    assert_eq!(reads, 0, "the repair waits for nothing");
    drop(g);
    // Just within the bound behind: a legitimate queue, waited for one stall, after which
    // the holder and the tickets before ours are presumed dead all at once (one force).
    let (next, _) = words(l);
    l.serving.store(next.wrapping_sub(3), Ordering::Relaxed);
    let before = c.stats().forced;
    drop(c.try_lock(id(1), B, counter(), || {}).unwrap());
    assert_eq!(c.stats().forced - before, 1);
    assert_eq!(c.stats().repaired, 1);
    // Ahead of `next`: no protocol run gets there; every new ticket would be "skipped".
    let (next, _) = words(l);
    l.serving.store(next.wrapping_add(5), Ordering::Relaxed);
    let g = c.try_lock(id(0), B, counter(), || {}).expect("repaired");
    assert!(g.forced());
    drop(g);
    assert_eq!(c.stats().repaired, 2);
    // And the lock is healthy again.
    let g = c.try_lock(id(0), B, counter(), || {}).unwrap();
    assert_eq!(g.acquired(), Acquired::Normally);
    drop(g);
    // Behind by exactly MAX_QUEUE is still a queue (waited for one stall, then forced), one
    // more is corrupt (repaired without waiting).
    let (next, _) = words(l);
    l.serving
        .store(next.wrapping_sub(MAX_QUEUE), Ordering::Relaxed);
    let short = WaitBound {
        stall: 5,
        total: 50,
    };
    let mut relaxed = 0;
    let forced = c.stats().forced;
    drop(
        c.try_lock(id(0), short, counter(), || relaxed += 1)
            .unwrap(),
    );
    assert!(relaxed >= 2 && c.stats().forced == forced + 1, "{relaxed}");
    let (next, _) = words(l);
    l.serving
        .store(next.wrapping_sub(MAX_QUEUE + 1), Ordering::Relaxed);
    let mut relaxed = 0;
    drop(
        c.try_lock(id(0), short, counter(), || relaxed += 1)
            .unwrap(),
    );
    assert_eq!(relaxed, 0);
}

#[test]
fn a_skipped_waiter_queues_again_within_its_deadline() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let c = r.console();
    let l = c.line;
    let holder = c.try_lock(id(1), B, counter(), || {}).unwrap();
    // While we wait, two more tickets are taken and someone forces `serving` past ours.
    let mut done = false;
    let g = c
        .try_lock(id(0), B, counter(), || {
            if !done {
                done = true;
                let t = l.next.fetch_add(2, Ordering::Relaxed);
                l.serving.store(t, Ordering::Relaxed);
            }
        })
        .unwrap();
    let s = c.stats();
    assert!(s.requeued >= 1 && g.forced(), "{s:?}");
    drop(g);
    drop(holder);
}

/// What a hostile writer does at one poll of the waiter.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    Nothing,
    /// `serving = next - k`.
    Behind(u32),
    /// `serving = next + k`.
    Ahead(u32),
    /// Someone takes `k` tickets.
    Take(u32),
    /// `serving += 1` (an unlock or a force).
    Step,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        Just(Hostile::Nothing),
        prop_oneof![0..8u32, MAX_QUEUE - 2..MAX_QUEUE + 2, Just(1 << 31)].prop_map(Hostile::Behind),
        prop_oneof![1..8u32, Just(1 << 30)].prop_map(Hostile::Ahead),
        (1..4u32).prop_map(Hostile::Take),
        Just(Hostile::Step),
    ]
}

fn act(l: &LockLine, h: Hostile) {
    let n = l.next.load(Ordering::Relaxed);
    match h {
        Hostile::Nothing => {}
        Hostile::Behind(k) => l.serving.store(n.wrapping_sub(k), Ordering::Relaxed),
        Hostile::Ahead(k) => l.serving.store(n.wrapping_add(k), Ordering::Relaxed),
        Hostile::Take(k) => {
            l.next.fetch_add(k, Ordering::Relaxed);
        }
        Hostile::Step => {
            l.serving.fetch_add(1, Ordering::Relaxed);
        }
    }
}

proptest! {
    /// Whatever a writer does to the lock words between polls, and whatever state they start
    /// in, a wait ends within its bound (plus the polls of one round), and its outcome is
    /// consistent: held means `serving` is our ticket; timed out is counted once and names the
    /// lock; a bypassed guard writes nothing.
    #[test]
    fn every_wait_is_bounded(
        start_next in any::<u32>(),
        start_behind in prop_oneof![0..4u32, any::<u32>()],
        script in proptest::collection::vec(hostile(), 1..40),
        stall in 1..60u64,
        total in 1..3000u64,
        console in any::<bool>(),
    ) {
        let mut reg = Region::new(2);
        let r = reg.init(2, 0).unwrap();
        let lock: TicketLock<'_> = if console { r.console() } else { r.ioapic_lock() };
        let l = lock.line;
        l.next.store(start_next, Ordering::Relaxed);
        l.serving.store(start_next.wrapping_sub(start_behind), Ordering::Relaxed);
        let bound = WaitBound { stall, total };
        let mut clock = counter();
        let mut reads = 0u64;
        let mut i = 0;
        let result = lock.try_lock(
            id(0),
            bound,
            || {
                reads += 1;
                clock()
            },
            || {
                act(l, script[i % script.len()]);
                i += 1;
            },
        );
        prop_assert!(reads <= total + 3, "{reads} clock reads for a bound of {total}");
        let s = lock.stats();
        match result {
            Ok(g) => {
                prop_assert_eq!(l.serving.load(Ordering::Relaxed), g.ticket());
                prop_assert_eq!((s.acquired, s.timed_out), (1, 0));
                drop(g);
                prop_assert_eq!(s.holder, Some(id(0)));
            }
            Err(LockTimedOut { lock: name, waited, .. }) => {
                prop_assert_eq!(name, lock.name());
                prop_assert!(waited >= total);
                prop_assert_eq!((s.acquired, s.timed_out), (0, 1));
                // The console variant of the same outcome writes nothing on drop.
                let n = l.next.load(Ordering::Relaxed);
                l.serving.store(n.wrapping_sub(2), Ordering::Relaxed);
                let before = words(l);
                let g = lock.lock_or_bypass(id(0), WaitBound { stall, total: 0 }, counter(), || {});
                prop_assert!(g.bypassed());
                let after_wait = words(l);
                drop(g);
                prop_assert_eq!(words(l), after_wait);
                prop_assert_eq!(after_wait.1, before.1);
            }
        }
    }
}

#[test]
fn mutual_exclusion_without_torture() {
    const THREADS: usize = 4;
    let per = if cfg!(debug_assertions) {
        3_000
    } else {
        30_000
    };
    let origin = Instant::now();
    // Bounds no healthy run comes near: any force or bypass below is a bug.
    let bound = WaitBound {
        stall: ns(Duration::from_secs(20)),
        total: ns(Duration::from_secs(60)),
    };
    let mut reg = Region::new(THREADS);
    let r = reg.init(THREADS, 0).unwrap();
    for lock in [r.console(), r.ioapic_lock()] {
        // A "line buffer" written word by word under the lock, with yields in between: without
        // mutual exclusion, another writer's words would show up mid-line.
        let line: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        let count = AtomicU64::new(0);
        thread::scope(|s| {
            for me in 0..THREADS {
                let (line, count) = (&line, &count);
                s.spawn(move || {
                    for i in 0..per {
                        let g = if me % 2 == 0 {
                            lock.lock_or_bypass(id(me), bound, nanos(origin), thread::yield_now)
                        } else {
                            lock.try_lock(id(me), bound, nanos(origin), thread::yield_now)
                                .unwrap()
                        };
                        assert_eq!(g.acquired(), Acquired::Normally);
                        let tag = ((me as u64) << 32) | i as u64;
                        for w in line.iter() {
                            w.store(tag, Ordering::Relaxed);
                            if i % 16 == 0 {
                                thread::yield_now();
                            }
                        }
                        for w in line.iter() {
                            assert_eq!(w.load(Ordering::Relaxed), tag, "interleaved line");
                        }
                        // Non-atomic read-modify-write: lost updates unless exclusive.
                        let v = count.load(Ordering::Relaxed);
                        count.store(v + 1, Ordering::Relaxed);
                        drop(g);
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), (THREADS * per) as u64);
        let st = lock.stats();
        assert_eq!(st.acquired, (THREADS * per) as u64);
        assert_eq!(
            (
                st.forced,
                st.stale_unlocks,
                st.requeued,
                st.timed_out,
                st.repaired
            ),
            (0, 0, 0, 0, 0)
        );
    }
}

#[test]
fn waiters_survive_a_dead_holder() {
    const THREADS: usize = 3;
    let origin = Instant::now();
    let bound = WaitBound {
        stall: ns(Duration::from_millis(2)),
        total: ns(Duration::from_secs(30)),
    };
    let mut reg = Region::new(THREADS + 1);
    let r = reg.init(THREADS + 1, 0).unwrap();
    let c = r.console();
    // Instance 3 dies holding the console.
    std::mem::forget(
        c.try_lock(id(THREADS), bound, nanos(origin), || {})
            .unwrap(),
    );
    let count = AtomicU64::new(0);
    thread::scope(|s| {
        for me in 0..THREADS {
            let count = &count;
            s.spawn(move || {
                for _ in 0..200 {
                    let g = c.lock_or_bypass(id(me), bound, nanos(origin), thread::yield_now);
                    assert!(!g.bypassed());
                    let v = count.load(Ordering::Relaxed);
                    count.store(v + 1, Ordering::Relaxed);
                    drop(g);
                }
            });
        }
    });
    let st = c.stats();
    assert!(st.forced >= 1);
    assert_eq!(st.timed_out, 0);
    // Exactly one force per dead ticket, unless a live holder was too slow (then counted as a
    // stale unlock); the count is exact when nothing was broken spuriously.
    if st.stale_unlocks == 0 {
        assert_eq!(count.load(Ordering::Relaxed), (THREADS * 200) as u64);
    }
}

/// Lock torture: a writer sets `serving` far behind, then keeps toggling it (near behind, far
/// behind, ahead of `next`) for a second while waiters take the lock over and over. Every
/// single wait ends within the bound plus scheduling slack, every waiter finishes, waits do
/// time out (bypass on the console, errors on the IO APIC), and once the writer stops the lock
/// works normally again.
fn torture(name: LockName) {
    const WAITERS: usize = 3;
    let torture_for = Duration::from_millis(1000);
    let total = Duration::from_millis(10);
    // The host is shared (two cores, other work): a descheduled waiter may overshoot.
    let slack = Duration::from_millis(750);
    let origin = Instant::now();
    let bound = WaitBound {
        stall: ns(Duration::from_millis(2)),
        total: ns(total),
    };
    let mut reg = Region::new(WAITERS + 1);
    let r = reg.init(WAITERS + 1, 0).unwrap();
    let lock = match name {
        LockName::Console => r.console(),
        LockName::IoApic => r.ioapic_lock(),
    };
    let l = lock.line;
    let stop = AtomicBool::new(false);
    let (held, missed) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            let n = l.next.load(Ordering::Relaxed);
            l.serving.store(n.wrapping_sub(1 << 30), Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
            let begin = Instant::now();
            let mut k = 0u32;
            while begin.elapsed() < torture_for {
                let n = l.next.load(Ordering::Relaxed);
                let v = match k % 16 {
                    0 => n.wrapping_sub(1 << 30),
                    1 => n.wrapping_add(7),
                    // Behind the tickets of the waiters (the last ones taken), never theirs.
                    odd if odd % 2 == 1 => n.wrapping_sub(WAITERS as u32 + 2),
                    _ => n.wrapping_sub(WAITERS as u32 + 3),
                };
                l.serving.store(v, Ordering::Relaxed);
                k = k.wrapping_add(1);
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                if k % 256 == 0 {
                    thread::yield_now();
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        for me in 0..WAITERS {
            let (held, missed) = (&held, &missed);
            s.spawn(move || {
                let mut rounds = 0u64;
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    let t0 = Instant::now();
                    // Fails the test instead of hanging it if a wait is unbounded.
                    let relax = || {
                        assert!(t0.elapsed() <= total + slack, "waiter {me} stuck");
                        thread::yield_now();
                    };
                    let got = match name {
                        LockName::Console => {
                            let g = lock.lock_or_bypass(id(me), bound, nanos(origin), relax);
                            !g.bypassed()
                        }
                        LockName::IoApic => {
                            match lock.try_lock(id(me), bound, nanos(origin), relax) {
                                Ok(_) => true,
                                Err(e) => {
                                    assert_eq!(e.lock, LockName::IoApic);
                                    assert!(e.waited >= bound.total, "{e:?}");
                                    false
                                }
                            }
                        }
                    };
                    let waited = t0.elapsed();
                    worst = worst.max(waited);
                    assert!(waited <= total + slack, "waiter {me} waited {waited:?}");
                    if got { held } else { missed }.fetch_add(1, Ordering::Relaxed);
                    rounds += 1;
                }
                eprintln!("torture {name:?}: waiter {me}: {rounds} waits, worst {worst:?}");
            });
        }
    });
    let st = lock.stats();
    eprintln!(
        "torture {name:?}: held {}, timed out {}, {st:?}",
        held.load(Ordering::Relaxed),
        missed.load(Ordering::Relaxed)
    );
    // Every rewind and every step back of the toggling is repaired by some waiter (which then
    // holds the lock); waits that met their bound meanwhile are counted as timed out.
    assert!(st.repaired > 0, "{st:?}");
    assert_eq!(st.timed_out, missed.load(Ordering::Relaxed));
    assert_eq!(st.acquired, held.load(Ordering::Relaxed));
    // After the torture the lock recovers: the abandoned tickets are skipped (one stall for all,
    // or one repair), then it is granted normally.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the lock did not recover");
        if lock
            .try_lock(id(0), bound, nanos(origin), thread::yield_now)
            .is_ok()
        {
            break;
        }
    }
    let g = lock.try_lock(id(1), bound, nanos(origin), || {}).unwrap();
    assert_eq!(g.acquired(), Acquired::Normally);
}

#[test]
fn torture_console_lock() {
    torture(LockName::Console);
}

#[test]
fn torture_ioapic_lock() {
    torture(LockName::IoApic);
}
