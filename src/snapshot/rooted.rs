//! File system operations confined beneath one directory: the snapshot
//! being unpacked.
//!
//! Every path is resolved from the root's file descriptor with `openat2`
//! and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV`, so the kernel refuses any resolution that would leave
//! the root or pass through a symbolic link, whatever the layer has put in
//! the tree before. Entries are then created with the `*at` calls on the
//! parent directory's descriptor and a single path component, which never
//! follow a symbolic link in the last component either.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Resolution rules for every lookup under the root.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// Flags to open a directory. `O_NOFOLLOW` is left to `RESOLVE_NO_SYMLINKS`,
/// which also covers the last component and reports `ELOOP` for it.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Joins path components with `/`.
pub(super) fn join(components: &[&[u8]]) -> Vec<u8> {
    components.join(&b'/')
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// What [`Rooted::clear`] found at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cleared {
    /// Nothing was there.
    Empty,
    /// Something was there and is gone.
    Removed,
    /// A directory was there and was kept.
    KeptDir,
}

/// A directory tree that every operation stays inside.
pub(super) struct Rooted {
    root: OwnedFd,
    /// The last parent directory resolved, by path: consecutive tar entries
    /// usually share it. Dropped whenever a directory is removed.
    last_parent: Option<(Vec<u8>, OwnedFd)>,
}

impl Rooted {
    /// Opens `path` (a directory berthd created) as the root.
    pub(super) fn open(path: &Path) -> io::Result<Rooted> {
        let root = rustix::fs::open(path, dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
        Ok(Rooted {
            root,
            last_parent: None,
        })
    }

    /// The root directory.
    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory at `components` below the root, refusing to
    /// pass through a symbolic link (`ELOOP`) or to leave the root
    /// (`EXDEV`).
    pub(super) fn open_dir(&self, components: &[&[u8]]) -> io::Result<OwnedFd> {
        let path = if components.is_empty() {
            b".".to_vec()
        } else {
            join(components)
        };
        Ok(rustix::fs::openat2(
            &self.root,
            os(&path),
            dir_flags(),
            Mode::empty(),
            beneath(),
        )?)
    }

    /// The directory that will hold an entry: `components` below the root,
    /// created (mode 0755, owned by berthd) where missing, as tar does for
    /// the implied parents of an entry.
    pub(super) fn parent(&mut self, components: &[&[u8]]) -> io::Result<BorrowedFd<'_>> {
        let key = join(components);
        let cached = matches!(&self.last_parent, Some((path, _)) if *path == key);
        if !cached {
            let fd = match self.open_dir(components) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.create_dirs(components)?,
                Err(e) => return Err(e),
            };
            self.last_parent = Some((key, fd));
        }
        match &self.last_parent {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(io::Error::other("parent directory cache is empty")),
        }
    }

    /// Walks `components` one at a time, creating the missing ones.
    fn create_dirs(&self, components: &[&[u8]]) -> io::Result<OwnedFd> {
        let mut dir = self.open_dir(&[])?;
        for component in components {
            let next = match open_child_dir(&dir, component) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&dir, os(component), Mode::from_raw_mode(0o700)) {
                        Ok(()) => {
                            let fd = open_child_dir(&dir, component)?;
                            // Not through mkdir's mode: the umask must not
                            // decide what containers may traverse.
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                            Ok(fd)
                        }
                        Err(rustix::io::Errno::EXIST) => open_child_dir(&dir, component),
                        Err(e) => Err(e.into()),
                    }
                }
                other => other,
            }?;
            dir = next;
        }
        Ok(dir)
    }

    /// Makes room for a new entry `name` in `parent`: removes what is there,
    /// except a directory when `keep_dir` (a directory entry over an
    /// existing directory keeps its content).
    pub(super) fn clear(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        keep_dir: bool,
    ) -> io::Result<Cleared> {
        let dir = self.parent(parent)?;
        let stat = match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(Cleared::Empty),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            rustix::fs::unlinkat(dir, os(name), AtFlags::empty())?;
            return Ok(Cleared::Removed);
        }
        if keep_dir {
            return Ok(Cleared::KeptDir);
        }
        let dir = rustix::io::dup(dir)?;
        // The tree may hold the cached parent: forget it.
        self.last_parent = None;
        remove_tree(&dir, name)?;
        Ok(Cleared::Removed)
    }
}

/// Opens the directory `name` in `dir` without following a symbolic link.
pub(super) fn open_child_dir(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        os(name),
        dir_flags(),
        Mode::empty(),
        beneath(),
    )?)
}

/// Removes `name` in `dir` and everything below it, without following
/// symbolic links.
pub(super) fn remove_tree(dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    let dir = dir.as_fd();
    let sub = open_child_dir(dir, name)?;
    for (child, is_dir) in children(&sub)? {
        if is_dir {
            remove_tree(&sub, &child)?;
        } else {
            rustix::fs::unlinkat(&sub, os(&child), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)?;
    Ok(())
}

/// The entries of a directory (without `.` and `..`), each with whether it
/// is a directory.
fn children(dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = rustix::fs::statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        out.push((name.to_vec(), is_dir));
    }
    Ok(out)
}

/// Disk usage of a tree: bytes allocated and inodes, each hard-linked inode
/// counted once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TreeUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Measures the tree under `dir` (the directory itself included).
pub(super) fn usage(dir: BorrowedFd<'_>) -> io::Result<TreeUsage> {
    let mut total = TreeUsage::default();
    let mut linked = HashSet::new();
    let stat = rustix::fs::fstat(dir)?;
    add(&mut total, &mut linked, &stat);
    let root = rustix::io::dup(dir)?;
    usage_below(&root, &mut total, &mut linked)?;
    Ok(total)
}

fn add(total: &mut TreeUsage, linked: &mut HashSet<u64>, stat: &rustix::fs::Stat) {
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    if !is_dir && stat.st_nlink > 1 && !linked.insert(stat.st_ino) {
        return;
    }
    total.inodes += 1;
    total.bytes += u64::try_from(stat.st_blocks).unwrap_or(0) * 512;
}

fn usage_below(dir: &OwnedFd, total: &mut TreeUsage, linked: &mut HashSet<u64>) -> io::Result<()> {
    for (name, _) in children(dir)? {
        let stat = rustix::fs::statat(dir, os(&name), AtFlags::SYMLINK_NOFOLLOW)?;
        add(total, linked, &stat);
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let sub = open_child_dir(dir, &name)?;
            usage_below(&sub, total, linked)?;
        }
    }
    Ok(())
}
