//! Payload structures. Each has a fixed little-endian layout (offsets in the field docs are
//! relative to the start of the payload, i.e. slot byte 32) and a `SIZE`; the query reply and
//! the user payload are the only variable-length ones.

use crate::bytes::{Rd, Wr};
use crate::{DecodeError, MAX_PAYLOAD, PAGE_SIZE};

/// Why a payload of the right size was still refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFault {
    /// `IoIrqPayload::flags` has unknown bits.
    IrqFlags,
    /// `IoIrqPayload::flags` says both edge- and level-triggered.
    IrqTrigger,
    /// `IoIrqPayload::vector` is above 255.
    IrqVector,
    /// `CpuPayload::flags` has unknown bits.
    CpuFlags,
    /// A hand-off phase code is unknown.
    HandoffPhase,
    /// `MemPayload::mem_type` is unknown.
    MemType,
    /// `MemPayload` names no pages, or a range past [`MAX_FRAME`](crate::MAX_FRAME).
    MemRange,
    /// `ShutdownPayload::reason` is unknown.
    ShutdownReason,
    /// `ShutdownPayload::flags` has unknown bits.
    ShutdownFlags,
    /// A query `what` field has unknown bits.
    QueryFlags,
    /// `QueryReply::apic_count` is above the list capacity or above `cpu_count`.
    QueryApicCount,
    /// `LargeDataPayload` names no pages, no bytes, or more bytes than its pages hold.
    LargeDataRange,
    /// A reserved field is not zero.
    ReservedNonZero,
}

bitflags::bitflags! {
    /// Interrupt attributes (`IoIrqPayload::flags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct IrqFlags: u32 {
        /// Deliver ahead of other work.
        const HIGH_PRIORITY = 0x01;
        /// Latency matters more than throughput.
        const LOW_LATENCY = 0x02;
        /// Edge-triggered line.
        const EDGE_TRIGGERED = 0x04;
        /// Level-triggered line.
        const LEVEL_TRIGGERED = 0x08;
    }
}

bitflags::bitflags! {
    /// CPU capabilities (`CpuPayload::flags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CpuFlags: u32 {
        /// AVX-512 available.
        const HAS_AVX512 = 0x01;
        /// TSX available.
        const HAS_TSX = 0x02;
        /// This is a hyperthread sibling.
        const HYPERTHREAD = 0x04;
    }
}

bitflags::bitflags! {
    /// Shutdown options (`ShutdownPayload::flags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ShutdownFlags: u32 {
        /// Do not wait for work in flight.
        const FORCE = 0x01;
        /// Give every owned resource back to the sender before stopping.
        const RETURN_RESOURCES = 0x02;
        /// Do not stop cleanly: panic, as a failing instance would (the operator's `crash`,
        /// to watch failure detection and reclaiming at work).
        const CRASH = 0x04;
    }
}

bitflags::bitflags! {
    /// What a resource query asks for, and which sections of a [`QueryReply`] are valid.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct QueryWhat: u32 {
        /// CPU count and APIC id list.
        const CPUS = 0x01;
        /// Memory totals.
        const MEMORY = 0x02;
        /// Owned interrupt lines.
        const IRQS = 0x04;
        /// Message counters and uptime.
        const COUNTERS = 0x08;
    }
}

/// Phase of the two-phase resource hand-off.
///
/// The giver sends `Prepare` with a fresh generation; the receiver reserves the resource under
/// that generation and replies `Ok` (or refuses). The giver then sends `Commit` (or `Abort`)
/// with the same generation; a receiver that sees any other generation answers
/// [`Status::StaleGeneration`](crate::Status::StaleGeneration). `None` is a one-shot
/// notification without reservation.
///
/// The kernel keeps its two phases in the shared ownership words instead and sends one message
/// per step (`docs/wire-format.md`, "Two-phase hand-off"); it uses these codes as labels only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum HandoffPhase {
    /// Single-phase notification.
    None = 0,
    /// Phase 1: reserve under the generation.
    Prepare = 1,
    /// Phase 2: make the reservation final.
    Commit = 2,
    /// Phase 2: drop the reservation.
    Abort = 3,
}

impl HandoffPhase {
    /// The phase with wire code `code`, if any.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Prepare),
            2 => Some(Self::Commit),
            3 => Some(Self::Abort),
            _ => None,
        }
    }
}

