//! Typed identifiers used by every crate of the kernel and by the kernel itself.
//!
//! An instance id used to be a `u32`, `usize` or `u16` depending on the place, converted with
//! casts. [`InstanceId`] is the one type for it (in the manner of Hubris's typed task ids): it
//! is made once, by a checked constructor where the number comes from outside (a wire header,
//! an operator's argument, a loop index), and turned back into a number only where one is
//! needed: [`InstanceId::index`] to index a table, [`InstanceId::raw`] to encode it on the wire.
//!
//! This crate depends on nothing, so every other crate (wire, mailbox, shared, pool, dispatch)
//! can use it without a cycle.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

/// The xAPIC broadcast destination (APIC ID 255): an IPI to it goes to every CPU (an INIT to
/// it resets every CPU but the sender's), and it is what an x2APIC ID of 255 becomes in an
/// xAPIC ICR. A number the ledger never hands out as a CPU and a doorbell never goes to.
pub const XAPIC_BROADCAST: u32 = 0xFF;

/// The id of a kernel instance: `0` is the supervisor (the instance started by the bootloader,
/// which starts the others and brokers resources), `1..` the instances it starts.
///
/// Valid range: every `u16` is a well-formed id, because the wire header carries the sender in
/// 16 bits and a decoded message must keep whatever the peer wrote, so the dispatcher can name
/// it in its rejection. Whether an id names an existing instance is for the table that holds
/// instances to say: the shared region has `mk_shared::MAX_INSTANCES` entries (16), a mailbox
/// matrix up to `mk_mailbox::MAX_INSTANCES` (64), and their accessors return an error for an id
/// at or beyond the count they were formatted for. [`InstanceId::from_index`] refuses only what
/// does not fit in 16 bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(u16);

impl InstanceId {
    /// Instance 0, the supervisor.
    pub const ZERO: Self = Self(0);

    /// The id with the wire encoding `raw`. Every `u16` is a well-formed id (see the type's
    /// documentation), so this cannot fail.
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }

    /// The id whose table index is `index`, or `None` when it does not fit in the 16 bits of
    /// the wire encoding.
    pub const fn from_index(index: usize) -> Option<Self> {
        if index <= u16::MAX as usize {
            Some(Self(index as u16))
        } else {
            None
        }
    }

    /// The index of this instance in the tables that hold one entry per instance.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The wire encoding (the header's `sender` field).
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// Whether this is instance 0, the supervisor.
    pub const fn is_supervisor(self) -> bool {
        self.0 == 0
    }

    /// The ids `0..count`, in order (for loops over the instance table). Counts beyond the
    /// 16-bit range stop at the last id.
    pub fn all(count: usize) -> impl DoubleEndedIterator<Item = Self> + Clone {
        (0..count.min(u16::MAX as usize + 1)).map(|i| Self(i as u16))
    }
}

/// Just the number, so that `"instance {id}"` reads "instance 3".
impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// `i3`, as the log prefix writes an instance.
impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl From<InstanceId> for usize {
    fn from(id: InstanceId) -> usize {
        id.index()
    }
}

impl From<InstanceId> for u16 {
    fn from(id: InstanceId) -> u16 {
        id.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn constructors_and_accessors_agree() {
        for raw in [0u16, 1, 15, 16, 63, 64, 0x0201, u16::MAX] {
            let id = InstanceId::new(raw);
            assert_eq!(id.raw(), raw);
            assert_eq!(id.index(), raw as usize);
            assert_eq!(InstanceId::from_index(raw as usize), Some(id));
        }
    }

    #[test]
    fn from_index_refuses_what_does_not_fit_the_wire() {
        assert_eq!(InstanceId::from_index(u16::MAX as usize + 1), None);
        assert_eq!(InstanceId::from_index(usize::MAX), None);
    }

    #[test]
    fn supervisor_is_zero() {
        assert!(InstanceId::ZERO.is_supervisor());
        assert!(InstanceId::new(0).is_supervisor());
        assert!(!InstanceId::new(1).is_supervisor());
        assert_eq!(InstanceId::default(), InstanceId::ZERO);
    }

    #[test]
    fn display_is_the_number_and_debug_the_log_prefix() {
        assert_eq!(format!("instance {}", InstanceId::new(3)), "instance 3");
        assert_eq!(format!("{:>3}", InstanceId::new(7)), "  7");
        assert_eq!(format!("{:?}", InstanceId::new(12)), "i12");
    }

    #[test]
    fn ordered_and_hashable() {
        let mut v = vec![InstanceId::new(3), InstanceId::ZERO, InstanceId::new(1)];
        v.sort();
        assert_eq!(
            v,
            [InstanceId::ZERO, InstanceId::new(1), InstanceId::new(3)]
        );
        let set: HashSet<_> = v.iter().copied().chain(v.iter().copied()).collect();
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn all_counts_up() {
        let v: Vec<_> = InstanceId::all(3).map(InstanceId::index).collect();
        assert_eq!(v, [0, 1, 2]);
        assert_eq!(InstanceId::all(0).count(), 0);
        assert_eq!(InstanceId::all(usize::MAX).count(), 1 << 16);
    }
}
