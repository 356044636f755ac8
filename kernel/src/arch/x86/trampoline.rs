//! The AP trampoline: the real-mode code a CPU runs after INIT-SIPI-SIPI, which takes it through
//! 32-bit protected mode into long mode on the page tables we choose, and jumps to a 64-bit entry
//! point with a stack and one argument.
//!
//! ```text
//!  SIPI vector V ──► CS:IP = (V << 8):0, real mode, at physical V * 4096
//!     │  lgdt (our GDT inside the page), CR0 = PE | ET (loaded whole: CD, NW clear)
//!     ▼  far jump through a patched pointer
//!  32-bit protected mode: CR4.PAE, CR3 = params.cr3 (below 4 GiB), EFER.LME|NXE, CR0.PG|WP
//!     ▼  far jump through a patched pointer
//!  64-bit mode, still at the identity-mapped trampoline page:
//!     RSP = params.stack, RDI = params.arg, jump to params.entry
//! ```
//!
//! The code is position independent: it reads its own base from CS (`CS << 4`) and reaches its
//! data and jump targets as base + offset, so the kernel (a PIE loaded anywhere) only copies the
//! bytes between `ap_trampoline_start` and `ap_trampoline_end` to a free page below 1 MiB and
//! fills the parameter block at its end. The page tables named by `cr3` must identity-map that
//! page (execution continues there right after paging is turned on).

use core::arch::global_asm;

global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .code16
    .global ap_trampoline_start
    .global ap_trampoline_params
    .global ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %ebx, %ebx
    movw %cs, %bx
    shll $4, %ebx
    # GDTR base = linear address of our GDT.
    leal (tr_gdt - ap_trampoline_start)(%ebx), %eax
    movl %eax, (tr_gdtr - ap_trampoline_start + 2)
    lgdtl (tr_gdtr - ap_trampoline_start)
    leal (tr_pm32 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (tr_far32 - ap_trampoline_start)
    # CR0 loaded outright, never OR-ed into what INIT left: INIT keeps CR0.CD and CR0.NW as
    # they were, so a CPU could otherwise run with its caches off. PE | ET.
    movl $0x00000011, %eax
    movl %eax, %cr0
    ljmpl *(tr_far32 - ap_trampoline_start)

    .code32
tr_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl (tr_cr3 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax
    wrmsr
    # PG | WP | ET | PE, again outright (CD and NW clear).
    movl $0x80010011, %eax
    movl %eax, %cr0
    leal (tr_lm64 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (tr_far64 - ap_trampoline_start)(%ebx)
    ljmpl *(tr_far64 - ap_trampoline_start)(%ebx)

    .code64
tr_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl %ebx, %ebx
    movq (tr_stack - ap_trampoline_start)(%rbx), %rsp
    movq (tr_arg - ap_trampoline_start)(%rbx), %rdi
    movq (tr_entry - ap_trampoline_start)(%rbx), %rax
    # Tell the CPU that sent the SIPI that we made it to long mode.
    lock incl (tr_started - ap_trampoline_start)(%rbx)
    xorl %ebp, %ebp
    pushq $0
    jmpq *%rax

    .balign 16
tr_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
tr_gdtr:
    .word tr_gdtr - tr_gdt - 1
    .long 0
tr_far32:
    .long 0
    .word 0x18
tr_far64:
    .long 0
    .word 0x08
    .balign 8
ap_trampoline_params:
tr_cr3:
    .quad 0
tr_stack:
    .quad 0
tr_entry:
    .quad 0
tr_arg:
    .quad 0
tr_started:
    .long 0
    .long 0
ap_trampoline_end:
    .code64
    .text
"#,
    options(att_syntax)
);

// SAFETY: these name the labels of the `global_asm!` above; they are only used for their
// addresses (see `code` and `params_offset`), never read as `u8` values.
unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_params: u8;
    static ap_trampoline_end: u8;
}

/// What the trampoline loads before jumping to `entry`; lives at the end of the copied page.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Physical address of the PML4 (must be below 4 GiB: it is loaded from 32-bit code).
    pub cr3: u64,
    /// Initial RSP (virtual, in the new page tables).
    pub stack: u64,
    /// 64-bit entry point (virtual).
    pub entry: u64,
    /// Passed in RDI.
    pub arg: u64,
    /// Incremented by the AP once it is in long mode.
    pub started: u32,
    pub _pad: u32,
}

