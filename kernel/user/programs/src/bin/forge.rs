//! `forge SEED N`: capability forgery checks; exits 0 only if every forged use was refused.
//!
//! 1. N forged raw handles (xorshift from SEED, plus 0, 1, `u64::MAX`, handles with bits above
//!    48, and `Handle::new(slot, gen)` for small slots and random generations), none of them
//!    the one capability the task holds at that point (the name service, slot 0 generation 1),
//!    each used with send, call (10 ms), recv, cap_copy, cap_drop, signal, irq_bind, irq_ack,
//!    mmio_map and cap_info: every result must be `NoSuchCap`, `NoRight` or `BadArgument`.
//! 2. Rights: an endpoint E and a `SEND`-only copy S: `recv(S)` is `NoRight` (a message is
//!    queued first, so a wrong success cannot block), a copy of S asking for more rights has no
//!    more than `SEND`, `signal(E)` is `NoRight`, a notification cannot send, call or copy
//!    rights it lacks.
//! 3. Dropped handles: E2 a copy of E, dropped: send, recv, cap_info, cap_drop on E2 are
//!    `NoSuchCap`, also after a new copy reuses its slot.
//!
//! Prints `forge ok refused=<count>` (exit 0) or `forge fail <what>` (exit 1).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::XorShift;
use mk_user::ipc::{self, CapKind, Handle, IpcMsg, NAME_SERVICE, Received, Rights};
use mk_user::{Args, Error, println};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (Some(seed), Some(n)) = (args.number(0), args.number(1)) else {
        println!("forge: usage: forge SEED N");
        return 1;
    };
    let mut refused = 0u64;
    let result = forged(seed, n, &mut refused)
        .and_then(|()| rights(&mut refused))
        .and_then(|()| dropped(&mut refused));
    match result {
        Ok(()) => {
            println!("forge ok refused={refused}");
            0
        }
        Err(Failure(what, h, got)) => {
            println!("forge fail {what} with handle {:#x} ({}): {got}", h.0, h);
            1
        }
    }
}

/// What failed, with which handle, and what came back.
struct Failure(&'static str, Handle, Outcome);

enum Outcome {
    Ok(u64),
    Err(Error),
    Text(&'static str),
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ok(v) => write!(f, "succeeded ({v:#x})"),
            Self::Err(e) => write!(f, "{e} (code {})", e.code()),
            Self::Text(t) => f.write_str(t),
        }
    }
}

fn outcome<T: Into<u64>>(r: Result<T, Error>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v.into()),
        Err(e) => Outcome::Err(e),
    }
}

/// A use of a forged handle: refused with one of the three errors, or a failure.
fn expect_refused<T: Into<u64>>(
    what: &'static str,
    h: Handle,
    r: Result<T, Error>,
    refused: &mut u64,
) -> Result<(), Failure> {
    match r {
        Err(Error::NoSuchCap | Error::NoRight | Error::BadArgument) => {
            *refused += 1;
            Ok(())
        }
        other => Err(Failure(what, h, outcome(other))),
    }
}

/// A use that must fail with exactly `want`.
fn expect<T: Into<u64>>(
    what: &'static str,
    h: Handle,
    r: Result<T, Error>,
    want: Error,
    refused: &mut u64,
) -> Result<(), Failure> {
    match r {
        Err(e) if e == want => {
            *refused += 1;
            Ok(())
        }
        other => Err(Failure(what, h, outcome(other))),
    }
}

fn ok<T>(what: &'static str, h: Handle, r: Result<T, Error>) -> Result<T, Failure> {
    r.map_err(|e| Failure(what, h, Outcome::Err(e)))
}

fn handle_value(h: Handle) -> u64 {
    h.0
}

fn unit(_: ()) -> u64 {
    0
}

fn received(r: Received) -> u64 {
    r as u64
}

/// The `n`-th forged handle.
fn forge(rng: &mut XorShift, i: u64) -> Handle {
    const FIXED: [u64; 8] = [
        0,
        1,
        u64::MAX,
        1 << 48,
        (1 << 48) | (1 << 16), // the name service's handle plus a bit above 48
        (1 << 63) | (1 << 16),
        u64::MAX << 16, // slot 0, every generation bit and more
        0xFFFF,
    ];
    if (i as usize) < FIXED.len() {
        return Handle(FIXED[i as usize]);
    }
    match rng.below(4) {
        0 => Handle(rng.next_u64()),
        1 => Handle(rng.next_u64() | (1 << (48 + rng.below(16)))),
        2 => Handle::new(rng.below(8) as u16, rng.below(4) as u32),
        _ => Handle::new(rng.below(80) as u16, rng.next_u64() as u32),
    }
}

/// Whether `h` could name the name service: its low 48 bits are its handle (a kernel that
/// ignored the bits above 48 would take it for it).
fn maybe_own(h: Handle) -> bool {
    h.0 & 0xFFFF_FFFF_FFFF == NAME_SERVICE.0
}

