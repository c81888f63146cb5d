//! UpdatePodSandboxResources: the kubelet tells the runtime a pod's new
//! pod-level resources after an in-place resize.
//!
//! The kubelet owns the pod's cgroup (the sandbox's `cgroup_parent`): it
//! writes the new limits there itself before it calls this RPC, and the
//! containers' own limits follow through UpdateContainerResources. The
//! call is a notification for runtimes that size something else for the
//! pod (a VM, NRI plugins), as containerd and CRI-O treat it. berth has
//! nothing else to size, so it checks the request (the pod exists, every
//! figure is one the kernel would take), logs the new resources and
//! answers OK; writing the cgroup itself would race the kubelet, the one
//! writer of that cgroup.

use berth_cri_proto::v1 as cri;

use super::{Daemon, DaemonError};

fn invalid(field: String, reason: impl Into<String>) -> DaemonError {
    DaemonError::InvalidPodResources {
        field,
        reason: reason.into(),
    }
}

impl Daemon {
    /// UpdatePodSandboxResources of pod `id` (full id or unique prefix).
    pub fn update_pod_sandbox_resources(
        &self,
        id: &str,
        overhead: Option<&cri::LinuxContainerResources>,
        resources: Option<&cri::LinuxContainerResources>,
    ) -> Result<(), DaemonError> {
        if id.is_empty() {
            return Err(invalid("pod_sandbox_id".into(), "is empty"));
        }
        if let Some(r) = overhead {
            check("overhead", r)?;
        }
        if let Some(r) = resources {
            check("resources", r)?;
        }
        let pod = self.sandboxes.status(id)?;
        let r = resources.cloned().unwrap_or_default();
        tracing::info!(
            pod = %pod.id,
            cpu_period = r.cpu_period,
            cpu_quota = r.cpu_quota,
            cpu_shares = r.cpu_shares,
            memory_limit_in_bytes = r.memory_limit_in_bytes,
            cpuset_cpus = %r.cpuset_cpus,
            overhead = ?overhead,
            "pod resources updated (the kubelet applies them to the pod cgroup)"
        );
        Ok(())
    }
}

/// Checks one resources message; errors name `field.<name>`.
fn check(field: &str, r: &cri::LinuxContainerResources) -> Result<(), DaemonError> {
    let name = |n: &str| format!("{field}.{n}");
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid(
            name("cpu_period"),
            format!("{} µs is outside 1000..=1000000", r.cpu_period),
        ));
    }
    if !matches!(r.cpu_quota, 0 | -1) && r.cpu_quota < 1_000 {
        return Err(invalid(
            name("cpu_quota"),
            format!("{} µs: must be at least 1000, or -1 for none", r.cpu_quota),
        ));
    }
    if r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares) {
        return Err(invalid(
            name("cpu_shares"),
            format!("{} is outside 2..=262144", r.cpu_shares),
        ));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            name("memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(invalid(
            name("memory_swap_limit_in_bytes"),
            format!(
                "{} is negative (-1 means none)",
                r.memory_swap_limit_in_bytes
            ),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            name("oom_score_adj"),
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    for (key, list) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !list.is_empty() && !is_cpu_list(list) {
            return Err(invalid(
                name(key),
                format!(
                    "{} is not a list like \"0-3,6\"",
                    crate::input::quoted(list)
                ),
            ));
        }
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if h.page_size.is_empty() {
            return Err(invalid(
                name(&format!("hugepage_limits[{i}].page_size")),
                "is empty",
            ));
        }
    }
    for key in r.unified.keys() {
        if key.is_empty() || key.contains('/') || key == "." || key == ".." {
            return Err(invalid(
                name(&format!("unified[{}]", crate::input::quoted(key))),
                "is not a cgroup file name",
            ));
        }
    }
    Ok(())
}

/// A kernel cpu or node list: `N` or `N-M` (N ≤ M) items, comma-separated.
fn is_cpu_list(list: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    list.split(',').all(|item| match item.split_once('-') {
        None => number(item),
        Some((lo, hi)) => {
            number(lo) && number(hi) && lo.parse::<u32>().ok() <= hi.parse::<u32>().ok()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: cri::LinuxContainerResources) -> String {
        check("resources", &r).expect_err("refused").to_string()
    }

    #[test]
    fn what_the_kubelet_sends_is_accepted() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            cpu_shares: 1536,
            memory_limit_in_bytes: 512 << 20,
            cpuset_cpus: "0-3,6".into(),
            unified: [("memory.high".to_string(), "400M".to_string())].into(),
            ..Default::default()
        };
        check("resources", &r).expect("valid");
        check("overhead", &cri::LinuxContainerResources::default()).expect("empty");
        let unlimited = cri::LinuxContainerResources {
            cpu_quota: -1,
            memory_swap_limit_in_bytes: -1,
            ..Default::default()
        };
        check("resources", &unlimited).expect("-1 means none");
    }

    #[test]
    fn bad_figures_are_named() {
        let cases = [
            (
                cri::LinuxContainerResources {
                    cpu_period: 10,
                    ..Default::default()
                },
                "resources.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: -5,
                    ..Default::default()
                },
                "resources.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_shares: 1,
                    ..Default::default()
                },
                "resources.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: -1,
                    ..Default::default()
                },
                "resources.memory_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    oom_score_adj: 2000,
                    ..Default::default()
                },
                "resources.oom_score_adj",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..Default::default()
                },
                "resources.cpuset_cpus",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_mems: "a".into(),
                    ..Default::default()
                },
                "resources.cpuset_mems",
            ),
            (
                cri::LinuxContainerResources {
                    unified: [("../x".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "resources.unified[",
            ),
        ];
        for (r, field) in cases {
            let msg = err(r);
            assert!(msg.starts_with(field), "{msg:?} names {field}");
        }
    }

    #[test]
    fn cpu_lists() {
        for ok in ["0", "0-3", "0-3,6,8-9", "12"] {
            assert!(is_cpu_list(ok), "{ok}");
        }
        for bad in ["", "-", "1-", "3-1", "0,,1", "a", "0-3 ", "1234567"] {
            assert!(!is_cpu_list(bad), "{bad}");
        }
    }
}
