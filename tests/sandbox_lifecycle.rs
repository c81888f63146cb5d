//! Pod sandboxes end to end against a real berthd: berth's pause process,
//! real CNI plugins on a bridge of the test's own, namespaces, files,
//! cgroups; restarts of berthd; rollback and leaks.
//!
//! Needs root.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use support::berthd::Berthd;
use tonic::Code;
use tonic::transport::Channel;

/// The cgroup parent of a test's pods: one per test, as tests run in
/// parallel in one process.
fn parent(test: &str) -> String {
    format!("berth-test-{}-{test}", std::process::id())
}

fn pod(test: &str, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", parent(test)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> (PodSandboxStatus, serde_json::Value) {
    let reply = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info = serde_json::from_str(&reply.info["info"]).expect("verbose info json");
    (reply.status.expect("status"), info)
}

async fn list(
    rt: &mut RuntimeServiceClient<Channel>,
    filter: Option<PodSandboxFilter>,
) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

async fn stop_and_remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

fn nsenter(netns: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a removed pod could leave behind on the host.
fn leftovers(berthd: &Berthd, test: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir = berthd.dir().display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&dir))
            .map(|l| format!("mount {l}")),
    );
    found.extend(
        berthd
            .allocated_ips()
            .into_iter()
            .map(|ip| format!("ip {ip}")),
    );
    for sub in ["run/sandboxes", "root/sandboxes"] {
        if let Ok(d) = std::fs::read_dir(berthd.dir().join(sub)) {
            found.extend(d.flatten().map(|e| format!("dir {}", e.path().display())));
        }
    }
    let procs = Command::new("pgrep")
        .args(["-f", &format!("berth-pause --state-dir {dir}")])
        .output();
    if let Ok(out) = procs {
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|p| format!("pause pid {p}")),
        );
    }
    // A shim exits just after answering Shutdown; zombies wait for the
    // host's init and do not count.
    let live_shims = || -> Vec<String> {
        let ps = Command::new("ps").args(["-eo", "stat=,args="]).output();
        ps.map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("berth-shim") && l.contains(&dir))
                .filter(|l| !l.trim_start().starts_with('Z'))
                .map(|l| format!("shim {l}"))
                .collect()
        })
        .unwrap_or_default()
    };
    for _ in 0..200 {
        if live_shims().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    found.extend(live_shims());
    if let Some(net) = berthd.network() {
        let links = Command::new("ip")
            .args(["-o", "link", "show", "master", &net.bridge])
            .output();
        if let Ok(out) = links {
            found.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| format!("veth {l}")),
            );
        }
    }
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/memory/{}", parent(test)));
    if let Ok(d) = std::fs::read_dir(&cgroup) {
        found.extend(
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| format!("cgroup {}", e.path().display())),
        );
    }
    found
}

/// Removes the test's parent cgroups (the kubelet's, in real life).
fn remove_parent_cgroups(test: &str) {
    support::remove_test_cgroup(&parent(test));
}

#[tokio::test]
async fn run_inspect_list_stop_remove() {
    if !support::root_tests("run_inspect_list_stop_remove") {
        return;
    }
    let berthd = Berthd::start_with_network("").await;
    let net = berthd.network().expect("network").clone();
    let mut rt = berthd.runtime().await;
    let mut config = pod("a", "web");
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18081,
        host_ip: String::new(),
    }];
    if let Some(linux) = config.linux.as_mut() {
        linux
            .sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    }
    let id = run(&mut rt, config).await.expect("RunPodSandbox");

    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    // No user namespace asked: the node's, reported as NODE.
    let userns = st
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .and_then(|o| o.userns_options.as_ref())
        .map(|u| u.mode);
    assert_eq!(userns, Some(NamespaceMode::Node as i32));
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(
        ip.starts_with(&format!("{}.", net.prefix)),
        "pod ip {ip} in {}.0/24",
        net.prefix
    );
    let netns = info["netns"].as_str().expect("netns path").to_string();
    assert!(nsenter(&netns, &["ip", "-o", "addr", "show", "eth0"]).contains(&ip));
    assert_eq!(
        nsenter(
            &netns,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .trim(),
        "0"
    );
    let uts = netns.replace("/ns/net", "/ns/uts");
    let hostname = Command::new("nsenter")
        .arg(format!("--uts={uts}"))
        .arg("hostname")
        .output()
        .expect("hostname");
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "web-host");
    let shm = PathBuf::from(info["stateDir"].as_str().expect("state dir")).join("shm");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&shm.display().to_string()) && l.contains("tmpfs")),
        "pod /dev/shm tmpfs at {}",
        shm.display()
    );
    let pid = info["pid"].as_i64().expect("pause pid");
    assert!(PathBuf::from(format!("/proc/{pid}")).exists());
    let sandbox_dir = PathBuf::from(info["sandboxDir"].as_str().expect("sandbox dir"));
    let resolv = std::fs::read_to_string(sandbox_dir.join("resolv.conf")).expect("resolv.conf");
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"),
        "{resolv}"
    );
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("18081"),
        "hostPort rule"
    );

    // Filters: id prefix, state, labels.
    let by_prefix = list(
        &mut rt,
        Some(PodSandboxFilter {
            id: id[..12].into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_prefix.len(), 1);
    let by_label = list(
        &mut rt,
        Some(PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "nope".into())]),
            ..Default::default()
        }),
    )
    .await;
    assert!(by_label.is_empty());

    let mut stream = rt
        .stream_pod_sandboxes(StreamPodSandboxesRequest::default())
        .await
        .expect("StreamPodSandboxes")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream message") {
        streamed.extend(msg.pod_sandboxes);
    }
    assert_eq!(streamed, list(&mut rt, None).await);

    // A second pod with the same name is refused, naming the holder.
    let err = run(&mut rt, pod("a", "web")).await.expect_err("name taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .expect("stop");
    let not_ready = list(
        &mut rt,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(not_ready.len(), 1);
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains("18081"),
        "hostPort rule gone after stop"
    );
    stop_and_remove(&mut rt, &id).await;
    // Idempotent, also for ids that never existed.
    stop_and_remove(&mut rt, &id).await;
    stop_and_remove(&mut rt, "0123456789abcdef").await;
    assert!(list(&mut rt, None).await.is_empty());
    assert_eq!(leftovers(&berthd, "a"), Vec::<String>::new());
    // The name is free again.
    let again = run(&mut rt, pod("a", "web")).await.expect("name released");
    stop_and_remove(&mut rt, &again).await;
    remove_parent_cgroups("a");
    support::remove_unused_portmap_chains();
}

