//! Test case of user address spaces and the program loader, without running user code:
//! mappings and their refusals, checked copies in and out, isolation between spaces, the loader
//! on hand-made ELF files, and the frame accounting over many spaces.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::harness::{Outcome, ensure};
use crate::memory::frames;
use crate::memory::paging;
use crate::memory::space::{
    self, ANON_END, ANON_START, AddressSpace, PAGE_SIZE, PROGRAM_BASE, Perm, STACK_BOTTOM,
    STACK_TOP, SpaceError, USER_END, UserFault,
};
use crate::println;
use crate::tasks::loader::{self, LoadError};

fn new_space() -> Result<AddressSpace, alloc::string::String> {
    AddressSpace::new().map_err(|e| format!("AddressSpace::new: {e}"))
}

fn expect_err<T, E: PartialEq + core::fmt::Debug>(
    what: &str,
    got: Result<T, E>,
    want: E,
) -> Outcome {
    match got {
        Ok(_) => Err(format!("{what}: accepted, expected {want:?}")),
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("{what}: got {e:?}, expected {want:?}")),
    }
}

/// The whole case; its parts below.
/// Device memory (the IO APIC's page, never RAM): mapped uncached in the anonymous region,
/// not counted as the space's pages, refused to the kernel's copies, and unmapped without
/// being freed; the instance's own memory is refused.
fn devices() -> Outcome {
    const IOAPIC: u64 = 0xFEC0_0000;
    let mut s = AddressSpace::new().map_err(|e| format!("new: {e}"))?;
    let root = s.root_phys();
    ensure(
        matches!(
            s.map_device(root, PAGE_SIZE),
            Err(SpaceError::NotDevice { .. })
        ),
        || "the instance's own memory was mapped as a device".into(),
    )?;
    let va = s
        .map_device(IOAPIC, 100)
        .map_err(|e| format!("map_device: {e}"))?;
    let (phys, flags) = s.translate(va).ok_or("the device page is not mapped")?;
    ensure(phys == IOAPIC, || format!("device page maps {phys:#x}"))?;
    let uncached = paging_flags_uncached(flags);
    ensure(uncached, || format!("device page flags {flags:?}"))?;
    ensure(s.device_pages() == 1 && s.mapped_pages() == 0, || {
        format!(
            "{} device, {} mapped pages",
            s.device_pages(),
            s.mapped_pages()
        )
    })?;
    let mut buf = [0u8; 4];
    ensure(
        matches!(s.read_user(va, &mut buf), Err(UserFault::Device { .. })),
        || "read_user copied from device memory".into(),
    )?;
    s.unmap_anon(va, 1)
        .map_err(|e| format!("unmap_anon: {e}"))?;
    ensure(s.device_pages() == 0, || "device page still counted".into())
}

fn paging_flags_uncached(flags: x86_64::structures::paging::PageTableFlags) -> bool {
    use x86_64::structures::paging::PageTableFlags as F;
    flags.contains(F::NO_CACHE | F::WRITE_THROUGH | F::USER_ACCESSIBLE | F::NO_EXECUTE)
}

pub(super) fn address_spaces() -> Outcome {
    let (free_before, _) = frames::counts();
    let usage_before = space::usage();
    mappings()?;
    copies()?;
    isolation()?;
    anonymous()?;
    devices()?;
    loading()?;
    activation()?;
    many_spaces()?;
    let (free_after, _) = frames::counts();
    let usage_after = space::usage();
    ensure(free_after == free_before, || {
        format!("free frames went from {free_before} to {free_after} over the case")
    })?;
    ensure(usage_after == usage_before, || {
        format!("space usage went from {usage_before:?} to {usage_after:?}")
    })
}