/// Memory kind (`MemPayload::mem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MemType {
    /// Ordinary RAM.
    Normal = 0x01,
    /// Below 16 MiB (legacy DMA).
    Dma = 0x02,
    /// Below 4 GiB.
    Dma32 = 0x04,
    /// Not permanently mapped by the owner.
    HighMem = 0x08,
}

impl MemType {
    /// The memory type with wire code `code`, if any.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            0x01 => Some(Self::Normal),
            0x02 => Some(Self::Dma),
            0x04 => Some(Self::Dma32),
            0x08 => Some(Self::HighMem),
            _ => None,
        }
    }
}

/// Why an instance shuts down (`ShutdownPayload::reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ShutdownReason {
    /// An operator or the controlling instance asked for it.
    Requested = 1,
    /// Shut down, then boot again.
    Reboot = 2,
    /// The sender panicked and is taking the system down.
    Panic = 3,
    /// Stop and stay stopped.
    Halt = 4,
}

impl ShutdownReason {
    /// The reason with wire code `code`, if any.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Requested),
            2 => Some(Self::Reboot),
            3 => Some(Self::Panic),
            4 => Some(Self::Halt),
            _ => None,
        }
    }
}

/// A payload with a fixed size and layout.
pub(crate) trait Fixed: Sized {
    const SIZE: usize;
    fn write(&self, w: &mut Wr<'_>);
    /// Reads exactly `SIZE` bytes and validates the values.
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault>;
    fn check(&self) -> Result<(), PayloadFault>;
}

/// Parses a fixed payload, checking its size first.
pub(crate) fn read_fixed<T: Fixed>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != T::SIZE {
        return Err(DecodeError::PayloadSizeMismatch {
            expected: T::SIZE as u16,
            found: bytes.len() as u16,
        });
    }
    T::read(&mut Rd::new(bytes)).map_err(DecodeError::BadPayload)
}

fn flags_from<F: bitflags::Flags<Bits = u32>>(
    bits: u32,
    fault: PayloadFault,
) -> Result<F, PayloadFault> {
    F::from_bits(bits).ok_or(fault)
}

fn reserved_zero(v: u64) -> Result<(), PayloadFault> {
    if v == 0 {
        Ok(())
    } else {
        Err(PayloadFault::ReservedNonZero)
    }
}

/// IO subtypes (16 bytes).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `irq` (hardware line / GSI) |
/// | 4 | 4 | `vector` (0..=255) |
/// | 8 | 4 | `device_id` (0 = none) |
/// | 12 | 4 | `flags` ([`IrqFlags`]; not both EDGE and LEVEL) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoIrqPayload {
    /// Hardware interrupt line.
    pub irq: u32,
    /// CPU vector it is delivered on (0..=255).
    pub vector: u32,
    /// Device identifier, 0 when unknown.
    pub device_id: u32,
    /// Attributes.
    pub flags: IrqFlags,
}

impl IoIrqPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;
}

impl Fixed for IoIrqPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u32(self.irq);
        w.u32(self.vector);
        w.u32(self.device_id);
        w.u32(self.flags.bits());
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        let p = Self {
            irq: r.u32(),
            vector: r.u32(),
            device_id: r.u32(),
            flags: flags_from(r.u32(), PayloadFault::IrqFlags)?,
        };
        p.check()?;
        Ok(p)
    }
    fn check(&self) -> Result<(), PayloadFault> {
        flags_from::<IrqFlags>(self.flags.bits(), PayloadFault::IrqFlags)?;
        if self
            .flags
            .contains(IrqFlags::EDGE_TRIGGERED | IrqFlags::LEVEL_TRIGGERED)
        {
            return Err(PayloadFault::IrqTrigger);
        }
        if self.vector > 255 {
            return Err(PayloadFault::IrqVector);
        }
        Ok(())
    }
}

/// CPU hand-off (20 bytes).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `apic_id` |
/// | 4 | 4 | `numa_node` |
/// | 8 | 4 | `flags` ([`CpuFlags`]) |
/// | 12 | 4 | `generation` |
/// | 16 | 4 | `phase` ([`HandoffPhase`]) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuPayload {
    /// Local APIC id of the CPU.
    pub apic_id: u32,
    /// NUMA node of the CPU.
    pub numa_node: u32,
    /// Capabilities.
    pub flags: CpuFlags,
    /// Hand-off generation (see [`HandoffPhase`]).
    pub generation: u32,
    /// Hand-off phase.
    pub phase: HandoffPhase,
}

impl CpuPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 20;
}

