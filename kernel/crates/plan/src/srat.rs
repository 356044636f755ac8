//! Reading the ACPI SRAT (System Resource Affinity Table) from its bytes: which NUMA node
//! (proximity domain) each CPU and each memory range belongs to, the input of
//! [`PlanSpec::resolve_numa`](crate::PlanSpec::resolve_numa).
//!
//! Parsed here, by the ACPI specification (6.5, section 5.2.16), rather than through the `acpi`
//! crate: its 6.1.1 SRAT entries use a two-byte length in their header where the table has one,
//! which shifts every field and ends the walk at the first entry of node 1.
//!
//! ```text
//! table:  header (36) | reserved (12) | entries...
//! entry:  type (1) | length (1) | ...
//!   0  Local APIC affinity (16):   domain[7:0] @2, APIC ID @3, flags @4, domain[31:8] @9
//!   1  Memory affinity (40):       domain @2, base @8, length @16, flags @28
//!   2  Local x2APIC affinity (24): domain @4, x2APIC ID @8, flags @12
//! ```
//! Entries of other types are skipped; entries without the Enabled flag (bit 0) are ignored.

use crate::MemRange;

/// One enabled affinity entry of the SRAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// The CPU with this APIC ID (or x2APIC ID) is on `node`.
    Cpu {
        /// Its APIC ID.
        apic: u32,
        /// Its proximity domain.
        node: u32,
    },
    /// This memory range is on `node`.
    Memory {
        /// The range.
        range: MemRange,
        /// Its proximity domain.
        node: u32,
    },
}

/// Why an SRAT's bytes were not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SratError {
    /// Shorter than its header, or its header's length disagrees with the bytes given.
    BadLength,
    /// An entry at this offset has a length below 2, runs past the table's end, or is too
    /// short for its type.
    BadEntry {
        /// Byte offset of the entry in the table.
        offset: usize,
    },
}

impl core::fmt::Display for SratError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadLength => f.write_str("SRAT length does not match its header"),
            Self::BadEntry { offset } => write!(f, "malformed SRAT entry at offset {offset}"),
        }
    }
}

