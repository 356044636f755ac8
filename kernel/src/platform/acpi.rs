//! ACPI through the `acpi` crate: processors, IO APICs and interrupt source overrides from the
//! MADT, the HPET when present, and the NUMA topology from the SRAT (each CPU's and each memory
//! range's proximity domain). Only static tables are read (no AML).

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::sdt::madt::{Madt, MadtEntry};
use acpi::sdt::srat::Srat;
use acpi::{AcpiTables, Handler, HpetInfo, PciAddress, PhysicalMapping};
use mk_plan::srat::Affinity;
use mk_plan::{MemRange, Numa};
use x86_64::instructions::port::Port;

use crate::memory::frames::phys_to_virt;

/// A processor listed in the MADT.
#[derive(Debug, Clone, Copy)]
pub struct Processor {
    pub apic_id: u32,
    pub uid: u32,
    /// Usable now.
    pub enabled: bool,
    /// Not enabled now but may be brought online (ACPI 6.3 "online capable").
    pub online_capable: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

/// "ISA IRQ `irq` arrives on GSI `gsi`", with polarity/trigger flags (MPS INTI flags).
#[derive(Debug, Clone, Copy)]
pub struct Override {
    pub irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

#[derive(Debug, Clone, Default)]
pub struct Platform {
    pub processors: Vec<Processor>,
    pub io_apics: Vec<IoApic>,
    pub overrides: Vec<Override>,
    pub hpet_base: Option<u64>,
    pub local_apic_address: u64,
    /// From the SRAT: `(APIC ID, node)` of every enabled CPU it lists (empty without SRAT).
    pub numa_cpus: Vec<(u32, u32)>,
    /// From the SRAT: `(range, node)` of every enabled memory range (empty without SRAT).
    pub numa_memory: Vec<(MemRange, u32)>,
}

impl Platform {
    /// The NUMA topology the SRAT describes (a machine without SRAT is one node).
    pub fn numa(&self) -> Numa<'_> {
        Numa {
            cpus: &self.numa_cpus,
            memory: &self.numa_memory,
        }
    }

    /// CPUs that can run now.
    pub fn enabled_cpus(&self) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(|p| p.enabled)
    }

    /// The GSI an ISA IRQ arrives on, with its override flags (identity when not overridden).
    pub fn isa_irq_to_gsi(&self, irq: u8) -> (u32, u16) {
        self.overrides
            .iter()
            .find(|o| o.irq == irq)
            .map_or((u32::from(irq), 0), |o| (o.gsi, o.flags))
    }
}

/// The SRAT's topology as instance 0 read it, for the services that fill the `numa_node` of
/// CPU and memory messages (instance 0 brokers every move). Empty in other instances.
static NUMA: spin::Once<Topology> = spin::Once::new();

/// `(APIC ID, node)` of the CPUs and `(range, node)` of the memory the SRAT lists.
type Topology = (Vec<(u32, u32)>, Vec<(MemRange, u32)>);

/// The NUMA node of CPU `apic` (0 without SRAT, or in an instance that did not read it).
pub fn node_of_cpu(apic: u32) -> u32 {
    NUMA.get()
        .map_or(0, |(cpus, memory)| Numa { cpus, memory }.node_of_cpu(apic))
}

/// The NUMA node of physical address `addr` (0 where unknown).
pub fn node_of_address(addr: u64) -> u32 {
    NUMA.get()
        .and_then(|(cpus, memory)| Numa { cpus, memory }.node_of_address(addr))
        .unwrap_or(0)
}

/// Reads the tables reachable from the RSDP at physical `rsdp`.
pub fn discover(rsdp: u64) -> Result<Platform, AcpiError> {
    // SAFETY: `rsdp` is the RSDP's physical address as handed over by the bootloader.
    let tables = unsafe { AcpiTables::from_rsdp(KernelHandler, rsdp as usize) }
        .map_err(|cause| AcpiError::Tables { rsdp, cause })?;
    let madt = tables.find_table::<Madt>().ok_or(AcpiError::NoMadt)?;
    let mut platform = Platform {
        local_apic_address: u64::from(madt.get().local_apic_address),
        ..Platform::default()
    };
    const ENABLED: u32 = 1;
    const ONLINE_CAPABLE: u32 = 2;
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                let flags = e.flags;
                platform.processors.push(Processor {
                    apic_id: u32::from(e.apic_id),
                    uid: u32::from(e.processor_id),
                    enabled: flags & ENABLED != 0,
                    online_capable: flags & ONLINE_CAPABLE != 0,
                });
            }
            MadtEntry::LocalX2Apic(e) => {
                let flags = e.flags;
                platform.processors.push(Processor {
                    apic_id: e.x2apic_id,
                    uid: e.processor_uid,
                    enabled: flags & ENABLED != 0,
                    online_capable: flags & ONLINE_CAPABLE != 0,
                });
            }
            MadtEntry::IoApic(e) => platform.io_apics.push(IoApic {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            MadtEntry::InterruptSourceOverride(e) => platform.overrides.push(Override {
                irq: e.irq,
                gsi: e.global_system_interrupt,
                flags: e.flags,
            }),
            MadtEntry::LocalApicAddressOverride(e) => {
                platform.local_apic_address = e.local_apic_address;
            }
            _ => {}
        }
    }
    platform.hpet_base = HpetInfo::new(&tables).ok().map(|h| h.base_address as u64);
    // The tables the firmware gave, for reports from real boards (which have an SRAT? a DMAR?).
    let mut names = alloc::string::String::new();
    for (_, header) in tables.table_headers() {
        names.push_str(header.signature.as_str());
        names.push(' ');
    }
    crate::info!("ACPI tables: {}", names.trim_end());
    if let Some(srat) = tables.find_table::<Srat>() {
        let len = { srat.get().header.length } as usize;
        // SAFETY: the mapping covers the whole table (`find_table` maps `length` bytes from
        // its start through the physical map), which the firmware does not change; the slice
        // lives only while `srat` does.
        let bytes =
            unsafe { core::slice::from_raw_parts(srat.virtual_start.as_ptr() as *const u8, len) };
        let parsed = mk_plan::srat::parse(bytes, |a| match a {
            Affinity::Cpu { apic, node } => platform.numa_cpus.push((apic, node)),
            Affinity::Memory { range, node } => platform.numa_memory.push((range, node)),
        });
        if let Err(e) = parsed {
            crate::warn!("{e}: NUMA information ignored (one node)");
            platform.numa_cpus.clear();
            platform.numa_memory.clear();
        }
    }
    NUMA.call_once(|| (platform.numa_cpus.clone(), platform.numa_memory.clone()));
    Ok(platform)
}

