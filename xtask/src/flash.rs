//! `cargo xtask flash DEVICE`: writes a disk image to a USB stick, carefully.
//!
//! Refuses anything that is not a whole, removable block device, that has a mounted partition,
//! a partition in use as swap, or holders (device-mapper, md RAID, LVM, LUKS: any block device
//! stacked on it or on one of its partitions). Checks once by name before the (long) build, so
//! a wrong device fails fast; then opens the device **exclusively** (`O_EXCL` on a Linux block
//! device: refused while anything mounts, swaps on or holds it, and nothing can claim it while
//! we hold it), checks again the device behind the opened descriptor (by its device number,
//! not its name: the name may have been re-enumerated meanwhile), shows its model and size,
//! asks, and writes, syncs and reads back through that same descriptor.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
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
    /// Device number (major, minor), from sysfs's `dev`.
    pub dev: (u32, u32),
}

/// What else the host has in use, as text of /proc/mounts and /proc/swaps (parameters for the
/// tests, like the sysfs root).
pub struct InUse<'a> {
    pub mounts: &'a str,
    pub swaps: &'a str,
}

/// Checks that `device` (e.g. `/dev/sdb`) names a whole removable disk with nothing mounted,
/// no swap and no holders. `sys` is the sysfs root.
pub fn check_device(
    device: &Path,
    sys: &Path,
    in_use: &InUse<'_>,
) -> std::result::Result<DeviceInfo, String> {
    let name = device_name(device)?;
    let dir = sys.join("class/block").join(&name);
    if !dir.exists() {
        return Err(format!(
            "{}: not a block device (no {}); give a disk listed by `lsblk -d`",
            device.display(),
            dir.display()
        ));
    }
    check_dir(device, &name, &dir, in_use)
}

/// Checks the device with number `dev` (the one an open descriptor refers to), found in sysfs
/// by that number: the same checks as [`check_device`], and that the kernel's name for it is
/// the one `device` gave.
pub fn check_opened(
    device: &Path,
    dev: (u32, u32),
    sys: &Path,
    in_use: &InUse<'_>,
) -> std::result::Result<DeviceInfo, String> {
    let (major, minor) = dev;
    let name = device_name(device)?;
    let dir = sys.join(format!("dev/block/{major}:{minor}"));
    let real = std::fs::canonicalize(&dir).map_err(|e| {
        format!(
            "{}: the opened device {major}:{minor} is not in sysfs ({}: {e}); it was removed \
             meanwhile? Plug it in again and run flash again; nothing written",
            device.display(),
            dir.display()
        )
    })?;
    let found = real.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    if found != name {
        return Err(format!(
            "{}: the node opened device {major}:{minor}, which the kernel calls {found}, not \
             {name} (re-enumerated, or a renamed node); check with `lsblk` and give \
             /dev/{found} if that is the stick; nothing written",
            device.display()
        ));
    }
    let info = check_dir(device, &name, &real, in_use)?;
    if info.dev != dev {
        return Err(format!(
            "{}: sysfs says {name} is {}:{}, but the opened node is {major}:{minor}; run flash \
             again; nothing written",
            device.display(),
            info.dev.0,
            info.dev.1
        ));
    }
    Ok(info)
}

/// `/dev/NAME` → `NAME`.
fn device_name(device: &Path) -> std::result::Result<String, String> {
    device
        .strip_prefix("/dev")
        .ok()
        .and_then(|p| p.to_str())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{}: give a device under /dev, e.g. /dev/sdb",
                device.display()
            )
        })
}

/// The devices in the first column of a table like `/proc/mounts` or `/proc/swaps` that are
/// disk `name` or one of its partitions.
fn listed<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|dev| is_disk_or_partition(dev, name))
        .collect()
}

/// Whether `/dev/...` path `dev` is disk `name` or one of its partitions (`sdb1`, `nvme0n1p2`).
fn is_disk_or_partition(dev: &str, name: &str) -> bool {
    dev.strip_prefix("/dev/").is_some_and(|d| {
        d == name
            || (d.starts_with(name)
                && d[name.len()..]
                    .trim_start_matches('p')
                    .chars()
                    .all(|c| c.is_ascii_digit()))
    })
}

