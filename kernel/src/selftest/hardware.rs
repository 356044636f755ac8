//! Test cases of the hardware layer on instance 0: the MADT, the local APIC's mode, its timer
//! and self-IPIs, the IO APIC, exceptions (`int3`, the expected page fault), the heap and the
//! frame allocator.

use alloc::collections::BTreeSet;
use alloc::string::ToString;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::sync::atomic::Ordering;

use super::harness::{Outcome, ensure, finish, number, report};
use crate::arch::{apic, interrupts, pit};
use crate::memory::{self, frames};
use crate::platform::acpi::Platform;
use crate::println;

/// The MADT lists exactly as many enabled CPUs as QEMU's `-smp`.
pub(super) fn madt_cpus(platform: &Platform, expected: &str) -> Outcome {
    let expected: usize = number(expected)?;
    let found = platform.enabled_cpus().count();
    let ids: Vec<u32> = platform.enabled_cpus().map(|p| p.apic_id).collect();
    println!("madt_cpus: {found} enabled CPUs, APIC IDs {ids:?}");
    ensure(found == expected, || {
        format!("MADT lists {found} CPUs, expected {expected}")
    })?;
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    ensure(unique.len() == ids.len(), || {
        format!("duplicate APIC IDs {ids:?}")
    })
}

/// The local APIC runs in the mode the CPU supports: x2APIC under KVM, xAPIC under TCG.
pub(super) fn apic_mode(expected: &str) -> Outcome {
    let mode = apic::mode().ok_or("local APIC not initialised")?;
    let want = match expected {
        "x2apic" => apic::Mode::X2Apic,
        "xapic" => apic::Mode::XApic,
        other => return Err(format!("bad argument '{other}'")),
    };
    ensure(mode == want, || {
        format!(
            "local APIC in {} mode, expected {}",
            mode.name(),
            want.name()
        )
    })
}

/// `int3` is reported and execution continues after it.
pub(super) fn breakpoint() -> Outcome {
    let before = interrupts::BREAKPOINTS.load(Ordering::SeqCst);
    x86_64::instructions::interrupts::int3();
    let after = interrupts::BREAKPOINTS.load(Ordering::SeqCst);
    ensure(after == before + 1, || {
        format!("breakpoint count went from {before} to {after}")
    })
}

/// Many allocations of many sizes, each filled with its own pattern, freed in a scrambled order
/// and reused; every byte is checked before it is freed.
pub(super) fn heap_stress() -> Outcome {
    let (used_before, _) = memory::heap::usage();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..4u64 {
        let mut blocks: Vec<(u8, Vec<u8>)> = Vec::new();
        for i in 0..2000u64 {
            let size = match next() % 10 {
                0 => (next() % 65536) as usize + 1,
                1..=3 => (next() % 4096) as usize + 1,
                _ => (next() % 256) as usize + 1,
            };
            let tag = (i ^ round) as u8;
            blocks.push((tag, vec![tag; size]));
            if next() % 3 == 0 && !blocks.is_empty() {
                let victim = (next() as usize) % blocks.len();
                let (tag, block) = blocks.swap_remove(victim);
                check_block(tag, &block)?;
            }
        }
        while !blocks.is_empty() {
            let victim = (next() as usize) % blocks.len();
            let (tag, block) = blocks.swap_remove(victim);
            check_block(tag, &block)?;
        }
    }
    let big = vec![0xA5u8; 2 * 1024 * 1024];
    check_block(0xA5, &big)?;
    drop(big);
    let (used_after, _) = memory::heap::usage();
    ensure(used_after == used_before, || {
        format!("heap use went from {used_before} to {used_after} bytes: a leak")
    })
}

fn check_block(tag: u8, block: &[u8]) -> Outcome {
    match block.iter().position(|&b| b != tag) {
        None => Ok(()),
        Some(at) => Err(format!(
            "heap block of {} bytes corrupted at offset {at}: {:#x} instead of {tag:#x}",
            block.len(),
            block[at]
        )),
    }
}

