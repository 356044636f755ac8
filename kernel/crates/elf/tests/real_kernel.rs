//! Parses and loads the real kernel if it has been built
//! (`target/x86_64-unknown-none/release/kernel`, or the file named by `MK_KERNEL_ELF`).

use mk_elf::*;
use std::path::PathBuf;

const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

fn kernel_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MK_KERNEL_ELF") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../target/x86_64-unknown-none/release/kernel")
}

#[test]
fn real_kernel_parses_and_loads() {
    let path = kernel_path();
    let Ok(file) = std::fs::read(&path) else {
        eprintln!(
            "note: {} not found, skipping the real kernel test",
            path.display()
        );
        return;
    };
    let elf = Elf::parse(&file).expect("parse the kernel");
    assert_eq!(elf.kind(), ElfKind::Dyn, "the kernel must be a static PIE");

    let segments: Vec<Segment> = elf.load_segments().collect();
    assert!(!segments.is_empty());
    assert!(
        segments.iter().any(|s| s.flags.execute),
        "no executable segment"
    );
    for s in &segments {
        assert!(!s.flags.is_write_execute(), "W+X segment {s:?}");
    }
    let (min, end) = elf.span();
    assert!(end > min);

    // `relocations()` fails on anything but RELATIVE/NONE.
    let relocs: Vec<Relocation> = elf
        .relocations()
        .expect("only RELATIVE relocations")
        .collect();
    assert!(!relocs.is_empty(), "a PIE kernel has relocations");

    let mut image = vec![0u8; elf.image_size() as usize];
    let entry = load(&elf, KERNEL_BASE, &mut image).expect("load the kernel");
    assert_eq!(entry, KERNEL_BASE + elf.entry());

    // Every segment's file bytes are there, except the relocated words.
    let relocated: std::collections::HashSet<u64> = relocs.iter().map(|r| r.offset).collect();
    for s in &segments {
        let src = &file[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
        let dst = &image[(s.vaddr - min) as usize..][..s.file_size as usize];
        for (i, (a, b)) in src.iter().zip(dst).enumerate() {
            let v = s.vaddr + i as u64;
            if a != b {
                assert!(
                    (0..8).any(|k| v >= k && relocated.contains(&(v - k))),
                    "byte at {v:#x} changed but is not relocated"
                );
            }
        }
        assert!(
            image[(s.vaddr + s.file_size - min) as usize..(s.end() - min) as usize]
                .iter()
                .all(|&b| b == 0),
            ".bss not zero"
        );
    }
    // Every RELA slot holds KERNEL_BASE + addend.
    for r in &relocs {
        if let Addend::Explicit(a) = r.addend {
            let o = (r.offset - min) as usize;
            let v = u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
            assert_eq!(v, KERNEL_BASE.wrapping_add_signed(a));
        }
    }
    eprintln!(
        "kernel: {} bytes, {} segments, span {min:#x}..{end:#x}, {} relocations, entry {entry:#x}",
        file.len(),
        segments.len(),
        relocs.len()
    );
}
