//! `bulk NAME KIB ROUNDS [quit]`: pages granted both ways. Each round maps KIB KiB, fills them,
//! grants them (they leave this task: unmapping the old range must now fail) in a call to
//! `bulksrv` NAME, checks the reply's label against the pages' checksum and maps the pages it
//! grants back: every byte must be the one sent plus 1. Prints `bulk NAME ok rounds=R kib=K`
//! (status 0) or `bulk NAME fail round R: <what>` (status 1).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::{QUIT_LABEL, fnv1a};
use mk_user::ipc::{self, IpcMsg, names};
use mk_user::{Args, Mapping, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (Some(name), Some(kib), Some(rounds)) = (args.get(0), args.number(1), args.number(2))
    else {
        println!("bulk: usage: bulk NAME KIB ROUNDS [quit]");
        return 1;
    };
    let quit = args.get(3) == Some("quit");
    let server = match names::lookup_patiently(name, 10_000) {
        Ok(h) => h,
        Err(e) => {
            println!("bulk {name} fail lookup: {e}");
            return 1;
        }
    };
    let len = (kib * 1024) as usize;
    let mut status = 0;
    for r in 0..rounds {
        if let Err(what) = round(server, len, r) {
            println!("bulk {name} fail round {r}: {what}");
            status = 1;
            break;
        }
    }
    if quit {
        let mut m = IpcMsg::new(QUIT_LABEL, &[]);
        let _ = ipc::call(server, &mut m, 2_000);
    }
    if status == 0 {
        println!("bulk {name} ok rounds={rounds} kib={kib}");
    }
    status
}

fn round(server: mk_user::abi::ipc::Handle, len: usize, r: u64) -> Result<(), &'static str> {
    let mut pages = Mapping::new(len).map_err(|_| "map")?;
    for (k, b) in pages.as_mut_slice().iter_mut().enumerate() {
        *b = (k as u64 * 13 + r) as u8;
    }
    let sum = fnv1a(pages.as_slice());
    let ptr = pages.as_mut_slice().as_mut_ptr();
    let h = pages.grant().map_err(|_| "grant")?;
    if mk_user::unmap(ptr, len).is_ok() {
        return Err("the granted pages were still mapped here");
    }
    let mut msg = IpcMsg::new(1, &[]);
    msg.caps[0] = h.0;
    msg.cap_move = 1;
    let label = ipc::call(server, &mut msg, 10_000).map_err(|e| e.as_str())?;
    if label != sum as u32 {
        return Err("the server's checksum differs");
    }
    let back = Mapping::from_pages(mk_user::abi::ipc::Handle(msg.caps[0]))
        .map_err(|_| "map the pages granted back")?;
    let ok = back
        .as_slice()
        .iter()
        .take(len)
        .enumerate()
        .all(|(k, &b)| b == ((k as u64 * 13 + r) as u8).wrapping_add(1));
    if !ok {
        return Err("the pages granted back are not the ones sent plus 1");
    }
    Ok(())
}
