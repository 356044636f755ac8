//! `ipcfuzz SEED N`: N pseudo-random IPC system calls (numbers 11 to 24, and a few others:
//! 25, 63, 255, `u64::MAX`, and 13/14/17/24 with bits above 32 set), with random arguments:
//! handles (its own, copies, received ones, forged), message pointers (its own message, its own
//! stack buffer at random offsets, null, kernel and non-canonical addresses, an unmapped user
//! page, a few bytes before the end of a mapped page), lengths, labels, rights, badges, bits,
//! timeouts of 1 to 5 ms. Every result is accepted; the test is that the task survives (and the
//! kernel with it). Prints `ipcfuzz SEED N ok calls=<n> errors=<e>` and exits 0.
//!
//! Kept from blocking and from hurting itself:
//! - `recv`/`reply_recv` (and any number whose low byte is theirs) only on a handle that
//!   cannot receive, or on its endpoint E right after signalling the notification bound to E
//!   (so something is pending); any other handle that can receive is replaced by E;
//! - `call` with timeouts of 1 to 5 ms;
//! - E, its notification, its `SEND` copy and the name service are never dropped nor moved
//!   away; a name-service `REGISTER` gets a name that is not UTF-8 (refused);
//! - message pointers into its own memory go through `syscall_msg`/`syscall_buf` (the kernel
//!   may write there); `raw_syscall` refuses the writing calls with other user pointers itself,
//!   so the unmapped and end-of-page pointers reach the kernel with `send` and `reply` (which
//!   only read).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::XorShift;
use mk_user::abi::ipc::{IPC_MSG_SIZE, MAX_INLINE, NO_CAP, names::REGISTER};
use mk_user::ipc::{self, CapKind, Handle, IpcMsg, NAME_SERVICE, Rights};
use mk_user::{Args, Mapping, Sys, abi, println, raw_syscall, syscall_buf, syscall_msg};

mk_user::entry!(main);

const POOL: usize = 32;
const BUF: usize = 1024;
const LOW48: u64 = 0xFFFF_FFFF_FFFF;

struct Fuzz {
    rng: XorShift,
    e: Handle,
    e_object: u64,
    s: Handle,
    n: Handle,
    pool: [u64; POOL],
    pooled: usize,
    page: u64,
    page_len: u64,
    gone: u64,
}

fn main(args: Args) -> u64 {
    let (Some(seed), Some(count)) = (args.number(0), args.number(1)) else {
        println!("ipcfuzz: usage: ipcfuzz SEED N");
        return 1;
    };
    let setup = || -> Result<(Handle, u64, Handle, Handle), abi::Error> {
        let e = ipc::endpoint()?;
        let object = ipc::cap_info(e)?.object;
        let s = ipc::cap_copy(e, Rights::SEND, 0)?;
        let n = ipc::notification(e)?;
        Ok((e, object, s, n))
    };
    let (e, e_object, s, n) = match setup() {
        Ok(v) => v,
        Err(err) => {
            println!("ipcfuzz {seed} {count} fail setup: {err}");
            return 1;
        }
    };
    // A page that stays mapped (pointers near its end), and one unmapped again (no later `map`
    // in this program can take its place).
    let mut page = match Mapping::new(4096) {
        Ok(m) => m,
        Err(err) => {
            println!("ipcfuzz {seed} {count} fail map: {err}");
            return 1;
        }
    };
    let gone = match Mapping::new(4096) {
        Ok(mut m) => m.as_mut_slice().as_mut_ptr() as u64,
        Err(_) => 0x1000,
    };
    let page_slice = page.as_mut_slice();
    let mut f = Fuzz {
        rng: XorShift::new(seed),
        e,
        e_object,
        s,
        n,
        pool: [NO_CAP; POOL],
        pooled: 0,
        page: page_slice.as_mut_ptr() as u64,
        page_len: page_slice.len() as u64,
        gone,
    };
    let mut buf = [0u8; BUF];
    let mut errors = 0u64;
    for _ in 0..count {
        let rax = f.one(&mut buf);
        if abi::decode(rax).is_err() {
            errors += 1;
        }
    }
    println!("ipcfuzz {seed} {count} ok calls={count} errors={errors}");
    0
}

impl Fuzz {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    fn number(&mut self) -> u64 {
        const OTHERS: [u64; 8] = [
            25,
            63,
            255,
            u64::MAX,
            (1 << 32) | 13,
            (1 << 32) | 14,
            (1 << 40) | 17,
            (1 << 63) | 24,
        ];
        if self.below(12) == 0 {
            OTHERS[self.below(OTHERS.len() as u64) as usize]
        } else {
            11 + self.below(14)
        }
    }

