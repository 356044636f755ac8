//! `mmio`: maps its MMIO capability (handle 1, given at spawn) and reads the first register
//! (for the HPET: its capabilities and ID word, never 0 nor all ones). Exits 0 when the read
//! looks like a device's, 1 when it does not, 2 when the mapping is refused (no capability).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::abi::ipc::Handle;
use mk_user::{Args, Mmio, println};

mk_user::entry!(main);

fn main(_args: Args) -> u64 {
    let region = match Mmio::map(Handle::new(1, 1)) {
        Ok(r) => r,
        Err(e) => {
            println!("mmio: map refused: {e}");
            return 2;
        }
    };
    match region.read32(0) {
        Some(v) if v != 0 && v != u32::MAX => {
            println!("mmio: register 0 = {v:#x}");
            0
        }
        other => {
            println!("mmio: register 0 reads {other:?}");
            1
        }
    }
}
