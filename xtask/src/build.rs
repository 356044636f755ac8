//! Building the kernel (for `x86_64-unknown-none`) and its disk images.

use std::path::PathBuf;
use std::process::Command;

use boot::Firmware;

use crate::Result;
use crate::setup::root;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The kernel users run.
    Run,
    /// The kernel with the in-kernel test scenarios (`qemu-tests` feature).
    Test,
}

/// Builds the kernel ELF and returns its path.
pub fn kernel(release: bool, flavor: Flavor) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args([
            "build",
            "--package",
            "kernel",
            "--target",
            "x86_64-unknown-none",
        ])
        // Kernel flags live in .cargo/config.toml; an inherited RUSTFLAGS would override them
        // and force a rebuild of everything.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if release {
        cmd.arg("--release");
    }
    if flavor == Flavor::Test {
        cmd.args(["--features", "qemu-tests"]);
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel failed".into());
    }
    let profile = if release { "release" } else { "debug" };
    Ok(root()
        .join("target/x86_64-unknown-none")
        .join(profile)
        .join("kernel"))
}

/// Builds the user programs and packs them, with `plan` and the `--init` command lines, into
/// the ramdisk archive every image carries (see `crate::ramdisk`); returns its path.
pub fn ramdisk(plan: Option<&str>, inits: &[crate::ramdisk::Init]) -> Result<PathBuf> {
    crate::ramdisk::build(plan, inits)
}

/// Builds the disk image for `firmware` from `kernel` under `target/images/`, with `ramdisk`
/// (from [`ramdisk`]) as its ramdisk.
pub fn image(
    kernel: &std::path::Path,
    ramdisk: &std::path::Path,
    firmware: Firmware,
    flavor: Flavor,
) -> Result<PathBuf> {
    let stem = match flavor {
        Flavor::Run => "multikernel",
        Flavor::Test => "multikernel-test",
    };
    let out = root()
        .join("target/images")
        .join(format!("{stem}-{}.img", firmware.name()));
    Ok(boot::build_image(kernel, Some(ramdisk), firmware, &out)?)
}
