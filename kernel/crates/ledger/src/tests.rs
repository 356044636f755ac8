//! Host tests: each claim of the review (issue 15, items 1, 2, 8, 9) as a forged word the
//! record does not obey, and properties over random forgeries.

use proptest::prelude::*;

use super::*;

fn id(i: usize) -> InstanceId {
    InstanceId::from_index(i).expect("instance id")
}

const CHUNK: u64 = mk_shared::MEM_CHUNK_SIZE;

/// Three instances: 0 has CPUs 0 and 1, 1 has CPUs 2 and 3, 2 has CPU 4; the MADT lists 0..=4
/// (and 255, which must never count). Memory: instance 1 chunks 10..14, instance 2 14..18.
/// Instance 0 holds every IRQ line.
fn ledger() -> Ledger {
    let mut l = Ledger::new(3, &[0, 1, 2, 3, 4, XAPIC_BROADCAST]).unwrap();
    for (apic, k) in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)] {
        l.give(Resource::Cpu(apic), id(k)).unwrap();
    }
    l.give_range(10 * CHUNK, 4 * CHUNK, id(1)).unwrap();
    l.give_range(14 * CHUNK, 4 * CHUNK, id(2)).unwrap();
    for line in 0..24 {
        l.give(Resource::Irq(line), id(0)).unwrap();
    }
    for k in [1, 2] {
        l.starting(id(k));
        l.started(id(k));
    }
    l
}

#[test]
fn init_goes_only_to_the_dead_instances_cpus_in_the_madt() {
    let l = ledger();
    // Item 1: instance 2 wrote its id into CPU 0, 2 and 255's words; none of that matters.
    assert_eq!(l.cpus_to_stop(id(2), &[0, 1]), [4]);
    assert_eq!(l.cpus_to_stop(id(1), &[0, 1]), [2, 3]);
    // Instance 0's own CPUs, never; even if the record were wrong about them.
    let mut l2 = ledger();
    l2.give(Resource::Cpu(1), id(2)).unwrap();
    assert_eq!(l2.cpus_to_stop(id(2), &[0, 1]), [4]);
    // The broadcast ID, never, even given to the dead instance and listed by the MADT.
    let mut l3 = Ledger::new(3, &[4, 255]).unwrap();
    l3.give(Resource::Cpu(255), id(2)).unwrap();
    l3.give(Resource::Cpu(4), id(2)).unwrap();
    assert_eq!(l3.cpus_to_stop(id(2), &[]), [4]);
    // A CPU not in the MADT, never.
    l3.give(Resource::Cpu(7), id(2)).unwrap();
    assert_eq!(l3.cpus_to_stop(id(2), &[]), [4]);
}

#[test]
fn a_cpu_being_handed_to_the_dead_instance_is_stopped_too() {
    let mut l = ledger();
    l.give(Resource::Cpu(1), id(0)).unwrap();
    l.start_handoff(Resource::Cpu(1), id(2)).unwrap();
    assert_eq!(l.cpus_to_stop(id(2), &[0]), [1, 4]);
}

#[test]
fn forged_states_are_not_obeyed() {
    let mut l = ledger();
    // Item 2: `Stopped` written into instance 1's word while it runs: not collected; the
    // word is restored and its liveness still watched; reported once.
    let v = l.judge(id(1), Ok(InstanceState::Stopped));
    assert!(!v.collect && v.watch_liveness);
    assert_eq!(v.restore, Some(InstanceState::Running));
    assert!(matches!(v.disagreement, Some(Disagreement::State { .. })));
    assert_eq!(
        l.judge(id(1), Ok(InstanceState::Stopped)).disagreement,
        None
    );
    assert_eq!(l.disagreements(), 1);
    // Garbage in its own word does not put an instance beyond the watch.
    let v = l.judge(id(2), Err(0x1234));
    assert!(v.watch_liveness && v.disagreement.is_some());
    assert_eq!(l.declare_dead(id(2)), Ok(()));
    // Instance 0's own word: restored to Running, never watched.
    let v = l.judge(id(0), Ok(InstanceState::Dead));
    assert_eq!(v.restore, Some(InstanceState::Running));
    assert!(!v.watch_liveness && !v.collect);
    assert_eq!(l.declare_dead(id(0)), Err(Life::Running));
}

