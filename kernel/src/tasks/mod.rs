//! Tasks: user programs in ring 3, each in its own address space, scheduled preemptively on
//! every CPU of this instance (`sched`), built from the ramdisk's programs (`task`, `loader`).
//! See `docs/scheduler.md` and `docs/syscalls.md`.

#![forbid(unsafe_code)]

pub mod loader;
pub mod sched;
pub mod task;
