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

/// Most bytes one `map` call takes (the kernel's `MAX_MAP`).
const CHUNK: usize = mk_user::abi::MAX_MAP as usize;
/// Most chunks (1 GiB in all).
const MAX_CHUNKS: usize = 64;

fn main(args: Args) -> u64 {
    let Some(bytes) = args.number(0).and_then(|b| usize::try_from(b).ok()) else {
        println!("alloc: usage: alloc BYTES");
        return 1;
    };
    if bytes == 0 || bytes > CHUNK * MAX_CHUNKS {
        println!("alloc: BYTES must be 1..={}", CHUNK * MAX_CHUNKS);
        return 1;
    }
    // Mapped in chunks of at most CHUNK bytes, all kept until every page was checked.
    let mut maps: [Option<Mapping>; MAX_CHUNKS] = core::array::from_fn(|_| None);
    let mut left = bytes;
    for slot in maps.iter_mut() {
        if left == 0 {
            break;
        }
        let len = left.min(CHUNK);
        match Mapping::new(len) {
            Ok(m) => *slot = Some(m),
            Err(e) => {
                println!(
                    "alloc: map of {len} bytes ({} of {bytes} mapped) failed: {e}",
                    bytes - left
                );
                return 1;
            }
        }
        left -= len;
    }
    for mapping in maps.iter_mut().flatten() {
        if let Err(why) = check(mapping.as_mut_slice()) {
            println!("alloc: {why}");
            return 1;
        }
    }
    drop(maps);
    println!("alloc ok {bytes}");
    0
}

/// Checks the fresh memory is zero, writes a pattern at both ends of every page, reads it back.
fn check(mem: &mut [u8]) -> Result<(), &'static str> {
    if mem.iter().step_by(PAGE).any(|&b| b != 0) {
        return Err("fresh memory is not zeroed");
    }
    for i in (0..mem.len()).step_by(PAGE) {
        mem[i] = pattern(i);
        let last = (i + PAGE - 1).min(mem.len() - 1);
        mem[last] = pattern(i);
    }
    for i in (0..mem.len()).step_by(PAGE) {
        let last = (i + PAGE - 1).min(mem.len() - 1);
        if mem[i] != pattern(i) || mem[last] != pattern(i) {
            return Err("a page lost what was written");
        }
    }
    Ok(())
}
