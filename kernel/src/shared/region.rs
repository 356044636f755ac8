//! This instance's view of the shared region (`mk-shared`): the instance table, the ownership
//! tables, the console lock and the mailboxes. Instance 0 formats it; the others attach to it.
//! It is reached through each instance's physical map (every instance maps it at the same
//! virtual address, but nothing relies on that).

use alloc::string::String;

use mk_dispatch::PeerTelemetry;
use mk_plan::MemRange;
use mk_shared::{Allocation, InstanceState, SharedRegion, Telemetry};
use spin::Once;

use crate::arch::tsc;

static REGION: Once<SharedRegion<'static>> = Once::new();
/// The page pool for data larger than a message, and its physical base.
static POOL: Once<(mk_pool::Pool<'static>, u64)> = Once::new();
/// Per-pair messaging telemetry (`mk_dispatch::PeerTelemetry`, all atomics, `repr(C)`): row `i`
/// holds instance `i`'s counters for each peer `j` (sent, received, rejected by reason, busy,
/// doorbells, call latencies). Only instance `i` writes row `i`; every instance may read all.
static TELEMETRY: Once<Telemetry<'static, PeerTelemetry>> = Once::new();
/// Pages in the pool: 2 MiB.
pub const POOL_PAGES: u32 = 512;

/// Bytes the shared allocation needs for `instances` instances: the `mk-shared` region (instance
/// table, ownership tables, console lock, mailboxes), then the page pool, then the telemetry
/// table (the layout is mk-shared's `allocation_layout`).
pub fn size_for(instances: usize) -> u64 {
    mk_shared::allocation_size::<PeerTelemetry>(instances.max(1), POOL_PAGES) as u64
}

/// Instance `i`'s telemetry row (one entry per peer), in shared memory.
pub fn telemetry_row(i: usize) -> Option<&'static [PeerTelemetry]> {
    TELEMETRY.get()?.row(i)
}

/// The pool and its physical base.
pub fn pool() -> Option<&'static (mk_pool::Pool<'static>, u64)> {
    POOL.get()
}

pub fn get() -> Option<&'static SharedRegion<'static>> {
    REGION.get()
}

/// Keeps the parts of the allocation for the accessors above.
fn publish(all: Allocation<'static, PeerTelemetry>, phys: u64) {
    let pool_phys = phys + all.layout.pool.offset as u64;
    let region = REGION.call_once(|| all.region);
    crate::arch::ioapic::use_shared_lock(region.ioapic_lock(), crate::instance::id() as usize);
    POOL.call_once(|| (all.pool, pool_phys));
    TELEMETRY.call_once(|| all.telemetry);
}

/// Instance 0: formats the shared allocation at `shared` for `count` instances.
pub fn init(shared: MemRange, count: usize) -> Result<(), String> {
    let raw = crate::memory::shared_window(shared.start, shared.len)?;
    let all = Allocation::init(raw, count, POOL_PAGES, tsc::read())
        .map_err(|e| alloc::format!("{e:?}"))?;
    publish(all, shared.start);
    Ok(())
}

/// Every other instance: attaches to the allocation instance 0 formatted.
pub fn attach(phys: u64, len: u64) -> Result<(), String> {
    let raw = crate::memory::shared_window(phys, len)?;
    let all = Allocation::attach(raw).map_err(|e| alloc::format!("{e:?}"))?;
    publish(all, phys);
    Ok(())
}

/// Instance 0, before it starts instance `id`.
pub fn set_booting(id: usize, now: u64) {
    if let Some(i) = get().and_then(|r| r.instance(id).ok()) {
        let _ = i.start_boot(now);
    }
}

/// Instance 0, when instance `id` failed to start.
pub fn set_dead(id: usize) {
    if let Some(i) = get().and_then(|r| r.instance(id).ok()) {
        let _ = i.set_state(InstanceState::Dead);
    }
}

