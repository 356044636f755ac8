//! `cargo xtask`: builds the kernel and its disk images, runs it in QEMU, runs the tests,
//! writes images to USB sticks. Everything a newcomer needs goes through here, including setting
//! up a fresh machine (toolchain, QEMU, OVMF).

mod args;
mod bench;
mod build;
mod console_test;
mod flash;
mod image;
mod qemu;
mod ramdisk;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run     build the kernel and boot it in QEMU, serial console on this terminal
            --smp N          CPUs (default 2)
            --partitions P   partition plan: CPU counts, e.g. 2,2,4, with optional
                             memory sizes, e.g. 2:256M,2:256M,4 (default: one
                             instance per CPU, memory split evenly)
            --memory SIZE    guest memory, e.g. 512M, 2G (default 1G)
            --uefi           boot the UEFI image under OVMF (default: BIOS image)
            --no-kvm         use TCG even where /dev/kvm works
            --kvm            use KVM even where it is kvm-pvm (default there: TCG, as
                             user tasks cannot make system calls under it)
            --gdb            start halted with a gdb stub on :1234 and print the gdb command
            --display        open a window with the framebuffer console
            --debug          unoptimised kernel (slow to boot under emulation)
            --release        optimised kernel (default; accepted for old scripts)
            --init K=COMMAND instance K (1 to 63) starts COMMAND instead of init, e.g.
                             --init \"2=spin 5\" (repeatable; its first word must be a
                             program; instance 0 runs the shell)
  test    host unit tests, then every QEMU integration test
            [NAME]           only tests whose name contains NAME
            --no-kvm         run only what TCG can run; KVM tests are reported skipped
            --host-only      only the host unit tests
            --qemu-only      only the QEMU tests
  image   build the BIOS and UEFI disk images
            --out DIR        where to write them (default target/images)
            --partitions P   partition plan carried in the images (ramdisk)
            --init K=COMMAND as for run, carried in the images (ramdisk)
            --debug          unoptimised kernel
            --release        optimised kernel (default; accepted for old scripts)
  flash   write an image to a USB stick
            DEVICE           whole removable block device, e.g. /dev/sdb
            --uefi           write the UEFI image (default: BIOS image)
            --yes            do not ask for confirmation
            --init K=COMMAND as for run, carried in the image (ramdisk)
  bench   message latency and throughput between instances, with the host's
          own floor measured in the same run (a report, not a test)
            --smp N          CPUs, one instance each (default 2)
            --samples N      round trips per latency figure (default 1000)
            --msgs N         messages per throughput figure (default 20000)
            --no-kvm         use TCG even where /dev/kvm works
  help    this text
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "run" => run::main(rest),
        "test" => test::main(rest),
        "image" => image::main(rest),
        "flash" => flash::main(rest),
        "bench" => bench::main(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(args::usage_error(format!("unknown command '{other}'"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("error: {msg}\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// How a command failed: bad usage (exit 2, usage shown) or a failure while doing the work.
#[derive(Debug)]
pub enum Error {
    Usage(String),
    Failed(String),
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error::Failed(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error::Failed(s.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
