//! Clients for berthd's streaming server, our own: an HTTP/1.1 upgrade, a
//! small SPDY/3.1 client on berthd's frame codec (it opens odd streams the
//! way kubectl's spdystream does), and a WebSocket client with
//! Kubernetes' channel framing.

use std::collections::HashMap;
use std::time::Duration;

use berthd::streaming::spdy::frame::{Frame, FrameDecoder, FrameEncoder, Headers};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::bytes::{Bytes, BytesMut};

/// How long any step may take.
pub const STEP: Duration = Duration::from_secs(20);

/// An HTTP response's status and headers (names lowercase).
#[derive(Debug)]
pub struct Upgraded {
    /// The status code.
    pub status: u16,
    /// Header values by lowercase name.
    pub headers: HashMap<String, Vec<String>>,
    /// The body, when the server did not upgrade.
    pub body: String,
    /// The connection, when it did.
    pub stream: Option<TcpStream>,
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_string(), path.to_string())
}

/// Sends `POST url` asking for an upgrade to SPDY/3.1 with `protocols` in
/// `X-Stream-Protocol-Version`, and reads the response head.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Upgraded {
    let (host, path) = split_url(url);
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read the response");
        assert_eq!(
            n,
            1,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    if status == 101 {
        return Upgraded {
            status,
            headers,
            body: String::new(),
            stream: Some(stream),
        };
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.first())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("read the body");
    Upgraded {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        stream: None,
    }
}

/// What the server sent on one stream.
#[derive(Debug, Default)]
pub struct Received {
    /// The data, in order.
    pub data: Vec<u8>,
    /// The server ended the stream (FIN or RST).
    pub ended: bool,
}

/// A SPDY client session.
pub struct SpdyClient {
    out: mpsc::UnboundedSender<Frame>,
    next_id: u32,
    events: mpsc::UnboundedReceiver<(u32, Option<Vec<u8>>)>,
    /// Everything received so far, by stream id.
    pub streams: HashMap<u32, Received>,
    replies: Vec<u32>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for SpdyClient {
    /// Dropping the client closes its connection, as a client that goes
    /// away does.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SpdyClient {
    /// Runs a client session on an upgraded connection (or a tunnel).
    pub fn new<S>(stream: S) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut read, mut write) = tokio::io::split(stream);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut encoder = FrameEncoder::new();
            while let Some(frame) = out_rx.recv().await {
                let mut bytes = Vec::new();
                encoder.encode(&frame, &mut bytes).expect("encode");
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let pong = out.clone();
        let reader = tokio::spawn(async move {
            let mut decoder = FrameDecoder::new();
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                    // (stream, Some(data)) = data; (stream, None) = ended;
                    // (0, Some(id)) = reply to stream id.
                    let event = match frame {
                        Frame::Data {
                            stream_id,
                            fin,
                            data,
                        } => {
                            let _ = events_tx.send((stream_id, Some(data.to_vec())));
                            fin.then_some((stream_id, None))
                        }
                        Frame::SynReply { stream_id, .. } => {
                            Some((0, Some(stream_id.to_be_bytes().to_vec())))
                        }
                        Frame::RstStream { stream_id, .. } => Some((stream_id, None)),
                        Frame::Ping { id } => {
                            let _ = pong.send(Frame::Ping { id });
                            None
                        }
                        _ => None,
                    };
                    if let Some(event) = event {
                        let _ = events_tx.send(event);
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        let _ = events_tx.send((u32::MAX, None));
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Self {
            out,
            next_id: 1,
            events,
            streams: HashMap::new(),
            replies: Vec::new(),
            tasks: [reader, writer],
        }
    }

    /// Opens a stream with `headers` and waits for the server's reply.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut h = Headers::new();
        for (k, v) in headers {
            h.append(k, v).expect("header");
        }
        self.out
            .send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: h,
            })
            .expect("send SYN_STREAM");
        while !self.replies.contains(&id) {
            assert!(
                self.next_event().await,
                "connection closed before the reply to {id}"
            );
        }
        id
    }

    /// Sends data on a stream (`fin` ends our side).
    pub fn send(&self, stream_id: u32, data: &[u8], fin: bool) {
        self.out
            .send(Frame::Data {
                stream_id,
                fin,
                data: Bytes::copy_from_slice(data),
            })
            .expect("send DATA");
    }

    /// Handles one event; `false` once the connection is gone.
    async fn next_event(&mut self) -> bool {
        let event = tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("an event from the server in time");
        match event {
            Some((u32::MAX, None)) | None => false,
            Some((0, Some(id))) => {
                let id = u32::from_be_bytes(id.try_into().unwrap_or([0; 4]));
                self.replies.push(id);
                true
            }
            Some((id, Some(data))) => {
                self.streams.entry(id).or_default().data.extend(data);
                true
            }
            Some((id, None)) => {
                self.streams.entry(id).or_default().ended = true;
                true
            }
        }
    }

    /// Reads until every stream in `ids` has ended (or the connection
    /// closed), then returns their data.
    pub async fn read_until_ended(&mut self, ids: &[u32]) -> Vec<Vec<u8>> {
        while !ids
            .iter()
            .all(|id| self.streams.get(id).is_some_and(|r| r.ended))
        {
            if !self.next_event().await {
                break;
            }
        }
        ids.iter()
            .map(|id| {
                self.streams
                    .get(id)
                    .map(|r| r.data.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Reads until stream `id` has received `needle` somewhere.
    pub async fn read_until_contains(&mut self, id: u32, needle: &[u8]) -> Vec<u8> {
        loop {
            let data = self
                .streams
                .get(&id)
                .map(|r| r.data.clone())
                .unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                return data;
            }
            assert!(
                self.next_event().await,
                "connection closed before {:?} arrived; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&data)
            );
        }
    }
}

/// A WebSocket session with channel framing.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    /// The subprotocol the server chose.
    pub protocol: String,
    /// Everything received, by channel.
    pub channels: HashMap<u8, Vec<u8>>,
    /// The server closed the connection.
    pub closed: bool,
}

impl WsClient {
    /// Connects to `url` (http:// is turned into ws://) offering
    /// `protocols`.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Self, String> {
        let ws_url = url.replacen("http://", "ws://", 1);
        let (host, _) = split_url(url);
        let mut request = ws_url.into_client_request().map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols
                .join(", ")
                .parse()
                .map_err(|_| "bad protocols".to_string())?,
        );
        let tcp = TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
        let (ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            ws,
            protocol,
            channels: HashMap::new(),
            closed: false,
        })
    }

    /// The WebSocket itself (for the SPDY tunnel).
    pub fn into_inner(self) -> tokio_tungstenite::WebSocketStream<TcpStream> {
        self.ws
    }

    /// Sends `data` on `channel` (binary framing).
    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(data);
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send a message");
    }

    /// Reads until the server closes the connection.
    pub async fn read_to_close(&mut self) {
        while !self.closed {
            self.next().await;
        }
    }

    /// Reads until `channel` has received `needle`.
    pub async fn read_until_contains(&mut self, channel: u8, needle: &[u8]) -> Vec<u8> {
        loop {
            let data = self.channels.get(&channel).cloned().unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                return data;
            }
            assert!(
                !self.closed,
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&data)
            );
            self.next().await;
        }
    }

    async fn next(&mut self) {
        let message = tokio::time::timeout(STEP, self.ws.next())
            .await
            .expect("a message in time");
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                if let Some((&channel, data)) = bytes.split_first() {
                    self.channels
                        .entry(channel)
                        .or_default()
                        .extend_from_slice(data);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => self.closed = true,
            Some(Ok(_)) => {}
        }
    }
}
