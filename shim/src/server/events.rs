//! The events publisher: task events forwarded to the daemon that started
//! the shim, in containerd's convention.
//!
//! When the shim's environment has `TTRPC_ADDRESS` (a socket path, or
//! `unix://<path>`), every event becomes a `ForwardRequest` to
//! `containerd.services.events.ttrpc.v1.Events/Forward` there: an
//! `Envelope{timestamp, namespace, topic, event: Any}` whose topic and
//! type name are containerd's (`/tasks/exit` carries a
//! `containerd.events.TaskExit`, and so on; see [`Event`]). The namespace
//! also travels as ttrpc metadata (`containerd-namespace-ttrpc`), as
//! containerd's shims send it.
//!
//! Events are best effort. The state on disk (the exit file) and the Task
//! API (`Wait`, `State`) stay the ground truth; an event only saves the
//! daemon a round trip. So publishing never holds up the task: callers put
//! events on a bounded queue ([`QUEUE_LEN`]; a full queue drops the event)
//! and one thread forwards them. That thread keeps one connection, opens a
//! new one when the daemon restarted, and drops an event it cannot deliver
//! after [`ATTEMPTS`] tries a short while apart.
//!
//! The requests are framed here (ttrpc's 10-byte header, then a
//! `ttrpc.Request`) rather than through ttrpc's sync client, which runs two
//! threads per connection: the shim exists once per container and its
//! resident memory is the budget.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use ttrpc::proto::{KeyValue, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_RESPONSE, Request, Response};

/// The environment variable that names the daemon's events socket.
pub const ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// Events waiting to be forwarded; more are dropped.
pub const QUEUE_LEN: usize = 128;
/// How many times one event is tried before it is dropped.
pub const ATTEMPTS: u32 = 3;
/// The pause between two tries of one event (doubled each time).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long one `Forward` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The ttrpc service and method events are forwarded to.
const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
const METHOD: &str = "Forward";
/// The metadata key containerd reads a request's namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace-ttrpc";
/// The largest response accepted (a `Forward` answers `Empty`).
const MAX_RESPONSE: u32 = 1 << 20;

/// One task event, as containerd's shims publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The task was created (`/tasks/create`).
    Create {
        /// The task (container) id.
        id: String,
        /// Its bundle.
        bundle: String,
        /// Its stdio as the request named it.
        stdin: String,
        /// Its stdout.
        stdout: String,
        /// Its stderr.
        stderr: String,
        /// Whether it has a terminal.
        terminal: bool,
        /// Its init's pid.
        pid: u32,
    },
    /// The task's init started (`/tasks/start`).
    Start {
        /// The task id.
        id: String,
        /// Its init's pid.
        pid: u32,
    },
    /// A process exited (`/tasks/exit`), published after the exit file.
    Exit {
        /// The task id.
        id: String,
        /// The process: the task id for the init, else the exec id.
        process: String,
        /// Its pid.
        pid: u32,
        /// Exit code, or 128 + signal.
        exit_status: u32,
        /// When it exited.
        exited_at: SystemTime,
    },
    /// The kernel's OOM killer killed a process of the task (`/tasks/oom`).
    Oom {
        /// The task id.
        id: String,
    },
    /// An exec process was registered (`/tasks/exec-added`).
    ExecAdded {
        /// The task id.
        id: String,
        /// The exec id.
        exec_id: String,
    },
    /// An exec process started (`/tasks/exec-started`).
    ExecStarted {
        /// The task id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Its pid.
        pid: u32,
    },
    /// The task was deleted (`/tasks/delete`).
    Delete {
        /// The task id.
        id: String,
        /// Its init's pid.
        pid: u32,
        /// How the init ended.
        exit_status: u32,
        /// When it exited.
        exited_at: SystemTime,
    },
}

fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(since.subsec_nanos()).unwrap_or(0);
    MessageField::some(ts)
}

