//! The operator's console test: a boot in which the harness, not the kernel, drives: it types
//! on COM1 (QEMU's stdio), presses keys on the PS/2 keyboard and takes screenshots through the
//! QEMU monitor, and checks what comes back. Each [`Check`] is one verdict line
//! (`console/<name>`). They run in order in one boot (boots are slow), so a check may rely on
//! what the ones before it did: that order is part of the script.
//!
//! Everything here is data and matching, tested on the host; `xtask/src/console_test.rs`
//! drives QEMU.

pub use mk_shell::PROMPT;

/// What the harness does for one check.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Bytes typed on the serial console (COM1).
    Type(&'static str),
    /// Keys pressed on the PS/2 keyboard, by QEMU `sendkey` names.
    Keys(&'static [&'static str]),
    /// A screenshot of the framebuffer; the instances whose panes must show, top to bottom
    /// (left column first).
    Screen(&'static [usize]),
}

/// One check: an action, and what its answer must contain, in order.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub name: &'static str,
    pub action: Action,
    /// Texts that must appear in the serial output after the action, in this order, each
    /// after the previous; the answer ends at the next prompt after the last one.
    pub expect: &'static [&'static str],
    /// Texts that must not appear in the answer.
    pub reject: &'static [&'static str],
    pub timeout_secs: u64,
}

/// A console boot: firmware, machine and partition plan, and the checks.
pub struct Script {
    pub name: &'static str,
    pub firmware: crate::Firmware,
    pub smp: u32,
    pub memory_mib: u32,
    pub plan: &'static str,
    /// Seconds to the first prompt.
    pub boot_timeout_secs: u64,
    pub checks: &'static [Check],
}

const fn typed(
    name: &'static str,
    text: &'static str,
    expect: &'static [&'static str],
    reject: &'static [&'static str],
) -> Check {
    Check {
        name,
        action: Action::Type(text),
        expect,
        reject,
        timeout_secs: 30,
    }
}

