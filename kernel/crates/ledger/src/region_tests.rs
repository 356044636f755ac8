//! [`Ledger::reclaim`] against a real shared region (`mk-shared` over a page-aligned buffer),
//! with forged and corrupt words, and with a thread standing in for a hostile instance that
//! keeps forging while instance 0 reclaims.

use std::sync::atomic::{AtomicBool, Ordering};

use mk_raw::{Page, Raw};
use mk_shared::{Owner, Resource, SharedRegion, layout, region_size};
use proptest::prelude::*;

use super::*;

fn id(i: usize) -> InstanceId {
    InstanceId::from_index(i).expect("instance id")
}

fn pages(n: usize) -> Vec<Page> {
    (0..region_size(n).div_ceil(mk_raw::PAGE))
        .map(|_| Page::filled(0))
        .collect()
}

/// Writes `w` into the owner word of `res`, as any instance can.
fn poke(raw: Raw<'_>, n: usize, res: Resource, w: u64) {
    let l = layout(n);
    let off = match res {
        Resource::Cpu(i) => l.cpus.offset + 8 * i as usize,
        Resource::Irq(i) => l.irqs.offset + 8 * i as usize,
        Resource::Memory(i) => l.memory.offset + 8 * i as usize,
    };
    raw.write(off, &w.to_le_bytes()).expect("in bounds");
}

const N: usize = 4;

/// Instances 1..=3 get CPUs 2k, 2k+1 and chunks 8k..8k+4; instance 0 CPUs 0, 1 and every IRQ
/// line below 24; both in the region and in the record; every instance running.
fn setup(r: &SharedRegion<'_>) -> Ledger {
    let mut l = Ledger::new(N, &(0..8).collect::<Vec<u32>>()).unwrap();
    for k in 0..N {
        for apic in [2 * k as u32, 2 * k as u32 + 1] {
            r.claim(Resource::Cpu(apic), id(k), None).unwrap();
            l.give(Resource::Cpu(apic), id(k)).unwrap();
        }
        if k > 0 {
            for c in 8 * k as u32..8 * k as u32 + 4 {
                r.claim(Resource::Memory(c), id(k), None).unwrap();
                l.give(Resource::Memory(c), id(k)).unwrap();
            }
            l.starting(id(k));
            l.started(id(k));
        }
    }
    for line in 0..24 {
        r.claim(Resource::Irq(line), id(0), None).unwrap();
        l.give(Resource::Irq(line), id(0)).unwrap();
    }
    l
}

#[test]
fn reclaim_by_record_undoes_forgeries_and_survives_corruption() {
    let mem = pages(N);
    let raw = Raw::from_pages(&mem);
    let r = SharedRegion::init(raw, N, 0).unwrap();
    let mut l = setup(&r);
    // Instance 2 forges: instance 1's CPU 2 and instance 0's CPU 0 and line 3 as its own;
    // one of its own chunks is garbage; another is "given" to instance 3 without a broker.
    for res in [Resource::Cpu(2), Resource::Cpu(0), Resource::Irq(3)] {
        r.overrule_owner(res, Owner::Owned(id(2))).unwrap();
    }
    poke(raw, N, Resource::Memory(17), u64::MAX);
    r.begin_transfer(Resource::Memory(18), id(2), id(3))
        .unwrap();
    l.declare_dead(id(2)).unwrap();
    // Item 1: only instance 2's own CPUs are stopped.
    assert_eq!(l.cpus_to_stop(id(2), &[0, 1]), [4, 5]);
    let out = l.reclaim(&r, id(2));
    assert_eq!(out.left, 0);
    assert_eq!(l.may_respawn(id(2)), Ok(()));
    // Its CPUs 4, 5 and chunks 16..20 came back (17 by overruling garbage).
    assert_eq!(
        (out.got.cpus(), out.got.memory_chunks(), out.got.corrupt),
        (2, 4, 0)
    );
    for res in [4, 5]
        .map(Resource::Cpu)
        .into_iter()
        .chain((16..20).map(Resource::Memory))
    {
        assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))), "{res:?}");
        assert_eq!(l.holder(res), Some(id(0)));
    }
    // The forgeries are undone, not obeyed.
    assert_eq!(r.owner(Resource::Cpu(2)), Ok(Owner::Owned(id(1))));
    assert_eq!(r.owner(Resource::Cpu(0)), Ok(Owner::Owned(id(0))));
    assert_eq!(r.owner(Resource::Irq(3)), Ok(Owner::Owned(id(0))));
    assert_eq!(l.holder(Resource::Cpu(2)), Some(id(1)));
    // One overrule (chunk 17) and three write-backs, each reported.
    assert_eq!(out.disagreements.len(), 4);
    assert!(out.disagreements.contains(&(
        Disagreement::Owner {
            resource: Resource::Cpu(2),
            record: Entry {
                holder: Some(id(1)),
                moving_to: None
            },
            word: Ok(Owner::Owned(id(2)))
        },
        Fix::WrittenBack(Owner::Owned(id(1)))
    )));
    assert_eq!(l.disagreements(), 4);
    // Nothing names instance 2 any more.
    assert!(r.resources().all(|(_, o)| match o {
        Ok(Owner::Owned(x)) => x != id(2),
        Ok(Owner::InTransit { from, to, .. }) => from != id(2) && to != id(2),
        _ => true,
    }));
}

