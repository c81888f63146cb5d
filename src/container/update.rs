//! UpdateContainerResources: new cpu, memory, hugepage and unified limits
//! for a container. A running container's cgroup is updated through its
//! shim (`<runtime> update`); the bundle's `config.json` is rewritten too,
//! so a created container starts with the new limits and a restarted
//! berthd reports them. Fields left at zero keep their current value, as
//! with containerd.

use std::path::Path;

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{LinuxResources, Spec};

use super::containers::{ContainerError, Containers};
use super::record::{ContainerState, ResourcesRecord};
use super::resources;
use crate::store::Table;

/// What berth remembers of CRI resources.
pub fn record_of(r: &cri::LinuxContainerResources) -> ResourcesRecord {
    ResourcesRecord {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// CRI resources from what berth remembers.
pub fn cri_of(r: &ResourcesRecord) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| cri::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// `old` with every field `new` sets replaced (non-zero CRI fields).
fn merge_record(old: Option<&ResourcesRecord>, new: &ResourcesRecord) -> ResourcesRecord {
    let mut out = old.cloned().unwrap_or_default();
    let keep = |old: i64, new: i64| if new != 0 { new } else { old };
    out.cpu_period = keep(out.cpu_period, new.cpu_period);
    out.cpu_quota = keep(out.cpu_quota, new.cpu_quota);
    out.cpu_shares = keep(out.cpu_shares, new.cpu_shares);
    out.memory_limit_in_bytes = keep(out.memory_limit_in_bytes, new.memory_limit_in_bytes);
    out.memory_swap_limit_in_bytes = keep(
        out.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    out.oom_score_adj = keep(out.oom_score_adj, new.oom_score_adj);
    if !new.cpuset_cpus.is_empty() {
        out.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        out.cpuset_mems = new.cpuset_mems.clone();
    }
    if !new.hugepage_limits.is_empty() {
        out.hugepage_limits = new.hugepage_limits.clone();
    }
    if !new.unified.is_empty() {
        out.unified.extend(new.unified.clone());
    }
    out
}

/// The spec's resources with every limit `update` sets replaced; devices,
/// pids and the rest stay.
fn merge_spec(mut current: LinuxResources, update: &LinuxResources) -> LinuxResources {
    if let Some(new) = update.cpu() {
        let mut cpu = current.cpu().clone().unwrap_or_default();
        if new.shares().is_some() {
            cpu.set_shares(new.shares());
        }
        if new.quota().is_some() {
            cpu.set_quota(new.quota());
        }
        if new.period().is_some() {
            cpu.set_period(new.period());
        }
        if new.cpus().is_some() {
            cpu.set_cpus(new.cpus().clone());
        }
        if new.mems().is_some() {
            cpu.set_mems(new.mems().clone());
        }
        current.set_cpu(Some(cpu));
    }
    if let Some(new) = update.memory() {
        let mut memory = current.memory().unwrap_or_default();
        if new.limit().is_some() {
            memory.set_limit(new.limit());
        }
        if new.swap().is_some() {
            memory.set_swap(new.swap());
        }
        current.set_memory(Some(memory));
    }
    if update.hugepage_limits().is_some() {
        current.set_hugepage_limits(update.hugepage_limits().clone());
    }
    if let Some(new) = update.unified() {
        let mut unified = current.unified().clone().unwrap_or_default();
        unified.extend(new.clone());
        current.set_unified(Some(unified));
    }
    current
}

/// Rewrites `bundle/config.json` with `update` merged into its resources
/// (atomically: a crash leaves the old or the new file).
fn rewrite_bundle(bundle: &Path, update: &LinuxResources) -> Result<(), ContainerError> {
    let path = bundle.join("config.json");
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| ContainerError::Io { op, path, source }
    };
    let bytes = std::fs::read(&path).map_err(io("read"))?;
    let mut spec: Spec = serde_json::from_slice(&bytes)
        .map_err(|e| io("parse")(std::io::Error::other(e.to_string())))?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    let current = linux.resources().clone().unwrap_or_default();
    linux.set_resources(Some(merge_spec(current, update)));
    spec.set_linux(Some(linux));
    let bytes = serde_json::to_vec(&spec)
        .map_err(|e| io("encode")(std::io::Error::other(e.to_string())))?;
    let tmp = bundle.join("config.json.tmp");
    std::fs::write(&tmp, bytes).map_err(io("write"))?;
    std::fs::rename(&tmp, &path).map_err(io("rename"))
}

impl Containers {
    /// UpdateContainerResources: see the module doc. A container that is
    /// not created or running refuses with FailedPrecondition; invalid
    /// values refuse with InvalidArgument naming the field, changing
    /// nothing.
    pub async fn update_resources(
        &self,
        id: &str,
        linux: Option<&cri::LinuxContainerResources>,
    ) -> Result<(), ContainerError> {
        let entry = self.find(id)?;
        let Some(linux) = linux else {
            // Nothing to change (a Windows-only update).
            return Ok(());
        };
        let update = resources::build(Some(linux), false, "linux")?;
        let _op = entry.op.lock().await;
        let mut record = entry.record();
        match record.state {
            ContainerState::Created | ContainerState::Running => {}
            state => {
                return Err(ContainerError::FailedPrecondition(format!(
                    "container {} is {state:?}: only a created or running container can be updated",
                    record.id
                )));
            }
        }
        if record.state == ContainerState::Running {
            let json = serde_json::to_vec(&update).map_err(|e| ContainerError::Io {
                op: "encode resources for",
                path: record.bundle.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let client = self.client(&record).await?;
            client
                .update(&record.id, json)
                .await
                .map_err(|e| ContainerError::Shim(e.to_string()))?;
        }
        rewrite_bundle(&record.bundle, &update)?;
        record.resources = Some(merge_record(record.resources.as_ref(), &record_of(linux)));
        self.store.put(Table::Containers, &record.id, &record)?;
        entry.set(record);
        tracing::info!(container = %id, "container resources updated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder};

    #[test]
    fn spec_merge_replaces_only_what_the_update_sets() {
        let mut current = LinuxResources::default();
        current.set_cpu(Some(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .build()
                .expect("cpu"),
        ));
        current.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(1 << 30)
                .build()
                .expect("memory"),
        ));
        current.set_devices(Some(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .expect("device"),
        ]));
        let update = resources::build(
            Some(&cri::LinuxContainerResources {
                cpu_quota: 20_000,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            false,
            "linux",
        )
        .expect("build");
        let merged = merge_spec(current, &update);
        let cpu = merged.cpu().clone().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(20_000), Some(100_000))
        );
        assert_eq!(
            merged.memory().as_ref().and_then(|m| m.limit()),
            Some(64 << 20)
        );
        assert_eq!(
            merged.devices().as_ref().map(Vec::len),
            Some(1),
            "devices kept"
        );
    }

    #[test]
    fn record_merge_keeps_unset_fields_and_round_trips() {
        let created = record_of(&cri::LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 1 << 30,
            oom_score_adj: 900,
            ..Default::default()
        });
        let merged = merge_record(
            Some(&created),
            &record_of(&cri::LinuxContainerResources {
                memory_limit_in_bytes: 2 << 30,
                ..Default::default()
            }),
        );
        assert_eq!(
            (
                merged.cpu_shares,
                merged.memory_limit_in_bytes,
                merged.oom_score_adj
            ),
            (256, 2 << 30, 900)
        );
        assert_eq!(record_of(&cri_of(&merged)), merged);
    }

    #[test]
    fn invalid_values_name_the_update_field() {
        let err = resources::build(
            Some(&cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            }),
            false,
            "linux",
        )
        .expect_err("negative");
        assert!(
            err.to_string().contains("linux.memory_limit_in_bytes"),
            "{err}"
        );
    }
}
