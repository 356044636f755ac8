//! This kernel instance's identity. Each instance runs its own copy of the kernel image, so a
//! plain static here is private to the instance.

use core::sync::atomic::{AtomicU32, Ordering};

static ID: AtomicU32 = AtomicU32::new(0);

pub fn id() -> u32 {
    ID.load(Ordering::Relaxed)
}

#[allow(dead_code)] // set from the boot descriptor once further instances are started
pub fn set_id(id: u32) {
    ID.store(id, Ordering::Relaxed);
}
