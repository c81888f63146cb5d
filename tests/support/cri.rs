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

/// The `NAME=unix:///path` arguments of a benchmark (a bare endpoint is
/// named after itself); the usage line, naming `bench`, when there is none.
pub fn endpoints_from_args(bench: &str) -> Option<Vec<(String, String)>> {
    let endpoints: Vec<(String, String)> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| match a.split_once('=') {
            Some((name, endpoint)) => (name.to_string(), endpoint.to_string()),
            None => (a.clone(), a),
        })
        .collect();
    if endpoints.is_empty() {
        eprintln!("usage: cargo bench --bench {bench} -- NAME=unix:///path/to.sock ...");
        return None;
    }
    Some(endpoints)
}

/// The `p` quantile (0..=1) of `samples`, in milliseconds with one
/// decimal (benchmarks).
pub fn percentile_ms(samples: &mut [std::time::Duration], p: f64) -> String {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.1}", samples[i].as_secs_f64() * 1000.0)
}

/// A number from the environment variable `name`, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Stops and removes pod `id`, ignoring errors (benchmark clean-up; the
/// pod's containers go with it).
pub async fn remove_pod_quietly(
    rt: &mut berth_cri_proto::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    id: &str,
) {
    let _ = rt
        .stop_pod_sandbox(berth_cri_proto::v1::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(berth_cri_proto::v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
}
