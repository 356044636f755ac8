//! `cargo xtask test`: host unit tests, then the QEMU integration tests of `tests/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_tests::log::{self, CaseResult};
use qemu_tests::{Boot, Expect};

use crate::args::Args;
use crate::build::{self, Flavor};
use crate::console_test;
use crate::qemu::{self, Accel, Ending, Finished, Machine};
use crate::setup::{self, root};
use crate::{Error, Result};

/// QEMU's exit status for the kernel's success / failure codes: `(code << 1) | 1`.
const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
const EXIT_FAILURE: i32 = (0x11 << 1) | 1;

#[derive(Default)]
pub struct Tally {
    passed: u32,
    failed: u32,
    skipped: u32,
    failures: Vec<String>,
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

impl Tally {
    pub fn pass(&mut self) {
        self.passed += 1;
    }

    pub fn fail(&mut self, name: String) {
        self.failed += 1;
        self.failures.push(name);
    }

    /// Whether a test named `<prefix>/...` failed.
    pub fn failed_in(&self, prefix: &str) -> bool {
        self.failures
            .iter()
            .any(|f| f.strip_prefix(prefix).is_some_and(|r| r.starts_with('/')))
    }
}

/// The console boots `filter` selects (by their name or one of their checks).
fn console_selected(filter: Option<&str>) -> Vec<&'static qemu_tests::console::Script> {
    qemu_tests::console::SCRIPTS
        .into_iter()
        .filter(|script| console_matches(script, filter))
        .collect()
}

fn console_matches(script: &qemu_tests::console::Script, filter: Option<&str>) -> bool {
    filter.is_none_or(|f| {
        script.name.contains(f)
            || script
                .checks
                .iter()
                .any(|c| format!("{}/{}", script.name, c.name).contains(f))
    })
}

pub fn main(argv: &[String]) -> Result<()> {
    let args = Args::parse(argv, &["no-kvm", "host-only", "qemu-only"], &[], 1)?;
    if args.flag("host-only") && args.flag("qemu-only") {
        return Err(Error::Usage(
            "--host-only and --qemu-only exclude each other".into(),
        ));
    }
    let filter = args.positionals.first().cloned();
    setup::ensure_toolchain()?;
    let mut tally = Tally::default();

    if !args.flag("qemu-only") {
        host_tests(&mut tally, filter.as_deref())?;
    }
    if !args.flag("host-only") {
        let boots: Vec<Boot> = qemu_tests::all()
            .into_iter()
            .filter(|b| filter.as_deref().is_none_or(|f| b.matches(f)))
            .collect();
        let console = console_selected(filter.as_deref());
        if filter.is_some()
            && boots.is_empty()
            && console.is_empty()
            && tally.passed + tally.failed == 0
        {
            return Err(Error::Usage(format!(
                "no test matches '{}'",
                filter.unwrap_or_default()
            )));
        }
        if !boots.is_empty() || !console.is_empty() {
            qemu_tests_run(&boots, &console, args.flag("no-kvm"), &mut tally)?;
        }
    }

    println!();
    for f in &tally.failures {
        println!("FAILED: {f}");
    }
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if tally.failed > 0 {
        return Err(Error::Failed(format!("{} test(s) failed", tally.failed)));
    }
    Ok(())
}

fn host_tests(tally: &mut Tally, filter: Option<&str>) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = Instant::now();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(["test", "--quiet"])
        .env_remove("RUSTFLAGS");
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    let line = format!(
        "host unit tests (cargo test{})",
        filter.map_or(String::new(), |f| format!(" -- {f}"))
    );
    if status.success() {
        println!("ok     {line} ({:.1} s)", start.elapsed().as_secs_f64());
        tally.passed += 1;
    } else {
        println!("FAIL   {line} ({:.1} s)", start.elapsed().as_secs_f64());
        tally.failed += 1;
        tally.failures.push(line);
    }
    Ok(())
}

