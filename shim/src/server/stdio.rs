//! The stdio the shim holds for its processes: what it hands the OCI
//! runtime for a process, and what it keeps to move the bytes (a
//! [`PumpHandle`]), to attach to the init ([`AttachServer`]), and to
//! resize a terminal.
//!
//! The init's output always passes through the shim (pipes, or the
//! terminal's master), to its log files and to attached clients; its stdin,
//! when it has one, is fed by attached clients. An exec process's stdio are
//! FIFOs (or files) the client named, containerd's convention: the shim
//! opens them and copies between them and the process's pipes or terminal,
//! so that it can close them when the process exits.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::attach::{AttachServer, Stream};
use super::console::{ConsoleSocket, eof_byte};
use super::cri_log::{LogFile, LogStream, open_log};
use super::pump::{PumpHandle, Route, Sink, set_nonblocking};
use super::task::TaskError;

/// How long the shim waits for the client to open the read end of an
/// output FIFO.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// A pipe whose shim end is non-blocking: `(shim's end, process's end)`.
fn pipe(shim_reads: bool) -> Result<(OwnedFd, OwnedFd), TaskError> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| TaskError::Internal(format!("cannot make a pipe: {e}")))?;
    let (ours, theirs) = if shim_reads {
        (read, write)
    } else {
        (write, read)
    };
    set_nonblocking(&ours).map_err(|e| TaskError::Internal(format!("pipe: {e}")))?;
    Ok((ours, theirs))
}

fn dup(fd: impl AsFd) -> Result<OwnedFd, TaskError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| TaskError::Internal(format!("cannot duplicate the terminal: {e}")))
}

/// The stdio of a process about to be run: what the runtime gets, and
/// (once the runtime has run) what the shim keeps.
pub(crate) struct Prepared {
    /// The runtime's stdin, stdout and stderr (passed to the process when
    /// it has no terminal).
    pub(crate) stdin: Stdio,
    /// See `stdin`.
    pub(crate) stdout: Stdio,
    /// See `stdin`.
    pub(crate) stderr: Stdio,
    /// The console socket, when the process has a terminal.
    pub(crate) console: Option<ConsoleSocket>,
    /// The shim's ends: stdout and stderr readers, stdin writer.
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    input: Option<OwnedFd>,
}

impl Prepared {
    /// Pipes for the streams the shim keeps (`out`, `err`, `input`), or a
    /// console socket at `console` for a terminal.
    fn new(terminal: Option<&Path>, out: bool, err: bool, input: bool) -> Result<Self, TaskError> {
        if let Some(path) = terminal {
            let console = ConsoleSocket::bind(path).map_err(|e| {
                TaskError::Internal(format!("console socket {}: {e}", path.display()))
            })?;
            return Ok(Self {
                stdin: Stdio::null(),
                stdout: Stdio::null(),
                stderr: Stdio::null(),
                console: Some(console),
                out: None,
                err: None,
                input: None,
            });
        }
        let mut prepared = Self {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            console: None,
            out: None,
            err: None,
            input: None,
        };
        if out {
            let (ours, theirs) = pipe(true)?;
            (prepared.out, prepared.stdout) = (Some(ours), theirs.into());
        }
        if err {
            let (ours, theirs) = pipe(true)?;
            (prepared.err, prepared.stderr) = (Some(ours), theirs.into());
        }
        if input {
            let (ours, theirs) = pipe(false)?;
            (prepared.input, prepared.stdin) = (Some(ours), theirs.into());
        }
        Ok(prepared)
    }

    /// The terminal's master the runtime sent, made non-blocking.
    fn master(&self) -> Result<Option<OwnedFd>, TaskError> {
        let Some(console) = &self.console else {
            return Ok(None);
        };
        let master = console
            .receive()
            .map_err(|e| TaskError::Internal(format!("no terminal from the runtime: {e}")))?;
        set_nonblocking(&master).map_err(|e| TaskError::Internal(format!("terminal: {e}")))?;
        Ok(Some(master))
    }
}

/// The init's stdio while it runs.
pub(crate) struct InitIo {
    pump: PumpHandle,
    attach: AttachServer,
    /// The terminal's master, for resizing.
    pub(crate) console: Option<OwnedFd>,
    /// Whether the init has a stdin.
    pub(crate) stdin: bool,
}

/// What the init's output is written to, opened before the runtime runs
/// (a log that cannot be opened fails the create, not the container).
pub(crate) struct InitLogs {
    stdout: LogFile,
    stderr: LogFile,
}

