//! Kernel instances: instance 0 splits the machine by the partition plan and starts one
//! independent instance per partition; every other instance boots from what instance 0 built for
//! it (see `launch`) and joins the shared region.
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

pub mod descriptor;
pub mod launch;
pub mod pristine;
pub mod region;
pub mod secondary;
pub mod smp;
pub mod start;

use bootloader_api::BootInfo;

use descriptor::BootDescriptor;

/// The boot descriptor, if this kernel was started by instance 0 (not by the bootloader).
pub fn descriptor(boot_info: &BootInfo) -> Option<&'static BootDescriptor> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    if boot_info.ramdisk_len != core::mem::size_of::<BootDescriptor>() as u64
        || addr % core::mem::align_of::<BootDescriptor>() as u64 != 0
    {
        return None;
    }
    // SAFETY: the ramdisk is mapped for `ramdisk_len` bytes (by the bootloader, or by instance
    // 0 for an instance it built), which is the size of a descriptor, and aligned for it.
    let desc = unsafe { &*(addr as *const BootDescriptor) };
    (desc.magic == descriptor::MAGIC).then_some(desc)
}
