//! `berth-shim delete`: cleaning up after a shim that can no longer be
//! reached (it died, or was killed): kills what is left of its task, has the
//! runtime forget the container (or releases a pause process's pins),
//! removes its socket, and reports the exit it recorded.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use super::{DeletedTask, ShimClientError, TaskExit};

/// How long `berth-shim delete` may take (it gives a killed task 2 s).
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `binary -namespace NS -id ID -state-dir DIR delete` and decodes the
/// `DeleteResponse` it prints.
pub async fn delete_dead(
    binary: &Path,
    namespace: &str,
    id: &str,
    state_dir: &Path,
) -> Result<DeletedTask, ShimClientError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(["-namespace", namespace, "-id", id, "-state-dir"])
        .arg(state_dir)
        .arg("delete")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DELETE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ShimClientError::DeadlineExceeded(format!("{} delete", binary.display())))?
        .map_err(|source| ShimClientError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(ShimClientError::CleanupFailed {
            binary: binary.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let resp = DeleteResponse::parse_from_bytes(&output.stdout).map_err(|e| {
        ShimClientError::CleanupFailed {
            binary: binary.to_owned(),
            status: output.status.to_string(),
            stderr: format!("undecodable DeleteResponse: {e}"),
        }
    })?;
    let exited_at = match resp.exited_at.as_ref() {
        Some(_) => super::time(&resp.exited_at),
        None => SystemTime::now(),
    };
    Ok(DeletedTask {
        pid: resp.pid,
        exit: TaskExit {
            exit_status: resp.exit_status,
            exited_at,
            oom_killed: false,
        },
    })
}
