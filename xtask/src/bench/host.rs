//! Host-side baselines for the message round-trip benchmark.
//!
//! The benchmark measures how long a message takes to go from one kernel instance to another
//! and back inside a QEMU guest. A number like "1.2 µs" means little on its own, so xtask also
//! measures, on the host it runs on, the two ends of the range that number should fall in:
//!
//! - [`cache_line_pingpong`]: two threads passing one cache line back and forth by spinning on
//!   it. This is the floor: what the hardware charges to move a line between two cores, with no
//!   operating system involved. A guest instance spinning on shared memory cannot beat it.
//! - [`eventfd_pingpong`]: two threads passing a token through two eventfds with blocking reads.
//!   This is what ordinary Linux IPC between two threads costs, sleeps and wake-ups included; a
//!   guest that sleeps between messages (HLT plus an IPI) pays something of that order or more.
//!
//! Both pin their two threads to CPUs 0 and 1 when the host has two or more CPUs, so that the
//! numbers are about two fixed cores and not about the scheduler moving threads around. The
//! threads are spawned for the purpose; the caller's own affinity is never changed (QEMU,
//! started later from the same thread, would inherit it).
//!
//! Timing: one cache-line round trip is around 100 ns, of the same order as reading the clock, so
//! timing each one with `Instant` would mostly measure `Instant`. Each cache-line sample is
//! instead the time of a batch of [`CACHE_LINE_BATCH`] round trips divided by the batch size.
//! An eventfd round trip takes microseconds, so each of its samples is a single round trip. The
//! first `warmup` samples (batches) of each run are taken and thrown away: they include the
//! threads starting, page faults, caches warming and CPU frequency ramping up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

/// Round trips per cache-line sample.
const CACHE_LINE_BATCH: u32 = 64;

/// Round trips per eventfd sample.
const EVENTFD_BATCH: u32 = 1;

/// The CPUs the measuring thread and the answering thread are pinned to.
const CPUS: [usize; 2] = [0, 1];

/// Written to the cache line to tell the answering thread to stop.
const STOP: u64 = u64::MAX;

/// Written to the eventfd to tell the answering thread to stop (an eventfd counter cannot hold
/// `u64::MAX`); anything but 1 stops it.
const EVENTFD_STOP: u64 = 2;

/// Spins on the cache line before a waiting thread yields its CPU. A round trip normally takes a
/// handful of spins; yielding keeps the test from crawling when the two threads share one CPU
/// (single-CPU host, or the other thread preempted).
const SPINS_BEFORE_YIELD: u32 = 1 << 10;

/// Round-trip samples in nanoseconds, warm-up excluded, and how they were taken.
pub struct HostSamples {
    pub rtt_ns: Vec<u64>,
    pub method: String,
    pub pinned: bool,
}

