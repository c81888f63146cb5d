//! Stats samples as the CRI reports them: figures the kernel does not give
//! stay unset rather than zero.

use std::time::SystemTime;

use berth_cri_proto::v1 as cri;

use crate::clock::unix_nanos;
use crate::container::ContainerFilter;
use crate::daemon::{ContainerSample, PodSample};
use crate::sandbox::{SandboxFilter, SandboxState};
use crate::stats::{CgroupStats, Pressure, PressureLine};

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn psi_line(line: &Option<PressureLine>) -> Option<cri::PsiData> {
    line.as_ref().map(|l| cri::PsiData {
        total: l.total_ns(),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    })
}

fn psi(pressure: &Option<Pressure>) -> Option<cri::PsiStats> {
    pressure.as_ref().map(|p| cri::PsiStats {
        full: psi_line(&p.full),
        some: psi_line(&p.some),
    })
}

/// cpu, memory, swap and io of a cgroup sample taken at `at` (ns).
fn usage(
    cgroup: Option<&CgroupStats>,
    nano_cores: Option<u64>,
    at: i64,
) -> (
    cri::CpuUsage,
    cri::MemoryUsage,
    cri::SwapUsage,
    cri::IoUsage,
) {
    let timestamp = cgroup.map_or(at, |c| unix_nanos(c.timestamp));
    let cpu = cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(cgroup.and_then(|c| c.cpu.usage_core_ns)),
        usage_nano_cores: value(nano_cores),
        psi: cgroup.and_then(|c| psi(&c.cpu.pressure)),
    };
    let m = cgroup.map(|c| &c.memory);
    let memory = cri::MemoryUsage {
        timestamp,
        working_set_bytes: value(m.and_then(|m| m.working_set_bytes)),
        available_bytes: value(m.and_then(|m| m.available_bytes)),
        usage_bytes: value(m.and_then(|m| m.usage_bytes)),
        rss_bytes: value(m.and_then(|m| m.rss_bytes)),
        page_faults: value(m.and_then(|m| m.page_faults)),
        major_page_faults: value(m.and_then(|m| m.major_page_faults)),
        psi: m.and_then(|m| psi(&m.pressure)),
    };
    let swap = cri::SwapUsage {
        timestamp,
        swap_available_bytes: value(m.and_then(|m| m.swap_available_bytes)),
        swap_usage_bytes: value(m.and_then(|m| m.swap_usage_bytes)),
    };
    let io = cri::IoUsage {
        timestamp,
        psi: cgroup.and_then(|c| psi(&c.io.pressure)),
    };
    (cpu, memory, swap, io)
}

/// A container's ContainerStats.
pub fn container(sample: &ContainerSample) -> cri::ContainerStats {
    let now = unix_nanos(SystemTime::now());
    let record = &sample.record;
    let (cpu, memory, swap, io) = usage(sample.cgroup.as_ref(), sample.nano_cores, now);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(super::container::metadata(record)),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: sample.disk.as_ref().map(|d| cri::FilesystemUsage {
            timestamp: unix_nanos(d.measured_at),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: sample.layers_mountpoint.clone(),
            }),
            used_bytes: value(Some(d.used_bytes)),
            inodes_used: value(Some(d.inodes_used)),
        }),
        swap: Some(swap),
        io: Some(io),
    }
}

/// A pod's PodSandboxStats.
pub fn pod(sample: &PodSample) -> cri::PodSandboxStats {
    let now = unix_nanos(SystemTime::now());
    let record = &sample.record;
    let (cpu, memory, _, io) = usage(sample.cgroup.as_ref(), sample.nano_cores, now);
    let interface = |i: &crate::stats::InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(Some(i.rx_bytes)),
        rx_errors: value(Some(i.rx_errors)),
        tx_bytes: value(Some(i.tx_bytes)),
        tx_errors: value(Some(i.tx_errors)),
    };
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: record.id.clone(),
            metadata: Some(super::sandbox::metadata(record)),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: sample.network.as_ref().map(|n| cri::NetworkUsage {
                timestamp: unix_nanos(n.timestamp),
                default_interface: n.default_interface().map(interface),
                interfaces: n.interfaces.iter().map(interface).collect(),
            }),
            process: Some(cri::ProcessUsage {
                timestamp: sample
                    .cgroup
                    .as_ref()
                    .map_or(now, |c| unix_nanos(c.timestamp)),
                process_count: value(sample.cgroup.as_ref().and_then(|c| c.process_count)),
            }),
            containers: sample.containers.iter().map(container).collect(),
            io: Some(io),
        }),
        windows: None,
    }
}

/// ListContainerStats' filter.
pub fn container_filter(filter: Option<cri::ContainerStatsFilter>) -> ContainerFilter {
    let Some(f) = filter else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        sandbox_id: Some(f.pod_sandbox_id).filter(|id| !id.is_empty()),
        labels: f.label_selector.into_iter().collect(),
        state: None,
    }
}

/// ListPodSandboxStats' filter (ready pods only).
pub fn pod_filter(filter: Option<cri::PodSandboxStatsFilter>) -> SandboxFilter {
    let Some(f) = filter else {
        return SandboxFilter {
            state: Some(SandboxState::Ready),
            ..Default::default()
        };
    };
    SandboxFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        state: Some(SandboxState::Ready),
        labels: f.label_selector.into_iter().collect(),
    }
}