#[test]
fn a_requested_stop_is_collected_and_only_then_respawnable() {
    let mut l = ledger();
    assert_eq!(l.may_respawn(id(1)), Err(Life::Running));
    l.ask_stop(id(1)).unwrap();
    assert!(l.judge(id(1), Ok(InstanceState::Running)).watch_liveness);
    let v = l.judge(id(1), Ok(InstanceState::Stopped));
    assert!(v.collect && v.disagreement.is_none());
    assert_eq!(l.may_respawn(id(1)), Err(Life::StopAsked));
    l.collected(id(1));
    assert_eq!(l.may_respawn(id(1)), Ok(()));
    // Ended: a `Running` written later is restored, never watched or collected again.
    let v = l.judge(id(1), Ok(InstanceState::Running));
    assert_eq!(v.restore, Some(InstanceState::Stopped));
    assert!(!v.watch_liveness && !v.collect && v.disagreement.is_some());
    // A refused stop puts it back to running.
    l.ask_stop(id(2)).unwrap();
    l.stop_refused(id(2));
    assert_eq!(l.life(id(2)), Life::Running);
}

#[test]
fn garbage_in_a_dead_instances_word_does_not_block_respawn() {
    let mut l = ledger();
    l.declare_dead(id(2)).unwrap();
    assert_eq!(l.declare_dead(id(2)), Err(l.life(id(2))));
    l.collected(id(2));
    let v = l.judge(id(2), Err(99));
    assert_eq!(v.restore, Some(InstanceState::Dead));
    assert_eq!(l.may_respawn(id(2)), Ok(()));
}

#[test]
fn moves_check_the_record_and_the_word() {
    let mut l = ledger();
    let cpu = Resource::Cpu(2);
    // Item 9: the shell may name a giver the record does not give the CPU to.
    assert!(matches!(
        l.may_give(cpu, id(2), Ok(Owner::Owned(id(2)))),
        Err(Refusal::NotHolder { .. })
    ));
    // The right giver, but the word was forged by someone else.
    assert!(matches!(
        l.may_give(cpu, id(1), Ok(Owner::Owned(id(2)))),
        Err(Refusal::Word(_))
    ));
    assert_eq!(l.may_give(cpu, id(1), Ok(Owner::Owned(id(1)))), Ok(()));
    // The giver reports generation 7; the word shows another transfer: refused.
    let word = Ok(Owner::InTransit {
        from: id(2),
        to: id(0),
        generation: 7,
    });
    assert!(l.check_handed_back(cpu, id(1), 7, word).is_err());
    let good = Ok(Owner::InTransit {
        from: id(1),
        to: id(0),
        generation: 7,
    });
    assert!(l.check_handed_back(cpu, id(1), 6, good).is_err());
    assert_eq!(l.check_handed_back(cpu, id(1), 7, good), Ok(()));
    l.give(cpu, id(0)).unwrap();
    l.start_handoff(cpu, id(2)).unwrap();
    assert!(matches!(
        l.may_give(cpu, id(0), Ok(Owner::Owned(id(0)))),
        Err(Refusal::Moving { .. })
    ));
    l.end_handoff(cpu, true);
    assert_eq!(l.holder(cpu), Some(id(2)));
    // Memory: a chunk of instance 2's cannot be moved as instance 1's.
    let chunk = Resource::memory_at(15 * CHUNK);
    assert!(l.may_give(chunk, id(1), Ok(Owner::Owned(id(1)))).is_err());
}

