//! The task scheduler of one kernel instance, as pure bookkeeping: which tasks exist, what state
//! each is in, which CPU runs what and which tasks wait in which CPU's run queue. No hardware:
//! the kernel does the context switches, the timer and the system calls, and tells the
//! [`Scheduler`] what happened; the scheduler answers "who runs next on this CPU" and hands
//! back what the kernel must clean up. `docs/scheduler.md` is the reference; this crate is its
//! code.
//!
//! # Design
//!
//! ```text
//!            task table (max_tasks slots, generation-checked ids)
//!   ┌──────┬──────┬──────┬──────┬──────┬──────┐
//!   │ t0.0 │ t1.3 │ free │ t3.0 │ t4.1 │ t5.0 │   TaskId = (slot index, slot generation)
//!   └──┬───┴──┬───┴──────┴──┬───┴──┬───┴──┬───┘
//!      │      │             │      │      └── Exited (zombie until its parent reaps it)
//!      │      │             │      └── Blocked(Sleep { until }) ──► sleepers, ordered by `until`
//!      │      │             └────────────┐
//!   CPU 0: current t0.0   queue ─► [ t3.0 ]          pick_next: head of the own queue,
//!   CPU 1: current —      queue ─► [ t1.3 ]◄─ steal   else steal the back of the most
//!   CPU 2: offline        (queue always empty)         loaded other queue
//! ```
//!
//! * **Task table.** A vector of at most `max_tasks` slots. A [`TaskId`] is a slot index and
//!   the slot's generation; the generation is bumped each time the slot is freed, so the id of
//!   a task that ended never names the next task in that slot (a slot whose generation would
//!   wrap is retired instead). Every method takes untrusted ids: any value that names no task
//!   (out of range, free slot, stale generation) is [`SchedError::NoSuchTask`] or `None`,
//!   never a panic.
//! * **States.** [`State::Ready`] tasks are in exactly one CPU's run queue (a `VecDeque`, round
//!   robin: [`Scheduler::preempt`] puts the current task at the tail, [`Scheduler::pick_next`]
//!   takes the head). [`State::Running`] tasks are exactly the CPUs' currents, one per CPU.
//!   [`State::Blocked`] tasks are in no queue (sleepers are also in a `BTreeSet` ordered by
//!   deadline). [`State::Exited`] tasks are zombies: their slot is kept only so that their live
//!   parent can [`reap`](Scheduler::reap) the status.
//! * **Placement.** A task spawned with a CPU hint is *pinned* to that CPU: it is never stolen,
//!   and always queued there, until that CPU goes offline. Other tasks go to the least loaded
//!   online CPU (queue length + 1 if it runs something; ties: lowest CPU), and wake up on the
//!   CPU they last ran on (if it is still online).
//! * **Stealing.** A CPU whose queue is empty takes, in `pick_next`, the unpinned task nearest
//!   the back of the longest other queue. A task running on CPU A is never handed to CPU B.
//! * **Hotplug.** [`Scheduler::set_cpu_online`]`(c, false)` moves `c`'s queued tasks to the
//!   other online CPUs and unpins every task pinned to `c`; it is refused while `c` runs a task,
//!   and for the last online CPU while any task is alive. All CPUs start online.
//! * **Exit and payloads.** The payload `T` (saved context, address space...) of a task is
//!   handed back exactly once: by [`Scheduler::exit`] / [`Scheduler::kill`] if the task was not
//!   running, else by [`Scheduler::take_dead`] on its CPU once that CPU has called `pick_next`
//!   (the kernel must not free the stack it is running on).
//! * **Families.** A task exiting frees its zombie children and makes its live children
//!   parentless; a parentless task that exits is freed at once (no zombie).
//!
//! The scheduler is not synchronised: the kernel wraps it in a spin lock (it is per instance,
//! so only that instance's CPUs contend). It is deterministic: the same calls give the same
//! answers. It never panics on any argument.
//!
//! # Example
//!
//! ```
//! use mk_sched::*;
//!
//! let mut s: Scheduler<&str> = Scheduler::new(16, 2);
//! let shell = s.spawn("shell", "ctx-shell", None, Some(0)).unwrap();
//! let job = s.spawn("job", "ctx-job", Some(shell), None).unwrap(); // least loaded: CPU 1
//! assert_eq!(s.pick_next(0, 0), Some(shell));
//! assert_eq!(s.pick_next(1, 0), Some(job));
//! // The shell waits for its child.
//! assert_eq!(s.reap(shell, job), Ok(None));
//! s.block(0, Block::Wait { child: job });
//! // The job exits while running on CPU 1: its payload comes after CPU 1 switched away.
//! let e = s.exit(job, 7).unwrap();
//! assert_eq!((e.payload, e.parent_woken, e.zombie), (None, Some(shell), true));
//! assert_eq!(s.pick_next(1, 0), None); // CPU 1 idles (the shell is pinned to CPU 0)
//! assert_eq!(s.take_dead(1), Some("ctx-job"));
//! assert_eq!(s.pick_next(0, 0), Some(shell));
//! assert_eq!(s.reap(shell, job), Ok(Some(7)));
//! assert_eq!(s.state(job), None); // freed: the id is stale now
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

