//! Multi-threaded tests: each thread plays one kernel instance.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use super::{Region, Rng, id};
use crate::{Error, Owner, Resource};

const INSTANCES: usize = 4;

fn resources() -> Vec<Resource> {
    (0..6)
        .map(Resource::Cpu)
        .chain((0..6).map(Resource::Irq))
        .chain((0..6).map(Resource::Memory))
        .collect()
}

/// Exclusive-use check: the thread that believes it owns `r` marks it in use; a second
/// believer at the same time would find the mark.
fn use_resource(in_use: &AtomicU64, me: usize) {
    assert_eq!(
        in_use.swap(me as u64 + 1, Ordering::AcqRel),
        0,
        "two owners"
    );
    std::hint::spin_loop();
    assert_eq!(
        in_use.swap(0, Ordering::AcqRel),
        me as u64 + 1,
        "two owners"
    );
}

#[test]
fn racing_transfers_keep_one_owner() {
    let iters = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    let res = resources();
    let mut reg = Region::new(INSTANCES);
    let r = reg.init(INSTANCES, 0).unwrap();
    // Instance 0 hands everything out round-robin.
    for (k, &x) in res.iter().enumerate() {
        r.claim(x, id(k % INSTANCES), None).unwrap();
    }
    let in_use: Vec<AtomicU64> = res.iter().map(|_| AtomicU64::new(0)).collect();
    let begun = AtomicU64::new(0);
    let finished = AtomicU64::new(0);
    let from_free = AtomicU64::new(0);
    let barrier = Barrier::new(INSTANCES);
    thread::scope(|s| {
        for me in 0..INSTANCES {
            let (r, res, in_use) = (&r, &res, &in_use);
            let (begun, finished, from_free, barrier) = (&begun, &finished, &from_free, &barrier);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((me as u64 + 1) * 0x1234_5678_9abc));
                for _ in 0..iters {
                    let k = rng.below(res.len());
                    let x = res[k];
                    match rng.below(8) {
                        // Hand something I own to someone else.
                        0..=2 => {
                            let to = (me + 1 + rng.below(INSTANCES - 1)) % INSTANCES;
                            match r.begin_transfer(x, id(me), id(to)) {
                                Ok(_) => {
                                    begun.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(Error::WrongOwner { .. } | Error::InTransit { .. }) => {}
                                Err(e) => panic!("begin: {e:?}"),
                            }
                        }
                        // Take what is addressed to me, sometimes with a wrong generation first.
                        3..=4 => {
                            if let Ok(Owner::InTransit { to, generation, .. }) = r.owner(x)
                                && to == id(me)
                            {
                                if rng.below(4) == 0 {
                                    let wrong = generation.wrapping_add(1);
                                    assert!(r.complete_transfer(x, id(me), wrong).is_err());
                                }
                                match r.complete_transfer(x, id(me), generation) {
                                    Ok(()) => {
                                        finished.fetch_add(1, Ordering::Relaxed);
                                        use_resource(&in_use[k], me);
                                    }
                                    // The sender aborted it meanwhile (or it moved on).
                                    Err(
                                        Error::WrongOwner { .. }
                                        | Error::NotInTransit { .. }
                                        | Error::WrongGeneration { .. },
                                    ) => {}
                                    Err(e) => panic!("complete: {e:?}"),
                                }
                            }
                        }
                        // Change my mind about something I sent.
                        5 => {
                            if let Ok(Owner::InTransit {
                                from, generation, ..
                            }) = r.owner(x)
                                && from == id(me)
                            {
                                match r.abort_transfer(x, id(me), generation) {
                                    Ok(()) => {
                                        finished.fetch_add(1, Ordering::Relaxed);
                                        use_resource(&in_use[k], me);
                                    }
                                    Err(
                                        Error::WrongOwner { .. }
                                        | Error::NotInTransit { .. }
                                        | Error::WrongGeneration { .. },
                                    ) => {}
                                    Err(e) => panic!("abort: {e:?}"),
                                }
                            }
                        }
                        // Release something of mine, or grab something free.
                        6 => match r.release(x, id(me)) {
                            Ok(()) | Err(Error::WrongOwner { .. } | Error::InTransit { .. }) => {}
                            Err(e) => panic!("release: {e:?}"),
                        },
                        _ => match r.claim(x, id(me), None) {
                            Ok(()) => {
                                from_free.fetch_add(1, Ordering::Relaxed);
                                use_resource(&in_use[k], me);
                            }
                            Err(Error::WrongOwner { .. } | Error::InTransit { .. }) => {}
                            Err(e) => panic!("claim: {e:?}"),
                        },
                    }
                }
                barrier.wait();
                // Wind down: no new transfers; finish everything that involves me.
                loop {
                    let mut pending = false;
                    for (k, &x) in res.iter().enumerate() {
                        if let Ok(Owner::InTransit {
                            from,
                            to,
                            generation,
                        }) = r.owner(x)
                        {
                            let done = if to == id(me) {
                                r.complete_transfer(x, id(me), generation)
                            } else if from == id(me) {
                                r.abort_transfer(x, id(me), generation)
                            } else {
                                pending = true;
                                continue;
                            };
                            if done.is_ok() {
                                finished.fetch_add(1, Ordering::Relaxed);
                                use_resource(&in_use[k], me);
                            }
                        }
                    }
                    if !pending {
                        break;
                    }
                    thread::yield_now();
                }
                barrier.wait();
                // Everything free gets exactly one owner: all race to claim it.
                for (k, &x) in res.iter().enumerate() {
                    if r.claim(x, id(me), None).is_ok() {
                        from_free.fetch_add(1, Ordering::Relaxed);
                        use_resource(&in_use[k], me);
                    }
                }
            });
        }
    });
    let mut owners = [0usize; INSTANCES];
    for &x in &res {
        match r.owner(x).unwrap() {
            Owner::Owned(o) => owners[o.index()] += 1,
            other => panic!("{x:?} left {other:?}"),
        }
    }
    assert_eq!(owners.iter().sum::<usize>(), res.len());
    let (b, f) = (
        begun.load(Ordering::Relaxed),
        finished.load(Ordering::Relaxed),
    );
    assert_eq!(
        b, f,
        "every begun transfer completed or aborted exactly once"
    );
    eprintln!(
        "racing_transfers: {b} transfers, {} claims from free, final owners {owners:?}",
        from_free.load(Ordering::Relaxed)
    );
    assert!(b > 1000);
}

