use proptest::prelude::*;

use super::*;

const RATE: Rate = Rate {
    burst: 4,
    ticks_per_token: 10,
};

#[test]
fn a_burst_then_one_per_token() {
    let b = Bucket::new();
    for _ in 0..4 {
        assert_eq!(b.admit(100, RATE), Verdict::Take);
    }
    assert_eq!(b.admit(100, RATE), Verdict::Drop { first: true });
    assert_eq!(b.admit(105, RATE), Verdict::Drop { first: false });
    assert_eq!(b.dropped(), 2);
    assert_eq!(b.floods(), 1);
    // One token after 10 ticks.
    assert_eq!(b.admit(110, RATE), Verdict::Take);
    assert_eq!(b.admit(111, RATE), Verdict::Drop { first: true });
    assert_eq!(b.floods(), 2);
    // A long pause refills to the burst, not beyond.
    for _ in 0..4 {
        assert!(b.admit(10_000, RATE).taken());
    }
    assert!(!b.admit(10_000, RATE).taken());
}

#[test]
fn a_clock_going_back_credits_nothing() {
    let b = Bucket::new();
    for _ in 0..4 {
        assert!(b.admit(1_000, RATE).taken());
    }
    assert!(!b.admit(10, RATE).taken());
    assert!(!b.admit(1_005, RATE).taken());
    assert!(b.admit(1_010, RATE).taken());
}

#[test]
fn an_unlimited_rate_takes_everything() {
    let b = Bucket::new();
    let r = Rate {
        burst: 0,
        ticks_per_token: 0,
    };
    for t in 0..1000 {
        assert!(b.admit(t, r).taken());
    }
    assert_eq!(b.dropped(), 0);
}

#[test]
fn rate_from_micros() {
    // 50 µs at 2,000,000 ticks per ms: 100,000 ticks.
    assert_eq!(Rate::per_micros(8, 50, 2_000_000).ticks_per_token, 100_000);
    assert_eq!(
        Rate::per_micros(8, u64::MAX, 2).ticks_per_token,
        u64::MAX / 1000
    );
}

#[test]
fn forged_ticks_between_real_ones_are_dropped() {
    let g = TickGate::new();
    let period = 1000;
    let mut taken = 0;
    // Real ticks every 1000, forged ones every 7 in between.
    for t in (0..100_000u64).step_by(7) {
        if g.admit(t, period / 2).taken() {
            taken += 1;
        }
    }
    // At most one per half period.
    assert!(taken <= 100_000 / 500 + 1, "{taken}");
    assert!(g.dropped() > 10_000);
}

#[test]
fn real_ticks_alone_all_pass() {
    let g = TickGate::new();
    for i in 0..1000u64 {
        assert!(g.admit(i * 1000, 500).taken());
    }
    assert_eq!(g.dropped(), 0);
    // A clock that went back still takes the tick.
    assert!(g.admit(10, 500).taken());
}

#[test]
fn reports_at_most_once_per_period() {
    let e = Every::new();
    assert_eq!(e.check(100, 50), Some(0));
    assert_eq!(e.check(120, 50), None);
    assert_eq!(e.check(149, 50), None);
    assert_eq!(e.check(150, 50), Some(2));
    assert_eq!(e.check(151, 50), None);
    // A clock behind the last report reports (never silent for good).
    assert_eq!(e.check(10, 50), Some(1));
}

fn plan() -> Book {
    let mut b = Book::new();
    for (k, cpus) in [(0u16, &[0u32][..]), (1, &[1, 2]), (2, &[3]), (3, &[6])] {
        for &c in cpus {
            b.record(k, c).unwrap();
        }
    }
    b
}

