use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn storage(frames: u64) -> Vec<u64> {
    vec![0xdead_beef; bitmap_words(frames)]
}

#[test]
fn bitmap_words_sizes() {
    assert_eq!(bitmap_words(0), 0);
    assert_eq!(bitmap_words(1), 2);
    assert_eq!(bitmap_words(64), 2);
    assert_eq!(bitmap_words(65), 4);
    // 64 GiB of 4 KiB frames at 2 bits per frame: 4 MiB of storage.
    assert_eq!(bitmap_words((64 << 30) / FRAME_SIZE) * 8, 4 << 20);
    assert_eq!(bitmap_words(u64::MAX), (u64::MAX.div_ceil(64) * 2) as usize);
}

#[test]
fn frame_addresses() {
    assert_eq!(Frame::containing_address(0x1234_5fff).number(), 0x12345);
    assert_eq!(Frame::new(0x12345).start_address(), 0x1234_5000);
}

#[test]
fn new_checks_storage_and_starts_empty() {
    let mut small = vec![0u64; 3];
    assert_eq!(
        FrameAllocator::new(&mut small, 0, 129).unwrap_err(),
        FrameError::StorageTooSmall { needed: 6, have: 3 }
    );
    assert_eq!(
        FrameAllocator::new(&mut small, u64::MAX, 2).unwrap_err(),
        FrameError::OutOfRange
    );
    let mut s = storage(100);
    let mut a = FrameAllocator::new(&mut s, 10, 100).unwrap();
    assert_eq!(a.owned_count(), 0);
    assert_eq!(a.free_count(), 0);
    assert_eq!(a.alloc(), None);
    assert_eq!(a.alloc_contiguous(1, 1), None);
    assert_eq!(a.owned_ranges().count(), 0);
    assert_eq!(
        a.coverage(),
        FrameRange {
            start: 10,
            count: 100
        }
    );
    for f in 0..200 {
        assert!(!a.is_owned(Frame(f)) && !a.is_allocated(Frame(f)) && !a.is_free(Frame(f)));
    }
}

#[test]
fn zero_coverage() {
    let mut s: [u64; 0] = [];
    let mut a = FrameAllocator::new(&mut s, 5, 0).unwrap();
    assert_eq!(a.alloc(), None);
    assert_eq!(a.add_range(5, 1), Err(FrameError::OutOfRange));
    assert_eq!(a.add_range(5, 0), Ok(()));
}

#[test]
fn allocate_everything_is_unique() {
    let n = 64 * 40 + 17;
    let mut s = storage(n);
    let mut a = FrameAllocator::new(&mut s, 0x100, n).unwrap();
    // Several disjoint ranges with holes in between.
    a.add_range(0x100, 100).unwrap();
    a.add_range(0x100 + 130, 1000).unwrap();
    a.add_range(0x100 + 1200, n - 1200).unwrap();
    let owned = a.owned_count();
    assert_eq!(owned, 100 + 1000 + n - 1200);
    let mut seen = HashSet::new();
    while let Some(f) = a.alloc() {
        assert!(a.is_allocated(f));
        assert!(seen.insert(f), "frame {f:?} handed out twice");
    }
    assert_eq!(seen.len() as u64, owned);
    assert_eq!(a.free_count(), 0);
    assert_eq!(a.allocated_count(), owned);
    // Free half, reallocate: still unique and exactly the freed ones come back.
    let freed: HashSet<Frame> = seen.iter().copied().filter(|f| f.0 % 2 == 0).collect();
    for &f in &freed {
        a.free(f).unwrap();
    }
    let mut again = HashSet::new();
    while let Some(f) = a.alloc() {
        assert!(again.insert(f));
    }
    assert_eq!(again, freed);
}

