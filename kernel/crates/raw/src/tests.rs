//! Host tests of the bounds, alignment and carving checks.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use proptest::prelude::*;

use super::*;

crate::atomic_struct! {
    #[repr(C, align(64))]
    /// A test line.
    #[derive(Debug)]
    struct Line {
        a: AtomicU64,
        b: [AtomicU32; 2],
    }
}

crate::atomic_struct! {
    #[repr(C)]
    struct Pair(AtomicU32, pub AtomicU32);
}

fn pages(n: usize) -> Vec<Page> {
    (0..n).map(|_| Page::default()).collect()
}

#[test]
fn new_rejects_null_and_wrapping() {
    // SAFETY: both calls fail before the memory could be used.
    let e = unsafe { Raw::new(core::ptr::null_mut(), 8) }.unwrap_err();
    assert_eq!(e, Error::Null);
    let p = core::ptr::without_provenance_mut::<u8>(usize::MAX - 7);
    // SAFETY: as above.
    let e = unsafe { Raw::new(p, 16) }.unwrap_err();
    assert_eq!(
        e,
        Error::RegionTooSmall {
            need: usize::MAX,
            have: 16
        }
    );
}

#[test]
fn typed_views_share_memory() {
    let mem = pages(2);
    let raw = Raw::from_pages(&mem);
    assert_eq!(raw.len(), 2 * PAGE);
    assert!(raw.is_aligned_to(PAGE));
    let line: &Line = raw.at(64).unwrap();
    line.a.store(0x0102_0304_0506_0708, Ordering::Relaxed);
    line.b[1].store(7, Ordering::Relaxed);
    let bytes: &[AtomicU8] = raw.slice(64, 16).unwrap();
    assert_eq!(bytes[0].load(Ordering::Relaxed), 8);
    assert_eq!(bytes[12].load(Ordering::Relaxed), 7);
    let sub = raw.sub(64, 64).unwrap();
    let pair: &Pair = sub.at(8).unwrap();
    assert_eq!(pair.1.load(Ordering::Relaxed), 7);
    let _ = &pair.0;
    // The same memory through another window.
    let words: &[AtomicU64] = raw.sub(32, PAGE).unwrap().slice(32, 1).unwrap();
    assert_eq!(words[0].load(Ordering::Relaxed), 0x0102_0304_0506_0708);
}

#[test]
fn bounds_and_alignment() {
    let mem = pages(1);
    let raw = Raw::from_pages(&mem);
    assert_eq!(
        raw.at::<Line>(PAGE - 32).unwrap_err(),
        Error::RegionTooSmall {
            need: PAGE + 32,
            have: PAGE
        }
    );
    assert_eq!(raw.at::<Line>(32).unwrap_err(), Error::Misaligned);
    assert_eq!(raw.at::<AtomicU64>(4).unwrap_err(), Error::Misaligned);
    assert_eq!(
        raw.slice::<AtomicU64>(8, usize::MAX).unwrap_err(),
        Error::RegionTooSmall {
            need: usize::MAX,
            have: PAGE
        }
    );
    assert_eq!(
        raw.sub(PAGE, 1).unwrap_err(),
        Error::RegionTooSmall {
            need: PAGE + 1,
            have: PAGE
        }
    );
    assert!(raw.sub(PAGE, 0).unwrap().is_empty());
    assert_eq!(raw.ensure_len(PAGE), Ok(()));
    assert_eq!(
        raw.ensure_len(PAGE + 1),
        Err(Error::RegionTooSmall {
            need: PAGE + 1,
            have: PAGE
        })
    );
    assert_eq!(raw.ensure_aligned(PAGE), Ok(()));
    let odd = raw.sub(8, 64).unwrap();
    assert_eq!(odd.ensure_aligned(16), Err(Error::Misaligned));
    assert!(odd.is_aligned_to(8) && !odd.is_aligned_to(16));
    assert_eq!(odd.at::<Line>(0).unwrap_err(), Error::Misaligned);
    assert!(odd.at::<Line>(56).is_err());
}

#[test]
fn zero_clears_every_byte() {
    let mem: Vec<Page> = (0..2).map(|_| Page::filled(0xa5)).collect();
    let raw = Raw::from_pages(&mem);
    raw.sub(3, 2 * PAGE - 10).unwrap().zero();
    let all: &[AtomicU8] = raw.slice(0, 2 * PAGE).unwrap();
    for (i, b) in all.iter().enumerate() {
        let want = if (3..2 * PAGE - 7).contains(&i) {
            0
        } else {
            0xa5
        };
        assert_eq!(b.load(Ordering::Relaxed), want, "byte {i}");
    }
}

