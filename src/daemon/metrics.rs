//! The daemon as the metrics endpoint's [`Inventory`]: pods, containers
//! and images as the stores hold them, and the shims whose processes are
//! alive.

use std::path::Path;
use std::sync::Weak;

use crate::container::{ContainerFilter, ContainerState};
use crate::metrics::{Inventory, NodeCounts};
use crate::sandbox::{SandboxFilter, SandboxState};

use super::Daemon;

/// The daemon, weakly: the endpoint must not keep a stopping berthd alive.
pub(super) struct DaemonInventory(pub(super) Weak<Daemon>);

impl Inventory for DaemonInventory {
    fn counts(&self) -> Result<NodeCounts, String> {
        let daemon = self
            .0
            .upgrade()
            .ok_or_else(|| "berthd is stopping".to_string())?;
        Ok(daemon.node_counts())
    }
}

impl Daemon {
    /// What the metrics endpoint's gauges report.
    fn node_counts(&self) -> NodeCounts {
        let shim_names =
            shim_process_names(self.config.runtimes.values().map(|h| h.shim.as_path()));
        let mut shims = 0;
        let (mut ready, mut not_ready) = (0, 0);
        for pod in self.sandboxes.list(&SandboxFilter::default()) {
            match pod.state {
                SandboxState::Ready => ready += 1,
                SandboxState::NotReady => not_ready += 1,
            }
            shims += u64::from(shim_alive(&pod.state_dir.join("shim"), &shim_names));
        }
        let mut containers = [0u64; 4];
        for c in self.containers.list(&ContainerFilter::default()) {
            let slot = match c.state {
                ContainerState::Created => 0,
                ContainerState::Running => 1,
                ContainerState::Exited => 2,
                ContainerState::Unknown => 3,
            };
            containers[slot] += 1;
            shims += u64::from(shim_alive(&c.bundle.join("shim"), &shim_names));
        }
        NodeCounts {
            pods: vec![("ready", ready), ("notready", not_ready)],
            containers: ["created", "running", "exited", "unknown"]
                .into_iter()
                .zip(containers)
                .collect(),
            images: self.images.list(None).len() as u64,
            shims_running: shims,
        }
    }
}

/// The process names (`/proc/<pid>/comm`, cut to 15 bytes by the kernel)
/// the configured shim binaries run under.
fn shim_process_names<'a>(shims: impl Iterator<Item = &'a Path>) -> Vec<String> {
    let mut names: Vec<String> = shims
        .filter_map(|p| p.file_name())
        .map(|n| {
            let bytes = n.as_encoded_bytes();
            String::from_utf8_lossy(&bytes[..bytes.len().min(15)]).into_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether the shim whose state dir is `dir` runs: its pid file names a
/// live process that is a shim (a pid reused by anything else is not).
fn shim_alive(dir: &Path, names: &[String]) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join(berth_shim::server::PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| names.iter().any(|n| n == comm.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_names_are_cut_like_comm() {
        let names = shim_process_names(
            [
                Path::new("berth-shim"),
                Path::new("/usr/local/bin/berth-shim"),
                Path::new("/opt/x/containerd-shim-runc-v2"),
            ]
            .into_iter(),
        );
        assert_eq!(names, ["berth-shim", "containerd-shim"]);
    }

    #[test]
    fn a_shim_is_alive_only_when_its_pid_runs_a_shim() {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let names = vec![me.trim_end().to_string()];
        assert!(!shim_alive(dir.path(), &names), "no pid file");
        let pid_file = dir.path().join(berth_shim::server::PID_FILE);
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).expect("pid file");
        assert!(shim_alive(dir.path(), &names));
        assert!(
            !shim_alive(dir.path(), &["berth-shim".to_string()]),
            "a pid running something else is not a shim"
        );
        std::fs::write(&pid_file, "garbage").expect("pid file");
        assert!(!shim_alive(dir.path(), &names));
    }
}
