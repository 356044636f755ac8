//! Header vocabulary: flags, message types and subtypes, reply status codes.

use crate::DecodeError;

bitflags::bitflags! {
    /// Header byte 5. Bits not listed here are rejected by the decoder
    /// ([`DecodeError::BadFlags`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MsgFlags: u8 {
        /// This message answers the request with the same `msg_id`; `status` is meaningful.
        const REPLY = 0x01;
        /// The sender waits for a reply carrying the same `msg_id`.
        const NEEDS_REPLY = 0x02;
        /// A hint to the receiver to handle this message ahead of others.
        const HIGH_PRIORITY = 0x04;
        /// The payload is a [`LargeDataPayload`](crate::LargeDataPayload) that points at the
        /// real data in the shared pool.
        const LARGE_DATA = 0x08;
    }
}

/// Top-level message category (header bytes 8..10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MsgType {
    /// Interrupt forwarding and balancing.
    Io = 0x1000,
    /// CPU and memory hand-off between instances, resource queries.
    Resource = 0x2000,
    /// Liveness, shutdown, ping.
    System = 0x3000,
    /// Application-defined messages with an opaque payload.
    User = 0x4000,
}

impl MsgType {
    /// All message types, in code order.
    pub const ALL: [MsgType; 4] = [Self::Io, Self::Resource, Self::System, Self::User];

    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The type with wire code `code`, if any.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0x1000 => Some(Self::Io),
            0x2000 => Some(Self::Resource),
            0x3000 => Some(Self::System),
            0x4000 => Some(Self::User),
            _ => None,
        }
    }
}

/// The (type, subtype) pair of a message. Subtype codes of the typed kinds are the type code
/// plus a small number (`IrqForward` is `0x1001`), so a subtype sent under the wrong type is
/// caught. `User` subtypes are chosen by the application: any `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// IO/0x1001: an interrupt raised here is forwarded to the owner of the device.
    IrqForward,
    /// IO/0x1002: move an interrupt line to the receiver for load balancing.
    IrqBalance,
    /// IO/0x1003: mask an interrupt line.
    IrqMask,
    /// IO/0x1004: unmask an interrupt line.
    IrqUnmask,
    /// RESOURCE/0x2001: hand a CPU over to the receiver.
    CpuAdd,
    /// RESOURCE/0x2002: ask the receiver to give up a CPU.
    CpuRemove,
    /// RESOURCE/0x2003: hand a memory range over to the receiver.
    MemAdd,
    /// RESOURCE/0x2004: ask the receiver to give up a memory range.
    MemRemove,
    /// RESOURCE/0x2005: ask the receiver what it owns.
    Query,
    /// SYSTEM/0x3001: liveness beacon.
    Heartbeat,
    /// SYSTEM/0x3002: ask the receiver to shut down.
    Shutdown,
    /// SYSTEM/0x3003: echo request, for latency measurements.
    Ping,
    /// USER/any: application-defined subtype, opaque payload.
    User(u16),
}

impl Kind {
    /// Every typed kind (all but `User`), in code order.
    pub const TYPED: [Kind; 12] = [
        Self::IrqForward,
        Self::IrqBalance,
        Self::IrqMask,
        Self::IrqUnmask,
        Self::CpuAdd,
        Self::CpuRemove,
        Self::MemAdd,
        Self::MemRemove,
        Self::Query,
        Self::Heartbeat,
        Self::Shutdown,
        Self::Ping,
    ];

    /// The category this kind belongs to.
    pub const fn msg_type(self) -> MsgType {
        match self {
            Self::IrqForward | Self::IrqBalance | Self::IrqMask | Self::IrqUnmask => MsgType::Io,
            Self::CpuAdd | Self::CpuRemove | Self::MemAdd | Self::MemRemove | Self::Query => {
                MsgType::Resource
            }
            Self::Heartbeat | Self::Shutdown | Self::Ping => MsgType::System,
            Self::User(_) => MsgType::User,
        }
    }

    /// The subtype wire code (header bytes 10..12).
    pub const fn subtype_code(self) -> u16 {
        self.codes().1
    }