#[test]
fn reclaim_follows_the_record_not_the_words() {
    let mut l = ledger();
    l.declare_dead(id(2)).unwrap();
    let held = l.held_by(id(2));
    assert_eq!(held.len(), 1 + 4);
    assert!(held.contains(&Resource::Cpu(4)));
    // A word agreeing with the record: the usual compare-exchange.
    assert_eq!(
        l.reclaim_action(Resource::Cpu(4), id(2), Ok(Owner::Owned(id(2)))),
        ReclaimAction::Step
    );
    // The dead instance giving its own chunk away (never brokered): taken back all the same.
    let given = Ok(Owner::InTransit {
        from: id(2),
        to: id(1),
        generation: 3,
    });
    assert_eq!(
        l.reclaim_action(Resource::memory_at(14 * CHUNK), id(2), given),
        ReclaimAction::Step
    );
    // Item 8: a corrupt word is overruled (and counted), not a reason to stop.
    assert!(matches!(
        l.reclaim_action(
            Resource::memory_at(15 * CHUNK),
            id(2),
            Err(Error::Corrupt(5))
        ),
        ReclaimAction::Overrule(_)
    ));
    // A word naming another live instance: overruled by the record too.
    assert!(matches!(
        l.reclaim_action(
            Resource::memory_at(16 * CHUNK),
            id(2),
            Ok(Owner::Owned(id(1)))
        ),
        ReclaimAction::Overrule(_)
    ));
    // Instance 2 forged Owned(2) into instance 1's CPU and instance 0's IRQ line: not taken,
    // written back as the record says.
    assert_eq!(
        l.restore_action(Resource::Cpu(2), id(2), Ok(Owner::Owned(id(2))))
            .map(|(o, _)| o),
        Some(Owner::Owned(id(1)))
    );
    assert_eq!(
        l.restore_action(Resource::Irq(3), id(2), Ok(Owner::Owned(id(2))))
            .map(|(o, _)| o),
        Some(Owner::Owned(id(0)))
    );
    assert_eq!(
        l.restore_action(Resource::Cpu(2), id(2), Ok(Owner::Owned(id(1)))),
        None
    );
    assert_eq!(l.disagreements(), 4);
}

#[test]
fn authority() {
    let mut l = ledger();
    let line = Resource::Irq(5);
    assert!(l.authorizes(id(0), Authority::Supervisor, line));
    assert!(!l.authorizes(id(1), Authority::Supervisor, line));
    assert!(!l.authorizes(id(1), Authority::SupervisorOrHolder, line));
    l.give(line, id(1)).unwrap();
    assert!(l.authorizes(id(1), Authority::SupervisorOrHolder, line));
    assert!(!l.authorizes(id(2), Authority::SupervisorOrHolder, line));
}

#[test]
fn bad_arguments() {
    assert!(Ledger::new(0, &[]).is_err());
    assert!(Ledger::new(MAX_INSTANCES + 1, &[]).is_err());
    let mut l = ledger();
    assert_eq!(
        l.give(Resource::Cpu(0), id(3)),
        Err(Error::BadInstance(id(3)))
    );
    assert!(l.give(Resource::Cpu(MAX_APIC_IDS as u32), id(0)).is_err());
    assert!(l.entry(Resource::Memory(MEM_CHUNKS as u32)).is_none());
}

fn any_owner() -> impl Strategy<Value = Result<Owner, Error>> {
    prop_oneof![
        Just(Ok(Owner::Free)),
        (0..4usize).prop_map(|k| Ok(Owner::Owned(id(k)))),
        (0..4usize, 0..4usize, any::<u32>()).prop_map(|(a, b, g)| Ok(Owner::InTransit {
            from: id(a),
            to: id(b),
            generation: g
        })),
        any::<u64>().prop_map(|w| Err(Error::Corrupt(w))),
    ]
}

