//! Reading verdicts off a kernel's serial log.

/// Verdict of one in-kernel case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResult {
    Pass,
    Fail(String),
    /// The boot ended (crash, panic, timeout) before the case reported.
    Missing,
}

/// Everything the harness reads from one boot's serial output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootLog {
    /// Verdicts in the order of `cases`.
    pub results: Vec<(String, CaseResult)>,
    /// The kernel printed `TESTS DONE`.
    pub done: bool,
    /// The first `PANIC` or `FATAL` line, if any.
    pub crash: Option<String>,
}

/// Parses `log` for the verdicts of `cases` (`name[=arg]`).
pub fn parse(log: &str, cases: &[&str]) -> BootLog {
    let mut results: Vec<(String, CaseResult)> = cases
        .iter()
        .map(|c| (mk_cases::split(c).0.to_string(), CaseResult::Missing))
        .collect();
    let mut done = false;
    let mut crash = None;
    for line in log.lines() {
        let line = line.trim_end_matches('\r');
        if line == "TESTS DONE" {
            done = true;
        } else if let Some(rest) = line.strip_prefix("TEST ") {
            let (name, verdict) = rest.split_once(' ').unwrap_or((rest, ""));
            let result = if verdict == "PASS" {
                CaseResult::Pass
            } else if let Some(reason) = verdict.strip_prefix("FAIL: ") {
                CaseResult::Fail(reason.to_string())
            } else {
                continue;
            };
            // The first verdict of a case counts; a case name the harness did not ask for is
            // ignored (the boot still fails through its exit code if it was a failure).
            if let Some(slot) = results
                .iter_mut()
                .find(|(n, r)| n == name && *r == CaseResult::Missing)
            {
                slot.1 = result;
            }
        } else if crash.is_none() && (line.contains("PANIC") || line.contains("FATAL")) {
            crash = Some(line.to_string());
        }
    }
    BootLog {
        results,
        done,
        crash,
    }
}

/// Lines in which a second log prefix (`[i<instance> c<cpu>]`) starts mid-line: output of two
/// CPUs or instances interleaved.
pub fn interleaved_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.char_indices().skip(1).any(|(i, _)| {
                let rest = &line[i..];
                rest.starts_with("[i")
                    && rest[2..].starts_with(|c: char| c.is_ascii_digit())
                    && rest.contains(" c")
            })
        })
        .collect()
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_fail_and_missing() {
        let log = "boot noise\nTEST a PASS\nTEST b FAIL: went wrong\n";
        let got = parse(log, &["a", "b=3", "c"]);
        assert_eq!(
            got.results,
            vec![
                ("a".into(), CaseResult::Pass),
                ("b".into(), CaseResult::Fail("went wrong".into())),
                ("c".into(), CaseResult::Missing),
            ]
        );
        assert!(!got.done);
        assert_eq!(got.crash, None);
    }

    #[test]
    fn reads_crash_and_done() {
        let log = "TEST a PASS\r\nPANIC at src/x.rs:1:2: boom\r\nTESTS DONE\r\n";
        let got = parse(log, &["a"]);
        assert!(got.done);
        assert_eq!(got.crash.as_deref(), Some("PANIC at src/x.rs:1:2: boom"));
    }

    #[test]
    fn a_repeated_case_gets_each_verdict_in_turn() {
        let got = parse("TEST a PASS\nTEST a FAIL: second\n", &["a", "a"]);
        assert_eq!(got.results[0].1, CaseResult::Pass);
        assert_eq!(got.results[1].1, CaseResult::Fail("second".into()));
    }

    #[test]
    fn finds_interleaved_lines() {
        let log = "[i0 c0] INFO  whole line\n[i1 c0] INFO  half[i2 c0] INFO  other\nTEST a PASS\n";
        assert_eq!(
            interleaved_lines(log),
            vec!["[i1 c0] INFO  half[i2 c0] INFO  other"]
        );
        assert!(interleaved_lines("[i0 c0] INFO  mentions [ix] fine\n").is_empty());
    }

    #[test]
    fn tail_takes_last_lines() {
        assert_eq!(tail("1\n2\n3\n", 2), vec!["2", "3"]);
        assert_eq!(tail("1\n", 5), vec!["1"]);
    }
}
