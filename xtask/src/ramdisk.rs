//! The boot ramdisk: the user programs (`kernel/user/programs`, one per file of its `src/bin/`)
//! built for `x86_64-unknown-none`, packed with the partition plan (if any) and the `--init`
//! command lines (if any) into a ustar archive that every disk image carries: `bin/<name>` for
//! each program, `plan` for the plan, `etc/init.<K>` for instance K's first command line. The
//! kernel reads it with `mk-ramdisk` (see `docs/user-programs.md`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::setup::root;
use crate::{Error, Result};

/// The cargo profile the programs build with (small, no debug info: see the root Cargo.toml).
const PROFILE: &str = "user";

/// Where instance K's first command line goes in the archive: `etc/init.<K>` (read by the
/// kernel's `start_init`, kernel/src/boot/tasks.rs).
const INIT_PREFIX: &str = "etc/init.";
/// Highest instance an `--init` can name (instances are numbered below the mailbox matrix's 64).
const MAX_INIT_INSTANCE: u32 = 63;
/// Longest command line a task is spawned with (`mk_abi::MAX_ARGS`).
const MAX_INIT_LINE: usize = 1024;

/// One `--init K=COMMAND`: instance K starts COMMAND instead of `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub instance: u32,
    /// The command line, trimmed: its first word names a program.
    pub command: String,
}

/// Parses one `--init` value, `K=COMMAND`, checking what can be checked before the programs are
/// built: K from 1 to 63 (instance 0 runs the shell and starts no program), COMMAND one line,
/// not empty, at most 1024 bytes, its first word a possible program name.
pub fn parse_init(text: &str) -> Result<Init> {
    let bad = |why: String| Error::Usage(format!("--init '{text}': {why}"));
    let (k, command) = text
        .split_once('=')
        .ok_or_else(|| bad("expected K=COMMAND, e.g. --init \"2=spin 5\"".into()))?;
    let instance: u32 = k.trim().parse().map_err(|_| {
        bad(format!(
            "'{k}' is not an instance number (1 to {MAX_INIT_INSTANCE})"
        ))
    })?;
    if instance == 0 {
        return Err(bad(
            "instance 0 runs the shell and starts no program; give an instance from 1 to 63".into(),
        ));
    }
    if instance > MAX_INIT_INSTANCE {
        return Err(bad(format!(
            "instance {instance} out of range: 1 to {MAX_INIT_INSTANCE}"
        )));
    }
    let command = command.trim();
    if command.is_empty() {
        return Err(bad("empty command: give a program and its arguments".into()));
    }
    if command.len() > MAX_INIT_LINE {
        return Err(bad(format!(
            "command of {} bytes: at most {MAX_INIT_LINE}",
            command.len()
        )));
    }
    if command.chars().any(char::is_control) {
        return Err(bad(
            "the command must be one line, without control characters".into(),
        ));
    }
    let name = command.split_whitespace().next().unwrap_or_default();
    if !mk_ramdisk::valid_name(name) {
        return Err(bad(format!("'{name}' is not a valid program name")));
    }
    Ok(Init {
        instance,
        command: command.to_string(),
    })
}

/// Parses every `--init` value; an instance given twice is an error.
pub fn parse_inits<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Init>> {
    let mut inits: Vec<Init> = Vec::new();
    for text in values {
        let init = parse_init(text)?;
        if let Some(old) = inits.iter().find(|i| i.instance == init.instance) {
            return Err(Error::Usage(format!(
                "--init gives instance {} twice ('{}' and '{}')",
                init.instance, old.command, init.command
            )));
        }
        inits.push(init);
    }
    inits.sort_by_key(|i| i.instance);
    Ok(inits)
}

/// Checks that each `--init` command starts a program that was built (`programs`: their names).
pub fn check_inits<'a>(
    inits: &[Init],
    programs: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<()> {
    for init in inits {
        let name = init.command.split_whitespace().next().unwrap_or_default();
        if !programs.clone().into_iter().any(|p| p == name) {
            let list: Vec<&str> = programs.into_iter().collect();
            return Err(Error::Usage(format!(
                "--init '{}={}': no program '{name}'; the programs are: {}",
                init.instance,
                init.command,
                list.join(", ")
            )));
        }
    }
    Ok(())
}

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

