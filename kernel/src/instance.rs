//! This kernel instance's identity. Each instance runs its own copy of the kernel image, so a
//! plain static here is private to the instance.

use core::sync::atomic::{AtomicU16, Ordering};

pub use mk_ids::InstanceId;

static ID: AtomicU16 = AtomicU16::new(0);

pub fn id() -> InstanceId {
    InstanceId::new(ID.load(Ordering::Relaxed))
}

pub fn set_id(id: InstanceId) {
    ID.store(id.raw(), Ordering::Relaxed);
}

/// The instance that runs partition `index` of the plan. A plan has at most
/// `mk_plan::MAX_INSTANCES` partitions, so the index always fits; were it not to, the id
/// returned is `u16::MAX`, which no table holds (lookups fail instead of aliasing another).
pub fn of_partition(index: usize) -> InstanceId {
    InstanceId::from_index(index).unwrap_or(InstanceId::new(u16::MAX))
}

/// A number the self-tests use for an instance (a loop index, a partition index, a word of a
/// job's argument, a literal) as an `InstanceId`; an id is passed through. A number that does
/// not fit names no instance (`u16::MAX`), so the call made with it fails as for an instance
/// that does not exist. Kernel code proper makes ids with `InstanceId`'s checked constructors.
#[cfg(feature = "qemu-tests")]
pub fn iid(k: impl ToInstance) -> InstanceId {
    k.to_instance()
}

/// What [`iid`] accepts.
#[cfg(feature = "qemu-tests")]
pub trait ToInstance {
    fn to_instance(self) -> InstanceId;
}

#[cfg(feature = "qemu-tests")]
impl ToInstance for InstanceId {
    fn to_instance(self) -> InstanceId {
        self
    }
}

#[cfg(feature = "qemu-tests")]
macro_rules! to_instance_from {
    ($($t:ty),*) => {$(
        impl ToInstance for $t {
            fn to_instance(self) -> InstanceId {
                usize::try_from(self).map_or(InstanceId::new(u16::MAX), of_partition)
            }
        }
    )*};
}
#[cfg(feature = "qemu-tests")]
to_instance_from!(usize, u64, u32, u16, i32);
