//! `ioport PORT`: reads I/O port PORT and exits 0. Without an I/O-port capability covering
//! the port, the read raises #GP and the kernel ends the task (`STATUS_FAULT + 13`): the test
//! of device access by capability.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(port) = args.number(0).and_then(|p| u16::try_from(p).ok()) else {
        println!("ioport: usage: ioport PORT");
        return 1;
    };
    let v = mk_user::inb(port);
    println!("ioport {port:#x} read {v:#x}");
    0
}