/// Packs `programs` (name, ELF bytes), `plan` and `inits` into a ramdisk archive. Refuses a
/// name the kernel could not look up, a file its loader would not take (it must parse as a
/// static PIE, relocations included, with `mk-elf`) and an `--init` naming no packed program.
pub fn pack(programs: &[(String, Vec<u8>)], plan: Option<&str>, inits: &[Init]) -> Result<Vec<u8>> {
    check_inits(inits, programs.iter().map(|(name, _)| name.as_str()))?;
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
    for init in inits {
        append(
            &mut tar,
            &format!("{INIT_PREFIX}{}", init.instance),
            format!("{}\n", init.command).as_bytes(),
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

/// Builds the programs and writes the ramdisk archive, with `plan` and `inits` if given, under
/// `target/images/` (`ramdisk.tar`, or `ramdisk-custom.tar` with a plan or `--init`s, so that a
/// concurrent test run keeps its own); returns its path.
pub fn build(plan: Option<&str>, inits: &[Init]) -> Result<PathBuf> {
    let programs = build_programs()?
        .into_iter()
        .map(|(name, path)| {
            std::fs::read(&path)
                .map(|bytes| (name, bytes))
                .map_err(|e| format!("reading {}: {e}", path.display()))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let archive = pack(&programs, plan, inits)?;
    let dir = root().join("target/images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(if plan.is_some() || !inits.is_empty() {
        "ramdisk-custom.tar"
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
        let bytes = pack(&programs, Some("1,3"), &[]).unwrap();
        let disk = mk_ramdisk::Archive::parse(&bytes).unwrap();
        assert_eq!(disk.program("hello"), Some(&elf[..]));
        assert_eq!(disk.programs().collect::<Vec<_>>(), ["hello", "spin"]);
        assert_eq!(disk.plan(), Some("1,3"));
        let again = pack(&programs, Some("1,3"), &[]).unwrap();
        assert_eq!(bytes, again, "packing is reproducible");
        let no_plan = pack(&programs, None, &[]).unwrap();
        assert_eq!(mk_ramdisk::Archive::parse(&no_plan).unwrap().plan(), None);
    }

    #[test]
    fn what_the_kernel_would_refuse_is_refused_here() {
        let not_elf = vec![("hello".to_string(), b"#!/bin/sh".to_vec())];
        assert!(pack(&not_elf, None, &[]).is_err());
        let bad_name = vec![("a b".to_string(), tiny_elf())];
        assert!(pack(&bad_name, None, &[]).is_err());
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

    fn init(k: u32, command: &str) -> Init {
        Init {
            instance: k,
            command: command.into(),
        }
    }

    #[test]
    fn init_values_parse() {
        assert_eq!(parse_init("2=spin 5").unwrap(), init(2, "spin 5"));
        assert_eq!(parse_init("1=hello").unwrap(), init(1, "hello"));
        assert_eq!(parse_init(" 63 =  spin  ").unwrap(), init(63, "spin"));
        let long = format!("spin {}", "x".repeat(MAX_INIT_LINE - 5));
        assert_eq!(parse_init(&format!("3={long}")).unwrap().command, long);
        assert_eq!(
            parse_inits(["3=hello", "1=spin 5"]).unwrap(),
            [init(1, "spin 5"), init(3, "hello")]
        );
        assert_eq!(parse_inits([]).unwrap(), []);
    }

    #[test]
    fn bad_init_values_are_usage_errors() {
        let long = format!("3=spin {}", "x".repeat(MAX_INIT_LINE));
        for (text, why) in [
            ("0=hello", "instance 0 runs the shell"),
            ("64=hello", "out of range"),
            ("-1=hello", "not an instance number"),
            ("x=hello", "not an instance number"),
            ("=hello", "not an instance number"),
            ("hello", "expected K=COMMAND"),
            ("2=", "empty command"),
            ("2=   ", "empty command"),
            (long.as_str(), "at most 1024"),
            ("2=spin\nhello", "one line"),
            ("2=bin/spin", "not a valid program name"),
        ] {
            match parse_init(text) {
                Err(Error::Usage(msg)) => {
                    assert!(msg.contains("--init") && msg.contains(why), "{text}: {msg}")
                }
                other => panic!("{text}: expected a usage error, got {other:?}"),
            }
        }
        assert!(matches!(
            parse_inits(["2=spin", "2=hello"]),
            Err(Error::Usage(m)) if m.contains("instance 2 twice")
        ));
    }

    #[test]
    fn init_programs_must_be_built() {
        let programs = ["hello", "spin"];
        assert!(check_inits(&[init(2, "spin 5"), init(1, "hello")], programs).is_ok());
        match check_inits(&[init(2, "spinn 5")], programs) {
            Err(Error::Usage(msg)) => {
                assert!(msg.contains("no program 'spinn'"), "{msg}");
                assert!(msg.contains("hello, spin"), "{msg}");
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
        let elf = tiny_elf();
        let packed = vec![("hello".to_string(), elf)];
        assert!(pack(&packed, None, &[init(1, "spin")]).is_err());
    }

    #[test]
    fn inits_are_packed_where_the_kernel_reads_them() {
        let elf = tiny_elf();
        let programs = vec![("hello".to_string(), elf.clone()), ("spin".into(), elf)];
        let inits = parse_inits(["2=spin 5", "1=hello"]).unwrap();
        let bytes = pack(&programs, None, &inits).unwrap();
        let disk = mk_ramdisk::Archive::parse(&bytes).unwrap();
        // As kernel/src/boot/tasks.rs reads them: the file, as UTF-8, trimmed.
        let line = |k: u32| {
            disk.file(&format!("etc/init.{k}"))
                .map(|b| core::str::from_utf8(b).unwrap().trim())
        };
        assert_eq!(line(1), Some("hello"));
        assert_eq!(line(2), Some("spin 5"));
        assert_eq!(line(3), None);
        assert_eq!(disk.programs().collect::<Vec<_>>(), ["hello", "spin"]);
    }
}
