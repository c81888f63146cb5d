//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metrics
//! the kubelet serves on `/metrics/cadvisor` when it takes pod and
//! container stats from the runtime (`PodAndContainerStatsFromCRI`), built
//! from the same samples as ListPodSandboxStats.
//!
//! Names, label keys and units follow cAdvisor (and containerd 2.x, which
//! implements the same RPCs): label values are pod, namespace, container,
//! id, image, then `interface` or `device` where the descriptor says so.
//! Only metrics berth can fill are described, and a metric whose figure
//! the kernel did not give is left out rather than sent as zero. The CRI
//! carries whole numbers, so cumulative CPU time is whole seconds, as
//! containerd sends it.

use std::time::SystemTime;

use berth_cri_proto::v1 as cri;

use crate::clock::unix_nanos;
use crate::container::ContainerRecord;
use crate::daemon::{ContainerSample, PodSample};

/// Which label keys a metric has.
#[derive(Clone, Copy)]
enum Labels {
    /// pod, namespace, container, id, image.
    Base,
    /// The base ones and `interface`.
    Network,
    /// The base ones and `device`.
    Disk,
    /// The base ones, `failure_type` and `scope`.
    MemoryFailures,
}

impl Labels {
    fn keys(self) -> Vec<String> {
        let extra: &[&str] = match self {
            Labels::Base => &[],
            Labels::Network => &["interface"],
            Labels::Disk => &["device"],
            Labels::MemoryFailures => &["failure_type", "scope"],
        };
        ["pod", "namespace", "container", "id", "image"]
            .iter()
            .chain(extra)
            .map(|k| k.to_string())
            .collect()
    }
}

const COUNTER: cri::MetricType = cri::MetricType::Counter;
const GAUGE: cri::MetricType = cri::MetricType::Gauge;

/// A metric berth reports: name, help, label keys, type.
struct Descriptor(&'static str, &'static str, Labels, cri::MetricType);

const CPU_USAGE: &str = "container_cpu_usage_seconds_total";
const MEMORY_USAGE: &str = "container_memory_usage_bytes";
const MEMORY_WORKING_SET: &str = "container_memory_working_set_bytes";
const MEMORY_RSS: &str = "container_memory_rss";
const MEMORY_SWAP: &str = "container_memory_swap";
const MEMORY_FAILURES: &str = "container_memory_failures_total";
const PROCESSES: &str = "container_processes";
const FS_USAGE: &str = "container_fs_usage_bytes";
const START_TIME: &str = "container_start_time_seconds";
const LAST_SEEN: &str = "container_last_seen";
const SPEC_CPU_PERIOD: &str = "container_spec_cpu_period";
const SPEC_CPU_QUOTA: &str = "container_spec_cpu_quota";
const SPEC_CPU_SHARES: &str = "container_spec_cpu_shares";
const SPEC_MEMORY_LIMIT: &str = "container_spec_memory_limit_bytes";
const SPEC_SWAP_LIMIT: &str = "container_spec_memory_swap_limit_bytes";
const RX_BYTES: &str = "container_network_receive_bytes_total";
const RX_PACKETS: &str = "container_network_receive_packets_total";
const RX_DROPPED: &str = "container_network_receive_packets_dropped_total";
const RX_ERRORS: &str = "container_network_receive_errors_total";
const TX_BYTES: &str = "container_network_transmit_bytes_total";
const TX_PACKETS: &str = "container_network_transmit_packets_total";
const TX_DROPPED: &str = "container_network_transmit_packets_dropped_total";
const TX_ERRORS: &str = "container_network_transmit_errors_total";