#[test]
fn resource_snapshots_are_never_torn() {
    let rounds: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    };
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let i = r.instance(id(1)).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let checked = AtomicU64::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            let mut cpus = [0u32; 64];
            let mut ranges = [(0u64, 0u64); 16];
            let mut k = 0u32;
            // Keep writing until the reader has checked enough snapshots.
            while k < rounds || checked.load(Ordering::Relaxed) < 5_000 {
                k = k.wrapping_add(1).max(1);
                cpus.fill(k);
                ranges.fill((u64::from(k) << 21, 1 << 21));
                let (nc, nr) = (k as usize % 64 + 1, k as usize % 16 + 1);
                i.publish_resources(&cpus[..nc], &ranges[..nr]).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        s.spawn(|| {
            let mut seen = 0u64;
            let mut torn_retries = 0u64;
            while !done.load(Ordering::Acquire) {
                let snap = match i.resources() {
                    Ok(s) => s,
                    Err(Error::Busy) => {
                        torn_retries += 1;
                        continue;
                    }
                    Err(e) => panic!("{e:?}"),
                };
                let Some(&k) = snap.cpus().first() else {
                    continue;
                };
                assert_eq!(snap.cpus().len(), k as usize % 64 + 1);
                assert!(snap.cpus().iter().all(|&c| c == k));
                assert_eq!(snap.ranges().len(), k as usize % 16 + 1);
                assert!(
                    snap.ranges()
                        .iter()
                        .all(|&x| x == (u64::from(k) << 21, 1 << 21))
                );
                assert_eq!(snap.total_bytes, snap.ranges().len() as u64 * (1 << 21));
                seen += 1;
                checked.store(seen, Ordering::Relaxed);
            }
            eprintln!("snapshots checked: {seen}, busy: {torn_retries}");
        });
    });
}

/// Instance 0 reclaims a "dead" instance 1 while instance 2 keeps trying to complete the
/// transfers 1 had started towards it: every resource ends with exactly one owner, either 2
/// (it completed first) or 0 (the reclaim rolled the transfer back first), never both.
#[test]
fn reclaim_races_with_a_completing_receiver() {
    for round in 0..200 {
        let mut reg = Region::new(INSTANCES);
        let r = reg.init(INSTANCES, 0).unwrap();
        let res = resources();
        let mut gens = Vec::new();
        for &x in &res {
            r.claim(x, id(1), None).unwrap();
            gens.push(r.begin_transfer(x, id(1), id(2)).unwrap());
        }
        let barrier = Barrier::new(2);
        let (completed, reclaimed) = thread::scope(|s| {
            let receiver = s.spawn(|| {
                barrier.wait();
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..res.len()).collect()
                } else {
                    (0..res.len()).rev().collect()
                };
                order
                    .into_iter()
                    .filter(|&i| r.complete_transfer(res[i], id(2), gens[i]).is_ok())
                    .count()
            });
            barrier.wait();
            let got = r.reclaim(id(1), id(0)).unwrap();
            (receiver.join().unwrap(), got)
        });
        let total = reclaimed.cpus() + reclaimed.irqs() + reclaimed.memory_chunks();
        assert_eq!(completed + total as usize, res.len());
        for &x in &res {
            match r.owner(x).unwrap() {
                Owner::Owned(o) if o == id(0) || o == id(2) => {}
                other => panic!("{x:?} ended {other:?}"),
            }
        }
    }
}
