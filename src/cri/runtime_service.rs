//! RuntimeService: the pod, container and node half of the CRI.

use std::collections::HashMap;

use berth_cri_proto::v1::runtime_service_server::RuntimeService;
use berth_cri_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{
    IntoStatus, KUBE_RUNTIME_API_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME, ReplyStream,
    RuntimeApi, traced,
};
use super::{container, pod_metrics, sandbox, stats};
use crate::config;
use crate::sandbox::SandboxSpec;

/// Condition types and reasons as the kubelet reads them.
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";
const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        traced("Version", async {
            Ok(VersionResponse {
                version: KUBE_RUNTIME_API_VERSION.into(),
                runtime_name: RUNTIME_NAME.into(),
                runtime_version: crate::VERSION.into(),
                runtime_api_version: RUNTIME_API_VERSION.into(),
            })
        })
        .await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.get_ref().verbose;
        traced("Status", async {
            let health = self.daemon.health();
            let network = match &health.network {
                Ok(_) => condition(NETWORK_READY, true, "", ""),
                Err(e) => condition(
                    NETWORK_READY,
                    false,
                    NETWORK_NOT_READY_REASON,
                    &format!("Network plugin returns error: cni plugin not initialized: {e}"),
                ),
            };
            let mut info = HashMap::new();
            if verbose {
                info = self
                    .daemon
                    .status_info(&health)
                    .map_err(IntoStatus::into_status)?;
            }
            // The default handler is listed once under its own name and once
            // as "", the name the kubelet uses for pods without a RuntimeClass.
            let config = self.daemon.config();
            let default = std::iter::once(String::new());
            let runtime_handlers = default
                .chain(config.runtimes.keys().cloned())
                .map(|name| {
                    let features = self.daemon.handler_features(&name);
                    RuntimeHandler {
                        features: Some(RuntimeHandlerFeatures {
                            recursive_read_only_mounts: features.recursive_read_only_mounts,
                            user_namespaces: features.user_namespaces,
                        }),
                        name,
                    }
                })
                .collect();
            Ok(StatusResponse {
                status: Some(RuntimeStatus {
                    conditions: vec![condition(RUNTIME_READY, true, "", ""), network],
                }),
                info,
                runtime_handlers,
                features: Some(RuntimeFeatures {
                    supplemental_groups_policy: true,
                    user_namespaces_host_network: false,
                }),
            })
        })
        .await
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        traced("RuntimeConfig", async {
            let driver = match self.daemon.config().cgroup_driver {
                config::CgroupDriver::Systemd => CgroupDriver::Systemd,
                config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
            };
            Ok(RuntimeConfigResponse {
                linux: Some(LinuxRuntimeConfiguration {
                    cgroup_driver: driver.into(),
                }),
            })
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        traced("UpdateRuntimeConfig", async {
            self.daemon
                .set_pod_cidr(&cidr)
                .map_err(IntoStatus::into_status)?;
            Ok(UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        traced("RunPodSandbox", async {
            let spec = SandboxSpec::from_cri(request.config).map_err(IntoStatus::into_status)?;
            let id = self
                .daemon
                .run_sandbox(spec, &request.runtime_handler)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("StopPodSandbox", async {
            self.daemon
                .stop_sandbox(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("RemovePodSandbox", async {
            self.daemon
                .remove_sandbox(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        traced("PodSandboxStatus", async {
            let record = self
                .daemon
                .sandboxes()
                .status(&request.pod_sandbox_id)
                .map_err(IntoStatus::into_status)?;
            let mut info = HashMap::new();
            if request.verbose {
                info.insert("info".to_string(), sandbox::verbose_info(&record));
            }
            Ok(PodSandboxStatusResponse {
                containers_statuses: pod_container_statuses(&self.daemon, &record.id),
                status: Some(sandbox::status(&record)),
                info,
                timestamp: crate::clock::now_nanos(),
            })
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = sandbox::filter(request.into_inner().filter);
        traced("ListPodSandbox", async {
            let items = self.daemon.sandboxes().list(&filter);
            Ok(ListPodSandboxResponse {
                items: items.iter().map(sandbox::summary).collect(),
            })
        })
        .await
    }

    type StreamPodSandboxesStream = ReplyStream<StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = sandbox::filter(request.into_inner().filter);
        traced("StreamPodSandboxes", async {
            let items: Vec<_> = self
                .daemon
                .sandboxes()
                .list(&filter)
                .iter()
                .map(sandbox::summary)
                .collect();
            Ok(super::batches(items, |pod_sandboxes| {
                StreamPodSandboxesResponse { pod_sandboxes }
            }))
        })
        .await
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let request = request.into_inner();
        traced("CreateContainer", async {
            let config = request
                .config
                .ok_or_else(|| Status::invalid_argument("config: is missing"))?;
            let id = self
                .daemon
                .create_container(&request.pod_sandbox_id, &config)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(CreateContainerResponse { container_id: id })
        })
        .await
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("StartContainer", async {
            self.daemon
                .start_container(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let request = request.into_inner();
        traced("StopContainer", async {
            let timeout = std::time::Duration::from_secs(request.timeout.max(0) as u64);
            self.daemon
                .stop_container(&request.container_id, timeout)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("RemoveContainer", async {
            self.daemon
                .containers()
                .remove(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = container::filter(request.into_inner().filter);
        traced("ListContainers", async {
            Ok(ListContainersResponse {
                containers: self
                    .daemon
                    .containers()
                    .list_with(&filter, container::summary),
            })
        })
        .await
    }

    type StreamContainersStream = ReplyStream<StreamContainersResponse>;

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = container::filter(request.into_inner().filter);
        traced("StreamContainers", async {
            let items: Vec<_> = self
                .daemon
                .containers()
                .list(&filter)
                .iter()
                .map(container::summary)
                .collect();
            Ok(super::batches(items, |containers| {
                StreamContainersResponse { containers }
            }))
        })
        .await
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        traced("ContainerStatus", async {
            let record = self
                .daemon
                .containers()
                .status(&request.container_id)
                .map_err(IntoStatus::into_status)?;
            let mut info = HashMap::new();
            if request.verbose {
                info.insert("info".to_string(), container::verbose_info(&record));
            }
            Ok(ContainerStatusResponse {
                status: Some(container::status(&record)),
                info,
            })
        })
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        traced("UpdateContainerResources", async {
            self.daemon
                .containers()
                .update_resources(&request.container_id, request.linux.as_ref())
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("ReopenContainerLog", async {
            self.daemon
                .containers()
                .reopen_log(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        traced("ExecSync", async {
            let timeout = (request.timeout > 0)
                .then(|| std::time::Duration::from_secs(request.timeout as u64));
            let out = self
                .daemon
                .containers()
                .exec_sync(&request.container_id, &request.cmd, timeout)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        })
        .await
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let r = request.into_inner();
        traced("Exec", async {
            let url = self
                .daemon
                .exec_url(&r.container_id, r.cmd, (r.stdin, r.stdout, r.stderr, r.tty))
                .map_err(IntoStatus::into_status)?;
            Ok(ExecResponse { url })
        })
        .await
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let r = request.into_inner();
        traced("Attach", async {
            let url = self
                .daemon
                .attach_url(&r.container_id, (r.stdin, r.stdout, r.stderr, r.tty))
                .map_err(IntoStatus::into_status)?;
            Ok(AttachResponse { url })
        })
        .await
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let r = request.into_inner();
        traced("PortForward", async {
            let url = self
                .daemon
                .port_forward_url(&r.pod_sandbox_id, &r.port)
                .map_err(IntoStatus::into_status)?;
            Ok(PortForwardResponse { url })
        })
        .await
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        traced("ContainerStats", async {
            let sample = self
                .daemon
                .container_stats(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(ContainerStatsResponse {
                stats: Some(stats::container(&sample)),
            })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = stats::container_filter(request.into_inner().filter);
        traced("ListContainerStats", async {
            let samples = self.daemon.list_container_stats(&filter).await;
            Ok(ListContainerStatsResponse {
                stats: samples.iter().map(stats::container).collect(),
            })
        })
        .await
    }

    type StreamContainerStatsStream = ReplyStream<StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = stats::container_filter(request.into_inner().filter);
        traced("StreamContainerStats", async {
            let samples = self.daemon.list_container_stats(&filter).await;
            let items: Vec<_> = samples.iter().map(stats::container).collect();
            Ok(super::batches(items, |stats| {
                StreamContainerStatsResponse {
                    container_stats: stats,
                }
            }))
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        traced("PodSandboxStats", async {
            let sample = self
                .daemon
                .pod_sandbox_stats(&id)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(PodSandboxStatsResponse {
                stats: Some(stats::pod(&sample)),
            })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = stats::pod_filter(request.into_inner().filter);
        traced("ListPodSandboxStats", async {
            let samples = self.daemon.list_pod_sandbox_stats(&filter).await;
            Ok(ListPodSandboxStatsResponse {
                stats: samples.iter().map(stats::pod).collect(),
            })
        })
        .await
    }

    type StreamPodSandboxStatsStream = ReplyStream<StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = stats::pod_filter(request.into_inner().filter);
        traced("StreamPodSandboxStats", async {
            let samples = self.daemon.list_pod_sandbox_stats(&filter).await;
            let items: Vec<_> = samples.iter().map(stats::pod).collect();
            Ok(super::batches(items, |stats| {
                StreamPodSandboxStatsResponse {
                    pod_sandbox_stats: stats,
                }
            }))
        })
        .await
    }

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let request = request.into_inner();
        traced("CheckpointContainer", async {
            // Seconds; zero or less: the runtime's default.
            let timeout =
                std::time::Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
            self.daemon
                .containers()
                .checkpoint(&request.container_id, &request.location, timeout)
                .await
                .map_err(IntoStatus::into_status)?;
            Ok(CheckpointContainerResponse {})
        })
        .await
    }

    type GetContainerEventsStream = ReplyStream<ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        traced("GetContainerEvents", async {
            // Subscribed before this returns: nothing that happens after the
            // call is missed.
            let mut events = self.daemon.lifecycle().subscribe();
            let daemon = self.daemon.clone();
            let stream = async_stream(move |tx| async move {
                loop {
                    let event = match events.recv().await {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            // The subscriber fell behind: say so, so that it
                            // relists instead of trusting a gap.
                            let _ = tx
                                .send(Err(Status::aborted(format!(
                                    "{n} container events were dropped for this slow subscriber; list again and resubscribe"
                                ))))
                                .await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let response = container_event(&daemon, &event);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(stream)
        })
        .await
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        traced("ListMetricDescriptors", async {
            Ok(ListMetricDescriptorsResponse {
                descriptors: pod_metrics::descriptors(),
            })
        })
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        traced("ListPodSandboxMetrics", async {
            let samples = self
                .daemon
                .list_pod_sandbox_stats(&stats::pod_filter(None))
                .await;
            let now = std::time::SystemTime::now();
            Ok(ListPodSandboxMetricsResponse {
                pod_metrics: samples.iter().map(|s| pod_metrics::pod(s, now)).collect(),
            })
        })
        .await
    }

    type StreamPodSandboxMetricsStream = ReplyStream<StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        traced("StreamPodSandboxMetrics", async {
            let samples = self
                .daemon
                .list_pod_sandbox_stats(&stats::pod_filter(None))
                .await;
            let now = std::time::SystemTime::now();
            let items: Vec<_> = samples.iter().map(|s| pod_metrics::pod(s, now)).collect();
            Ok(super::batches(items, |pod_sandbox_metrics| {
                StreamPodSandboxMetricsResponse {
                    pod_sandbox_metrics,
                }
            }))
        })
        .await
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        let r = request.into_inner();
        traced("UpdatePodSandboxResources", async {
            self.daemon
                .update_pod_sandbox_resources(
                    &r.pod_sandbox_id,
                    r.overhead.as_ref(),
                    r.resources.as_ref(),
                )
                .map_err(IntoStatus::into_status)?;
            Ok(UpdatePodSandboxResourcesResponse {})
        })
        .await
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.into(),
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The statuses of every container of sandbox `id`.
fn pod_container_statuses(daemon: &crate::daemon::Daemon, id: &str) -> Vec<ContainerStatus> {
    let filter = crate::container::ContainerFilter {
        sandbox_id: Some(id.to_string()),
        ..Default::default()
    };
    daemon
        .containers()
        .list(&filter)
        .iter()
        .filter(|r| r.sandbox_id == id)
        .map(container::status)
        .collect()
}

/// A lifecycle change as GetContainerEvents reports it: with the pod's
/// status and its containers' statuses as they are now (no pod status once
/// the pod is removed).
fn container_event(
    daemon: &crate::daemon::Daemon,
    event: &crate::events::LifecycleEvent,
) -> ContainerEventResponse {
    use crate::events::Lifecycle;
    let kind = match event.kind {
        Lifecycle::Created => ContainerEventType::ContainerCreatedEvent,
        Lifecycle::Started => ContainerEventType::ContainerStartedEvent,
        Lifecycle::Stopped => ContainerEventType::ContainerStoppedEvent,
        Lifecycle::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    let pod = daemon
        .sandboxes()
        .status(&event.sandbox_id)
        .ok()
        .filter(|r| r.id == event.sandbox_id);
    ContainerEventResponse {
        container_id: event.id.clone(),
        container_event_type: kind as i32,
        created_at: event.at,
        containers_statuses: pod
            .as_ref()
            .map(|p| pod_container_statuses(daemon, &p.id))
            .unwrap_or_default(),
        pod_sandbox_status: pod.as_ref().map(sandbox::status),
    }
}

/// A reply stream fed by `producer` through a small channel (the producer
/// stops when the client goes away).
fn async_stream<T, F, Fut>(producer: F) -> ReplyStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