/// The frame allocator never hands out one frame twice: allocate many frames, stamp each with
/// its own address through the physical map, check every stamp, then free them all.
pub(super) fn frames_unique() -> Outcome {
    let (free_before, _) = frames::counts();
    let want = free_before.min(16_384) as usize;
    let mut held = Vec::with_capacity(want);
    for _ in 0..want {
        held.push(frames::OwnedFrames::take_one().ok_or("allocator ran dry early")?);
    }
    let got: Vec<u64> = held.iter().map(frames::OwnedFrames::phys).collect();
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    ensure(unique.len() == got.len(), || {
        format!(
            "{} duplicate frames among {}",
            got.len() - unique.len(),
            got.len()
        )
    })?;
    ensure(got.iter().all(|&a| a >= frames::LOW_MEMORY_END), || {
        "a frame below 1 MiB was handed out".into()
    })?;
    for f in &mut held {
        let addr = f.phys();
        f.words_mut()[0] = addr;
    }
    for f in &held {
        let (addr, stamp) = (f.phys(), f.words()[0]);
        ensure(stamp == addr, || {
            format!("frame {addr:#x} holds stamp {stamp:#x}: shared with another frame")
        })?;
    }
    for f in held {
        let addr = f.phys();
        f.release().map_err(|e| format!("freeing {addr:#x}: {e}"))?;
    }
    let double = frames::free(x86_64::structures::paging::PhysFrame::containing_address(
        x86_64::PhysAddr::new(got[0]),
    ));
    ensure(double.is_err(), || "a double free was accepted".into())?;
    let (free_after, _) = frames::counts();
    println!("frames_unique: {want} frames allocated, all distinct, all returned");
    ensure(free_after == free_before, || {
        format!("free frames {free_before} before, {free_after} after")
    })
}

/// The LAPIC timer ticks at its calibrated rate within 10 %, measured against the PIT.
pub(super) fn timer_rate() -> Outcome {
    let rate = apic::tick_rate();
    ensure(rate > 0, || "the timer is not running".into())?;
    let this = crate::arch::cpu::current();
    const WINDOW_MS: u64 = 1000;
    let start = this.ticks.load(Ordering::SeqCst);
    for _ in 0..WINDOW_MS / 50 {
        pit::wait_micros(50_000);
    }
    let ticks = this.ticks.load(Ordering::SeqCst) - start;
    let expected = u64::from(rate) * WINDOW_MS / 1000;
    println!("timer_rate: {ticks} ticks in {WINDOW_MS} ms of PIT time, expected {expected}");
    ensure(
        ticks * 10 >= expected * 9 && ticks * 10 <= expected * 11,
        || format!("{ticks} ticks in {WINDOW_MS} ms, expected {expected} +/- 10 %"),
    )
}

/// A fixed IPI to our own APIC ID through the ICR arrives on the message vector: exercises the
/// x2APIC MSR path under KVM and the xAPIC MMIO path (with its destination-field fix) under TCG.
pub(super) fn ipi_self() -> Outcome {
    let this = crate::arch::cpu::current();
    let count = || interrupts::MESSAGE_IPIS.load(Ordering::SeqCst);
    let before = count();
    const SENT: u64 = 10;
    // One at a time: IPIs of one vector that are pending together coalesce into one (the IRR
    // has one bit per vector), so each must land before the next is sent.
    for i in 1..=SENT {
        this.with_lapic(|l| l.send_ipi(crate::arch::vectors::MESSAGE_IPI, this.apic_id))
            .ok_or("no local APIC")?;
        let deadline = crate::arch::tsc::read() + 100 * crate::arch::tsc::ticks_per_ms();
        while count() < before + i && crate::arch::tsc::read() < deadline {
            core::hint::spin_loop();
        }
    }
    let got = count() - before;
    ensure(got == SENT, || format!("{got} of {SENT} self-IPIs arrived"))
}

