//! Unpacking one layer tar into a snapshot directory, on a blocking thread,
//! while the layer still streams in.
//!
//! The stream is decompressed, hashed (the diff ID is the sha256 of the
//! uncompressed tar) and applied entry by entry through [`Rooted`], which
//! keeps every write beneath the snapshot. The rules for what a layer may
//! contain:
//!
//! - Absolute entry paths are taken relative to the layer root (`/etc/x`
//!   is `etc/x`), as Docker and containerd do; `.` components are dropped
//!   and `..` is resolved by name. A path whose `..` would climb above the
//!   layer root is refused, and so is any path longer than 4096 bytes.
//! - No entry is ever created through a symbolic link: an entry whose
//!   parent path crosses a symbolic link (one the layer made itself, such
//!   as `evil -> /etc` followed by `evil/passwd`) is refused. A symbolic
//!   link's own target is data and may point anywhere; it is never
//!   followed while unpacking.
//! - A hard link must name an entry already unpacked in this layer, by a
//!   path that stays inside it; anything else is refused.
//! - Parents an entry implies but the layer does not list are created as
//!   root-owned 0755 directories (as Docker's overlay2 driver does).
//! - An entry replaces whatever an earlier entry put at its path, except
//!   that a directory over a directory keeps its content and takes the new
//!   metadata.
//! - OCI whiteouts become overlay whiteouts: `.wh.NAME` a 0/0 character
//!   device `NAME`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on
//!   its directory. Other `.wh..wh.` entries (aufs metadata) are skipped.
//! - Modes (setuid, setgid, sticky included), owners, mtimes and PAX
//!   `SCHILY.xattr.*` extended attributes are kept, except `trusted.overlay.*`
//!   and `user.overlay.*`, which would let a layer steer the overlay mount;
//!   attributes the file system does not support are skipped with a warning.
//!
//! A refused entry fails the whole unpack; the caller removes what was
//! written.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::SnapshotError;
use super::compression::Compression;
use super::rooted::{self, Cleared, Rooted, TreeUsage};
use crate::content::Digest;
use crate::input::quoted;

/// The longest entry path accepted (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;

/// Read-ahead on the layer stream.
const STREAM_BUFFER: usize = 256 * 1024;

/// Copy buffer for file contents.
const COPY_BUFFER: usize = 128 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Reads an async stream from a blocking thread, giving up as soon as the
/// unpack is cancelled, even while the stream has nothing to give.
pub(super) struct BlockingReader<R> {
    inner: R,
    handle: tokio::runtime::Handle,
    cancel: CancellationToken,
}

impl<R> BlockingReader<R> {
    /// Must be created on the runtime that drives `inner`.
    pub(super) fn new(inner: R, cancel: CancellationToken) -> BlockingReader<R> {
        BlockingReader {
            inner,
            handle: tokio::runtime::Handle::current(),
            cancel,
        }
    }
}