#[tokio::test]
async fn bad_configs_and_failures_leave_nothing() {
    if !support::root_tests("bad_configs_and_failures_leave_nothing") {
        return;
    }
    let berthd = Berthd::start_with_network("").await;
    let mut rt = berthd.runtime().await;
    let mut no_name = pod("b", "x");
    if let Some(m) = no_name.metadata.as_mut() {
        m.name.clear();
    }
    let err = run(&mut rt, no_name).await.expect_err("no name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("config.metadata.name"),
        "{}",
        err.message()
    );

    let mut unsafe_sysctl = pod("b", "y");
    if let Some(linux) = unsafe_sysctl.linux.as_mut() {
        linux.sysctls.insert("kernel.panic".into(), "1".into());
    }
    let err = run(&mut rt, unsafe_sysctl)
        .await
        .expect_err("unsafe sysctl");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kernel.panic"), "{}", err.message());

    // A network that cannot be set up: the pause process, pins, dirs and
    // name are all rolled back.
    std::fs::write(
        berthd.cni_conf_dir().join("00-broken.conflist"),
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"bridge","bridge":"btbroken0","ipam":{"type":"host-local","ranges":[[{"subnet":"not-a-subnet"}]]}}]}"#,
    )
    .expect("write broken conflist");
    let err = run(&mut rt, pod("b", "z"))
        .await
        .expect_err("network failure");
    assert!(err.message().contains("network"), "{}", err.message());
    assert!(list(&mut rt, None).await.is_empty());
    assert_eq!(leftovers(&berthd, "b"), Vec::<String>::new());
    let _ = Command::new("ip")
        .args(["link", "del", "btbroken0"])
        .output();
    std::fs::remove_file(berthd.cni_conf_dir().join("00-broken.conflist")).expect("remove broken");
    let id = run(&mut rt, pod("b", "z"))
        .await
        .expect("same name works after the rollback");
    stop_and_remove(&mut rt, &id).await;
    remove_parent_cgroups("b");
}

#[tokio::test]
async fn pods_survive_a_berthd_kill() {
    if !support::root_tests("pods_survive_a_berthd_kill") {
        return;
    }
    let mut berthd = Berthd::start_with_network("").await;
    let mut rt = berthd.runtime().await;
    let keep = run(&mut rt, pod("c", "keep")).await.expect("run keep");
    let dies = run(&mut rt, pod("c", "dies")).await.expect("run dies");
    let (before, info) = status(&mut rt, &keep).await;
    let (_, dies_info) = status(&mut rt, &dies).await;

    berthd.kill9().await;
    // While berthd is down, one pause process dies.
    let dies_pid = dies_info["pid"].as_i64().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dies_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill pause");
    berthd.restart().await;
    let mut rt = berthd.runtime().await;

    let (after, info_after) = status(&mut rt, &keep).await;
    assert_eq!(after.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(after.network, before.network, "same IP");
    assert_eq!(info_after["pid"], info["pid"], "same pause process");
    let (dead, _) = status(&mut rt, &dies).await;
    assert_eq!(dead.state, PodSandboxState::SandboxNotready as i32);

    stop_and_remove(&mut rt, &keep).await;
    stop_and_remove(&mut rt, &dies).await;
    assert_eq!(leftovers(&berthd, "c"), Vec::<String>::new());
    remove_parent_cgroups("c");
}

#[tokio::test]
async fn host_network_pods_use_the_node_network() {
    if !support::root_tests("host_network_pods_use_the_node_network") {
        return;
    }
    let berthd = Berthd::start_with_network("").await;
    let mut rt = berthd.runtime().await;
    let mut config = pod("d", "hostnet");
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
    let id = run(&mut rt, config).await.expect("host network pod");
    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert!(
        st.network.map(|n| n.ip).unwrap_or_default().is_empty(),
        "no pod IP"
    );
    assert!(info["netns"].is_null());
    assert!(berthd.allocated_ips().is_empty());
    stop_and_remove(&mut rt, &id).await;
    assert_eq!(leftovers(&berthd, "d"), Vec::<String>::new());
    remove_parent_cgroups("d");
}

#[tokio::test]
async fn fifty_pods_leave_nothing_behind() {
    if !support::root_tests("fifty_pods_leave_nothing_behind") {
        return;
    }
    let berthd = Berthd::start_with_network("").await;
    let mut rt = berthd.runtime().await;
    for i in 0..50 {
        let id = run(&mut rt, pod("e", &format!("p{i}"))).await.expect("run");
        stop_and_remove(&mut rt, &id).await;
    }
    assert_eq!(leftovers(&berthd, "e"), Vec::<String>::new());
    remove_parent_cgroups("e");
}
