//! The legacy 8259 PICs: remapped away from the exception vectors, then masked for good. All
//! device interrupts go through the IO APIC.

use x86_64::instructions::port::Port;

/// Vectors the PICs are moved to, so that a spurious PIC interrupt cannot look like an exception.
pub const PIC1_VECTOR: u8 = 0x20;
pub const PIC2_VECTOR: u8 = 0x28;

pub fn remap_and_mask() {
    let mut cmd1: Port<u8> = Port::new(0x20);
    let mut data1: Port<u8> = Port::new(0x21);
    let mut cmd2: Port<u8> = Port::new(0xA0);
    let mut data2: Port<u8> = Port::new(0xA1);
    // SAFETY: 0x20/0x21 and 0xA0/0xA1 are the two PICs' ports on every PC; this is the
    // standard initialisation sequence (ICW1..ICW4), run once on the bootstrap CPU.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(PIC1_VECTOR);
        data2.write(PIC2_VECTOR);
        data1.write(4);
        data2.write(2);
        data1.write(0x01);
        data2.write(0x01);
        data1.write(0xFF);
        data2.write(0xFF);
    }
}
