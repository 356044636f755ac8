//! Instance 0's private records (`mk-ledger`): who holds each CPU, IRQ line and memory chunk
//! and where each instance is in its life, as instance 0 set them up at boot and changed them
//! since; and the mailbox geometry, cached at boot. Instance 0 decides from these, never from
//! shared words another instance can write: those are hints, checked against the records,
//! and a disagreement is logged and counted here ([`note`], [`disagreements`]), not obeyed.
//!
//! The lock is taken only for short sections that send no message (a poll inside a call may
//! run the lifecycle watch, which takes it too).

use mk_ledger::{Disagreement, Ledger};
use mk_mailbox::MailboxMatrix;
use spin::{Mutex, Once};

use super::region;
use crate::arch::tsc;
use crate::instance::InstanceId;

static RECORDS: Once<Mutex<Ledger>> = Once::new();
/// Instance 0's own view of the mailbox matrix, attached once at boot and checked against
/// the instance count instance 0 formatted the region for: marking an instance's channels
/// dead and resetting them never re-reads the geometry (count, magic) from shared memory.
static MAILBOXES: Once<MailboxMatrix<'static>> = Once::new();

/// Why the records could not be set up at boot (instance 0's side: its plan or region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordsError {
    /// No shared region yet (a boot-order bug).
    NoRegion,
    /// The plan names more instances, or a resource beyond the tables.
    Plan(mk_shared::Error),
    /// The mailbox matrix does not attach, or its instance count is not the one instance 0
    /// formatted it for.
    Mailboxes(Option<mk_mailbox::Error>),
}

impl core::fmt::Display for RecordsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRegion => f.write_str("no shared region"),
            Self::Plan(e) => write!(f, "the plan does not fit the record: {e:?}"),
            Self::Mailboxes(Some(e)) => write!(f, "the mailbox matrix: {e:?}"),
            Self::Mailboxes(None) => {
                f.write_str("the mailbox matrix's instance count is not the region's")
            }
        }
    }
}

/// Instance 0, once, right after it recorded the plan's ownership in the shared tables and
/// before starting anyone: the same ownership in its private record (each partition's CPUs
/// and whole 2 MiB chunks, every IO APIC line to instance 0), the MADT's CPUs, and the
/// mailbox geometry.
pub fn init(plan: &mk_plan::Plan, madt: &[u32], lines: u32) -> Result<(), RecordsError> {
    let r = region::get().ok_or(RecordsError::NoRegion)?;
    let count = r.instance_count();
    let mut l = Ledger::new(count, madt).map_err(RecordsError::Plan)?;
    for p in plan.partitions() {
        let k = InstanceId::from_index(p.index).ok_or(RecordsError::Plan(
            mk_shared::Error::BadInstanceCount(p.index),
        ))?;
        for &apic in p.cpus {
            l.give(mk_shared::Resource::Cpu(apic), k)
                .map_err(RecordsError::Plan)?;
        }
        for m in p.memory {
            l.give_range(m.start, m.len, k)
                .map_err(RecordsError::Plan)?;
        }
    }
    for gsi in 0..lines.min(mk_shared::MAX_IRQS as u32) {
        l.give(mk_shared::Resource::Irq(gsi), InstanceId::ZERO)
            .map_err(RecordsError::Plan)?;
    }
    RECORDS.call_once(|| Mutex::new(l));
    if count >= 2 {
        let m = r.mailbox().map_err(|e| RecordsError::Mailboxes(Some(e)))?;
        if m.instances() != count {
            return Err(RecordsError::Mailboxes(None));
        }
        MAILBOXES.call_once(|| m);
    }
    Ok(())
}

/// Runs `f` on the records (instance 0, after boot); `None` elsewhere. `f` must send no
/// message.
pub fn with<R>(f: impl FnOnce(&mut Ledger) -> R) -> Option<R> {
    RECORDS.get().map(|l| f(&mut l.lock()))
}

/// Instance 0's mailbox view with the geometry cached at boot.
pub fn mailboxes() -> Option<&'static MailboxMatrix<'static>> {
    MAILBOXES.get()
}

/// Logs a disagreement (the records counted it) and says what instance 0 does about it, at
/// most [`NOTE_BURST`] lines a second: a hostile instance can make disagreements as fast as it
/// can write, and must not make instance 0 spend its time on the console.
pub fn note(d: &Disagreement, action: &str) {
    static LIMIT: Once<mk_dispatch::LogLimiter> = Once::new();
    let limit =
        LIMIT.call_once(|| mk_dispatch::LogLimiter::new(1000 * tsc::ticks_per_ms(), NOTE_BURST));
    if let mk_dispatch::LogDecision::Log { suppressed } = limit.check(tsc::read()) {
        crate::warn!(
            "shared table disagrees with instance 0's record: {d}; {action} ({suppressed} similar suppressed)"
        );
    }
}

/// Disagreement lines logged per second at most (all are counted).
pub const NOTE_BURST: u32 = 8;

/// Disagreements found so far (0 outside instance 0).
pub fn disagreements() -> u64 {
    with(|l| l.disagreements()).unwrap_or(0)
}