impl InitLogs {
    /// One path for both streams is the kubelet's CRI log; two paths are
    /// plain files; an empty path discards the stream.
    pub(crate) fn open(stdout: &str, stderr: &str) -> Result<Self, TaskError> {
        let bad = |path: &str, e: io::Error| {
            TaskError::InvalidArgument(format!("cannot open log {path}: {e}"))
        };
        if !stdout.is_empty() && stdout == stderr {
            let file = open_log(Path::new(stdout)).map_err(|e| bad(stdout, e))?;
            return Ok(Self {
                stdout: LogFile::Cri(file.clone()),
                stderr: LogFile::Cri(file),
            });
        }
        let raw = |path: &str| -> Result<LogFile, TaskError> {
            if path.is_empty() {
                return Ok(LogFile::Discard);
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(LogFile::Raw)
                .map_err(|e| bad(path, e))
        };
        Ok(Self {
            stdout: raw(stdout)?,
            stderr: raw(stderr)?,
        })
    }
}

/// The init's stdio before the runtime creates it.
pub(crate) struct InitSetup {
    prepared: Prepared,
    logs: InitLogs,
    stdin: bool,
}

impl InitSetup {
    /// Pipes (or a console socket at `console`, for a terminal) for an
    /// init writing to `logs`, with a stdin when `stdin`.
    pub(crate) fn new(
        logs: InitLogs,
        terminal: Option<&Path>,
        stdin: bool,
    ) -> Result<Self, TaskError> {
        Ok(Self {
            prepared: Prepared::new(terminal, true, true, stdin)?,
            logs,
            stdin,
        })
    }

    /// What the runtime is given.
    pub(crate) fn runtime_stdio(&mut self) -> (Stdio, Stdio, Stdio) {
        (
            std::mem::replace(&mut self.prepared.stdin, Stdio::null()),
            std::mem::replace(&mut self.prepared.stdout, Stdio::null()),
            std::mem::replace(&mut self.prepared.stderr, Stdio::null()),
        )
    }

    /// The console socket's path, when the init has a terminal.
    pub(crate) fn console_socket(&self) -> Option<&Path> {
        self.prepared.console.as_ref().map(ConsoleSocket::path)
    }

    /// After the runtime created the init: starts its attach socket (at
    /// `socket`, address in `address_file`) and its pump.
    pub(crate) fn run(self, socket: &Path, address_file: &Path) -> Result<InitIo, TaskError> {
        let Self {
            prepared,
            logs,
            stdin,
        } = self;
        let master = prepared.master()?;
        let (input, eof) = match &master {
            Some(master) if stdin => (Some(dup(master)?), Some(eof_byte(master))),
            Some(_) => (None, None),
            None => (prepared.input, None),
        };
        let attach = AttachServer::start(socket, address_file, input, eof)
            .map_err(|e| TaskError::Internal(format!("attach socket {}: {e}", socket.display())))?;
        let hub = Some(attach.hub());
        let stream = |s, file| Sink::Output(Box::new(LogStream::new(s, file, hub.clone())));
        let routes = match &master {
            Some(master) => vec![Route::output(
                dup(master)?,
                stream(Stream::Stdout, logs.stdout),
            )],
            None => {
                let mut routes = Vec::new();
                if let Some(out) = prepared.out {
                    routes.push(Route::output(out, stream(Stream::Stdout, logs.stdout)));
                }
                if let Some(err) = prepared.err {
                    routes.push(Route::output(err, stream(Stream::Stderr, logs.stderr)));
                }
                routes
            }
        };
        let pump = PumpHandle::spawn("init-io", routes)
            .map_err(|e| TaskError::Internal(format!("cannot start the init's pump: {e}")))?;
        Ok(InitIo {
            pump,
            attach,
            console: master,
            stdin,
        })
    }
}

impl InitIo {
    /// Closes the init's stdin (`CloseIO`).
    pub(crate) fn close_stdin(&self) {
        self.attach.close_stdin();
    }

    /// The init exited: drains its output into the log and to attached
    /// clients, then closes them.
    pub(crate) fn finish(self) {
        self.pump.finish();
        self.attach.close();
    }
}

/// What an exec process's stdio are, as the client named them.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecPaths {
    /// A FIFO the client writes (empty: no stdin).
    pub(crate) stdin: String,
    /// A FIFO the client reads, or a file (empty: discarded).
    pub(crate) stdout: String,
    /// See `stdout` (unused with a terminal).
    pub(crate) stderr: String,
    /// Whether the process has a terminal.
    pub(crate) terminal: bool,
}

