//! Host tests: threads stand in for instances, a page-aligned heap buffer for shared memory.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;

use mk_pool::{Error, Lease, MAGIC, Owner, PAGE, Pool, VERSION, region_size};
use mk_raw::{Page, Raw};

/// Page-aligned memory standing in for the shared region, filled with garbage, to show init
/// does not depend on zeroed memory.
struct Region {
    mem: Vec<Page>,
}

impl Region {
    fn new(bytes: usize) -> Self {
        Self {
            mem: (0..bytes.div_ceil(PAGE))
                .map(|_| Page::filled(0xa5))
                .collect(),
        }
    }
    fn raw(&self) -> Raw<'_> {
        Raw::from_pages(&self.mem)
    }
    fn len(&self) -> usize {
        self.raw().len()
    }
}

fn init(r: &Region, pages: u32) -> Pool<'_> {
    Pool::init(r.raw(), pages).unwrap()
}

fn attach(r: &Region) -> Result<Pool<'_>, Error> {
    Pool::attach(r.raw())
}

/// The run's bytes, shared.
///
/// # Safety
///
/// As for [`Raw::bytes`]: nobody writes the pages while the slice lives.
unsafe fn bytes<'a>(p: &Pool<'a>, first: u32, pages: u32) -> Result<&'a [u8], Error> {
    let d = p.data(first, pages)?;
    // SAFETY: forwarded from this function's contract.
    Ok(unsafe { d.bytes(0, d.len()) }.unwrap())
}

/// The run's bytes, exclusive.
///
/// # Safety
///
/// As for [`Raw::bytes_mut`]: nothing else touches the pages while the slice lives.
unsafe fn bytes_mut<'a>(p: &Pool<'a>, first: u32, pages: u32) -> Result<&'a mut [u8], Error> {
    let d = p.data(first, pages)?;
    // SAFETY: forwarded from this function's contract.
    Ok(unsafe { d.bytes_mut(0, d.len()) }.unwrap())
}

