//! The boot descriptor: what instance 0 tells a new instance about itself. It travels in the
//! `BootInfo` that instance 0 builds for the new instance, as that `BootInfo`'s "ramdisk" (the
//! bootloader never gives instance 0 a ramdisk that starts with this magic).

/// "MKBOOTD1", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MKBOOTD1");
pub const MAX_CPUS: usize = 64;
pub const MAX_TESTS: usize = 256;
pub const MAX_IOAPICS: usize = 4;
/// Instances whose plan CPUs a descriptor lists (`mk_plan::MAX_INSTANCES`).
pub const PLAN_INSTANCES: usize = 16;
/// CPUs per instance a descriptor lists: the first ones of its partition, where its
/// mailboxes are served (a first CPU never moves; a respawn starts on the first of them
/// instance 0 holds).
pub const PLAN_CPUS_EACH: usize = 8;

/// A linear framebuffer, as instance 0 got it from the bootloader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FramebufferDesc {
    pub phys: u64,
    pub len: u64,
    pub width: u32,
    pub height: u32,
    /// Pixels per row in memory.
    pub stride: u32,
    pub bytes_per_pixel: u32,
    /// 0 RGB, 1 BGR, 2 one byte grey, 3 unknown (drawn as RGB).
    pub format: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BootDescriptor {
    pub magic: u64,
    pub instance_id: u32,
    pub instance_count: u32,
    pub cpu_count: u32,
    pub x2apic: u32,
    /// This instance's own page below 1 MiB for starting its further CPUs.
    pub trampoline_page: u64,
    pub apic_ids: [u32; MAX_CPUS],
    /// Physical address and length of the shared region.
    pub shared_phys: u64,
    pub shared_len: u64,
    /// Clocks measured by instance 0 (the PIT is not shared: nobody else calibrates).
    pub tsc_per_ms: u64,
    pub lapic_hz_div16: u64,
    /// Instance 0's TSC when it started this instance.
    pub start_tsc: u64,
    /// The IO APICs (register window, first GSI), which every instance programs for the lines
    /// it owns; and the GSI of the RTC (ISA IRQ 8), whose interrupts need acknowledging.
    pub ioapic_count: u32,
    pub rtc_gsi: u32,
    /// The GSI of COM2 (ISA IRQ 3), whose receive interrupts need the bytes taken.
    pub com2_gsi: u32,
    pub ioapic_phys: [u64; MAX_IOAPICS],
    pub ioapic_gsi_base: [u32; MAX_IOAPICS],
    /// The framebuffer every instance draws its pane on (`phys == 0`: none).
    pub framebuffer: FramebufferDesc,
    /// Test cases for this instance (qemu-tests builds), space-separated.
    pub tests_len: u32,
    pub tests: [u8; MAX_TESTS],
    /// This instance's own copy of the boot ramdisk (the tar archive of the programs): its
    /// virtual address in the instance's physical map, and length (`len == 0`: none). Set by
    /// `memory::launch::prepare`, which copies it into the instance's memory.
    pub archive_virt: u64,
    pub archive_len: u64,
    /// The boot plan's first CPUs of every instance (`plan_cpus[k][..plan_cpu_counts[k]]`):
    /// this instance's private copy, from which it decides where a doorbell may go (never
    /// from the shared table another instance can write).
    pub plan_cpu_counts: [u8; PLAN_INSTANCES],
    pub plan_cpus: [[u32; PLAN_CPUS_EACH]; PLAN_INSTANCES],
}

impl BootDescriptor {
    pub const fn empty() -> Self {
        BootDescriptor {
            magic: MAGIC,
            instance_id: 0,
            instance_count: 0,
            cpu_count: 0,
            x2apic: 0,
            trampoline_page: 0,
            apic_ids: [0; MAX_CPUS],
            shared_phys: 0,
            shared_len: 0,
            tsc_per_ms: 0,
            lapic_hz_div16: 0,
            start_tsc: 0,
            ioapic_count: 0,
            rtc_gsi: u32::MAX,
            com2_gsi: u32::MAX,
            ioapic_phys: [0; MAX_IOAPICS],
            ioapic_gsi_base: [0; MAX_IOAPICS],
            framebuffer: FramebufferDesc {
                phys: 0,
                len: 0,
                width: 0,
                height: 0,
                stride: 0,
                bytes_per_pixel: 0,
                format: 0,
            },
            tests_len: 0,
            tests: [0; MAX_TESTS],
            archive_virt: 0,
            archive_len: 0,
            plan_cpu_counts: [0; PLAN_INSTANCES],
            plan_cpus: [[0; PLAN_CPUS_EACH]; PLAN_INSTANCES],
        }
    }

    /// This instance's copy of the boot ramdisk, if instance 0 gave it one.
    pub fn archive(&self) -> Option<&'static [u8]> {
        if self.archive_virt == 0 || self.archive_len == 0 {
            return None;
        }
        let len = usize::try_from(self.archive_len).ok()?;
        // SAFETY: instance 0 copied the archive into this instance's own memory at
        // `archive_virt` (in its physical map) for `archive_len` bytes, in frames it reported
        // as not usable, so this instance's allocator never hands them out and nothing writes
        // them: they stay valid and unchanged for the instance's life.
        Some(unsafe { core::slice::from_raw_parts(self.archive_virt as *const u8, len) })
    }

    pub fn cpus(&self) -> &[u32] {
        &self.apic_ids[..(self.cpu_count as usize).min(MAX_CPUS)]
    }

    /// The plan's CPUs the descriptor lists, as `(instance, APIC ID)`.
    pub fn plan_cpus(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.plan_cpus
            .iter()
            .zip(self.plan_cpu_counts)
            .enumerate()
            .flat_map(|(k, (cpus, n))| {
                cpus.iter()
                    .take(usize::from(n))
                    .map(move |&apic| (k as u16, apic))
            })
    }

    /// Lists `cpus`, the plan's CPUs of instance `k` (the first [`PLAN_CPUS_EACH`]).
    pub fn set_plan_cpus(&mut self, k: usize, cpus: &[u32]) {
        if let (Some(slot), Some(count)) =
            (self.plan_cpus.get_mut(k), self.plan_cpu_counts.get_mut(k))
        {
            let n = cpus.len().min(PLAN_CPUS_EACH);
            slot[..n].copy_from_slice(&cpus[..n]);
            *count = n as u8;
        }
    }

    pub fn tests(&self) -> &str {
        let len = (self.tests_len as usize).min(MAX_TESTS);
        core::str::from_utf8(&self.tests[..len]).unwrap_or("")
    }
}

/// The boot descriptor, if this kernel was started by instance 0 (not by the bootloader).
pub fn find(boot_info: &bootloader_api::BootInfo) -> Option<&'static BootDescriptor> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    if boot_info.ramdisk_len != core::mem::size_of::<BootDescriptor>() as u64
        || !addr.is_multiple_of(core::mem::align_of::<BootDescriptor>() as u64)
    {
        return None;
    }
    // SAFETY: the ramdisk is mapped for `ramdisk_len` bytes (by the bootloader, or by instance
    // 0 for an instance it built), which is the size of a descriptor, and aligned for it; every
    // field of a descriptor is an integer, valid for any bit pattern.
    let desc = unsafe { &*(addr as *const BootDescriptor) };
    (desc.magic == MAGIC).then_some(desc)
}