#[test]
fn double_free_and_foreign_free_rejected() {
    let mut s = storage(256);
    let mut a = FrameAllocator::new(&mut s, 1000, 256).unwrap();
    a.add_range(1000, 10).unwrap();
    let f = a.alloc().unwrap();
    assert_eq!(a.free(f), Ok(()));
    assert_eq!(a.free(f), Err(FrameError::NotAllocated));
    assert_eq!(a.free(Frame(1010)), Err(FrameError::NotOwned)); // covered, not owned
    assert_eq!(a.free(Frame(999)), Err(FrameError::NotOwned)); // below coverage
    assert_eq!(a.free(Frame(1256)), Err(FrameError::NotOwned)); // above coverage
    assert_eq!(a.free(Frame(u64::MAX)), Err(FrameError::NotOwned));
    assert_eq!(a.free_count(), 10);
    // free_range is all or nothing.
    let b = a.alloc_contiguous(4, 1).unwrap();
    assert_eq!(a.free_range(b.0, 5), Err(FrameError::NotAllocated));
    assert_eq!(a.free_count(), 6);
    a.free_range(b.0, 4).unwrap();
    assert_eq!(a.free_count(), 10);
}

#[test]
fn add_range_errors() {
    let mut s = storage(128);
    let mut a = FrameAllocator::new(&mut s, 64, 128).unwrap();
    assert_eq!(a.add_range(63, 2), Err(FrameError::OutOfRange));
    assert_eq!(a.add_range(190, 3), Err(FrameError::OutOfRange));
    assert_eq!(a.add_range(100, u64::MAX), Err(FrameError::OutOfRange));
    a.add_range(100, 20).unwrap();
    assert_eq!(a.add_range(119, 5), Err(FrameError::AlreadyOwned));
    assert_eq!(a.add_range(90, 11), Err(FrameError::AlreadyOwned));
    assert_eq!(a.add_range(100, 20), Err(FrameError::AlreadyOwned));
    // An allocated frame is owned too.
    let f = a.alloc().unwrap();
    assert_eq!(a.add_range(f.0, 1), Err(FrameError::AlreadyOwned));
    assert_eq!(a.owned_count(), 20);
    a.add_range(64, 36).unwrap();
    a.add_range(120, 72).unwrap();
    assert_eq!(a.owned_count(), 128);
    assert_eq!(
        a.owned_ranges().collect::<Vec<_>>(),
        [FrameRange {
            start: 64,
            count: 128
        }]
    );
}

#[test]
fn remove_range_refused_when_in_use_or_not_owned() {
    let mut s = storage(300);
    let mut a = FrameAllocator::new(&mut s, 0, 300).unwrap();
    a.add_range(0, 200).unwrap();
    a.alloc_range(150, 1).unwrap();
    assert_eq!(a.remove_range(100, 100), Err(FrameError::InUse));
    assert_eq!(a.remove_range(150, 1), Err(FrameError::InUse));
    assert_eq!(a.remove_range(190, 20), Err(FrameError::NotOwned));
    assert_eq!(a.remove_range(250, 1000), Err(FrameError::NotOwned));
    // Nothing changed.
    assert_eq!(a.owned_count(), 200);
    assert_eq!(a.free_count(), 199);
    a.free(Frame(150)).unwrap();
    a.remove_range(100, 100).unwrap();
    assert_eq!(a.owned_count(), 100);
    assert_eq!(a.free_count(), 100);
    assert!(!a.is_owned(Frame(150)));
    assert_eq!(a.free(Frame(150)), Err(FrameError::NotOwned));
    assert_eq!(a.alloc_range(150, 1), Err(FrameError::NotOwned));
    // Allocation never hands out removed frames.
    while let Some(f) = a.alloc() {
        assert!(f.0 < 100);
    }
}

