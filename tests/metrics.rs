//! The Prometheus endpoint against a real berthd: RPC counts and
//! latencies move with the RPCs made, error codes are counted, node
//! gauges follow pods and containers, and a taken `metrics.address` stops
//! berthd with an error naming the key. Also the CRI's own metric RPCs
//! (ListMetricDescriptors, ListPodSandboxMetrics) on a running container.

mod support;

use std::net::SocketAddr;

use berth_cri_proto::v1::*;
use support::berthd::Berthd;
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
