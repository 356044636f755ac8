//! This kernel instance's identity. Each instance runs its own copy of the kernel image, so a
//! plain static here is private to the instance.

use core::sync::atomic::{AtomicU16, Ordering};

pub use mk_ids::InstanceId;

static ID: AtomicU16 = AtomicU16::new(0);

pub fn id() -> InstanceId {
    InstanceId::new(ID.load(Ordering::Relaxed))
}

#[allow(dead_code)] // set from the boot descriptor once further instances are started
pub fn set_id(id: InstanceId) {
    ID.store(id.raw(), Ordering::Relaxed);
}

/// The instance that runs partition `index` of the plan. A plan has at most
/// `mk_plan::MAX_INSTANCES` partitions, so the index always fits; were it not to, the id
/// returned is `u16::MAX`, which no table holds (lookups fail instead of aliasing another).
pub fn of_partition(index: usize) -> InstanceId {
    InstanceId::from_index(index).unwrap_or(InstanceId::new(u16::MAX))
}
