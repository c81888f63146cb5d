//! PodSandboxStatus and ListPodSandbox: a sandbox's state as it is now (a
//! pause process that died makes it NotReady at once).

use std::collections::BTreeMap;

use super::{Entry, SandboxError, SandboxRecord, SandboxState, Sandboxes, pause};

/// ListPodSandbox's filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    /// Id or id prefix.
    pub id: Option<String>,
    /// State.
    pub state: Option<SandboxState>,
    /// Labels that must all be present with these values.
    pub labels: BTreeMap<String, String>,
}

impl SandboxFilter {
    fn matches(&self, record: &SandboxRecord) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| record.id.starts_with(id.as_str()))
            && self.state.is_none_or(|s| s == record.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| record.labels.get(k) == Some(v))
    }
}

impl Sandboxes {
    /// The sandbox's record with its current state.
    pub fn status(&self, id: &str) -> Result<SandboxRecord, SandboxError> {
        let entry = self.find(id)?;
        self.refresh(&entry)
    }

    /// A shim reported that sandbox `id`'s pause process exited: the
    /// sandbox turns NotReady at once, unless an operation (a stop) holds
    /// it and ends the pause process on purpose.
    pub fn pause_exited(&self, id: &str) {
        let Ok(entry) = self.find(id) else {
            return;
        };
        if entry.record().id != id {
            return;
        }
        if let Ok(_op) = entry.op.try_lock() {
            let _ = self.refresh(&entry);
        }
    }

    /// Every sandbox the filter matches, oldest first.
    pub fn list(&self, filter: &SandboxFilter) -> Vec<SandboxRecord> {
        let entries = self.entries.all();
        let mut out: Vec<SandboxRecord> = entries
            .iter()
            .filter_map(|entry| self.refresh(entry).ok())
            .filter(|record| filter.matches(record))
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Marks a Ready sandbox whose pause process is gone NotReady.
    fn refresh(&self, entry: &Entry) -> Result<SandboxRecord, SandboxError> {
        let record = entry.record();
        if record.state == SandboxState::Ready && !record.pause.as_ref().is_some_and(pause::alive) {
            tracing::warn!(sandbox = %record.id, "pause process is gone; sandbox not ready");
            let mut record = record;
            record.state = SandboxState::NotReady;
            self.save(entry, record.clone())?;
            self.lifecycle
                .publish(&record.id, &record.id, crate::events::Lifecycle::Stopped);
            return Ok(record);
        }
        Ok(record)
    }
}
