//! Ownership words: one `AtomicU64` per resource, changed only by compare-exchange.
//!
//! ```text
//!  63            32 31     24 23     16 15      8 7       0
//! +----------------+---------+---------+---------+---------+
//! |   generation   |    0    |   to    |  owner  |   tag   |
//! +----------------+---------+---------+---------+---------+
//!  tag 0 Free (owner/to 0), 1 Owned(owner), 2 InTransit{from = owner, to, generation}
//! ```
//!
//! The generation counts transfers of the resource; it is bumped by `begin_transfer` and kept
//! through completion, abort and release, so a stale `(to, generation)` pair can never complete
//! or abort a later transfer (no ABA). Because the whole state is one word, a resource has at
//! most one owner at every instant.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, InstanceId, MEM_CHUNK_SHIFT};

/// A resource with an owner word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A CPU, by local APIC ID (`< MAX_APIC_IDS`).
    Cpu(u32),
    /// An interrupt line, by GSI (`< MAX_IRQS`).
    Irq(u32),
    /// A 2 MiB chunk of physical memory, by chunk number (`address >> 21`, `< MEM_CHUNKS`).
    Memory(u32),
}

impl Resource {
    /// The memory chunk holding physical address `addr` (may be out of range: checked on use).
    pub const fn memory_at(addr: u64) -> Self {
        let chunk = addr >> MEM_CHUNK_SHIFT;
        Self::Memory(if chunk > u32::MAX as u64 {
            u32::MAX
        } else {
            chunk as u32
        })
    }
}

/// Decoded owner word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Nobody owns it.
    Free,
    /// Owned by this instance.
    Owned(InstanceId),
    /// Being handed from `from` to `to`: `from` has stopped using it, `to` may not use it yet.
    InTransit {
        /// Previous owner (gets it back on abort).
        from: InstanceId,
        /// Next owner (gets it on completion).
        to: InstanceId,
        /// Transfer generation, needed to complete or abort.
        generation: u32,
    },
}

const TAG_FREE: u64 = 0;
const TAG_OWNED: u64 = 1;
const TAG_TRANSIT: u64 = 2;

pub(crate) fn encode(owner: Owner, generation: u32) -> u64 {
    let g = u64::from(generation) << 32;
    match owner {
        Owner::Free => g | TAG_FREE,
        Owner::Owned(o) => g | ((u64::from(o.raw()) & 0xff) << 8) | TAG_OWNED,
        Owner::InTransit {
            from,
            to,
            generation,
        } => {
            (u64::from(generation) << 32)
                | ((u64::from(to.raw()) & 0xff) << 16)
                | ((u64::from(from.raw()) & 0xff) << 8)
                | TAG_TRANSIT
        }
    }
}

/// Decodes a word; anything this build would never write is [`Error::Corrupt`].
pub(crate) fn decode(w: u64, instances: usize) -> Result<(Owner, u32), Error> {
    let generation = (w >> 32) as u32;
    let a = InstanceId::new(((w >> 8) & 0xff) as u16);
    let b = InstanceId::new(((w >> 16) & 0xff) as u16);
    let spare = (w >> 24) & 0xff;
    let owner = match w & 0xff {
        TAG_FREE if a.is_supervisor() && b.is_supervisor() && spare == 0 => Owner::Free,
        TAG_OWNED if a.index() < instances && b.is_supervisor() && spare == 0 => Owner::Owned(a),
        TAG_TRANSIT if a.index() < instances && b.index() < instances && a != b && spare == 0 => {
            Owner::InTransit {
                from: a,
                to: b,
                generation,
            }
        }
        _ => return Err(Error::Corrupt(w)),
    };
    Ok((owner, generation))
}

/// Operations on owner words of a region formatted for `instances` instances.
#[derive(Clone, Copy)]
pub(crate) struct Words {
    pub instances: usize,
}

