//! The scheduler of this instance: `mk-sched`'s bookkeeping behind one lock, the contexts of
//! tasks and of each CPU's scheduler loop, and the points where a task leaves its CPU.
//!
//! ```text
//!   CPU's boot context (scheduler loop)              task context (own kernel stack)
//!   run_one: pick_next ──switch_to(task)──────────►  ring 3 ... syscall / interrupt
//!            ◄────────────switch_to(scheduler)────   yield, sleep, wait, preempt, exit, fault
//!   store the task's context back (or free it if it exited), charge CPU time
//! ```
//!
//! Every CPU runs tasks from its own loop: the first CPU between mailbox drains
//! (`messaging::serve_forever`), the others in their idle loop (`cpus::smp`). A task never
//! runs kernel code preemptively: it is preempted only when an interrupt arrives in ring 3
//! (the user-return hook), so no kernel lock is ever held across a switch.
//!
//! Locking: the scheduler's lock is always taken with interrupts off, and never held while
//! switching. A task that has just left a CPU may be picked by another before its context is
//! stored back; the picker waits for it (`run_one`), which takes the time of a few stores.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mk_abi::TaskId;
use mk_sched::{Block, Scheduler, State};
use spin::Mutex;

use crate::arch::cpu::{self, MAX_SLOTS};
use crate::arch::interrupts::{self, UserFault};
use crate::arch::switch::{self, Context};
use crate::arch::tsc;
use crate::memory::space;

use super::task::{SpawnError, Task};

/// Most tasks one instance holds at once (running, ready, blocked or waiting to be reaped).
pub const MAX_TASKS: usize = 64;

static SCHED: Mutex<Option<Scheduler<Task>>> = Mutex::new(None);

/// Each CPU's scheduler-loop context while a task runs on that CPU.
static SCHED_CTX: [Mutex<Option<Context>>; MAX_SLOTS] = [const { Mutex::new(None) }; MAX_SLOTS];

/// Per CPU: a task on it should come back to the scheduler at its next interrupt (set by
/// the doorbell on the first CPU, and by a CPU that is asked to park).
static RESCHED: [AtomicBool; MAX_SLOTS] = [const { AtomicBool::new(false) }; MAX_SLOTS];

/// Whether the "SYSCALL does not work here" error was logged (once per instance).
static SYSCALL_BROKEN_SAID: AtomicBool = AtomicBool::new(false);

/// Per CPU: when the running task's CPU time was last charged (TSC).
static SLICE_START: [AtomicU64; MAX_SLOTS] = [const { AtomicU64::new(0) }; MAX_SLOTS];

/// Tasks ended by a fault, killed, and exited by themselves, since boot.
pub static FAULTS: AtomicU64 = AtomicU64::new(0);
pub static KILLS: AtomicU64 = AtomicU64::new(0);
pub static EXITS: AtomicU64 = AtomicU64::new(0);
/// Task switches (scheduler to task) since boot.
pub static SWITCHES: AtomicU64 = AtomicU64::new(0);

/// Changes made to the scheduler so far: every [`with`] counts one (under the lock, so one
/// writer at a time), whether or not `f` changed anything.
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// Per CPU: the [`CHANGES`] count at which the CPU found itself quiet
/// ([`Scheduler::is_quiet`]: nothing to run, to steal, to wake or to free); `u64::MAX` when
/// not. While the count has not moved, its idle loop skips the scheduler without its lock.
static QUIET_AT: [AtomicU64; MAX_SLOTS] = [const { AtomicU64::new(u64::MAX) }; MAX_SLOTS];

/// Runs `f` on the scheduler, with interrupts off.
pub fn with<R>(f: impl FnOnce(&mut Scheduler<Task>) -> R) -> Option<R> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut s = SCHED.lock();
        let r = s.as_mut().map(f);
        changed();
        r
    })
}

/// Runs `f` on the scheduler without changing it, with interrupts off. Not counted as a
/// change: nothing changes through `&`, so an idle CPU's quiet ([`QUIET_AT`]) holds.
pub fn read<R>(f: impl FnOnce(&Scheduler<Task>) -> R) -> Option<R> {
    x86_64::instructions::interrupts::without_interrupts(|| SCHED.lock().as_ref().map(f))
}

