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
//! State dir layout (all files written atomically):
//! - `shim.sock`: the ttrpc socket (or, when that path is too long for a
//!   unix socket, `/run/berth/s/<hash>.sock`);
//! - `address`: the socket's address, `unix://<path>`;
//! - `shim.pid`: the shim's pid;
//! - `task`: what `delete` needs to clean up the task (kind, pid, runtime);
//! - `exit`: the task's [`ExitRecord`](crate::exit::ExitRecord);
//! - `shim.log`: the shim's stderr.

mod args;
mod cri_log;
mod delete;
pub mod events;
mod monitor;
mod oom;
mod record;
mod service;
mod start;
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
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    Path::new(SHORT_SOCKET_DIR).join(format!("{hash:016x}.sock"))
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
    }
}
