//! A container's root filesystem: an overlay of its image's snapshots (the
//! lower dirs, read-only, shared) and a writable layer of its own, under
//! the container's directory:
//!
//! ```text
//! <dir>/fs       upper dir: everything the container writes
//! <dir>/work     overlay's work dir
//! <dir>/rootfs   the mount point given to the OCI runtime
//! ```

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The kernel takes mount options of at most one page.
const MAX_OPTIONS: usize = 4095;

/// Why a root filesystem could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The image has no layer.
    #[error("the image has no layers")]
    NoLayers,
    /// The overlay options do not fit in a page (too many or too deep layers).
    #[error(
        "overlay options for {layers} layers are {len} bytes, more than the kernel's {MAX_OPTIONS}"
    )]
    TooManyLayers {
        /// Number of lower dirs.
        layers: usize,
        /// Length of the option string.
        len: usize,
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

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { op, path, source }
}

/// The writable layer (overlay upper dir) in a container directory.
pub fn upper_dir(dir: &Path) -> PathBuf {
    dir.join("fs")
}

/// The mount point of the root filesystem in a container directory.
pub fn mountpoint(dir: &Path) -> PathBuf {
    dir.join("rootfs")
}

/// The overlay mount options for `lowerdirs` (top layer first).
fn options(lowerdirs: &[PathBuf], upper: &Path, work: &Path) -> Result<String, RootfsError> {
    if lowerdirs.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let lower: Vec<String> = lowerdirs.iter().map(|d| d.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_OPTIONS {
        return Err(RootfsError::TooManyLayers {
            layers: lowerdirs.len(),
            len: options.len(),
        });
    }
    Ok(options)
}

/// Creates the writable layer and mounts the overlay; returns the mount
/// point. `lowerdirs` are the image's snapshot dirs, top layer first.
pub fn mount_rootfs(dir: &Path, lowerdirs: &[PathBuf]) -> Result<PathBuf, RootfsError> {
    let upper = upper_dir(dir);
    let work = dir.join("work");
    let target = mountpoint(dir);
    let options = options(lowerdirs, &upper, &work)?;
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).map_err(io("create directory", d))?;
    }
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io("mount overlay on", &target)(e.into()))?;
    Ok(target)
}

/// Unmounts the root filesystem if it is mounted; what is not mounted is
/// fine.
pub fn unmount_rootfs(dir: &Path) -> Result<(), RootfsError> {
    let target = mountpoint(dir);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("unmount", &target)(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_layers_top_first_and_fit_a_page() {
        let lower = vec![PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")];
        let o = options(&lower, Path::new("/c/fs"), Path::new("/c/work")).expect("options");
        assert_eq!(
            o,
            "lowerdir=/s/2/fs:/s/1/fs,upperdir=/c/fs,workdir=/c/work,index=off"
        );
        assert!(matches!(
            options(&[], Path::new("/u"), Path::new("/w")),
            Err(RootfsError::NoLayers)
        ));
        let many: Vec<PathBuf> = (0..200)
            .map(|n| PathBuf::from(format!("/var/lib/berth/snapshots/{n}/fs")))
            .collect();
        let e = options(&many, Path::new("/u"), Path::new("/w")).expect_err("too long");
        assert!(e.to_string().contains("200 layers"), "{e}");
    }
}
