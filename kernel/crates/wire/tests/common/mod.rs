//! Sample messages shared by the wire tests.
#![allow(dead_code)]

use mk_wire::*;

pub fn irq() -> IoIrqPayload {
    IoIrqPayload {
        irq: 11,
        vector: 0x41,
        device_id: 0xbeef,
        flags: IrqFlags::HIGH_PRIORITY | IrqFlags::EDGE_TRIGGERED,
    }
}

pub fn cpu() -> CpuPayload {
    CpuPayload {
        apic_id: 3,
        numa_node: 1,
        flags: CpuFlags::HYPERTHREAD,
        generation: 42,
        phase: HandoffPhase::Prepare,
    }
}

pub fn mem() -> MemPayload {
    MemPayload {
        start_frame: 0x10_0000,
        page_count: 512,
        numa_node: 0,
        mem_type: MemType::Dma32,
        generation: 7,
        phase: HandoffPhase::Commit,
    }
}

pub fn query_reply() -> QueryReply {
    let mut q = QueryReply::new();
    q.what = QueryWhat::all();
    q.cpu_count = 4;
    q.memory_bytes = 1 << 30;
    q.free_memory_bytes = 1 << 29;
    q.set_irq(4, true);
    q.set_irq(255, true);
    q.messages_handled = 99;
    q.messages_rejected = 2;
    q.uptime_ticks = 12345;
    q.set_apic_ids(&[0, 1, 2, 3]).unwrap();
    q
}

/// The request payload of each typed kind.
pub fn request_payload(kind: Kind) -> Payload {
    match kind {
        Kind::IrqForward | Kind::IrqBalance | Kind::IrqMask | Kind::IrqUnmask => {
            Payload::IoIrq(irq())
        }
        Kind::CpuAdd | Kind::CpuRemove => Payload::Cpu(cpu()),
        Kind::MemAdd | Kind::MemRemove => Payload::Mem(mem()),
        Kind::Query => Payload::Query(QueryPayload {
            what: QueryWhat::CPUS | QueryWhat::IRQS,
        }),
        Kind::Heartbeat => Payload::Heartbeat(HeartbeatPayload {
            counter: 5,
            uptime_ticks: 1000,
        }),
        Kind::Shutdown => Payload::Shutdown(ShutdownPayload {
            reason: ShutdownReason::Reboot,
            flags: ShutdownFlags::FORCE,
            deadline_ticks: 500,
        }),
        Kind::Ping => Payload::Ping(PingPayload {
            nonce: 0xdead_beef,
            sent_at: 77,
        }),
        Kind::User(_) => Payload::User(UserPayload::new(b"hello, other kernel").unwrap()),
    }
}

/// The `Ok` reply payload of each typed kind.
pub fn reply_payload(kind: Kind) -> Payload {
    match kind {
        Kind::IrqForward | Kind::IrqBalance | Kind::IrqMask | Kind::IrqUnmask => Payload::Empty,
        Kind::Query => Payload::QueryReply(query_reply()),
        Kind::Shutdown => Payload::Empty,
        other => request_payload(other),
    }
}

pub fn request(kind: Kind) -> Message {
    Message::request(InstanceId::new(1), kind, 1000, request_payload(kind))
        .with_flags(MsgFlags::NEEDS_REPLY)
        .with_timestamp(555)
}

pub fn encoded(msg: &Message) -> Slot {
    let mut slot = [0u8; SLOT_SIZE];
    encode(msg, &mut slot).unwrap();
    slot
}