fn forged(seed: u64, n: u64, refused: &mut u64) -> Result<(), Failure> {
    let mut rng = XorShift::new(seed);
    let mut i = 0;
    let mut done = 0;
    while done < n {
        let h = forge(&mut rng, i);
        i += 1;
        if h == NAME_SERVICE {
            continue;
        }
        done += 1;
        let mut msg = IpcMsg::new(rng.below(1 << 16) as u32, b"forged");
        expect_refused("send", h, ipc::send(h, &msg).map(unit), refused)?;
        expect_refused("call", h, ipc::call(h, &mut msg, 10), refused)?;
        if !maybe_own(h) {
            // Certainly not a handle of this task's: a recv that wrongly succeeded could not
            // find an endpoint to block on.
            expect_refused("recv", h, ipc::recv(h, &mut msg).map(received), refused)?;
        }
        expect_refused(
            "cap_copy",
            h,
            ipc::cap_copy(h, Rights::all(), 0).map(handle_value),
            refused,
        )?;
        if !maybe_own(h) {
            expect_refused("cap_drop", h, ipc::cap_drop(h).map(unit), refused)?;
        }
        expect_refused("signal", h, ipc::signal(h, 1).map(unit), refused)?;
        expect_refused("irq_bind", h, ipc::irq_bind(h, h, 0).map(unit), refused)?;
        expect_refused("irq_ack", h, ipc::irq_ack(h).map(unit), refused)?;
        expect_refused("mmio_map", h, ipc::mmio_map(h).map(|p| p as u64), refused)?;
        if !maybe_own(h) {
            expect_refused("cap_info", h, ipc::cap_info(h).map(|_| 0u64), refused)?;
        }
    }
    Ok(())
}

fn rights(refused: &mut u64) -> Result<(), Failure> {
    let e = ok("endpoint", Handle(0), ipc::endpoint())?;
    let info = ok("cap_info(E)", e, ipc::cap_info(e))?;
    if info.kind != Some(CapKind::Endpoint) || info.rights != Rights::all() {
        return Err(Failure(
            "endpoint's kind and rights",
            e,
            Outcome::Ok(info.kind_raw.into()),
        ));
    }
    let s = ok("cap_copy(E, SEND)", e, ipc::cap_copy(e, Rights::SEND, 0))?;
    let s_info = ok("cap_info(S)", s, ipc::cap_info(s))?;
    if s_info.rights != Rights::SEND || s_info.object != info.object {
        return Err(Failure(
            "SEND copy's rights or object",
            s,
            Outcome::Ok(s_info.rights.bits().into()),
        ));
    }
    // Something queued on E: a recv through S that wrongly succeeded returns at once.
    let mut msg = IpcMsg::new(9, b"queued");
    ok("send(S)", s, ipc::send(s, &msg))?;
    expect(
        "recv on a SEND-only copy",
        s,
        ipc::recv(s, &mut msg).map(received),
        Error::NoRight,
        refused,
    )?;
    expect(
        "reply_recv on a SEND-only copy",
        s,
        ipc::reply_recv(s, &mut msg).map(received),
        Error::NoRight,
        refused,
    )
    .or_else(|f| match f.2 {
        // reply_recv may report that there was nothing to reply first.
        Outcome::Err(Error::NothingToReply) => Ok(()),
        _ => Err(f),
    })?;
    // The queued message is still there, for E.
    let mut got = IpcMsg::empty();
    match ipc::recv(e, &mut got) {
        Ok(Received::Message) if got.label == 9 && got.bytes() == b"queued" => {}
        Ok(_) => {
            return Err(Failure(
                "recv(E) of the queued message",
                e,
                Outcome::Text("another message"),
            ));
        }
        Err(err) => {
            return Err(Failure(
                "recv(E) of the queued message",
                e,
                Outcome::Err(err),
            ));
        }
    }
    // Asking a copy for more rights than the original has gives no more.
    let s2 = ok("cap_copy(S, all)", s, ipc::cap_copy(s, Rights::all(), 0))?;
    let s2_info = ok("cap_info(S2)", s2, ipc::cap_info(s2))?;
    if s2_info.rights != Rights::SEND {
        return Err(Failure(
            "copy of a SEND-only copy gained rights",
            s2,
            Outcome::Ok(s2_info.rights.bits().into()),
        ));
    }
    expect(
        "recv on the copy of a SEND-only copy",
        s2,
        ipc::recv(s2, &mut msg).map(received),
        Error::NoRight,
        refused,
    )?;
    expect(
        "signal on an endpoint",
        e,
        ipc::signal(e, 1).map(unit),
        Error::NoRight,
        refused,
    )?;
    expect(
        "signal on a SEND-only endpoint copy",
        s,
        ipc::signal(s, 1).map(unit),
        Error::NoRight,
        refused,
    )?;
    // A notification: signal only.
    let n = ok("notification(E)", e, ipc::notification(e))?;
    let n_info = ok("cap_info(N)", n, ipc::cap_info(n))?;
    if n_info.kind != Some(CapKind::Notification) {
        return Err(Failure(
            "notification's kind",
            n,
            Outcome::Ok(n_info.kind_raw.into()),
        ));
    }
    let mut m = IpcMsg::new(1, &[]);
    expect(
        "send on a notification",
        n,
        ipc::send(n, &m).map(unit),
        Error::NoRight,
        refused,
    )?;
    expect(
        "call on a notification",
        n,
        ipc::call(n, &mut m, 10),
        Error::NoRight,
        refused,
    )?;
    expect(
        "notification of a notification",
        n,
        ipc::notification(n).map(handle_value),
        Error::NoRight,
        refused,
    )?;
    expect(
        "notification of a SEND-only copy",
        s,
        ipc::notification(s).map(handle_value),
        Error::NoRight,
        refused,
    )?;
    expect(
        "irq_ack on an endpoint",
        e,
        ipc::irq_ack(e).map(unit),
        Error::NoRight,
        refused,
    )?;
    expect(
        "mmio_map on an endpoint",
        e,
        ipc::mmio_map(e).map(|p| p as u64),
        Error::NoRight,
        refused,
    )?;
    // The signal arrives at E (and so recv on E returns at once).
    ok("signal(N)", n, ipc::signal(n, 0b101))?;
    match ipc::recv(e, &mut got) {
        Ok(Received::Notification) if got.badge & 0b101 == 0b101 => {}
        Ok(_) => {
            return Err(Failure(
                "recv(E) of the notification",
                e,
                Outcome::Text("something else"),
            ));
        }
        Err(err) => return Err(Failure("recv(E) of the notification", e, Outcome::Err(err))),
    }
    for h in [s2, s, n] {
        ok("cap_drop", h, ipc::cap_drop(h))?;
    }
    ok("cap_drop(E)", e, ipc::cap_drop(e))
}