    /// The (type, subtype) wire codes (header bytes 8..12), found in one step: a typed kind's
    /// subtype code carries its type's code in its top four bits (`IrqForward` is `0x1001`,
    /// type `0x1000`), so one table of subtype codes gives both.
    #[inline(always)]
    pub const fn codes(self) -> (u16, u16) {
        let sub = match self {
            Self::User(sub) => return (MsgType::User.code(), sub),
            Self::IrqForward => 0x1001,
            Self::IrqBalance => 0x1002,
            Self::IrqMask => 0x1003,
            Self::IrqUnmask => 0x1004,
            Self::CpuAdd => 0x2001,
            Self::CpuRemove => 0x2002,
            Self::MemAdd => 0x2003,
            Self::MemRemove => 0x2004,
            Self::Query => 0x2005,
            Self::Heartbeat => 0x3001,
            Self::Shutdown => 0x3002,
            Self::Ping => 0x3003,
        };
        (sub & 0xF000, sub)
    }

    /// Parses a (type, subtype) code pair.
    pub const fn from_codes(ty: u16, sub: u16) -> Result<Self, DecodeError> {
        let Some(msg_type) = MsgType::from_code(ty) else {
            return Err(DecodeError::UnknownType(ty));
        };
        let kind = match (msg_type, sub) {
            (MsgType::Io, 0x1001) => Self::IrqForward,
            (MsgType::Io, 0x1002) => Self::IrqBalance,
            (MsgType::Io, 0x1003) => Self::IrqMask,
            (MsgType::Io, 0x1004) => Self::IrqUnmask,
            (MsgType::Resource, 0x2001) => Self::CpuAdd,
            (MsgType::Resource, 0x2002) => Self::CpuRemove,
            (MsgType::Resource, 0x2003) => Self::MemAdd,
            (MsgType::Resource, 0x2004) => Self::MemRemove,
            (MsgType::Resource, 0x2005) => Self::Query,
            (MsgType::System, 0x3001) => Self::Heartbeat,
            (MsgType::System, 0x3002) => Self::Shutdown,
            (MsgType::System, 0x3003) => Self::Ping,
            (MsgType::User, sub) => Self::User(sub),
            _ => return Err(DecodeError::UnknownSubtype { ty, sub }),
        };
        Ok(kind)
    }
}

/// Reply status (header bytes 14..16). Requests always carry `Ok` (code 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Done; the reply carries the subtype's reply payload.
    Ok = 0,
    /// Temporarily unable; try again later.
    Busy = 1,
    /// The receiver declines (policy).
    Refused = 2,
    /// The receiver does not own the resource named in the request.
    NotOwner = 3,
    /// The resource named in the request does not exist.
    NoSuchResource = 4,
    /// The request is well formed but its values make no sense.
    InvalidArgument = 5,
    /// The receiver has no handler for this kind.
    Unsupported = 6,
    /// The receiver gave up waiting on something it needed.
    Timeout = 7,
    /// The receiver failed internally.
    InternalError = 8,
    /// Two-phase hand-off: the generation in the request is not the current one.
    StaleGeneration = 9,
}

impl Status {
    /// All statuses, in code order.
    pub const ALL: [Status; 10] = [
        Self::Ok,
        Self::Busy,
        Self::Refused,
        Self::NotOwner,
        Self::NoSuchResource,
        Self::InvalidArgument,
        Self::Unsupported,
        Self::Timeout,
        Self::InternalError,
        Self::StaleGeneration,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The status with wire code `code`, if any.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0 => Some(Self::Ok),
            1 => Some(Self::Busy),
            2 => Some(Self::Refused),
            3 => Some(Self::NotOwner),
            4 => Some(Self::NoSuchResource),
            5 => Some(Self::InvalidArgument),
            6 => Some(Self::Unsupported),
            7 => Some(Self::Timeout),
            8 => Some(Self::InternalError),
            9 => Some(Self::StaleGeneration),
            _ => None,
        }
    }
}
