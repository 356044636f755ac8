//! Fixed-capacity handler registry.

use mk_wire::{Kind, Message, MsgType, Payload, Status};

/// What a handler answers to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Status of the reply.
    pub status: Status,
    /// Payload; must be the one the kind requires for `status` (see
    /// [`mk_wire::expected_payload`]), else the dispatcher answers `InternalError` instead.
    pub payload: Payload,
}

impl Reply {
    /// A successful reply.
    pub const fn ok(payload: Payload) -> Self {
        Self {
            status: Status::Ok,
            payload,
        }
    }

    /// An error reply without payload.
    pub const fn error(status: Status) -> Self {
        Self {
            status,
            payload: Payload::Empty,
        }
    }
}

/// Handles decoded, validated requests. Called on whatever CPU runs the dispatcher, possibly
/// from interrupt context and on several CPUs at once: keep it short, lock-free or
/// interrupt-safe.
///
/// Returning `Some(reply)` answers a request that has `NEEDS_REPLY` (ignored otherwise).
/// Returning `None` for such a request means the handler answers later by itself (or never,
/// and the caller times out).
///
/// Any `Fn(&Message) -> Option<Reply> + Sync` is a handler, so plain `fn`s and closures
/// work; a struct implementing the trait carries its own context.
pub trait Handler: Sync {
    /// Handles one request.
    fn handle(&self, msg: &Message) -> Option<Reply>;
}

impl<F: Fn(&Message) -> Option<Reply> + Sync> Handler for F {
    fn handle(&self, msg: &Message) -> Option<Reply> {
        self(msg)
    }
}

/// What a handler is registered for. A `Kind` handler is preferred over a `Type` handler of
/// the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandlerKey {
    /// Every subtype of a type.
    Type(MsgType),
    /// One (type, subtype).
    Kind(Kind),
}

/// Why a registry change failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryError {
    /// The key already has a handler.
    AlreadyRegistered,
    /// The key has no handler.
    NotRegistered,
    /// All slots are taken.
    Full,
}

impl HandlerKey {
    /// The key as one number, compared in the dispatch's lookup: type code in bits 16..32,
    /// subtype code in bits 0..16, bit 32 set for a `Kind` key (a `Type` key has subtype 0).
    const fn code(self) -> u64 {
        match self {
            Self::Type(t) => (t.code() as u64) << 16,
            Self::Kind(k) => {
                (1 << 32) | ((k.msg_type().code() as u64) << 16) | k.subtype_code() as u64
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    key: HandlerKey,
    /// `key.code()`, kept so that a lookup compares one number per entry.
    code: u64,
    handler: &'static dyn Handler,
}

/// Up to `N` handlers.
///
/// Lookups take a read lock just long enough to copy the handler reference out; the handler
/// runs without any lock, so handlers may themselves register or unregister. Readers never
/// wait for each other; a writer waits for readers. **Kernel rule:** register and unregister
/// with local interrupts disabled (or before the messaging IPI is enabled), so that a dispatch
/// from an interrupt never spins on a writer interrupted on its own CPU. After `unregister`
/// returns, a dispatch that looked the handler up just before may still run it once (the
/// reference is `'static`, so that is memory-safe).
pub struct Registry<const N: usize> {
    entries: spin::RwLock<Table<N>>,
}

/// Buckets of a registry's hash index (at least twice the entries: probes stay short).
const BUCKETS: usize = 128;

/// USER subtypes below this are found through the direct table (the others by hash).
const USER_DIRECT: usize = 256;
/// Slots of the direct table: the typed kinds ([`Kind::TYPED`], in order), then USER
/// subtypes `0..USER_DIRECT`.
const DIRECT: usize = Kind::TYPED.len() + USER_DIRECT;

/// The direct table's slot of `kind`: `None` for a USER subtype of `USER_DIRECT` or more.
#[inline]
const fn direct_slot(kind: Kind) -> Option<usize> {
    Some(match kind {
        Kind::IrqForward => 0,
        Kind::IrqBalance => 1,
        Kind::IrqMask => 2,
        Kind::IrqUnmask => 3,
        Kind::CpuAdd => 4,
        Kind::CpuRemove => 5,
        Kind::MemAdd => 6,
        Kind::MemRemove => 7,
        Kind::Query => 8,
        Kind::Heartbeat => 9,
        Kind::Shutdown => 10,
        Kind::Ping => 11,
        Kind::User(sub) => {
            if (sub as usize) < USER_DIRECT {
                Kind::TYPED.len() + sub as usize
            } else {
                return None;
            }
        }
    })
}

/// The kind whose direct slot is `slot` (`slot < DIRECT`).
fn direct_kind(slot: usize) -> Kind {
    Kind::TYPED
        .get(slot)
        .copied()
        .unwrap_or(Kind::User(slot.saturating_sub(Kind::TYPED.len()) as u16))
}

/// The entries, and two indexes over them so that a lookup costs a load or a hash and a probe
/// or two, not a pass over every entry (it runs for every message received).
struct Table<const N: usize> {
    entries: [Option<Entry>; N],
    /// `1 + index` into `entries` of the entry whose code hashes here (or after, with linear
    /// probing); 0: empty. Rebuilt on every registration change.
    index: [u8; BUCKETS],
    /// By [`direct_slot`] of a kind: `1 + index` into `entries` of the handler its lookup
    /// finds (its `Kind` handler, else its type's); 0: none. Rebuilt with `index`.
    direct: [u8; DIRECT],
}

impl<const N: usize> Table<N> {
    const fn bucket(code: u64) -> usize {
        // Fibonacci hashing: the top 7 bits of the code times 2^64 / phi.
        (code.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as usize
    }

    fn rebuild(&mut self) {
        self.index = [0; BUCKETS];
        for (i, e) in self.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            // Fewer entries than buckets: the probe finds a free one.
            let start = Self::bucket(e.code);
            let free = (start..start + BUCKETS)
                .map(|b| b % BUCKETS)
                .find(|&b| self.index.get(b) == Some(&0));
            if let Some(slot) = free.and_then(|b| self.index.get_mut(b)) {
                *slot = i as u8 + 1;
            }
        }
        for slot in 0..DIRECT {
            let kind = direct_kind(slot);
            let found = self
                .find_index(HandlerKey::Kind(kind).code())
                .or_else(|| self.find_index(HandlerKey::Type(kind.msg_type()).code()));
            if let Some(d) = self.direct.get_mut(slot) {
                *d = found.unwrap_or(0);
            }
        }
    }

    /// `1 + index` of the entry whose key has `code`.
    #[inline]
    fn find_index(&self, code: u64) -> Option<u8> {
        let start = Self::bucket(code);
        // At most N entries in BUCKETS > N buckets: an empty bucket ends every probe.
        for b in (start..).take(BUCKETS) {
            let i = *self.index.get(b % BUCKETS)?;
            let e = self.entries.get(usize::from(i).checked_sub(1)?)?.as_ref()?;
            if e.code == code {
                return Some(i);
            }
        }
        None
    }

    #[inline]
    fn find(&self, code: u64) -> Option<&'static dyn Handler> {
        self.handler(self.find_index(code)?)
    }

    /// The handler of entry `i - 1`.
    #[inline]
    fn handler(&self, i: u8) -> Option<&'static dyn Handler> {
        let e = self.entries.get(usize::from(i).checked_sub(1)?)?.as_ref()?;
        Some(e.handler)
    }
}

impl<const N: usize> Default for Registry<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Registry<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .field("capacity", &N)
            .finish()
    }
}

