//! What the firmware tells us about the machine (ACPI tables, QEMU's fw_cfg) and the legacy
//! devices of a PC the kernel drives itself (RTC, COM2, the PS/2 keyboard).

pub mod acpi;
pub mod com2;
pub mod descriptor;
pub mod failure;
pub mod ps2;
pub mod qemu;
pub mod rtc;