/// Fills `buf` with a pattern derived from `seed`; the last 8 bytes are a checksum.
fn fill(buf: &mut [u8], seed: u64) {
    let n = buf.len() - 8;
    let mut x = seed | 1;
    for b in &mut buf[..n] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = checksum(&buf[..n]);
    buf[n..].copy_from_slice(&sum.to_le_bytes());
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn verify(buf: &[u8]) -> bool {
    let n = buf.len() - 8;
    checksum(&buf[..n]).to_le_bytes() == buf[n..]
}

fn assert_all_free(p: &Pool<'_>) {
    for i in 0..p.pages() {
        assert_eq!(p.owner(i).unwrap().0, Owner::Free, "page {i}");
    }
    assert_eq!(p.free_pages(), p.pages());
}

#[test]
fn region_size_layout() {
    assert_eq!(region_size(1), 3 * PAGE);
    assert_eq!(region_size(512), 0x202000);
    assert_eq!(region_size(513), (1 + 2 + 513) * PAGE);
    assert_eq!(region_size(1024), 0x403000);
    assert_eq!(
        region_size(u32::MAX),
        (1 + 8388608 + u32::MAX as usize) * PAGE
    );
}

#[test]
fn init_attach_round_trip_at_another_address() {
    let pages = 20;
    let a = Region::new(region_size(pages));
    let p = init(&a, pages);
    assert_eq!(p.pages(), pages);
    assert_eq!(p.size(), region_size(pages));
    assert_all_free(&p);
    let l = p.alloc(1, 3).unwrap();
    // SAFETY: instance 1 owns the run; nothing else looks at it.
    unsafe { bytes_mut(&p, l.first, l.pages) }
        .unwrap()
        .fill(0x5c);
    let t = p.hand_over(l, 1, 2).unwrap();
    let len = a.len();
    let b = Region::new(len);
    let mut bytes = vec![0; len];
    a.raw().read(0, &mut bytes).unwrap();
    b.raw().write(0, &bytes).unwrap();
    let q = attach(&b).unwrap();
    assert_eq!(q.pages(), pages);
    assert_eq!(
        q.owner(t.first).unwrap(),
        (Owner::InTransit { from: 1, to: 2 }, t.generation)
    );
    let got = q.accept(t.first, t.pages, 2, t.generation).unwrap();
    assert_eq!(got, t);
    let mut copy = vec![0; 3 * PAGE];
    q.checked_copy(t.first, t.pages, 2, &mut copy).unwrap();
    assert!(copy.iter().all(|&x| x == 0x5c));
    // The original is unaffected by the copy's accept.
    assert_eq!(
        p.owner(t.first).unwrap().0,
        Owner::InTransit { from: 1, to: 2 }
    );
    // Generations keep counting in the copy, past those already handed out.
    let l2 = q.alloc(3, 1).unwrap();
    assert!(l2.generation > t.generation);
    // Attaching the original a second time sees the same state.
    let p2 = attach(&a).unwrap();
    assert_eq!(
        p2.owner(t.first).unwrap().0,
        Owner::InTransit { from: 1, to: 2 }
    );
}

#[test]
fn bad_header_rejected() {
    let pages = 4;
    let size = region_size(pages);
    let r = Region::new(size);
    assert_eq!(attach(&r).unwrap_err(), Error::BadMagic);
    init(&r, pages);
    assert!(attach(&r).is_ok());

    // Version.
    r.raw().write(8, &(VERSION + 1).to_ne_bytes()).unwrap();
    assert_eq!(attach(&r).unwrap_err(), Error::VersionMismatch);
    r.raw().write(8, &VERSION.to_ne_bytes()).unwrap();
    // Page count that does not match the stored layout.
    r.raw().write(12, &5000u32.to_ne_bytes()).unwrap();
    assert_eq!(attach(&r).unwrap_err(), Error::VersionMismatch);
    r.raw().write(12, &pages.to_ne_bytes()).unwrap();
    // Zero pages.
    r.raw().write(12, &0u32.to_ne_bytes()).unwrap();
    assert_eq!(attach(&r).unwrap_err(), Error::ZeroPages);
    r.raw().write(12, &pages.to_ne_bytes()).unwrap();
    assert!(attach(&r).is_ok());
    // Magic.
    r.raw().write(0, &(MAGIC ^ 1).to_ne_bytes()).unwrap();
    assert_eq!(attach(&r).unwrap_err(), Error::BadMagic);
    r.raw().write(0, &MAGIC.to_ne_bytes()).unwrap();

    // Region shorter than the pool.
    let raw = r.raw();
    let e = Pool::attach(raw.sub(0, size - PAGE).unwrap()).unwrap_err();
    assert_eq!(
        e,
        Error::RegionTooSmall {
            need: size,
            have: size - PAGE
        }
    );
    let e = Pool::attach(raw.sub(0, 64).unwrap()).unwrap_err();
    assert!(matches!(e, Error::RegionTooSmall { .. }));
    let e = Pool::init(raw.sub(0, size - 1).unwrap(), pages).unwrap_err();
    assert_eq!(
        e,
        Error::RegionTooSmall {
            need: size,
            have: size - 1
        }
    );
    let e = Pool::init(raw, 0).unwrap_err();
    assert_eq!(e, Error::ZeroPages);
    // Misaligned bases (null ones cannot be made safely; mk-raw refuses them).
    let e = Pool::attach(raw.sub(8, size - 8).unwrap()).unwrap_err();
    assert_eq!(e, Error::Misaligned);
    let e = Pool::init(raw.sub(64, size - 64).unwrap(), 1).unwrap_err();
    assert_eq!(e, Error::Misaligned);
}

#[test]
fn happy_path_there_and_back() {
    let r = Region::new(region_size(8));
    let p = init(&r, 8);
    let (s, rc) = (1u16, 2u16);
    let l = p.alloc(s, 3).unwrap();
    assert_eq!((l.first, l.pages), (0, 3));
    for i in 0..3 {
        assert_eq!(p.owner(i).unwrap(), (Owner::Owned(s), l.generation));
    }
    // SAFETY: the sender owns the run and is the only one touching it.
    fill(unsafe { bytes_mut(&p, l.first, l.pages) }.unwrap(), 42);
    let t = p.hand_over(l, s, rc).unwrap();
    assert_ne!(t.generation, l.generation);
    assert_eq!(
        p.owner(2).unwrap(),
        (Owner::InTransit { from: s, to: rc }, t.generation)
    );
    // The message: three numbers.
    let (first, pages, generation) = (t.first, t.pages, t.generation);
    let got = p.accept(first, pages, rc, generation).unwrap();
    assert_eq!(got, t);
    let mut copy = vec![0; got.len_bytes()];
    p.checked_copy(got.first, got.pages, rc, &mut copy).unwrap();
    assert!(verify(&copy));
    // SAFETY: the receiver owns the run now.
    assert!(verify(unsafe { bytes(&p, got.first, got.pages) }.unwrap()));
    // The receiver writes an answer and hands the pages back.
    // SAFETY: the receiver owns the run.
    fill(unsafe { bytes_mut(&p, got.first, got.pages) }.unwrap(), 7);
    let back = p.hand_over(got, rc, s).unwrap();
    let mine = p
        .accept(back.first, back.pages, s, back.generation)
        .unwrap();
    let view = p.checked_bytes(mine.first, mine.pages, s).unwrap();
    let bytes: Vec<u8> = view.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    assert!(verify(&bytes));
    p.release(mine, s).unwrap();
    assert_all_free(&p);
    // Page offsets, both ways.
    let d = region_size(8) - 8 * PAGE;
    assert_eq!(p.page_phys_offset(0).unwrap(), d);
    assert_eq!(p.page_phys_offset(7).unwrap(), d + 7 * PAGE);
    assert_eq!(p.page_from_phys_offset(d + 5 * PAGE).unwrap(), 5);
}

#[test]
fn every_error() {
    let r = Region::new(region_size(8));
    let p = init(&r, 8);
    // ZeroPages everywhere.
    assert_eq!(p.alloc(1, 0).unwrap_err(), Error::ZeroPages);
    let z = Lease {
        first: 0,
        pages: 0,
        generation: 0,
    };
    assert_eq!(p.hand_over(z, 1, 2).unwrap_err(), Error::ZeroPages);
    assert_eq!(p.accept(0, 0, 2, 0).unwrap_err(), Error::ZeroPages);
    assert_eq!(p.release(z, 1).unwrap_err(), Error::ZeroPages);
    assert_eq!(p.cancel(z, 1).unwrap_err(), Error::ZeroPages);
    assert_eq!(p.checked_bytes(0, 0, 1).unwrap_err(), Error::ZeroPages);
    // SAFETY: rejected before any slice exists.
    assert_eq!(unsafe { bytes(&p, 0, 0) }.unwrap_err(), Error::ZeroPages);
    // Exhausted: too big, and full.
    assert_eq!(p.alloc(1, 9).unwrap_err(), Error::Exhausted);
    let a = p.alloc(1, 5).unwrap();
    assert_eq!(p.alloc(1, 4).unwrap_err(), Error::Exhausted);
    let b = p.alloc(1, 3).unwrap();
    assert_eq!(p.alloc(2, 1).unwrap_err(), Error::Exhausted);
    // OutOfRange: indices from a message are never trusted.
    for (first, pages) in [(8, 1), (7, 2), (u32::MAX, 1), (1, u32::MAX), (0, 9)] {
        assert_eq!(p.accept(first, pages, 2, 0).unwrap_err(), Error::OutOfRange);
        assert_eq!(
            p.checked_bytes(first, pages, 1).unwrap_err(),
            Error::OutOfRange
        );
        // SAFETY: rejected before any slice exists.
        let e = unsafe { bytes_mut(&p, first, pages) }.unwrap_err();
        assert_eq!(e, Error::OutOfRange);
        // SAFETY: as above.
        let e = unsafe { bytes(&p, first, pages) }.unwrap_err();
        assert_eq!(e, Error::OutOfRange);
        let l = Lease {
            first,
            pages,
            generation: a.generation,
        };
        assert_eq!(p.hand_over(l, 1, 2).unwrap_err(), Error::OutOfRange);
        assert_eq!(p.release(l, 1).unwrap_err(), Error::OutOfRange);
    }
    assert_eq!(p.owner(8).unwrap_err(), Error::OutOfRange);
    assert_eq!(p.page_phys_offset(8).unwrap_err(), Error::OutOfRange);
    assert_eq!(p.page_from_phys_offset(0).unwrap_err(), Error::OutOfRange);
    assert_eq!(
        p.page_from_phys_offset(region_size(8)).unwrap_err(),
        Error::OutOfRange
    );
    assert_eq!(
        p.page_from_phys_offset(usize::MAX & !0xfff).unwrap_err(),
        Error::OutOfRange
    );
    assert_eq!(
        p.page_from_phys_offset(PAGE * 3 + 1).unwrap_err(),
        Error::Misaligned
    );
    // WrongOwner.
    assert_eq!(
        p.hand_over(a, 2, 3).unwrap_err(),
        Error::WrongOwner {
            page: 0,
            found: Owner::Owned(1)
        }
    );
    assert_eq!(
        p.release(b, 2).unwrap_err(),
        Error::WrongOwner {
            page: 5,
            found: Owner::Owned(1)
        }
    );
    assert_eq!(
        p.checked_bytes(0, 1, 2).unwrap_err(),
        Error::WrongOwner {
            page: 0,
            found: Owner::Owned(1)
        }
    );
    // WrongGeneration: a stale lease for pages the same instance owns under another lease.
    let stale = Lease {
        generation: b.generation,
        ..a
    };
    assert_eq!(
        p.release(stale, 1).unwrap_err(),
        Error::WrongGeneration {
            page: 0,
            given: b.generation,
            found: a.generation
        }
    );
    assert!(matches!(
        p.hand_over(stale, 1, 2),
        Err(Error::WrongGeneration { .. })
    ));
    // NotInTransit.
    assert_eq!(
        p.accept(a.first, a.pages, 2, a.generation).unwrap_err(),
        Error::NotInTransit {
            page: 0,
            found: Owner::Owned(1)
        }
    );
    assert!(matches!(p.cancel(a, 1), Err(Error::NotInTransit { .. })));
    // In transit: wrong receiver, wrong generation, wrong canceller; and not usable by anyone.
    let t = p.hand_over(a, 1, 2).unwrap();
    let tr = Owner::InTransit { from: 1, to: 2 };
    assert_eq!(
        p.accept(t.first, t.pages, 3, t.generation).unwrap_err(),
        Error::WrongOwner { page: 0, found: tr }
    );
    assert_eq!(
        p.accept(t.first, t.pages, 2, a.generation).unwrap_err(),
        Error::WrongGeneration {
            page: 0,
            given: a.generation,
            found: t.generation
        }
    );
    assert_eq!(
        p.cancel(t, 2).unwrap_err(),
        Error::WrongOwner { page: 0, found: tr }
    );
    assert!(matches!(p.release(t, 1), Err(Error::WrongOwner { found, .. }) if found == tr));
    assert!(matches!(p.release(t, 2), Err(Error::WrongOwner { found, .. }) if found == tr));
    assert!(matches!(
        p.hand_over(t, 1, 3),
        Err(Error::WrongOwner { .. })
    ));
    assert!(matches!(
        p.checked_bytes(0, 1, 2),
        Err(Error::WrongOwner { .. })
    ));
    // Accept once; a replayed message fails.
    p.accept(t.first, t.pages, 2, t.generation).unwrap();
    assert!(matches!(
        p.accept(t.first, t.pages, 2, t.generation),
        Err(Error::NotInTransit {
            found: Owner::Owned(2),
            ..
        })
    ));
    // Cancel: the sender takes back; the receiver's accept then fails.
    let t2 = p.hand_over(b, 1, 2).unwrap();
    let back = p.cancel(t2, 1).unwrap();
    assert_eq!(p.owner(b.first).unwrap(), (Owner::Owned(1), t2.generation));
    assert!(matches!(
        p.accept(t2.first, t2.pages, 2, t2.generation),
        Err(Error::NotInTransit { .. })
    ));
    // Double release.
    p.release(back, 1).unwrap();
    assert!(matches!(
        p.release(back, 1),
        Err(Error::WrongOwner {
            found: Owner::Free,
            ..
        })
    ));
    p.release(t, 2).unwrap();
    assert_all_free(&p);
    // A corrupted word is refused by everyone and left alone by reclaim.
    let off = PAGE; // owner word of page 0
    r.raw().write(off, &0xfu64.to_ne_bytes()).unwrap();
    let p = attach(&r).unwrap();
    assert_eq!(p.owner(0).unwrap().0, Owner::Invalid(0xf));
    assert_eq!(p.alloc(1, 8).unwrap_err(), Error::Exhausted);
    assert_eq!(p.reclaim_from(0), 0);
    assert_eq!(p.alloc(1, 7).unwrap().first, 1);
}

#[test]
fn rollback_leaves_nothing_half_claimed() {
    let r = Region::new(region_size(8));
    let p = init(&r, 8);
    let a = p.alloc(1, 3).unwrap(); // 0..3
    // Free page 1 alone (a lease is just numbers; the generation matches).
    p.release(
        Lease {
            first: 1,
            pages: 1,
            generation: a.generation,
        },
        1,
    )
    .unwrap();
    // First fit tries 1..3: claims page 1, finds 2 taken, rolls back, continues at 3.
    let b = p.alloc(2, 2).unwrap();
    assert_eq!(b.first, 3);
    assert_eq!(p.owner(1).unwrap().0, Owner::Free);

    // hand_over whose last page is someone else's: the pages it changed go back.
    let c = p.alloc(1, 2).unwrap(); // 5..7
    let bad = Lease {
        first: 5,
        pages: 3,
        generation: c.generation,
    }; // page 7 free
    assert_eq!(
        p.hand_over(bad, 1, 2).unwrap_err(),
        Error::WrongOwner {
            page: 7,
            found: Owner::Free
        }
    );
    for i in 5..7 {
        assert_eq!(p.owner(i).unwrap(), (Owner::Owned(1), c.generation));
    }
    assert_eq!(p.owner(7).unwrap().0, Owner::Free);

    // accept claiming more pages than were handed over: all-or-nothing.
    let t = p.hand_over(c, 1, 2).unwrap();
    let e = p.accept(5, 3, 2, t.generation).unwrap_err();
    assert!(matches!(
        e,
        Error::NotInTransit {
            page: 7,
            found: Owner::Free
        }
    ));
    for i in 5..7 {
        assert_eq!(
            p.owner(i).unwrap(),
            (Owner::InTransit { from: 1, to: 2 }, t.generation)
        );
    }
    // accept of a run straddling two transfers with different generations.
    let filler = p.alloc(1, 1).unwrap(); // first fit: page 1
    assert_eq!(filler.first, 1);
    let d = p.alloc(1, 1).unwrap();
    assert_eq!(d.first, 7);
    let t7 = p.hand_over(d, 1, 2).unwrap();
    assert!(matches!(
        p.accept(5, 3, 2, t.generation),
        Err(Error::WrongGeneration { page: 7, .. })
    ));
    assert_eq!(p.owner(5).unwrap().0, Owner::InTransit { from: 1, to: 2 });
    // release checks every page before freeing any.
    let wide = Lease {
        first: 3,
        pages: 3,
        generation: b.generation,
    }; // 5 is not b's
    assert!(matches!(
        p.release(wide, 2),
        Err(Error::WrongOwner { page: 5, .. })
    ));
    assert_eq!(p.owner(3).unwrap().0, Owner::Owned(2));
    // Everything still completes normally.
    p.release(p.accept(5, 2, 2, t.generation).unwrap(), 2)
        .unwrap();
    p.release(p.accept(7, 1, 2, t7.generation).unwrap(), 2)
        .unwrap();
    p.release(b, 2).unwrap();
    p.release(filler, 1).unwrap();
    p.release(
        Lease {
            first: 0,
            pages: 1,
            generation: a.generation,
        },
        1,
    )
    .unwrap();
    p.release(
        Lease {
            first: 2,
            pages: 1,
            generation: a.generation,
        },
        1,
    )
    .unwrap();
    assert_all_free(&p);
}

#[test]
fn threads_senders_to_receiver() {
    const SENDERS: u16 = 4;
    const ITERS: u64 = 600;
    const RECEIVER: u16 = 0;
    let pages = 64;
    let r = Region::new(region_size(pages));
    let p = init(&r, pages);
    let (tx, rx) = mpsc::channel::<(u32, u32, u32, u16)>();
    thread::scope(|s| {
        for id in 1..=SENDERS {
            let tx = tx.clone();
            s.spawn(move || {
                for i in 0..ITERS {
                    let n = 1 + ((i + u64::from(id)) % 5) as u32;
                    let l = loop {
                        match p.alloc(id, n) {
                            Ok(l) => break l,
                            Err(Error::Exhausted) => thread::yield_now(),
                            Err(e) => panic!("alloc: {e:?}"),
                        }
                    };
                    // SAFETY: this sender owns the run until it hands it over below.
                    let buf = unsafe { bytes_mut(&p, l.first, l.pages) }.unwrap();
                    fill(buf, (u64::from(id) << 32) | i);
                    let t = p.hand_over(l, id, RECEIVER).unwrap();
                    // The message: three numbers (and who sent it).
                    tx.send((t.first, t.pages, t.generation, id)).unwrap();
                }
            });
        }
        drop(tx);
        s.spawn(move || {
            let mut got = 0;
            let mut copy = Vec::new();
            for (first, pages, generation, from) in rx {
                let l = p.accept(first, pages, RECEIVER, generation).unwrap();
                assert_eq!(p.owner(first).unwrap().1, generation);
                // A replay of the same message must fail.
                assert!(p.accept(first, pages, RECEIVER, generation).is_err());
                copy.resize(l.len_bytes(), 0);
                p.checked_copy(l.first, l.pages, RECEIVER, &mut copy)
                    .unwrap();
                assert!(verify(&copy), "checksum from {from}");
                // Also through the fast path, with the same result.
                // SAFETY: the receiver owns the run until the release below.
                assert!(verify(unsafe { bytes(&p, l.first, l.pages) }.unwrap()));
                p.release(l, RECEIVER).unwrap();
                got += 1;
            }
            assert_eq!(got, u64::from(SENDERS) * ITERS);
        });
    });
    assert_all_free(&p);
}

#[test]
fn threads_ping_pong_and_release_by_either() {
    // Pairs hand runs there and back; whoever holds a run at the end releases it.
    let pages = 16;
    let r = Region::new(region_size(pages));
    let p = init(&r, pages);
    thread::scope(|s| {
        for pair in 0..2u16 {
            let (a, b) = (10 + 2 * pair, 11 + 2 * pair);
            let (to_b, from_a) = mpsc::channel::<Lease>();
            let (to_a, from_b) = mpsc::channel::<Lease>();
            s.spawn(move || {
                for i in 0..500u64 {
                    let l = loop {
                        match p.alloc(a, 2) {
                            Ok(l) => break l,
                            Err(_) => thread::yield_now(),
                        }
                    };
                    // SAFETY: `a` owns the run.
                    fill(unsafe { bytes_mut(&p, l.first, l.pages) }.unwrap(), i);
                    to_b.send(p.hand_over(l, a, b).unwrap()).unwrap();
                    let back = from_b.recv().unwrap();
                    let mine = p
                        .accept(back.first, back.pages, a, back.generation)
                        .unwrap();
                    let mut copy = vec![0; mine.len_bytes()];
                    p.checked_copy(mine.first, mine.pages, a, &mut copy)
                        .unwrap();
                    assert!(verify(&copy));
                    p.release(mine, a).unwrap();
                }
            });
            s.spawn(move || {
                for (i, t) in from_a.iter().enumerate() {
                    let l = p.accept(t.first, t.pages, b, t.generation).unwrap();
                    // SAFETY: `b` owns the run.
                    let buf = unsafe { bytes_mut(&p, l.first, l.pages) }.unwrap();
                    assert!(verify(buf));
                    fill(buf, 1000 + i as u64);
                    to_a.send(p.hand_over(l, b, a).unwrap()).unwrap();
                }
            });
        }
    });
    assert_all_free(&p);
}

#[test]
fn reclaim_after_death_mid_transfer() {
    let pages = 32;
    let r = Region::new(region_size(pages));
    let p = init(&r, pages);
    let (dead, x, y) = (1u16, 2u16, 3u16);
    let own_dead = p.alloc(dead, 3).unwrap();
    let own_x = p.alloc(x, 2).unwrap();
    let dead_to_x = p.hand_over(p.alloc(dead, 2).unwrap(), dead, x).unwrap();
    let x_to_dead = p.hand_over(p.alloc(x, 2).unwrap(), x, dead).unwrap();
    let x_to_y = p.hand_over(p.alloc(x, 1).unwrap(), x, y).unwrap();
    // Death in the middle of a hand-over: the first 2 of 4 pages changed, the rest not.
    let half = p.alloc(dead, 4).unwrap();
    let part = p.hand_over(Lease { pages: 2, ..half }, dead, y).unwrap();
    assert_eq!(p.owner(half.first + 3).unwrap().0, Owner::Owned(dead));
    // A death in the middle of an accept looks like accepted + in transit: same as above.
    let used = pages - p.free_pages();
    assert_eq!(used, 3 + 2 + 2 + 2 + 1 + 4);

    let freed = p.reclaim_from(dead);
    assert_eq!(freed, 3 + 2 + 2 + 4);
    // Every page has exactly one valid state; none lost; live pages untouched.
    let mut counts = [0u32; 3];
    for i in 0..pages {
        match p.owner(i).unwrap().0 {
            Owner::Free => counts[0] += 1,
            Owner::Owned(o) => {
                assert_eq!(o, x);
                counts[1] += 1;
            }
            Owner::InTransit { from, to } => {
                assert_eq!((from, to), (x, y));
                counts[2] += 1;
            }
            Owner::Invalid(w) => panic!("page {i}: {w:#x}"),
        }
    }
    assert_eq!(counts, [pages - 3, 2, 1]);
    // The live side's pending operations fail cleanly; none takes a freed page.
    assert!(matches!(
        p.accept(dead_to_x.first, dead_to_x.pages, x, dead_to_x.generation),
        Err(Error::NotInTransit { .. })
    ));
    assert!(matches!(
        p.accept(part.first, part.pages, y, part.generation),
        Err(Error::NotInTransit { .. })
    ));
    assert!(matches!(
        p.cancel(x_to_dead, x),
        Err(Error::NotInTransit { .. })
    ));
    assert!(matches!(
        p.release(own_dead, dead),
        Err(Error::WrongOwner { .. })
    ));
    // Live work finishes; then everything is free.
    p.release(own_x, x).unwrap();
    let l = p
        .accept(x_to_y.first, x_to_y.pages, y, x_to_y.generation)
        .unwrap();
    p.release(l, y).unwrap();
    assert_all_free(&p);
    assert_eq!(p.reclaim_from(dead), 0);
}

#[test]
fn threads_reclaim_while_live_instances_work() {
    // Instance 1 works with 2 and dies mid-transfer (its thread just stops, holding leases and
    // runs in transit both ways); 2 and 3 keep trading; instance 0 reclaims 1 meanwhile.
    let pages = 128;
    let r = Region::new(region_size(pages));
    let p = init(&r, pages);
    let (dead, x, y) = (1u16, 2u16, 3u16);
    let alloc = |by: u16, n: u32| loop {
        match p.alloc(by, n) {
            Ok(l) => return l,
            Err(Error::Exhausted) => thread::yield_now(),
            Err(e) => panic!("{e:?}"),
        }
    };
    // The doomed instance's last acts, in its own thread.
    let (to_x, x_inbox) = mpsc::channel::<Lease>();
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40u32 {
                let l = alloc(dead, 1 + i % 3);
                match i % 4 {
                    0 => {} // keeps it
                    1 => to_x.send(p.hand_over(l, dead, x).unwrap()).unwrap(),
                    2 => {
                        let _ = p.hand_over(l, dead, x).unwrap(); // dies before sending
                    }
                    _ => p.release(l, dead).unwrap(),
                }
            }
            // Mid hand-over of a 3-page run: only the first page changed.
            let l = alloc(dead, 3);
            let _ = p.hand_over(Lease { pages: 1, ..l }, dead, y).unwrap();
        });
    });
    drop(to_x);
    let pending: Vec<Lease> = x_inbox.iter().collect();
    thread::scope(|s| {
        // x and y trade in both directions, ignoring the dead instance.
        for (me, peer) in [(x, y), (y, x)] {
            s.spawn(move || {
                for i in 0..300u64 {
                    let l = alloc(me, 1 + (i % 2) as u32);
                    // SAFETY: `me` owns the run.
                    fill(unsafe { bytes_mut(&p, l.first, l.pages) }.unwrap(), i);
                    let t = p.hand_over(l, me, peer).unwrap();
                    // The peer is simulated inline: accept, verify, release.
                    let g = p.accept(t.first, t.pages, peer, t.generation).unwrap();
                    let mut copy = vec![0; g.len_bytes()];
                    p.checked_copy(g.first, g.pages, peer, &mut copy).unwrap();
                    assert!(verify(&copy));
                    p.release(g, peer).unwrap();
                }
            });
        }
        // Meanwhile x tries to accept what the dead instance sent: either before or after the
        // reclaim, and both outcomes are consistent.
        s.spawn(|| {
            for t in &pending {
                if let Ok(l) = p.accept(t.first, t.pages, x, t.generation) {
                    p.release(l, x).unwrap();
                }
            }
        });
        s.spawn(|| {
            thread::yield_now();
            p.reclaim_from(dead);
        });
    });
    // Anything the reclaim raced past? A second pass finds nothing: no transition ever gives a
    // page to the dead instance after it stopped.
    assert_eq!(p.reclaim_from(dead), 0);
    assert_all_free(&p);
}

