//! Pod start benchmark: RunPodSandbox latency (and, with `BENCH_IMAGE`,
//! RunPodSandbox + CreateContainer + StartContainer), serial and with many
//! pods started at once, against any CRI endpoints, so berth and
//! containerd are measured side by side on the same machine.
//!
//! ```sh
//! cargo bench --bench pod_start -- \
//!     berth=unix:///run/berth/berth.sock \
//!     containerd=unix:///run/harness-containerd/containerd.sock
//! ```
//!
//! Each endpoint runs `BENCH_PODS` (default 50) pods one after the other,
//! then `BENCH_ROUNDS` (default 3) rounds of `BENCH_PARALLEL` (default 20)
//! pods started at once; only RunPodSandbox is timed, every pod is stopped
//! and removed afterwards. Pods get the cgroup parent `/berth-bench` and a
//! network from the runtime's own CNI configuration. Latencies are printed
//! as p50 / p99 in milliseconds. containerd needs its sandbox (pause) image
//! present; pull it first if its configuration names one.
//!
//! `BENCH_IMAGE=<reference>` adds a second table: each pod also gets one
//! container of that image (`sleep 3600`), created and started inside the
//! timed span. The image is pulled first through each endpoint (untimed);
//! name one the endpoints can pull (the conformance kit's registry serves
//! `registry.k8s.io/e2e-test-images/busybox:1.29-2` through their mirrors).

#[path = "../tests/support/mod.rs"]
#[allow(missing_docs)]
mod support;

use std::time::{Duration, Instant};

use berth_cri_proto::v1::image_service_client::ImageServiceClient;
use berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri_proto::v1::*;
use tonic::transport::Channel;

async fn connect(endpoint: &str) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(support::cri::channel(endpoint).await)
        .max_decoding_message_size(16 << 20)
}

fn config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/berth-bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_one(
    mut rt: RuntimeServiceClient<Channel>,
    name: String,
    image: Option<String>,
) -> (String, Duration) {
    let start = Instant::now();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config(&name)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    if let Some(image) = image {
        let container = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "main".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(config(&name)),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: container,
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    }
    (id, start.elapsed())
}

async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let containers = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: id.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    for c in containers {
        let _ = rt
            .stop_container(StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 0,
            })
            .await;
        let _ = rt
            .remove_container(RemoveContainerRequest { container_id: c.id })
            .await;
    }
    support::cri::remove_pod_quietly(rt, id).await;
}

#[tokio::main]
async fn main() {
    let Some(endpoints) = support::cri::endpoints_from_args("pod_start") else {
        return;
    };
    let (pods, parallel, rounds) = (
        support::cri::env_usize("BENCH_PODS", 50),
        support::cri::env_usize("BENCH_PARALLEL", 20),
        support::cri::env_usize("BENCH_ROUNDS", 3),
    );
    let image = std::env::var("BENCH_IMAGE").ok().filter(|i| !i.is_empty());
    let mut spans = vec![("RunPodSandbox", None)];
    if let Some(image) = &image {
        spans.push((
            "RunPodSandbox + CreateContainer + StartContainer",
            Some(image.clone()),
        ));
        for (name, endpoint) in &endpoints {
            let mut images = ImageServiceClient::new(support::cri::channel(endpoint).await);
            images
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{name}: pull {image}: {e}"));
        }
    }
    for (span, image) in spans {
        println!("\n{span}\n");
        println!(
            "| runtime | serial p50 / p99 (ms) | {parallel} at once p50 / p99 (ms) | wall time of {parallel} at once (ms, median) |"
        );
        println!("| --- | --- | --- | --- |");
        for (name, endpoint) in &endpoints {
            let mut rt = connect(endpoint).await;
            // One throw-away pod, so no sample pays a one-off cost.
            let (id, _) = run_one(rt.clone(), "warmup".into(), image.clone()).await;
            remove(&mut rt, &id).await;

            let mut serial = Vec::new();
            for i in 0..pods {
                let (id, took) = run_one(rt.clone(), format!("serial-{i}"), image.clone()).await;
                serial.push(took);
                remove(&mut rt, &id).await;
            }
            let mut concurrent = Vec::new();
            let mut walls = Vec::new();
            for round in 0..rounds {
                let start = Instant::now();
                let tasks: Vec<_> = (0..parallel)
                    .map(|i| {
                        tokio::spawn(run_one(
                            rt.clone(),
                            format!("par-{round}-{i}"),
                            image.clone(),
                        ))
                    })
                    .collect();
                let mut ids = Vec::new();
                for task in tasks {
                    let (id, took) = task.await.expect("pod task");
                    concurrent.push(took);
                    ids.push(id);
                }
                walls.push(start.elapsed());
                for id in ids {
                    remove(&mut rt, &id).await;
                }
            }
            println!(
                "| {name} | {} / {} | {} / {} | {} |",
                support::cri::percentile_ms(&mut serial, 0.5),
                support::cri::percentile_ms(&mut serial, 0.99),
                support::cri::percentile_ms(&mut concurrent, 0.5),
                support::cri::percentile_ms(&mut concurrent, 0.99),
                support::cri::percentile_ms(&mut walls, 0.5),
            );
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(hierarchy.path().join("berth-bench"));
    }
}
