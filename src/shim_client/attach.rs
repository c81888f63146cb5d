//! The client side of a shim's attach socket: a running container's init
//! stdio, for CRI Attach. The protocol (frames of `[kind u8][length u32
//! BE][payload]`; kind 0 stdin, 1 stdout, 2 stderr; an empty stdin frame
//! closes this client's stdin) is documented in
//! [`berth_shim::server::attach`].
//!
//! [`connect`] finds the socket through the shim's state dir; the
//! connection then splits into an [`AttachReader`] (output frames until the
//! init exits) and an [`AttachWriter`] (stdin), so a streaming server can
//! copy both ways at once.

use std::path::{Path, PathBuf};

use berth_shim::server::attach::{
    HEADER_LEN, KIND_STDERR, KIND_STDIN, KIND_STDOUT, MAX_BEHIND, MAX_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The state dir has no attach address: the task is not a running
    /// container (or its init exited).
    #[error("{}: no attach socket (the container is not running)", .0.display())]
    NotRunning(PathBuf),
    /// The socket did not accept the connection.
    #[error("cannot connect to the attach socket {address}: {source}")]
    Connect {
        /// The socket's address.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("attach connection: {0}")]
    Io(#[from] std::io::Error),
    /// The shim sent something that is not a frame of the protocol.
    #[error("attach protocol: {0}")]
    Protocol(String),
}

/// Which output stream a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// The init's stdout (or its terminal).
    Stdout,
    /// The init's stderr.
    Stderr,
}

/// A connection to a container's attach socket.
pub struct Attach {
    stream: UnixStream,
}

/// Connects to the attach socket of the task whose shim has `state_dir`.
pub async fn connect(state_dir: &Path) -> Result<Attach, AttachError> {
    let address = berth_shim::server::read_attach_address(state_dir)
        .ok_or_else(|| AttachError::NotRunning(state_dir.to_owned()))?;
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| AttachError::Connect {
            address: address.clone(),
            source,
        })?;
    Ok(Attach { stream })
}

impl Attach {
    /// The output and the stdin side, to be used at once.
    pub fn split(self) -> (AttachReader, AttachWriter) {
        let (read, write) = self.stream.into_split();
        (AttachReader { read }, AttachWriter { write })
    }
}

/// The output side of an attach connection.
pub struct AttachReader {
    read: OwnedReadHalf,
}

impl AttachReader {
    /// The next output frame: the stream and its bytes; `None` once the
    /// shim closed the connection (the init exited, or this client fell
    /// more than the shim keeps behind and was dropped).
    pub async fn next(&mut self) -> Result<Option<(OutputStream, Vec<u8>)>, AttachError> {
        let mut header = [0u8; HEADER_LEN];
        match self.read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let [kind, l0, l1, l2, l3] = header;
        let stream = match kind {
            KIND_STDOUT => OutputStream::Stdout,
            KIND_STDERR => OutputStream::Stderr,
            other => return Err(AttachError::Protocol(format!("frame kind {other}"))),
        };
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if len > MAX_BEHIND {
            return Err(AttachError::Protocol(format!("a {len}-byte frame")));
        }
        let mut payload = vec![0u8; len];
        self.read.read_exact(&mut payload).await?;
        Ok(Some((stream, payload)))
    }
}

/// The stdin side of an attach connection.
pub struct AttachWriter {
    write: OwnedWriteHalf,
}

impl AttachWriter {
    /// Sends `data` to the init's stdin (dropped by the shim when the
    /// container has no stdin or it was closed).
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), AttachError> {
        for chunk in data.chunks(MAX_FRAME) {
            self.frame(chunk).await?;
        }
        Ok(())
    }

    /// Tells the shim this client is done with stdin (the container's stdin
    /// stays open for other clients; `CloseIO` closes it).
    pub async fn close_stdin(&mut self) -> Result<(), AttachError> {
        self.frame(&[]).await
    }

    async fn frame(&mut self, payload: &[u8]) -> Result<(), AttachError> {
        let len = u32::try_from(payload.len())
            .map_err(|_| AttachError::Protocol("frame too long".into()))?;
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.push(KIND_STDIN);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        self.write.write_all(&frame).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_both_ways_and_a_missing_socket_is_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            connect(dir.path()).await.err(),
            Some(AttachError::NotRunning(_))
        ));
        let socket = dir.path().join("attach.sock");
        std::fs::write(
            dir.path().join(berth_shim::server::ATTACH_ADDRESS_FILE),
            format!("unix://{}\n", socket.display()),
        )
        .expect("address");
        assert!(matches!(
            connect(dir.path()).await.err(),
            Some(AttachError::Connect { .. })
        ));
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let (reader, mut writer) = connect(dir.path()).await.expect("connect").split();
        let (mut shim, _) = listener.accept().await.expect("accept");
        writer.send_stdin(b"hi").await.expect("send");
        writer.close_stdin().await.expect("close");
        let mut got = [0u8; 12];
        shim.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"\0\0\0\0\x02hi\0\0\0\0\0");
        shim.write_all(b"\x01\0\0\0\x03out\x02\0\0\0\x03err")
            .await
            .expect("write");
        drop(shim);
        let mut reader = reader;
        assert_eq!(
            reader.next().await.expect("frame"),
            Some((OutputStream::Stdout, b"out".to_vec()))
        );
        assert_eq!(
            reader.next().await.expect("frame"),
            Some((OutputStream::Stderr, b"err".to_vec()))
        );
        assert_eq!(reader.next().await.expect("eof"), None);
    }
}