/// A device interrupt over its line's rate is held back, not lost: self-IPIs on the vector of
/// a line no device uses, each awaited, until the line's gate holds one back (past its burst
/// of 256, at more than one per 50 µs); then, with nothing more sent, the next timer ticks
/// run the line's handler once for what was held back, and nothing stays held back. Counted:
/// each interrupt sent is either taken (its handler runs at once) or held back, so the
/// handler's runs past the ones taken are the ticks' (at least one, at most one per held-back
/// interrupt). Under TCG: under this machine's nested KVM each interrupt takes longer than the
/// rate allows, and the gate never has to hold one back.
pub(super) fn irq_held_back() -> Outcome {
    use crate::arch::{tsc, vectors};
    let line = vectors::IRQ_COUNT - 1;
    let this = crate::arch::cpu::current();
    let runs = || interrupts::IRQ_COUNTS[line].load(Ordering::SeqCst);
    let held = || interrupts::surface().device_dropped;
    let (runs_before, held_before) = (runs(), held());
    let mut sent = 0u64;
    while held() == held_before && sent < 20_000 {
        this.with_lapic(|l| l.send_ipi(vectors::IRQ_BASE + line as u8, this.apic_id))
            .ok_or("no local APIC")?;
        sent += 1;
        // Each one lands (taken or held back) before the next is sent: pending interrupts of
        // one vector coalesce.
        let deadline = tsc::read() + 100 * tsc::ticks_per_ms();
        while (runs() - runs_before) + (held() - held_before) < sent && tsc::read() < deadline {
            core::hint::spin_loop();
        }
    }
    let held_back = held() - held_before;
    ensure(held_back > 0, || {
        format!("{sent} interrupts at full speed and the gate of line {line} held none back")
    })?;
    // Nothing more is sent: wait for three ticks to be taken.
    let ticks = interrupts::TIMER_TICKS.load(Ordering::SeqCst);
    let deadline = tsc::read() + 2000 * tsc::ticks_per_ms();
    while interrupts::TIMER_TICKS.load(Ordering::SeqCst) < ticks + 3 && tsc::read() < deadline {
        core::hint::spin_loop();
    }
    let taken = sent - held_back;
    let at_ticks = (runs() - runs_before).saturating_sub(taken);
    println!(
        "irq_held_back: {sent} interrupts sent on line {line}, {taken} taken, {held_back} held back, handled {at_ticks} time(s) at a tick"
    );
    ensure(at_ticks >= 1 && at_ticks <= held_back, || {
        format!(
            "the {held_back} interrupt(s) held back were handled {at_ticks} time(s) at the next ticks (want 1 to {held_back})"
        )
    })?;
    ensure(interrupts::held_back_lines() & (1 << line) == 0, || {
        format!("line {line} still held back after three ticks")
    })
}

/// The running CPU's I/O permission bitmap allows ring 3 exactly the ports last given to
/// `set_user_io_ports`: ranges clamped at 0xFFFF, earlier ranges denied again, more ranges
/// than the CPU remembers denied again too, and every port denied at the end (as it was).
pub(super) fn io_bitmap() -> Outcome {
    use crate::arch::cpu::{set_user_io_ports, user_io_ports_allowed as allowed};
    let denied_all = || (0..=u16::MAX).find(|&p| allowed(p));
    ensure(denied_all().is_none(), || {
        format!(
            "port {:#x} allowed before any grant",
            denied_all().unwrap_or(0)
        )
    })?;
    set_user_io_ports(&[(0x3F8, 8), (0x60, 1), (0xFFF0, 0x20)]);
    let expect = [
        (0x3F7, false),
        (0x3F8, true),
        (0x3FF, true),
        (0x400, false),
        (0x5F, false),
        (0x60, true),
        (0x61, false),
        (0xFFEF, false),
        (0xFFF0, true),
        (0xFFFF, true),
        (0, false),
    ];
    let wrong = |list: &[(u16, bool)]| list.iter().find(|&&(p, ok)| allowed(p) != ok).copied();
    if let Some((p, ok)) = wrong(&expect) {
        set_user_io_ports(&[]);
        return Err(format!(
            "three ranges: port {p:#x} allowed {}, expected {ok}",
            !ok
        ));
    }
    set_user_io_ports(&[(0x70, 2)]);
    let expect = [
        (0x3F8, false),
        (0x60, false),
        (0xFFFF, false),
        (0x70, true),
        (0x71, true),
        (0x72, false),
    ];
    if let Some((p, ok)) = wrong(&expect) {
        set_user_io_ports(&[]);
        return Err(format!(
            "after a change: port {p:#x} allowed {}, expected {ok}",
            !ok
        ));
    }
    // More ranges than the CPU remembers one by one: all allowed, then all denied again.
    let many: [(u16, u16); 6] = core::array::from_fn(|i| (0x1000 * (i as u16 + 1), 3));
    set_user_io_ports(&many);
    if let Some(&(p, _)) = many.iter().find(|&&(p, _)| !allowed(p + 2)) {
        set_user_io_ports(&[]);
        return Err(format!("six ranges: port {:#x} denied", p + 2));
    }
    set_user_io_ports(&[]);
    ensure(denied_all().is_none(), || {
        format!(
            "port {:#x} still allowed after the grants ended",
            denied_all().unwrap_or(0)
        )
    })
}

