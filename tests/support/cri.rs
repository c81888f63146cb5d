//! A tonic channel to any CRI unix socket (berthd's, containerd's, ...).

use tonic::transport::{Channel, Endpoint};

/// Connects to `endpoint`: `unix:///path/to.sock` or a plain path.
pub async fn channel(endpoint: &str) -> Channel {
    let path = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string();
    Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}