fn qemu_tests_run(
    boots: &[Boot],
    console: &[&qemu_tests::console::Script],
    no_kvm: bool,
    tally: &mut Tally,
) -> Result<()> {
    let needs_uefi = boots
        .iter()
        .map(|b| b.firmware)
        .chain(console.iter().map(|s| s.firmware))
        .any(|f| f == qemu_tests::Firmware::Uefi);
    setup::ensure_qemu(needs_uefi)?;
    let kvm = !no_kvm && setup::kvm_usable();
    let skip_reason = if no_kvm {
        "needs KVM; --no-kvm given"
    } else {
        "needs KVM; /dev/kvm is not usable here"
    };
    println!(
        "QEMU tests: KVM {}",
        if kvm {
            "available"
        } else if no_kvm {
            "disabled (--no-kvm)"
        } else {
            "unavailable"
        }
    );

    let kernel = build::kernel(true, Flavor::Test)?;
    // The test boots pass their plans by fw_cfg; the ramdisk carries the programs.
    let ramdisk = build::ramdisk(None, &[])?;
    let logs = root().join("target/test-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let mut images: Vec<(qemu_tests::Firmware, PathBuf)> = Vec::new();

    for b in boots {
        let accel = match b.accel {
            qemu_tests::Accel::Kvm if !kvm => {
                for name in b.case_names() {
                    println!("skip   {name} ({skip_reason})");
                    tally.skipped += 1;
                }
                continue;
            }
            qemu_tests::Accel::Kvm => Accel::Kvm,
            qemu_tests::Accel::Tcg => Accel::Tcg,
            qemu_tests::Accel::Icount => Accel::Icount,
            qemu_tests::Accel::Any if kvm => Accel::Kvm,
            qemu_tests::Accel::Any => Accel::Tcg,
        };
        let image = match images.iter().find(|(f, _)| *f == b.firmware) {
            Some((_, p)) => p.clone(),
            None => {
                let fw = firmware(b.firmware);
                let p = build::image(&kernel, &ramdisk, fw, Flavor::Test)?;
                images.push((b.firmware, p.clone()));
                p
            }
        };
        run_boot(b, accel, &image, &logs, tally)?;
    }
    // Under TCG, so they run (and are never skipped) everywhere.
    for script in console {
        let image = match images.iter().find(|(f, _)| *f == script.firmware) {
            Some((_, p)) => p.clone(),
            None => {
                let p = build::image(&kernel, &ramdisk, firmware(script.firmware), Flavor::Test)?;
                images.push((script.firmware, p.clone()));
                p
            }
        };
        let shots = root().join("target/screenshots");
        std::fs::create_dir_all(&shots)
            .map_err(|e| format!("creating {}: {e}", shots.display()))?;
        console_test::run(script, &image, &logs, &shots, tally)?;
    }
    Ok(())
}

fn firmware(f: qemu_tests::Firmware) -> boot::Firmware {
    match f {
        qemu_tests::Firmware::Bios => boot::Firmware::Bios,
        qemu_tests::Firmware::Uefi => boot::Firmware::Uefi,
    }
}

fn run_boot(b: &Boot, accel: Accel, image: &Path, logs: &Path, tally: &mut Tally) -> Result<()> {
    let log_path = logs.join(format!("{}.log", b.name));
    let _ = std::fs::remove_file(&log_path);
    let machine = Machine {
        accel,
        firmware: firmware(b.firmware),
        smp: b.smp,
        memory_mib: u64::from(b.memory_mib),
        shape: b.shape,
        image: image.to_path_buf(),
    };
    let mut cmd = qemu::command(&machine, &["test.args"])?;
    // COM1: the kernel's console, to the log. COM2: nothing attached; the `serial_irq` case
    // runs it in loopback as an interrupting device.
    cmd.arg("-serial")
        .arg(format!("file:{}", log_path.display()))
        .arg("-serial")
        .arg("null")
        .arg("-fw_cfg")
        .arg(qemu::fw_cfg_string(
            "opt/multikernel/tests",
            &b.cases.join(" "),
        ));
    if let Some(plan) = b.plan {
        cmd.arg("-fw_cfg")
            .arg(qemu::fw_cfg_string("opt/multikernel/plan", plan));
    }
    let Finished {
        ending,
        secs,
        stderr,
        ..
    } = qemu::run_with_timeout(&mut cmd, Duration::from_secs(b.timeout_secs), None)?;
    let serial = std::fs::read_to_string(&log_path).unwrap_or_default();
    let parsed = log::parse(&serial, b.cases);
    let how = match ending {
        Ending::TimedOut => format!("QEMU killed after the {} s timeout", b.timeout_secs),
        Ending::Exited(Some(EXIT_SUCCESS)) => "kernel reported success".into(),
        Ending::Exited(Some(EXIT_FAILURE)) => "kernel reported failure".into(),
        Ending::Exited(code) => format!("QEMU exited with {code:?} (no verdict from the kernel)"),
    };
    // A case that passed is good if the kernel finished its list: either everything passed, or
    // the failure exit came from another case's verdict (not a crash after this one).
    let exited_ok = matches!(ending, Ending::Exited(Some(EXIT_SUCCESS)))
        || (parsed.done && matches!(ending, Ending::Exited(Some(EXIT_FAILURE))));
    let tag = format!("{}, {}", accel.name(), firmware(b.firmware).name());

    let mut boot_failed = false;
    match b.expect {
        Expect::Pass => {
            for (name, result) in &parsed.results {
                let full = format!("{}/{}", b.name, name);
                let problem = match result {
                    CaseResult::Pass if exited_ok => None,
                    CaseResult::Pass => Some(format!("passed, but the boot failed: {how}")),
                    CaseResult::Fail(reason) => Some(reason.clone()),
                    CaseResult::Missing => Some(match &parsed.crash {
                        Some(c) => format!("no verdict; {c}"),
                        None => format!("no verdict; {how}"),
                    }),
                };
                match problem {
                    None => {
                        println!("ok     {full} ({tag}; boot {secs:.1} s)");
                        tally.passed += 1;
                    }
                    Some(p) => {
                        println!("FAIL   {full} ({tag}; boot {secs:.1} s): {p}");
                        tally.failed += 1;
                        // The reason goes into the closing list too: where only the end of
                        // the output is kept (CI), it still says why.
                        tally.failures.push(format!("{full}: {}", shorten(&p, 300)));
                        boot_failed = true;
                    }
                }
            }
        }
        Expect::FailWith(text) => {
            let full = format!("{}/{}", b.name, b.cases.join("+"));
            let failed_right =
                matches!(ending, Ending::Exited(Some(EXIT_FAILURE))) && serial.contains(text);
            if failed_right {
                println!(
                    "ok     {full} ({tag}; boot {secs:.1} s): kernel failed as expected: {}",
                    parsed.crash.as_deref().unwrap_or(text)
                );
                tally.passed += 1;
            } else {
                println!(
                    "FAIL   {full} ({tag}; boot {secs:.1} s): expected a failure showing '{text}'; {how}"
                );
                tally.failed += 1;
                tally.failures.push(full);
                boot_failed = true;
            }
        }
    }
    // Whole lines: the console lock must keep instances' and CPUs' lines apart.
    let interleaved = log::interleaved_lines(&serial);
    if !interleaved.is_empty() {
        let full = format!("{}/whole_log_lines", b.name);
        println!(
            "FAIL   {full}: {} interleaved line(s), e.g. {}",
            interleaved.len(),
            interleaved[0]
        );
        tally.failed += 1;
        tally.failures.push(full);
        boot_failed = true;
    } else if b.cases.iter().any(|c| c.starts_with("instances=")) {
        println!(
            "ok     {}/whole_log_lines ({tag}): no line of one CPU or instance cut by another",
            b.name
        );
        tally.passed += 1;
    }
    if boot_failed {
        println!(
            "       serial log kept at {}; last lines:",
            log_path.display()
        );
        for line in log::tail(&serial, 25) {
            println!("       | {line}");
        }
        for line in log::tail(&stderr, 5) {
            println!("       | qemu: {line}");
        }
    }
    Ok(())
}
