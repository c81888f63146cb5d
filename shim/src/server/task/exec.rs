//! Exec processes: extra processes run in the task's container (`runc exec
//! --detach`), with their stdio on FIFOs or files the client named
//! ([`ExecPaths`]), a terminal when asked for, and exits recorded by the
//! shim's reaper. An exec's exit is reported only after its output is
//! drained and its FIFOs closed ([`ExecIo::finish`]).

use std::ffi::OsString;
use std::sync::Arc;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::super::console;
use super::super::events::Event;
use super::super::record::Runner;
use super::super::stdio::{ExecIo, ExecPaths, ExecSetup};
use super::{Status, Supervisor, Task, TaskError, event_pid, read_pid};
use crate::exit::ExitRecord;

/// An extra process run in the task's container.
pub(super) struct ExecProcess {
    /// The OCI process spec, JSON.
    spec: Vec<u8>,
    paths: ExecPaths,
    /// Set when `Start` began (a second `Start` is refused).
    started: bool,
    pid: Option<i32>,
    exit: Option<ExitRecord>,
    /// Its stdio while it runs.
    io: Option<ExecIo>,
}

impl Task {
    /// The exec process `exec_id`.
    fn exec(&mut self, exec_id: &str) -> Result<&mut ExecProcess, TaskError> {
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| TaskError::NotFound(format!("exec {exec_id:?} not found")))
    }
}

