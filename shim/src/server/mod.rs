//! The shim proper (binary `berth-shim`): one process per container and per
//! pod sandbox that runs the task, reaps it, records its exit, and serves
//! containerd's shim v2 Task API over ttrpc on a unix socket.
//!
//! `berth-shim ... start` daemonizes ([`start`]), `berth-shim ... delete`
//! cleans up after a shim that cannot be reached ([`delete`]); see
//! [`USAGE`]. The shim is synchronous on purpose (ttrpc's sync server, one
//! reaper thread, no async runtime): it exists once per container, so its
//! resident memory is the budget.
//!
//! Inside: `service` (the Task API, translation only) over `task` (the
//! supervisor: create, start, kill, exec, exit records), `monitor` (the one
//! reaper), `stdio` and `pump` (a process's stdio, moved by one poll(2)
//! thread per process), `cri_log` (the CRI log format), `console` (ptys
//! from the runtime), [`attach`] (the attach socket and its protocol),
//! [`events`] (the events publisher), `oom` (OOM kill counts).
//!
//! State dir layout (all files written atomically):
//! - `shim.sock`: the ttrpc socket (or, when that path is too long for a
//!   unix socket, `/run/berth/s/<hash>.sock`);
//! - `address`: the socket's address, `unix://<path>`;
//! - `attach.sock` and `attach-address`: a running container's attach
//!   socket and its address (same path rule: `/run/berth/s/<hash>-attach.sock`),
//!   see [`attach`];
//! - `shim.pid`: the shim's pid;
//! - `task`: what `delete` needs to clean up the task (kind, pid, runtime);
//! - `exit`: the task's [`ExitRecord`](crate::exit::ExitRecord);
//! - `shim.log`: the shim's stderr.

mod args;
pub mod attach;
mod console;
mod cri_log;
mod delete;
pub mod events;
mod monitor;
mod oom;
mod pump;
mod record;
mod service;
mod start;
mod stdio;
mod task;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

pub use args::{Action, ShimArgs, USAGE};
pub use delete::delete;
pub use start::start;

/// The file holding the shim's socket address.
pub const ADDRESS_FILE: &str = "address";
/// The file holding the shim's pid.
pub const PID_FILE: &str = "shim.pid";
/// The shim's log (its stderr).
pub const LOG_FILE: &str = "shim.log";
/// The attach socket's name in the state dir.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// The file holding the attach socket's address.
pub const ATTACH_ADDRESS_FILE: &str = "attach-address";
/// Where short socket paths go when `<state-dir>/shim.sock` is too long.
pub const SHORT_SOCKET_DIR: &str = "/run/berth/s";
/// The longest socket path a `sockaddr_un` holds (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why the shim could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The command line is wrong.
    #[error("{0}\n{USAGE}")]
    Usage(String),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The ttrpc server could not be set up.
    #[error("ttrpc server on {address}: {source}")]
    Server {
        /// The socket address.
        address: String,
        /// The underlying error.
        source: ttrpc::Error,
    },
    /// The daemonized shim failed before it listened.
    #[error("the shim did not start: {0}")]
    NotStarted(String),
    /// A state file could not be written or read.
    #[error(transparent)]
    Exit(#[from] crate::exit::ExitError),
}

impl ShimError {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Runs the shim's command line (without the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<(), ShimError> {
    let args = ShimArgs::parse(args)?;
    match args.action {
        Action::Start => start(&args),
        Action::Delete => delete(&args),
    }
}

/// The socket path for a shim whose state dir is `state_dir`:
/// `<state-dir>/shim.sock`, or a short path under [`SHORT_SOCKET_DIR`] named
/// after a hash of the state dir when that is too long.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    let inside = state_dir.join("shim.sock");
    if inside.as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    Path::new(SHORT_SOCKET_DIR).join(format!("{:016x}.sock", hash(state_dir)))
}

/// The path of the shim's socket `name` (`attach.sock`, a console
/// socket): `<state-dir>/<name>`, or `<hash>-<name>` under
/// [`SHORT_SOCKET_DIR`] when that is too long, as for [`socket_path`].
pub fn named_socket_path(state_dir: &Path, name: &str) -> PathBuf {
    let inside = state_dir.join(name);
    if inside.as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    Path::new(SHORT_SOCKET_DIR).join(format!("{:016x}-{name}", hash(state_dir)))
}

/// FNV-1a of a path: stable across builds, unlike std's hasher.
fn hash(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The address of the attach socket of the task in `state_dir`
/// (`unix://<path>`), while its init runs; see [`attach`].
pub fn read_attach_address(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(ATTACH_ADDRESS_FILE))
        .ok()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
}

/// The shim's address as recorded in its state dir (`None` when no shim
/// ever listened there).
pub fn read_address(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(ADDRESS_FILE))
        .ok()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_state_dirs_get_a_short_stable_socket_path() {
        let short = Path::new("/run/berth/shim/k8s.io/abc");
        assert_eq!(socket_path(short), short.join("shim.sock"));
        let long = PathBuf::from(format!("/run/berth/shim/k8s.io/{}", "a".repeat(100)));
        let path = socket_path(&long);
        assert!(path.starts_with(SHORT_SOCKET_DIR));
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(path, socket_path(&long));
        assert_ne!(path, socket_path(&long.join("b")));
        assert_eq!(
            named_socket_path(short, "attach.sock"),
            short.join("attach.sock")
        );
        let attach = named_socket_path(&long, "attach.sock");
        assert!(
            attach.starts_with(SHORT_SOCKET_DIR) && attach.as_os_str().len() <= MAX_SOCKET_PATH
        );
        assert_ne!(attach, path);
    }
}