/// Runs `f` on the record of the task running on this CPU, read only, under one lock
/// ([`read`]); `None` if no task runs here.
pub fn with_running<R>(f: impl FnOnce(&Task) -> R) -> Option<R> {
    let me = slot();
    read(|s| s.get(s.current(me)?).map(f)).flatten()
}

/// [`with_running`] for a change to the running task's record (its address space), under one
/// lock ([`with`], counted as a change).
pub fn with_running_mut<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    let me = slot();
    with(|s| {
        let id = s.current(me)?;
        s.get_mut(id).map(f)
    })
    .flatten()
}

/// Counts a change (called with the scheduler's lock held). Published with `Release`: a CPU
/// that reads the new count (`Acquire`) then sees the change itself.
fn changed() {
    CHANGES.store(CHANGES.load(Ordering::Relaxed) + 1, Ordering::Release);
}

/// Sets up the scheduler (once, on the instance's first CPU) and installs the hooks through
/// which the hardware layer reaches it.
pub fn init() -> Result<(), InitError> {
    {
        let mut s = SCHED.lock();
        if s.is_some() {
            return Err(InitError::Twice);
        }
        // Only the first CPU runs tasks at first; the others join as they come up.
        let mut sched = Scheduler::new(MAX_TASKS, MAX_SLOTS);
        for slot in 1..MAX_SLOTS {
            let _ = sched.set_cpu_online(slot, false);
        }
        *s = Some(sched);
        changed();
    }
    interrupts::set_user_fault_handler(user_fault).map_err(|_| InitError::Hooks)?;
    interrupts::set_user_return_hook(user_return).map_err(|_| InitError::Hooks)?;
    Ok(())
}

/// Why [`init`] failed (both are this instance's own state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    Twice,
    Hooks,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Twice => "the scheduler was set up twice",
            Self::Hooks => "a scheduler hook was already taken",
        })
    }
}

/// The running CPU's slot.
fn slot() -> usize {
    cpu::current().index as usize
}

/// A CPU joins (or leaves) the set that runs tasks. Leaving hands its queued tasks to the
/// instance's other CPUs; returns how many moved.
pub fn set_cpu_online(slot: usize, online: bool) -> usize {
    with(|s| {
        s.set_cpu_online(slot, online)
            .map_or(0, |moved| moved.len())
    })
    .unwrap_or(0)
}

