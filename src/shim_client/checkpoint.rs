//! Checkpointing a task through its shim: the Task API's `Checkpoint` with
//! containerd's runc checkpoint options ([`CheckpointOptions`]).

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use ttrpc::context;

use super::{ShimClient, ShimClientError};

pub use berth_shim::checkpoint::CheckpointOptions;

impl ShimClient {
    /// Dumps the running task `id` with CRIU into `image_path` (the
    /// options say where CRIU's log goes and whether the task keeps
    /// running). The call may take `timeout`: a dump writes every memory
    /// page of the container.
    pub async fn checkpoint(
        &self,
        id: &str,
        image_path: &Path,
        options: &CheckpointOptions,
        timeout: Duration,
    ) -> Result<(), ShimClientError> {
        let mut req = api::CheckpointTaskRequest::new();
        req.id = id.to_owned();
        req.path = image_path.to_string_lossy().into_owned();
        req.options = MessageField::some(options.to_any());
        let ctx = context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
        self.task.checkpoint(ctx, &req).await?;
        Ok(())
    }
}
