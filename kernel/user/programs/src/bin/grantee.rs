//! `grantee NAME`: the client side of the capability-transfer test (`grant NAME` serves).
//! Looks NAME up (up to 10 s) as E, then:
//!
//! 1. `copy`: call E `COPY_F` → `caps[0]` = G, an endpoint capability with `SEND`, without
//!    `RECV` (`GRANT` allowed: a capability needs it to travel);
//! 2. `call G`: call G (label 5) → reply label 42 (grant checked the badge, 77);
//! 3. `widen`: `cap_copy(G, SEND | RECV | GRANT)` has no more rights than G (no `RECV`);
//! 4. `recv G`: `recv(G)` and `recv` on that copy are `NoRight` (a message is sent to G first,
//!    so a wrong success returns at once);
//! 5. `move`: call E `MOVE_F` → `caps[0]` = F itself, moved: an endpoint with `RECV`, the same
//!    object as G; then dropped;
//! 6. `quit`: call E `QUIT` (grant exits; the reply may or may not arrive: ignored), sleep
//!    200 ms;
//! 7. `stale`: call G → must be `Stale` (the endpoint's owner exited; `NoSuchCap` is wrong: G
//!    is still in this task's table).
//!
//! Prints `grantee ok` (exit 0) or `grantee fail <step>: <what>` (exit 1).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::grant::{COPY_F, F_REPLY, MOVE_F, QUIT};
use mk_user::abi::ipc::NO_CAP;
use mk_user::ipc::{self, CapInfo, CapKind, Handle, IpcMsg, Rights, names};
use mk_user::{Args, Error, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let Some(name) = args.get(0) else {
        println!("grantee: usage: grantee NAME");
        return 1;
    };
    match run(name) {
        Ok(()) => {
            println!("grantee ok");
            0
        }
        Err(Fail(step, what)) => {
            println!("grantee fail {step}: {what}");
            1
        }
    }
}

enum What {
    Err(Error),
    Text(&'static str),
    Rights(Rights),
    Label(u32),
}

impl core::fmt::Display for What {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Err(e) => write!(f, "{e} (code {})", e.code()),
            Self::Text(t) => f.write_str(t),
            Self::Rights(r) => write!(f, "rights {:#x}", r.bits()),
            Self::Label(l) => write!(f, "reply label {l:#x}"),
        }
    }
}

struct Fail(&'static str, What);

fn step<T>(name: &'static str, r: Result<T, Error>) -> Result<T, Fail> {
    r.map_err(|e| Fail(name, What::Err(e)))
}

/// Calls `h` with `label`; returns the reply's label and its `caps[0]`.
fn call(h: Handle, label: u32, timeout_ms: u64) -> Result<(u32, Option<Handle>), Error> {
    let mut msg = IpcMsg::new(label, &[]);
    let got = ipc::call(h, &mut msg, timeout_ms)?;
    let cap = (msg.caps[0] != NO_CAP).then_some(Handle(msg.caps[0]));
    if msg.caps[1] != NO_CAP {
        let _ = ipc::cap_drop(Handle(msg.caps[1]));
    }
    Ok((got, cap))
}

/// An endpoint capability that can send and cannot receive.
fn send_only(name: &'static str, info: CapInfo) -> Result<(), Fail> {
    if info.kind != Some(CapKind::Endpoint) {
        return Err(Fail(name, What::Text("not an endpoint capability")));
    }
    if !info.rights.contains(Rights::SEND) || info.rights.contains(Rights::RECV) {
        return Err(Fail(name, What::Rights(info.rights)));
    }
    Ok(())
}

fn run(name: &str) -> Result<(), Fail> {
    let e = step("lookup", names::lookup_patiently(name, 10_000))?;
    // 1.
    let (label, g) = step("copy", call(e, COPY_F, 0))?;
    if label != 0 {
        return Err(Fail("copy", What::Label(label)));
    }
    let g = g.ok_or(Fail("copy", What::Text("no capability in the reply")))?;
    let g_info = step("copy: cap_info(G)", ipc::cap_info(g))?;
    send_only("copy: G", g_info)?;
    // 2.
    let (label, _) = step("call G", call(g, 5, 0))?;
    if label != F_REPLY {
        return Err(Fail("call G", What::Label(label)));
    }
    // 3.
    let g2 = step("widen", ipc::cap_copy(g, Rights::all(), 0))?;
    let g2_info = step("widen: cap_info", ipc::cap_info(g2))?;
    send_only("widen", g2_info)?;
    if g2_info.rights.bits() & !g_info.rights.bits() != 0 || g2_info.object != g_info.object {
        return Err(Fail("widen", What::Rights(g2_info.rights)));
    }
    // 4.
    let mut msg = IpcMsg::new(6, b"to F");
    step("recv G: send first", ipc::send(g, &msg))?;
    for h in [g, g2] {
        match ipc::recv(h, &mut msg) {
            Err(Error::NoRight) => {}
            Err(err) => return Err(Fail("recv G", What::Err(err))),
            Ok(_) => return Err(Fail("recv G", What::Text("received without RECV"))),
        }
    }
    step("drop the copy", ipc::cap_drop(g2))?;
    // 5.
    let (label, f) = step("move", call(e, MOVE_F, 0))?;
    if label != 0 {
        return Err(Fail("move", What::Label(label)));
    }
    let f = f.ok_or(Fail("move", What::Text("no capability in the reply")))?;
    let f_info = step("move: cap_info(F)", ipc::cap_info(f))?;
    if f_info.kind != Some(CapKind::Endpoint) || !f_info.rights.contains(Rights::RECV) {
        return Err(Fail("move", What::Rights(f_info.rights)));
    }
    if f_info.object != g_info.object {
        return Err(Fail("move", What::Text("F is not the object G names")));
    }
    step("move: drop F", ipc::cap_drop(f))?;
    // 6.
    let _ = call(e, QUIT, 1_000);
    mk_user::sleep_ms(200);
    // 7.
    match call(g, 5, 1_000) {
        Err(Error::Stale) => Ok(()),
        Err(err) => Err(Fail("stale", What::Err(err))),
        Ok(_) => Err(Fail(
            "stale",
            What::Text("the call succeeded after grant exited"),
        )),
    }
}
