//! The CMOS real-time clock's periodic interrupt (ISA IRQ 8): a device that really interrupts,
//! on every PC and in QEMU, used to exercise IO APIC routing (and later IRQ forwarding).

use x86_64::instructions::port::Port;

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;
/// Register index with bit 7 set: NMI stays disabled while we talk to the RTC.
const REG_A: u8 = 0x8A;
const REG_B: u8 = 0x8B;
const REG_C: u8 = 0x0C;

/// The ISA IRQ of the RTC.
pub const ISA_IRQ: u8 = 8;

fn read(reg: u8) -> u8 {
    // SAFETY: 0x70/0x71 are the CMOS index/data ports; reading a register has no effect beyond
    // (for register C) acknowledging the RTC's pending interrupt, which is what callers want.
    unsafe {
        Port::<u8>::new(INDEX).write(reg);
        Port::<u8>::new(DATA).read()
    }
}

fn write(reg: u8, value: u8) {
    // SAFETY: as in `read`; only registers A and B are written, to set the periodic rate and
    // the periodic-interrupt enable bit.
    unsafe {
        Port::<u8>::new(INDEX).write(reg);
        Port::<u8>::new(DATA).write(value);
    }
}

/// Starts the periodic interrupt at `32768 >> (rate - 1)` Hz (`rate` 3..=15; 6 = 1024 Hz).
pub fn start_periodic(rate: u8) {
    let rate = rate.clamp(3, 15);
    let a = read(REG_A);
    write(REG_A, (a & 0xF0) | rate);
    let b = read(REG_B);
    write(REG_B, b | 0x40);
    acknowledge();
}

pub fn stop_periodic() {
    let b = read(REG_B);
    write(REG_B, b & !0x40);
    acknowledge();
}

/// Reads register C, which the RTC requires before it raises its next interrupt.
pub fn acknowledge() {
    read(REG_C);
}