/// Where the entries start: after the 36-byte header and 12 reserved bytes.
const ENTRIES: usize = 48;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Walks the SRAT `table` (the whole table, header included) and calls `each` for every
/// enabled CPU and memory entry, in table order. Checks every entry's length first: on an
/// error, `each` has not been called.
pub fn parse(table: &[u8], mut each: impl FnMut(Affinity)) -> Result<(), SratError> {
    if table.len() < ENTRIES || u32_at(table, 4) as usize != table.len() {
        return Err(SratError::BadLength);
    }
    for pass in 0..2 {
        let mut at = ENTRIES;
        while at < table.len() {
            if table.len() - at < 2 {
                return Err(SratError::BadEntry { offset: at });
            }
            let (kind, len) = (table[at], usize::from(table[at + 1]));
            let need = match kind {
                0 => 16,
                1 => 40,
                2 => 24,
                _ => 2,
            };
            if len < need || len > table.len() - at {
                return Err(SratError::BadEntry { offset: at });
            }
            let e = &table[at..at + len];
            if pass == 1 {
                match kind {
                    0 if u32_at(e, 4) & 1 != 0 => each(Affinity::Cpu {
                        apic: u32::from(e[3]),
                        node: u32::from_le_bytes([e[2], e[9], e[10], e[11]]),
                    }),
                    1 if u32_at(e, 28) & 1 != 0 && u64_at(e, 16) > 0 => each(Affinity::Memory {
                        range: MemRange::new(u64_at(e, 8), u64_at(e, 16)),
                        node: u32_at(e, 2),
                    }),
                    2 if u32_at(e, 12) & 1 != 0 => each(Affinity::Cpu {
                        apic: u32_at(e, 8),
                        node: u32_at(e, 4),
                    }),
                    _ => {}
                }
            }
            at += len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn table(entries: &[&[u8]]) -> Vec<u8> {
        let mut t = std::vec![0u8; ENTRIES];
        t[..4].copy_from_slice(b"SRAT");
        for e in entries {
            t.extend_from_slice(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t
    }

    fn lapic(apic: u8, node: u32, enabled: bool) -> Vec<u8> {
        let n = node.to_le_bytes();
        let mut e = std::vec![0u8; 16];
        e[..4].copy_from_slice(&[0, 16, n[0], apic]);
        e[4] = u8::from(enabled);
        e[9..12].copy_from_slice(&n[1..]);
        e
    }

    fn memory(base: u64, len: u64, node: u32) -> Vec<u8> {
        let mut e = std::vec![0u8; 40];
        e[..2].copy_from_slice(&[1, 40]);
        e[2..6].copy_from_slice(&node.to_le_bytes());
        e[8..16].copy_from_slice(&base.to_le_bytes());
        e[16..24].copy_from_slice(&len.to_le_bytes());
        e[28] = 1;
        e
    }

    fn x2apic(id: u32, node: u32) -> Vec<u8> {
        let mut e = std::vec![0u8; 24];
        e[..2].copy_from_slice(&[2, 24]);
        e[4..8].copy_from_slice(&node.to_le_bytes());
        e[8..12].copy_from_slice(&id.to_le_bytes());
        e[12] = 1;
        e
    }

    fn all(t: &[u8]) -> Result<Vec<Affinity>, SratError> {
        let mut v = Vec::new();
        parse(t, |a| v.push(a)).map(|()| v)
    }

    #[test]
    fn qemu_two_nodes() {
        // What QEMU builds for -numa node,cpus=0-1 -numa node,cpus=2-3, 1 GiB each.
        let t = table(&[
            &lapic(0, 0, true),
            &lapic(1, 0, true),
            &lapic(2, 1, true),
            &lapic(3, 1, true),
            &lapic(4, 1, false),
            &memory(0, 0xA_0000, 0),
            &memory(0x10_0000, 0x3FF0_0000, 0),
            &memory(0x4000_0000, 0x4000_0000, 1),
            &memory(0x1_0000_0000, 0, 1),
            &x2apic(300, 2),
            &[9, 4, 0, 0],
        ]);
        let got = all(&t).unwrap();
        let cpu = |apic, node| Affinity::Cpu { apic, node };
        let mem = |s, l, node| Affinity::Memory {
            range: MemRange::new(s, l),
            node,
        };
        assert_eq!(
            got,
            [
                cpu(0, 0),
                cpu(1, 0),
                cpu(2, 1),
                cpu(3, 1),
                mem(0, 0xA_0000, 0),
                mem(0x10_0000, 0x3FF0_0000, 0),
                mem(0x4000_0000, 0x4000_0000, 1),
                cpu(300, 2),
            ]
        );
    }

    #[test]
    fn large_domains_use_all_four_bytes() {
        let t = table(&[&lapic(7, 0x0102_0304, true)]);
        assert_eq!(
            all(&t).unwrap(),
            [Affinity::Cpu {
                apic: 7,
                node: 0x0102_0304
            }]
        );
    }

    #[test]
    fn malformed_tables_are_refused_before_any_entry() {
        assert_eq!(all(&[0u8; 10]), Err(SratError::BadLength));
        let mut t = table(&[&lapic(0, 0, true)]);
        t[4] = 99;
        assert_eq!(all(&t), Err(SratError::BadLength));
        let mut short = lapic(0, 0, true);
        short[1] = 8;
        let t = table(&[&lapic(1, 0, true), &short]);
        assert_eq!(all(&t), Err(SratError::BadEntry { offset: 64 }));
        let t = table(&[&[1, 40, 0, 0]]);
        assert_eq!(all(&t), Err(SratError::BadEntry { offset: 48 }));
        let t = table(&[&[5, 0]]);
        assert_eq!(all(&t), Err(SratError::BadEntry { offset: 48 }));
    }
}
