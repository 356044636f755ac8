//! `cargo xtask run`: build, make the image, boot it in QEMU with the serial console here.

use boot::Firmware;

use crate::args::{Args, parse_size_mib};
use crate::build::{self, Flavor};
use crate::qemu::{self, Accel, Machine};
use crate::setup;
use crate::{Error, Result};

/// Where the kernel image is loaded (`KERNEL_BASE` in kernel/src/main.rs); gdb needs it to place
/// the symbols of the position-independent kernel.
const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(
        argv,
        &["uefi", "no-kvm", "gdb", "display", "release"],
        &["smp", "memory"],
        0,
    )?;
    let smp: u32 = match args.value("smp") {
        None => 2,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=255).contains(n))
            .ok_or_else(|| {
                Error::Usage(format!("--smp wants a CPU count from 1 to 255, got '{s}'"))
            })?,
    };
    let memory_mib = match args.value("memory") {
        None => 1024,
        Some(m) => parse_size_mib(m)?,
    };
    let firmware = if args.flag("uefi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let release = args.flag("release");

    setup::ensure_toolchain()?;
    setup::ensure_qemu(firmware == Firmware::Uefi)?;
    let kernel = build::kernel(release, Flavor::Run)?;
    let image = build::image(&kernel, firmware, Flavor::Run)?;

    let accel = if args.flag("no-kvm") {
        eprintln!("xtask: TCG (software emulation), as asked; the guest will use xAPIC mode");
        Accel::Tcg
    } else if setup::kvm_usable() {
        eprintln!("xtask: KVM (/dev/kvm is usable)");
        Accel::Kvm
    } else {
        eprintln!(
            "xtask: TCG: /dev/kvm is missing or not accessible; the guest will use xAPIC mode"
        );
        Accel::Tcg
    };
    if firmware == Firmware::Uefi && accel == Accel::Kvm {
        eprintln!(
            "xtask: note: OVMF is known to fail under nested KVM (kvm-pvm); add --no-kvm if it hangs"
        );
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if accel == Accel::Kvm && smp as usize > host_cpus {
        eprintln!("xtask: note: {smp} vCPUs on {host_cpus} host CPUs: they will share cores");
    }
    let machine = Machine {
        accel,
        firmware,
        smp,
        memory_mib,
        image,
    };
    let mut cmd = qemu::command(&machine, &["run.args"])?;
    if !args.flag("display") {
        cmd.args(["-display", "none"]);
    }
    if args.flag("gdb") {
        cmd.args(["-s", "-S"]);
        eprintln!("xtask: QEMU is halted with a gdb stub on localhost:1234. In another terminal:");
        eprintln!(
            "  gdb -ex 'add-symbol-file {} -o {KERNEL_BASE:#x}' -ex 'target remote localhost:1234'",
            kernel.display()
        );
    }
    eprintln!(
        "xtask: booting {} image, {smp} CPUs, {memory_mib} MiB; Ctrl-A X quits",
        firmware.name()
    );
    let status = cmd.status().map_err(|e| format!("starting QEMU: {e}"))?;
    if !status.success() {
        return Err(format!("QEMU exited with {status}").into());
    }
    Ok(())
}
