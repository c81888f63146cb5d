//! berthd's client for `berth-shim` (or any shim v2 runtime): starting a
//! shim, connecting to it, and typed calls of containerd's Task API over
//! ttrpc. It knows nothing of the CRI.
//!
//! A shim outlives berthd: after a restart berthd [`connect`]s again with
//! the address the shim printed at [`start`] (also in its state dir), and
//! learns from [`ShimClient::state`] or [`ShimClient::wait`] how a task that
//! exited meanwhile ended. When the shim itself is gone,
//! [`read_exit_file`] reads the exit it recorded, and `berth-shim delete`
//! cleans up after it.
//!
//! Interactive I/O: a task's init may have a terminal and a stdin
//! ([`ShimClient::create_with_io`]); its output and stdin are reached
//! through the shim's attach socket ([`attach`]). An exec process's stdio
//! are FIFOs berthd creates and holds the other end of
//! ([`ShimClient::exec_with_io`]); [`ShimClient::resize_pty`] and
//! [`ShimClient::close_io`] act on either.
//!
//! [`ShimClient::checkpoint`] dumps a running task with CRIU.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_shim::exit::{ExitError, ExitRecord};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::types::task::Status as ApiStatus;
use ttrpc::Code;
use ttrpc::context::{self, Context};

pub use berth_shim::options::TaskOptions;

pub mod attach;

pub use checkpoint::CheckpointOptions;

mod checkpoint;

pub use cleanup::delete_dead;

mod cleanup;

/// The environment variable that gives a shim its events socket.
const EVENTS_ADDRESS_ENV: &str = berth_shim::server::events::ADDRESS_ENV;
/// How long `berth-shim start` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call other than `Wait` may take (runc create included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a shim could not be started or a call failed. Each ttrpc status
/// code the shim uses has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum ShimClientError {
    /// The shim binary could not be run.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `berth-shim start` failed or printed no address.
    #[error("{} start failed ({status}): {stderr}", binary.display())]
    StartFailed {
        /// The binary.
        binary: PathBuf,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// `berth-shim delete` failed or printed no `DeleteResponse`.
    #[error("{} delete failed ({status}): {stderr}", binary.display())]
    CleanupFailed {
        /// The binary.
        binary: PathBuf,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// `berth-shim start` did not finish in time.
    #[error("{} start did not finish within {START_TIMEOUT:?}", .0.display())]
    StartTimeout(PathBuf),
    /// The shim could not be reached at its address.
    #[error("cannot connect to the shim at {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// No such task or process (`NOT_FOUND`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The shim already has a task (`ALREADY_EXISTS`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request was refused as malformed (`INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The task is not in a state that allows the call
    /// (`FAILED_PRECONDITION`).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The shim does not implement the call (`UNIMPLEMENTED`).
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// The call did not finish in time.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The shim failed (`INTERNAL`: the runtime or the system failed).
    #[error("shim internal error: {0}")]
    Internal(String),
    /// Any other status code.
    #[error("shim returned {code:?}: {message}")]
    Status {
        /// The ttrpc code.
        code: Code,
        /// The shim's message.
        message: String,
    },
    /// The connection closed (the shim exited or was killed).
    #[error("connection to the shim closed")]
    Closed,
    /// The transport failed.
    #[error("ttrpc transport error: {0}")]
    Transport(String),
    /// The shim's exit file could not be read.
    #[error(transparent)]
    ExitFile(#[from] ExitError),
}

impl From<ttrpc::Error> for ShimClientError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(status) => {
                let message = status.message.clone();
                match status.code() {
                    Code::NOT_FOUND => Self::NotFound(message),
                    Code::ALREADY_EXISTS => Self::AlreadyExists(message),
                    Code::INVALID_ARGUMENT => Self::InvalidArgument(message),
                    Code::FAILED_PRECONDITION => Self::FailedPrecondition(message),
                    Code::UNIMPLEMENTED => Self::Unimplemented(message),
                    Code::DEADLINE_EXCEEDED => Self::DeadlineExceeded(message),
                    Code::INTERNAL => Self::Internal(message),
                    code => Self::Status { code, message },
                }
            }
            ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed | ttrpc::Error::Eof => {
                Self::Closed
            }
            ttrpc::Error::Socket(m) if is_closed(&m) => Self::Closed,
            ttrpc::Error::Others(m) if m.contains("timeout") => Self::DeadlineExceeded(m),
            ttrpc::Error::Others(m) if is_closed(&m) => Self::Closed,
            other => Self::Transport(other.to_string()),
        }
    }
}

