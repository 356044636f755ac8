//! Messages, the payload enum, encoding and decoding.

use core::fmt;

use crate::bytes::Wr;
use crate::payload::{Fixed, read_fixed};
use crate::*;

/// Header byte offsets inside a slot.
pub mod offset {
    /// `u32` sequence number, owned by the mailbox (never written by [`encode`](crate::encode)).
    pub const SEQ: usize = 0;
    /// `u8` protocol version.
    pub const VERSION: usize = 4;
    /// `u8` [`MsgFlags`](crate::MsgFlags).
    pub const FLAGS: usize = 5;
    /// `u16` sender instance id.
    pub const SENDER: usize = 6;
    /// `u16` [`MsgType`](crate::MsgType) code.
    pub const TYPE: usize = 8;
    /// `u16` subtype code.
    pub const SUBTYPE: usize = 10;
    /// `u16` payload length.
    pub const PAYLOAD_LEN: usize = 12;
    /// `u16` [`Status`](crate::Status) code.
    pub const STATUS: usize = 14;
    /// `u64` message id.
    pub const MSG_ID: usize = 16;
    /// `u64` sender timestamp.
    pub const TIMESTAMP: usize = 24;
    /// First payload byte.
    pub const PAYLOAD: usize = 32;
}

/// The header fields exactly as they sit in a slot, unchecked. Reading one never fails; use it
/// for diagnostics (who sent a message that [`decode`] refused, which id to answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawHeader {
    /// Mailbox sequence number (bytes 0..4).
    pub seq: u32,
    /// Protocol version.
    pub version: u8,
    /// Flag bits.
    pub flags: u8,
    /// Sender instance id.
    pub sender: u16,
    /// Type code.
    pub ty: u16,
    /// Subtype code.
    pub subtype: u16,
    /// Payload length.
    pub payload_len: u16,
    /// Status code.
    pub status: u16,
    /// Message id.
    pub msg_id: u64,
    /// Sender timestamp.
    pub timestamp: u64,
}

impl RawHeader {
    /// Reads the header of `slot`.
    pub fn read(slot: &Slot) -> Self {
        match slot.first_chunk::<HEADER_LEN>() {
            Some(head) => Self::read_head(head),
            None => Self::read_head(&[0; HEADER_LEN]),
        }
    }

    /// Reads a header kept apart from its payload (its slot's first [`HEADER_LEN`] bytes).
    #[inline]
    pub fn read_head(head: &[u8; HEADER_LEN]) -> Self {
        // Fixed offsets into a fixed-size array: the bounds checks fold away.
        Self {
            seq: u32::from_le_bytes(at::<{ offset::SEQ }, 4>(head)),
            version: at::<{ offset::VERSION }, 1>(head)[0],
            flags: at::<{ offset::FLAGS }, 1>(head)[0],
            sender: u16::from_le_bytes(at::<{ offset::SENDER }, 2>(head)),
            ty: u16::from_le_bytes(at::<{ offset::TYPE }, 2>(head)),
            subtype: u16::from_le_bytes(at::<{ offset::SUBTYPE }, 2>(head)),
            payload_len: u16::from_le_bytes(at::<{ offset::PAYLOAD_LEN }, 2>(head)),
            status: u16::from_le_bytes(at::<{ offset::STATUS }, 2>(head)),
            msg_id: u64::from_le_bytes(at::<{ offset::MSG_ID }, 8>(head)),
            timestamp: u64::from_le_bytes(at::<{ offset::TIMESTAMP }, 8>(head)),
        }
    }
}

/// The `N` bytes of `head` at offset `O` (zeros if out of bounds, which no caller's constants
/// are).
#[inline(always)]
fn at<const O: usize, const N: usize>(head: &[u8; HEADER_LEN]) -> [u8; N] {
    head.get(O..O + N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .unwrap_or([0; N])
}

/// Which payload structure a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// No payload (length 0).
    Empty,
    /// [`IoIrqPayload`].
    IoIrq,
    /// [`CpuPayload`].
    Cpu,
    /// [`MemPayload`].
    Mem,
    /// [`QueryPayload`].
    Query,
    /// [`QueryReply`].
    QueryReply,
    /// [`HeartbeatPayload`].
    Heartbeat,
    /// [`ShutdownPayload`].
    Shutdown,
    /// [`PingPayload`].
    Ping,
    /// [`LargeDataPayload`].
    LargeData,
    /// [`UserPayload`].
    User,
}

