//! Task events from the shims: berthd serves containerd's events ttrpc
//! service (`containerd.services.events.ttrpc.v1.Events/Forward`) on a unix
//! socket in its state dir, and every shim it starts publishes there (the
//! shim learns the address from `TTRPC_ADDRESS`, as containerd's shims do).
//!
//! Events are the fast path: an exit reaches berthd as soon as the shim has
//! written its exit file. They are not the only path: berthd also calls
//! Wait on each task and reads exit files after a restart, so an event lost
//! while berthd was down (the shim drops what it cannot deliver) loses
//! nothing. Whoever records an exit first wins; recording is idempotent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Events, create_events};
use tokio::sync::broadcast;

/// The socket's name in berthd's state dir.
pub const SOCKET_FILE: &str = "events.sock";

/// The address shims publish to (their `TTRPC_ADDRESS`) for berthd's
/// state dir.
pub fn address(state_dir: &Path) -> String {
    state_dir.join(SOCKET_FILE).display().to_string()
}

/// How many undelivered events a slow subscriber may fall behind before it
/// misses some (it then re-reads state; Wait covers exits).
const CHANNEL_CAPACITY: usize = 1024;

/// A task event a shim published, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// A task was created.
    Created {
        /// The task (container or sandbox) id.
        container_id: String,
        /// Its init's pid.
        pid: u32,
    },
    /// A task's init was started.
    Started {
        /// The task id.
        container_id: String,
        /// Its init's pid.
        pid: u32,
    },
    /// A process of a task exited (its init when `exec_id` is the task id
    /// or empty).
    Exited {
        /// The task id.
        container_id: String,
        /// The process: the task id for the init, else the exec id.
        exec_id: String,
        /// Its pid.
        pid: u32,
        /// Exit code, or 128 + signal.
        exit_status: u32,
        /// When it exited.
        exited_at: SystemTime,
    },
    /// The kernel's OOM killer struck in the task's cgroup.
    OutOfMemory {
        /// The task id.
        container_id: String,
    },
    /// An exec process was registered.
    ExecAdded {
        /// The task id.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// An exec process was started.
    ExecStarted {
        /// The task id.
        container_id: String,
        /// The exec id.
        exec_id: String,
        /// Its pid.
        pid: u32,
    },
    /// A task was deleted.
    Deleted {
        /// The task id.
        container_id: String,
        /// Its init's exit code.
        exit_status: u32,
    },
}

impl TaskEvent {
    /// The task the event is about.
    pub fn container_id(&self) -> &str {
        match self {
            Self::Created { container_id, .. }
            | Self::Started { container_id, .. }
            | Self::Exited { container_id, .. }
            | Self::OutOfMemory { container_id }
            | Self::ExecAdded { container_id, .. }
            | Self::ExecStarted { container_id, .. }
            | Self::Deleted { container_id, .. } => container_id,
        }
    }

    /// Decodes an envelope's payload; `None` for event types berthd does
    /// not act on, or payloads that do not decode.
    pub fn decode(any: &Any) -> Option<Self> {
        // containerd's type names, with or without a URL prefix.
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let event = match name {
            "containerd.events.TaskCreate" => {
                let e = task::TaskCreate::parse_from_bytes(&any.value).ok()?;
                Self::Created {
                    container_id: e.container_id,
                    pid: e.pid,
                }
            }
            "containerd.events.TaskStart" => {
                let e = task::TaskStart::parse_from_bytes(&any.value).ok()?;
                Self::Started {
                    container_id: e.container_id,
                    pid: e.pid,
                }
            }
            "containerd.events.TaskExit" => {
                let e = task::TaskExit::parse_from_bytes(&any.value).ok()?;
                Self::Exited {
                    exited_at: crate::shim_client::time(&e.exited_at),
                    container_id: e.container_id,
                    exec_id: e.id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                }
            }
            "containerd.events.TaskOOM" => {
                let e = task::TaskOOM::parse_from_bytes(&any.value).ok()?;
                Self::OutOfMemory {
                    container_id: e.container_id,
                }
            }
            "containerd.events.TaskExecAdded" => {
                let e = task::TaskExecAdded::parse_from_bytes(&any.value).ok()?;
                Self::ExecAdded {
                    container_id: e.container_id,
                    exec_id: e.exec_id,
                }
            }
            "containerd.events.TaskExecStarted" => {
                let e = task::TaskExecStarted::parse_from_bytes(&any.value).ok()?;
                Self::ExecStarted {
                    container_id: e.container_id,
                    exec_id: e.exec_id,
                    pid: e.pid,
                }
            }
            "containerd.events.TaskDelete" => {
                let e = task::TaskDelete::parse_from_bytes(&any.value).ok()?;
                Self::Deleted {
                    container_id: e.container_id,
                    exit_status: e.exit_status,
                }
            }
            _ => return None,
        };
        Some(event)
    }

