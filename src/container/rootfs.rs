//! A container's root filesystem: an overlay of its image's snapshots (the
//! lower dirs, read-only, shared) and a writable layer of its own, under
//! the container's directory:
//!
//! ```text
//! <dir>/fs       upper dir: everything the container writes
//! <dir>/work     overlay's work dir
//! <dir>/rootfs   the mount point given to the OCI runtime
//! ```
//!
//! In a pod with a user namespace of its own the container's root must own
//! its rootfs, as it would on the node. The layers are shared and owned by
//! the host's root, so, as containerd 2 does on kernels >= 5.19, each lower
//! dir enters the overlay through an idmapped mount made with the pod's
//! user namespace (`<dir>/idmapped/<n>`, detached again once the overlay
//! holds it): the image's uid 0 shows as the host id the pod maps its root
//! to. The upper dir's root is chowned to that id; what the container
//! writes is stored with its host ids. No layer is copied or chowned.

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

/// The user namespace a pod's containers run in: their rootfs is idmapped
/// with its mappings.
#[derive(Debug, Clone, Copy)]
pub struct RootfsIdmap<'a> {
    /// The pod's user namespace (its pin, `<sandbox state>/ns/user`).
    pub userns: &'a Path,
    /// The host uid the namespace maps uid 0 to.
    pub root_uid: u32,
    /// The host gid the namespace maps gid 0 to.
    pub root_gid: u32,
}

/// Idmapped mounts of the lower dirs under `<dir>/idmapped`, unmounted
/// and removed when dropped: the overlay keeps its own reference to each.
struct IdmappedLayers {
    base: PathBuf,
    mounted: Vec<PathBuf>,
}

impl IdmappedLayers {
    fn mount(dir: &Path, lowerdirs: &[PathBuf], userns: &Path) -> Result<Self, RootfsError> {
        let userns_file = std::fs::File::open(userns).map_err(io("open user namespace", userns))?;
        let mut layers = Self {
            base: dir.join("idmapped"),
            mounted: Vec::new(),
        };
        std::fs::create_dir_all(&layers.base).map_err(io("create directory", &layers.base))?;
        for (n, lower) in lowerdirs.iter().enumerate() {
            let target = layers.base.join(n.to_string());
            std::fs::create_dir_all(&target).map_err(io("create directory", &target))?;
            let tree = crate::sys::idmapped_tree(lower, &userns_file)
                .map_err(io("make an idmapped mount of", lower))?;
            crate::sys::attach(&tree, &target).map_err(io("attach idmapped layer on", &target))?;
            layers.mounted.push(target);
        }
        Ok(layers)
    }
}

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        for target in &self.mounted {
            if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %target.display(), error = %e, "idmapped layer not unmounted");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            tracing::warn!(path = %self.base.display(), error = %e, "idmapped layer dirs not removed");
        }
    }
}

/// Creates the writable layer and mounts the overlay; returns the mount
/// point. `lowerdirs` are the image's snapshot dirs, top layer first;
/// `idmap`, for a pod with its own user namespace, makes the container's
/// root own the rootfs.
pub fn mount_rootfs(
    dir: &Path,
    lowerdirs: &[PathBuf],
    idmap: Option<RootfsIdmap<'_>>,
) -> Result<PathBuf, RootfsError> {
    let upper = upper_dir(dir);
    let work = dir.join("work");
    let target = mountpoint(dir);
    // Checked before anything is mounted: the idmapped layers' paths are
    // no longer than the snapshots' (`<dir>/idmapped/<n>`).
    options(lowerdirs, &upper, &work)?;
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).map_err(io("create directory", d))?;
    }
    let layers = match idmap {
        None => None,
        Some(idmap) => {
            std::os::unix::fs::chown(&upper, Some(idmap.root_uid), Some(idmap.root_gid))
                .map_err(io("chown to the pod's root", &upper))?;
            Some(IdmappedLayers::mount(dir, lowerdirs, idmap.userns)?)
        }
    };
    let lower = layers.as_ref().map_or(lowerdirs, |l| &l.mounted);
    let options = options(lower, &upper, &work)?;
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io("mount overlay on", &target)(e.into()))?;
    drop(layers);
    Ok(target)
}

/// Unmounts the root filesystem if it is mounted, and idmapped layers a
/// crash left under `<dir>/idmapped` (removing the container dir must never
/// reach into a shared layer through one); what is not mounted is fine.
pub fn unmount_rootfs(dir: &Path) -> Result<(), RootfsError> {
    let detach = |target: &Path| match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("unmount", target)(e.into())),
    };
    if let Ok(layers) = std::fs::read_dir(dir.join("idmapped")) {
        for layer in layers.flatten() {
            detach(&layer.path())?;
        }
    }
    detach(&mountpoint(dir))
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
