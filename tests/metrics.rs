//! The Prometheus endpoint against a real berthd: RPC counts and
//! latencies move with the RPCs made, error codes are counted, node
//! gauges follow pods and containers, and a taken `metrics.address` stops
//! berthd with an error naming the key. Also the CRI's own metric RPCs
//! (ListMetricDescriptors, ListPodSandboxMetrics) on a running container.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use berth_cri_proto::v1::*;
use support::berthd::Berthd;
use support::container::{TestPod, pod_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A loopback address nothing listens on right now.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

fn metrics_config(address: SocketAddr) -> String {
    format!("[metrics]\naddress = \"{address}\"\n")
}

/// GET `path` over plain HTTP/1.1: the status line and the body.
async fn get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {address}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// The value of the sample `series` (name and labels exactly as written),
/// 0 when the series is not there (never-called methods are left out).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{series}: {v:?}: {e}")))
        .unwrap_or(0.0)
}

async fn scrape(address: SocketAddr) -> String {
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

#[tokio::test]
async fn rpc_counts_and_codes_move() {
    let address = free_address();
    let berthd = Berthd::start_with(&metrics_config(address)).await;
    let mut rt = berthd.runtime().await;

    let before = scrape(address).await;
    let version_ok = "berth_cri_requests_total{method=\"Version\",code=\"OK\"}";
    let status_missing = "berth_cri_requests_total{method=\"ContainerStatus\",code=\"NotFound\"}";
    let version_count = "berth_cri_request_duration_seconds_count{method=\"Version\"}";
    let version_fast = "berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"0.5\"}";
    let version_all = "berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"+Inf\"}";

    for _ in 0..3 {
        rt.version(VersionRequest::default())
            .await
            .expect("Version");
    }
    let err = rt
        .container_status(ContainerStatusRequest {
            container_id: "0123456789ab".into(),
            verbose: false,
        })
        .await
        .expect_err("no such container");
    assert_eq!(err.code(), Code::NotFound);

    let after = scrape(address).await;
    assert_eq!(
        sample(&after, version_ok) - sample(&before, version_ok),
        3.0
    );
    assert_eq!(
        sample(&after, status_missing) - sample(&before, status_missing),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, version_count), sample(&after, version_ok));
    assert_eq!(sample(&after, version_all), sample(&after, version_count));
    assert_eq!(
        sample(&after, version_fast),
        sample(&after, version_count),
        "Version answers well within 0.5 s"
    );
    assert!(
        sample(
            &after,
            "berth_cri_request_duration_seconds_sum{method=\"Version\"}"
        ) > 0.0
    );
    for line in [
        "# TYPE berth_cri_request_duration_seconds histogram",
        "# TYPE berth_cri_requests_total counter",
        "# TYPE berth_image_pull_bytes_total counter",
        "berth_pods{state=\"ready\"} 0",
        "berth_containers{state=\"running\"} 0",
        "berth_images 0",
        "berth_shims_running 0",
    ] {
        assert!(after.lines().any(|l| l == line), "{line:?} in:\n{after}");
    }
    let rss = sample(&after, "process_resident_memory_bytes");
    assert!(rss > 1e6, "berthd's RSS: {rss}");

    let (status, _) = get(address, "/nothing").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    // A pull from a registry that never answers, given up by the client:
    // the dropped call is counted as Canceled.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("silent registry");
    let image = format!("{}/never/answers:v1", silent.local_addr().expect("address"));
    let mut request = tonic::Request::new(PullImageRequest {
        image: Some(ImageSpec {
            image,
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let mut images = berthd.images().await;
    images
        .pull_image(request)
        .await
        .expect_err("the registry never answers");
    let canceled = "berth_cri_requests_total{method=\"PullImage\",code=\"Canceled\"}";
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = sample(&scrape(address).await, canceled);
        if counted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 1.0, "the abandoned pull is counted as Canceled");
    drop(silent);
}

#[tokio::test]
async fn a_taken_metrics_address_stops_berthd_naming_the_key() {
    let mut berthd = Berthd::start().await;
    berthd.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let address = taken.local_addr().expect("address");
    let mut config = std::fs::read_to_string(berthd.config_path()).expect("read config");
    config.push_str(&format!("\n{}", metrics_config(address)));
    std::fs::write(berthd.config_path(), config).expect("write config");

    let out = berthd.command().output().expect("run berthd");
    assert!(
        !out.status.success(),
        "berthd started on a taken metrics port"
    );
    let log = berthd.log();
    assert!(
        log.contains("metrics.address") && log.contains(&address.to_string()),
        "the error names the key and the address:\n{log}"
    );
}

/// A registry serving busybox, and a berthd with a pod network and the
/// metrics endpoint on `address` that has pulled the image.
async fn berthd_with_metrics(address: SocketAddr) -> (support::registry::Registry, String, Berthd) {
    let registry = support::registry::Registry::start().expect("registry");
    let image = support::image::ImageBuilder::busybox("berth/metrics")
        .tag("v1")
        .push(&registry)
        .await
        .expect("push")
        .reference()
        .to_string();
    let berthd = Berthd::start_with_network(&metrics_config(address)).await;
    berthd.pull(&image).await;
    (registry, image, berthd)
}

/// The one metric `name` of `metrics`, and its value.
fn metric<'a>(metrics: &'a [Metric], name: &str) -> (&'a Metric, u64) {
    let m = metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"));
    (m, m.value.as_ref().map_or(0, |v| v.value))
}

#[tokio::test]
async fn gauges_and_pod_metrics_follow_a_running_container() {
    if !support::root_tests("gauges_and_pod_metrics_follow_a_running_container") {
        return;
    }
    let address = free_address();
    let (_registry, image, berthd) = berthd_with_metrics(address).await;
    let text = scrape(address).await;
    assert!(
        sample(&text, "berth_image_pull_bytes_total") > 1000.0,
        "the pull downloaded busybox:\n{text}"
    );
    assert_eq!(sample(&text, "berth_images"), 1.0, "{text}");

    let mut pod = TestPod::run(&berthd, &image, pod_config("metrics", "metrics")).await;
    let mut config = pod.container(
        "worker",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; touch /ready; sleep 3600",
        ],
    );
    let limit = 256i64 << 20;
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    });
    let worker = pod.start(config).await;
    let mut filled = false;
    for _ in 0..200 {
        if pod.exec(&worker, &["test", "-e", "/ready"]).await.exit_code == 0 {
            filled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(filled, "the worker filled its /dev/shm");

    // The endpoint's gauges.
    let text = scrape(address).await;
    assert_eq!(sample(&text, "berth_pods{state=\"ready\"}"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "berth_containers{state=\"running\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "berth_shims_running"),
        2.0,
        "the pod's shim and the container's:\n{text}"
    );
    assert!(
        sample(
            &text,
            "berth_cri_requests_total{method=\"RunPodSandbox\",code=\"OK\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "berth_cri_requests_total{method=\"StartContainer\",code=\"OK\"}"
        ) >= 1.0
    );

    // The CRI's metric RPCs.
    let mut rt = berthd.runtime().await;
    let descriptors = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest::default())
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: HashMap<&str, usize> = descriptors
        .iter()
        .map(|d| (d.name.as_str(), d.label_keys.len()))
        .collect();
    let pods = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default())
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(pods.len(), 1, "{pods:#?}");
    let p = &pods[0];
    assert_eq!(p.pod_sandbox_id, pod.id);
    let (rx, _) = metric(&p.metrics, "container_network_receive_bytes_total");
    assert_eq!(
        rx.label_values,
        ["metrics", "berth-test", "", pod.id.as_str(), "", "eth0"],
        "pod-level labels: no container, no image, the pod's id, the interface"
    );
    assert_eq!(p.container_metrics.len(), 1, "{p:#?}");
    let c = &p.container_metrics[0];
    assert_eq!(c.container_id, worker);
    for m in p.metrics.iter().chain(&c.metrics) {
        let described = keys
            .get(m.name.as_str())
            .unwrap_or_else(|| panic!("{} is not described", m.name));
        assert_eq!(*described, m.label_values.len(), "{m:?}");
        assert!(m.timestamp > 0, "{m:?}");
    }
    let (usage, bytes) = metric(&c.metrics, "container_memory_usage_bytes");
    assert!(bytes >= 16 << 20, "the worker's /dev/shm counts: {bytes}");
    assert_eq!(
        usage.label_values,
        [
            "metrics",
            "berth-test",
            "worker",
            worker.as_str(),
            image.as_str()
        ]
    );
    let (_, spec_limit) = metric(&c.metrics, "container_spec_memory_limit_bytes");
    assert_eq!(spec_limit, limit as u64);
    let (_, processes) = metric(&c.metrics, "container_processes");
    assert!(processes >= 1, "{processes}");
    let (_, started) = metric(&c.metrics, "container_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(started > 0 && started <= now, "{started}");
    let (working_set, _) = metric(&c.metrics, "container_memory_working_set_bytes");
    assert_eq!(working_set.metric_type, MetricType::Gauge as i32);
    let (cpu, _) = metric(&c.metrics, "container_cpu_usage_seconds_total");
    assert_eq!(cpu.metric_type, MetricType::Counter as i32);

    let mut stream = rt
        .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest::default())
        .await
        .expect("StreamPodSandboxMetrics")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(message) = stream.message().await.expect("stream message") {
        streamed.extend(message.pod_sandbox_metrics);
    }
    assert_eq!(
        streamed
            .iter()
            .map(|p| p.pod_sandbox_id.as_str())
            .collect::<Vec<_>>(),
        [pod.id.as_str()]
    );

    // A resize of the running pod is accepted.
    rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.id.clone(),
        overhead: None,
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
    })
    .await
    .expect("UpdatePodSandboxResources");

    pod.remove().await;
    let text = scrape(address).await;
    assert_eq!(sample(&text, "berth_pods{state=\"ready\"}"), 0.0, "{text}");
    assert_eq!(sample(&text, "berth_shims_running"), 0.0, "{text}");
}
