//! The endpoints and notifications this instance hosts, in generation-checked slot tables.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use mk_abi::{Error, TaskId};

use crate::caps::ObjId;
use crate::parcel::Envelope;

/// Most messages queued at one endpoint.
pub const QUEUE_DEPTH: usize = 32;
/// Most endpoints (and, separately, notifications) one instance hosts.
pub const MAX_OBJECTS: usize = 256;

/// A slot table whose ids carry the slot's generation.
#[derive(Debug)]
pub struct Slots<T> {
    slots: Vec<(u32, Option<T>)>,
    max: usize,
}

impl<T> Slots<T> {
    pub const fn new(max: usize) -> Self {
        Self {
            slots: Vec::new(),
            max,
        }
    }

    pub fn insert(&mut self, value: T) -> Result<ObjId, Error> {
        let index = match self.slots.iter().position(|s| s.1.is_none()) {
            Some(i) => i,
            None if self.slots.len() < self.max => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
            None => return Err(Error::OutOfMemory),
        };
        let slot = &mut self.slots[index];
        slot.0 = slot.0.wrapping_add(1).max(1);
        slot.1 = Some(value);
        Ok(ObjId {
            index: index as u16,
            generation: slot.0,
        })
    }

    pub fn get(&self, id: ObjId) -> Option<&T> {
        match self.slots.get(usize::from(id.index)) {
            Some((g, Some(v))) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: ObjId) -> Option<&mut T> {
        match self.slots.get_mut(usize::from(id.index)) {
            Some((g, Some(v))) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: ObjId) -> Option<T> {
        match self.slots.get_mut(usize::from(id.index)) {
            Some((g, v)) if *g == id.generation => v.take(),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ObjId, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, (g, v))| {
            v.as_ref().map(|v| {
                (
                    ObjId {
                        index: i as u16,
                        generation: *g,
                    },
                    v,
                )
            })
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ObjId, &mut T)> + '_ {
        self.slots.iter_mut().enumerate().filter_map(|(i, (g, v))| {
            let generation = *g;
            v.as_mut().map(|v| {
                (
                    ObjId {
                        index: i as u16,
                        generation,
                    },
                    v,
                )
            })
        })
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.1.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An endpoint: a queue of messages for its owner, the tasks waiting in `recv` on it, and
/// the bits its notifications have set and nobody has received yet.
#[derive(Debug)]
pub struct Endpoint {
    pub owner: TaskId,
    pub queue: VecDeque<Envelope>,
    pub waiters: Vec<TaskId>,
    pub bits: u64,
    /// Registered with the name service (its death is reported there).
    pub named: bool,
}

impl Endpoint {
    pub fn new(owner: TaskId) -> Self {
        Self {
            owner,
            queue: VecDeque::new(),
            waiters: Vec::new(),
            bits: 0,
            named: false,
        }
    }

    /// Queues `env` (its waiters are then to be woken). A full queue gives it back (by value:
    /// the refusal path allocates nothing, and the caller releases what it carries).
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, env: Envelope) -> Result<(), (Error, Envelope)> {
        if self.queue.len() >= QUEUE_DEPTH {
            return Err((Error::Busy, env));
        }
        self.queue.push_back(env);
        Ok(())
    }
}

/// A notification: a word of bits delivered through an endpoint's `recv`.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    pub owner: TaskId,
    pub endpoint: ObjId,
}
