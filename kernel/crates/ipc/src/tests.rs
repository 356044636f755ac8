use super::*;
use mk_abi::ipc::NAME_SERVICE;
use proptest::prelude::*;

fn t(i: u32) -> TaskId {
    TaskId {
        index: i,
        generation: 1,
    }
}

fn p(label: u32, data: &[u8]) -> Parcel {
    Parcel::new(label, data).unwrap()
}

const NONE: [u64; 2] = [NO_CAP, NO_CAP];

fn wakes(ipc: &mut Ipc) -> Vec<TaskId> {
    ipc.take_wakes().collect()
}

/// A server task 1 with an endpoint, a client task 2 holding a SEND copy of it.
fn pair() -> (Ipc, Handle, Handle) {
    let mut ipc = Ipc::new(1);
    let ep = ipc.create_endpoint(t(1)).unwrap();
    let cap = ipc.cap(t(1), ep).unwrap();
    let client = ipc.grant(t(2), Cap::new(cap.object, Rights::SEND)).unwrap();
    (ipc, ep, client)
}

#[test]
fn a_local_call_is_received_answered_and_finished_in_order() {
    let (mut ipc, ep, client) = pair();
    assert_eq!(
        ipc.recv(t(1), ep).unwrap(),
        None,
        "nothing queued: server waits"
    );
    for i in 0..100u32 {
        let sent = ipc
            .send(t(2), client, p(i, &[i as u8; 9]), NONE, 0, Some(1000))
            .unwrap();
        let token = sent.token.unwrap();
        if i == 0 {
            assert_eq!(wakes(&mut ipc), vec![t(1)], "the waiting server is woken");
        }
        let d = ipc.recv(t(1), ep).unwrap().unwrap();
        assert_eq!(d.kind, Received::Call);
        assert_eq!((d.parcel.label, d.parcel.data()), (i, &[i as u8; 9][..]));
        assert_eq!((d.parcel.sender_instance, d.parcel.sender_task), (1, t(2)));
        assert!(ipc.finish_call(t(2), token).is_none(), "no answer yet");
        ipc.reply(t(1), p(i + 1, d.parcel.data()), NONE, 0).unwrap();
        assert_eq!(wakes(&mut ipc), vec![t(2)]);
        let r = ipc.finish_call(t(2), token).unwrap().unwrap();
        assert_eq!(r.parcel.label, i + 1);
        assert_eq!(r.parcel.sender_task, t(1));
    }
    assert_eq!(
        ipc.reply(t(1), p(0, &[]), NONE, 0),
        Err(Error::NothingToReply)
    );
}

#[test]
fn rights_are_checked() {
    let (mut ipc, ep, client) = pair();
    assert_eq!(ipc.recv(t(2), client), Err(Error::NoRight));
    let weaker = ipc.copy_cap(t(2), client, Rights::all(), 5).unwrap();
    assert_eq!(ipc.cap(t(2), weaker).unwrap().rights, Rights::SEND);
    assert_eq!(ipc.cap(t(2), weaker).unwrap().badge, 5);
    // Without GRANT a capability cannot be passed on.
    assert_eq!(
        ipc.send(t(2), client, p(0, &[]), [client.0, NO_CAP], 0, None)
            .err(),
        Some(Error::NoRight)
    );
    // The badge travels with the message.
    ipc.send(t(2), weaker, p(3, &[]), NONE, 0, None).unwrap();
    let d = ipc.recv(t(1), ep).unwrap().unwrap();
    assert_eq!((d.kind, d.parcel.badge), (Received::Message, 5));
    assert_eq!(ipc.signal(t(1), ep, 1), Err(Error::NoRight));
}

