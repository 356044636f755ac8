//! Parsing and loading of small synthetic static PIEs built by `common::Builder`.

mod common;

use common::*;
use mk_elf::*;

const BASE: u64 = 0xFFFF_FFFF_8000_0000;

fn load_vec(elf: &Elf<'_>, base: u64) -> Result<(u64, Vec<u8>), ElfError> {
    let mut image = vec![0xAAu8; elf.image_size() as usize];
    let entry = load(elf, base, &mut image)?;
    Ok((entry, image))
}

fn word(image: &[u8], vaddr: u64) -> u64 {
    let o = vaddr as usize;
    u64::from_le_bytes(image[o..o + 8].try_into().unwrap())
}

#[test]
fn parses_header_and_segments() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.kind(), ElfKind::Dyn);
    assert_eq!(elf.entry(), TEXT_VADDR);
    assert_eq!(elf.bytes().len(), file.len());
    let segs: Vec<Segment> = elf.load_segments().collect();
    assert_eq!(segs.len(), 3);
    let r = SegmentFlags {
        read: true,
        write: false,
        execute: false,
    };
    let rx = SegmentFlags {
        read: true,
        write: false,
        execute: true,
    };
    let rw = SegmentFlags {
        read: true,
        write: true,
        execute: false,
    };
    assert_eq!(
        segs[0],
        Segment {
            vaddr: 0,
            mem_size: 0x200,
            file_offset: 0,
            file_size: 0x200,
            flags: r
        }
    );
    assert_eq!(
        segs[1],
        Segment {
            vaddr: 0x1000,
            mem_size: 0x10,
            file_offset: 0x1000,
            file_size: 0x10,
            flags: rx
        }
    );
    assert_eq!(
        segs[2],
        Segment {
            vaddr: 0x3000,
            mem_size: 0x1800,
            file_offset: 0x2000,
            file_size: 0x200,
            flags: rw
        }
    );
    assert_eq!(segs[2].end(), 0x4800);
    assert_eq!(segs[2].page_range(), (0x3000, 0x5000));
    assert_eq!(segs[1].flags(), rx);
    assert!(!rx.is_write_execute());
    assert!(segment_flags(PF_W | PF_X).is_write_execute());
}

#[test]
fn span_is_page_aligned() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.span(), (0, 0x5000));
    assert_eq!(elf.image_size(), 0x5000);

    // Unaligned segment addresses are rounded outwards.
    let mut b = sample_builder();
    b.phdrs[0].vaddr = 0x10;
    b.phdrs[0].offset = 0x10;
    b.phdrs[0].filesz = 0x100;
    b.phdrs[0].memsz = 0x100;
    b.phdrs[2].memsz = 0x1001; // ends at 0x4001
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.span(), (0, 0x5000));
}

#[test]
fn page_flags_union_and_holes() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.page_flags(0), Some(segment_flags(PF_R)));
    assert_eq!(elf.page_flags(0x1008), Some(segment_flags(PF_R | PF_X)));
    assert_eq!(elf.page_flags(0x2000), None); // hole between text and data
    assert_eq!(elf.page_flags(0x4000), Some(segment_flags(PF_R | PF_W)));
    assert_eq!(elf.page_flags(0x5000), None);

    // Two segments sharing a page: the page gets the union.
    let mut b = sample_builder();
    b.phdrs[1].vaddr = 0x200;
    b.phdrs[1].offset = 0x200;
    b.min_len = 0x3000;
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.page_flags(0), Some(segment_flags(PF_R | PF_X)));
}

#[test]
fn relocations_listed() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    let relocs: Vec<Relocation> = elf.relocations().unwrap().collect();
    assert_eq!(
        relocs,
        vec![
            Relocation {
                offset: 0x3080,
                addend: Addend::Explicit(0x1000)
            },
            Relocation {
                offset: 0x3090,
                addend: Addend::Explicit(0x180)
            },
            Relocation {
                offset: 0x3400,
                addend: Addend::Explicit(0x3080)
            },
        ]
    );
}

