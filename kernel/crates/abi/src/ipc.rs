//! The IPC part of the ABI: the message a task hands to `send`, `call`, `recv` and `reply`,
//! capability handles and rights, and the name service's labels. `docs/ipc.md` is the
//! reference.

use core::fmt;

/// Most bytes of data one message carries inline: a mailbox slot's 224-byte payload less the
/// 64 bytes of the IPC header (route, sender, badge, label, two capabilities).
pub const MAX_INLINE: usize = 160;
/// Most capabilities one message carries.
pub const MAX_CAPS: usize = 2;
/// "No capability" in [`IpcMsg::caps`].
pub const NO_CAP: u64 = u64::MAX;
/// Most capabilities one task holds.
pub const MAX_TASK_CAPS: usize = 64;
/// A call's timeout when it passes 0.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5_000;
/// The longest timeout a call takes (a minute).
pub const MAX_CALL_TIMEOUT_MS: u64 = 60_000;
/// Most pages one page run (`pages`) holds (1 MiB): what crosses instances goes through the
/// shared page pool.
pub const MAX_GRANT_PAGES: u64 = 256;
/// Most bytes of a name in the name service.
pub const MAX_SERVICE_NAME: usize = 32;

/// A capability handle: `generation << 16 | slot` in the caller's table. A handle whose
/// capability was dropped or moved never names the capability that reuses its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u64);

impl Handle {
    pub const fn new(slot: u16, generation: u32) -> Self {
        Self(((generation as u64) << 16) | slot as u64)
    }
    pub const fn slot(self) -> u16 {
        self.0 as u16
    }
    pub const fn generation(self) -> u32 {
        (self.0 >> 16) as u32
    }
    /// Whether the raw value is one a kernel can have issued (no bits above the generation).
    pub const fn is_well_formed(self) -> bool {
        self.0 >> 48 == 0
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}.{}", self.slot(), self.generation())
    }
}

/// Every task's first capability: the name service (slot 0, generation 1).
pub const NAME_SERVICE: Handle = Handle::new(0, 1);

/// What a capability allows: a set of the bits below. (A plain type rather than the
/// `bitflags` crate: this crate is shared with user programs, which must not pull `std`
/// through a dependency's features.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    /// Send or call through it (endpoints), signal (notifications), use the device (IRQ, I/O
    /// ports, MMIO), map it (page runs).
    pub const SEND: Self = Self(1);
    /// Receive from it (endpoints).
    pub const RECV: Self = Self(2);
    /// Pass it on in a message.
    pub const GRANT: Self = Self(4);
    const ALL: u8 = 7;

    pub const fn empty() -> Self {
        Self(0)
    }
    pub const fn all() -> Self {
        Self(Self::ALL)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// The rights of `bits`, if it has no unknown bit.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }
    /// The known rights of `bits` (unknown bits dropped).
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & Self::ALL)
    }
    /// `bits` as they are, unknown bits kept (for displaying what a kernel said).
    pub const fn from_bits_retain(bits: u8) -> Self {
        Self(bits)
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Rights {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl core::ops::BitAnd for Rights {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

/// What a capability names (`cap_info`'s low byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CapKind {
    NameService = 1,
    Endpoint = 2,
    Notification = 3,
    Irq = 4,
    IoPorts = 5,
    Mmio = 6,
    Pages = 7,
}

impl CapKind {
    pub const fn from_raw(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::NameService,
            2 => Self::Endpoint,
            3 => Self::Notification,
            4 => Self::Irq,
            5 => Self::IoPorts,
            6 => Self::Mmio,
            7 => Self::Pages,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Self::NameService => "names",
            Self::Endpoint => "endpoint",
            Self::Notification => "notification",
            Self::Irq => "irq",
            Self::IoPorts => "ioports",
            Self::Mmio => "mmio",
            Self::Pages => "pages",
        }
    }
}

/// What `recv` delivered (its result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Received {
    /// A call: answer it with `reply` (or `reply_recv`).
    Call = 0,
    /// A one-way message (`send`): no reply is expected.
    Message = 1,
    /// Notification bits, in [`IpcMsg::badge`] (label 0, no data).
    Notification = 2,
}

impl Received {
    pub const fn from_raw(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Call,
            1 => Self::Message,
            2 => Self::Notification,
            _ => return None,
        })
    }
}

