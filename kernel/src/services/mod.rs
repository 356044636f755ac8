//! The services that run over messages: each is a handler on the dispatcher, and each changes
//! the ownership tables of the shared region only by compare-exchange, so that no CPU, memory
//! chunk or IRQ line is ever owned by two instances.
//!
//! | service | file | who handles it |
//! |---|---|---|
//! | HEARTBEAT: liveness, failure detection, reclaiming a dead instance | `heartbeat.rs`, `lifecycle.rs` | instance 0 |
//! | QUERY: an instance's CPUs, memory, IRQ lines, counters | `query.rs` | every instance |
//! | IRQ_FORWARD / BALANCE / MASK / UNMASK: device interrupts between instances | `irq.rs` | every instance |
//! | SHUTDOWN: stop cleanly, give every resource back to instance 0, park the CPUs | `lifecycle.rs` | every instance but 0 |
//! | CPU_REMOVE / CPU_ADD: a CPU leaves one instance and runs in another (instance 0 brokers) | `cpu.rs` | every instance but 0 |
//! | MEM_REMOVE / MEM_ADD: a range leaves one frame allocator and joins another's (instance 0 brokers) | `memory.rs` | every instance but 0 |
//! | USER 0x101..0x106: task control (spawn, kill, list, stats, status, capabilities) | `tasks.rs` | every instance |
//! | USER 0x110..0x112: IPC between tasks of different instances; the name service | `ipc.rs` | every instance (names: 0) |
//!
//! Periodic duties (sending beats, watching them, finishing a shutdown) run after each drain
//! of the mailboxes (`messaging::set_poll_hook`), in thread context, never in an interrupt
//! handler: so they may send messages and take locks.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cpu;
pub mod entry;
pub mod heartbeat;
pub mod ipc;
pub mod irq;
pub mod lifecycle;
pub mod memory;
pub mod moves;
pub mod query;
pub mod tasks;

use core::sync::atomic::{AtomicBool, Ordering};

use mk_dispatch::HandlerKey;
use mk_wire::Kind;

use crate::instance::InstanceId;
use crate::messaging::{self, HandlerFn};

/// Handlers every instance registers.
static EVERY_INSTANCE: [(Kind, HandlerFn); 5] = [
    (Kind::Query, query::handle),
    (Kind::IrqForward, irq::handle_forward),
    (Kind::IrqBalance, irq::handle_balance),
    (Kind::IrqMask, irq::handle_mask),
    (Kind::IrqUnmask, irq::handle_mask),
];

/// Handlers of instance 0 only (it watches the others).
static INSTANCE_0: [(Kind, HandlerFn); 1] = [(Kind::Heartbeat, heartbeat::handle)];

/// Handlers of every instance but 0 (instance 0 asks, brokers and takes back).
static OTHER_INSTANCES: [(Kind, HandlerFn); 5] = [
    (Kind::Shutdown, lifecycle::handle_shutdown),
    (Kind::CpuRemove, cpu::handle_remove),
    (Kind::CpuAdd, cpu::handle_add),
    (Kind::MemRemove, memory::handle_remove),
    (Kind::MemAdd, memory::handle_add),
];

/// Registers the services of instance `me` and their periodic duties.
pub fn init(me: InstanceId) -> Result<(), InitError> {
    let d = messaging::dispatcher().ok_or(InitError::NoMessaging)?;
    let reg = d.registry();
    let own: &'static [(Kind, HandlerFn)] = if me.is_supervisor() {
        &INSTANCE_0
    } else {
        &OTHER_INSTANCES
    };
    for (kind, handler) in EVERY_INSTANCE.iter().chain(own) {
        reg.register(HandlerKey::Kind(*kind), handler)
            .map_err(|_| InitError::Handler(*kind))?;
    }
    crate::services::bench::register();
    tasks::register().map_err(InitError::Handler)?;
    ipc::init(me).map_err(InitError::Handler)?;
    crate::arch::interrupts::add_tick_hook(heartbeat::on_tick)
        .map_err(|_| InitError::Hook("timer"))?;
    messaging::set_poll_hook(on_poll).map_err(|_| InitError::Hook("poll"))?;
    crate::cpus::smp::on_cpu_joined(cpu::joined).map_err(|_| InitError::Hook("CPU join"))?;
    Ok(())
}

/// Why [`init`] could not register this instance's services (all this instance's fault: a
/// boot-order bug or a table too small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// Messaging is not up in this instance.
    NoMessaging,
    /// The dispatcher refused a handler (table full, or the kind already taken).
    Handler(Kind),
    /// No free hook of this kind.
    Hook(&'static str),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoMessaging => f.write_str("messaging is not up"),
            Self::Handler(k) => write!(f, "registering the {k:?} service handler"),
            Self::Hook(what) => write!(f, "no free {what} hook"),
        }
    }
}

/// Set while `on_poll` runs: what it sends may drain the mailboxes, which calls it again.
static IN_POLL_HOOK: AtomicBool = AtomicBool::new(false);

/// The poll hook: runs when a poll was asked to (`messaging::want_poll_hook`: an interrupt to
/// forward, an IPC answer to send, a shutdown asked for) and once per timer tick (heartbeats,
/// failure detection, the IPC watch, the screen).
fn on_poll() {
    if IN_POLL_HOOK.swap(true, Ordering::Acquire) {
        // Entered from inside itself (a send waiting for room polls): the outer run is busy,
        // so ask for another one rather than lose what this one was called for.
        messaging::want_poll_hook();
        return;
    }
    irq::flush_forwards();
    ipc::on_poll();
    crate::console::refresh_screen();
    entry::heal_if_due();
    messaging::doorbell::report();
    if crate::instance::id().is_supervisor() {
        lifecycle::watch();
    } else {
        heartbeat::send_if_due();
        lifecycle::finish_shutdown_if_asked();
    }
    IN_POLL_HOOK.store(false, Ordering::Release);
}
