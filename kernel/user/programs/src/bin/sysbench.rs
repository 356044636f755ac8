//! `sysbench null N` / `sysbench yield N`: the cost of a system call and of a task switch,
//! measured from ring 3 with the time-stamp counter (instructions, under QEMU's
//! instruction-count mode), printed as `BENCH` lines for `cargo xtask bench`.
//!
//! - `null`: N system calls that the kernel refuses at decode (number `COUNT`, one past the
//!   last call): entry, dispatch, error, return. `sys.null` is the round trip per call.
//! - `yield`: N `yield` calls. Run two of them pinned to one CPU: every yield switches to the
//!   other task, so one loop round is two switches; `task.switch` is the time per switch
//!   (from one task's `yield` to the other's return from its own), both system calls included.
//!
//! `sysbench null N BUDGET`: as `null`, and exits with status 3 (after printing the figure
//! and its budget) when a call took more than BUDGET instructions: the budget test's check
//! (`kernel/crates/bench/src/budgets.rs`).

#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use mk_user::{Args, println, raw_syscall, rdtsc};

mk_user::entry!(main);

/// The exit status of a figure over its budget.
const OVER_BUDGET: u64 = 3;

fn main(args: Args) -> u64 {
    let (Some(what), Some(n)) = (args.get(0), args.number(1)) else {
        println!("sysbench: usage: sysbench null|yield N [BUDGET]");
        return 1;
    };
    if n == 0 {
        println!("sysbench: N must be at least 1");
        return 1;
    }
    match what {
        "null" => {
            let start = rdtsc();
            for _ in 0..n {
                let _ = raw_syscall(mk_user::abi::COUNT, 0, 0, 0, 0, 0, 0);
            }
            let per = (rdtsc() - start) / n;
            println!("BENCH sys.null unit=ns_per_op value={per} n={n}");
            judged("sys.null", per, args.number(2))
        }
        "yield" => {
            let start = rdtsc();
            for _ in 0..n {
                mk_user::yield_now();
            }
            let per = (rdtsc() - start) / (2 * n);
            println!("BENCH task.switch unit=ns_per_op value={per} n={n}");
            judged("task.switch", per, args.number(2))
        }
        other => {
            println!("sysbench: unknown measurement {other}");
            1
        }
    }
}

/// The exit status for a figure of `per` (instructions, in instruction-count mode) against its
/// budget, if one was given: [`OVER_BUDGET`] over it, 0 else.
fn judged(figure: &str, per: u64, budget: Option<u64>) -> u64 {
    match budget {
        Some(budget) if per > budget => {
            println!("sysbench: {figure} took {per} instructions, over its budget of {budget}");
            OVER_BUDGET
        }
        _ => 0,
    }
}
