//! The container service: CreateContainer (record, writable root
//! filesystem over the image's snapshots, OCI bundle), RemoveContainer,
//! ContainerStatus and ListContainers. Starting and stopping go through
//! `berth-shim` (not built yet).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use berth_cri_proto::v1 as cri;

use super::record::{ContainerRecord, ContainerState, MountRecord, UserRecord};
use super::rootfs::{RootfsError, RootfsIdmap, mount_rootfs, unmount_rootfs};
use super::spec::{SpecError, SpecInput, build};
use crate::config::Config;
use crate::image::ImageRecord;
use crate::input::quoted;
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::snapshot::SnapshotStore;
use crate::store::{Store, StoreError, Table};

/// What went wrong with a container operation.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field's path in the request.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No container has this id.
    #[error("container {0} not found")]
    NotFound(String),
    /// The id prefix matches several containers.
    #[error("container id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// The image is not on the node.
    #[error("image {0} not found: pull it first")]
    ImageNotFound(String),
    /// The pod sandbox is not ready.
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    /// The name is taken.
    #[error("container name {name} is reserved by {holder}")]
    NameTaken {
        /// The name.
        name: String,
        /// The container id holding it.
        holder: String,
    },
    /// The container is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An exec ran past its timeout and was killed.
    #[error("command timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The container's shim failed or could not be reached.
    #[error("shim: {0}")]
    Shim(String),
    /// The OCI spec could not be built from the config.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The root filesystem could not be mounted.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The image's snapshots are missing.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A file or directory could not be made or removed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, reason: impl Into<String>) -> ContainerError {
    ContainerError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { op, path, source }
}

/// ListContainers' filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// Id or id prefix.
    pub id: Option<String>,
    /// State.
    pub state: Option<ContainerState>,
    /// Pod sandbox id or prefix.
    pub sandbox_id: Option<String>,
    /// Labels that must all match.
    pub labels: BTreeMap<String, String>,
}

/// One container in memory.
pub(super) type Entry = crate::id::Object<ContainerRecord>;

/// The container service.
pub struct Containers {
    pub(super) config: Arc<Config>,
    pub(super) store: Store,
    pub(super) lifecycle: crate::events::LifecycleBus,
    entries: crate::id::Objects<ContainerRecord>,
}

impl Containers {
    /// Loads every container record.
    pub fn load(
        config: Arc<Config>,
        store: Store,
        lifecycle: crate::events::LifecycleBus,
    ) -> Result<Containers, ContainerError> {
        let containers = Containers {
            config,
            store,
            lifecycle,
            entries: Default::default(),
        };
        for (_, record) in containers
            .store
            .list::<ContainerRecord>(Table::Containers)?
        {
            containers.insert(record);
        }
        Ok(containers)
    }

    fn insert(&self, record: ContainerRecord) -> Arc<Entry> {
        let id = record.id.clone();
        self.entries.insert(&id, record)
    }

