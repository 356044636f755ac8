//! The multikernel kernel: one instance of it runs on each CPU partition.
//!
//! This file declares the layers, bottom-up (see `docs/architecture.md`), and the entry point
//! that runs them in order: `boot` brings this instance up, then the top (the shell, or the
//! self-tests in a test kernel) runs. Only the hardware layer (`arch`, `memory`, `platform`,
//! `console`, `instance`) may use `unsafe`; every layer above forbids it, and the host test
//! `tests/src/layers.rs` checks that each file imports only from its own layer or below.

#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
// Driver APIs (IO APIC routing, IPIs, the RTC, fw_cfg, exits) are exercised by the in-kernel
// tests; the kernel users run calls them only once the services of later milestones (IRQ
// forwarding, messaging) do. Until then, their being unused in that build is expected.
#![cfg_attr(not(feature = "qemu-tests"), allow(dead_code, unused_imports))]

extern crate alloc;

// 0. Hardware: the only layer with `unsafe`, behind safe APIs.
mod arch;
mod console;
mod instance;
mod memory;
mod platform;
// 1. This instance's view of shared memory.
mod shared;
// 2. The CPUs of this instance.
mod cpus;
// 3. Tasks: user programs in ring 3, and the scheduler of this instance's CPUs.
mod tasks;
// 4. Messaging between instances.
mod messaging;
// 5. The services on the messaging layer, and the system calls.
mod services;
mod syscalls;
// 6. Boot: the only code that calls the layers' `init` functions, in order.
mod boot;
// 7. On top: the operator's shell, the self-tests.
#[cfg(feature = "qemu-tests")]
mod selftest;
mod shell;

use bootloader_api::config::Mapping;
use bootloader_api::{BootInfo, BootloaderConfig, entry_point};

pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // A fixed link-time view for debuggers: the kernel image sits in the top 2 GiB, and every
    // mapping the bootloader chooses goes to the upper half, leaving the lower half empty.
    config.mappings.kernel_base = Mapping::FixedAddress(memory::KERNEL_BASE);
    config.mappings.dynamic_range_start = Some(0xFFFF_8000_0000_0000);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    match boot::start(boot_info) {
        boot::Role::Primary(primary) => {
            #[cfg(feature = "qemu-tests")]
            selftest::run(&primary.platform, primary.tests);
            #[cfg(not(feature = "qemu-tests"))]
            {
                let _ = primary;
                shell::start();
                messaging::serve_forever()
            }
        }
        boot::Role::Secondary(desc) => {
            #[cfg(feature = "qemu-tests")]
            if !desc.tests().is_empty() {
                selftest::run_in_instance(desc);
            }
            let _ = desc;
            #[cfg(not(feature = "qemu-tests"))]
            boot::tasks::start_init();
            messaging::serve_forever()
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(loc) => console::emergency_write(format_args!(
            "PANIC at {}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        )),
        None => console::emergency_write(format_args!("PANIC: {}", info.message())),
    }
    platform::failure::stop_after_failure()
}
