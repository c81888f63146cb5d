//! The one task a shim supervises: creating it (runc bundle or pause
//! process), starting, signalling and deleting it, its stdio (terminal,
//! stdin, attach socket: [`super::stdio`]), and recording its exit before
//! anyone hears of it. Exec processes are in [`exec`]. The ttrpc service
//! ([`super::service`]) only translates to and from these calls.

mod checkpoint;
mod exec;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::console;
use super::events::{Event, Publisher};
use super::monitor::{Cursor, Monitor};
use super::oom::OomCounter;
use super::record::{Runner, TASK_FILE, TaskRecord, start_time};
use super::stdio::{InitIo, InitLogs, InitSetup};
use super::{ATTACH_ADDRESS_FILE, ATTACH_SOCKET, named_socket_path};
use crate::exit::ExitRecord;
use crate::options::TaskOptions;
use crate::pause::{Command as PauseCommand, PauseConfig};
use exec::ExecProcess;

/// The pid file runc writes for the container's init.
const INIT_PID_FILE: &str = "init.pid";
/// runc's own log (JSON lines), read when it fails.
const RUNC_LOG_FILE: &str = "runc.log";
/// Where the pause process's stderr goes unless the request names a file.
const PAUSE_LOG_FILE: &str = "pause.log";
/// The init's console socket (a terminal's master comes through it).
pub(crate) const CONSOLE_SOCKET: &str = "console.sock";
/// How long the pause process may take to pin its namespaces.
const PAUSE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a task operation failed; each variant is one ttrpc code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    /// No such task (or it has no such process any more).
    #[error("{0}")]
    NotFound(String),
    /// The shim already has a task.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The task is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The runtime, the pause process or the system failed.
    #[error("{0}")]
    Internal(String),
}

/// The task's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Created, not started.
    Created,
    /// Started and not exited.
    Running,
    /// Its init process exited.
    Stopped,
}

/// What `Create` asks for.
pub(crate) struct CreateSpec {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// What the request named as stdin; non-empty: the init has a stdin,
    /// fed by attached clients.
    pub(crate) stdin: String,
    /// Whether the init has a terminal.
    pub(crate) terminal: bool,
    pub(crate) options: TaskOptions,
    /// CRIU images to restore the container from (`runc restore` instead
    /// of `runc create`; see [`checkpoint`]).
    pub(crate) checkpoint: Option<PathBuf>,
}

impl CreateSpec {
    /// The `/tasks/create` event for this task with init `pid`.
    fn event(&self, pid: i32) -> Event {
        Event::Create {
            id: self.id.clone(),
            bundle: self.bundle.to_string_lossy().into_owned(),
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            terminal: self.terminal,
            pid: event_pid(pid),
        }
    }
}

