//! What berth remembers of a container, stored in the `containers` table
//! under its id.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container's lifecycle state, as the CRI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process exited.
    Exited,
    /// berth lost track of it.
    Unknown,
}

/// A bind mount as ContainerStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Mounted read-only.
    pub readonly: bool,
    /// Recursively read-only.
    pub recursive_read_only: bool,
    /// Propagation as the CRI enum value.
    pub propagation: i32,
}

/// A container's resources as the CRI gave them (ContainerStatus reports
/// them back: the kubelet checks an in-place resize through them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesRecord {
    /// CPU CFS period (µs), 0 = unset.
    pub cpu_period: i64,
    /// CPU CFS quota (µs), 0 = unset.
    pub cpu_quota: i64,
    /// CPU shares, 0 = unset.
    pub cpu_shares: i64,
    /// Memory limit (bytes), 0 = unset.
    pub memory_limit_in_bytes: i64,
    /// OOM score adjustment.
    pub oom_score_adj: i64,
    /// cpuset CPUs.
    pub cpuset_cpus: String,
    /// cpuset memory nodes.
    pub cpuset_mems: String,
    /// Hugepage limits: page size ("2MB") and bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 files and values.
    pub unified: BTreeMap<String, String>,
    /// Memory + swap limit (bytes), 0 = unset.
    pub memory_swap_limit_in_bytes: i64,
}

/// The identity a container's process runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group it is in (the primary one included).
    pub supplemental_groups: Vec<u32>,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// The reserved name: `<name>_<pod>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    /// The pod sandbox it belongs to.
    pub sandbox_id: String,
    /// The container's CRI name.
    pub metadata_name: String,
    /// The container's CRI attempt.
    pub attempt: u32,
    /// The image as the CreateContainer request named it.
    pub image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// The image reference reported as `image_ref`: a repo digest of the
    /// image when it has one, else its id.
    pub image_ref: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The CRI log file (sandbox log directory + the config's log path),
    /// empty when the kubelet asked for none.
    pub log_path: String,
    /// CRI mounts.
    pub mounts: Vec<MountRecord>,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// Start time, 0 until started.
    pub started_at: i64,
    /// Exit time, 0 until exited.
    pub finished_at: i64,
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, ...
    pub reason: String,
    /// The termination message.
    pub message: String,
    /// State.
    pub state: ContainerState,
    /// The image's stop signal (`SIGQUIT`, `15`, ...), empty for SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
    /// Address of the container's shim once started.
    #[serde(default)]
    pub shim_address: Option<String>,
    /// The container's cgroup, relative to the hierarchies' roots.
    #[serde(default)]
    pub cgroup: String,
    /// The identity its process runs with (ContainerStatus.user).
    #[serde(default)]
    pub user: Option<UserRecord>,
    /// The container's process has a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Its stdin stays open for Attach.
    #[serde(default)]
    pub stdin: bool,
    /// Its stdin closes when the first attach session closes its stdin.
    #[serde(default)]
    pub stdin_once: bool,
    /// The resources the container was created or last updated with.
    #[serde(default)]
    pub resources: Option<ResourcesRecord>,
    /// Persistent directory: the writable layer and the rootfs mount point.
    pub dir: PathBuf,
    /// Runtime state directory: the OCI bundle (`config.json`).
    pub bundle: PathBuf,
}

impl ContainerRecord {
    /// The signal StopContainer sends first: the image's stop signal, else
    /// SIGTERM.
    pub fn stop_signal_number(&self) -> u32 {
        let name = self.stop_signal.trim();
        if let Ok(n) = name.parse::<u32>() {
            return n;
        }
        let name = name.to_ascii_uppercase();
        let name = name.strip_prefix("SIG").unwrap_or(&name);
        let number = match name {
            "HUP" => nix::libc::SIGHUP,
            "INT" => nix::libc::SIGINT,
            "QUIT" => nix::libc::SIGQUIT,
            "KILL" => nix::libc::SIGKILL,
            "USR1" => nix::libc::SIGUSR1,
            "USR2" => nix::libc::SIGUSR2,
            "WINCH" => nix::libc::SIGWINCH,
            "STOP" => nix::libc::SIGSTOP,
            _ => nix::libc::SIGTERM,
        };
        number as u32
    }
}
