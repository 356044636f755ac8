//! `caller NAME TIMEOUT_MS`: looks NAME up (for up to 10 s), prints `caller waiting`, makes
//! one call (label 1, no data) with TIMEOUT_MS (0: the default, 5 s), and prints
//! `caller result <ok or the error's text>` then `caller result code=<n>` (0 for success, else
//! the error's code); the exit status is that code. A failed lookup prints
//! `caller lookup <NAME> failed: <error> code=<n>` and exits 200.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::ipc::{self, IpcMsg, names};
use mk_user::{Args, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (Some(name), Some(timeout)) = (args.get(0), args.number(1)) else {
        println!("caller: usage: caller NAME TIMEOUT_MS");
        return 1;
    };
    let h = match names::lookup_patiently(name, 10_000) {
        Ok(h) => h,
        Err(e) => {
            println!("caller lookup {name} failed: {e} code={}", e.code());
            return 200;
        }
    };
    println!("caller waiting");
    let mut msg = IpcMsg::new(1, &[]);
    let code = match ipc::call(h, &mut msg, timeout) {
        Ok(_) => {
            println!("caller result ok");
            0
        }
        Err(e) => {
            println!("caller result {}", e.as_str());
            e.code()
        }
    };
    println!("caller result code={code}");
    code
}
