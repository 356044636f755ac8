//! The wire form of cross-instance IPC: `USER` messages of the mailboxes (`MK_MSG_USER` in the
//! RFC's vocabulary), one per request or answer. Little-endian words:
//!
//! ```text
//! IPC_REQUEST (0x110)  w0 destination endpoint (generation << 16 | index; 0xFFFF: names)
//!                      w1 sender task (TaskId raw)       w2 badge (low 32) | label << 32
//!                      w3 token (low 32) | call flag << 32 | data length << 40 | caps << 48
//!                      then 2 words per capability, then the data bytes
//! IPC_ANSWER  (0x111)  w0 token (low 32) | error code << 32 (0: ok) | data length << 48 | caps << 56
//!                      w1 replier task   w2 label
//!                      then 2 words per capability, then the data bytes
//! IPC_FORGET  (0x112)  w0 endpoint that was destroyed (its name, if any, goes)
//! capability           a: object id (generation << 16 | index) | instance << 48 | kind << 56
//!                      b: rights | badge << 32
//! ```
//!
//! The sending instance is never in the payload: the receiver takes it from the channel.
//! Every field is checked on the way in; a malformed message is an error, never a guess.

use mk_abi::ipc::{CapKind, MAX_CAPS, MAX_INLINE, Rights};
use mk_abi::{Error, TaskId};

use crate::caps::{Cap, ObjId, Object};
use crate::parcel::{CallToken, Parcel};

pub const IPC_REQUEST: u16 = 0x110;
pub const IPC_ANSWER: u16 = 0x111;
pub const IPC_FORGET: u16 = 0x112;

/// The largest encoding: 4 header words, 2 capabilities, 160 bytes (224: one mailbox slot's
/// payload).
pub const MAX_LEN: usize = 32 + 16 * MAX_CAPS + MAX_INLINE;

/// What is wrong with a message received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter or longer than its header says.
    Length,
    /// A field out of range (length, count, kind, rights, error code).
    Field(&'static str),
}

/// A buffer of up to [`MAX_LEN`] bytes.
pub struct Encoded {
    pub bytes: [u8; MAX_LEN],
    pub len: usize,
}

