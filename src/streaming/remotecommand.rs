//! Kubernetes' remote command protocol (exec and attach), independent of
//! the transport: the SPDY and WebSocket layers turn a connection into
//! [`Channels`], the backend turns a request into a [`Process`], and
//! [`serve`] joins the two until the process ends or the client leaves.
//!
//! Protocol versions (`X-Stream-Protocol-Version` over SPDY, the WebSocket
//! subprotocol otherwise): `channel.k8s.io` (v1), `v2`, `v3` (adds the
//! resize stream), `v4` (the error stream carries a JSON `metav1.Status`
//! with the exit code) and `v5` (WebSocket: the client can half-close its
//! stdin with a close message; over SPDY the same as v4).

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A byte source the streaming server reads.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// A byte sink the streaming server writes.
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// `channel.k8s.io`.
pub const V1: &str = "channel.k8s.io";
/// `v2.channel.k8s.io`.
pub const V2: &str = "v2.channel.k8s.io";
/// `v3.channel.k8s.io`.
pub const V3: &str = "v3.channel.k8s.io";
/// `v4.channel.k8s.io`.
pub const V4: &str = "v4.channel.k8s.io";
/// `v5.channel.k8s.io`.
pub const V5: &str = "v5.channel.k8s.io";

/// The versions berthd speaks, most preferred first.
pub const PROTOCOLS: [&str; 5] = [V5, V4, V3, V2, V1];

/// A negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`: a resize stream.
    V3,
    /// `v4.channel.k8s.io`: JSON status on the error stream.
    V4,
    /// `v5.channel.k8s.io`: stdin close signal (WebSocket).
    V5,
}

impl Version {
    /// The version a protocol name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            V1 => Some(Self::V1),
            V2 => Some(Self::V2),
            V3 => Some(Self::V3),
            V4 => Some(Self::V4),
            V5 => Some(Self::V5),
            _ => None,
        }
    }
}

/// What the client asked for (from the cached CRI request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with a TTY: it is merged).
    pub stderr: bool,
    /// The process has a terminal.
    pub tty: bool,
}

impl Options {
    /// Whether a stderr stream is expected.
    pub fn wants_stderr(&self) -> bool {
        self.stderr && !self.tty
    }
}

/// The client's side of a session, as the transport delivers it.
pub struct Channels {
    /// What the client types.
    pub stdin: Option<BoxRead>,
    /// The process's output.
    pub stdout: Option<BoxWrite>,
    /// The process's error output.
    pub stderr: Option<BoxWrite>,
    /// Terminal sizes, as a stream of JSON objects (v3+ with a TTY).
    pub resize: Option<BoxRead>,
    /// Where the outcome goes.
    pub error: BoxWrite,
    /// Resolves when the client's connection is gone.
    pub closed: futures_util::future::BoxFuture<'static, ()>,
}

/// How the process (or the attach session) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, or an attach session that ended normally.
    Success,
    /// A non-zero exit code.
    Exit(i32),
    /// It could not run, or the runtime failed.
    Failed(String),
}

/// The process side: its stdio and how to steer it.
pub struct Process {
    /// Its stdin, when the client sends one.
    pub stdin: Option<BoxWrite>,
    /// Its stdout (the terminal's output with a TTY).
    pub stdout: Option<BoxRead>,
    /// Its stderr (none with a TTY).
    pub stderr: Option<BoxRead>,
    /// Resize, wait, abort.
    pub control: Box<dyn Control>,
}

/// What the streaming server can ask of a running process.
#[tonic::async_trait]
pub trait Control: Send {
    /// The client's terminal has a new size.
    async fn resize(&self, width: u16, height: u16);
    /// The client closed its stdin (after the data was written).
    async fn stdin_closed(&self);
    /// Waits until the process has ended and its output was handed over.
    async fn wait(&mut self) -> Outcome;
    /// The client went away: end the process (exec) or detach (attach).
    async fn abort(&mut self);
}

/// The status written on the error stream for `outcome`, or `None` when
/// nothing is written (success before v4).
pub fn status_message(version: Version, outcome: &Outcome) -> Option<Vec<u8>> {
    if version >= Version::V4 {
        let status = match outcome {
            Outcome::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exit(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
            }),
        };
        return Some(status.to_string().into_bytes());
    }
    match outcome {
        Outcome::Success => None,
        Outcome::Exit(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(message) => Some(message.clone().into_bytes()),
    }
}

/// Resize events in a stream of JSON objects (`{"Width":80,"Height":24}`).
#[derive(Default)]
struct ResizeDecoder {
    buffer: Vec<u8>,
}

/// The longest resize message accepted (a client sending garbage must not
/// grow the buffer without bound).
const MAX_RESIZE_MESSAGE: usize = 4096;