extern crate alloc;

use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::fmt;

pub use mk_abi::{STATUS_KILLED, TaskId};

/// Longest task name kept, in bytes (longer names are cut at a character boundary).
pub const NAME_LEN: usize = 32;

/// Why a task is [`State::Blocked`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Block {
    /// Until the clock passed to [`Scheduler::pick_next`] reaches `until` (the caller's unit,
    /// TSC ticks in the kernel), or an explicit [`Scheduler::wake`].
    Sleep {
        /// Deadline, inclusive: the task is woken by the first `pick_next(_, now)` with
        /// `now >= until`.
        until: u64,
    },
    /// Until its child `child` exits ([`Scheduler::exit`] wakes it and says so in
    /// [`Exit::parent_woken`]), or an explicit [`Scheduler::wake`].
    Wait {
        /// The child waited for.
        child: TaskId,
    },
    /// Until an explicit [`Scheduler::wake`] (a message, an interrupt...).
    Event,
}

/// The state of a task. See `docs/scheduler.md` for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// In exactly one CPU's run queue.
    Ready,
    /// The current task of CPU `cpu`.
    Running {
        /// The CPU running it.
        cpu: usize,
    },
    /// In no run queue, waiting for the reason given.
    Blocked(Block),
    /// Ended with `status`; a zombie kept until its parent [reaps](Scheduler::reap) it.
    Exited {
        /// The exit status ([`STATUS_KILLED`] if killed).
        status: u64,
    },
}

/// Why [`Scheduler::spawn`] (or [`Scheduler::check_spawn`]) refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// The task table is full (`max_tasks` live tasks and zombies): the instance's state.
    TooManyTasks,
    /// The CPU hint names no CPU of this scheduler: the caller's fault.
    NoSuchCpu {
        /// The hint given.
        cpu: usize,
    },
    /// The CPU hint names a CPU that is offline: the caller's fault (or a race with hotplug).
    CpuOffline {
        /// The hint given.
        cpu: usize,
    },
    /// No CPU is online at all: the kernel's fault (it spawned before bringing a CPU online).
    NoCpuOnline,
    /// The parent is not a live task (bad or stale id, or it exited): the kernel's fault.
    NoSuchParent,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyTasks => f.write_str("task table full"),
            Self::NoSuchCpu { cpu } => write!(f, "CPU hint {cpu} names no CPU"),
            Self::CpuOffline { cpu } => write!(f, "CPU hint {cpu} names an offline CPU"),
            Self::NoCpuOnline => f.write_str("no CPU online"),
            Self::NoSuchParent => f.write_str("parent is not a live task"),
        }
    }
}

impl core::error::Error for SpawnError {}

impl From<SpawnError> for mk_abi::Error {
    fn from(e: SpawnError) -> Self {
        match e {
            SpawnError::TooManyTasks | SpawnError::NoCpuOnline => Self::TooManyTasks,
            SpawnError::NoSuchCpu { .. } | SpawnError::CpuOffline { .. } => Self::BadArgument,
            SpawnError::NoSuchParent => Self::NoSuchTask,
        }
    }
}

/// Why an operation on a task id was refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// The id names no task: out of range, a free slot, or a stale generation (the task ended
    /// and was freed). The caller's fault.
    NoSuchTask,
    /// [`Scheduler::reap`]: the task is not a child of the given parent (or is the parent
    /// itself). The caller's fault.
    NotChild,
    /// The task already exited (a zombie waiting to be reaped): it cannot exit, be killed or
    /// be woken again. The caller's fault.
    Exited,
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSuchTask => "no such task",
            Self::NotChild => "not a child of the caller",
            Self::Exited => "task already exited",
        })
    }
}

impl core::error::Error for SchedError {}

impl From<SchedError> for mk_abi::Error {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::NoSuchTask | SchedError::Exited => Self::NoSuchTask,
            SchedError::NotChild => Self::NotChild,
        }
    }
}

/// Why [`Scheduler::set_cpu_online`] refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotplugError {
    /// The CPU index is `>= max_cpus`: the caller's fault.
    NoSuchCpu {
        /// The CPU given.
        cpu: usize,
    },
    /// The CPU still runs a task: the kernel must [`preempt`](Scheduler::preempt) (or block)
    /// it first.
    Busy {
        /// The CPU given.
        cpu: usize,
        /// Its current task.
        task: TaskId,
    },
    /// It is the last online CPU and tasks are alive: they would have nowhere to run.
    LastCpu {
        /// The CPU given.
        cpu: usize,
    },
}

impl fmt::Display for HotplugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchCpu { cpu } => write!(f, "no CPU {cpu}"),
            Self::Busy { cpu, task } => write!(f, "CPU {cpu} still runs task {task}"),
            Self::LastCpu { cpu } => {
                write!(f, "CPU {cpu} is the last online CPU and tasks are alive")
            }
        }
    }
}

impl core::error::Error for HotplugError {}