impl Fixed for CpuPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u32(self.apic_id);
        w.u32(self.numa_node);
        w.u32(self.flags.bits());
        w.u32(self.generation);
        w.u32(self.phase as u32);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        Ok(Self {
            apic_id: r.u32(),
            numa_node: r.u32(),
            flags: flags_from(r.u32(), PayloadFault::CpuFlags)?,
            generation: r.u32(),
            phase: HandoffPhase::from_code(r.u32()).ok_or(PayloadFault::HandoffPhase)?,
        })
    }
    fn check(&self) -> Result<(), PayloadFault> {
        flags_from::<CpuFlags>(self.flags.bits(), PayloadFault::CpuFlags).map(|_| ())
    }
}

/// Memory hand-off (40 bytes). Frames are 4 KiB ([`PAGE_SIZE`]); the range must be non-empty
/// and end at or below [`MAX_FRAME`](crate::MAX_FRAME).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `start_frame` |
/// | 8 | 8 | `page_count` (> 0) |
/// | 16 | 4 | `numa_node` |
/// | 20 | 4 | `mem_type` ([`MemType`]) |
/// | 24 | 8 | `generation` |
/// | 32 | 4 | `phase` ([`HandoffPhase`]) |
/// | 36 | 4 | reserved, 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemPayload {
    /// First physical frame number.
    pub start_frame: u64,
    /// Number of 4 KiB frames.
    pub page_count: u64,
    /// NUMA node of the range.
    pub numa_node: u32,
    /// Memory kind.
    pub mem_type: MemType,
    /// Hand-off generation (see [`HandoffPhase`]).
    pub generation: u64,
    /// Hand-off phase.
    pub phase: HandoffPhase,
}

impl MemPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 40;
}

impl Fixed for MemPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u64(self.start_frame);
        w.u64(self.page_count);
        w.u32(self.numa_node);
        w.u32(self.mem_type as u32);
        w.u64(self.generation);
        w.u32(self.phase as u32);
        w.u32(0);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        let p = Self {
            start_frame: r.u64(),
            page_count: r.u64(),
            numa_node: r.u32(),
            mem_type: MemType::from_code(r.u32()).ok_or(PayloadFault::MemType)?,
            generation: r.u64(),
            phase: HandoffPhase::from_code(r.u32()).ok_or(PayloadFault::HandoffPhase)?,
        };
        reserved_zero(r.u32().into())?;
        p.check()?;
        Ok(p)
    }
    fn check(&self) -> Result<(), PayloadFault> {
        match self.start_frame.checked_add(self.page_count) {
            Some(end) if self.page_count > 0 && end <= crate::MAX_FRAME => Ok(()),
            _ => Err(PayloadFault::MemRange),
        }
    }
}

/// Heartbeat (16 bytes; the reply echoes the receiver's own values).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `counter` |
/// | 8 | 8 | `uptime_ticks` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeartbeatPayload {
    /// Increments with every heartbeat the sender emits.
    pub counter: u64,
    /// Sender's uptime in its tick unit.
    pub uptime_ticks: u64,
}

impl HeartbeatPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;
}

impl Fixed for HeartbeatPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u64(self.counter);
        w.u64(self.uptime_ticks);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        Ok(Self {
            counter: r.u64(),
            uptime_ticks: r.u64(),
        })
    }
    fn check(&self) -> Result<(), PayloadFault> {
        Ok(())
    }
}

/// Shutdown request (16 bytes).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `reason` ([`ShutdownReason`]) |
/// | 4 | 4 | `flags` ([`ShutdownFlags`]) |
/// | 8 | 8 | `deadline_ticks` (0 = none) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShutdownPayload {
    /// Why.
    pub reason: ShutdownReason,
    /// Options.
    pub flags: ShutdownFlags,
    /// How long the receiver may take, in ticks; 0 means no limit.
    pub deadline_ticks: u64,
}

impl ShutdownPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;
}

impl Fixed for ShutdownPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u32(self.reason as u32);
        w.u32(self.flags.bits());
        w.u64(self.deadline_ticks);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        Ok(Self {
            reason: ShutdownReason::from_code(r.u32()).ok_or(PayloadFault::ShutdownReason)?,
            flags: flags_from(r.u32(), PayloadFault::ShutdownFlags)?,
            deadline_ticks: r.u64(),
        })
    }
    fn check(&self) -> Result<(), PayloadFault> {
        flags_from::<ShutdownFlags>(self.flags.bits(), PayloadFault::ShutdownFlags).map(|_| ())
    }
}

