//! A small argument parser: flags, flags with a value, and positionals, with clear errors.

use crate::Error;

pub fn usage_error(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Parsed arguments of one command.
#[derive(Debug, Default)]
pub struct Args {
    flags: Vec<String>,
    values: Vec<(String, String)>,
    pub positionals: Vec<String>,
}

impl Args {
    /// Parses `argv` given the command's boolean `flags` and `valued` options (names without
    /// the leading `--`), allowing at most `max_positionals` positionals.
    pub fn parse(
        argv: &[String],
        flags: &[&str],
        valued: &[&str],
        max_positionals: usize,
    ) -> Result<Args, Error> {
        let mut out = Args::default();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if flags.contains(&name) {
                    if inline.is_some() {
                        return Err(usage_error(format!("--{name} takes no value")));
                    }
                    out.flags.push(name.to_string());
                } else if valued.contains(&name) {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| usage_error(format!("--{name} needs a value")))?,
                    };
                    out.values.push((name.to_string(), value));
                } else {
                    return Err(usage_error(format!("unknown option '{arg}'")));
                }
            } else if arg.starts_with('-') && arg.len() > 1 {
                return Err(usage_error(format!("unknown option '{arg}'")));
            } else {
                if out.positionals.len() == max_positionals {
                    return Err(usage_error(format!("unexpected argument '{arg}'")));
                }
                out.positionals.push(arg.clone());
            }
        }
        Ok(out)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable option, in the order given.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The kernel profile asked for by `--release` / `--debug`: release (true) unless `--debug` is
/// given. `--release` is accepted, and changes nothing, for scripts written when debug was the
/// default; giving both is an error.
pub fn release_profile(args: &Args) -> Result<bool, Error> {
    match (args.flag("release"), args.flag("debug")) {
        (true, true) => Err(usage_error(
            "--release and --debug contradict each other: give one (release is the default)",
        )),
        (_, debug) => Ok(!debug),
    }
}

/// Parses a memory size: `512M`, `2G`, `1048576K`, or plain MiB (`512`). Returns MiB.
pub fn parse_size_mib(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "M"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| usage_error(format!("bad size '{text}': expected e.g. 512M or 2G")))?;
    let mib = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "K" => n / 1024,
        "M" => n,
        "G" => n * 1024,
        _ => {
            return Err(usage_error(format!(
                "bad size '{text}': unit must be K, M or G"
            )));
        }
    };
    if !(64..=1024 * 1024).contains(&mib) {
        return Err(usage_error(format!(
            "size '{text}' out of range: between 64M and 1T"
        )));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_values_positionals() {
        let a = Args::parse(
            &v(&["--smp", "4", "--uefi", "x", "--memory=1G"]),
            &["uefi"],
            &["smp", "memory"],
            1,
        )
        .unwrap();
        assert!(a.flag("uefi"));
        assert_eq!(a.value("smp"), Some("4"));
        assert_eq!(a.value("memory"), Some("1G"));
        assert_eq!(a.positionals, vec!["x"]);
    }

    #[test]
    fn repeated_values_are_all_kept() {
        let a = Args::parse(
            &v(&["--init", "1=hello", "--init=2=spin 5", "--smp", "4"]),
            &[],
            &["init", "smp"],
            0,
        )
        .unwrap();
        assert_eq!(
            a.values("init").collect::<Vec<_>>(),
            ["1=hello", "2=spin 5"]
        );
        assert_eq!(a.value("init"), Some("2=spin 5"));
        assert_eq!(a.values("smp").collect::<Vec<_>>(), ["4"]);
        assert_eq!(a.values("memory").count(), 0);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Args::parse(&v(&["--bogus"]), &[], &[], 0),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Args::parse(&v(&["--smp"]), &[], &["smp"], 0),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Args::parse(&v(&["a", "b"]), &[], &[], 1),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Args::parse(&v(&["--uefi=1"]), &["uefi"], &[], 0),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Args::parse(&v(&["-x"]), &[], &[], 1),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn release_is_the_default_profile() {
        let profile = |argv: &[&str]| {
            let a = Args::parse(&v(argv), &["release", "debug"], &[], 0).unwrap();
            release_profile(&a)
        };
        assert!(profile(&[]).unwrap());
        assert!(profile(&["--release"]).unwrap());
        assert!(!profile(&["--debug"]).unwrap());
        assert!(matches!(
            profile(&["--release", "--debug"]),
            Err(Error::Usage(m)) if m.contains("--release and --debug")
        ));
        assert!(matches!(
            profile(&["--debug", "--release"]),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512M").unwrap(), 512);
        assert_eq!(parse_size_mib("2G").unwrap(), 2048);
        assert_eq!(parse_size_mib("2GiB").unwrap(), 2048);
        assert_eq!(parse_size_mib("256").unwrap(), 256);
        assert!(parse_size_mib("12X").is_err());
        assert!(parse_size_mib("1M").is_err());
        assert!(parse_size_mib("").is_err());
    }
}
