//! A sandbox's pause process (`berth-pause`), run by the sandbox's own
//! `berth-shim` (its parent and reaper, which releases the namespace pins
//! when the task is deleted), and watched by pid and start time so a
//! recycled pid is never mistaken for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::shim_client::{self, CreateTask, TaskOptions};

use super::SandboxError;
use super::record::{NamespaceMode, PauseProcess, SandboxRecord};

/// The pause binary's name.
const PAUSE_BINARY: &str = "berth-pause";
/// The namespace berth's shims run in.
const SHIM_NAMESPACE: &str = "berth";
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

/// The pause process's arguments for `record`.
fn args(record: &SandboxRecord) -> Vec<String> {
    let mut args = vec![
        "--state-dir".to_string(),
        record.state_dir.display().to_string(),
        "--uts".to_string(),
    ];
    if record.namespaces.network == NamespaceMode::Pod {
        args.push("--net".into());
    }
    if record.namespaces.ipc == NamespaceMode::Pod {
        args.push("--ipc".into());
    }
    if record.namespaces.pid == NamespaceMode::Pod {
        args.push("--pid".into());
    }
    if !record.hostname.is_empty() && record.namespaces.network == NamespaceMode::Pod {
        args.push("--hostname".into());
        args.push(record.hostname.clone());
    }
    for (key, value) in &record.sysctls {
        args.push("--sysctl".into());
        args.push(format!("{key}={value}"));
    }
    if let Some(userns) = &record.user_namespace {
        for (flag, m) in [("--uid-map", userns.uid), ("--gid-map", userns.gid)] {
            args.push(flag.into());
            args.push(format!("{}:{}:{}", m.container_id, m.host_id, m.length));
        }
    }
    args
}

/// The sandbox shim's state directory.
fn shim_dir(record: &SandboxRecord) -> PathBuf {
    record.state_dir.join("shim")
}

/// Starts the sandbox's `berth-shim` and has it run the pause process;
/// returns once the namespaces are pinned, with the pause process and the
/// shim's address.
pub async fn start(
    binary: &Path,
    record: &SandboxRecord,
    events: &str,
) -> Result<(PauseProcess, String), SandboxError> {
    let shim = |e: shim_client::ShimClientError| SandboxError::Pause(e.to_string());
    let client = shim_client::start(
        &shim_client::binary(),
        SHIM_NAMESPACE,
        &record.id,
        &shim_dir(record),
        Some(events),
    )
    .await
    .map_err(shim)?;
    let task = CreateTask {
        id: record.id.clone(),
        bundle: record.state_dir.clone(),
        stdout: None,
        stderr: Some(record.state_dir.join("pause.log")),
        options: TaskOptions::Pause {
            binary: Some(binary.to_path_buf()),
            args: args(record),
        },
    };
    let pid = match client.create(&task).await {
        Ok(pid) => i32::try_from(pid).map_err(|_| SandboxError::Pause(format!("pid {pid}")))?,
        Err(e) => {
            let _ = client.delete(&record.id).await;
            let _ = client.shutdown(&record.id).await;
            return Err(SandboxError::Pause(e.to_string()));
        }
    };
    let start_time = start_time(pid)
        .ok_or_else(|| SandboxError::Pause(format!("pid {pid} vanished right after start")))?;
    Ok((
        PauseProcess { pid, start_time },
        client.address().to_string(),
    ))
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

/// The descendants of process `pid` (the pause process's child in the
/// pod's user namespace, and the PID namespace's init below it), parents
/// first.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let found: Vec<i32> =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
        next.extend(&found);
        out.extend(found);
    }
    out
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the pause process and its shim: through the shim (SIGTERM, then
/// SIGKILL after a grace period; the shim releases the pins) when it
/// answers, else directly by pid.
pub async fn stop(record: &SandboxRecord, process: &PauseProcess) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let client = match &record.shim_address {
        Some(address) => shim_client::connect(address).await.ok(),
        None => None,
    };
    let client = &client;
    let signal = |s: Signal| async move {
        match client {
            Some(c) => {
                let _ = c.kill(&record.id, s as u32, true).await;
            }
            None => {
                let _ = kill(Pid::from_raw(process.pid), s);
            }
        }
    };
    if alive(process) {
        signal(Signal::SIGTERM).await;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while alive(process) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if alive(process) {
            signal(Signal::SIGKILL).await;
            while alive(process) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    match client {
        Some(client) => {
            let _ = client.delete(&record.id).await;
            let _ = client.shutdown(&record.id).await;
        }
        // The shim is gone: `berth-shim delete` removes its socket and
        // files and releases the pins it held.
        None if record.shim_address.is_some() => {
            let dir = shim_dir(record);
            let binary = shim_client::binary();
            if let Err(e) =
                shim_client::delete_dead(&binary, SHIM_NAMESPACE, &record.id, &dir).await
            {
                tracing::warn!(sandbox = %record.id, error = %e, "could not clean up after the sandbox's dead shim");
            }
        }
        None => {}
    }
}

/// Unmounts and deletes the namespace pins under `state_dir/ns` (and the
/// pid file); what is already gone is fine.
pub fn unpin(state_dir: &Path) -> std::io::Result<()> {
    berth_shim::pause::unpin(state_dir).map_err(|e| std::io::Error::other(e.to_string()))
}
