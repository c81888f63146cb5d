//! The pause process's life: set up and pin the namespaces, drop every
//! privilege, report readiness, then reap zombies until told to stop.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::process::{Gid, Uid};
use rustix::thread::{
    CapabilitySet, CapabilitySets, UnshareFlags, clear_ambient_capability_set,
    remove_capability_from_bounding_set, set_capabilities, set_no_new_privs, set_thread_groups,
    set_thread_res_gid, set_thread_res_uid,
};

use super::pins::{Pins, pid_file};
use super::{Namespace, PauseConfig, PauseError, UserNamespace};
use crate::sys::{self, Forked};

/// Runs the pause process described by `config` and returns its exit code
/// once it has been told to stop (0 on SIGTERM or SIGINT).
///
/// Must be called from a single-threaded process (the `berth-pause`
/// binary): it unshares namespaces and, with [`Namespace::Pid`] or a user
/// namespace, forks.
pub fn run(config: &PauseConfig) -> Result<i32, PauseError> {
    // Blocked before anything else so that a SIGTERM arriving during set-up
    // waits for the loop instead of killing the process half-way; the
    // forked init inherits the mask.
    let signals = stop_and_child_signals();
    signals
        .thread_block()
        .map_err(|e| PauseError::io("blocking SIGTERM, SIGINT and SIGCHLD", e))?;

    let mut pinned = config.namespaces.clone();
    if config.user_namespace.is_some() {
        pinned.push(Namespace::User);
    }
    let pins = Pins::create(&config.state_dir, &pinned)?;
    match &config.user_namespace {
        None => run_here(config, pins, &signals),
        Some(userns) => run_in_user_namespace(config, userns, pins, &signals),
    }
}

/// Without a user namespace: this process unshares, pins and stays.
fn run_here(config: &PauseConfig, pins: Pins, signals: &SigSet) -> Result<i32, PauseError> {
    let flags = unshare_flags(&config.namespaces);
    if !flags.is_empty() {
        sys::unshare_namespaces(flags).map_err(|e| {
            PauseError::io(format!("unsharing namespaces {:?}", config.namespaces), e)
        })?;
    }
    for &namespace in &config.namespaces {
        if namespace != Namespace::Pid {
            let source = format!("/proc/self/ns/{}", namespace.name());
            pins.pin(namespace, Path::new(&source))?;
        }
    }
    configure(config)?;

    let init = if config.namespaces.contains(&Namespace::Pid) {
        let init = start_init(signals)?;
        let source = format!("/proc/{}/ns/pid", init.pid);
        pins.pin(Namespace::Pid, Path::new(&source))?;
        Some(init)
    } else {
        None
    };

    let pid_file = PidFile::write(&config.state_dir)?;
    drop_privileges()?;
    pins.keep();
    let init = init.map(Init::keep);
    announce_ready();

    let code = match init {
        Some(pid) => supervise_init(pid, signals),
        None => reap_until_stopped(signals),
    };
    drop(pid_file);
    code
}

fn unshare_flags(namespaces: &[Namespace]) -> UnshareFlags {
    namespaces
        .iter()
        .fold(UnshareFlags::empty(), |f, n| f | n.unshare_flag())
}

/// Sets the hostname and the sysctls, inside the new namespaces.
fn configure(config: &PauseConfig) -> Result<(), PauseError> {
    if let Some(hostname) = &config.hostname {
        rustix::system::sethostname(hostname.as_bytes())
            .map_err(|e| PauseError::io(format!("setting hostname {hostname:?}"), e))?;
    }
    for sysctl in &config.sysctls {
        sysctl.apply()?;
    }
    Ok(())
}

/// The handshake bytes between the pause process and the child that
/// enters the user namespace.
mod handshake {
    /// Child to parent: the user namespace exists, write its ID maps.
    pub(super) const UNSHARED: u8 = b'u';
    /// Parent to child: the ID maps are written.
    pub(super) const MAPPED: u8 = b'm';
    /// Child to parent: every namespace exists and the child has dropped
    /// its privileges; pin them.
    pub(super) const READY: u8 = b'r';
}

