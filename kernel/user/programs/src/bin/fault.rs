//! `fault KIND`: does something the kernel must end the task for, then, if it is still alive,
//! prints `fault: survived` (a test reads that as a failure) and exits 1. KIND:
//!
//! | KIND          | what                                                        | expected end        |
//! |---------------|-------------------------------------------------------------|---------------------|
//! | `kernel-read` | reads 0xFFFF_FFFF_8000_0000 (the kernel image)              | page fault (14)     |
//! | `null`        | reads address 0                                             | page fault (14)     |
//! | `phys ADDR`   | reads ADDR (hex or decimal) as a user address               | page fault (14)     |
//! | `gp`          | executes `hlt` (privileged), then `cli`                     | general protection (13) |
//! | `div0`        | divides by zero with `div`                                  | divide error (0)    |
//! | `ud`          | executes `ud2`                                              | invalid opcode (6)  |
//! | `write-text`  | writes to its own code page                                 | page fault (14)     |

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::hint::black_box;

use mk_user::{Args, println};

mk_user::entry!(main);

const KERNEL_IMAGE: u64 = 0xFFFF_FFFF_8000_0000;

fn main(args: Args) -> u64 {
    let kind = args.get(0).unwrap_or("");
    println!("fault: {kind}");
    match kind {
        "kernel-read" => report(read(KERNEL_IMAGE)),
        "null" => report(read(black_box(0))),
        "phys" => {
            let Some(addr) = args.get(1).and_then(parse_address) else {
                println!("fault: usage: fault phys ADDR");
                return 2;
            };
            report(read(addr))
        }
        "gp" => {
            mk_user::hlt();
            mk_user::cli();
        }
        "div0" => report(mk_user::div(black_box(1), black_box(0)) as u8),
        "ud" => mk_user::ud2(),
        "write-text" => write_text(),
        _ => {
            println!("fault: usage: fault kernel-read|null|phys ADDR|gp|div0|ud|write-text");
            return 2;
        }
    }
    println!("fault: survived");
    1
}

fn report(v: u8) {
    println!("fault: read {v:#x}");
}

/// `ADDR` as hex (with or without `0x`) or, failing that, decimal.
fn parse_address(text: &str) -> Option<u64> {
    mk_user::parse_number(text).or_else(|| u64::from_str_radix(text, 16).ok())
}

#[allow(unsafe_code)]
fn read(addr: u64) -> u8 {
    // SAFETY: this program exists to make this read fault (every address it is given is
    // outside its own memory); if it does not fault, it reads a byte no Rust object of the
    // program relies on not being read.
    unsafe { mk_user::read_byte(addr) }
}

#[allow(unsafe_code)]
fn write_text() {
    let code = main as fn(Args) -> u64 as usize as u64;
    // SAFETY: `main`'s first byte is in the program's code, mapped read-only and executable:
    // the write faults. Were it to succeed, the byte written is the one already there.
    unsafe { mk_user::write_byte(code, mk_user::read_byte(code)) }
}
