//! This instance's view of the shared region (`mk-shared`): the instance table, the ownership
//! tables, the console lock and the mailboxes. Instance 0 formats it; the others attach to it.
//! It is reached through each instance's physical map (every instance maps it at the same
//! virtual address, but nothing relies on that).

use alloc::string::String;

use mk_plan::MemRange;
use mk_shared::{InstanceState, SharedRegion};
use spin::Once;

use crate::arch::tsc;
use crate::memory::frames::phys_to_virt;

static REGION: Once<SharedRegion<'static>> = Once::new();
/// The page pool for data larger than a message, right after the `mk-shared` region.
static POOL: Once<(mk_pool::Pool<'static>, u64)> = Once::new();
/// Pages in the pool: 2 MiB.
pub const POOL_PAGES: u32 = 512;

/// Bytes the shared allocation needs for `instances` instances: the `mk-shared` region (instance
/// table, ownership tables, console lock, mailboxes), then the page pool, then the telemetry
/// table.
pub fn size_for(instances: usize) -> u64 {
    (mk_shared::region_size(instances.max(1)) + mk_pool::region_size(POOL_PAGES) + TELEMETRY_BYTES)
        as u64
}

/// Per-pair messaging telemetry (`mk_dispatch::PeerTelemetry`, all atomics, `repr(C)`): row `i`
/// holds instance `i`'s counters for each peer `j` (sent, received, rejected by reason, busy,
/// doorbells, call latencies). Only instance `i` writes row `i`; every instance may read all.
const TELEMETRY_ROWS: usize = mk_shared::MAX_INSTANCES;
const TELEMETRY_BYTES: usize =
    (TELEMETRY_ROWS * TELEMETRY_ROWS * core::mem::size_of::<mk_dispatch::PeerTelemetry>())
        .next_multiple_of(4096);
static TELEMETRY: Once<u64> = Once::new();

/// Instance `i`'s telemetry row (one entry per peer), in shared memory.
pub fn telemetry_row(i: usize) -> Option<&'static [mk_dispatch::PeerTelemetry]> {
    let base = *TELEMETRY.get()?;
    if i >= TELEMETRY_ROWS {
        return None;
    }
    let row =
        base as usize + i * TELEMETRY_ROWS * core::mem::size_of::<mk_dispatch::PeerTelemetry>();
    // SAFETY: the table lies inside the shared allocation (checked in `place_telemetry`), mapped
    // for the kernel's lifetime, aligned (page-aligned base, entries of 8-byte atomics), zeroed
    // by instance 0 before any other instance started, and an all-zero `PeerTelemetry` is a valid
    // value (it is only atomics). Shared references to atomics are what every instance uses.
    Some(unsafe {
        core::slice::from_raw_parts(row as *const mk_dispatch::PeerTelemetry, TELEMETRY_ROWS)
    })
}

/// Records where the telemetry table is; instance 0 also zeroes it.
fn place_telemetry(start: u64, len: u64, instances: usize, zero: bool) -> Result<(), String> {
    let off = (mk_shared::region_size(instances.max(1)) + mk_pool::region_size(POOL_PAGES)) as u64;
    if len < off + TELEMETRY_BYTES as u64 {
        return Err("the shared allocation has no room for the telemetry table".into());
    }
    let virt = phys_to_virt(start + off);
    if zero {
        // SAFETY: the table's bytes are inside the shared allocation, which only instance 0 uses
        // at this point (no other instance runs yet).
        unsafe { core::ptr::write_bytes(virt as *mut u8, 0, TELEMETRY_BYTES) };
    }
    TELEMETRY.call_once(|| virt);
    Ok(())
}

/// The pool and its physical base.
pub fn pool() -> Option<&'static (mk_pool::Pool<'static>, u64)> {
    POOL.get()
}

fn pool_range(start: u64, len: u64, instances: usize) -> Result<(u64, u64), String> {
    let off = mk_shared::region_size(instances.max(1)) as u64;
    let size = mk_pool::region_size(POOL_PAGES) as u64;
    if len < off + size {
        return Err("the shared allocation has no room for the page pool".into());
    }
    Ok((start + off, size))
}

pub fn get() -> Option<&'static SharedRegion<'static>> {
    REGION.get()
}

/// Instance 0: formats the region at `shared` for `count` instances.
pub fn init(shared: MemRange, count: usize) -> Result<(), String> {
    // SAFETY: `shared` was carved out of usable memory by the plan and removed from every
    // allocator; the physical map covers it for the kernel's lifetime; no other instance runs
    // yet.
    let region = unsafe {
        SharedRegion::init(
            phys_to_virt(shared.start) as *mut u8,
            shared.len as usize,
            count,
            tsc::read(),
        )
    }
    .map_err(|e| alloc::format!("{e:?}"))?;
    let region = REGION.call_once(|| region);
    crate::arch::ioapic::use_shared_lock(region.ioapic_lock(), 0);
    let (pool_phys, pool_len) = pool_range(shared.start, shared.len, count)?;
    // SAFETY: the pool lies inside the shared allocation, after the region, page aligned,
    // mapped through the physical map, and used only through mk-pool.
    let pool = unsafe {
        mk_pool::Pool::init(
            phys_to_virt(pool_phys) as *mut u8,
            pool_len as usize,
            POOL_PAGES,
        )
    }
    .map_err(|e| alloc::format!("pool: {e:?}"))?;
    POOL.call_once(|| (pool, pool_phys));
    place_telemetry(shared.start, shared.len, count, true)
}

/// Every other instance: attaches to the region instance 0 formatted.
pub fn attach(phys: u64, len: u64) -> Result<(), String> {
    // SAFETY: instance 0 formatted the region at `phys` before starting us and mapped it in our
    // physical map; it is used only through mk-shared / mk-mailbox.
    let region = unsafe { SharedRegion::attach(phys_to_virt(phys) as *mut u8, len as usize) }
        .map_err(|e| alloc::format!("{e:?}"))?;
    let count = region.instance_count();
    let region = REGION.call_once(|| region);
    crate::arch::ioapic::use_shared_lock(region.ioapic_lock(), crate::instance::id() as usize);
    let (pool_phys, pool_len) = pool_range(phys, len, count)?;
    // SAFETY: as in `init`; instance 0 formatted the pool before starting us.
    let pool =
        unsafe { mk_pool::Pool::attach(phys_to_virt(pool_phys) as *mut u8, pool_len as usize) }
            .map_err(|e| alloc::format!("pool: {e:?}"))?;
    POOL.call_once(|| (pool, pool_phys));
    place_telemetry(phys, len, count, false)
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
    let state = inst.state().map_or("corrupt", InstanceState::name);
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
