//! Data larger than a message: pages of the shared pool (`mk-pool`) passed by frame number.
//!
//! The sender allocates a run of pool pages, writes the data, hands the run over to the
//! receiver (owner words: Owned(sender) -> InTransit(sender, receiver), Release) and sends a
//! message whose payload is a `LargeDataPayload` (first frame, pages, bytes). The receiver
//! trusts none of it: it maps the frame number back to a pool page (range-checked), reads the
//! run's owner word from the pool (it must be in transit from that sender to us), accepts it
//! (-> Owned(receiver), Acquire), copies the bytes out, and releases the pages to the pool.
//! If the call fails, the sender cancels the hand-over and frees the run: no page is lost.

use alloc::vec::Vec;

use mk_pool::Owner;
use mk_wire::{Kind, LargeDataPayload, Message, Payload};

use crate::instance::InstanceId;
use crate::shared::region;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkError {
    NoPool,
    Pool(mk_pool::Error),
    /// The pages are not in transit from the claimed sender to us.
    NotForUs,
    Call(super::CallFailure),
}

/// Sends `data` to `to` through the pool as a `kind` call; returns the reply.
pub fn call_large(
    to: InstanceId,
    kind: Kind,
    data: &[u8],
    timeout_ms: u64,
) -> Result<Message, BulkError> {
    let (pool, pool_phys) = region::pool().ok_or(BulkError::NoPool)?;
    let me = crate::instance::id().raw();
    let pages = data.len().div_ceil(mk_pool::PAGE).max(1) as u32;
    let lease = pool.alloc(me, pages).map_err(BulkError::Pool)?;
    pool.checked_write(lease.first, lease.pages, me, data)
        .map_err(BulkError::Pool)?;
    let lease = pool
        .hand_over(lease, me, to.raw())
        .map_err(BulkError::Pool)?;
    let offset = pool
        .page_phys_offset(lease.first)
        .map_err(BulkError::Pool)? as u64;
    let payload = Payload::LargeData(LargeDataPayload {
        pool_frame: (pool_phys + offset) >> 12,
        page_count: pages,
        byte_len: data.len() as u64,
    });
    match super::call(to, kind, payload, timeout_ms) {
        Ok(reply) => Ok(reply),
        Err(e) => {
            // Not accepted (or accepted too late to matter): take the run back if it is still
            // ours to take; if the receiver accepted it, it releases it.
            if let Ok(l) = pool.cancel(lease, me) {
                let _ = pool.release(l, me);
            }
            Err(BulkError::Call(e))
        }
    }
}

/// The receiving side: takes the data described by `p` from `sender` out of the pool and
/// returns the run to the pool.
pub fn receive_large(sender: InstanceId, p: &LargeDataPayload) -> Result<Vec<u8>, BulkError> {
    let (pool, pool_phys) = region::pool().ok_or(BulkError::NoPool)?;
    let me = crate::instance::id().raw();
    let phys = p.pool_frame.checked_mul(4096).ok_or(BulkError::NotForUs)?;
    let offset = phys.checked_sub(*pool_phys).ok_or(BulkError::NotForUs)?;
    let first = pool
        .page_from_phys_offset(offset as usize)
        .map_err(BulkError::Pool)?;
    let (owner, generation) = pool.owner(first).map_err(BulkError::Pool)?;
    if owner
        != (Owner::InTransit {
            from: sender.raw(),
            to: me,
        })
    {
        return Err(BulkError::NotForUs);
    }
    let lease = pool
        .accept(first, p.page_count, me, generation)
        .map_err(BulkError::Pool)?;
    let mut data = alloc::vec![0u8; lease.len_bytes()];
    let copied = pool.checked_copy(first, p.page_count, me, &mut data);
    let _ = pool.release(lease, me);
    copied.map_err(BulkError::Pool)?;
    data.truncate(p.byte_len as usize);
    Ok(data)
}
