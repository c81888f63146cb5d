//! The container's cgroup: its path for the OCI runtime under either
//! cgroup driver, and its resource limits from the CRI.

use std::collections::HashMap;

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources,
};

use super::spec::{SpecError, invalid};
use crate::config::CgroupDriver;

/// `linux.cgroupsPath`: a path under the pod's cgroup with the cgroupfs
/// driver (the same one [`crate::cgroup::object_path`] names); with the
/// systemd driver runc's `slice:prefix:name` form, which runc turns into
/// the unit `berth-<id>.scope` in the pod's slice, the same cgroup
/// [`crate::cgroup::object_path`] names.
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => crate::cgroup::object_path(driver, parent, id),
        CgroupDriver::Systemd => format!("{parent}:berth:{id}"),
    }
}

/// What the node's cgroups can apply, where a limit depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeCgroups {
    /// cgroup v2 (unified mode): `unified` entries can be written. A
    /// hybrid node is v1, for runc as for berth.
    v2: bool,
    /// The hugetlb controller is there: hugepage limits can be set.
    hugetlb: bool,
    /// Swap is accounted (v1 `memory.memsw.*`, v2 `memory.swap.max`):
    /// swap limits can be set.
    swap: bool,
}

/// Whether the node accounts swap, so that swap limits can be set.
pub fn swap_supported() -> bool {
    NodeCgroups::get().swap
}

impl NodeCgroups {
    /// The node's, read once.
    fn get() -> NodeCgroups {
        static NODE: std::sync::OnceLock<NodeCgroups> = std::sync::OnceLock::new();
        *NODE.get_or_init(NodeCgroups::detect)
    }

    fn detect() -> NodeCgroups {
        match crate::cgroup::Hierarchy::detect() {
            Ok(crate::cgroup::Hierarchy::V2(root)) => NodeCgroups {
                v2: true,
                hugetlb: std::fs::read_to_string(root.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb")),
                // The root has no swap files; any cgroup below it does when
                // swap is accounted.
                swap: std::fs::read_dir(&root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.path().join("memory.swap.max").exists()),
            },
            Ok(crate::cgroup::Hierarchy::V1(mounts)) => NodeCgroups {
                v2: false,
                hugetlb: v1_hugetlb(),
                swap: mounts
                    .iter()
                    .any(|m| m.join("memory.memsw.limit_in_bytes").exists()),
            },
            // `/proc/cgroups`: name, v1 hierarchy id (0 when not mounted),
            // cgroup count, enabled.
            Err(_) => NodeCgroups {
                v2: false,
                hugetlb: v1_hugetlb(),
                swap: false,
            },
        }
    }
}

/// Whether the v1 hugetlb controller is mounted.
fn v1_hugetlb() -> bool {
    std::fs::read_to_string("/proc/cgroups").is_ok_and(|text| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f.as_slice(), ["hugetlb", h, _, "1"] if *h != "0")
        })
    })
}

/// The resources of the spec; `swap_limit` says whether the node can limit
/// swap at all; errors name fields under `field` (the request's path to
/// the resources).
///
/// Hugepage limits are left out on a node without the hugetlb controller
/// (the kubelet sends one, 0 unless asked, for every page size the node
/// has, and runc fails the start on a limit it cannot apply); `unified`
/// is refused on a cgroup v1 node, where runc cannot start the container.
pub fn build(
    resources: Option<&cri::LinuxContainerResources>,
    swap_limit: bool,
    field: &str,
) -> Result<LinuxResources, SpecError> {
    build_for(resources, swap_limit, field, NodeCgroups::get())
}

