//! Single-threaded tests: layout, init / attach, instance entries, ownership (the locks: lock.rs).

use super::{Region, id};
use crate::{
    Error, INSTANCE_ENTRY_SIZE, InstanceState, MAGIC, MAX_INSTANCES, MEM_CHUNK_SIZE, Owner,
    Resource, SharedRegion, VERSION, layout, memory_chunks, region_size,
};

#[test]
fn layout_numbers() {
    let l = layout(16);
    assert_eq!(INSTANCE_ENTRY_SIZE, 768);
    assert_eq!((l.header.offset, l.header.size), (0, 128));
    assert_eq!((l.console.offset, l.console.size), (0x80, 128));
    assert_eq!(
        (l.instance_table.offset, l.instance_table.size),
        (0x100, 12_288)
    );
    assert_eq!((l.cpus.offset, l.cpus.size), (0x3100, 2048));
    assert_eq!((l.irqs.offset, l.irqs.size), (0x3900, 512));
    assert_eq!((l.memory.offset, l.memory.size), (0x3b00, 262_144));
    assert_eq!(l.mailbox.offset, 0x44000);
    assert_eq!(l.mailbox.size, mk_mailbox::region_size(16));
    assert_eq!(l.total, 0x144000);
    assert_eq!(region_size(2), 0x47000);
    assert_eq!(region_size(4), 0x51000);
    assert_eq!(layout(1).mailbox.size, 0);
    for n in 1..=MAX_INSTANCES {
        let l = layout(n);
        assert_eq!(l.total % 4096, 0);
        assert!(l.mailbox.end() <= l.total);
        assert_eq!(l.mailbox.offset % 4096, 0);
    }
}

#[test]
fn report_words() {
    let mut a = Region::with_len(region_size(2), 0x5a);
    let r = a.init(2, 1).unwrap();
    let i1 = r.instance(id(1)).unwrap();
    assert_eq!(i1.report(0), None);
    i1.set_report(0, 42).unwrap();
    i1.set_report(crate::REPORT_WORDS - 1, 7).unwrap();
    assert_eq!(i1.report(0), Some(42));
    assert_eq!(i1.report(1), None);
    assert_eq!(i1.report(crate::REPORT_WORDS - 1), Some(7));
    assert!(i1.set_report(crate::REPORT_WORDS, 1).is_err());
    assert_eq!(i1.report(crate::REPORT_WORDS), None);
    assert_eq!(r.instance(id(0)).unwrap().report(0), None);
}