/// A decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    /// No payload.
    Empty,
    /// IO subtypes.
    IoIrq(IoIrqPayload),
    /// CPU_ADD / CPU_REMOVE, requests and `Ok` replies.
    Cpu(CpuPayload),
    /// MEM_ADD / MEM_REMOVE, requests and `Ok` replies.
    Mem(MemPayload),
    /// QUERY request.
    Query(QueryPayload),
    /// QUERY `Ok` reply.
    QueryReply(QueryReply),
    /// HEARTBEAT, request and `Ok` reply.
    Heartbeat(HeartbeatPayload),
    /// SHUTDOWN request.
    Shutdown(ShutdownPayload),
    /// PING, request and `Ok` reply.
    Ping(PingPayload),
    /// Any kind, when the header has `LARGE_DATA`.
    LargeData(LargeDataPayload),
    /// USER kinds.
    User(UserPayload),
}

impl Payload {
    /// Which structure this is.
    #[inline]
    pub const fn kind(&self) -> PayloadKind {
        match self {
            Self::Empty => PayloadKind::Empty,
            Self::IoIrq(_) => PayloadKind::IoIrq,
            Self::Cpu(_) => PayloadKind::Cpu,
            Self::Mem(_) => PayloadKind::Mem,
            Self::Query(_) => PayloadKind::Query,
            Self::QueryReply(_) => PayloadKind::QueryReply,
            Self::Heartbeat(_) => PayloadKind::Heartbeat,
            Self::Shutdown(_) => PayloadKind::Shutdown,
            Self::Ping(_) => PayloadKind::Ping,
            Self::LargeData(_) => PayloadKind::LargeData,
            Self::User(_) => PayloadKind::User,
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::IoIrq(_) => IoIrqPayload::SIZE,
            Self::Cpu(_) => CpuPayload::SIZE,
            Self::Mem(_) => MemPayload::SIZE,
            Self::Query(_) => QueryPayload::SIZE,
            Self::QueryReply(q) => q.encoded_len(),
            Self::Heartbeat(_) => HeartbeatPayload::SIZE,
            Self::Shutdown(_) => ShutdownPayload::SIZE,
            Self::Ping(_) => PingPayload::SIZE,
            Self::LargeData(_) => LargeDataPayload::SIZE,
            Self::User(u) => u.len(),
        }
    }

    #[inline(always)]
    fn check(&self) -> Result<(), PayloadFault> {
        match self {
            Self::Empty | Self::User(_) => Ok(()),
            Self::IoIrq(p) => p.check(),
            Self::Cpu(p) => p.check(),
            Self::Mem(p) => p.check(),
            Self::Query(p) => p.check(),
            Self::QueryReply(p) => p.check(),
            Self::Heartbeat(p) => p.check(),
            Self::Shutdown(p) => p.check(),
            Self::Ping(p) => p.check(),
            Self::LargeData(p) => p.check(),
        }
    }

    fn write(&self, w: &mut Wr<'_>) {
        match self {
            Self::Empty => {}
            Self::IoIrq(p) => p.write(w),
            Self::Cpu(p) => p.write(w),
            Self::Mem(p) => p.write(w),
            Self::Query(p) => p.write(w),
            Self::QueryReply(p) => p.write(w),
            Self::Heartbeat(p) => p.write(w),
            Self::Shutdown(p) => p.write(w),
            Self::Ping(p) => p.write(w),
            Self::LargeData(p) => p.write(w),
            Self::User(u) => w.bytes(u.as_bytes()),
        }
    }

    /// Reads a payload of structure `kind` from `bytes` (its size and values checked) straight
    /// into `out`: each arm writes its variant in place, so no payload-sized value is built and
    /// then copied (a payload is about 230 bytes; most variants are a few words). A USER
    /// payload is copied into `out`'s own when `out` holds one. On `Err`, `out` is unchanged or
    /// half written.
    fn read_into(kind: PayloadKind, bytes: &[u8], out: &mut Self) -> Result<(), DecodeError> {
        match kind {
            PayloadKind::Empty => {
                if !bytes.is_empty() {
                    return Err(DecodeError::PayloadSizeMismatch {
                        expected: 0,
                        found: bytes.len() as u16,
                    });
                }
                *out = Self::Empty;
            }
            PayloadKind::IoIrq => *out = Self::IoIrq(read_fixed(bytes)?),
            PayloadKind::Cpu => *out = Self::Cpu(read_fixed(bytes)?),
            PayloadKind::Mem => *out = Self::Mem(read_fixed(bytes)?),
            PayloadKind::Query => *out = Self::Query(read_fixed(bytes)?),
            PayloadKind::QueryReply => *out = Self::QueryReply(QueryReply::read(bytes)?),
            PayloadKind::Heartbeat => *out = Self::Heartbeat(read_fixed(bytes)?),
            PayloadKind::Shutdown => *out = Self::Shutdown(read_fixed(bytes)?),
            PayloadKind::Ping => *out = Self::Ping(read_fixed(bytes)?),
            PayloadKind::LargeData => *out = Self::LargeData(read_fixed(bytes)?),
            PayloadKind::User => {
                let too_long = DecodeError::PayloadTooLong(bytes.len() as u16);
                match out {
                    Self::User(u) => u.set(bytes).ok_or(too_long)?,
                    _ => *out = Self::User(UserPayload::new(bytes).ok_or(too_long)?),
                }
            }
        }
        Ok(())
    }
}