proptest! {
    /// Whatever the shared CPU words say, the INIT list is the record's CPUs of the dead
    /// instance that the MADT lists: never the broadcast ID, never a CPU instance 0 runs on,
    /// never another instance's.
    #[test]
    fn init_list_is_record_intersect_madt(
        holders in proptest::collection::vec(0..4usize, 256),
        madt in proptest::collection::vec(0..256u32, 0..32),
        here in proptest::collection::vec(0..256u32, 0..4),
        dead in 1..4usize,
    ) {
        let mut l = Ledger::new(4, &madt).unwrap();
        for (apic, &h) in holders.iter().enumerate() {
            l.give(Resource::Cpu(apic as u32), id(h)).unwrap();
        }
        let got = l.cpus_to_stop(id(dead), &here);
        for &a in &got {
            prop_assert!(a != XAPIC_BROADCAST);
            prop_assert!(madt.contains(&a));
            prop_assert!(!here.contains(&a));
            prop_assert_eq!(holders[a as usize], dead);
        }
        for &a in &madt {
            if a != XAPIC_BROADCAST && holders[a as usize] == dead && !here.contains(&a) {
                prop_assert!(got.contains(&a));
            }
        }
    }

    /// Whatever word a forger writes, a move is allowed only for the recorded holder, and a
    /// word another instance could have forged into someone else's name never passes.
    #[test]
    fn may_give_needs_the_record(holder in 0..4usize, giver in 0..4usize, word in any_owner()) {
        let mut l = Ledger::new(4, &[]).unwrap();
        let r = Resource::Cpu(9);
        l.give(r, id(holder)).unwrap();
        let ok = l.may_give(r, id(giver), word).is_ok();
        if ok {
            prop_assert_eq!(giver, holder);
            match word {
                Ok(Owner::Owned(o)) => prop_assert_eq!(o, id(holder)),
                Ok(Owner::InTransit { from, to, .. }) => {
                    prop_assert_eq!(from, id(holder));
                    prop_assert!(to.is_supervisor());
                }
                other => prop_assert!(false, "{:?} allowed", other),
            }
        } else if giver == holder {
            prop_assert!(l.disagreements() == 1);
        }
    }

    /// A reclaim step is taken only on a word the record allows or that shows the dead
    /// instance giving away what the record gives it; everything else is overruled and
    /// counted. A restore never touches what the record gives the dead instance.
    #[test]
    fn reclaim_and_restore_decide_by_the_record(holder in 0..4usize, word in any_owner()) {
        let mut l = Ledger::new(4, &[]).unwrap();
        let r = Resource::Irq(1);
        let dead = id(2);
        l.give(r, id(holder)).unwrap();
        let before = l.disagreements();
        if holder == 2 {
            match l.reclaim_action(r, dead, word) {
                ReclaimAction::Step => {
                    let by_dead = matches!(word, Ok(Owner::Owned(o)) if o == dead)
                        || matches!(word, Ok(Owner::InTransit { from, .. }) if from == dead);
                    prop_assert!(by_dead);
                    prop_assert_eq!(l.disagreements(), before);
                }
                ReclaimAction::Overrule(_) => prop_assert_eq!(l.disagreements(), before + 1),
            }
            prop_assert!(l.restore_action(r, dead, word).is_none());
        } else if let Some((o, _)) = l.restore_action(r, dead, word) {
            prop_assert_eq!(o, Owner::Owned(id(holder)));
            prop_assert_eq!(l.disagreements(), before + 1);
        }
    }

    /// Whatever is written into an instance's state word, a running instance is never
    /// collected, and an ended one is never watched or collected again.
    #[test]
    fn states_never_steer(words in proptest::collection::vec(
        prop_oneof![(0..5u32).prop_map(|v| Ok(InstanceState::from_raw(v).unwrap())),
                    (5..u32::MAX).prop_map(Err)], 1..20)) {
        let mut l = ledger();
        l.declare_dead(id(2)).unwrap();
        for w in words {
            let v = l.judge(id(1), w);
            prop_assert!(!v.collect && v.watch_liveness);
            prop_assert_eq!(v.restore.is_some(), w != Ok(InstanceState::Running));
            let v = l.judge(id(2), w);
            prop_assert!(!v.collect && !v.watch_liveness);
            let v = l.judge(id(0), w);
            prop_assert!(!v.collect && !v.watch_liveness);
        }
        prop_assert_eq!(l.life(id(1)), Life::Running);
    }
}
