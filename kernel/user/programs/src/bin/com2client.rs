//! `com2client TOTAL`: streams TOTAL bytes through the `com2` driver (`com2drv`) and checks
//! every byte comes back. Byte k of the stream is `(k * 7 + 3) as u8`; it goes in chunks of
//! 128 bytes, each a `WRITE` call with a 2 s timeout whose reply must carry the chunk back.
//! A failed call (the driver restarted, its instance stopped, a timeout...) prints
//! `com2client retry at <offset>: <error>`, looks `com2` up again (up to 20 s) and resends the
//! same chunk. At the end: `com2client done bytes=<n> sum=<s> expected_sum=<e> retries=<r>`,
//! exit 0 if n == TOTAL and s == e, else 1. A reply with other bytes prints
//! `com2client fail at <offset>: <what>` and exits 1.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::com2::{NAME, WRITE};
use mk_user::ipc::{self, IpcMsg, names};
use mk_user::{Args, println};

mk_user::entry!(main);

const CHUNK: u64 = 128;
const CALL_TIMEOUT_MS: u64 = 2_000;
const LOOKUP_MS: u64 = 20_000;
/// Retries after which the client gives up.
const MAX_RETRIES: u64 = 100;

fn byte(k: u64) -> u8 {
    k.wrapping_mul(7).wrapping_add(3) as u8
}

fn main(args: Args) -> u64 {
    let Some(total) = args.number(0) else {
        println!("com2client: usage: com2client TOTAL");
        return 1;
    };
    let mut h = match names::lookup_patiently(NAME, LOOKUP_MS) {
        Ok(h) => h,
        Err(e) => {
            println!("com2client fail at lookup: {e} (code {})", e.code());
            return 1;
        }
    };
    let expected_sum: u64 = (0..total).map(|k| u64::from(byte(k))).sum();
    let (mut offset, mut count, mut sum, mut retries) = (0u64, 0u64, 0u64, 0u64);
    while offset < total {
        let len = CHUNK.min(total - offset) as usize;
        let mut chunk = [0u8; CHUNK as usize];
        for (j, b) in chunk[..len].iter_mut().enumerate() {
            *b = byte(offset + j as u64);
        }
        let mut msg = IpcMsg::new(WRITE, &chunk[..len]);
        match ipc::call(h, &mut msg, CALL_TIMEOUT_MS) {
            Ok(0) if msg.bytes() == &chunk[..len] => {
                count += len as u64;
                sum += msg.bytes().iter().map(|&b| u64::from(b)).sum::<u64>();
                offset += len as u64;
                mk_user::yield_now();
            }
            Ok(label) => {
                println!(
                    "com2client fail at {offset}: reply label {label:#x} with {} bytes, expected label 0 with the {len} sent",
                    msg.len
                );
                return 1;
            }
            Err(e) => {
                retries += 1;
                println!("com2client retry at {offset}: {e} (code {})", e.code());
                if retries > MAX_RETRIES {
                    println!("com2client fail at {offset}: {retries} retries");
                    return 1;
                }
                let _ = ipc::cap_drop(h);
                mk_user::sleep_ms(10);
                h = match names::lookup_patiently(NAME, LOOKUP_MS) {
                    Ok(h) => h,
                    Err(e) => {
                        println!(
                            "com2client fail at {offset}: lookup again: {e} (code {})",
                            e.code()
                        );
                        return 1;
                    }
                };
            }
        }
    }
    println!(
        "com2client done bytes={count} sum={sum} expected_sum={expected_sum} retries={retries}"
    );
    u64::from(count != total || sum != expected_sum)
}