/// What [`Scheduler::exit`] (and [`Scheduler::kill`] of a task that was not running) did, and
/// what the kernel must clean up.
#[derive(Debug, PartialEq, Eq)]
pub struct Exit<T> {
    /// The task that exited.
    pub id: TaskId,
    /// Its exit status.
    pub status: u64,
    /// Its payload, to free now; `None` if it was running on a CPU ([`Exit::running_on`]):
    /// then [`Scheduler::take_dead`] on that CPU hands it out after that CPU's next
    /// [`Scheduler::pick_next`].
    pub payload: Option<T>,
    /// The CPU the task was running on when it exited, if it was running.
    pub running_on: Option<usize>,
    /// The parent, if it was blocked in [`Block::Wait`] on this task: the scheduler made it
    /// Ready (the kernel may want to interrupt its CPU, see [`Scheduler::cpu_of`]).
    pub parent_woken: Option<TaskId>,
    /// `true`: the task stays a zombie until its parent reaps it. `false`: it had no live
    /// parent and its slot is already freed (its id is stale).
    pub zombie: bool,
    /// Zombie children freed because their parent (this task) exited.
    pub zombies_freed: usize,
}

/// What [`Scheduler::kill`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum KillOutcome<T> {
    /// The task was Ready or Blocked: it exited now with [`STATUS_KILLED`].
    Exited(Exit<T>),
    /// The task is running on CPU `cpu`: it is marked [kill pending](Scheduler::kill_pending).
    /// The kernel interrupts that CPU and calls [`Scheduler::exit`] when the task next enters
    /// the kernel.
    Running {
        /// The CPU running the task.
        cpu: usize,
    },
}

/// One task as seen by [`Scheduler::tasks`] and [`Scheduler::info`] (for `ps`).
#[derive(Debug, PartialEq, Eq)]
pub struct TaskInfo<'a, T> {
    /// Its id.
    pub id: TaskId,
    /// Its state.
    pub state: State,
    /// The CPU it runs on, or last ran on / is queued on / was placed on.
    pub cpu: usize,
    /// Pinned to `cpu` (spawned with a CPU hint, and that CPU never went offline since).
    pub pinned: bool,
    /// Its parent, while the parent is alive.
    pub parent: Option<TaskId>,
    /// CPU time charged with [`Scheduler::charge`], in the caller's unit.
    pub cpu_time: u64,
    /// Marked by [`Scheduler::kill`] while running.
    pub kill_pending: bool,
    /// Its payload; `None` once it exited (the payload was handed back).
    pub payload: Option<&'a T>,
    /// Its name (at most [`NAME_LEN`] bytes).
    pub name: &'a str,
}

/// A task name, stored inline.
#[derive(Clone, Copy)]
struct Name {
    bytes: [u8; NAME_LEN],
    len: u8,
}

impl Name {
    fn new(s: &str) -> Self {
        let mut end = s.len().min(NAME_LEN);
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; NAME_LEN];
        for (d, b) in bytes.iter_mut().zip(s.as_bytes().iter().take(end)) {
            *d = *b;
        }
        Self {
            bytes,
            len: end as u8,
        }
    }

    fn as_str(&self) -> &str {
        let b = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        core::str::from_utf8(b).unwrap_or("")
    }
}

struct Task<T> {
    name: Name,
    state: State,
    /// Current CPU if Running, queue if Ready, else last CPU (or placement).
    cpu: usize,
    pinned: bool,
    parent: Option<TaskId>,
    cpu_time: u64,
    kill_pending: bool,
    /// `Some` exactly while the task has not exited.
    payload: Option<T>,
}

struct Slot<T> {
    generation: u32,
    task: Option<Task<T>>,
}

struct Cpu<T> {
    online: bool,
    current: Option<TaskId>,
    queue: VecDeque<TaskId>,
    /// Payloads of tasks that exited while running here, before this CPU's next `pick_next`.
    dying: Vec<T>,
    /// Payloads of tasks that exited while running here, for `take_dead`.
    dead: VecDeque<T>,
}

impl<T> Cpu<T> {
    fn load(&self) -> usize {
        self.queue.len() + usize::from(self.current.is_some())
    }
}

/// The scheduler of one kernel instance. `T` is the kernel's per-task payload. See the
/// [crate docs](crate).
pub struct Scheduler<T> {
    slots: Vec<Slot<T>>,
    /// Free slot indices, reused oldest first (a stale id stays stale the longest).
    free: VecDeque<u32>,
    max_tasks: usize,
    live: usize,
    cpus: Vec<Cpu<T>>,
    /// Tasks in all run queues together: an idle CPU with an empty queue learns from it, in one
    /// load, that there is nothing to steal (instead of looking at every CPU's queue).
    queued: usize,
    sleepers: BTreeSet<(u64, TaskId)>,
}

impl<T> fmt::Debug for Scheduler<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("tasks", &self.live)
            .field("max_tasks", &self.max_tasks)
            .field("cpus", &self.cpus.len())
            .field("sleepers", &self.sleepers.len())
            .finish()
    }
}

