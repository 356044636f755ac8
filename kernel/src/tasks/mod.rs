//! Tasks: user programs in their own address spaces, on this instance's CPUs.
//!
//! ```text
//!  loader     an ELF program into a fresh address space: segments, stack, arguments
//! ```

#![forbid(unsafe_code)]

pub mod loader;