#[test]
fn load_copies_zeroes_and_relocates() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    let (entry, image) = load_vec(&elf, BASE).unwrap();
    assert_eq!(entry, BASE + TEXT_VADDR);
    // File bytes copied to their link-time offsets.
    assert_eq!(&image[..0x200], &file[..0x200]);
    assert_eq!(&image[0x180..0x188], &RODATA_MARK);
    assert_eq!(&image[0x1000..0x1010], &CODE);
    assert_eq!(&image[0x3098..0x30A0], &DATA_MARK);
    assert_eq!(&image[0x3000..0x3080], &file[0x2000..0x2080]);
    // Relocations applied.
    assert_eq!(word(&image, 0x3080), BASE + 0x1000);
    assert_eq!(word(&image, 0x3088), 0); // R_X86_64_NONE untouched
    assert_eq!(word(&image, 0x3090), BASE + 0x180);
    assert_eq!(word(&image, 0x3400), BASE + 0x3080);
    // .bss and holes zeroed (the buffer was filled with 0xAA).
    assert!(image[0x200..0x1000].iter().all(|&b| b == 0));
    assert!(image[0x1010..0x3000].iter().all(|&b| b == 0));
    assert!(image[0x3200..0x3400].iter().all(|&b| b == 0));
    assert!(image[0x3408..].iter().all(|&b| b == 0));

    // Base 0 gives link-time values.
    let (entry, image) = load_vec(&elf, 0).unwrap();
    assert_eq!(entry, TEXT_VADDR);
    assert_eq!(word(&image, 0x3080), 0x1000);

    // Loading twice into the same buffer gives the same result (fresh copy each time).
    let mut a = vec![0u8; elf.image_size() as usize];
    load(&elf, BASE, &mut a).unwrap();
    let snapshot = a.clone();
    a[0x3500] = 1;
    load(&elf, BASE, &mut a).unwrap();
    assert_eq!(a, snapshot);
}

#[test]
fn relr_relocations() {
    // RELR: address 0x3080, then a bitmap relocating 0x3088 + 8*{0, 2}, then address 0x3400.
    let relr_bytes = relr(&[0x3080, 1 | (1 << 1) | (1 << 3), 0x3400]);
    let mut b = sample_builder_with(
        &[(0x30A0, 8, 0x42)],
        &[(36, 0x3180), (35, relr_bytes.len() as u64), (37, 8)],
    );
    b.blobs.push((0x2180, relr_bytes));
    // Implicit addends: link-time values already stored at the locations.
    b.blobs.push((0x2080, relr(&[0x1000, 0x10, 0x99, 0x20])));
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    let relocs: Vec<Relocation> = elf.relocations().unwrap().collect();
    let offsets: Vec<u64> = relocs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0x30A0, 0x3080, 0x3088, 0x3098, 0x3400]);
    assert_eq!(relocs[0].addend, Addend::Explicit(0x42));
    assert!(relocs[1..].iter().all(|r| r.addend == Addend::Implicit));
    let (_, image) = load_vec(&elf, BASE).unwrap();
    assert_eq!(word(&image, 0x3080), BASE + 0x1000);
    assert_eq!(word(&image, 0x3088), BASE + 0x10);
    assert_eq!(word(&image, 0x3090), 0x99); // bit 1 not set
    assert_eq!(word(&image, 0x3098), BASE + 0x20);
    assert_eq!(word(&image, 0x30A0), BASE + 0x42);
    assert_eq!(word(&image, 0x3400), BASE);
}

#[test]
fn relr_bitmap_first_is_malformed() {
    let relr_bytes = relr(&[3]);
    let mut b = sample_builder_with(&[], &[(36, 0x3180), (35, 8), (37, 8)]);
    b.blobs.push((0x2180, relr_bytes));
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.relocations().err(), Some(ElfError::MalformedRelr));
    let mut image = vec![0u8; elf.image_size() as usize];
    assert_eq!(load(&elf, BASE, &mut image), Err(ElfError::MalformedRelr));
}