const DESCRIPTORS: &[Descriptor] = &[
    Descriptor(
        CPU_USAGE,
        "Cumulative CPU time consumed in seconds.",
        Labels::Base,
        COUNTER,
    ),
    Descriptor(
        MEMORY_USAGE,
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        MEMORY_WORKING_SET,
        "Current working set in bytes: usage minus inactive file cache.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        MEMORY_RSS,
        "Size of RSS in bytes (anonymous memory).",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        MEMORY_SWAP,
        "Container swap usage in bytes.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        MEMORY_FAILURES,
        "Cumulative count of memory allocation failures (page faults).",
        Labels::MemoryFailures,
        COUNTER,
    ),
    Descriptor(
        PROCESSES,
        "Number of processes running inside the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        FS_USAGE,
        "Number of bytes that are consumed by the container's writable layer.",
        Labels::Disk,
        GAUGE,
    ),
    Descriptor(
        START_TIME,
        "Start time of the container since unix epoch in seconds.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        LAST_SEEN,
        "Last time a container was seen by the exporter",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        SPEC_CPU_PERIOD,
        "CPU period of the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        SPEC_CPU_QUOTA,
        "CPU quota of the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        SPEC_CPU_SHARES,
        "CPU share of the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        SPEC_MEMORY_LIMIT,
        "Memory limit for the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        SPEC_SWAP_LIMIT,
        "Memory swap limit for the container.",
        Labels::Base,
        GAUGE,
    ),
    Descriptor(
        RX_BYTES,
        "Cumulative count of bytes received",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        RX_PACKETS,
        "Cumulative count of packets received",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        RX_DROPPED,
        "Cumulative count of packets dropped while receiving",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        RX_ERRORS,
        "Cumulative count of errors encountered while receiving",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        TX_BYTES,
        "Cumulative count of bytes transmitted",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        TX_PACKETS,
        "Cumulative count of packets transmitted",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        TX_DROPPED,
        "Cumulative count of packets dropped while transmitting",
        Labels::Network,
        COUNTER,
    ),
    Descriptor(
        TX_ERRORS,
        "Cumulative count of errors encountered while transmitting",
        Labels::Network,
        COUNTER,
    ),
];

/// ListMetricDescriptors: every metric ListPodSandboxMetrics may send.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|Descriptor(name, help, labels, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: labels.keys(),
        })
        .collect()
}

/// Metrics with one set of label values and one timestamp.
struct Batch<'a> {
    out: &'a mut Vec<cri::Metric>,
    labels: Vec<String>,
    timestamp: i64,
}