/// The payload structure a message must carry, given its header. `None` when the flags
/// contradict the status (`LARGE_DATA` on an error reply).
#[inline(always)]
pub const fn expected_payload(kind: Kind, flags: MsgFlags, status: Status) -> Option<PayloadKind> {
    let reply = flags.contains(MsgFlags::REPLY);
    let error_reply = reply && !matches!(status, Status::Ok);
    if flags.contains(MsgFlags::LARGE_DATA) {
        return if error_reply {
            None
        } else {
            Some(PayloadKind::LargeData)
        };
    }
    if let Kind::User(_) = kind {
        return Some(PayloadKind::User);
    }
    if error_reply {
        return Some(PayloadKind::Empty);
    }
    Some(match (kind, reply) {
        (Kind::IrqForward | Kind::IrqBalance | Kind::IrqMask | Kind::IrqUnmask, false) => {
            PayloadKind::IoIrq
        }
        (Kind::IrqForward | Kind::IrqBalance | Kind::IrqMask | Kind::IrqUnmask, true) => {
            PayloadKind::Empty
        }
        (Kind::CpuAdd | Kind::CpuRemove, _) => PayloadKind::Cpu,
        (Kind::MemAdd | Kind::MemRemove, _) => PayloadKind::Mem,
        (Kind::Query, false) => PayloadKind::Query,
        (Kind::Query, true) => PayloadKind::QueryReply,
        (Kind::Heartbeat, _) => PayloadKind::Heartbeat,
        (Kind::Shutdown, false) => PayloadKind::Shutdown,
        (Kind::Shutdown, true) => PayloadKind::Empty,
        (Kind::Ping, _) => PayloadKind::Ping,
        (Kind::User(_), _) => PayloadKind::User,
    })
}

/// A decoded, valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message {
    /// Instance id of the sender (16 bits on the wire; see [`InstanceId`]).
    pub sender: InstanceId,
    /// Type and subtype.
    pub kind: Kind,
    /// Header flags.
    pub flags: MsgFlags,
    /// Reply status; `Ok` in requests.
    pub status: Status,
    /// Correlation id; non-zero when `REPLY` or `NEEDS_REPLY` is set.
    pub msg_id: u64,
    /// Sender's tick when sending (replies built by [`Message::reply_to`] echo the request's).
    pub timestamp: u64,
    /// The payload.
    pub payload: Payload,
}

/// The flags of a reply to `request` carrying `payload`: `REPLY`, the request's
/// `HIGH_PRIORITY`, and `LARGE_DATA` for a large-data payload.
const fn reply_flags(request: &Message, payload: &Payload) -> MsgFlags {
    let mut flags = MsgFlags::REPLY;
    if request.flags.contains(MsgFlags::HIGH_PRIORITY) {
        flags = flags.union(MsgFlags::HIGH_PRIORITY);
    }
    if let Payload::LargeData(_) = payload {
        flags = flags.union(MsgFlags::LARGE_DATA);
    }
    flags
}

impl Message {
    /// A message whose contents mean nothing: the initial value of a buffer that a message is
    /// decoded or built into.
    pub const BLANK: Self = Self::request(InstanceId::ZERO, Kind::Ping, 0, Payload::Empty);

    /// A request without flags, status `Ok`, timestamp 0.
    pub const fn request(sender: InstanceId, kind: Kind, msg_id: u64, payload: Payload) -> Self {
        Self {
            sender,
            kind,
            flags: MsgFlags::empty(),
            status: Status::Ok,
            msg_id,
            timestamp: 0,
            payload,
        }
    }

