//! berthd's only unsafe code: the new mount API's system calls that no
//! safe wrapper in our dependencies offers (`open_tree`, `mount_setattr`,
//! `move_mount`), used to make idmapped mounts of a user namespace pod's
//! image layers.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc;

/// `struct mount_attr` of `<linux/mount.h>` (version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_IDMAP`: the mount maps ids through `userns_fd`'s mappings.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `OPEN_TREE_CLONE`: a detached copy of the mount, not the mount itself.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH`: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// A detached clone of the mount tree at `source` (not recursive) whose
/// ids are mapped through the mappings of the user namespace `userns` (an
/// open `/proc/<pid>/ns/user` or a pin of one): a file the host's uid 0
/// owns shows as owned by the host id that namespace maps its 0 to.
/// Attach it with [`attach`]; dropping it unmounts it.
pub fn idmapped_tree(source: &Path, userns: impl AsFd) -> io::Result<OwnedFd> {
    let path = c_path(source)?;
    // SAFETY: open_tree takes a NUL-terminated path that outlives the
    // call and plain integer flags; it returns a new fd that nothing else
    // owns, or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(fd).map_err(|_| io::Error::other("open_tree returned no fd"))?;
    // SAFETY: `raw` is the fresh fd open_tree just returned; only this
    // OwnedFd owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(raw) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_fd().as_raw_fd())
            .map_err(|_| io::Error::other("negative user namespace fd"))?,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from
    // `attr`, which is a live, properly laid out `struct mount_attr`, and
    // an empty NUL-terminated path (AT_EMPTY_PATH: the fd itself); both
    // fds are open for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount tree (from [`idmapped_tree`]) on `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: move_mount takes an open fd, an empty NUL-terminated source
    // path (MOVE_MOUNT_F_EMPTY_PATH: the fd itself) and a NUL-terminated
    // target path, all alive for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
