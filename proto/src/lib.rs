//! The CRI `runtime.v1` wire types and gRPC service stubs, generated from
//! `cri.proto` (pinned to k8s.io/cri-api v0.36.3).
//!
//! Server and client stubs are both generated: berthd serves
//! `RuntimeService` and `ImageService`, and the integration tests and
//! benchmarks talk to it through the clients.

/// `package runtime.v1`.
pub mod runtime {
    /// CRI version 1.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;
