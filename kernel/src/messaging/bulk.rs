//! Data larger than a message: pages of the shared pool (`mk-pool`) passed by frame number.
//!
//! The sender allocates a run of pool pages, writes the data, hands the run over to the
//! receiver (owner words: Owned(sender) -> InTransit(sender, receiver), Release) and sends a
//! message whose payload is a `LargeDataPayload` (first frame, pages, bytes). The receiver
//! trusts none of it: it maps the frame number back to a pool page (range-checked) and accepts
//! the run with the generation the message carries, checking it is in transit from that
//! sender (the channel's peer) to us and that we stay within our quota (-> Owned(receiver),
//! Acquire), copies the bytes out, and releases the pages to the pool.
//! If the call fails, the sender cancels the hand-over and frees the run: no page is lost.

use alloc::vec::Vec;

use mk_wire::{Kind, LargeDataPayload, Message, Payload};

use crate::instance::InstanceId;
use crate::shared::region;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkError {
    /// This instance has no pool (not attached: its own boot).
    NoPool,
    /// This instance's own pool operation failed (sending side: exhausted, over its quota).
    Pool(mk_pool::Error),
    /// The message names pages outside the pool (the sender's fault).
    NotForUs,
    /// The run the sender named could not be accepted: not in transit from it to us, another
    /// generation than its message says (the sender's fault), or over our quota (ours:
    /// `mk_pool::Error::OverQuota` names us).
    Refused {
        sender: InstanceId,
        why: mk_pool::Error,
    },
    Call(super::CallFailure),
}

impl core::fmt::Display for BulkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoPool => f.write_str("no shared pool in this instance"),
            Self::Pool(e) => write!(f, "pool: {e}"),
            Self::NotForUs => {
                f.write_str("the message names pages outside the pool (sender's fault)")
            }
            Self::Refused { sender, why } => {
                write!(f, "pages from instance {sender} not accepted: {why}")
            }
            Self::Call(e) => write!(f, "the call failed: {e:?}"),
        }
    }
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
        generation: lease.generation,
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
        .map_err(|_| BulkError::NotForUs)?;
    let lease = pool
        .accept_from(first, p.page_count, sender.raw(), me, p.generation)
        .map_err(|why| BulkError::Refused { sender, why })?;
    let mut data = alloc::vec![0u8; lease.len_bytes()];
    let copied = pool.checked_copy(first, p.page_count, me, &mut data);
    let _ = pool.release(lease, me);
    copied.map_err(BulkError::Pool)?;
    data.truncate(p.byte_len as usize);
    Ok(data)
}