/// The checks on the sysfs directory `dir` of disk `name`.
fn check_dir(
    device: &Path,
    name: &str,
    dir: &Path,
    in_use: &InUse<'_>,
) -> std::result::Result<DeviceInfo, String> {
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
    let mounted = listed(in_use.mounts, name);
    if !mounted.is_empty() {
        return Err(format!(
            "{}: mounted ({}); unmount it first",
            device.display(),
            mounted.join(", ")
        ));
    }
    let swapping = listed(in_use.swaps, name);
    if !swapping.is_empty() {
        return Err(format!(
            "{}: in use as swap ({}); run `swapoff {}` first",
            device.display(),
            swapping.join(", "),
            swapping.join(" ")
        ));
    }
    let held = holders(dir, name);
    if !held.is_empty() {
        return Err(format!(
            "{}: in use by stacked block devices: {}; release them first (LVM: `vgchange -an \
             VG`; LUKS: `cryptsetup close NAME`; md RAID: `mdadm --stop /dev/mdN`; other \
             device-mapper targets: `dmsetup remove NAME`), then check `lsblk {}` shows \
             nothing on it",
            device.display(),
            held.join("; "),
            device.display()
        ));
    }
    let sectors: u64 = read("size")
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: cannot read its size from sysfs", device.display()))?;
    let dev = read("dev")
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .ok_or_else(|| {
            format!(
                "{}: cannot read its device number from sysfs ({}/dev)",
                device.display(),
                dir.display()
            )
        })?;
    let model = read("device/model").unwrap_or_else(|_| "(unknown model)".into());
    Ok(DeviceInfo {
        name: name.to_string(),
        model,
        bytes: sectors * 512,
        dev,
    })
}

/// The holders of disk `name` (sysfs dir `dir`) and of its partitions (subdirectories with a
/// `partition` file), each as "PART held by HOLDER (what it is)".
fn holders(dir: &Path, name: &str) -> Vec<String> {
    let mut parts = vec![(name.to_string(), dir.to_path_buf())];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut subs: Vec<_> = entries
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
            .collect();
        subs.sort();
        parts.extend(subs);
    }
    let mut found = Vec::new();
    for (part, path) in parts {
        let Ok(entries) = std::fs::read_dir(path.join("holders")) else {
            continue;
        };
        let mut hs: Vec<_> = entries.flatten().collect();
        hs.sort_by_key(|e| e.file_name());
        for h in hs {
            let holder = h.file_name().to_string_lossy().into_owned();
            let what = if holder.starts_with("dm-") {
                let dm = std::fs::read_to_string(h.path().join("dm/name"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                format!("device-mapper '{dm}': LVM, LUKS or another mapping")
            } else if holder.starts_with("md") {
                "md software RAID".to_string()
            } else {
                "a stacked block device".to_string()
            };
            found.push(format!("{part} held by {holder} ({what})"));
        }
    }
    found
}

/// Opens `device` for reading and writing, exclusively (`O_EXCL` on a block device: Linux
/// refuses it with EBUSY while the device or a partition is mounted, swapped on or held, and
/// refuses those to others while we hold it). Returns the file and its device number.
pub fn open_exclusive(device: &Path) -> std::result::Result<(File, (u32, u32)), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => format!(
                "{}: busy: the kernel has it in use (mounted, swap, or held by device-mapper, \
                 md or LVM), or another program opened it exclusively; see `lsblk {}` and \
                 release it; nothing written",
                device.display(),
                device.display()
            ),
            Some(libc::EACCES | libc::EPERM) => {
                format!("opening {}: {e} (are you root?)", device.display())
            }
            _ => format!("opening {}: {e}", device.display()),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: fstat: {e}", device.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!(
            "{}: opened, but it is not a block device; nothing written",
            device.display()
        ));
    }
    let rdev = meta.rdev();
    Ok((file, (libc::major(rdev), libc::minor(rdev))))
}