/// Publishes this instance's CPUs and memory and declares it running.
pub fn publish_running(id: u32, cpus: &[u32]) {
    let Some(inst) = get().and_then(|r| r.instance(id as usize).ok()) else {
        return;
    };
    let mut ranges: [(u64, u64); mk_shared::RANGES_PER_INSTANCE] =
        [(0, 0); mk_shared::RANGES_PER_INSTANCE];
    let mut n = 0;
    crate::memory::frames::with(|a| {
        for run in a.owned_ranges() {
            if n < ranges.len() {
                ranges[n] = (run.start * 4096, run.count * 4096);
                n += 1;
            }
        }
    });
    let _ = inst.publish_resources(cpus, &ranges[..n]);
    let _ = inst.mark_running(tsc::read());
}

/// Instance 0: waits up to `ms` for instance `id` to declare itself running.
pub fn wait_running(id: usize, ms: u64) -> Result<(), &'static str> {
    let inst = get()
        .and_then(|r| r.instance(id).ok())
        .ok_or("no shared region")?;
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    loop {
        match inst.state() {
            Ok(InstanceState::Running) => return Ok(()),
            Ok(InstanceState::Dead) => return Err("it was declared dead"),
            _ if tsc::read() > deadline => return Err("it did not report running in time"),
            _ => core::hint::spin_loop(),
        }
    }
}

/// `(state name, boot time in ms)` of instance `id`.
pub fn status(id: usize) -> (&'static str, u64) {
    let Some(inst) = get().and_then(|r| r.instance(id).ok()) else {
        return ("?", 0);
    };
    let state = match inst.state() {
        Ok(InstanceState::Empty) => "empty",
        Ok(InstanceState::Booting) => "booting",
        Ok(InstanceState::Running) => "running",
        Ok(InstanceState::Stopped) => "stopped",
        Ok(InstanceState::Dead) => "dead",
        Err(_) => "corrupt",
    };
    let ms = inst.ready_tsc().saturating_sub(inst.boot_tsc()) / tsc::ticks_per_ms();
    (state, ms)
}

/// Publishes report word `slot` of this instance (diagnostics and tests).
pub fn report(slot: usize, value: u64) {
    if let Some(i) = get().and_then(|r| r.instance(crate::instance::id() as usize).ok()) {
        let _ = i.set_report(slot, value);
    }
}

/// Report word `slot` of instance `id`, once published.
pub fn read_report(id: usize, slot: usize) -> Option<u64> {
    get()?.instance(id).ok()?.report(slot)
}

/// Instance 0, once: records who owns what in the ownership tables: each partition's CPUs and
/// memory, and every IO APIC line (instance 0 receives device interrupts until the IRQ
/// services move them). Memory is owned in 2 MiB chunks: a chunk that straddles two partitions
/// (partition boundaries are only page-aligned) stays unowned in the table, and the partitions'
/// own frame allocators remain the authority for it.
pub fn record_ownership(plan: &mk_plan::Plan) -> Result<(), String> {
    use mk_shared::Resource;
    let r = get().ok_or("no shared region")?;
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    for p in plan.partitions() {
        for &apic in p.cpus {
            r.claim(Resource::Cpu(apic), p.index, None)
                .map_err(|e| alloc::format!("CPU {apic}: {e:?}"))?;
        }
        for m in p.memory {
            let first = m.start.next_multiple_of(chunk);
            let end = m.end() & !(chunk - 1);
            if first < end {
                r.claim_memory(first, end - first, p.index, None)
                    .map_err(|e| alloc::format!("memory {m}: {e:?}"))?;
            }
        }
    }
    for gsi in 0..crate::arch::ioapic::line_count().min(mk_shared::MAX_IRQS as u32) {
        r.claim(Resource::Irq(gsi), 0, None)
            .map_err(|e| alloc::format!("IRQ {gsi}: {e:?}"))?;
    }
    Ok(())
}
