//! Streaming blob writes: hash while writing, commit only what matches.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{BlobInfo, ContentError, Digest, io_error};

/// Makes ingest file names unique within this process; the pid makes them
/// unique across processes.
static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A blob being written: an [`AsyncWrite`] that hashes every byte it
/// accepts. Nothing is visible in the store until [`BlobWriter::commit`]
/// succeeds; dropping the writer before that removes its temporary file.
///
/// When the expected size is known, a write that would go past it fails at
/// once, so a hostile server cannot fill the disk.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<tokio::fs::File>,
    temp: PathBuf,
    target: PathBuf,
    blobs_dir: PathBuf,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Sha256,
    written: u64,
    overflowed: bool,
    done: bool,
}

impl BlobWriter {
    pub(super) async fn create(
        ingest: &Path,
        target: PathBuf,
        blobs_dir: &Path,
        expected: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, ContentError> {
        let pid = std::process::id();
        loop {
            let seq = INGEST_SEQ.fetch_add(1, Ordering::Relaxed);
            let temp = ingest.join(format!("{}.{pid}.{seq}", expected.hex()));
            let opened = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .await;
            match opened {
                Ok(file) => {
                    return Ok(BlobWriter {
                        file: Some(file),
                        temp,
                        target,
                        blobs_dir: blobs_dir.to_path_buf(),
                        expected,
                        expected_size,
                        hasher: Sha256::new(),
                        written: 0,
                        overflowed: false,
                        done: false,
                    });
                }
                // A file of an earlier process that had our pid: try the
                // next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("create", &temp)(e)),
            }
        }
    }

    /// The digest this writer must produce.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, makes the bytes durable and moves the blob
    /// into place. On any mismatch the error names what was expected and
    /// what arrived, and the temporary file is removed.
    pub async fn commit(mut self) -> Result<BlobInfo, ContentError> {
        let mut file = self.file.take().ok_or_else(|| ContentError::Io {
            op: "commit",
            path: self.temp.clone(),
            source: io::Error::other("the writer failed earlier"),
        })?;
        if self.overflowed
            && let Some(expected) = self.expected_size
        {
            return Err(ContentError::TooLong {
                digest: self.expected.clone(),
                expected,
            });
        }
        if let Some(expected) = self.expected_size
            && self.written != expected
        {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        file.flush().await.map_err(io_error("write", &self.temp))?;
        file.sync_all()
            .await
            .map_err(io_error("fsync", &self.temp))?;
        drop(file);
        tokio::fs::rename(&self.temp, &self.target)
            .await
            .map_err(io_error("rename into place", &self.target))?;
        // From here the blob is in place: the temporary name is gone.
        self.done = true;
        sync_dir(&self.blobs_dir).await?;
        Ok(BlobInfo {
            digest: self.expected.clone(),
            size: self.written,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            // A write still queued on the file may land in the unlinked
            // inode: harmless, the name is gone.
            if let Err(e) = std::fs::remove_file(&self.temp)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %self.temp.display(), error = %e, "cannot remove unfinished blob");
            }
        }
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(limit) = this.expected_size
            && this.written.saturating_add(buf.len() as u64) > limit
        {
            this.overflowed = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {}: expected {limit} bytes, received more",
                    this.expected
                ),
            )));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Err(io::Error::other("blob writer already committed")));
        };
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), ContentError> {
    let path = dir.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&path)?.sync_all()).await;
    match synced {
        Ok(result) => result.map_err(io_error("fsync", dir)),
        Err(join) => Err(io_error("fsync", dir)(io::Error::other(join))),
    }
}