    /// Whether this is the exit of a task's init process.
    pub fn is_init_exit(&self) -> bool {
        matches!(self, Self::Exited { container_id, exec_id, .. }
            if exec_id.is_empty() || exec_id == container_id)
    }
}

/// Why the events service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The socket could not be bound or the server not started.
    #[error("events service on {}: {reason}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Where events are fanned out to: subscribers each get every event
/// published after they subscribed.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<TaskEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.sender.subscribe()
    }

    /// Hands `event` to every subscriber (none is fine).
    pub fn publish(&self, event: TaskEvent) {
        let _ = self.sender.send(event);
    }
}

/// A lifecycle change of a container or a pod sandbox, as the CRI's
/// GetContainerEvents reports them (sandboxes count as containers there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Created.
    Created,
    /// Started (a sandbox: ready).
    Started,
    /// Stopped (exited; a sandbox: not ready).
    Stopped,
    /// Removed.
    Deleted,
}

/// One lifecycle change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The container's id, or the sandbox's for a sandbox change.
    pub id: String,
    /// The pod sandbox it belongs to.
    pub sandbox_id: String,
    /// What happened.
    pub kind: Lifecycle,
    /// When, nanoseconds since the epoch.
    pub at: i64,
}

/// Where lifecycle changes are published, in the order they happen.
#[derive(Clone)]
pub struct LifecycleBus {
    sender: broadcast::Sender<LifecycleEvent>,
}

impl Default for LifecycleBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LifecycleBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.sender.subscribe()
    }

    /// Publishes a change of `id` (in `sandbox_id`) that happened now.
    pub fn publish(&self, id: &str, sandbox_id: &str, kind: Lifecycle) {
        let at = crate::clock::now_nanos();
        let _ = self.sender.send(LifecycleEvent {
            id: id.to_string(),
            sandbox_id: sandbox_id.to_string(),
            kind,
            at,
        });
    }
}

struct Service {
    bus: EventBus,
}

#[tonic::async_trait]
impl Events for Service {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let Some(envelope) = req.envelope.as_ref() else {
            return Ok(Empty::new());
        };
        match envelope.event.as_ref().and_then(TaskEvent::decode) {
            Some(event) => {
                tracing::debug!(topic = %envelope.topic, container = %event.container_id(), "task event");
                self.bus.publish(event);
            }
            None => tracing::debug!(topic = %envelope.topic, "task event ignored"),
        }
        Ok(Empty::new())
    }
}

/// The running events service.
pub struct EventsServer {
    path: PathBuf,
    server: ttrpc::asynchronous::Server,
}