#[test]
fn doorbells_go_only_to_the_plans_cpus_of_the_target() {
    let b = plan();
    assert_eq!(b.target(1, Some(1)), Ok(1));
    assert_eq!(b.target(1, Some(2)), Ok(2));
    assert_eq!(
        b.target(2, Some(0xFF)),
        Err(Refusal::Broadcast { published: 0xFF })
    );
    assert_eq!(
        b.target(2, Some(u32::MAX)),
        Err(Refusal::Broadcast {
            published: u32::MAX
        })
    );
    assert_eq!(
        b.target(2, Some(1)),
        Err(Refusal::NotInPlan {
            published: 1,
            owner: Some(1)
        })
    );
    assert_eq!(
        b.target(2, Some(4)),
        Err(Refusal::NotInPlan {
            published: 4,
            owner: None
        })
    );
    assert_eq!(b.target(2, None), Err(Refusal::NothingPublished));
    assert_eq!(Book::new().target(1, Some(1)), Err(Refusal::NoPlan));
}

#[test]
fn a_bad_plan_is_refused() {
    let mut b = plan();
    assert_eq!(b.record(2, 0xFF), Err(BookError::Broadcast(0xFF)));
    assert_eq!(
        b.record(2, 1),
        Err(BookError::Twice {
            apic: 1,
            first: 1,
            second: 2
        })
    );
    assert_eq!(b.record(1, 1), Ok(()));
    let mut full = Book::new();
    for c in 0..BOOK_CPUS as u32 {
        full.record(1, c + 1000).unwrap();
    }
    assert_eq!(full.record(1, 5), Err(BookError::Full));
}

proptest! {
    /// Whatever a peer publishes, a doorbell goes only to an APIC ID the plan gave it, never
    /// to a broadcast.
    #[test]
    fn target_is_in_the_targets_plan(
        parts in proptest::collection::vec(proptest::collection::vec(0u32..300, 1..6), 1..8),
        k in 0u16..8,
        published in proptest::option::of(prop_oneof![0u32..300, Just(0xFF), Just(u32::MAX)]),
    ) {
        let mut b = Book::new();
        let mut given = std::collections::HashMap::new();
        for (i, cpus) in parts.iter().enumerate() {
            for &c in cpus {
                if b.record(i as u16, c).is_ok() {
                    given.insert(c, i as u16);
                }
            }
        }
        match b.target(k, published) {
            Ok(apic) => {
                prop_assert_eq!(Some(apic), published);
                prop_assert!(apic != 0xFF && apic != u32::MAX);
                prop_assert_eq!(given.get(&apic), Some(&k));
            }
            Err(_) => prop_assert!(
                published.is_none_or(|p| given.get(&p) != Some(&k) || p == 0xFF)
            ),
        }
    }

    /// However the interrupts come, a bucket takes no more than its burst plus one per token
    /// of elapsed time.
    #[test]
    fn bucket_takes_at_most_its_rate(
        gaps in proptest::collection::vec(0u64..50, 1..2000),
        burst in 1u64..20,
        per in 1u64..40,
    ) {
        let b = Bucket::new();
        let rate = Rate { burst, ticks_per_token: per };
        let (mut now, mut taken) = (1_000u64, 0u64);
        let start = now;
        for g in gaps {
            now += g;
            if b.admit(now, rate).taken() {
                taken += 1;
            }
        }
        prop_assert!(taken <= burst + (now - start) / per, "{} > {} + {}", taken, burst, (now - start) / per);
    }

    /// A gate never drops a tick that comes a whole `min_gap` after the last one taken.
    #[test]
    fn tick_gate_spacing(gaps in proptest::collection::vec(0u64..100, 1..500), min_gap in 1u64..60) {
        let g = TickGate::new();
        let mut now = 1u64;
        let mut last_taken: Option<u64> = None;
        for d in gaps {
            now += d;
            let v = g.admit(now, min_gap);
            match last_taken {
                Some(l) if now - l < min_gap => prop_assert!(!v.taken()),
                _ => prop_assert!(v.taken()),
            }
            if v.taken() {
                last_taken = Some(now);
            }
        }
    }
}
