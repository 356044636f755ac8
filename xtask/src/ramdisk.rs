//! The boot ramdisk: the user programs (`kernel/user/programs`, one per file of its `src/bin/`)
//! built for `x86_64-unknown-none`, packed with the partition plan (if any) into a ustar
//! archive that every disk image carries: `bin/<name>` for each program, `plan` for the plan.
//! The kernel reads it with `mk-ramdisk` (see `docs/user-programs.md`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Result;
use crate::setup::root;

/// The cargo profile the programs build with (small, no debug info: see the root Cargo.toml).
const PROFILE: &str = "user";

/// Builds every user program; returns each one's name and ELF path, sorted by name.
pub fn build_programs() -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "build",
            "--package",
            "mk-programs",
            "--bins",
            "--target",
            "x86_64-unknown-none",
            "--profile",
            PROFILE,
            "--message-format=json-render-diagnostics",
        ])
        // As for the kernel: target flags live in .cargo/config.toml.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err("building the user programs failed".into());
    }
    let mut programs = executables(&String::from_utf8_lossy(&out.stdout));
    programs.sort();
    if programs.is_empty() {
        return Err("building the user programs produced no program".into());
    }
    Ok(programs)
}

/// The binaries cargo reported building, from its JSON messages.
fn executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_string();
            let path = PathBuf::from(m["executable"].as_str()?);
            Some((name, path))
        })
        .collect()
}

/// Packs `programs` (name, ELF bytes) and `plan` into a ramdisk archive. Refuses a name the
/// kernel could not look up and a file its loader would not take (it must parse as a static
/// PIE, relocations included, with `mk-elf`).
pub fn pack(programs: &[(String, Vec<u8>)], plan: Option<&str>) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, elf) in programs {
        if !mk_ramdisk::valid_name(name) {
            return Err(format!("user program name '{name}' is not a valid program name").into());
        }
        let parsed = mk_elf::Elf::parse(elf)
            .map_err(|e| format!("user program {name} is not an ELF the kernel loads: {e:?}"))?;
        parsed
            .relocations()
            .map_err(|e| format!("user program {name}: bad relocations: {e:?}"))?;
        append(
            &mut tar,
            &format!("{}{name}", mk_ramdisk::PROGRAM_DIR),
            elf,
            0o755,
        )?;
    }
    if let Some(plan) = plan {
        append(
            &mut tar,
            mk_ramdisk::PLAN_PATH,
            format!("{plan}\n").as_bytes(),
            0o644,
        )?;
    }
    Ok(tar
        .into_inner()
        .map_err(|e| format!("finishing the ramdisk archive: {e}"))?)
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0); // the same inputs give the same archive
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .map_err(|e| format!("adding {path} to the ramdisk archive: {e}"))?;
    Ok(())
}

/// Builds the programs and writes the ramdisk archive, with `plan` if given, under
/// `target/images/`; returns its path.
pub fn build(plan: Option<&str>) -> Result<PathBuf> {
    let programs = build_programs()?
        .into_iter()
        .map(|(name, path)| {
            std::fs::read(&path)
                .map(|bytes| (name, bytes))
                .map_err(|e| format!("reading {}: {e}", path.display()))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let archive = pack(&programs, plan)?;
    let dir = root().join("target/images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(if plan.is_some() {
        "ramdisk-plan.tar"
    } else {
        "ramdisk.tar"
    });
    write_if_changed(&path, &archive)?;
    Ok(path)
}

/// Writes `bytes` to `path` unless it already holds them.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest static PIE mk-elf takes: one R+X load segment holding the entry point.
    fn tiny_elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x100u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        f[ph + 32..ph + 40].copy_from_slice(&0x1000u64.to_le_bytes()); // filesz
        f[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes()); // memsz
        f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
        f
    }

    #[test]
    fn packed_programs_and_plan_are_found_by_the_kernels_reader() {
        let elf = tiny_elf();
        assert!(mk_elf::Elf::parse(&elf).is_ok(), "the test ELF must parse");
        let programs = vec![
            ("hello".to_string(), elf.clone()),
            ("spin".into(), elf.clone()),
        ];
        let bytes = pack(&programs, Some("1,3")).unwrap();
        let disk = mk_ramdisk::Archive::parse(&bytes).unwrap();
        assert_eq!(disk.program("hello"), Some(&elf[..]));
        assert_eq!(disk.programs().collect::<Vec<_>>(), ["hello", "spin"]);
        assert_eq!(disk.plan(), Some("1,3"));
        let again = pack(&programs, Some("1,3")).unwrap();
        assert_eq!(bytes, again, "packing is reproducible");
        let no_plan = pack(&programs, None).unwrap();
        assert_eq!(mk_ramdisk::Archive::parse(&no_plan).unwrap().plan(), None);
    }

    #[test]
    fn what_the_kernel_would_refuse_is_refused_here() {
        let not_elf = vec![("hello".to_string(), b"#!/bin/sh".to_vec())];
        assert!(pack(&not_elf, None).is_err());
        let bad_name = vec![("a b".to_string(), tiny_elf())];
        assert!(pack(&bad_name, None).is_err());
    }

    #[test]
    fn cargo_messages_give_the_binaries() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"mk_user"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"hello"},"executable":"/t/hello"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executables(msgs),
            [("hello".to_string(), PathBuf::from("/t/hello"))]
        );
    }
}
