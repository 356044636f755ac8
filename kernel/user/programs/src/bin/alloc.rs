//! `alloc BYTES`: maps BYTES with `map`, writes a pattern into every page and reads it back;
//! prints `alloc ok <bytes>` and exits 0, or the error and exits 1.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, Mapping, println};

mk_user::entry!(main);

const PAGE: usize = 4096;

fn pattern(i: usize) -> u8 {
    (i / PAGE) as u8 ^ 0xA5
}

fn main(args: Args) -> u64 {
    let Some(bytes) = args.number(0).and_then(|b| usize::try_from(b).ok()) else {
        println!("alloc: usage: alloc BYTES");
        return 1;
    };
    let mut mapping = match Mapping::new(bytes) {
        Ok(m) => m,
        Err(e) => {
            println!("alloc: map of {bytes} bytes failed: {e}");
            return 1;
        }
    };
    let mem = mapping.as_mut_slice();
    if mem.iter().step_by(PAGE).any(|&b| b != 0) {
        println!("alloc: fresh memory is not zeroed");
        return 1;
    }
    for i in (0..mem.len()).step_by(PAGE) {
        mem[i] = pattern(i);
        let last = (i + PAGE - 1).min(mem.len() - 1);
        mem[last] = pattern(i);
    }
    for i in (0..mem.len()).step_by(PAGE) {
        let last = (i + PAGE - 1).min(mem.len() - 1);
        if mem[i] != pattern(i) || mem[last] != pattern(i) {
            println!("alloc: the page at offset {i:#x} lost what was written");
            return 1;
        }
    }
    drop(mapping);
    println!("alloc ok {bytes}");
    0
}
