//! The HTTP side: one listener (hyper, HTTP/1.1), one path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, Inventory};

/// Scrapes served at once; more connections wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `metrics.address` is not IP:PORT or cannot be listened on.
    #[error("metrics.address {address:?}: cannot listen: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `address` (IP:PORT) and serves `GET /metrics`, the node
    /// gauges taken from `inventory` at each scrape.
    pub async fn start(address: &str, inventory: Arc<dyn Inventory>) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind {
            address: address.to_string(),
            source,
        };
        let parsed: SocketAddr = address
            .parse()
            .map_err(|e| bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = TcpListener::bind(parsed).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let task = tokio::spawn(run(listener, inventory));
        tracing::info!(address = %local, "metrics endpoint listening on /metrics");
        Ok(Self { local, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(listener: TcpListener, inventory: Arc<dyn Inventory>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inventory = inventory.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let inventory = inventory.clone();
                async move { Ok::<_, Infallible>(handle(&req, inventory).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn handle(req: &Request<Incoming>, inventory: Arc<dyn Inventory>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: berthd serves metrics on /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} not allowed: use GET\n", req.method()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // The stores and /proc are read on a blocking thread.
    let counts = tokio::task::spawn_blocking(move || inventory.counts()).await;
    let counts = match counts {
        Ok(Ok(counts)) => Some(counts),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics scrape without node counts");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape: counting failed");
            None
        }
    };
    let mut response = reply(StatusCode::OK, super::render(counts.as_ref()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::NodeCounts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed;

    impl Inventory for Fixed {
        fn counts(&self) -> Result<NodeCounts, String> {
            Ok(NodeCounts {
                pods: vec![("ready", 7)],
                containers: vec![],
                images: 1,
                shims_running: 0,
            })
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read reply");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let server = MetricsServer::start("127.0.0.1:0", Arc::new(Fixed))
            .await
            .expect("start");
        let addr = server.local_addr();
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{ok}"
        );
        assert!(ok.contains("\nberth_pods{state=\"ready\"} 7\n"), "{ok}");

        let missing = get(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("addr").to_string();
        let err = MetricsServer::start(&address, Arc::new(Fixed))
            .await
            .expect_err("address in use");
        let msg = err.to_string();
        assert!(msg.contains("metrics.address"), "{msg}");
        assert!(msg.contains(&address), "{msg}");
    }
}
