//! A container's cgroup and resources end to end, through a real berthd,
//! berth-shim and runc: the cgroup sits under the pod's cgroup parent and
//! goes with the container, the CRI limits (cpu shares, quota and period,
//! cpuset, memory) are what the cgroup files say, oom_score_adj is raised
//! as asked (and a lowering this host does not permit is clamped, not
//! fatal), and a container over its memory limit exits `OOMKilled`.
//!
//! Needs root (and the cgroup v1 hierarchies this host mounts).

mod support;

use berth_cri_proto::v1::*;
use support::container::{TestPod, pod_config};
use tonic::Code;

fn resources(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The cgroup of `pid` in hierarchy `controller`, from /proc/<pid>/cgroup.
fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/cgroup: {e}"));
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} line in /proc/{pid}/cgroup:\n{text}"))
}

/// The page sizes of the node's hugepages, named as the kubelet names them
/// (`2MB`, `1GB`).
fn node_page_sizes() -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(if kb.is_multiple_of(1 << 20) {
                format!("{}GB", kb >> 20)
            } else if kb.is_multiple_of(1 << 10) {
                format!("{}MB", kb >> 10)
            } else {
                format!("{kb}KB")
            })
        })
        .collect();
    sizes.sort();
    sizes
}

#[tokio::test]
async fn limits_reach_the_cgroup_under_the_pod_parent() {
    if !support::root_tests("limits_reach_the_cgroup_under_the_pod_parent") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/res-limits").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("res", "limits")).await;
    let parent = pod.cgroup_parent();

    let mut config = pod.container("limited", &["sleep", "3600"]);
    let r = resources(&mut config);
    r.cpu_shares = 512;
    r.cpu_period = 50_000;
    r.cpu_quota = 25_000;
    r.cpuset_cpus = "1".into();
    r.cpuset_mems = "0".into();
    r.memory_limit_in_bytes = 64 << 20;
    r.oom_score_adj = 500;
    let limited = pod.start(config).await;
    let unlimited = pod
        .start(pod.container("unlimited", &["sleep", "3601"]))
        .await;

    // The process lives in <cgroup parent>/<container id> in every
    // hierarchy.
    let pid = pod.host_pid(&limited, "sleep");
    for controller in ["cpu", "cpuset", "memory", "pids", "devices", "freezer"] {
        assert_eq!(
            cgroup_of(pid, controller),
            format!("/{parent}/{limited}"),
            "{controller} cgroup of the container's process"
        );
    }
    assert_eq!(pod.cgroup_file("cpu", &limited, "cpu.shares"), "512");
    assert_eq!(
        pod.cgroup_file("cpu", &limited, "cpu.cfs_period_us"),
        "50000"
    );
    assert_eq!(
        pod.cgroup_file("cpu", &limited, "cpu.cfs_quota_us"),
        "25000"
    );
    assert_eq!(pod.cgroup_file("cpuset", &limited, "cpuset.cpus"), "1");
    assert_eq!(pod.cgroup_file("cpuset", &limited, "cpuset.mems"), "0");
    assert_eq!(
        pod.cgroup_file("memory", &limited, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    let adj = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("oom_score_adj of {pid}: {e}"))
    };
    assert_eq!(adj(pid), "500");
    // The process sees its cpuset.
    let affinity = pod.sh(&limited, "taskset -p 1").await;
    assert!(
        affinity.trim_end().ends_with(": 2"),
        "affinity of pid 1: {affinity:?}"
    );

    // Without resources, none of those limits.
    let other = pod.host_pid(&unlimited, "sleep");
    assert_eq!(cgroup_of(other, "memory"), format!("/{parent}/{unlimited}"));
    assert_eq!(pod.cgroup_file("cpu", &unlimited, "cpu.shares"), "1024");
    assert_eq!(pod.cgroup_file("cpu", &unlimited, "cpu.cfs_quota_us"), "-1");
    let memory: u64 = pod
        .cgroup_file("memory", &unlimited, "memory.limit_in_bytes")
        .parse()
        .expect("memory limit is a number");
    assert!(memory > 1 << 40, "unlimited memory: {memory}");

    // A lower oom_score_adj than berthd's own needs CAP_SYS_RESOURCE,
    // which this host's bounding set lacks: the container starts with
    // berthd's value rather than failing.
    let mut config = pod.container("lowered", &["sleep", "3602"]);
    resources(&mut config).oom_score_adj = -500;
    let lowered = pod.start(config).await;
    let own = adj(i32::try_from(berthd.pid()).expect("pid fits i32"));
    let lowered_pid = pod.host_pid(&lowered, "sleep");
    assert_eq!(adj(lowered_pid), own, "clamped to berthd's oom_score_adj");

    // The kubelet sends a hugepage limit (0 unless asked) for every page
    // size the node has; where the node has no hugetlb controller they
    // cannot be applied and must not stop the container.
    let mut config = pod.container("hugepages", &["sleep", "3603"]);
    resources(&mut config).hugepage_limits = node_page_sizes()
        .into_iter()
        .map(|page_size| HugepageLimit {
            page_size,
            limit: 0,
        })
        .collect();
    let hugepages = pod.start(config).await;
    if std::path::Path::new("/sys/fs/cgroup/hugetlb").is_dir() {
        assert_eq!(
            pod.cgroup_file("hugetlb", &hugepages, "hugetlb.2MB.limit_in_bytes"),
            "0"
        );
    }
    // `unified` needs cgroup v2: refused at creation on a v1 node rather
    // than failing the start.
    let mut config = pod.container("unified", &["sleep", "3604"]);
    resources(&mut config).unified = [("memory.high".to_string(), "100000000".to_string())].into();
    let mut kept = vec![limited.clone(), hugepages.clone()];
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        kept.push(pod.start(config).await);
    } else {
        let err = pod.create(config).await.expect_err("unified on cgroup v1");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(
            err.message().contains("config.linux.resources.unified")
                && err.message().contains("cgroup v2"),
            "{}",
            err.message()
        );
    }

    // Bad values are refused, naming the field, leaving nothing behind.
    let mut config = pod.container("bad", &["true"]);
    resources(&mut config).cpu_shares = -2;
    let err = pod.create(config).await.expect_err("negative shares");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("cpu_shares"), "{}", err.message());
    let mut config = pod.container("bad", &["true"]);
    resources(&mut config).oom_score_adj = 1001;
    let err = pod.create(config).await.expect_err("oom_score_adj too big");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("oom_score_adj"), "{}", err.message());
    kept.extend([unlimited.clone(), lowered.clone()]);
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    pod.assert_only_containers(&kept).await;

    // The container's cgroup goes with the container.
    pod.rt
        .remove_container(RemoveContainerRequest {
            container_id: limited.clone(),
        })
        .await
        .expect("RemoveContainer");
    for controller in ["cpu", "cpuset", "memory", "pids"] {
        let dir = pod.cgroup_dir(controller, &limited);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    pod.remove().await;
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    if !support::root_tests("a_container_over_its_memory_limit_is_oom_killed") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/res-oom").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("res", "oom")).await;

    // dd's 64 MiB buffer is filled from /dev/zero: over a 16 MiB limit.
    let mut config = pod.container(
        "hog",
        &[
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    );
    resources(&mut config).memory_limit_in_bytes = 16 << 20;
    let (status, log) = pod.run_to_exit(config).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?} {log}"
    );

    // The same command within its limit completes.
    let mut config = pod.container(
        "fits",
        &[
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=4M",
            "count=1",
        ],
    );
    resources(&mut config).memory_limit_in_bytes = 16 << 20;
    let (status, log) = pod.run_to_exit(config).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "{status:?} {log}"
    );
    pod.remove().await;
}

/// A swap limit reaches the cgroup where the node accounts swap (v1
/// `memory.memsw.limit_in_bytes`); a kernel without swap accounting skips
/// this test loudly.
#[tokio::test]
async fn a_swap_limit_reaches_the_cgroup() {
    if !support::root_tests("a_swap_limit_reaches_the_cgroup") {
        return;
    }
    let memsw = std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        eprintln!(
            "\n!!! SKIPPED a_swap_limit_reaches_the_cgroup: this kernel does not account swap !!!\n"
        );
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/res-swap").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("res", "swap")).await;
    let mut config = pod.container("swap", &["sleep", "3600"]);
    let r = resources(&mut config);
    r.memory_limit_in_bytes = 64 << 20;
    r.memory_swap_limit_in_bytes = 96 << 20;
    let id = pod.start(config).await;
    let limit = pod.cgroup_file("memory", &id, "memory.memsw.limit_in_bytes");
    pod.remove().await;
    assert_eq!(limit, (96u64 << 20).to_string());
}
