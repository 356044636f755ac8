//! Builds bootable disk images of the kernel with the `bootloader` crate.
//!
//! One kernel ELF becomes two images: a BIOS image (MBR, for legacy boot and QEMU's default
//! firmware) and a UEFI image (GPT with an EFI system partition, for OVMF and most real machines
//! bought in the last decade). Both carry the same kernel; a ramdisk, when given, rides along and
//! reaches the kernel through `BootInfo::ramdisk_addr`.

use std::path::{Path, PathBuf};

use bootloader::DiskImageBuilder;

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
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    if let Some(ramdisk) = ramdisk {
        builder.set_ramdisk(ramdisk.to_path_buf());
    }
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
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut builder = DiskImageBuilder::new(kernel.to_path_buf());
    if let Some(ramdisk) = ramdisk {
        builder.set_ramdisk(ramdisk.to_path_buf());
    }
    let result = match firmware {
        Firmware::Bios => builder.create_bios_image(out),
        Firmware::Uefi => builder.create_uefi_image(out),
    };
    result.map_err(|e| format!("building the {} image failed: {e:#}", firmware.name()))?;
    Ok(out.to_path_buf())
}
