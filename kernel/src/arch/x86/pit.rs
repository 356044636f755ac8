//! The legacy PIT (8254), used only as a reference clock to calibrate the TSC and the LAPIC
//! timer: channel 2 counts down once with its gate driven through port 0x61, and we poll its
//! output bit. No interrupt is involved.

use x86_64::instructions::port::Port;

pub const FREQUENCY_HZ: u64 = 1_193_182;

/// Busy-waits `micros` microseconds (at most 50 ms per call) on PIT channel 2.
pub fn wait_micros(micros: u64) {
    let count = (FREQUENCY_HZ * micros / 1_000_000).clamp(1, 0xFFFF) as u16;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT channel 2 data port, the PIT command port
    // and the system control port B on every PC; only this function (run by one CPU at a time
    // during calibration) touches them.
    unsafe {
        // Gate low (stop), speaker off.
        let b = gate.read();
        gate.write(b & !0x03);
        // Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
        command.write(0b1011_0000);
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Gate high starts the count.
        let b = gate.read();
        gate.write((b & !0x02) | 0x01);
        // OUT2 (bit 5) goes high at terminal count.
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let b = gate.read();
        gate.write(b & !0x01);
    }
}
