//! The local APIC driver: x2APIC mode through MSRs where CPUID offers it, xAPIC (MMIO) where it
//! does not (QEMU's TCG has no x2APIC). Register access is the `x2apic` crate's; this module adds
//! what a kernel needs around it: mode detection, timer calibration against the PIT, the
//! vectors, and work-arounds for the crate's xAPIC bugs (see `id`).

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use x2apic::lapic::{LocalApic, LocalApicBuilder, TimerDivide, TimerMode};

use super::vectors;

/// Periodic LAPIC timer rate, in every instance.
pub const TICK_HZ: u32 = 100;

/// How this instance talks to its local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    X2Apic,
    XApic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::X2Apic => "x2APIC",
            Mode::XApic => "xAPIC",
        }
    }
}

const MODE_UNSET: u8 = 0;
const MODE_X2APIC: u8 = 1;
const MODE_XAPIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);
/// LAPIC timer ticks per second at divide-by-16, measured by `calibrate_timer`.
static TIMER_HZ_DIV16: AtomicU64 = AtomicU64::new(0);
/// Timer interrupts per second once `start_periodic` ran.
static TICK_RATE: AtomicU32 = AtomicU32::new(0);

/// Whether CPUID.01H:ECX.x2APIC[bit 21] is set.
pub fn cpu_has_x2apic() -> bool {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    leaf1.ecx & (1 << 21) != 0
}

pub fn mode() -> Option<Mode> {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => Some(Mode::X2Apic),
        MODE_XAPIC => Some(Mode::XApic),
        _ => None,
    }
}

/// One CPU's local APIC. It stays with the CPU that created it (see `cpu::PerCpu`).
pub struct Lapic {
    inner: LocalApic,
    mode: Mode,
}

/// Where this instance maps the xAPIC register page (0 in x2APIC mode, which uses MSRs).
static XAPIC_VIRT: spin::Once<u64> = spin::Once::new();

/// The xAPIC register window for `init_this_cpu`: mapped uncached once per instance (every
/// CPU's APIC answers at the same physical address), 0 where the CPU has an x2APIC.
pub fn xapic_window() -> Result<u64, ApicError> {
    if cpu_has_x2apic() {
        return Ok(0);
    }
    XAPIC_VIRT
        .try_call_once(|| {
            let phys = xapic_phys_base();
            crate::memory::mmio::map(phys, 4096).map_err(|cause| ApicError::Window { phys, cause })
        })
        .copied()
}

/// Physical address of the xAPIC register page (from IA32_APIC_BASE).
pub fn xapic_phys_base() -> u64 {
    // SAFETY: reading IA32_APIC_BASE has no side effects; every x86_64 CPU has the MSR.
    unsafe { x2apic::lapic::xapic_base() }
}

/// Enables the running CPU's local APIC, with the timer stopped.
///
/// `xapic_virt` is where the xAPIC page is mapped uncached; it is only used when the CPU has
/// no x2APIC.
pub fn init_this_cpu(xapic_virt: u64) -> Result<Lapic, ApicError> {
    if xapic_virt == 0 && !cpu_has_x2apic() {
        return Err(ApicError::NoWindow);
    }
    let inner = LocalApicBuilder::new()
        .timer_vector(vectors::LAPIC_TIMER as usize)
        .error_vector(vectors::LAPIC_ERROR as usize)
        .spurious_vector(vectors::SPURIOUS as usize)
        .timer_mode(TimerMode::OneShot)
        .timer_divide(TimerDivide::Div16)
        .timer_initial(0)
        .set_xapic_base(xapic_virt)
        .build()
        .map_err(ApicError::Builder)?;
    let mode = if cpu_has_x2apic() {
        Mode::X2Apic
    } else {
        Mode::XApic
    };
    let mut lapic = Lapic { inner, mode };
    // SAFETY: enabling the APIC of the running CPU; its vectors have IDT handlers installed
    // (interrupts::init ran before), and in xAPIC mode the register page is mapped at
    // `xapic_virt` (the caller mapped it uncached).
    //
    // Twice: `enable` programs the LVT entries (unmasking the timer) *before* it sets the
    // software-enable bit, and while an APIC is software-disabled (as it is after INIT, on
    // every CPU but the bootstrap one, whose firmware enabled it) the LVT mask bits cannot be
    // cleared. The second pass finds the APIC enabled and unmasks for real. (KVM enforces this;
    // QEMU's TCG does not, which hid it: measured, the timers of CPUs started by INIT-SIPI
    // never fired under KVM.)
    unsafe {
        lapic.inner.enable();
        lapic.inner.enable();
    }
    MODE.store(
        match mode {
            Mode::X2Apic => MODE_X2APIC,
            Mode::XApic => MODE_XAPIC,
        },
        Ordering::Relaxed,
    );
    Ok(lapic)
}

/// Why the local APIC could not be set up on the running CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// Mapping the xAPIC register page at physical `phys` failed (this instance's page tables).
    Window {
        phys: u64,
        cause: crate::memory::mmio::MmioError,
    },
    /// The CPU has no x2APIC and the caller gave no xAPIC window.
    NoWindow,
    /// The `x2apic` crate's builder refused its configuration (a bug here); its message.
    Builder(&'static str),
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Window { phys, cause } => {
                write!(f, "xAPIC register page at {phys:#x}: {cause}")
            }
            Self::NoWindow => f.write_str("no x2APIC and no xAPIC window mapped"),
            Self::Builder(msg) => f.write_str(msg),
        }
    }
}

