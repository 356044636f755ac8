//! Benchmark figures: summaries of samples, and the one-line text form in which the guest
//! reports them on its serial port and `cargo xtask bench` reads them back.
//!
//! ```text
//! BENCH <name> <key>=<value> <key>=<value> ...
//! BENCH rtt.polling unit=ns n=2000 min=812 median=901 p99=1500 max=9000 mean=950
//! BENCH tput.suppress unit=msg/s msgs=100000 ns=81000000 value=1234567
//! ```
//!
//! Names are dotted words; keys are words; values are unsigned integers or words (no spaces).
//! The guest formats with `core::fmt`, so this crate needs no allocator; the host side parses
//! with [`parse_line`].

#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

pub mod budgets;

/// What a set of samples looks like: the figures every benchmark reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub n: u64,
    pub min: u64,
    /// The lower median (the sample at index `(n - 1) / 2` once sorted).
    pub median: u64,
    /// 99th percentile, nearest rank: the smallest sample with at least 99 % of the samples at
    /// or below it.
    pub p99: u64,
    pub max: u64,
    /// Arithmetic mean, rounded down.
    pub mean: u64,
}

impl Summary {
    /// Summarises `samples` (sorting them in place). `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        // Nearest rank: ceil(0.99 * n), 1-based.
        let rank = (99 * n).div_ceil(100).max(1);
        Some(Self {
            n: n as u64,
            min: samples[0],
            median: samples[(n - 1) / 2],
            p99: samples[rank - 1],
            max: samples[n - 1],
            mean: (sum / n as u128) as u64,
        })
    }

    /// The same summary with every figure converted by `f` (e.g. TSC ticks to nanoseconds).
    pub fn map(self, f: impl Fn(u64) -> u64) -> Self {
        Self {
            n: self.n,
            min: f(self.min),
            median: f(self.median),
            p99: f(self.p99),
            max: f(self.max),
            mean: f(self.mean),
        }
    }
}

/// `value * num / den` without overflow in the intermediate product (saturating at `u64::MAX`).
/// Converts TSC ticks to nanoseconds: `scale(ticks, 1_000_000, ticks_per_ms)`.
pub fn scale(value: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return u64::MAX;
    }
    let r = u128::from(value) * u128::from(num) / u128::from(den);
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// A summary in the line format, after `BENCH <name> `: `unit=ns n=.. min=.. median=..
/// p99=.. max=.. mean=..`.
pub struct SummaryFields<'a> {
    pub unit: &'a str,
    pub summary: &'a Summary,
}

impl fmt::Display for SummaryFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.summary;
        write!(
            f,
            "unit={} n={} min={} median={} p99={} max={} mean={}",
            self.unit, s.n, s.min, s.median, s.p99, s.max, s.mean
        )
    }
}

/// The prefix of every benchmark line.
pub const PREFIX: &str = "BENCH";

/// Why a line is not a well-formed benchmark line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// It does not start with `BENCH `.
    NotBench,
    /// `BENCH` with no name after it.
    NoName,
    /// A field that is not `key=value`, or has an empty key or value.
    BadField,
}

/// One parsed benchmark line: its name and its `key=value` fields, in order.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub name: &'a str,
    rest: &'a str,
}

impl<'a> Line<'a> {
    /// The fields, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.rest
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` as an integer.
    pub fn int(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// The summary carried in the fields (`n`, `min`, `median`, `p99`, `max`, `mean`).
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            n: self.int("n")?,
            min: self.int("min")?,
            median: self.int("median")?,
            p99: self.int("p99")?,
            max: self.int("max")?,
            mean: self.int("mean")?,
        })
    }
}

/// Parses a benchmark line. Text before `BENCH` (a console prefix such as `[i0 c0] `) is
/// skipped.
pub fn parse_line(line: &str) -> Result<Line<'_>, ParseError> {
    let at = line.find("BENCH ").ok_or(ParseError::NotBench)?;
    let body = line[at + PREFIX.len()..].trim();
    let (name, rest) = body.split_once(' ').unwrap_or((body, ""));
    if name.is_empty() {
        return Err(ParseError::NoName);
    }
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {}
            _ => return Err(ParseError::BadField),
        }
    }
    Ok(Line { name, rest })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::vec::Vec;

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Summary::of(&mut []), None);
    }

    #[test]
    fn one_sample() {
        let s = Summary::of(&mut [7]).unwrap();
        assert_eq!(
            (s.n, s.min, s.median, s.p99, s.max, s.mean),
            (1, 7, 7, 7, 7, 7)
        );
    }

    #[test]
    fn hundred_samples() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(s.n, 100);
        assert_eq!(s.min, 1);
        assert_eq!(s.median, 50);
        assert_eq!(s.p99, 99);
        assert_eq!(s.max, 100);
        assert_eq!(s.mean, 50);
    }

    #[test]
    fn p99_catches_the_tail() {
        // 1000 samples, the 11 largest are outliers: p99 (rank 990) is one of them.
        let mut v: Vec<u64> = (0..1000)
            .map(|i| if i >= 989 { 1_000_000 } else { 10 })
            .collect();
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(s.median, 10);
        assert_eq!(s.p99, 1_000_000);
        // With 10 outliers, rank 990 is the last ordinary sample.
        let mut v: Vec<u64> = (0..1000)
            .map(|i| if i >= 990 { 1_000_000 } else { 10 })
            .collect();
        assert_eq!(Summary::of(&mut v).unwrap().p99, 10);
    }

    #[test]
    fn huge_values_do_not_overflow_the_mean() {
        let s = Summary::of(&mut [u64::MAX, u64::MAX]).unwrap();
        assert_eq!(s.mean, u64::MAX);
    }

    #[test]
    fn scale_converts_without_overflow() {
        assert_eq!(scale(3_000_000, 1_000_000, 3_000_000), 1_000_000);
        assert_eq!(scale(u64::MAX, 1_000_000, 1_000_000), u64::MAX);
        assert_eq!(scale(u64::MAX, 2, 1), u64::MAX);
        assert_eq!(scale(5, 1, 0), u64::MAX);
    }

    #[test]
    fn summary_round_trips_through_a_line() {
        let s = Summary::of(&mut [5, 1, 9, 3]).unwrap().map(|t| t * 2);
        let text = format!(
            "[i0 c0] BENCH rtt.polling {} samples_dropped=0",
            SummaryFields {
                unit: "ns",
                summary: &s
            }
        );
        let line = parse_line(&text).unwrap();
        assert_eq!(line.name, "rtt.polling");
        assert_eq!(line.get("unit"), Some("ns"));
        assert_eq!(line.summary(), Some(s));
        assert_eq!(line.int("samples_dropped"), Some(0));
        assert_eq!(line.get("missing"), None);
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert_eq!(parse_line("TEST x PASS").unwrap_err(), ParseError::NotBench);
        assert_eq!(parse_line("BENCH").unwrap_err(), ParseError::NotBench);
        assert_eq!(parse_line("BENCH  ").unwrap_err(), ParseError::NoName);
        assert_eq!(parse_line("BENCH a b").unwrap_err(), ParseError::BadField);
        assert_eq!(parse_line("BENCH a b=").unwrap_err(), ParseError::BadField);
        assert_eq!(parse_line("BENCH a =1").unwrap_err(), ParseError::BadField);
        let l = parse_line("BENCH boot").unwrap();
        assert_eq!((l.name, l.fields().count()), ("boot", 0));
        assert_eq!(l.summary(), None);
    }
}