impl Event {
    /// The event's topic (containerd's `/tasks/...`).
    pub fn topic(&self) -> &'static str {
        match self {
            Self::Create { .. } => "/tasks/create",
            Self::Start { .. } => "/tasks/start",
            Self::Exit { .. } => "/tasks/exit",
            Self::Oom { .. } => "/tasks/oom",
            Self::ExecAdded { .. } => "/tasks/exec-added",
            Self::ExecStarted { .. } => "/tasks/exec-started",
            Self::Delete { .. } => "/tasks/delete",
        }
    }

    /// The event as the `Any` of an envelope: containerd's type name
    /// (`containerd.events.TaskExit`, ...) and the encoded message.
    pub fn to_any(&self) -> Result<Any, protobuf::Error> {
        let (type_url, value) = match self.clone() {
            Self::Create {
                id,
                bundle,
                stdin,
                stdout,
                stderr,
                terminal,
                pid,
            } => {
                let mut io = ev::TaskIO::new();
                (io.stdin, io.stdout, io.stderr, io.terminal) = (stdin, stdout, stderr, terminal);
                let mut m = ev::TaskCreate::new();
                (m.container_id, m.bundle, m.pid) = (id, bundle, pid);
                m.io = MessageField::some(io);
                ("TaskCreate", m.write_to_bytes()?)
            }
            Self::Start { id, pid } => {
                let mut m = ev::TaskStart::new();
                (m.container_id, m.pid) = (id, pid);
                ("TaskStart", m.write_to_bytes()?)
            }
            Self::Exit {
                id,
                process,
                pid,
                exit_status,
                exited_at,
            } => {
                let mut m = ev::TaskExit::new();
                (m.container_id, m.id, m.pid, m.exit_status) = (id, process, pid, exit_status);
                m.exited_at = timestamp(exited_at);
                ("TaskExit", m.write_to_bytes()?)
            }
            Self::Oom { id } => {
                let mut m = ev::TaskOOM::new();
                m.container_id = id;
                ("TaskOOM", m.write_to_bytes()?)
            }
            Self::ExecAdded { id, exec_id } => {
                let mut m = ev::TaskExecAdded::new();
                (m.container_id, m.exec_id) = (id, exec_id);
                ("TaskExecAdded", m.write_to_bytes()?)
            }
            Self::ExecStarted { id, exec_id, pid } => {
                let mut m = ev::TaskExecStarted::new();
                (m.container_id, m.exec_id, m.pid) = (id, exec_id, pid);
                ("TaskExecStarted", m.write_to_bytes()?)
            }
            Self::Delete {
                id,
                pid,
                exit_status,
                exited_at,
            } => {
                let mut m = ev::TaskDelete::new();
                (m.container_id, m.pid, m.exit_status) = (id, pid, exit_status);
                m.exited_at = timestamp(exited_at);
                ("TaskDelete", m.write_to_bytes()?)
            }
        };
        let mut any = Any::new();
        any.type_url = format!("containerd.events.{type_url}");
        any.value = value;
        Ok(any)
    }
}

/// Where the shim's events go: nowhere (no `TTRPC_ADDRESS`), or a queue
/// drained by the forwarding thread. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Publisher {
    queue: Option<SyncSender<(SystemTime, Event)>>,
}

impl Publisher {
    /// A publisher to the socket named by `TTRPC_ADDRESS`, if it is set;
    /// envelopes carry `namespace`.
    pub(crate) fn from_env(namespace: &str) -> std::io::Result<Self> {
        match std::env::var(ADDRESS_ENV) {
            Ok(address) if !address.trim().is_empty() => Self::start(&address, namespace),
            _ => Ok(Self::default()),
        }
    }