    fn protected(&self, h: u64) -> bool {
        [self.e, self.s, self.n, NAME_SERVICE]
            .iter()
            .any(|p| p.0 == h & LOW48)
    }

    fn add(&mut self, h: u64) {
        if h == NO_CAP || self.pool.contains(&h) {
            return;
        }
        if self.pooled < POOL {
            self.pool[self.pooled] = h;
            self.pooled += 1;
        } else {
            // Full: forget one (it stays in the task's table, which may fill: TooManyCaps).
            let i = self.below(POOL as u64) as usize;
            self.pool[i] = h;
        }
    }

    fn remove(&mut self, h: u64) {
        if let Some(i) = self.pool[..self.pooled].iter().position(|&p| p == h) {
            self.pooled -= 1;
            self.pool[i] = self.pool[self.pooled];
        }
    }

    fn handle(&mut self) -> u64 {
        match self.below(20) {
            0..=7 if self.pooled > 0 => self.pool[self.below(self.pooled as u64) as usize],
            0..=12 => [self.e, self.s, self.n, NAME_SERVICE][self.below(4) as usize].0,
            13 => 0,
            14 => u64::MAX,
            15 => self.rng.next_u64(),
            16 => self.rng.next_u64() | (1 << 48),
            17 => self.e.0 | (1 << (48 + self.below(16))),
            _ => Handle::new(self.below(8) as u16, self.below(4) as u32).0,
        }
    }

