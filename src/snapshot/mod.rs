//! The overlay snapshot store: each image layer unpacked once into
//! `<root>/snapshots/<n>/fs`, keyed by its chain ID and shared between
//! images; container root filesystems are overlays of these.
//!
//! Layout under `<root>/snapshots/` (mode 0700: layers hold setuid
//! binaries that no host user may reach):
//!
//! ```text
//! <n>/fs                   a committed snapshot; n is small so that many
//!                          lowerdirs fit in one page of mount options
//! .unpack-<chain>-<pid>-<seq>/fs   an unpack in progress
//! .remove-<n>              a snapshot being removed
//! ```
//!
//! Each snapshot has a record in [`Table::Snapshots`] keyed by chain ID
//! ([`Snapshot`]). A layer is unpacked into a temporary directory; only once
//! it is complete and its diff ID verified is the directory renamed to the
//! first free `<n>` (`RENAME_NOREPLACE` makes the file system the allocator)
//! and the record written. A crash leaves at most a temporary or an
//! unrecorded directory, which [`SnapshotStore::open`] removes.
//!
//! Layers unpack independently of each other (whiteouts are stored as
//! overlay whiteouts, not applied to the layers below), so the layers of an
//! image are unpacked in parallel while they download. One chain ID is
//! unpacked at most once at a time: a per-chain-ID async lock makes a second
//! caller wait and then find the snapshot. See [`unpack`] for what a layer
//! may contain.

mod chain_id;
mod compression;
mod rooted;
mod unpack;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

pub use chain_id::ChainId;
pub use compression::Compression;

use crate::content::Digest;
use crate::store::{Store, StoreError, Table};

/// What went wrong in the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The layer's media type is not a layer format berth unpacks.
    #[error("unsupported layer media type {0}")]
    UnsupportedMediaType(String),
    /// The uncompressed layer does not hash to its diff ID.
    #[error("layer content has diff ID {actual}, expected {expected}")]
    DiffIdMismatch {
        /// The diff ID from the image config.
        expected: Digest,
        /// The digest of the uncompressed tar received.
        actual: Digest,
    },
    /// An entry would write outside the snapshot (or through a symbolic
    /// link); the layer is refused.
    #[error("layer {layer}: entry {path} refused: {reason}")]
    UnsafeEntry {
        /// The layer's diff ID.
        layer: Digest,
        /// The entry's path, quoted.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// An entry makes no sense (unknown type, dangling hard link, ...).
    #[error("layer {layer}: entry {path} {reason}")]
    BadEntry {
        /// The layer's diff ID.
        layer: Digest,
        /// The entry's path, quoted.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing an entry failed.
    #[error("layer {layer}: entry {path}: {op}: {source}")]
    Apply {
        /// The layer's diff ID.
        layer: Digest,
        /// The entry's path, quoted.
        path: String,
        /// What was being done.
        op: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The layer stream failed: download, decompression or tar format.
    #[error("layer {layer}: reading the layer stream: {source}")]
    Read {
        /// The layer's diff ID.
        layer: Digest,
        /// The underlying error.
        source: io::Error,
    },
    /// The unpack was cancelled (its caller went away).
    #[error("layer {layer}: unpack cancelled")]
    Cancelled {
        /// The layer's diff ID.
        layer: Digest,
    },
    /// No snapshot has this chain ID.
    #[error("snapshot {0} not found")]
    NotFound(ChainId),
    /// The snapshot is the parent of others, which must go first.
    #[error("snapshot {chain_id} is the parent of snapshot {child}; remove that first")]
    HasChildren {
        /// The snapshot asked for.
        chain_id: ChainId,
        /// One of its children.
        child: ChainId,
    },
    /// A file system operation of the store itself failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The unpack task died (a bug: it panicked).
    #[error("unpack task failed: {0}")]
    Task(String),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// The record of one unpacked layer, stored in [`Table::Snapshots`] under
/// its chain ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The chain ID of the layer with every layer below it.
    pub chain_id: ChainId,
    /// The directory number: the layer is at `<root>/snapshots/<id>/fs`.
    pub id: u64,
    /// The chain ID of the layers below; `None` for a bottom layer.
    pub parent: Option<ChainId>,
    /// The digest of the uncompressed layer tar.
    pub diff_id: Digest,
    /// Bytes the unpacked layer takes on disk (allocated blocks).
    pub size: u64,
    /// Inodes the unpacked layer uses.
    pub inodes: u64,
    /// When the unpack finished.
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
}

/// Disk usage: bytes allocated and inodes used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on disk.
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

impl Snapshot {
    /// This snapshot's disk usage.
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.size,
            inodes: self.inodes,
        }
    }
}