    /// The reply to `request`: same kind and id, `REPLY` set, `HIGH_PRIORITY` copied, the
    /// request's timestamp echoed (so the caller can measure the round trip).
    pub const fn reply_to(
        request: &Message,
        sender: InstanceId,
        status: Status,
        payload: Payload,
    ) -> Self {
        Self {
            sender,
            kind: request.kind,
            flags: reply_flags(request, &payload),
            status,
            msg_id: request.msg_id,
            timestamp: request.timestamp,
            payload,
        }
    }

    /// Makes this message, its payload kept, the reply to `request` from `sender` with
    /// `status`: the header [`reply_to`](Self::reply_to) would write, written in place (a
    /// message is about 300 bytes; building one and moving it would copy it).
    pub const fn make_reply_to(&mut self, request: &Message, sender: InstanceId, status: Status) {
        self.sender = sender;
        self.kind = request.kind;
        self.flags = reply_flags(request, &self.payload);
        self.status = status;
        self.msg_id = request.msg_id;
        self.timestamp = request.timestamp;
    }

    /// Returns the message with `flags` added.
    pub const fn with_flags(mut self, flags: MsgFlags) -> Self {
        self.flags = self.flags.union(flags);
        self
    }

    /// Returns the message with its timestamp set.
    pub const fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The category.
    pub const fn msg_type(&self) -> MsgType {
        self.kind.msg_type()
    }

    /// Whether this is a reply.
    pub const fn is_reply(&self) -> bool {
        self.flags.contains(MsgFlags::REPLY)
    }

    /// Whether the sender waits for a reply.
    pub const fn needs_reply(&self) -> bool {
        self.flags.contains(MsgFlags::NEEDS_REPLY)
    }

    /// Bytes of the slot the encoded message uses (header + payload).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.encoded_len()
    }

    /// Checks every rule [`decode`] enforces, so that a message that validates encodes and
    /// decodes back to itself. Inlined: the send path runs it (a USER message only its header
    /// rules, [`encode_parts`]), and its errors are cold.
    #[inline(always)]
    pub fn validate(&self) -> Result<(), EncodeError> {
        self.validate_header()?;
        let bits = self.flags.bits();
        let Some(expected) = expected_payload(self.kind, self.flags, self.status) else {
            return Err(EncodeError::BadFlags { found: bits });
        };
        let found = self.payload.kind();
        if expected != found {
            return Err(EncodeError::PayloadMismatch { expected, found });
        }
        self.payload.check().map_err(EncodeError::BadPayload)
    }

    /// The rules of [`Self::validate`] that do not look at the kind or the payload: flags,
    /// status, message id.
    #[inline(always)]
    fn validate_header(&self) -> Result<(), EncodeError> {
        let bits = self.flags.bits();
        if MsgFlags::from_bits(bits).is_none()
            || self.flags.contains(MsgFlags::REPLY | MsgFlags::NEEDS_REPLY)
        {
            return Err(EncodeError::BadFlags { found: bits });
        }
        if !self.is_reply() && self.status != Status::Ok {
            return Err(EncodeError::StatusInRequest(self.status));
        }
        if self.msg_id == 0 && (self.is_reply() || self.needs_reply()) {
            return Err(EncodeError::ZeroMsgId);
        }
        Ok(())
    }
}

