//! `pingpong NAME N [quit]`: looks NAME up (for up to 10 s), then makes N calls to it: call i
//! has label `i % 0x4000_0000` and `(i * 7) % 161` data bytes, byte k being `(i + k * 31) as
//! u8`; each reply must have label + 1 and the same data (what `echo` does). Prints
//! `pingpong NAME N ok cycles_per_call=<c>` (time-stamp counter per call) and exits 0, or
//! `pingpong NAME fail at <i>: <what>` and exits 1. With `quit`, it then sends echo its quit
//! label (also after a failure), ignoring the result.

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::QUIT_LABEL;
use mk_user::ipc::{self, IpcMsg, names};
use mk_user::{Args, abi::ipc::MAX_INLINE, println, rdtsc};

mk_user::entry!(main);

fn main(args: Args) -> u64 {
    let (Some(name), Some(n)) = (args.get(0), args.number(1)) else {
        println!("pingpong: usage: pingpong NAME N [quit]");
        return 1;
    };
    let quit = args.get(2) == Some("quit");
    let h = match names::lookup_patiently(name, 10_000) {
        Ok(h) => h,
        Err(e) => {
            println!("pingpong {name} fail at lookup: {e} (code {})", e.code());
            return 1;
        }
    };
    let start = rdtsc();
    let mut status = 0;
    for i in 0..n {
        let label = (i % 0x4000_0000) as u32;
        let len = ((i * 7) % (MAX_INLINE as u64 + 1)) as usize;
        let mut data = [0u8; MAX_INLINE];
        for (k, b) in data[..len].iter_mut().enumerate() {
            *b = i.wrapping_add(k as u64 * 31) as u8;
        }
        let mut msg = IpcMsg::new(label, &data[..len]);
        let failure = match ipc::call(h, &mut msg, 0) {
            Err(e) => Some((e.as_str(), u64::from(label), 0)),
            Ok(got) if got != label + 1 || msg.label != u64::from(label) + 1 => {
                Some(("reply label", u64::from(label) + 1, msg.label))
            }
            Ok(_) if msg.bytes() != &data[..len] => Some(("reply data", len as u64, msg.len)),
            Ok(_) => None,
        };
        if let Some((what, expected, got)) = failure {
            println!("pingpong {name} fail at {i}: {what} (expected {expected:#x}, got {got:#x})");
            status = 1;
            break;
        }
    }
    if status == 0 {
        let per = (rdtsc() - start) / n.max(1);
        println!("pingpong {name} {n} ok cycles_per_call={per}");
        // For `cargo xtask bench` (time-stamp counter ticks: instructions in its
        // instruction-count mode).
        println!("BENCH ipc.rtt.{name} unit=ns_per_op value={per} n={n}");
    }
    if quit {
        let mut msg = IpcMsg::new(QUIT_LABEL, &[]);
        let _ = ipc::call(h, &mut msg, 1_000);
    }
    status
}
