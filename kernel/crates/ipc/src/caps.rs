//! Objects, capabilities and a task's capability table.

use alloc::vec::Vec;

use mk_abi::Error;
use mk_abi::ipc::{CapKind, Handle, MAX_TASK_CAPS, Rights};

/// A kernel object's id within the instance that hosts it: a slot and the slot's generation
/// (a destroyed object's id never names the object that reuses the slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjId {
    pub index: u16,
    pub generation: u32,
}

impl ObjId {
    /// `generation << 16 | index`.
    pub const fn raw(self) -> u64 {
        ((self.generation as u64) << 16) | self.index as u64
    }
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            index: raw as u16,
            generation: (raw >> 16) as u32,
        }
    }
}

impl core::fmt::Display for ObjId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// What a capability names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    /// The system-wide name service (hosted by instance 0's kernel).
    NameService,
    /// An endpoint in instance `instance` (this one or another).
    Endpoint { instance: u8, id: ObjId },
    /// A notification of this instance.
    Notification { id: ObjId },
    /// An interrupt line (IO APIC input) delivered to this instance.
    Irq { line: u8 },
    /// I/O ports `base..base + len`.
    IoPorts { base: u16, len: u16 },
    /// Physical MMIO pages `phys..phys + pages * 4096`.
    Mmio { phys: u64, pages: u32 },
    /// A run of memory pages taken out of a task's address space (`pages`), held by the
    /// kernel (its page run `id`) until a task maps it (`pages_map`). It travels by move
    /// only: one holder at a time.
    Pages { id: ObjId, pages: u32 },
    /// A run of shared-pool pages on its way to another instance (only in a cross-instance
    /// message: the receiving kernel accepts the run, checks its owner words, copies it into
    /// its own pages and hands the receiver an [`Object::Pages`]), with the pool generation
    /// of the hand-over, which the receiving kernel accepts it with.
    PoolPages {
        frame: u64,
        pages: u32,
        generation: u32,
    },
}

impl Object {
    pub const fn kind(&self) -> CapKind {
        match self {
            Self::NameService => CapKind::NameService,
            Self::Endpoint { .. } => CapKind::Endpoint,
            Self::Notification { .. } => CapKind::Notification,
            Self::Irq { .. } => CapKind::Irq,
            Self::IoPorts { .. } => CapKind::IoPorts,
            Self::Mmio { .. } => CapKind::Mmio,
            Self::Pages { .. } | Self::PoolPages { .. } => CapKind::Pages,
        }
    }

    /// Whether a capability to it may only be moved, never copied.
    pub const fn move_only(&self) -> bool {
        matches!(self, Self::Pages { .. } | Self::PoolPages { .. })
    }

    /// Whether a capability to it may travel in a message (endpoints and the name service:
    /// they mean the same in every instance; page runs, moved; devices and notifications are
    /// local grants).
    pub const fn transferable(&self) -> bool {
        matches!(
            self,
            Self::NameService | Self::Endpoint { .. } | Self::Pages { .. }
        )
    }

    /// The instance hosting it (`me` for local objects), and its id as `cap_info` reports it.
    pub fn locate(&self, me: u8) -> (u8, u64) {
        match *self {
            Self::NameService => (0, 0),
            Self::Endpoint { instance, id } => (instance, id.raw()),
            Self::Notification { id } => (me, id.raw()),
            Self::Irq { line } => (me, u64::from(line)),
            Self::IoPorts { base, len } => (me, u64::from(base) << 16 | u64::from(len)),
            Self::Mmio { phys, pages } => (me, phys | u64::from(pages.min(4095))),
            Self::Pages { id, pages } => (me, id.raw() | u64::from(pages) << 48),
            Self::PoolPages { frame, pages, .. } => (me, frame << 12 | u64::from(pages.min(4095))),
        }
    }
}

/// A capability: an object, what it allows, and the badge its holder's messages carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cap {
    pub object: Object,
    pub rights: Rights,
    pub badge: u32,
}

impl Cap {
    pub const fn new(object: Object, rights: Rights) -> Self {
        Self {
            object,
            rights,
            badge: 0,
        }
    }
}

/// A task's capabilities: [`MAX_TASK_CAPS`] slots, each with a generation that changes
/// whenever the slot is emptied, so that a handle of a dropped or moved capability never
/// names the next one.
#[derive(Debug, Clone)]
pub struct CapTable {
    slots: Vec<(u32, Option<Cap>)>,
}

impl Default for CapTable {
    fn default() -> Self {
        Self::new()
    }
}

impl CapTable {
    /// A table holding only the name service, at [`mk_abi::ipc::NAME_SERVICE`].
    pub fn new() -> Self {
        let mut slots = alloc::vec![(0u32, None); MAX_TASK_CAPS];
        slots[0] = (
            1,
            Some(Cap::new(Object::NameService, Rights::SEND | Rights::GRANT)),
        );
        Self { slots }
    }

    /// Puts `cap` in the first free slot; returns its handle.
    pub fn insert(&mut self, cap: Cap) -> Result<Handle, Error> {
        let (i, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.1.is_none())
            .ok_or(Error::TooManyCaps)?;
        if slot.0 == 0 {
            slot.0 = 1;
        }
        slot.1 = Some(cap);
        Ok(Handle::new(i as u16, slot.0))
    }

    fn slot(&self, h: Handle) -> Result<&Cap, Error> {
        if !h.is_well_formed() {
            return Err(Error::NoSuchCap);
        }
        match self.slots.get(usize::from(h.slot())) {
            Some((g, Some(cap))) if *g == h.generation() => Ok(cap),
            _ => Err(Error::NoSuchCap),
        }
    }

    /// The capability `h` names.
    pub fn get(&self, h: Handle) -> Result<Cap, Error> {
        self.slot(h).copied()
    }

    /// The capability `h` names, if it has every right in `need`.
    pub fn get_with(&self, h: Handle, need: Rights) -> Result<Cap, Error> {
        let cap = self.get(h)?;
        if cap.rights.contains(need) {
            Ok(cap)
        } else {
            Err(Error::NoRight)
        }
    }

    /// Deletes the capability `h` names and returns it; the slot's generation moves on.
    pub fn remove(&mut self, h: Handle) -> Result<Cap, Error> {
        self.slot(h)?;
        let slot = &mut self.slots[usize::from(h.slot())];
        slot.0 = slot.0.wrapping_add(1).max(1);
        slot.1.take().ok_or(Error::NoSuchCap)
    }

    /// A new handle to the object of `h` with `rights & its rights`, and `badge` if `h` has
    /// none (a badge, once set, cannot be changed).
    pub fn copy(&mut self, h: Handle, rights: Rights, badge: u32) -> Result<Handle, Error> {
        let cap = self.get(h)?;
        if cap.object.move_only() {
            return Err(Error::NoRight);
        }
        let badge = if cap.badge == 0 { badge } else { cap.badge };
        self.insert(Cap {
            object: cap.object,
            rights: cap.rights & rights,
            badge,
        })
    }

    /// Every capability with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, Cap)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (g, c))| c.map(|c| (Handle::new(i as u16, *g), c)))
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.1.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        MAX_TASK_CAPS - self.len()
    }
}
