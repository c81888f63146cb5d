//! Container records → CRI messages.

use berth_cri_proto::v1 as cri;

use crate::container::{ContainerFilter, ContainerRecord, ContainerState};

fn state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

pub(super) fn metadata(record: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: record.metadata_name.clone(),
        attempt: record.attempt,
    }
}

fn image(record: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: record.image.clone(),
        user_specified_image: record.image.clone(),
        ..Default::default()
    }
}

/// ListContainers' item.
pub fn summary(record: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.sandbox_id.clone(),
        metadata: Some(metadata(record)),
        image: Some(image(record)),
        image_ref: record.image_ref.clone(),
        state: state(record.state),
        created_at: record.created_at,
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        image_id: record.image_id.clone(),
    }
}

/// ContainerStatus's status.
pub fn status(record: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state(record.state),
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        exit_code: record.exit_code,
        image: Some(image(record)),
        image_ref: record.image_ref.clone(),
        reason: record.reason.clone(),
        message: record.message.clone(),
        labels: record.labels.clone().into_iter().collect(),
        annotations: record.annotations.clone().into_iter().collect(),
        mounts: record
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: record.log_path.clone(),
        image_id: record.image_id.clone(),
        user: record.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid),
                gid: i64::from(u.gid),
                supplemental_groups: u
                    .supplemental_groups
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
        resources: record.resources.as_ref().map(|r| cri::ContainerResources {
            linux: Some(crate::container::cri_resources(r)),
            windows: None,
        }),
        ..Default::default()
    }
}

/// ContainerStatus's verbose `info`.
pub fn verbose_info(record: &ContainerRecord) -> String {
    serde_json::json!({
        "sandboxID": record.sandbox_id,
        "name": record.name,
        "bundle": record.bundle,
        "rootfs": crate::container::rootfs::mountpoint(&record.dir),
    })
    .to_string()
}

/// ListContainers' filter.
pub fn filter(filter: Option<cri::ContainerFilter>) -> ContainerFilter {
    let Some(filter) = filter else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        state: filter
            .state
            .map(|s| match cri::ContainerState::try_from(s.state) {
                Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
                _ => ContainerState::Unknown,
            }),
        sandbox_id: Some(filter.pod_sandbox_id).filter(|id| !id.is_empty()),
        labels: filter.label_selector.into_iter().collect(),
    }
}
