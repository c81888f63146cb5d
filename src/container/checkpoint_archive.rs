//! The checkpoint archive: one tar (gzip-compressed when its name ends in
//! `.tar.gz` or `.tgz`) in the layout CRI-O, containerd and checkpointctl
//! share, so that their tools read ours:
//!
//! ```text
//! checkpoint/       CRIU's images of the container's processes
//! dump.log          CRIU's log of the dump
//! stats-dump        CRIU's dump statistics
//! config.dump       id, name, image, runtime, creation and checkpoint times
//! spec.dump         the container's OCI runtime spec (with its
//!                   io.kubernetes.cri.* annotations: pod, name, image)
//! status.dump       the CRI ContainerStatus, as containerd writes it
//! rootfs-diff.tar   what the container wrote: its writable layer
//! deleted.files     JSON list of image files the container deleted
//! container.log     the container's CRI log so far
//! ```
//!
//! The writable layer is the overlay upper dir: its whiteouts (0/0
//! character devices) and the lower entries an opaque directory hides are
//! listed in `deleted.files` instead of being archived, as CRI-O does;
//! unix sockets are left out.
//!
//! The archive is written to a temporary file beside its location and
//! renamed into place once complete: the location holds a whole archive
//! or nothing.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// CRIU's images, in the archive and in the work directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The container's writable layer as a tar.
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// JSON list of deleted image files.
pub const DELETED_FILES: &str = "deleted.files";
/// checkpointctl's container metadata.
pub const CONFIG_DUMP: &str = "config.dump";
/// The OCI runtime spec.
pub const SPEC_DUMP: &str = "spec.dump";
/// The CRI container status.
pub const STATUS_DUMP: &str = "status.dump";
/// The container's log.
pub const CONTAINER_LOG: &str = "container.log";
/// What the archive holds from the work directory, in this order; missing
/// optional entries are left out.
const ENTRIES: [(&str, bool); 9] = [
    (CONFIG_DUMP, true),
    (SPEC_DUMP, true),
    (STATUS_DUMP, true),
    (CHECKPOINT_DIR, true),
    ("dump.log", false),
    ("stats-dump", false),
    (ROOTFS_DIFF, true),
    (DELETED_FILES, false),
    (CONTAINER_LOG, false),
];
/// overlayfs's mark of a directory that hides the lower layers' entries.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why the archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The request gave up before the archive was complete; nothing was
    /// put at its location.
    #[error("the checkpoint request was abandoned before its archive was complete")]
    Abandoned,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// Whether an archive at `location` is gzip-compressed (by its name).
pub fn gzipped(location: &Path) -> bool {
    let name = location
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Writes `<work>/rootfs-diff.tar` and, when the container deleted image
/// files, `<work>/deleted.files` from the writable layer `upper` over
/// the image's `lowerdirs`.
pub fn write_rootfs_diff(
    upper: &Path,
    lowerdirs: &[PathBuf],
    work: &Path,
) -> Result<(), ArchiveError> {
    let path = work.join(ROOTFS_DIFF);
    let file = create_private(&path)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    tar.follow_symlinks(false);
    let mut deleted = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io("read directory", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io("read directory", &dir))?;
        names.sort();
        if !rel.as_os_str().is_empty() && opaque(&dir) {
            // Everything the lower layers have here is hidden, except what
            // the upper dir has again.
            for lower in lowerdirs {
                let Ok(entries) = std::fs::read_dir(lower.join(&rel)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if !names.contains(&entry.file_name()) {
                        deleted.insert(absolute(&rel.join(entry.file_name())));
                    }
                }
            }
        }
        for name in names {
            let rel = rel.join(&name);
            let full = upper.join(&rel);
            let meta = std::fs::symlink_metadata(&full).map_err(io("stat", &full))?;
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                deleted.insert(absolute(&rel));
                continue;
            }
            // A socket cannot be archived, nor restored: the process that
            // listens on it binds it again (as Docker's and CRI-O's diffs do).
            if meta.file_type().is_socket() {
                continue;
            }
            tar.append_path_with_name(&full, &rel)
                .map_err(io("archive", &full))?;
            if meta.is_dir() {
                stack.push(rel);
            }
        }
    }
    let out = tar.into_inner().map_err(io("write", &path))?;
    finish(out, &path)?;
    if !deleted.is_empty() {
        let path = work.join(DELETED_FILES);
        let json = serde_json::to_vec(&deleted).map_err(|e| ArchiveError::Io {
            op: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, json).map_err(io("write", &path))?;
    }
    Ok(())
}