impl<T> Scheduler<T> {
    /// A scheduler for at most `max_tasks` tasks (zombies included; capped at `u32::MAX`) on
    /// CPUs `0..max_cpus`, all online. Slots are allocated as tasks are spawned.
    pub fn new(max_tasks: usize, max_cpus: usize) -> Self {
        let mut cpus = Vec::with_capacity(max_cpus);
        for _ in 0..max_cpus {
            cpus.push(Cpu {
                online: true,
                current: None,
                queue: VecDeque::new(),
                dying: Vec::new(),
                dead: VecDeque::new(),
            });
        }
        Self {
            slots: Vec::new(),
            free: VecDeque::new(),
            max_tasks: max_tasks.min(u32::MAX as usize),
            live: 0,
            cpus,
            queued: 0,
            sleepers: BTreeSet::new(),
        }
    }

    /// The `max_tasks` given to [`Scheduler::new`] (capped at `u32::MAX`).
    pub fn max_tasks(&self) -> usize {
        self.max_tasks
    }

    /// The `max_cpus` given to [`Scheduler::new`].
    pub fn max_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Whether `cpu` is online (`false` for a CPU index out of range).
    pub fn is_online(&self, cpu: usize) -> bool {
        self.cpus.get(cpu).is_some_and(|c| c.online)
    }

    // ---- lookups -------------------------------------------------------------------------

