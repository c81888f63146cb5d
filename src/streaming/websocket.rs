//! The WebSocket transports: Kubernetes' channel protocols for exec and
//! attach (one message per write, its first byte the channel: 0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize; the `base64.` variants send text
//! messages with the channel as an ASCII digit and base64 data; v5 adds the
//! close message `[255, channel]`), and a byte tunnel for SPDY carried in
//! binary messages (`SPDY/3.1+portforward.k8s.io`, what kubectl and crictl
//! use for port-forward over WebSocket).

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::remotecommand::{self, Channels, Options, Version};

/// Channel numbers (wire facts).
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes a channel.
const CLOSE: u8 = 255;

/// Pipe buffer per channel.
const PIPE: usize = 64 * 1024;

/// The subprotocols berthd speaks for exec and attach, most preferred first.
pub const PROTOCOLS: [&str; 5] = [
    remotecommand::V5,
    remotecommand::V4,
    "v4.base64.channel.k8s.io",
    remotecommand::V1,
    "base64.channel.k8s.io",
];

/// The subprotocol of SPDY tunnelled in WebSocket for port-forward.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// A negotiated channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelProtocol {
    /// The remote command version.
    pub version: Version,
    /// Text messages with base64 data.
    pub base64: bool,
}

impl ChannelProtocol {
    /// The protocol a subprotocol name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        let (base64, rest) = match name.strip_prefix("v4.base64.") {
            Some(rest) => (true, format!("v4.{rest}")),
            None => match name.strip_prefix("base64.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, name.to_string()),
            },
        };
        Some(Self {
            version: Version::from_name(&rest)?,
            base64,
        })
    }

    fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// The channel and data of a received message, `None` for messages
    /// that carry none.
    fn decode(&self, message: Message) -> Option<(u8, Vec<u8>)> {
        match message {
            Message::Binary(bytes) if !self.base64 => {
                let (&channel, data) = bytes.split_first()?;
                Some((channel, data.to_vec()))
            }
            Message::Text(text) if self.base64 => {
                let bytes = text.as_bytes();
                let (&digit, data) = bytes.split_first()?;
                let channel = digit.checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?;
                Some((channel, data))
            }
            _ => None,
        }
    }
}

/// Turns an upgraded WebSocket into [`Channels`] for a remote command
/// session with `options`.
pub fn channels<S>(ws: WebSocketStream<S>, protocol: ChannelProtocol, options: Options) -> Channels
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);

    // Writer: every output channel's messages, then a normal close once
    // all of them are done (the client reads the status until then).
    tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });

    let output = |channel: u8| -> remotecommand::BoxWrite {
        let (ours, mut theirs) = tokio::io::duplex(PIPE);
        let tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(protocol.encode(channel, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Box::pin(ours)
    };
    let stdout = options.stdout.then(|| output(STDOUT));
    let stderr = options.wants_stderr().then(|| output(STDERR));
    let error = output(ERROR);
    drop(out_tx);

    let input = || -> (DuplexStream, DuplexStream) { tokio::io::duplex(PIPE) };
    let (mut stdin_tx, stdin_rx) = input();
    let (mut resize_tx, resize_rx) = input();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let v5 = protocol.version >= Version::V5;
    tokio::spawn(async move {
        let mut stdin_open = true;
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = protocol.decode(message) else {
                continue;
            };
            match channel {
                STDIN if stdin_open => {
                    stdin_open = stdin_tx.write_all(&data).await.is_ok();
                }
                RESIZE => {
                    let _ = resize_tx.write_all(&data).await;
                }
                CLOSE if v5 && data.first() == Some(&STDIN) => {
                    stdin_open = false;
                    let _ = stdin_tx.shutdown().await;
                }
                _ => {}
            }
        }
        let _ = stdin_tx.shutdown().await;
        let _ = resize_tx.shutdown().await;
        let _ = closed_tx.send(());
    });

    Channels {
        stdin: options
            .stdin
            .then(|| Box::pin(stdin_rx) as remotecommand::BoxRead),
        stdout,
        stderr,
        resize: (options.tty && protocol.version >= Version::V3)
            .then(|| Box::pin(resize_rx) as remotecommand::BoxRead),
        error,
        closed: Box::pin(async move {
            let _ = closed_rx.await;
        }),
    }
}

/// A byte stream over a WebSocket's binary messages (the SPDY tunnel).
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut from_session, mut to_session) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let delivered = match message {
                Message::Binary(bytes) => to_session.write_all(&bytes).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !delivered {
                break;
            }
        }
        let _ = to_session.shutdown().await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        assert_eq!(
            ChannelProtocol::from_name("v5.channel.k8s.io"),
            Some(ChannelProtocol {
                version: Version::V5,
                base64: false
            })
        );
        assert_eq!(
            ChannelProtocol::from_name("v4.base64.channel.k8s.io"),
            Some(ChannelProtocol {
                version: Version::V4,
                base64: true
            })
        );
        assert_eq!(
            ChannelProtocol::from_name("base64.channel.k8s.io"),
            Some(ChannelProtocol {
                version: Version::V1,
                base64: true
            })
        );
        assert_eq!(ChannelProtocol::from_name("v9.channel.k8s.io"), None);
        for name in PROTOCOLS {
            assert!(ChannelProtocol::from_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn messages_round_trip_in_both_encodings() {
        for base64 in [false, true] {
            let p = ChannelProtocol {
                version: Version::V4,
                base64,
            };
            let m = p.encode(STDOUT, b"hi\x00there");
            assert_eq!(p.decode(m), Some((STDOUT, b"hi\x00there".to_vec())));
        }
        let binary = ChannelProtocol {
            version: Version::V5,
            base64: false,
        };
        assert_eq!(binary.encode(ERROR, b"x"), Message::binary(vec![3, b'x']));
        assert_eq!(binary.decode(Message::binary(Vec::new())), None);
        assert_eq!(
            binary.decode(Message::text("1aGk=")),
            None,
            "text in binary mode"
        );
    }

    #[tokio::test]
    async fn a_session_over_a_websocket() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (server_io, client_io) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let protocol = ChannelProtocol {
            version: Version::V5,
            base64: false,
        };
        let options = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let mut channels = channels(server, protocol, options);
        client
            .send(Message::binary(b"\x00ping".to_vec()))
            .await
            .expect("send");
        client
            .send(Message::binary(vec![CLOSE, STDIN]))
            .await
            .expect("close stdin");
        let mut stdin = channels.stdin.take().expect("stdin");
        let mut got = Vec::new();
        stdin.read_to_end(&mut got).await.expect("read stdin");
        assert_eq!(got, b"ping");
        let mut stdout = channels.stdout.take().expect("stdout");
        stdout.write_all(b"pong").await.expect("write");
        stdout.shutdown().await.expect("shutdown");
        drop(stdout);
        drop(channels.stderr.take());
        channels.error.write_all(b"{}").await.expect("status");
        channels.error.shutdown().await.expect("shutdown");
        drop(channels);
        let mut seen = Vec::new();
        while let Some(Ok(message)) = client.next().await {
            if let Message::Close(frame) = &message {
                assert_eq!(frame.as_ref().map(|f| f.code), Some(CloseCode::Normal));
                break;
            }
            seen.push(message);
        }
        assert!(
            seen.contains(&Message::binary(b"\x01pong".to_vec())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&Message::binary(b"\x03{}".to_vec())),
            "{seen:?}"
        );
    }
}
