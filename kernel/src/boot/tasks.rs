//! Tasks in a booting instance: the scheduler and system calls on its first CPU, then its
//! first program (`init`, in the kernel users run).

/// Sets up tasks and system calls on the instance's first CPU (its further CPUs set up
/// `SYSCALL` themselves as they join, and run tasks from their idle loop).
pub fn start_tasks() {
    if let Err(e) = crate::tasks::sched::init() {
        crate::error!("tasks: {e}");
        return;
    }
    if crate::syscalls::init().is_err() {
        crate::error!("system calls: the handler hook is taken");
    }
    crate::syscalls::init_this_cpu();
    crate::tasks::sched::start_further_cpus_work();
    let (smep, smap) = crate::arch::syscall::protections();
    crate::debug!(
        "tasks: SYSCALL set up; SMEP {}, SMAP {}",
        if smep { "on" } else { "absent" },
        if smap { "on" } else { "absent" }
    );
}

#[cfg_attr(feature = "qemu-tests", allow(dead_code))]
/// Starts this instance's first task (every instance but 0, in the kernel users run): the
/// command line in the ramdisk's `etc/init.<instance>` if there is one, else `init`.
pub fn start_init() {
    let me = crate::instance::id();
    let custom = crate::memory::ramdisk::file(&alloc::format!("etc/init.{me}"))
        .and_then(|b| core::str::from_utf8(b).ok())
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let line = custom.unwrap_or("init");
    match crate::tasks::sched::spawn(line, None, None) {
        Ok(id) => crate::info!("started {line:?} as task {id}"),
        Err(e) => crate::warn!("could not start {line:?}: {e}"),
    }
}
