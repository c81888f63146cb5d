//! PortForward's connection: TCP to the pod's loopback from inside the
//! pod's network namespace (the host's for a host-network pod).
//!
//! The socket is made on a short-lived thread of its own that enters the
//! namespace (`setns`) and ends right after: a socket stays in the
//! namespace it was created in, and no thread of berthd's runtime ever
//! changes namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use super::{SandboxError, SandboxState, Sandboxes};

/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on IPv4 then IPv6 loopback, as `localhost` would.
fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(stream) => Ok(stream),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// Connects to `port` on loopback inside the network namespace pinned at
/// `netns` (the caller's own when `None`).
pub async fn connect_in(
    netns: Option<PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || {
            let result = (|| {
                if let Some(netns) = &netns {
                    let file = std::fs::File::open(netns)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                connect_loopback(port)
            })();
            let _ = tx.send(result);
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

impl Sandboxes {
    /// PortForward: a connection to `port` on the ready sandbox's loopback.
    pub async fn port_forward(
        &self,
        id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, SandboxError> {
        let record = self.status(id)?;
        if record.state != SandboxState::Ready {
            return Err(SandboxError::NotReady(record.id));
        }
        connect_in(record.netns(), port)
            .await
            .map_err(|e| SandboxError::PortForward {
                port,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_on_the_callers_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stream = connect_in(None, port).await.expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(
            accepted.peer_addr().expect("peer"),
            stream.local_addr().expect("local")
        );
        drop(listener);
        assert!(connect_in(None, port).await.is_err(), "nobody listens");
    }
}
