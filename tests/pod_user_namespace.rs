//! Pods in a user namespace of their own (CRI `userns_options` mode POD,
//! KEP-127), end to end through a real berthd, berth-shim, berth-pause and
//! runc: what is refused (naming the field, leaving nothing behind), and
//! what a container of such a pod sees: the pod's ID mappings, a root
//! filesystem its root owns, and idmapped bind mounts.
//!
//! Needs root. The end-to-end test also needs an OCI runtime with idmapped
//! mounts (runc >= 1.2): set `BERTH_TEST_RUNC` to its path (Debian 12's
//! runc 1.1 has none); without it that test is skipped with a message.

mod support;

use std::os::unix::fs::MetadataExt;

use berth_cri_proto::v1::*;
use support::berthd::Berthd;
use support::container::{TestPod, pod_config};
use tonic::Code;

/// The OCI runtime with idmapped mounts the end-to-end test runs.
const RUNC_ENV: &str = "BERTH_TEST_RUNC";

const USERNS_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn userns(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> NamespaceOption {
    NamespaceOption {
        userns_options: Some(UserNamespace {
            mode: mode as i32,
            uids,
            gids,
        }),
        ..Default::default()
    }
}

fn with_namespaces(mut config: PodSandboxConfig, ns: NamespaceOption) -> PodSandboxConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns);
    config
}

async fn handler_supports_user_namespaces(berthd: &Berthd, handler: &str) -> bool {
    let status = berthd
        .runtime()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    status
        .runtime_handlers
        .iter()
        .find(|h| h.name == handler)
        .unwrap_or_else(|| panic!("handler {handler} in Status: {status:?}"))
        .features
        .as_ref()
        .is_some_and(|f| f.user_namespaces)
}

#[tokio::test]
async fn user_namespace_requests_are_refused_naming_the_field() {
    if !support::root_tests("user_namespace_requests_are_refused_naming_the_field") {
        return;
    }
    // `false features` fails: a runtime that reports nothing.
    let berthd = Berthd::start_with_network(&format!(
        "[runtimes.runc]\nshim = \"berth-shim\"\nruntime = \"{}\"\n",
        support::require_binary("false").display()
    ))
    .await;
    assert!(
        !handler_supports_user_namespaces(&berthd, "runc").await,
        "a runtime without idmapped mounts has no user namespaces"
    );
    let mut rt = berthd.runtime().await;
    let one = || vec![mapping(0, 200000, 65536)];
    let cases = [
        (
            userns(
                NamespaceMode::Pod,
                vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
                one(),
            ),
            format!("{USERNS_FIELD}.uids: has 2 mappings"),
        ),
        (
            userns(
                NamespaceMode::Pod,
                one(),
                vec![mapping(0, 1000, 10), mapping(10, 2000, 10)],
            ),
            format!("{USERNS_FIELD}.gids: has 2 mappings"),
        ),
        (
            userns(
                NamespaceMode::Pod,
                vec![mapping(1, 1000, 100000)],
                vec![mapping(1, 1000, 100000)],
            ),
            format!("{USERNS_FIELD}.uids[0].container_id: is 1"),
        ),
        (
            userns(NamespaceMode::Container, Vec::new(), Vec::new()),
            format!("{USERNS_FIELD}.mode: CONTAINER"),
        ),
        (
            userns(NamespaceMode::Target, Vec::new(), Vec::new()),
            format!("{USERNS_FIELD}.mode: TARGET"),
        ),
        (
            NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..userns(NamespaceMode::Pod, one(), one())
            },
            "config.linux.security_context.namespace_options.network: NODE".to_string(),
        ),
        // Valid, but the handler's runtime has no idmapped mounts.
        (
            userns(NamespaceMode::Pod, one(), one()),
            format!("{USERNS_FIELD}.mode: POD needs idmapped mounts"),
        ),
    ];
    for (n, (ns, want)) in cases.into_iter().enumerate() {
        let config = with_namespaces(pod_config("userns", &format!("refused-{n}")), ns);
        let err = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().starts_with(&want),
            "{want}: {}",
            err.message()
        );
    }
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "nothing is left of refused pods: {pods:?}");
    let sandboxes = berthd.dir().join("run/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox state left: {left:?}");

    // NODE is the node's user namespace, as without options.
    let config = with_namespaces(
        pod_config("userns", "node"),
        userns(NamespaceMode::Node, Vec::new(), Vec::new()),
    );
    // The pod runs (its pause process needs no OCI runtime) and is removed.
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("NODE is the node's user namespace")
        .into_inner()
        .pod_sandbox_id;
    support::stop_and_remove_pod(&mut rt, &id).await;
    support::remove_test_cgroup(&format!("berth-userns-{}-node", std::process::id()));
}