/// The script, under TCG (where the PS/2 keyboard and the screendump work as on any machine;
/// nothing here needs the x2APIC). Plan: instance 0 (the shell), instance 1 with two CPUs,
/// instances 2 and 3 with one each.
pub const SCRIPT: Script = Script {
    name: "console",
    firmware: crate::Firmware::Bios,
    smp: 5,
    memory_mib: 1024,
    plan: "1,2,1,1",
    boot_timeout_secs: 90,
    checks: &[
        typed(
            "help",
            "help\r",
            &[
                "commands:",
                "instances",
                "ping INST [COUNT]",
                "cpu move CPU INST",
                "crash INST",
            ],
            &["error"],
        ),
        typed(
            "instances_table",
            "instances\r",
            &[
                "inst",
                "state",
                "0    running",
                "1    running  1,2",
                "2    running  3",
                "3    running  4",
            ],
            &["dead", "error"],
        ),
        typed(
            "unknown_command",
            "frobnicate 3\r",
            &["error: unknown command 'frobnicate'"],
            &["usage:"],
        ),
        typed(
            "bad_arguments",
            "ping one\r",
            &[
                "error: instance 'one' is not a number",
                "usage: ping INST [COUNT]",
            ],
            &["reply from"],
        ),
        typed(
            "no_such_instance",
            "ping 9\r",
            &["error: no instance 9 (instances are 0..3)"],
            &["reply from"],
        ),
        // Backspace (DEL, as terminals send it) erases: "pinx" becomes "ping".
        typed(
            "line_editing_backspace",
            "pinx\x7fg 1 3\r",
            &[
                "reply from instance 1: seq=0",
                "seq=2",
                "3 sent, 3 answered",
            ],
            &["error"],
        ),
        // "ping 21", Left, a space, Right, Enter: runs "ping 2 1".
        typed(
            "line_editing_cursor",
            "ping 21\x1b[D \x1b[C\r",
            &["reply from instance 2: seq=0", "1 sent, 1 answered"],
            &["error"],
        ),
        // Up twice recalls "ping 1 3" (the line before the last); Enter runs it again.
        typed(
            "history_arrows",
            "\x1b[A\x1b[A\r",
            &["reply from instance 1: seq=2", "3 sent, 3 answered"],
            &["error", "reply from instance 2"],
        ),
        typed(
            "stats",
            "stats\r",
            &["mailbox", "0 -> 1", "1 -> 0", "instance 0's dispatcher"],
            &["error"],
        ),
        // Task devices and capabilities in the shell (issue 14): a bad device is refused before
        // anything is sent; `caps` of a task that does not exist lists nothing; `stats` has a
        // row of IPC counters per instance.
        typed(
            "ipc_shell",
            "spawn 2 --irq 99 hello\rcaps 2 t5.1\rstats\r",
            &[
                "error: '--irq 99' is not a valid device",
                "handle    kind",
                "ipc",
                "calls",
                "peer_dead",
                "runs_lost",
            ],
            &["started", "names"],
        ),
        // A move that must be refused, with nothing moved: instance 2's only CPU.
        typed(
            "cpu_move_refused",
            "cpu move 3 1\r",
            &["error: CPU 3 is instance 2's last CPU"],
            &["moved"],
        ),
        typed(
            "cpu_move",
            "cpu move 2 3\rinstances\r",
            &[
                "CPU 2 moved from instance 1 to instance 3",
                "1    running  1 ",
                "3    running  4,2",
            ],
            &["error"],
        ),
        typed(
            "mem_move",
            "mem move 16M 1 2\r",
            &["moved 16 MiB at 0x", "from instance 1 to instance 2"],
            &["error"],
        ),
        typed(
            "mem_move_refused",
            "mem move 3M 1 2\rmem move 16M 0 2\r",
            &[
                "error: 3 MiB is not a multiple of 2 MiB",
                "error: memory moves only between instances other than 0",
            ],
            &["moved"],
        ),
        typed(
            "irq_route_mask",
            "irq route 8 2\rirq mask 8\rirq unmask 8\rirq route 8 3\r",
            &[
                "IRQ line 8 now delivered to instance 2",
                "IRQ line 8 masked by its owner, instance 2",
                "IRQ line 8 unmasked by its owner, instance 2",
                "error: IRQ line 8 belongs to instance 2",
            ],
            &[],
        ),
        Check {
            name: "keyboard_ps2",
            action: Action::Keys(&["p", "i", "n", "g", "spc", "3", "spc", "2", "ret"]),
            expect: &["reply from instance 3: seq=1", "2 sent, 2 answered"],
            reject: &["error"],
            timeout_secs: 30,
        },
        Check {
            name: "screen_panes",
            action: Action::Screen(&[0, 1, 2, 3]),
            expect: &[],
            reject: &[],
            timeout_secs: 30,
        },
        Check {
            name: "crash",
            action: Action::Type("crash 3\r"),
            expect: &[
                "instance 3 declared dead",
                "resources are back with instance 0",
            ],
            reject: &["error"],
            timeout_secs: 60,
        },
        typed(
            "shutdown",
            "shutdown 2\rinstances\r",
            &["instance 2 stopped", "2    stopped", "3    dead"],
            &["error"],
        ),
        Check {
            name: "screen_relaid",
            action: Action::Screen(&[0, 1]),
            expect: &[],
            reject: &[],
            timeout_secs: 30,
        },
        typed(
            "refused_on_stopped",
            "ping 2\rcrash 0\r",
            &[
                "error: instance 2 is stopped, not running",
                "error: instance 0 is this shell's own instance",
            ],
            &["reply from"],
        ),
        Check {
            name: "respawn",
            action: Action::Type("respawn 3\rping 3 1\r"),
            expect: &["instance 3 running again", "1 sent, 1 answered"],
            reject: &["error"],
            timeout_secs: 60,
        },
        Check {
            name: "screen_respawned",
            action: Action::Screen(&[0, 1, 3]),
            expect: &[],
            reject: &[],
            timeout_secs: 30,
        },
        Check {
            name: "bench",
            action: Action::Type("bench 20 3\r"),
            expect: &[
                "in-kernel measurements against instance 3, 20 samples each",
                "BENCH ipi_raw.polling unit=ns",
                "BENCH rtt.ipi unit=ns",
                "BENCH tput.batch16 unit=msg/s",
                "BENCH op.encode_full",
            ],
            reject: &["error"],
            timeout_secs: 120,
        },
    ],
};