/// A pid as events carry it.
fn event_pid(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

/// A snapshot of the task for `State`.
#[derive(Debug, Clone)]
pub(crate) struct TaskView {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) pid: i32,
    pub(crate) status: Status,
    pub(crate) exit: Option<ExitRecord>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The task as the supervisor holds it.
struct Task {
    view: TaskView,
    runner: Runner,
    /// The OOM kill count of the container's memory cgroup (runc tasks
    /// whose cgroup has one).
    oom: Option<OomCounter>,
    /// The init's stdio while it runs (runc tasks).
    io: Option<InitIo>,
    /// Exec processes by exec id.
    execs: std::collections::HashMap<String, ExecProcess>,
    /// Restored from a checkpoint: its init runs from `Create` on, and
    /// `Start` has no `runc start` to do.
    restored: bool,
}

/// Supervises the shim's one task.
pub(crate) struct Supervisor {
    state_dir: PathBuf,
    monitor: Arc<Monitor>,
    events: Publisher,
    task: Mutex<Option<Task>>,
    changed: Condvar,
}

type Guard<'a> = MutexGuard<'a, Option<Task>>;

impl Supervisor {
    /// A supervisor with no task yet; task events go to `events`.
    pub(crate) fn new(state_dir: PathBuf, monitor: Arc<Monitor>, events: Publisher) -> Self {
        Self {
            state_dir,
            monitor,
            events,
            task: Mutex::new(None),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> Guard<'_> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the next change of the task (an exit, a delete).
    fn wait_changed<'a>(&self, guard: Guard<'a>) -> Guard<'a> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The task named `id`, from a held lock.
    fn get<'g>(guard: &'g mut Guard<'_>, id: &str) -> Result<&'g mut Task, TaskError> {
        guard
            .as_mut()
            .filter(|t| t.view.id == id)
            .ok_or_else(|| TaskError::NotFound(format!("task {id:?} not found")))
    }

    /// The init pid, if a task exists.
    pub(crate) fn task_pid(&self) -> Option<i32> {
        self.lock().as_ref().map(|t| t.view.pid)
    }

    /// Whether no task exists.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_none()
    }

    /// Creates the task; returns its init pid. The pause process runs from
    /// here on (it has nothing to wait for); a runc container waits for
    /// [`Self::start`].
    pub(crate) fn create(self: &Arc<Self>, spec: CreateSpec) -> Result<i32, TaskError> {
        let mut guard = self.lock();
        if let Some(task) = guard.as_ref() {
            return Err(TaskError::AlreadyExists(format!(
                "this shim already has task {:?}",
                task.view.id
            )));
        }
        if spec.id.is_empty() {
            return Err(TaskError::InvalidArgument("empty task id".into()));
        }
        // An exit file left by an earlier task in this state dir would be
        // taken for this task's.
        let exit_file = ExitRecord::path(&self.state_dir);
        match std::fs::remove_file(&exit_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TaskError::Internal(format!(
                    "cannot remove the stale {}: {e}",
                    exit_file.display()
                )));
            }
            _ => {}
        }
        // Taken before anything is spawned: the init may exit at once.
        let cursor = self.monitor.subscribe();
        let (pid, runner, io) = match &spec.options {
            TaskOptions::Runc { binary, root } => {
                let runner = Runner::Runc {
                    binary: binary.clone().unwrap_or_else(|| "runc".into()),
                    root: root.clone(),
                };
                let (pid, io) = self.runc_create(&spec, &runner)?;
                (pid, runner, Some(io))
            }
            TaskOptions::Pause { .. } if spec.terminal || !spec.stdin.is_empty() => {
                return Err(TaskError::InvalidArgument(
                    "the pause process has neither a terminal nor a stdin".into(),
                ));
            }
            TaskOptions::Pause { binary, args } => {
                let (pid, runner) = self.pause_create(&spec, binary, args, &cursor)?;
                (pid, runner, None)
            }
        };
        // The runtime has put the init in its cgroup by now.
        let oom = match runner {
            Runner::Runc { .. } => OomCounter::of_process(pid),
            Runner::Pause { .. } => None,
        };
        let record = TaskRecord {
            id: spec.id.clone(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            runner: runner.clone(),
        };
        record
            .write(&self.state_dir)
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        let watcher = self.clone();
        std::thread::Builder::new()
            .name("init-exit".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let exit = cursor.wait(pid);
                watcher.record_exit(exit);
            })
            .map_err(|e| TaskError::Internal(format!("cannot start the exit watcher: {e}")))?;
        self.events.publish(spec.event(pid));
        *guard = Some(Task {
            view: TaskView {
                id: spec.id,
                bundle: spec.bundle,
                pid,
                status: Status::Created,
                exit: None,
                stdout: spec.stdout,
                stderr: spec.stderr,
            },
            runner,
            oom,
            io,
            execs: std::collections::HashMap::new(),
            restored: spec.checkpoint.is_some(),
        });
        Ok(pid)
    }

    /// Drains the init's output into its log and to attached clients, then
    /// writes the exit file (with whether the OOM killer struck the
    /// container's cgroup, read before the runtime may delete the cgroup),
    /// then makes the exit visible to `State` and `Wait`, then publishes it:
    /// an exit is never reported before it is on disk.
    fn record_exit(&self, mut exit: ExitRecord) {
        let (id, oom, io) = {
            let mut guard = self.lock();
            match guard.as_mut().filter(|t| t.view.pid == exit.pid) {
                Some(task) => (task.view.id.clone(), task.oom.clone(), task.io.take()),
                None => return,
            }
        };
        if let Some(io) = io {
            io.finish();
        }
        exit.oom_killed = oom.is_some_and(|counter| counter.grew());
        if let Err(e) = exit.write(&self.state_dir) {
            eprintln!(
                "berth-shim: cannot record the exit of pid {}: {e}",
                exit.pid
            );
        }
        let mut guard = self.lock();
        if let Some(task) = guard.as_mut().filter(|t| t.view.pid == exit.pid) {
            task.view.exit = Some(exit);
            task.view.status = Status::Stopped;
        }
        drop(guard);
        self.changed.notify_all();
        if exit.oom_killed {
            self.events.publish(Event::Oom { id: id.clone() });
        }
        self.events.publish(Event::Exit {
            process: id.clone(),
            id,
            pid: event_pid(exit.pid),
            exit_status: exit.exit_status,
            exited_at: exit.exited_at,
        });
    }

    /// `runc create`, with the init's stdio through the shim; returns its
    /// pid and stdio.
    fn runc_create(&self, spec: &CreateSpec, runner: &Runner) -> Result<(i32, InitIo), TaskError> {
        let pid_file = self.state_dir.join(INIT_PID_FILE);
        let _ = std::fs::remove_file(&pid_file);
        let logs = InitLogs::open(&spec.stdout, &spec.stderr)?;
        let console = named_socket_path(&self.state_dir, CONSOLE_SOCKET);
        let mut setup = InitSetup::new(
            logs,
            spec.terminal.then_some(console.as_path()),
            !spec.stdin.is_empty(),
        )?;
        let mut args = match &spec.checkpoint {
            None => vec![
                "create".into(),
                "--bundle".into(),
                spec.bundle.clone().into(),
            ],
            Some(images) => checkpoint::restore_args(&spec.bundle, images),
        };
        if let Some(console) = setup.console_socket() {
            args.extend(["--console-socket".into(), console.into()]);
        }
        args.extend([
            "--pid-file".into(),
            pid_file.clone().into(),
            spec.id.clone().into(),
        ]);
        let (stdin, stdout, stderr) = setup.runtime_stdio();
        self.runc_io(runner, &args, RuncStdin::Stdio(stdin), stdout, stderr)
            .map_err(|failure| match &spec.checkpoint {
                Some(images) => checkpoint::restore_error(failure, images),
                None => failure.into_task_error(),
            })?;
        let created = read_pid(&pid_file)
            .ok_or_else(|| {
                TaskError::Internal(format!("runc create left no pid in {}", pid_file.display()))
            })
            .and_then(|pid| {
                let socket = named_socket_path(&self.state_dir, ATTACH_SOCKET);
                let io = setup.run(&socket, &self.state_dir.join(ATTACH_ADDRESS_FILE))?;
                Ok((pid, io))
            });
        if created.is_err() {
            let _ = self.runc(
                runner,
                &["delete".into(), "--force".into(), spec.id.clone().into()],
                Stdio::null(),
                Stdio::null(),
            );
        }
        created
    }

    /// Runs the OCI runtime to completion (reaped by the monitor, never by
    /// `std::process`).
    fn runc(
        &self,
        runner: &Runner,
        args: &[OsString],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<(), TaskError> {
        self.runc_io(runner, args, RuncStdin::Null, stdout, stderr)
            .map_err(RuncFailure::into_task_error)
    }

    /// Runs the OCI runtime to completion with `stdin`.
    fn runc_io(
        &self,
        runner: &Runner,
        args: &[OsString],
        stdin: RuncStdin<'_>,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<(), RuncFailure> {
        let Runner::Runc { binary, root } = runner else {
            return Err(RuncFailure::Spawn("not a runc task".into()));
        };
        let log = self.state_dir.join(RUNC_LOG_FILE);
        let mut cmd = Command::new(binary);
        if let Some(root) = root {
            cmd.arg("--root").arg(root);
        }
        let (stdin, input) = match stdin {
            RuncStdin::Data(data) => {
                let (reader, writer) = std::io::pipe()
                    .map_err(|e| RuncFailure::Spawn(format!("cannot make a pipe: {e}")))?;
                (Stdio::from(reader), Some((writer, data)))
            }
            RuncStdin::Stdio(stdin) => (stdin, None),
            RuncStdin::Null => (Stdio::null(), None),
        };
        cmd.arg("--log")
            .arg(&log)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        let what = format!(
            "{} {}",
            binary.display(),
            args.first()
                .map(|a| a.to_string_lossy())
                .unwrap_or_default()
        );
        let cursor = self.monitor.subscribe();
        let child = cmd
            .spawn()
            .map_err(|e| RuncFailure::Spawn(format!("cannot run {what}: {e}")))?;
        drop(cmd);
        if let Some((mut writer, input)) = input {
            // The runtime reads all of its input before it acts; one that
            // failed early closed the pipe, and its status says why.
            let _ = std::io::Write::write_all(&mut writer, input);
        }
        let exit = wait_child(&cursor, &child);
        if exit.exit_status == 0 {
            return Ok(());
        }
        let message = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("\"error\""))
            .map(runtime_message)
            .unwrap_or_default();
        Err(RuncFailure::Failed {
            what,
            status: exit.exit_status,
            message,
        })
    }

    /// Updates the container's resources: `resources` is the JSON of an
    /// OCI `LinuxResources`, handed to `runc update --resources -`.
    pub(crate) fn update(&self, id: &str, resources: &[u8]) -> Result<(), TaskError> {
        if resources.iter().all(u8::is_ascii_whitespace) {
            return Err(TaskError::InvalidArgument(
                "update: the resources are empty".into(),
            ));
        }
        if !resources.trim_ascii_start().starts_with(b"{") {
            return Err(TaskError::InvalidArgument(
                "update: the resources are not a JSON object (an OCI LinuxResources)".into(),
            ));
        }
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if !matches!(task.runner, Runner::Runc { .. }) {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} is the pause process, which has no resources of its own"
            )));
        }
        if task.view.exit.is_some() {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} has exited"
            )));
        }
        let args = ["update".into(), "--resources".into(), "-".into(), id.into()];
        self.runc_io(
            &task.runner,
            &args,
            RuncStdin::Data(resources),
            Stdio::null(),
            Stdio::null(),
        )
        .map_err(|failure| match failure {
            // runc refuses input it cannot decode before touching anything.
            RuncFailure::Failed { message, .. }
                if message.contains("json:")
                    || message.contains("invalid character")
                    || message.contains("unmarshal")
                    || message.contains("decod") =>
            {
                TaskError::InvalidArgument(format!("update: {message}"))
            }
            other => other.into_task_error(),
        })
    }

    fn pause_create(
        &self,
        spec: &CreateSpec,
        binary: &Option<PathBuf>,
        args: &[String],
        cursor: &Cursor,
    ) -> Result<(i32, Runner), TaskError> {
        let config = match PauseConfig::from_args(args.iter().map(OsString::from)) {
            Ok(PauseCommand::Run(config)) => config,
            Ok(PauseCommand::Help) => {
                return Err(TaskError::InvalidArgument(
                    "pause options ask for --help".into(),
                ));
            }
            Err(e) => return Err(TaskError::InvalidArgument(format!("pause options: {e}"))),
        };
        let binary = binary.clone().unwrap_or_else(pause_binary);
        let log = if spec.stderr.is_empty() {
            self.state_dir.join(PAUSE_LOG_FILE)
        } else {
            PathBuf::from(&spec.stderr)
        };
        let stderr = open_output(&log.to_string_lossy())?;
        let mut child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| TaskError::Internal(format!("cannot run {}: {e}", binary.display())))?;
        // It prints its pid once its namespaces are pinned; EOF means it
        // failed and said why on stderr.
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            if readable_within(&stdout, PAUSE_READY_TIMEOUT) {
                let _ = BufReader::new(stdout).read_line(&mut line);
            } else {
                let _ = child.kill();
                let _ = wait_child(cursor, &child);
                return Err(TaskError::Internal(format!(
                    "{} was not ready within {PAUSE_READY_TIMEOUT:?}",
                    binary.display()
                )));
            }
        }
        if line.trim().is_empty() {
            let exit = wait_child(cursor, &child);
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(TaskError::Internal(format!(
                "{} exited with status {} before it was ready: {}",
                binary.display(),
                exit.exit_status,
                why.trim()
            )));
        }
        let pid = child_pid(&child)?;
        Ok((
            pid,
            Runner::Pause {
                state_dir: config.state_dir,
            },
        ))
    }

    /// Starts a created task; returns its pid.
    pub(crate) fn start(&self, id: &str) -> Result<i32, TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if task.view.status != Status::Created {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} is {:?}, not created",
                task.view.status
            )));
        }
        if matches!(task.runner, Runner::Runc { .. }) && !task.restored {
            let args = ["start".into(), id.into()];
            self.runc(&task.runner, &args, Stdio::null(), Stdio::null())?;
        }
        if task.view.exit.is_none() {
            task.view.status = Status::Running;
        }
        self.events.publish(Event::Start {
            id: id.to_owned(),
            pid: event_pid(task.view.pid),
        });
        Ok(task.view.pid)
    }

    /// The task as it is now.
    pub(crate) fn state(&self, id: &str) -> Result<TaskView, TaskError> {
        let mut guard = self.lock();
        Ok(Self::get(&mut guard, id)?.view.clone())
    }

    /// Sends `signal` to the task's init (with `all`, to all its
    /// processes).
    pub(crate) fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if task.view.exit.is_some() {
            return Err(TaskError::NotFound(format!(
                "task {id:?}: process already finished"
            )));
        }
        let signal_arg = |s: u32| -> Result<Signal, TaskError> {
            i32::try_from(s)
                .ok()
                .and_then(|s| Signal::try_from(s).ok())
                .ok_or_else(|| TaskError::InvalidArgument(format!("invalid signal {s}")))
        };
        let signal = signal_arg(signal)?;
        match &task.runner {
            Runner::Runc { .. } => {
                let mut args: Vec<OsString> = vec!["kill".into()];
                if all {
                    args.push("--all".into());
                }
                args.extend([id.into(), (signal as i32).to_string().into()]);
                self.runc(&task.runner, &args, Stdio::null(), Stdio::null())
            }
            Runner::Pause { .. } => {
                let mut pids = vec![task.view.pid];
                if all {
                    pids = descendants(task.view.pid);
                }
                for pid in pids {
                    kill(Pid::from_raw(pid), signal).map_err(|e| {
                        TaskError::Internal(format!("cannot signal pid {pid}: {e}"))
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Blocks until the task's init has exited (and its exit is on disk).
    pub(crate) fn wait(&self, id: &str) -> Result<ExitRecord, TaskError> {
        let mut guard = self.lock();
        loop {
            if let Some(exit) = Self::get(&mut guard, id)?.view.exit {
                return Ok(exit);
            }
            guard = self.wait_changed(guard);
        }
    }

    /// Deletes a task that is stopped, or created and never started (it is
    /// killed first); releases the runtime's state or the pause process's
    /// namespace pins. Returns the init's exit.
    pub(crate) fn delete(&self, id: &str) -> Result<ExitRecord, TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if task.view.exit.is_none() {
            if task.view.status == Status::Running {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id:?} is running; kill it first"
                )));
            }
            let _ = kill(Pid::from_raw(task.view.pid), Signal::SIGKILL);
            while Self::get(&mut guard, id)?.view.exit.is_none() {
                guard = self.wait_changed(guard);
            }
        }
        let task = Self::get(&mut guard, id)?;
        match &task.runner {
            Runner::Runc { .. } => {
                let args = ["delete".into(), "--force".into(), id.into()];
                self.runc(&task.runner, &args, Stdio::null(), Stdio::null())?;
            }
            Runner::Pause { state_dir } => crate::pause::unpin(state_dir)
                .map_err(|e| TaskError::Internal(format!("cannot release the pins: {e}")))?,
        }
        let exit = task.view.exit.ok_or_else(|| {
            TaskError::Internal(format!("task {id:?} has no recorded exit after it exited"))
        })?;
        let _ = std::fs::remove_file(self.state_dir.join(TASK_FILE));
        *guard = None;
        drop(guard);
        self.changed.notify_all();
        self.events.publish(Event::Delete {
            id: id.to_owned(),
            pid: event_pid(exit.pid),
            exit_status: exit.exit_status,
            exited_at: exit.exited_at,
        });
        Ok(exit)
    }

    /// Sets the window size of the init's terminal.
    pub(crate) fn resize(&self, id: &str, width: u32, height: u32) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        let Some(master) = task.io.as_ref().and_then(|io| io.console.as_ref()) else {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} has no running terminal"
            )));
        };
        console::resize(master, width, height).map_err(resize_error)
    }

    /// Closes the init's stdin (CRI `stdin_once`: after the first attach).
    pub(crate) fn close_stdin(&self, id: &str) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        match &task.io {
            Some(io) if io.stdin => io.close_stdin(),
            Some(_) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id:?} has no stdin"
                )));
            }
            // Exited: its stdin is closed already.
            None => {}
        }
        Ok(())
    }

    /// The task's processes: its init and the init's descendants.
    pub(crate) fn pids(&self, id: &str) -> Result<Vec<i32>, TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if task.view.exit.is_some() {
            return Ok(Vec::new());
        }
        Ok(descendants(task.view.pid))
    }
}

