//! Listing and stats with many objects: ListContainers, ListContainerStats
//! and ListPodSandboxStats latency with `BENCH_PODS` pods (default 100) of
//! `BENCH_CONTAINERS` running containers each (default 5: 500
//! containers), against any CRI endpoints side by side.
//!
//! ```sh
//! BENCH_IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2 \
//!     cargo bench --bench list_stats -- \
//!     berth=unix:///run/berth/berth.sock \
//!     containerd=unix:///run/harness-containerd/containerd.sock
//! ```
//!
//! `BENCH_IMAGE` is required (an image both endpoints can pull; nothing
//! public is named by default). Each call is made `BENCH_CALLS` times
//! (default 20) after one warm-up call; p50 / p99 in milliseconds. Every
//! pod is removed at the end.

#[path = "../tests/support/mod.rs"]
#[allow(missing_docs)]
mod support;

use std::time::Instant;

use berth_cri_proto::v1::image_service_client::ImageServiceClient;
use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use tonic::transport::Channel;

fn pod_config(i: usize) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("list-{i}"),
            uid: format!("uid-list-{i}"),
            namespace: "berth-bench".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth-bench/list-{i}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn populate(
    rt: &mut RuntimeServiceClient<Channel>,
    image: &str,
    pods: usize,
    per: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..pods {
        let config = pod_config(i);
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
            .into_inner()
            .pod_sandbox_id;
        for c in 0..per {
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: format!("c{c}"),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: image.into(),
                            ..Default::default()
                        }),
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    }),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest { container_id: id })
                .await
                .unwrap_or_else(|e| panic!("StartContainer: {e}"));
        }
        ids.push(pod);
    }
    ids
}

async fn clean(rt: &mut RuntimeServiceClient<Channel>, pods: &[String]) {
    for pod in pods {
        support::cri::remove_pod_quietly(rt, pod).await;
    }
}

/// Times `calls` calls of `call` after one warm-up; "p50 / p99".
async fn time<F, Fut>(calls: usize, mut call: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let _ = call().await;
    let mut samples = Vec::new();
    let mut count = 0;
    for _ in 0..calls {
        let start = Instant::now();
        count = call().await;
        samples.push(start.elapsed());
    }
    format!(
        "{} / {} ({count} items)",
        support::cri::percentile_ms(&mut samples, 0.5),
        support::cri::percentile_ms(&mut samples, 0.99)
    )
}

#[tokio::main]
async fn main() {
    let Some(endpoints) = support::cri::endpoints_from_args("list_stats") else {
        return;
    };
    let Some(image) = std::env::var("BENCH_IMAGE").ok().filter(|i| !i.is_empty()) else {
        eprintln!("list_stats: set BENCH_IMAGE to an image the endpoints can pull");
        return;
    };
    let (pods, per, calls) = (
        support::cri::env_usize("BENCH_PODS", 100),
        support::cri::env_usize("BENCH_CONTAINERS", 5),
        support::cri::env_usize("BENCH_CALLS", 20),
    );
    println!(
        "| runtime ({} containers in {pods} pods) | ListContainers p50 / p99 (ms) | ListContainerStats | ListPodSandboxStats |",
        pods * per
    );
    println!("| --- | --- | --- | --- |");
    for (name, endpoint) in &endpoints {
        let channel = support::cri::channel(endpoint).await;
        ImageServiceClient::new(channel.clone())
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: pull {image}: {e}"));
        let mut rt = RuntimeServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let ids = populate(&mut rt, &image, pods, per).await;
        let list = time(calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_containers(ListContainersRequest::default())
                    .await
                    .map(|r| r.into_inner().containers.len())
                    .unwrap_or(0)
            }
        })
        .await;
        let stats = time(calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_container_stats(ListContainerStatsRequest::default())
                    .await
                    .map(|r| r.into_inner().stats.len())
                    .unwrap_or(0)
            }
        })
        .await;
        let pod_stats = time(calls, || {
            let mut rt = rt.clone();
            async move {
                rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                    .await
                    .map(|r| r.into_inner().stats.len())
                    .unwrap_or(0)
            }
        })
        .await;
        println!("| {name} | {list} | {stats} | {pod_stats} |");
        clean(&mut rt, &ids).await;
    }
    for i in 0..pods {
        support::remove_test_cgroup(&format!("berth-bench/list-{i}"));
    }
    support::remove_test_cgroup("berth-bench");
}