#[test]
fn capabilities_move_and_copy() {
    let (mut ipc, ep, client) = pair();
    let other = ipc.create_endpoint(t(1)).unwrap();
    let give = ipc
        .copy_cap(t(1), other, Rights::SEND | Rights::GRANT, 0)
        .unwrap();
    // Client calls; server replies moving `give` and copying `other`.
    let token = ipc
        .send(t(2), client, p(1, &[]), NONE, 0, Some(100))
        .unwrap()
        .token
        .unwrap();
    ipc.recv(t(1), ep).unwrap().unwrap();
    ipc.reply(t(1), p(0, &[]), [give.0, other.0], 0b01).unwrap();
    assert_eq!(ipc.cap(t(1), give), Err(Error::NoSuchCap), "moved away");
    assert!(ipc.cap(t(1), other).is_ok(), "copied: kept");
    let r = ipc.finish_call(t(2), token).unwrap().unwrap();
    let got: Vec<Cap> = r
        .handles
        .iter()
        .map(|h| ipc.cap(t(2), Handle(*h)).unwrap())
        .collect();
    assert_eq!(got[0].rights, Rights::SEND | Rights::GRANT);
    assert_eq!(got[1].rights, Rights::all());
    assert_eq!(got[0].object, got[1].object);
    // A moved handle, reused slot: the old handle never names the new capability.
    let again = ipc.create_endpoint(t(1)).unwrap();
    assert_eq!(again.slot(), give.slot());
    assert_ne!(again, give);
    assert_eq!(ipc.cap(t(1), give), Err(Error::NoSuchCap));
}

#[test]
fn exit_revokes_and_fails_callers_with_stale() {
    let (mut ipc, ep, client) = pair();
    // Call 1 received, unanswered; call 2 queued.
    let t1 = ipc
        .send(t(2), client, p(1, &[]), NONE, 0, Some(100))
        .unwrap()
        .token
        .unwrap();
    ipc.recv(t(1), ep).unwrap().unwrap();
    let c3 = ipc.grant(t(3), ipc.cap(t(2), client).unwrap()).unwrap();
    let t2 = ipc
        .send(t(3), c3, p(2, &[]), NONE, 0, Some(100))
        .unwrap()
        .token
        .unwrap();
    ipc.take_effects();
    ipc.task_exited(t(1));
    let mut w = wakes(&mut ipc);
    w.sort();
    assert_eq!(w, vec![t(2), t(3)]);
    assert_eq!(ipc.finish_call(t(2), t1).unwrap().err(), Some(Error::Stale));
    assert_eq!(ipc.finish_call(t(3), t2).unwrap().err(), Some(Error::Stale));
    // The endpoint is gone: the capability is stale, and a new endpoint in the same slot
    // is not reached by it.
    let fresh = ipc.create_endpoint(t(4)).unwrap();
    assert!(
        matches!(ipc.cap(t(4), fresh).unwrap().object, Object::Endpoint { id, .. } if id.index == 0)
    );
    assert_eq!(
        ipc.send(t(2), client, p(0, &[]), NONE, 0, None).err(),
        Some(Error::Stale)
    );
    assert_eq!(
        ipc.cap(t(1), ep),
        Err(Error::NoSuchCap),
        "the dead task's table is gone"
    );
}

