//! `spawner PROGRAM N`: starts PROGRAM N times, one after the other, waiting for each; prints
//! `spawner done <n> ok=<k>` where k counts the runs that exited with status 0.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (Some(program), Some(n)) = (args.get(0), args.number(1)) else {
        println!("spawner: usage: spawner PROGRAM N");
        return 1;
    };
    let mut ok = 0u64;
    let mut failed_to_start = 0u64;
    for _ in 0..n {
        match mk_user::spawn(program, program, None) {
            Ok(task) => match mk_user::wait(task) {
                Ok(0) => ok += 1,
                Ok(_) => {}
                Err(e) => println!("spawner: wait for task {task}: {e}"),
            },
            Err(e) => {
                failed_to_start += 1;
                if failed_to_start <= 3 {
                    println!("spawner: cannot start {program}: {e}");
                }
            }
        }
    }
    println!("spawner done {n} ok={ok}");
    0
}