impl Encoded {
    fn new() -> Self {
        Self {
            bytes: [0; MAX_LEN],
            len: 0,
        }
    }
    fn word(&mut self, w: u64) {
        self.bytes[self.len..self.len + 8].copy_from_slice(&w.to_le_bytes());
        self.len += 8;
    }
    fn data(&mut self, d: &[u8]) {
        self.bytes[self.len..self.len + d.len()].copy_from_slice(d);
        self.len += d.len();
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn word(b: &[u8], i: usize) -> Result<u64, WireError> {
    let s = b.get(i * 8..i * 8 + 8).ok_or(WireError::Length)?;
    let mut x = [0u8; 8];
    x.copy_from_slice(s);
    Ok(u64::from_le_bytes(x))
}

/// A capability's two words, if it can cross instances as it is (a page run must first be
/// put in the shared pool by the sending kernel: [`Object::PoolPages`]).
fn cap_words(c: &Cap) -> Option<(u64, u64)> {
    let (instance, id, extra) = match c.object {
        Object::NameService => (0u8, 0u64, u64::from(c.badge)),
        Object::Endpoint { instance, id } => (instance, id.raw(), u64::from(c.badge)),
        // Pool pages: the page count in bits 40..56 of the first word, the generation in the
        // second word's upper half.
        Object::PoolPages {
            frame,
            pages,
            generation,
        } if frame < 1 << 40 && pages <= 0xFFFF => {
            (0, frame | u64::from(pages) << 40, u64::from(generation))
        }
        _ => return None,
    };
    let a = id | u64::from(instance) << 48 | (c.object.kind() as u64) << 56;
    let b = u64::from(c.rights.bits()) | extra << 32;
    Some((a, b))
}

fn cap_of(a: u64, b: u64) -> Result<Cap, WireError> {
    let rights = Rights::from_bits((b & 0xFF) as u8).ok_or(WireError::Field("rights"))?;
    if (b >> 8) & 0xFF_FFFF != 0 {
        return Err(WireError::Field("capability reserved bits"));
    }
    let extra = (b >> 32) as u32;
    let (object, badge) = match CapKind::from_raw((a >> 56) as u8) {
        Some(CapKind::NameService) if a & 0x00FF_FFFF_FFFF_FFFF == 0 => {
            (Object::NameService, extra)
        }
        Some(CapKind::Endpoint) => (
            Object::Endpoint {
                instance: (a >> 48) as u8,
                id: ObjId::from_raw(a & 0xFFFF_FFFF_FFFF),
            },
            extra,
        ),
        Some(CapKind::Pages)
            if (1..=mk_abi::ipc::MAX_GRANT_PAGES).contains(&((a >> 40) & 0xFFFF)) =>
        {
            (
                Object::PoolPages {
                    frame: a & 0xFF_FFFF_FFFF,
                    pages: ((a >> 40) & 0xFFFF) as u32,
                    generation: extra,
                },
                0,
            )
        }
        _ => return Err(WireError::Field("capability kind")),
    };
    Ok(Cap {
        object,
        rights,
        badge,
    })
}

fn put_caps(e: &mut Encoded, caps: &[Option<Cap>; MAX_CAPS]) {
    for (a, b) in caps.iter().flatten().filter_map(cap_words) {
        e.word(a);
        e.word(b);
    }
}

/// How many of `caps` [`put_caps`] writes.
fn count_caps(caps: &[Option<Cap>; MAX_CAPS]) -> u64 {
    caps.iter().flatten().filter_map(cap_words).count() as u64
}

fn get_caps(b: &[u8], first_word: usize, n: usize) -> Result<[Option<Cap>; MAX_CAPS], WireError> {
    if n > MAX_CAPS {
        return Err(WireError::Field("capability count"));
    }
    let mut caps = [None; MAX_CAPS];
    for (i, c) in caps.iter_mut().enumerate().take(n) {
        let w = first_word + 2 * i;
        *c = Some(cap_of(word(b, w)?, word(b, w + 1)?)?);
    }
    Ok(caps)
}

/// A request for endpoint `dst` (`call`: the caller's pending call).
pub fn encode_request(dst: ObjId, call: Option<CallToken>, p: &Parcel) -> Encoded {
    let mut e = Encoded::new();
    e.word(dst.raw());
    e.word(p.sender_task.raw());
    e.word((p.badge & 0xFFFF_FFFF) | u64::from(p.label) << 32);
    let ncaps = count_caps(&p.caps);
    e.word(
        u64::from(call.map_or(0, |t| t.0))
            | u64::from(call.is_some()) << 32
            | (p.data().len() as u64) << 40
            | ncaps << 48,
    );
    put_caps(&mut e, &p.caps);
    e.data(p.data());
    e
}

/// A request received: destination, pending call, parcel (its sender instance is set by the
/// caller from the channel).
pub fn decode_request(b: &[u8]) -> Result<(ObjId, Option<CallToken>, Parcel), WireError> {
    let dst = ObjId::from_raw(word(b, 0)?);
    if dst.raw() >> 48 != 0 {
        return Err(WireError::Field("destination"));
    }
    let sender = TaskId::from_raw(word(b, 1)?);
    let w2 = word(b, 2)?;
    let w3 = word(b, 3)?;
    let flag = (w3 >> 32) & 0xFF;
    let len = ((w3 >> 40) & 0xFF) as usize;
    let ncaps = ((w3 >> 48) & 0xFF) as usize;
    if flag > 1 || w3 >> 56 != 0 {
        return Err(WireError::Field("flags"));
    }
    if len > MAX_INLINE {
        return Err(WireError::Field("data length"));
    }
    let caps = get_caps(b, 4, ncaps)?;
    let start = 32 + 16 * ncaps;
    if b.len() != start + len {
        return Err(WireError::Length);
    }
    let mut p = Parcel::new((w2 >> 32) as u32, &b[start..]).ok_or(WireError::Length)?;
    p.caps = caps;
    p.badge = w2 & 0xFFFF_FFFF;
    p.sender_task = sender;
    let call = (flag == 1).then_some(CallToken(w3 as u32));
    Ok((dst, call, p))
}

/// The answer to call `token`.
pub fn encode_answer(token: CallToken, result: &Result<Parcel, Error>) -> Encoded {
    let mut e = Encoded::new();
    match result {
        Err(err) => {
            e.word(u64::from(token.0) | err.code() << 32);
            e.word(0);
            e.word(0);
        }
        Ok(p) => {
            let ncaps = count_caps(&p.caps);
            e.word(u64::from(token.0) | (p.data().len() as u64) << 48 | ncaps << 56);
            e.word(p.sender_task.raw());
            e.word(u64::from(p.label));
            put_caps(&mut e, &p.caps);
            e.data(p.data());
        }
    }
    e
}

/// An answer received: the call it answers and its result.
pub fn decode_answer(b: &[u8]) -> Result<(CallToken, Result<Parcel, Error>), WireError> {
    let w0 = word(b, 0)?;
    let token = CallToken(w0 as u32);
    let code = (w0 >> 32) & 0xFFFF;
    let len = ((w0 >> 48) & 0xFF) as usize;
    let ncaps = (w0 >> 56) as usize;
    if code != 0 {
        let err = Error::from_code(code).ok_or(WireError::Field("error code"))?;
        if len != 0 || ncaps != 0 || b.len() != 24 {
            return Err(WireError::Length);
        }
        return Ok((token, Err(err)));
    }
    let replier = TaskId::from_raw(word(b, 1)?);
    let label = word(b, 2)?;
    if label > u64::from(u32::MAX) || len > MAX_INLINE {
        return Err(WireError::Field("label or length"));
    }
    let caps = get_caps(b, 3, ncaps)?;
    let start = 24 + 16 * ncaps;
    if b.len() != start + len {
        return Err(WireError::Length);
    }
    let mut p = Parcel::new(label as u32, &b[start..]).ok_or(WireError::Length)?;
    p.caps = caps;
    p.sender_task = replier;
    Ok((token, Ok(p)))
}

pub fn encode_forget(endpoint: ObjId) -> Encoded {
    let mut e = Encoded::new();
    e.word(endpoint.raw());
    e
}

pub fn decode_forget(b: &[u8]) -> Result<ObjId, WireError> {
    if b.len() != 8 {
        return Err(WireError::Length);
    }
    Ok(ObjId::from_raw(word(b, 0)?))
}
