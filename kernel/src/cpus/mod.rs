//! The CPUs of this instance: starting them (INIT-SIPI-SIPI through this instance's trampoline
//! page), recording them online (in the registry of `arch::cpu`), parking them for CPU hotplug
//! (`smp`); and starting another instance's first CPU on a fresh kernel copy (`launch`).

#![forbid(unsafe_code)]

pub mod launch;
pub mod smp;