impl<R: AsyncRead + Unpin> Read for BlockingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let BlockingReader {
            inner,
            handle,
            cancel,
        } = self;
        handle.block_on(async {
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(io::Error::other("unpack cancelled")),
                read = inner.read(buf) => read,
            }
        })
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the layer `diff_id` read from `stream` into the empty directory
/// `dir`, checks that the uncompressed tar hashes to `diff_id`, and
/// measures the result. On error `dir` holds an unspecified part of the
/// layer: the caller removes it.
pub(super) fn unpack(
    stream: impl Read,
    compression: Compression,
    diff_id: &Digest,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<TreeUsage, SnapshotError> {
    let read_error = |source: io::Error| {
        if cancel.is_cancelled() {
            SnapshotError::Cancelled {
                layer: diff_id.clone(),
            }
        } else {
            SnapshotError::Read {
                layer: diff_id.clone(),
                source,
            }
        }
    };
    let buffered = BufReader::with_capacity(STREAM_BUFFER, stream);
    let tar: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(read_error)?)
        }
    };
    let mut tar = HashingReader {
        inner: tar,
        hasher: Sha256::new(),
    };
    let root = Rooted::open(dir).map_err(|source| SnapshotError::Io {
        op: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut layer = Layer {
        diff_id,
        root,
        dir_times: Vec::new(),
        buffer: vec![0; COPY_BUFFER],
    };
    {
        let mut archive = tar::Archive::new(&mut tar);
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            if cancel.is_cancelled() {
                return Err(SnapshotError::Cancelled {
                    layer: diff_id.clone(),
                });
            }
            layer.apply(&mut entry).map_err(|e| match e {
                // A read error inside an entry is the stream's fault.
                SnapshotError::Read { source, .. } => read_error(source),
                other => other,
            })?;
        }
    }
    // The diff ID covers the whole uncompressed stream, including the
    // padding after the end-of-archive blocks; draining also makes the
    // decompressor check its trailer.
    io::copy(&mut tar, &mut io::sink()).map_err(read_error)?;
    let actual = Digest::from_sha256(tar.hasher.finalize().into());
    if actual != *diff_id {
        return Err(SnapshotError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    layer.apply_dir_times()?;
    let io_error = |op: &'static str| {
        move |source: io::Error| SnapshotError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    let usage = rooted::usage(layer.root.root()).map_err(io_error("measure"))?;
    // One flush of the file system makes every unpacked byte durable before
    // the snapshot is recorded.
    rustix::fs::syncfs(layer.root.root()).map_err(|e| io_error("syncfs")(e.into()))?;
    Ok(usage)
}

/// Metadata of one entry.
struct Meta {
    mode: u32,
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// The state of one layer being applied.
struct Layer<'a> {
    diff_id: &'a Digest,
    root: Rooted,
    /// Directory mtimes, set once every entry is in (creating entries in a
    /// directory changes its mtime).
    dir_times: Vec<(Vec<u8>, Timestamps)>,
    buffer: Vec<u8>,
}

/// What an entry is, once its tar type and name are understood.
enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Node(FileType, u32, u32),
    Whiteout,
    Opaque,
}

impl Layer<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), SnapshotError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let header_type = entry.header().entry_type();
        if header_type.is_pax_global_extensions() {
            return Ok(());
        }
        let components = clean_path(&raw_path).map_err(|reason| self.refused(&shown, reason))?;
        let name = components.last().copied().unwrap_or_default();

        let kind = if name.starts_with(WHITEOUT_PREFIX) {
            if name == WHITEOUT_OPAQUE {
                Kind::Opaque
            } else if name.starts_with(WHITEOUT_META_PREFIX) {
                tracing::debug!(layer = %self.diff_id, path = %shown, "aufs metadata entry skipped");
                return Ok(());
            } else {
                let hidden = &name[WHITEOUT_PREFIX.len()..];
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(self.bad(&shown, "is a whiteout of no name"));
                }
                Kind::Whiteout
            }
        } else {
            match header_type.as_byte() {
                // Pre-POSIX tars mark directories with a trailing slash.
                b'\0' if raw_path.ends_with(b"/") => Kind::Dir,
                b'0' | b'\0' | b'7' | b'S' => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink(self.link_target(entry, &shown)?),
                b'1' => Kind::Hardlink(self.link_target(entry, &shown)?),
                b'6' => Kind::Node(FileType::Fifo, 0, 0),
                b'3' | b'4' => {
                    let file_type = if header_type.as_byte() == b'3' {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    let header = entry.header();
                    let unreadable = |e: io::Error| {
                        self.bad(&shown, &format!("has an unreadable device number: {e}"))
                    };
                    // Old headers have no device fields: 0.
                    let major = header.device_major().map_err(unreadable)?.unwrap_or(0);
                    let minor = header.device_minor().map_err(unreadable)?.unwrap_or(0);
                    Kind::Node(file_type, major, minor)
                }
                other => {
                    return Err(self.bad(
                        &shown,
                        &format!("has unsupported tar entry type {:?}", char::from(other)),
                    ));
                }
            }
        };

        if components.is_empty() && !matches!(kind, Kind::Dir) {
            return Err(self.bad(&shown, "names the layer root but is not a directory"));
        }
        let meta = self.meta(entry, &shown)?;
        let (parent, name) = match components.split_last() {
            Some((name, parent)) => (parent, *name),
            None => (&[][..], &b""[..]),
        };
        match kind {
            Kind::Opaque => self.opaque(parent, &shown),
            Kind::Whiteout => self.whiteout(parent, &name[WHITEOUT_PREFIX.len()..], &meta, &shown),
            Kind::File => self.file(parent, name, &meta, entry, &shown),
            Kind::Dir => self.dir(&components, &meta, &shown),
            Kind::Symlink(target) => self.symlink(parent, name, &target, &meta, &shown),
            Kind::Hardlink(target) => self.hardlink(&components, &target, &shown),
            Kind::Node(file_type, major, minor) => {
                self.node(parent, name, file_type, major, minor, &meta, &shown)
            }
        }
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Vec<u8>, SnapshotError> {
        match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => Ok(target.into_owned()),
            _ => Err(self.bad(shown, "is a link without a target")),
        }
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, SnapshotError> {
        let header = entry.header();
        let field = |what: &str, value: io::Result<u64>| {
            value.map_err(|e| self.bad(shown, &format!("has an unreadable {what}: {e}")))
        };
        let id = |what: &str, value: u64| {
            // -1 (u32::MAX) would mean "leave unchanged" to chown.
            u32::try_from(value)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| self.bad(shown, &format!("has {what} {value}, out of range")))
        };
        let mode = header
            .mode()
            .map_err(|e| self.bad(shown, &format!("has an unreadable mode: {e}")))?
            & 0o7777;
        let uid = id("uid", field("uid", header.uid())?)?;
        let gid = id("gid", field("gid", header.gid())?)?;
        let header_mtime = field("mtime", header.mtime())?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(header_mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        let extensions = entry
            .pax_extensions()
            .map_err(|e| self.bad(shown, &format!("has unreadable PAX headers: {e}")))?;
        for extension in extensions.into_iter().flatten() {
            let extension = extension
                .map_err(|e| self.bad(shown, &format!("has a malformed PAX header: {e}")))?;
            let Ok(key) = extension.key() else { continue };
            if key == "mtime" {
                if let Some(t) = pax_time(extension.value_bytes()) {
                    mtime = t;
                }
            } else if key == "atime" {
                atime = pax_time(extension.value_bytes());
            } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                    tracing::warn!(layer = %self.diff_id, path = %shown, xattr = name, "overlay xattr in a layer ignored");
                    continue;
                }
                xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
            }
        }
        Ok(Meta {
            mode,
            uid: rustix::fs::Uid::from_raw(uid),
            gid: rustix::fs::Gid::from_raw(gid),
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }

    /// The parent directory of an entry, created where missing.
    fn parent(&mut self, parent: &[&[u8]], shown: &str) -> Result<BorrowedFd<'_>, SnapshotError> {
        let diff_id = self.diff_id;
        self.root
            .parent(parent)
            .map_err(|e| resolve_error(diff_id, shown, "open parent directory", e))
    }

    /// Removes what an earlier entry left at `name`.
    fn clear(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        keep_dir: bool,
        shown: &str,
    ) -> Result<Cleared, SnapshotError> {
        let diff_id = self.diff_id;
        self.parent(parent, shown)?;
        self.root
            .clear(parent, name, keep_dir)
            .map_err(|e| resolve_error(diff_id, shown, "replace existing entry", e))
    }

    fn opaque(&mut self, parent: &[&[u8]], shown: &str) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        let dir = self.parent(parent, shown)?;
        rustix::fs::fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(|e| apply_error(diff_id, shown, "set trusted.overlay.opaque", e.into()))
    }

    fn whiteout(
        &mut self,
        parent: &[&[u8]],
        hidden: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        self.clear(parent, hidden, false, shown)?;
        let dir = self.parent(parent, shown)?;
        let fail = |op| move |e: rustix::io::Errno| apply_error(diff_id, shown, op, e.into());
        rustix::fs::mknodat(
            dir,
            os(hidden),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(fail("create whiteout device"))?;
        rustix::fs::chownat(
            dir,
            os(hidden),
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(fail("chown"))
    }

    fn file<R: Read>(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        self.clear(parent, name, false, shown)?;
        let dir = self.parent(parent, shown)?;
        let fd = rustix::fs::openat(
            dir,
            os(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| apply_error(diff_id, shown, "create file", e.into()))?;
        let mut file = std::fs::File::from(fd);
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(SnapshotError::Read {
                        layer: diff_id.clone(),
                        source,
                    });
                }
            };
            file.write_all(&self.buffer[..n])
                .map_err(|e| apply_error(diff_id, shown, "write file", e))?;
        }
        set_meta(&file, meta).map_err(|(op, e)| apply_error(diff_id, shown, op, e))
    }

    fn dir(&mut self, components: &[&[u8]], meta: &Meta, shown: &str) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        let fd = match components.split_last() {
            None => self
                .root
                .open_dir(&[])
                .map_err(|e| apply_error(diff_id, shown, "open", e))?,
            Some((name, parent)) => {
                if self.clear(parent, name, true, shown)? != Cleared::KeptDir {
                    let dir = self.parent(parent, shown)?;
                    rustix::fs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| apply_error(diff_id, shown, "create directory", e.into()))?;
                }
                let dir = self.parent(parent, shown)?;
                rooted::open_child_dir(dir, name)
                    .map_err(|e| resolve_error(diff_id, shown, "open directory", e))?
            }
        };
        set_meta(&fd, meta).map_err(|(op, e)| apply_error(diff_id, shown, op, e))?;
        self.dir_times
            .push((rooted::join(components), meta.times.clone()));
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        self.clear(parent, name, false, shown)?;
        let dir = self.parent(parent, shown)?;
        rustix::fs::symlinkat(os(target), dir, os(name))
            .map_err(|e| apply_error(diff_id, shown, "create symlink", e.into()))?;
        set_meta_at(dir, name, meta, false).map_err(|(op, e)| apply_error(diff_id, shown, op, e))
    }

    fn hardlink(
        &mut self,
        components: &[&[u8]],
        target: &[u8],
        shown: &str,
    ) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        let target_shown = String::from_utf8_lossy(target).into_owned();
        let target_components = clean_path(target).map_err(|reason| {
            self.refused(
                shown,
                &format!("links to {}: {reason}", quoted(&target_shown)),
            )
        })?;
        let Some((target_name, target_parent)) = target_components.split_last() else {
            return Err(self.bad(shown, "is a hard link to the layer root"));
        };
        if target_components == components {
            return Err(self.bad(shown, "is a hard link to itself"));
        }
        let Some((name, parent)) = components.split_last() else {
            return Err(self.bad(shown, "names the layer root but is not a directory"));
        };
        let missing = || SnapshotError::BadEntry {
            layer: diff_id.clone(),
            path: quoted(shown),
            reason: format!(
                "is a hard link to {}, which is not in the layer",
                quoted(&target_shown)
            ),
        };
        let target_dir = match self.root.open_dir(target_parent) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => {
                let op = format!("find hard link target {}", quoted(&target_shown));
                return Err(resolve_error(diff_id, shown, &op, e));
            }
        };
        self.clear(parent, name, false, shown)?;
        let dir = self.parent(parent, shown)?;
        match rustix::fs::linkat(
            &target_dir,
            os(target_name),
            dir,
            os(name),
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Err(missing()),
            Err(e) => Err(apply_error(diff_id, shown, "create hard link", e.into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        file_type: FileType,
        major: u32,
        minor: u32,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), SnapshotError> {
        let diff_id = self.diff_id;
        self.clear(parent, name, false, shown)?;
        let dir = self.parent(parent, shown)?;
        rustix::fs::mknodat(
            dir,
            os(name),
            file_type,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| apply_error(diff_id, shown, "create device or fifo", e.into()))?;
        set_meta_at(dir, name, meta, true).map_err(|(op, e)| apply_error(diff_id, shown, op, e))
    }

    /// Sets the deferred directory times, deepest last-listed first.
    fn apply_dir_times(&mut self) -> Result<(), SnapshotError> {
        for (path, times) in self.dir_times.iter().rev() {
            let components: Vec<&[u8]> = if path.is_empty() {
                Vec::new()
            } else {
                path.split(|&b| b == b'/').collect()
            };
            // A later entry may have replaced the directory: nothing to do.
            let Ok(fd) = self.root.open_dir(&components) else {
                continue;
            };
            rustix::fs::futimens(&fd, times).map_err(|e| {
                apply_error(
                    self.diff_id,
                    &String::from_utf8_lossy(path),
                    "set times",
                    e.into(),
                )
            })?;
        }
        Ok(())
    }

    fn refused(&self, shown: &str, reason: &str) -> SnapshotError {
        SnapshotError::UnsafeEntry {
            layer: self.diff_id.clone(),
            path: quoted(shown),
            reason: reason.to_owned(),
        }
    }

    fn bad(&self, shown: &str, reason: &str) -> SnapshotError {
        SnapshotError::BadEntry {
            layer: self.diff_id.clone(),
            path: quoted(shown),
            reason: reason.to_owned(),
        }
    }
}

fn os(bytes: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(bytes)
}

/// Owner, mode, xattrs and times of an open file or directory, in the order
/// that keeps them: chown clears setuid, setgid and file capabilities, so
/// mode and xattrs come after it.
fn set_meta(fd: &impl AsFd, meta: &Meta) -> Result<(), (&'static str, io::Error)> {
    let fd = fd.as_fd();
    rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(|e| ("chown", e.into()))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| ("chmod", e.into()))?;
    for (name, value) in &meta.xattrs {
        let set = rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty());
        xattr_result(name, set)?;
    }
    let file_type = rustix::fs::fstat(fd)
        .map(|s| FileType::from_raw_mode(s.st_mode))
        .map_err(|e| ("stat", e.into()))?;
    // Directory times are set once the whole layer is in.
    if file_type != FileType::Directory {
        rustix::fs::futimens(fd, &meta.times).map_err(|e| ("set times", e.into()))?;
    }
    Ok(())
}

