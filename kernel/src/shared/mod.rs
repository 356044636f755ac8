//! This instance's view of shared memory: the shared region (instance table, ownership tables,
//! locks, mailboxes, page pool, telemetry) through `mk-shared`.

#![forbid(unsafe_code)]

pub mod records;
pub mod region;