/// With a user namespace: a forked child enters it and creates the other
/// namespaces inside it, while this process, still privileged on the host,
/// writes the child's ID maps, pins its namespaces and supervises it.
fn run_in_user_namespace(
    config: &PauseConfig,
    userns: &UserNamespace,
    pins: Pins,
    signals: &SigSet,
) -> Result<i32, PauseError> {
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| PauseError::io("creating a handshake pipe", e))
    };
    let (from_child, to_parent) = pipe()?;
    let (from_parent, to_child) = pipe()?;
    let child =
        match sys::fork().map_err(|e| PauseError::io("forking the user namespace's process", e))? {
            Forked::Child => {
                drop((from_child, to_child));
                // Never unwind into the parent's frames: their guards would
                // release the pins the parent holds.
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    userns_child_main(config, to_parent, from_parent, signals)
                }))
                .unwrap_or(101);
                std::process::exit(code);
            }
            Forked::Parent(pid) => {
                drop((to_parent, from_parent));
                Init { pid }
            }
        };
    let failed = |child: Init, step: &str| {
        let pid = child.pid;
        let status = match waitpid(pid, None) {
            Ok(status) => format!("{status:?}"),
            Err(e) => format!("unknown ({e})"),
        };
        std::mem::forget(child);
        PauseError::InitFailed {
            pid: pid.as_raw(),
            status: format!("{status} (before {step})"),
        }
    };
    if !receive(&from_child, handshake::UNSHARED) {
        return Err(failed(child, "unsharing its user namespace"));
    }
    write_id_maps(child.pid, userns)?;
    rustix::io::write(&to_child, &[handshake::MAPPED])
        .map_err(|e| PauseError::io("telling the child its ID maps are written", e))?;
    if !receive(&from_child, handshake::READY) {
        return Err(failed(child, "creating the pod's namespaces"));
    }
    let pid = child.pid.as_raw();
    pins.pin(Namespace::User, Path::new(&format!("/proc/{pid}/ns/user")))?;
    for &namespace in &config.namespaces {
        // The child's own PID namespace is the host's; the pod's is the one
        // its children (the forked init) live in.
        let name = match namespace {
            Namespace::Pid => "pid_for_children",
            other => other.name(),
        };
        pins.pin(namespace, Path::new(&format!("/proc/{pid}/ns/{name}")))?;
    }

    let pid_file = PidFile::write(&config.state_dir)?;
    drop_privileges()?;
    pins.keep();
    let child = child.keep();
    announce_ready();
    let code = supervise_init(child, signals);
    drop(pid_file);
    code
}

/// Reads one handshake byte; false on end-of-file (the other side died) or
/// any other byte.
fn receive(fd: &OwnedFd, expected: u8) -> bool {
    let mut byte = [0u8; 1];
    matches!(rustix::io::read(fd, &mut byte), Ok(1)) && byte[0] == expected
}

/// Writes `/proc/<pid>/uid_map` and `gid_map` with the pod's single
/// mapping. `setgroups` stays allowed: the writer is privileged, and the
/// pod's containers join this namespace with supplementary groups.
fn write_id_maps(pid: Pid, userns: &UserNamespace) -> Result<(), PauseError> {
    for (file, map) in [("uid_map", userns.uid), ("gid_map", userns.gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map.proc_line())
            .map_err(|e| PauseError::io(format!("writing {path} ({})", map.to_arg()), e))?;
    }
    Ok(())
}

/// The child that enters the pod's user namespace: unshares it, waits for
/// its ID maps, becomes its root, creates the other namespaces inside it,
/// drops its privileges, says so, then reaps (or supervises the PID
/// namespace's init) like a pause process without a user namespace.
fn userns_child_main(
    config: &PauseConfig,
    to_parent: OwnedFd,
    from_parent: OwnedFd,
    signals: &SigSet,
) -> i32 {
    let started = (|| {
        sys::unshare_namespaces(UnshareFlags::NEWUSER)
            .map_err(|e| PauseError::io("unsharing the user namespace", e))?;
        rustix::io::write(&to_parent, &[handshake::UNSHARED])
            .map_err(|e| PauseError::io("asking for the ID maps", e))?;
        if !receive(&from_parent, handshake::MAPPED) {
            return Err(PauseError::io(
                "waiting for the ID maps",
                std::io::Error::other("the parent hung up before writing them"),
            ));
        }
        become_root()?;
        // Set only now: changing credentials clears it. Until here a dead
        // parent shows as end-of-file on the handshake pipe.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| PauseError::io("setting the parent-death signal", e))?;
        let flags = unshare_flags(&config.namespaces);
        if !flags.is_empty() {
            sys::unshare_namespaces(flags).map_err(|e| {
                PauseError::io(
                    format!(
                        "unsharing namespaces {:?} in the user namespace",
                        config.namespaces
                    ),
                    e,
                )
            })?;
        }
        configure(config)?;
        let init = if config.namespaces.contains(&Namespace::Pid) {
            Some(start_init(signals)?)
        } else {
            None
        };
        drop_privileges()?;
        rustix::io::write(&to_parent, &[handshake::READY])
            .map_err(|e| PauseError::io("reporting readiness", e))?;
        Ok::<_, PauseError>(init.map(Init::keep))
    })();
    drop((to_parent, from_parent));
    let result = started.and_then(|init| match init {
        Some(pid) => supervise_init(pid, signals),
        None => reap_until_stopped(signals),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-pause (user namespace): {e}");
            1
        }
    }
}

/// Becomes uid and gid 0 of the (mapped) user namespace, without the
/// host's supplementary groups. The process has one thread, so the
/// per-thread calls change the whole process.
fn become_root() -> Result<(), PauseError> {
    let root_uid = Uid::ROOT;
    let root_gid = Gid::ROOT;
    set_thread_groups(&[]).map_err(|e| PauseError::io("dropping supplementary groups", e))?;
    set_thread_res_gid(root_gid, root_gid, root_gid)
        .map_err(|e| PauseError::io("becoming gid 0 of the user namespace", e))?;
    set_thread_res_uid(root_uid, root_uid, root_uid)
        .map_err(|e| PauseError::io("becoming uid 0 of the user namespace", e))
}