/// Asks the task running on CPU `slot` (if any) to come back to the scheduler at its next
/// interrupt.
pub fn request_resched(slot: usize) {
    if let Some(flag) = RESCHED.get(slot) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Whether the running CPU was asked to reschedule (its task killed, or the CPU parking).
pub fn resched_requested() -> bool {
    RESCHED
        .get(slot())
        .is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Whether the running task has been killed (it ends at its next way out of the kernel).
pub fn kill_pending() -> bool {
    let me = slot();
    with(|s| s.current(me).is_some_and(|id| s.kill_pending(id))).unwrap_or(false)
}

/// Runs one slice of one ready task on the running CPU, if there is one: until it yields,
/// blocks, exits or is preempted. Returns whether a task ran. Called with interrupts in any
/// state; returns with them as they were.
#[inline]
pub fn run_one() -> bool {
    // Quiet since the last change: nothing to pick or to free, known without the lock (which
    // idle CPUs would otherwise take on every pass of their loops), and without a call.
    let changes = CHANGES.load(Ordering::Acquire);
    if QUIET_AT
        .get(slot())
        .is_some_and(|q| q.load(Ordering::Relaxed) == changes)
    {
        return false;
    }
    x86_64::instructions::interrupts::without_interrupts(run_one_locked_out)
}

#[inline(never)]
fn run_one_locked_out() -> bool {
    let me = slot();
    let quiet_at = QUIET_AT.get(me);
    let now = tsc::read();
    let (picked, ready, dead) = {
        let mut s = SCHED.lock();
        match s.as_mut() {
            Some(s) => {
                let sleepers = s.sleepers();
                let picked = s.pick_next(me, now);
                // The common case, under the same lock: the picked task's context is there
                // (it is not still on its way out of another CPU); it is started here at once.
                let ready = picked.and_then(|id| s.get_mut(id)).and_then(|t| {
                    let ctx = t.context.take()?;
                    start_here(t);
                    Some(ctx)
                });
                let dead = take_all_dead(s, me);
                // A pass that picked nothing and woke nobody changed nothing another CPU
                // could see (only this CPU's own dead were taken): it is not counted, so that
                // idle CPUs do not keep each other from their quiet.
                if picked.is_some() || s.sleepers() != sleepers {
                    changed();
                } else if s.is_quiet(me)
                    && let Some(q) = quiet_at
                {
                    q.store(CHANGES.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                (picked, ready, dead)
            }
            None => (None, None, alloc::vec::Vec::new()),
        }
    };
    // Tasks that ended on this CPU: their stacks are no longer in use; freed outside the lock.
    drop(dead);
    let Some(id) = picked else {
        return false;
    };
    let ctx = match ready {
        Some(ctx) => ctx,
        None => match wait_for_context(id) {
            Some(ctx) => ctx,
            None => return false,
        },
    };
    RESCHED[me].store(false, Ordering::Relaxed);
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    SLICE_START[me].store(tsc::read(), Ordering::Relaxed);
    switch::switch_to(ctx);
    // Back from the task (this CPU's loop; the task left through `to_scheduler`).
    let back = switch::take_saved();
    space::activate_kernel();
    let spent = tsc::read().saturating_sub(SLICE_START[me].load(Ordering::Relaxed));
    let dead = with(|s| {
        s.charge(id, spent);
        // An exited task has no payload any more (its context is dropped with `back`);
        // every other way out of a task (yield, block, preempt) leaves it to resume later.
        if let Some(t) = s.get_mut(id) {
            t.context = back;
        }
        take_all_dead(s, me)
    });
    // Freed outside the lock (the address space gives its frames back).
    drop(dead);
    true
}

/// Makes this CPU ready to enter task `t`: its kernel stack for interrupts and system calls,
/// its address space, and exactly its I/O ports (none for most): every way into ring 3 passes
/// here, so whatever the previous task on this CPU was allowed is denied again before this one
/// runs. Left as it is when the task comes back: ring 0 ignores the bitmap, and the next task
/// switched in here replaces it.
fn start_here(t: &Task) {
    cpu::current().set_kernel_stack(t.stack.top());
    t.space.activate();
    cpu::set_user_io_ports(&t.io_ports);
}

/// The context of task `id`, picked to run here while it was still on its way out of another
/// CPU: waited for, then the task started here ([`start_here`]). `None`: it is gone (it cannot
/// be, while it is running here), nothing to run.
#[cold]
fn wait_for_context(id: TaskId) -> Option<Context> {
    loop {
        match with(|s| {
            s.get_mut(id).map(|t| {
                let ctx = t.context.take();
                if ctx.is_some() {
                    start_here(t);
                }
                ctx
            })
        }) {
            Some(Some(Some(ctx))) => return Some(ctx),
            Some(Some(None)) => core::hint::spin_loop(),
            _ => return None,
        }
    }
}

/// The payloads of the tasks that ended while running on CPU `cpu` and that it has left.
fn take_all_dead(s: &mut Scheduler<Task>, cpu: usize) -> alloc::vec::Vec<Task> {
    let mut dead = alloc::vec::Vec::new();
    while let Some(t) = s.take_dead(cpu) {
        dead.push(t);
    }
    dead
}

/// Marks the running task blocked for `why` (it keeps running until [`reschedule`]): called
/// under the lock of whatever will wake it, so that no wake-up falls between the decision to
/// wait and the block.
pub fn block_current(why: Block) {
    let me = slot();
    with(|s| s.block(me, why));
}

/// The running task leaves its CPU (after [`block_current`], until woken; else it is
/// preempted and runs again when its turn comes).
pub fn reschedule() {
    to_scheduler();
}

/// Called after a task ended (exit, fault or kill), with no scheduler lock held: the IPC
/// service revokes its capabilities and fails the calls it was to answer.
static EXIT_HOOK: spin::Once<fn(TaskId)> = spin::Once::new();

/// Sets [`EXIT_HOOK`] (once).
pub fn set_exit_hook(hook: fn(TaskId)) {
    EXIT_HOOK.call_once(|| hook);
}

/// Called by a task on its first entry, before ring 3, with the device capabilities it was
/// spawned with (the IPC service installs them: handles 1, 2, ... in order).
static START_HOOK: spin::Once<fn(TaskId, alloc::vec::Vec<mk_ipc::Cap>)> = spin::Once::new();

/// Sets [`START_HOOK`] (once).
pub fn set_start_hook(hook: fn(TaskId, alloc::vec::Vec<mk_ipc::Cap>)) {
    START_HOOK.call_once(|| hook);
}

/// Sets the I/O ports task `id` may use (from its capabilities); applied at once if it is
/// the running task, else at its next switch in.
pub fn set_io_ports(id: TaskId, ports: alloc::vec::Vec<(u16, u16)>) {
    let me = slot();
    let running_here = with(|s| {
        let here = s.current(me) == Some(id);
        if let Some(t) = s.get_mut(id) {
            t.io_ports = ports.clone();
        }
        here
    });
    if running_here == Some(true) {
        cpu::set_user_io_ports(&ports);
    }
}

fn ended(id: TaskId) {
    if let Some(hook) = EXIT_HOOK.get() {
        hook(id);
    }
}

/// Called by a task on its own stack: back to the running CPU's scheduler loop. Returns when
/// the task runs again (on this CPU or another).
fn to_scheduler() {
    let Some(sched) = SCHED_CTX[slot()].lock().take() else {
        crate::platform::failure::fatal(format_args!("a task has no scheduler to return to"));
    };
    switch::switch_to(sched);
    // Resumed by some CPU's scheduler loop: keep its context for our way back.
    *SCHED_CTX[slot()].lock() = switch::take_saved();
}

/// Where every task starts, on its own kernel stack: keep the scheduler's context, then
/// enter ring 3 at the program's entry.
extern "C" fn task_entry(_arg: u64) -> ! {
    *SCHED_CTX[slot()].lock() = switch::take_saved();
    let me = slot();
    let start = with(|s| {
        let id = s.current(me)?;
        s.get_mut(id)
            .and_then(|t| Some((id, t.start.take()?, core::mem::take(&mut t.grants))))
    })
    .flatten();
    if let Some((id, _, grants)) = &start
        && !grants.is_empty()
        && let Some(hook) = START_HOOK.get()
    {
        hook(*id, grants.clone());
    }
    match start.map(|(_, s, _)| s) {
        Some(entry) => switch::enter_user(entry.rip, entry.rsp, entry.arg0, entry.arg1),
        None => exit_current(mk_abi::STATUS_FAULT),
    }
}

/// Starts `args` (its first word names the program) as a new task of this instance, child of
/// `parent` (`None`: nobody waits for it), on CPU `cpu_hint` or wherever the scheduler puts it.
pub fn spawn(
    args: &str,
    parent: Option<TaskId>,
    cpu_hint: Option<usize>,
) -> Result<TaskId, SpawnError> {
    spawn_with(args, parent, cpu_hint, alloc::vec::Vec::new())
}

/// [`spawn`] with device capabilities the task holds from its start (handles 1, 2, ...).
pub fn spawn_with(
    args: &str,
    parent: Option<TaskId>,
    cpu_hint: Option<usize>,
    grants: alloc::vec::Vec<mk_ipc::Cap>,
) -> Result<TaskId, SpawnError> {
    // Refuse early what the scheduler would refuse, before building the address space.
    with(|s| s.check_spawn(parent, cpu_hint))
        .ok_or(SpawnError::OutOfMemory)?
        .map_err(SpawnError::Scheduler)?;
    let mut task = Task::new(args, task_entry)?;
    task.grants = grants;
    let name = task.program.clone();
    with(|s| s.spawn(&name, task, parent, cpu_hint))
        .ok_or(SpawnError::OutOfMemory)?
        .map_err(SpawnError::Scheduler)
}

/// The running task's id, if a task runs on this CPU.
pub fn current() -> Option<TaskId> {
    let me = slot();
    read(|s| s.current(me)).flatten()
}

/// Gives the CPU to the next ready task (the caller goes to the tail of its CPU's queue).
pub fn yield_now() {
    let me = slot();
    with(|s| s.preempt(me));
    to_scheduler();
}

/// Blocks the running task until `until` (TSC ticks).
pub fn sleep_until(until: u64) {
    let me = slot();
    with(|s| s.block(me, Block::Sleep { until }));
    to_scheduler();
}

/// Ends the running task with `status`; its parent, if it waits, is woken. Does not return:
/// the task's stack and address space are freed by the scheduler loop once it has left them.
pub fn exit_current(status: u64) -> ! {
    let me = slot();
    if let Some(id) = with(|s| s.current(me)).flatten() {
        end(id, status);
    }
    let Some(sched) = SCHED_CTX[me].lock().take() else {
        crate::platform::failure::fatal(format_args!("an exiting task has no scheduler"));
    };
    switch::switch_to(sched);
    crate::platform::failure::fatal(format_args!("an exited task was resumed"))
}

/// How many ended tasks [`recent_exit`] remembers.
const RECENT: usize = 64;
/// A ring of `(task, status)`, and where the next goes.
type ExitRing = ([Option<(TaskId, u64)>; RECENT], usize);
static RECENT_EXITS: Mutex<ExitRing> = Mutex::new(([None; RECENT], 0));

/// The exit status of task `id` if it ended recently (among the last 64 to end): how the shell
/// and the tests learn how a task nobody waits for ended.
pub fn recent_exit(id: TaskId) -> Option<u64> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let r = RECENT_EXITS.lock();
        r.0.iter()
            .flatten()
            .find(|(t, _)| *t == id)
            .map(|&(_, s)| s)
    })
}

fn end_record(id: TaskId, status: u64) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut r = RECENT_EXITS.lock();
        let at = r.1 % RECENT;
        r.0[at] = Some((id, status));
        r.1 = r.1.wrapping_add(1);
    });
}