/// Why [`decode`] refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The version byte is not [`PROTOCOL_VERSION`].
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// Unknown flag bits, `REPLY` together with `NEEDS_REPLY`, or `LARGE_DATA` on an error
    /// reply.
    BadFlags {
        /// The flag byte found.
        found: u8,
    },
    /// The type code is unknown.
    UnknownType(u16),
    /// The subtype code is not one of the type's.
    UnknownSubtype {
        /// Type code.
        ty: u16,
        /// Subtype code.
        sub: u16,
    },
    /// The payload length is above [`MAX_PAYLOAD`].
    PayloadTooLong(u16),
    /// The payload length is not the one the kind requires.
    PayloadSizeMismatch {
        /// Length the kind requires (minimum for a query reply shorter than its fixed part).
        expected: u16,
        /// Length in the header.
        found: u16,
    },
    /// The status code is unknown.
    BadStatus(u16),
    /// A request (no `REPLY`) carries a non-zero status.
    StatusInRequest(u16),
    /// `REPLY` or `NEEDS_REPLY` with message id 0.
    ZeroMsgId,
    /// The payload has the right size but a bad value.
    BadPayload(PayloadFault),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVersion { found } => write!(f, "bad protocol version {found}"),
            Self::BadFlags { found } => write!(f, "bad flags {found:#04x}"),
            Self::UnknownType(ty) => write!(f, "unknown message type {ty:#06x}"),
            Self::UnknownSubtype { ty, sub } => {
                write!(f, "unknown subtype {sub:#06x} of type {ty:#06x}")
            }
            Self::PayloadTooLong(len) => write!(f, "payload length {len} > {MAX_PAYLOAD}"),
            Self::PayloadSizeMismatch { expected, found } => {
                write!(f, "payload length {found}, expected {expected}")
            }
            Self::BadStatus(s) => write!(f, "unknown status {s}"),
            Self::StatusInRequest(s) => write!(f, "status {s} in a request"),
            Self::ZeroMsgId => write!(f, "message id 0 on a reply or call"),
            Self::BadPayload(fault) => write!(f, "bad payload: {fault:?}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why [`encode`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// Unknown flag bits, `REPLY` together with `NEEDS_REPLY`, or `LARGE_DATA` on an error
    /// reply.
    BadFlags {
        /// The flag byte.
        found: u8,
    },
    /// A request carries a status other than `Ok`.
    StatusInRequest(Status),
    /// `REPLY` or `NEEDS_REPLY` with message id 0.
    ZeroMsgId,
    /// The payload structure is not the one the kind requires.
    PayloadMismatch {
        /// What the header requires.
        expected: PayloadKind,
        /// What the message holds.
        found: PayloadKind,
    },
    /// A payload field has a bad value.
    BadPayload(PayloadFault),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFlags { found } => write!(f, "bad flags {found:#04x}"),
            Self::StatusInRequest(s) => write!(f, "status {s:?} in a request"),
            Self::ZeroMsgId => write!(f, "message id 0 on a reply or call"),
            Self::PayloadMismatch { expected, found } => {
                write!(f, "payload {found:?}, expected {expected:?}")
            }
            Self::BadPayload(fault) => write!(f, "bad payload: {fault:?}"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Writes the header's bytes 4..32 of `msg` (with a payload of `payload_len` bytes), at
/// fixed offsets of a fixed-size array: no bounds to check at run time.
#[inline(always)]
fn write_header(msg: &Message, payload_len: usize, h: &mut [u8; HEADER_LEN]) {
    write_header_codes(msg, msg.kind.codes(), payload_len, h);
}

/// [`write_header`] with the kind's (type, subtype) codes already known.
#[inline(always)]
fn write_header_codes(
    msg: &Message,
    (ty, sub): (u16, u16),
    payload_len: usize,
    h: &mut [u8; HEADER_LEN],
) {
    h[offset::VERSION] = PROTOCOL_VERSION;
    h[offset::FLAGS] = msg.flags.bits();
    h[offset::SENDER..offset::SENDER + 2].copy_from_slice(&msg.sender.raw().to_le_bytes());
    h[offset::TYPE..offset::TYPE + 2].copy_from_slice(&ty.to_le_bytes());
    h[offset::SUBTYPE..offset::SUBTYPE + 2].copy_from_slice(&sub.to_le_bytes());
    h[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 2]
        .copy_from_slice(&(payload_len as u16).to_le_bytes());
    h[offset::STATUS..offset::STATUS + 2].copy_from_slice(&msg.status.code().to_le_bytes());
    h[offset::MSG_ID..offset::MSG_ID + 8].copy_from_slice(&msg.msg_id.to_le_bytes());
    h[offset::TIMESTAMP..offset::TIMESTAMP + 8].copy_from_slice(&msg.timestamp.to_le_bytes());
}

/// Encodes `msg` into `slot`: bytes 4..256, leaving the mailbox's sequence number (bytes 0..4)
/// untouched and zeroing the unused tail. Returns the bytes used (header + payload).
pub fn encode(msg: &Message, slot: &mut Slot) -> Result<usize, EncodeError> {
    msg.validate()?;
    let payload_len = msg.payload.encoded_len();
    if let Some((header, _)) = slot.split_first_chunk_mut::<HEADER_LEN>() {
        write_header(msg, payload_len, header);
    }
    msg.payload.write(&mut Wr::at(slot, HEADER_LEN));
    let end = HEADER_LEN + payload_len;
    if let Some(tail) = slot.get_mut(end..) {
        tail.fill(0);
    }
    Ok(end)
}

/// Encodes `msg` in two parts, for a sender that copies them straight into a mailbox slot
/// (no whole-slot buffer in between): the 32-byte header into `header` (bytes 0..4, the
/// mailbox's, left as they are), and the payload, which is returned: a USER payload's own
/// bytes (nothing copied), any other written into `scratch`. The slot's bytes past the payload
/// are not the encoder's concern ([`decode`] ignores them).
///
/// Inlined into the sender, USER first (the IPC of tasks); the other kinds' payloads are
/// written out of line.
#[inline(always)]
pub fn encode_parts<'a>(
    msg: &'a Message,
    header: &mut [u8; HEADER_LEN],
    scratch: &'a mut [u8; MAX_PAYLOAD],
) -> Result<&'a [u8], EncodeError> {
    // A USER message with a USER payload and no LARGE_DATA passes `validate` on its header
    // rules alone (its kind and payload agree, and a USER payload has no values to check).
    if let (Kind::User(sub), Payload::User(u)) = (msg.kind, &msg.payload)
        && !msg.flags.contains(MsgFlags::LARGE_DATA)
    {
        msg.validate_header()?;
        write_header_codes(msg, (MsgType::User.code(), sub), u.len(), header);
        return Ok(u.as_bytes());
    }
    msg.validate()?;
    if let Payload::User(u) = &msg.payload {
        write_header(msg, u.len(), header);
        return Ok(u.as_bytes());
    }
    encode_typed_parts(msg, header, scratch)
}

