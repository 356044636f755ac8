//! `init [PROGRAM...]`: the first task. Prints a banner, starts the programs named in its
//! arguments (`hello` without any), waits for each, prints their exit statuses, then sleeps
//! forever.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, TaskId, println};

mk_user::entry!(main);

/// Most programs init starts.
const MAX: usize = 16;

fn main(args: Args) {
    let (task, instance, cpu) = mk_user::whoami();
    println!("init: task {task} on instance {instance}, cpu {cpu}");
    let mut names = args.iter().peekable();
    let default = ["hello"];
    let list: &mut dyn Iterator<Item = &str> = if names.peek().is_some() {
        &mut names
    } else {
        &mut default.into_iter()
    };
    let mut started: [Option<(&str, TaskId)>; MAX] = [None; MAX];
    for (slot, name) in started.iter_mut().zip(list) {
        match mk_user::spawn(name, name, None) {
            Ok(task) => {
                println!("init: started {name} as task {task}");
                *slot = Some((name, task));
            }
            Err(e) => println!("init: cannot start {name}: {e}"),
        }
    }
    for (name, task) in started.iter().flatten() {
        match mk_user::wait(*task) {
            Ok(status) => println!("init: {name} (task {task}) exited with status {status}"),
            Err(e) => println!("init: waiting for {name} (task {task}): {e}"),
        }
    }
    println!("init: all done; sleeping");
    loop {
        mk_user::sleep_ms(1000);
    }
}
