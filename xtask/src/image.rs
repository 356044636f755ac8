//! `cargo xtask image`: the BIOS and UEFI disk images, for QEMU or a USB stick.

use std::path::PathBuf;

use crate::args::Args;
use crate::build::{self, Flavor};
use crate::setup::{self, root};
use crate::{Error, Result};

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(
        argv,
        &["release", "debug"],
        &["out", "partitions", "init"],
        0,
    )?;
    let release = crate::args::release_profile(&args)?;
    let out = args
        .value("out")
        .map_or_else(|| root().join("target/images"), PathBuf::from);
    // A partition plan rides along in the images' ramdisk (as the file `plan`, next to the
    // programs): real machines have no fw_cfg. Only its syntax can be checked here; the kernel
    // checks it against the machine at boot and falls back to the default plan, with the
    // reason on the console, if it does not fit.
    let plan = match args.value("partitions") {
        None => None,
        Some(text) => {
            let spec = mk_plan::PlanSpec::parse(text)
                .map_err(|e| Error::Usage(format!("--partitions '{text}': {e}")))?;
            println!("partition plan {spec} (in the images' ramdisk)");
            Some(spec.to_string())
        }
    };
    let inits = crate::ramdisk::parse_inits(args.values("init"))?;
    setup::ensure_toolchain()?;
    let kernel = build::kernel(release, Flavor::Run)?;
    let ramdisk = build::ramdisk(plan.as_deref(), &inits)?;
    for init in &inits {
        println!(
            "instance {} starts '{}' (etc/init.{} in the images' ramdisk)",
            init.instance, init.command, init.instance
        );
    }
    let images = boot::build_images(&kernel, Some(&ramdisk), &out, "multikernel")?;
    for (name, path) in [("BIOS", &images.bios), ("UEFI", &images.uefi)] {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("{name} image: {} ({} KiB)", path.display(), size / 1024);
    }
    println!(
        "\nTo boot a real machine, write one image to a USB stick (this erases the stick):\n  \
         cargo xtask flash /dev/sdX            # BIOS (legacy/CSM) image\n  \
         cargo xtask flash /dev/sdX --uefi     # UEFI image (most machines since ~2012)\n\
         or by hand: sudo dd if={} of=/dev/sdX bs=4M conv=fsync status=progress\n\
         Then boot the machine from the stick. With no serial port, the log is on the screen.",
        images.uefi.display()
    );
    Ok(())
}
