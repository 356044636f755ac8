//! `crash`: page-faults at once (reads address 0), so the kernel ends it with
//! `STATUS_FAULT + 14`. For tests that crash many tasks.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use mk_user::{Args, println};

mk_user::entry!(main);

#[allow(unsafe_code)]
fn main(_args: Args) -> u64 {
    // SAFETY: nothing is mapped at address 0 in a user address space: the read faults and the
    // kernel ends the task.
    let v = unsafe { mk_user::read_byte(0) };
    println!("crash: survived (read {v:#x} at address 0)");
    1
}
