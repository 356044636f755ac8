//! GDT and TSS. Each CPU gets its own pair (a TSS cannot be shared: it holds the CPU's stacks).
//! The TSS's interrupt stack table gives the double fault, NMI and machine check their own
//! stacks, so that a kernel stack overflow still reports instead of triple-faulting.
//!
//! Every GDT has the same layout, which `SYSCALL`/`SYSRET` rely on (see `syscall.rs`):
//!
//! ```text
//!  0x00 null   0x08 kernel code   0x10 kernel data   0x18 user data (0x1b)   0x20 user code (0x23)   0x28 TSS
//! ```
//!
//! The TSS's `RSP0` is the kernel stack a CPU switches to when an interrupt or exception comes
//! from ring 3: the running task's own kernel stack, set by the scheduler on every switch
//! ([`set_kernel_stack`]).
//!
//! Each TSS is followed by its CPU's I/O permission bitmap (see `ioperm.rs`), which the TSS
//! descriptor's limit covers: every port denied to ring 3 unless the running task was granted
//! it.

use alloc::boxed::Box;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

use super::ioperm::{self, TssBlock};

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
pub const MACHINE_CHECK_IST: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// Stacks for the bootstrap CPU, which loads its GDT before the heap exists.
#[repr(align(16))]
struct Stack([u8; IST_STACK_SIZE]);
struct BspTables {
    stacks: [Stack; 3],
    tss: TssBlock,
    gdt: GlobalDescriptorTable,
}
static mut BSP_TABLES: BspTables = BspTables {
    stacks: [const { Stack([0; IST_STACK_SIZE]) }; 3],
    tss: TssBlock::new(),
    gdt: GlobalDescriptorTable::new(),
};

fn fill_tss(tss: &mut TaskStateSegment, stacks: [VirtAddr; 3]) {
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = stacks[0];
    tss.interrupt_stack_table[NMI_IST as usize] = stacks[1];
    tss.interrupt_stack_table[MACHINE_CHECK_IST as usize] = stacks[2];
}

/// Kernel code and data selectors.
pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;
/// User data and code selectors, with RPL 3.
pub const USER_DATA: u16 = 0x18 | 3;
pub const USER_CODE: u16 = 0x20 | 3;

fn load(gdt: &'static mut GlobalDescriptorTable, block: &'static mut TssBlock, slot: usize) {
    let block_ptr: *mut TssBlock = block;
    // SAFETY: `block` is a leaked or static TSS block owned by this CPU; the shared references
    // are used only to build the descriptor (which keeps the addresses, for the CPU), and
    // later writes (RSP0 by `set_kernel_stack`, the bitmap by `ioperm`, both on this CPU) go
    // through the pointer published here, never through these references.
    let (tss_ref, iomap_ref): (&'static TaskStateSegment, &'static [u8]) =
        unsafe { (&(*block_ptr).tss, (*block_ptr).iomap()) };
    let tss_desc = Descriptor::tss_segment_with_iomap(tss_ref, iomap_ref).unwrap_or_else(|e| {
        // The block's layout is fixed (and asserted at compile time in `ioperm`): a bug.
        crate::platform::failure::fatal(format_args!("TSS I/O bitmap: {e}"))
    });
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    let tss_sel = gdt.append(tss_desc);
    debug_assert_eq!(
        (code.0, data.0, user_data.0, user_code.0),
        (KERNEL_CODE, KERNEL_DATA, USER_DATA, USER_CODE)
    );
    ioperm::publish(slot, block_ptr);
    gdt.load();
    // SAFETY: the selectors were just appended to the GDT that is now loaded, and they describe
    // flat 64-bit kernel code/data segments and this CPU's own TSS.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        load_tss(tss_sel);
    }
}

/// Loads the bootstrap CPU's GDT and TSS. Called once, before anything else uses the IST.
pub fn init_bsp() {
    // SAFETY: called exactly once, on the bootstrap CPU, before interrupts are enabled and before
    // any other CPU runs: nothing else can alias these statics.
    let tables = unsafe { (&raw mut BSP_TABLES).as_mut() }.expect("a static is never null");
    let BspTables { stacks, tss, gdt } = tables;
    let tops = stacks.each_mut().map(|s| {
        let start = VirtAddr::from_ptr(s.0.as_ptr());
        start + IST_STACK_SIZE as u64
    });
    fill_tss(&mut tss.tss, tops);
    load(gdt, tss, 0);
}

/// IST stacks of the CPU slots of this instance, allocated the first time a slot is used and
/// kept: a CPU that leaves (parks) and a CPU that joins later in the same slot reuse them, so
/// moving CPUs around does not leak memory. (A parked CPU never runs again on its old stacks.)
static IST_STACKS: spin::Mutex<[Option<[VirtAddr; 3]>; 64]> = spin::Mutex::new([None; 64]);

/// Builds and loads a GDT/TSS for the application processor in slot `index` of this instance,
/// with that slot's IST stacks. The GDT (a few dozen bytes) is leaked on purpose: a CPU's
/// descriptor tables live as long as the CPU runs this kernel. The TSS with its I/O bitmap
/// (8 KiB) is leaked once per slot and reused, reset, by a later CPU in the same slot, as the
/// IST stacks are (the CPU that had the slot parked and never runs on it again).
pub fn init_ap(index: usize) {
    let fresh = || -> [VirtAddr; 3] {
        core::array::from_fn(|_| {
            let stack = Box::leak(Box::new(Stack([0; IST_STACK_SIZE])));
            VirtAddr::from_ptr(stack.0.as_ptr()) + IST_STACK_SIZE as u64
        })
    };
    let stacks = match IST_STACKS.lock().get_mut(index) {
        Some(slot) => *slot.get_or_insert_with(fresh),
        None => fresh(),
    };
    let tss: &'static mut TssBlock = match ioperm::block_of(index) {
        // SAFETY: the slot's previous CPU parked (a slot is taken again only once its CPU
        // left, `cpus::smp`), so nothing else uses its block: this CPU owns it from now on.
        Some(old) if index != 0 => unsafe { &mut *old },
        _ => Box::leak(Box::new(TssBlock::new())),
    };
    tss.reset();
    fill_tss(&mut tss.tss, stacks);
    let gdt = Box::leak(Box::new(GlobalDescriptorTable::new()));
    load(gdt, tss, index);
}

/// Sets the kernel stack (`RSP0`) that the CPU in `slot` switches to on an interrupt or
/// exception from ring 3. Called by that CPU only (the scheduler, before it enters a task).
pub fn set_kernel_stack(slot: usize, top: u64) {
    let Some(block) = ioperm::block_of(slot) else {
        return;
    };
    // SAFETY: the pointer is this CPU's own TSS block (published by `load` on this CPU), alive
    // for the CPU's lifetime; the CPU reads RSP0 only on a ring change, which cannot happen
    // while this CPU is here in ring 0 writing it.
    unsafe { (*block).tss.privilege_stack_table[0] = VirtAddr::new_truncate(top) };
}
