//! StopPodSandbox: tear down the network and stop the pause process; the
//! sandbox stays listed as NotReady until it is removed. Idempotent: an
//! unknown id or a stopped sandbox is success.

use super::record::SandboxState;
use super::{SandboxError, Sandboxes, pause};

impl Sandboxes {
    /// Stops the sandbox `id` (full id or unique prefix).
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let entry = match self.find(id) {
            Ok(entry) => entry,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        let mut record = entry.record();
        let was_ready = record.state == SandboxState::Ready;
        if record.network_attached {
            self.detach_network(&record).await?;
            record.network_attached = false;
            record.ips.clear();
            self.save(&entry, record.clone())?;
        }
        if let Some(p) = record.pause {
            pause::stop(&record, &p).await;
            record.pause = None;
        }
        pause::unpin(&record.state_dir)
            .map_err(|e| SandboxError::Pause(format!("removing namespace pins: {e}")))?;
        let id = record.id.clone();
        record.state = SandboxState::NotReady;
        self.save(&entry, record)?;
        if was_ready {
            tracing::info!(sandbox = %id, "pod sandbox stopped");
            self.lifecycle
                .publish(&id, &id, crate::events::Lifecycle::Stopped);
        }
        Ok(())
    }
}
