//! QEMU-only devices: `isa-debug-exit` (how test kernels end QEMU with a verdict) and fw_cfg
//! (how the test harness passes options to a kernel without rebuilding it). Both are harmless on
//! real hardware: the fw_cfg signature check fails and nothing listens on the exit port.

use alloc::string::String;
use alloc::vec::Vec;
use x86_64::instructions::port::Port;

/// The harness maps these to "passed" and "failed" (QEMU exits with `(code << 1) | 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    Success = 0x10,
    Failure = 0x11,
}

const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Ends QEMU. If the device is not there (real hardware), halts.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: writing to the isa-debug-exit port ends QEMU; where no device decodes the port,
    // the write is ignored.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32) };
    crate::arch::cpu::halt_forever()
}

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const FW_CFG_SIGNATURE: u16 = 0x0000;
const FW_CFG_FILE_DIR: u16 = 0x0019;

fn select(key: u16) {
    // SAFETY: the fw_cfg selector port; on machines without fw_cfg the write is ignored.
    unsafe { Port::<u16>::new(FW_CFG_SELECTOR).write(key) };
}

fn read_bytes(buf: &mut [u8]) {
    let mut data = Port::<u8>::new(FW_CFG_DATA);
    for b in buf {
        // SAFETY: the fw_cfg data port; reads have no effect beyond advancing the item offset.
        *b = unsafe { data.read() };
    }
}

fn present() -> bool {
    select(FW_CFG_SIGNATURE);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// The contents of fw_cfg file `name` (e.g. `opt/multikernel/tests`), if QEMU provides it.
pub fn read_file(name: &str) -> Option<Vec<u8>> {
    if !present() {
        return None;
    }
    select(FW_CFG_FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    let count = u32::from_be_bytes(count);
    for _ in 0..count.min(4096) {
        let mut entry = [0u8; 64];
        read_bytes(&mut entry);
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let key = u16::from_be_bytes([entry[4], entry[5]]);
        let raw_name = &entry[8..];
        let len = raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw_name.len());
        if &raw_name[..len] == name.as_bytes() {
            select(key);
            let mut contents = alloc::vec![0u8; size.min(64 * 1024)];
            read_bytes(&mut contents);
            return Some(contents);
        }
    }
    None
}

/// The fw_cfg file `name` as text.
pub fn read_string(name: &str) -> Option<String> {
    read_file(name).map(|b| String::from_utf8_lossy(&b).trim().into())
}