#[test]
fn remote_calls_are_forwarded_and_answered_only_by_the_target() {
    let mut a = Ipc::new(1);
    let mut b = Ipc::new(2);
    let ep = b.create_endpoint(t(1)).unwrap();
    let obj = b.cap(t(1), ep).unwrap().object;
    let h = a.grant(t(5), Cap::new(obj, Rights::SEND)).unwrap();
    let token = a
        .send(t(5), h, p(7, b"hi"), NONE, 0, Some(1000))
        .unwrap()
        .token
        .unwrap();
    let Some(Effect::Forward {
        to: 2,
        dst,
        call,
        parcel,
    }) = a.take_effects().pop()
    else {
        panic!("a forward to instance 2")
    };
    let enc = wire::encode_request(dst, call, &parcel);
    let (dst, call, parcel) = wire::decode_request(enc.as_bytes()).unwrap();
    b.incoming(1, dst, call, parcel);
    let d = b.recv(t(1), ep).unwrap().unwrap();
    assert_eq!((d.parcel.sender_instance, d.parcel.sender_task), (1, t(5)));
    assert_eq!(d.parcel.data(), b"hi");
    b.reply(t(1), p(8, b"ok"), NONE, 0).unwrap();
    let Some(Effect::Answer {
        to: 1,
        token: tk,
        result,
    }) = b.take_effects().pop()
    else {
        panic!("an answer to instance 1")
    };
    let enc = wire::encode_answer(tk, &result);
    let (tk, result) = wire::decode_answer(enc.as_bytes()).unwrap();
    // A forged answer from instance 3 is ignored; the real one settles the call.
    a.answer_in(3, tk, Err(Error::Stale));
    assert!(a.finish_call(t(5), token).is_none());
    a.answer_in(2, tk, result);
    let r = a.finish_call(t(5), token).unwrap().unwrap();
    assert_eq!((r.parcel.label, r.parcel.data()), (8, &b"ok"[..]));
}

#[test]
fn calls_expire_and_fail_when_the_peer_dies() {
    let mut a = Ipc::new(1);
    let obj = Object::Endpoint {
        instance: 2,
        id: ObjId {
            index: 0,
            generation: 1,
        },
    };
    let tokens: Vec<_> = (0..8)
        .map(|i| {
            let h = a.grant(t(i), Cap::new(obj, Rights::SEND)).unwrap();
            a.send(t(i), h, p(0, &[]), NONE, 0, Some(500 + u64::from(i)))
                .unwrap()
                .token
                .unwrap()
        })
        .collect();
    a.take_effects();
    a.expire(100, |_| false);
    assert!(wakes(&mut a).is_empty());
    a.expire(503, |_| false);
    assert_eq!(wakes(&mut a).len(), 4, "calls 0..=3 timed out");
    a.instance_stopped(2);
    assert_eq!(wakes(&mut a).len(), 4);
    for (i, tk) in tokens.iter().enumerate() {
        let want = if i <= 3 {
            Error::TimedOut
        } else {
            Error::PeerDead
        };
        assert_eq!(a.finish_call(t(i as u32), *tk).unwrap().err(), Some(want));
    }
}

#[test]
fn the_name_service_registers_looks_up_and_forgets() {
    let mut ns = Ipc::new(0);
    let ep = ns.create_endpoint(t(1)).unwrap();
    let reg = |ns: &mut Ipc, who: TaskId, h: Handle| {
        ns.send(
            who,
            NAME_SERVICE,
            p(labels::REGISTER, b"com2"),
            [h.0, NO_CAP],
            0,
            Some(9),
        )
        .unwrap()
        .answered
        .unwrap()
    };
    reg(&mut ns, t(1), ep).unwrap();
    assert_eq!(reg(&mut ns, t(1), ep).err(), Some(Error::Exists));
    let r = ns
        .send(
            t(2),
            NAME_SERVICE,
            p(labels::LOOKUP, b"com2"),
            NONE,
            0,
            Some(9),
        )
        .unwrap()
        .answered
        .unwrap()
        .unwrap();
    let cap = r.caps[0].unwrap();
    assert_eq!(cap.object, ns.cap(t(1), ep).unwrap().object);
    assert_eq!(cap.rights, Rights::SEND | Rights::GRANT);
    let bad = ns.send(
        t(2),
        NAME_SERVICE,
        p(labels::LOOKUP, b"no such"),
        NONE,
        0,
        Some(9),
    );
    assert_eq!(
        bad.unwrap().answered.unwrap().err(),
        Some(Error::BadArgument)
    );
    // The registrant exits: the name is free again.
    ns.task_exited(t(1));
    let ep2 = ns.create_endpoint(t(3)).unwrap();
    reg(&mut ns, t(3), ep2).unwrap();
    // A remote instance's names go when it stops.
    ns.incoming(4, NAME_SERVICE_ID, None, {
        let mut q = p(labels::REGISTER, b"far");
        q.caps[0] = Some(Cap::new(
            Object::Endpoint {
                instance: 4,
                id: ObjId {
                    index: 3,
                    generation: 2,
                },
            },
            Rights::all(),
        ));
        q
    });
    assert!(ns.names.lookup("far").is_some());
    ns.instance_stopped(4);
    assert!(ns.names.lookup("far").is_none());
    // A client's capability (SEND | GRANT from a lookup) cannot be registered: only a
    // receiver publishes its endpoint.
    let looked = ns.grant(t(7), cap).unwrap();
    let again = ns
        .send(
            t(7),
            NAME_SERVICE,
            p(labels::REGISTER, b"mine"),
            [looked.0, NO_CAP],
            0,
            Some(9),
        )
        .unwrap()
        .answered
        .unwrap();
    assert_eq!(again.err(), Some(Error::NoRight));
}

