//! The name table of the system-wide name service (kept by instance 0's kernel).

use alloc::string::String;
use alloc::vec::Vec;

use mk_abi::ipc::MAX_SERVICE_NAME;
use mk_abi::{Error, TaskId};

use crate::caps::ObjId;

/// Most names registered at once.
pub const MAX_NAMES: usize = 64;

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The endpoint: hosting instance and id.
    pub instance: u8,
    pub endpoint: ObjId,
    /// Who registered it.
    pub by: (u8, TaskId),
}

#[derive(Debug, Default)]
pub struct Names {
    entries: Vec<Entry>,
}

/// A valid service name: 1..=32 bytes of printable ASCII without spaces.
pub fn check_name(raw: &[u8]) -> Result<&str, Error> {
    if raw.is_empty() || raw.len() > MAX_SERVICE_NAME || !raw.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadArgument);
    }
    core::str::from_utf8(raw).map_err(|_| Error::BadArgument)
}

impl Names {
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    pub fn register(&mut self, entry: Entry) -> Result<(), Error> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::Exists);
        }
        if self.entries.len() >= MAX_NAMES {
            return Err(Error::OutOfMemory);
        }
        self.entries.push(entry);
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Removes `name` if `by` registered it.
    pub fn unregister(&mut self, name: &str, by: (u8, TaskId)) -> Result<(), Error> {
        let i = self
            .entries
            .iter()
            .position(|e| e.name == name)
            .ok_or(Error::NotFound)?;
        if self.entries[i].by != by {
            return Err(Error::NoRight);
        }
        self.entries.remove(i);
        Ok(())
    }

    /// Drops every name of endpoint `endpoint` of `instance` (it was destroyed); how many.
    pub fn forget_endpoint(&mut self, instance: u8, endpoint: ObjId) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.instance == instance && e.endpoint == endpoint));
        before - self.entries.len()
    }

    /// Drops every name of an instance that stopped; how many.
    pub fn forget_instance(&mut self, instance: u8) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.instance != instance);
        before - self.entries.len()
    }

    /// Keeps only the entries `keep` accepts (the others are dead endpoints).
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.entries.retain(|e| keep(e));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}
