//! This instance's view of the shared region (`mk-shared`): the instance table, the ownership
//! tables, the console lock and the mailboxes. Instance 0 formats it; the others attach to it.
//! It is reached through each instance's physical map (every instance maps it at the same
//! virtual address, but nothing relies on that).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

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

/// The whole shared window, as mapped here: what any instance can write, word by word.
static WINDOW: Once<mk_raw::Raw<'static>> = Once::new();

/// The shared window's place in this address space (address, bytes), once attached.
pub fn window_span() -> Option<(usize, usize)> {
    WINDOW.get().map(|w| (w.addr(), w.len()))
}

/// Stores `value` into the shared word at address `addr` (8-byte aligned, inside the window),
/// as a stray or hostile writer could: for the rogue-instance tests, which scribble over the
/// region. False (nothing written) outside the window or unaligned. Test kernels only.
#[cfg(feature = "qemu-tests")]
pub fn scribble(addr: usize, value: u64) -> bool {
    let Some(w) = WINDOW.get() else {
        return false;
    };
    match addr
        .checked_sub(w.addr())
        .and_then(|off| w.at::<AtomicU64>(off).ok())
    {
        Some(word) => {
            word.store(value, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Keeps the parts of the allocation for the accessors above.
fn publish(all: Allocation<'static, PeerTelemetry>, phys: u64) {
    let pool_phys = phys + all.layout.pool.offset as u64;
    let region = REGION.call_once(|| all.region);
    crate::arch::ioapic::use_shared_lock(region.ioapic_lock(), crate::instance::id());
    // Per-instance quota: half the pool once there are two instances, so that no instance
    // can hold every page (`mk_pool::Pool::with_quota`); the whole pool for one alone.
    let quota = match region.instance_count() {
        0 | 1 => all.pool.pages(),
        _ => all.pool.pages() / 2,
    };
    POOL.call_once(|| (all.pool.with_quota(quota), pool_phys));
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
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAttached => f.write_str("no shared region"),
            Self::Map(e) => write!(f, "mapping the shared region: {e}"),
            Self::Layout(e) => write!(f, "{e:?}"),
            Self::Ownership { resource, error } => write!(f, "{resource:?}: {error:?}"),
        }
    }
}

/// Instance 0: formats the shared allocation at `shared` for `count` instances.
pub fn init(shared: MemRange, count: usize) -> Result<(), RegionError> {
    let raw = crate::memory::shared_window(shared.start, shared.len).map_err(RegionError::Map)?;
    WINDOW.call_once(|| raw);
    let all = Allocation::init(raw, count, POOL_PAGES, tsc::read()).map_err(RegionError::Layout)?;
    publish(all, shared.start);
    Ok(())
}

/// Every other instance: attaches to the allocation instance 0 formatted.
pub fn attach(phys: u64, len: u64) -> Result<(), RegionError> {
    let raw = crate::memory::shared_window(phys, len).map_err(RegionError::Map)?;
    WINDOW.call_once(|| raw);
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

/// Publishes this instance's CPUs and memory and declares it running.
///
/// Fails when instance 0 gave up waiting for this instance before it got here (the state is no
/// longer `Booting`): the instance must then stop, it is not running for anyone.
pub fn publish_running(id: InstanceId, cpus: &[u32]) -> Result<(), mk_shared::Error> {
    let inst = get()
        .ok_or(mk_shared::Error::BadInstance(id))?
        .instance(id)?;
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
    inst.mark_running(tsc::read())
}

/// A starting instance: a sign of progress for instance 0, which waits while they come (see
/// [`wait_running`]). One beat of the instance's heartbeat counter, which its timer also
/// beats once it runs.
pub fn boot_progress() {
    if let Some(i) = get().and_then(|r| r.instance(crate::instance::id()).ok()) {
        i.beat();
    }
}

/// Instance 0: gives up on starting instance `id` before waiting for it (building it or
/// starting its CPU failed): `Booting -> Dead`, so that nothing it might still do counts.
pub fn abandon_start(id: InstanceId) {
    if let Some(i) = get().and_then(|r| r.instance(id).ok()) {
        let _ = i.transition(InstanceState::Booting, InstanceState::Dead);
    }
}

/// How long instance 0 waits for an instance it started: until its first sign of progress (its
/// boot reaches the shared region), then as long as signs keep coming with gaps shorter than
/// `quiet_ms` (its boot stages and its timer beat its heartbeat counter). A slow instance that
/// progresses is never given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartWait {
    pub first_sign_ms: u64,
    pub quiet_ms: u64,
}

impl StartWait {
    /// Generous: a debug kernel under this machine's nested KVM needs seconds per stage.
    pub const DEFAULT: Self = Self {
        first_sign_ms: 30_000,
        quiet_ms: 10_000,
    };
}

/// How an instance that instance 0 waited for ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// It reported running while instance 0 waited.
    InTime,
    /// It reported running just as instance 0 gave up: it is adopted as running.
    AtDeadline,
}

/// Why instance 0 gave up on an instance it started. In every case the instance's state is no
/// longer `Booting`: either `Dead` (set by instance 0, so the instance's own `Running` can no
/// longer be published) or something instance 0 did not expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// No shared region, or no such instance in it.
    NoInstance,
    /// No sign of progress within `first_sign_ms`.
    NoSign { ms: u64 },
    /// Progress stopped: no sign for `quiet_ms` after `beats` of them.
    Stalled { ms: u64, beats: u64 },
    /// Its state word holds something else than booting or running (declared dead by someone,
    /// or garbage).
    Unexpected(Option<InstanceState>),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoInstance => write!(f, "it has no entry in the shared region"),
            Self::NoSign { ms } => write!(f, "it gave no sign of progress within {ms} ms"),
            Self::Stalled { ms, beats } => {
                write!(
                    f,
                    "it stopped progressing ({beats} signs, then {ms} ms without one)"
                )
            }
            Self::Unexpected(Some(s)) => write!(f, "its state became {}", s.name()),
            Self::Unexpected(None) => write!(f, "its state word is corrupt"),
        }
    }
}

