//! The CRI gRPC façade: unpacks each request, calls the domain, packs the
//! reply. It holds no logic of its own.
//!
//! Every RPC goes through [`traced`] (span, failure log, latency and code
//! metrics), and domain errors become `tonic::Status` codes in exactly one
//! place, [`status`].

mod container;
mod image_service;
mod pod_metrics;
mod runtime_service;
mod sandbox;
mod socket;
mod stats;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use berth_cri_proto::v1::image_service_server::ImageServiceServer;
use berth_cri_proto::v1::runtime_service_server::RuntimeServiceServer;
use tonic::{Response, Status};
use tracing::Instrument;

pub use socket::{SocketError, bind_socket};
pub use status::IntoStatus;

use crate::daemon::Daemon;

/// The name berthd reports as `runtime_name`.
pub const RUNTIME_NAME: &str = "berth";
/// The CRI API version berthd serves.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet runtime API version (VersionResponse.version): always 0.1.0.
pub const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";

/// A server-streaming RPC's reply stream.
pub type ReplyStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// The RuntimeService implementation.
#[derive(Clone)]
pub struct RuntimeApi {
    daemon: Arc<Daemon>,
}

/// The ImageService implementation.
#[derive(Clone)]
pub struct ImageApi {
    daemon: Arc<Daemon>,
}

/// Both CRI services for `daemon`, with the configured message size limits.
pub fn services(
    daemon: Arc<Daemon>,
) -> (
    RuntimeServiceServer<RuntimeApi>,
    ImageServiceServer<ImageApi>,
) {
    let grpc = &daemon.config().grpc;
    let (recv, send) = (grpc.max_recv_message_size, grpc.max_send_message_size);
    let runtime = RuntimeServiceServer::new(RuntimeApi {
        daemon: daemon.clone(),
    })
    .max_decoding_message_size(recv)
    .max_encoding_message_size(send);
    let image = ImageServiceServer::new(ImageApi { daemon })
        .max_decoding_message_size(recv)
        .max_encoding_message_size(send);
    (runtime, image)
}

/// Runs one RPC inside a span named after it, logs its outcome and latency,
/// records both in [`crate::metrics::CRI`] (a call dropped before it
/// answers counts as `Canceled`), and wraps the reply.
async fn traced<T>(
    rpc: &'static str,
    body: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::debug_span!("rpc", rpc);
    async move {
        let timer = crate::metrics::CRI.timer(rpc);
        let result = body.await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        let micros = timer.finish(code).as_micros() as u64;
        match &result {
            Ok(_) => tracing::debug!(micros, "ok"),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {
                tracing::debug!(micros, code = ?s.code(), message = s.message(), "failed")
            }
            Err(s) => {
                tracing::warn!(rpc, micros, code = ?s.code(), message = s.message(), "failed")
            }
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

/// Items of a streaming list RPC per message: small enough that a message
/// stays far below the 16 MiB limit whatever the objects hold.
const STREAM_BATCH: usize = 256;

/// A streaming list reply: `items` in messages of [`STREAM_BATCH`], made by
/// `wrap`; one empty message when there is nothing.
fn batches<T: Send + 'static, M: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> M + Send + 'static,
) -> ReplyStream<M> {
    let mut messages = Vec::new();
    let mut items = items.into_iter().peekable();
    loop {
        let batch: Vec<T> = items.by_ref().take(STREAM_BATCH).collect();
        let last = items.peek().is_none();
        messages.push(Ok(wrap(batch)));
        if last {
            break;
        }
    }
    Box::pin(tokio_stream::iter(messages))
}
