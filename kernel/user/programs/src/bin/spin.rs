//! `spin [ROUNDS] [ITERATIONS]`: CPU-bound. Counts iterations in rounds of ITERATIONS (default
//! 2^23) and prints `spin <id> cpu <c> round <r>` after each round, so a test can count rounds
//! in the log; every 200 ms (by `clock_ns`) it also prints `spin <id> cpu <c> progress
//! <count>` with the iterations so far. Runs forever without ROUNDS, else exits 0 after them.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::hint::black_box;

use mk_user::{Args, println};

mk_user::entry!(main);

const DEFAULT_ROUND: u64 = 1 << 23;
/// How often the clock is read, in iterations (a system call each time).
const CLOCK_EVERY: u64 = 1 << 16;
const PROGRESS_NS: u64 = 200_000_000;

fn main(args: Args) -> Result<(), &'static str> {
    let rounds = match args.get(0) {
        None => u64::MAX,
        Some(_) => args.number(0).ok_or("spin: ROUNDS must be a number")?,
    };
    let per_round = match args.get(1) {
        None => DEFAULT_ROUND,
        Some(_) => args
            .number(1)
            .filter(|&n| n > 0)
            .ok_or("spin: ITERATIONS must be a positive number")?,
    };
    let (me, _, _) = mk_user::whoami();
    let mut count: u64 = 0;
    let mut last = mk_user::clock_ns();
    for round in 1..=rounds {
        for i in 0..per_round {
            count = black_box(count) + 1;
            if i % CLOCK_EVERY == 0 {
                let now = mk_user::clock_ns();
                if now.saturating_sub(last) >= PROGRESS_NS {
                    last = now;
                    println!("spin {} cpu {} progress {count}", me, mk_user::whoami().2);
                }
            }
        }
        println!("spin {} cpu {} round {round}", me, mk_user::whoami().2);
    }
    Ok(())
}
