//! The pause process's life: set up and pin the namespaces, drop every
//! privilege, report readiness, then reap zombies until told to stop.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use rustix::thread::{
    CapabilitySet, CapabilitySets, UnshareFlags, clear_ambient_capability_set,
    remove_capability_from_bounding_set, set_capabilities, set_no_new_privs,
};

use super::pins::{Pins, pid_file};
use super::{Namespace, PauseConfig, PauseError};
use crate::sys::{self, Forked};

/// Runs the pause process described by `config` and returns its exit code
/// once it has been told to stop (0 on SIGTERM or SIGINT).
///
/// Must be called from a single-threaded process (the `berth-pause`
/// binary): it unshares namespaces and, with [`Namespace::Pid`], forks.
pub fn run(config: &PauseConfig) -> Result<i32, PauseError> {
    // Blocked before anything else so that a SIGTERM arriving during set-up
    // waits for the loop instead of killing the process half-way; the
    // forked init inherits the mask.
    let signals = stop_and_child_signals();
    signals
        .thread_block()
        .map_err(|e| PauseError::io("blocking SIGTERM, SIGINT and SIGCHLD", e))?;

    let dir = &config.state_dir;
    let pins = Pins::create(dir, &config.namespaces)?;
    let flags = config
        .namespaces
        .iter()
        .fold(UnshareFlags::empty(), |f, n| f | n.unshare_flag());
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
    if let Some(hostname) = &config.hostname {
        rustix::system::sethostname(hostname.as_bytes())
            .map_err(|e| PauseError::io(format!("setting hostname {hostname:?}"), e))?;
    }
    for sysctl in &config.sysctls {
        sysctl.apply()?;
    }

    let init = if config.namespaces.contains(&Namespace::Pid) {
        let init = start_init(&signals)?;
        let source = format!("/proc/{}/ns/pid", init.pid);
        pins.pin(Namespace::Pid, Path::new(&source))?;
        Some(init)
    } else {
        None
    };

    let pid_file = PidFile::write(dir)?;
    drop_privileges()?;
    pins.keep();
    let init = init.map(Init::keep);
    announce_ready();

    let code = match init {
        Some(pid) => supervise_init(pid, &signals),
        None => reap_until_stopped(&signals),
    };
    drop(pid_file);
    code
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