/// Ping (16 bytes); the reply echoes the request's payload unchanged.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `nonce` |
/// | 8 | 8 | `sent_at` (sender's tick) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PingPayload {
    /// Arbitrary value echoed back.
    pub nonce: u64,
    /// Sender's tick when it sent the ping.
    pub sent_at: u64,
}

impl PingPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;
}

impl Fixed for PingPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u64(self.nonce);
        w.u64(self.sent_at);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        Ok(Self {
            nonce: r.u64(),
            sent_at: r.u64(),
        })
    }
    fn check(&self) -> Result<(), PayloadFault> {
        Ok(())
    }
}

/// Resource query request (8 bytes).
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `what` ([`QueryWhat`]) |
/// | 4 | 4 | reserved, 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryPayload {
    /// Sections asked for.
    pub what: QueryWhat,
}

impl QueryPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 8;
}

impl Fixed for QueryPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u32(self.what.bits());
        w.u32(0);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        let what = flags_from(r.u32(), PayloadFault::QueryFlags)?;
        reserved_zero(r.u32().into())?;
        Ok(Self { what })
    }
    fn check(&self) -> Result<(), PayloadFault> {
        flags_from::<QueryWhat>(self.what.bits(), PayloadFault::QueryFlags).map(|_| ())
    }
}

/// Pointer to data in the shared pool, for data bigger than a message (24 bytes). Sent instead
/// of the subtype's own payload when the header has `LARGE_DATA`.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `pool_frame` (first frame in the shared pool) |
/// | 8 | 4 | `page_count` (> 0) |
/// | 12 | 4 | reserved, 0 |
/// | 16 | 8 | `byte_len` (1..=page_count*4096) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LargeDataPayload {
    /// First frame of the data in the shared pool.
    pub pool_frame: u64,
    /// Frames holding the data.
    pub page_count: u32,
    /// The pool generation the sender's hand-over gave the run (`mk_pool::Lease`): the
    /// receiver accepts the pages only with this generation, never with the one it finds in
    /// the owner words (which anyone can write).
    pub generation: u32,
    /// Bytes of data, starting at the first frame.
    pub byte_len: u64,
}

impl LargeDataPayload {
    /// Encoded size in bytes.
    pub const SIZE: usize = 24;
}

impl Fixed for LargeDataPayload {
    const SIZE: usize = Self::SIZE;
    fn write(&self, w: &mut Wr<'_>) {
        w.u64(self.pool_frame);
        w.u32(self.page_count);
        w.u32(self.generation);
        w.u64(self.byte_len);
    }
    fn read(r: &mut Rd<'_>) -> Result<Self, PayloadFault> {
        let pool_frame = r.u64();
        let page_count = r.u32();
        let generation = r.u32();
        let p = Self {
            pool_frame,
            page_count,
            generation,
            byte_len: r.u64(),
        };
        p.check()?;
        Ok(p)
    }
    fn check(&self) -> Result<(), PayloadFault> {
        let capacity = u64::from(self.page_count) * PAGE_SIZE;
        if self.byte_len == 0 || self.byte_len > capacity {
            return Err(PayloadFault::LargeDataRange);
        }
        Ok(())
    }
}

/// Number of interrupt lines covered by [`QueryReply::irq_bitmap`].
pub const IRQ_BITMAP_BITS: usize = 256;
/// Fixed part of a [`QueryReply`], before the APIC id list.
pub const QUERY_REPLY_FIXED: usize = 84;
/// Most APIC ids a [`QueryReply`] can list: (224 - 84) / 4.
pub const QUERY_REPLY_MAX_APIC_IDS: usize = (MAX_PAYLOAD - QUERY_REPLY_FIXED) / 4;

