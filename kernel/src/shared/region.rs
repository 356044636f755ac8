//! This instance's view of the shared region (`mk-shared`): the instance table, the ownership
//! tables, the console lock and the mailboxes. Instance 0 formats it; the others attach to it.
//! It is reached through each instance's physical map (every instance maps it at the same
//! virtual address, but nothing relies on that).

use core::fmt;

use mk_dispatch::PeerTelemetry;
use mk_plan::MemRange;
use mk_shared::{Allocation, InstanceState, Resource, SharedRegion, Telemetry};
use spin::Once;

use crate::arch::tsc;
use crate::instance::InstanceId;

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
pub fn telemetry_row(i: InstanceId) -> Option<&'static [PeerTelemetry]> {
    TELEMETRY.get()?.row(i.index())
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
    crate::arch::ioapic::use_shared_lock(region.ioapic_lock(), crate::instance::id());
    POOL.call_once(|| (all.pool, pool_phys));
    TELEMETRY.call_once(|| all.telemetry);
}

/// What went wrong with the shared region, and whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    /// This instance has no shared region (not formatted or attached yet).
    NotAttached,
    /// Mapping the region into this instance failed (this instance's page tables).
    Map(crate::memory::WindowError),
    /// Formatting or attaching failed: the region's contents (instance 0's formatting, or the
    /// boot descriptor's address and length) do not check.
    Layout(mk_shared::Error),
    /// Recording an owner at boot failed: the plan gave `resource` to two partitions, or the
    /// table does not hold it.
    Ownership {
        resource: Resource,
        error: mk_shared::Error,
    },
    /// Waiting for an instance to start: it was declared dead (the peer's fault).
    Died,
    /// Waiting for an instance to start: it did not report running in time.
    Timeout,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAttached => f.write_str("no shared region"),
            Self::Map(e) => write!(f, "mapping the shared region: {e}"),
            Self::Layout(e) => write!(f, "{e:?}"),
            Self::Ownership { resource, error } => write!(f, "{resource:?}: {error:?}"),
            Self::Died => f.write_str("it was declared dead"),
            Self::Timeout => f.write_str("it did not report running in time"),
        }
    }
}

/// Instance 0: formats the shared allocation at `shared` for `count` instances.
pub fn init(shared: MemRange, count: usize) -> Result<(), RegionError> {
    let raw = crate::memory::shared_window(shared.start, shared.len).map_err(RegionError::Map)?;
    let all = Allocation::init(raw, count, POOL_PAGES, tsc::read()).map_err(RegionError::Layout)?;
    publish(all, shared.start);
    Ok(())
}

/// Every other instance: attaches to the allocation instance 0 formatted.
pub fn attach(phys: u64, len: u64) -> Result<(), RegionError> {
    let raw = crate::memory::shared_window(phys, len).map_err(RegionError::Map)?;
    let all = Allocation::attach(raw).map_err(RegionError::Layout)?;
    publish(all, phys);
    Ok(())
}

/// Instance 0, before it starts instance `id`.
pub fn set_booting(id: InstanceId, now: u64) {
    if let Some(i) = get().and_then(|r| r.instance(id).ok()) {
        let _ = i.start_boot(now);
    }
}

/// Instance 0, when instance `id` failed to start.
pub fn set_dead(id: InstanceId) {
    if let Some(i) = get().and_then(|r| r.instance(id).ok()) {
        let _ = i.set_state(InstanceState::Dead);
    }
}

/// Publishes this instance's CPUs and memory and declares it running.
pub fn publish_running(id: InstanceId, cpus: &[u32]) {
    let Some(inst) = get().and_then(|r| r.instance(id).ok()) else {
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
pub fn wait_running(id: InstanceId, ms: u64) -> Result<(), RegionError> {
    let inst = get()
        .and_then(|r| r.instance(id).ok())
        .ok_or(RegionError::NotAttached)?;
    let deadline = tsc::read() + ms * tsc::ticks_per_ms();
    loop {
        match inst.state() {
            Ok(InstanceState::Running) => return Ok(()),
            Ok(InstanceState::Dead) => return Err(RegionError::Died),
            _ if tsc::read() > deadline => return Err(RegionError::Timeout),
            _ => core::hint::spin_loop(),
        }
    }
}

/// `(state name, boot time in ms)` of instance `id`.
pub fn status(id: InstanceId) -> (&'static str, u64) {
    let Some(inst) = get().and_then(|r| r.instance(id).ok()) else {
        return ("?", 0);
    };
    let state = inst.state().map_or("corrupt", InstanceState::name);
    let ms = inst.ready_tsc().saturating_sub(inst.boot_tsc()) / tsc::ticks_per_ms();
    (state, ms)
}

/// Publishes report word `slot` of this instance (diagnostics and tests).
pub fn report(slot: usize, value: u64) {
    if let Some(i) = get().and_then(|r| r.instance(crate::instance::id()).ok()) {
        let _ = i.set_report(slot, value);
    }
}

/// Report word `slot` of instance `id`, once published.
pub fn read_report(id: InstanceId, slot: usize) -> Option<u64> {
    get()?.instance(id).ok()?.report(slot)
}

/// Instance 0, once: records who owns what in the ownership tables: each partition's CPUs and
/// memory, and every IO APIC line (instance 0 receives device interrupts until the IRQ
/// services move them). Memory is owned in 2 MiB chunks: a chunk that straddles two partitions
/// (partition boundaries are only page-aligned) stays unowned in the table, and the partitions'
/// own frame allocators remain the authority for it.
pub fn record_ownership(plan: &mk_plan::Plan) -> Result<(), RegionError> {
    let r = get().ok_or(RegionError::NotAttached)?;
    let chunk = mk_shared::MEM_CHUNK_SIZE;
    let owned = |resource| move |error| RegionError::Ownership { resource, error };
    for p in plan.partitions() {
        let by = InstanceId::from_index(p.index).ok_or(RegionError::Layout(
            mk_shared::Error::BadInstanceCount(p.index + 1),
        ))?;
        for &apic in p.cpus {
            let cpu = Resource::Cpu(apic);
            r.claim(cpu, by, None).map_err(owned(cpu))?;
        }
        for m in p.memory {
            let first = m.start.next_multiple_of(chunk);
            let end = m.end() & !(chunk - 1);
            if first < end {
                r.claim_memory(first, end - first, by, None)
                    .map_err(owned(Resource::memory_at(first)))?;
            }
        }
    }
    for gsi in 0..crate::arch::ioapic::line_count().min(mk_shared::MAX_IRQS as u32) {
        let line = Resource::Irq(gsi);
        r.claim(line, InstanceId::ZERO, None).map_err(owned(line))?;
    }
    Ok(())
}