    pub(super) fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries.all()
    }

    /// The record of running container `id`, or FailedPrecondition.
    pub(super) fn running(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let record = self.find(id)?.record();
        if record.state != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        Ok(record)
    }

    pub(super) fn find(&self, id: &str) -> Result<Arc<Entry>, ContainerError> {
        if id.is_empty() {
            return Err(invalid("container_id", "is empty"));
        }
        match self.entries.find(id) {
            crate::id::Lookup::Found(entry) => Ok(entry),
            crate::id::Lookup::Ambiguous => Err(ContainerError::Ambiguous(quoted(id))),
            crate::id::Lookup::NotFound => Err(ContainerError::NotFound(quoted(id))),
        }
    }

    /// Creates a container in `sandbox` from `config` and `image`: reserves
    /// its name, mounts its root filesystem and writes its OCI bundle.
    /// Nothing is left behind on failure.
    pub async fn create(
        &self,
        sandbox: &SandboxRecord,
        config: &cri::ContainerConfig,
        image: Option<ImageRecord>,
        snapshots: &SnapshotStore,
    ) -> Result<String, ContainerError> {
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| invalid("config.metadata", "is missing"))?;
        if meta.name.is_empty() || meta.name.contains('_') || meta.name.contains('/') {
            return Err(invalid(
                "config.metadata.name",
                format!(
                    "{} must be non-empty, without '_' or '/'",
                    quoted(&meta.name)
                ),
            ));
        }
        let requested = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if requested.is_empty() {
            return Err(invalid("config.image.image", "is empty"));
        }
        let image = image.ok_or_else(|| ContainerError::ImageNotFound(quoted(&requested)))?;
        if sandbox.state != SandboxState::Ready {
            return Err(ContainerError::SandboxNotReady(sandbox.id.clone()));
        }
        let id = new_id()?;
        let m = &sandbox.metadata;
        let name = format!(
            "{}_{}_{}_{}_{}",
            meta.name, m.name, m.namespace, m.uid, meta.attempt
        );
        self.store.reserve_name(&name, &id).map_err(|e| match e {
            StoreError::NameTaken { name, holder } => ContainerError::NameTaken { name, holder },
            other => other.into(),
        })?;
        let log_path = match (sandbox.log_directory.as_str(), config.log_path.as_str()) {
            (_, "") => String::new(),
            ("", path) => path.to_string(),
            (dir, path) => Path::new(dir).join(path).display().to_string(),
        };
        let record = ContainerRecord {
            id: id.clone(),
            name,
            sandbox_id: sandbox.id.clone(),
            metadata_name: meta.name.clone(),
            attempt: meta.attempt,
            image: requested,
            image_id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path,
            mounts: config
                .mounts
                .iter()
                .map(|m| MountRecord {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    recursive_read_only: m.recursive_read_only,
                    propagation: m.propagation,
                })
                .collect(),
            created_at: crate::clock::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state: ContainerState::Created,
            stop_signal: image.config.stop_signal.clone(),
            shim_address: None,
            cgroup: crate::cgroup::object_path(
                self.config.cgroup_driver,
                &sandbox.cgroup_parent,
                &id,
            ),
            user: None,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.as_ref())
                .map(super::update::record_of),
            dir: self.config.root.join("containers").join(&id),
            bundle: self.config.state.join("containers").join(&id),
        };
        match self.prepare(&record, sandbox, config, &image, snapshots) {
            Ok(user) => {
                let mut record = record;
                record.user = user;
                self.store.put(Table::Containers, &id, &record)?;
                self.insert(record);
                self.lifecycle
                    .publish(&id, &sandbox.id, crate::events::Lifecycle::Created);
                tracing::info!(container = %id, sandbox = %sandbox.id, "container created");
                Ok(id)
            }
            Err(e) => {
                self.cleanup(&record);
                let _ = self.store.release_name(&record.name, &id);
                Err(e)
            }
        }
    }

    /// Directories, root filesystem and bundle of a new container.
    fn prepare(
        &self,
        record: &ContainerRecord,
        sandbox: &SandboxRecord,
        config: &cri::ContainerConfig,
        image: &ImageRecord,
        snapshots: &SnapshotStore,
    ) -> Result<Option<UserRecord>, ContainerError> {
        for dir in [&record.dir, &record.bundle] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(io_error("create directory", dir))?;
        }
        let lowerdirs = snapshots.lowerdirs(&image.chain_ids)?;
        let userns = sandbox.ns_path("user");
        let idmap = sandbox.user_namespace.map(|u| RootfsIdmap {
            userns: &userns,
            root_uid: u.uid.host_id,
            root_gid: u.gid.host_id,
        });
        let rootfs = mount_rootfs(&record.dir, &lowerdirs, idmap)?;
        let spec = build(&SpecInput {
            id: &record.id,
            config,
            sandbox,
            image: &image.config,
            rootfs: &rootfs,
            container_dir: &record.dir,
            cgroup_driver: self.config.cgroup_driver,
            swap_limit: super::resources::swap_supported(),
            target_pid_namespace: None,
        })?;
        let path = record.bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| ContainerError::Io {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, json).map_err(io_error("write", &path))?;
        Ok(spec.process().as_ref().map(|p| {
            let user = p.user();
            UserRecord {
                uid: user.uid(),
                gid: user.gid(),
                supplemental_groups: user.additional_gids().clone().unwrap_or_default(),
            }
        }))
    }

    /// Unmounts and deletes what a container set up; best effort, logged.
    fn cleanup(&self, record: &ContainerRecord) {
        if let Err(e) = unmount_rootfs(&record.dir) {
            tracing::warn!(container = %record.id, error = %e, "rootfs not unmounted");
        }
        for dir in [&record.bundle, &record.dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(container = %record.id, dir = %dir.display(), error = %e, "directory not removed")
                }
            }
        }
    }

    /// Removes a container (full id or unique prefix): its root
    /// filesystem, bundle, record and name. An unknown id is success.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let entry = match self.find(id) {
            Ok(entry) => entry,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        self.end_task(&entry).await?;
        let record = entry.record();
        self.cleanup(&record);
        self.store.transaction(|tx| {
            tx.delete(Table::Containers, &record.id)?;
            if tx.get::<String>(Table::Names, &record.name)?.as_deref() == Some(record.id.as_str())
            {
                tx.delete(Table::Names, &record.name)?;
            }
            Ok(())
        })?;
        self.entries.remove(&record.id);
        self.lifecycle.publish(
            &record.id,
            &record.sandbox_id,
            crate::events::Lifecycle::Deleted,
        );
        tracing::info!(container = %record.id, "container removed");
        Ok(())
    }

    /// A container's record, by full id or unique prefix.
    pub fn status(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        Ok(self.find(id)?.record())
    }

    /// Every container the filter matches, oldest first.
    pub fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        self.list_with(filter, ContainerRecord::clone)
    }

    /// What `view` makes of every container the filter matches, oldest
    /// first; records are read in place, not copied (ListContainers runs
    /// every second on a busy node).
    pub fn list_with<T>(
        &self,
        filter: &ContainerFilter,
        view: impl Fn(&ContainerRecord) -> T,
    ) -> Vec<T> {
        let matches = |r: &ContainerRecord| {
            filter
                .id
                .as_ref()
                .is_none_or(|id| r.id.starts_with(id.as_str()))
                && filter.state.is_none_or(|s| s == r.state)
                && filter
                    .sandbox_id
                    .as_ref()
                    .is_none_or(|s| r.sandbox_id.starts_with(s.as_str()))
                && filter
                    .labels
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
        };
        let mut out: Vec<(i64, T)> = self
            .entries
            .all()
            .iter()
            .filter_map(|e| e.with(|r| matches(r).then(|| (r.created_at, view(r)))))
            .collect();
        out.sort_by_key(|(created, _)| *created);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The ids of containers using image `image_id`.
    pub fn using_image(&self, image_id: &str) -> Vec<String> {
        self.list(&ContainerFilter::default())
            .into_iter()
            .filter(|r| r.image_id == image_id)
            .map(|r| r.id)
            .collect()
    }
}

/// A new container id: 64 random hex digits.
fn new_id() -> Result<String, ContainerError> {
    random_id(32, "container id")
}

fn random_id(bytes: usize, what: &str) -> Result<String, ContainerError> {
    crate::id::random_hex(bytes).map_err(|source| ContainerError::Io {
        op: "read random bytes for",
        path: what.into(),
        source,
    })
}

/// A new exec id: 16 random hex digits.
pub(super) fn new_exec_id() -> Result<String, ContainerError> {
    random_id(8, "exec id")
}
