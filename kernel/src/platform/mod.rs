//! What the firmware tells us about the machine: ACPI tables (MADT, HPET) and QEMU's fw_cfg.

pub mod acpi;
pub mod com2;
pub mod qemu;
pub mod rtc;