/// [`set_meta`] for an entry that cannot be opened: a symbolic link, or a
/// device or fifo (opening those has effects). `chmod` only applies to the
/// latter; Linux has no symlink modes.
fn set_meta_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    chmod: bool,
) -> Result<(), (&'static str, io::Error)> {
    rustix::fs::chownat(
        dir,
        os(name),
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ("chown", e.into()))?;
    if chmod {
        // `name` is the device or fifo just made in a directory only this
        // unpack writes to, so following it cannot lead elsewhere.
        rustix::fs::chmodat(
            dir,
            os(name),
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| ("chmod", e.into()))?;
    }
    if !meta.xattrs.is_empty() {
        // There is no fd-relative lsetxattr: go through the directory's
        // /proc entry; `name` is one component and the final component is
        // not followed.
        let path = proc_path(dir, name);
        for (xattr, value) in &meta.xattrs {
            let set = rustix::fs::lsetxattr(&path, xattr.as_str(), value, XattrFlags::empty());
            xattr_result(xattr, set)?;
        }
    }
    rustix::fs::utimensat(dir, os(name), &meta.times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| ("set times", e.into()))
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    std::path::PathBuf::from(std::ffi::OsString::from_vec(path))
}

fn xattr_result(
    name: &str,
    result: rustix::io::Result<()>,
) -> Result<(), (&'static str, io::Error)> {
    match result {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOTSUP) => {
            tracing::warn!(
                xattr = name,
                "extended attribute not supported here; skipped"
            );
            Ok(())
        }
        Err(e) => Err(("set extended attribute", e.into())),
    }
}

