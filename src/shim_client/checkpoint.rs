//! Checkpointing a task through its shim: the Task API's `Checkpoint` with
//! containerd's runc checkpoint options ([`CheckpointOptions`]); restoring
//! one is `Create` with the checkpoint's images
//! ([`ShimClient::create_restored`]).

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use ttrpc::context;

use super::{CreateTask, ShimClient, ShimClientError, TaskIo, create_request};

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

    /// Creates the task by restoring it from the CRIU images in `images`
    /// (`runc restore`): its init runs once this returns; [`Self::start`]
    /// then only marks it running. `io` must be what the checkpointed
    /// container had. The call may take `timeout`.
    pub async fn create_restored(
        &self,
        task: &CreateTask,
        io: TaskIo,
        images: &Path,
        timeout: Duration,
    ) -> Result<u32, ShimClientError> {
        let mut req = create_request(task, io);
        req.checkpoint = images.to_string_lossy().into_owned();
        let ctx = context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
        Ok(self.task.create(ctx, &req).await?.pid)
    }
}
