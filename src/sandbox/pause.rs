//! Starting, watching and stopping a sandbox's pause process (`berth-pause`
//! from the shim crate), and releasing the namespace pins it leaves.
//!
//! The pause process is started in a process group of its own and never
//! waited for synchronously: a task reaps it if it exits while berthd runs;
//! after a berthd restart it belongs to init. It is identified by pid and
//! start time, so a recycled pid is never mistaken for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::SandboxError;
use super::record::{NamespaceMode, PauseProcess, SandboxRecord};

/// The pause binary's name.
const PAUSE_BINARY: &str = "berth-pause";
/// How long the pause process may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping pause process gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The pause binary: next to berthd's own executable, else from `PATH`.
pub fn binary() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(PAUSE_BINARY)))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| PAUSE_BINARY.into())
}

/// Starts the pause process for `record` and waits until its namespaces are
/// pinned.
pub async fn start(binary: &Path, record: &SandboxRecord) -> Result<PauseProcess, SandboxError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--state-dir").arg(&record.state_dir).arg("--uts");
    if record.namespaces.network == NamespaceMode::Pod {
        cmd.arg("--net");
    }
    if record.namespaces.ipc == NamespaceMode::Pod {
        cmd.arg("--ipc");
    }
    if record.namespaces.pid == NamespaceMode::Pod {
        cmd.arg("--pid");
    }
    if !record.hostname.is_empty() && record.namespaces.network == NamespaceMode::Pod {
        cmd.arg("--hostname").arg(&record.hostname);
    }
    for (key, value) in &record.sysctls {
        cmd.arg("--sysctl").arg(format!("{key}={value}"));
    }
    // Its stderr goes to a file: a pipe to berthd would break (and kill it
    // with SIGPIPE on its next message) when berthd restarts.
    let log_path = record.state_dir.join("pause.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| SandboxError::Pause(format!("cannot create {}: {e}", log_path.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| SandboxError::Pause(format!("cannot start {}: {e}", binary.display())))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let stdout = child.stdout.take();
    let ready = async {
        let mut line = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout).read_line(&mut line).await.ok();
        }
        line
    };
    let line = match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(line) => line,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(SandboxError::Pause(format!(
                "not ready within {READY_TIMEOUT:?}"
            )));
        }
    };
    if line.trim().is_empty() {
        // It exited before reporting ready: its stderr says why.
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_default();
        let why = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(SandboxError::Pause(format!("{} ({status})", why.trim())));
    }
    let pid = pid.ok_or_else(|| SandboxError::Pause("started without a pid".into()))?;
    let start_time = start_time(pid)
        .ok_or_else(|| SandboxError::Pause(format!("pid {pid} vanished right after start")))?;
    let sandbox = record.id.clone();
    tokio::spawn(async move {
        // Reaps it if it exits while this berthd runs; keeps stderr drained.
        let status = child.wait().await;
        tracing::info!(sandbox, pid, ?status, "pause process exited");
    });
    Ok(PauseProcess { pid, start_time })
}

/// Whether the pause process still runs (same pid, same start time, not a
/// zombie).
pub fn alive(process: &PauseProcess) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", process.pid)) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm field: state is field 3 (index 0 here), start time
    // field 22 (index 19).
    fields.first().is_some_and(|s| *s != "Z" && *s != "X")
        && fields.get(19).and_then(|t| t.parse::<u64>().ok()) == Some(process.start_time)
}

/// The children of process `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the pause process: SIGTERM, then SIGKILL after a grace period.
pub async fn stop(process: &PauseProcess) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !alive(process) {
        return;
    }
    let pid = Pid::from_raw(process.pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while alive(process) {
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !alive(process) {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Unmounts and deletes the namespace pins under `state_dir/ns` (and the
/// pid file); what is already gone is fine.
pub fn unpin(state_dir: &Path) -> std::io::Result<()> {
    berth_shim::pause::unpin(state_dir).map_err(|e| std::io::Error::other(e.to_string()))
}
