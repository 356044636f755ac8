//! `cargo xtask run`: build, make the image, boot it in QEMU with the serial console here.

use boot::Firmware;

use crate::args::{Args, parse_size_mib, release_profile};
use crate::build::{self, Flavor};
use crate::qemu::{self, Accel, Machine};
use crate::setup;
use crate::{Error, Result};

/// Where the kernel image is loaded (`KERNEL_BASE` in kernel/src/main.rs); gdb needs it to place
/// the symbols of the position-independent kernel.
const KERNEL_BASE: u64 = 0xFFFF_FFFF_8000_0000;

/// Checks a `--partitions` plan against the machine xtask will start: it must parse, use no more
/// CPUs than `--smp` and no more memory than `--memory`. Returns the plan in canonical form.
/// (The kernel checks again at boot against what it finds, and falls back to the default plan
/// with a logged reason.)
pub fn check_plan(text: &str, smp: u32, memory_mib: u64) -> Result<String> {
    let spec = mk_plan::PlanSpec::parse(text)
        .map_err(|e| Error::Usage(format!("--partitions '{text}': {e}")))?;
    let cpus = spec.total_cpus();
    if cpus > u64::from(smp) {
        return Err(Error::Usage(format!(
            "--partitions '{text}' asks for {cpus} CPUs but --smp gives {smp}"
        )));
    }
    let sized: u64 = spec.partitions().iter().filter_map(|p| p.memory).sum();
    if sized > memory_mib << 20 {
        return Err(Error::Usage(format!(
            "--partitions '{text}' asks for {} MiB but --memory gives {memory_mib} MiB",
            sized >> 20
        )));
    }
    Ok(spec.to_string())
}

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(
        argv,
        &[
            "uefi", "no-kvm", "kvm", "gdb", "display", "release", "debug",
        ],
        &["smp", "memory", "partitions", "init"],
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
    let plan = match args.value("partitions") {
        None => None,
        Some(text) => Some(check_plan(text, smp, memory_mib)?),
    };
    let inits = crate::ramdisk::parse_inits(args.values("init"))?;
    let instances = match &plan {
        Some(p) => mk_plan::PlanSpec::parse(p).map_or(0, |s| s.partitions().len()),
        None => (smp as usize).min(64),
    };
    for init in &inits {
        if init.instance as usize >= instances {
            eprintln!(
                "xtask: note: --init {}: this machine has {instances} instances (0 to {}), so \
                 etc/init.{} will not be used",
                init.instance,
                instances.saturating_sub(1),
                init.instance
            );
        }
    }
    let firmware = if args.flag("uefi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let release = release_profile(&args)?;
    if !release {
        eprintln!(
            "xtask: debug kernel, as asked: it boots far slower than the default release kernel \
             (minutes under nested KVM or TCG)"
        );
    }

    setup::ensure_toolchain()?;
    setup::ensure_qemu(firmware == Firmware::Uefi)?;
    let kernel = build::kernel(release, Flavor::Run)?;
    // The plan goes by fw_cfg here (QEMU); the ramdisk carries the programs and the `--init`
    // command lines.
    let ramdisk = build::ramdisk(None, &inits)?;
    let image = build::image(&kernel, &ramdisk, firmware, Flavor::Run)?;

    let accel = if args.flag("no-kvm") {
        eprintln!("xtask: TCG (software emulation), as asked; the guest will use xAPIC mode");
        Accel::Tcg
    } else if setup::kvm_usable() && setup::kvm_is_pvm() && !args.flag("kvm") {
        eprintln!(
            "xtask: TCG: this machine's KVM is kvm-pvm (nested, in software), under which user \
             tasks cannot make system calls (SYSCALL from ring 3 does not reach ring 0); \
             add --kvm to use it anyway"
        );
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
        shape: qemu_tests::Shape::DEFAULT,
        image,
    };
    let mut cmd = qemu::command(&machine, &["run.args"])?;
    if let Some(plan) = &plan {
        cmd.arg("-fw_cfg")
            .arg(qemu::fw_cfg_string("opt/multikernel/plan", plan));
        eprintln!("xtask: partition plan {plan}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_plans_pass() {
        assert_eq!(check_plan("2,2,4", 8, 1024).unwrap(), "2,2,4");
        assert!(check_plan("2:256M,2:256M,4", 8, 1024).is_ok());
        assert!(check_plan("1,3", 4, 512).is_ok());
    }

    #[test]
    fn bad_plans_are_usage_errors() {
        for (plan, smp, mem) in [
            ("2,2,4", 4, 1024),  // more CPUs than --smp
            ("2,,2", 4, 1024),   // empty partition
            ("0", 4, 1024),      // empty partition
            ("1:2G,1", 2, 1024), // more memory than --memory
            ("two", 2, 1024),    // unparsable
            ("", 2, 1024),       // empty
        ] {
            match check_plan(plan, smp, mem) {
                Err(Error::Usage(msg)) => assert!(msg.contains("--partitions"), "{msg}"),
                other => panic!("{plan}: expected a usage error, got {other:?}"),
            }
        }
    }
}
