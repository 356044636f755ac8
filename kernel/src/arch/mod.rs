//! Architecture-specific code. Everything that touches x86 registers, descriptor tables or the
//! interrupt controllers lives below `arch/x86`; the rest of the kernel calls the small APIs
//! re-exported here.

pub mod x86;

pub use x86::{
    apic, cpu, gdt, interrupts, ioapic, pic, pit, switch, syscall, trampoline, tsc, vectors,
};
