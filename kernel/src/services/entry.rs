//! This instance's entry in the shared instance table: what it publishes about itself (its
//! CPUs, first CPU first, and its memory ranges). Written from private state only (the CPU
//! list of `smp`, the frame allocator's ranges), never from the table itself, which any
//! instance can write over: once a second the entry is compared with what it should say and
//! rewritten when it does not (counted in [`HEALED`], logged at most once a second).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::tsc;
use crate::cpus::smp;
use crate::memory::frames;
use crate::shared::region;

/// Times this instance found its entry no longer saying what it has, and rewrote it.
pub static HEALED: AtomicU64 = AtomicU64::new(0);

/// When the entry is next checked (TSC).
static NEXT_CHECK: AtomicU64 = AtomicU64::new(0);

/// What the entry should say: the CPUs and memory ranges this instance has, by its own state.
fn wanted() -> (Vec<u32>, Vec<(u64, u64)>) {
    let mut ranges = Vec::new();
    frames::with(|a| {
        for run in a.owned_ranges().take(mk_shared::RANGES_PER_INSTANCE) {
            ranges.push((run.start * 4096, run.count * 4096));
        }
    });
    (smp::cpu_list(), ranges)
}

/// Publishes this instance's CPUs and memory ranges (after a move, or to repair the entry).
pub fn publish() {
    let me = crate::instance::id();
    let Some(inst) = region::get().and_then(|r| r.instance(me).ok()) else {
        return;
    };
    let (cpus, ranges) = wanted();
    write(&inst, &cpus, &ranges);
}

fn write(inst: &mk_shared::Instance<'_>, cpus: &[u32], ranges: &[(u64, u64)]) {
    if let Err(e) = inst.publish_resources(cpus, ranges) {
        crate::warn!("publishing this instance's CPUs and memory: {e:?}");
    }
}

/// From the poll hook: once a second, rewrites the entry if it no longer says what
/// [`publish`] would write (another instance wrote over it).
pub fn heal_if_due() {
    let now = tsc::read();
    let next = NEXT_CHECK.load(Ordering::Relaxed);
    if now < next
        || NEXT_CHECK
            .compare_exchange(
                next,
                now + 1000 * tsc::ticks_per_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    let me = crate::instance::id();
    let Some(inst) = region::get().and_then(|r| r.instance(me).ok()) else {
        return;
    };
    let (cpus, ranges) = wanted();
    let total: u64 = ranges.iter().map(|&(_, len)| len).sum();
    let intact = inst.resources().is_ok_and(|res| {
        res.cpus() == cpus.as_slice()
            && res.ranges() == ranges.as_slice()
            && res.total_bytes == total
    });
    if intact {
        return;
    }
    HEALED.fetch_add(1, Ordering::Relaxed);
    crate::warn!(
        "this instance's entry in the shared table no longer says what it has (written over?); publishing it again"
    );
    write(&inst, &cpus, &ranges);
}
