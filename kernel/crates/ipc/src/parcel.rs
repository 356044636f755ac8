//! What travels: a message's label, inline data and capabilities, with its sender as the
//! kernel vouches for it.

use mk_abi::TaskId;
use mk_abi::ipc::{MAX_CAPS, MAX_INLINE};

use crate::caps::Cap;

/// A message's content (a request, a one-way message or a reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parcel {
    pub label: u32,
    len: u8,
    data: [u8; MAX_INLINE],
    /// Capabilities carried (already taken from the sender's table, not yet in the
    /// receiver's).
    pub caps: [Option<Cap>; MAX_CAPS],
    /// The badge of the capability the sender used (0: none), or notification bits.
    pub badge: u64,
    /// Set by the kernel: the sending instance and task (a kernel's own requests: task 0.0).
    pub sender_instance: u8,
    pub sender_task: TaskId,
}

impl Parcel {
    /// A parcel with `label` and `data` (at most [`MAX_INLINE`] bytes: longer is `None`).
    pub fn new(label: u32, data: &[u8]) -> Option<Self> {
        if data.len() > MAX_INLINE {
            return None;
        }
        let mut d = [0u8; MAX_INLINE];
        d[..data.len()].copy_from_slice(data);
        Some(Self {
            label,
            len: data.len() as u8,
            data: d,
            caps: [None; MAX_CAPS],
            badge: 0,
            sender_instance: 0,
            sender_task: TaskId {
                index: 0,
                generation: 0,
            },
        })
    }

    pub fn data(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }

    pub fn from(mut self, instance: u8, task: TaskId) -> Self {
        self.sender_instance = instance;
        self.sender_task = task;
        self
    }
}

/// A token naming one pending call of a caller's instance: `generation << 16 | index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallToken(pub u32);

/// Where the answer to a call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// A task of this instance, waiting on `token`.
    Local { caller: TaskId, token: CallToken },
    /// A task of instance `instance`, whose kernel knows the call as `token`.
    Remote { instance: u8, token: CallToken },
}

/// A message queued at an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub parcel: Parcel,
    /// `None`: a one-way message (`send`).
    pub reply: Option<ReplyTo>,
}