#[test]
fn exec_type_loads_at_zero_only() {
    let mut b = sample_builder();
    b.ty = 2;
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.kind(), ElfKind::Exec);
    let mut image = vec![0u8; elf.image_size() as usize];
    assert_eq!(load(&elf, BASE, &mut image), Err(ElfError::FixedAddress));
    assert_eq!(load(&elf, 0, &mut image), Ok(TEXT_VADDR));
}

#[test]
fn no_dynamic_means_no_relocations() {
    let mut b = sample_builder();
    b.phdrs.remove(3);
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(elf.relocations().unwrap().count(), 0);
    let (_, image) = load_vec(&elf, BASE).unwrap();
    assert_eq!(word(&image, 0x3080), 0);
}

// ---- header errors ----

#[test]
fn truncated_files() {
    let file = sample();
    assert_eq!(Elf::parse(&[]).err(), Some(ElfError::Truncated));
    assert_eq!(Elf::parse(&file[..15]).err(), Some(ElfError::Truncated));
    assert_eq!(Elf::parse(&file[..63]).err(), Some(ElfError::Truncated));
    // Header complete, program headers cut.
    assert_eq!(
        Elf::parse(&file[..100]).err(),
        Some(ElfError::ProgramHeadersOutOfBounds)
    );
    // Program headers complete, segment data cut.
    assert_eq!(
        Elf::parse(&file[..0x1008]).err(),
        Some(ElfError::SegmentOutOfFile { index: 1 })
    );
}

#[test]
fn wrong_identification() {
    let mut file = sample();
    file[0] = 0x7e;
    assert_eq!(Elf::parse(&file).err(), Some(ElfError::BadMagic));

    let mut b = sample_builder();
    b.class = 1;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedClass(1))
    );

    let mut b = sample_builder();
    b.data = 2;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedEndianness(2))
    );

    let mut file = sample();
    file[6] = 0;
    assert_eq!(Elf::parse(&file).err(), Some(ElfError::UnsupportedVersion));

    let mut file = sample();
    put32(&mut file, 20, 2);
    assert_eq!(Elf::parse(&file).err(), Some(ElfError::UnsupportedVersion));

    let mut b = sample_builder();
    b.machine = 3; // EM_386
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedMachine(3))
    );
    let mut b = sample_builder();
    b.machine = 183; // EM_AARCH64
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedMachine(183))
    );

    let mut b = sample_builder();
    b.ty = 1; // ET_REL
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedType(1))
    );

    let mut file = sample();
    put16(&mut file, 52, 52);
    assert_eq!(Elf::parse(&file).err(), Some(ElfError::BadHeaderSize(52)));

    let mut b = sample_builder();
    b.phentsize = 32;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::BadProgramHeaderSize(32))
    );

    let mut file = sample();
    put16(&mut file, 56, 0xFFFF);
    assert_eq!(
        Elf::parse(&file).err(),
        Some(ElfError::TooManyProgramHeaders)
    );
}

#[test]
fn program_header_table_out_of_range() {
    let mut file = sample();
    let len = file.len() as u64;
    put64(&mut file, 32, len - 100);
    assert_eq!(
        Elf::parse(&file).err(),
        Some(ElfError::ProgramHeadersOutOfBounds)
    );
    let mut file = sample();
    put64(&mut file, 32, u64::MAX - 10);
    assert_eq!(
        Elf::parse(&file).err(),
        Some(ElfError::ProgramHeadersOutOfBounds)
    );
    let mut file = sample();
    put16(&mut file, 56, 1000);
    assert_eq!(
        Elf::parse(&file).err(),
        Some(ElfError::ProgramHeadersOutOfBounds)
    );
}

// ---- segment errors ----