/// Instance 0: waits for instance `id` to declare itself running, as `wait` says. On giving up
/// it turns the state from `Booting` to `Dead` with a compare-exchange, so the two sides agree:
/// if the instance published `Running` first, it is adopted ([`Started::AtDeadline`]);
/// otherwise it is dead and its own `Booting -> Running` fails, after which it stops itself.
pub fn wait_running(id: InstanceId, wait: StartWait) -> Result<Started, StartError> {
    let inst = get()
        .and_then(|r| r.instance(id).ok())
        .ok_or(StartError::NoInstance)?;
    let per_ms = tsc::ticks_per_ms();
    let mut last_count = inst.heartbeat();
    let mut beats = 0u64;
    let mut deadline = tsc::read() + wait.first_sign_ms * per_ms;
    loop {
        match inst.state() {
            Ok(InstanceState::Running) => return Ok(Started::InTime),
            Ok(InstanceState::Booting) => {}
            Ok(other) => return Err(StartError::Unexpected(Some(other))),
            Err(_) => return Err(StartError::Unexpected(None)),
        }
        let now = tsc::read();
        let count = inst.heartbeat();
        if count != last_count {
            last_count = count;
            beats += 1;
            deadline = now + wait.quiet_ms * per_ms;
        } else if now > deadline {
            return match inst.transition(InstanceState::Booting, InstanceState::Dead) {
                Ok(()) if beats == 0 => Err(StartError::NoSign {
                    ms: wait.first_sign_ms,
                }),
                Ok(()) => Err(StartError::Stalled {
                    ms: wait.quiet_ms,
                    beats,
                }),
                Err(mk_shared::Error::StateChanged {
                    found: InstanceState::Running,
                }) => Ok(Started::AtDeadline),
                Err(mk_shared::Error::StateChanged { found }) => {
                    Err(StartError::Unexpected(Some(found)))
                }
                Err(_) => Err(StartError::Unexpected(None)),
            };
        }
        core::hint::spin_loop();
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
