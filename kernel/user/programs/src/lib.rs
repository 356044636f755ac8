//! What several programs share: the xorshift generator (fuzz, spin, forge, ipcfuzz) and the
//! IPC test programs' labels.

#![no_std]
#![forbid(unsafe_code)]

/// xorshift64: a fast, deterministic pseudo-random sequence from a non-zero seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`; slightly biased, which does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The label that makes `echo` reply (label 0) and exit 0.
pub const QUIT_LABEL: u32 = 0xFFFF_0000;

/// `grant`'s labels (calls on the endpoint it registers).
pub mod grant {
    /// Reply label 0 with `caps[0]`: a copy of its second endpoint F without `RECV`, badge
    /// `BADGE`; then grant takes one call on F and answers it with `F_REPLY`.
    pub const COPY_F: u32 = 1;
    /// Reply label 0 with `caps[0]`: F itself, moved (grant no longer has it).
    pub const MOVE_F: u32 = 2;
    /// Reply label 0, and grant exits (its endpoints die with it).
    pub const QUIT: u32 = 3;
    /// The badge of the copy of F.
    pub const BADGE: u64 = 77;
    /// The label of grant's answer to the call on F.
    pub const F_REPLY: u32 = 42;
    /// A reply label meaning "refused" (an unknown label, or F is gone).
    pub const REFUSED: u32 = 0xEE;
}

/// `com2drv`'s labels (calls on the endpoint it registers as `com2`).
pub mod com2 {
    /// The name the driver registers.
    pub const NAME: &str = "com2";
    /// `data`: up to 160 bytes to send through the UART in loopback; reply label 0 with the
    /// bytes that came back.
    pub const WRITE: u32 = 1;
    /// Reply label 0, data: bytes handled and interrupts taken (two little-endian u64s).
    pub const STATS: u32 = 2;
    /// Reply label for an unknown request.
    pub const REFUSED: u32 = 0xEE;
}

/// FNV-1a, 64 bits: the checksum of the page-grant test programs (`bulk`, `bulksrv`).
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