/// Two threads ping-ponging one cache line (a 64-byte aligned AtomicU64 each side writes in turn),
/// pinned to CPUs 0 and 1 (sched_setaffinity) when the machine has 2+ CPUs.
pub fn cache_line_pingpong(samples: usize, warmup: usize) -> Result<HostSamples, String> {
    let line = Line(AtomicU64::new(0));
    let pin = host_cpus() >= 2;
    let (rtt_ns, pinned) = thread::scope(|s| {
        let answerer = thread::Builder::new()
            .name("pingpong-answer".into())
            .spawn_scoped(s, || {
                let pinned = pin && pin_to(CPUS[1]);
                answer_cache_line(&line.0);
                pinned
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let measurer = thread::Builder::new()
            .name("pingpong-measure".into())
            .spawn_scoped(s, || {
                // Stops the answering thread however this thread ends.
                let _stop = StopLine(&line.0);
                let pinned = pin && pin_to(CPUS[0]);
                (measure_cache_line(&line.0, samples, warmup), pinned)
            });
        let measurer = match measurer {
            Ok(handle) => handle,
            Err(e) => {
                line.0.store(STOP, Ordering::Release);
                return Err(format!("cannot start a thread: {e}"));
            }
        };
        let measured = measurer.join();
        let answered = answerer.join();
        match (measured, answered) {
            (Ok((rtt_ns, pinned_here)), Ok(pinned_there)) => {
                Ok((rtt_ns, pinned_here && pinned_there))
            }
            _ => Err("a cache-line ping-pong thread panicked".to_string()),
        }
    })?;
    Ok(HostSamples {
        rtt_ns,
        method: format!(
            "batches of {CACHE_LINE_BATCH} round trips on one spinning cache line, Instant, {}",
            pinning(pinned)
        ),
        pinned,
    })
}

/// Two threads ping-ponging through two eventfds (write 1 to one, the other blocks in read,
/// answers on the second), pinned as above. Blocking reads: this is what Linux IPC between two
/// threads costs, wake-ups included.
pub fn eventfd_pingpong(samples: usize, warmup: usize) -> Result<HostSamples, String> {
    let ping = new_eventfd()?;
    let pong = new_eventfd()?;
    let pin = host_cpus() >= 2;
    let (rtt_ns, pinned) = thread::scope(|s| {
        let answerer = thread::Builder::new()
            .name("pingpong-answer".into())
            .spawn_scoped(s, || {
                let pinned = pin && pin_to(CPUS[1]);
                answer_eventfd(&ping, &pong).map(|()| pinned)
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let measurer = thread::Builder::new()
            .name("pingpong-measure".into())
            .spawn_scoped(s, || {
                // Stops the answering thread however this thread ends.
                let _stop = StopEventfd(&ping);
                let pinned = pin && pin_to(CPUS[0]);
                measure_eventfd(&ping, &pong, samples, warmup).map(|rtt_ns| (rtt_ns, pinned))
            });
        let measurer = match measurer {
            Ok(handle) => handle,
            Err(e) => {
                let _ = send(&ping, EVENTFD_STOP);
                return Err(format!("cannot start a thread: {e}"));
            }
        };
        let measured = measurer.join();
        let answered = answerer.join();
        match (measured, answered) {
            (Ok(Ok((rtt_ns, pinned_here))), Ok(Ok(pinned_there))) => {
                Ok((rtt_ns, pinned_here && pinned_there))
            }
            // The answering thread's error is the cause when both failed.
            (_, Ok(Err(e))) | (Ok(Err(e)), _) => Err(e),
            _ => Err("an eventfd ping-pong thread panicked".to_string()),
        }
    })?;
    Ok(HostSamples {
        rtt_ns,
        method: format!(
            "{EVENTFD_BATCH} round trip per sample through two eventfds, blocking reads, \
             Instant, {}",
            pinning(pinned)
        ),
        pinned,
    })
}

/// Number of CPUs the host has online (for the "vCPUs exceed host cores" warning).
pub fn host_cpus() -> usize {
    // SAFETY: sysconf only reads a system parameter; it takes no pointers and has no
    // preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    match usize::try_from(online) {
        Ok(n) if n > 0 => n,
        _ => thread::available_parallelism().map_or(1, std::num::NonZero::get),
    }
}

/// The shared cache line: the counter alone in its 64 bytes, so nothing else shares the line.
#[repr(align(64))]
struct Line(AtomicU64);

/// Stores [`STOP`] in the cache line when dropped.
struct StopLine<'a>(&'a AtomicU64);

impl Drop for StopLine<'_> {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::Release);
    }
}

/// Writes [`EVENTFD_STOP`] to the eventfd when dropped.
struct StopEventfd<'a>(&'a File);

impl Drop for StopEventfd<'_> {
    fn drop(&mut self) {
        // Best effort: if this write fails the answering thread cannot be reached anyway.
        let _ = send(self.0, EVENTFD_STOP);
    }
}

/// Measuring side: writes an odd number (ping), waits for the answer one above it (pong).
fn measure_cache_line(line: &AtomicU64, samples: usize, warmup: usize) -> Vec<u64> {
    let mut rtt_ns = Vec::with_capacity(samples);
    let mut value = 0;
    for batch in 0..warmup + samples {
        let start = Instant::now();
        for _ in 0..CACHE_LINE_BATCH {
            line.store(value + 1, Ordering::Release);
            value = wait_change(line, value + 1);
        }
        if batch >= warmup {
            rtt_ns.push(per_round_trip(start, CACHE_LINE_BATCH));
        }
    }
    rtt_ns
}

/// Answering side: waits for each ping, answers one above it, until it sees [`STOP`].
fn answer_cache_line(line: &AtomicU64) {
    let mut value = 0;
    loop {
        value = wait_change(line, value);
        if value == STOP {
            return;
        }
        value += 1;
        line.store(value, Ordering::Release);
    }
}

