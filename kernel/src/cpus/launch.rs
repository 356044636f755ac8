//! Starting another instance: its first CPU on a fresh copy of the kernel, in memory this
//! instance gave up, through that instance's trampoline page. Instance 0 does it at boot
//! (`boot::start`) and again on respawn (`services::lifecycle`), from the records kept here.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use mk_plan::{MemRange, Plan};

use super::smp;
use crate::arch::trampoline::Params;
use crate::arch::{apic, tsc};
use crate::instance::InstanceId;
use crate::memory::launch;
use crate::platform::descriptor::BootDescriptor;
use crate::shared::region::{self, StartError, StartWait, Started};

/// The resolved plan, kept for the services, the tests and the status table.
pub static PLAN: spin::Once<Box<Plan>> = spin::Once::new();

/// What instance 0 needs to (re)start an instance: kept from boot for respawns.
pub struct Launcher {
    /// The pristine kernel file (see `memory::pristine`).
    pub kernel_file: Vec<u8>,
    /// Trampoline page of each instance, below 1 MiB.
    pub trampolines: Vec<u64>,
    /// Top-level page-table page of each instance, below 1 MiB (see `memory::launch::prepare`).
    pub roots: Vec<u64>,
    pub shared: MemRange,
    pub count: usize,
    pub ioapics: Vec<(u64, u32)>,
    pub rtc_gsi: u32,
    pub com2_gsi: u32,
    pub tests: Option<String>,
    /// How long to wait for each instance to report running (`StartWait::DEFAULT` unless
    /// overridden here, e.g. by a test that forces a short deadline).
    pub waits: Vec<(usize, StartWait)>,
}

/// Why an instance could not be started. Whatever the step, its state is no longer `Booting`
/// afterwards (instance 0 set it `Dead`), so a late report from it cannot make it running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchError {
    /// Building its kernel copy, page tables or boot data failed (this instance's side).
    Prepare(crate::memory::launch::LaunchBuildError),
    /// No trampoline or top-level page was set aside for it at boot (this instance's set-up).
    NoLowPages,
    /// It was given no CPU (the caller's argument).
    NoCpu,
    /// Its first CPU did not start (the hardware's side).
    Cpu(smp::CpuError),
    /// It started but did not report running (its side): see [`StartError`].
    Wait(StartError),
}

impl core::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Prepare(e) => write!(f, "building it failed: {e}"),
            Self::NoLowPages => write!(f, "no trampoline or top-level page was set aside for it"),
            Self::NoCpu => write!(f, "it was given no CPU"),
            Self::Cpu(e) => write!(f, "its first CPU did not start: {e}"),
            Self::Wait(e) => e.fmt(f),
        }
    }
}

pub static LAUNCH: spin::Once<Launcher> = spin::Once::new();

impl Launcher {
    /// Builds instance `id` from a fresh copy of the kernel in `memory` (reachable through
    /// instance 0's physical map), starts its first CPU `cpus[0]` and waits until it runs.
    pub fn launch(
        &self,
        id: InstanceId,
        memory: &[MemRange],
        cpus: &[u32],
    ) -> Result<Started, LaunchError> {
        let result = self.try_launch(id, memory, cpus);
        // A failed wait already left the state Dead; every earlier failure leaves it Booting.
        if matches!(&result, Err(e) if !matches!(e, LaunchError::Wait(_))) {
            region::abandon_start(id);
        }
        result
    }

    /// How long to wait for instance `id`.
    pub fn wait_for(&self, id: InstanceId) -> StartWait {
        self.waits
            .iter()
            .find(|(k, _)| *k == id.index())
            .map_or(StartWait::DEFAULT, |&(_, w)| w)
    }

    fn try_launch(
        &self,
        id: InstanceId,
        memory: &[MemRange],
        cpus: &[u32],
    ) -> Result<Started, LaunchError> {
        let page = *self
            .trampolines
            .get(id.index())
            .ok_or(LaunchError::NoLowPages)?;
        let root = *self.roots.get(id.index()).ok_or(LaunchError::NoLowPages)?;
        let first = *cpus.first().ok_or(LaunchError::NoCpu)?;
        let started = tsc::read();
        let mut desc = BootDescriptor::empty();
        desc.instance_id = u32::from(id.raw());
        desc.instance_count = self.count as u32;
        desc.cpu_count = cpus.len().min(desc.apic_ids.len()) as u32;
        desc.apic_ids[..desc.cpu_count as usize].copy_from_slice(&cpus[..desc.cpu_count as usize]);
        desc.x2apic = u32::from(apic::cpu_has_x2apic());
        desc.trampoline_page = page;
        desc.shared_phys = self.shared.start;
        desc.shared_len = self.shared.len;
        desc.tsc_per_ms = tsc::ticks_per_ms();
        desc.lapic_hz_div16 = apic::timer_hz_div16();
        desc.start_tsc = started;
        for (i, &(phys, gsi_base)) in self
            .ioapics
            .iter()
            .take(crate::platform::descriptor::MAX_IOAPICS)
            .enumerate()
        {
            desc.ioapic_phys[i] = phys;
            desc.ioapic_gsi_base[i] = gsi_base;
            desc.ioapic_count = i as u32 + 1;
        }
        if let Some(plan) = PLAN.get() {
            for p in plan.partitions() {
                desc.set_plan_cpus(p.index, p.cpus);
            }
        }
        desc.rtc_gsi = self.rtc_gsi;
        desc.com2_gsi = self.com2_gsi;
        desc.framebuffer = crate::console::framebuffer_desc();
        if let Some(t) = &self.tests {
            let n = t.len().min(desc.tests.len());
            desc.tests[..n].copy_from_slice(&t.as_bytes()[..n]);
            desc.tests_len = n as u32;
        }
        crate::shared::records::with(|l| l.starting(id));
        region::set_booting(id, started);
        let l = launch::prepare(memory, self.shared, &self.kernel_file, page, root, &desc)
            .map_err(LaunchError::Prepare)?;
        let params = Params {
            cr3: l.cr3,
            stack: l.stack_top,
            entry: l.entry,
            arg: l.boot_info,
            started: 0,
            _pad: 0,
        };
        smp::start_cpu(first, page, params).map_err(LaunchError::Cpu)?;
        let started = region::wait_running(id, self.wait_for(id)).map_err(LaunchError::Wait)?;
        crate::shared::records::with(|l| l.started(id));
        Ok(started)
    }
}
