//! `echo NAME`: an IPC echo server. Creates an endpoint, registers it as NAME (retrying for up
//! to 5 s while the name is taken: a stale registration may linger), prints `echo NAME ready`,
//! then answers every call with label + 1 and the same data (no capabilities; capabilities it
//! receives are dropped). One-way messages and notifications are ignored. A call with label
//! `QUIT_LABEL` (0xFFFF0000) is answered with label 0, and echo exits 0. Any failure of its own
//! system calls: `echo NAME fail <what>: <error>`, exit 1.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::QUIT_LABEL;
use mk_user::ipc::{self, IpcMsg, Received, names};
use mk_user::{Args, Error, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(name) = args.get(0) else {
        println!("echo: usage: echo NAME");
        return 1;
    };
    match serve(name) {
        Ok(()) => 0,
        Err((what, e)) => {
            println!("echo {name} fail {what}: {e} (code {})", e.code());
            1
        }
    }
}

fn serve(name: &str) -> Result<(), (&'static str, Error)> {
    let ep = ipc::endpoint().map_err(|e| ("endpoint", e))?;
    names::register_patiently(name, ep, 5_000).map_err(|e| ("register", e))?;
    println!("echo {name} ready");
    let mut msg = IpcMsg::empty();
    let mut kind = ipc::recv(ep, &mut msg).map_err(|e| ("recv", e))?;
    loop {
        ipc::drop_received_caps(&mut msg);
        if kind != Received::Call {
            kind = ipc::recv(ep, &mut msg).map_err(|e| ("recv", e))?;
            continue;
        }
        let quit = msg.label == u64::from(QUIT_LABEL);
        // The same data (`len` and `data` stay), no capabilities.
        msg.label = if quit { 0 } else { msg.label.wrapping_add(1) };
        msg.cap_move = 0;
        msg.badge = 0;
        if quit {
            ipc::reply(&msg).map_err(|e| ("reply", e))?;
            println!("echo {name} quit");
            return Ok(());
        }
        kind = ipc::reply_recv(ep, &mut msg).map_err(|e| ("reply_recv", e))?;
    }
}
