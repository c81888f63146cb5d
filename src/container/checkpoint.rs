//! CheckpointContainer: the container's processes are dumped with CRIU
//! through its shim (`runc checkpoint --leave-running`: the container keeps
//! running, as Kubernetes' forensic checkpoints want), then berthd writes
//! the checkpoint archive ([`super::checkpoint_archive`]) at the requested
//! location: CRIU's images, the container's metadata, its writable layer
//! and its log.
//!
//! The dump and the pieces of the archive are put together in a work
//! directory under the container's directory, removed when the call ends,
//! whatever happened; the archive appears at its location whole or not at
//! all.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::checkpoint_archive::{self as archive, ArchiveError};
use super::containers::{ContainerError, Containers};
use super::record::{ContainerRecord, ContainerState};
use super::rootfs::{mountpoint, upper_dir};
use crate::clock::unix_nanos;
use crate::shim_client::{CheckpointOptions, ShimClientError};

/// How long a checkpoint may take when the request names no timeout.
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn invalid_location(reason: impl Into<String>) -> ContainerError {
    ContainerError::InvalidArgument {
        field: "location".into(),
        reason: reason.into(),
    }
}

/// The archive's path: absolute, naming a file in a directory that exists.
fn archive_location(location: &str) -> Result<PathBuf, ContainerError> {
    if location.is_empty() {
        return Err(invalid_location("is empty"));
    }
    let path = PathBuf::from(location);
    if !path.is_absolute() {
        return Err(invalid_location(format!(
            "{location:?} is not an absolute path"
        )));
    }
    if location.ends_with('/') || path.file_name().is_none() || path.is_dir() {
        return Err(invalid_location(format!(
            "{location:?} names a directory, not a file"
        )));
    }
    match path.parent() {
        Some(parent) if parent.is_dir() => Ok(path),
        Some(parent) => Err(invalid_location(format!(
            "the directory {} does not exist",
            parent.display()
        ))),
        None => Err(invalid_location(format!("{location:?} has no directory"))),
    }
}

/// The `criu` the runtime will run (it looks it up in `PATH`), if any.
fn criu_binary() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("criu"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn archive_error(e: ArchiveError) -> ContainerError {
    match e {
        ArchiveError::Io { op, path, source } => ContainerError::Io { op, path, source },
        ArchiveError::Abandoned => ContainerError::Shim(e.to_string()),
    }
}

/// Removes the work directory when the checkpoint ends, however it ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "checkpoint work directory not removed");
        }
    }
}

impl Containers {
    /// CheckpointContainer: dumps running container `id` (full id or
    /// unique prefix) and writes its checkpoint archive at `location`
    /// (absolute; gzip-compressed when it ends in `.tar.gz` or `.tgz`).
    /// The dump may take `timeout` (zero: [`DEFAULT_CHECKPOINT_TIMEOUT`]);
    /// the archive is then written whole, unless the caller gave up first.
    /// The container keeps running.
    pub async fn checkpoint(
        &self,
        id: &str,
        location: &str,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let entry = self.find(id)?;
        let location = archive_location(location)?;
        let timeout = if timeout.is_zero() {
            DEFAULT_CHECKPOINT_TIMEOUT
        } else {
            timeout
        };
        let _op = entry.op.lock().await;
        let record = entry.record();
        if record.state != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}: only a running container can be checkpointed",
                record.id, record.state
            )));
        }
        if criu_binary().is_none() {
            return Err(ContainerError::FailedPrecondition(
                "checkpointing needs CRIU: no criu in PATH (Debian package criu)".into(),
            ));
        }
        let suffix = crate::id::random_hex(6).map_err(|source| ContainerError::Io {
            op: "read random bytes for",
            path: "checkpoint work directory".into(),
            source,
        })?;
        let work = WorkDir(record.dir.join(format!("checkpoint-{suffix}")));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work.0)
            .map_err(|source| ContainerError::Io {
                op: "create directory",
                path: work.0.clone(),
                source,
            })?;
        let checkpointed_at = SystemTime::now();
        match tokio::time::timeout(timeout, self.dump(&record, &work.0, timeout)).await {
            Ok(dumped) => dumped?,
            Err(_) => return Err(ContainerError::Timeout(timeout)),
        }
        // The archive is written by a blocking task that owns the work
        // directory: a caller that gives up (its deadline) leaves it to
        // finish, and it then renames nothing into place.
        let wanted = Arc::new(AtomicBool::new(true));
        let _unwanted_when_dropped = Unwanted(wanted.clone());
        let archived = {
            let record = record.clone();
            let location = location.clone();
            tokio::task::spawn_blocking(move || {
                let work = work;
                write_all(&record, &work.0, &location, checkpointed_at, &|| {
                    wanted.load(Ordering::SeqCst)
                })
            })
        };
        archived
            .await
            .map_err(|e| ContainerError::Shim(format!("checkpoint archive task failed: {e}")))??;
        tracing::info!(container = %record.id, location = %location.display(), "container checkpointed");
        Ok(())
    }

    /// Dumps the container's processes into `<work>/checkpoint` through
    /// its shim; they keep running.
    async fn dump(
        &self,
        record: &ContainerRecord,
        work: &Path,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let client = self.client(record).await?;
        let options = CheckpointOptions {
            work_path: Some(work.to_path_buf()),
            terminal: record.tty,
            ..Default::default()
        };
        client
            .checkpoint(
                &record.id,
                &work.join(archive::CHECKPOINT_DIR),
                &options,
                timeout,
            )
            .await
            .map_err(|e| match e {
                ShimClientError::FailedPrecondition(m) => ContainerError::FailedPrecondition(m),
                ShimClientError::DeadlineExceeded(_) => ContainerError::Timeout(timeout),
                other => ContainerError::Shim(format!("checkpoint: {other}")),
            })
    }
}

