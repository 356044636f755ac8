//! The whole shared allocation: the [`SharedRegion`], then the mk-pool page pool, then the
//! telemetry table, laid out by one function ([`allocation_layout`]) so that no user of the
//! allocation does offset arithmetic of its own.
//!
//! The telemetry table holds `TELEMETRY_ROWS x TELEMETRY_ROWS` entries of a caller-chosen
//! all-atomic type `T` (the kernel's is `mk_dispatch::PeerTelemetry`): row `i` is instance
//! `i`'s counters for each peer. Only instance `i` writes row `i`; anyone may read all. Taking
//! `T` as a parameter keeps this crate independent of the dispatcher.

use core::mem::{align_of, size_of};

use mk_pool::Pool;
use mk_raw::{AtomicOnly, Raw};

use crate::{Error, MAX_INSTANCES, PAGE, SharedRegion, Table, region_size};

/// Rows (and entries per row) of the telemetry table: one per possible instance.
pub const TELEMETRY_ROWS: usize = MAX_INSTANCES;

/// Where the parts of the shared allocation live, in bytes from its (4 KiB-aligned) base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocationLayout {
    /// The mk-shared region ([`crate::layout`] within it).
    pub region: Table,
    /// The mk-pool page pool (4 KiB aligned).
    pub pool: Table,
    /// The telemetry table (4 KiB aligned, size rounded up to 4 KiB).
    pub telemetry: Table,
    /// Total bytes (a multiple of 4 KiB).
    pub total: usize,
}

/// Layout of an allocation for `instances` instances, a pool of `pool_pages` pages and telemetry
/// entries of type `T` (not checked here; sizes saturate, so an absurd request just fails the
/// size check of `init`).
pub const fn allocation_layout<T>(instances: usize, pool_pages: u32) -> AllocationLayout {
    const { assert!(align_of::<T>() <= PAGE) };
    let region = Table {
        offset: 0,
        size: region_size(instances),
    };
    let pool = Table {
        offset: region.size,
        size: mk_pool::region_size(pool_pages),
    };
    let telemetry = Table {
        offset: pool.offset.saturating_add(pool.size),
        size: (TELEMETRY_ROWS * TELEMETRY_ROWS * size_of::<T>()).next_multiple_of(PAGE),
    };
    AllocationLayout {
        region,
        pool,
        telemetry,
        total: telemetry.offset.saturating_add(telemetry.size),
    }
}

/// Bytes of the whole shared allocation ([`allocation_layout`]'s total).
pub const fn allocation_size<T>(instances: usize, pool_pages: u32) -> usize {
    allocation_layout::<T>(instances, pool_pages).total
}

/// The telemetry table: [`TELEMETRY_ROWS`] rows of [`TELEMETRY_ROWS`] entries.
pub struct Telemetry<'a, T> {
    entries: &'a [T],
}

impl<T> Clone for Telemetry<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Telemetry<'_, T> {}

impl<'a, T> Telemetry<'a, T> {
    /// Row `i`: instance `i`'s entry for each peer (`None` beyond the table).
    pub fn row(&self, i: usize) -> Option<&'a [T]> {
        if i >= TELEMETRY_ROWS {
            return None;
        }
        self.entries
            .get(i * TELEMETRY_ROWS..(i + 1) * TELEMETRY_ROWS)
    }
}

/// This instance's view of the whole shared allocation.
pub struct Allocation<'a, T> {
    /// Instance table, ownership tables, locks, mailbox matrix.
    pub region: SharedRegion<'a>,
    /// The page pool for data larger than a message.
    pub pool: Pool<'a>,
    /// Per-pair messaging telemetry.
    pub telemetry: Telemetry<'a, T>,
    /// Where each part lives (the kernel adds `layout.pool.offset` to the allocation's
    /// physical base to name pool pages as frames).
    pub layout: AllocationLayout,
}

impl<'a, T: AtomicOnly> Allocation<'a, T> {
    /// Instance 0, once, before any other instance starts: formats the region for `instances`
    /// instances, a pool of `pool_pages` pages, and zeroes the telemetry table. `raw` is the
    /// whole allocation, 4 KiB aligned, at least [`allocation_size`] bytes.
    pub fn init(
        raw: Raw<'a>,
        instances: usize,
        pool_pages: u32,
        now_tsc: u64,
    ) -> Result<Self, Error> {
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(Error::BadInstanceCount(instances));
        }
        let layout = allocation_layout::<T>(instances, pool_pages);
        raw.ensure_len(layout.total)?;
        let region = SharedRegion::init(raw, instances, now_tsc)?;
        let pool = Pool::init(part(raw, layout.pool)?, pool_pages).map_err(Error::Pool)?;
        let table = part(raw, layout.telemetry)?;
        table.zero();
        let telemetry = Telemetry {
            entries: table.slice(0, TELEMETRY_ROWS * TELEMETRY_ROWS)?,
        };
        Ok(Self {
            region,
            pool,
            telemetry,
            layout,
        })
    }

    /// Any other instance: attaches to the allocation instance 0 formatted. The region's
    /// header gives the instance count, the pool's header its page count; from those the
    /// layout follows, and `raw` must cover it.
    pub fn attach(raw: Raw<'a>) -> Result<Self, Error> {
        let region = SharedRegion::attach(raw)?;
        let pool_offset = region_size(region.instance_count());
        let rest = raw.len().saturating_sub(pool_offset);
        let pool = Pool::attach(raw.sub(pool_offset, rest)?).map_err(Error::Pool)?;
        let layout = allocation_layout::<T>(region.instance_count(), pool.pages());
        raw.ensure_len(layout.total)?;
        let telemetry = Telemetry {
            entries: part(raw, layout.telemetry)?.slice(0, TELEMETRY_ROWS * TELEMETRY_ROWS)?,
        };
        Ok(Self {
            region,
            pool,
            telemetry,
            layout,
        })
    }
}

fn part<'a>(raw: Raw<'a>, t: Table) -> Result<Raw<'a>, Error> {
    Ok(raw.sub(t.offset, t.size)?)
}