fn build_for(
    resources: Option<&cri::LinuxContainerResources>,
    swap_limit: bool,
    field: &str,
    node: NodeCgroups,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let Some(r) = resources else {
        return Ok(out);
    };
    let positive = |value: i64, name: &str| -> Result<Option<u64>, SpecError> {
        match value {
            0 => Ok(None),
            v if v > 0 => Ok(Some(v as u64)),
            v => Err(invalid(
                format!("{field}.{name}"),
                format!("{v} is negative"),
            )),
        }
    };

    let mut cpu = LinuxCpuBuilder::default();
    let mut has_cpu = false;
    if let Some(shares) = positive(r.cpu_shares, "cpu_shares")? {
        cpu = cpu.shares(shares);
        has_cpu = true;
    }
    if let Some(period) = positive(r.cpu_period, "cpu_period")? {
        cpu = cpu.period(period);
        has_cpu = true;
    }
    // -1 is "no quota".
    if r.cpu_quota != 0 {
        if r.cpu_quota < -1 {
            return Err(invalid(
                format!("{field}.cpu_quota"),
                format!("{} is negative", r.cpu_quota),
            ));
        }
        cpu = cpu.quota(r.cpu_quota);
        has_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        has_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
        has_cpu = true;
    }
    if has_cpu {
        out.set_cpu(Some(cpu.build()?));
    }

    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            format!("{field}.memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(invalid(
            format!("{field}.memory_swap_limit_in_bytes"),
            format!("{} is negative", r.memory_swap_limit_in_bytes),
        ));
    }
    if r.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(r.memory_limit_in_bytes);
        if swap_limit {
            // Swap equal to the limit means no swap, which is what a pod
            // gets unless the kubelet asks otherwise.
            let swap = match r.memory_swap_limit_in_bytes {
                0 => r.memory_limit_in_bytes,
                v => v,
            };
            memory = memory.swap(swap);
        }
        out.set_memory(Some(memory.build()?));
    } else if swap_limit && r.memory_swap_limit_in_bytes != 0 {
        out.set_memory(Some(
            LinuxMemoryBuilder::default()
                .swap(r.memory_swap_limit_in_bytes)
                .build()?,
        ));
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            if h.page_size.is_empty() {
                return Err(invalid(
                    format!("{field}.hugepage_limits[{i}].page_size"),
                    "is empty",
                ));
            }
            let limit = i64::try_from(h.limit).map_err(|_| {
                invalid(
                    format!("{field}.hugepage_limits[{i}].limit"),
                    format!("{} is too large", h.limit),
                )
            })?;
            limits.push(
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(limit)
                    .build()?,
            );
        }
        if node.hugetlb {
            out.set_hugepage_limits(Some(limits));
        } else {
            tracing::debug!("no hugetlb controller on the node: hugepage limits left out");
        }
    }

    if !r.unified.is_empty() {
        if !node.v2 {
            return Err(invalid(
                format!("{field}.unified"),
                "needs cgroup v2; this node runs cgroup v1",
            ));
        }
        for key in r.unified.keys() {
            if key.is_empty() || key.contains('/') || key.contains("..") {
                return Err(invalid(
                    format!("{field}.unified[{}]", crate::input::quoted(key)),
                    "is not a cgroup file name",
                ));
            }
        }
        let unified: HashMap<String, String> = r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.set_unified(Some(unified));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "config.linux.resources";

    #[test]
    fn cgroup_path_per_driver() {
        assert_eq!(
            cgroups_path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod1", "abc"),
            "/kubepods/burstable/pod1/abc"
        );
        assert_eq!(
            cgroups_path(
                CgroupDriver::Systemd,
                "kubepods-burstable-pod1.slice",
                "abc"
            ),
            "kubepods-burstable-pod1.slice:berth:abc"
        );
    }

    #[test]
    fn resources_are_mapped() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "900M".to_string())].into(),
            ..Default::default()
        };
        let v2 = NodeCgroups {
            v2: true,
            hugetlb: true,
            swap: true,
        };
        let out = build_for(Some(&r), true, FIELD, v2).expect("resources");
        let cpu = out.cpu().as_ref().expect("cpu");
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let memory = out.memory().as_ref().expect("memory");
        assert_eq!(memory.limit(), Some(1 << 30));
        assert_eq!(memory.swap(), Some(1 << 30), "no swap by default");
        let huge = out.hugepage_limits().as_ref().expect("hugepages");
        assert_eq!(huge[0].page_size(), "2MB");
        assert_eq!(huge[0].limit(), 4 << 20);
        assert_eq!(
            out.unified().as_ref().expect("unified")["memory.high"],
            "900M"
        );
    }

    #[test]
    fn what_the_node_cannot_apply() {
        let v1 = NodeCgroups {
            v2: false,
            hugetlb: false,
            swap: false,
        };
        let huge = cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        let out = build_for(Some(&huge), true, FIELD, v1).expect("hugepages dropped");
        assert_eq!(out.hugepage_limits(), &None);
        let with = NodeCgroups {
            hugetlb: true,
            ..v1
        };
        let out = build_for(Some(&huge), true, FIELD, with).expect("hugepages");
        assert_eq!(out.hugepage_limits().as_ref().map(Vec::len), Some(1));
        let unified = cri::LinuxContainerResources {
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            ..Default::default()
        };
        let err = build_for(Some(&unified), true, FIELD, v1).expect_err("v1");
        assert!(
            err.to_string()
                .contains("config.linux.resources.unified: needs cgroup v2"),
            "{err}"
        );
    }

    #[test]
    fn swap_only_where_the_node_limits_it() {
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 300,
            ..Default::default()
        };
        let with = build(Some(&r), true, FIELD).expect("swap");
        assert_eq!(with.memory().as_ref().and_then(|m| m.swap()), Some(300));
        let without = build(Some(&r), false, FIELD).expect("no swap controller");
        assert_eq!(without.memory().as_ref().and_then(|m| m.swap()), None);
        assert_eq!(without.memory().as_ref().and_then(|m| m.limit()), Some(100));
    }

    #[test]
    fn unset_resources_set_nothing_and_bad_ones_are_named() {
        let out =
            build(Some(&cri::LinuxContainerResources::default()), true, FIELD).expect("empty");
        assert!(out.cpu().is_none() && out.memory().is_none());
        let bad = cri::LinuxContainerResources {
            cpu_shares: -2,
            ..Default::default()
        };
        let err = build(Some(&bad), true, FIELD).expect_err("negative");
        assert!(
            err.to_string()
                .contains("config.linux.resources.cpu_shares"),
            "{err}"
        );
        let bad = cri::LinuxContainerResources {
            unified: [("../x".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(build(Some(&bad), true, FIELD).is_err());
    }
}
