//! The pause process: holds a pod's namespaces for the pod's whole life.
//!
//! `berth-pause --state-dir DIR --net --ipc --uts [--pid] [--hostname NAME]
//! [--sysctl KEY=VALUE]... [--uid-map C:H:N --gid-map C:H:N]` unshares the
//! namespaces it is asked for, sets the hostname and the sysctls inside
//! them, pins each namespace with a bind mount on `DIR/ns/<name>` (so it
//! outlives the process), drops every capability, reports readiness
//! (`DIR/pause.pid`, written atomically, then its pid on one stdout line)
//! and then reaps zombies until SIGTERM or SIGINT, when it exits 0. With
//! `--pid` it forks: the child is PID 1 of the new PID namespace and reaps
//! the pod's orphans, the parent forwards SIGTERM/SIGINT to it and exits
//! with its status.
//!
//! With `--uid-map`/`--gid-map` the pod gets a user namespace that owns all
//! its other namespaces. A process cannot give itself an arbitrary ID map,
//! and once inside a new user namespace it can no longer mount on the
//! host, so the pause process forks: the child unshares the user namespace
//! and waits; the parent, still root on the host, writes the child's
//! `uid_map` and `gid_map`; the child becomes root of the new namespace and
//! creates the net/ipc/uts(/pid) namespaces inside it; the parent pins
//! every one of them (`ns/user` too) and then supervises the child as it
//! would a PID namespace's init.
//!
//! On any error it prints one line on stderr, exits non-zero and leaves no
//! pin, pin file or pid file behind. The pins outlive a clean exit on
//! purpose: the supervisor releases them with [`unpin`] when the pod is
//! removed, or when its pause died.

mod config;
mod pins;
mod process;
mod sysctl;

use std::io;
use std::path::PathBuf;

pub use config::{Command, IdMap, PauseConfig, USAGE, UserNamespace};
pub use pins::{PID_FILE, ns_dir, pid_file, pin_path, unpin};
pub use process::run;
pub use sysctl::Sysctl;

/// A namespace the pause process can create and pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Network namespace (`--net`).
    Net,
    /// System V IPC and POSIX message queue namespace (`--ipc`).
    Ipc,
    /// Hostname and NIS domain name namespace (`--uts`).
    Uts,
    /// PID namespace shared by the pod's containers (`--pid`).
    Pid,
    /// User namespace owning the others (`--uid-map`/`--gid-map`).
    User,
}

impl Namespace {
    /// Every namespace, in the order they are pinned.
    pub const ALL: [Namespace; 5] = [Self::Net, Self::Ipc, Self::Uts, Self::Pid, Self::User];

    /// The namespace's name in `/proc/<pid>/ns/` and the pin's file name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Pid => "pid",
            Self::User => "user",
        }
    }

    fn unshare_flag(self) -> rustix::thread::UnshareFlags {
        use rustix::thread::UnshareFlags;
        match self {
            Self::Net => UnshareFlags::NEWNET,
            Self::Ipc => UnshareFlags::NEWIPC,
            Self::Uts => UnshareFlags::NEWUTS,
            Self::Pid => UnshareFlags::NEWPID,
            Self::User => UnshareFlags::NEWUSER,
        }
    }
}

/// Why the pause process could not start (or could not be cleaned up).
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The command line is wrong; the message says how.
    #[error("{0} (see berth-pause --help)")]
    Usage(String),
    /// A sysctl would not stay inside the pod's namespaces.
    #[error("sysctl {key} refused: {reason}")]
    SysctlRefused {
        /// The sysctl as given.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path or value involved.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The PID namespace's init (the forked child) exited before it was
    /// ready; it printed its own error on stderr.
    #[error("the PID namespace's init (pid {pid}) exited before it was ready: {status}")]
    InitFailed {
        /// The child's pid in the caller's PID namespace.
        pid: i32,
        /// How it ended.
        status: String,
    },
    /// The state directory already holds pins or a pid file: another pause
    /// process owns it, or a dead one was not cleaned up with [`unpin`].
    #[error("{} already exists: the state dir is in use or was not released with unpin", .0.display())]
    InUse(PathBuf),
}

impl PauseError {
    /// Wraps an error with what was being done.
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}
