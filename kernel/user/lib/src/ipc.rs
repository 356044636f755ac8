//! Capability IPC: endpoints, messages, capabilities, notifications, interrupts and device
//! memory, and the name service ([`names`]). Safe wrappers over the system calls 11 to 24 (see
//! `mk_abi::Sys` and `mk_abi::ipc`): each returns what the kernel returned, decoded.
//!
//! The message calls (`call`, `recv`, `reply_recv`) take a `&mut IpcMsg` that the kernel
//! overwrites with what arrives: read it after the call.

pub use mk_abi::ipc::{CapKind, Handle, IpcMsg, NAME_SERVICE, Received, Rights};
use mk_abi::ipc::{MAX_INLINE, NO_CAP};

use crate::sys::{raw_syscall, syscall_msg};
use crate::{Error, Sys};

fn sys(n: Sys, a0: u64, a1: u64, a2: u64) -> Result<u64, Error> {
    mk_abi::decode(raw_syscall(n as u64, a0, a1, a2, 0, 0, 0).0)
}

fn sys_msg(n: Sys, a0: u64, msg: &mut IpcMsg, a2: u64) -> Result<u64, Error> {
    mk_abi::decode(syscall_msg(n as u64, a0, msg, a2, 0).0)
}

fn received(v: u64) -> Result<Received, Error> {
    // A kind this version does not know: the kernel broke the contract; say so as an error
    // rather than guess.
    Received::from_raw(v).ok_or(Error::BadArgument)
}

/// Creates an endpoint owned by the caller (destroyed when it exits); the handle has
/// `SEND | RECV | GRANT`.
pub fn endpoint() -> Result<Handle, Error> {
    sys(Sys::Endpoint, 0, 0, 0).map(Handle)
}

/// Sends `msg` through the endpoint `h` (right `SEND`) without waiting; `Busy` when its queue
/// is full.
pub fn send(h: Handle, msg: &IpcMsg) -> Result<(), Error> {
    // The kernel only reads the message; a copy keeps the `&mut` that `syscall_msg` wants
    // from touching the caller's.
    let mut copy = *msg;
    sys_msg(Sys::Send, h.0, &mut copy, 0).map(|_| ())
}

/// Sends `msg` through `h` and waits up to `timeout_ms` (0: the default, 5 s) for the reply,
/// which overwrites `msg`. Returns the reply's label (32 bits: any value). A failed call
/// (the kernel's errors: stale, timed out, peer dead...) is the call's error.
pub fn call(h: Handle, msg: &mut IpcMsg, timeout_ms: u64) -> Result<u32, Error> {
    let label = sys_msg(Sys::Call, h.0, msg, timeout_ms)?;
    u32::try_from(label).map_err(|_| Error::BadArgument)
}

/// Waits for a message or notification on the endpoint `h` (right `RECV`); it overwrites
/// `msg`. Blocks with no timeout.
pub fn recv(h: Handle, msg: &mut IpcMsg) -> Result<Received, Error> {
    received(sys_msg(Sys::Recv, h.0, msg, 0)?)
}

/// Answers the last call the caller received with `msg`.
pub fn reply(msg: &IpcMsg) -> Result<(), Error> {
    let mut copy = *msg;
    // `reply(msg_ptr)` takes the message as its first argument; `syscall_msg` passes its
    // message second, so pass the (read-only) pointer by hand: `reply` writes no user memory.
    let ptr = core::ptr::from_mut(&mut copy) as u64;
    mk_abi::decode(raw_syscall(Sys::Reply as u64, ptr, 0, 0, 0, 0, 0).0).map(|_| ())
}

/// Replies with `msg`, then waits on `h` like [`recv`], overwriting `msg` (the reply goes out
/// even if the receive fails).
pub fn reply_recv(h: Handle, msg: &mut IpcMsg) -> Result<Received, Error> {
    received(sys_msg(Sys::ReplyRecv, h.0, msg, 0)?)
}

/// A new handle to the object of `h` with `rights` (within the old ones); `badge` (nonzero)
/// is set if the old capability had none.
pub fn cap_copy(h: Handle, rights: Rights, badge: u64) -> Result<Handle, Error> {
    sys(Sys::CapCopy, h.0, u64::from(rights.bits()), badge).map(Handle)
}

/// Deletes the caller's capability `h`.
pub fn cap_drop(h: Handle) -> Result<(), Error> {
    sys(Sys::CapDrop, h.0, 0, 0).map(|_| ())
}

/// Creates a notification whose bits arrive at the endpoint `ep`'s `recv` (right `RECV`);
/// the handle can `signal`.
pub fn notification(ep: Handle) -> Result<Handle, Error> {
    sys(Sys::Notification, ep.0, 0, 0).map(Handle)
}

/// ORs `bits` into the notification `h`.
pub fn signal(h: Handle, bits: u64) -> Result<(), Error> {
    sys(Sys::Signal, h.0, bits, 0).map(|_| ())
}

/// Every interrupt of the IRQ capability `irq` sets bit `bit` of `notif` and masks the line
/// until [`irq_ack`].
pub fn irq_bind(irq: Handle, notif: Handle, bit: u32) -> Result<(), Error> {
    sys(Sys::IrqBind, irq.0, notif.0, u64::from(bit)).map(|_| ())
}

/// Unmasks the line of `irq` after its interrupt was handled.
pub fn irq_ack(irq: Handle) -> Result<(), Error> {
    sys(Sys::IrqAck, irq.0, 0, 0).map(|_| ())
}

/// Maps the MMIO range of `h` (uncached, read-write); returns its address. Using it takes
/// volatile accesses (and `unsafe` outside this library).
pub fn mmio_map(h: Handle) -> Result<*mut u8, Error> {
    sys(Sys::MmioMap, h.0, 0, 0).map(|a| a as *mut u8)
}