/// Ends task `id` with `status` (its payload, if returned now, is dropped here: it is not
/// running anywhere).
fn end(id: TaskId, status: u64) {
    end_record(id, status);
    // The scheduler wakes the parent if it waits; the payload is here only if the task was
    // not running (else the scheduler loop of its CPU frees it).
    let payload = with(|s| s.exit(id, status).ok().and_then(|e| e.payload)).flatten();
    drop(payload);
    ended(id);
}

/// Waits for the caller's child `child` to end and returns its status.
pub fn wait(child: TaskId) -> Result<u64, mk_sched::SchedError> {
    loop {
        // Asked again on every round: the task may resume on another CPU.
        let me = slot();
        let outcome = with(|s| {
            let parent = s.current(me)?;
            Some(match s.reap(parent, child) {
                Ok(Some(status)) => Ok(Some(status)),
                Ok(None) => {
                    s.block(me, Block::Wait { child });
                    Ok(None)
                }
                Err(e) => Err(e),
            })
        })
        .flatten();
        match outcome {
            Some(Ok(Some(status))) => return Ok(status),
            Some(Ok(None)) => to_scheduler(),
            Some(Err(e)) => return Err(e),
            None => return Err(mk_sched::SchedError::NoSuchTask),
        }
    }
}

/// Makes the blocked task `id` ready (as [`Scheduler::wake`]; nothing changes if it is ready
/// or running already) and, if it was made ready on another CPU, kicks that CPU
/// (`cpus::smp::kick`) so that it runs the task now instead of at its next timer tick.
#[allow(dead_code)] // called by the IPC system calls (receive, notify), which come next
pub fn wake(id: TaskId) -> Result<(), mk_sched::SchedError> {
    let me = slot();
    let target = with(|s| {
        let was_blocked = matches!(s.state(id), Some(State::Blocked(_)));
        s.wake(id)?;
        Ok(if was_blocked { s.cpu_of(id) } else { None })
    })
    .ok_or(mk_sched::SchedError::NoSuchTask)??;
    // After the lock is let go: the kicked CPU's scheduler takes it at once.
    if let Some(cpu) = target
        && cpu != me
    {
        crate::cpus::smp::kick(cpu);
    }
    Ok(())
}