#[test]
fn segment_errors() {
    let mut b = sample_builder();
    b.phdrs[2].filesz = 0x10_0000;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::SegmentOutOfFile { index: 2 })
    );

    let mut b = sample_builder();
    b.phdrs[2].offset = u64::MAX - 4;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::SegmentOutOfFile { index: 2 })
    );

    let mut b = sample_builder();
    b.phdrs[1].memsz = 0x8;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::FileSizeExceedsMemSize { index: 1 })
    );

    let mut b = sample_builder();
    b.phdrs[2].vaddr = u64::MAX - 0x100;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::AddressOverflow)
    );

    // Ends exactly at 2^64 - 0x800: page rounding overflows.
    let mut b = sample_builder();
    b.phdrs[2].vaddr = u64::MAX - 0x17FF - 0x7FF;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::AddressOverflow)
    );

    let mut b = sample_builder();
    b.phdrs[1].vaddr = 0x100; // overlaps the first segment
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::OverlappingSegments { index: 1 })
    );

    let mut b = sample_builder();
    b.phdrs.swap(0, 2); // not sorted: 0x3000 then 0x1000
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::OverlappingSegments { index: 1 })
    );

    let mut b = sample_builder();
    b.phdrs.retain(|p| p.ty != PT_LOAD);
    assert_eq!(Elf::parse(&b.build()).err(), Some(ElfError::NoLoadSegments));
}

// ---- dynamic errors ----

#[test]
fn dynamic_errors() {
    let mut b = sample_builder();
    let dynamic = b.phdrs[3];
    b.phdrs.push(dynamic);
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::MultipleDynamic)
    );

    let mut b = sample_builder();
    b.phdrs[3].filesz = 0x100_0000;
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::DynamicOutOfFile)
    );

    for (tag, val) in [(17, 0x3100), (18, 24), (19, 16)] {
        let b = sample_builder_with(&sample_relocs(), &[(tag, val)]);
        assert_eq!(
            Elf::parse(&b.build()).err(),
            Some(ElfError::UnsupportedDynamic { tag })
        );
    }
    // PLT relocations.
    let b = sample_builder_with(&sample_relocs(), &[(23, 0x3100), (2, 24)]);
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::UnsupportedDynamic { tag: 23 })
    );

    // Bad RELAENT, size not a multiple, missing pieces.
    let b = sample_builder_with(&sample_relocs(), &[(9, 16)]);
    assert!(matches!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::MalformedDynamic(_))
    ));
    let b = sample_builder_with(&sample_relocs(), &[(8, 25)]);
    assert!(matches!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::MalformedDynamic(_))
    ));
    let b = sample_builder_with(&[], &[(36, 0x3180)]);
    assert!(matches!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::MalformedDynamic(_))
    ));
    let b = sample_builder_with(&[], &[(36, 0x3180), (35, 8)]);
    assert!(matches!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::MalformedDynamic(_))
    ));

    // DT_RELA pointing outside the file-backed part of the segments (into .bss, a hole, or
    // beyond everything).
    for addr in [0x3400, 0x2000, 0x10_0000, u64::MAX - 8] {
        let b = sample_builder_with(&sample_relocs(), &[(7, addr)]);
        assert_eq!(
            Elf::parse(&b.build()).err(),
            Some(ElfError::TableNotMapped { tag: 7 })
        );
    }
    // Straddling the end of the file-backed part.
    let b = sample_builder_with(&sample_relocs(), &[(7, 0x31F0)]);
    assert_eq!(
        Elf::parse(&b.build()).err(),
        Some(ElfError::TableNotMapped { tag: 7 })
    );
}

// ---- relocation errors ----

