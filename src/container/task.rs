//! A container's process, through its `berth-shim`: StartContainer starts
//! a shim and has it create and start the OCI task; a waiter records the
//! exit; StopContainer signals, waits, then kills; removal deletes the task
//! and shuts the shim down. After a berthd restart, running containers are
//! found again through their shim's address, or through the exit file the
//! shim writes before it reports an exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::containers::{ContainerError, Containers, Entry};
use super::mounts::{TERMINATION_LOG, TERMINATION_MESSAGE_PATH};
use super::record::{ContainerRecord, ContainerState};
use crate::clock::unix_nanos;
use crate::events::{Lifecycle, LifecycleBus};
use crate::shim_client::{self, CreateTask, ShimClient, TaskExit, TaskOptions, TaskStatus};
use crate::store::{Store, Table};

/// The namespace berth's shims run in.
const SHIM_NAMESPACE: &str = "berth";
/// How many connections a waiter tries before it takes the shim for dead.
const WAIT_ATTEMPTS: u64 = 3;

/// The shim's state directory for a container.
pub fn shim_dir(record: &ContainerRecord) -> PathBuf {
    record.bundle.join("shim")
}

pub(super) fn shim_error(e: shim_client::ShimClientError) -> ContainerError {
    ContainerError::Shim(e.to_string())
}

/// Where exits are recorded: the store, and the lifecycle bus that tells
/// GetContainerEvents subscribers.
#[derive(Clone)]
pub(super) struct Recorder {
    pub(super) store: Store,
    pub(super) lifecycle: LifecycleBus,
}

/// Writes an exit into the record and announces it, once: the first of the
/// waiter, the event and recovery to get here records it, the others find
/// it exited.
fn record_exit(rec: &Recorder, entry: &Entry, exit: &TaskExit) {
    // Whichever path reports the exit, the shim's exit file (written before
    // any report) says whether the OOM killer struck.
    let exit = &shim_client::with_exit_file(*exit, &shim_dir(&entry.record()));
    let recorded = entry.update(|record| {
        if record.state == ContainerState::Exited {
            return false;
        }
        record.state = ContainerState::Exited;
        record.exit_code = i32::try_from(exit.exit_status).unwrap_or(i32::MAX);
        record.finished_at = unix_nanos(exit.exited_at);
        record.reason = if exit.exit_status == 0 {
            "Completed"
        } else if exit.oom_killed {
            "OOMKilled"
        } else {
            "Error"
        }
        .into();
        if let Some(message) = termination_message(record) {
            record.message = message;
        }
        true
    });
    let Some(record) = recorded else {
        return;
    };
    if let Err(e) = rec.store.put(Table::Containers, &record.id, &record) {
        tracing::error!(container = %record.id, error = %e, "exit not recorded");
    }
    rec.lifecycle
        .publish(&record.id, &record.sandbox_id, Lifecycle::Stopped);
    tracing::info!(container = %record.id, exit_code = record.exit_code, "container exited");
}

/// The most the termination message holds (the kubelet's limit per
/// container); a longer file gives its tail.
const MAX_TERMINATION_MESSAGE: u64 = 4096;

/// What the container wrote to its termination-message file, when berth
/// backs that file itself (the annotation without a kubelet mount there).
/// When the kubelet mounts the path, it reads the file from the reported
/// mounts itself and appends it to the message: reporting it here as well
/// would show it twice.
fn termination_message(record: &ContainerRecord) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = record.annotations.get(TERMINATION_MESSAGE_PATH)?;
    if record
        .mounts
        .iter()
        .any(|m| Path::new(&m.container_path) == Path::new(path))
    {
        return None;
    }
    let mut file = std::fs::File::open(record.dir.join(TERMINATION_LOG)).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(MAX_TERMINATION_MESSAGE)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut bytes)
        .ok()?;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Waits for the task's exit through `client` and records it.
