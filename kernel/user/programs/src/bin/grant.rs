//! `grant NAME`: the server side of the capability-transfer test (`grantee` is the client).
//! Creates endpoints E (registered as NAME, retrying up to 5 s while taken) and F, prints
//! `grant NAME ready`, then serves calls on E, one at a time:
//!
//! - `COPY_F` (1): replies label 0 with `caps[0]` a copy of F with `SEND | GRANT` (no `RECV`;
//!   `GRANT` because a capability needs it to travel in a message) and badge 77, moved out of
//!   grant's table; then takes one call on F (`recv(F)`), checks its badge is 77, and replies
//!   `F_REPLY` (42) (or `REFUSED` if the badge is wrong);
//! - `MOVE_F` (2): replies label 0 with `caps[0]` F itself, moved; then grant's handle to F
//!   must be gone (`cap_info` is `NoSuchCap`): prints `grant moved ok` or
//!   `grant fail moved F: <what>`;
//! - `QUIT` (3): replies label 0 and exits: 0 if every check passed (`grant NAME ok`), else 1;
//! - anything else: replies `REFUSED`.
//!
//! Exits 1 at once if one of its own system calls fails (`grant NAME fail <what>: <error>`).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::grant::{BADGE, COPY_F, F_REPLY, MOVE_F, QUIT, REFUSED};
use mk_user::ipc::{self, Handle, IpcMsg, Received, Rights, names};
use mk_user::{Args, Error, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(name) = args.get(0) else {
        println!("grant: usage: grant NAME");
        return 1;
    };
    match serve(name) {
        Ok(true) => {
            println!("grant {name} ok");
            0
        }
        Ok(false) => {
            println!("grant {name} fail (see above)");
            1
        }
        Err((what, e)) => {
            println!("grant {name} fail {what}: {e} (code {})", e.code());
            1
        }
    }
}

/// A reply with `label`, no data, and `cap` (moved) if any.
fn answer(label: u32, cap: Option<Handle>) -> IpcMsg {
    let mut m = IpcMsg::new(label, &[]);
    if let Some(h) = cap {
        m.caps[0] = h.0;
        m.cap_move = 1;
    }
    m
}

/// Serves until `QUIT`; `Ok(all checks passed)`.
fn serve(name: &str) -> Result<bool, (&'static str, Error)> {
    let e = ipc::endpoint().map_err(|err| ("endpoint E", err))?;
    let f = ipc::endpoint().map_err(|err| ("endpoint F", err))?;
    let mut f_here = true;
    let mut passed = true;
    names::register_patiently(name, e, 5_000).map_err(|err| ("register", err))?;
    println!("grant {name} ready");
    let mut msg = IpcMsg::empty();
    loop {
        let kind = ipc::recv(e, &mut msg).map_err(|err| ("recv(E)", err))?;
        ipc::drop_received_caps(&mut msg);
        if kind != Received::Call {
            continue;
        }
        match msg.label as u32 {
            COPY_F if f_here => {
                let copy = ipc::cap_copy(f, Rights::SEND | Rights::GRANT, BADGE)
                    .map_err(|err| ("cap_copy(F)", err))?;
                ipc::reply(&answer(0, Some(copy))).map_err(|err| ("reply with F's copy", err))?;
                let kind = ipc::recv(f, &mut msg).map_err(|err| ("recv(F)", err))?;
                ipc::drop_received_caps(&mut msg);
                if kind != Received::Call {
                    println!(
                        "grant fail on F: a message of kind {} instead of a call",
                        kind as u64
                    );
                    passed = false;
                    continue;
                }
                let label = if msg.badge == BADGE {
                    F_REPLY
                } else {
                    println!("grant fail on F: badge {} instead of {BADGE}", msg.badge);
                    passed = false;
                    REFUSED
                };
                ipc::reply(&answer(label, None)).map_err(|err| ("reply on F", err))?;
            }
            MOVE_F if f_here => {
                ipc::reply(&answer(0, Some(f))).map_err(|err| ("reply with F", err))?;
                f_here = false;
                match ipc::cap_info(f) {
                    Err(Error::NoSuchCap) => println!("grant moved ok"),
                    Err(err) => {
                        println!("grant fail moved F: cap_info is {err}, not NoSuchCap");
                        passed = false;
                    }
                    Ok(_) => {
                        println!("grant fail moved F: still in grant's table");
                        passed = false;
                    }
                }
            }
            QUIT => {
                ipc::reply(&answer(0, None)).map_err(|err| ("reply to quit", err))?;
                return Ok(passed);
            }
            _ => ipc::reply(&answer(REFUSED, None)).map_err(|err| ("reply", err))?,
        }
    }
}
