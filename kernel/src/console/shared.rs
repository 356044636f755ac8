//! The shared region as the console uses it: the cross-instance console lock, and the
//! instance table the screen panes follow. Set once the region exists.

use mk_shared::SharedRegion;

/// From now on, whole lines are serialised across instances by the console lock in the shared
/// `region`, not only across this instance's CPUs, and the screen panes follow the instance
/// table.
pub fn use_shared(region: &'static SharedRegion<'static>) {
    SHARED.call_once(|| region);
}

static SHARED: spin::Once<&'static SharedRegion<'static>> = spin::Once::new();

/// The shared region, once this instance's console uses it.
pub(super) fn shared() -> Option<&'static SharedRegion<'static>> {
    SHARED.get().copied()
}
