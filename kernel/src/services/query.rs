//! QUERY: what an instance has. CPUs and memory come from the instance itself (its CPU list
//! and its frame allocator), IRQ lines from the shared ownership table, counters from its
//! dispatcher.

use core::sync::atomic::Ordering;

use mk_dispatch::Reply;
use mk_shared::{Owner, Resource};
use mk_wire::{Message, Payload, QueryReply, QueryWhat, Status};

use crate::cpus::smp;
use crate::shared::region;

pub fn handle(m: &Message) -> Option<Reply> {
    let Payload::Query(q) = m.payload else {
        return Some(Reply::error(Status::InvalidArgument));
    };
    let me = crate::instance::id();
    let mut reply = QueryReply::new();
    if q.what.contains(QueryWhat::CPUS) {
        let cpus = region::get()
            .and_then(|r| r.instance(me).ok())
            .and_then(|i| i.resources().ok());
        let ids = cpus.as_ref().map_or(&[][..], |c| c.cpus());
        let n = ids.len().min(mk_wire::QUERY_REPLY_MAX_APIC_IDS);
        let _ = reply.set_apic_ids(&ids[..n]);
        reply.cpu_count = smp::ONLINE.load(Ordering::SeqCst).max(ids.len() as u32);
    }
    if q.what.contains(QueryWhat::MEMORY) {
        let (free, owned) = crate::memory::frames::counts();
        reply.memory_bytes = owned * 4096;
        reply.free_memory_bytes = free * 4096;
    }
    if q.what.contains(QueryWhat::IRQS)
        && let Some(r) = region::get()
    {
        for line in 0..mk_shared::MAX_IRQS {
            if r.owner(Resource::Irq(line as u32)) == Ok(Owner::Owned(me)) {
                reply.set_irq(line, true);
            }
        }
    }
    if q.what.contains(QueryWhat::COUNTERS) {
        let (handled, rejected) = crate::messaging::counters();
        reply.messages_handled = handled;
        reply.messages_rejected = rejected;
        reply.uptime_ticks = crate::arch::interrupts::TIMER_TICKS.load(Ordering::Relaxed);
    }
    reply.what = q.what;
    Some(Reply::ok(Payload::QueryReply(reply)))
}