fn code() -> &'static [u8] {
    // SAFETY: the three symbols are labels in one assembled section, in this order; the bytes
    // between start and end are the trampoline's code and data, part of the kernel image.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

fn params_offset() -> usize {
    // SAFETY: both are labels of the same section (see `code`).
    unsafe {
        (&raw const ap_trampoline_params).offset_from(&raw const ap_trampoline_start) as usize
    }
}

/// Copies the trampoline to physical page `page_phys` (below 1 MiB, 4 KiB aligned), reached at
/// `page_virt`, with `params`. Returns the SIPI vector.
///
/// # Safety
/// `page_virt` must map `page_phys` writable, and the page must be reserved for the trampoline
/// (no other use while an AP may execute it).
unsafe fn install(page_phys: u64, page_virt: u64, params: Params) -> u8 {
    assert!(
        page_phys < 0x10_0000 && page_phys % 4096 == 0,
        "trampoline page must be below 1 MiB"
    );
    let code = code();
    assert!(code.len() <= 4096, "trampoline larger than a page");
    // SAFETY: the caller guarantees the page is ours and mapped writable at `page_virt`; the
    // copy fits (checked above) and the params block lies inside the copied range.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), page_virt as *mut u8, code.len());
        core::ptr::write_volatile(
            (page_virt as usize + params_offset()) as *mut Params,
            params,
        );
    }
    (page_phys >> 12) as u8
}

/// Why the trampoline could not be put in place (the caller's page is unusable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrampolineError {
    /// Not a 4 KiB-aligned page between 4 KiB and 1 MiB.
    NotLowPage(u64),
    /// Not reachable through this instance's physical map.
    NotMapped(u64),
}

impl core::fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotLowPage(p) => write!(
                f,
                "the trampoline page must be a page between 4 KiB and 1 MiB (got {p:#x})"
            ),
            Self::NotMapped(p) => write!(
                f,
                "the trampoline page {p:#x} is not in this instance's physical map"
            ),
        }
    }
}

/// Copies the trampoline with `params` to this instance's trampoline page `page_phys` and
/// returns the SIPI vector. The page must be below 1 MiB (where the frame allocator never hands
/// out frames, so no kernel data lives there), 4 KiB aligned, and reachable through the
/// physical map (instance 0 maps each instance's page into it); all three are checked.
pub fn install_at(page_phys: u64, params: Params) -> Result<u8, TrampolineError> {
    if page_phys == 0
        || page_phys >= crate::memory::frames::LOW_MEMORY_END
        || !page_phys.is_multiple_of(4096)
    {
        return Err(TrampolineError::NotLowPage(page_phys));
    }
    let page_virt = crate::memory::frames::phys_to_virt(page_phys);
    if crate::memory::paging::translate(page_virt) != Some(page_phys) {
        return Err(TrampolineError::NotMapped(page_phys));
    }
    // SAFETY: `page_virt` maps `page_phys` (checked), which lies below 1 MiB, outside every
    // frame allocator; by the boot protocol each instance has its own trampoline page, and this
    // instance starts its CPUs one at a time, so no AP executes from it now.
    Ok(unsafe { install(page_phys, page_virt, params) })
}

/// Whether the AP that runs the trampoline at physical `page_phys` reached long mode.
pub fn started(page_phys: u64) -> bool {
    let page_virt = crate::memory::frames::phys_to_virt(page_phys);
    let offset = params_offset() + core::mem::offset_of!(Params, started);
    // SAFETY: `install` wrote a `Params` there; the AP increments `started` atomically.
    let word = unsafe { &*((page_virt as usize + offset) as *const core::sync::atomic::AtomicU32) };
    word.load(core::sync::atomic::Ordering::Acquire) != 0
}