fn read_in_use() -> (String, String) {
    (
        std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
        std::fs::read_to_string("/proc/swaps").unwrap_or_default(),
    )
}

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(argv, &["uefi", "yes"], &["init"], 1)?;
    let inits = crate::ramdisk::parse_inits(args.values("init"))?;
    let device = args
        .positionals
        .first()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Usage("flash needs a DEVICE, e.g. /dev/sdb".into()))?;
    let sys = Path::new("/sys");
    // A first check by name, so a wrong device fails before the build.
    let (mounts, swaps) = read_in_use();
    check_device(
        &device,
        sys,
        &InUse {
            mounts: &mounts,
            swaps: &swaps,
        },
    )?;
    let firmware = if args.flag("uefi") {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let kernel = build::kernel(true, Flavor::Run)?;
    let ramdisk = build::ramdisk(None, &inits)?;
    let image_path = build::image(&kernel, &ramdisk, firmware, Flavor::Run)?;
    let image = std::fs::read(&image_path).map_err(|e| format!("reading image: {e}"))?;
    // From here on everything refers to the opened descriptor, held until the end.
    let (mut dev, number) = open_exclusive(&device)?;
    let (mounts, swaps) = read_in_use();
    let info = check_opened(
        &device,
        number,
        sys,
        &InUse {
            mounts: &mounts,
            swaps: &swaps,
        },
    )?;
    if image.len() as u64 > info.bytes {
        return Err(format!(
            "the image ({} bytes) does not fit on {}",
            image.len(),
            device.display()
        )
        .into());
    }
    println!(
        "{} ({}:{}): {}, {:.1} GiB. Writing the {} image ({} KiB) ERASES it.",
        device.display(),
        info.dev.0,
        info.dev.1,
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

    const NOTHING: InUse<'static> = InUse {
        mounts: "",
        swaps: "",
    };

    fn fake_sys(name: &str, removable: &str, partition: bool) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let dev = d.path().join("class/block").join(name);
        std::fs::create_dir_all(dev.join("device")).unwrap();
        std::fs::write(dev.join("removable"), removable).unwrap();
        std::fs::write(dev.join("size"), "7864320\n").unwrap();
        std::fs::write(dev.join("dev"), "8:16\n").unwrap();
        std::fs::write(dev.join("device/model"), "Flash Disk  \n").unwrap();
        if partition {
            std::fs::write(dev.join("partition"), "1").unwrap();
        }
        d
    }

    /// Partition `part` of disk `disk`, as sysfs nests it, with an (empty) holders directory.
    fn add_partition(sys: &Path, disk: &str, part: &str) -> PathBuf {
        let p = sys.join("class/block").join(disk).join(part);
        std::fs::create_dir_all(p.join("holders")).unwrap();
        std::fs::write(p.join("partition"), "1").unwrap();
        p
    }

    /// Holder `holder` of the block device at `dir` (a device-mapper one gets `dm/name`).
    fn add_holder(dir: &Path, holder: &str, dm_name: Option<&str>) {
        let h = dir.join("holders").join(holder);
        std::fs::create_dir_all(&h).unwrap();
        if let Some(n) = dm_name {
            std::fs::create_dir_all(h.join("dm")).unwrap();
            std::fs::write(h.join("dm/name"), format!("{n}\n")).unwrap();
        }
    }

    /// sysfs's `dev/block/MAJ:MIN` link to the device's directory.
    fn add_dev_link(sys: &Path, number: &str, name: &str) {
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(
            sys.join("class/block").join(name),
            sys.join("dev/block").join(number),
        )
        .unwrap();
    }

    fn sdb() -> &'static Path {
        Path::new("/dev/sdb")
    }

    #[test]
    fn accepts_an_unmounted_removable_disk() {
        let sys = fake_sys("sdb", "1", false);
        let disk = sys.path().join("class/block/sdb");
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        add_partition(sys.path(), "sdb", "sdb1");
        let info = check_device(
            sdb(),
            sys.path(),
            &InUse {
                mounts: "/dev/sda1 / ext4 rw 0 0\n",
                swaps: "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 1048572 0 -2\n",
            },
        )
        .unwrap();
        assert_eq!(info.model, "Flash Disk");
        assert_eq!(info.bytes, 7864320 * 512);
        assert_eq!(info.dev, (8, 16));
    }

    #[test]
    fn refuses_the_wrong_devices() {
        let fixed = fake_sys("sda", "0", false);
        assert!(
            check_device(Path::new("/dev/sda"), fixed.path(), &NOTHING)
                .unwrap_err()
                .contains("not a removable")
        );
        let part = fake_sys("sdb1", "1", true);
        assert!(
            check_device(Path::new("/dev/sdb1"), part.path(), &NOTHING)
                .unwrap_err()
                .contains("partition")
        );
        let stick = fake_sys("sdb", "1", false);
        assert!(
            check_device(
                sdb(),
                stick.path(),
                &InUse {
                    mounts: "/dev/sdb1 /media vfat rw 0 0\n",
                    swaps: ""
                }
            )
            .unwrap_err()
            .contains("mounted")
        );
        assert!(
            check_device(Path::new("/dev/sdc"), stick.path(), &NOTHING)
                .unwrap_err()
                .contains("not a block device")
        );
        assert!(check_device(Path::new("/tmp/x"), stick.path(), &NOTHING).is_err());
        // A mount of /dev/sdbz (another device) does not block /dev/sdb.
        assert!(
            check_device(
                sdb(),
                stick.path(),
                &InUse {
                    mounts: "/dev/sdbz / ext4 rw 0 0\n",
                    swaps: ""
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_a_disk_with_swap_on_it() {
        let stick = fake_sys("sdb", "1", false);
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        let swaps = format!(
            "{header}/dev/sdb2                               partition\t1048572\t\t0\t\t-2\n"
        );
        let e = check_device(
            sdb(),
            stick.path(),
            &InUse {
                mounts: "",
                swaps: &swaps,
            },
        )
        .unwrap_err();
        assert!(
            e.contains("in use as swap (/dev/sdb2)") && e.contains("swapoff /dev/sdb2"),
            "{e}"
        );
        // The whole disk as swap, too.
        let swaps = format!("{header}/dev/sdb partition 1048572 0 -2\n");
        let e = check_device(
            sdb(),
            stick.path(),
            &InUse {
                mounts: "",
                swaps: &swaps,
            },
        )
        .unwrap_err();
        assert!(e.contains("swapoff /dev/sdb"), "{e}");
        // Swap on another disk, or a swap file, is not this disk's business.
        let swaps = format!("{header}/dev/sdbz partition 1 0 -2\n/swapfile file 1 0 -3\n");
        assert!(
            check_device(
                sdb(),
                stick.path(),
                &InUse {
                    mounts: "",
                    swaps: &swaps
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_a_disk_with_holders() {
        // LVM / LUKS on the whole disk.
        let stick = fake_sys("sdb", "1", false);
        let disk = stick.path().join("class/block/sdb");
        add_holder(&disk, "dm-0", Some("vg0-data"));
        let e = check_device(sdb(), stick.path(), &NOTHING).unwrap_err();
        assert!(
            e.contains("sdb held by dm-0 (device-mapper 'vg0-data'") && e.contains("vgchange -an"),
            "{e}"
        );
        // md RAID on a partition, the disk itself free.
        let stick = fake_sys("sdb", "1", false);
        std::fs::create_dir_all(stick.path().join("class/block/sdb/holders")).unwrap();
        add_partition(stick.path(), "sdb", "sdb1");
        let p2 = add_partition(stick.path(), "sdb", "sdb2");
        add_holder(&p2, "md127", None);
        let e = check_device(sdb(), stick.path(), &NOTHING).unwrap_err();
        assert!(
            e.contains("sdb2 held by md127 (md software RAID)") && e.contains("mdadm --stop"),
            "{e}"
        );
        assert!(!e.contains("sdb1 held"), "{e}");
        // Something else stacked on a partition.
        let stick = fake_sys("sdb", "1", false);
        let p1 = add_partition(stick.path(), "sdb", "sdb1");
        add_holder(&p1, "bcache0", None);
        let e = check_device(sdb(), stick.path(), &NOTHING).unwrap_err();
        assert!(
            e.contains("sdb1 held by bcache0 (a stacked block device)"),
            "{e}"
        );
    }

    #[test]
    fn checks_the_opened_device_by_its_number() {
        let sys = fake_sys("sdb", "1", false);
        add_dev_link(sys.path(), "8:16", "sdb");
        let info = check_opened(sdb(), (8, 16), sys.path(), &NOTHING).unwrap();
        assert_eq!((info.name.as_str(), info.dev), ("sdb", (8, 16)));
        // The node now opens another device than the one sysfs calls sdb (re-enumerated).
        let e = check_opened(sdb(), (8, 32), sys.path(), &NOTHING).unwrap_err();
        assert!(e.contains("8:32 is not in sysfs"), "{e}");
        std::fs::create_dir_all(sys.path().join("class/block/sdc")).unwrap();
        add_dev_link(sys.path(), "8:32", "sdc");
        let e = check_opened(sdb(), (8, 32), sys.path(), &NOTHING).unwrap_err();
        assert!(
            e.contains("which the kernel calls sdc, not sdb") && e.contains("/dev/sdc"),
            "{e}"
        );
        // sysfs's own number for the name disagrees with the link.
        add_dev_link(sys.path(), "8:48", "sdb");
        let e = check_opened(sdb(), (8, 48), sys.path(), &NOTHING).unwrap_err();
        assert!(e.contains("sysfs says sdb is 8:16"), "{e}");
        // And every by-name refusal applies to the opened device too.
        add_holder(&sys.path().join("class/block/sdb"), "dm-3", Some("luks-1"));
        let e = check_opened(sdb(), (8, 16), sys.path(), &NOTHING).unwrap_err();
        assert!(e.contains("sdb held by dm-3"), "{e}");
    }

    #[test]
    fn an_exclusive_open_refuses_what_is_not_a_block_device() {
        let d = tempdir::Dir::new();
        let f = d.path().join("image");
        std::fs::write(&f, b"not a disk").unwrap();
        let e = open_exclusive(&f).unwrap_err();
        assert!(e.contains("not a block device"), "{e}");
        let e = open_exclusive(&d.path().join("absent")).unwrap_err();
        assert!(e.contains("opening") && e.contains("absent"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"not a disk");
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
