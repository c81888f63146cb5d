//! Container and pod stats end to end: figures move with what the
//! containers do (cpu when one spins, memory when one fills its /dev/shm,
//! the writable layer when one writes a file), filters select, and pods
//! report their network interfaces.
//!
//! Needs root.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use tonic::transport::Channel;

fn cgroup_parent() -> String {
    format!("berth-xtest-{}", std::process::id())
}

fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "stats".into(),
            uid: "uid-stats".into(),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        labels: HashMap::from([("app".to_string(), "stats".to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", cgroup_parent()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn list(
    rt: &mut RuntimeServiceClient<Channel>,
    filter: ContainerStatsFilter,
) -> Vec<ContainerStats> {
    rt.list_container_stats(ListContainerStatsRequest {
        filter: Some(filter),
    })
    .await
    .expect("ListContainerStats")
    .into_inner()
    .stats
}

fn by_id<'a>(stats: &'a [ContainerStats], id: &str) -> &'a ContainerStats {
    stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .unwrap_or_else(|| panic!("stats of {id} in {stats:?}"))
}

fn value(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

#[tokio::test]
async fn stats_follow_what_containers_do() {
    if !support::root_tests("stats_follow_what_containers_do") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/stats").await;
    let mut rt = berthd.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let mut run = async |name: &str, script: &str| {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    command: vec!["sh".into(), "-c".into(), script.into()],
                    labels: HashMap::from([("role".to_string(), name.to_string())]),
                    ..Default::default()
                }),
                sandbox_config: Some(pod_config()),
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
        id
    };
    let spinner = run("spinner", "while :; do :; done").await;
    let filler = run(
        "filler",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; \
         dd if=/dev/zero of=/layer bs=1M count=8 2>/dev/null; touch /ready; sleep 3600",
    )
    .await;
    // Wait until the filler is done filling.
    let mut ready = false;
    for _ in 0..200 {
        let out = rt
            .exec_sync(ExecSyncRequest {
                container_id: filler.clone(),
                cmd: vec!["ls".into(), "/ready".into()],
                timeout: 5,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        if out.exit_code == 0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the filler finished");

    let first = list(&mut rt, ContainerStatsFilter::default()).await;
    assert_eq!(first.len(), 2, "{first:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = list(&mut rt, ContainerStatsFilter::default()).await;

    let cpu = |s: &[ContainerStats]| {
        value(
            &by_id(s, &spinner)
                .cpu
                .as_ref()
                .expect("cpu")
                .usage_core_nano_seconds,
        )
    };
    assert!(cpu(&second) > cpu(&first), "the spinner's cpu grows");
    let rate = value(
        &by_id(&second, &spinner)
            .cpu
            .as_ref()
            .expect("cpu")
            .usage_nano_cores,
    );
    assert!(
        rate > 100_000_000,
        "a spinning shell uses a good part of a core: {rate}"
    );

    let filled = by_id(&second, &filler);
    let memory = filled.memory.as_ref().expect("memory");
    assert!(value(&memory.usage_bytes) >= 64 << 20, "{memory:?}");
    assert!(value(&memory.working_set_bytes) >= 60 << 20, "{memory:?}");
    let layer = filled.writable_layer.as_ref().expect("writable layer");
    assert!(value(&layer.used_bytes) >= 8 << 20, "{layer:?}");
    assert!(value(&layer.inodes_used) >= 2, "{layer:?}");

    // Filters: by label, by id prefix, by pod.
    let only = list(
        &mut rt,
        ContainerStatsFilter {
            label_selector: HashMap::from([("role".to_string(), "filler".to_string())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(only.len(), 1);
    by_id(&only, &filler);
    let only = list(
        &mut rt,
        ContainerStatsFilter {
            id: spinner[..12].to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(only.len(), 1);
    by_id(&only, &spinner);
    let none = list(
        &mut rt,
        ContainerStatsFilter {
            pod_sandbox_id: "0000".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());

    // The pod: its cgroup holds both containers, its network has eth0.
    let pods = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: HashMap::from([("app".to_string(), "stats".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let linux = pods[0].linux.as_ref().expect("linux stats");
    assert_eq!(
        pods[0].attributes.as_ref().map(|a| a.id.as_str()),
        Some(pod.as_str())
    );
    assert!(value(&linux.memory.as_ref().expect("memory").usage_bytes) >= 64 << 20);
    assert!(value(&linux.process.as_ref().expect("process").process_count) >= 3);
    assert_eq!(linux.containers.len(), 2);
    let network = linux.network.as_ref().expect("network");
    assert_eq!(
        network.default_interface.as_ref().map(|i| i.name.as_str()),
        Some("eth0"),
        "{network:?}"
    );
    let single = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(single.attributes.map(|a| a.id), Some(pod.clone()));

    support::stop_and_remove_pod(&mut rt, &pod).await;
    support::remove_test_cgroup(&cgroup_parent());
}
