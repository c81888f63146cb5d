//! Pod sandboxes: the pause process that holds a pod's namespaces, its
//! network, its files, and its record.
//!
//! One file per operation: [`run`], [`stop`], [`remove`], [`status`]
//! (status and list). Each sandbox has its own operation lock; no lock
//! covers all sandboxes while an operation runs.

mod files;
mod network;
mod pause;
mod portforward;
mod record;
mod remove;
mod run;
mod spec;
mod status;
mod stop;
mod userns;

use std::path::PathBuf;
use std::sync::Arc;

pub use record::{
    Dns, IdMapping, NamespaceMode, Namespaces, PauseProcess, PortMapping, SandboxMetadata,
    SandboxRecord, SandboxState, UserNamespace,
};
pub use spec::SandboxSpec;
pub use status::SandboxFilter;
pub use userns::idmap_mounts_supported;

use crate::config::Config;
use crate::input::quoted;
use crate::network::CniClient;
use crate::store::{Store, StoreError, Table};

/// What went wrong with a sandbox operation.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as a path in the request (`config.metadata.name`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No sandbox has this id.
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    /// The id prefix matches several sandboxes.
    #[error("pod sandbox id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// The sandbox name is taken.
    #[error("pod sandbox name {name} is reserved by {holder}")]
    NameTaken {
        /// The name.
        name: String,
        /// The sandbox id holding it.
        holder: String,
    },
    /// The runtime handler is not configured.
    #[error("runtime_handler {0}: no such runtime handler is configured")]
    UnknownHandler(String),
    /// The sandbox is not ready (stopped, or its pause process died).
    #[error("pod sandbox {0} is not ready")]
    NotReady(String),
    /// A port-forward connection into the pod failed.
    #[error("cannot connect to port {port} in the pod: {reason}")]
    PortForward {
        /// The pod's port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The pause process could not be started or stopped.
    #[error("pause process: {0}")]
    Pause(String),
    /// The pod's cgroup could not be set up.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// The pod network could not be set up or torn down.
    #[error("pod network: {0}")]
    Network(String),
    /// A file or directory of the sandbox could not be made or removed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { op, path, source }
}

/// One sandbox in memory.
type Entry = crate::id::Object<SandboxRecord>;

/// The sandbox service.
pub struct Sandboxes {
    config: Arc<Config>,
    store: Store,
    cni: CniClient,
    entries: crate::id::Objects<SandboxRecord>,
    pause_binary: PathBuf,
    lifecycle: crate::events::LifecycleBus,
}

impl Sandboxes {
    /// Loads every sandbox record and checks which pause processes still
    /// run: a sandbox whose pause died while berthd was down is NotReady.
    pub fn load(
        config: Arc<Config>,
        store: Store,
        lifecycle: crate::events::LifecycleBus,
    ) -> Result<Sandboxes, SandboxError> {
        let pause_binary = pause::binary();
        let cni = CniClient::new(
            config.cni.bin_dirs.clone(),
            config.root.join("cni").join("results"),
        );
        let sandboxes = Sandboxes {
            cni,
            config,
            store,
            entries: Default::default(),
            pause_binary,
            lifecycle,
        };
        for (_, mut record) in sandboxes.store.list::<SandboxRecord>(Table::Sandboxes)? {
            if record.state == SandboxState::Ready
                && !record.pause.as_ref().is_some_and(pause::alive)
            {
                tracing::warn!(sandbox = %record.id, "pause process died while berthd was down");
                record.state = SandboxState::NotReady;
                sandboxes.store.put(Table::Sandboxes, &record.id, &record)?;
            }
            sandboxes.insert(record);
        }
        Ok(sandboxes)
    }

    fn insert(&self, record: SandboxRecord) -> Arc<Entry> {
        let id = record.id.clone();
        self.entries.insert(&id, record)
    }

    /// Finds a sandbox by full id or unique id prefix.
    fn find(&self, id: &str) -> Result<Arc<Entry>, SandboxError> {
        if id.is_empty() {
            return Err(SandboxError::InvalidArgument {
                field: "pod_sandbox_id".into(),
                reason: "is empty".into(),
            });
        }
        match self.entries.find(id) {
            crate::id::Lookup::Found(entry) => Ok(entry),
            crate::id::Lookup::Ambiguous => Err(SandboxError::Ambiguous(quoted(id))),
            crate::id::Lookup::NotFound => Err(SandboxError::NotFound(quoted(id))),
        }
    }

    /// Writes `record` to the store, then to memory.
    fn save(&self, entry: &Entry, record: SandboxRecord) -> Result<(), SandboxError> {
        self.store.put(Table::Sandboxes, &record.id, &record)?;
        entry.set(record);
        Ok(())
    }

    /// The record of a sandbox, by id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<SandboxRecord, SandboxError> {
        Ok(self.find(id)?.record())
    }
}

/// A new sandbox id: 64 random hex digits.
fn new_id() -> Result<String, SandboxError> {
    crate::id::random_hex(32).map_err(|source| SandboxError::Io {
        op: "read random bytes for",
        path: "sandbox id".into(),
        source,
    })
}
