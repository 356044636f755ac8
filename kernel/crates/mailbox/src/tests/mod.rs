//! Host tests. Threads stand in for kernel instances.

mod threads;
mod unit;

use mk_raw::{Page, Raw};

use crate::{InstanceId, MSG_SIZE, MailboxMatrix, region_size};

/// Instance `i` (test shorthand).
pub(crate) fn id(i: usize) -> InstanceId {
    InstanceId::from_index(i).expect("instance id")
}

/// A zeroed, page-aligned buffer standing in for the shared region (`len` bytes of it used).
pub(crate) struct Region {
    mem: Vec<Page>,
    len: usize,
}

impl Region {
    pub fn new(n: usize) -> Self {
        Self::with_len(region_size(n))
    }

    pub fn with_len(len: usize) -> Self {
        Self {
            mem: (0..len.div_ceil(mk_raw::PAGE))
                .map(|_| Page::default())
                .collect(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The whole buffer (safe: it is ours, and only ever accessed through atomics).
    pub fn raw(&self) -> Raw<'_> {
        Raw::from_pages(&self.mem).sub(0, self.len).expect("len")
    }

    /// Overwrites bytes at `offset` (as a broken or foreign writer would).
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        self.raw().write(offset, bytes).expect("in bounds");
    }

    /// A byte copy at another address (another instance's mapping of the same memory).
    pub fn copy(&self) -> Self {
        let mut bytes = vec![0; self.len];
        self.raw().read(0, &mut bytes).expect("in bounds");
        let copy = Self::with_len(self.len);
        copy.poke(0, &bytes);
        copy
    }

    pub fn init(&mut self, n: usize) -> MailboxMatrix<'_> {
        self.init_at(n, 0)
    }

    pub fn init_at(&mut self, n: usize, start: u64) -> MailboxMatrix<'_> {
        MailboxMatrix::init_with_start(self.raw(), n, start).expect("init")
    }

    /// A second view of the same region, as another instance would have.
    pub fn attach(&mut self) -> Result<MailboxMatrix<'_>, crate::Error> {
        MailboxMatrix::attach(self.raw())
    }
}

/// A message carrying `(from, to, n)` in bytes 4..20 and a pattern derived from them after.
pub(crate) fn make_msg(from: usize, to: usize, n: u64) -> [u8; MSG_SIZE] {
    let mut m = [0u8; MSG_SIZE];
    m[4..12].copy_from_slice(&n.to_le_bytes());
    m[12..16].copy_from_slice(&(from as u16).to_le_bytes().repeat(2));
    m[16..20].copy_from_slice(&(to as u32).to_le_bytes());
    for (i, b) in m.iter_mut().enumerate().skip(20) {
        *b = (n as u8).wrapping_mul(31).wrapping_add(i as u8) ^ (from as u8) ^ ((to as u8) << 4);
    }
    m
}

/// Checks the pattern and returns the embedded counter.
pub(crate) fn check_msg(from: usize, to: usize, m: &[u8; MSG_SIZE]) -> u64 {
    let n = u64::from_le_bytes(m[4..12].try_into().unwrap());
    let want = make_msg(from, to, n);
    assert_eq!(
        &m[4..],
        &want[4..],
        "payload of message {n} {from}->{to} damaged"
    );
    n
}