/// `rel` as the container sees it: `/etc/passwd`.
fn absolute(rel: &Path) -> String {
    Path::new("/").join(rel).to_string_lossy().into_owned()
}

/// Whether overlayfs marked `dir` opaque.
fn opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
}

/// The lower dirs of the overlay mounted at `mountpoint`, from
/// `/proc/self/mountinfo` (empty when it is not mounted).
pub fn overlay_lowerdirs(mountpoint: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    lowerdirs_in(&mountinfo, mountpoint)
}

fn lowerdirs_in(mountinfo: &str, mountpoint: &Path) -> Vec<PathBuf> {
    let wanted = mountpoint.to_string_lossy();
    for line in mountinfo.lines() {
        // `<id> <parent> <dev> <root> <mountpoint> <opts> [optional...] - <type> <source> <super opts>`
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4).map(|m| unescape(m)) != Some(wanted.to_string())
            || fields.get(sep + 1) != Some(&"overlay")
        {
            continue;
        }
        let options = fields.get(sep + 3).copied().unwrap_or_default();
        return options
            .split(',')
            .filter_map(|o| o.strip_prefix("lowerdir="))
            .flat_map(|dirs| dirs.split(':'))
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(unescape(d)))
            .collect();
    }
    Vec::new()
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes the archive of `work` (see the module's layout) at `location`:
/// into a temporary file beside it, renamed into place when complete if
/// `wanted` still says so.
pub fn write_archive(
    work: &Path,
    location: &Path,
    wanted: &dyn Fn() -> bool,
) -> Result<(), ArchiveError> {
    for (name, required) in ENTRIES {
        let path = work.join(name);
        if required && !path.exists() {
            return Err(ArchiveError::Io {
                op: "archive",
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    }
    let parent = location.parent().unwrap_or(Path::new("/"));
    let name = location
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = crate::id::random_hex(6).map_err(io("read random bytes for", location))?;
    let temp = parent.join(format!(".{name}.{suffix}.tmp"));
    let written = write_to(work, &temp, gzipped(location)).and_then(|()| {
        if !wanted() {
            return Err(ArchiveError::Abandoned);
        }
        std::fs::rename(&temp, location).map_err(io("rename into", location))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
        return written;
    }
    // The rename is durable once the directory is.
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_to(work: &Path, temp: &Path, gzip: bool) -> Result<(), ArchiveError> {
    let out = BufWriter::new(create_private(temp)?);
    let out = if gzip {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        append_entries(&mut gz, work, temp)?;
        // The gzip trailer.
        gz.finish().map_err(io("write", temp))?
    } else {
        let mut out = out;
        append_entries(&mut out, work, temp)?;
        out
    };
    finish(out, temp)
}

/// The work directory's entries, in the layout's order, as a tar.
fn append_entries<W: Write>(out: &mut W, work: &Path, temp: &Path) -> Result<(), ArchiveError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for (name, _) in ENTRIES {
        let path = work.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let added = if meta.is_dir() {
            tar.append_dir_all(name, &path)
        } else {
            tar.append_path_with_name(&path, name)
        };
        added.map_err(io("archive", &path))?;
    }
    tar.finish().map_err(io("write", temp))
}

/// A new file only its owner reads: it holds the container's memory.
fn create_private(path: &Path) -> Result<File, ArchiveError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))
}

fn finish(out: BufWriter<File>, path: &Path) -> Result<(), ArchiveError> {
    let file = out.into_inner().map_err(|e| ArchiveError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn names(archive: &Path, gzip: bool) -> Vec<String> {
        let file = File::open(archive).expect("open archive");
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        tar::Archive::new(reader)
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn work_dir() -> tempfile::TempDir {
        let work = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(work.path().join(CHECKPOINT_DIR)).expect("mkdir");
        std::fs::write(
            work.path().join(CHECKPOINT_DIR).join("pages-1.img"),
            b"pages",
        )
        .expect("write");
        for name in [CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, ROOTFS_DIFF, "dump.log"] {
            std::fs::write(work.path().join(name), b"{}").expect("write");
        }
        work
    }

    #[test]
    fn writes_the_layout_plain_or_gzipped_and_nothing_else() {
        let work = work_dir();
        let out = tempfile::tempdir().expect("tempdir");
        for (name, gzip) in [("c.tar", false), ("c.tar.gz", true), ("c.TGZ", true)] {
            let location = out.path().join(name);
            assert_eq!(gzipped(&location), gzip);
            write_archive(work.path(), &location, &|| true).expect("archive");
            let names = names(&location, gzip);
            for wanted in [
                CONFIG_DUMP,
                SPEC_DUMP,
                STATUS_DUMP,
                "checkpoint/pages-1.img",
                ROOTFS_DIFF,
                "dump.log",
            ] {
                assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
            }
            assert!(
                !names
                    .iter()
                    .any(|n| n == DELETED_FILES || n == CONTAINER_LOG)
            );
            let mode = std::fs::metadata(&location).expect("stat").mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let left: Vec<_> = std::fs::read_dir(out.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 3, "temporary files left: {left:?}");
    }

    #[test]
    fn a_failed_archive_leaves_nothing() {
        let work = work_dir();
        std::fs::remove_file(work.path().join(SPEC_DUMP)).expect("rm");
        let out = tempfile::tempdir().expect("tempdir");
        let location = out.path().join("c.tar");
        assert!(write_archive(work.path(), &location, &|| true).is_err());
        assert_eq!(std::fs::read_dir(out.path()).expect("read").count(), 0);
        // Complete but no longer wanted: nothing either.
        let work = work_dir();
        assert!(matches!(
            write_archive(work.path(), &location, &|| false),
            Err(ArchiveError::Abandoned)
        ));
        assert_eq!(std::fs::read_dir(out.path()).expect("read").count(), 0);
        // A location in a missing directory fails too, and leaves nothing.
        let work = work_dir();
        let missing = out.path().join("nope").join("c.tar");
        assert!(write_archive(work.path(), &missing, &|| true).is_err());
        assert_eq!(std::fs::read_dir(out.path()).expect("read").count(), 0);
    }

    #[test]
    fn rootfs_diff_archives_the_upper_dir_and_lists_whiteouts() {
        let upper = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(upper.path().join("data/sub")).expect("mkdir");
        std::fs::write(upper.path().join("data/sub/counter"), b"42").expect("write");
        std::os::unix::fs::symlink("/nowhere", upper.path().join("link")).expect("symlink");
        let _socket = std::os::unix::net::UnixListener::bind(upper.path().join("data/app.sock"))
            .expect("bind a socket");
        write_rootfs_diff(upper.path(), &[], work.path()).expect("diff");
        let names = names(&work.path().join(ROOTFS_DIFF), false);
        for wanted in ["data", "data/sub", "data/sub/counter", "link"] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == wanted),
                "{wanted} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("app.sock")), "{names:?}");
        assert!(!work.path().join(DELETED_FILES).exists());
    }

    #[test]
    fn reads_lowerdirs_from_mountinfo() {
        let mountinfo = "\
25 1 0:22 / /proc rw - proc proc rw
90 25 0:50 / /var/lib/berth/containers/abc/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/2/fs:/s/1/fs,upperdir=/var/lib/berth/containers/abc/fs,workdir=/w
91 25 0:51 / /with\\040space rw - overlay overlay rw,lowerdir=/a\\040b
";
        assert_eq!(
            lowerdirs_in(mountinfo, Path::new("/var/lib/berth/containers/abc/rootfs")),
            [PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")]
        );
        assert_eq!(
            lowerdirs_in(mountinfo, Path::new("/with space")),
            [PathBuf::from("/a b")]
        );
        assert!(lowerdirs_in(mountinfo, Path::new("/proc")).is_empty());
    }
}