/// Makes temporary directory names unique within this process.
static UNPACK_SEQ: AtomicU64 = AtomicU64::new(0);

const UNPACK_PREFIX: &str = ".unpack-";
const REMOVE_PREFIX: &str = ".remove-";

/// The snapshot store of one berth root. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    store: Store,
    locks: ChainLocks,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl SnapshotStore {
    /// Opens the snapshot store under `<root>/snapshots`, creating it, and
    /// cleans up after a crash: unfinished unpacks and removals, directories
    /// without a record, and records without a directory. Only one store
    /// may be open per root.
    pub fn open(root: &Path, store: Store) -> Result<SnapshotStore, SnapshotError> {
        let dir = root.join("snapshots");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_error("create directory", &dir))?;
        }
        let snapshots = SnapshotStore {
            inner: Arc::new(Inner {
                dir,
                store,
                locks: ChainLocks::default(),
            }),
        };
        snapshots.inner.clean_up()?;
        Ok(snapshots)
    }

    /// Unpacks the layer `diff_id`, stacked on `parent` (`None` for a bottom
    /// layer), from `layer`: the layer blob as it streams in, compressed as
    /// `compression` says ([`Compression::from_media_type`]). The parent
    /// need not be unpacked yet: layers unpack independently.
    ///
    /// Returns the snapshot of chain ID `ChainId::of(parent, diff_id)`;
    /// when it already exists (or another caller is unpacking it) the
    /// stream is not read and the existing snapshot is returned. Dropping
    /// the returned future cancels the unpack; its partial directory is
    /// removed in the background before the chain ID can be unpacked again.
    pub async fn unpack<R>(
        &self,
        parent: Option<&ChainId>,
        diff_id: &Digest,
        compression: Compression,
        layer: R,
    ) -> Result<Snapshot, SnapshotError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let chain_id = ChainId::of(parent, diff_id);
        let guard = self.inner.locks.get(&chain_id).lock_owned().await;
        if let Some(existing) = self.get(&chain_id)? {
            return Ok(existing);
        }
        let cancel = CancellationToken::new();
        let on_drop = cancel.clone().drop_guard();
        let reader = unpack::BlockingReader::new(layer, cancel.clone());
        let inner = self.inner.clone();
        let parent = parent.cloned();
        let diff_id = diff_id.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the directory is committed or gone.
            let _guard = guard;
            inner.unpack_blocking(chain_id, parent, diff_id, compression, reader, &cancel)
        });
        let result = task.await;
        on_drop.disarm();
        result.map_err(|e| SnapshotError::Task(e.to_string()))?
    }

    /// The snapshot of `chain_id`, if unpacked.
    pub fn get(&self, chain_id: &ChainId) -> Result<Option<Snapshot>, SnapshotError> {
        Ok(self.inner.store.get(Table::Snapshots, chain_id.as_str())?)
    }

    /// Every snapshot, in chain ID order.
    pub fn list(&self) -> Result<Vec<Snapshot>, SnapshotError> {
        self.inner.list()
    }

    /// The directory holding a snapshot's files: `<root>/snapshots/<n>/fs`.
    pub fn fs_path(&self, snapshot: &Snapshot) -> PathBuf {
        self.inner.fs_path(snapshot.id)
    }

    /// The overlay `lowerdir`s of an image: `chain_ids` bottom layer first
    /// (as [`ChainId::chain`] gives them), the directories top layer first
    /// (as overlay wants them). Every snapshot must exist.
    pub fn lowerdirs(&self, chain_ids: &[ChainId]) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut dirs = Vec::with_capacity(chain_ids.len());
        for chain_id in chain_ids.iter().rev() {
            let snapshot = self
                .get(chain_id)?
                .ok_or_else(|| SnapshotError::NotFound(chain_id.clone()))?;
            dirs.push(self.fs_path(&snapshot));
        }
        Ok(dirs)
    }

    /// The disk usage of all snapshots together (for ImageFsInfo).
    pub fn usage(&self) -> Result<Usage, SnapshotError> {
        Ok(self
            .list()?
            .iter()
            .fold(Usage::default(), |total, s| Usage {
                bytes: total.bytes + s.size,
                inodes: total.inodes + s.inodes,
            }))
    }

    /// Removes a snapshot: its record, then its directory. `false` when
    /// there was none. A snapshot that is the parent of another is refused
    /// ([`SnapshotError::HasChildren`]); the caller removes top layers
    /// first and must know no container uses the snapshot.
    pub async fn remove(&self, chain_id: &ChainId) -> Result<bool, SnapshotError> {
        let guard = self.inner.locks.get(chain_id).lock_owned().await;
        let inner = self.inner.clone();
        let chain_id = chain_id.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            inner.remove_blocking(&chain_id)
        })
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))?
    }
}