    /// A random value of the kinds a kernel gets wrong.
    fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(256),
            3 => 1 << self.below(64),
            _ => self.rng.next_u64(),
        }
    }

    /// A message with random contents; moves only unprotected capabilities; a `REGISTER`
    /// never carries a valid name.
    fn message(&mut self) -> IpcMsg {
        let mut m = IpcMsg::empty();
        m.label = match self.below(6) {
            0 => self.rng.next_u64(),
            1 => self.below(4),
            2 => (1 << 31) | self.below(20),
            _ => self.below(1 << 32),
        };
        m.len = match self.below(8) {
            0 => self.value(),
            1 => MAX_INLINE as u64 + 1,
            _ => self.below(MAX_INLINE as u64 + 1),
        };
        for b in &mut m.data {
            *b = self.rng.next_u64() as u8;
        }
        let mut caps = [NO_CAP; 2];
        for c in &mut caps {
            if self.below(3) != 0 {
                *c = self.handle();
            }
        }
        m.caps = caps;
        m.cap_move = match self.below(4) {
            0 => self.value(),
            _ => self.below(4),
        };
        for i in 0..2 {
            if m.cap_move & (1 << i) != 0 && self.protected(m.caps[i]) {
                m.cap_move &= !(1 << i);
            }
        }
        if m.cap_move & !3 != 0 && (self.protected(m.caps[0]) || self.protected(m.caps[1])) {
            m.cap_move &= 3;
        }
        if m.label & 0xFFFF_FFFF == u64::from(REGISTER) {
            m.data[0] = 0xFF;
        }
        m.badge = self.rng.next_u64();
        m.sender_task = self.rng.next_u64();
        m
    }

    /// A pointer for a call that only reads through it (`send`, `reply`; for the others
    /// `raw_syscall` refuses the user ones): not user memory, an unmapped page, the end or the
    /// inside of the mapped page, or `msg`.
    fn read_pointer(&mut self, msg: &IpcMsg) -> u64 {
        match self.below(9) {
            0 => 0,
            1 => 0xFFFF_8000_0000_0000,
            2 => 0xFFFF_FFFF_8000_0000,
            3 => 0x0000_8000_0000_0000,
            4 => u64::MAX - self.below(IPC_MSG_SIZE as u64),
            5 => self.gone + self.below(4096),
            6 => self.page + self.page_len - 1 - self.below(IPC_MSG_SIZE as u64),
            7 => self.page + self.below(self.page_len),
            _ => core::ptr::from_ref(msg) as u64,
        }
    }

    /// Makes one call; returns the raw `rax`.
    fn one(&mut self, buf: &mut [u8; BUF]) -> u64 {
        let num = self.number();
        match Sys::from_raw(num & 0xFF) {
            Some(Sys::Send) => {
                let msg = self.message();
                let h = self.handle();
                let ptr = self.read_pointer(&msg);
                raw_syscall(num, h, ptr, self.value(), self.value(), 0, 0).0
            }
            Some(Sys::Reply) => {
                let msg = self.message();
                let ptr = self.read_pointer(&msg);
                raw_syscall(num, ptr, self.value(), 0, 0, 0, 0).0
            }
            Some(Sys::Call) => {
                let h = self.handle();
                let timeout = 1 + self.below(5);
                self.message_call(num, h, timeout, buf)
            }
            Some(Sys::Recv | Sys::ReplyRecv) => {
                let Some(h) = self.receivable() else {
                    // Could not make sure it returns: not made (counted as an error).
                    return abi::encode(Err(abi::Error::Busy));
                };
                self.message_call(num, h, 0, buf)
            }
            Some(Sys::CapCopy) => {
                let h = self.handle();
                let rights = match self.below(3) {
                    0 => self.value(),
                    _ => self.below(8),
                };
                let badge = self.value();
                let rax = raw_syscall(num, h, rights, badge, 0, 0, 0).0;
                if let Ok(v) = abi::decode(rax) {
                    self.add(v);
                }
                rax
            }
            Some(Sys::CapDrop) => {
                let h = self.handle();
                if self.protected(h) {
                    return abi::encode(Err(abi::Error::NoSuchCap));
                }
                let rax = raw_syscall(num, h, self.value(), 0, 0, 0, 0).0;
                if abi::decode(rax).is_ok() {
                    self.remove(h);
                }
                rax
            }
            Some(Sys::Endpoint | Sys::Notification) => {
                let h = self.handle();
                let rax = raw_syscall(num, h, self.value(), self.value(), 0, 0, 0).0;
                if let Ok(v) = abi::decode(rax) {
                    self.add(v);
                }
                rax
            }
            Some(Sys::Signal | Sys::IrqAck | Sys::MmioMap | Sys::CapInfo) => {
                let h = self.handle();
                raw_syscall(num, h, self.value(), self.value(), 0, 0, 0).0
            }
            Some(Sys::IrqBind) => {
                let (irq, notif) = (self.handle(), self.handle());
                let bit = match self.below(3) {
                    0 => self.value(),
                    _ => self.below(70),
                };
                raw_syscall(num, irq, notif, bit, 0, 0, 0).0
            }
            _ => {
                // Not an IPC call by its low byte (25, 63, 255, u64::MAX): random arguments.
                let a = [self.value(), self.value(), self.value(), self.value()];
                raw_syscall(num, a[0], a[1], a[2], a[3], 0, 0).0
            }
        }
    }

    /// `call`, `recv` or `reply_recv` (`num`) on `h`, the message through one of the ways a
    /// pointer can go: its own message, its stack buffer, or a pointer `raw_syscall` passes on
    /// only if it is not user memory.
    fn message_call(&mut self, num: u64, h: u64, a2: u64, buf: &mut [u8; BUF]) -> u64 {
        let mut msg = self.message();
        match self.below(5) {
            0 | 1 => {
                let rax = syscall_msg(num, h, &mut msg, a2, 0).0;
                if abi::decode(rax).is_ok() {
                    self.add_received(&msg);
                }
                rax
            }
            2 | 3 => {
                let offset = if self.below(8) == 0 {
                    // Past where the whole message fits: refused before the kernel.
                    BUF - IPC_MSG_SIZE + 1 + self.below(IPC_MSG_SIZE as u64) as usize
                } else {
                    self.below((BUF - IPC_MSG_SIZE + 1) as u64) as usize
                };
                if let Some(dst) = buf.get_mut(offset..offset + IPC_MSG_SIZE) {
                    dst.copy_from_slice(&msg.to_bytes());
                }
                let rax = syscall_buf(num, h, buf, offset, a2, 0).0;
                if abi::decode(rax).is_ok()
                    && let Some(src) = buf.get(offset..offset + IPC_MSG_SIZE)
                {
                    let mut bytes = [0u8; IPC_MSG_SIZE];
                    bytes.copy_from_slice(src);
                    self.add_received(&IpcMsg::from_bytes(&bytes));
                }
                rax
            }
            _ => {
                let ptr = self.read_pointer(&msg);
                raw_syscall(num, h, ptr, a2, 0, 0, 0).0
            }
        }
    }

    fn add_received(&mut self, msg: &IpcMsg) {
        for c in msg.caps {
            self.add(c);
        }
    }

    /// A handle `recv` returns on at once: one that cannot receive, or E with a notification
    /// pending. `None` if it cannot make sure.
    fn receivable(&mut self) -> Option<u64> {
        let h = self.handle();
        let mut can_receive = false;
        let mut other_object = false;
        // Also as a kernel that ignored the upper bits would read it.
        for candidate in [h, h & LOW48, h & 0xFFFF_FFFF] {
            if let Ok(info) = ipc::cap_info(Handle(candidate))
                && info.rights.contains(Rights::RECV)
            {
                can_receive = true;
                other_object |=
                    info.kind != Some(CapKind::Endpoint) || info.object != self.e_object;
            }
        }
        if !can_receive {
            return Some(h);
        }
        let bits = self.rng.next_u64() | 1;
        ipc::signal(self.n, bits).ok()?;
        Some(if other_object { self.e.0 } else { h })
    }
}
