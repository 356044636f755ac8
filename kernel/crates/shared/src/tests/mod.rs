//! Host tests. Threads stand in for kernel instances.

mod allocation;
mod lock;
mod threads;
mod unit;

use mk_raw::{PAGE, Page, Raw};

use crate::{Error, InstanceId, SharedRegion, region_size};

/// Instance `i` (test shorthand).
pub(crate) fn id(i: usize) -> InstanceId {
    InstanceId::from_index(i).expect("instance id")
}

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
            mem: (0..len.div_ceil(PAGE))
                .map(|_| Page::filled(fill))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.raw().len()
    }

    /// The whole buffer (safe: it is ours, and only ever accessed through atomics).
    pub fn raw(&self) -> Raw<'_> {
        Raw::from_pages(&self.mem)
    }

    /// Overwrites bytes at `offset` (as a broken or foreign writer would).
    pub fn poke(&mut self, offset: usize, bytes: &[u8]) {
        self.raw().write(offset, bytes).expect("in bounds");
    }

    /// A byte copy at another address (another instance's mapping of the same memory).
    pub fn copy(&self) -> Self {
        let mut bytes = vec![0; self.len()];
        self.raw().read(0, &mut bytes).expect("in bounds");
        let mut copy = Self::with_len(bytes.len(), 0);
        copy.poke(0, &bytes);
        copy
    }

    pub fn init(&mut self, n: usize, tsc: u64) -> Result<SharedRegion<'_>, Error> {
        SharedRegion::init(self.raw(), n, tsc)
    }

    pub fn attach(&mut self) -> Result<SharedRegion<'_>, Error> {
        SharedRegion::attach(self.raw())
    }

    pub fn attach_len(&mut self, len: usize) -> Result<SharedRegion<'_>, Error> {
        SharedRegion::attach(self.raw().sub(0, len).expect("a prefix"))
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
