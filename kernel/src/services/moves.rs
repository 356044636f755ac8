//! What CPU and memory moves brokered by instance 0 share: their error, and the reading of the
//! receiver's answer to the last step.

use crate::messaging;

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