/// Takes this task's pages `ptr..ptr + len` (from `map`) out of it into a page run; returns
/// a capability to the run ([`crate::Mapping::grant`] is the safe way to use it).
pub fn pages(ptr: *mut u8, len: usize) -> Result<Handle, Error> {
    sys(Sys::Pages, ptr as u64, len as u64, 0).map(Handle)
}

/// Maps the page run of `h` into this task (the capability is used up); returns its address
/// ([`crate::Mapping::from_pages`] is the safe way to use it).
pub fn pages_map(h: Handle) -> Result<*mut u8, Error> {
    sys(Sys::PagesMap, h.0, 0, 0).map(|a| a as *mut u8)
}

/// What [`cap_info`] tells about a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapInfo {
    /// The kind, if this version knows it (`kind_raw` has the byte).
    pub kind: Option<CapKind>,
    pub kind_raw: u8,
    /// The rights, unknown bits kept.
    pub rights: Rights,
    /// The instance that hosts the object.
    pub instance: u32,
    /// The object's id (the same object has the same id in every handle to it).
    pub object: u64,
}

/// What the capability `h` is.
pub fn cap_info(h: Handle) -> Result<CapInfo, Error> {
    let (rax, rdx) = raw_syscall(Sys::CapInfo as u64, h.0, 0, 0, 0, 0, 0);
    let v = mk_abi::decode(rax)?;
    Ok(CapInfo {
        kind: CapKind::from_raw(v as u8),
        kind_raw: v as u8,
        rights: Rights::from_bits_retain((v >> 8) as u8),
        instance: (v >> 16) as u32,
        object: rdx,
    })
}

/// The handles a received message (or a call's reply) carries, [`NO_CAP`] left out.
pub fn received_caps(msg: &IpcMsg) -> impl Iterator<Item = Handle> + '_ {
    msg.caps
        .iter()
        .filter(|&&c| c != NO_CAP)
        .map(|&c| Handle(c))
}

/// Drops the capabilities a received message carries (a server that wants none of them).
pub fn drop_received_caps(msg: &mut IpcMsg) {
    for h in received_caps(msg) {
        let _ = cap_drop(h);
    }
    msg.caps = [NO_CAP; mk_abi::ipc::MAX_CAPS];
}

/// The name service (calls on [`NAME_SERVICE`]).
pub mod names {
    use mk_abi::ipc::names::{LOOKUP, REGISTER, UNREGISTER};
    use mk_abi::ipc::{DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS, NO_CAP};

    use super::{Handle, IpcMsg, MAX_INLINE, NAME_SERVICE, call};
    use crate::Error;

    /// Retry pause of the patient variants.
    const PAUSE_MS: u64 = 10;

    fn message(label: u32, name: &str) -> Result<IpcMsg, Error> {
        if name.len() > MAX_INLINE {
            // `IpcMsg::new` would cut it: never register or look up a different name.
            return Err(Error::BadArgument);
        }
        Ok(IpcMsg::new(label, name.as_bytes()))
    }

    /// Registers `name` for the endpoint `ep` (the service gets a copy; `ep` needs `GRANT`).
    pub fn register(name: &str, ep: Handle) -> Result<(), Error> {
        let mut msg = message(REGISTER, name)?;
        msg.caps[0] = ep.0;
        call(NAME_SERVICE, &mut msg, 0).map(|_| ())
    }

    /// [`register`], retrying while the name is taken (`Exists`: a stale registration may
    /// linger until its owner's exit is noticed) for up to `total_ms`.
    pub fn register_patiently(name: &str, ep: Handle, total_ms: u64) -> Result<(), Error> {
        let start = crate::clock_ns();
        loop {
            match register(name, ep) {
                Err(Error::Exists) if elapsed_ms(start) < total_ms => crate::sleep_ms(PAUSE_MS),
                other => return other,
            }
        }
    }

    /// Removes `name` (only its registrant may).
    pub fn unregister(name: &str) -> Result<(), Error> {
        let mut msg = message(UNREGISTER, name)?;
        call(NAME_SERVICE, &mut msg, 0).map(|_| ())
    }

    /// A `SEND | GRANT` handle to the endpoint registered as `name`; `timeout_ms` 0 is the
    /// default.
    pub fn lookup(name: &str, timeout_ms: u64) -> Result<Handle, Error> {
        let mut msg = message(LOOKUP, name)?;
        call(NAME_SERVICE, &mut msg, timeout_ms)?;
        match msg.caps[0] {
            NO_CAP => Err(Error::NoSuchCap),
            h => Ok(Handle(h)),
        }
    }

    /// [`lookup`], retrying every 10 ms what may pass (`NotFound`: not registered yet;
    /// `Stale`, `PeerDead`, `TimedOut`: the service or the registrant restarting) until
    /// `total_ms` have passed; then the last error.
    pub fn lookup_patiently(name: &str, total_ms: u64) -> Result<Handle, Error> {
        let start = crate::clock_ns();
        loop {
            let left = total_ms.saturating_sub(elapsed_ms(start));
            let timeout = left.clamp(1, DEFAULT_CALL_TIMEOUT_MS.min(MAX_CALL_TIMEOUT_MS));
            match lookup(name, timeout) {
                Err(Error::NotFound | Error::Stale | Error::PeerDead | Error::TimedOut)
                    if elapsed_ms(start) < total_ms =>
                {
                    crate::sleep_ms(PAUSE_MS)
                }
                other => return other,
            }
        }
    }

    fn elapsed_ms(start_ns: u64) -> u64 {
        crate::clock_ns().saturating_sub(start_ns) / 1_000_000
    }
}
