//! `com2drv`: a user-mode driver for the second serial port (COM2, 0x2F8, ISA IRQ 3) in
//! loopback mode, served over IPC as `com2`.
//!
//! Its capabilities arrive at spawn: the IRQ at `Handle::new(1, 1)` and the I/O ports
//! (0x2F8, 8 ports) at `Handle::new(2, 1)`; it checks both with `cap_info`. It creates an
//! endpoint E (requests) and an endpoint Q that only its interrupts reach (a notification on
//! Q, bit 0, bound to the IRQ), programs the UART as the kernel's `platform::com2::
//! init_loopback` does, drains stale bytes, acknowledges the IRQ, registers E as `com2`
//! (retrying up to 5 s while taken) and prints `com2drv ready`. Then it serves:
//!
//! - `WRITE` (1), data d: each byte is sent (after the transmitter is empty), then it waits on
//!   Q for the interrupt, reads every received byte, acknowledges the IRQ, until the byte came
//!   back (FIFOs are off: a second byte sent before the first is read would overrun); replies
//!   label 0 with the bytes that came back;
//! - `STATS` (2): replies label 0 with two little-endian u64s: bytes handled, interrupts taken.
//!
//! Prints `com2drv fail <what>: <detail>` and exits 1 on any failure of its own.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::com2::{NAME, REFUSED, STATS, WRITE};
use mk_user::abi::ipc::MAX_INLINE;
use mk_user::ipc::{self, CapKind, Handle, IpcMsg, Received, Rights, names};
use mk_user::{Args, Error, inb, outb, println};

mk_user::entry!(main);

const IRQ: Handle = Handle::new(1, 1);
const PORTS: Handle = Handle::new(2, 1);

const BASE: u16 = 0x2F8;
const DATA: u16 = BASE;
const IER: u16 = BASE + 1;
const FCR: u16 = BASE + 2;
const LCR: u16 = BASE + 3;
const MCR: u16 = BASE + 4;
const LSR: u16 = BASE + 5;
const SCRATCH: u16 = BASE + 7;
/// LSR: a received byte is ready.
const LSR_DATA: u8 = 0x01;
/// LSR: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 0x20;
/// The notification bit the IRQ sets.
const IRQ_BIT: u32 = 0;

fn main(_args: Args) -> u64 {
    match run() {
        Ok(()) => 0,
        Err(Fail(what, detail)) => {
            println!("com2drv fail {what}: {detail}");
            1
        }
    }
}

enum Detail {
    Err(Error),
    Text(&'static str),
    Kind(u8, u8),
}

impl core::fmt::Display for Detail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Err(e) => write!(f, "{e} (code {})", e.code()),
            Self::Text(t) => f.write_str(t),
            Self::Kind(kind, rights) => write!(f, "capability kind {kind}, rights {rights:#x}"),
        }
    }
}

struct Fail(&'static str, Detail);

fn step<T>(what: &'static str, r: Result<T, Error>) -> Result<T, Fail> {
    r.map_err(|e| Fail(what, Detail::Err(e)))
}

/// Checks that `h` is a capability of `kind` that can be used (`SEND`).
fn check_cap(what: &'static str, h: Handle, kind: CapKind) -> Result<u64, Fail> {
    let info = step(what, ipc::cap_info(h))?;
    if info.kind != Some(kind) || !info.rights.contains(Rights::SEND) {
        return Err(Fail(what, Detail::Kind(info.kind_raw, info.rights.bits())));
    }
    Ok(info.object)
}

/// Takes every received byte: into `echo` while it has room (counted in `len`), else dropped.
fn drain(echo: &mut [u8], len: &mut usize) {
    while inb(LSR) & LSR_DATA != 0 {
        let b = inb(DATA);
        if let Some(slot) = echo.get_mut(*len) {
            *slot = b;
            *len += 1;
        }
    }
}

/// 8N1 at 115200, FIFOs off (one interrupt per byte), loopback, OUT2, the receive interrupt on
/// (`kernel/src/platform/com2.rs`, `init_loopback`).
fn init_loopback() {
    outb(IER, 0);
    outb(LCR, 0x80);
    outb(DATA, 1);
    outb(IER, 0);
    outb(LCR, 0x03);
    outb(FCR, 0);
    outb(MCR, 0x10 | 0x08 | 0x03);
    drain(&mut [], &mut 0);
    outb(IER, 0x01);
}

struct Driver {
    q: Handle,
    bytes: u64,
    interrupts: u64,
}

impl Driver {
    /// Sends `data` byte by byte; each one comes back through an interrupt into `echo`.
    /// Returns how many came back.
    fn write(&mut self, data: &[u8], echo: &mut [u8; MAX_INLINE]) -> Result<usize, Fail> {
        let mut len = 0;
        let mut msg = IpcMsg::empty();
        for (i, &b) in data.iter().enumerate() {
            while inb(LSR) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            outb(DATA, b);
            while len <= i {
                let kind = step("recv(Q)", ipc::recv(self.q, &mut msg))?;
                if kind != Received::Notification {
                    // Only the IRQ's notification reaches Q; anything else is ignored.
                    ipc::drop_received_caps(&mut msg);
                    continue;
                }
                self.interrupts += 1;
                drain(echo, &mut len);
                step("irq_ack", ipc::irq_ack(IRQ))?;
            }
        }
        self.bytes += len as u64;
        Ok(len)
    }
}

fn run() -> Result<(), Fail> {
    check_cap("IRQ capability at h1.1", IRQ, CapKind::Irq)?;
    let ports = check_cap("I/O ports capability at h2.1", PORTS, CapKind::IoPorts)?;
    // The ports are usable now (a missing grant would fault here and end the task).
    outb(SCRATCH, 0x5A);
    if inb(SCRATCH) != 0x5A {
        return Err(Fail("COM2", Detail::Text("no UART answers at 0x2F8")));
    }
    let e = step("endpoint E", ipc::endpoint())?;
    let q = step("endpoint Q", ipc::endpoint())?;
    let n = step("notification(Q)", ipc::notification(q))?;
    step("irq_bind", ipc::irq_bind(IRQ, n, IRQ_BIT))?;
    init_loopback();
    drain(&mut [], &mut 0);
    step("first irq_ack", ipc::irq_ack(IRQ))?;
    step("register", names::register_patiently(NAME, e, 5_000))?;
    println!("com2drv ready (ports object {ports:#x})");
    let mut driver = Driver {
        q,
        bytes: 0,
        interrupts: 0,
    };
    let mut msg = IpcMsg::empty();
    let mut echo = [0u8; MAX_INLINE];
    loop {
        let kind = step("recv(E)", ipc::recv(e, &mut msg))?;
        ipc::drop_received_caps(&mut msg);
        if kind != Received::Call {
            continue;
        }
        let reply = match msg.label as u32 {
            WRITE => {
                let data = msg.bytes();
                let len = driver.write(data, &mut echo)?;
                IpcMsg::new(0, &echo[..len])
            }
            STATS => {
                let mut words = [0u8; 16];
                words[..8].copy_from_slice(&driver.bytes.to_le_bytes());
                words[8..].copy_from_slice(&driver.interrupts.to_le_bytes());
                IpcMsg::new(0, &words)
            }
            _ => IpcMsg::new(REFUSED, &[]),
        };
        match ipc::reply(&reply) {
            // The caller gave up (timed out) or went away: serve the next one.
            Ok(()) | Err(Error::NothingToReply | Error::Stale | Error::PeerDead) => {}
            Err(err) => return Err(Fail("reply", Detail::Err(err))),
        }
    }
}
