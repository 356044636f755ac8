//! Host tests. Threads stand in for kernel instances.

mod threads;
mod unit;

use crate::{MSG_SIZE, MailboxMatrix, region_size};

/// A 64-byte aligned, zeroed buffer standing in for the shared region.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

pub(crate) struct Region {
    mem: Vec<Line>,
}

impl Region {
    pub fn new(n: usize) -> Self {
        Self::with_len(region_size(n))
    }

    pub fn with_len(len: usize) -> Self {
        Self {
            mem: vec![Line([0; 64]); len.div_ceil(64)],
        }
    }

    pub fn len(&self) -> usize {
        self.mem.len() * 64
    }

    pub fn ptr(&mut self) -> *mut u8 {
        self.mem.as_mut_ptr().cast()
    }

    pub fn init(&mut self, n: usize) -> MailboxMatrix<'_> {
        self.init_at(n, 0)
    }

    pub fn init_at(&mut self, n: usize, start: u64) -> MailboxMatrix<'_> {
        let (p, len) = (self.ptr(), self.len());
        // SAFETY: `mem` is a live, initialised, 64-byte aligned buffer of `len` bytes, borrowed
        // (mutably, through `self`) for the lifetime of the returned view, and only this crate
        // touches it while the view exists.
        unsafe { MailboxMatrix::init_with_start(p, len, n, start) }.expect("init")
    }

    /// A second view of the same region, as another instance would have.
    pub fn attach(&mut self) -> Result<MailboxMatrix<'_>, crate::Error> {
        let (p, len) = (self.ptr(), self.len());
        // SAFETY: as in `init_at`.
        unsafe { MailboxMatrix::attach(p, len) }
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
