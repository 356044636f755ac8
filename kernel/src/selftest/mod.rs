//! In-kernel test scenarios, compiled in with the `qemu-tests` feature and chosen at boot by the
//! harness through the fw_cfg file `opt/multikernel/tests`: a space-separated list of
//! `name[=argument]` (`mk_cases`). Several cases share one boot (boots are slow under nested
//! KVM); each stands alone and reports on serial, in the form the harness parses:
//!
//! ```text
//! TEST <name> PASS
//! TEST <name> FAIL: <reason>
//! TESTS DONE
//! ```
//!
//! A case that ends the boot by design (the expected page fault) must come last.
//!
//! ```text
//!  cases      the table: name -> function (checked against mk_cases::NAMES), `run`
//!  hardware instances spaces messaging services bench start machine   the cases, by subject
//!  harness    the run loop, verdict lines, Outcome, ensure, argument parsing
//!  peer       what runs in the other instances on instance 0's request, and asking them
//! ```

#![forbid(unsafe_code)]

mod bench;
mod cases;
mod hardware;
mod harness;
mod instances;
mod ipc;
mod machine;
mod messaging;
mod peer;
mod rogue;
mod services;
mod spaces;
mod start;
mod tasks;

pub use cases::run;
/// Every instance but 0 (in the test kernel): serves the tests' requests and jobs, forever.
pub fn run_in_instance(desc: &crate::platform::descriptor::BootDescriptor) -> ! {
    rogue::register();
    peer::run_in_instance(desc)
}