/// What the OCI runtime reads on its stdin.
enum RuncStdin<'a> {
    /// Nothing (`/dev/null`).
    Null,
    /// These bytes, then end-of-file.
    Data(&'a [u8]),
    /// This (handed to the process it starts, without a terminal).
    Stdio(Stdio),
}

/// The pid in a pid file the runtime wrote.
fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A failed resize as a task error.
fn resize_error(e: std::io::Error) -> TaskError {
    match e.kind() {
        std::io::ErrorKind::InvalidInput => TaskError::InvalidArgument(format!("resize: {e}")),
        _ => TaskError::Internal(format!("resize: {e}")),
    }
}

/// Why a run of the OCI runtime failed.
#[derive(Debug)]
enum RuncFailure {
    /// It could not be run.
    Spawn(String),
    /// It ran and failed.
    Failed {
        /// `<binary> <command>`.
        what: String,
        /// Its exit status.
        status: u32,
        /// Its last error message.
        message: String,
    },
}

impl RuncFailure {
    /// The failure as a task error: a runtime that says the container does
    /// not exist is `NotFound`, anything else `Internal`.
    fn into_task_error(self) -> TaskError {
        match self {
            Self::Spawn(message) => TaskError::Internal(message),
            Self::Failed {
                what,
                status,
                message,
            } => {
                let text = format!("{what} failed with status {status}: {message}");
                if message.contains("does not exist") || message.contains("not found") {
                    TaskError::NotFound(text)
                } else {
                    TaskError::Internal(text)
                }
            }
        }
    }
}