impl Batch<'_> {
    /// Adds `name` (a described metric) when there is a value.
    fn push(&mut self, name: &'static str, value: Option<u64>, extra: &[&str]) {
        let Some(value) = value else { return };
        let described = DESCRIPTORS.iter().find(|d| d.0 == name);
        debug_assert!(described.is_some(), "{name} has no descriptor");
        let kind = described.map_or(GAUGE, |d| d.3);
        let mut label_values = self.labels.clone();
        label_values.extend(extra.iter().map(|v| v.to_string()));
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.timestamp,
            metric_type: kind.into(),
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

/// A positive `i64` limit from the CRI (0 and -1 mean none).
fn set(v: i64) -> Option<u64> {
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// One pod's PodSandboxMetrics: its network counters, and the metrics of
/// each of its containers that runs (only a running container has a
/// cgroup to measure).
pub fn pod(sample: &PodSample, now: SystemTime) -> cri::PodSandboxMetrics {
    let record = &sample.record;
    let meta = &record.metadata;
    let pod_labels = |container: &str, id: &str, image: &str| {
        vec![
            meta.name.clone(),
            meta.namespace.clone(),
            container.to_string(),
            id.to_string(),
            image.to_string(),
        ]
    };
    let mut metrics = Vec::new();
    if let Some(network) = &sample.network {
        // Pod-level figures: no container, no image, the pod's id.
        let mut batch = Batch {
            out: &mut metrics,
            labels: pod_labels("", &record.id, ""),
            timestamp: unix_nanos(network.timestamp),
        };
        for i in &network.interfaces {
            let name = [i.name.as_str()];
            batch.push(RX_BYTES, Some(i.rx_bytes), &name);
            batch.push(RX_PACKETS, Some(i.rx_packets), &name);
            batch.push(RX_DROPPED, Some(i.rx_dropped), &name);
            batch.push(RX_ERRORS, Some(i.rx_errors), &name);
            batch.push(TX_BYTES, Some(i.tx_bytes), &name);
            batch.push(TX_PACKETS, Some(i.tx_packets), &name);
            batch.push(TX_DROPPED, Some(i.tx_dropped), &name);
            batch.push(TX_ERRORS, Some(i.tx_errors), &name);
        }
    }
    let container_metrics = sample
        .containers
        .iter()
        .filter(|c| c.cgroup.is_some())
        .map(|c| {
            let r = &c.record;
            container(c, pod_labels(&r.metadata_name, &r.id, &r.image), now)
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: record.id.clone(),
        metrics,
        container_metrics,
    }
}

fn container(
    sample: &ContainerSample,
    labels: Vec<String>,
    now: SystemTime,
) -> cri::ContainerMetrics {
    let mut metrics = Vec::new();
    let now_ns = unix_nanos(now);
    if let Some(cg) = &sample.cgroup {
        let m = &cg.memory;
        let mut batch = Batch {
            out: &mut metrics,
            labels: labels.clone(),
            timestamp: unix_nanos(cg.timestamp),
        };
        batch.push(
            CPU_USAGE,
            cg.cpu.usage_core_ns.map(|ns| ns / 1_000_000_000),
            &[],
        );
        batch.push(MEMORY_USAGE, m.usage_bytes, &[]);
        batch.push(MEMORY_WORKING_SET, m.working_set_bytes, &[]);
        batch.push(MEMORY_RSS, m.rss_bytes, &[]);
        batch.push(MEMORY_SWAP, m.swap_usage_bytes, &[]);
        batch.push(MEMORY_FAILURES, m.page_faults, &["pgfault", "container"]);
        batch.push(
            MEMORY_FAILURES,
            m.major_page_faults,
            &["pgmajfault", "container"],
        );
        batch.push(PROCESSES, cg.process_count, &[]);
    }
    if let Some(disk) = &sample.disk {
        let mut batch = Batch {
            out: &mut metrics,
            labels: labels.clone(),
            timestamp: unix_nanos(disk.measured_at),
        };
        batch.push(
            FS_USAGE,
            Some(disk.used_bytes),
            &[&sample.layers_mountpoint],
        );
    }
    let mut batch = Batch {
        out: &mut metrics,
        labels,
        timestamp: now_ns,
    };
    let r: &ContainerRecord = &sample.record;
    batch.push(START_TIME, set(r.started_at / 1_000_000_000), &[]);
    batch.push(LAST_SEEN, u64::try_from(now_ns / 1_000_000_000).ok(), &[]);
    if let Some(res) = &r.resources {
        batch.push(SPEC_CPU_PERIOD, set(res.cpu_period), &[]);
        batch.push(SPEC_CPU_QUOTA, set(res.cpu_quota), &[]);
        batch.push(SPEC_CPU_SHARES, set(res.cpu_shares), &[]);
        batch.push(SPEC_MEMORY_LIMIT, set(res.memory_limit_in_bytes), &[]);
        batch.push(SPEC_SWAP_LIMIT, set(res.memory_swap_limit_in_bytes), &[]);
    }
    cri::ContainerMetrics {
        container_id: r.id.clone(),
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_and_labelled() {
        let d = descriptors();
        let mut names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), d.len(), "duplicate descriptor");
        for want in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_memory_usage_bytes",
            "container_memory_rss",
            "container_spec_memory_limit_bytes",
            "container_network_receive_bytes_total",
            "container_network_transmit_bytes_total",
            "container_processes",
            "container_fs_usage_bytes",
        ] {
            assert!(names.contains(&want), "{want} is described");
        }
        let keys = |name: &str| {
            d.iter()
                .find(|d| d.name == name)
                .map(|d| d.label_keys.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            keys("container_processes"),
            ["pod", "namespace", "container", "id", "image"]
        );
        assert_eq!(
            keys("container_network_receive_bytes_total")[5],
            "interface"
        );
        assert_eq!(keys("container_fs_usage_bytes")[5], "device");
        assert_eq!(
            keys("container_memory_failures_total")[5..],
            ["failure_type", "scope"]
        );
    }

    #[test]
    fn every_metric_sent_is_described_with_as_many_label_values() {
        let mut out = Vec::new();
        let mut batch = Batch {
            out: &mut out,
            labels: vec![
                "p".into(),
                "ns".into(),
                "c".into(),
                "id".into(),
                "img".into(),
            ],
            timestamp: 7,
        };
        batch.push(CPU_USAGE, Some(3), &[]);
        batch.push(RX_BYTES, Some(10), &["eth0"]);
        batch.push(MEMORY_FAILURES, Some(5), &["pgfault", "container"]);
        batch.push(MEMORY_RSS, None, &[]);
        assert_eq!(out.len(), 3, "no value, no metric");
        let described = descriptors();
        for m in &out {
            let d = described
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} is not described", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
            assert_eq!(m.timestamp, 7);
        }
        assert_eq!(out[0].metric_type, i32::from(cri::MetricType::Counter));
        assert_eq!(out[0].value, Some(cri::UInt64Value { value: 3 }));
        assert_eq!(out[1].label_values[5], "eth0");
    }

    #[test]
    fn unset_limits_are_left_out() {
        assert_eq!(set(0), None);
        assert_eq!(set(-1), None);
        assert_eq!(set(1 << 20), Some(1 << 20));
    }
}
