//! The crate's only unsafe code: `fork` and `unshare`, which are sound only
//! in a process that has a single thread, and glibc's `mallopt`; and the
//! other process-wide set-up the shim does when it daemonizes (`setsid`,
//! `PR_SET_CHILD_SUBREAPER`), kept here so every call that changes the
//! process itself is in one place.

use std::io;

use nix::unistd::{ForkResult, Pid};
use rustix::thread::UnshareFlags;

/// Which side of a [`fork`] the caller is on.
pub(crate) enum Forked {
    /// The original process; holds the child's pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// Fails unless the calling process has exactly one thread, the condition
/// under which `fork` and `unshare` are sound.
fn ensure_single_threaded(what: &str) -> io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads == 1 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} needs a single-threaded process, this one has {threads} threads"
        )))
    }
}

/// `fork(2)`, refused in a multi-threaded process.
pub(crate) fn fork() -> io::Result<Forked> {
    ensure_single_threaded("fork")?;
    // SAFETY: the process has one thread (checked just above, and nothing in
    // this crate starts threads), so the child inherits no lock held by
    // another thread and may run any code, allocations included.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// `unshare(2)` of namespaces only (never `CLONE_FILES`, `CLONE_FS` or
/// `CLONE_SIGHAND`-like flags), refused in a multi-threaded process (which
/// the kernel also refuses for `CLONE_NEWUSER`).
pub(crate) fn unshare_namespaces(flags: UnshareFlags) -> io::Result<()> {
    let namespaces = UnshareFlags::NEWNET
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWUSER;
    if !namespaces.contains(flags) {
        return Err(io::Error::other(format!(
            "unshare_namespaces was given flags other than namespaces: {flags:?}"
        )));
    }
    ensure_single_threaded("unshare")?;
    // SAFETY: rustix marks unshare unsafe because `CLONE_FILES` would split
    // the fd table under other threads' feet; the flags are namespace flags
    // only (checked above) and the process has a single thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

/// `setsid(2)`: the calling process leaves its parent's session and process
/// group, so neither a terminal hang-up nor a signal to the caller's group
/// reaches it.
pub(crate) fn setsid() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// `prctl(PR_SET_CHILD_SUBREAPER)`: orphaned descendants (a container's
/// init once `runc create` exits) are re-parented to this process, which can
/// then reap them and learn how they exited.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Makes every thread allocate from the process's main heap. glibc gives
/// each new thread an arena of its own, whose pages stay resident; the
/// shim's threads mostly sleep, allocate little, and are paid for once per
/// container. Call it before the first thread starts. (Other C libraries
/// have no per-thread arenas: nothing to do.)
pub(crate) fn use_one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets a parameter of glibc's allocator; it is
        // called while the process has one thread, before any other
        // thread could allocate concurrently.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
    }
}
