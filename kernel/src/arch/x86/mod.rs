//! x86_64: descriptor tables, exceptions, the local APIC (x2APIC or xAPIC), the IO APIC and the
//! legacy timers used as reference clocks.

pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod interrupts;
pub mod ioapic;
pub mod ioperm;
pub mod pic;
pub mod pit;
pub mod switch;
pub mod syscall;
pub mod trampoline;
pub mod tsc;
pub mod vectors;