#[test]
fn init_attach_round_trip_at_another_address() {
    let mut a = Region::with_len(region_size(4), 0xa5); // garbage: init must clear it all
    {
        let r = a.init(4, 1234).unwrap();
        assert_eq!(r.instance_count(), 4);
        assert_eq!(r.created_tsc(), 1234);
        let i1 = r.instance(id(1)).unwrap();
        assert_eq!(i1.state(), Ok(InstanceState::Empty));
        i1.start_boot(100).unwrap();
        i1.publish_resources(
            &[2, 3],
            &[(0x4000_0000, 0x20_0000), (0x8000_0000, 0x40_0000)],
        )
        .unwrap();
        i1.mark_running(200).unwrap();
        i1.beat();
        i1.beat();
        i1.set_last_error(7);
        r.claim(Resource::Cpu(2), id(1), None).unwrap();
        r.claim(Resource::Irq(9), id(2), None).unwrap();
        r.claim_memory(0x4000_0000, 0x20_0000, id(1), None).unwrap();
        let g = r.begin_transfer(Resource::Cpu(2), id(1), id(3)).unwrap();
        assert_eq!(g, 1);
        // The mailbox was formatted too: send one message.
        let m = r.mailbox().unwrap();
        let mut tx = m.sender_end(id(1), id(2)).unwrap();
        let _ = tx.try_send(&[0x42; mk_mailbox::MSG_SIZE]).unwrap();
        // Owner words of the garbage-filled tables are all free now.
        assert_eq!(r.owner(Resource::Memory(12_345)), Ok(Owner::Free));
        assert_eq!(r.owner(Resource::Cpu(255)), Ok(Owner::Free));
    }
    let mut b = a.copy();
    let base_b = b.raw().addr();
    assert_ne!(a.raw().addr(), base_b);
    let r = b.attach().unwrap();
    assert_eq!(r.instance_count(), 4);
    assert_eq!(r.created_tsc(), 1234);
    assert_eq!(r.layout(), layout(4));
    let i1 = r.instance(id(1)).unwrap();
    assert_eq!(i1.state(), Ok(InstanceState::Running));
    assert_eq!((i1.boot_tsc(), i1.ready_tsc()), (100, 200));
    assert_eq!(i1.heartbeat(), 2);
    assert_eq!(i1.last_error(), 7);
    let res = i1.resources().unwrap();
    assert_eq!(res.cpus(), &[2, 3]);
    assert_eq!(
        res.ranges(),
        &[(0x4000_0000, 0x20_0000), (0x8000_0000, 0x40_0000)]
    );
    assert_eq!(res.total_bytes, 0x60_0000);
    assert_eq!(
        r.owner(Resource::Cpu(2)),
        Ok(Owner::InTransit {
            from: id(1),
            to: id(3),
            generation: 1
        })
    );
    assert_eq!(r.owner(Resource::Irq(9)), Ok(Owner::Owned(id(2))));
    assert_eq!(
        r.owner(Resource::memory_at(0x4000_0000)),
        Ok(Owner::Owned(id(1)))
    );
    r.complete_transfer(Resource::Cpu(2), id(3), 1).unwrap();
    assert_eq!(r.owner(Resource::Cpu(2)), Ok(Owner::Owned(id(3))));
    let m = r.mailbox().unwrap();
    let mut rx = m.receiver_end(id(1), id(2)).unwrap();
    let mut got = 0;
    rx.drain(|msg| {
        assert!(msg[4..].iter().all(|&b| b == 0x42));
        got += 1;
    })
    .unwrap();
    assert_eq!(got, 1);
    let m = r.mailbox_region().unwrap();
    assert_eq!(m.len(), mk_mailbox::region_size(4));
    assert_eq!(m.addr() - base_b, 0x44000);
}

#[test]
fn attach_rejects_bad_regions() {
    // Never formatted.
    let mut z = Region::new(2);
    assert_eq!(z.attach().err(), Some(Error::NotInitialised));

    let mut good = Region::new(2);
    good.init(2, 0).unwrap();

    let mut r = good.copy();
    r.poke(0, b"NOTSHARD");
    assert_eq!(r.attach().err(), Some(Error::BadMagic));

    let mut r = good.copy();
    r.poke(8, &(VERSION + 1).to_le_bytes());
    assert_eq!(
        r.attach().err(),
        Some(Error::VersionMismatch {
            found: VERSION + 1,
            expected: VERSION
        })
    );

    // Too short a mapping.
    let mut r = good.copy();
    let short = region_size(2) - 4096;
    assert_eq!(
        r.attach_len(short).err(),
        Some(Error::RegionTooSmall {
            need: region_size(2),
            have: short
        })
    );
    // Shorter than the header itself.
    assert!(matches!(
        r.attach_len(64).err(),
        Some(Error::RegionTooSmall { .. })
    ));

    // Recorded total size, build parameter or table directory differ.
    let mut r = good.copy();
    r.poke(16, &1u64.to_le_bytes());
    assert_eq!(r.attach().err(), Some(Error::LayoutMismatch));
    let mut r = good.copy();
    r.poke(48, &32u32.to_le_bytes()); // mem_chunk_shift
    assert_eq!(r.attach().err(), Some(Error::LayoutMismatch));
    let mut r = good.copy();
    r.poke(64 + 8 * 2, &0x100u32.to_le_bytes()); // CPU table offset
    assert_eq!(r.attach().err(), Some(Error::LayoutMismatch));

    // Instance count out of range.
    let mut r = good.copy();
    r.poke(12, &17u32.to_le_bytes());
    assert_eq!(r.attach().err(), Some(Error::BadInstanceCount(17)));

    // A misaligned base (null ones cannot be made safely; mk-raw refuses them).
    let r = good.copy();
    let e = SharedRegion::attach(r.raw().sub(64, region_size(2) - 64).unwrap()).err();
    assert_eq!(e, Some(Error::Misaligned));

    // Init: bad counts and short memory.
    let mut r = Region::new(2);
    assert_eq!(r.init(0, 0).err(), Some(Error::BadInstanceCount(0)));
    assert_eq!(r.init(17, 0).err(), Some(Error::BadInstanceCount(17)));
    assert_eq!(
        r.init(3, 0).err(),
        Some(Error::RegionTooSmall {
            need: region_size(3),
            have: region_size(2)
        })
    );
    // The magic really is the documented one.
    let mut r = Region::new(1);
    r.init(1, 0).unwrap();
    let h = r.attach().unwrap();
    assert!(h.mailbox().is_err());
    assert_eq!(h.mailbox_region().unwrap().len(), 0);
    assert_eq!(MAGIC.to_le_bytes(), *b"MKSHARED");
}