/// The UEFI image under OVMF (TCG: OVMF fails under this machine's nested KVM): the GOP
/// framebuffer, whose pixel layout differs from the BIOS image's VESA one, gets its panes too,
/// and the shell answers there as well.
pub const UEFI_SCRIPT: Script = Script {
    name: "console-uefi",
    firmware: crate::Firmware::Uefi,
    smp: 3,
    memory_mib: 512,
    plan: "1,1,1",
    boot_timeout_secs: 120,
    checks: &[
        typed(
            "instances_table",
            "instances\r",
            &["0    running", "1    running  1", "2    running  2"],
            &["error"],
        ),
        typed(
            "ping",
            "ping 2 2\r",
            &["reply from instance 2: seq=1", "2 sent, 2 answered"],
            &["error"],
        ),
        Check {
            name: "screen_panes",
            action: Action::Screen(&[0, 1, 2]),
            expect: &[],
            reject: &[],
            timeout_secs: 30,
        },
    ],
};

/// Every console boot.
pub const SCRIPTS: [&Script; 2] = [&SCRIPT, &UEFI_SCRIPT];

/// Where the answer to a check ends in `output` (the text after the action): the end of the
/// prompt that follows the last expected text. `Ok(None)`: not there yet. `Err`: a rejected
/// text appeared in the answer.
pub fn answer_end(output: &str, check: &Check) -> Result<Option<usize>, String> {
    let mut at = 0;
    for want in check.expect {
        match output[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => return Ok(None),
        }
    }
    let Some(p) = output[at..].find(PROMPT) else {
        return Ok(None);
    };
    let end = at + p + PROMPT.len();
    if let Some(bad) = check.reject.iter().find(|r| output[..end].contains(*r)) {
        return Err(format!("the answer contains '{bad}'"));
    }
    Ok(Some(end))
}

/// What is missing from `output` for `check`: the first expected text not found in order.
pub fn missing(output: &str, check: &Check) -> Option<&'static str> {
    let mut at = 0;
    for want in check.expect {
        match output[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => return Some(want),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Check = typed("x", "", &["a", "b"], &["bad"]);

    #[test]
    fn answers_are_matched_in_order_up_to_the_prompt() {
        assert_eq!(answer_end("a b mk> ", &C), Ok(Some(8)));
        // Out of order: "b" must come after "a".
        assert_eq!(answer_end("b a mk> ", &C), Ok(None));
        // No prompt yet: the command is still running.
        assert_eq!(answer_end("a b", &C), Ok(None));
        assert!(answer_end("a bad b mk> ", &C).is_err());
        // A rejected text after the answer's prompt belongs to the next check.
        assert_eq!(answer_end("a b mk> bad", &C), Ok(Some(8)));
        assert_eq!(missing("a", &C), Some("b"));
        assert_eq!(missing("ab", &C), None);
    }

    #[test]
    fn check_names_are_unique_and_screens_name_instance_0() {
        for script in SCRIPTS {
            let names: std::collections::BTreeSet<_> =
                script.checks.iter().map(|c| c.name).collect();
            assert_eq!(names.len(), script.checks.len());
        }
        for c in SCRIPTS.iter().flat_map(|s| s.checks) {
            match c.action {
                Action::Screen(panes) => assert_eq!(panes.first(), Some(&0), "{}", c.name),
                Action::Type(t) => assert!(t.ends_with('\r'), "{}", c.name),
                Action::Keys(k) => assert_eq!(k.last(), Some(&"ret"), "{}", c.name),
            }
        }
    }
}
