//! The second serial port (COM2, ISA IRQ 3) in loopback mode: a device that really raises
//! receive interrupts, with no cable and no host side. Every byte written to it comes back as
//! a received byte and raises the "received data available" interrupt, which the IRQ services
//! route and forward like any device interrupt. (COM1 carries the console and is left alone.)
//!
//! The `uart_16550` crate drives COM1; it has no loopback control, so this small driver
//! programs the few registers it needs itself. QEMU creates COM2 only when given a second
//! `-serial` (the test harness adds `-serial null`).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

const BASE: u16 = 0x2F8;
const DATA: u16 = BASE;
const IER: u16 = BASE + 1;
const FCR: u16 = BASE + 2;
const LCR: u16 = BASE + 3;
const MCR: u16 = BASE + 4;
const LSR: u16 = BASE + 5;

/// The ISA IRQ of COM2.
pub const ISA_IRQ: u8 = 3;

/// Bytes this instance took from COM2, and their sum (for an intactness check).
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
pub static RECEIVED_SUM: AtomicU64 = AtomicU64::new(0);

fn out(port: u16, value: u8) {
    // SAFETY: COM2's registers; writing them configures or feeds only this UART.
    unsafe { Port::<u8>::new(port).write(value) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as above; reading LSR or the data register only consumes COM2's state.
    unsafe { Port::<u8>::new(port).read() }
}

/// Whether a UART answers at COM2 (the scratch register keeps what is written to it).
pub fn present() -> bool {
    out(BASE + 7, 0x5A);
    inb(BASE + 7) == 0x5A
}

/// 8N1 at 115200, FIFOs off (one interrupt per byte), loopback, OUT2 (interrupt line
/// enabled), and the receive interrupt on.
pub fn init_loopback() {
    out(IER, 0);
    out(LCR, 0x80);
    out(DATA, 1);
    out(IER, 0);
    out(LCR, 0x03);
    out(FCR, 0);
    out(MCR, 0x10 | 0x08 | 0x03);
    drain();
    out(IER, 0x01);
}

/// Sends one byte (it comes back to the receiver and raises an interrupt).
pub fn send(byte: u8) {
    while inb(LSR) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    out(DATA, byte);
}

/// Takes every received byte (acknowledging the interrupt); returns how many.
pub fn drain() -> u64 {
    let mut n = 0;
    while inb(LSR) & 0x01 != 0 {
        let b = inb(DATA);
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        RECEIVED_SUM.fetch_add(u64::from(b), Ordering::Relaxed);
        n += 1;
    }
    n
}