/// The message of one JSON line of the runtime's log
/// (`{"level":"error","msg":"...","time":"..."}`), or the line itself.
fn runtime_message(line: &str) -> String {
    let Some(start) = line.find("\"msg\":\"").map(|i| i + 7) else {
        return line.to_owned();
    };
    let mut message = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return message,
            '\\' => match chars.next() {
                Some('n') => message.push('\n'),
                Some('t') => message.push('\t'),
                Some(other) => message.push(other),
                None => break,
            },
            c => message.push(c),
        }
    }
    line.to_owned()
}

/// Waits (through the monitor) for a child spawned after `cursor` was taken.
fn wait_child(cursor: &Cursor, child: &std::process::Child) -> ExitRecord {
    match child_pid(child) {
        Ok(pid) => cursor.wait(pid),
        Err(_) => ExitRecord::exited(0, 255, std::time::SystemTime::now()),
    }
}

fn child_pid(child: &std::process::Child) -> Result<i32, TaskError> {
    i32::try_from(child.id()).map_err(|_| TaskError::Internal("child pid out of range".into()))
}

/// Whether `fd` has something to read (or is at EOF) within `timeout`.
fn readable_within(fd: &impl std::os::fd::AsFd, timeout: Duration) -> bool {
    let timeout = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Opens a task output: the named file (created, appended to), or
/// `/dev/null` when no name is given.
fn open_output(path: &str) -> Result<Stdio, TaskError> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .map_err(|e| TaskError::InvalidArgument(format!("cannot open {path}: {e}")))
}

/// `berth-pause` beside the shim's own executable, else from `PATH`.
fn pause_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("berth-pause")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "berth-pause".into())
}

/// `pid` and all its descendants, parents first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut pids = vec![pid];
    let mut i = 0;
    while let Some(&p) = pids.get(i) {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    pids
}
