//! Little-endian cursors over byte slices that never panic.
//!
//! Every length is checked by the decoder before these run, so an out-of-range access cannot
//! happen; should one ever happen anyway the reader yields zeros and the writer skips the field
//! instead of panicking.

/// Reads little-endian integers from a byte slice, front to back.
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn take<const N: usize>(&mut self) -> [u8; N] {
        let end = self.pos.saturating_add(N);
        let out = self
            .buf
            .get(self.pos..end)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .unwrap_or([0; N]);
        self.pos = end;
        out
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Writes little-endian integers into a byte slice, front to back.
pub(crate) struct Wr<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Wr<'a> {
    pub(crate) fn at(buf: &'a mut [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    pub(crate) fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        let end = self.pos.saturating_add(N);
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(&bytes);
        }
        self.pos = end;
    }

    /// Copies `bytes` in one go (a byte-at-a-time loop costs one bounds check per byte, which
    /// shows when every instruction is expensive, as under an emulating hypervisor).
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put(v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put(v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.put(v.to_le_bytes());
    }
}
