//! The berthd process: opens its directories and metadata store, serves the
//! CRI on the unix socket and stops gracefully on a signal.
//!
//! Stopping berthd never stops a workload: pods and containers belong to
//! their shims, not to this process.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::container::{ContainerError, ContainerFilter, Containers};
use crate::cri::{self, SocketError};
use crate::events::{EventBus, EventsError, EventsServer, LifecycleBus, TaskEvent};
use crate::image::{ImageError, Images};
use crate::input::quoted;
use crate::network::{self, NetworkConfig, NetworkConfigError};
use crate::sandbox::{SandboxError, Sandboxes};
use crate::shim_client::TaskExit;
use crate::store::{SCHEMA_VERSION, Store, StoreError};

mod features;
mod metrics;
mod pod_resources;
mod stats;
mod streaming;

pub use features::HandlerFeatures;
pub use stats::{ContainerSample, PodSample};

/// How long in-flight requests may run after berthd is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why berthd could not start, serve, or take a request.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A root or state directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image stores could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The shim events service could not be served.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The sandbox records could not be loaded, or a sandbox operation
    /// failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A container operation failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The CRI socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// An Exec, Attach or PortForward request is malformed.
    #[error("{field}: {reason}")]
    InvalidStreamRequest {
        /// The request field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The streaming server is not running (yet).
    #[error("the streaming server is not running")]
    StreamingNotReady,
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The streaming server could not start or hand out a URL.
    #[error("streaming server: {0}")]
    Streaming(String),
    /// UpdatePodSandboxResources carried a figure no cgroup would take.
    #[error("{field}: {reason}")]
    InvalidPodResources {
        /// The request field, e.g. `resources.cpu_quota`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// UpdateRuntimeConfig carried a pod CIDR that is not a CIDR.
    #[error("runtime_config.network_config.pod_cidr {}: {reason}", quoted(cidr))]
    InvalidPodCidr {
        /// The value received.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The running daemon's shared state.
pub struct Daemon {
    config: Config,
    store: Store,
    images: Images,
    sandboxes: Sandboxes,
    containers: Containers,
    events: EventBus,
    lifecycle: LifecycleBus,
    /// What each runtime handler can do, probed at start.
    features: std::sync::OnceLock<std::collections::HashMap<String, features::HandlerFeatures>>,
    /// What stats keep between calls.
    stats: stats::StatsState,
    /// The exec/attach/port-forward server, once serve() started it.
    streaming: std::sync::OnceLock<crate::streaming::StreamingServer>,
    /// Pod CIDRs from UpdateRuntimeConfig (comma-separated as the kubelet
    /// sends them), empty until the kubelet sets them.
    pod_cidrs: RwLock<Vec<String>>,
}

/// What the node looks like to Status.
#[derive(Debug)]
pub struct Health {
    /// The usable network configuration, or why there is none.
    pub network: Result<NetworkConfig, NetworkConfigError>,
}

impl Daemon {
    /// Creates the root and state directories and opens the metadata store.
    pub fn open(config: Config) -> Result<Arc<Daemon>, DaemonError> {
        for dir in [&config.root, &config.state] {
            create_private_dir(dir)?;
        }
        let store = Store::open(&config.store_path())?;
        let images = Images::open(&config, store.clone())?;
        let shared = Arc::new(config.clone());
        let lifecycle = LifecycleBus::new();
        let sandboxes = Sandboxes::load(shared.clone(), store.clone(), lifecycle.clone())?;
        let containers = Containers::load(shared, store.clone(), lifecycle.clone())?;
        tracing::info!(
            root = %config.root.display(),
            state = %config.state.display(),
            schema = SCHEMA_VERSION,
            "metadata store open"
        );
        Ok(Arc::new(Daemon {
            config,
            store,
            images,
            sandboxes,
            containers,
            events: EventBus::new(),
            lifecycle,
            features: std::sync::OnceLock::new(),
            stats: stats::StatsState::new(),
            streaming: std::sync::OnceLock::new(),
            pod_cidrs: RwLock::new(Vec::new()),
        }))
    }

    /// The configuration berthd runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image service.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The pod sandbox service.
    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    /// The container service.
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    /// CreateContainer: the container joins a Ready sandbox and runs an
    /// image that is on the node, or is restored from the checkpoint
    /// archive or checkpoint image its image names.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: &berth_cri_proto::v1::ContainerConfig,
    ) -> Result<String, DaemonError> {
        let sandbox = self.sandboxes.get(sandbox_id)?;
        let image = config
            .image
            .as_ref()
            .and_then(|i| self.images.status(&i.image));
        let snapshots = self.images.snapshots();
        let checkpoint = crate::container::requested_checkpoint(config).or_else(|| {
            let image = image.as_ref()?;
            crate::container::checkpoint_image_dir(&self.config.root, image, snapshots)
        });
        if let Some(checkpoint) = checkpoint {
            let image = |name: &str| self.images.status(name);
            return Ok(self
                .containers
                .create_restored(&sandbox, config, &checkpoint, image, snapshots)
                .await?);
        }
        Ok(self
            .containers
            .create(&sandbox, config, image, snapshots)
            .await?)
    }

    /// StartContainer with the runtime handler of the container's pod.
    pub async fn start_container(&self, id: &str) -> Result<(), DaemonError> {
        let container = self.containers.status(id)?;
        let sandbox = self.sandboxes.get(&container.sandbox_id)?;
        let (name, handler) = self
            .config
            .runtime_handler(&sandbox.runtime_handler)
            .ok_or_else(|| SandboxError::UnknownHandler(sandbox.runtime_handler.clone()))?;
        let root = handler
            .runtime_root
            .clone()
            .unwrap_or_else(|| self.config.state.join("runtime").join(name));
        Ok(self
            .containers
            .start(&container.id, &handler.runtime, &root)
            .await?)
    }

    /// StopContainer: the image's stop signal, SIGKILL after `timeout`.
    pub async fn stop_container(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<(), DaemonError> {
        let signal = match self.containers.status(id) {
            Ok(record) => record.stop_signal_number(),
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        Ok(self.containers.stop(id, signal, timeout).await?)
    }

    /// StopPodSandbox: the pod's containers are killed first.
    pub async fn stop_sandbox(&self, id: &str) -> Result<(), DaemonError> {
        if let Ok(sandbox) = self.sandboxes.get(id) {
            let filter = ContainerFilter {
                sandbox_id: Some(sandbox.id.clone()),
                ..Default::default()
            };
            for container in self.containers.list(&filter) {
                let kill = nix::libc::SIGKILL as u32;
                self.containers
                    .stop(&container.id, kill, std::time::Duration::ZERO)
                    .await?;
            }
        }
        Ok(self.sandboxes.stop(id).await?)
    }

    /// RemovePodSandbox: the pod's containers are removed first.
    pub async fn remove_sandbox(&self, id: &str) -> Result<(), DaemonError> {
        let sandbox = match self.sandboxes.get(id) {
            Ok(sandbox) => sandbox,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let filter = ContainerFilter {
            sandbox_id: Some(sandbox.id.clone()),
            ..Default::default()
        };
        for container in self.containers.list(&filter) {
            self.containers.remove(&container.id).await?;
        }
        Ok(self.sandboxes.remove(&sandbox.id).await?)
    }

    /// RemoveImage: refused while a container uses the image.
    pub async fn remove_image(&self, spec: &str) -> Result<(), DaemonError> {
        self.images
            .remove(spec, |id| self.containers.using_image(id))
            .await?;
        Ok(())
    }

    /// Looks at what readiness depends on: for now, the network config.
    pub fn health(&self) -> Health {
        Health {
            network: NetworkConfig::load(&self.config.cni.conf_dir, &self.config.cni.bin_dirs),
        }
    }

    /// The verbose status `crictl info` shows: the effective configuration
    /// (secrets redacted), the network configuration and its load status.
    pub fn status_info(&self, health: &Health) -> Result<HashMap<String, String>, DaemonError> {
        let json = |v: &serde_json::Value| v.to_string();
        let mut info = HashMap::new();
        info.insert(
            "config".into(),
            serde_json::to_string(&self.config.redacted()).unwrap_or_default(),
        );
        let (cni, load_status) = match &health.network {
            Ok(n) => (
                serde_json::json!({
                    "path": n.path,
                    "name": n.name,
                    "cniVersion": n.cni_version,
                    "plugins": n.plugins,
                    "podCIDRs": *self.pod_cidrs.read().unwrap_or_else(|e| e.into_inner()),
                }),
                "OK".to_string(),
            ),
            Err(e) => (serde_json::Value::Null, e.to_string()),
        };
        info.insert("cniconfig".into(), json(&cni));
        info.insert("lastCNILoadStatus".into(), load_status);
        info.insert("version".into(), crate::VERSION.into());
        info.insert(
            "storeSchemaVersion".into(),
            self.store.schema_version()?.to_string(),
        );
        Ok(info)
    }

    /// Records the pod CIDRs the kubelet sends (comma-separated; empty
    /// clears them). When the node uses berth's default network config
    /// (`10-berth.conflist`, network `berth`), it is rewritten for them.
    pub fn set_pod_cidr(&self, cidrs: &str) -> Result<(), DaemonError> {
        let parsed = if cidrs.trim().is_empty() {
            Vec::new()
        } else {
            network::parse_pod_cidrs(cidrs).map_err(|e| DaemonError::InvalidPodCidr {
                cidr: cidrs.into(),
                reason: e.to_string(),
            })?
        };
        let conf_dir = &self.config.cni.conf_dir;
        let default = conf_dir.join(network::DEFAULT_CONFLIST_FILE);
        let ours = NetworkConfig::from_file(&default, &self.config.cni.bin_dirs)
            .is_ok_and(|c| c.name == "berth");
        if ours && !parsed.is_empty() {
            network::write_default_conflist(conf_dir, &parsed).map_err(|e| {
                DaemonError::InvalidPodCidr {
                    cidr: cidrs.into(),
                    reason: e.to_string(),
                }
            })?;
            tracing::info!(path = %default.display(), "default network config updated for the pod CIDR");
        }
        tracing::info!(pod_cidrs = ?parsed, "pod CIDR updated");
        *self.pod_cidrs.write().unwrap_or_else(|e| e.into_inner()) =
            parsed.iter().map(ToString::to_string).collect();
        Ok(())
    }

    /// Serves the CRI on the configured socket until `shutdown` completes,
    /// then lets in-flight requests finish and removes the socket.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        // The metrics endpoint first: a taken metrics.address stops berthd
        // before it touches the socket, and the endpoint answers as soon as
        // the socket does. Held until serve() returns; dropping it stops it.
        let _metrics = match self.config.metrics.address.as_str() {
            "" => None,
            address => {
                let inventory = Arc::new(metrics::DaemonInventory(Arc::downgrade(&self)));
                Some(crate::metrics::MetricsServer::start(address, inventory).await?)
            }
        };
        let path = self.config.grpc.address.clone();
        let listener = cri::bind_socket(&path, self.config.grpc.gid)?;
        // Events first, so shims that publish while berthd recovers reach it.
        let events = EventsServer::serve(&self.config.state, self.events.clone()).await?;
        self.clone().follow_events();
        let _ = self.features.set(features::probe_all(&self.config).await);
        let backend = Arc::new(streaming::DaemonBackend(Arc::downgrade(&self)));
        let server =
            crate::streaming::StreamingServer::start(&self.config.streaming, backend).await?;
        let _ = self.streaming.set(server);
        self.containers.recover().await;
        let (runtime, image) = cri::services(self.clone());
        tracing::info!(socket = %path.display(), version = crate::VERSION, "berthd serving CRI");
        notify_systemd("READY=1");
        // Once asked to stop, in-flight requests get SHUTDOWN_GRACE to finish;
        // a client that never lets its connection close (h2's graceful close
        // needs the peer's PING reply) must not keep berthd alive.
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signalled = stopping.clone();
        let shutdown = async move {
            shutdown.await;
            signalled.notify_one();
        };
        let server = tonic::transport::Server::builder()
            .add_service(runtime)
            .add_service(image)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
        let result = tokio::select! {
            result = server => result,
            () = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; stopping anyway");
                Ok(())
            }
        };
        notify_systemd("STOPPING=1");
        events.shutdown().await;
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove socket");
        }
        tracing::info!("berthd stopped; pods and containers keep running");
        Ok(result?)
    }
}

impl Daemon {
    /// Acts on the task events shims publish: a container's exit is
    /// recorded at once, a sandbox whose pause exited turns NotReady.
    fn follow_events(self: Arc<Self>) {
        let mut events = self.events.subscribe();
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        // Wait and the exit files still cover every exit.
                        tracing::warn!(missed, "task events missed");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                match &event {
                    TaskEvent::Exited {
                        container_id,
                        exit_status,
                        exited_at,
                        ..
                    } if event.is_init_exit() => {
                        let exit = TaskExit {
                            exit_status: *exit_status,
                            exited_at: *exited_at,
                            oom_killed: false,
                        };
                        self.containers.task_exited(container_id, &exit);
                        self.sandboxes.pause_exited(container_id);
                    }
                    TaskEvent::OutOfMemory { container_id } => {
                        tracing::info!(container = %container_id, "OOM kill in the container's cgroup");
                    }
                    _ => {}
                }
            }
        });
    }

    /// The bus container and sandbox lifecycle changes are published on.
    pub fn lifecycle(&self) -> &LifecycleBus {
        &self.lifecycle
    }

    /// The bus task events are published on.
    pub fn events(&self) -> &EventBus {
        &self.events
    }
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|source| DaemonError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Tells systemd (Type=notify) about a state change; a no-op when not run
/// by systemd.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = socket.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &socket)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}
