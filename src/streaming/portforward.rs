//! Port-forward over SPDY (`portforward.k8s.io`): for every connection the
//! client forwards it opens an `error` and a `data` stream with the same
//! `requestID` and the pod's `port`; berthd connects to that port on the
//! pod's loopback and copies bytes both ways until either side is done,
//! reporting a failure as text on the error stream. Over WebSocket the same
//! SPDY session runs in a byte tunnel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{PortForwardRequest, Shared, spdy};

/// How long the second stream of a pair may take to arrive.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// One forwarded connection's streams, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<spdy::Stream>,
    data: Option<spdy::Stream>,
    port: Option<u16>,
}

/// The request a stream belongs to: its `requestID`, or for old clients
/// that send none, derived from the stream id (data follows error by 2).
fn request_id(stream: &spdy::Stream, kind: &str) -> String {
    match stream.header("requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => match kind {
            "data" => stream.id().saturating_sub(2).to_string(),
            _ => stream.id().to_string(),
        },
    }
}

/// Parses the `port` header: 1..=65535.
pub fn parse_port(value: Option<&str>) -> Result<u16, String> {
    let value = value.ok_or_else(|| "the port header is missing".to_string())?;
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "port {} is not a TCP port",
            crate::input::quoted(value)
        )),
        Ok(port) => Ok(port),
    }
}

/// Serves one port-forward connection until the client closes it.
pub async fn serve_spdy<IO>(io: IO, request: PortForwardRequest, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (session, mut incoming) = spdy::serve(io);
    let mut forwards = tokio::task::JoinSet::new();
    let mut pairs: HashMap<String, (tokio::time::Instant, Pair)> = HashMap::new();
    // The connection's idle timeout (see `idle`) ends an unused session.
    while let Some(stream) = incoming.accept().await {
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        if kind != "error" && kind != "data" {
            stream.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        }
        let id = request_id(&stream, &kind);
        let port = parse_port(stream.header("port"));
        pairs.retain(|_, (at, _)| at.elapsed() < PAIR_TIMEOUT);
        let (_, pair) = pairs
            .entry(id.clone())
            .or_insert_with(|| (tokio::time::Instant::now(), Pair::default()));
        let duplicate = match kind.as_str() {
            "error" => pair.error.replace(stream).is_some(),
            _ => pair.data.replace(stream).is_some(),
        };
        if duplicate {
            tracing::debug!(request = %id, "duplicate port-forward stream");
        }
        match port {
            Ok(port) => pair.port = Some(port),
            Err(message) => {
                // Say why on the error stream (if it is here), end the pair.
                if let Some((_, pair)) = pairs.remove(&id) {
                    if let Some(mut error) = pair.error {
                        tokio::spawn(async move {
                            let _ = error.write_all(message.as_bytes()).await;
                            let _ = error.shutdown().await;
                        });
                    }
                    if let Some(data) = pair.data {
                        data.reset(spdy::RstStatus::PROTOCOL_ERROR);
                    }
                }
                continue;
            }
        }
        let complete = pair.error.is_some() && pair.data.is_some();
        if complete && let Some((_, pair)) = pairs.remove(&id) {
            let (Some(error), Some(data), Some(port)) = (pair.error, pair.data, pair.port) else {
                continue;
            };
            let shared = shared.clone();
            let sandbox = request.sandbox_id.clone();
            forwards.spawn(forward(shared, sandbox, port, error, data));
        }
        // Reap finished forwards as we go.
        while forwards.try_join_next().is_some() {}
    }
    // The client sent GOAWAY or left: connections in flight finish first.
    while forwards.join_next().await.is_some() {}
    session.close().await;
}

/// Copies between one data stream and a new connection to `port`.
async fn forward(
    shared: Arc<Shared>,
    sandbox: String,
    port: u16,
    mut error: spdy::Stream,
    data: spdy::Stream,
) {
    let tcp = match shared.backend.port_forward(&sandbox, port).await {
        Ok(tcp) => tcp,
        Err(message) => {
            let text = format!("error forwarding port {port} to pod {sandbox}: {message}");
            tracing::debug!(%text);
            let _ = error.write_all(text.as_bytes()).await;
            let _ = error.shutdown().await;
            data.reset(spdy::RstStatus::CANCEL);
            return;
        }
    };
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut data_read, mut data_write) = tokio::io::split(data);
    let to_pod = async {
        let result = tokio::io::copy(&mut data_read, &mut tcp_write).await;
        let _ = tcp_write.shutdown().await;
        result
    };
    let from_pod = async {
        let result = tokio::io::copy(&mut tcp_read, &mut data_write).await;
        let _ = data_write.shutdown().await;
        result
    };
    let (to, from) = tokio::join!(to_pod, from_pod);
    if let Err(e) = to.and(from) {
        tracing::debug!(port, error = %e, "port-forward connection ended with an error");
    }
    let _ = error.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(parse_port(Some("8080")), Ok(8080));
        assert!(parse_port(Some("0")).is_err());
        assert!(parse_port(Some("65536")).is_err());
        assert!(parse_port(Some("http")).is_err());
        assert!(parse_port(None).is_err());
    }
}
