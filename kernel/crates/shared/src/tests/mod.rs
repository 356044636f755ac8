//! Host tests. Threads stand in for kernel instances.

mod threads;
mod unit;

use crate::{Error, SharedRegion, region_size};

/// A 4 KiB-aligned page standing in for shared memory.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
pub(crate) struct Page([u8; 4096]);

/// A zeroed (or garbage-filled), page-aligned buffer standing in for the shared region.
pub(crate) struct Region {
    mem: Vec<Page>,
}

impl Region {
    pub fn new(n: usize) -> Self {
        Self::with_len(region_size(n), 0)
    }

    pub fn with_len(len: usize, fill: u8) -> Self {
        Self {
            mem: vec![Page([fill; 4096]); len.div_ceil(4096)],
        }
    }

    pub fn len(&self) -> usize {
        self.mem.len() * 4096
    }

    pub fn ptr(&mut self) -> *mut u8 {
        self.mem.as_mut_ptr().cast()
    }

    /// Overwrites bytes at `offset` (as a broken or foreign writer would).
    pub fn poke(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset + i;
            self.mem[at / 4096].0[at % 4096] = b;
        }
    }

    /// A byte copy at another address (another instance's mapping of the same memory).
    pub fn copy(&self) -> Self {
        Self {
            mem: self.mem.clone(),
        }
    }

    pub fn init(&mut self, n: usize, tsc: u64) -> Result<SharedRegion<'_>, Error> {
        let (p, len) = (self.ptr(), self.len());
        // SAFETY: `mem` is a live, initialised, 4 KiB-aligned buffer of `len` bytes, borrowed
        // mutably through `self` for the lifetime of the returned handle, and only this crate
        // and mk-mailbox touch it while the handle exists.
        unsafe { SharedRegion::init(p, len, n, tsc) }
    }

    pub fn attach(&mut self) -> Result<SharedRegion<'_>, Error> {
        let (p, len) = (self.ptr(), self.len());
        // SAFETY: as in `init`.
        unsafe { SharedRegion::attach(p, len) }
    }

    pub fn attach_len(&mut self, len: usize) -> Result<SharedRegion<'_>, Error> {
        assert!(len <= self.len());
        let p = self.ptr();
        // SAFETY: as in `init`, for a prefix of the buffer.
        unsafe { SharedRegion::attach(p, len) }
    }
}

/// xorshift64*: deterministic per-thread randomness without dependencies.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
