//! Wire format of multikernel messages.
//!
//! Kernel instances sharing a machine exchange messages through per-pair mailboxes in shared
//! memory; each mailbox slot is [`SLOT_SIZE`] = 256 bytes. This crate defines what goes in a
//! slot: a fixed 32-byte little-endian header followed by up to [`MAX_PAYLOAD`] = 224 bytes of
//! payload whose layout is fixed by the message kind. It is pure logic: no `unsafe`, no
//! allocation, `no_std`; [`decode`] never panics, whatever the slot holds.
//!
//! # Header
//!
//! | bytes  | type | field | rule on decode |
//! |--------|------|-------|----------------|
//! | 0..4   | u32  | `seq` | **owned by the mailbox**, written last with Release; ignored by [`decode`], never written by [`encode`] ([`SEQ_OFFSET`], [`SEQ_LEN`]) |
//! | 4      | u8   | `version` | must be [`PROTOCOL_VERSION`] (1), else [`DecodeError::BadVersion`] |
//! | 5      | u8   | `flags` ([`MsgFlags`]) | no unknown bits, not `REPLY` and `NEEDS_REPLY` together, no `LARGE_DATA` on an error reply, else [`DecodeError::BadFlags`] |
//! | 6..8   | u16  | `sender` | instance id of the sender; the dispatcher checks it against the mailbox pair |
//! | 8..10  | u16  | `type` ([`MsgType`]) | IO `0x1000`, RESOURCE `0x2000`, SYSTEM `0x3000`, USER `0x4000`, else [`DecodeError::UnknownType`] |
//! | 10..12 | u16  | `subtype` | type code + n (see [`Kind`]), any value for USER, else [`DecodeError::UnknownSubtype`] |
//! | 12..14 | u16  | `payload_len` | <= 224 ([`DecodeError::PayloadTooLong`]) and exactly the kind's size ([`DecodeError::PayloadSizeMismatch`]) |
//! | 14..16 | u16  | `status` ([`Status`]) | known code ([`DecodeError::BadStatus`]); 0 in requests ([`DecodeError::StatusInRequest`]) |
//! | 16..24 | u64  | `msg_id` | correlation id; non-zero when `REPLY` or `NEEDS_REPLY` is set ([`DecodeError::ZeroMsgId`]) |
//! | 24..32 | u64  | `timestamp` | sender's tick when sending, free-form; replies echo the request's |
//! | 32..   |      | payload | `payload_len` bytes; bytes after it are ignored on decode and zeroed by encode |
//!
//! Changes from the suggested layout: none in the header. The reserved `u64` at 24 is used as a
//! timestamp so that a caller can measure round trips from the reply alone.
//!
//! # Kinds and payloads
//!
//! | type | subtype | code | request payload | `Ok` reply payload |
//! |------|---------|------|-----------------|--------------------|
//! | IO | IRQ_FORWARD | 0x1001 | [`IoIrqPayload`] (16) | empty |
//! | IO | IRQ_BALANCE | 0x1002 | [`IoIrqPayload`] (16) | empty |
//! | IO | IRQ_MASK | 0x1003 | [`IoIrqPayload`] (16) | empty |
//! | IO | IRQ_UNMASK | 0x1004 | [`IoIrqPayload`] (16) | empty |
//! | RESOURCE | CPU_ADD | 0x2001 | [`CpuPayload`] (20) | [`CpuPayload`] (20) |
//! | RESOURCE | CPU_REMOVE | 0x2002 | [`CpuPayload`] (20) | [`CpuPayload`] (20) |
//! | RESOURCE | MEM_ADD | 0x2003 | [`MemPayload`] (40) | [`MemPayload`] (40) |
//! | RESOURCE | MEM_REMOVE | 0x2004 | [`MemPayload`] (40) | [`MemPayload`] (40) |
//! | RESOURCE | QUERY | 0x2005 | [`QueryPayload`] (8) | [`QueryReply`] (84 + 4 per APIC id, <= 224) |
//! | SYSTEM | HEARTBEAT | 0x3001 | [`HeartbeatPayload`] (16) | [`HeartbeatPayload`] (16) |
//! | SYSTEM | SHUTDOWN | 0x3002 | [`ShutdownPayload`] (16) | empty |
//! | SYSTEM | PING | 0x3003 | [`PingPayload`] (16) | [`PingPayload`] (16, echoed) |
//! | USER | any | any | [`UserPayload`] (0..=224, opaque) | [`UserPayload`] (0..=224) |
//!
//! * A reply has the request's type, subtype and `msg_id`, the `REPLY` flag and a [`Status`].
//!   A reply whose status is not `Ok` carries no payload (except USER, always opaque).
//! * With `LARGE_DATA`, any kind's payload is instead a [`LargeDataPayload`] (24 bytes) naming
//!   frames of the shared pool that hold the real data.
//! * Every payload field layout is documented on its type. Flag words reject unknown bits,
//!   enums reject unknown codes, reserved fields must be zero ([`DecodeError::BadPayload`]).
//! * CPU and memory hand-off use two phases tagged with a generation ([`HandoffPhase`]).
//!
//! [`expected_payload`] is the table above as a function.
//!
//! # Use
//!
//! ```
//! use mk_wire::*;
//! let mut slot = [0u8; SLOT_SIZE];
//! let ping = Message::request(InstanceId::new(1), Kind::Ping, 7, Payload::Ping(PingPayload { nonce: 9, sent_at: 100 }))
//!     .with_flags(MsgFlags::NEEDS_REPLY);
//! let used = encode(&ping, &mut slot).unwrap();
//! assert_eq!(used, HEADER_LEN + PingPayload::SIZE);
//! assert_eq!(decode(&slot), Ok(ping));
//! let pong = Message::reply_to(&ping, InstanceId::new(2), Status::Ok, ping.payload);
//! encode(&pong, &mut slot).unwrap();
//! assert!(decode(&slot).unwrap().is_reply());
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod bytes;
mod message;
mod payload;
mod types;

