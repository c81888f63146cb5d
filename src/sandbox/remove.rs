//! RemovePodSandbox: stop the sandbox if it still runs, then remove its
//! files, record and name. Idempotent: an unknown id is success.

use super::{SandboxError, Sandboxes};

impl Sandboxes {
    /// Removes the sandbox `id` (full id or unique prefix) and everything
    /// it holds.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let entry = match self.find(id) {
            Ok(entry) => entry,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&entry.record().id).await?;
        let _op = entry.op.lock().await;
        let record = entry.record();
        self.teardown(&record).await;
        self.forget(&record);
        self.lifecycle
            .publish(&record.id, &record.id, crate::events::Lifecycle::Deleted);
        tracing::info!(sandbox = %record.id, pod = %record.name, "pod sandbox removed");
        Ok(())
    }
}
