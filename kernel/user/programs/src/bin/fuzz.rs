//! `fuzz SEED COUNT`: COUNT pseudo-random system calls (xorshift from SEED) with random call
//! numbers, out-of-range ones included, and arguments drawn from a list of nasty values;
//! counts what succeeded and each error, prints `fuzz done <count> calls ok=<n> err=<n>` and
//! exits 0. A kernel that faults, hangs or ends this task has a bug.
//!
//! Kept harmless to the rest of the instance: never `exit`; `kill` never of itself nor of an id
//! that could name a live task (its generation is forced large); `sleep` below 2 ms; `spawn`
//! mostly with a bad name pointer, and a task it does start is killed and waited for; memory
//! it maps is unmapped at once; `recv` and `reply_recv` only on handles that name nothing (so
//! they never block). `call`, `recv` and `reply_recv` with a pointer into the task's own
//! memory are refused by `raw_syscall` itself (the kernel would write there).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_programs::XorShift;
use mk_user::{Args, Error, Sys, TaskId, abi, println, raw_syscall};

mk_user::entry!(main);

/// Errors by code (index = code; 0 counts codes this version does not know).
const CODES: usize = 10;

fn main(args: Args) -> u64 {
    let (Some(seed), Some(count)) = (args.number(0), args.number(1)) else {
        println!("fuzz: usage: fuzz SEED COUNT");
        return 1;
    };
    let mut rng = XorShift::new(seed);
    let (me, _, _) = mk_user::whoami();
    let stack_marker = 0u64;
    let stack = core::ptr::addr_of!(stack_marker) as u64;
    let code = main as fn(Args) -> u64 as usize as u64;
    let mut ok = 0u64;
    let mut errors = [0u64; CODES];
    // `count` calls made: a drawn call that `tame` skips is drawn again.
    let mut made = 0u64;
    while made < count {
        let n = number(&mut rng);
        let mut a = [0u64; 6];
        for v in &mut a {
            *v = nasty(&mut rng, stack, code);
        }
        if !tame(n, &mut a, me, &mut rng) {
            continue;
        }
        // `raw_syscall` refuses by itself (without entering the kernel) a call that would
        // write the message pointer into this task's memory: draw again, so that every call
        // counted reaches the kernel (the test counts them there).
        if mk_user::writes_caller_memory(n) && a[1] != 0 && a[1] < mk_user::USER_END {
            continue;
        }
        made += 1;
        let (rax, _) = raw_syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
        match abi::decode(rax) {
            Ok(v) => {
                ok += 1;
                clean_up(n, v, a);
            }
            Err(e) => errors[(e.code() as usize).min(CODES - 1)] += 1,
        }
    }
    let err: u64 = errors.iter().sum();
    for (code, &n) in errors.iter().enumerate().filter(|&(_, &n)| n > 0) {
        match Error::from_code(code as u64) {
            Some(e) => println!("fuzz: {n} x {e}"),
            None => println!("fuzz: {n} x unknown error"),
        }
    }
    println!("fuzz done {count} calls ok={ok} err={err}");
    0
}

/// A call number: mostly a real one, sometimes just past the end, sometimes anything.
fn number(rng: &mut XorShift) -> u64 {
    match rng.below(8) {
        0 => abi::COUNT + rng.below(4),
        1 => rng.next_u64(),
        _ => rng.below(abi::COUNT),
    }
}

/// An argument: mostly from the list of values a kernel gets wrong, sometimes random.
fn nasty(rng: &mut XorShift, stack: u64, code: u64) -> u64 {
    const FIXED: [u64; 16] = [
        0,
        1,
        u64::MAX,
        u64::MAX - 4095,
        0xFFFF_8000_0000_0000, // start of the kernel half
        0xFFFF_FFFF_8000_0000, // the kernel image
        0x0000_7FFF_FFFF_F000, // the last user page
        0x0000_7FFF_FFFF_FFFF, // the last user byte
        0x0000_8000_0000_0000, // first non-canonical address
        0x0010_0000,           // physical-looking: 1 MiB (instance 0's memory)
        0x0020_0000,
        0xFEE0_0000,   // the local APIC
        0x1_0000_0000, // 4 GiB
        4096,
        1 << 40, // a huge length
        abi::MAX_WRITE + 1,
    ];
    match rng.below(10) {
        0..=5 => FIXED[rng.below(FIXED.len() as u64) as usize],
        6 => stack.wrapping_add(rng.below(8192)).wrapping_sub(4096),
        7 => code.wrapping_add(rng.below(4096)),
        8 => rng.below(8192),
        _ => rng.next_u64(),
    }
}

/// Makes call `n` harmless to the instance, or says to skip it (`false`).
fn tame(n: u64, a: &mut [u64; 6], me: TaskId, rng: &mut XorShift) -> bool {
    match Sys::from_raw(n) {
        Some(Sys::Exit) => false,
        Some(Sys::Sleep) => {
            a[0] %= 2;
            true
        }
        Some(Sys::Kill) => {
            // A generation of at least 2^31 names no task that has lived; never our own id.
            a[0] |= 1 << 63;
            a[0] != me.raw()
        }
        Some(Sys::Recv | Sys::ReplyRecv) => {
            // Never one of its own endpoints (which could block for ever): a handle with bits
            // above the generation names no capability. (`ipcfuzz` covers these calls.)
            a[0] |= 1 << 63;
            true
        }
        Some(Sys::Spawn) => {
            // One call in eight names a real program, with a valid pointer.
            if rng.below(8) == 0 {
                let name: &'static str = if rng.below(2) == 0 { "hello" } else { "nosuch" };
                a[0] = name.as_ptr() as u64;
                a[1] = name.len() as u64;
                a[2] = name.as_ptr() as u64;
                a[3] = name.len() as u64;
            }
            true
        }
        _ => true,
    }
}

/// Undoes what a successful call started: a spawned task is killed and waited for, a mapping
/// unmapped.
fn clean_up(n: u64, value: u64, a: [u64; 6]) {
    match Sys::from_raw(n) {
        Some(Sys::Spawn) => {
            let task = TaskId::from_raw(value);
            let _ = mk_user::kill(task);
            let _ = mk_user::wait(task);
        }
        Some(Sys::Map) => {
            let _ = mk_user::unmap(value as *mut u8, a[0] as usize);
        }
        _ => {}
    }
}
