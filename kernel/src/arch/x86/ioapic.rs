//! The IO APICs, through the `x2apic` crate. Every line starts masked; a line is enabled when a
//! driver asks for it, routed to one CPU by APIC ID.

use spin::Mutex;
use x2apic::ioapic::{IoApic, IrqFlags, IrqMode, RedirectionTableEntry};

use super::vectors;

/// One IO APIC: its registers and the global system interrupts (GSIs) it serves.
struct Chip {
    regs: IoApic,
    gsi_base: u32,
    lines: u32,
}

// SAFETY: `IoApic` is a pointer to the chip's MMIO window, valid from any CPU; all access goes
// through the `CHIPS` mutex, so no two CPUs program the index/data register pair at once.
unsafe impl Send for Chip {}

use crate::instance::InstanceId;

const MAX_CHIPS: usize = 8;
static CHIPS: Mutex<[Option<Chip>; MAX_CHIPS]> = Mutex::new([const { None }; MAX_CHIPS]);

/// The cross-instance IO APIC lock, once the shared region exists (before, only instance 0
/// runs). Other instances program the same chips.
static SHARED_LOCK: spin::Once<(mk_shared::TicketLock<'static>, InstanceId)> = spin::Once::new();

/// From now on, every access to the chips is also serialised with the other instances by
/// `lock` (the shared region's IO APIC lock), taken as instance `me`.
pub fn use_shared_lock(lock: mk_shared::TicketLock<'static>, me: InstanceId) {
    SHARED_LOCK.call_once(|| (lock, me));
}

/// Takes the shared IO APIC lock (if there is one yet), waiting `IOAPIC_WAIT` at most: a
/// holder that long is dead or hostile, and the caller's operation fails (counted in the lock's
/// `timed_out`) rather than stall this CPU. Call with interrupts off.
fn shared_lock() -> Result<Option<mk_shared::LockGuard<'static>>, IoApicError> {
    SHARED_LOCK
        .get()
        .map(|(lock, me)| {
            lock.try_lock(
                *me,
                super::tsc::wait_bound(mk_shared::IOAPIC_WAIT),
                super::tsc::read,
                core::hint::spin_loop,
            )
        })
        .transpose()
        .map_err(IoApicError::SharedLock)
}

/// Maps the IO APIC at physical `phys` (uncached, for good) and registers it as serving GSIs
/// from `gsi_base`, with every line masked. Returns its line count.
pub fn add(phys: u64, gsi_base: u32) -> Result<u32, IoApicError> {
    let virt = crate::memory::mmio::map(phys, 0x20).map_err(IoApicError::Map)?;
    // SAFETY: `virt` maps this IO APIC's register window uncached, for the kernel's lifetime.
    unsafe { add_mapped(virt, gsi_base) }
}

/// Maps the IO APIC at physical `phys` and registers it *as it is* (see `attach_mapped`).
pub fn attach(phys: u64, gsi_base: u32) -> Result<u32, IoApicError> {
    let virt = crate::memory::mmio::map(phys, 0x20).map_err(IoApicError::Map)?;
    // SAFETY: as in `add`.
    unsafe { attach_mapped(virt, gsi_base) }
}

/// Registers the IO APIC mapped at `virt` serving GSIs from `gsi_base`, with every line masked.
///
/// # Safety
/// `virt` must map the chip's register window (uncached) for the kernel's lifetime.
unsafe fn add_mapped(virt: u64, gsi_base: u32) -> Result<u32, IoApicError> {
    // SAFETY: the caller guarantees `virt` maps an IO APIC.
    let mut regs = unsafe { IoApic::new(virt) };
    // SAFETY: as above; only this chip's redirection entries are written.
    let lines = unsafe {
        regs.init(vectors::IRQ_BASE);
        let max = regs.max_table_entry();
        // `init` only ORs the vector into each entry; mask every line explicitly.
        for line in 0..=max {
            regs.disable_irq(line);
        }
        u32::from(max) + 1
    };
    register(Chip {
        regs,
        gsi_base,
        lines,
    })
}

