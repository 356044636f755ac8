//! Booting kernel instances: instance 0 splits the machine by the partition plan and starts one
//! independent instance per partition (`primary`, `start`); every other instance boots from what
//! instance 0 built for it (see `memory::launch` and `cpus::launch`) and joins the shared region
//! (`secondary`).
//!
//! ```text
//!  bootloader ─► instance 0 (BSP): read + resolve plan, carve own memory, init shared region
//!                  │ for each partition k ≥ 1:
//!                  │   load a fresh kernel copy + page tables + stack + BootInfo into k's memory
//!                  │   trampoline page k below 1 MiB ◄─ INIT, SIPI, SIPI to k's first CPU
//!                  ▼   wait until k reports Running in the shared region
//!                instance k: kernel_main(BootInfo with its own memory only)
//!                  └─ starts the rest of its partition's CPUs through its own trampoline page
//! ```

#![forbid(unsafe_code)]

pub mod primary;
pub mod secondary;
pub mod start;
pub mod tasks;

use bootloader_api::BootInfo;

use crate::arch::tsc;
use crate::platform::descriptor::{self, BootDescriptor};

/// Which instance this kernel is, once booted.
pub enum Role {
    /// Instance 0, started by the bootloader; every other instance has been started.
    Primary(primary::Primary),
    /// Another instance, started by instance 0 from this descriptor; it is up and running.
    Secondary(&'static BootDescriptor),
}

/// Brings this instance up: instance 0 when the bootloader started us, another instance when
/// instance 0 did (its boot descriptor rides in the `BootInfo`).
pub fn start(boot_info: &'static mut BootInfo) -> Role {
    let boot_tsc = tsc::read();
    match descriptor::find(boot_info) {
        Some(desc) => {
            secondary::start(boot_info, desc);
            Role::Secondary(desc)
        }
        None => Role::Primary(primary::start(boot_info, boot_tsc)),
    }
}
