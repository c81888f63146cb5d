//! The streaming server: Exec, Attach and PortForward sessions that the CRI
//! RPCs hand out as single-use URLs, over SPDY/3.1 and WebSocket.
//!
//! The RPC parks its request under a random token ([`tokens`]) and returns
//! `http://<address>/<kind>/<token>`; the client (kubelet, crictl) connects
//! there and upgrades ([`server`]). The session then runs between the
//! transport's channels ([`websocket`], [`spdy_channels`]) and a
//! [`Backend`] that runs the process or opens the port: the streaming
//! server knows nothing of containers or sandboxes.

pub mod idle;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
mod spdy_channels;
pub mod tokens;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use remotecommand::{Channels, Options, Outcome, Process, Version};
use tokens::Tokens;

use crate::config::StreamingConfig;

/// An Exec the client will connect for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Which streams, and whether with a terminal.
    pub options: Options,
}

/// An Attach the client will connect for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container.
    pub container_id: String,
    /// Which streams, and whether the container has a terminal.
    pub options: Options,
}

/// A PortForward the client will connect for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod sandbox.
    pub sandbox_id: String,
}

/// A request parked under a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Exec.
    Exec(ExecRequest),
    /// Attach.
    Attach(AttachRequest),
    /// PortForward.
    PortForward(PortForwardRequest),
}

/// What the streaming server needs from the rest of berthd.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Starts `request`'s command in its container with the asked streams.
    async fn exec(&self, request: &ExecRequest) -> Result<Process, String>;
    /// Attaches to the container's main process.
    async fn attach(&self, request: &AttachRequest) -> Result<Process, String>;
    /// Connects to TCP `port` on the sandbox's loopback (inside its network
    /// namespace; the host's for a host-network pod).
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, String>;
}

/// What every connection shares.
pub struct Shared {
    tokens: Tokens<Pending>,
    backend: Arc<dyn Backend>,
    config: StreamingConfig,
}

/// Why the streaming server could not start or hand out a URL.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The configured address is not IP:PORT or cannot be bound.
    #[error("streaming server on {address}: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No random token could be made.
    #[error("no random token: {0}")]
    Token(std::io::Error),
}

/// The running streaming server.
pub struct StreamingServer {
    shared: Arc<Shared>,
    base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl StreamingServer {
    /// Binds the configured address (port 0 picks one) and serves.
    pub async fn start(
        config: &StreamingConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, StreamingError> {
        let bind_error = |source| StreamingError::Bind {
            address: config.address.clone(),
            source,
        };
        let address: SocketAddr = config
            .address
            .parse()
            .map_err(|e| bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let shared = Arc::new(Shared {
            tokens: Tokens::new(config.url_lifetime),
            backend,
            config: config.clone(),
        });
        let task = tokio::spawn(server::run(listener, shared.clone()));
        let base_url = format!("http://{local}");
        tracing::info!(url = %base_url, "streaming server listening");
        Ok(Self {
            shared,
            base_url,
            task,
        })
    }

    /// `http://IP:PORT` the server listens on.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Parks `request` and returns the URL its client connects to.
    pub fn url(&self, request: Pending) -> Result<String, StreamingError> {
        let kind = match &request {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        };
        let token = self
            .shared
            .tokens
            .insert(request)
            .map_err(StreamingError::Token)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a failure that happened before a process existed, and closes.
async fn fail(channels: Channels, version: Version, message: String) {
    use tokio::io::AsyncWriteExt;
    let Channels { mut error, .. } = channels;
    if let Some(bytes) = remotecommand::status_message(version, &Outcome::Failed(message)) {
        let _ = error.write_all(&bytes).await;
    }
    let _ = error.shutdown().await;
}

/// Runs an exec session on `channels`.
pub(crate) async fn run_exec(
    channels: Channels,
    version: Version,
    request: ExecRequest,
    shared: Arc<Shared>,
) {
    match shared.backend.exec(&request).await {
        Ok(process) => remotecommand::serve(version, channels, process).await,
        Err(message) => fail(channels, version, message).await,
    }
}

/// Runs an attach session on `channels`.
pub(crate) async fn run_attach(
    channels: Channels,
    version: Version,
    request: AttachRequest,
    shared: Arc<Shared>,
) {
    match shared.backend.attach(&request).await {
        Ok(process) => remotecommand::serve(version, channels, process).await,
        Err(message) => fail(channels, version, message).await,
    }
}