/// Registers the IO APIC mapped at `virt` serving GSIs from `gsi_base` *as it is*: an
/// instance other than 0 joins the chips instance 0 set up, and must not mask lines other
/// instances own.
///
/// # Safety
/// `virt` must map the chip's register window (uncached) for the kernel's lifetime.
unsafe fn attach_mapped(virt: u64, gsi_base: u32) -> Result<u32, IoApicError> {
    // SAFETY: the caller guarantees `virt` maps an IO APIC; only the version register is read.
    let mut regs = unsafe { IoApic::new(virt) };
    let lines = x86_64::instructions::interrupts::without_interrupts(|| {
        let _shared = shared_lock()?;
        // SAFETY: as above.
        Ok::<_, IoApicError>(u32::from(unsafe { regs.max_table_entry() }) + 1)
    })?;
    register(Chip {
        regs,
        gsi_base,
        lines,
    })
}

/// Keeps `chip` in the first free slot; returns its line count.
fn register(chip: Chip) -> Result<u32, IoApicError> {
    let lines = chip.lines;
    let mut chips = CHIPS.lock();
    let slot = chips
        .iter_mut()
        .find(|c| c.is_none())
        .ok_or(IoApicError::TooMany)?;
    *slot = Some(chip);
    Ok(lines)
}

/// Routes `gsi` to `vector` on the CPU with APIC ID `dest` and unmasks it.
pub fn route(gsi: u32, vector: u8, dest: u32, level_low: bool) -> Result<(), IoApicError> {
    with_line(gsi, |chip, line| {
        let mut entry = RedirectionTableEntry::default();
        entry.set_mode(IrqMode::Fixed);
        let mut flags = IrqFlags::empty();
        if level_low {
            flags |= IrqFlags::LOW_ACTIVE | IrqFlags::LEVEL_TRIGGERED;
        }
        entry.set_flags(flags);
        entry.set_vector(vector);
        entry.set_dest(dest as u8);
        // SAFETY: programs one redirection entry of a registered chip, under the CHIPS lock.
        unsafe {
            chip.regs.set_table_entry(line, entry);
            chip.regs.enable_irq(line);
        }
    })
}

pub fn mask(gsi: u32) -> Result<(), IoApicError> {
    // SAFETY: masks one line of a registered chip, under the CHIPS lock.
    with_line(gsi, |chip, line| unsafe { chip.regs.disable_irq(line) })
}

pub fn unmask(gsi: u32) -> Result<(), IoApicError> {
    // SAFETY: unmasks one line of a registered chip, under the CHIPS lock.
    with_line(gsi, |chip, line| unsafe { chip.regs.enable_irq(line) })
}

/// Total number of lines over all chips.
pub fn line_count() -> u32 {
    CHIPS.lock().iter().flatten().map(|c| c.lines).sum()
}

/// Runs `f` on the chip serving `gsi` under this instance's CHIPS lock and the shared IO APIC
/// lock (other instances program the same chips: an index write and the data access after it
/// must not interleave with theirs), with interrupts off: an IRQ handler that masks its line on
/// this CPU must not find CHIPS held here, and the shared lock is held only as long as the
/// register accesses take.
fn with_line<R>(gsi: u32, f: impl FnOnce(&mut Chip, u8) -> R) -> Result<R, IoApicError> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut chips = CHIPS.lock();
        let chip = chips
            .iter_mut()
            .flatten()
            .find(|c| gsi >= c.gsi_base && gsi < c.gsi_base + c.lines)
            .ok_or(IoApicError::NoChip { gsi })?;
        let line = (gsi - chip.gsi_base) as u8;
        let _shared = shared_lock()?;
        Ok(f(chip, line))
    })
}

/// Why an IO APIC could not be registered, or a line programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoApicError {
    /// Mapping the chip's registers failed (this instance's page tables).
    Map(crate::memory::mmio::MmioError),
    /// This instance keeps at most `MAX_CHIPS` IO APICs, and the firmware lists more.
    TooMany,
    /// No registered chip serves the caller's `gsi`.
    NoChip { gsi: u32 },
    /// Another instance held the shared IO APIC lock past `IOAPIC_WAIT`, or corrupted it:
    /// nothing was written to the chip.
    SharedLock(mk_shared::LockTimedOut),
}

impl core::fmt::Display for IoApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "{e}"),
            Self::TooMany => write!(f, "too many IO APICs (at most {MAX_CHIPS})"),
            Self::NoChip { gsi } => write!(f, "no IO APIC serves this GSI ({gsi})"),
            Self::SharedLock(e) => write!(f, "{e}; the IO APIC was not touched"),
        }
    }
}