    /// Starts the forwarding thread for the events socket at `address`.
    pub(crate) fn start(address: &str, namespace: &str) -> std::io::Result<Self> {
        let path = address
            .trim()
            .strip_prefix("unix://")
            .unwrap_or(address.trim())
            .to_owned();
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LEN);
        let namespace = namespace.to_owned();
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(64 * 1024)
            .spawn(move || forward_all(&rx, &path, &namespace))?;
        Ok(Self { queue: Some(tx) })
    }

    /// Queues `event`; drops it when the queue is full or no daemon listens
    /// for events.
    pub(crate) fn publish(&self, event: Event) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send((SystemTime::now(), event)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, event))) => {
                eprintln!("berth-shim: event queue full, dropped {}", event.topic());
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The forwarding thread: one event at a time, each tried [`ATTEMPTS`]
/// times over a fresh connection when the last one failed.
fn forward_all(queue: &Receiver<(SystemTime, Event)>, path: &str, namespace: &str) {
    let mut conn: Option<Connection> = None;
    for (at, event) in queue {
        let request = match envelope(at, namespace, &event) {
            Ok(request) => request,
            Err(e) => {
                eprintln!("berth-shim: cannot encode {}: {e}", event.topic());
                continue;
            }
        };
        let mut pause = RETRY_PAUSE;
        for attempt in 1..=ATTEMPTS {
            let sent = match conn.as_mut() {
                Some(c) => c.forward(&request),
                None => Connection::open(path).and_then(|c| conn.insert(c).forward(&request)),
            };
            match sent {
                Ok(()) => break,
                Err(e) => {
                    conn = None;
                    if attempt == ATTEMPTS {
                        eprintln!(
                            "berth-shim: dropped event {} after {ATTEMPTS} tries: {e}",
                            event.topic()
                        );
                    } else {
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
            }
        }
    }
}

/// The ttrpc request forwarding `event`.
fn envelope(at: SystemTime, namespace: &str, event: &Event) -> Result<Request, String> {
    let mut envelope = Envelope::new();
    envelope.timestamp = timestamp(at);
    envelope.namespace = namespace.to_owned();
    envelope.topic = event.topic().to_owned();
    envelope.event = MessageField::some(event.to_any().map_err(|e| e.to_string())?);
    let mut forward = ForwardRequest::new();
    forward.envelope = MessageField::some(envelope);
    let mut request = Request::new();
    request.service = SERVICE.to_owned();
    request.method = METHOD.to_owned();
    request.payload = forward.write_to_bytes().map_err(|e| e.to_string())?;
    request.timeout_nano = i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
    let mut header = KeyValue::new();
    header.key = NAMESPACE_HEADER.to_owned();
    header.value = namespace.to_owned();
    request.metadata.push(header);
    Ok(request)
}

/// One connection to the events socket; calls are sequential.
struct Connection {
    stream: UnixStream,
    /// The next client stream id (odd, as ttrpc clients number them).
    next_stream: u32,
}

impl Connection {
    fn open(path: &str) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Self {
            stream,
            next_stream: 1,
        })
    }

    /// Sends one request and reads its response; an error status is an
    /// error.
    fn forward(&mut self, request: &Request) -> std::io::Result<()> {
        let payload = request.write_to_bytes().map_err(std::io::Error::other)?;
        let stream_id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(2);
        let len =
            u32::try_from(payload.len()).map_err(|_| std::io::Error::other("event too large"))?;
        let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + payload.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.extend_from_slice(&[ttrpc::proto::MESSAGE_TYPE_REQUEST, 0]);
        frame.extend_from_slice(&payload);
        self.stream.write_all(&frame)?;
        loop {
            let mut header = [0u8; MESSAGE_HEADER_LENGTH];
            self.stream.read_exact(&mut header)?;
            let [l0, l1, l2, l3, s0, s1, s2, s3, kind, _flags] = header;
            let len = u32::from_be_bytes([l0, l1, l2, l3]);
            if len > MAX_RESPONSE {
                return Err(std::io::Error::other(format!("a {len}-byte response")));
            }
            let mut body = vec![0u8; len as usize];
            self.stream.read_exact(&mut body)?;
            if kind != MESSAGE_TYPE_RESPONSE || u32::from_be_bytes([s0, s1, s2, s3]) != stream_id {
                continue;
            }
            let response = Response::parse_from_bytes(&body).map_err(std::io::Error::other)?;
            return match response.status.as_ref() {
                Some(status) if status.code.value() != 0 => Err(std::io::Error::other(format!(
                    "Forward answered {:?}: {}",
                    status.code(),
                    status.message
                ))),
                _ => Ok(()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_type_names_are_containerds() {
        let at = UNIX_EPOCH + Duration::new(7, 8);
        let cases = [
            (
                Event::Create {
                    id: "c".into(),
                    bundle: "/b".into(),
                    stdin: String::new(),
                    stdout: "/o".into(),
                    stderr: "/o".into(),
                    terminal: true,
                    pid: 3,
                },
                "/tasks/create",
                "containerd.events.TaskCreate",
            ),
            (
                Event::Start {
                    id: "c".into(),
                    pid: 3,
                },
                "/tasks/start",
                "containerd.events.TaskStart",
            ),
            (
                Event::Exit {
                    id: "c".into(),
                    process: "c".into(),
                    pid: 3,
                    exit_status: 137,
                    exited_at: at,
                },
                "/tasks/exit",
                "containerd.events.TaskExit",
            ),
            (
                Event::Oom { id: "c".into() },
                "/tasks/oom",
                "containerd.events.TaskOOM",
            ),
            (
                Event::ExecAdded {
                    id: "c".into(),
                    exec_id: "e".into(),
                },
                "/tasks/exec-added",
                "containerd.events.TaskExecAdded",
            ),
            (
                Event::ExecStarted {
                    id: "c".into(),
                    exec_id: "e".into(),
                    pid: 4,
                },
                "/tasks/exec-started",
                "containerd.events.TaskExecStarted",
            ),
            (
                Event::Delete {
                    id: "c".into(),
                    pid: 3,
                    exit_status: 137,
                    exited_at: at,
                },
                "/tasks/delete",
                "containerd.events.TaskDelete",
            ),
        ];
        for (event, topic, type_url) in cases {
            assert_eq!(event.topic(), topic);
            let any = event.to_any().expect("encode");
            assert_eq!(any.type_url, type_url);
        }
        let exit = Event::Exit {
            id: "c".into(),
            process: "e".into(),
            pid: 3,
            exit_status: 137,
            exited_at: at,
        };
        let decoded =
            ev::TaskExit::parse_from_bytes(&exit.to_any().expect("encode").value).expect("decode");
        assert_eq!(
            (decoded.container_id.as_str(), decoded.id.as_str()),
            ("c", "e")
        );
        assert_eq!((decoded.pid, decoded.exit_status), (3, 137));
        assert_eq!(
            decoded.exited_at.as_ref().map(|t| (t.seconds, t.nanos)),
            Some((7, 8))
        );
    }

    #[test]
    fn envelopes_carry_the_namespace_and_the_topic() {
        let at = UNIX_EPOCH + Duration::from_secs(9);
        let request = envelope(at, "ns", &Event::Oom { id: "c".into() }).expect("envelope");
        assert_eq!(
            (request.service.as_str(), request.method.as_str()),
            (SERVICE, METHOD)
        );
        assert_eq!(request.metadata[0].key, NAMESPACE_HEADER);
        assert_eq!(request.metadata[0].value, "ns");
        let forward = ForwardRequest::parse_from_bytes(&request.payload).expect("decode");
        let envelope = forward.envelope.as_ref().expect("an envelope");
        assert_eq!(
            (envelope.namespace.as_str(), envelope.topic.as_str()),
            ("ns", "/tasks/oom")
        );
        assert_eq!(envelope.timestamp.as_ref().map(|t| t.seconds), Some(9));
    }

    #[test]
    fn an_absent_daemon_costs_a_dropped_event_not_a_stuck_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let publisher =
            Publisher::start(&dir.path().join("none.sock").to_string_lossy(), "ns").expect("start");
        let started = std::time::Instant::now();
        for _ in 0..QUEUE_LEN * 2 {
            publisher.publish(Event::Oom { id: "c".into() });
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "publish blocked"
        );
    }
}
