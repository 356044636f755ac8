//! Prerequisites on a fresh machine: the pinned toolchain with its components and target
//! (rustup may have auto-install turned off, as on our CI), QEMU and OVMF. What can be installed
//! is installed; otherwise we stop with the exact command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;

/// The project's root (the workspace directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// What `rust-toolchain.toml` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Toolchain {
    pub channel: String,
    pub components: Vec<String>,
    pub targets: Vec<String>,
}

/// Reads the fields we need from `rust-toolchain.toml` (a flat table of strings and string
/// arrays; no TOML library needed for that).
pub fn parse_toolchain_file(text: &str) -> std::result::Result<Toolchain, String> {
    let mut channel = None;
    let mut components = Vec::new();
    let mut targets = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let strings: Vec<String> = value
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        match key.trim() {
            "channel" => channel = strings.into_iter().next(),
            "components" => components = strings,
            "targets" => targets = strings,
            _ => {}
        }
    }
    Ok(Toolchain {
        channel: channel.ok_or("rust-toolchain.toml names no channel")?,
        components,
        targets,
    })
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure the pinned toolchain has its components and target, installing what is missing.
pub fn ensure_toolchain() -> Result<()> {
    let text = std::fs::read_to_string(root().join("rust-toolchain.toml"))
        .map_err(|e| format!("reading rust-toolchain.toml: {e}"))?;
    let tc = parse_toolchain_file(&text)?;
    let install_cmd = format!(
        "rustup toolchain install {} --profile minimal {} {}",
        tc.channel,
        tc.components
            .iter()
            .map(|c| format!("-c {c}"))
            .collect::<Vec<_>>()
            .join(" "),
        tc.targets
            .iter()
            .map(|t| format!("-t {t}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    if output(Command::new("rustup").arg("--version")).is_none() {
        return Err(format!(
            "rustup not found; install it (https://rustup.rs), then run: {install_cmd}"
        )
        .into());
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &tc.channel,
    ]))
    .unwrap_or_default();
    let targets = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        &tc.channel,
    ]))
    .unwrap_or_default();
    // rustup lists components under their current names: `llvm-tools-preview` is installed as
    // `llvm-tools-<host>`.
    let has = |list: &str, name: &str| {
        let name = name.strip_suffix("-preview").unwrap_or(name);
        list.lines().any(|l| l.trim().starts_with(name))
    };
    let missing: Vec<&String> = tc
        .components
        .iter()
        .filter(|c| !has(&components, c))
        .chain(tc.targets.iter().filter(|t| !has(&targets, t)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {missing:?} for {}", tc.channel);
    let status = Command::new("sh")
        .args(["-c", &install_cmd])
        .status()
        .map_err(|e| format!("running rustup: {e}"))?;
    if !status.success() {
        return Err(format!("'{install_cmd}' failed; run it by hand and retry").into());
    }
    Ok(())
}

/// QEMU's firmware for UEFI boots, where Debian/Ubuntu's `ovmf` package puts it.
pub fn find_ovmf() -> Option<PathBuf> {
    [
        "/usr/share/ovmf/OVMF.fd",
        "/usr/share/OVMF/OVMF.fd",
        "/usr/share/qemu/OVMF.fd",
        "/usr/share/edk2/ovmf/OVMF.fd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn have_qemu() -> bool {
    output(Command::new("qemu-system-x86_64").arg("--version")).is_some()
}

/// Makes sure QEMU (and OVMF when `uefi`) are present; installs them with apt-get when we are
/// root on Debian/Ubuntu.
pub fn ensure_qemu(uefi: bool) -> Result<()> {
    let missing_qemu = !have_qemu();
    let missing_ovmf = uefi && find_ovmf().is_none();
    if !missing_qemu && !missing_ovmf {
        return Ok(());
    }
    let cmd = "apt-get install -y qemu-system-x86 ovmf";
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let is_debian = Path::new("/etc/debian_version").exists();
    if !(is_root && is_debian) {
        return Err(format!(
            "QEMU{} missing; install with: sudo {cmd} (or your system's equivalent)",
            if missing_ovmf { "/OVMF" } else { "" }
        )
        .into());
    }
    eprintln!("xtask: installing QEMU and OVMF with apt-get");
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive {cmd} -qq"),
        ])
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if !status.success() || !have_qemu() || (uefi && find_ovmf().is_none()) {
        return Err(format!("'{cmd}' did not provide QEMU/OVMF").into());
    }
    Ok(())
}

/// Whether the KVM behind `/dev/kvm` is kvm-pvm, the software nested KVM of some cloud
/// machines: under it a `syscall` from ring 3 does not enter ring 0, so user tasks cannot make
/// system calls (and OVMF fails).
pub fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Whether `/dev/kvm` exists and we may open it read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_toolchain_file() {
        let tc = parse_toolchain_file(
            "[toolchain]\n# c\nchannel = \"nightly-2026-10-20\"\ncomponents = [\"rust-src\", \"clippy\"]\ntargets = [\"x86_64-unknown-none\"]\n",
        )
        .unwrap();
        assert_eq!(tc.channel, "nightly-2026-10-20");
        assert_eq!(tc.components, vec!["rust-src", "clippy"]);
        assert_eq!(tc.targets, vec!["x86_64-unknown-none"]);
        assert!(parse_toolchain_file("[toolchain]\n").is_err());
    }

    #[test]
    fn the_real_toolchain_file_parses() {
        let text = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
        let tc = parse_toolchain_file(&text).unwrap();
        assert!(tc.targets.iter().any(|t| t == "x86_64-unknown-none"));
        assert!(tc.components.iter().any(|c| c == "rust-src"));
    }
}