/// [`encode_parts`] of a validated message whose payload is not USER.
#[inline(never)]
fn encode_typed_parts<'a>(
    msg: &Message,
    header: &mut [u8; HEADER_LEN],
    scratch: &'a mut [u8; MAX_PAYLOAD],
) -> Result<&'a [u8], EncodeError> {
    let payload_len = msg.payload.encoded_len();
    write_header(msg, payload_len, header);
    msg.payload.write(&mut Wr::at(scratch, 0));
    Ok(scratch.get(..payload_len).unwrap_or(&[]))
}

/// Decodes and validates a slot. Bytes 0..4 (the mailbox's) and bytes past the payload are
/// ignored. Never panics.
///
/// Checks, in order: version, flags, type, subtype, payload length bound, status, message id,
/// payload size for the kind, payload values.
pub fn decode(slot: &Slot) -> Result<Message, DecodeError> {
    let mut msg = Message::BLANK;
    decode_into(slot, &mut msg)?;
    Ok(msg)
}

/// [`decode`] into `out`, which a receiver keeps from one message to the next: a USER payload
/// is copied once, straight into `out`'s when `out` already holds one (no message is built
/// and then moved). On `Err`, `out` holds no meaningful message (it may be half written).
pub fn decode_into(slot: &Slot, out: &mut Message) -> Result<(), DecodeError> {
    fill(check(slot)?, out)
}

/// A slot's header, checked: what [`fill`] writes into a message besides the payload.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    sender: u16,
    kind: Kind,
    flags: MsgFlags,
    status: Status,
    msg_id: u64,
    timestamp: u64,
    expected: PayloadKind,
    payload_len: u16,
}

impl Header {
    /// Writes the header's fields into `out` (its payload is the caller's).
    #[inline(always)]
    fn write(&self, out: &mut Message) {
        out.sender = InstanceId::new(self.sender);
        out.kind = self.kind;
        out.flags = self.flags;
        out.status = self.status;
        out.msg_id = self.msg_id;
        out.timestamp = self.timestamp;
    }
}

/// A slot's header, checked, and its payload's bytes: what [`fill`] writes into a message.
struct Checked<'s> {
    header: Header,
    bytes: &'s [u8],
}

/// The header checks of [`decode`], in its order, up to the payload's values.
#[inline(always)]
fn check(slot: &Slot) -> Result<Checked<'_>, DecodeError> {
    let (head, rest) = slot
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(DecodeError::PayloadTooLong(0))?;
    let header = check_header(head)?;
    let bytes = rest
        .get(..usize::from(header.payload_len))
        .ok_or(DecodeError::PayloadTooLong(header.payload_len))?;
    Ok(Checked { header, bytes })
}

/// The checks of [`decode`] that need only the header, in its order.
#[inline(always)]
fn check_header(head: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
    match check_user_header(head) {
        Some(h) => Ok(h),
        None => check_any_header(head),
    }
}

