//! Owner words: one `AtomicU64` per data page, changed only by compare-exchange.
//!
//! ```text
//!  63                     36 35          20 19           4 3    0
//! +-------------------------+--------------+--------------+------+
//! |  generation (28 bits)   |   to (u16)   | owner (u16)  | tag  |
//! +-------------------------+--------------+--------------+------+
//!  tag 0 Free (owner, to = 0), 1 Owned(owner) (to = 0), 2 InTransit{from = owner, to}
//! ```
//!
//! Every field is nibble aligned, so a hex dump reads directly: `0x0000005_0002_0001_2` is
//! "in transit from 1 to 2, generation 5".

/// Bits of the generation kept in an owner word (it wraps modulo `1 << 28`).
pub const GENERATION_BITS: u32 = 28;
/// Mask of a generation value.
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

const TAG_FREE: u64 = 0;
const TAG_OWNED: u64 = 1;
const TAG_TRANSIT: u64 = 2;
const OWNER_SHIFT: u32 = 4;
const TO_SHIFT: u32 = 20;
const GEN_SHIFT: u32 = 36;

/// Decoded state of one data page (the generation is returned beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Nobody owns it; [`crate::Pool::alloc`] may claim it.
    Free,
    /// Owned by this instance: it alone may read and write the page.
    Owned(u16),
    /// Handed over by `from` (which no longer touches it) to `to` (which may not touch it until
    /// it has accepted).
    InTransit {
        /// The sender.
        from: u16,
        /// The receiver.
        to: u16,
    },
    /// A word this build never writes (a corrupted pool or a foreign build); every operation
    /// refuses such a page.
    Invalid(u64),
}

pub(crate) const fn encode(owner: Owner, generation: u32) -> u64 {
    let g = ((generation & GENERATION_MASK) as u64) << GEN_SHIFT;
    match owner {
        Owner::Free => g | TAG_FREE,
        Owner::Owned(o) => g | ((o as u64) << OWNER_SHIFT) | TAG_OWNED,
        Owner::InTransit { from, to } => {
            g | ((to as u64) << TO_SHIFT) | ((from as u64) << OWNER_SHIFT) | TAG_TRANSIT
        }
        Owner::Invalid(w) => w,
    }
}

pub(crate) const fn decode(w: u64) -> (Owner, u32) {
    let generation = (w >> GEN_SHIFT) as u32;
    let a = (w >> OWNER_SHIFT) as u16;
    let b = (w >> TO_SHIFT) as u16;
    let owner = match w & 0xf {
        TAG_FREE if a == 0 && b == 0 => Owner::Free,
        TAG_OWNED if b == 0 => Owner::Owned(a),
        TAG_TRANSIT => Owner::InTransit { from: a, to: b },
        _ => Owner::Invalid(w),
    };
    (owner, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for g in [0, 1, 5, GENERATION_MASK] {
            for o in [
                Owner::Free,
                Owner::Owned(0),
                Owner::Owned(u16::MAX),
                Owner::InTransit { from: 1, to: 2 },
                Owner::InTransit {
                    from: u16::MAX,
                    to: 0,
                },
            ] {
                assert_eq!(decode(encode(o, g)), (o, g));
            }
        }
        assert_eq!(
            encode(Owner::InTransit { from: 1, to: 2 }, 5),
            0x0000_0050_0020_0012 // generation 5 | to 2 | from 1 | tag 2
        );
        assert!(matches!(decode(3).0, Owner::Invalid(3)));
        assert!(matches!(decode(0x10).0, Owner::Invalid(0x10)));
        assert!(matches!(decode(1 << 20 | 1).0, Owner::Invalid(_)));
    }
}
