//! What happens when this instance cannot go on: a fatal error or a panic.
//!
//! An instance other than 0 stops beating and halts: instance 0 notices the silence, declares it
//! dead and takes its resources back, and the other instances go on. Instance 0 ends a test run
//! (QEMU exits with failure) or halts.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::cpu;
use crate::{console, instance};

/// Set once this instance has stopped for good (a failure, or a shutdown): its heartbeat stops
/// so that instance 0 sees the silence.
pub static STOPPED: AtomicBool = AtomicBool::new(false);

/// Whether this instance has stopped (see [`STOPPED`]).
pub fn stopped() -> bool {
    STOPPED.load(Ordering::Relaxed)
}

/// Reports an unrecoverable error on every console and stops: test kernels end QEMU with a
/// failure, others halt this CPU.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    console::emergency_write(format_args!("FATAL: {args}"));
    stop_after_failure()
}

/// After a panic or fatal error (see the module's documentation).
pub fn stop_after_failure() -> ! {
    STOPPED.store(true, Ordering::SeqCst);
    if !instance::id().is_supervisor() {
        cpu::halt_forever()
    }
    #[cfg(feature = "qemu-tests")]
    super::qemu::exit(super::qemu::ExitCode::Failure);
    #[cfg(not(feature = "qemu-tests"))]
    cpu::halt_forever()
}
