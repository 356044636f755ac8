//! Starting QEMU: the argument files under `qemu/` plus what a run needs (firmware, accelerator,
//! CPUs, memory, disk image).

use std::path::{Path, PathBuf};
use std::process::Command;

use boot::Firmware;

use crate::Result;
use crate::setup::{find_ovmf, root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
    /// TCG in instruction-count mode (`qemu/icount.args`): 1 ns of guest time per instruction.
    Icount,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
            Accel::Icount => "TCG icount",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub accel: Accel,
    pub firmware: Firmware,
    pub smp: u32,
    pub memory_mib: u64,
    /// Machine type, CPU topology and NUMA nodes (`Shape::DEFAULT`: q35, one node).
    pub shape: qemu_tests::Shape,
    pub image: PathBuf,
}

/// Reads one argument file: one argument per line, `#` comments, blank lines ignored.
pub fn read_args(name: &str) -> Result<Vec<String>> {
    let path = root().join("qemu").join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(parse_args(&text))
}

fn parse_args(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The QEMU command for `machine` with the extra argument files `profiles` (e.g. `test.args`).
pub fn command(machine: &Machine, profiles: &[&str]) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(read_args("common.args")?);
    cmd.args(read_args(match machine.accel {
        Accel::Kvm => "kvm.args",
        Accel::Tcg | Accel::Icount => "tcg.args",
    })?);
    if machine.accel == Accel::Icount {
        cmd.args(read_args("icount.args")?);
    }
    for p in profiles {
        cmd.args(read_args(p)?);
    }
    cmd.arg("-smp")
        .arg(machine.shape.smp_arg(machine.smp))
        .arg("-m")
        .arg(format!("{}M", machine.memory_mib));
    // A later `-machine` overrides the type in common.args.
    cmd.args(machine.shape.qemu_args());
    if machine.firmware == Firmware::Uefi {
        let ovmf = find_ovmf().ok_or("OVMF not found (apt-get install ovmf)")?;
        cmd.arg("-bios").arg(ovmf);
    }
    cmd.arg("-drive").arg(drive_arg(&machine.image));
    Ok(cmd)
}

/// How a QEMU run ended.
pub enum Ending {
    /// QEMU exited with this status code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It outlived its timeout and was killed.
    TimedOut,
}

/// A finished QEMU run: how it ended, how long it took, what it wrote on stderr, and when
/// the watched file (the serial log) first had something in it.
pub struct Finished {
    pub ending: Ending,
    pub secs: f64,
    pub stderr: String,
    pub first_output_secs: Option<f64>,
}

/// Starts `cmd` (stdout discarded, stderr kept) and waits for it, killing it after `timeout`.
/// Notes when `watch` first becomes non-empty (to the 10 ms).
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: std::time::Duration,
    watch: Option<&Path>,
) -> Result<Finished> {
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    let mut first_output_secs = None;
    let ending = loop {
        if first_output_secs.is_none()
            && watch.is_some_and(|w| std::fs::metadata(w).is_ok_and(|m| m.len() > 0))
        {
            first_output_secs = Some(start.elapsed().as_secs_f64());
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            break Ending::Exited(status.code());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Ending::TimedOut;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Ok(Finished {
        ending,
        secs: start.elapsed().as_secs_f64(),
        stderr,
        first_output_secs,
    })
}

/// The argument of `-fw_cfg` for a string item. QEMU splits option values at commas; a comma
/// in the value is written twice.
pub fn fw_cfg_string(name: &str, value: &str) -> String {
    format!("name={name},string={}", value.replace(',', ",,"))
}

fn drive_arg(image: &Path) -> String {
    format!("format=raw,file={}", image.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_files_parse() {
        assert_eq!(
            parse_args("# c\n-machine\n q35 \n\n"),
            vec!["-machine", "q35"]
        );
        for f in [
            "common.args",
            "kvm.args",
            "tcg.args",
            "icount.args",
            "test.args",
            "run.args",
        ] {
            assert!(!read_args(f).unwrap().is_empty(), "{f} is empty");
        }
    }

    #[test]
    fn fw_cfg_commas_are_escaped() {
        assert_eq!(
            fw_cfg_string("opt/multikernel/plan", "1,3"),
            "name=opt/multikernel/plan,string=1,,3"
        );
    }

    #[test]
    fn test_profile_has_the_exit_device() {
        let args = read_args("test.args").unwrap();
        assert!(
            args.iter()
                .any(|a| a.starts_with("isa-debug-exit,iobase=0xf4"))
        );
    }
}
