//! `cargo xtask image`: the BIOS and UEFI disk images, for QEMU or a USB stick.

use std::path::PathBuf;

use crate::Result;
use crate::args::Args;
use crate::build::{self, Flavor};
use crate::setup::{self, root};

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(argv, &["release", "debug"], &["out"], 0)?;
    let release = !args.flag("debug");
    let out = args
        .value("out")
        .map_or_else(|| root().join("target/images"), PathBuf::from);
    setup::ensure_toolchain()?;
    let kernel = build::kernel(release, Flavor::Run)?;
    let images = boot::build_images(&kernel, None, &out, "multikernel")?;
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