#[test]
fn add_remove_round_trip() {
    let mut s = storage(1000);
    let mut a = FrameAllocator::new(&mut s, 5000, 1000).unwrap();
    for round in 0..5u64 {
        let start = 5000 + round * 37;
        a.add_range(start, 500).unwrap();
        assert_eq!(
            a.owned_ranges().collect::<Vec<_>>(),
            [FrameRange { start, count: 500 }]
        );
        assert_eq!(
            a.free_ranges().collect::<Vec<_>>(),
            [FrameRange { start, count: 500 }]
        );
        let b = a.alloc_contiguous(10, 8).unwrap();
        assert_eq!(a.free_ranges().count(), if b.0 == start { 1 } else { 2 });
        assert_eq!(a.remove_range(start, 500), Err(FrameError::InUse));
        a.free_range(b.0, 10).unwrap();
        a.remove_range(start, 500).unwrap();
        assert_eq!(a.owned_count(), 0);
        assert_eq!(a.owned_ranges().count(), 0);
    }
}

#[test]
fn contiguous_alignment() {
    let mut s = storage(4096);
    let mut a = FrameAllocator::new(&mut s, 3, 4096).unwrap();
    a.add_range(3, 4096).unwrap();
    // 2 MiB huge-page block: physical frame number aligned to 512.
    let b = a.alloc_contiguous(512, 512).unwrap();
    assert_eq!(b.0 % 512, 0);
    assert_eq!(b.0, 512);
    assert_eq!(a.free_count(), 4096 - 512);
    for f in b.0..b.0 + 512 {
        assert!(a.is_allocated(Frame(f)));
    }
    // Next one skips the allocated block.
    let c = a.alloc_contiguous(600, 512).unwrap();
    assert_eq!(c.0, 1024);
    // Unaligned request fits below the first block.
    let d = a.alloc_contiguous(509, 1).unwrap();
    assert_eq!(d.0, 3);
    assert_eq!(a.alloc_contiguous(1, 0), Some(Frame(1624)));
    assert_eq!(a.alloc_contiguous(0, 1), None);
    assert_eq!(a.alloc_contiguous(4096, 1), None);
    // The last covered frame is 3 + 4096 - 1 = 4098: one 2048-aligned block of 2048 fits.
    assert_eq!(a.alloc_contiguous(2048, 2048), Some(Frame(2048)));
    assert_eq!(a.alloc_contiguous(2048, 2048), None);
    assert_eq!(a.alloc_contiguous(2, 1), Some(Frame(1625)));
    assert_eq!(a.alloc_contiguous(1, u64::MAX), None);
}

#[test]
fn next_fit_cursor_moves_on() {
    let mut s = storage(256);
    let mut a = FrameAllocator::new(&mut s, 0, 256).unwrap();
    a.add_range(0, 256).unwrap();
    let first: Vec<_> = (0..100).map(|_| a.alloc().unwrap().0).collect();
    assert_eq!(first, (0..100).collect::<Vec<_>>());
    // Freeing a low frame does not pull the cursor back...
    a.free(Frame(0)).unwrap();
    assert_eq!(a.alloc(), Some(Frame(100)));
    // ...but the search wraps around when the top is exhausted.
    for _ in 101..256 {
        a.alloc().unwrap();
    }
    assert_eq!(a.alloc(), Some(Frame(0)));
    assert_eq!(a.alloc(), None);
}

#[test]
fn storage_larger_than_needed_and_dirty() {
    let mut s = vec![u64::MAX; 100];
    let mut a = FrameAllocator::new(&mut s, 0, 70).unwrap();
    assert_eq!(a.owned_count(), 0);
    assert_eq!(a.alloc(), None);
    a.add_range(0, 70).unwrap();
    assert_eq!((0..70).filter_map(|_| a.alloc()).count(), 70);
    assert_eq!(a.alloc(), None);
}

// ---- model-based property test ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotOwned,
    Free,
    Allocated,
}

#[derive(Clone, Debug)]
enum Op {
    Add(u64, u64),
    Remove(u64, u64),
    Alloc,
    AllocContiguous(u64, u64),
    AllocRange(u64, u64),
    Free(u64),
    FreeRange(u64, u64),
}

const BASE: u64 = 1000;
const N: u64 = 64 * 3 + 13;