impl<const N: usize> Registry<N> {
    /// Empty.
    pub const fn new() -> Self {
        const {
            assert!(
                N < BUCKETS / 2,
                "a registry's index needs twice its entries"
            )
        };
        Self {
            entries: spin::RwLock::new(Table {
                entries: [None; N],
                index: [0; BUCKETS],
                direct: [0; DIRECT],
            }),
        }
    }

    /// Registers `handler` for `key`.
    pub fn register(
        &self,
        key: HandlerKey,
        handler: &'static dyn Handler,
    ) -> Result<(), RegistryError> {
        let mut table = self.entries.write();
        if table.entries.iter().flatten().any(|e| e.key == key) {
            return Err(RegistryError::AlreadyRegistered);
        }
        let free = table
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(RegistryError::Full)?;
        *free = Some(Entry {
            key,
            code: key.code(),
            handler,
        });
        table.rebuild();
        Ok(())
    }

    /// Removes the handler of `key`.
    pub fn unregister(&self, key: HandlerKey) -> Result<(), RegistryError> {
        let mut table = self.entries.write();
        let slot = table
            .entries
            .iter_mut()
            .find(|e| e.is_some_and(|e| e.key == key))
            .ok_or(RegistryError::NotRegistered)?;
        *slot = None;
        table.rebuild();
        Ok(())
    }

    /// Whether `key` has a handler.
    pub fn is_registered(&self, key: HandlerKey) -> bool {
        self.entries
            .read()
            .entries
            .iter()
            .flatten()
            .any(|e| e.key == key)
    }

    /// The handler for `kind`: its `Kind` handler, else its type's.
    #[inline]
    pub fn lookup(&self, kind: Kind) -> Option<&'static dyn Handler> {
        let table = self.entries.read();
        // Most kinds: one load from the direct table, which already holds the type's handler
        // for a kind without one.
        if let Some(slot) = direct_slot(kind) {
            return table.handler(*table.direct.get(slot)?);
        }
        // Keys found by their numbers: the `Kind` handler, else the type's.
        table
            .find(HandlerKey::Kind(kind).code())
            .or_else(|| table.find(HandlerKey::Type(kind.msg_type()).code()))
    }

    /// Handlers registered.
    pub fn len(&self) -> usize {
        self.entries.read().entries.iter().flatten().count()
    }

    /// Whether no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `direct_slot` numbers the typed kinds by hand: it must agree with `Kind::TYPED`'s
    /// order, which `direct_kind` follows, for every slot of the table.
    #[test]
    fn direct_slots_and_kinds_agree() {
        for slot in 0..DIRECT {
            assert_eq!(direct_slot(direct_kind(slot)), Some(slot), "slot {slot}");
        }
        for (i, &kind) in Kind::TYPED.iter().enumerate() {
            assert_eq!(direct_slot(kind), Some(i), "{kind:?}");
        }
        assert_eq!(direct_slot(Kind::User(USER_DIRECT as u16)), None);
        assert_eq!(direct_slot(Kind::User(u16::MAX)), None);
    }
}
