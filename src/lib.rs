//! berthd: a Kubernetes container runtime that serves the CRI over gRPC on a
//! unix socket.
//!
//! This file is the map of the daemon (DESIGN.md section 7). Requests enter
//! through [`cri`], a thin façade over the lifecycle modules; those use the
//! stores and services below them. Pods and containers are run by
//! `berth-shim` processes (the `shim/` crate), never by berthd itself, so
//! berthd can stop or crash while every workload keeps running.

pub mod config;
pub mod content;
pub mod cri;
pub mod daemon;
pub mod image;
pub mod input;
pub mod network;
pub mod registry;
pub mod snapshot;
pub mod store;

/// berthd's version, reported as the CRI `runtime_version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