#[test]
fn unsupported_relocation_type() {
    for ty in [1u32, 6, 7, 37 /* IRELATIVE */, 0xFFFF_FFFF] {
        let b = sample_builder_with(&[(0x3080, 8, 0), (0x3088, ty, 0)], &[]);
        let file = b.build();
        let elf = Elf::parse(&file).unwrap();
        assert_eq!(
            elf.relocations().err(),
            Some(ElfError::UnsupportedRelocation { ty })
        );
        let mut image = vec![0u8; elf.image_size() as usize];
        assert_eq!(
            load(&elf, BASE, &mut image),
            Err(ElfError::UnsupportedRelocation { ty })
        );
    }
}

#[test]
fn relocation_outside_image() {
    for offset in [
        0x5000u64,
        0x4800,
        0x47FC,
        0x2000, /* hole */
        u64::MAX - 3,
        0x1_0000_0000,
    ] {
        let b = sample_builder_with(&[(offset, 8, 0)], &[]);
        let file = b.build();
        let elf = Elf::parse(&file).unwrap();
        let mut image = vec![0u8; elf.image_size() as usize];
        assert_eq!(
            load(&elf, BASE, &mut image),
            Err(ElfError::RelocationOutOfImage { offset }),
            "offset {offset:#x}"
        );
    }
    // Below the span.
    let mut b = sample_builder_with(&[(0x10, 8, 0)], &[]);
    b.phdrs[0].vaddr = 0x100;
    b.phdrs[0].offset = 0x100;
    b.phdrs[0].filesz = 0x100;
    b.phdrs[0].memsz = 0x100;
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    let mut image = vec![0u8; elf.image_size() as usize];
    assert_eq!(
        load(&elf, BASE, &mut image),
        Err(ElfError::RelocationOutOfImage { offset: 0x10 })
    );
}

#[test]
fn relocation_overflow() {
    for (base, addend) in [(BASE, 0x8000_0000), (BASE, i64::MAX), (0, -1)] {
        let b = sample_builder_with(&[(0x3080, 8, addend)], &[]);
        let file = b.build();
        let elf = Elf::parse(&file).unwrap();
        let mut image = vec![0u8; elf.image_size() as usize];
        assert_eq!(
            load(&elf, base, &mut image),
            Err(ElfError::RelocationOverflow { offset: 0x3080 })
        );
    }
    // A negative addend that stays in range is fine.
    let b = sample_builder_with(&[(0x3080, 8, -0x10)], &[]);
    let file = b.build();
    let elf = Elf::parse(&file).unwrap();
    let (_, image) = load_vec(&elf, BASE).unwrap();
    assert_eq!(word(&image, 0x3080), BASE - 0x10);
}

// ---- load request errors ----

#[test]
fn load_request_errors() {
    let file = sample();
    let elf = Elf::parse(&file).unwrap();
    let mut image = vec![0u8; elf.image_size() as usize];
    assert_eq!(
        load(&elf, BASE + 8, &mut image),
        Err(ElfError::MisalignedBase)
    );
    let mut small = vec![0u8; 0x4000];
    assert_eq!(
        load(&elf, BASE, &mut small),
        Err(ElfError::ImageSizeMismatch {
            expected: 0x5000,
            actual: 0x4000
        })
    );
    let mut big = vec![0u8; 0x6000];
    assert!(matches!(
        load(&elf, BASE, &mut big),
        Err(ElfError::ImageSizeMismatch { .. })
    ));
    // The whole image must fit below 2^64.
    assert_eq!(
        load(&elf, 0xFFFF_FFFF_FFFF_C000, &mut image),
        Err(ElfError::AddressOverflow)
    );

    for entry in [0x2000u64, 0x5000, u64::MAX] {
        let mut b = sample_builder();
        b.entry = entry;
        let file = b.build();
        let elf = Elf::parse(&file).unwrap();
        assert_eq!(load(&elf, BASE, &mut image), Err(ElfError::EntryOutOfImage));
    }
}

#[test]
fn errors_display() {
    let e = ElfError::UnsupportedRelocation { ty: 7 };
    assert_eq!(e.to_string(), "unsupported relocation type 7");
    let _: &dyn std::error::Error = &e;
}