fn spawn_waiter(rec: Recorder, entry: Arc<Entry>, client: ShimClient, id: String) {
    tokio::spawn(async move {
        let mut client = client;
        for attempt in 1..=WAIT_ATTEMPTS {
            let error = match client.wait(&id).await {
                Ok(exit) => return record_exit(&rec, &entry, &exit),
                Err(e) => e,
            };
            let record = entry.record();
            if record.state == ContainerState::Exited {
                return;
            }
            // Only this connection may be gone: wait again on a new one.
            if attempt < WAIT_ATTEMPTS
                && let Some(address) = &record.shim_address
                && let Ok(again) = shim_client::connect(address).await
            {
                tracing::warn!(container = %id, error = %error, "lost the wait on the container's shim; waiting again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                client = again;
                continue;
            }
            break;
        }
        // The shim is gone: its exit file has the answer if the task exited
        // first.
        clean_up_dead_shim(&rec, &entry).await;
    });
}

impl Containers {
    pub(super) fn recorder(&self) -> Recorder {
        Recorder {
            store: self.store.clone(),
            lifecycle: self.lifecycle.clone(),
        }
    }

    /// StartContainer: a shim for the container creates and starts its
    /// task with the pod's runtime handler.
    pub async fn start(
        &self,
        id: &str,
        runtime: &Path,
        runtime_root: &Path,
    ) -> Result<(), ContainerError> {
        let entry = self.find(id)?;
        let _op = entry.op.lock().await;
        let mut record = entry.record();
        if record.state != ContainerState::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                record.id, record.state
            )));
        }
        let dir = shim_dir(&record);
        let events = crate::events::address(&self.config.state);
        let client = shim_client::start(
            &shim_client::binary(),
            SHIM_NAMESPACE,
            &record.id,
            &dir,
            Some(&events),
        )
        .await
        .map_err(shim_error)?;
        let log = (!record.log_path.is_empty()).then(|| PathBuf::from(&record.log_path));
        if let Some(parent) = log.as_ref().and_then(|l| l.parent()) {
            std::fs::create_dir_all(parent).map_err(|source| ContainerError::Io {
                op: "create log directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let task = CreateTask {
            id: record.id.clone(),
            bundle: record.bundle.clone(),
            stdout: log.clone(),
            stderr: log,
            options: TaskOptions::Runc {
                binary: Some(runtime.to_path_buf()),
                root: Some(runtime_root.to_path_buf()),
            },
        };
        let started = async {
            let io = shim_client::TaskIo {
                stdin: record.stdin,
                terminal: record.tty,
            };
            match super::checkpoint_restore::pending_images(&record) {
                Some(images) => {
                    let timeout = super::DEFAULT_CHECKPOINT_TIMEOUT;
                    client.create_restored(&task, io, &images, timeout).await?
                }
                None => client.create_with_io(&task, io).await?,
            };
            client.start(&record.id).await
        }
        .await;
        if let Err(e) = started {
            let _ = client.delete(&record.id).await;
            let _ = client.shutdown(&record.id).await;
            return Err(shim_error(e));
        }
        super::checkpoint_restore::forget_images(&record);
        record.state = ContainerState::Running;
        record.started_at = crate::clock::now_nanos();
        record.shim_address = Some(client.address().to_string());
        self.store.put(Table::Containers, &record.id, &record)?;
        entry.set(record.clone());
        self.lifecycle
            .publish(&record.id, &record.sandbox_id, Lifecycle::Started);
        spawn_waiter(self.recorder(), entry.clone(), client, record.id.clone());
        tracing::info!(container = %record.id, "container started");
        Ok(())
    }

    /// StopContainer: `signal` (the image's stop signal, SIGTERM by
    /// default), then SIGKILL after `timeout`. A container that is not
    /// running, or unknown, is already stopped.
    pub async fn stop(
        &self,
        id: &str,
        signal: u32,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let entry = match self.find(id) {
            Ok(entry) => entry,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, signal, timeout).await
    }

    async fn stop_locked(
        &self,
        entry: &Entry,
        signal: u32,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let record = entry.record();
        if record.state != ContainerState::Running {
            return Ok(());
        }
        let client = self.client(&record).await?;
        if !timeout.is_zero() {
            let _ = client.kill(&record.id, signal, false).await;
            if wait_exited(entry, timeout).await {
                return Ok(());
            }
        }
        client
            .kill(&record.id, nix::libc::SIGKILL as u32, true)
            .await
            .or_else(|e| match e {
                shim_client::ShimClientError::NotFound(_) => Ok(()),
                other => Err(other),
            })
            .map_err(shim_error)?;
        if !wait_exited(entry, Duration::from_secs(10)).await {
            // The waiter may have lost its connection: ask directly.
            let state = client.state(&record.id).await.map_err(shim_error)?;
            if let (TaskStatus::Stopped, Some(exit)) = (state.status, state.exit) {
                record_exit(&self.recorder(), entry, &exit);
            } else {
                return Err(ContainerError::Shim(format!(
                    "container {} did not exit after SIGKILL",
                    record.id
                )));
            }
        }
        Ok(())
    }

    /// Ends the container's task and shim before the container is removed:
    /// kills it if it runs, deletes the task, shuts the shim down.
    pub(super) async fn end_task(&self, entry: &Entry) -> Result<(), ContainerError> {
        let record = entry.record();
        if record.shim_address.is_none() {
            return Ok(());
        }
        self.stop_locked(entry, nix::libc::SIGKILL as u32, Duration::ZERO)
            .await?;
        match self.client(&record).await {
            Ok(client) => {
                let _ = client.delete(&record.id).await;
                let _ = client.shutdown(&record.id).await;
            }
            Err(e) => tracing::debug!(container = %record.id, error = %e, "shim already gone"),
        }
        Ok(())
    }

    pub(super) async fn client(
        &self,
        record: &ContainerRecord,
    ) -> Result<ShimClient, ContainerError> {
        let address = record
            .shim_address
            .as_deref()
            .ok_or_else(|| ContainerError::Shim(format!("container {} has no shim", record.id)))?;
        shim_client::connect(address).await.map_err(shim_error)
    }

    /// A shim published the exit of container `id`'s init (an events
    /// fast path; the waiter records the same exit, whichever comes first).
    pub fn task_exited(&self, id: &str, exit: &TaskExit) {
        // Only a running container: one still starting is recorded by its
        // waiter, after StartContainer marked it running.
        if let Ok(entry) = self.find(id)
            && entry.record().id == id
            && entry.record().state == ContainerState::Running
        {
            record_exit(&self.recorder(), &entry, exit);
        }
    }

    /// After a berthd restart: reconnects to the shim of every running
    /// container and waits for its exit again; an exit that happened while
    /// berthd was down is recorded from the shim (or its exit file).
    pub async fn recover(&self) {
        let entries: Vec<Arc<Entry>> = self.entries().into_iter().collect();
        for entry in entries {
            let record = entry.record();
            if record.state != ContainerState::Running {
                continue;
            }
            match self.client(&record).await {
                Ok(client) => match client.state(&record.id).await {
                    Ok(state) if state.status == TaskStatus::Stopped => {
                        if let Some(exit) = state.exit {
                            record_exit(&self.recorder(), &entry, &exit);
                        }
                    }
                    Ok(_) => {
                        spawn_waiter(self.recorder(), entry.clone(), client, record.id.clone())
                    }
                    Err(e) => {
                        tracing::warn!(container = %record.id, error = %e, "shim does not know the task")
                    }
                },
                Err(_) => clean_up_dead_shim(&self.recorder(), &entry).await,
            }
        }
    }
}

