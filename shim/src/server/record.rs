//! The `task` file: what `berth-shim delete` needs to clean up a task whose
//! shim is gone (its init pid and start time, and how it was run).

use std::path::{Path, PathBuf};

use crate::exit::{ExitError, write_atomic};

/// The task file's name in the state dir.
pub(crate) const TASK_FILE: &str = "task";

/// How a task was run, as far as clean-up is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Runner {
    /// Through a runc-compatible runtime.
    Runc {
        /// The runtime binary.
        binary: PathBuf,
        /// Its `--root`, if one was given.
        root: Option<PathBuf>,
    },
    /// The pause process, pinning namespaces under `state_dir`.
    Pause {
        /// The pause process's `--state-dir`.
        state_dir: PathBuf,
    },
}

/// The task file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskRecord {
    /// The task id.
    pub(crate) id: String,
    /// The init process's pid.
    pub(crate) pid: i32,
    /// Its start time (`/proc/<pid>/stat` field 22), so a recycled pid is
    /// never killed.
    pub(crate) start_time: u64,
    /// How it was run.
    pub(crate) runner: Runner,
}

impl TaskRecord {
    /// Writes the record into `state_dir` atomically.
    pub(crate) fn write(&self, state_dir: &Path) -> Result<(), ExitError> {
        let mut text = format!(
            "id={}\npid={}\nstart_time={}\n",
            self.id, self.pid, self.start_time
        );
        match &self.runner {
            Runner::Runc { binary, root } => {
                text.push_str(&format!("runtime={}\n", binary.display()));
                if let Some(root) = root {
                    text.push_str(&format!("root={}\n", root.display()));
                }
            }
            Runner::Pause { state_dir } => {
                text.push_str(&format!("pause_state_dir={}\n", state_dir.display()));
            }
        }
        write_atomic(&state_dir.join(TASK_FILE), text.as_bytes())
    }

    /// Reads the record from `state_dir`; `None` when there is none or it
    /// does not parse (the shim died before the task existed).
    pub(crate) fn read(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_dir.join(TASK_FILE)).ok()?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let runner = match (value("runtime"), value("pause_state_dir")) {
            (Some(binary), None) => Runner::Runc {
                binary: binary.into(),
                root: value("root").map(PathBuf::from),
            },
            (None, Some(dir)) => Runner::Pause {
                state_dir: dir.into(),
            },
            _ => return None,
        };
        Some(Self {
            id: value("id")?,
            pid: value("pid")?.parse().ok()?,
            start_time: value("start_time")?.parse().ok()?,
            runner,
        })
    }

    /// Whether the recorded process still runs (same pid, same start time,
    /// not a zombie).
    pub(crate) fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|(state, start)| state != "Z" && start == self.start_time)
    }
}

/// The start time of process `pid`, if it exists.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// The state letter and start time of process `pid`.
fn stat(pid: i32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_owned();
    // Start time is field 22; `state` was field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_knows_a_live_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid = i32::try_from(std::process::id()).expect("pid");
        for runner in [
            Runner::Runc {
                binary: "/usr/bin/runc".into(),
                root: Some("/run/r".into()),
            },
            Runner::Pause {
                state_dir: "/run/p".into(),
            },
        ] {
            let record = TaskRecord {
                id: "t".into(),
                pid,
                start_time: start_time(pid).expect("own start time"),
                runner,
            };
            record.write(dir.path()).expect("write");
            let read = TaskRecord::read(dir.path()).expect("read");
            assert_eq!(read, record);
            assert!(read.alive());
            assert!(
                !TaskRecord {
                    start_time: read.start_time + 1,
                    ..read
                }
                .alive()
            );
        }
    }
}