impl ResizeDecoder {
    /// Feeds bytes; returns the complete sizes they finish.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(u16, u16)>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buffer).into_iter::<serde_json::Value>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(value)) => {
                    consumed = stream.byte_offset();
                    let dim = |k: &str| {
                        value
                            .get(k)
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|v| u16::try_from(v).ok())
                    };
                    match (dim("Width"), dim("Height")) {
                        (Some(w), Some(h)) => sizes.push((w, h)),
                        _ => return Err(format!("bad resize message {value}")),
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("bad resize message: {e}")),
                None => break,
            }
        }
        self.buffer.drain(..consumed);
        let blank = self
            .buffer
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.buffer.drain(..blank);
        if self.buffer.len() > MAX_RESIZE_MESSAGE {
            return Err("resize message too long".into());
        }
        Ok(sizes)
    }
}

/// Copies until EOF; `Ok(())` at EOF, `Err` when either side fails.
async fn pump(mut from: BoxRead, to: &mut BoxWrite) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// Runs a session: the client's stdin into the process, its output to the
/// client, resizes to the terminal; then the outcome on the error stream.
/// A client that leaves early aborts the process.
pub async fn serve(version: Version, channels: Channels, mut process: Process) {
    let Channels {
        stdin,
        stdout,
        stderr,
        resize,
        mut error,
        closed,
    } = channels;
    let control = &mut process.control;

    // Output: both copies must finish (the process side reaches EOF once
    // the process ended and its output was drained) before the status.
    let output = async {
        let copy = |from: Option<BoxRead>, to: Option<BoxWrite>| async move {
            match (from, to) {
                (Some(from), Some(mut to)) => {
                    let result = pump(from, &mut to).await;
                    let _ = to.shutdown().await;
                    result
                }
                // Nobody listens: drain, so the process is never blocked.
                (Some(mut from), None) => tokio::io::copy(&mut from, &mut tokio::io::sink())
                    .await
                    .map(|_| ()),
                (None, Some(mut to)) => {
                    let _ = to.shutdown().await;
                    Ok(())
                }
                (None, None) => Ok(()),
            }
        };
        let (out, err) = tokio::join!(
            copy(process.stdout.take(), stdout),
            copy(process.stderr.take(), stderr)
        );
        out.and(err)
    };

    // Input: stdin and resizes run until the client closes them; they never
    // hold the session open by themselves.
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(16);
    let (stdin_done_tx, mut stdin_done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let stdin_task = match (stdin, process.stdin.take()) {
        (Some(from), Some(mut to)) => Some(tokio::spawn(async move {
            let _ = pump(from, &mut to).await;
            let _ = to.shutdown().await;
            drop(to);
            let _ = stdin_done_tx.send(()).await;
        })),
        _ => None,
    };
    let resize_task = resize.map(|mut from| {
        tokio::spawn(async move {
            let mut decoder = ResizeDecoder::default();
            let mut buf = [0u8; 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match decoder.feed(&buf[..n]) {
                    Ok(sizes) => {
                        for size in sizes {
                            if resize_tx.send(size).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "resize stream ignored");
                        return;
                    }
                }
            }
        })
    });

    tokio::pin!(output);
    let mut closed = closed;
    let copied = loop {
        tokio::select! {
            result = &mut output => break result,
            () = &mut closed => break Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the client closed the connection",
            )),
            Some((w, h)) = resize_rx.recv() => control.resize(w, h).await,
            Some(()) = stdin_done_rx.recv() => control.stdin_closed().await,
        }
    };
    let outcome = match copied {
        Ok(()) => control.wait().await,
        Err(e) => {
            // The client is gone (a write to it failed): end the process.
            tracing::debug!(error = %e, "streaming client went away");
            control.abort().await;
            Outcome::Failed(format!("stream closed: {e}"))
        }
    };
    if let Some(task) = stdin_task {
        task.abort();
    }
    if let Some(task) = resize_task {
        task.abort();
    }
    if let Some(message) = status_message(version, &outcome) {
        let _ = error.write_all(&message).await;
    }
    let _ = error.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_statuses_decode_as_client_go_expects() {
        let ok = status_message(Version::V4, &Outcome::Success).expect("written");
        let ok: serde_json::Value = serde_json::from_slice(&ok).expect("json");
        assert_eq!(ok["status"], "Success");
        let exit = status_message(Version::V5, &Outcome::Exit(3)).expect("written");
        let exit: serde_json::Value = serde_json::from_slice(&exit).expect("json");
        assert_eq!(exit["status"], "Failure");
        assert_eq!(exit["reason"], "NonZeroExitCode");
        assert_eq!(exit["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(exit["details"]["causes"][0]["message"], "3");
        assert_eq!(status_message(Version::V3, &Outcome::Success), None);
        assert!(
            String::from_utf8(status_message(Version::V2, &Outcome::Exit(1)).expect("written"))
                .expect("text")
                .contains("non-zero exit code")
        );
    }

    #[test]
    fn resize_messages_split_anywhere() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.feed(b"{\"Width\":80,").expect("ok"), vec![]);
        assert_eq!(
            d.feed(b"\"Height\":24}{\"Width\":100,\"Height\":40}")
                .expect("ok"),
            vec![(80, 24), (100, 40)]
        );
        assert!(d.feed(b"{\"Width\":\"x\"}").is_err());
        let mut d = ResizeDecoder::default();
        assert!(
            d.feed(&[b' '; MAX_RESIZE_MESSAGE + 1]).is_ok(),
            "whitespace"
        );
        let mut d = ResizeDecoder::default();
        assert!(d.feed(&vec![b'['; MAX_RESIZE_MESSAGE + 1]).is_err());
    }

    struct Fake {
        exit: Outcome,
        events: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl Control for Fake {
        async fn resize(&self, w: u16, h: u16) {
            self.events
                .lock()
                .expect("lock")
                .push(format!("resize {w}x{h}"));
        }
        async fn stdin_closed(&self) {
            self.events
                .lock()
                .expect("lock")
                .push("stdin closed".into());
        }
        async fn wait(&mut self) -> Outcome {
            self.exit.clone()
        }
        async fn abort(&mut self) {
            self.events.lock().expect("lock").push("abort".into());
        }
    }

    #[tokio::test]
    async fn a_session_copies_both_ways_and_reports_the_exit() {
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Process side: its stdin is echoed to its stdout by a fake "cat".
        let (proc_stdin, mut cat_in) = tokio::io::duplex(64);
        let (mut cat_out, proc_stdout) = tokio::io::duplex(64);
        let cat = tokio::spawn(async move {
            tokio::io::copy(&mut cat_in, &mut cat_out)
                .await
                .expect("cat");
        });
        // Client side.
        let (client_stdin, stdin) = tokio::io::duplex(64);
        let (stdout, mut client_stdout) = tokio::io::duplex(64);
        let (error, mut client_error) = tokio::io::duplex(1024);
        let (client_resize, resize) = tokio::io::duplex(64);
        let channels = Channels {
            stdin: Some(Box::pin(stdin)),
            stdout: Some(Box::pin(stdout)),
            stderr: None,
            resize: Some(Box::pin(resize)),
            error: Box::pin(error),
            closed: Box::pin(std::future::pending()),
        };
        let process = Process {
            stdin: Some(Box::pin(proc_stdin)),
            stdout: Some(Box::pin(proc_stdout)),
            stderr: None,
            control: Box::new(Fake {
                exit: Outcome::Exit(7),
                events: events.clone(),
            }),
        };
        let session = tokio::spawn(serve(Version::V4, channels, process));
        let mut client_resize = client_resize;
        client_resize
            .write_all(b"{\"Width\":120,\"Height\":30}")
            .await
            .expect("resize");
        let mut client_stdin = client_stdin;
        client_stdin.write_all(b"hello\n").await.expect("stdin");
        drop(client_stdin);
        let mut out = Vec::new();
        client_stdout.read_to_end(&mut out).await.expect("stdout");
        assert_eq!(out, b"hello\n");
        let mut status = Vec::new();
        client_error.read_to_end(&mut status).await.expect("error");
        let status: serde_json::Value = serde_json::from_slice(&status).expect("json");
        assert_eq!(status["details"]["causes"][0]["message"], "7");
        session.await.expect("session");
        cat.await.expect("cat");
        let events = events.lock().expect("lock").clone();
        assert!(!events.contains(&"abort".to_string()), "{events:?}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_aborts_the_process() {
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut producer, proc_stdout) = tokio::io::duplex(64);
        let (stdout, client_stdout) = tokio::io::duplex(64);
        let (error, _client_error) = tokio::io::duplex(1024);
        drop(client_stdout);
        let channels = Channels {
            stdin: None,
            stdout: Some(Box::pin(stdout)),
            stderr: None,
            resize: None,
            error: Box::pin(error),
            closed: Box::pin(std::future::pending()),
        };
        let process = Process {
            stdin: None,
            stdout: Some(Box::pin(proc_stdout)),
            stderr: None,
            control: Box::new(Fake {
                exit: Outcome::Success,
                events: events.clone(),
            }),
        };
        let session = tokio::spawn(serve(Version::V4, channels, process));
        // The process keeps writing; the session ends anyway.
        let writer =
            tokio::spawn(async move { while producer.write_all(b"output\n").await.is_ok() {} });
        tokio::time::timeout(std::time::Duration::from_secs(5), session)
            .await
            .expect("the session ends")
            .expect("session");
        writer.abort();
        assert_eq!(
            events.lock().expect("lock").clone(),
            vec!["abort".to_string()]
        );
    }
}