impl EventsServer {
    /// Serves the events service on `state_dir/events.sock` (a stale socket
    /// there is replaced), publishing what arrives on `bus`.
    pub async fn serve(state_dir: &Path, bus: EventBus) -> Result<Self, EventsError> {
        let path = state_dir.join(SOCKET_FILE);
        let fail = |reason: String| EventsError::Serve {
            path: path.clone(),
            reason,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let service: Arc<dyn Events + Send + Sync> = Arc::new(Service { bus });
        let services: HashMap<_, _> = create_events(service);
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .map_err(|e| fail(e.to_string()))?
            .register_service(services);
        server.start().await.map_err(|e| fail(e.to_string()))?;
        tracing::info!(socket = %path.display(), "serving shim events");
        Ok(Self { path, server })
    }

    /// The address shims publish to (`TTRPC_ADDRESS`).
    pub fn address(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageField;
    use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    fn any<M: Message>(name: &str, message: &M) -> Any {
        let mut any = Any::new();
        any.type_url = name.into();
        any.value = message.write_to_bytes().expect("encode");
        any
    }

    #[test]
    fn decodes_exits_with_and_without_a_url_prefix() {
        let mut exit = task::TaskExit::new();
        exit.container_id = "c1".into();
        exit.id = "c1".into();
        exit.pid = 42;
        exit.exit_status = 137;
        let mut ts = Timestamp::new();
        ts.seconds = 1_700_000_000;
        ts.nanos = 5;
        exit.exited_at = MessageField::some(ts);
        for name in [
            "containerd.events.TaskExit",
            "types.containerd.io/containerd.events.TaskExit",
        ] {
            let event = TaskEvent::decode(&any(name, &exit)).expect("decoded");
            assert_eq!(
                event,
                TaskEvent::Exited {
                    container_id: "c1".into(),
                    exec_id: "c1".into(),
                    pid: 42,
                    exit_status: 137,
                    exited_at: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
                }
            );
            assert!(event.is_init_exit());
        }
        exit.id = "exec-1".into();
        let event = TaskEvent::decode(&any("containerd.events.TaskExit", &exit)).expect("decoded");
        assert!(!event.is_init_exit());
    }

    #[test]
    fn ignores_unknown_types_and_garbage() {
        let mut oom = task::TaskOOM::new();
        oom.container_id = "c2".into();
        assert_eq!(
            TaskEvent::decode(&any("containerd.events.TaskOOM", &oom)),
            Some(TaskEvent::OutOfMemory {
                container_id: "c2".into()
            })
        );
        assert_eq!(
            TaskEvent::decode(&any("containerd.events.TaskPaused", &oom)),
            None
        );
        let mut garbage = Any::new();
        garbage.type_url = "containerd.events.TaskExit".into();
        garbage.value = vec![0xff, 0xff, 0xff];
        assert_eq!(TaskEvent::decode(&garbage), None);
    }

    #[tokio::test]
    async fn forwarded_events_reach_subscribers() {
        use containerd_shim_protos::shim::event::Envelope;
        use containerd_shim_protos::shim_async::EventsClient;

        let dir = tempfile::tempdir().expect("tempdir");
        // A stale file where the socket goes is replaced.
        std::fs::write(dir.path().join(SOCKET_FILE), b"stale").expect("write");
        let bus = EventBus::new();
        let mut events = bus.subscribe();
        let server = EventsServer::serve(dir.path(), bus).await.expect("serve");

        let address = format!("unix://{}", server.address().display());
        let client = ttrpc::asynchronous::Client::connect(&address)
            .await
            .expect("connect");
        let client = EventsClient::new(client);
        let mut start = task::TaskStart::new();
        start.container_id = "c3".into();
        start.pid = 7;
        let mut envelope = Envelope::new();
        envelope.topic = "/tasks/start".into();
        envelope.namespace = "berth".into();
        envelope.event = MessageField::some(any("containerd.events.TaskStart", &start));
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(envelope);
        client
            .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
            .await
            .expect("forward");
        // An envelope without an event is accepted and ignored.
        client
            .forward(
                ttrpc::context::with_timeout(5_000_000_000),
                &ForwardRequest::new(),
            )
            .await
            .expect("forward empty");
        let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("received");
        assert_eq!(
            got,
            TaskEvent::Started {
                container_id: "c3".into(),
                pid: 7
            }
        );
        let path = server.address().to_path_buf();
        server.shutdown().await;
        assert!(!path.exists(), "socket removed on shutdown");
    }
}
