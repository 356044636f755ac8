//! `hello [INSTANCE]`: says who and where it is, and exits 0; with INSTANCE, exits 1 if it
//! runs in another instance (the kernel's `whoami` is checked against the caller's word).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (task, instance, cpu) = mk_user::whoami();
    println!("hello from task {task} on instance {instance}, cpu {cpu}");
    match args.number(0) {
        Some(expected) if expected != u64::from(instance) => {
            println!("hello: expected instance {expected}");
            1
        }
        _ => 0,
    }
}
