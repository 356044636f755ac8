//! `cargo xtask flash DEVICE`: writes a disk image to a USB stick, carefully.
//!
//! Refuses anything that is not a whole, removable block device, or that has a mounted
//! partition; shows the model and size and asks before writing; syncs, then reads the image back
//! and compares.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use boot::Firmware;

use crate::args::Args;
use crate::build::{self, Flavor};
use crate::{Error, Result};

/// What sysfs says about a block device.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub model: String,
    pub bytes: u64,
}

/// Checks that `device` (e.g. `/dev/sdb`) is a whole removable disk with nothing mounted.
/// `sys` is the sysfs root and `mounts` the text of /proc/mounts (parameters for the tests).
pub fn check_device(
    device: &Path,
    sys: &Path,
    mounts: &str,
) -> std::result::Result<DeviceInfo, String> {
    let name = device
        .strip_prefix("/dev")
        .ok()
        .and_then(|p| p.to_str())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            format!(
                "{}: give a device under /dev, e.g. /dev/sdb",
                device.display()
            )
        })?
        .to_string();
    let dir = sys.join("class/block").join(&name);
    if !dir.exists() {
        return Err(format!("{}: not a block device", device.display()));
    }
    if dir.join("partition").exists() {
        return Err(format!(
            "{}: is a partition; give the whole device (e.g. /dev/sdb, not /dev/sdb1)",
            device.display()
        ));
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
    if read("removable").ok().as_deref() != Some("1") {
        return Err(format!(
            "{}: not a removable device; refusing to overwrite what may be a system disk",
            device.display()
        ));
    }
    let mounted: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|dev| {
            dev.strip_prefix("/dev/").is_some_and(|d| {
                d == name
                    || (d.starts_with(&name)
                        && d[name.len()..]
                            .trim_start_matches('p')
                            .chars()
                            .all(|c| c.is_ascii_digit()))
            })
        })
        .collect();
    if !mounted.is_empty() {
        return Err(format!(
            "{}: mounted ({}); unmount it first",
            device.display(),
            mounted.join(", ")
        ));
    }
    let sectors: u64 = read("size")
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: cannot read its size", device.display()))?;
    let model = read("device/model").unwrap_or_else(|_| "(unknown model)".into());
    Ok(DeviceInfo {
        name,
        model,
        bytes: sectors * 512,
    })
}

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(argv, &["uefi", "yes"], &["init"], 1)?;
    let inits = crate::ramdisk::parse_inits(args.values("init"))?;
    let device = args
        .positionals
        .first()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Usage("flash needs a DEVICE, e.g. /dev/sdb".into()))?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let info = check_device(&device, Path::new("/sys"), &mounts)?;
    let firmware = if args.flag("uefi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let kernel = build::kernel(true, Flavor::Run)?;
    let ramdisk = build::ramdisk(None, &inits)?;
    let image_path = build::image(&kernel, &ramdisk, firmware, Flavor::Run)?;
    let image = std::fs::read(&image_path).map_err(|e| format!("reading image: {e}"))?;
    if image.len() as u64 > info.bytes {
        return Err(format!(
            "the image ({} bytes) does not fit on {}",
            image.len(),
            device.display()
        )
        .into());
    }
    println!(
        "{}: {}, {:.1} GiB. Writing the {} image ({} KiB) ERASES it.",
        device.display(),
        info.model,
        info.bytes as f64 / (1u64 << 30) as f64,
        firmware.name(),
        image.len() / 1024
    );
    if !args.flag("yes") {
        print!("Type 'yes' to continue: ");
        std::io::stdout().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        if answer.trim() != "yes" {
            return Err("not confirmed; nothing written".into());
        }
    }
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .map_err(|e| format!("opening {}: {e} (are you root?)", device.display()))?;
    dev.write_all(&image).map_err(|e| format!("writing: {e}"))?;
    dev.sync_all().map_err(|e| format!("syncing: {e}"))?;
    dev.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; image.len()];
    dev.read_exact(&mut back)
        .map_err(|e| format!("reading back: {e}"))?;
    if back != image {
        return Err("verification failed: what was read back differs from the image".into());
    }
    println!("written, synced and verified. Boot the machine from the stick.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(name: &str, removable: &str, partition: bool) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let dev = d.path().join("class/block").join(name);
        std::fs::create_dir_all(dev.join("device")).unwrap();
        std::fs::write(dev.join("removable"), removable).unwrap();
        std::fs::write(dev.join("size"), "7864320\n").unwrap();
        std::fs::write(dev.join("device/model"), "Flash Disk  \n").unwrap();
        if partition {
            std::fs::write(dev.join("partition"), "1").unwrap();
        }
        d
    }

    #[test]
    fn accepts_an_unmounted_removable_disk() {
        let sys = fake_sys("sdb", "1", false);
        let info = check_device(
            Path::new("/dev/sdb"),
            sys.path(),
            "/dev/sda1 / ext4 rw 0 0\n",
        )
        .unwrap();
        assert_eq!(info.model, "Flash Disk");
        assert_eq!(info.bytes, 7864320 * 512);
    }

    #[test]
    fn refuses_the_wrong_devices() {
        let fixed = fake_sys("sda", "0", false);
        assert!(
            check_device(Path::new("/dev/sda"), fixed.path(), "")
                .unwrap_err()
                .contains("not a removable")
        );
        let part = fake_sys("sdb1", "1", true);
        assert!(
            check_device(Path::new("/dev/sdb1"), part.path(), "")
                .unwrap_err()
                .contains("partition")
        );
        let stick = fake_sys("sdb", "1", false);
        assert!(
            check_device(
                Path::new("/dev/sdb"),
                stick.path(),
                "/dev/sdb1 /media vfat rw 0 0\n"
            )
            .unwrap_err()
            .contains("mounted")
        );
        assert!(
            check_device(Path::new("/dev/sdc"), stick.path(), "")
                .unwrap_err()
                .contains("not a block device")
        );
        assert!(check_device(Path::new("/tmp/x"), stick.path(), "").is_err());
        // A mount of /dev/sdbz (another device) does not block /dev/sdb.
        assert!(
            check_device(
                Path::new("/dev/sdb"),
                stick.path(),
                "/dev/sdbz / ext4 rw 0 0\n"
            )
            .is_ok()
        );
    }

    /// A throw-away directory for the fake sysfs trees.
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(PathBuf);
        static N: AtomicU32 = AtomicU32::new(0);

        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "xtask-flash-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