fn stop_and_child_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set
}

/// The forked init of the new PID namespace, killed and reaped if set-up
/// fails before [`Init::keep`].
struct Init {
    pid: Pid,
}

impl Init {
    fn keep(self) -> Pid {
        let pid = self.pid;
        std::mem::forget(self);
        pid
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Forks the PID namespace's init and waits until it has dropped its
/// privileges. The child never returns from here.
fn start_init(signals: &SigSet) -> Result<Init, PauseError> {
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| PauseError::io("creating the readiness pipe", e))?;
    match sys::fork().map_err(|e| PauseError::io("forking the PID namespace's init", e))? {
        Forked::Child => {
            drop(ready_read);
            // Never unwind into the parent's frames: their guards would
            // release the pins the parent still holds.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                init_main(ready_write, signals)
            }))
            .unwrap_or(101);
            std::process::exit(code);
        }
        Forked::Parent(pid) => {
            drop(ready_write);
            let init = Init { pid };
            let mut byte = [0u8; 1];
            let ready = matches!(rustix::io::read(&ready_read, &mut byte), Ok(1));
            if ready {
                return Ok(init);
            }
            let status = match waitpid(pid, None) {
                Ok(status) => format!("{status:?}"),
                Err(e) => format!("unknown ({e})"),
            };
            std::mem::forget(init);
            Err(PauseError::InitFailed {
                pid: pid.as_raw(),
                status,
            })
        }
    }
}

/// PID 1 of the pod's PID namespace: dies with the outer pause process,
/// drops its privileges, says so on `ready`, then reaps the pod's orphans.
fn init_main(ready: OwnedFd, signals: &SigSet) -> i32 {
    let started = (|| {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| PauseError::io("setting the parent-death signal", e))?;
        drop_privileges()?;
        rustix::io::write(ready.as_fd(), b"r")
            .map_err(|e| PauseError::io("reporting readiness", e))?;
        Ok::<(), PauseError>(())
    })();
    drop(ready);
    match started.and_then(|()| reap_until_stopped(signals)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-pause (PID namespace init): {e}");
            1
        }
    }
}

/// Drops every capability (bounding, ambient, then effective, permitted and
/// inheritable, in the order that keeps `CAP_SETPCAP` until it is last
/// needed) and sets no_new_privs, so nothing this process could exec would
/// regain any.
fn drop_privileges() -> Result<(), PauseError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    for cap in 0..=last {
        match remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap)) {
            // A capability newer than the kernel knows.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => {
                return Err(PauseError::io(
                    format!("dropping capability {cap} from the bounding set"),
                    e,
                ));
            }
        }
    }
    clear_ambient_capability_set()
        .map_err(|e| PauseError::io("clearing the ambient capabilities", e))?;
    set_no_new_privs(true).map_err(|e| PauseError::io("setting no_new_privs", e))?;
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| PauseError::io("dropping every capability", e))
}

/// `<state dir>/pause.pid`, removed when dropped: on a failed start and on
/// a clean stop. A SIGKILLed pause leaves it behind for `unpin`.
struct PidFile {
    path: std::path::PathBuf,
}

impl PidFile {
    /// Writes our pid to a temporary file and renames it into place, so a
    /// reader never sees a partial pid.
    fn write(dir: &Path) -> Result<Self, PauseError> {
        let path = pid_file(dir);
        let tmp = dir.join(format!(".{}.tmp", super::PID_FILE));
        let pid = std::process::id();
        std::fs::write(&tmp, format!("{pid}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                PauseError::io(format!("writing {}", path.display()), e)
            })?;
        Ok(Self { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Prints our pid on stdout, then points stdout at /dev/null so a
/// supervisor reading it sees end-of-file right after the line.
fn announce_ready() {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", std::process::id());
    let _ = stdout.flush();
    drop(stdout);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// Reaps every exited child (the pod's orphans, when this is PID 1 of its
/// namespace) until SIGTERM or SIGINT; returns 0 then.
fn reap_until_stopped(signals: &SigSet) -> Result<i32, PauseError> {
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match signals.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(0),
            Ok(_) => {}
            Err(e) => return Err(PauseError::io("waiting for signals", e)),
        }
    }
}

/// Forwards SIGTERM and SIGINT to the PID namespace's init and exits with its
/// status (128 + signal if it was killed).
fn supervise_init(init: Pid, signals: &SigSet) -> Result<i32, PauseError> {
    loop {
        match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => {}
            Err(e) => return Err(PauseError::io("waiting for the PID namespace's init", e)),
        }
        match signals.wait() {
            Ok(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                let _ = kill(init, signal);
            }
            Ok(_) => {}
            Err(e) => return Err(PauseError::io("waiting for signals", e)),
        }
    }
}