pub use message::{
    DecodeError, EncodeError, Message, Payload, PayloadKind, RawHeader, Received, decode,
    decode_into, encode, encode_parts, expected_payload, offset,
};
pub use mk_ids::InstanceId;
pub use payload::{
    CpuFlags, CpuPayload, HandoffPhase, HeartbeatPayload, IRQ_BITMAP_BITS, IoIrqPayload, IrqFlags,
    LargeDataPayload, MemPayload, MemType, PayloadFault, PingPayload, QUERY_REPLY_FIXED,
    QUERY_REPLY_MAX_APIC_IDS, QueryPayload, QueryReply, QueryWhat, ShutdownFlags, ShutdownPayload,
    ShutdownReason, UserPayload,
};
pub use types::{Kind, MsgFlags, MsgType, Status};

/// Size of a mailbox slot, header included.
pub const SLOT_SIZE: usize = 256;
/// Offset of the mailbox-owned sequence number in a slot.
pub const SEQ_OFFSET: usize = 0;
/// Length of the mailbox-owned sequence number.
pub const SEQ_LEN: usize = 4;
/// Size of the message header (the sequence number included).
pub const HEADER_LEN: usize = 32;
/// Largest payload.
pub const MAX_PAYLOAD: usize = SLOT_SIZE - HEADER_LEN;
/// Version byte written by [`encode`] and required by [`decode`].
pub const PROTOCOL_VERSION: u8 = 1;
/// Frame size used by [`MemPayload`] and [`LargeDataPayload`].
pub const PAGE_SIZE: u64 = 4096;
/// One past the highest frame number a memory range may reach (52-bit physical addresses).
pub const MAX_FRAME: u64 = 1 << 40;

/// One mailbox slot.
pub type Slot = [u8; SLOT_SIZE];

const _: () = assert!(SEQ_OFFSET + SEQ_LEN <= offset::VERSION);
const _: () = assert!(offset::PAYLOAD == HEADER_LEN);
const _: () = assert!(MAX_PAYLOAD <= u8::MAX as usize);
