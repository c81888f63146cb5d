//! The HTTP side: one listener (hyper, HTTP/1.1), three paths
//! (`/exec/<token>`, `/attach/<token>`, `/portforward/<token>`), and the
//! upgrade handshakes: SPDY/3.1 with `X-Stream-Protocol-Version`
//! negotiation, or WebSocket with subprotocol negotiation.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::idle::IdleTimeout;
use super::remotecommand::{self, Version};
use super::websocket::{self, ChannelProtocol};
use super::{Pending, Shared, portforward, spdy_channels};

/// The SPDY port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The header SPDY clients offer protocol versions in.
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

type Body = Full<Bytes>;

fn reply(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())));
    *response.status_mut() = status;
    response
}

/// Every value of header `name`, split at commas, trimmed.
fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that the server speaks.
fn negotiate<'a>(offered: &[&'a str], supported: &[&str]) -> Option<&'a str> {
    offered.iter().copied().find(|p| supported.contains(p))
}

/// Accepts connections until the listener fails; each connection is served
/// on its own task.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, shared).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "streaming connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return reply(StatusCode::NOT_FOUND, "not found");
    }
    // Single use: taken now, whatever happens next.
    let Some(pending) = shared.tokens.take(token) else {
        return reply(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token",
        );
    };
    let expected = match &pending {
        Pending::Exec(_) => "exec",
        Pending::Attach(_) => "attach",
        Pending::PortForward(_) => "portforward",
    };
    if kind != expected {
        return reply(StatusCode::NOT_FOUND, "token issued for another request");
    }
    let headers = req.headers();
    let upgrade = header_values(headers, "upgrade");
    let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
    let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    if websocket {
        websocket_upgrade(req, pending, shared)
    } else if spdy {
        spdy_upgrade(req, pending, shared)
    } else {
        reply(
            StatusCode::BAD_REQUEST,
            "expected an upgrade to SPDY/3.1 or websocket",
        )
    }
}

fn forbidden_protocols(offered: &[&str], supported: &[&str]) -> Response<Body> {
    let mut response = reply(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
        ),
    );
    for p in supported {
        if let Ok(v) = HeaderValue::from_str(p) {
            response
                .headers_mut()
                .append("x-accepted-stream-protocol-versions", v);
        }
    }
    response
}

fn spdy_upgrade(
    mut req: Request<Incoming>,
    pending: Pending,
    shared: Arc<Shared>,
) -> Response<Body> {
    let offered = header_values(req.headers(), STREAM_PROTOCOL_HEADER);
    let supported: &[&str] = match &pending {
        Pending::PortForward(_) => &[PORT_FORWARD_PROTOCOL],
        _ => &remotecommand::PROTOCOLS,
    };
    // A client that offers nothing gets the oldest protocol, as the kubelet
    // does.
    let chosen = if offered.is_empty() {
        None
    } else {
        match negotiate(&offered, supported) {
            Some(p) => Some(p.to_string()),
            None => return forbidden_protocols(&offered, supported),
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let negotiated = chosen.clone();
    tokio::spawn(async move {
        let chosen = negotiated;
        let upgraded = match on_upgrade.await {
            Ok(u) => IdleTimeout::new(TokioIo::new(u), shared.config.idle_timeout),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        match pending {
            Pending::PortForward(request) => {
                portforward::serve_spdy(upgraded, request, shared).await;
            }
            Pending::Exec(_) | Pending::Attach(_) => {
                let version = chosen
                    .as_deref()
                    .and_then(Version::from_name)
                    .unwrap_or(Version::V1);
                spdy_channels::serve_remote_command(upgraded, version, pending, shared).await;
            }
        }
    });
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
    if let Some(p) = chosen.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(STREAM_PROTOCOL_HEADER, p);
    }
    response
}

fn websocket_upgrade(
    mut req: Request<Incoming>,
    pending: Pending,
    shared: Arc<Shared>,
) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let offered = header_values(req.headers(), "sec-websocket-protocol");
    let supported: &[&str] = match &pending {
        Pending::PortForward(_) => &[websocket::SPDY_TUNNEL_PROTOCOL],
        _ => &websocket::PROTOCOLS,
    };
    let Some(chosen) = negotiate(&offered, supported).map(str::to_string) else {
        return forbidden_protocols(&offered, supported);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let protocol = chosen.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => IdleTimeout::new(TokioIo::new(u), shared.config.idle_timeout),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
        match pending {
            Pending::PortForward(request) => {
                let tunnel = websocket::byte_stream(ws);
                portforward::serve_spdy(tunnel, request, shared).await;
            }
            Pending::Exec(request) => {
                let Some(protocol) = ChannelProtocol::from_name(&protocol) else {
                    return;
                };
                let channels = websocket::channels(ws, protocol, request.options);
                super::run_exec(channels, protocol.version, request, shared).await;
            }
            Pending::Attach(request) => {
                let Some(protocol) = ChannelProtocol::from_name(&protocol) else {
                    return;
                };
                let channels = websocket::channels(ws, protocol, request.options);
                super::run_attach(channels, protocol.version, request, shared).await;
            }
        }
    });
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Ok(p) = HeaderValue::from_str(&chosen) {
        h.insert("sec-websocket-protocol", p);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_order() {
        let mut headers = HeaderMap::new();
        headers.append(
            STREAM_PROTOCOL_HEADER,
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        headers.append(
            STREAM_PROTOCOL_HEADER,
            HeaderValue::from_static("v4.channel.k8s.io, v3.channel.k8s.io"),
        );
        let offered = header_values(&headers, STREAM_PROTOCOL_HEADER);
        assert_eq!(
            offered,
            [
                "v9.channel.k8s.io",
                "v4.channel.k8s.io",
                "v3.channel.k8s.io"
            ]
        );
        assert_eq!(
            negotiate(&offered, &remotecommand::PROTOCOLS),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(&offered, &[PORT_FORWARD_PROTOCOL]), None);
    }
}