/// [`check_header`] of the common case, a USER request or reply without `LARGE_DATA`, in few
/// instructions: every rule is computed without a branch and the verdict taken once. `None`
/// for anything else, valid or not ([`check_any_header`] then decides, and names the fault);
/// `Some` only for a header [`check_any_header`] accepts, with the same result (a test holds
/// the two together).
#[inline(always)]
fn check_user_header(head: &[u8; HEADER_LEN]) -> Option<Header> {
    let raw = RawHeader::read_head(head);
    const KNOWN: u8 = MsgFlags::REPLY
        .union(MsgFlags::NEEDS_REPLY)
        .union(MsgFlags::HIGH_PRIORITY)
        .bits();
    let reply = raw.flags & MsgFlags::REPLY.bits() != 0;
    let call = raw.flags & MsgFlags::NEEDS_REPLY.bits() != 0;
    let ok = (raw.version == PROTOCOL_VERSION)
        & (raw.flags & !KNOWN == 0)
        & !(reply & call)
        & (raw.ty == MsgType::User.code())
        & (usize::from(raw.payload_len) <= MAX_PAYLOAD)
        & (raw.status == Status::Ok.code() || reply)
        & (raw.msg_id != 0 || !(reply | call));
    if !ok {
        return None;
    }
    Some(Header {
        sender: raw.sender,
        kind: Kind::User(raw.subtype),
        flags: MsgFlags::from_bits_retain(raw.flags),
        status: Status::from_code(raw.status)?,
        msg_id: raw.msg_id,
        timestamp: raw.timestamp,
        expected: PayloadKind::User,
        payload_len: raw.payload_len,
    })
}

/// The checks of [`decode`] that need only the header, in its order, for any header.
#[inline(never)]
fn check_any_header(head: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
    let raw = RawHeader::read_head(head);
    if raw.version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { found: raw.version });
    }
    let flags = MsgFlags::from_bits(raw.flags).ok_or(DecodeError::BadFlags { found: raw.flags })?;
    if flags.contains(MsgFlags::REPLY | MsgFlags::NEEDS_REPLY) {
        return Err(DecodeError::BadFlags { found: raw.flags });
    }
    let kind = Kind::from_codes(raw.ty, raw.subtype)?;
    let len = usize::from(raw.payload_len);
    if len > MAX_PAYLOAD {
        return Err(DecodeError::PayloadTooLong(raw.payload_len));
    }
    let status = Status::from_code(raw.status).ok_or(DecodeError::BadStatus(raw.status))?;
    let reply = flags.contains(MsgFlags::REPLY);
    if !reply && status != Status::Ok {
        return Err(DecodeError::StatusInRequest(raw.status));
    }
    if raw.msg_id == 0 && (reply || flags.contains(MsgFlags::NEEDS_REPLY)) {
        return Err(DecodeError::ZeroMsgId);
    }
    let expected =
        expected_payload(kind, flags, status).ok_or(DecodeError::BadFlags { found: raw.flags })?;
    Ok(Header {
        sender: raw.sender,
        kind,
        flags,
        status,
        msg_id: raw.msg_id,
        timestamp: raw.timestamp,
        expected,
        payload_len: raw.payload_len,
    })
}

/// Reads the payload (its size and values checked) into `out`, then the header's fields.
#[inline(always)]
fn fill(c: Checked<'_>, out: &mut Message) -> Result<(), DecodeError> {
    let h = &c.header;
    Payload::read_into(h.expected, c.bytes, &mut out.payload)?;
    h.write(out);
    Ok(())
}

/// A message as a receiver copies it out of a mailbox slot, in two parts, and decodes it in
/// place: its header bytes, and its payload bytes copied straight into the payload of the
/// USER message it keeps. A USER message (the IPC of tasks) is then copied once in all, out
/// of shared memory to where its handler reads it; a message of another kind is decoded from
/// those bytes into a message of the caller's ([`Received::decode`]). The checks are
/// [`decode`]'s, in its order, on the copy.
#[derive(Debug, Clone)]
pub struct Received {
    head: [u8; HEADER_LEN],
    /// Always holds a USER payload: the place of the payload bytes.
    msg: Message,
}

impl Default for Received {
    fn default() -> Self {
        Self::new()
    }
}