/// Parses a PAX time: seconds, optionally negative, with an optional
/// fraction.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, fraction) = value.split_once('.').unwrap_or((value, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let mut tv_nsec: i64 = digits.parse().ok()?;
    let mut tv_sec = tv_sec;
    // "-1.5" is one and a half seconds before the epoch.
    if secs.starts_with('-') && tv_nsec > 0 {
        tv_sec -= 1;
        tv_nsec = 1_000_000_000 - tv_nsec;
    }
    Some(Timespec { tv_sec, tv_nsec })
}

/// The components of an entry path below the layer root: leading `/`
/// dropped, `.` and empty components skipped, `..` resolved by name.
/// Refuses a path that climbs above the root or is too long.
pub(super) fn clean_path(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.len() > MAX_PATH {
        return Err("its path is longer than 4096 bytes");
    }
    if path.contains(&0) {
        return Err("its path contains a NUL byte");
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("its path leaves the layer root through `..`");
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// An error from resolving a path beneath the root: the kernel's refusals
/// of symbolic links and escapes become [`SnapshotError::UnsafeEntry`].
fn resolve_error(diff_id: &Digest, shown: &str, op: &str, e: io::Error) -> SnapshotError {
    let reason = match rustix::io::Errno::from_io_error(&e) {
        Some(rustix::io::Errno::LOOP) => {
            Some("a component of its path is a symbolic link, which is never followed")
        }
        Some(rustix::io::Errno::XDEV) => Some("its path leaves the layer root"),
        _ => None,
    };
    match reason {
        Some(reason) => SnapshotError::UnsafeEntry {
            layer: diff_id.clone(),
            path: quoted(shown),
            reason: format!("{op}: {reason}"),
        },
        None => SnapshotError::Apply {
            layer: diff_id.clone(),
            path: quoted(shown),
            op: op.to_owned(),
            source: e,
        },
    }
}

fn apply_error(diff_id: &Digest, shown: &str, op: &str, source: io::Error) -> SnapshotError {
    SnapshotError::Apply {
        layer: diff_id.clone(),
        path: quoted(shown),
        op: op.to_owned(),
        source,
    }
}