fn released(ipc: &mut Ipc) -> Vec<ObjId> {
    ipc.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Release { run } => Some(run),
            _ => None,
        })
        .collect()
}

#[test]
fn page_runs_move_only_and_are_released_exactly_when_nobody_holds_them() {
    let (mut ipc, ep, client) = pair();
    let run = ObjId {
        index: 9,
        generation: 1,
    };
    let h = ipc.new_pages(t(2), run, 4).unwrap();
    // Copying is refused; sending without moving too.
    assert_eq!(ipc.copy_cap(t(2), h, Rights::all(), 0), Err(Error::NoRight));
    assert_eq!(
        ipc.send(t(2), client, p(0, &[]), [h.0, NO_CAP], 0, None)
            .err(),
        Some(Error::NoRight)
    );
    // Moved in a call: the sender loses it, the server gets it, nothing is released.
    let token = ipc
        .send(t(2), client, p(0, &[]), [h.0, NO_CAP], 1, Some(100))
        .unwrap()
        .token
        .unwrap();
    assert_eq!(ipc.cap(t(2), h), Err(Error::NoSuchCap));
    let d = ipc.recv(t(1), ep).unwrap().unwrap();
    let got = Handle(d.handles[0]);
    assert!(
        matches!(ipc.cap(t(1), got).unwrap().object, Object::Pages { id, pages: 4 } if id == run)
    );
    assert!(released(&mut ipc).is_empty());
    // Taken to be mapped: gone from the table, not released (the kernel maps it).
    assert_eq!(ipc.take_pages(t(1), got), Ok((run, 4)));
    assert_eq!(ipc.cap(t(1), got), Err(Error::NoSuchCap));
    assert!(released(&mut ipc).is_empty());
    // A run in a reply to a call that timed out is released.
    let run2 = ObjId {
        index: 10,
        generation: 1,
    };
    let back = ipc.new_pages(t(1), run2, 1).unwrap();
    ipc.expire(u64::MAX, |_| false);
    ipc.take_effects();
    ipc.reply(t(1), p(0, &[]), [back.0, NO_CAP], 1).unwrap();
    assert_eq!(
        ipc.finish_call(t(2), token).unwrap().err(),
        Some(Error::TimedOut)
    );
    // (The late answer settled nothing: its run went back.)
    assert_eq!(released(&mut ipc), vec![run2]);
    // Dropped, or held by a task that exits: released.
    let run3 = ObjId {
        index: 11,
        generation: 1,
    };
    let run4 = ObjId {
        index: 12,
        generation: 1,
    };
    let h3 = ipc.new_pages(t(1), run3, 1).unwrap();
    ipc.new_pages(t(1), run4, 1).unwrap();
    ipc.drop_cap(t(1), h3).unwrap();
    assert_eq!(released(&mut ipc), vec![run3]);
    ipc.task_exited(t(1));
    assert_eq!(released(&mut ipc), vec![run4]);
}