/// Why [`discover`] found no usable tables. Both are the firmware's (or the bootloader's RSDP
/// address).
#[derive(Debug, Clone)]
pub enum AcpiError {
    /// The `acpi` crate refused the tables reached from the RSDP at physical `rsdp`.
    Tables { rsdp: u64, cause: acpi::AcpiError },
    /// The tables have no MADT (so no processors or IO APICs to read).
    NoMadt,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Tables { rsdp, cause } => {
                write!(f, "no valid ACPI tables at the RSDP ({rsdp:#x}): {cause:?}")
            }
            Self::NoMadt => f.write_str("no MADT"),
        }
    }
}

/// The `acpi` crate's window onto the machine. Tables are read through the bootloader's
/// physical-memory map (tables live in RAM, so its cacheable mapping is right). We run no AML,
/// so the crate never calls the port, MMIO, PCI or timing hooks for our uses; they are
/// implemented plainly anyway rather than left as traps.
#[derive(Clone, Copy)]
struct KernelHandler;

impl Handler for KernelHandler {
    /// # Safety
    /// As the trait requires: `phys` is a table the firmware described. SAFETY of the result:
    /// the physical map covers all RAM and the first 4 GiB, so `phys_offset + phys` is mapped.
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let virt = phys_to_virt(phys as u64) as *mut T;
        PhysicalMapping {
            physical_start: phys,
            virtual_start: NonNull::new(virt).expect("the physical map is never at 0"),
            region_length: size,
            mapped_length: size,
            handler: *self,
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // The physical map is permanent: nothing to undo.
    }

    fn read_u8(&self, a: usize) -> u8 {
        // SAFETY: the crate passes a physical address of a register or table byte; the
        // physical map covers it. Volatile: it may be a register.
        unsafe { core::ptr::read_volatile(phys_to_virt(a as u64) as *const u8) }
    }
    fn read_u16(&self, a: usize) -> u16 {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::read_volatile(phys_to_virt(a as u64) as *const u16) }
    }
    fn read_u32(&self, a: usize) -> u32 {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::read_volatile(phys_to_virt(a as u64) as *const u32) }
    }
    fn read_u64(&self, a: usize) -> u64 {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::read_volatile(phys_to_virt(a as u64) as *const u64) }
    }
    fn write_u8(&self, a: usize, v: u8) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(phys_to_virt(a as u64) as *mut u8, v) }
    }
    fn write_u16(&self, a: usize, v: u16) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(phys_to_virt(a as u64) as *mut u16, v) }
    }
    fn write_u32(&self, a: usize, v: u32) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(phys_to_virt(a as u64) as *mut u32, v) }
    }
    fn write_u64(&self, a: usize, v: u64) {
        // SAFETY: as in `read_u8`.
        unsafe { core::ptr::write_volatile(phys_to_virt(a as u64) as *mut u64, v) }
    }
    fn read_io_u8(&self, port: u16) -> u8 {
        // SAFETY: the crate names a port from the firmware's tables.
        unsafe { Port::new(port).read() }
    }
    fn read_io_u16(&self, port: u16) -> u16 {
        // SAFETY: as in `read_io_u8`.
        unsafe { Port::new(port).read() }
    }
    fn read_io_u32(&self, port: u16) -> u32 {
        // SAFETY: as in `read_io_u8`.
        unsafe { Port::new(port).read() }
    }
    fn write_io_u8(&self, port: u16, v: u8) {
        // SAFETY: as in `read_io_u8`.
        unsafe { Port::new(port).write(v) }
    }
    fn write_io_u16(&self, port: u16, v: u16) {
        // SAFETY: as in `read_io_u8`.
        unsafe { Port::new(port).write(v) }
    }
    fn write_io_u32(&self, port: u16, v: u32) {
        // SAFETY: as in `read_io_u8`.
        unsafe { Port::new(port).write(v) }
    }
    // No PCI configuration access in this kernel: reads see "no device", writes are dropped.
    fn read_pci_u8(&self, _: PciAddress, _: u16) -> u8 {
        0xFF
    }
    fn read_pci_u16(&self, _: PciAddress, _: u16) -> u16 {
        0xFFFF
    }
    fn read_pci_u32(&self, _: PciAddress, _: u16) -> u32 {
        0xFFFF_FFFF
    }
    fn write_pci_u8(&self, _: PciAddress, _: u16, _: u8) {}
    fn write_pci_u16(&self, _: PciAddress, _: u16, _: u16) {}
    fn write_pci_u32(&self, _: PciAddress, _: u16, _: u32) {}
    fn nanos_since_boot(&self) -> u64 {
        crate::arch::tsc::nanos()
    }
    fn stall(&self, micros: u64) {
        crate::arch::tsc::spin_micros(micros);
    }
    fn sleep(&self, millis: u64) {
        crate::arch::tsc::spin_micros(millis * 1000);
    }
}