#[test]
fn instance_state_transitions() {
    use InstanceState::*;
    let mut reg = Region::new(3);
    let r = reg.init(3, 0).unwrap();
    assert_eq!(r.instance(id(3)).err(), Some(Error::BadInstance(id(3))));
    let i = r.instance(id(2)).unwrap();
    assert_eq!(i.state(), Ok(Empty));
    assert_eq!(
        i.set_state(Running),
        Err(Error::BadTransition {
            from: Empty,
            to: Running
        })
    );
    assert_eq!(i.mark_running(5), Err(Error::StateChanged { found: Empty }));
    i.start_boot(10).unwrap();
    assert_eq!(i.state(), Ok(Booting));
    assert_eq!(
        i.start_boot(11),
        Err(Error::BadTransition {
            from: Booting,
            to: Booting
        })
    );
    assert_eq!(i.boot_tsc(), 10);
    i.mark_running(20).unwrap();
    assert_eq!(i.ready_tsc(), 20);
    assert_eq!(i.beat(), 1);
    assert_eq!(i.set_state(Stopped), Ok(Running));
    assert_eq!(i.set_state(Dead), Ok(Stopped));
    assert_eq!(
        i.set_state(Running),
        Err(Error::BadTransition {
            from: Dead,
            to: Running
        })
    );
    assert_eq!(i.set_state(Empty), Ok(Dead));
    // Reboot clears the per-boot fields.
    i.set_last_error(3);
    i.start_boot(30).unwrap();
    assert_eq!(
        (i.boot_tsc(), i.ready_tsc(), i.heartbeat(), i.last_error()),
        (30, 0, 0, 0)
    );
    // Running -> Dead directly (instance 0 declares it dead).
    i.mark_running(31).unwrap();
    assert_eq!(i.transition(Running, Dead), Ok(()));
    assert_eq!(
        i.transition(Running, Dead),
        Err(Error::StateChanged { found: Dead })
    );
    // A garbage state word is reported, not trusted (`r` is no longer used here).
    let off = layout(3).instance_table.offset + 2 * INSTANCE_ENTRY_SIZE;
    reg.poke(off, &99u32.to_le_bytes());
    let r = reg.attach().unwrap();
    let i = r.instance(id(2)).unwrap();
    assert_eq!(i.state(), Err(Error::Corrupt(99)));
    assert_eq!(i.set_state(Booting), Err(Error::Corrupt(99)));
}

