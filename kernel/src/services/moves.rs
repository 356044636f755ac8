//! What CPU and memory moves brokered by instance 0 share: their error, and the reading of the
//! receiver's answer to the last step.

use crate::instance::InstanceId;
use crate::messaging;
use crate::shared::{records, region};

/// What went wrong in a move brokered by instance 0 (a CPU or a memory range), and where the
/// resource is afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// The giver refused (the status says why); nothing changed.
    Refused(mk_wire::Status),
    /// A call failed (no answer, not running); the resource is where its owner word says.
    Call(messaging::CallFailure),
    /// The receiver refused: the resource stays with instance 0 (a CPU parked, memory
    /// unmapped), free for a later move.
    ReceiverRefused(mk_wire::Status),
    /// The ownership table did not allow a step (a bug, or a race with another broker).
    Table(mk_shared::Error),
    /// Instance 0's record refuses: the named giver does not hold the resource, it is being
    /// moved already, or the shared word disagrees with the record (someone else wrote it;
    /// logged and counted). Nothing moved.
    Record(mk_ledger::Refusal),
}

/// Instance 0: whether `giver` may give `res` away, by its record and the shared word as
/// read now; a disagreeing word is logged (and was counted).
pub fn check_giver(res: mk_shared::Resource, giver: InstanceId) -> Result<(), MoveError> {
    let r = region::get().ok_or(MoveError::Refused(mk_wire::Status::InternalError))?;
    let word = r.owner(res);
    match records::with(|l| l.may_give(res, giver, word)) {
        None => Err(MoveError::Refused(mk_wire::Status::InternalError)),
        Some(Ok(())) => Ok(()),
        Some(Err(refusal)) => {
            if let mk_ledger::Refusal::Word(d) = &refusal {
                records::note(d, "the move is refused");
            }
            Err(MoveError::Record(refusal))
        }
    }
}

/// Instance 0: checks that the word shows `from` handing `res` to instance 0 with the
/// generation `g` it reported (never taken on trust); a disagreement is logged and refused.
pub fn check_handed_back(
    r: &mk_shared::SharedRegion<'_>,
    res: mk_shared::Resource,
    from: InstanceId,
    g: u32,
) -> Result<(), MoveError> {
    let word = r.owner(res);
    match records::with(|l| l.check_handed_back(res, from, g, word)) {
        None => Err(MoveError::Refused(mk_wire::Status::InternalError)),
        Some(Ok(())) => Ok(()),
        Some(Err(d)) => {
            records::note(&d, "the hand-back is not completed");
            Err(MoveError::Record(mk_ledger::Refusal::Word(d)))
        }
    }
}

/// Instance 0's last step of a move of `res` to `to` ended (`result`): records who holds it.
/// If instance 0 aborted its hand-off and the abort failed, the receiver took it after all
/// when the word names it.
pub fn settle_handoff(
    r: &mk_shared::SharedRegion<'_>,
    res: mk_shared::Resource,
    to: InstanceId,
    taken: bool,
) {
    let taken = taken || r.owner(res) == Ok(mk_shared::Owner::Owned(to));
    records::with(|l| l.end_handoff(res, taken));
}

/// What the receiver's answer to the last step of a move (CPU_ADD, MEM_ADD) means: done, or
/// why not (the caller then rolls its hand-off back).
pub fn receiver_answer(
    answer: Result<mk_wire::Message, messaging::CallFailure>,
) -> Result<(), MoveError> {
    match answer {
        Ok(reply) if reply.status == mk_wire::Status::Ok => Ok(()),
        Ok(reply) => Err(MoveError::ReceiverRefused(reply.status)),
        Err(e) => Err(MoveError::Call(e)),
    }
}
