//! Interactive sessions for the streaming server: an exec whose stdio are
//! FIFOs between berthd and the shim, and an attach to the container's
//! live stdio through the shim's attach socket.
//!
//! The FIFOs of an exec live in `<bundle>/exec/<exec id>/`. berthd opens
//! its ends read-write first, so neither side's open ever blocks or fails
//! for want of a peer; once the process runs (the shim holds its ends),
//! berthd reopens its read ends read-only, so it sees EOF when the shim
//! closes them after the process ended and its output was drained.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::containers::{ContainerError, Containers, new_exec_id};
use super::record::ContainerRecord;
use super::task::{exec_process, shim_error};
use crate::shim_client::attach::{self, OutputStream};
use crate::shim_client::{ExecIo, ShimClient};
use crate::streaming::remotecommand::{BoxRead, Control, Options, Outcome, Process};

/// The FIFO directory of an exec.
fn fifo_dir(record: &ContainerRecord, exec_id: &str) -> PathBuf {
    record.bundle.join("exec").join(exec_id)
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { op, path, source }
}

fn mkfifo(path: &Path) -> Result<(), ContainerError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io_error("mkfifo", path)(e.into()))
}

/// A FIFO berthd reads: opened read-write until the shim holds its end.
struct OutputFifo {
    path: PathBuf,
    holder: pipe::Receiver,
}

impl OutputFifo {
    fn create(path: PathBuf) -> Result<Self, ContainerError> {
        mkfifo(&path)?;
        let holder = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .map_err(io_error("open", &path))?;
        Ok(Self { path, holder })
    }

    /// The read end that sees EOF once the shim closes its end.
    fn reader(self) -> Result<BoxRead, ContainerError> {
        let reader = pipe::OpenOptions::new()
            .open_receiver(&self.path)
            .map_err(io_error("open", &self.path))?;
        drop(self.holder);
        Ok(Box::pin(reader))
    }
}

impl Containers {
    /// Starts `cmd` in the running container `id` with the streams of
    /// `options`; the returned process's output ends when it has exited and
    /// its output was drained.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        options: Options,
    ) -> Result<Process, ContainerError> {
        let record = self.running(id)?;
        let process = exec_process(&record, cmd, options.tty)?;
        let exec_id = new_exec_id()?;
        let dir = fifo_dir(&record, &exec_id);
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let client = self.client(&record).await?;
        let started = async {
            // Output always has somewhere to go: unread streams are drained
            // by the session, so the process never blocks on them.
            let stdout = OutputFifo::create(dir.join("stdout"))?;
            let stderr = if options.tty {
                None
            } else {
                Some(OutputFifo::create(dir.join("stderr"))?)
            };
            let stdin = if options.stdin {
                let path = dir.join("stdin");
                mkfifo(&path)?;
                let sender = pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&path)
                    .map_err(io_error("open", &path))?;
                Some((path, sender))
            } else {
                None
            };
            let io = ExecIo {
                stdin: stdin.as_ref().map(|(p, _)| p.clone()),
                stdout: Some(stdout.path.clone()),
                stderr: stderr.as_ref().map(|f| f.path.clone()),
                terminal: options.tty,
            };
            client
                .exec_with_io(&record.id, &exec_id, process, &io)
                .await
                .map_err(shim_error)?;
            client
                .start_exec(&record.id, &exec_id)
                .await
                .map_err(shim_error)?;
            let stdout = stdout.reader()?;
            let stderr = stderr.map(OutputFifo::reader).transpose()?;
            Ok::<_, ContainerError>(Process {
                stdin: stdin.map(|(_, s)| Box::pin(s) as crate::streaming::remotecommand::BoxWrite),
                stdout: Some(stdout),
                stderr,
                control: Box::new(ExecControl {
                    client: client.clone(),
                    id: record.id.clone(),
                    exec_id: exec_id.clone(),
                    dir: dir.clone(),
                    done: false,
                }),
            })
        }
        .await;
        if started.is_err() {
            let _ = client.delete_exec(&record.id, &exec_id).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        started
    }

    /// Attaches to the running container `id`'s init: its output from now
    /// on (the log keeps all of it) and, when it has one, its stdin.
    pub async fn attach_stream(
        &self,
        id: &str,
        options: Options,
    ) -> Result<Process, ContainerError> {
        let record = self.running(id)?;
        if options.stdin && !record.stdin {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} was not created with stdin: nothing to attach stdin to",
                record.id
            )));
        }
        let connection = attach::connect(&super::task::shim_dir(&record))
            .await
            .map_err(|e| ContainerError::Shim(e.to_string()))?;
        let client = self.client(&record).await?;
        let (mut reader, mut writer) = connection.split();

        // Output: frames into two pipes; both end when the init exits.
        let (stdout, mut stdout_tx) = tokio::io::duplex(PIPE);
        let (stderr, mut stderr_tx) = tokio::io::duplex(PIPE);
        let output = tokio::spawn(async move {
            while let Ok(Some((stream, data))) = reader.next().await {
                let to = match stream {
                    OutputStream::Stdout => &mut stdout_tx,
                    OutputStream::Stderr => &mut stderr_tx,
                };
                // A side nobody reads is dropped, not waited for.
                let _ = to.write_all(&data).await;
            }
        });
        // Stdin: bytes from the client into stdin frames, then the close.
        let stdin = if options.stdin {
            let (stdin, mut stdin_rx) = tokio::io::duplex(PIPE);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match stdin_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.send_stdin(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = writer.close_stdin().await;
            });
            Some(Box::pin(stdin) as crate::streaming::remotecommand::BoxWrite)
        } else {
            None
        };
        Ok(Process {
            stdin,
            stdout: options.stdout.then(|| Box::pin(stdout) as BoxRead),
            stderr: (options.stderr && !record.tty).then(|| Box::pin(stderr) as BoxRead),
            control: Box::new(AttachControl {
                client,
                id: record.id.clone(),
                stdin_once: record.stdin_once,
                output,
            }),
        })
    }
}