impl Lapic {
    /// The APIC ID. In xAPIC mode the `x2apic` crate returns the raw ID register, whose ID sits
    /// in bits 24..32 (crate issue #19), so it is shifted here.
    pub fn id(&self) -> u32 {
        // SAFETY: reading the ID register of the running CPU's enabled APIC.
        let raw = unsafe { self.inner.id() };
        match self.mode {
            Mode::X2Apic => raw,
            Mode::XApic => raw >> 24,
        }
    }

    pub fn eoi(&mut self) {
        // SAFETY: called from an interrupt handler for an APIC-delivered vector on this CPU.
        unsafe { self.inner.end_of_interrupt() };
    }

    /// The destination value to give the crate's ICR writers for APIC ID `apic_id`. In xAPIC
    /// mode the crate writes the destination to ICR bits 32..40 where the hardware reads bits
    /// 56..64 (crate issue #29), so the ID is shifted into place.
    fn icr_dest(&self, apic_id: u32) -> u32 {
        match self.mode {
            Mode::X2Apic => apic_id,
            Mode::XApic => apic_id << 24,
        }
    }

    /// Sends a fixed IPI with `vector` to the CPU with APIC ID `dest`.
    pub fn send_ipi(&mut self, vector: u8, dest: u32) {
        let dest = self.icr_dest(dest);
        // SAFETY: a fixed-delivery IPI only raises `vector` on `dest`, which has a handler for
        // it.
        unsafe { self.inner.send_ipi(vector, dest) }
    }

    /// Sends an NMI to `dest` (the tests' rogue instance does, as any instance could).
    pub fn send_nmi(&mut self, dest: u32) {
        let dest = self.icr_dest(dest);
        // SAFETY: an NMI runs `dest`'s NMI handler, which in this kernel only counts and
        // returns (`interrupts::nmi`); it changes no memory the sender relies on.
        unsafe { self.inner.send_nmi(dest) }
    }

    /// Sends INIT to `dest` (the first step of starting a CPU).
    pub fn send_init(&mut self, dest: u32) {
        let dest = self.icr_dest(dest);
        // SAFETY: INIT resets `dest`, a CPU that this instance owns and that runs nothing (it
        // is parked or was never started).
        unsafe { self.inner.send_init_ipi(dest) }
    }

    /// Sends a start-up IPI: `dest` starts in real mode at physical `vector << 12`.
    pub fn send_startup(&mut self, vector: u8, dest: u32) {
        let dest = self.icr_dest(dest);
        // SAFETY: as in `send_init`; the page at `vector << 12` holds the trampoline.
        unsafe { self.inner.send_sipi(vector, dest) }
    }

    /// Sets the timer rate measured elsewhere (instances other than 0 do not own the PIT).
    pub fn set_timer_hz(&mut self, hz_div16: u64) {
        TIMER_HZ_DIV16.store(hz_div16, Ordering::Relaxed);
    }

    /// Measures the timer's rate against the PIT over `window_ms` and stores it.
    pub fn calibrate_timer(&mut self, window_ms: u64) -> u64 {
        // SAFETY: reprogramming this CPU's own timer, which nothing else uses during
        // calibration (its interrupt is not yet expected: it is one-shot and we stop it).
        unsafe {
            self.inner.set_timer_mode(TimerMode::OneShot);
            self.inner.set_timer_divide(TimerDivide::Div16);
            self.inner.set_timer_initial(u32::MAX);
        }
        let rounds = window_ms.div_ceil(10).max(1);
        for _ in 0..rounds {
            super::pit::wait_micros(10_000);
        }
        // SAFETY: as above.
        let left = unsafe { self.inner.timer_current() };
        // SAFETY: as above; stops the timer.
        unsafe { self.inner.set_timer_initial(0) };
        let elapsed = u64::from(u32::MAX - left);
        let hz = elapsed * 1000 / (rounds * 10);
        TIMER_HZ_DIV16.store(hz, Ordering::Relaxed);
        hz
    }

    /// Starts the periodic timer at `hz` interrupts per second (after `calibrate_timer`).
    pub fn start_periodic(&mut self, hz: u32) {
        let initial = (timer_hz_div16() / u64::from(hz.max(1))).clamp(1, u64::from(u32::MAX));
        // SAFETY: programs this CPU's own timer; LAPIC_TIMER has a handler.
        unsafe {
            self.inner.set_timer_divide(TimerDivide::Div16);
            self.inner.set_timer_mode(TimerMode::Periodic);
            self.inner.set_timer_initial(initial as u32);
        }
        TICK_RATE.store(hz, Ordering::Relaxed);
    }
}

pub fn timer_hz_div16() -> u64 {
    TIMER_HZ_DIV16.load(Ordering::Relaxed)
}

pub fn tick_rate() -> u32 {
    TICK_RATE.load(Ordering::Relaxed)
}