/// The RTC's periodic interrupt, routed through the IO APIC to this CPU, arrives; masked, it
/// stops; unmasked, it comes back.
pub(super) fn ioapic_rtc(platform: &Platform) -> Outcome {
    use crate::arch::ioapic;
    use crate::platform::rtc;
    let (gsi, _flags) = platform.isa_irq_to_gsi(rtc::ISA_IRQ);
    let line = gsi as usize;
    let count = || interrupts::IRQ_COUNTS[line].load(Ordering::SeqCst);
    interrupts::set_irq_handler(line, |_| rtc::acknowledge()).map_err(|e| e.to_string())?;
    let vector = crate::arch::vectors::IRQ_BASE + gsi as u8;
    ioapic::route(gsi, vector, crate::arch::cpu::current().apic_id, false)
        .map_err(|e| e.to_string())?;
    rtc::start_periodic(6); // 1024 Hz
    let wait = |ms: u64| {
        for _ in 0..ms / 10 {
            pit::wait_micros(10_000);
        }
    };
    let c0 = count();
    wait(200);
    let c1 = count();
    ioapic::mask(gsi).map_err(|e| e.to_string())?;
    wait(20); // let an interrupt in flight land
    let c2 = count();
    wait(200);
    let c3 = count();
    ioapic::unmask(gsi).map_err(|e| e.to_string())?;
    rtc::acknowledge(); // the RTC holds its line until register C is read
    wait(200);
    let c4 = count();
    rtc::stop_periodic();
    ioapic::mask(gsi).map_err(|e| e.to_string())?;
    println!(
        "ioapic_rtc: GSI {gsi}: {} in 200 ms routed, {} while masked, {} after unmask",
        c1 - c0,
        c3 - c2,
        c4 - c3
    );
    ensure(c1 - c0 >= 20, || {
        format!("only {} RTC interrupts in 200 ms", c1 - c0)
    })?;
    ensure(c3 == c2, || {
        format!("{} interrupts arrived while masked", c3 - c2)
    })?;
    ensure(c4 - c3 >= 20, || {
        format!("only {} interrupts after unmasking", c4 - c3)
    })
}

const FAULT_ADDR: u64 = 0x0000_5a5a_0000_1238;

/// Touching an unmapped address is reported as a page fault with CR2 = that address. Ends the
/// boot (the fault continuation reports and finishes), so it must be the last case.
pub(super) fn page_fault() -> Outcome {
    ensure(memory::paging::translate(FAULT_ADDR).is_none(), || {
        format!("{FAULT_ADDR:#x} is mapped; pick another address")
    })?;
    interrupts::expect_page_fault(FAULT_ADDR, page_fault_taken);
    // The fault handler recognises the announced address and continues in `page_fault_taken`,
    // which never returns here.
    let value = memory::read_unmapped(FAULT_ADDR).map_err(|e| e.to_string())?;
    Err(format!(
        "read {value:#x} from an unmapped address without a fault"
    ))
}

fn page_fault_taken(cr2: u64, code: u64) -> ! {
    // Not-present read fault from ring 0: error code bits P=0, W=0, U=0.
    let outcome = ensure(cr2 == FAULT_ADDR, || {
        format!("CR2 {cr2:#x}, expected {FAULT_ADDR:#x}")
    })
    .and_then(|()| {
        ensure(code & 0b111 == 0, || {
            format!("error code {code:#x}, expected a not-present kernel read")
        })
    });
    println!("page_fault: CR2 {cr2:#x}, error code {code:#x}");
    report("page_fault", outcome);
    finish()
}