impl Supervisor {
    /// Registers an exec process in a running runc task.
    pub(crate) fn exec_add(
        &self,
        id: &str,
        exec_id: &str,
        spec: Vec<u8>,
        paths: ExecPaths,
    ) -> Result<(), TaskError> {
        if exec_id.is_empty()
            || exec_id.len() > 64
            || !exec_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TaskError::InvalidArgument(format!(
                "exec id {exec_id:?}: 1-64 letters, digits, '-' or '_'"
            )));
        }
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        if !matches!(task.runner, Runner::Runc { .. }) || task.view.status != Status::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id:?} is not a running container"
            )));
        }
        if task.execs.contains_key(exec_id) {
            return Err(TaskError::AlreadyExists(format!("exec {exec_id:?} exists")));
        }
        task.execs.insert(
            exec_id.to_owned(),
            ExecProcess {
                spec,
                paths,
                started: false,
                pid: None,
                exit: None,
                io: None,
            },
        );
        self.events.publish(Event::ExecAdded {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        Ok(())
    }

    /// Starts a registered exec process (`runc exec --detach`, with
    /// `--tty --console-socket` for a terminal); a thread records its exit
    /// once its output is drained. Returns its pid.
    pub(crate) fn exec_start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<i32, TaskError> {
        let (runner, spec, paths) = {
            let mut guard = self.lock();
            let task = Self::get(&mut guard, id)?;
            let runner = task.runner.clone();
            let exec = task.exec(exec_id)?;
            if exec.started {
                return Err(TaskError::FailedPrecondition(format!(
                    "exec {exec_id:?} already started"
                )));
            }
            exec.started = true;
            (runner, exec.spec.clone(), exec.paths.clone())
        };
        let started = self.run_exec(&runner, id, exec_id, &spec, &paths);
        let mut guard = self.lock();
        let exec = Self::get(&mut guard, id).and_then(|t| t.exec(exec_id));
        let (pid, cursor) = match (started, exec) {
            (Ok((pid, io, cursor)), Ok(exec)) => {
                exec.pid = Some(pid);
                exec.io = Some(io);
                (pid, cursor)
            }
            (Err(e), Ok(exec)) => {
                // It may be started again once the cause is fixed.
                exec.started = false;
                return Err(e);
            }
            (Ok((pid, io, _)), Err(e)) => {
                // Deleted meanwhile: the process must not outlive its record.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                drop(guard);
                io.finish();
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
        };
        drop(guard);
        // Published before the watcher exists, so it precedes the exit.
        self.events.publish(Event::ExecStarted {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            pid: event_pid(pid),
        });
        let supervisor = Arc::clone(self);
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        std::thread::Builder::new()
            .name("exec-wait".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let exit = cursor.wait(pid);
                supervisor.record_exec_exit(&id, &exec_id, exit);
            })
            .map_err(|e| TaskError::Internal(format!("cannot start the exec watcher: {e}")))?;
        Ok(pid)
    }

    /// Runs `runc exec` for a process; returns its pid, its running stdio
    /// and the reaper cursor that will see its exit.
    fn run_exec(
        &self,
        runner: &Runner,
        id: &str,
        exec_id: &str,
        spec: &[u8],
        paths: &ExecPaths,
    ) -> Result<(i32, ExecIo, super::Cursor), TaskError> {
        let console_path =
            super::super::named_socket_path(&self.state_dir, &format!("c-{exec_id}.sock"));
        let mut setup = ExecSetup::open(paths, &console_path)?;
        let spec_file = self.state_dir.join(format!("exec-{exec_id}.json"));
        let pid_file = self.state_dir.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec_file, spec).map_err(|e| {
            TaskError::Internal(format!("cannot write {}: {e}", spec_file.display()))
        })?;
        let _ = std::fs::remove_file(&pid_file);
        let mut args: Vec<OsString> = vec!["exec".into(), "--detach".into()];
        if let Some(console) = setup.console_socket() {
            args.extend(["--tty".into(), "--console-socket".into(), console.into()]);
        }
        args.extend([
            "--process".into(),
            spec_file.clone().into(),
            "--pid-file".into(),
            pid_file.clone().into(),
            id.into(),
        ]);
        // Subscribed before the process exists: its exit cannot be missed.
        let cursor = self.monitor.subscribe();
        let (stdin, stdout, stderr) = setup.runtime_stdio();
        let ran = self.runc_io(
            runner,
            &args,
            super::RuncStdin::Stdio(stdin),
            stdout,
            stderr,
        );
        let _ = std::fs::remove_file(&spec_file);
        ran.map_err(super::RuncFailure::into_task_error)?;
        let pid = read_pid(&pid_file).ok_or_else(|| {
            TaskError::Internal(format!("runc exec left no pid in {}", pid_file.display()))
        })?;
        let _ = std::fs::remove_file(&pid_file);
        match setup.run() {
            Ok(io) => Ok((pid, io, cursor)),
            Err(e) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(e)
            }
        }
    }

    /// Drains the exec's output, then records its exit and tells waiters
    /// and the daemon.
    fn record_exec_exit(&self, id: &str, exec_id: &str, exit: ExitRecord) {
        let io = {
            let mut guard = self.lock();
            Self::get(&mut guard, id)
                .and_then(|t| t.exec(exec_id))
                .ok()
                .and_then(|exec| exec.io.take())
        };
        if let Some(io) = io {
            io.finish();
        }
        let mut guard = self.lock();
        if let Ok(exec) = Self::get(&mut guard, id).and_then(|t| t.exec(exec_id)) {
            exec.exit = Some(exit);
        }
        drop(guard);
        self.changed.notify_all();
        self.events.publish(Event::Exit {
            id: id.to_owned(),
            process: exec_id.to_owned(),
            pid: event_pid(exit.pid),
            exit_status: exit.exit_status,
            exited_at: exit.exited_at,
        });
    }

    /// Blocks until the exec process has exited and its output is drained.
    pub(crate) fn exec_wait(&self, id: &str, exec_id: &str) -> Result<ExitRecord, TaskError> {
        let mut guard = self.lock();
        loop {
            if let Some(exit) = Self::get(&mut guard, id)?.exec(exec_id)?.exit {
                return Ok(exit);
            }
            guard = self.wait_changed(guard);
        }
    }

    /// Signals the exec process.
    pub(crate) fn exec_kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let exec = Self::get(&mut guard, id)?.exec(exec_id)?;
        let (Some(pid), None) = (exec.pid, exec.exit) else {
            return Err(TaskError::NotFound(format!(
                "exec {exec_id:?} is not running"
            )));
        };
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| TaskError::InvalidArgument(format!("invalid signal {signal}")))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| TaskError::Internal(format!("cannot signal exec pid {pid}: {e}")))
    }

    /// Sets the window size of the exec's terminal.
    pub(crate) fn exec_resize(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let exec = Self::get(&mut guard, id)?.exec(exec_id)?;
        let Some(master) = exec.io.as_ref().and_then(|io| io.console.as_ref()) else {
            return Err(TaskError::FailedPrecondition(format!(
                "exec {exec_id:?} has no running terminal"
            )));
        };
        console::resize(master, width, height).map_err(super::resize_error)
    }

    /// Closes the exec's stdin.
    pub(crate) fn exec_close_stdin(&self, id: &str, exec_id: &str) -> Result<(), TaskError> {
        let mut guard = self.lock();
        let exec = Self::get(&mut guard, id)?.exec(exec_id)?;
        if let Some(io) = &exec.io {
            io.close_stdin();
        }
        Ok(())
    }

    /// Forgets an exec process that has exited (or never started).
    pub(crate) fn exec_delete(&self, id: &str, exec_id: &str) -> Result<ExitRecord, TaskError> {
        let mut guard = self.lock();
        let task = Self::get(&mut guard, id)?;
        let exec = task.exec(exec_id)?;
        if exec.started && exec.exit.is_none() {
            return Err(TaskError::FailedPrecondition(format!(
                "exec {exec_id:?} is running"
            )));
        }
        let exit = exec
            .exit
            .unwrap_or_else(|| ExitRecord::exited(0, 0, std::time::SystemTime::now()));
        task.execs.remove(exec_id);
        Ok(exit)
    }
}