/// Whether a ttrpc transport message says the peer went away.
fn is_closed(message: &str) -> bool {
    [
        "closed",
        "EOF",
        "reset",
        "Broken pipe",
        "ECONNRESET",
        "EPIPE",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// What a task runs and where its output goes.
#[derive(Debug, Clone)]
pub struct CreateTask {
    /// The task id.
    pub id: String,
    /// The OCI bundle (for the pause process: any directory, reported back
    /// by `State`).
    pub bundle: PathBuf,
    /// File the task's stdout is appended to (`/dev/null` when `None`).
    pub stdout: Option<PathBuf>,
    /// File the task's stderr is appended to.
    pub stderr: Option<PathBuf>,
    /// What runs: an OCI bundle through runc, or the pause process.
    pub options: TaskOptions,
}

/// A task init's interactive I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskIo {
    /// The init has a stdin, fed by clients of the attach socket, until
    /// [`ShimClient::close_io`].
    pub stdin: bool,
    /// The init has a terminal (the bundle's `process.terminal` must say
    /// so too); its output is logged as stdout.
    pub terminal: bool,
}

/// An exec process's stdio, containerd's convention: FIFOs that berthd
/// creates and holds the other end of (it must have opened the read end
/// of stdout and stderr before `Start`), or plain files for the outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecIo {
    /// A FIFO berthd writes the process's stdin to (`None`: no stdin).
    /// The shim opens its read end at `Start` without blocking, so berthd
    /// opens the write end after `Start` (or `O_RDWR` before). Closing the
    /// write end closes the process's stdin (a terminal gets end-of-file).
    pub stdin: Option<PathBuf>,
    /// A FIFO (or file) for the process's stdout; with a terminal, all its
    /// output. The shim closes it once the process exited and its output
    /// is drained, before `Wait` returns.
    pub stdout: Option<PathBuf>,
    /// A FIFO (or file) for the process's stderr (unused with a terminal).
    pub stderr: Option<PathBuf>,
    /// The process has a terminal (`runc exec --tty`).
    pub terminal: bool,
}

/// A task's life-cycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Its init exited.
    Stopped,
    /// Frozen.
    Paused,
    /// Anything else the shim reports.
    Unknown,
}

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskExit {
    /// Exit code, or 128 + signal.
    pub exit_status: u32,
    /// When it exited.
    pub exited_at: SystemTime,
    /// Whether the kernel's OOM killer killed a process of the task's
    /// cgroup. Only the exit file carries it: `false` in what `Wait`,
    /// `State` and `Delete` report; see [`ShimClient::wait_recorded`] and
    /// [`read_exit_file`].
    pub oom_killed: bool,
}

impl TaskExit {
    /// An exit as the Task API reports it (without `oom_killed`).
    fn reported(exit_status: u32, exited_at: &MessageField<Timestamp>) -> Self {
        Self {
            exit_status,
            exited_at: time(exited_at),
            oom_killed: false,
        }
    }
}

/// A task as `State` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// The task id.
    pub id: String,
    /// Its init's pid.
    pub pid: u32,
    /// Its status.
    pub status: TaskStatus,
    /// How it ended, once stopped.
    pub exit: Option<TaskExit>,
}

/// What `Delete` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedTask {
    /// The init's pid.
    pub pid: u32,
    /// How it ended.
    pub exit: TaskExit,
}

/// What `Connect` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimInfo {
    /// The shim's pid.
    pub shim_pid: u32,
    /// The task's init pid (0 without a task).
    pub task_pid: u32,
    /// The shim's version string.
    pub version: String,
}

/// A connection to one shim.
#[derive(Clone)]
pub struct ShimClient {
    address: String,
    task: TaskClient,
}

/// The `berth-shim` binary: next to berthd's own executable, else from
/// `PATH`.
pub fn binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("berth-shim")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "berth-shim".into())
}