/// Pipe buffer between the attach socket and the session.
const PIPE: usize = 64 * 1024;

/// Steers an attach session.
struct AttachControl {
    client: ShimClient,
    id: String,
    stdin_once: bool,
    output: tokio::task::JoinHandle<()>,
}

#[tonic::async_trait]
impl Control for AttachControl {
    async fn resize(&self, width: u16, height: u16) {
        let _ = self
            .client
            .resize_pty(&self.id, "", u32::from(width), u32::from(height))
            .await;
    }

    async fn stdin_closed(&self) {
        // CRI stdin_once: the first session that closes stdin closes the
        // container's.
        if self.stdin_once {
            let _ = self.client.close_io(&self.id, "").await;
        }
    }

    async fn wait(&mut self) -> Outcome {
        // The output ended: the container exited (or this session was
        // dropped by the shim for falling behind).
        Outcome::Success
    }

    async fn abort(&mut self) {
        self.output.abort();
    }
}

impl Drop for AttachControl {
    fn drop(&mut self) {
        self.output.abort();
    }
}

/// Steers one exec process through the shim.
struct ExecControl {
    client: ShimClient,
    id: String,
    exec_id: String,
    dir: PathBuf,
    done: bool,
}

impl ExecControl {
    async fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = self.client.delete_exec(&self.id, &self.exec_id).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tonic::async_trait]
impl Control for ExecControl {
    async fn resize(&self, width: u16, height: u16) {
        if let Err(e) = self
            .client
            .resize_pty(&self.id, &self.exec_id, u32::from(width), u32::from(height))
            .await
        {
            tracing::debug!(container = %self.id, exec = %self.exec_id, error = %e, "resize failed");
        }
    }

    async fn stdin_closed(&self) {
        // Closing the FIFO is the end of stdin: the shim passes it on once
        // it has copied what the FIFO still holds (CloseIO now would drop
        // that).
    }

    async fn wait(&mut self) -> Outcome {
        let outcome = match self.client.wait_exec(&self.id, &self.exec_id).await {
            Ok(exit) if exit.exit_status == 0 => Outcome::Success,
            Ok(exit) => Outcome::Exit(i32::try_from(exit.exit_status).unwrap_or(i32::MAX)),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.finish().await;
        outcome
    }

    async fn abort(&mut self) {
        let _ = self
            .client
            .kill_exec(&self.id, &self.exec_id, nix::libc::SIGKILL as u32)
            .await;
        let _ = self.client.wait_exec(&self.id, &self.exec_id).await;
        self.finish().await;
    }
}

impl Drop for ExecControl {
    fn drop(&mut self) {
        if !self.done {
            // A session dropped mid-way: end the process in the background.
            let client = self.client.clone();
            let (id, exec_id, dir) = (self.id.clone(), self.exec_id.clone(), self.dir.clone());
            tokio::spawn(async move {
                let _ = client
                    .kill_exec(&id, &exec_id, nix::libc::SIGKILL as u32)
                    .await;
                let _ = client.wait_exec(&id, &exec_id).await;
                let _ = client.delete_exec(&id, &exec_id).await;
                let _ = std::fs::remove_dir_all(&dir);
            });
        }
    }
}