impl Words {
    pub(crate) fn check(&self, i: InstanceId) -> Result<(), Error> {
        if i.index() >= self.instances {
            Err(Error::BadInstance(i))
        } else {
            Ok(())
        }
    }

    /// Runs `f` on the decoded current value and installs what it returns, by compare-exchange
    /// (AcqRel on success, Acquire on failure), retrying if the word changed under us.
    fn update<R>(
        &self,
        word: &AtomicU64,
        mut f: impl FnMut(Owner, u32) -> Result<(u64, R), Error>,
    ) -> Result<R, Error> {
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let (owner, generation) = decode(cur, self.instances)?;
            let (new, r) = f(owner, generation)?;
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(r),
                Err(now) => cur = now,
            }
        }
    }

    pub fn owner(&self, word: &AtomicU64) -> Result<Owner, Error> {
        decode(word.load(Ordering::Acquire), self.instances).map(|(o, _)| o)
    }

    pub fn claim(
        &self,
        word: &AtomicU64,
        by: InstanceId,
        expected: Option<InstanceId>,
    ) -> Result<(), Error> {
        self.check(by)?;
        if let Some(e) = expected {
            self.check(e)?;
        }
        self.update(word, |owner, generation| match (owner, expected) {
            (Owner::Free, None) => Ok((encode(Owner::Owned(by), generation), ())),
            (Owner::Owned(o), Some(e)) if o == e => Ok((encode(Owner::Owned(by), generation), ())),
            (
                Owner::InTransit {
                    from,
                    to,
                    generation,
                },
                _,
            ) => Err(Error::InTransit {
                from,
                to,
                generation,
            }),
            (found, _) => Err(Error::WrongOwner { found }),
        })
    }

    pub fn release(&self, word: &AtomicU64, by: InstanceId) -> Result<(), Error> {
        self.check(by)?;
        self.update(word, |owner, generation| match owner {
            Owner::Owned(o) if o == by => Ok((encode(Owner::Free, generation), ())),
            Owner::InTransit {
                from,
                to,
                generation,
            } => Err(Error::InTransit {
                from,
                to,
                generation,
            }),
            found => Err(Error::WrongOwner { found }),
        })
    }

    pub fn begin_transfer(
        &self,
        word: &AtomicU64,
        from: InstanceId,
        to: InstanceId,
    ) -> Result<u32, Error> {
        self.check(from)?;
        self.check(to)?;
        if from == to {
            return Err(Error::SameInstance(from));
        }
        self.update(word, |owner, generation| match owner {
            Owner::Owned(o) if o == from => {
                let g = generation.wrapping_add(1);
                let new = Owner::InTransit {
                    from,
                    to,
                    generation: g,
                };
                Ok((encode(new, g), g))
            }
            Owner::InTransit {
                from,
                to,
                generation,
            } => Err(Error::InTransit {
                from,
                to,
                generation,
            }),
            found => Err(Error::WrongOwner { found }),
        })
    }

    /// Shared by complete (`to` gets it) and abort (`from` gets it back).
    fn finish(
        &self,
        word: &AtomicU64,
        party: InstanceId,
        given: u32,
        completing: bool,
    ) -> Result<(), Error> {
        self.check(party)?;
        self.update(word, |owner, _| match owner {
            Owner::InTransit {
                from,
                to,
                generation,
            } => {
                let me = if completing { to } else { from };
                if me != party {
                    Err(Error::WrongOwner { found: owner })
                } else if generation != given {
                    Err(Error::WrongGeneration {
                        given,
                        found: generation,
                    })
                } else {
                    Ok((encode(Owner::Owned(party), generation), ()))
                }
            }
            found => Err(Error::NotInTransit { found }),
        })
    }

    pub fn complete_transfer(&self, word: &AtomicU64, to: InstanceId, g: u32) -> Result<(), Error> {
        self.finish(word, to, g, true)
    }

    pub fn abort_transfer(&self, word: &AtomicU64, from: InstanceId, g: u32) -> Result<(), Error> {
        self.finish(word, from, g, false)
    }
}