fn op() -> impl Strategy<Value = Op> {
    // Frame numbers slightly outside the coverage too.
    let frame = BASE - 8..BASE + N + 8;
    prop_oneof![
        1 => (frame.clone(), 0..80u64).prop_map(|(s, c)| Op::Add(s, c)),
        1 => (frame.clone(), 0..40u64).prop_map(|(s, c)| Op::Remove(s, c)),
        4 => Just(Op::Alloc),
        1 => (0..40u64, prop_oneof![Just(0u64), Just(1), Just(2), Just(8), Just(64), Just(3)])
            .prop_map(|(c, a)| Op::AllocContiguous(c, a)),
        1 => (frame.clone(), 0..8u64).prop_map(|(s, c)| Op::AllocRange(s, c)),
        3 => frame.clone().prop_map(Op::Free),
        1 => (frame, 0..8u64).prop_map(|(s, c)| Op::FreeRange(s, c)),
    ]
}

struct Model(Vec<State>);

impl Model {
    fn get(&self, f: u64) -> State {
        if (BASE..BASE + N).contains(&f) {
            self.0[(f - BASE) as usize]
        } else {
            State::NotOwned
        }
    }
    fn range(&self, s: u64, c: u64) -> Vec<State> {
        (s..s + c).map(|f| self.get(f)).collect()
    }
    fn set(&mut self, s: u64, c: u64, st: State) {
        for f in s..s + c {
            self.0[(f - BASE) as usize] = st;
        }
    }
    fn covered(s: u64, c: u64) -> bool {
        s >= BASE && s + c <= BASE + N
    }
    /// Expected result of a range operation that requires every frame to be in `need`,
    /// reporting `NotOwned` first and `other` if owned but in the wrong state.
    fn check(&self, s: u64, c: u64, need: State, other: FrameError) -> Result<(), FrameError> {
        if c == 0 {
            return Ok(());
        }
        if !Self::covered(s, c) {
            return Err(FrameError::NotOwned);
        }
        let r = self.range(s, c);
        if r.contains(&State::NotOwned) {
            Err(FrameError::NotOwned)
        } else if r.iter().any(|&x| x != need) {
            Err(other)
        } else {
            Ok(())
        }
    }
}

fn apply(a: &mut FrameAllocator<'_>, m: &mut Model, op: &Op) {
    match *op {
        Op::Add(s, c) => {
            let want = if c == 0 {
                Ok(())
            } else if !Model::covered(s, c) {
                Err(FrameError::OutOfRange)
            } else if m.range(s, c).iter().any(|&x| x != State::NotOwned) {
                Err(FrameError::AlreadyOwned)
            } else {
                Ok(())
            };
            assert_eq!(a.add_range(s, c), want, "{op:?}");
            if want.is_ok() && c > 0 {
                m.set(s, c, State::Free);
            }
        }
        Op::Remove(s, c) => {
            let want = m.check(s, c, State::Free, FrameError::InUse);
            assert_eq!(a.remove_range(s, c), want, "{op:?}");
            if want.is_ok() && c > 0 {
                m.set(s, c, State::NotOwned);
            }
        }
        Op::AllocRange(s, c) => {
            let want = m.check(s, c, State::Free, FrameError::InUse);
            assert_eq!(a.alloc_range(s, c), want, "{op:?}");
            if want.is_ok() && c > 0 {
                m.set(s, c, State::Allocated);
            }
        }
        Op::FreeRange(s, c) => {
            let want = m.check(s, c, State::Allocated, FrameError::NotAllocated);
            assert_eq!(a.free_range(s, c), want, "{op:?}");
            if want.is_ok() && c > 0 {
                m.set(s, c, State::Free);
            }
        }
        Op::Free(f) => {
            let want = m.check(f, 1, State::Allocated, FrameError::NotAllocated);
            assert_eq!(a.free(Frame(f)), want, "{op:?}");
            if want.is_ok() {
                m.set(f, 1, State::Free);
            }
        }
        Op::Alloc => match a.alloc() {
            Some(f) => {
                assert_eq!(
                    m.get(f.0),
                    State::Free,
                    "alloc handed out {f:?} which is not free"
                );
                m.set(f.0, 1, State::Allocated);
            }
            None => assert!(
                !m.0.contains(&State::Free),
                "alloc failed with free frames left"
            ),
        },
        Op::AllocContiguous(c, align) => {
            let fits = |s: u64| {
                s.is_multiple_of(align.max(1))
                    && Model::covered(s, c)
                    && m.range(s, c).iter().all(|&x| x == State::Free)
            };
            // First fit: the lowest aligned free run.
            let want = if c == 0 {
                None
            } else {
                (BASE..BASE + N).find(|&s| fits(s))
            };
            let got = a.alloc_contiguous(c, align);
            assert_eq!(got.map(Frame::number), want, "{op:?}");
            if let Some(s) = want {
                m.set(s, c, State::Allocated);
            }
        }
    }
}

