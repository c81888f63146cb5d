//! What a container shares with its pod, end to end through a real
//! berthd, berth-shim and runc: the pod's network, IPC and UTS namespaces,
//! its PID namespace or one of its own, the node's namespaces for a
//! host-namespace pod, the pod's `/etc/hosts`, `/etc/resolv.conf` (from
//! its DNS config) and `/etc/hostname`, a `/dev/shm` shared by the pod's
//! containers, the pod's sysctls; and CreateContainer refused in a stopped
//! pod.
//!
//! Needs root.

mod support;

use std::collections::HashMap;

use berth_cri_proto::v1::*;
use support::container::{TestPod, pod_config};
use tonic::Code;

fn pid_mode(config: &mut ContainerConfig, mode: NamespaceMode) {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(NamespaceOption {
        pid: mode as i32,
        ..Default::default()
    });
}

/// The command lines of the processes a container sees, one per line.
const CMDLINES: &str =
    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null";

/// The namespace `kind` of the test process, as `readlink` prints it.
fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("read /proc/self/ns/{kind}: {e}"))
}

#[tokio::test]
async fn containers_share_the_pods_namespaces_and_files() {
    if !support::root_tests("containers_share_the_pods_namespaces_and_files") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/ns-pod").await;
    let mut config = pod_config("ns", "shared");
    config.hostname = "ns-pod".into();
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec![
            "berth-test.svc.cluster.local".into(),
            "svc.cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    });
    if let Some(linux) = config.linux.as_mut() {
        linux.sysctls = HashMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "80".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ]);
        // shareProcessNamespace: true.
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let host_shm_rmid = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced")
        .expect("read the host's kernel.shm_rmid_forced");
    let mut pod = TestPod::run(&berthd, &image, config).await;

    let mut shared = pod.container("shared", &["sleep", "3601"]);
    pid_mode(&mut shared, NamespaceMode::Pod);
    let shared = pod.start(shared).await;
    let mut peer = pod.container("peer", &["sleep", "3602"]);
    pid_mode(&mut peer, NamespaceMode::Pod);
    let peer = pod.start(peer).await;
    let mut own = pod.container("own", &["sleep", "3603"]);
    pid_mode(&mut own, NamespaceMode::Container);
    let own = pod.start(own).await;

    // PID: the pod's namespace holds the pause process as PID 1 and every
    // POD-mode container; a CONTAINER-mode one sees only itself.
    let procs = pod.sh(&shared, CMDLINES).await;
    assert!(procs.contains("sleep 3602"), "peer not seen: {procs}");
    assert!(!procs.contains("sleep 3603"), "own seen: {procs}");
    let init = pod.sh(&shared, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(init.contains("pause"), "PID 1 of the pod: {init:?}");
    let procs = pod.sh(&own, CMDLINES).await;
    assert!(
        !procs.contains("sleep 3601") && !procs.contains("sleep 3602") && !procs.contains("pause"),
        "a container PID namespace sees the pod: {procs}"
    );
    let init = pod.sh(&own, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert_eq!(init.trim_end(), "sleep 3603", "PID 1 of its own namespace");

    // Network, IPC and UTS: the pod's, not the node's.
    for kind in ["net", "ipc", "uts"] {
        let script = format!("readlink /proc/self/ns/{kind}");
        let a = pod.sh(&shared, &script).await;
        let b = pod.sh(&own, &script).await;
        assert_eq!(a, b, "{kind} namespace of two containers of the pod");
        assert_ne!(a.trim_end(), host_ns(kind), "{kind} is the node's");
    }

    // The pod's files.
    assert_eq!(pod.sh(&own, "hostname").await, "ns-pod\n");
    assert_eq!(pod.sh(&own, "cat /etc/hostname").await, "ns-pod\n");
    let hosts = pod.sh(&own, "cat /etc/hosts").await;
    assert!(
        hosts.starts_with("# Kubernetes-managed hosts file")
            && hosts.lines().any(|l| l == "127.0.0.1\tlocalhost"),
        "{hosts}"
    );
    assert_eq!(
        pod.sh(&own, "cat /etc/resolv.conf").await,
        "search berth-test.svc.cluster.local svc.cluster.local\n\
         nameserver 10.96.0.10\n\
         options ndots:5\n"
    );

    // /dev/shm is the pod's: what one container writes the other reads.
    pod.sh(&shared, "echo from-shared > /dev/shm/marker").await;
    assert_eq!(pod.sh(&own, "cat /dev/shm/marker").await, "from-shared\n");

    // The pod's sysctls, in the pod's namespaces only.
    assert_eq!(
        pod.sh(&own, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
            .await,
        "80\n"
    );
    assert_eq!(
        pod.sh(&own, "cat /proc/sys/kernel/shm_rmid_forced").await,
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced")
            .expect("read the host's kernel.shm_rmid_forced"),
        host_shm_rmid,
        "the node's value is untouched"
    );

    // A POD PID mode needs a pod that has one to share.
    let mut other = TestPod::run(&berthd, &image, {
        let mut config = pod_config("ns", "unshared");
        if let Some(linux) = config.linux.as_mut() {
            linux.security_context = Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        config
    })
    .await;
    let mut config = other.container("wants-pod-pid", &["true"]);
    pid_mode(&mut config, NamespaceMode::Pod);
    let err = other
        .create(config)
        .await
        .expect_err("no pod PID namespace");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("namespace_options.pid"),
        "{}",
        err.message()
    );
    other.assert_only_containers(&[]).await;
    other.remove().await;

    // A stopped pod takes no new container, and the refusal leaves
    // nothing behind.
    pod.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let err = pod
        .create(pod.container("late", &["true"]))
        .await
        .expect_err("create in a stopped pod");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains(&pod.id) && err.message().contains("not ready"),
        "{}",
        err.message()
    );
    pod.assert_only_containers(&[&shared, &peer, &own]).await;
    pod.remove().await;
}

#[tokio::test]
async fn a_host_namespace_pod_shares_the_nodes_namespaces() {
    if !support::root_tests("a_host_namespace_pod_shares_the_nodes_namespaces") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/ns-host").await;
    let mut config = pod_config("ns", "host");
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Node as i32,
                ipc: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut pod = TestPod::run(&berthd, &image, config).await;
    let mut config = pod.container("hostns", &["sleep", "3604"]);
    pid_mode(&mut config, NamespaceMode::Node);
    let id = pod.start(config).await;

    for kind in ["net", "ipc", "pid"] {
        let ns = pod.sh(&id, &format!("readlink /proc/self/ns/{kind}")).await;
        assert_eq!(ns.trim_end(), host_ns(kind), "{kind} namespace");
    }
    // Its own mount namespace still.
    let mnt = pod.sh(&id, "readlink /proc/self/ns/mnt").await;
    assert_ne!(mnt.trim_end(), host_ns("mnt"));
    // The node's hostname and hosts file.
    let node = nix::unistd::gethostname().expect("gethostname");
    let node = node.to_string_lossy();
    assert_eq!(pod.sh(&id, "hostname").await.trim_end(), node);
    assert_eq!(pod.sh(&id, "cat /etc/hostname").await.trim_end(), node);
    assert_eq!(
        pod.sh(&id, "cat /etc/hosts").await,
        std::fs::read_to_string("/etc/hosts").expect("read the node's /etc/hosts")
    );
    // The node's /dev/shm.
    let name = format!("berth-test-{}-hostns", std::process::id());
    pod.sh(&id, &format!("echo node > /dev/shm/{name}")).await;
    let on_host = std::fs::read_to_string(format!("/dev/shm/{name}"));
    let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
    assert_eq!(on_host.expect("the file in the node's /dev/shm"), "node\n");

    pod.remove().await;
}
