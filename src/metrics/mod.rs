//! berthd's Prometheus endpoint: `GET /metrics` on `metrics.address` (off
//! unless configured), in the text exposition format 0.0.4.
//!
//! What it reports:
//! - `berth_cri_request_duration_seconds{method}`: a latency histogram per
//!   CRI RPC, and `berth_cri_requests_total{method,code}`: RPCs answered
//!   per gRPC code (`Canceled` for a call dropped before it answered).
//!   Both are recorded by the CRI façade's `traced` decorator into
//!   [`CRI`], fixed tables of atomics (no lock, no allocation per
//!   request).
//! - `berth_image_pull_bytes_total`: compressed layer bytes downloaded by
//!   pulls ([`add_pulled_bytes`]).
//! - `berth_pods{state}`, `berth_containers{state}`, `berth_images`,
//!   `berth_shims_running`: read from the daemon's stores when scraped
//!   ([`Inventory`]), so they cannot drift from what the CRI lists.
//! - `process_resident_memory_bytes`: berthd's RSS, under the name every
//!   Prometheus client library gives it, so stock dashboards find it.
//! - `berth_build_info{version}`: always 1.
//!
//! The format is written by hand ([`exposition`], about a hundred lines
//! with its escaping rules tested) rather than with `prometheus-client`:
//! the label sets are fixed and known at compile time (41 methods × 17
//! codes), so static atomic tables need neither that crate's registry nor
//! the lock its label families take on every lookup, and berthd gains no
//! dependency for a format this small.

pub mod exposition;
mod histogram;
mod process;
mod rpc;
mod server;

use std::sync::atomic::{AtomicU64, Ordering};

pub use exposition::{CONTENT_TYPE, Exposition, HistogramSnapshot, Kind, Value};
pub use histogram::{Histogram, LATENCY_BOUNDS_NS};
pub use process::{parse_vm_rss, resident_memory_bytes};
pub use rpc::{CriMetrics, METHODS, RpcTimer};
pub use server::{MetricsError, MetricsServer};

/// The CRI figures of this process, recorded for every RPC.
pub static CRI: CriMetrics = CriMetrics::new();

/// Compressed layer bytes downloaded by pulls since berthd started.
static PULL_BYTES: AtomicU64 = AtomicU64::new(0);

/// Counts `bytes` downloaded by a pull.
pub fn add_pulled_bytes(bytes: u64) {
    PULL_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// Pods, containers, images and shims on the node, by state where they
/// have one; the state names are the label values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Pod sandboxes per state (`ready`, `notready`).
    pub pods: Vec<(&'static str, u64)>,
    /// Containers per state (`created`, `running`, `exited`, `unknown`).
    pub containers: Vec<(&'static str, u64)>,
    /// Images.
    pub images: u64,
    /// Shim processes alive (one per started container and per pod).
    pub shims_running: u64,
}

/// Where the scrape-time gauges come from (the daemon).
pub trait Inventory: Send + Sync + 'static {
    /// The counts as they are now, or why they cannot be taken (berthd is
    /// stopping). Called on a blocking thread: it may read files.
    fn counts(&self) -> Result<NodeCounts, String>;
}

/// A whole scrape reply: the CRI figures, pull bytes, `counts` when there
/// are any, berthd's RSS and build info.
pub fn render(counts: Option<&NodeCounts>) -> String {
    let mut e = Exposition::new();
    CRI.write(&mut e);
    e.family(
        "berth_image_pull_bytes_total",
        "Compressed layer bytes downloaded by image pulls (counted once all of a pull's layers are in).",
        Kind::Counter,
    );
    e.sample(
        "berth_image_pull_bytes_total",
        &[],
        Value::Int(PULL_BYTES.load(Ordering::Relaxed)),
    );
    if let Some(c) = counts {
        write_counts(&mut e, c);
    }
    if let Some(rss) = resident_memory_bytes() {
        e.family(
            "process_resident_memory_bytes",
            "Resident memory size of berthd in bytes.",
            Kind::Gauge,
        );
        e.sample("process_resident_memory_bytes", &[], Value::Int(rss));
    }
    e.family(
        "berth_build_info",
        "berthd's version; the value is always 1.",
        Kind::Gauge,
    );
    e.sample(
        "berth_build_info",
        &[("version", crate::VERSION)],
        Value::Int(1),
    );
    e.finish()
}

fn write_counts(e: &mut Exposition, c: &NodeCounts) {
    e.family("berth_pods", "Pod sandboxes by state.", Kind::Gauge);
    for (state, n) in &c.pods {
        e.sample("berth_pods", &[("state", state)], Value::Int(*n));
    }
    e.family("berth_containers", "Containers by state.", Kind::Gauge);
    for (state, n) in &c.containers {
        e.sample("berth_containers", &[("state", state)], Value::Int(*n));
    }
    e.family("berth_images", "Images on the node.", Kind::Gauge);
    e.sample("berth_images", &[], Value::Int(c.images));
    e.family(
        "berth_shims_running",
        "Shim processes alive, one per started container and per pod sandbox.",
        Kind::Gauge,
    );
    e.sample("berth_shims_running", &[], Value::Int(c.shims_running));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_every_family_once() {
        let counts = NodeCounts {
            pods: vec![("ready", 2), ("notready", 1)],
            containers: vec![("running", 3), ("exited", 0)],
            images: 4,
            shims_running: 5,
        };
        let before = render(Some(&counts));
        add_pulled_bytes(1000);
        let text = render(Some(&counts));
        for line in [
            "berth_pods{state=\"ready\"} 2",
            "berth_pods{state=\"notready\"} 1",
            "berth_containers{state=\"running\"} 3",
            "berth_containers{state=\"exited\"} 0",
            "berth_images 4",
            "berth_shims_running 5",
            "# TYPE berth_image_pull_bytes_total counter",
            "# TYPE berth_cri_request_duration_seconds histogram",
            "# TYPE berth_cri_requests_total counter",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
        let pulled = |t: &str| -> u64 {
            t.lines()
                .find_map(|l| l.strip_prefix("berth_image_pull_bytes_total "))
                .and_then(|v| v.parse().ok())
                .expect("pull bytes sample")
        };
        // Other tests of this process may pull too: at least ours.
        assert!(pulled(&text) >= pulled(&before) + 1000);
        let mut types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family appears twice:\n{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn without_counts_the_node_gauges_are_left_out() {
        let text = render(None);
        assert!(!text.contains("berth_pods"), "{text}");
        assert!(text.contains("berth_build_info{version=\""), "{text}");
    }
}