#[test]
fn resources_limits() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let i = r.instance(id(1)).unwrap();
    assert_eq!(i.resources().unwrap().cpus(), &[] as &[u32]);
    let cpus: Vec<u32> = (0..65).collect();
    assert_eq!(
        i.publish_resources(&cpus, &[]),
        Err(Error::TooMany { given: 65, max: 64 })
    );
    let ranges = [(0u64, 1u64); 17];
    assert_eq!(
        i.publish_resources(&[], &ranges),
        Err(Error::TooMany { given: 17, max: 16 })
    );
    i.publish_resources(&cpus[..64], &ranges[..16]).unwrap();
    assert_eq!(i.resources().unwrap().cpus().len(), 64);
    // Republish a shorter list: the snapshot shows only the new one.
    i.publish_resources(&[7], &[(0x1000, 0x2000)]).unwrap();
    let s = i.resources().unwrap();
    assert_eq!(
        (s.cpus(), s.ranges(), s.total_bytes),
        (&[7u32][..], &[(0x1000u64, 0x2000u64)][..], 0x2000)
    );
}

#[test]
fn ownership_rules() {
    let mut reg = Region::new(3);
    let r = reg.init(3, 0).unwrap();
    let cpu = Resource::Cpu(5);
    assert_eq!(r.owner(cpu), Ok(Owner::Free));
    // Claim from free; wrong expectations fail.
    assert_eq!(
        r.claim(cpu, id(1), Some(id(0))),
        Err(Error::WrongOwner { found: Owner::Free })
    );
    r.claim(cpu, id(1), None).unwrap();
    assert_eq!(
        r.claim(cpu, id(2), None),
        Err(Error::WrongOwner {
            found: Owner::Owned(id(1))
        })
    );
    assert_eq!(r.claim(cpu, id(3), None), Err(Error::BadInstance(id(3))));
    // Transfers: only the owner, not to itself, not twice.
    assert_eq!(
        r.begin_transfer(cpu, id(2), id(0)),
        Err(Error::WrongOwner {
            found: Owner::Owned(id(1))
        })
    );
    assert_eq!(
        r.begin_transfer(cpu, id(1), id(1)),
        Err(Error::SameInstance(id(1)))
    );
    let g = r.begin_transfer(cpu, id(1), id(2)).unwrap();
    let transit = Error::InTransit {
        from: id(1),
        to: id(2),
        generation: g,
    };
    assert_eq!(r.begin_transfer(cpu, id(1), id(0)), Err(transit));
    assert_eq!(r.claim(cpu, id(0), Some(id(1))), Err(transit));
    assert_eq!(r.claim(cpu, id(0), None), Err(transit));
    assert_eq!(r.release(cpu, id(1)), Err(transit));
    // Complete: only `to`, only with the right generation.
    assert_eq!(
        r.complete_transfer(cpu, id(0), g),
        Err(Error::WrongOwner {
            found: Owner::InTransit {
                from: id(1),
                to: id(2),
                generation: g
            }
        })
    );
    assert_eq!(
        r.complete_transfer(cpu, id(2), g + 1),
        Err(Error::WrongGeneration {
            given: g + 1,
            found: g
        })
    );
    assert_eq!(
        r.abort_transfer(cpu, id(2), g),
        Err(Error::WrongOwner {
            found: Owner::InTransit {
                from: id(1),
                to: id(2),
                generation: g
            }
        })
    );
    r.complete_transfer(cpu, id(2), g).unwrap();
    assert_eq!(r.owner(cpu), Ok(Owner::Owned(id(2))));
    assert_eq!(
        r.complete_transfer(cpu, id(2), g),
        Err(Error::NotInTransit {
            found: Owner::Owned(id(2))
        })
    );
    // Next transfer gets a new generation; the old one can neither complete nor abort it.
    let g2 = r.begin_transfer(cpu, id(2), id(0)).unwrap();
    assert_eq!(g2, g + 1);
    assert_eq!(
        r.abort_transfer(cpu, id(2), g),
        Err(Error::WrongGeneration {
            given: g,
            found: g2
        })
    );
    r.abort_transfer(cpu, id(2), g2).unwrap();
    assert_eq!(r.owner(cpu), Ok(Owner::Owned(id(2))));
    assert_eq!(
        r.abort_transfer(cpu, id(2), g2),
        Err(Error::NotInTransit {
            found: Owner::Owned(id(2))
        })
    );
    // Reclaim by instance 0 (expected owner), release to free.
    r.claim(cpu, id(0), Some(id(2))).unwrap();
    assert_eq!(
        r.release(cpu, id(2)),
        Err(Error::WrongOwner {
            found: Owner::Owned(id(0))
        })
    );
    r.release(cpu, id(0)).unwrap();
    assert_eq!(r.owner(cpu), Ok(Owner::Free));
    // Generation survived release: the next transfer is g2 + 1.
    r.claim(cpu, id(1), None).unwrap();
    assert_eq!(r.begin_transfer(cpu, id(1), id(0)), Ok(g2 + 1));
    // Bounds.
    assert_eq!(
        r.owner(Resource::Cpu(256)),
        Err(Error::BadResource(Resource::Cpu(256)))
    );
    assert_eq!(
        r.claim(Resource::Irq(64), id(0), None),
        Err(Error::BadResource(Resource::Irq(64)))
    );
    assert_eq!(
        r.owner(Resource::memory_at(64 << 30)),
        Err(Error::BadResource(Resource::Memory(32_768)))
    );
    r.claim(Resource::Irq(63), id(2), None).unwrap();
}

