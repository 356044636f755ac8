//! The PS/2 keyboard behind the i8042 controller, polled: the shell's keyboard on real
//! machines (USB keyboards reach it too through the firmware's legacy emulation, on BIOS and
//! on most UEFI machines).
//!
//! The controller is left as the firmware set it up (scancode set 1 through its translation),
//! and its interrupt is not used: the shell polls between drains of the mailboxes. A machine
//! without the controller reads 0xFF from the status port; that disables the keyboard.

use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

const DATA: u16 = 0x60;
const STATUS: u16 = 0x64;
/// Status bits: output buffer full (a byte waits), and that byte is from the mouse (AUX).
const OUTPUT_FULL: u8 = 0x01;
const FROM_AUX: u8 = 0x20;

static PRESENT: AtomicBool = AtomicBool::new(false);

fn status() -> u8 {
    // SAFETY: reading the i8042 status port has no side effect; on a machine without the
    // controller the read returns 0xFF (floating bus), which `init` takes for "absent".
    unsafe { Port::<u8>::new(STATUS).read() }
}

/// Looks for the controller and drops whatever bytes the firmware left in its buffer.
pub fn init() {
    if status() == 0xff {
        return;
    }
    for _ in 0..32 {
        if status() & OUTPUT_FULL == 0 {
            break;
        }
        // SAFETY: the status says a byte waits in the data port; reading it only dequeues it.
        let _ = unsafe { Port::<u8>::new(DATA).read() };
    }
    PRESENT.store(true, Ordering::Relaxed);
}

/// The next keyboard byte, if one waits (mouse bytes are read and dropped).
pub fn read_scancode() -> Option<u8> {
    if !PRESENT.load(Ordering::Relaxed) {
        return None;
    }
    loop {
        let s = status();
        if s & OUTPUT_FULL == 0 {
            return None;
        }
        // SAFETY: as in `init`: a byte waits in the data port.
        let byte = unsafe { Port::<u8>::new(DATA).read() };
        if s & FROM_AUX == 0 {
            return Some(byte);
        }
    }
}
