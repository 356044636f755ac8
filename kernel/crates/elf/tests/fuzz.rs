//! Hand-written fuzzing: `Elf::parse`, the iterators and `load` never panic on random or
//! mutated input, and whatever `load` accepts stays inside the buffer it is given.

mod common;

use common::*;
use mk_elf::*;

/// xorshift64*: deterministic, dependency free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n as u64).max(1)) as usize
    }
}

/// Interesting values to drop into header fields.
const SPECIAL: [u64; 12] = [
    0,
    1,
    7,
    8,
    24,
    56,
    64,
    0x1000,
    0x3000,
    u64::MAX,
    u64::MAX - 7,
    1 << 63,
];

/// How deep an input got.
#[derive(Debug, Default)]
struct Depth {
    parsed: usize,
    relocations: usize,
    loaded: usize,
}

/// Exercises the whole API on `bytes`; panics only if an invariant is broken.
fn exercise(bytes: &[u8], depth: &mut Depth) {
    let Ok(elf) = Elf::parse(bytes) else {
        return;
    };
    depth.parsed += 1;
    let (min, end) = elf.span();
    assert!(min <= end && min % PAGE_SIZE == 0 && end % PAGE_SIZE == 0);
    for s in elf.load_segments() {
        assert!(s.file_size <= s.mem_size);
        assert!(s.vaddr >= min && s.end() <= end);
        assert!(s.file_offset + s.file_size <= bytes.len() as u64);
        let _ = elf.page_flags(s.vaddr);
    }
    let _ = elf.page_flags(u64::MAX);
    if let Ok(relocs) = elf.relocations() {
        depth.relocations += 1;
        for r in relocs.take(100_000) {
            let _ = r;
        }
    }
    // Only load what is small enough to allocate.
    if elf.image_size() <= 1 << 22 {
        let mut image = vec![0u8; elf.image_size() as usize];
        for base in [0, 0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_FFFF_F000] {
            if let Ok(entry) = load(&elf, base, &mut image) {
                depth.loaded += 1;
                assert_eq!(entry, base + elf.entry());
            }
        }
    }
}

fn mutate(rng: &mut Rng, file: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            // Flip a byte, biased to the headers.
            0 => {
                let limit = if rng.below(2) == 0 {
                    64 + 56 * 5
                } else {
                    file.len()
                };
                let i = rng.below(limit.min(file.len()).max(1));
                if let Some(b) = file.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            // Write a special or random u64 at a random (header-biased) 8-aligned offset.
            1 | 2 => {
                let limit = if rng.below(2) == 0 {
                    64 + 56 * 5
                } else {
                    file.len()
                };
                let i = rng.below(limit.min(file.len()) / 8) * 8;
                let v = if rng.below(2) == 0 {
                    SPECIAL[rng.below(SPECIAL.len())]
                } else {
                    rng.next() >> rng.below(64)
                };
                if i + 8 <= file.len() {
                    put64(file, i, v);
                }
            }
            // Mutate the dynamic section / relocation tables.
            3 => {
                let i = 0x2000 + rng.below(0x200 / 8) * 8;
                if i + 8 <= file.len() {
                    put64(
                        file,
                        i,
                        SPECIAL[rng.below(SPECIAL.len())] ^ (rng.next() & 0xF),
                    );
                }
            }
            // Truncate.
            4 => {
                let n = rng.below(file.len() + 1);
                file.truncate(n);
            }
            // Change e_phnum.
            _ => {
                if file.len() >= 58 {
                    put16(file, 56, rng.below(12) as u16);
                }
            }
        }
    }
}

/// A small random value, an interesting one, or an offset/address inside `len`.
fn field(rng: &mut Rng, len: usize) -> u64 {
    match rng.below(4) {
        0 => SPECIAL[rng.below(SPECIAL.len())],
        1 => rng.next(),
        _ => rng.below(len + 16) as u64,
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut depth = Depth::default();
    for _ in 0..20_000 {
        let len = rng.below(600);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&bytes, &mut depth);
    }
    eprintln!("random: {depth:?}");
}

/// Valid header, random program headers and random dynamic entries with plausible values.
#[test]
fn random_structured_files_never_panic() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let mut depth = Depth::default();
    for _ in 0..20_000 {
        let len = 64 + rng.below(0x3000);
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        put16(&mut f, 16, if rng.below(4) == 0 { 2 } else { 3 });
        put16(&mut f, 18, 62);
        put32(&mut f, 20, 1);
        put64(&mut f, 24, field(&mut rng, len));
        put64(&mut f, 32, 64);
        put16(&mut f, 52, 64);
        put16(&mut f, 54, 56);
        let phnum = rng.below(7);
        put16(&mut f, 56, phnum as u16);
        let mut vaddr = 0u64;
        for i in 0..phnum {
            let o = 64 + 56 * i;
            if o + 56 > len {
                break;
            }
            let ty = [PT_LOAD, PT_LOAD, PT_LOAD, PT_DYNAMIC, rng.next() as u32][rng.below(5)];
            put32(&mut f, o, ty);
            put32(&mut f, o + 4, rng.below(8) as u32);
            put64(&mut f, o + 8, rng.below(len) as u64);
            // Mostly sorted, sometimes not.
            vaddr = if rng.below(8) == 0 {
                field(&mut rng, len)
            } else {
                vaddr.wrapping_add(rng.below(0x2000) as u64)
            };
            put64(&mut f, o + 16, vaddr);
            let filesz = rng.below(len / 2) as u64;
            put64(&mut f, o + 32, filesz);
            let extra = if rng.below(8) == 0 {
                field(&mut rng, len)
            } else {
                rng.below(0x2000) as u64
            };
            put64(&mut f, o + 40, filesz.wrapping_add(extra));
            vaddr = vaddr.saturating_add(filesz);
        }
        // Sprinkle plausible dynamic entries over the file.
        for _ in 0..rng.below(24) {
            let o = rng.below(len / 8) * 8;
            if o + 16 <= len {
                let tag = [0, 2, 7, 8, 9, 17, 23, 35, 36, 37][rng.below(10)];
                put64(&mut f, o, tag);
                put64(&mut f, o + 8, field(&mut rng, len));
            }
        }
        exercise(&f, &mut depth);
    }
    eprintln!("structured: {depth:?}");
    assert!(depth.parsed > 1_000);
}

#[test]
fn mutated_samples_never_panic() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let relr_bytes = relr(&[0x3080, 0b1011, 0x3400]);
    let mut relr_builder = sample_builder_with(
        &sample_relocs(),
        &[(36, 0x3180), (35, relr_bytes.len() as u64), (37, 8)],
    );
    relr_builder.blobs.push((0x2180, relr_bytes));
    let seeds = [sample(), relr_builder.build()];
    let mut depth = Depth::default();
    for seed in &seeds {
        exercise(seed, &mut depth);
        assert!(Elf::parse(seed).is_ok());
    }
    for i in 0..30_000 {
        let mut file = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut file);
        exercise(&file, &mut depth);
    }
    eprintln!("mutated: {depth:?}");
    // The mutations must leave enough files valid for the deep paths to be exercised.
    assert!(depth.parsed > 3_000 && depth.relocations > 2_000 && depth.loaded > 1_000);
}
