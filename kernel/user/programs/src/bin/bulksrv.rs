//! `bulksrv NAME`: a server of pages granted in calls. Registers NAME; for each call whose
//! first capability is a page run, maps the pages (`Mapping::from_pages`), checksums them
//! (FNV-1a of every byte), adds 1 to every byte, grants the pages back moved in the reply,
//! whose label is the checksum's low 32 bits. A call with `QUIT_LABEL` ends it (status 0).
//! Failures: `bulksrv NAME fail <what>: <error>`, status 1.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::{QUIT_LABEL, fnv1a};
use mk_user::ipc::{self, IpcMsg, Received, names};
use mk_user::{Args, Error, Mapping, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(name) = args.get(0) else {
        println!("bulksrv: usage: bulksrv NAME");
        return 1;
    };
    match serve(name) {
        Ok(()) => 0,
        Err((what, e)) => {
            println!("bulksrv {name} fail {what}: {e} (code {})", e.code());
            1
        }
    }
}

fn serve(name: &str) -> Result<(), (&'static str, Error)> {
    let ep = ipc::endpoint().map_err(|e| ("endpoint", e))?;
    names::register_patiently(name, ep, 5_000).map_err(|e| ("register", e))?;
    println!("bulksrv {name} ready");
    let mut msg = IpcMsg::empty();
    loop {
        let kind = ipc::recv(ep, &mut msg).map_err(|e| ("recv", e))?;
        if kind != Received::Call {
            ipc::drop_received_caps(&mut msg);
            continue;
        }
        if msg.label == u64::from(QUIT_LABEL) {
            ipc::drop_received_caps(&mut msg);
            ipc::reply(&IpcMsg::new(0, &[])).map_err(|e| ("reply", e))?;
            return Ok(());
        }
        let h = mk_user::abi::ipc::Handle(msg.caps[0]);
        let mut pages = Mapping::from_pages(h).map_err(|e| ("map the pages", e))?;
        let sum = fnv1a(pages.as_slice());
        for b in pages.as_mut_slice() {
            *b = b.wrapping_add(1);
        }
        let back = pages.grant().map_err(|e| ("grant back", e))?;
        let mut answer = IpcMsg::new(sum as u32, &[]);
        answer.caps[0] = back.0;
        answer.cap_move = 1;
        ipc::reply(&answer).map_err(|e| ("reply", e))?;
    }
}
