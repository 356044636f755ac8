//! `hello`: says who and where it is, and exits 0.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, println};

mk_user::entry!(main);

fn main(_args: Args) {
    let (task, instance, cpu) = mk_user::whoami();
    println!("hello from task {task} on instance {instance}, cpu {cpu}");
}