#[test]
fn interrupts_set_notification_bits_seen_by_recv() {
    let mut ipc = Ipc::new(1);
    let ep = ipc.create_endpoint(t(1)).unwrap();
    let n = ipc.create_notification(t(1), ep).unwrap();
    let irq = ipc
        .grant(t(1), Cap::new(Object::Irq { line: 3 }, Rights::SEND))
        .unwrap();
    assert!(!ipc.irq_fired(3), "unbound: the kernel's");
    assert_eq!(ipc.irq_line(t(1), irq), Err(Error::BadArgument));
    assert_eq!(ipc.irq_bind(t(1), irq, n, 5), Ok(3));
    assert_eq!(ipc.recv(t(1), ep).unwrap(), None);
    assert!(ipc.irq_fired(3));
    assert_eq!(wakes(&mut ipc), vec![t(1)]);
    let d = ipc.recv(t(1), ep).unwrap().unwrap();
    assert_eq!((d.kind, d.parcel.badge), (Received::Notification, 1 << 5));
    assert_eq!(ipc.irq_line(t(1), irq), Ok(3));
    // Another task cannot bind the same line; the owner's exit frees it.
    let irq2 = ipc
        .grant(t(2), Cap::new(Object::Irq { line: 3 }, Rights::SEND))
        .unwrap();
    let ep2 = ipc.create_endpoint(t(2)).unwrap();
    let n2 = ipc.create_notification(t(2), ep2).unwrap();
    assert_eq!(ipc.irq_bind(t(2), irq2, n2, 0), Err(Error::Busy));
    ipc.task_exited(t(1));
    assert!(ipc.take_effects().contains(&Effect::Unbound { line: 3 }));
    assert!(!ipc.irq_fired(3));
    assert_eq!(ipc.irq_bind(t(2), irq2, n2, 0), Ok(3));
}

proptest! {
    /// Random handles of a task are refused unless they name one of its capabilities, and
    /// nothing is delivered.
    #[test]
    fn forged_handles_deliver_nothing(raws in proptest::collection::vec(any::<u64>(), 1..64)) {
        let (mut ipc, ep, client) = pair();
        for raw in raws {
            let h = Handle(raw);
            if h == client || h == NAME_SERVICE {
                continue;
            }
            let r = ipc.send(t(2), h, p(0, &[]), NONE, 0, None);
            prop_assert!(matches!(r.err(), Some(Error::NoSuchCap | Error::NoRight)));
            prop_assert!(ipc.recv(t(2), h).is_err());
        }
        let Object::Endpoint { id, .. } = ipc.cap(t(1), ep).unwrap().object else {
            panic!("an endpoint")
        };
        let queued = ipc.endpoints.get(id).unwrap().queue.len();
        prop_assert_eq!(queued, 0);
    }

    /// Decoding never panics and accepts only what it can re-encode identically.
    #[test]
    fn decoding_random_bytes_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..240)) {
        if let Ok((dst, call, parcel)) = wire::decode_request(&bytes) {
            let e = wire::encode_request(dst, call, &parcel);
            prop_assert_eq!(e.as_bytes(), &bytes[..]);
        }
        if let Ok((token, result)) = wire::decode_answer(&bytes) {
            let e = wire::encode_answer(token, &result);
            prop_assert_eq!(e.as_bytes(), &bytes[..]);
        }
    }

    /// Requests round-trip through the wire.
    #[test]
    fn requests_round_trip(label in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..=160),
                           badge in any::<u32>(), tok in any::<u32>(), call in any::<bool>()) {
        let mut q = p(label, &data);
        q.badge = u64::from(badge);
        q.sender_task = t(9);
        q.caps[0] = Some(Cap { object: Object::NameService, rights: Rights::SEND, badge: 3 });
        let token = call.then_some(CallToken(tok));
        let dst = ObjId { index: 4, generation: 7 };
        let (d2, c2, q2) = wire::decode_request(wire::encode_request(dst, token, &q).as_bytes()).unwrap();
        prop_assert_eq!((d2, c2), (dst, token));
        prop_assert_eq!(q2, q);
    }
}