/// Runs `binary -namespace NS -id ID -state-dir DIR start`, which returns
/// once the daemonized shim listens, and connects to the address it prints.
///
/// `events` is the socket (a path or `unix://<path>`) of a ttrpc server
/// with containerd's `containerd.services.events.ttrpc.v1.Events/Forward`,
/// which the shim then publishes its task events to (`TTRPC_ADDRESS` in its
/// environment, containerd's convention); `None` means no events.
pub async fn start(
    binary: &Path,
    namespace: &str,
    id: &str,
    state_dir: &Path,
    events: Option<&str>,
) -> Result<ShimClient, ShimClientError> {
    let mut cmd = tokio::process::Command::new(binary);
    match events {
        Some(address) => cmd.env(EVENTS_ADDRESS_ENV, address),
        None => cmd.env_remove(EVENTS_ADDRESS_ENV),
    };
    cmd.args(["-namespace", namespace, "-id", id, "-state-dir"])
        .arg(state_dir)
        .arg("start")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(START_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ShimClientError::StartTimeout(binary.to_owned()))?
        .map_err(|source| ShimClientError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let address = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || address.is_empty() {
        return Err(ShimClientError::StartFailed {
            binary: binary.to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    connect(&address).await
}

/// Connects to a shim listening on `address` (`unix://<path>`).
pub async fn connect(address: &str) -> Result<ShimClient, ShimClientError> {
    let client = ttrpc::asynchronous::Client::connect(address)
        .await
        .map_err(|e| ShimClientError::Connect {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(ShimClient {
        address: address.to_owned(),
        task: TaskClient::new(client),
    })
}

/// The exit the shim recorded in `state_dir`, if any: how berthd learns how
/// a task ended when its shim is gone too, and whether it was OOM-killed.
pub fn read_exit_file(state_dir: &Path) -> Result<Option<TaskExit>, ShimClientError> {
    Ok(ExitRecord::read(state_dir)?.map(|r| TaskExit {
        exit_status: r.exit_status,
        exited_at: r.exited_at,
        oom_killed: r.oom_killed,
    }))
}

/// What `CreateTaskRequest.stdin` says when the init has a stdin (the shim
/// holds it and feeds it from the attach socket; it opens no path).
const ATTACH_STDIN: &str = "attach";

/// The type URL containerd gives the JSON of an OCI `LinuxResources`.
const LINUX_RESOURCES_TYPE: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// `exit` with `oom_killed` from `recorded` when `recorded` is the same
/// exit (the file of an earlier task in the same state dir is not).
/// `exit` as the Task API reported it, completed with what the shim wrote
/// in `state_dir`'s exit file for the same exit (whether the OOM killer
/// struck); unchanged when there is no such record.
pub fn with_exit_file(exit: TaskExit, state_dir: &Path) -> TaskExit {
    with_recorded_oom(exit, read_exit_file(state_dir).ok().flatten())
}

fn with_recorded_oom(exit: TaskExit, recorded: Option<TaskExit>) -> TaskExit {
    match recorded {
        Some(r) if (r.exit_status, r.exited_at) == (exit.exit_status, exit.exited_at) => TaskExit {
            oom_killed: r.oom_killed,
            ..exit
        },
        _ => exit,
    }
}

fn call_context() -> Context {
    context::with_timeout(i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX))
}

/// A protobuf timestamp as a time (the epoch when absent or invalid).
pub(crate) fn time(ts: &MessageField<Timestamp>) -> SystemTime {
    ts.as_ref()
        .and_then(|ts| {
            let secs = u64::try_from(ts.seconds).ok()?;
            let nanos = u32::try_from(ts.nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        .unwrap_or(UNIX_EPOCH)
}

/// The `Create` request for `task` with `io`.
fn create_request(task: &CreateTask, io: TaskIo) -> api::CreateTaskRequest {
    let mut req = api::CreateTaskRequest::new();
    req.id = task.id.clone();
    req.bundle = task.bundle.to_string_lossy().into_owned();
    req.stdout = path_string(&task.stdout);
    req.stderr = path_string(&task.stderr);
    // The shim holds the init's stdin; the value only has to say so.
    if io.stdin {
        req.stdin = ATTACH_STDIN.into();
    }
    req.terminal = io.terminal;
    req.options = MessageField::some(task.options.to_any());
    req
}

fn path_string(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl ShimClient {
    /// The address this client is connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Creates the task, without a terminal or stdin; returns its init
    /// pid.
    pub async fn create(&self, task: &CreateTask) -> Result<u32, ShimClientError> {
        self.create_with_io(task, TaskIo::default()).await
    }

    /// Creates the task with a terminal and/or a stdin; returns its init
    /// pid.
    pub async fn create_with_io(
        &self,
        task: &CreateTask,
        io: TaskIo,
    ) -> Result<u32, ShimClientError> {
        let req = create_request(task, io);
        Ok(self.task.create(call_context(), &req).await?.pid)
    }

    /// Starts the created task; returns its pid.
    pub async fn start(&self, id: &str) -> Result<u32, ShimClientError> {
        let mut req = api::StartRequest::new();
        req.id = id.to_owned();
        Ok(self.task.start(call_context(), &req).await?.pid)
    }

    /// The task's status (and exit, once stopped).
    pub async fn state(&self, id: &str) -> Result<TaskState, ShimClientError> {
        let mut req = api::StateRequest::new();
        req.id = id.to_owned();
        let resp = self.task.state(call_context(), &req).await?;
        let status = match resp.status.enum_value() {
            Ok(ApiStatus::CREATED) => TaskStatus::Created,
            Ok(ApiStatus::RUNNING) => TaskStatus::Running,
            Ok(ApiStatus::STOPPED) => TaskStatus::Stopped,
            Ok(ApiStatus::PAUSED) => TaskStatus::Paused,
            _ => TaskStatus::Unknown,
        };
        let exit = (status == TaskStatus::Stopped)
            .then(|| TaskExit::reported(resp.exit_status, &resp.exited_at));
        Ok(TaskState {
            id: resp.id,
            pid: resp.pid,
            status,
            exit,
        })
    }

    /// Sends `signal` to the task's init, or with `all` to all its
    /// processes.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ShimClientError> {
        let mut req = api::KillRequest::new();
        req.id = id.to_owned();
        req.signal = signal;
        req.all = all;
        self.task.kill(call_context(), &req).await?;
        Ok(())
    }

    /// Blocks (without a timeout) until the task's init exits.
    /// `oom_killed` is always `false`: see [`Self::wait_recorded`].
    pub async fn wait(&self, id: &str) -> Result<TaskExit, ShimClientError> {
        let mut req = api::WaitRequest::new();
        req.id = id.to_owned();
        let resp = self.task.wait(context::Context::default(), &req).await?;
        Ok(TaskExit::reported(resp.exit_status, &resp.exited_at))
    }

    /// [`Self::wait`], completed from the exit file the shim wrote in
    /// `state_dir` before it answered: the exit with `oom_killed`.
    pub async fn wait_recorded(
        &self,
        id: &str,
        state_dir: &Path,
    ) -> Result<TaskExit, ShimClientError> {
        let exit = self.wait(id).await?;
        Ok(with_recorded_oom(exit, read_exit_file(state_dir)?))
    }

    /// Updates the task's resources: `resources_json` is the JSON of an OCI
    /// `LinuxResources` (`runc update --resources -`). A malformed value is
    /// [`ShimClientError::InvalidArgument`]; an exited task
    /// [`ShimClientError::FailedPrecondition`].
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimClientError> {
        let mut req = api::UpdateTaskRequest::new();
        req.id = id.to_owned();
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = LINUX_RESOURCES_TYPE.into();
        any.value = resources_json;
        req.resources = MessageField::some(any);
        self.task.update(call_context(), &req).await?;
        Ok(())
    }

    /// Deletes the stopped (or never started) task.
    pub async fn delete(&self, id: &str) -> Result<DeletedTask, ShimClientError> {
        let mut req = api::DeleteRequest::new();
        req.id = id.to_owned();
        let resp = self.task.delete(call_context(), &req).await?;
        Ok(DeletedTask {
            pid: resp.pid,
            exit: TaskExit::reported(resp.exit_status, &resp.exited_at),
        })
    }

    /// Registers an exec process: `process` is an OCI process spec (JSON);
    /// its output goes to the two files (or FIFOs), it has no stdin.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<(), ShimClientError> {
        let io = ExecIo {
            stdin: None,
            stdout: Some(stdout.to_owned()),
            stderr: Some(stderr.to_owned()),
            terminal: false,
        };
        self.exec_with_io(id, exec_id, process, &io).await
    }

    /// Registers an exec process with the stdio of `io`: `process` is an
    /// OCI process spec (JSON; its `terminal` should match `io.terminal`).
    pub async fn exec_with_io(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        io: &ExecIo,
    ) -> Result<(), ShimClientError> {
        let mut req = api::ExecProcessRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.stdin = path_string(&io.stdin);
        req.stdout = path_string(&io.stdout);
        req.stderr = path_string(&io.stderr);
        req.terminal = io.terminal;
        let mut spec = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        spec.value = process;
        req.spec = MessageField::some(spec);
        self.task.exec(call_context(), &req).await?;
        Ok(())
    }

    /// Starts a registered exec process; returns its pid.
    pub async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32, ShimClientError> {
        let mut req = api::StartRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        Ok(self.task.start(call_context(), &req).await?.pid)
    }

    /// Blocks (without a timeout) until the exec process exits.
    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<TaskExit, ShimClientError> {
        let mut req = api::WaitRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        let resp = self.task.wait(context::Context::default(), &req).await?;
        Ok(TaskExit::reported(resp.exit_status, &resp.exited_at))
    }

    /// Signals the exec process.
    pub async fn kill_exec(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), ShimClientError> {
        let mut req = api::KillRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.signal = signal;
        self.task.kill(call_context(), &req).await?;
        Ok(())
    }

    /// Forgets the exited exec process.
    pub async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<(), ShimClientError> {
        let mut req = api::DeleteRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        self.task.delete(call_context(), &req).await?;
        Ok(())
    }

    /// Sets the window size of the terminal of the task's init (empty
    /// `exec_id`) or of an exec process.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimClientError> {
        let mut req = api::ResizePtyRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.width = width;
        req.height = height;
        self.task.resize_pty(call_context(), &req).await?;
        Ok(())
    }

    /// Closes the stdin of the task's init (empty `exec_id`; CRI
    /// `stdin_once`) or of an exec process; a terminal is sent end-of-file.
    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<(), ShimClientError> {
        let mut req = api::CloseIORequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.stdin = true;
        self.task.close_io(call_context(), &req).await?;
        Ok(())
    }

    /// The task's processes.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, ShimClientError> {
        let mut req = api::PidsRequest::new();
        req.id = id.to_owned();
        let resp = self.task.pids(call_context(), &req).await?;
        Ok(resp.processes.iter().map(|p| p.pid).collect())
    }

    /// The shim's and the task's pids.
    pub async fn connect(&self, id: &str) -> Result<ShimInfo, ShimClientError> {
        let mut req = api::ConnectRequest::new();
        req.id = id.to_owned();
        let resp = self.task.connect(call_context(), &req).await?;
        Ok(ShimInfo {
            shim_pid: resp.shim_pid,
            task_pid: resp.task_pid,
            version: resp.version,
        })
    }

    /// Asks the shim to exit; it does once it has no task. A connection
    /// that closes under the call means the shim went, as asked.
    pub async fn shutdown(&self, id: &str) -> Result<(), ShimClientError> {
        let mut req = api::ShutdownRequest::new();
        req.id = id.to_owned();
        match self.task.shutdown(call_context(), &req).await {
            Ok(_) => Ok(()),
            Err(e) => match ShimClientError::from(e) {
                ShimClientError::Closed => Ok(()),
                other => Err(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_status_codes_and_transport_errors() {
        let status = |code, message: &str| {
            ShimClientError::from(ttrpc::Error::RpcStatus(ttrpc::get_status(
                code,
                message.to_owned(),
            )))
        };
        assert!(matches!(status(Code::NOT_FOUND, "x"), ShimClientError::NotFound(m) if m == "x"));
        assert!(matches!(
            status(Code::UNIMPLEMENTED, "Pause"),
            ShimClientError::Unimplemented(_)
        ));
        assert!(matches!(
            status(Code::FAILED_PRECONDITION, ""),
            ShimClientError::FailedPrecondition(_)
        ));
        assert!(matches!(
            status(Code::PERMISSION_DENIED, ""),
            ShimClientError::Status {
                code: Code::PERMISSION_DENIED,
                ..
            }
        ));
        assert!(matches!(
            ShimClientError::from(ttrpc::Error::RemoteClosed),
            ShimClientError::Closed
        ));
        assert!(matches!(
            ShimClientError::from(ttrpc::Error::Others("Receive packet timeout".into())),
            ShimClientError::DeadlineExceeded(_)
        ));
    }

    #[test]
    fn reads_the_exit_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_exit_file(dir.path()).expect("none"), None);
        let at = UNIX_EPOCH + Duration::from_secs(5);
        ExitRecord::signaled(3, 9, at)
            .write(dir.path())
            .expect("write");
        assert_eq!(
            read_exit_file(dir.path()).expect("read"),
            Some(TaskExit {
                exit_status: 137,
                exited_at: at,
                oom_killed: false,
            })
        );
        ExitRecord {
            oom_killed: true,
            ..ExitRecord::signaled(3, 9, at)
        }
        .write(dir.path())
        .expect("write");
        let recorded = read_exit_file(dir.path()).expect("read");
        assert!(recorded.is_some_and(|e| e.oom_killed));
        let waited = TaskExit {
            exit_status: 137,
            exited_at: at,
            oom_killed: false,
        };
        assert!(with_recorded_oom(waited, recorded).oom_killed);
        let other = TaskExit {
            exited_at: at + Duration::from_secs(1),
            ..waited
        };
        assert!(
            !with_recorded_oom(other, recorded).oom_killed,
            "another exit's file was taken for this one"
        );
    }
}
