//! Cases on how instance 0 waits for the instances it starts (`shared::region::wait_running`):
//! a test kernel forces the wait with `start_wait=K:FIRST_MS:QUIET_MS` and slows an instance
//! down with `slow_start=K:MS` (both read at boot), and these cases check what came of it.

use alloc::format;
use alloc::string::String;

use mk_shared::{InstanceState, Owner, Resource};

use crate::arch::tsc;
use crate::cpus::launch::{LAUNCH, PLAN};
use crate::instance::iid;
use crate::services::lifecycle;
use crate::shared::region;

use super::harness::{Outcome, ensure};

/// `K:REST`: the instance and the rest of the argument.
fn instance_arg(arg: &str) -> Result<(usize, &str), String> {
    let (k, rest) = arg.split_once(':').unwrap_or((arg, ""));
    let k = k.parse().map_err(|_| format!("bad instance in '{arg}'"))?;
    Ok((k, rest))
}

/// `start_wait=K:FIRST_MS:QUIET_MS`: the boot took the forced wait for instance K.
pub fn start_wait(arg: &str) -> Outcome {
    let (k, _) = instance_arg(arg)?;
    let launcher = LAUNCH
        .get()
        .ok_or("no launcher: instance 0 started nobody")?;
    let forced = crate::boot::start::start_waits(&format!("start_wait={arg}"));
    let want = forced
        .first()
        .map(|&(_, w)| w)
        .ok_or_else(|| format!("'{arg}' does not parse as a start wait"))?;
    ensure(launcher.wait_for(iid(k)) == want, || {
        format!(
            "instance {k} was waited for with {:?}, not {want:?}",
            launcher.wait_for(iid(k))
        )
    })
}

/// `slow_start=K:MS`: instance K took at least MS ms from its start to reporting running (it
/// spun that long, beating, before reporting).
pub fn slow_start(arg: &str) -> Outcome {
    let (k, ms) = instance_arg(arg)?;
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("bad milliseconds in '{arg}'"))?;
    let inst = region::get()
        .and_then(|r| r.instance(iid(k)).ok())
        .ok_or("no such instance")?;
    let took = inst.ready_tsc().saturating_sub(inst.boot_tsc()) / tsc::ticks_per_ms();
    crate::println!("slow_start: instance {k} took {took} ms to report running");
    ensure(inst.ready_tsc() != 0 && took >= ms, || {
        format!("instance {k} reported running after {took} ms, expected at least {ms}")
    })
}

/// `start_adopted=K`: instance K, slow but progressing past its quiet window, was not given up
/// on: it runs and answers.
pub fn start_adopted(arg: &str) -> Outcome {
    let (k, _) = instance_arg(arg)?;
    let inst = region::get()
        .and_then(|r| r.instance(iid(k)).ok())
        .ok_or("no such instance")?;
    ensure(inst.state() == Ok(InstanceState::Running), || {
        format!("instance {k} is {:?}, not running", inst.state())
    })?;
    ping(k).map_err(|e| format!("instance {k} runs but does not answer: {e}"))
}

/// `start_gave_up=K`: instance 0 gave up on instance K (its forced wait was too short), and K
/// ended in one consistent state: dead, its CPUs and memory back with instance 0, silent, never
/// reporting running later, not answering.
pub fn start_gave_up(arg: &str) -> Outcome {
    let (k, _) = instance_arg(arg)?;
    let r = region::get().ok_or("no shared region")?;
    let inst = r
        .instance(iid(k))
        .map_err(|e| format!("instance {k}: {e:?}"))?;
    ensure(inst.state() == Ok(InstanceState::Dead), || {
        format!("instance {k} is {:?}, not dead", inst.state())
    })?;
    ensure(
        lifecycle::COLLECTED[k].load(core::sync::atomic::Ordering::SeqCst),
        || format!("instance {k}'s resources were not taken back"),
    )?;
    let plan = PLAN.get().ok_or("no plan")?;
    let p = plan.partition(k).ok_or("no such partition")?;
    for &c in p.cpus {
        let owner = r.owner(Resource::Cpu(c));
        ensure(owner == Ok(Owner::Owned(iid(0))), || {
            format!("CPU {c} of instance {k} is {owner:?}, not back with instance 0")
        })?;
    }
    for (res, owner) in r.resources() {
        let involved = match owner {
            Ok(Owner::Owned(o)) => o == iid(k),
            Ok(Owner::InTransit { from, to, .. }) => from == iid(k) || to == iid(k),
            _ => false,
        };
        ensure(!involved, || {
            format!("{res:?} is still {owner:?} after instance {k} was given up on")
        })?;
    }
    // Silent for good: no beat and no late report for a second (a late instance that had
    // gone on would beat every 100 ms and try to publish Running).
    let beats = inst.heartbeat();
    tsc::spin_micros(1_000_000);
    ensure(inst.heartbeat() == beats, || {
        format!("instance {k} beat after it was given up on")
    })?;
    ensure(
        inst.state() == Ok(InstanceState::Dead) && inst.ready_tsc() == 0,
        || format!("instance {k} reported running after it was given up on"),
    )?;
    match ping(k) {
        Ok(()) => Err(format!(
            "instance {k} answered a ping after it was given up on"
        )),
        Err(_) => Ok(()),
    }
}

fn ping(k: usize) -> Result<(), String> {
    let ping = mk_wire::PingPayload {
        nonce: 0x5157,
        sent_at: 1,
    };
    let reply = crate::messaging::call(
        iid(k),
        mk_wire::Kind::Ping,
        mk_wire::Payload::Ping(ping),
        2000,
    )
    .map_err(|e| format!("{e:?}"))?;
    ensure(reply.payload == mk_wire::Payload::Ping(ping), || {
        format!("reply {:?}", reply.payload)
    })
}