#[test]
fn checked_write_needs_ownership() {
    let r = Region::new(region_size(4));
    let p = init(&r, 4);
    let l = p.alloc(1, 2).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    assert_eq!(
        p.checked_write(l.first, l.pages, 2, &data).unwrap_err(),
        Error::WrongOwner {
            page: l.first,
            found: Owner::Owned(1)
        }
    );
    assert_eq!(
        p.checked_write(l.first, l.pages, 1, &vec![0; 2 * PAGE + 1]),
        Err(Error::OutOfRange)
    );
    p.checked_write(l.first, l.pages, 1, &data).unwrap();
    let t = p.hand_over(l, 1, 2).unwrap();
    assert!(p.checked_write(t.first, t.pages, 1, &data).is_err());
    let got = p.accept(t.first, t.pages, 2, t.generation).unwrap();
    let mut copy = vec![0; data.len()];
    p.checked_copy(got.first, got.pages, 2, &mut copy).unwrap();
    assert_eq!(copy, data);
    p.release(got, 2).unwrap();
    assert_all_free(&p);
}

#[test]
fn restore_header_undoes_writes_into_the_layout_words() {
    // magic, version, pages, page_size, word_pages, data_offset, total_size: bytes 0..40.
    for offset in (0..40).step_by(4) {
        let r = Region::new(region_size(8));
        let p = init(&r, 8);
        assert_eq!(p.restore_header(), 0, "an intact header needs nothing");
        r.raw()
            .write(offset, &0xffff_fffeu32.to_ne_bytes())
            .unwrap();
        assert!(
            attach(&r).is_err(),
            "offset {offset}: attach took a damaged header"
        );
        assert_eq!(p.restore_header(), 1, "offset {offset}");
        assert_eq!(attach(&r).unwrap().pages(), 8);
    }
}

