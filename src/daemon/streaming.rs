//! Exec, Attach and PortForward: the RPCs check their request and park it
//! on the streaming server; the server comes back through [`Backend`] when
//! the client connects.

use std::sync::{Arc, Weak};

use crate::container::ContainerState;
use crate::input::quoted;
use crate::streaming::remotecommand::{Options, Process};
use crate::streaming::{
    AttachRequest, Backend, ExecRequest, Pending, PortForwardRequest, StreamingError,
};

use super::{Daemon, DaemonError};

/// The daemon as the streaming server's backend (weakly: the server lives
/// inside the daemon).
pub(super) struct DaemonBackend(pub(super) Weak<Daemon>);

impl DaemonBackend {
    fn daemon(&self) -> Result<Arc<Daemon>, String> {
        self.0
            .upgrade()
            .ok_or_else(|| "berthd is stopping".to_string())
    }
}

#[tonic::async_trait]
impl Backend for DaemonBackend {
    async fn exec(&self, request: &ExecRequest) -> Result<Process, String> {
        self.daemon()?
            .containers
            .exec_stream(&request.container_id, &request.cmd, request.options)
            .await
            .map_err(|e| e.to_string())
    }

    async fn attach(&self, request: &AttachRequest) -> Result<Process, String> {
        self.daemon()?
            .containers
            .attach_stream(&request.container_id, request.options)
            .await
            .map_err(|e| e.to_string())
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, String> {
        self.daemon()?
            .sandboxes
            .port_forward(sandbox_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}

fn invalid(field: &str, reason: &str) -> DaemonError {
    DaemonError::InvalidStreamRequest {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// The stream options, checked as the kubelet's streaming server does.
fn options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<Options, DaemonError> {
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "tty and stderr cannot both be true: a terminal merges them",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid(
            "stdin",
            "one of stdin, stdout or stderr must be set",
        ));
    }
    Ok(Options {
        stdin,
        stdout,
        stderr,
        tty,
    })
}

impl Daemon {
    fn streaming_url(&self, request: Pending) -> Result<String, DaemonError> {
        let server = self.streaming.get().ok_or(DaemonError::StreamingNotReady)?;
        server.url(request).map_err(DaemonError::from)
    }

    /// A running container, or why not.
    fn running_container(&self, id: &str) -> Result<String, DaemonError> {
        let record = self.containers.status(id)?;
        if record.state != ContainerState::Running {
            return Err(DaemonError::Container(
                crate::container::ContainerError::FailedPrecondition(format!(
                    "container {} is not running",
                    record.id
                )),
            ));
        }
        Ok(record.id)
    }

    /// Exec: the URL of a session running `cmd` in the running container.
    pub fn exec_url(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
    ) -> Result<String, DaemonError> {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(invalid("cmd", "is empty"));
        }
        let options = options(stdin, stdout, stderr, tty)?;
        let container_id = self.running_container(container_id)?;
        self.streaming_url(Pending::Exec(ExecRequest {
            container_id,
            cmd,
            options,
        }))
    }

    /// Attach: the URL of a session on the running container's stdio.
    pub fn attach_url(
        &self,
        container_id: &str,
        (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
    ) -> Result<String, DaemonError> {
        let options = options(stdin, stdout, stderr, tty)?;
        let container_id = self.running_container(container_id)?;
        self.streaming_url(Pending::Attach(AttachRequest {
            container_id,
            options,
        }))
    }

    /// PortForward: the URL of a port-forward session into the ready pod.
    pub fn port_forward_url(&self, sandbox_id: &str, ports: &[i32]) -> Result<String, DaemonError> {
        if let Some(port) = ports.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(invalid(
                "port",
                &format!("{} is not a TCP port", quoted(&port.to_string())),
            ));
        }
        let sandbox = self.sandboxes.status(sandbox_id)?;
        if sandbox.state != crate::sandbox::SandboxState::Ready {
            return Err(DaemonError::Sandbox(
                crate::sandbox::SandboxError::NotReady(sandbox.id),
            ));
        }
        self.streaming_url(Pending::PortForward(PortForwardRequest {
            sandbox_id: sandbox.id,
        }))
    }
}

impl From<StreamingError> for DaemonError {
    fn from(e: StreamingError) -> Self {
        DaemonError::Streaming(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_are_checked() {
        assert!(options(true, true, false, true).is_ok());
        let err = options(false, true, true, true).expect_err("tty + stderr");
        assert!(err.to_string().contains("stderr"), "{err}");
        let err = options(false, false, false, false).expect_err("nothing");
        assert!(err.to_string().contains("one of"), "{err}");
    }
}