fn check_consistent(a: &FrameAllocator<'_>, m: &Model) {
    let free = m.0.iter().filter(|&&x| x == State::Free).count() as u64;
    let allocated = m.0.iter().filter(|&&x| x == State::Allocated).count() as u64;
    assert_eq!(a.free_count(), free);
    assert_eq!(a.allocated_count(), allocated);
    assert_eq!(a.owned_count(), free + allocated);
    for f in BASE - 2..BASE + N + 2 {
        let st = m.get(f);
        assert_eq!(a.is_owned(Frame(f)), st != State::NotOwned);
        assert_eq!(a.is_free(Frame(f)), st == State::Free);
        assert_eq!(a.is_allocated(Frame(f)), st == State::Allocated);
    }
    // Owned ranges: maximal, ascending, and exactly the owned frames.
    let mut covered = 0;
    let mut last_end = None;
    for r in a.owned_ranges() {
        assert!(r.count > 0);
        if let Some(e) = last_end {
            assert!(r.start > e, "runs not maximal/ascending");
        }
        for f in r.start..r.end() {
            assert_ne!(m.get(f), State::NotOwned);
        }
        covered += r.count;
        last_end = Some(r.end());
    }
    assert_eq!(covered, free + allocated);
    assert_eq!(a.free_ranges().map(|r| r.count).sum::<u64>(), free);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut s = storage(N);
        let mut a = FrameAllocator::new(&mut s, BASE, N).unwrap();
        let mut m = Model(vec![State::NotOwned; N as usize]);
        for op in &ops {
            apply(&mut a, &mut m, op);
            check_consistent(&a, &m);
        }
    }

    #[test]
    fn never_hands_out_a_frame_twice(
        ranges in prop::collection::vec((0..N, 1..64u64), 1..10),
        frees in prop::collection::vec(prop::arbitrary::any::<prop::sample::Index>(), 0..200),
    ) {
        let mut s = storage(N);
        let mut a = FrameAllocator::new(&mut s, BASE, N).unwrap();
        for (start, count) in ranges {
            let _ = a.add_range(BASE + start, count.min(N - start));
        }
        let mut live: Vec<Frame> = Vec::new();
        let mut set = HashSet::new();
        for (i, idx) in frees.iter().enumerate() {
            if i % 3 != 2 || live.is_empty() {
                if let Some(f) = a.alloc() {
                    prop_assert!(set.insert(f), "frame {:?} handed out twice", f);
                    live.push(f);
                }
            } else {
                let f = live.swap_remove(idx.index(live.len()));
                set.remove(&f);
                a.free(f).unwrap();
                prop_assert_eq!(a.free(f), Err(FrameError::NotAllocated));
            }
        }
        while let Some(f) = a.alloc() {
            prop_assert!(set.insert(f));
        }
        prop_assert_eq!(set.len() as u64, a.owned_count());
    }
}