#[test]
fn memory_ranges_all_or_nothing() {
    let mut reg = Region::new(2);
    let r = reg.init(2, 0).unwrap();
    let mb2 = MEM_CHUNK_SIZE;
    assert_eq!(memory_chunks(0x40_0000, 3 * mb2), Ok(2..5));
    assert!(matches!(
        memory_chunks(0x10_0000, mb2),
        Err(Error::Unaligned { .. })
    ));
    assert!(matches!(memory_chunks(0, 0), Err(Error::Unaligned { .. })));
    assert!(matches!(
        memory_chunks((64 << 30) - mb2, 2 * mb2),
        Err(Error::BadResource(_))
    ));
    r.claim(Resource::Memory(4), id(1), None).unwrap();
    // Chunks 2..6 overlap chunk 4, owned by 1: nothing is taken.
    assert_eq!(
        r.claim_memory(2 * mb2, 4 * mb2, id(0), None),
        Err(Error::WrongOwner {
            found: Owner::Owned(id(1))
        })
    );
    for c in [2, 3, 5] {
        assert_eq!(r.owner(Resource::Memory(c)), Ok(Owner::Free));
    }
    r.claim_memory(0, 4 * mb2, id(0), None).unwrap();
    // Reclaim-style claim that fails half-way restores the previous owner.
    assert_eq!(
        r.claim_memory(2 * mb2, 4 * mb2, id(1), Some(id(0))),
        Err(Error::WrongOwner {
            found: Owner::Owned(id(1))
        })
    );
    for c in 0..4 {
        assert_eq!(r.owner(Resource::Memory(c)), Ok(Owner::Owned(id(0))));
    }
}

#[test]
fn corrupt_owner_word_is_reported() {
    let mut reg = Region::new(2);
    reg.init(2, 0).unwrap();
    let off = layout(2).irqs.offset + 3 * 8;
    // Owned by instance 5 in a two-instance region.
    reg.poke(off, &((5u64 << 8) | 1).to_le_bytes());
    let r = reg.attach().unwrap();
    let w = (5u64 << 8) | 1;
    assert_eq!(r.owner(Resource::Irq(3)), Err(Error::Corrupt(w)));
    assert_eq!(
        r.claim(Resource::Irq(3), id(0), Some(id(1))),
        Err(Error::Corrupt(w))
    );
    assert_eq!(
        r.begin_transfer(Resource::Irq(3), id(0), id(1)),
        Err(Error::Corrupt(w))
    );
}

