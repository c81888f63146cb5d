//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: samples of the cgroups (cpu, memory, swap,
//! processes, pressure), the containers' writable layers and the pods'
//! network interfaces, taken by [`crate::stats`].

use std::time::Duration;

use crate::container::{ContainerFilter, ContainerRecord, ContainerState};
use crate::sandbox::{SandboxFilter, SandboxRecord, SandboxState};
use crate::stats::{
    CgroupReader, CgroupStats, CpuRateKeeper, DiskUsage, DiskUsageCache, NetworkStats,
};

use super::{Daemon, DaemonError};

/// A writable layer's size is measured at most this often.
const DISK_MAX_AGE: Duration = Duration::from_secs(10);
/// A CPU baseline not sampled for this long is forgotten.
const RATE_MAX_IDLE: Duration = Duration::from_secs(10 * 60);

/// What stats need across calls: the cgroup reader (hierarchies found once
/// at start), the CPU baselines and the disk usage cache.
pub struct StatsState {
    reader: Option<CgroupReader>,
    rates: CpuRateKeeper,
    disk: DiskUsageCache,
}

impl StatsState {
    /// Finds the cgroup hierarchies; without any, stats carry no cgroup
    /// figures (logged once).
    pub fn new() -> Self {
        let reader = crate::cgroup::Hierarchy::detect()
            .map_err(|e| e.to_string())
            .and_then(|h| CgroupReader::new(&h).map_err(|e| e.to_string()));
        let reader = match reader {
            Ok(reader) => Some(reader),
            Err(e) => {
                tracing::warn!(error = %e, "no cgroup hierarchy to read stats from");
                None
            }
        };
        Self {
            reader,
            rates: CpuRateKeeper::new(RATE_MAX_IDLE),
            disk: DiskUsageCache::new(DISK_MAX_AGE),
        }
    }

    fn cgroup(&self, key: &str, path: &str) -> (Option<CgroupStats>, Option<u64>) {
        let Some(stats) = self.reader.as_ref().and_then(|r| r.read(path).ok()) else {
            return (None, None);
        };
        let rate = stats
            .cpu
            .usage_core_ns
            .and_then(|ns| self.rates.sample(key, ns, stats.monotonic));
        (Some(stats), rate)
    }
}

/// One container's sample.
pub struct ContainerSample {
    /// The container.
    pub record: ContainerRecord,
    /// Its cgroup's figures (none before it started or after it exited).
    pub cgroup: Option<CgroupStats>,
    /// CPU use over the last interval, in nano-cores.
    pub nano_cores: Option<u64>,
    /// Its writable layer.
    pub disk: Option<DiskUsage>,
    /// Where the writable layers live.
    pub layers_mountpoint: String,
}

/// One pod's sample.
pub struct PodSample {
    /// The pod.
    pub record: SandboxRecord,
    /// The pod cgroup's figures.
    pub cgroup: Option<CgroupStats>,
    /// CPU use over the last interval, in nano-cores.
    pub nano_cores: Option<u64>,
    /// Its network interfaces (not for host-network pods).
    pub network: Option<NetworkStats>,
    /// Its containers.
    pub containers: Vec<ContainerSample>,
}

impl Daemon {
    async fn container_sample(&self, record: ContainerRecord) -> ContainerSample {
        let (cgroup, nano_cores) = if record.state == ContainerState::Running {
            self.stats.cgroup(&record.id, &record.cgroup)
        } else {
            (None, None)
        };
        let disk = self
            .stats
            .disk
            .get(&crate::container::rootfs::upper_dir(&record.dir))
            .await
            .ok();
        ContainerSample {
            record,
            cgroup,
            nano_cores,
            disk,
            layers_mountpoint: self.config.root.join("containers").display().to_string(),
        }
    }

    /// ContainerStats of container `id` (full id or unique prefix).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerSample, DaemonError> {
        let record = self.containers.status(id)?;
        Ok(self.container_sample(record).await)
    }

    /// ListContainerStats: every container the filter matches.
    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<ContainerSample> {
        let mut out = Vec::new();
        for record in self.containers.list(filter) {
            out.push(self.container_sample(record).await);
        }
        out
    }

    async fn pod_sample(&self, record: SandboxRecord) -> PodSample {
        let (cgroup, nano_cores) = if record.cgroup_parent.is_empty() {
            (None, None)
        } else {
            let path = crate::cgroup::parent_path(self.config.cgroup_driver, &record.cgroup_parent);
            self.stats.cgroup(&record.id, &path)
        };
        let network = match (&record.pause, record.namespaces.network) {
            (Some(pause), crate::sandbox::NamespaceMode::Pod) => u32::try_from(pause.pid)
                .ok()
                .and_then(|pid| crate::stats::read_net_dev(pid).ok()),
            _ => None,
        };
        let filter = ContainerFilter {
            sandbox_id: Some(record.id.clone()),
            ..Default::default()
        };
        let mut containers = Vec::new();
        for c in self.containers.list(&filter) {
            if c.sandbox_id == record.id {
                containers.push(self.container_sample(c).await);
            }
        }
        PodSample {
            record,
            cgroup,
            nano_cores,
            network,
            containers,
        }
    }

    /// PodSandboxStats of pod `id`.
    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<PodSample, DaemonError> {
        let record = self.sandboxes.status(id)?;
        if record.state != SandboxState::Ready {
            return Err(DaemonError::Sandbox(
                crate::sandbox::SandboxError::NotReady(record.id),
            ));
        }
        Ok(self.pod_sample(record).await)
    }

    /// ListPodSandboxStats: every ready pod the filter matches.
    pub async fn list_pod_sandbox_stats(&self, filter: &SandboxFilter) -> Vec<PodSample> {
        let mut out = Vec::new();
        for record in self.sandboxes.list(filter) {
            if record.state == SandboxState::Ready {
                out.push(self.pod_sample(record).await);
            }
        }
        out
    }
}