/// Clears its flag when dropped: the request that wanted the archive is
/// gone (answered or abandoned).
struct Unwanted(Arc<AtomicBool>);

impl Drop for Unwanted {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The metadata, the writable layer and the log beside the dump in
/// `work`, then the archive at `location` if `wanted` still says so.
fn write_all(
    record: &ContainerRecord,
    work: &Path,
    location: &Path,
    checkpointed_at: SystemTime,
    wanted: &dyn Fn() -> bool,
) -> Result<(), ContainerError> {
    write_metadata(record, work, checkpointed_at)?;
    let upper = upper_dir(&record.dir);
    let lowerdirs = archive::overlay_lowerdirs(&mountpoint(&record.dir));
    archive::write_rootfs_diff(&upper, &lowerdirs, work).map_err(archive_error)?;
    if !record.log_path.is_empty() {
        let log = Path::new(&record.log_path);
        match std::fs::copy(log, work.join(archive::CONTAINER_LOG)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ContainerError::Io {
                    op: "copy",
                    path: log.to_path_buf(),
                    source,
                });
            }
        }
    }
    archive::write_archive(work, location, wanted).map_err(archive_error)
}

/// `config.dump`, `spec.dump` and `status.dump` in the work directory.
fn write_metadata(
    record: &ContainerRecord,
    work: &Path,
    checkpointed_at: SystemTime,
) -> Result<(), ContainerError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = work.join(name);
        std::fs::write(&path, bytes).map_err(|source| ContainerError::Io {
            op: "write",
            path,
            source,
        })
    };
    let json = |value: &serde_json::Value| serde_json::to_vec_pretty(value).unwrap_or_default();
    write(
        archive::CONFIG_DUMP,
        &json(&config_dump(record, checkpointed_at)),
    )?;
    let spec = record.bundle.join("config.json");
    let spec_bytes = std::fs::read(&spec).map_err(|source| ContainerError::Io {
        op: "read",
        path: spec.clone(),
        source,
    })?;
    write(archive::SPEC_DUMP, &spec_bytes)?;
    write(archive::STATUS_DUMP, &json(&status_dump(record)))
}

/// RFC 3339 with nanoseconds, as Go's `time.Time` marshals.
fn rfc3339(nanos: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_nanos(at).to_string()
}

/// checkpointctl's `ContainerConfig` (without `runtime`: the record does
/// not know the pod's handler, and the field is optional).
fn config_dump(record: &ContainerRecord, checkpointed_at: SystemTime) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "name": record.name,
        "rootfsImage": record.image,
        "rootfsImageRef": record.image_ref,
        "rootfsImageName": record.image,
        "createdTime": rfc3339(record.created_at),
        "checkpointedTime": rfc3339(unix_nanos(checkpointed_at)),
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": false,
    })
}

/// The CRI `ContainerStatus` with the field names containerd's JSON
/// encoding gives it.
fn status_dump(record: &ContainerRecord) -> serde_json::Value {
    let mounts: Vec<serde_json::Value> = record
        .mounts
        .iter()
        .map(|m| {
            serde_json::json!({
                "container_path": m.container_path,
                "host_path": m.host_path,
                "readonly": m.readonly,
                "propagation": m.propagation,
            })
        })
        .collect();
    serde_json::json!({
        "id": record.id,
        "metadata": { "name": record.metadata_name, "attempt": record.attempt },
        // CONTAINER_RUNNING
        "state": 1,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "image": { "image": record.image },
        "image_ref": record.image_ref,
        "image_id": record.image_id,
        "labels": record.labels,
        "annotations": record.annotations,
        "mounts": mounts,
        "log_path": record.log_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_be_absolute_files_in_existing_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let field = |r: Result<PathBuf, ContainerError>| match r {
            Err(ContainerError::InvalidArgument { field, reason }) => Some((field, reason)),
            _ => None,
        };
        for bad in ["", "relative.tar", "/", "/tmp/"] {
            let (name, _) =
                field(archive_location(bad)).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(name, "location");
        }
        let dir_path = dir.path().to_string_lossy().into_owned();
        assert!(field(archive_location(&dir_path)).is_some());
        let missing = format!("{dir_path}/missing/c.tar");
        let (_, reason) = field(archive_location(&missing)).expect("missing dir refused");
        assert!(reason.contains("does not exist"), "{reason}");
        let good = format!("{dir_path}/c.tar.gz");
        assert_eq!(archive_location(&good).ok(), Some(PathBuf::from(good)));
    }

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(
            rfc3339(1_500_000_000_123_456_789),
            "2017-07-14T02:40:00.123456789Z"
        );
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00.000000000Z");
    }
}
