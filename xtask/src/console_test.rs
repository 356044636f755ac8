//! The console test (`tests/src/console.rs`): QEMU with COM1 on its stdio and the monitor on a
//! Unix socket; the harness types, presses keys (`sendkey`), takes screenshots (`screendump`)
//! and checks the answers. One verdict line per check.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_tests::console::{self, Action, Check, Script};

use crate::Result;

/// Errors of one check or of the session: a sentence for the verdict line.
type Outcome<T> = std::result::Result<T, String>;
use crate::qemu::{self, Accel, Machine};
use crate::test::Tally;

/// A running console boot.
struct Session {
    child: Child,
    /// Everything COM1 has sent so far.
    output: Arc<Mutex<Vec<u8>>>,
    monitor: Option<UnixStream>,
    monitor_path: PathBuf,
}

impl Session {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn len(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    fn type_text(&mut self, text: &str) -> Outcome<()> {
        let stdin = self.child.stdin.as_mut().ok_or("QEMU's stdin is gone")?;
        // A byte at a time, a little apart, as a person types: the UART's receive FIFO holds
        // 16 bytes and the shell reads it once per timer tick.
        for b in text.bytes() {
            stdin
                .write_all(&[b])
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("typing into QEMU: {e}"))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Sends one monitor command and returns its output (up to the next `(qemu)` prompt).
    fn monitor(&mut self, command: &str) -> Outcome<String> {
        if self.monitor.is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let stream = loop {
                match UnixStream::connect(&self.monitor_path) {
                    Ok(s) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => return Err(format!("connecting to the QEMU monitor: {e}")),
                }
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| format!("monitor socket: {e}"))?;
            self.monitor = Some(stream);
            read_to_prompt(self.monitor.as_mut().unwrap())?;
        }
        let m = self.monitor.as_mut().unwrap();
        m.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("writing to the QEMU monitor: {e}"))?;
        read_to_prompt(m)
    }
}

fn read_to_prompt(m: &mut UnixStream) -> Outcome<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"(qemu) ") {
        let n = m
            .read(&mut buf)
            .map_err(|e| format!("reading the QEMU monitor: {e}"))?;
        if n == 0 {
            return Err("the QEMU monitor closed".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

pub fn run(
    script: &Script,
    image: &Path,
    logs: &Path,
    shots: &Path,
    tally: &mut Tally,
) -> Result<()> {
    let firmware = match script.firmware {
        qemu_tests::Firmware::Bios => boot::Firmware::Bios,
        qemu_tests::Firmware::Uefi => boot::Firmware::Uefi,
    };
    let tag = format!("TCG, {}", firmware.name());
    let machine = Machine {
        accel: Accel::Tcg,
        firmware,
        smp: script.smp,
        memory_mib: u64::from(script.memory_mib),
        shape: qemu_tests::Shape::DEFAULT,
        image: image.to_path_buf(),
    };
    let monitor_path = std::env::temp_dir().join(format!("mk-console-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&monitor_path);
    let mut cmd = qemu::command(&machine, &["test.args"])?;
    cmd.arg("-serial")
        .arg("stdio")
        .arg("-serial")
        .arg("null")
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            monitor_path.display()
        ))
        .arg("-fw_cfg")
        .arg(qemu::fw_cfg_string("opt/multikernel/tests", "shell"))
        .arg("-fw_cfg")
        .arg(qemu::fw_cfg_string("opt/multikernel/plan", script.plan))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| format!("starting QEMU: {e}"))?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let sink = Arc::clone(&output);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut session = Session {
        child,
        output,
        monitor: None,
        monitor_path,
    };
    let started = Instant::now();
    let result = drive(script, &mut session, shots, &tag, tally, started);
    let _ = session.child.kill();
    let _ = session.child.wait();
    let _ = std::fs::remove_file(&session.monitor_path);
    let log_path = logs.join(format!("{}.log", script.name));
    let text = session.text();
    let _ = std::fs::write(&log_path, &text);
    if let Err(e) = result {
        let name = format!("{}/boot", script.name);
        println!("FAIL   {name} ({tag}): {e}");
        tally.fail(name);
    }
    if tally.failed_in(script.name) {
        println!(
            "       serial log kept at {}; last lines:",
            log_path.display()
        );
        for line in qemu_tests::log::tail(&text, 25) {
            println!("       | {line}");
        }
    }
    Ok(())
}

fn drive(
    script: &Script,
    s: &mut Session,
    shots: &Path,
    tag: &str,
    tally: &mut Tally,
    started: Instant,
) -> Outcome<()> {
    let deadline = started + Duration::from_secs(script.boot_timeout_secs);
    while !s.text().contains(console::PROMPT) {
        if Instant::now() > deadline {
            return Err(format!(
                "no shell prompt within {} s",
                script.boot_timeout_secs
            ));
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            return Err(format!("QEMU exited ({status}) before the prompt"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "       {}: shell prompt after {:.1} s",
        script.name,
        started.elapsed().as_secs_f64()
    );
    for check in script.checks {
        let name = format!("{}/{}", script.name, check.name);
        let t = Instant::now();
        match run_check(script.name, check, s, shots) {
            Ok(detail) => {
                println!(
                    "ok     {name} ({tag}; {:.1} s){detail}",
                    t.elapsed().as_secs_f64()
                );
                tally.pass();
            }
            Err(e) => {
                println!("FAIL   {name} ({tag}): {e}");
                tally.fail(name);
            }
        }
    }
    Ok(())
}

fn run_check(script: &str, check: &Check, s: &mut Session, shots: &Path) -> Outcome<String> {
    let from = s.len();
    match check.action {
        Action::Type(text) => s.type_text(text)?,
        Action::Keys(keys) => {
            for k in keys {
                s.monitor(&format!("sendkey {k}"))?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Action::Screen(panes) => return screenshot(script, check, panes, s, shots),
    }
    let deadline = Instant::now() + Duration::from_secs(check.timeout_secs);
    loop {
        let out = String::from_utf8_lossy(&s.output.lock().unwrap()[from..]).into_owned();
        match console::answer_end(&out, check) {
            Ok(Some(_)) => return Ok(String::new()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                return Err(format!(
                    "no '{}' in the answer within {} s",
                    console::missing(&out, check).unwrap_or(console::PROMPT),
                    check.timeout_secs
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Takes the screenshot twice: PPM for the check, PNG kept for a person to look at.
fn screenshot(
    script: &str,
    check: &Check,
    panes: &[usize],
    s: &mut Session,
    shots: &Path,
) -> Outcome<String> {
    let ppm = shots.join(format!("{script}-{}.ppm", check.name));
    let png = shots.join(format!("{script}-{}.png", check.name));
    let _ = std::fs::remove_file(&ppm);
    // The panes are re-laid by the instances themselves after a change; give them a moment
    // (they redraw within a few timer ticks), then retry for a while before failing.
    let deadline = Instant::now() + Duration::from_secs(check.timeout_secs);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        s.monitor(&format!("screendump {}", ppm.display()))?;
        let bytes = std::fs::read(&ppm).map_err(|e| format!("reading {}: {e}", ppm.display()))?;
        let outcome = qemu_tests::screen::check_ppm(&bytes, panes);
        if outcome.is_ok() || Instant::now() > deadline {
            s.monitor(&format!("screendump {} -f png", png.display()))?;
            return outcome
                .map(|found| format!(": {found}; screenshot {}", png.display()))
                .map_err(|e| format!("{e}; screenshot {}", png.display()));
        }
    }
}