#[test]
fn reclaim_takes_back_owned_and_rolls_back_transfers() {
    let mut reg = Region::new(4);
    let r = reg.init(4, 0).unwrap();
    // Instance 2 owns CPU 3, IRQ 5 and memory chunk 7; gives CPU 4 to 1 (in transit) and is
    // receiving chunk 8 from 3 (in transit). Instance 1 owns CPU 6, untouched.
    r.claim(Resource::Cpu(3), id(2), None).unwrap();
    r.claim(Resource::Irq(5), id(2), None).unwrap();
    r.claim(Resource::Memory(7), id(2), None).unwrap();
    r.claim(Resource::Cpu(4), id(2), None).unwrap();
    let g_out = r.begin_transfer(Resource::Cpu(4), id(2), id(1)).unwrap();
    r.claim(Resource::Memory(8), id(3), None).unwrap();
    let g_in = r.begin_transfer(Resource::Memory(8), id(3), id(2)).unwrap();
    r.claim(Resource::Cpu(6), id(1), None).unwrap();
    // And it had started handing memory chunk 9 back to 0 (a shutdown in progress).
    r.claim(Resource::Memory(9), id(2), None).unwrap();
    let g_back = r.begin_transfer(Resource::Memory(9), id(2), id(0)).unwrap();

    let got = r.reclaim(id(2), id(0)).unwrap();
    assert_eq!(
        (got.cpus(), got.irqs(), got.memory_chunks(), got.rolled_back),
        (2, 1, 2, 2)
    );
    assert_eq!(r.owner(Resource::Memory(9)), Ok(Owner::Owned(id(0))));
    assert!(
        r.abort_transfer(Resource::Memory(9), id(2), g_back)
            .is_err()
    );
    for res in [
        Resource::Cpu(3),
        Resource::Cpu(4),
        Resource::Irq(5),
        Resource::Memory(7),
    ] {
        assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))), "{res:?}");
    }
    assert_eq!(r.owner(Resource::Memory(8)), Ok(Owner::Owned(id(3))));
    assert_eq!(r.owner(Resource::Cpu(6)), Ok(Owner::Owned(id(1))));
    // The stale transfers can no longer complete.
    assert!(r.complete_transfer(Resource::Cpu(4), id(1), g_out).is_err());
    assert!(
        r.complete_transfer(Resource::Memory(8), id(2), g_in)
            .is_err()
    );
    // Nothing names instance 2 any more; a second pass finds nothing.
    assert!(
        r.resources()
            .all(|(_, o)| !matches!(o, Ok(Owner::Owned(x)) if x == id(2)))
    );
    assert_eq!(
        r.reclaim(id(2), id(0)).unwrap(),
        crate::Reclaimed::default()
    );
    assert_eq!(r.reclaim(id(4), id(0)), Err(Error::BadInstance(id(4))));
}

/// Issue 15, item 8: one corrupt word used to abort the whole scan (`owner(w)?`) after
/// taking back only what came before it; now it is skipped and counted, and everything else
/// the dead instance held still comes back.
#[test]
fn reclaim_skips_and_counts_a_corrupt_word() {
    let mut reg = Region::new(3);
    {
        let r = reg.init(3, 0).unwrap();
        for res in [Resource::Cpu(1), Resource::Irq(9), Resource::Memory(40)] {
            r.claim(res, id(2), None).unwrap();
        }
    }
    // CPU 0's word (before everything instance 2 holds, in scan order) is garbage.
    reg.poke(
        layout(3).cpus.offset,
        &0xdead_beef_0000_00ffu64.to_le_bytes(),
    );
    let r = reg.attach().unwrap();
    let got = r.reclaim(id(2), id(0)).unwrap();
    assert_eq!(
        (got.cpus(), got.irqs(), got.memory_chunks(), got.corrupt),
        (1, 1, 1, 1)
    );
    for res in [Resource::Cpu(1), Resource::Irq(9), Resource::Memory(40)] {
        assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))), "{res:?}");
    }
    // Still corrupt: the scan does not pretend it handled it.
    assert!(matches!(r.owner(Resource::Cpu(0)), Err(Error::Corrupt(_))));
}

