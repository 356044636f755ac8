//! A tiny ELF64 writer for the tests, plus a standard synthetic static PIE.

#![allow(dead_code)]

pub use mk_elf::{PT_DYNAMIC, PT_LOAD};
pub const PT_GNU_STACK: u32 = 0x6474_e551;

/// One program header, written verbatim.
#[derive(Clone, Copy, Debug)]
pub struct Ph {
    pub ty: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Builds a file: ELF header, program headers at offset 64, blobs at explicit offsets.
#[derive(Clone, Debug)]
pub struct Builder {
    pub class: u8,
    pub data: u8,
    pub ty: u16,
    pub machine: u16,
    pub entry: u64,
    pub phentsize: u16,
    pub phdrs: Vec<Ph>,
    pub blobs: Vec<(usize, Vec<u8>)>,
    pub min_len: usize,
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            class: 2,
            data: 1,
            ty: 3,
            machine: 62,
            entry: 0,
            phentsize: 56,
            phdrs: Vec::new(),
            blobs: Vec::new(),
            min_len: 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let ph_end = 64 + 56 * self.phdrs.len();
        let len = self
            .blobs
            .iter()
            .map(|(o, b)| o + b.len())
            .chain([ph_end, self.min_len])
            .max()
            .unwrap();
        let mut f = vec![0u8; len];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = self.class;
        f[5] = self.data;
        f[6] = 1;
        put16(&mut f, 16, self.ty);
        put16(&mut f, 18, self.machine);
        put32(&mut f, 20, 1);
        put64(&mut f, 24, self.entry);
        put64(&mut f, 32, 64);
        put16(&mut f, 52, 64);
        put16(&mut f, 54, self.phentsize);
        put16(&mut f, 56, self.phdrs.len() as u16);
        for (i, p) in self.phdrs.iter().enumerate() {
            let o = 64 + 56 * i;
            put32(&mut f, o, p.ty);
            put32(&mut f, o + 4, p.flags);
            put64(&mut f, o + 8, p.offset);
            put64(&mut f, o + 16, p.vaddr);
            put64(&mut f, o + 24, p.vaddr);
            put64(&mut f, o + 32, p.filesz);
            put64(&mut f, o + 40, p.memsz);
            put64(&mut f, o + 48, 0x1000);
        }
        for (o, b) in &self.blobs {
            f[*o..*o + b.len()].copy_from_slice(b);
        }
        f
    }
}

pub fn put16(f: &mut [u8], o: usize, v: u16) {
    f[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put32(f: &mut [u8], o: usize, v: u32) {
    f[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put64(f: &mut [u8], o: usize, v: u64) {
    f[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn dynamic(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(t, val) in entries.iter().chain(&[(0, 0)]) {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
    }
    v
}

pub fn rela(entries: &[(u64, u32, i64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(off, ty, addend) in entries {
        v.extend_from_slice(&off.to_le_bytes());
        v.extend_from_slice(&u64::from(ty).to_le_bytes());
        v.extend_from_slice(&addend.to_le_bytes());
    }
    v
}

pub fn relr(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

// Layout of the standard sample (vaddr == offset for R and RX, shifted by 0x1000 for RW, like
// lld does):
//   PT_LOAD R   off 0x0000 vaddr 0x0000 filesz 0x200 memsz 0x200   (headers, rodata)
//   PT_LOAD RX  off 0x1000 vaddr 0x1000 filesz 0x10  memsz 0x10    (text, entry 0x1000)
//   PT_LOAD RW  off 0x2000 vaddr 0x3000 filesz 0x200 memsz 0x1800  (dynamic, data, rela, bss)
//   PT_DYNAMIC  off 0x2000 vaddr 0x3000
//   data words at 0x3080.., .rela.dyn at 0x3100 (file 0x2100), bss 0x3200..0x4800
pub const RO_VADDR: u64 = 0x0;
pub const TEXT_VADDR: u64 = 0x1000;
pub const DATA_VADDR: u64 = 0x3000;
pub const DATA_FILE: usize = 0x2000;
pub const DATA_MEMSZ: u64 = 0x1800;
pub const RELA_VADDR: u64 = 0x3100;
pub const RELA_FILE: usize = 0x2100;
pub const CODE: [u8; 16] = [0xF4; 16];
pub const RODATA_MARK: [u8; 8] = *b"rodata!!";
pub const DATA_MARK: [u8; 8] = *b"data....";

/// The standard relocations of the sample: two RELATIVE and one NONE.
pub fn sample_relocs() -> Vec<(u64, u32, i64)> {
    vec![
        (0x3080, 8, 0x1000), // pointer to entry
        (0x3088, 0, 0),      // R_X86_64_NONE, skipped
        (0x3090, 8, 0x180),  // pointer into rodata
        (0x3400, 8, 0x3080), // pointer stored in .bss (still inside the segment)
    ]
}

pub fn sample_builder_with(relocs: &[(u64, u32, i64)], extra_dyn: &[(u64, u64)]) -> Builder {
    let rela_bytes = rela(relocs);
    let mut dyn_entries = vec![(7, RELA_VADDR), (8, rela_bytes.len() as u64), (9, 24)];
    dyn_entries.extend_from_slice(extra_dyn);
    let dyn_bytes = dynamic(&dyn_entries);
    assert!(dyn_bytes.len() <= 0x80);
    let mut b = Builder::new();
    b.entry = TEXT_VADDR;
    b.phdrs = vec![
        Ph {
            ty: PT_LOAD,
            flags: 4,
            offset: 0,
            vaddr: RO_VADDR,
            filesz: 0x200,
            memsz: 0x200,
        },
        Ph {
            ty: PT_LOAD,
            flags: 5,
            offset: 0x1000,
            vaddr: TEXT_VADDR,
            filesz: 0x10,
            memsz: 0x10,
        },
        Ph {
            ty: PT_LOAD,
            flags: 6,
            offset: DATA_FILE as u64,
            vaddr: DATA_VADDR,
            filesz: 0x200,
            memsz: DATA_MEMSZ,
        },
        Ph {
            ty: PT_DYNAMIC,
            flags: 6,
            offset: DATA_FILE as u64,
            vaddr: DATA_VADDR,
            filesz: dyn_bytes.len() as u64,
            memsz: dyn_bytes.len() as u64,
        },
        Ph {
            ty: PT_GNU_STACK,
            flags: 6,
            offset: 0,
            vaddr: 0,
            filesz: 0,
            memsz: 0,
        },
    ];
    b.blobs = vec![
        (0x180, RODATA_MARK.to_vec()),
        (0x1000, CODE.to_vec()),
        (DATA_FILE, dyn_bytes),
        (DATA_FILE + 0x98, DATA_MARK.to_vec()),
        (RELA_FILE, rela_bytes),
    ];
    b.min_len = DATA_FILE + 0x200;
    b
}

pub fn sample_builder() -> Builder {
    sample_builder_with(&sample_relocs(), &[])
}

pub fn sample() -> Vec<u8> {
    sample_builder().build()
}
