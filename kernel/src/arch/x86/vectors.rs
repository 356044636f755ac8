//! The kernel's interrupt vectors.

/// Legacy PIC vectors (masked; only their spurious interrupts can arrive).
pub const PIC_SPURIOUS_1: u8 = super::pic::PIC1_VECTOR + 7;
pub const PIC_SPURIOUS_2: u8 = super::pic::PIC2_VECTOR + 7;
/// "New messages in your mailboxes": the inter-instance doorbell. Alone in the lowest
/// priority class in use (0x2_, shared only with the masked PIC's vectors), so that a
/// flooded instance can shut it out by raising its task priority to class 2 while the
/// timer (class 3) and device interrupts still arrive.
pub const MESSAGE_IPI: u8 = 0x2C;
/// Priority class of `MESSAGE_IPI`, for CR8.
pub const MESSAGE_CLASS: u8 = MESSAGE_IPI >> 4;
pub const LAPIC_TIMER: u8 = 0x30;
/// "A task was made ready on your CPU": gets a CPU out of `hlt` (or a task in ring 3 back to
/// its scheduler) at once instead of at its next tick. The handler only counts and EOIs.
/// In the timer's class (3), above `MESSAGE_CLASS`: an instance that shuts out the doorbell
/// by raising its task priority must still get its wake-ups (they come from its own CPUs,
/// at most one per wake, so they cannot flood it).
pub const WAKE_IPI: u8 = 0x31;
/// Device interrupts from the IO APIC: IRQ_BASE + line.
pub const IRQ_BASE: u8 = 0x40;
pub const IRQ_COUNT: usize = 32;
/// A bare IPI with no mailbox behind it: the benchmark's floor (the raw IPI round trip).
pub const PROBE_IPI: u8 = 0xE0;
pub const LAPIC_ERROR: u8 = 0xFE;
pub const SPURIOUS: u8 = 0xFF;