#[test]
fn reclaim_resource_handles_one_word_and_reports_corruption() {
    let mut reg = Region::new(4);
    {
        let r = reg.init(4, 0).unwrap();
        r.claim(Resource::Cpu(2), id(1), None).unwrap();
        r.claim(Resource::Cpu(3), id(1), None).unwrap();
        r.begin_transfer(Resource::Cpu(3), id(1), id(2)).unwrap();
        r.claim(Resource::Cpu(4), id(3), None).unwrap();
    }
    reg.poke(layout(4).cpus.offset + 5 * 8, &u64::MAX.to_le_bytes());
    let r = reg.attach().unwrap();
    let step = |res| r.reclaim_resource(res, id(1), id(0));
    assert_eq!(
        step(Resource::Cpu(2)),
        Ok(crate::ReclaimStep {
            took: true,
            rolled_back: 0,
            now: Owner::Owned(id(0))
        })
    );
    // Given away without completing: rolled back, then taken.
    assert_eq!(
        step(Resource::Cpu(3)),
        Ok(crate::ReclaimStep {
            took: true,
            rolled_back: 1,
            now: Owner::Owned(id(0))
        })
    );
    // Someone else's: untouched.
    assert_eq!(
        step(Resource::Cpu(4)),
        Ok(crate::ReclaimStep {
            took: false,
            rolled_back: 0,
            now: Owner::Owned(id(3))
        })
    );
    assert_eq!(step(Resource::Cpu(5)), Err(Error::Corrupt(u64::MAX)));
    assert_eq!(
        r.reclaim_resource(Resource::Cpu(2), id(4), id(0)),
        Err(Error::BadInstance(id(4)))
    );
}

#[test]
fn overrule_owner_replaces_any_word_but_never_makes_a_transfer() {
    let mut reg = Region::new(3);
    reg.init(3, 0).unwrap();
    reg.poke(
        layout(3).memory.offset + 7 * 8,
        &0x0000_0005_ffff_ff03u64.to_le_bytes(),
    );
    let r = reg.attach().unwrap();
    let res = Resource::Memory(7);
    assert!(r.owner(res).is_err());
    assert_eq!(
        r.overrule_owner(res, Owner::Owned(id(0))),
        Ok(0x0000_0005_ffff_ff03)
    );
    assert_eq!(r.owner(res), Ok(Owner::Owned(id(0))));
    // The generation is kept: the next transfer gets the one after it.
    assert_eq!(r.begin_transfer(res, id(0), id(1)), Ok(6));
    assert_eq!(
        r.overrule_owner(
            res,
            Owner::InTransit {
                from: id(0),
                to: id(2),
                generation: 9
            }
        ),
        Err(Error::WrongOwner {
            found: Owner::InTransit {
                from: id(0),
                to: id(2),
                generation: 9
            }
        })
    );
    assert_eq!(
        r.overrule_owner(res, Owner::Owned(id(3))),
        Err(Error::BadInstance(id(3)))
    );
    assert!(r.overrule_owner(res, Owner::Free).is_ok());
    assert_eq!(r.owner(res), Ok(Owner::Free));
}

#[test]
fn overrule_state_replaces_garbage_and_forged_states() {
    let mut reg = Region::new(2);
    reg.init(2, 0).unwrap();
    let off = layout(2).instance_table.offset + INSTANCE_ENTRY_SIZE;
    reg.poke(off, &77u32.to_le_bytes());
    let r = reg.attach().unwrap();
    let i = r.instance(id(1)).unwrap();
    assert_eq!(i.state(), Err(Error::Corrupt(77)));
    // A life-cycle transition cannot get past garbage...
    assert_eq!(i.set_state(InstanceState::Dead), Err(Error::Corrupt(77)));
    // ...instance 0's overrule can.
    assert_eq!(i.overrule_state(InstanceState::Dead), Err(77));
    assert_eq!(i.state(), Ok(InstanceState::Dead));
    assert_eq!(
        i.overrule_state(InstanceState::Empty),
        Ok(InstanceState::Dead)
    );
    assert_eq!(i.state_word(), 0);
}
