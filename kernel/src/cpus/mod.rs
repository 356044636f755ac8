//! The CPUs of this instance: starting them (INIT-SIPI-SIPI through this instance's trampoline
//! page), the registry of those online, parking them for CPU hotplug.

#![forbid(unsafe_code)]

pub mod launch;
pub mod smp;