    fn task(&self, id: TaskId) -> Option<&Task<T>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_ref()
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task<T>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_mut()
    }

    /// A task that exists and has not exited.
    fn is_alive(&self, id: TaskId) -> bool {
        self.task(id)
            .is_some_and(|t| !matches!(t.state, State::Exited { .. }))
    }

    /// The payload of task `id` (`None`: no such task, or it exited).
    pub fn get(&self, id: TaskId) -> Option<&T> {
        self.task(id)?.payload.as_ref()
    }

    /// The payload of task `id`, mutably (`None`: no such task, or it exited).
    pub fn get_mut(&mut self, id: TaskId) -> Option<&mut T> {
        self.task_mut(id)?.payload.as_mut()
    }

    /// The state of task `id` (`None`: no such task).
    pub fn state(&self, id: TaskId) -> Option<State> {
        Some(self.task(id)?.state)
    }

    /// The CPU task `id` runs on, is queued on, or last ran on (`None`: no such task).
    pub fn cpu_of(&self, id: TaskId) -> Option<usize> {
        Some(self.task(id)?.cpu)
    }

    /// The parent of task `id`, while that parent is alive (`None`: no such task or none).
    pub fn parent_of(&self, id: TaskId) -> Option<TaskId> {
        self.task(id)?.parent
    }

    /// Whether [`Scheduler::kill`] marked the running task `id` (`false` for no such task).
    /// The kernel checks it when the task enters the kernel and then calls `exit`.
    pub fn kill_pending(&self, id: TaskId) -> bool {
        self.task(id).is_some_and(|t| t.kill_pending)
    }

    /// Everything about task `id` (`None`: no such task).
    pub fn info(&self, id: TaskId) -> Option<TaskInfo<'_, T>> {
        Some(Self::info_of(id, self.task(id)?))
    }

    fn info_of(id: TaskId, t: &Task<T>) -> TaskInfo<'_, T> {
        TaskInfo {
            id,
            state: t.state,
            cpu: t.cpu,
            pinned: t.pinned,
            parent: t.parent,
            cpu_time: t.cpu_time,
            kill_pending: t.kill_pending,
            payload: t.payload.as_ref(),
            name: t.name.as_str(),
        }
    }

    /// Every task (zombies included), by slot index.
    pub fn tasks(&self) -> impl Iterator<Item = TaskInfo<'_, T>> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let id = TaskId {
                index: i as u32,
                generation: s.generation,
            };
            Some(Self::info_of(id, s.task.as_ref()?))
        })
    }

    /// The number of tasks in the table, zombies included.
    pub fn count(&self) -> usize {
        self.live
    }

    /// The number of Ready tasks in `cpu`'s run queue (0 for a CPU out of range).
    pub fn ready_on(&self, cpu: usize) -> usize {
        self.cpus.get(cpu).map_or(0, |c| c.queue.len())
    }

    /// The task `cpu` runs (`None`: idle, or out of range).
    pub fn current(&self, cpu: usize) -> Option<TaskId> {
        self.cpus.get(cpu)?.current
    }

    /// The earliest [`Block::Sleep`] deadline, to program the timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.sleepers.first().map(|&(until, _)| until)
    }

    // ---- placement -----------------------------------------------------------------------

    /// The least loaded online CPU other than `except` (ties: the lowest index).
    fn least_loaded(&self, except: Option<usize>) -> Option<usize> {
        self.cpus
            .iter()
            .enumerate()
            .filter(|&(i, c)| c.online && Some(i) != except)
            .min_by_key(|&(i, c)| (c.load(), i))
            .map(|(i, _)| i)
    }

    /// Makes `id` Ready at the tail of its CPU's queue, or of the least loaded online CPU if
    /// its CPU is offline.
    fn enqueue(&mut self, id: TaskId) {
        let Some(last) = self.task(id).map(|t| t.cpu) else {
            return;
        };
        let cpu = if self.is_online(last) {
            last
        } else {
            // No CPU online only happens with no live task (hotplug refuses it); keep the
            // task on its last queue then, it is picked up when that CPU comes back.
            self.least_loaded(None).unwrap_or(last)
        };
        if let Some(t) = self.task_mut(id) {
            t.state = State::Ready;
            t.cpu = cpu;
        }
        self.push_ready(cpu, id);
    }

    /// Puts `id` at the tail of `cpu`'s run queue: the one way a queue grows, so that
    /// `queued` stays the sum of the queues' lengths.
    fn push_ready(&mut self, cpu: usize, id: TaskId) {
        if let Some(c) = self.cpus.get_mut(cpu) {
            c.queue.push_back(id);
            self.queued += 1;
        }
    }

    /// Checks that a task could be spawned with this parent and hint now, and returns the CPU
    /// it would be placed on; call it before building an expensive payload ([`Scheduler::spawn`]
    /// drops the payload when it refuses).
    pub fn check_spawn(
        &self,
        parent: Option<TaskId>,
        cpu_hint: Option<usize>,
    ) -> Result<usize, SpawnError> {
        if let Some(p) = parent
            && !self.is_alive(p)
        {
            return Err(SpawnError::NoSuchParent);
        }
        let cpu = match cpu_hint {
            Some(cpu) => match self.cpus.get(cpu) {
                None => return Err(SpawnError::NoSuchCpu { cpu }),
                Some(c) if !c.online => return Err(SpawnError::CpuOffline { cpu }),
                Some(_) => cpu,
            },
            None => self.least_loaded(None).ok_or(SpawnError::NoCpuOnline)?,
        };
        if self.live >= self.max_tasks
            || (self.free.is_empty() && self.slots.len() >= self.max_tasks)
        {
            return Err(SpawnError::TooManyTasks);
        }
        Ok(cpu)
    }

    /// Creates a Ready task at the tail of CPU `cpu_hint`'s queue (pinned there), or of the
    /// least loaded online CPU. `parent` must be alive (it can then [`reap`](Self::reap) it).
    /// The name is cut to [`NAME_LEN`] bytes. On error nothing changes and `payload` is
    /// dropped (see [`Scheduler::check_spawn`]).
    pub fn spawn(
        &mut self,
        name: &str,
        payload: T,
        parent: Option<TaskId>,
        cpu_hint: Option<usize>,
    ) -> Result<TaskId, SpawnError> {
        let cpu = self.check_spawn(parent, cpu_hint)?;
        let index = match self.free.pop_front() {
            Some(i) => i,
            None => {
                let i = self.slots.len();
                self.slots.push(Slot {
                    generation: 0,
                    task: None,
                });
                i as u32
            }
        };
        let slot = self
            .slots
            .get_mut(index as usize)
            .ok_or(SpawnError::TooManyTasks)?;
        slot.task = Some(Task {
            name: Name::new(name),
            state: State::Ready,
            cpu,
            pinned: cpu_hint.is_some(),
            parent,
            cpu_time: 0,
            kill_pending: false,
            payload: Some(payload),
        });
        let id = TaskId {
            index,
            generation: slot.generation,
        };
        self.live += 1;
        self.push_ready(cpu, id);
        Ok(id)
    }

    /// Frees slot `index` (its task must be gone from every queue and CPU).
    fn free_slot(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.task.take().is_none() {
            return;
        }
        self.live = self.live.saturating_sub(1);
        if let Some(g) = slot.generation.checked_add(1) {
            slot.generation = g;
            self.free.push_back(index);
        }
        // else: retired, so that no id is ever reused with the same generation.
    }

    // ---- hotplug -------------------------------------------------------------------------

    /// Brings `cpu` online or offline. Going offline, its queued Ready tasks move (in queue
    /// order) to the least loaded other online CPUs and become unpinned, and every task pinned
    /// to it is unpinned; returns the moved ids. Refused while `cpu` runs a task, and for the
    /// last online CPU while any task is alive. Going online (or offline when already offline)
    /// returns no ids.
    pub fn set_cpu_online(
        &mut self,
        cpu: usize,
        online: bool,
    ) -> Result<Vec<TaskId>, HotplugError> {
        let c = self.cpus.get(cpu).ok_or(HotplugError::NoSuchCpu { cpu })?;
        if online || !c.online {
            if let Some(c) = self.cpus.get_mut(cpu) {
                c.online = online;
            }
            return Ok(Vec::new());
        }
        if let Some(task) = c.current {
            return Err(HotplugError::Busy { cpu, task });
        }
        if self.least_loaded(Some(cpu)).is_none() && self.tasks().any(|t| t.payload.is_some()) {
            return Err(HotplugError::LastCpu { cpu });
        }
        let mut moved = Vec::new();
        if let Some(c) = self.cpus.get_mut(cpu) {
            c.online = false;
            moved.extend(c.queue.drain(..));
        }
        self.queued -= moved.len();
        for &id in &moved {
            let target = self.least_loaded(None).unwrap_or(cpu);
            if let Some(t) = self.task_mut(id) {
                t.cpu = target;
                t.pinned = false;
            }
            self.push_ready(target, id);
        }
        for t in self.slots.iter_mut().filter_map(|s| s.task.as_mut()) {
            if t.cpu == cpu {
                t.pinned = false;
            }
        }
        Ok(moved)
    }

    // ---- running -------------------------------------------------------------------------

    /// Makes every sleeper whose deadline is `<= now` Ready.
    fn wake_sleepers(&mut self, now: u64) {
        while let Some(&(until, id)) = self.sleepers.first() {
            if until > now {
                break;
            }
            self.sleepers.remove(&(until, id));
            self.enqueue(id);
        }
    }

    /// Chooses the task `cpu` runs next and makes it `Running { cpu }`; `None`: idle.
    ///
    /// In order: every sleeper due at `now` becomes Ready; payloads of tasks that exited while
    /// running on `cpu` become available to [`Scheduler::take_dead`]; if `cpu` still has a
    /// current task it is [preempted](Scheduler::preempt) (the kernel should have done so);
    /// then the head of `cpu`'s queue, else a task stolen from the back of the most loaded
    /// other queue (pinned tasks excepted). An offline or unknown CPU gets `None`.
    pub fn pick_next(&mut self, cpu: usize, now: u64) -> Option<TaskId> {
        self.wake_sleepers(now);
        let c = self.cpus.get_mut(cpu)?;
        // (Most passes find none: an idle CPU comes here on every pass of its serve loop.)
        if !c.dying.is_empty() {
            let dying = core::mem::take(&mut c.dying);
            c.dead.extend(dying);
        }
        if c.current.is_some() {
            self.preempt(cpu);
        }
        let c = self.cpus.get_mut(cpu)?;
        if !c.online {
            return None;
        }
        let id = match c.queue.pop_front() {
            Some(id) => id,
            None => self.steal(cpu)?,
        };
        self.queued -= 1;
        if let Some(t) = self.task_mut(id) {
            t.state = State::Running { cpu };
            t.cpu = cpu;
        }
        if let Some(c) = self.cpus.get_mut(cpu) {
            c.current = Some(id);
        }
        Some(id)
    }

    /// Tasks asleep ([`Block::Sleep`]) with a deadline not yet passed to [`pick_next`](Self::pick_next).
    pub fn sleepers(&self) -> usize {
        self.sleepers.len()
    }

    /// Whether `cpu` has nothing to do until someone else changes the scheduler: it runs
    /// nothing and holds no payload of an exited task, no task is queued on any CPU, and no
    /// task sleeps (a sleeper becomes due with time alone). Then [`pick_next`](Self::pick_next)
    /// on `cpu` gives `None` whatever `now`, and [`take_dead`](Self::take_dead) gives `None`:
    /// an idle loop may skip both until the next change. True for a CPU out of range.
    pub fn is_quiet(&self, cpu: usize) -> bool {
        self.queued == 0
            && self.sleepers.is_empty()
            && self
                .cpus
                .get(cpu)
                .is_none_or(|c| c.current.is_none() && c.dying.is_empty() && c.dead.is_empty())
    }

    /// Takes the unpinned task nearest the back of the longest other queue (ties: lowest CPU).
    fn steal(&mut self, thief: usize) -> Option<TaskId> {
        // The thief's own queue is empty, so nothing queued anywhere (the common idle case)
        // is known without looking at every CPU.
        if self.queued == 0 {
            return None;
        }
        let slots = &self.slots;
        let stealable = |id: &TaskId| {
            slots
                .get(id.index as usize)
                .and_then(|s| s.task.as_ref())
                .is_some_and(|t| !t.pinned)
        };
        // (victim, position, queue length)
        let mut best: Option<(usize, usize, usize)> = None;
        for (i, c) in self.cpus.iter().enumerate() {
            let len = c.queue.len();
            if i == thief || len == 0 || best.is_some_and(|(_, _, l)| l >= len) {
                continue;
            }
            if let Some(pos) = c.queue.iter().rposition(stealable) {
                best = Some((i, pos, len));
            }
        }
        let (victim, pos, _) = best?;
        self.cpus.get_mut(victim)?.queue.remove(pos)
    }

    /// Puts `cpu`'s current task back, Ready at the tail of `cpu`'s queue (round robin).
    /// No-op if `cpu` runs nothing.
    pub fn preempt(&mut self, cpu: usize) {
        let Some(id) = self.cpus.get_mut(cpu).and_then(|c| c.current.take()) else {
            return;
        };
        if let Some(t) = self.task_mut(id) {
            t.state = State::Ready;
            t.cpu = cpu;
        }
        self.push_ready(cpu, id);
    }

    /// Blocks `cpu`'s current task for `why`. No-op if `cpu` runs nothing.
    ///
    /// [`Block::Wait`] blocks only if `child` is a live (not exited) child of the task;
    /// otherwise nothing would wake it, and the task is [preempted](Self::preempt) instead
    /// (the kernel's wait loop then calls [`reap`](Self::reap) again and gets the status or
    /// the error). A [`Block::Sleep`] whose deadline has passed ends at the next `pick_next`.
    pub fn block(&mut self, cpu: usize, why: Block) {
        let Some(id) = self.current(cpu) else {
            return;
        };
        if let Block::Wait { child } = why {
            let waits_on_live_child = self
                .task(child)
                .is_some_and(|c| c.parent == Some(id) && !matches!(c.state, State::Exited { .. }));
            if !waits_on_live_child {
                self.preempt(cpu);
                return;
            }
        }
        if let Some(c) = self.cpus.get_mut(cpu) {
            c.current = None;
        }
        if let Some(t) = self.task_mut(id) {
            t.state = State::Blocked(why);
        }
        if let Block::Sleep { until } = why {
            self.sleepers.insert((until, id));
        }
    }

    /// Makes the Blocked task `id` Ready, at the tail of the queue of the CPU it last ran on
    /// (if online; else of the least loaded online CPU). `Ok` without change if it is Ready or
    /// Running; [`SchedError::Exited`] for a zombie.
    pub fn wake(&mut self, id: TaskId) -> Result<(), SchedError> {
        match self.task(id).ok_or(SchedError::NoSuchTask)?.state {
            State::Ready | State::Running { .. } => Ok(()),
            State::Exited { .. } => Err(SchedError::Exited),
            State::Blocked(why) => {
                if let Block::Sleep { until } = why {
                    self.sleepers.remove(&(until, id));
                }
                self.enqueue(id);
                Ok(())
            }
        }
    }

    /// Adds `ticks` (saturating) to the CPU time of task `id`; ignored for no such task.
    pub fn charge(&mut self, id: TaskId, ticks: u64) {
        if let Some(t) = self.task_mut(id) {
            t.cpu_time = t.cpu_time.saturating_add(ticks);
        }
    }

    // ---- ending --------------------------------------------------------------------------

    /// Ends task `id` with `status`, from any state but Exited (see [`Exit`] for what the
    /// kernel must clean up):
    ///
    /// * it leaves its queue, the sleepers, or its CPU (which becomes idle: the kernel then
    ///   calls `pick_next` on it); its payload is returned, or, if it was running, handed out
    ///   by [`Scheduler::take_dead`] on that CPU after that CPU's next `pick_next`;
    /// * its zombie children are freed and its live children become parentless;
    /// * with a live parent it becomes a zombie ([`State::Exited`]) until the parent
    ///   [reaps](Self::reap) it, and the parent is woken if it waits on it
    ///   ([`Block::Wait`]); without, its slot is freed at once.
    pub fn exit(&mut self, id: TaskId, status: u64) -> Result<Exit<T>, SchedError> {
        let t = self.task(id).ok_or(SchedError::NoSuchTask)?;
        let (state, queue_cpu, parent) = (t.state, t.cpu, t.parent);
        let mut running_on = None;
        match state {
            State::Exited { .. } => return Err(SchedError::Exited),
            State::Ready => {
                if let Some(c) = self.cpus.get_mut(queue_cpu) {
                    let before = c.queue.len();
                    c.queue.retain(|&q| q != id);
                    self.queued -= before - c.queue.len();
                }
            }
            State::Blocked(Block::Sleep { until }) => {
                self.sleepers.remove(&(until, id));
            }
            State::Blocked(_) => {}
            State::Running { cpu } => {
                if let Some(c) = self.cpus.get_mut(cpu)
                    && c.current == Some(id)
                {
                    c.current = None;
                }
                running_on = Some(cpu);
            }
        }
        let mut payload = None;
        if let Some(t) = self.task_mut(id) {
            t.state = State::Exited { status };
            t.kill_pending = false;
            payload = t.payload.take();
        }
        if let Some(cpu) = running_on
            && let (Some(c), Some(p)) = (self.cpus.get_mut(cpu), payload.take())
        {
            c.dying.push(p);
        }
        let zombies_freed = self.orphan_children(id);
        let live_parent = parent.filter(|&p| self.is_alive(p));
        let mut parent_woken = None;
        match live_parent {
            Some(p) => {
                if self.state(p) == Some(State::Blocked(Block::Wait { child: id })) {
                    self.enqueue(p);
                    parent_woken = Some(p);
                }
            }
            None => self.free_slot(id.index),
        }
        Ok(Exit {
            id,
            status,
            payload,
            running_on,
            parent_woken,
            zombie: live_parent.is_some(),
            zombies_freed,
        })
    }

    /// Frees the zombie children of `parent` and makes its live children parentless; returns
    /// the number of zombies freed.
    fn orphan_children(&mut self, parent: TaskId) -> usize {
        let mut zombies = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(t) = s.task.as_mut()
                && t.parent == Some(parent)
            {
                t.parent = None;
                if matches!(t.state, State::Exited { .. }) {
                    zombies.push(i as u32);
                }
            }
        }
        for &i in &zombies {
            self.free_slot(i);
        }
        zombies.len()
    }

    /// The payload of a task that exited while running on `cpu`, once `cpu` has called
    /// `pick_next` since (oldest first). The kernel calls it after each switch, until `None`.
    pub fn take_dead(&mut self, cpu: usize) -> Option<T> {
        self.cpus.get_mut(cpu)?.dead.pop_front()
    }

    /// Collects the exit status of `parent`'s child `child`: `Ok(Some(status))` frees the
    /// zombie (its id becomes stale); `Ok(None)`: the child is still alive (the caller then
    /// blocks with [`Block::Wait`]). [`SchedError::NoSuchTask`] if either id names no task,
    /// [`SchedError::NotChild`] if `child` is not `parent`'s child.
    pub fn reap(&mut self, parent: TaskId, child: TaskId) -> Result<Option<u64>, SchedError> {
        self.task(parent).ok_or(SchedError::NoSuchTask)?;
        let c = self.task(child).ok_or(SchedError::NoSuchTask)?;
        if c.parent != Some(parent) || child == parent {
            return Err(SchedError::NotChild);
        }
        match c.state {
            State::Exited { status } => {
                self.free_slot(child.index);
                Ok(Some(status))
            }
            _ => Ok(None),
        }
    }

    /// Kills task `id`: a Ready or Blocked task exits now with [`STATUS_KILLED`] (as
    /// [`Scheduler::exit`]); a running task is marked [kill pending](Self::kill_pending) and
    /// its CPU returned, for the kernel to interrupt it and call `exit` when it enters the
    /// kernel (if the kernel preempts or blocks it instead, the mark stays, and the next `kill`
    /// exits it at once). [`SchedError::Exited`] for a zombie.
    pub fn kill(&mut self, id: TaskId) -> Result<KillOutcome<T>, SchedError> {
        let t = self.task_mut(id).ok_or(SchedError::NoSuchTask)?;
        match t.state {
            State::Exited { .. } => Err(SchedError::Exited),
            State::Running { cpu } => {
                t.kill_pending = true;
                Ok(KillOutcome::Running { cpu })
            }
            State::Ready | State::Blocked(_) => {
                self.exit(id, STATUS_KILLED).map(KillOutcome::Exited)
            }
        }
    }

    // ---- checking ------------------------------------------------------------------------

    /// Checks every internal invariant (for tests and kernel debug builds); `Err` names the
    /// first one broken. Linear in slots, queued tasks and CPUs; allocates two bitmaps.
    pub fn check(&self) -> Result<(), &'static str> {
        // Queues first: members are Ready there, and each appears once overall.
        let mut queued = alloc::vec![false; self.slots.len()];
        let mut queued_count = 0;
        for (i, c) in self.cpus.iter().enumerate() {
            for &q in &c.queue {
                if self
                    .task(q)
                    .is_none_or(|t| t.state != State::Ready || t.cpu != i)
                {
                    return Err("queue holds a task that is not Ready there");
                }
                match queued.get_mut(q.index as usize) {
                    Some(seen) if !*seen => *seen = true,
                    _ => return Err("task queued twice"),
                }
                queued_count += 1;
            }
            if let Some(cur) = c.current
                && self.state(cur) != Some(State::Running { cpu: i })
            {
                return Err("CPU current is not Running on it");
            }
            if !c.online && (c.current.is_some() || !c.queue.is_empty()) {
                return Err("offline CPU runs or queues tasks");
            }
        }
        if queued_count != self.queued {
            return Err("the queued count is not the sum of the queues' lengths");
        }
        let mut live = 0;
        let mut ready = 0;
        let mut sleeping = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(t) = s.task.as_ref() else { continue };
            live += 1;
            let id = TaskId {
                index: i as u32,
                generation: s.generation,
            };
            let exited = matches!(t.state, State::Exited { .. });
            if exited == t.payload.is_some() {
                return Err("payload present iff not exited");
            }
            if t.cpu >= self.cpus.len() {
                return Err("task CPU out of range");
            }
            if t.pinned && !self.is_online(t.cpu) {
                return Err("task pinned to an offline CPU");
            }
            match t.parent {
                Some(p) if !self.is_alive(p) || p == id => {
                    return Err("parent is not a live task");
                }
                None if exited => return Err("zombie without a live parent"),
                _ => {}
            }
            match t.state {
                State::Ready => {
                    ready += 1;
                    if queued.get(i) != Some(&true) {
                        return Err("Ready task in no queue");
                    }
                }
                State::Running { cpu } => {
                    if self.current(cpu) != Some(id) || t.cpu != cpu {
                        return Err("Running task is not its CPU's current");
                    }
                }
                State::Blocked(Block::Sleep { until }) => {
                    sleeping += 1;
                    if !self.sleepers.contains(&(until, id)) {
                        return Err("sleeper missing from the sleepers");
                    }
                }
                State::Blocked(_) => {}
                State::Exited { .. } => {
                    if t.kill_pending {
                        return Err("kill pending on a zombie");
                    }
                }
            }
        }
        if live != self.live || live > self.max_tasks {
            return Err("task count wrong");
        }
        if queued_count != ready {
            return Err("queued tasks are not exactly the Ready tasks");
        }
        if sleeping != self.sleepers.len() {
            return Err("sleepers hold a task that is not sleeping");
        }
        let mut free = alloc::vec![false; self.slots.len()];
        for &i in &self.free {
            match (self.slots.get(i as usize), free.get_mut(i as usize)) {
                (Some(s), Some(seen)) if s.task.is_none() && !*seen => *seen = true,
                _ => return Err("free list holds a used slot, or a slot twice"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