#[test]
fn write_then_read() {
    let mem = pages(1);
    let raw = Raw::from_pages(&mem).sub(1, 100).unwrap();
    raw.write(90, &[1, 2, 3]).unwrap();
    assert!(raw.write(98, &[1, 2, 3]).is_err());
    let mut got = [0u8; 5];
    raw.read(89, &mut got).unwrap();
    assert_eq!(got, [0, 1, 2, 3, 0]);
    assert!(raw.read(96, &mut got).is_err());
}

#[test]
fn plain_bytes() {
    let mem = pages(1);
    let raw = Raw::from_pages(&mem);
    // SAFETY: this test is the only user of `mem`, and no other reference into these bytes
    // lives while the slice does.
    let b = unsafe { raw.bytes_mut(100, 10) }.unwrap();
    b.fill(9);
    // SAFETY: as above; `b` is dead.
    let r = unsafe { raw.bytes(100, 11) }.unwrap();
    assert_eq!(r, &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0]);
    // SAFETY: the call fails its bounds check.
    assert!(unsafe { raw.bytes(PAGE - 1, 2) }.is_err());
}

proptest! {
    /// Every access either fails or lies inside the view, aligned, and never panics.
    #[test]
    fn checked_access(sub_off in 0usize..2 * PAGE + 8, sub_len in 0usize..3 * PAGE,
                      off in 0usize..3 * PAGE, count in 0usize..1024) {
        let mem = pages(2);
        let raw = Raw::from_pages(&mem);
        let base = mem.as_ptr().addr();
        match raw.sub(sub_off, sub_len) {
            Err(Error::RegionTooSmall { need, have }) => {
                prop_assert_eq!(have, 2 * PAGE);
                prop_assert!(need > have && sub_off + sub_len == need);
            }
            Err(e) => prop_assert!(false, "{:?}", e),
            Ok(sub) => {
                prop_assert!(sub_off + sub_len <= 2 * PAGE);
                match sub.slice::<AtomicU64>(off, count) {
                    Ok(s) => {
                        let start = s.as_ptr().addr();
                        prop_assert_eq!(start, base + sub_off + off);
                        prop_assert!(start % 8 == 0);
                        prop_assert!(off + 8 * count <= sub_len);
                    }
                    Err(Error::Misaligned) => prop_assert!((sub_off + off) % 8 != 0),
                    Err(Error::RegionTooSmall { need, have }) => {
                        prop_assert_eq!(have, sub_len);
                        prop_assert_eq!(need, off + 8 * count);
                        prop_assert!(need > have);
                    }
                    Err(Error::Null) => prop_assert!(false),
                }
            }
        }
    }
}

#[test]
fn word_copies_move_exactly_the_shorter_length() {
    let shared: [AtomicU64; 8] = core::array::from_fn(|_| AtomicU64::new(7));
    let src: Vec<u8> = (1..=43).collect(); // 5 whole words and 3 bytes
    copy_to_words(&shared, &src);
    let now: Vec<u64> = shared.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    for (i, w) in now[..5].iter().enumerate() {
        assert_eq!(w.to_ne_bytes(), src[8 * i..8 * i + 8]);
    }
    assert_eq!(&now[5..], &[7, 7, 7]);
    let mut out = [0u8; 20]; // 2 whole words
    copy_from_words(&mut out, &shared);
    assert_eq!(out[..16], src[..16]);
    assert_eq!(out[16..], [0; 4]);
    let mut long = [9u8; 80];
    copy_from_words(&mut long[1..], &shared); // unaligned destination, 8 words fit
    assert_eq!(long[0], 9);
    assert_eq!(long[1..41], src[..40]);
    assert_eq!(long[41..49], 7u64.to_ne_bytes());
    assert_eq!(long[65..], [9; 15]);
}

/// A copy out of words another thread keeps rewriting sees each word whole (old or new, never
/// torn), as `Relaxed` loads would.
#[test]
fn word_copies_never_tear_a_word() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let shared: Arc<[AtomicU64; 32]> = Arc::new(core::array::from_fn(|_| AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut byte = 0u8;
            while !stop.load(Ordering::Relaxed) {
                byte = byte.wrapping_add(1);
                copy_to_words(&shared[..], &[byte; 256]);
            }
        })
    };
    for _ in 0..20_000 {
        let mut out = [0u8; 256];
        copy_from_words(&mut out, &shared[..]);
        for w in out.as_chunks::<8>().0 {
            assert!(w.iter().all(|&x| x == w[0]), "torn word {w:x?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}