/// Spins until the line holds something other than `old`, and returns that.
fn wait_change(line: &AtomicU64, old: u64) -> u64 {
    let mut spins = 0;
    loop {
        let now = line.load(Ordering::Acquire);
        if now != old {
            return now;
        }
        core::hint::spin_loop();
        spins += 1;
        if spins == SPINS_BEFORE_YIELD {
            spins = 0;
            thread::yield_now();
        }
    }
}

/// Measuring side: writes 1 to `ping`, blocks reading `pong`.
fn measure_eventfd(
    ping: &File,
    pong: &File,
    samples: usize,
    warmup: usize,
) -> Result<Vec<u64>, String> {
    let mut rtt_ns = Vec::with_capacity(samples);
    for batch in 0..warmup + samples {
        let start = Instant::now();
        for _ in 0..EVENTFD_BATCH {
            send(ping, 1)?;
            let answer = receive(pong)?;
            if answer != 1 {
                return Err("eventfd ping-pong: the answering thread stopped".to_string());
            }
        }
        if batch >= warmup {
            rtt_ns.push(per_round_trip(start, EVENTFD_BATCH));
        }
    }
    Ok(rtt_ns)
}

/// Answering side: blocks reading `ping`, answers 1 on `pong`, until it reads anything but 1.
fn answer_eventfd(ping: &File, pong: &File) -> Result<(), String> {
    loop {
        let result = receive(ping).and_then(|value| match value {
            1 => send(pong, 1).map(|()| true),
            _ => Ok(false),
        });
        match result {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                // Unblocks the measuring thread, which is reading `pong`.
                let _ = send(pong, EVENTFD_STOP);
                return Err(e);
            }
        }
    }
}

fn new_eventfd() -> Result<File, String> {
    // SAFETY: eventfd takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Writes `value` to an eventfd (adds it to the counter).
fn send(mut fd: &File, value: u64) -> Result<(), String> {
    fd.write_all(&value.to_ne_bytes())
        .map_err(|e| format!("eventfd write: {e}"))
}

/// Reads an eventfd: blocks until the counter is non-zero, returns it and resets it to zero.
fn receive(mut fd: &File) -> Result<u64, String> {
    let mut bytes = [0; 8];
    fd.read_exact(&mut bytes)
        .map_err(|e| format!("eventfd read: {e}"))?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Pins the calling thread to `cpu`; false when the kernel refuses (CPU offline, outside the
/// cgroup's set, ...).
fn pin_to(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid (empty) value;
    // CPU_SET only indexes the array, and `cpu` (0 or 1) is far below its 1024 bits;
    // sched_setaffinity with pid 0 acts on the calling thread and only reads `set`, which lives
    // across the call, for the size given.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    result == 0
}

/// Nanoseconds per round trip for a batch of `count` started at `start`, rounded to nearest.
fn per_round_trip(start: Instant, count: u32) -> u64 {
    let total = start.elapsed().as_nanos();
    let count = u128::from(count);
    u64::try_from((total + count / 2) / count).unwrap_or(u64::MAX)
}

fn pinning(pinned: bool) -> String {
    if pinned {
        format!("pinned to CPUs {} and {}", CPUS[0], CPUS[1])
    } else {
        "not pinned".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The two ping-pongs would fight over the same two CPUs if run side by side.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn median(samples: &[u64]) -> u64 {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    }

    fn check(result: Result<HostSamples, String>, samples: usize) -> HostSamples {
        let host = result.expect("ping-pong failed");
        assert_eq!(host.rtt_ns.len(), samples);
        assert!(host.rtt_ns.iter().all(|&ns| ns > 0), "{:?}", host.rtt_ns);
        assert!(!host.method.is_empty());
        if host_cpus() < 2 {
            assert!(!host.pinned);
        }
        host
    }

    #[test]
    fn cache_line_gives_the_samples_asked_for() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let host = check(cache_line_pingpong(2000, 200), 2000);
        println!(
            "cache line: median {} ns ({})",
            median(&host.rtt_ns),
            host.method
        );
    }

    #[test]
    fn eventfd_gives_the_samples_asked_for() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let host = check(eventfd_pingpong(2000, 200), 2000);
        println!(
            "eventfd: median {} ns ({})",
            median(&host.rtt_ns),
            host.method
        );
    }

    #[test]
    fn zero_samples_end_too() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        assert!(cache_line_pingpong(0, 0).unwrap().rtt_ns.is_empty());
        assert!(eventfd_pingpong(0, 0).unwrap().rtt_ns.is_empty());
    }

    #[test]
    fn host_has_a_cpu() {
        assert!(host_cpus() >= 1);
    }
}