impl Inner {
    fn fs_path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string()).join("fs")
    }

    fn list(&self) -> Result<Vec<Snapshot>, SnapshotError> {
        Ok(self
            .store
            .list::<Snapshot>(Table::Snapshots)?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    fn unpack_blocking<R: AsyncRead + Unpin>(
        &self,
        chain_id: ChainId,
        parent: Option<ChainId>,
        diff_id: Digest,
        compression: Compression,
        reader: unpack::BlockingReader<R>,
        cancel: &CancellationToken,
    ) -> Result<Snapshot, SnapshotError> {
        let started = std::time::Instant::now();
        let temp = TempDir::create(&self.dir, &chain_id)?;
        let fs = temp.path.join("fs");
        std::fs::create_dir(&fs).map_err(io_error("create directory", &fs))?;
        let usage = unpack::unpack(reader, compression, &diff_id, &fs, cancel)?;
        let id = self.place(&temp)?;
        let snapshot = Snapshot {
            chain_id,
            id,
            parent,
            diff_id,
            size: usage.bytes,
            inodes: usage.inodes,
            created: SystemTime::now(),
        };
        let numbered = self.dir.join(id.to_string());
        if let Err(e) = self
            .store
            .put(Table::Snapshots, snapshot.chain_id.as_str(), &snapshot)
        {
            if let Err(rm) = std::fs::remove_dir_all(&numbered) {
                tracing::warn!(path = %numbered.display(), error = %rm, "cannot remove unrecorded snapshot; removed at next start");
            }
            return Err(e.into());
        }
        tracing::info!(
            chain_id = %snapshot.chain_id,
            diff_id = %snapshot.diff_id,
            id,
            bytes = snapshot.size,
            inodes = snapshot.inodes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layer unpacked"
        );
        Ok(snapshot)
    }

    /// Renames a finished temporary directory to the first free number
    /// above every number in use, and returns it.
    fn place(&self, temp: &TempDir) -> Result<u64, SnapshotError> {
        let mut id = self.next_id()?;
        loop {
            let target = self.dir.join(id.to_string());
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &temp.path,
                rustix::fs::CWD,
                &target,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    temp.disarm();
                    if let Err(e) = sync_dir(&self.dir) {
                        let _ = std::fs::remove_dir_all(&target);
                        return Err(e);
                    }
                    return Ok(id);
                }
                // Taken by a concurrent unpack: try the next.
                Err(rustix::io::Errno::EXIST) => id += 1,
                Err(e) => return Err(io_error("rename into place", &target)(e.into())),
            }
        }
    }

    /// One more than the highest number used by a record or a directory.
    fn next_id(&self) -> Result<u64, SnapshotError> {
        let mut max = self.list()?.iter().map(|s| s.id).max().unwrap_or(0);
        for entry in std::fs::read_dir(&self.dir).map_err(io_error("read directory", &self.dir))? {
            let entry = entry.map_err(io_error("read directory", &self.dir))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                max = max.max(n);
            }
        }
        Ok(max + 1)
    }

    fn remove_blocking(&self, chain_id: &ChainId) -> Result<bool, SnapshotError> {
        let all = self.list()?;
        let Some(snapshot) = all.iter().find(|s| s.chain_id == *chain_id) else {
            return Ok(false);
        };
        if let Some(child) = all.iter().find(|s| s.parent.as_ref() == Some(chain_id)) {
            return Err(SnapshotError::HasChildren {
                chain_id: chain_id.clone(),
                child: child.chain_id.clone(),
            });
        }
        self.store.delete(Table::Snapshots, chain_id.as_str())?;
        let numbered = self.dir.join(snapshot.id.to_string());
        let doomed = self.dir.join(format!("{REMOVE_PREFIX}{}", snapshot.id));
        match std::fs::rename(&numbered, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_error("rename", &numbered)(e)),
        }
        std::fs::remove_dir_all(&doomed).map_err(io_error("remove", &doomed))?;
        tracing::info!(%chain_id, id = snapshot.id, "snapshot removed");
        Ok(true)
    }

    /// Startup clean-up; see [`SnapshotStore::open`].
    fn clean_up(&self) -> Result<(), SnapshotError> {
        let records = self.list()?;
        let ids: HashSet<u64> = records.iter().map(|s| s.id).collect();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error("read directory", &self.dir))? {
            let entry = entry.map_err(io_error("read directory", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let leftover = if name.starts_with(UNPACK_PREFIX) || name.starts_with(REMOVE_PREFIX) {
                true
            } else if let Ok(n) = name.parse::<u64>() {
                !ids.contains(&n)
            } else {
                tracing::warn!(path = %path.display(), "unknown entry in the snapshot directory left alone");
                false
            };
            if leftover {
                tracing::info!(path = %path.display(), "removing leftover of an unfinished unpack or removal");
                std::fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
            }
        }
        for snapshot in records {
            let fs = self.fs_path(snapshot.id);
            if !fs.is_dir() {
                tracing::warn!(chain_id = %snapshot.chain_id, path = %fs.display(), "snapshot directory is missing; forgetting the snapshot");
                self.store
                    .delete(Table::Snapshots, snapshot.chain_id.as_str())?;
            }
        }
        Ok(())
    }
}

/// A temporary unpack directory, removed on drop unless placed.
struct TempDir {
    path: PathBuf,
    placed: std::cell::Cell<bool>,
}

impl TempDir {
    fn create(dir: &Path, chain_id: &ChainId) -> Result<TempDir, SnapshotError> {
        let seq = UNPACK_SEQ.fetch_add(1, Ordering::Relaxed);
        let short = &chain_id.digest().hex()[..12];
        let path = dir.join(format!(
            "{UNPACK_PREFIX}{short}-{}-{seq}",
            std::process::id()
        ));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(io_error("create directory", &path))?;
        }
        Ok(TempDir {
            path,
            placed: std::cell::Cell::new(false),
        })
    }

    fn disarm(&self) {
        self.placed.set(true);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.placed.get()
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove unfinished unpack; removed at next start");
        }
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

/// One async lock per chain ID, created on demand and forgotten when no
/// one holds or waits for it. The map's own lock is never held across an
/// await.
#[derive(Default)]
struct ChainLocks {
    locks: Mutex<HashMap<ChainId, Weak<tokio::sync::Mutex<()>>>>,
}

impl ChainLocks {
    fn get(&self, chain_id: &ChainId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(chain_id).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(chain_id.clone(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests;
