//! The exit record: how a task's init process ended, as the shim writes it
//! (atomically) in its state dir before it reports the exit to anyone.
//!
//! The file is `<state-dir>/exit`, one `key=value` per line:
//!
//! ```text
//! pid=1234
//! exit_status=143
//! signal=9
//! exited_at=1764216000.123456789
//! oom_killed=true
//! ```
//!
//! `exit_status` follows containerd: the exit code, or 128 + the signal
//! number when the process was killed by a signal (`signal` is then set, and
//! absent otherwise). `exited_at` is seconds.nanoseconds since the Unix
//! epoch. `oom_killed` says whether the kernel's OOM killer killed a process
//! of the task's cgroup while it ran (files written before the line existed
//! read as `false`). berthd reads the file when the shim itself is gone, and
//! after `Wait` for what `Wait` cannot carry (`oom_killed`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The exit file's name inside a shim's state dir.
pub const EXIT_FILE: &str = "exit";

/// How a task's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord {
    /// The process's pid in the shim's PID namespace.
    pub pid: i32,
    /// The exit code, or 128 + signal when killed by a signal.
    pub exit_status: u32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When the shim reaped it.
    pub exited_at: SystemTime,
    /// Whether the OOM killer killed a process of the task's cgroup.
    pub oom_killed: bool,
}

/// Why an exit file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The file could not be read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file exists but does not hold an exit record.
    #[error("{}: malformed exit record: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl ExitRecord {
    /// The record of a process that exited with `code`.
    pub fn exited(pid: i32, code: i32, exited_at: SystemTime) -> Self {
        Self {
            pid,
            exit_status: u32::try_from(code).unwrap_or(255),
            signal: None,
            exited_at,
            oom_killed: false,
        }
    }

    /// The record of a process killed by `signal`.
    pub fn signaled(pid: i32, signal: i32, exited_at: SystemTime) -> Self {
        Self {
            pid,
            exit_status: 128 + u32::try_from(signal).unwrap_or(0),
            signal: Some(signal),
            exited_at,
            oom_killed: false,
        }
    }

    /// The exit file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(EXIT_FILE)
    }

    /// The record as the file's text.
    pub fn to_text(&self) -> String {
        let at = self
            .exited_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut text = format!("pid={}\nexit_status={}\n", self.pid, self.exit_status);
        if let Some(signal) = self.signal {
            text.push_str(&format!("signal={signal}\n"));
        }
        text.push_str(&format!(
            "exited_at={}.{:09}\n",
            at.as_secs(),
            at.subsec_nanos()
        ));
        text.push_str(&format!("oom_killed={}\n", self.oom_killed));
        text
    }

    /// Parses the file's text.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let (mut pid, mut status, mut signal, mut at) = (None, None, None, None);
        let mut oom_killed = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            let bad = |what: &str| format!("{what} {value:?} is not a number");
            match key {
                "pid" => pid = Some(value.parse().map_err(|_| bad("pid"))?),
                "exit_status" => status = Some(value.parse().map_err(|_| bad("exit_status"))?),
                "signal" => signal = Some(value.parse().map_err(|_| bad("signal"))?),
                "exited_at" => at = Some(parse_time(value).ok_or_else(|| bad("exited_at"))?),
                "oom_killed" => {
                    oom_killed = value
                        .parse()
                        .map_err(|_| format!("oom_killed {value:?} is not true or false"))?
                }
                // Later versions may add keys; they do not change these.
                _ => {}
            }
        }
        Ok(Self {
            pid: pid.ok_or("no pid")?,
            exit_status: status.ok_or("no exit_status")?,
            signal,
            exited_at: at.ok_or("no exited_at")?,
            oom_killed,
        })
    }

    /// Writes the record to `state_dir`'s exit file atomically (temporary
    /// file, fsync, rename, fsync of the directory): a reader sees the whole
    /// record or none.
    pub fn write(&self, state_dir: &Path) -> Result<(), ExitError> {
        write_atomic(&Self::path(state_dir), self.to_text().as_bytes())
    }

    /// Reads `state_dir`'s exit file; `Ok(None)` when there is none (the
    /// task has not exited, or its shim never saw it exit).
    pub fn read(state_dir: &Path) -> Result<Option<Self>, ExitError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ExitError::Io { path, source }),
        };
        Self::from_text(&text)
            .map(Some)
            .map_err(|reason| ExitError::Malformed { path, reason })
    }
}

fn parse_time(value: &str) -> Option<SystemTime> {
    let (secs, nanos) = value.split_once('.').unwrap_or((value, "0"));
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = nanos.parse().ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Writes `data` to `path` through a temporary file and a rename, syncing
/// the file and its directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ExitError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExitError::Io { path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ExitRecord::read(dir.path()).expect("read").is_none());
        let at = UNIX_EPOCH + Duration::new(1_764_216_000, 123_456_789);
        let record = ExitRecord::signaled(42, 15, at);
        assert_eq!(record.exit_status, 143);
        record.write(dir.path()).expect("write");
        assert_eq!(ExitRecord::read(dir.path()).expect("read"), Some(record));
        let code = ExitRecord::exited(7, 3, at);
        code.write(dir.path()).expect("overwrite");
        assert_eq!(ExitRecord::read(dir.path()).expect("read"), Some(code));
        let oom = ExitRecord {
            oom_killed: true,
            ..ExitRecord::signaled(8, 9, at)
        };
        oom.write(dir.path()).expect("overwrite");
        assert_eq!(ExitRecord::read(dir.path()).expect("read"), Some(oom));
    }

    #[test]
    fn reads_files_written_before_oom_killed_existed() {
        let old =
            ExitRecord::from_text("pid=1\nexit_status=137\nsignal=9\nexited_at=5.000000001\n")
                .expect("an old file parses");
        assert_eq!(
            (old.exit_status, old.signal, old.oom_killed),
            (137, Some(9), false)
        );
        assert!(
            ExitRecord::from_text("pid=1\nexit_status=0\nexited_at=1.0\noom_killed=1").is_err()
        );
    }

    #[test]
    fn refuses_a_malformed_file() {
        assert!(ExitRecord::from_text("pid=1\nexit_status=x\nexited_at=1.0").is_err());
        assert!(ExitRecord::from_text("pid=1\nexited_at=1.0").is_err());
        assert!(ExitRecord::from_text("exit_status=0").is_err());
    }
}
