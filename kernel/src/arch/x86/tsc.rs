//! The time stamp counter, calibrated once against the PIT; the kernel's clock for timeouts and
//! measurements.

use core::sync::atomic::{AtomicU64, Ordering};

static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

pub fn read() -> u64 {
    // SAFETY: RDTSC has no side effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency over `window_ms` of PIT time.
pub fn calibrate(window_ms: u64) -> u64 {
    let start = read();
    for _ in 0..window_ms.div_ceil(10) {
        super::pit::wait_micros(10_000);
    }
    let per_ms = (read() - start) / window_ms.div_ceil(10).max(1) / 10;
    TICKS_PER_MS.store(per_ms.max(1), Ordering::Relaxed);
    per_ms
}

/// Sets the TSC rate measured elsewhere (by instance 0).
pub fn set_ticks_per_ms(per_ms: u64) {
    TICKS_PER_MS.store(per_ms.max(1), Ordering::Relaxed);
}

pub fn ticks_per_ms() -> u64 {
    TICKS_PER_MS.load(Ordering::Relaxed).max(1)
}

/// A TSC rate for time bounds that must never come out too short: the calibrated rate, or,
/// before calibration (or on a zero rate from a boot descriptor), 10 GHz, above any x86 TSC, so
/// an early bound is at worst a few times too long.
pub fn ticks_per_ms_for_bounds() -> u64 {
    match TICKS_PER_MS.load(Ordering::Relaxed) {
        0 | 1 => 10_000_000,
        t => t,
    }
}

/// A shared lock's wait bound ([`mk_shared::WaitMs`]) in TSC ticks.
pub fn wait_bound(w: mk_shared::WaitMs) -> mk_shared::WaitBound {
    w.ticks(ticks_per_ms_for_bounds())
}

/// Nanoseconds since an arbitrary origin (the TSC's).
pub fn nanos() -> u64 {
    ((read() as u128 * 1_000_000) / ticks_per_ms() as u128) as u64
}

/// Whole seconds since the TSC's origin (the unit of the log limiters' windows).
pub fn seconds() -> u64 {
    read() / (ticks_per_ms() * 1000).max(1)
}

/// Busy-waits `micros` microseconds on the TSC.
pub fn spin_micros(micros: u64) {
    let end = read() + micros * ticks_per_ms() / 1000;
    while read() < end {
        core::hint::spin_loop();
    }
}
