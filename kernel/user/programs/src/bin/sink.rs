//! `sink NAME`: registers an endpoint as NAME (retrying for up to 5 s while the name is taken),
//! prints `sink NAME ready`, then receives calls for ever and never replies: its callers time
//! out, or see its instance stop. (A new `recv` discards nothing: the previous call just stays
//! unanswered.) Exits 1 only if a system call of its own fails.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::ipc::{self, IpcMsg, names};
use mk_user::{Args, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(name) = args.get(0) else {
        println!("sink: usage: sink NAME");
        return 1;
    };
    let ep = match ipc::endpoint() {
        Ok(ep) => ep,
        Err(e) => {
            println!("sink {name} fail endpoint: {e}");
            return 1;
        }
    };
    if let Err(e) = names::register_patiently(name, ep, 5_000) {
        println!("sink {name} fail register: {e}");
        return 1;
    }
    println!("sink {name} ready");
    let mut msg = IpcMsg::empty();
    let mut received = 0u64;
    loop {
        match ipc::recv(ep, &mut msg) {
            Ok(_) => {
                received += 1;
                ipc::drop_received_caps(&mut msg);
            }
            Err(e) => {
                println!("sink {name} fail recv after {received}: {e}");
                return 1;
            }
        }
    }
}
