//! Sandbox records → CRI messages.

use berth_cri_proto::v1 as cri;

use crate::sandbox::{NamespaceMode, SandboxFilter, SandboxRecord, SandboxState};

fn state(state: SandboxState) -> i32 {
    match state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub(super) fn metadata(record: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: record.metadata.name.clone(),
        uid: record.metadata.uid.clone(),
        namespace: record.metadata.namespace.clone(),
        attempt: record.metadata.attempt,
    }
}

/// The pod's user namespace as the CRI reports it: POD with its mappings,
/// else NODE.
fn userns(record: &SandboxRecord) -> cri::UserNamespace {
    let mapping = |m: &crate::sandbox::IdMapping| cri::IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    };
    match &record.user_namespace {
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![mapping(&u.uid)],
            gids: vec![mapping(&u.gid)],
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    }
}

fn mode(mode: NamespaceMode) -> i32 {
    match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod as i32,
        NamespaceMode::Container => cri::NamespaceMode::Container as i32,
        NamespaceMode::Node => cri::NamespaceMode::Node as i32,
    }
}

/// ListPodSandbox's item.
pub fn summary(record: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state(record.state),
        created_at: record.created_at,
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// PodSandboxStatus's status.
pub fn status(record: &SandboxRecord) -> cri::PodSandboxStatus {
    let network = record
        .ips
        .split_first()
        .map(|(first, rest)| cri::PodSandboxNetworkStatus {
            ip: first.clone(),
            additional_ips: rest
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        });
    cri::PodSandboxStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state(record.state),
        created_at: record.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode(record.namespaces.network),
                    pid: mode(record.namespaces.pid),
                    ipc: mode(record.namespaces.ipc),
                    userns_options: Some(userns(record)),
                    ..Default::default()
                }),
            }),
        }),
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// PodSandboxStatus's verbose `info`.
pub fn verbose_info(record: &SandboxRecord) -> String {
    serde_json::json!({
        "pid": record.pause.map(|p| p.pid),
        "netns": record.netns(),
        "name": record.name,
        "runtimeHandler": record.runtime_handler,
        "cgroupParent": record.cgroup_parent,
        "hostname": record.hostname,
        "dns": record.dns,
        "portMappings": record.port_mappings,
        "sysctls": record.sysctls,
        "privileged": record.privileged,
        "sandboxDir": record.dir,
        "stateDir": record.state_dir,
    })
    .to_string()
}

/// ListPodSandbox's filter.
pub fn filter(filter: Option<cri::PodSandboxFilter>) -> SandboxFilter {
    let Some(filter) = filter else {
        return SandboxFilter::default();
    };
    SandboxFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        state: filter
            .state
            .map(|s| match cri::PodSandboxState::try_from(s.state) {
                Ok(cri::PodSandboxState::SandboxReady) => SandboxState::Ready,
                _ => SandboxState::NotReady,
            }),
        labels: filter.label_selector.into_iter().collect(),
    }
}