/// Mapping: refusals (W^X, page 0, the kernel half, unaligned, overlapping, outside the
/// regions), rollback, unmapping, flags.
fn mappings() -> Outcome {
    let mut s = new_space()?;
    let va = PROGRAM_BASE;
    expect_err(
        "W+X",
        s.map_zeroed(
            va,
            1,
            Perm {
                write: true,
                exec: true,
            },
        ),
        SpaceError::WriteExecute,
    )?;
    expect_err(
        "page 0",
        s.map_zeroed(0, 1, Perm::RW),
        SpaceError::OutsideRegions { va: 0, pages: 1 },
    )?;
    let kernel = crate::memory::KERNEL_BASE;
    expect_err(
        "kernel half",
        s.map_zeroed(kernel, 1, Perm::RW),
        SpaceError::OutsideRegions {
            va: kernel,
            pages: 1,
        },
    )?;
    expect_err(
        "unaligned",
        s.map_zeroed(va + 8, 1, Perm::RW),
        SpaceError::Unaligned { va: va + 8 },
    )?;
    expect_err("no pages", s.map_zeroed(va, 0, Perm::RW), SpaceError::Empty)?;
    expect_err(
        "wrapping",
        s.map_zeroed(va, u64::MAX / 4096, Perm::RW),
        SpaceError::OutsideRegions {
            va,
            pages: u64::MAX / 4096,
        },
    )?;
    expect_err(
        "guard page",
        s.map_zeroed(STACK_BOTTOM - PAGE_SIZE, 1, Perm::RW),
        SpaceError::OutsideRegions {
            va: STACK_BOTTOM - PAGE_SIZE,
            pages: 1,
        },
    )?;
    ensure(s.mapped_pages() == 0, || "refusals mapped pages".into())?;
    s.map_zeroed(va, 4, Perm::RW)
        .map_err(|e| format!("map 4 pages: {e}"))?;
    expect_err(
        "overlap",
        s.map_zeroed(va + 3 * PAGE_SIZE, 2, Perm::R),
        SpaceError::AlreadyMapped {
            va: va + 3 * PAGE_SIZE,
        },
    )?;
    ensure(s.mapped_pages() == 4, || {
        format!("{} pages mapped, expected 4", s.mapped_pages())
    })?;
    let (_, flags) = s.translate(va).ok_or("mapped page does not translate")?;
    use x86_64::structures::paging::PageTableFlags as F;
    ensure(
        flags.contains(F::PRESENT | F::USER_ACCESSIBLE | F::WRITABLE | F::NO_EXECUTE),
        || format!("RW page has flags {flags:?}"),
    )?;
    s.map_zeroed(va + 8 * PAGE_SIZE, 1, Perm::RX)
        .map_err(|e| format!("map RX: {e}"))?;
    let (_, flags) = s.translate(va + 8 * PAGE_SIZE).ok_or("RX page missing")?;
    ensure(
        flags.contains(F::USER_ACCESSIBLE) && !flags.intersects(F::WRITABLE | F::NO_EXECUTE),
        || format!("RX page has flags {flags:?}"),
    )?;
    expect_err(
        "unmap partly unmapped",
        s.unmap(va + 2 * PAGE_SIZE, 4),
        SpaceError::NotMapped {
            va: va + 4 * PAGE_SIZE,
        },
    )?;
    s.unmap(va + PAGE_SIZE, 2)
        .map_err(|e| format!("unmap: {e}"))?;
    ensure(
        s.translate(va + PAGE_SIZE).is_none() && s.translate(va).is_some(),
        || "unmap removed the wrong pages".into(),
    )?;
    ensure(s.mapped_pages() == 3, || {
        format!("{} pages mapped, expected 3", s.mapped_pages())
    })?;
    // One level-3, level-2 and level-1 table for the program's 2 MiB.
    ensure(s.table_pages() == 3, || {
        format!("{} page tables, expected 3", s.table_pages())
    })?;
    // The errors a task sees.
    use mk_abi::Error as E;
    ensure(
        SpaceError::OutOfFrames.abi_error() == E::OutOfMemory
            && SpaceError::NotMapped { va }.abi_error() == E::BadAddress
            && UserFault::TooLong { len: 2, max: 1 }.abi_error() == E::BadLength
            && UserFault::ReadOnly { va }.abi_error() == E::BadAddress
            && LoadError::Map(SpaceError::OutOfFrames).abi_error() == E::OutOfMemory
            && LoadError::WriteExecute { vaddr: 0 }.abi_error() == E::BadArgument,
        || "system call errors".into(),
    )
}

