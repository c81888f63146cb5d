//! `berth-shim delete`: clean up after a shim that cannot be reached.
//!
//! Kills the shim (by its recorded pid, if that process is still a
//! berth-shim) and the task's init (by recorded pid and start time), has the
//! runtime forget the container or releases the pause process's namespace
//! pins, removes the sockets and the shim's files (the exit file and logs
//! stay for the caller), and prints a protobuf `DeleteResponse`: the
//! recorded exit if the shim saw one, else SIGKILL now.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::record::{Runner, TASK_FILE, TaskRecord};
use super::task::CONSOLE_SOCKET;
use super::{
    ADDRESS_FILE, ATTACH_ADDRESS_FILE, PID_FILE, ShimArgs, ShimError, named_socket_path,
    read_address, read_attach_address,
};
use crate::exit::ExitRecord;

/// How long a killed process gets to disappear.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Cleans up the shim of `args` (see the module doc).
pub fn delete(args: &ShimArgs) -> Result<(), ShimError> {
    let state_dir = &args.state_dir;
    if let Some(pid) = std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "berth-shim" {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let record = TaskRecord::read(state_dir);
    if let Some(record) = &record {
        if record.alive() {
            let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while record.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match &record.runner {
            Runner::Runc { binary, root } => {
                let mut cmd = Command::new(binary);
                if let Some(root) = root {
                    cmd.arg("--root").arg(root);
                }
                let status = cmd
                    .args(["delete", "--force", &record.id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| ShimError::io(format!("run {}", binary.display()), e))?;
                if !status.success() {
                    eprintln!("berth-shim: {} delete failed: {status}", binary.display());
                }
            }
            Runner::Pause { state_dir } => crate::pause::unpin(state_dir)
                .map_err(|e| ShimError::io("release the pause process's pins", e_io(e)))?,
        }
    }
    for address in [read_address(state_dir), read_attach_address(state_dir)] {
        if let Some(socket) = address.as_deref().and_then(|a| a.strip_prefix("unix://")) {
            let _ = std::fs::remove_file(socket);
        }
    }
    let _ = std::fs::remove_file(named_socket_path(state_dir, CONSOLE_SOCKET));
    for file in [ADDRESS_FILE, ATTACH_ADDRESS_FILE, PID_FILE, TASK_FILE] {
        let _ = std::fs::remove_file(state_dir.join(file));
    }

    let pid = record.as_ref().map_or(0, |r| r.pid);
    let exit = ExitRecord::read(state_dir)?
        .unwrap_or_else(|| ExitRecord::signaled(pid, Signal::SIGKILL as i32, SystemTime::now()));
    let at = exit
        .exited_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut resp = DeleteResponse::new();
    resp.pid = u32::try_from(exit.pid).unwrap_or(0);
    resp.exit_status = exit.exit_status;
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(at.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(at.subsec_nanos()).unwrap_or(0);
    resp.exited_at = Some(ts).into();
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| ShimError::io("encode the DeleteResponse", std::io::Error::other(e)))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| ShimError::io("write the DeleteResponse", e))
}

fn e_io(e: crate::pause::PauseError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