/// The container's shim is gone: `berth-shim delete` kills what is left of
/// the task, has the runtime forget it and removes the shim's socket; the
/// exit is the one the shim recorded, else the kill it just did.
async fn clean_up_dead_shim(rec: &Recorder, entry: &Entry) {
    let record = entry.record();
    let dir = shim_dir(&record);
    let recorded = shim_client::read_exit_file(&dir).ok().flatten();
    let deleted =
        shim_client::delete_dead(&shim_client::binary(), SHIM_NAMESPACE, &record.id, &dir).await;
    let (exit, message) = match (recorded, deleted) {
        (Some(exit), _) => (exit, None),
        (None, Ok(deleted)) => {
            tracing::warn!(container = %record.id, "shim died without recording an exit; container killed and marked exited");
            (
                deleted.exit,
                Some("its shim died without recording an exit; the container was killed"),
            )
        }
        (None, Err(e)) => {
            tracing::warn!(container = %record.id, error = %e, "shim gone and could not be cleaned up; container marked exited");
            let exit = TaskExit {
                exit_status: 255,
                exited_at: SystemTime::now(),
                oom_killed: false,
            };
            (
                exit,
                Some("its shim died without recording an exit and could not be cleaned up"),
            )
        }
    };
    if let Some(message) = message {
        // Saved with the exit below (unless it was recorded meanwhile).
        entry.update(|record| {
            let running = record.state != ContainerState::Exited;
            if running {
                record.message = message.into();
            }
            running
        });
    }
    record_exit(rec, entry, &exit);
}

