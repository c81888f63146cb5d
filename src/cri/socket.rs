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
/// a stale socket is replaced, a live one is refused. The socket is made
/// under a temporary name, given mode 0660 and group `gid`, then renamed
/// into place, so it is never reachable with looser permissions.
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

    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &tmp)(e)),
    }
    let listener = UnixListener::bind(&tmp).map_err(io("bind", &tmp))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .map_err(io("chmod", &tmp))
        .and_then(|()| match gid {
            Some(gid) => std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(io("chown", &tmp)),
            None => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("rename into place", path)));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
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
