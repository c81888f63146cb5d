//! GetContainerEvents end to end: a full pod lifecycle arrives in order,
//! with the pod's status, on two subscribers at once.
//!
//! Needs root.

mod support;

use std::time::Duration;

use berth_cri_proto::v1::*;
use tokio_stream::StreamExt;

fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "events".into(),
            uid: "uid-events".into(),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth-etest-{}", std::process::id()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pod_lifecycle_arrives_in_order() {
    if !support::root_tests("a_pod_lifecycle_arrives_in_order") {
        return;
    }
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/events").await;
    let mut rt = berthd.runtime().await;
    let mut first = rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let mut second = berthd
        .runtime()
        .await
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe again")
        .into_inner();

    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "quick".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), "exit 4".into()],
                ..Default::default()
            }),
            sandbox_config: Some(pod_config()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("start");
    let expected = [
        (pod.as_str(), ContainerEventType::ContainerCreatedEvent),
        (pod.as_str(), ContainerEventType::ContainerStartedEvent),
        (
            container.as_str(),
            ContainerEventType::ContainerCreatedEvent,
        ),
        (
            container.as_str(),
            ContainerEventType::ContainerStartedEvent,
        ),
        (
            container.as_str(),
            ContainerEventType::ContainerStoppedEvent,
        ),
        (
            container.as_str(),
            ContainerEventType::ContainerDeletedEvent,
        ),
        (pod.as_str(), ContainerEventType::ContainerStoppedEvent),
        (pod.as_str(), ContainerEventType::ContainerDeletedEvent),
    ];
    let mut seen = Vec::new();
    for (i, (id, kind)) in expected.iter().enumerate() {
        if i == 5 {
            // Exited by now (event 4 said so): remove it, then the pod.
            rt.remove_container(RemoveContainerRequest {
                container_id: container.clone(),
            })
            .await
            .expect("remove container");
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("stop pod");
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("remove pod");
        }
        let event = tokio::time::timeout(Duration::from_secs(10), first.next())
            .await
            .unwrap_or_else(|_| panic!("event {i} ({id} {kind:?}) in time; seen {seen:?}"))
            .expect("stream open")
            .expect("event");
        seen.push((event.container_id.clone(), event.container_event_type));
        assert_eq!(
            (event.container_id.as_str(), event.container_event_type),
            (*id, *kind as i32),
            "event {i}; seen {seen:?}"
        );
        assert!(event.created_at > 0);
        if i < 6 {
            let status = event.pod_sandbox_status.expect("pod status");
            assert_eq!(status.id, pod);
            assert_eq!(
                status.metadata.map(|m| m.uid).as_deref(),
                Some("uid-events")
            );
        }
        if i == 4 {
            let exited = event
                .containers_statuses
                .iter()
                .find(|c| c.id == container)
                .expect("the container's status");
            assert_eq!(exited.exit_code, 4);
        }
    }
    // The second subscriber saw the same sequence.
    for (i, (id, kind)) in expected.iter().enumerate() {
        let event = tokio::time::timeout(Duration::from_secs(10), second.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("event");
        assert_eq!(
            (event.container_id.as_str(), event.container_event_type),
            (*id, *kind as i32),
            "second subscriber, event {i}"
        );
    }
    support::remove_test_cgroup(&format!("berth-etest-{}", std::process::id()));
}