/// Ends task `id` of this instance with `STATUS_KILLED`: now if it is not running, else at
/// its next entry into the kernel (its CPU is asked to reschedule).
pub fn kill(id: TaskId) -> Result<(), mk_sched::SchedError> {
    // A task that has just left a CPU (ready or blocked, its context not stored back yet) is
    // still on its kernel stack: wait the few instructions until it is off it.
    let outcome = loop {
        let attempt = with(|s| {
            let in_transit = s.get(id).is_some_and(|t| t.context.is_none())
                && matches!(s.state(id), Some(State::Ready | State::Blocked(_)));
            (!in_transit).then(|| {
                let outcome = s.kill(id);
                // Recorded before the scheduler's lock is let go, as every exit is: whoever
                // sees the task gone finds its status.
                if let Ok(mk_sched::KillOutcome::Exited(_)) = &outcome {
                    end_record(id, mk_abi::STATUS_KILLED);
                }
                outcome
            })
        })
        .ok_or(mk_sched::SchedError::NoSuchTask)?;
        match attempt {
            Some(result) => break result?,
            None => core::hint::spin_loop(),
        }
    };
    KILLS.fetch_add(1, Ordering::Relaxed);
    match outcome {
        mk_sched::KillOutcome::Exited(exit) => {
            drop(exit.payload);
            ended(id);
        }
        mk_sched::KillOutcome::Running { cpu } => request_resched(cpu),
    }
    Ok(())
}