/// Resource query reply: 84 bytes plus 4 per listed APIC id (at most 224 bytes). Its size must
/// be exactly `84 + 4 * apic_count`.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `what` ([`QueryWhat`]: valid sections) |
/// | 4 | 4 | `cpu_count` (CPUs owned; may exceed the list) |
/// | 8 | 8 | `memory_bytes` (owned) |
/// | 16 | 8 | `free_memory_bytes` |
/// | 24 | 32 | `irq_bitmap` (bit n of byte n/8 = line n owned) |
/// | 56 | 8 | `messages_handled` |
/// | 64 | 8 | `messages_rejected` |
/// | 72 | 8 | `uptime_ticks` |
/// | 80 | 2 | `apic_count` (0..=35, <= cpu_count) |
/// | 82 | 2 | reserved, 0 |
/// | 84 | 4*n | APIC ids |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryReply {
    /// Sections that hold data.
    pub what: QueryWhat,
    /// CPUs the replier owns.
    pub cpu_count: u32,
    /// Memory the replier owns.
    pub memory_bytes: u64,
    /// Of which free.
    pub free_memory_bytes: u64,
    /// Owned interrupt lines.
    pub irq_bitmap: [u8; IRQ_BITMAP_BITS / 8],
    /// Messages handled so far.
    pub messages_handled: u64,
    /// Messages rejected so far.
    pub messages_rejected: u64,
    /// Replier's uptime.
    pub uptime_ticks: u64,
    apic_count: u16,
    apic_ids: [u32; QUERY_REPLY_MAX_APIC_IDS],
}

impl Default for QueryReply {
    fn default() -> Self {
        Self::new()
    }
}

impl QueryReply {
    /// An empty reply (no section valid, no ids).
    pub const fn new() -> Self {
        Self {
            what: QueryWhat::empty(),
            cpu_count: 0,
            memory_bytes: 0,
            free_memory_bytes: 0,
            irq_bitmap: [0; IRQ_BITMAP_BITS / 8],
            messages_handled: 0,
            messages_rejected: 0,
            uptime_ticks: 0,
            apic_count: 0,
            apic_ids: [0; QUERY_REPLY_MAX_APIC_IDS],
        }
    }

    /// Sets the listed APIC ids; `Err(())` when more than
    /// [`QUERY_REPLY_MAX_APIC_IDS`] are given (send the full list as large data instead).
    /// Raises `cpu_count` to the list length if it is lower.
    #[allow(clippy::result_unit_err)]
    pub fn set_apic_ids(&mut self, ids: &[u32]) -> Result<(), ()> {
        let dst = self.apic_ids.get_mut(..ids.len()).ok_or(())?;
        dst.copy_from_slice(ids);
        if let Some(rest) = self.apic_ids.get_mut(ids.len()..) {
            rest.fill(0);
        }
        self.apic_count = ids.len() as u16;
        self.cpu_count = self.cpu_count.max(ids.len() as u32);
        Ok(())
    }

    /// The listed APIC ids.
    pub fn apic_ids(&self) -> &[u32] {
        self.apic_ids
            .get(..usize::from(self.apic_count))
            .unwrap_or(&[])
    }

    /// Marks or clears interrupt line `irq`; lines at or above [`IRQ_BITMAP_BITS`] are ignored.
    pub fn set_irq(&mut self, irq: usize, owned: bool) {
        if let Some(byte) = self.irq_bitmap.get_mut(irq / 8) {
            let bit = 1u8 << (irq % 8);
            if owned {
                *byte |= bit;
            } else {
                *byte &= !bit;
            }
        }
    }

    /// Whether interrupt line `irq` is marked.
    pub fn has_irq(&self, irq: usize) -> bool {
        self.irq_bitmap
            .get(irq / 8)
            .is_some_and(|b| b & (1 << (irq % 8)) != 0)
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        QUERY_REPLY_FIXED + 4 * usize::from(self.apic_count)
    }

    pub(crate) fn check(&self) -> Result<(), PayloadFault> {
        flags_from::<QueryWhat>(self.what.bits(), PayloadFault::QueryFlags)?;
        if usize::from(self.apic_count) > QUERY_REPLY_MAX_APIC_IDS
            || u32::from(self.apic_count) > self.cpu_count
        {
            return Err(PayloadFault::QueryApicCount);
        }
        Ok(())
    }

