//! Tasks: user programs in ring 3, each in its own address space, scheduled preemptively on
//! every CPU of this instance. See `docs/scheduler.md` and `docs/syscalls.md`.
//!
//! ```text
//!  loader     an ELF program into a fresh address space: segments, stack, arguments
//!  task       the scheduler's payload (space, kernel stack, context) and spawn
//!  sched      mk-sched behind a lock; each CPU's scheduler loop; yield, sleep, wait, kill,
//!             exit; the hooks for faults and interrupts in ring 3
//! ```

#![forbid(unsafe_code)]

pub mod loader;
pub mod sched;
pub mod task;