#[test]
fn quota_bounds_what_one_instance_holds() {
    let r = Region::new(region_size(16));
    let p = init(&r, 16).with_quota(6);
    assert_eq!(p.quota(), 6);
    let a = p.alloc(1, 4).unwrap();
    assert_eq!(p.held_by(1), 4);
    assert_eq!(
        p.alloc(1, 3),
        Err(Error::OverQuota {
            instance: 1,
            held: 4,
            asked: 3,
            quota: 6
        })
    );
    // Another instance has its own quota.
    let b = p.alloc(2, 6).unwrap();
    // Handed over and not accepted: still counted against the sender.
    let a = p.hand_over(a, 1, 2).unwrap();
    assert_eq!(p.held_by(1), 4);
    assert!(p.alloc(1, 3).is_err());
    // The receiver at its quota cannot accept: the run stays in transit, the sender cancels.
    assert_eq!(
        p.accept(a.first, a.pages, 2, a.generation),
        Err(Error::OverQuota {
            instance: 2,
            held: 6,
            asked: 4,
            quota: 6
        })
    );
    let a = p.cancel(a, 1).unwrap();
    p.release(b, 2).unwrap();
    let a = p.hand_over(a, 1, 2).unwrap();
    let a = p.accept(a.first, a.pages, 2, a.generation).unwrap();
    assert_eq!((p.held_by(1), p.held_by(2)), (0, 4));
    p.release(a, 2).unwrap();
    assert!(p.alloc(1, 6).is_ok());
    // Without a quota, one instance may take every page.
    let r = Region::new(region_size(8));
    let p = init(&r, 8);
    assert!(p.alloc(1, 8).is_ok());
    assert!(
        Error::OverQuota {
            instance: 3,
            held: 1,
            asked: 2,
            quota: 2
        }
        .to_string()
        .contains("instance 3")
    );
}

#[test]
fn accept_from_checks_the_sender_and_the_messages_generation() {
    let r = Region::new(region_size(8));
    let p = init(&r, 8);
    let l = p.alloc(1, 2).unwrap();
    let l = p.hand_over(l, 1, 2).unwrap();
    // Claimed to come from 3: refused, nothing changes.
    assert_eq!(
        p.accept_from(l.first, l.pages, 3, 2, l.generation),
        Err(Error::WrongOwner {
            page: l.first,
            found: Owner::InTransit { from: 1, to: 2 }
        })
    );
    // The message's generation is checked, not the one in the word.
    assert!(matches!(
        p.accept_from(l.first, l.pages, 1, 2, l.generation.wrapping_add(1)),
        Err(Error::WrongGeneration { .. })
    ));
    // Not in transit at all.
    assert!(matches!(
        p.accept_from(5, 1, 1, 2, l.generation),
        Err(Error::NotInTransit { .. })
    ));
    assert_eq!(
        p.accept_from(7, 2, 1, 2, l.generation),
        Err(Error::OutOfRange)
    );
    let got = p.accept_from(l.first, l.pages, 1, 2, l.generation).unwrap();
    assert_eq!(got, l);
    p.release(got, 2).unwrap();
    assert_all_free(&p);
}
