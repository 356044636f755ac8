//! Builds bootable disk images of the kernel with the `bootloader` crate.
//!
//! One kernel ELF becomes two images: a BIOS image (MBR, for legacy boot and QEMU's default
//! firmware) and a UEFI image (GPT with an EFI system partition, for OVMF and most real machines
//! bought in the last decade). Both carry the same kernel; a ramdisk, when given, rides along and
//! reaches the kernel through `BootInfo::ramdisk_addr`.

use std::path::{Path, PathBuf};

use bootloader::{BootConfig, DiskImageBuilder};
use bootloader_boot_config::LevelFilter;

/// How the images are configured: the bootloader logs only warnings and errors. Its default
/// (every step at INFO, on serial and screen) costs tens of seconds under nested KVM, where each
/// serial byte is a slow exit to the hypervisor.
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    config.log_level = LevelFilter::Warn;
    config
}

/// Writes a copy of `kernel` without debug info next to `out` and returns its path.
///
/// The BIOS stages load the kernel through real-mode disk reads, slow under virtualisation and
/// proportional to the file size; debug info is 95 % of a release kernel. The unstripped ELF
/// stays where cargo put it, for gdb.
fn stripped_copy(kernel: &Path, out: &Path) -> Result<PathBuf, String> {
    let stripped = out.with_extension("kernel.elf");
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running rustc --print sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let host = "x86_64-unknown-linux-gnu";
    let objcopy = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-objcopy");
    if !objcopy.exists() {
        return Err(format!(
            "{} not found: the llvm-tools-preview component is missing (rustup component add llvm-tools-preview)",
            objcopy.display()
        ));
    }
    let status = std::process::Command::new(&objcopy)
        .arg("--strip-debug")
        .arg(kernel)
        .arg(&stripped)
        .status()
        .map_err(|e| format!("running llvm-objcopy: {e}"))?;
    if !status.success() {
        return Err(format!("llvm-objcopy failed on {}", kernel.display()));
    }
    Ok(stripped)
}

fn builder(kernel: &Path, ramdisk: Option<&Path>, out: &Path) -> Result<DiskImageBuilder, String> {
    let mut builder = DiskImageBuilder::new(stripped_copy(kernel, out)?);
    builder.set_boot_config(&boot_config());
    if let Some(ramdisk) = ramdisk {
        builder.set_ramdisk(ramdisk.to_path_buf());
    }
    Ok(builder)
}

/// The two images built from one kernel.
#[derive(Debug, Clone)]
pub struct Images {
    pub bios: PathBuf,
    pub uefi: PathBuf,
}

/// Which firmware an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// Writes `<out_dir>/<stem>-bios.img` and `<out_dir>/<stem>-uefi.img` for `kernel`, with
/// `ramdisk` (if any) packed in.
pub fn build_images(
    kernel: &Path,
    ramdisk: Option<&Path>,
    out_dir: &Path,
    stem: &str,
) -> Result<Images, String> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let builder = builder(kernel, ramdisk, &out_dir.join(stem))?;
    let images = Images {
        bios: out_dir.join(format!("{stem}-bios.img")),
        uefi: out_dir.join(format!("{stem}-uefi.img")),
    };
    builder
        .create_bios_image(&images.bios)
        .map_err(|e| format!("building the BIOS image failed: {e:#}"))?;
    builder
        .create_uefi_image(&images.uefi)
        .map_err(|e| format!("building the UEFI image failed: {e:#}"))?;
    Ok(images)
}

/// Writes only the image for `firmware` (what `cargo xtask run` and the tests need).
pub fn build_image(
    kernel: &Path,
    ramdisk: Option<&Path>,
    firmware: Firmware,
    out: &Path,
) -> Result<PathBuf, String> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let builder = builder(kernel, ramdisk, out)?;
    let result = match firmware {
        Firmware::Bios => builder.create_bios_image(out),
        Firmware::Uefi => builder.create_uefi_image(out),
    };
    result.map_err(|e| format!("building the {} image failed: {e:#}", firmware.name()))?;
    Ok(out.to_path_buf())
}