fn dropped(refused: &mut u64) -> Result<(), Failure> {
    let e = ok("endpoint", Handle(0), ipc::endpoint())?;
    let e2 = ok("cap_copy(E)", e, ipc::cap_copy(e, Rights::all(), 0))?;
    ok("cap_drop(E2)", e2, ipc::cap_drop(e2))?;
    // Something queued on E: a recv through E2 that wrongly succeeded returns at once.
    let mut msg = IpcMsg::new(3, &[]);
    ok("send(E)", e, ipc::send(e, &msg))?;
    check_gone(e2, &mut msg, refused)?;
    // A new copy may take E2's slot: E2 still names nothing.
    let e3 = ok("cap_copy(E) again", e, ipc::cap_copy(e, Rights::SEND, 0))?;
    if e3 == e2 {
        return Err(Failure(
            "a new copy got the dropped handle back",
            e3,
            Outcome::Text("same handle"),
        ));
    }
    check_gone(e2, &mut msg, refused)?;
    // E's queued message is still there.
    match ipc::recv(e, &mut msg) {
        Ok(Received::Message) if msg.label == 3 => {}
        Ok(_) => {
            return Err(Failure(
                "recv(E) of the queued message",
                e,
                Outcome::Text("another message"),
            ));
        }
        Err(err) => {
            return Err(Failure(
                "recv(E) of the queued message",
                e,
                Outcome::Err(err),
            ));
        }
    }
    ok("cap_drop(E3)", e3, ipc::cap_drop(e3))?;
    ok("cap_drop(E)", e, ipc::cap_drop(e))?;
    expect(
        "send on a dropped endpoint",
        e,
        ipc::send(e, &msg).map(unit),
        Error::NoSuchCap,
        refused,
    )
}

fn check_gone(h: Handle, msg: &mut IpcMsg, refused: &mut u64) -> Result<(), Failure> {
    expect(
        "send on a dropped handle",
        h,
        ipc::send(h, msg).map(unit),
        Error::NoSuchCap,
        refused,
    )?;
    expect(
        "call on a dropped handle",
        h,
        ipc::call(h, msg, 10),
        Error::NoSuchCap,
        refused,
    )?;
    expect(
        "recv on a dropped handle",
        h,
        ipc::recv(h, msg).map(received),
        Error::NoSuchCap,
        refused,
    )?;
    expect(
        "cap_info on a dropped handle",
        h,
        ipc::cap_info(h).map(|_| 0u64),
        Error::NoSuchCap,
        refused,
    )?;
    expect(
        "cap_copy on a dropped handle",
        h,
        ipc::cap_copy(h, Rights::SEND, 0).map(handle_value),
        Error::NoSuchCap,
        refused,
    )?;
    expect(
        "cap_drop on a dropped handle",
        h,
        ipc::cap_drop(h).map(unit),
        Error::NoSuchCap,
        refused,
    )
}
