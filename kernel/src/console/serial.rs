//! COM1 through `uart_16550`. Absent on many real machines: the loopback self-test at init tells,
//! and without a port every write is a no-op.

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

const COM1: u16 = 0x3F8;

static PORT: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

pub fn init() {
    // SAFETY: 0x3F8..0x3FF are COM1's I/O ports on every PC; nothing else in the kernel touches
    // them, and the constructor's loopback self-test tells us if no UART answers there.
    let port = unsafe { Uart16550Tty::new_port(COM1, Config::default()) };
    *PORT.lock() = port.ok();
}

/// Uses COM1 as configured by instance 0, without touching its configuration.
pub fn attach() {
    // SAFETY: COM1's ports, as in `init`; instance 0 configured and tested the UART.
    if let Ok(port) = unsafe { uart_16550::Uart16550::new_port(COM1) } {
        *PORT.lock() = Some(Uart16550Tty::from_inner(port));
    }
}

pub fn write_bytes(bytes: &[u8]) {
    if let Some(port) = PORT.lock().as_mut() {
        port.inner_mut().send_bytes_exact(bytes);
    }
}

/// For the panic path: if the lock is held (the panic may have come from inside a write),
/// write anyway through a second handle to the same ports; a garbled line beats a silent hang.
pub fn force_write_bytes(bytes: &[u8]) {
    if let Some(mut guard) = PORT.try_lock() {
        if let Some(port) = guard.as_mut() {
            port.inner_mut().send_bytes_exact(bytes);
        }
        return;
    }
    // SAFETY: COM1's registers are plain port I/O; a second handle can at worst interleave bytes
    // with the interrupted writer on this or another CPU, which is acceptable while panicking.
    if let Ok(mut port) = unsafe { uart_16550::Uart16550::new_port(COM1) } {
        port.send_bytes_exact(bytes);
    }
}

/// The next byte received on COM1, if one waits (the shell's input).
pub fn read_byte() -> Option<u8> {
    PORT.lock()
        .as_mut()
        .and_then(|port| port.inner_mut().try_receive_byte().ok())
}
