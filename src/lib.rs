//! berthd: a Kubernetes container runtime that serves the CRI over gRPC on a
//! unix socket.
//!
//! This file is the map of the daemon (DESIGN.md section 7). Requests enter
//! through [`cri`], a thin façade over the lifecycle modules ([`image`],
//! [`sandbox`]); those use the stores and services below them ([`store`],
//! [`content`], [`snapshot`], [`registry`], [`network`], [`cgroup`]). Pods
//! and containers are run by processes berthd starts detached (the pause
//! process, `berth-shim`), never by berthd itself, so berthd can stop or
//! crash while every workload keeps running.

/// cgroups of pods: create, join, remove; v1 and v2.
pub mod cgroup;
/// CRI timestamps: nanoseconds since the epoch.
pub mod clock;
/// Configuration: defaults, the TOML file, validation.
pub mod config;
/// Containers: the OCI runtime spec built from the CRI and image configs.
pub mod container;
/// Blobs by digest (manifests, configs), written only once verified.
pub mod content;
/// The CRI gRPC façade, the socket, and the error → status mapping.
pub mod cri;
/// The berthd process: opening the stores, serving, stopping.
pub mod daemon;
/// Task events published by the shims (containerd's events ttrpc service).
pub mod events;
/// Object ids: random hex, lookup by unique prefix.
pub mod id;
/// Images: pull, list, status, remove, garbage collection.
pub mod image;
/// Helpers for checking and quoting what callers send.
pub mod input;
/// The Prometheus endpoint: per-RPC latencies and codes, node counts,
/// pull bytes, berthd's memory.
pub mod metrics;
/// Pod networking through CNI plugins.
pub mod network;
/// Registry access: references, mirrors, auth, verified downloads.
pub mod registry;
/// Pod sandboxes: pause process, namespaces, network, files.
pub mod sandbox;
/// Client of the per-container and per-sandbox shims (shim v2 Task API
/// over ttrpc): start, connect, typed task calls, the recorded exit file.
pub mod shim_client;
/// Unpacked layers keyed by chain id, shared between images.
pub mod snapshot;
/// Resource usage of pods and containers: cgroup cpu, memory and pressure
/// (v1 and v2), cpu rates, writable-layer disk usage, network counters.
pub mod stats;
/// The metadata store (redb): records that survive restarts.
pub mod store;
/// The streaming server: exec, attach and port-forward over SPDY/3.1 and
/// WebSocket.
pub mod streaming;
/// The only unsafe code: mount system calls without a safe wrapper.
pub mod sys;

/// berthd's version, reported as the CRI `runtime_version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