/// The hardware layer's hook for an exception in ring 3: one log line, then the task ends.
fn user_fault(fault: &UserFault) -> ! {
    FAULTS.fetch_add(1, Ordering::Relaxed);
    // An instruction fetch from ring 3 at the system call entry: the CPU (a hypervisor, in
    // practice: nested kvm-pvm) jumped to LSTAR without entering ring 0.
    if fault.vector == 14
        && fault.addr == Some(crate::arch::syscall::entry_address())
        && !SYSCALL_BROKEN_SAID.swap(true, Ordering::Relaxed)
    {
        crate::error!(
            "SYSCALL from ring 3 did not enter ring 0 on this CPU (a hypervisor without support for it, such as nested kvm-pvm): tasks cannot make system calls here; run under TCG (cargo xtask run --no-kvm) or on hardware"
        );
    }
    let me = slot();
    let (id, name) = with(|s| {
        let id = s.current(me)?;
        Some((id, s.get(id).map(|t| t.program.clone()).unwrap_or_default()))
    })
    .flatten()
    .unzip();
    let name: String = name.unwrap_or_default();
    match fault.addr {
        Some(addr) => crate::warn!(
            "task {} ({name}) on cpu {me}: {} at {addr:#x} (rip {:#x}, code {:#x}); task ended",
            id.map_or_else(String::new, |i| alloc::format!("{i}")),
            fault.name,
            fault.rip,
            fault.code
        ),
        None => crate::warn!(
            "task {} ({name}) on cpu {me}: {} at rip {:#x} (code {:#x}); task ended",
            id.map_or_else(String::new, |i| alloc::format!("{i}")),
            fault.name,
            fault.rip,
            fault.code
        ),
    }
    drop(name);
    exit_current(mk_abi::STATUS_FAULT + u64::from(fault.vector))
}

/// The hardware layer's hook at the end of every interrupt taken in ring 3: end the task if it
/// was killed, give the CPU back if another task waits for it or this CPU was asked to.
fn user_return() {
    let me = slot();
    let now = tsc::read();
    let spent = now.saturating_sub(SLICE_START[me].swap(now, Ordering::Relaxed));
    let Some(Some((id, killed, others))) = with(|s| {
        let id = s.current(me)?;
        // Charged at every interrupt, so a task alone on its CPU shows its time too.
        s.charge(id, spent);
        let others = (0..s.max_cpus()).any(|c| s.ready_on(c) > 0);
        Some((id, s.kill_pending(id), others))
    }) else {
        return;
    };
    if killed {
        exit_current(mk_abi::STATUS_KILLED);
    }
    // The first CPU also drains the mailboxes: it goes back to its loop at every interrupt.
    // A CPU asked to park goes back to its loop, which parks it.
    let asked = RESCHED[me].swap(false, Ordering::Relaxed) || crate::cpus::smp::park_requested(me);
    if others || asked || me == 0 {
        with(|s| {
            if s.current(me) == Some(id) {
                s.preempt(me);
            }
        });
        to_scheduler();
    }
}

/// The further CPUs' idle work: run tasks; join and leave the scheduler's CPU set.
static IDLE_WORK: crate::cpus::smp::IdleWork = crate::cpus::smp::IdleWork {
    run: run_one,
    joined: |slot| {
        set_cpu_online(slot, true);
    },
    leaving: |slot| {
        let moved = set_cpu_online(slot, false);
        if moved > 0 {
            crate::info!("cpu {slot} leaves: {moved} tasks handed to the other CPUs");
        }
    },
};

/// Lets the instance's further CPUs run tasks (call once, before they start).
pub fn start_further_cpus_work() {
    crate::cpus::smp::set_idle_work(&IDLE_WORK);
}
