//! The content store: blobs (manifests, configs, layers) by digest under
//! `<root>/content/blobs/sha256/<hex>`, written to a temporary file and
//! renamed into place only once their digest matches.
//!
//! Layout under `<root>/content/` (mode 0700):
//!
//! ```text
//! blobs/sha256/<hex>        committed blobs, content matches the name
//! ingest/<hex>.<pid>.<seq>  blobs being written; swept at startup
//! ```
//!
//! A [`BlobWriter`] hashes bytes as they arrive, so a download streams
//! straight into the store; [`BlobWriter::commit`] checks size and digest,
//! fsyncs and renames atomically. Two writers of the same digest use
//! different temporary files and both renames put identical content in
//! place, so committing a blob that already exists is harmless. A writer
//! dropped before it commits removes its temporary file.

mod digest;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use digest::{Digest, SHA256};
pub use writer::BlobWriter;

/// The largest blob [`ContentStore::read`] loads into memory; larger blobs
/// (layers) are streamed with [`ContentStore::open`].
pub const READ_LIMIT: u64 = 32 * 1024 * 1024;

/// What went wrong in the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A string is not a digest berth accepts.
    #[error("invalid digest {value}: {reason}")]
    InvalidDigest {
        /// The value given, quoted and cut short.
        value: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The bytes written do not have the size announced for the blob
    /// (a truncated or padded download).
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob being written.
        digest: Digest,
        /// The size announced (by the manifest).
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// More bytes arrived than the size announced for the blob; the writer
    /// refused them.
    #[error("blob {digest}: expected {expected} bytes, received more")]
    TooLong {
        /// The blob being written.
        digest: Digest,
        /// The size announced.
        expected: u64,
    },
    /// The bytes written do not hash to the expected digest.
    #[error("blob content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// A blob on disk no longer matches its name.
    #[error("blob {digest} on disk has digest {actual}: the content store is corrupt")]
    Corrupt {
        /// The blob's name.
        digest: Digest,
        /// The digest of what the file holds.
        actual: Digest,
    },
    /// No blob with this digest is stored.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// [`ContentStore::read`] was asked for a blob too large for memory.
    #[error("blob {digest} has {size} bytes, more than {READ_LIMIT} that can be read at once")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError {
    let path = path.to_path_buf();
    move |source| ContentError::Io { op, path, source }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The content store of one berth root. Cheap to clone.
///
/// Only one store may be open per root: [`ContentStore::new`] sweeps the
/// ingest directory, which would remove another store's writes in flight.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens the content store under `<root>/content`, creating its
    /// directories, and removes the ingest files a crash left behind.
    pub fn new(root: &Path) -> Result<ContentStore, ContentError> {
        let dir = root.join("content");
        let blobs = dir.join("blobs").join(SHA256);
        let ingest = dir.join("ingest");
        for d in [&dir, &blobs, &ingest] {
            create_private_dir(d)?;
        }
        let store = ContentStore { blobs, ingest };
        let swept = store.sweep_ingest()?;
        if swept > 0 {
            tracing::info!(
                swept,
                dir = %store.ingest.display(),
                "removed unfinished blob writes left by a previous run"
            );
        }
        Ok(store)
    }

    /// Removes every file under the ingest directory; returns how many.
    fn sweep_ingest(&self) -> Result<usize, ContentError> {
        let entries =
            std::fs::read_dir(&self.ingest).map_err(io_error("read directory", &self.ingest))?;
        let mut swept = 0;
        for entry in entries {
            let entry = entry.map_err(io_error("read directory", &self.ingest))?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => swept += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &path)(e)),
            }
        }
        Ok(swept)
    }

    /// Where the blob `digest` is (or would be) stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Starts writing the blob `expected`. Bytes are hashed as they are
    /// written; `expected_size`, when known, is enforced as they arrive
    /// and again at [`BlobWriter::commit`].
    pub async fn writer(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, ContentError> {
        BlobWriter::create(
            &self.ingest,
            self.path(expected),
            &self.blobs,
            expected.clone(),
            expected_size,
        )
        .await
    }

    /// Whether the blob is stored.
    pub async fn has(&self, digest: &Digest) -> Result<bool, ContentError> {
        let path = self.path(digest);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("stat", &path)(e)),
        }
    }

    /// The size of a stored blob.
    pub async fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        let path = self.path(digest);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_error("stat", &path)(e)),
        }
    }

    /// Reads a small blob (a manifest, an index, a config) whole, checking
    /// that it still matches its digest. Blobs over [`READ_LIMIT`] are
    /// refused: stream them with [`ContentStore::open`].
    pub async fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let size = self.size(digest).await?;
        if size > READ_LIMIT {
            return Err(ContentError::TooLarge {
                digest: digest.clone(),
                size,
            });
        }
        let path = self.path(digest);
        let data = match tokio::fs::read(&path).await {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(digest.clone()));
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let actual = Digest::sha256(&data);
        if &actual != digest {
            return Err(ContentError::Corrupt {
                digest: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Opens a stored blob for streaming reads (a layer to unpack).
    pub async fn open(&self, digest: &Digest) -> Result<tokio::fs::File, ContentError> {
        let path = self.path(digest);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_error("open", &path)(e)),
        }
    }

    /// Deletes a blob; `false` when it was not stored. A reader that has the
    /// blob open keeps reading it.
    pub async fn delete(&self, digest: &Digest) -> Result<bool, ContentError> {
        let path = self.path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("remove", &path)(e)),
        }
    }

    /// Every stored blob, in digest order. Files under the blob directory
    /// whose name is not a digest are skipped with a warning.
    pub async fn list(&self) -> Result<Vec<BlobInfo>, ContentError> {
        let blobs = self.blobs.clone();
        let listed = tokio::task::spawn_blocking(move || list_blobs(&blobs)).await;
        match listed {
            Ok(result) => result,
            Err(join) => Err(ContentError::Io {
                op: "list",
                path: self.blobs.clone(),
                source: io::Error::other(join),
            }),
        }
    }
}

fn list_blobs(blobs: &Path) -> Result<Vec<BlobInfo>, ContentError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(blobs).map_err(io_error("read directory", blobs))? {
        let entry = entry.map_err(io_error("read directory", blobs))?;
        let name = entry.file_name();
        let digest = name
            .to_str()
            .and_then(|hex| Digest::parse(&format!("{SHA256}:{hex}")).ok());
        let Some(digest) = digest else {
            tracing::warn!(path = %entry.path().display(), "not a blob; skipped");
            continue;
        };
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Deleted while we listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("stat", &entry.path())(e)),
        };
        if meta.is_file() {
            out.push(BlobInfo {
                digest,
                size: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(out)
}

/// Creates `dir` (and its parents) with mode 0700 when absent: blobs are
/// only for berthd.
fn create_private_dir(dir: &Path) -> Result<(), ContentError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create directory", dir))
}

#[cfg(test)]
mod tests;
