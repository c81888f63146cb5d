//! The CRI unix socket: created with mode 0660 (and the configured group)
//! before anyone can connect, replacing the stale socket of a crashed
//! berthd but never a live one.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something is serving on the socket already.
    #[error("{path} is in use: another process (another berthd?) is serving on it")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; berthd will not delete it.
    #[error("{path} exists and is not a socket; remove it or choose another grpc.address")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_path_buf();
    move |source| SocketError::Io { op, path, source }
}

/// Binds the CRI socket at `path`: parent directories are created (0711),
/// a stale socket is replaced, a live one is refused. The socket is created
/// with mode 0660 (and then given group `gid`), never looser.
pub fn bind_socket(path: &Path, gid: Option<u32>) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(io("create directory", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => tracing::info!(path = %path.display(), error = %e, "replacing stale socket"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }

    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", path)(e)),
    }
    // Bound under a umask that leaves 0660, so the socket is never
    // reachable with looser permissions (and `ss` shows its real path).
    // berthd binds its socket once, at start, before it runs anything else.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io("bind", path))?;
    let placed = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("chmod", path))
        .and_then(|()| match gid {
            Some(gid) => std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("chown", path)),
            None => Ok(()),
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_parents_with_mode_0660() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/berth.sock");
        let _l = bind_socket(&path, None).expect("bind");
        let meta = std::fs::metadata(&path).expect("socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        std::os::unix::net::UnixStream::connect(&path).expect("connectable");
    }

    #[tokio::test]
    async fn live_socket_is_refused_stale_one_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        let live = bind_socket(&path, None).expect("first bind");
        let err = bind_socket(&path, None).expect_err("second bind while live");
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        drop(live);
        // The file is still there, but nobody listens: stale.
        assert!(path.exists());
        let _l = bind_socket(&path, None).expect("stale socket replaced");
        std::os::unix::net::UnixStream::connect(&path).expect("connectable");
    }

    #[tokio::test]
    async fn regular_file_is_never_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.sock");
        std::fs::write(&path, "precious").expect("write");
        let err = bind_socket(&path, None).expect_err("not a socket");
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("still there"),
            "precious"
        );
    }
}
