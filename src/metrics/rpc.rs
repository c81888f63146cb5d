//! Per-RPC figures of the CRI server: a latency histogram per method and a
//! count per method and gRPC code, in fixed tables of atomics indexed by
//! the method's place in [`METHODS`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::exposition::{Exposition, Kind, Value};
use super::histogram::Histogram;

/// Every RPC of the CRI (RuntimeService and ImageService of the pinned
/// cri-api), sorted so a name is found by binary search.
pub const METHODS: [&str; 41] = [
    "Attach",
    "CheckpointContainer",
    "ContainerStats",
    "ContainerStatus",
    "CreateContainer",
    "Exec",
    "ExecSync",
    "GetContainerEvents",
    "ImageFsInfo",
    "ImageStatus",
    "ListContainerStats",
    "ListContainers",
    "ListImages",
    "ListMetricDescriptors",
    "ListPodSandbox",
    "ListPodSandboxMetrics",
    "ListPodSandboxStats",
    "PodSandboxStats",
    "PodSandboxStatus",
    "PortForward",
    "PullImage",
    "RemoveContainer",
    "RemoveImage",
    "RemovePodSandbox",
    "ReopenContainerLog",
    "RunPodSandbox",
    "RuntimeConfig",
    "StartContainer",
    "Status",
    "StopContainer",
    "StopPodSandbox",
    "StreamContainerStats",
    "StreamContainers",
    "StreamImages",
    "StreamPodSandboxMetrics",
    "StreamPodSandboxStats",
    "StreamPodSandboxes",
    "UpdateContainerResources",
    "UpdatePodSandboxResources",
    "UpdateRuntimeConfig",
    "Version",
];

/// gRPC status codes by number, named as grpc-go names them (and so as
/// the `grpc_code` label of Go exporters reads).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Histogram name of the RPC latencies.
pub const DURATION: &str = "berth_cri_request_duration_seconds";
/// Counter name of the finished RPCs.
pub const REQUESTS: &str = "berth_cri_requests_total";

/// The figures of one method.
#[derive(Debug)]
struct MethodMetrics {
    latency: Histogram,
    codes: [AtomicU64; CODE_NAMES.len()],
}

impl MethodMetrics {
    const fn new() -> Self {
        Self {
            latency: Histogram::new(),
            codes: [const { AtomicU64::new(0) }; CODE_NAMES.len()],
        }
    }
}

/// The figures of every CRI method (see [`record`](CriMetrics::record)).
#[derive(Debug)]
pub struct CriMetrics {
    methods: [MethodMetrics; METHODS.len()],
    /// A method missing from [`METHODS`] (a newer cri-api): counted
    /// rather than lost, as `method="unknown"`.
    unknown: MethodMetrics,
}

impl CriMetrics {
    /// Empty tables (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            methods: [const { MethodMetrics::new() }; METHODS.len()],
            unknown: MethodMetrics::new(),
        }
    }

    /// Records one finished RPC: how long it took and the code it answered.
    pub fn record(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let m = match METHODS.binary_search(&method) {
            Ok(i) => &self.methods[i],
            Err(_) => &self.unknown,
        };
        m.latency.observe(elapsed);
        // tonic's codes are 0..=16; anything else would be a bug there.
        let code = usize::try_from(code as i32)
            .ok()
            .filter(|c| *c < CODE_NAMES.len())
            .unwrap_or(2); // Unknown
        m.codes[code].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts timing one call of `method`: record its answer with
    /// [`RpcTimer::finish`]; a call dropped before it answers (the client
    /// went away, berthd is stopping) is recorded as `Canceled`.
    pub fn timer(&'static self, method: &'static str) -> RpcTimer {
        RpcTimer {
            metrics: self,
            method,
            start: Instant::now(),
            finished: false,
        }
    }

    /// How many calls of `method` answered `code` so far.
    pub fn count(&self, method: &str, code: tonic::Code) -> u64 {
        let Ok(i) = METHODS.binary_search(&method) else {
            return 0;
        };
        usize::try_from(code as i32)
            .ok()
            .and_then(|c| self.methods[i].codes.get(c))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Both families. Methods never called and codes never answered are
    /// left out, so a scrape stays short.
    pub fn write(&self, e: &mut Exposition) {
        let called: Vec<(&str, &MethodMetrics)> = METHODS
            .iter()
            .copied()
            .zip(&self.methods)
            .chain(std::iter::once(("unknown", &self.unknown)))
            .filter(|(_, m)| m.latency.count() > 0)
            .collect();
        e.family(
            DURATION,
            "Time CRI requests took, from receipt to reply, by method.",
            Kind::Histogram,
        );
        for (name, m) in &called {
            e.histogram(DURATION, &[("method", name)], &m.latency.snapshot());
        }
        e.family(
            REQUESTS,
            "CRI requests answered, by method and gRPC status code.",
            Kind::Counter,
        );
        for (name, m) in &called {
            for (code, count) in CODE_NAMES.iter().zip(&m.codes) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    e.sample(
                        REQUESTS,
                        &[("method", name), ("code", code)],
                        Value::Int(count),
                    );
                }
            }
        }
    }
}