/// An exec process's stdio before the runtime runs it.
pub(crate) struct ExecSetup {
    prepared: Prepared,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// An exec process's stdio while it runs.
pub(crate) struct ExecIo {
    pump: PumpHandle,
    /// The terminal's master, for resizing.
    pub(crate) console: Option<OwnedFd>,
}

impl ExecSetup {
    /// Opens the client's FIFOs (or files) and makes the pipes, or a
    /// console socket at `console` for a terminal.
    pub(crate) fn open(paths: &ExecPaths, console: &Path) -> Result<Self, TaskError> {
        let stdin = open_input(&paths.stdin)?;
        let stdout = open_output(&paths.stdout)?;
        let stderr = if paths.terminal {
            None
        } else {
            open_output(&paths.stderr)?
        };
        let prepared = Prepared::new(
            paths.terminal.then_some(console),
            stdout.is_some(),
            stderr.is_some(),
            stdin.is_some(),
        )?;
        Ok(Self {
            prepared,
            stdin,
            stdout,
            stderr,
        })
    }

    /// What the runtime is given.
    pub(crate) fn runtime_stdio(&mut self) -> (Stdio, Stdio, Stdio) {
        (
            std::mem::replace(&mut self.prepared.stdin, Stdio::null()),
            std::mem::replace(&mut self.prepared.stdout, Stdio::null()),
            std::mem::replace(&mut self.prepared.stderr, Stdio::null()),
        )
    }

    /// The console socket's path, when the process has a terminal.
    pub(crate) fn console_socket(&self) -> Option<&Path> {
        self.prepared.console.as_ref().map(ConsoleSocket::path)
    }

    /// After the runtime started the process: starts its pump.
    pub(crate) fn run(self) -> Result<ExecIo, TaskError> {
        let Self {
            prepared,
            stdin,
            stdout,
            stderr,
        } = self;
        let master = prepared.master()?;
        let mut routes = Vec::new();
        match &master {
            Some(master) => {
                if let Some(stdout) = stdout {
                    routes.push(Route::output(dup(master)?, Sink::Fd(stdout)));
                }
                if let Some(stdin) = stdin {
                    routes.push(Route::stdin(stdin, dup(master)?, Some(eof_byte(master))));
                }
            }
            None => {
                if let (Some(source), Some(sink)) = (prepared.out, stdout) {
                    routes.push(Route::output(source, Sink::Fd(sink)));
                }
                if let (Some(source), Some(sink)) = (prepared.err, stderr) {
                    routes.push(Route::output(source, Sink::Fd(sink)));
                }
                if let (Some(source), Some(sink)) = (stdin, prepared.input) {
                    routes.push(Route::stdin(source, sink, None));
                }
            }
        }
        let pump = PumpHandle::spawn("exec-io", routes)
            .map_err(|e| TaskError::Internal(format!("cannot start the exec's pump: {e}")))?;
        Ok(ExecIo {
            pump,
            console: master,
        })
    }
}

impl ExecIo {
    /// Closes the process's stdin (`CloseIO`).
    pub(crate) fn close_stdin(&self) {
        self.pump.close_stdin();
    }

    /// The process exited: drains its output, closes the client's FIFOs.
    pub(crate) fn finish(self) {
        self.pump.finish();
    }
}

/// Opens the client's stdin FIFO for reading (never blocks: the client
/// may open its end later).
fn open_input(path: &str) -> Result<Option<OwnedFd>, TaskError> {
    if path.is_empty() {
        return Ok(None);
    }
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(Some)
    .map_err(|e| TaskError::InvalidArgument(format!("cannot open stdin {path}: {e}")))
}

/// Opens an output: a FIFO the client reads (whose read end it must have
/// opened, or open within [`FIFO_OPEN_TIMEOUT`]), or a file (created,
/// appended to).
fn open_output(path: &str) -> Result<Option<OwnedFd>, TaskError> {
    if path.is_empty() {
        return Ok(None);
    }
    let deadline = Instant::now() + FIFO_OPEN_TIMEOUT;
    loop {
        match rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => return Ok(Some(fd)),
            // A FIFO nobody reads yet.
            Err(Errno::NXIO) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(Errno::NXIO) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "nobody reads the FIFO {path}"
                )));
            }
            Err(e) => {
                return Err(TaskError::InvalidArgument(format!(
                    "cannot open {path}: {e}"
                )));
            }
        }
    }
}