    pub(crate) fn write(&self, w: &mut Wr<'_>) {
        w.u32(self.what.bits());
        w.u32(self.cpu_count);
        w.u64(self.memory_bytes);
        w.u64(self.free_memory_bytes);
        w.put(self.irq_bitmap);
        w.u64(self.messages_handled);
        w.u64(self.messages_rejected);
        w.u64(self.uptime_ticks);
        w.u16(self.apic_count);
        w.u16(0);
        for id in self.apic_ids() {
            w.u32(*id);
        }
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<Self, DecodeError> {
        let found = bytes.len() as u16;
        if bytes.len() < QUERY_REPLY_FIXED {
            return Err(DecodeError::PayloadSizeMismatch {
                expected: QUERY_REPLY_FIXED as u16,
                found,
            });
        }
        let mut r = Rd::new(bytes);
        let bad = DecodeError::BadPayload;
        let mut p = Self::new();
        p.what = flags_from(r.u32(), PayloadFault::QueryFlags).map_err(bad)?;
        p.cpu_count = r.u32();
        p.memory_bytes = r.u64();
        p.free_memory_bytes = r.u64();
        p.irq_bitmap = r.take();
        p.messages_handled = r.u64();
        p.messages_rejected = r.u64();
        p.uptime_ticks = r.u64();
        p.apic_count = r.u16();
        reserved_zero(r.u16().into()).map_err(bad)?;
        p.check().map_err(bad)?;
        if bytes.len() != p.encoded_len() {
            return Err(DecodeError::PayloadSizeMismatch {
                expected: p.encoded_len() as u16,
                found,
            });
        }
        let n = usize::from(p.apic_count);
        for id in p.apic_ids.iter_mut().take(n) {
            *id = r.u32();
        }
        Ok(p)
    }
}

/// Opaque USER payload, 0..=224 bytes.
///
/// The bytes come first and on an 8-byte boundary (`repr(C, align(8))`): a decoder's copy
/// into them moves whole words from the first byte to the last (`rep movsq`, no odd bytes at
/// either end), as the mailbox's copies do.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct UserPayload {
    // Bytes past `len` are always zero, so the derived equality compares contents.
    data: [u8; MAX_PAYLOAD],
    len: u8,
}

impl core::fmt::Debug for UserPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("UserPayload")
            .field(&self.as_bytes())
            .finish()
    }
}

impl UserPayload {
    /// No bytes.
    pub const EMPTY: Self = Self {
        data: [0; MAX_PAYLOAD],
        len: 0,
    };

    /// A payload holding `bytes`; `None` when longer than [`MAX_PAYLOAD`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        // A full payload is copied as is (nothing to zero behind it).
        if let Ok(full) = <&[u8; MAX_PAYLOAD]>::try_from(bytes) {
            return Some(Self {
                len: MAX_PAYLOAD as u8,
                data: *full,
            });
        }
        let mut data = [0; MAX_PAYLOAD];
        data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self {
            len: bytes.len() as u8,
            data,
        })
    }

    /// Replaces the contents with `bytes` in place (one copy, and zeroes only what the old
    /// contents used beyond the new length); `None`, leaving the payload as it was, when
    /// `bytes` is longer than [`MAX_PAYLOAD`].
    pub fn set(&mut self, bytes: &[u8]) -> Option<()> {
        let old = usize::from(self.len);
        self.data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        // Nothing to clear when the new contents are at least as long (a call saved).
        if old > bytes.len()
            && let Some(stale) = self.data.get_mut(bytes.len()..old)
        {
            stale.fill(0);
        }
        self.len = bytes.len() as u8;
        Some(())
    }

    /// All [`MAX_PAYLOAD`] bytes, for a writer that fills them in place (a receiver's copy out
    /// of a mailbox slot, [`crate::Received`]): the length becomes [`MAX_PAYLOAD`] (so no byte
    /// lies past it, whatever is written), until [`Self::keep`] sets the real one.
    pub(crate) fn whole_mut(&mut self) -> &mut [u8; MAX_PAYLOAD] {
        self.len = MAX_PAYLOAD as u8;
        &mut self.data
    }

    /// Keeps the first `len` bytes (at most [`MAX_PAYLOAD`]) and zeroes the rest.
    pub(crate) fn keep(&mut self, len: usize) {
        let len = len.min(MAX_PAYLOAD);
        if let Some(rest) = self.data.get_mut(len..)
            && !rest.is_empty()
        {
            rest.fill(0);
        }
        self.len = len as u8;
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A payload of little-endian 64-bit words (a common shape for small requests and
    /// replies); `None` when more than `MAX_PAYLOAD / 8` words.
    pub fn from_words(words: &[u64]) -> Option<Self> {
        let mut data = [0; MAX_PAYLOAD];
        let bytes = data.get_mut(..words.len() * 8)?;
        for (chunk, w) in bytes.as_chunks_mut::<8>().0.iter_mut().zip(words) {
            *chunk = w.to_le_bytes();
        }
        Some(Self {
            len: (words.len() * 8) as u8,
            data,
        })
    }

    /// The payload read as little-endian 64-bit words (a trailing partial word is ignored).
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.as_bytes()
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| u64::from_le_bytes(*c))
    }
}