impl Received {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            head: [0; HEADER_LEN],
            msg: Message::request(
                InstanceId::ZERO,
                Kind::User(0),
                0,
                Payload::User(UserPayload::EMPTY),
            ),
        }
    }

    /// Holding `slot`'s bytes, as a drain copies them.
    pub fn from_slot(slot: &Slot) -> Self {
        let mut rx = Self::new();
        if let (Some((head, payload)), Some((h, p))) =
            (rx.parts_mut(), slot.split_first_chunk::<HEADER_LEN>())
            && let Ok(p) = <&[u8; MAX_PAYLOAD]>::try_from(p)
        {
            *head = *h;
            *payload = *p;
        }
        rx
    }

    /// Where a slot's bytes are copied: its header, and all [`MAX_PAYLOAD`] bytes after it
    /// (whatever the payload's length; [`Self::decode`] keeps only the payload's). `None` only
    /// if the kept message lost its USER payload, which nothing here lets happen.
    pub fn parts_mut(&mut self) -> Option<(&mut [u8; HEADER_LEN], &mut [u8; MAX_PAYLOAD])> {
        match &mut self.msg.payload {
            Payload::User(u) => Some((&mut self.head, u.whole_mut())),
            _ => None,
        }
    }

    /// The slot as it was copied (header and the payload bytes), for a diagnostic or an
    /// answer to a refused message. Only after [`Self::parts_mut`] was written and before
    /// [`Self::decode`] cut the payload to its length does it hold every byte.
    pub fn slot(&self) -> Slot {
        let mut slot = [0; SLOT_SIZE];
        let (head, rest) = slot.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&self.head);
        if let Payload::User(u) = &self.msg.payload {
            let bytes = u.as_bytes();
            if let Some(dst) = rest.get_mut(..bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        slot
    }

    /// [`decode`]s the copied slot: a USER message in place (returned from here), any other
    /// into `other`. On `Err`, neither holds a meaningful message.
    pub fn decode<'a>(&'a mut self, other: &'a mut Message) -> Result<&'a Message, DecodeError> {
        let h = check_header(&self.head)?;
        let len = usize::from(h.payload_len);
        let Payload::User(u) = &mut self.msg.payload else {
            return Err(DecodeError::PayloadTooLong(h.payload_len));
        };
        if let PayloadKind::User = h.expected {
            u.keep(len);
            h.write(&mut self.msg);
            return Ok(&self.msg);
        }
        let bytes = u
            .as_bytes()
            .get(..len)
            .ok_or(DecodeError::PayloadTooLong(h.payload_len))?;
        Payload::read_into(h.expected, bytes, &mut other.payload)?;
        h.write(other);
        Ok(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The header of a valid USER message: request or reply, any status, either flag.
    fn user_head(sub: u16, len: u8, flags: u8, status: u16, id: u64, ts: u64) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[offset::VERSION] = PROTOCOL_VERSION;
        h[offset::FLAGS] = flags;
        h[offset::SENDER..offset::SENDER + 2].copy_from_slice(&3u16.to_le_bytes());
        h[offset::TYPE..offset::TYPE + 2].copy_from_slice(&MsgType::User.code().to_le_bytes());
        h[offset::SUBTYPE..offset::SUBTYPE + 2].copy_from_slice(&sub.to_le_bytes());
        h[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 2]
            .copy_from_slice(&u16::from(len).to_le_bytes());
        h[offset::STATUS..offset::STATUS + 2].copy_from_slice(&status.to_le_bytes());
        h[offset::MSG_ID..offset::MSG_ID + 8].copy_from_slice(&id.to_le_bytes());
        h[offset::TIMESTAMP..offset::TIMESTAMP + 8].copy_from_slice(&ts.to_le_bytes());
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// The short USER path accepts only what the full checks accept, with the same
        /// result; and it does take the valid USER headers it is there for.
        #[test]
        fn user_header_path_agrees_with_the_full_checks(
            sub in any::<u16>(),
            len in 0u8..=MAX_PAYLOAD as u8,
            flags in proptest::sample::select(vec![0u8, 1, 2, 4, 5, 6]),
            status in 0u16..10,
            id in 1u64..,
            ts in any::<u64>(),
            edits in proptest::collection::vec((4usize..HEADER_LEN, any::<u8>()), 0..4),
            zero_id in any::<bool>(),
        ) {
            let status = if flags & 1 == 0 { 0 } else { status };
            let mut head = user_head(sub, len, flags, status, id, ts);
            let valid = check_any_header(&head);
            prop_assert!(valid.is_ok());
            prop_assert_eq!(check_user_header(&head), valid.ok());
            for (at, byte) in edits {
                head[at] = byte;
            }
            if zero_id {
                head[offset::MSG_ID..offset::MSG_ID + 8].fill(0);
            }
            if let Some(h) = check_user_header(&head) {
                prop_assert_eq!(Ok(h), check_any_header(&head));
            }
        }
    }
}