/// `write_user`/`read_user` round trip across a page boundary; every bad range is an error.
fn copies() -> Outcome {
    let mut s = new_space()?;
    let va = PROGRAM_BASE;
    s.map_zeroed(va, 2, Perm::RW)
        .map_err(|e| format!("map: {e}"))?;
    s.map_zeroed(va + 2 * PAGE_SIZE, 1, Perm::R)
        .map_err(|e| format!("map: {e}"))?;
    let data: Vec<u8> = (0..600u32).map(|i| (i * 7) as u8).collect();
    let at = va + PAGE_SIZE - 300;
    s.write_user(at, &data)
        .map_err(|e| format!("write_user: {e}"))?;
    let mut back = vec![0u8; data.len()];
    s.read_user(at, &mut back)
        .map_err(|e| format!("read_user: {e}"))?;
    ensure(back == data, || "read_user returned other bytes".into())?;
    let mut one = [0u8; 16];
    s.read_user(va + 2 * PAGE_SIZE, &mut one)
        .map_err(|e| format!("read of a read-only page: {e}"))?;
    ensure(one == [0; 16], || "a fresh page is not zeroed".into())?;

    let shared = super::harness::plan()
        .ok()
        .and_then(|p| p.shared())
        .map(|r| r.start);
    let mut buf = [0u8; 8];
    let kernel = crate::memory::KERNEL_BASE;
    expect_err(
        "read kernel image",
        s.read_user(kernel, &mut buf),
        UserFault::OutsideUser { va: kernel, len: 8 },
    )?;
    let physmap = frames::phys_offset();
    expect_err(
        "read physical map",
        s.read_user(physmap, &mut buf),
        UserFault::OutsideUser {
            va: physmap,
            len: 8,
        },
    )?;
    if let Some(phys) = shared {
        let virt = frames::phys_to_virt(phys);
        expect_err(
            "read shared region (kernel address)",
            s.read_user(virt, &mut buf),
            UserFault::OutsideUser { va: virt, len: 8 },
        )?;
        expect_err(
            "read shared region (its physical address as a user address)",
            s.read_user(phys, &mut buf),
            UserFault::NotMapped {
                va: phys & !(PAGE_SIZE - 1),
            },
        )?;
    }
    expect_err(
        "read unmapped",
        s.read_user(va + 3 * PAGE_SIZE, &mut buf),
        UserFault::NotMapped {
            va: va + 3 * PAGE_SIZE,
        },
    )?;
    expect_err(
        "read null",
        s.read_user(0, &mut buf),
        UserFault::NotMapped { va: 0 },
    )?;
    expect_err(
        "read across the end of the mapping",
        s.read_user(va + 3 * PAGE_SIZE - 4, &mut buf),
        UserFault::NotMapped {
            va: va + 3 * PAGE_SIZE,
        },
    )?;
    expect_err(
        "read across the user end",
        s.read_user(USER_END - 4, &mut buf),
        UserFault::OutsideUser {
            va: USER_END - 4,
            len: 8,
        },
    )?;
    expect_err(
        "wrapping read",
        s.read_user(u64::MAX - 3, &mut buf),
        UserFault::Wraps {
            va: u64::MAX - 3,
            len: 8,
        },
    )?;
    expect_err(
        "write to read-only page",
        s.write_user(va + 2 * PAGE_SIZE - 4, &buf),
        UserFault::ReadOnly {
            va: va + 2 * PAGE_SIZE,
        },
    )?;
    // Nothing of a refused write was written.
    let mut tail = [0u8; 4];
    s.read_user(va + 2 * PAGE_SIZE - 4, &mut tail)
        .map_err(|e| format!("read back: {e}"))?;
    ensure(tail == [0; 4], || "a refused write wrote".into())?;
    s.load_bytes(va + 2 * PAGE_SIZE, b"text")
        .map_err(|e| format!("load_bytes into a read-only page: {e}"))?;
    s.write_user(va, "héllo".as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let text = s
        .read_user_str(va, 6, 64)
        .map_err(|e| format!("read_user_str: {e}"))?;
    ensure(text == "héllo", || format!("read_user_str gave {text:?}"))?;
    expect_err(
        "string too long",
        s.read_user_str(va, 65, 64),
        UserFault::TooLong { len: 65, max: 64 },
    )?;
    s.write_user(va, &[0xff, 0xfe])
        .map_err(|e| format!("write: {e}"))?;
    expect_err(
        "string not UTF-8",
        s.read_user_str(va, 2, 64),
        UserFault::NotUtf8 { va },
    )
}

/// A second space sees none of the first's pages, and its own at the same address are others.
fn isolation() -> Outcome {
    let mut a = new_space()?;
    let mut b = new_space()?;
    let va = PROGRAM_BASE + 0x10_0000;
    a.map_zeroed(va, 1, Perm::RW)
        .map_err(|e| format!("map in a: {e}"))?;
    a.write_user(va, b"first")
        .map_err(|e| format!("write in a: {e}"))?;
    let mut buf = [0u8; 5];
    expect_err(
        "b reads a's page",
        b.read_user(va, &mut buf),
        UserFault::NotMapped { va },
    )?;
    b.map_zeroed(va, 1, Perm::RW)
        .map_err(|e| format!("map in b: {e}"))?;
    b.read_user(va, &mut buf)
        .map_err(|e| format!("read in b: {e}"))?;
    ensure(buf == [0; 5], || "b's fresh page holds a's data".into())?;
    b.write_user(va, b"other")
        .map_err(|e| format!("write in b: {e}"))?;
    a.read_user(va, &mut buf)
        .map_err(|e| format!("read in a: {e}"))?;
    ensure(&buf == b"first", || "b's write shows in a".into())?;
    let pa = a.translate(va).map(|t| t.0);
    let pb = b.translate(va).map(|t| t.0);
    ensure(pa != pb && pa.is_some(), || {
        format!("both spaces map {va:#x} to {pa:?}/{pb:?}")
    })?;
    ensure(a.root_phys() != b.root_phys(), || "same root".into())
}

/// The anonymous region: first fit with guard pages, reuse, refusals.
fn anonymous() -> Outcome {
    let mut s = new_space()?;
    let a = s
        .map_anon(3 * PAGE_SIZE)
        .map_err(|e| format!("map_anon: {e}"))?;
    let b = s.map_anon(1).map_err(|e| format!("map_anon: {e}"))?;
    ensure(a == ANON_START && b == a + 4 * PAGE_SIZE, || {
        format!("anon mappings at {a:#x} and {b:#x}")
    })?;
    s.write_user(b, &[1; 4096])
        .map_err(|e| format!("write anon: {e}"))?;
    expect_err(
        "unmap_anon outside the region",
        s.unmap_anon(PROGRAM_BASE, 1),
        SpaceError::NotAnon {
            va: PROGRAM_BASE,
            pages: 1,
        },
    )?;
    s.unmap_anon(a + PAGE_SIZE, 1)
        .map_err(|e| format!("unmap_anon middle: {e}"))?;
    ensure(s.anon_ranges().len() == 3, || {
        format!("anon ranges {:x?}", s.anon_ranges())
    })?;
    s.unmap_anon(a, 1).map_err(|e| format!("unmap_anon: {e}"))?;
    s.unmap_anon(a + 2 * PAGE_SIZE, 1)
        .map_err(|e| format!("unmap_anon: {e}"))?;
    let c = s
        .map_anon(2 * PAGE_SIZE)
        .map_err(|e| format!("map_anon: {e}"))?;
    ensure(c == ANON_START, || {
        format!("freed range not reused: {c:#x}")
    })?;
    expect_err(
        "anon too large",
        s.map_anon(ANON_END - ANON_START),
        SpaceError::AnonFull {
            len: ANON_END - ANON_START,
        },
    )?;
    expect_err("anon empty", s.map_anon(0), SpaceError::Empty)
}

/// A minimal ELF: one PT_LOAD covering the whole file (header, program header, `code`) plus
/// `bss` zero bytes, at `vaddr`, entry at the code.
fn tiny_elf(kind: u16, vaddr: u64, p_flags: u32, code: &[u8], bss: u64) -> Vec<u8> {
    let mut b = vec![0u8; 120];
    b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(&mut b, 16, &kind.to_le_bytes());
    put(&mut b, 18, &62u16.to_le_bytes());
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &(vaddr + 120).to_le_bytes());
    put(&mut b, 32, &64u64.to_le_bytes());
    put(&mut b, 52, &64u16.to_le_bytes());
    put(&mut b, 54, &56u16.to_le_bytes());
    put(&mut b, 56, &1u16.to_le_bytes());
    let file = 120 + code.len() as u64;
    put(&mut b, 64, &1u32.to_le_bytes());
    put(&mut b, 68, &p_flags.to_le_bytes());
    put(&mut b, 72, &0u64.to_le_bytes());
    put(&mut b, 80, &vaddr.to_le_bytes());
    put(&mut b, 88, &vaddr.to_le_bytes());
    put(&mut b, 96, &file.to_le_bytes());
    put(&mut b, 104, &(file + bss).to_le_bytes());
    put(&mut b, 112, &4096u64.to_le_bytes());
    b.extend_from_slice(code);
    b
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

/// The loader on hand-made files: a fixed and a position-independent program load, with
/// their stack and arguments; bad files are refused and leave nothing mapped.
fn loading() -> Outcome {
    let code = [0xEB, 0xFE, 0x90, 0x90];
    // Fixed address.
    let elf = tiny_elf(2, 0x50_0000, R | X, &code, 5000);
    let mut s = new_space()?;
    let args = "hello world";
    let l = loader::load(&mut s, &elf, args).map_err(|e| format!("load ET_EXEC: {e}"))?;
    ensure(l.entry == 0x50_0000 + 120, || {
        format!("entry {:#x}", l.entry)
    })?;
    let mut got = [0u8; 4];
    s.read_user(l.entry, &mut got)
        .map_err(|e| format!("read code: {e}"))?;
    ensure(got == code, || format!("code reads {got:x?}"))?;
    expect_err(
        "write to the text",
        s.write_user(l.entry, &[0]),
        UserFault::ReadOnly { va: 0x50_0000 },
    )?;
    let mut bss = [1u8; 16];
    s.read_user(0x50_0000 + 120 + 4, &mut bss)
        .map_err(|e| format!("read bss: {e}"))?;
    ensure(bss == [0; 16], || "bss not zero".into())?;
    ensure(l.stack_top % 16 == 8, || {
        format!("rsp {:#x} not 8 mod 16", l.stack_top)
    })?;
    ensure(
        l.stack_top < l.args_ptr && l.args_ptr + l.args_len <= STACK_TOP,
        || format!("args at {:#x}, rsp {:#x}", l.args_ptr, l.stack_top),
    )?;
    let text = s
        .read_user_str(l.args_ptr, l.args_len, 1024)
        .map_err(|e| format!("read args: {e}"))?;
    ensure(text == args, || format!("args read {text:?}"))?;
    let mut word = [1u8; 8];
    s.read_user(l.stack_top, &mut word)
        .map_err(|e| format!("read rsp: {e}"))?;
    ensure(word == [0; 8], || "the return-address word is not 0".into())?;
    s.write_user(STACK_BOTTOM, &[1; 8])
        .map_err(|e| format!("write stack bottom: {e}"))?;
    ensure(s.translate(STACK_BOTTOM - PAGE_SIZE).is_none(), || {
        "the guard page is mapped".into()
    })?;
    drop(s);

    // Position independent, at PROGRAM_BASE; data RW.
    let elf = tiny_elf(3, 0, R | X, &code, 0);
    let mut s = new_space()?;
    let l = loader::load(&mut s, &elf, "").map_err(|e| format!("load ET_DYN: {e}"))?;
    ensure(l.entry == PROGRAM_BASE + 120, || {
        format!("ET_DYN entry {:#x}", l.entry)
    })?;
    drop(s);

    // Refusals: nothing stays mapped.
    let cases: [(&str, Vec<u8>, LoadError); 5] = [
        (
            "W+X segment",
            tiny_elf(2, 0x50_0000, R | W | X, &code, 0),
            LoadError::WriteExecute { vaddr: 0x50_0000 },
        ),
        (
            "kernel-half segment",
            tiny_elf(2, 0xFFFF_8000_0000_0000, R | X, &code, 0),
            LoadError::OutsideProgramArea {
                start: 0xFFFF_8000_0000_0000,
                end: 0xFFFF_8000_0000_1000,
            },
        ),
        (
            "segment at page 0",
            tiny_elf(2, 0, R | X, &code, 0),
            LoadError::OutsideProgramArea {
                start: 0,
                end: 0x1000,
            },
        ),
        (
            "entry not executable",
            tiny_elf(2, 0x50_0000, R | W, &code, 0),
            LoadError::EntryOutside {
                entry: 0x50_0000 + 120,
            },
        ),
        (
            "huge bss",
            tiny_elf(2, 0x50_0000, R | X, &code, 1 << 30),
            LoadError::TooLarge {
                size: (1 << 30) + 4096,
                max: loader::MAX_IMAGE,
            },
        ),
    ];
    for (what, elf, want) in cases {
        let mut s = new_space()?;
        expect_err(what, loader::load(&mut s, &elf, "x"), want)?;
        ensure(s.mapped_pages() == 0, || {
            format!("{what}: pages left mapped")
        })?;
    }
    let mut s = new_space()?;
    let long = "a".repeat(mk_abi::MAX_ARGS as usize + 1);
    expect_err(
        "arguments too long",
        loader::load(&mut s, &tiny_elf(2, 0x50_0000, R | X, &code, 0), &long),
        LoadError::ArgsTooLong {
            len: mk_abi::MAX_ARGS + 1,
            max: mk_abi::MAX_ARGS,
        },
    )?;
    match loader::load(&mut s, b"\x7fELF garbage", "x") {
        Err(LoadError::Elf(_)) => {}
        other => return Err(format!("garbage file: {other:?}")),
    }
    // A program over an occupied stack fails late: what it mapped goes again.
    s.map_zeroed(STACK_BOTTOM, 1, Perm::RW)
        .map_err(|e| format!("map stack page: {e}"))?;
    match loader::load(&mut s, &tiny_elf(2, 0x50_0000, R | X, &code, 0), "x") {
        Err(LoadError::Map(SpaceError::AlreadyMapped { .. })) => {}
        other => return Err(format!("load over a mapped stack: {other:?}")),
    }
    ensure(s.mapped_pages() == 1, || {
        format!("{} pages left after a failed load", s.mapped_pages())
    })
}

/// The kernel keeps running on a space's table (its kernel half), and comes back.
fn activation() -> Outcome {
    let kernel_root = paging::root();
    let mut s = new_space()?;
    s.map_zeroed(PROGRAM_BASE, 1, Perm::RW)
        .map_err(|e| format!("map: {e}"))?;
    s.activate();
    let active = s.is_active();
    // The heap, the stack and the console work on the space's table.
    let v: Vec<u64> = (0..64).collect();
    let sum: u64 = v.iter().sum();
    s.unmap(PROGRAM_BASE, 1)
        .map_err(|e| format!("unmap while active: {e}"))?;
    space::activate_kernel();
    ensure(active && sum == 2016, || {
        "activate did not load the space".into()
    })?;
    ensure(paging::root() == kernel_root, || {
        "activate_kernel did not restore the kernel's table".into()
    })?;
    // Dropping the loaded space switches back first.
    s.activate();
    drop(s);
    ensure(paging::root() == kernel_root, || {
        "dropping the loaded space left CR3 on it".into()
    })
}

/// 1,000 spaces created, given pages, filled and dropped: the free frame count is unchanged.
fn many_spaces() -> Outcome {
    let (free_before, _) = frames::counts();
    for i in 0..1000u64 {
        let mut s = new_space()?;
        s.map_zeroed(PROGRAM_BASE + (i % 7) * 0x20_0000, 2, Perm::RX)
            .map_err(|e| format!("space {i}: map: {e}"))?;
        s.map_anon(3 * PAGE_SIZE)
            .map_err(|e| format!("space {i}: map_anon: {e}"))?;
        s.map_zeroed(STACK_BOTTOM, 1, Perm::RW)
            .map_err(|e| format!("space {i}: map stack: {e}"))?;
        s.write_user(STACK_BOTTOM, &i.to_le_bytes())
            .map_err(|e| format!("space {i}: write: {e}"))?;
    }
    let (free_after, _) = frames::counts();
    let usage = space::usage();
    println!(
        "address_spaces: 1000 spaces created and dropped; free frames {free_before} -> {free_after}, {usage:?}"
    );
    ensure(free_after == free_before, || {
        format!("free frames went from {free_before} to {free_after}")
    })?;
    ensure(usage.free_errors == 0, || {
        format!("{} frames refused back", usage.free_errors)
    })
}