/// One call being timed (see [`CriMetrics::timer`]).
#[derive(Debug)]
pub struct RpcTimer {
    metrics: &'static CriMetrics,
    method: &'static str,
    start: Instant,
    finished: bool,
}

impl RpcTimer {
    /// Records the call's answer; returns how long it took.
    pub fn finish(mut self, code: tonic::Code) -> Duration {
        self.finished = true;
        let elapsed = self.start.elapsed();
        self.metrics.record(self.method, code, elapsed);
        elapsed
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        if !self.finished {
            let elapsed = self.start.elapsed();
            self.metrics
                .record(self.method, tonic::Code::Cancelled, elapsed);
        }
    }
}

impl Default for CriMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_sorted_and_unique() {
        assert!(METHODS.windows(2).all(|w| w[0] < w[1]), "{METHODS:?}");
    }

    #[test]
    fn methods_are_the_rpcs_of_the_proto() {
        let proto = include_str!("../../proto/cri.proto");
        let mut rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        rpcs.sort_unstable();
        assert_eq!(rpcs, METHODS);
    }

    #[test]
    fn every_traced_rpc_is_a_method() {
        for source in [
            include_str!("../cri/runtime_service.rs"),
            include_str!("../cri/image_service.rs"),
        ] {
            for part in source.split("traced(").skip(1) {
                let name = part
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|p| p.split('"').next())
                    .expect("traced(\"Name\", ...)");
                assert!(METHODS.contains(&name), "{name} is not in METHODS");
            }
        }
    }

    #[test]
    fn codes_are_tonics_numbers() {
        use tonic::Code;
        for (i, code) in [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(code as i32 as usize, i, "{}", CODE_NAMES[i]);
        }
    }

    #[test]
    fn records_and_writes_only_what_was_called() {
        let m = CriMetrics::new();
        m.record("Version", tonic::Code::Ok, Duration::from_micros(200));
        m.record("Version", tonic::Code::Ok, Duration::from_millis(2));
        m.record("PullImage", tonic::Code::NotFound, Duration::from_secs(3));
        m.record("NoSuchRpc", tonic::Code::Ok, Duration::from_millis(1));
        assert_eq!(m.count("Version", tonic::Code::Ok), 2);
        assert_eq!(m.count("PullImage", tonic::Code::NotFound), 1);
        assert_eq!(m.count("PullImage", tonic::Code::Ok), 0);

        let mut e = Exposition::new();
        m.write(&mut e);
        let text = e.finish();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has("berth_cri_request_duration_seconds_count{method=\"Version\"} 2"),
            "{text}"
        );
        assert!(
            has("berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            has("berth_cri_request_duration_seconds_bucket{method=\"PullImage\",le=\"2.5\"} 0"),
            "{text}"
        );
        assert!(
            has("berth_cri_request_duration_seconds_bucket{method=\"PullImage\",le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            has("berth_cri_requests_total{method=\"Version\",code=\"OK\"} 2"),
            "{text}"
        );
        assert!(
            has("berth_cri_requests_total{method=\"PullImage\",code=\"NotFound\"} 1"),
            "{text}"
        );
        assert!(
            has("berth_cri_requests_total{method=\"unknown\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(!text.contains("method=\"Status\""), "never called: {text}");
        assert!(
            !text.contains("code=\"Internal\""),
            "never answered: {text}"
        );
    }

    #[test]
    fn a_call_dropped_before_it_answers_is_canceled() {
        static M: CriMetrics = CriMetrics::new();
        let timer = M.timer("PullImage");
        let elapsed = timer.finish(tonic::Code::Ok);
        assert!(elapsed < Duration::from_secs(5));
        drop(M.timer("PullImage"));
        assert_eq!(M.count("PullImage", tonic::Code::Ok), 1);
        assert_eq!(M.count("PullImage", tonic::Code::Cancelled), 1);
        let mut e = Exposition::new();
        M.write(&mut e);
        let text = e.finish();
        assert!(
            text.contains("berth_cri_requests_total{method=\"PullImage\",code=\"Canceled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_cri_request_duration_seconds_count{method=\"PullImage\"} 2"),
            "{text}"
        );
    }
}