/// The message in the caller's memory that `send`, `call`, `recv` and `reply` read and
/// write (224 bytes, 8-aligned).
///
/// In: `label` (32 bits; larger is `BadArgument`), `len`, `data[..len]`, `caps` (handles of the sender, [`NO_CAP`] for none),
/// `cap_move` (bit i: capability i is moved out of the sender's table, else copied; both
/// need `GRANT`). Out (`recv`, and `call`'s reply): the same fields, `caps` holding the
/// receiver's new handles, plus `badge` (of the capability the sender used, or the
/// notification bits) and the sender (`sender_instance`, `sender_task` as a `TaskId` raw;
/// set by the kernel, never by the sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct IpcMsg {
    pub label: u64,
    pub len: u64,
    pub caps: [u64; MAX_CAPS],
    pub cap_move: u64,
    pub badge: u64,
    pub sender_instance: u64,
    pub sender_task: u64,
    pub data: [u8; MAX_INLINE],
}

/// The size of [`IpcMsg`] in memory.
pub const IPC_MSG_SIZE: usize = 64 + MAX_INLINE;
const _: () = assert!(core::mem::size_of::<IpcMsg>() == IPC_MSG_SIZE);

impl IpcMsg {
    pub const fn empty() -> Self {
        Self {
            label: 0,
            len: 0,
            caps: [NO_CAP; MAX_CAPS],
            cap_move: 0,
            badge: 0,
            sender_instance: 0,
            sender_task: 0,
            data: [0; MAX_INLINE],
        }
    }

    /// A message with `label` and a copy of `data` (cut at [`MAX_INLINE`]).
    pub fn new(label: u32, data: &[u8]) -> Self {
        let mut m = Self::empty();
        m.label = u64::from(label);
        let n = data.len().min(MAX_INLINE);
        m.data[..n].copy_from_slice(&data[..n]);
        m.len = n as u64;
        m
    }

    /// The data bytes (`len` clamped to [`MAX_INLINE`]).
    pub fn bytes(&self) -> &[u8] {
        &self.data[..(self.len as usize).min(MAX_INLINE)]
    }

    /// The message as bytes (how the kernel copies it in and out).
    pub fn to_bytes(&self) -> [u8; IPC_MSG_SIZE] {
        let mut b = [0u8; IPC_MSG_SIZE];
        let words = [
            self.label,
            self.len,
            self.caps[0],
            self.caps[1],
            self.cap_move,
            self.badge,
            self.sender_instance,
            self.sender_task,
        ];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b[64..].copy_from_slice(&self.data);
        b
    }

    pub fn from_bytes(b: &[u8; IPC_MSG_SIZE]) -> Self {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        let mut data = [0u8; MAX_INLINE];
        data.copy_from_slice(&b[64..]);
        Self {
            label: w(0),
            len: w(1),
            caps: [w(2), w(3)],
            cap_move: w(4),
            badge: w(5),
            sender_instance: w(6),
            sender_task: w(7),
            data,
        }
    }
}

/// The name service's labels (calls on [`NAME_SERVICE`]).
pub mod names {
    /// `data`: the name (1..=32 bytes of printable ASCII, no spaces); `caps[0]`: an endpoint
    /// the caller receives on and may grant (`RECV | GRANT`). Reply label 0. Errors: `Exists`
    /// (the name names a live endpoint), `BadArgument` (the name, no endpoint), `NoRight`,
    /// `OutOfMemory` (64 names).
    pub const REGISTER: u32 = 1;
    /// `data`: the name. Reply label 0, `caps[0]`: a `SEND | GRANT` capability to the
    /// endpoint. Errors: `NotFound`.
    pub const LOOKUP: u32 = 2;
    /// `data`: the name; only its registrant (same instance and task) may. Reply label 0.
    pub const UNREGISTER: u32 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_bytes() {
        let mut m = IpcMsg::new(7, b"hello");
        m.caps = [3, NO_CAP];
        m.badge = 9;
        m.sender_task = 0x1_0000_0002;
        assert_eq!(IpcMsg::from_bytes(&m.to_bytes()), m);
        assert_eq!(m.bytes(), b"hello");
    }

    #[test]
    fn handles_carry_slot_and_generation() {
        let h = Handle::new(5, 0xABCD);
        assert_eq!((h.slot(), h.generation()), (5, 0xABCD));
        assert!(h.is_well_formed());
        assert!(!Handle(1 << 50).is_well_formed());
        assert_eq!(NAME_SERVICE.slot(), 0);
    }
}
