//! The harness of the self-tests: reads a boot's case list, runs each case of the table it is
//! given, and prints the verdicts in the form `cargo xtask test` parses
//! (`tests/src/log.rs`):
//!
//! ```text
//! TEST <name> PASS
//! TEST <name> FAIL: <reason>
//! TESTS DONE
//! ```
//!
//! then exits QEMU with success or failure. Also the small helpers every case uses: the
//! [`Outcome`] of a case, [`ensure`], [`wait_until`], the parsing of a numeric argument, the partition plan.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

use super::peer;
use crate::platform::acpi::Platform;
use crate::platform::qemu::{self, ExitCode};
use crate::println;

static ANY_FAILED: AtomicBool = AtomicBool::new(false);

/// What a case ends with: pass, or fail with the reason shown after `FAIL: `.
pub(super) type Outcome = Result<(), String>;

/// What the cases may need of instance 0's boot.
pub(super) struct Ctx<'a> {
    pub(super) platform: &'a Platform,
}

/// One case: its name in a boot's case list, and the function running it with its argument
/// (after `=`; empty without one).
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) run: fn(&Ctx<'_>, &str) -> Outcome,
}

/// Runs the cases `list` names (`mk_cases::specs`), in order, each looked up by name in
/// `table`, then ends the boot. Without a list (no fw_cfg file) the harness itself fails.
pub(super) fn run(table: &[Case], ctx: &Ctx<'_>, list: Option<String>) -> ! {
    let Some(list) = list else {
        println!("TEST harness FAIL: no fw_cfg file opt/multikernel/tests");
        qemu::exit(ExitCode::Failure);
    };
    peer::register_test_handlers();
    for (name, arg) in mk_cases::specs(&list) {
        let outcome = match table.iter().find(|case| case.name == name) {
            Some(case) => (case.run)(ctx, arg),
            None => Err(format!("unknown test case '{name}'")),
        };
        report(name, outcome);
    }
    finish()
}

/// Prints the verdict of case `name`.
pub(super) fn report(name: &str, outcome: Outcome) {
    match outcome {
        Ok(()) => println!("TEST {name} PASS"),
        Err(reason) => {
            ANY_FAILED.store(true, Ordering::SeqCst);
            println!("TEST {name} FAIL: {reason}");
        }
    }
}

/// Ends the boot after the last verdict: `TESTS DONE`, then QEMU's exit code.
pub(super) fn finish() -> ! {
    println!("TESTS DONE");
    if ANY_FAILED.load(Ordering::SeqCst) {
        qemu::exit(ExitCode::Failure)
    } else {
        qemu::exit(ExitCode::Success)
    }
}

pub(super) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Waits (polling instance 0's mailboxes) up to `ms` for `done`.
pub(super) fn wait_until(
    what: &str,
    ms: u64,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Outcome {
    use crate::arch::tsc;
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    loop {
        if done()? {
            return Ok(());
        }
        ensure(tsc::read() < deadline, || {
            format!("{what}: not within {ms} ms")
        })?;
        crate::messaging::poll();
        tsc::spin_micros(2_000);
    }
}

/// A case's numeric argument (`madt_cpus=2`, `msg_ping=50`...).
pub(super) fn number<T: core::str::FromStr>(arg: &str) -> Result<T, String> {
    arg.parse().map_err(|_| format!("bad argument '{arg}'"))
}

/// The partition plan instance 0 runs.
pub(super) fn plan() -> Result<&'static mk_plan::Plan, String> {
    crate::cpus::launch::PLAN
        .get()
        .map(|p| &**p)
        .ok_or_else(|| "no partition plan".into())
}
