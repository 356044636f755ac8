//! The whole shared allocation: layout (no overlap, alignment), init / attach, short memory.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Region;
use crate::{
    Allocation, Error, MAX_INSTANCES, PAGE, TELEMETRY_ROWS, Table, allocation_layout,
    allocation_size, region_size,
};

mk_raw::atomic_struct! {
    #[repr(C)]
    /// Stands in for the kernel's telemetry entry (size not a divisor of a page).
    struct Entry {
        a: AtomicU64,
        b: [AtomicU32; 3],
    }
}

#[test]
fn layout_parts_follow_each_other_aligned() {
    for n in 1..=MAX_INSTANCES {
        for pages in [1, 7, 512, 1000] {
            let l = allocation_layout::<Entry>(n, pages);
            let parts: [Table; 3] = [l.region, l.pool, l.telemetry];
            assert_eq!(l.region.offset, 0);
            assert_eq!(l.region.size, region_size(n));
            assert_eq!(l.pool.size, mk_pool::region_size(pages));
            for w in parts.windows(2) {
                assert_eq!(w[0].end(), w[1].offset, "{n} {pages}: no gap, no overlap");
            }
            for t in parts {
                assert!(t.offset.is_multiple_of(PAGE) && t.size.is_multiple_of(PAGE));
            }
            assert!(l.telemetry.size >= TELEMETRY_ROWS * TELEMETRY_ROWS * size_of::<Entry>());
            assert_eq!(l.total, l.telemetry.end());
            assert_eq!(allocation_size::<Entry>(n, pages), l.total);
        }
    }
}

#[test]
fn init_then_attach_elsewhere() {
    let size = allocation_size::<Entry>(3, 5);
    let mut a = Region::with_len(size, 0xa5);
    {
        let all = Allocation::<Entry>::init(a.raw(), 3, 5, 77).unwrap();
        assert_eq!(all.layout, allocation_layout::<Entry>(3, 5));
        assert_eq!(all.region.instance_count(), 3);
        assert_eq!(all.pool.pages(), 5);
        let row = all.telemetry.row(2).unwrap();
        assert_eq!(row.len(), TELEMETRY_ROWS);
        // The garbage fill is gone.
        assert_eq!(row[0].a.load(Ordering::Relaxed), 0);
        row[1].b[2].store(9, Ordering::Relaxed);
        assert!(all.telemetry.row(TELEMETRY_ROWS).is_none());
        assert_eq!(all.pool.alloc(1, 2).unwrap().pages, 2);
    }
    let b = a.copy();
    let all = Allocation::<Entry>::attach(b.raw()).unwrap();
    assert_eq!(all.layout, allocation_layout::<Entry>(3, 5));
    assert_eq!(all.region.created_tsc(), 77);
    assert_eq!(all.pool.free_pages(), 3);
    let row = all.telemetry.row(2).unwrap();
    assert_eq!(row[1].b[2].load(Ordering::Relaxed), 9);
    // Rows do not overlap.
    assert_eq!(
        all.telemetry.row(1).unwrap()[1].b[2].load(Ordering::Relaxed),
        0
    );
    a.poke(0, &[0; 8]);
    assert!(matches!(
        Allocation::<Entry>::attach(a.raw()).err(),
        Some(Error::NotInitialised)
    ));
}

#[test]
fn too_small_or_misaligned() {
    let size = allocation_size::<Entry>(2, 4);
    let r = Region::with_len(size, 0);
    let short = r.raw().sub(0, size - PAGE).unwrap();
    assert_eq!(
        Allocation::<Entry>::init(short, 2, 4, 0).err(),
        Some(Error::RegionTooSmall {
            need: size,
            have: size - PAGE
        })
    );
    let odd = r.raw().sub(64, size - 64).unwrap();
    assert_eq!(
        Allocation::<Entry>::init(odd, 2, 0, 0).err(),
        Some(Error::Misaligned)
    );
    assert_eq!(
        Allocation::<Entry>::init(r.raw(), 2, 0, 0).err(),
        Some(Error::Pool(mk_pool::Error::ZeroPages))
    );
    assert_eq!(
        Allocation::<Entry>::init(r.raw(), 0, 4, 0).err(),
        Some(Error::BadInstanceCount(0))
    );
    Allocation::<Entry>::init(r.raw(), 2, 4, 0).unwrap();
    // Attaching through a mapping that stops before the telemetry table.
    let cut = r.raw().sub(0, size - 1).unwrap();
    assert_eq!(
        Allocation::<Entry>::attach(cut).err(),
        Some(Error::RegionTooSmall {
            need: size,
            have: size - 1
        })
    );
    let no_pool = r.raw().sub(0, region_size(2) + 64).unwrap();
    assert!(matches!(
        Allocation::<Entry>::attach(no_pool).err(),
        Some(Error::Pool(mk_pool::Error::RegionTooSmall { .. }))
    ));
}

#[test]
fn restore_header_lets_a_later_attach_succeed() {
    use crate::SharedRegion;
    // Every 4-byte word of the two header lines, written over in turn.
    for offset in (0..2 * 64).step_by(4) {
        let r = Region::new(3);
        let region = SharedRegion::init(r.raw(), 3, 5).unwrap();
        assert_eq!(region.restore_header(), 0, "an intact header needs nothing");
        // As a stray or hostile writer would, beside instance 0's handle.
        r.raw()
            .write(offset, &0xffff_fffeu32.to_ne_bytes())
            .unwrap();
        // The creation time (bytes 24..32) is neither checked by attach nor restored.
        if (24..32).contains(&offset) {
            assert!(SharedRegion::attach(r.raw()).is_ok());
            assert_eq!(region.restore_header(), 0);
            continue;
        }
        // The reserved words (bytes 112..128) are not checked either, but cleared.
        if (112..128).contains(&offset) {
            assert!(SharedRegion::attach(r.raw()).is_ok());
            assert_eq!(region.restore_header(), 1);
            continue;
        }
        assert!(
            SharedRegion::attach(r.raw()).is_err(),
            "offset {offset}: attach took a damaged header"
        );
        assert_eq!(region.restore_header(), 1, "offset {offset}");
        let again = SharedRegion::attach(r.raw()).unwrap();
        assert_eq!(again.instance_count(), 3);
    }
}