/// Polls until the container is recorded as exited; `false` on timeout.
async fn wait_exited(entry: &Entry, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if entry.record().state == ContainerState::Exited {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What an ExecSync returns.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Everything the command wrote on stdout (cut at [`MAX_EXEC_OUTPUT`]).
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr (cut likewise).
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

/// The most output of one stream ExecSync returns: the reply must stay
/// under the 16 MiB message limit.
pub const MAX_EXEC_OUTPUT: usize = 7 * 1024 * 1024;

impl Containers {
    /// ExecSync: runs `cmd` in the running container through its shim and
    /// returns its output and exit code; past `timeout` (if any) it is
    /// killed and the call fails with [`ContainerError::Timeout`].
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::InvalidArgument {
                field: "cmd".into(),
                reason: "is empty".into(),
            });
        }
        let record = self.running(id)?;
        let process = exec_process(&record, cmd, false)?;
        let exec_id = super::containers::new_exec_id()?;
        let out = record.bundle.join(format!("exec-{exec_id}.out"));
        let err = record.bundle.join(format!("exec-{exec_id}.err"));
        let client = self.client(&record).await?;
        let result = async {
            client
                .exec(&record.id, &exec_id, process, &out, &err)
                .await
                .map_err(shim_error)?;
            client
                .start_exec(&record.id, &exec_id)
                .await
                .map_err(shim_error)?;
            let waited = match timeout {
                Some(t) => tokio::time::timeout(t, client.wait_exec(&record.id, &exec_id)).await,
                None => Ok(client.wait_exec(&record.id, &exec_id).await),
            };
            match waited {
                Ok(exit) => exit.map_err(shim_error),
                Err(_) => {
                    let _ = client
                        .kill_exec(&record.id, &exec_id, nix::libc::SIGKILL as u32)
                        .await;
                    let _ = client.wait_exec(&record.id, &exec_id).await;
                    Err(ContainerError::Timeout(timeout.unwrap_or_default()))
                }
            }
        }
        .await;
        let _ = client.delete_exec(&record.id, &exec_id).await;
        let read = |path: &Path| {
            let mut bytes = std::fs::read(path).unwrap_or_default();
            bytes.truncate(MAX_EXEC_OUTPUT);
            let _ = std::fs::remove_file(path);
            bytes
        };
        let (stdout, stderr) = (read(&out), read(&err));
        let exit = result?;
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: i32::try_from(exit.exit_status).unwrap_or(i32::MAX),
        })
    }
}

/// The container's own process spec (user, env, cwd, capabilities, ...)
/// with `cmd` as its arguments, with or without a terminal.
pub(super) fn exec_process(
    record: &ContainerRecord,
    cmd: &[String],
    terminal: bool,
) -> Result<Vec<u8>, ContainerError> {
    let path = record.bundle.join("config.json");
    let io = |source: std::io::Error| ContainerError::Io {
        op: "read",
        path: path.clone(),
        source,
    };
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).map_err(io)?)
        .map_err(|e| io(std::io::Error::other(e)))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| io(std::io::Error::other("config.json has no process")))?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(terminal);
    serde_json::to_vec(&process).map_err(|e| io(std::io::Error::other(e)))
}

impl Containers {
    /// ReopenContainerLog: the shim reopens the log file (after the
    /// kubelet renamed it away); returns once the new file exists.
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.running(id)?;
        if record.log_path.is_empty() {
            return Ok(());
        }
        let client = self.client(&record).await?;
        let info = client.connect(&record.id).await.map_err(shim_error)?;
        let pid = i32::try_from(info.shim_pid)
            .map_err(|_| ContainerError::Shim(format!("shim pid {}", info.shim_pid)))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| ContainerError::Shim(format!("signal shim {pid}: {e}")))?;
        let log = PathBuf::from(&record.log_path);
        for _ in 0..200 {
            if log.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(ContainerError::Shim(format!(
            "log {} was not reopened",
            log.display()
        )))
    }
}