#[tokio::test]
async fn a_pod_user_namespace_maps_ids_rootfs_and_mounts() {
    if !support::root_tests("a_pod_user_namespace_maps_ids_rootfs_and_mounts") {
        return;
    }
    let Some(runc) = std::env::var_os(RUNC_ENV).filter(|v| !v.is_empty()) else {
        eprintln!(
            "\n!!! SKIPPED a_pod_user_namespace_maps_ids_rootfs_and_mounts: needs an OCI \
             runtime with idmapped mounts (runc >= 1.2); set {RUNC_ENV}=/path/to/runc !!!\n"
        );
        return;
    };
    let runc = std::path::PathBuf::from(runc);
    let registry = support::registry::Registry::start().expect("registry");
    let image = support::image::ImageBuilder::busybox("berth/userns")
        .tag("v1")
        .push(&registry)
        .await
        .expect("push")
        .reference()
        .to_string();
    let berthd = Berthd::start_with_network(&format!(
        "[runtimes.runc]\nshim = \"berth-shim\"\nruntime = \"{}\"\n",
        runc.display()
    ))
    .await;
    berthd.pull(&image).await;
    assert!(
        handler_supports_user_namespaces(&berthd, "runc").await,
        "{} reports idmapped mounts",
        runc.display()
    );

    let ns = userns(
        NamespaceMode::Pod,
        vec![mapping(0, 200000, 65536)],
        vec![mapping(0, 300000, 65536)],
    );
    let config = with_namespaces(pod_config("userns", "mapped"), ns.clone());
    let mut pod = TestPod::run(&berthd, &image, config).await;

    // A host directory owned by the host's root, mounted into the pod.
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("from-host"), "hello\n").expect("write");
    let mut container = pod.container(
        "mapped",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; \
             stat -c 'root %u:%g' /; stat -c 'passwd %u:%g' /etc/passwd; \
             echo new > /etc/new-file && stat -c 'new %u:%g' /etc/new-file; \
             stat -c 'mount %u:%g' /data/from-host; echo back > /data/from-pod",
        ],
    );
    container.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: data.path().display().to_string(),
        ..Default::default()
    }];
    container
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns);
    let (status, log) = pod.run_to_exit(container).await;
    assert_eq!(status.exit_code, 0, "{log}");
    let lines: Vec<String> = log
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "0 200000 65536",
            "0 300000 65536",
            "0",
            "0",
            "root 0:0",
            "passwd 0:0",
            "new 0:0",
            "mount 0:0",
        ],
        "{log}"
    );
    // Through the idmapped mount the pod's root writes as the volume's
    // root: on disk the file is uid/gid 0, not the pod's host ids, so a
    // volume reads the same whether or not its pod has a user namespace.
    let written = std::fs::metadata(data.path().join("from-pod")).expect("from-pod");
    assert_eq!((written.uid(), written.gid()), (0, 0));
    // Outside the idmapped mounts, what the pod's root creates is owned by
    // the host ids it is mapped to (the rootfs's writable layer).
    let upper = std::fs::read_dir(berthd.dir().join("root/containers"))
        .expect("containers dir")
        .flatten()
        .map(|e| e.path().join("fs/etc/new-file"))
        .find(|p| p.exists())
        .expect("the new file in a writable layer");
    let created = std::fs::metadata(&upper).expect("new-file");
    assert_eq!((created.uid(), created.gid()), (200000, 300000));

    // A container cannot leave the pod's user namespace.
    let mut node = pod.container("node", &["true"]);
    node.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(userns(NamespaceMode::Node, Vec::new(), Vec::new()));
    let err = pod
        .create(node)
        .await
        .expect_err("NODE in a POD userns pod");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("userns_options.mode"), "{err:?}");

    pod.remove().await;
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let dir = berthd.dir().display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
    assert!(left.is_empty(), "mounts left after the pod: {left:?}");
}