#[test]
fn a_handoff_instance_0_had_in_flight_to_the_dead_instance_comes_back() {
    let mem = pages(N);
    let r = SharedRegion::init(Raw::from_pages(&mem), N, 0).unwrap();
    let mut l = setup(&r);
    let cpu = Resource::Cpu(1);
    l.start_handoff(cpu, id(3)).unwrap();
    r.begin_transfer(cpu, id(0), id(3)).unwrap();
    l.declare_dead(id(3)).unwrap();
    assert_eq!(l.cpus_to_stop(id(3), &[0]), [1, 6, 7]);
    let out = l.reclaim(&r, id(3));
    assert_eq!((out.left, out.got.rolled_back), (0, 1));
    assert_eq!(r.owner(cpu), Ok(Owner::Owned(id(0))));
    assert_eq!(
        l.entry(cpu),
        Some(Entry {
            holder: Some(id(0)),
            moving_to: None
        })
    );
}

/// A thread standing in for instance 1 forges words naming the dead instance 2 (and
/// garbage) in everything that is not instance 2's, as fast as it can, while instance 0
/// reclaims instance 2. Everything of instance 2's comes back, nothing of anyone else's is
/// taken, and once the forger stops one more pass leaves every word as the record says.
#[test]
fn reclaim_while_a_hostile_instance_forges() {
    let mem = pages(N);
    let raw = Raw::from_pages(&mem);
    let r = SharedRegion::init(raw, N, 0).unwrap();
    let mut l = setup(&r);
    l.declare_dead(id(2)).unwrap();
    let victims: Vec<Resource> = [0, 1, 2, 3, 6, 7]
        .map(Resource::Cpu)
        .into_iter()
        .chain((0..24).map(Resource::Irq))
        .chain((8..12).chain(24..28).map(Resource::Memory))
        .collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let res = victims[(x % victims.len() as u64) as usize];
                let w = match x % 3 {
                    0 => (2 << 8) | 1,             // Owned(2)
                    1 => (1 << 16) | (2 << 8) | 2, // InTransit{2 -> 1}
                    _ => x | 0xff,                 // garbage
                };
                poke(raw, N, res, w);
            }
        });
        for _ in 0..20 {
            let _ = l.reclaim(&r, id(2));
        }
        stop.store(true, Ordering::Relaxed);
    });
    // The forger has stopped: one more pass settles every word.
    let out = l.reclaim(&r, id(2));
    assert_eq!(out.left, 0);
    for res in [4, 5]
        .map(Resource::Cpu)
        .into_iter()
        .chain((16..20).map(Resource::Memory))
    {
        assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))), "{res:?}");
    }
    // The record of everyone else is untouched.
    for k in [0usize, 1, 3] {
        for apic in [2 * k as u32, 2 * k as u32 + 1] {
            assert_eq!(l.holder(Resource::Cpu(apic)), Some(id(k)));
        }
    }
    // Every word naming instance 2 was written back as the record says; garbage elsewhere
    // (not naming 2) is left for its owner's own checks, and counted nowhere here.
    for &res in &victims {
        match r.owner(res) {
            Ok(Owner::Owned(x)) => assert_ne!(x, id(2), "{res:?}"),
            Ok(Owner::InTransit { from, to, .. }) => {
                assert!(from != id(2) && to != id(2), "{res:?}")
            }
            _ => {}
        }
    }
    assert!(l.disagreements() > 0);
}

fn any_word() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        3 => Just(None),
        1 => (0..N as u64).prop_map(|k| Some((k << 8) | 1)),
        1 => (0..N as u64, 0..N as u64, any::<u32>())
            .prop_filter("distinct", |(a, b, _)| a != b)
            .prop_map(|(a, b, g)| Some((u64::from(g) << 32) | (b << 16) | (a << 8) | 2)),
        1 => any::<u64>().prop_map(Some),
    ]
}

proptest! {
    /// Whatever any word holds, reclaiming a dead instance leaves the record with nothing of
    /// it, every resource of its record `Owned(0)` in the region, no word naming it, and
    /// every other instance's record unchanged.
    #[test]
    fn reclaim_decides_by_the_record(
        words in proptest::collection::vec(any_word(), 8 + 24 + 32),
        dead in 1..N,
    ) {
        let mem = pages(N);
        let raw = Raw::from_pages(&mem);
        let r = SharedRegion::init(raw, N, 0).unwrap();
        let mut l = setup(&r);
        let all: Vec<Resource> = (0..8).map(Resource::Cpu)
            .chain((0..24).map(Resource::Irq))
            .chain((0..32).map(Resource::Memory))
            .collect();
        let before: Vec<Option<InstanceId>> = all.iter().map(|&res| l.holder(res)).collect();
        for (&res, w) in all.iter().zip(&words) {
            if let Some(w) = w {
                poke(raw, N, res, *w);
            }
        }
        l.declare_dead(id(dead)).unwrap();
        let out = l.reclaim(&r, id(dead));
        prop_assert_eq!(out.left, 0);
        for (i, &res) in all.iter().enumerate() {
            if before[i] == Some(id(dead)) {
                prop_assert_eq!(l.holder(res), Some(id(0)));
                prop_assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))));
            } else {
                prop_assert_eq!(l.holder(res), before[i]);
            }
            let names = match r.owner(res) {
                Ok(Owner::Owned(x)) => x == id(dead),
                Ok(Owner::InTransit { from, to, .. }) => from == id(dead) || to == id(dead),
                _ => false,
            };
            prop_assert!(!names, "{:?} still names the dead instance", res);
        }
    }
}
