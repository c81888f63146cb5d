//! Restoring a container from a checkpoint, as CRI-O does: a
//! CreateContainer whose `image.image` is the absolute path of an archive
//! ([`super::checkpoint_archive`]'s layout), or names a checkpoint image
//! (an OCI image whose one layer holds that layout, marked with the
//! [`CHECKPOINT_ANNOTATION`] annotation, as `buildah` makes them for
//! Kubernetes), creates the container from the
//! image the checkpointed one ran (`config.dump`'s `rootfsImageName`, which
//! must be on the node) with the dumped command, environment and working
//! directory (`spec.dump`), puts back what it had written
//! (`rootfs-diff.tar`, `deleted.files`) and its log, and keeps CRIU's
//! images under `<dir>/restore/checkpoint`. StartContainer then restores
//! the processes through the shim (`runc restore`) instead of starting the
//! command; the images go once it runs.
//!
//! The archive is input like any image layer: entries that would land
//! outside their directory, links and devices among CRIU's images, and
//! oversized metadata are refused.

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};

use berth_cri_proto::v1 as cri;

use super::checkpoint_archive as archive;
use super::containers::{ContainerError, Containers};
use super::record::ContainerRecord;
use super::rootfs::mountpoint;
use crate::image::ImageRecord;
use crate::sandbox::SandboxRecord;
use crate::snapshot::SnapshotStore;

/// The annotation that marks an OCI image as a checkpoint (the value is
/// the checkpointed container's name); CRI-O and containerd read it too.
pub const CHECKPOINT_ANNOTATION: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
/// Where a restored container keeps its archive's CRIU images until it
/// starts.
const RESTORE_DIR: &str = "restore";
/// The most a metadata file of the archive may hold.
const MAX_METADATA: u64 = 16 << 20;

fn invalid(reason: impl Into<String>) -> ContainerError {
    ContainerError::InvalidArgument {
        field: "config.image.image".into(),
        reason: reason.into(),
    }
}

/// The checkpoint archive a CreateContainer names as its image, if it
/// names one: an absolute path to a file.
pub fn requested_archive(config: &cri::ContainerConfig) -> Option<PathBuf> {
    let image = config.image.as_ref().map(|i| i.image.as_str())?;
    let path = Path::new(image);
    (path.is_absolute() && path.is_file()).then(|| path.to_path_buf())
}

/// The directory holding the checkpoint that `image` carries, when it is a
/// checkpoint image: its manifest (or the index it came from) has the
/// [`CHECKPOINT_ANNOTATION`], and its top layer (unpacked in its snapshot)
/// has the archive's layout. Blobs are read from the content store under
/// `root` (`<root>/content/blobs/<algorithm>/<hex>`).
pub fn checkpoint_image_dir(
    root: &Path,
    image: &ImageRecord,
    snapshots: &SnapshotStore,
) -> Option<PathBuf> {
    let marked = image
        .blobs
        .iter()
        .filter(|d| **d != image.id)
        .any(|digest| {
            let path = root
                .join("content")
                .join("blobs")
                .join(digest.algorithm())
                .join(digest.hex());
            let Ok(bytes) = std::fs::read(path) else {
                return false;
            };
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|json| json["annotations"][CHECKPOINT_ANNOTATION].is_string())
        });
    if !marked {
        return None;
    }
    let dir = snapshots
        .lowerdirs(&image.chain_ids)
        .ok()?
        .into_iter()
        .next()?;
    dir.join(archive::CONFIG_DUMP).is_file().then_some(dir)
}

/// The CRIU images a created container is to be restored from, while it
/// has not started.
pub(super) fn pending_images(record: &ContainerRecord) -> Option<PathBuf> {
    let images = record.dir.join(RESTORE_DIR).join(archive::CHECKPOINT_DIR);
    images.join("inventory.img").is_file().then_some(images)
}

/// Removes a restored container's images once it runs.
pub(super) fn forget_images(record: &ContainerRecord) {
    let dir = record.dir.join(RESTORE_DIR);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(container = %record.id, dir = %dir.display(), error = %e, "checkpoint images not removed");
    }
}

/// The archive's entries, plain or gzip-compressed (by content).
fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ContainerError> {
    let io = |source| ContainerError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.rewind().map_err(io)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(tar::Archive::new(reader))
}

/// An entry's path in the archive, relative and without `..`; `None`
/// for anything else.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Option<PathBuf> {
    let path = entry.path().ok()?.into_owned();
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// The metadata files of an archive: `config.dump`, `spec.dump`,
/// `status.dump` as JSON.
fn read_metadata(path: &Path) -> Result<HashMap<String, serde_json::Value>, ContainerError> {
    let mut archive = open(path)?;
    let mut found = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("{} is not a tar archive: {e}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let Some(name) = entry_path(&entry) else {
            continue;
        };
        let name = name.to_string_lossy().into_owned();
        if ![
            archive::CONFIG_DUMP,
            archive::SPEC_DUMP,
            archive::STATUS_DUMP,
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(format!("{}: {name}: {e}", path.display())))?;
        if bytes.len() as u64 > MAX_METADATA {
            return Err(invalid(format!(
                "{name} is larger than {MAX_METADATA} bytes"
            )));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("{name} in {} is not JSON: {e}", path.display())))?;
        found.insert(name, value);
    }
    for name in [archive::CONFIG_DUMP, archive::SPEC_DUMP] {
        if !found.contains_key(name) {
            return Err(invalid(format!(
                "{} is not a checkpoint archive: it has no {name}",
                path.display()
            )));
        }
    }
    Ok(found)
}

/// A plain file of a checkpoint directory, opened without following a
/// symbolic link (the directory is an image layer: hostile input).
fn open_regular(path: &Path) -> Result<std::fs::File, ContainerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| ContainerError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(file),
        _ => Err(invalid(format!("{} is not a plain file", path.display()))),
    }
}

/// The metadata files of a checkpoint directory (a checkpoint image's
/// layer), as [`read_metadata`] reads them from an archive.
fn read_metadata_dir(dir: &Path) -> Result<HashMap<String, serde_json::Value>, ContainerError> {
    let mut found = HashMap::new();
    for name in [
        archive::CONFIG_DUMP,
        archive::SPEC_DUMP,
        archive::STATUS_DUMP,
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let mut bytes = Vec::new();
        open_regular(&path)?
            .take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ContainerError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_METADATA {
            return Err(invalid(format!(
                "{name} is larger than {MAX_METADATA} bytes"
            )));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("{} is not JSON: {e}", path.display())))?;
        found.insert(name.to_owned(), value);
    }
    if !found.contains_key(archive::SPEC_DUMP) {
        return Err(invalid(format!(
            "{} has no {}",
            dir.display(),
            archive::SPEC_DUMP
        )));
    }
    Ok(found)
}

/// The image the checkpointed container ran, by name then by reference.
fn base_images(meta: &HashMap<String, serde_json::Value>) -> Vec<String> {
    let config = &meta[archive::CONFIG_DUMP];
    let status_image = meta
        .get(archive::STATUS_DUMP)
        .map(|s| s["image"]["image"].clone())
        .unwrap_or_default();
    [
        &config["rootfsImageName"],
        &config["rootfsImage"],
        &status_image,
        &config["rootfsImageRef"],
    ]
    .iter()
    .filter_map(|v| v.as_str())
    .filter(|s| !s.is_empty())
    .map(str::to_owned)
    .collect()
}

/// The request's config, running `image` with the dumped process's
/// command, environment and working directory.
fn restored_config(
    config: &cri::ContainerConfig,
    image: &str,
    spec: &serde_json::Value,
) -> cri::ContainerConfig {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let process = &spec["process"];
    let mut restored = config.clone();
    restored.image = Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    });
    restored.command = strings(&process["args"]);
    restored.args = Vec::new();
    restored.envs = strings(&process["env"])
        .into_iter()
        .filter_map(|kv| {
            let (key, value) = kv.split_once('=')?;
            Some(cri::KeyValue {
                key: key.to_owned(),
                value: value.as_bytes().to_vec(),
            })
        })
        .collect();
    if let Some(cwd) = process["cwd"].as_str() {
        restored.working_dir = cwd.to_owned();
    }
    restored
}

impl Containers {
    /// CreateContainer from the checkpoint archive at `archive_path`, or
    /// from the checkpoint directory there (a checkpoint image's layer; see
    /// the module's doc); `image` finds an image on the node by name.
    /// Nothing is left behind on failure.
    pub async fn create_restored(
        &self,
        sandbox: &SandboxRecord,
        config: &cri::ContainerConfig,
        archive_path: &Path,
        image: impl Fn(&str) -> Option<ImageRecord>,
        snapshots: &SnapshotStore,
    ) -> Result<String, ContainerError> {
        let path = archive_path.to_path_buf();
        let meta = tokio::task::spawn_blocking(move || {
            if path.is_dir() {
                read_metadata_dir(&path)
            } else {
                read_metadata(&path)
            }
        })
        .await
        .map_err(|e| ContainerError::Shim(format!("reading the checkpoint archive: {e}")))??;
        let names = base_images(&meta);
        let (name, base) = names
            .iter()
            .find_map(|n| image(n).map(|record| (n.clone(), record)))
            .ok_or_else(|| {
                ContainerError::ImageNotFound(format!(
                    "{} (the image of checkpoint {})",
                    names.first().map(String::as_str).unwrap_or("<none named>"),
                    archive_path.display()
                ))
            })?;
        let restored = restored_config(config, &name, &meta[archive::SPEC_DUMP]);
        let id = self
            .create(sandbox, &restored, Some(base), snapshots)
            .await?;
        let record = self.status(&id)?;
        let path = archive_path.to_path_buf();
        let unpacked = tokio::task::spawn_blocking(move || {
            if path.is_dir() {
                unpack_dir(&path, &record)
            } else {
                unpack(&path, &record)
            }
        })
        .await
        .map_err(|e| ContainerError::Shim(format!("unpacking the checkpoint archive: {e}")))
        .and_then(|r| r);
        if let Err(e) = unpacked {
            if let Err(removal) = self.remove(&id).await {
                tracing::warn!(container = %id, error = %removal, "half-restored container not removed");
            }
            return Err(e);
        }
        tracing::info!(container = %id, archive = %archive_path.display(), "container created from a checkpoint");
        Ok(id)
    }
}

/// Puts the archive's CRIU images, writable layer, deletions and log in
/// place for the created container `record`.
fn unpack(path: &Path, record: &ContainerRecord) -> Result<(), ContainerError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerError::Io { op, path, source }
    };
    let images = record.dir.join(RESTORE_DIR).join(archive::CHECKPOINT_DIR);
    std::fs::create_dir_all(&images).map_err(io("create directory", &images))?;
    let rootfs = mountpoint(&record.dir);
    let mut deleted: Vec<String> = Vec::new();
    let mut archive = open(path)?;
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let Some(name) = entry_path(&entry) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if let Ok(inside) = name.strip_prefix(archive::CHECKPOINT_DIR) {
            if inside.as_os_str().is_empty() || kind.is_dir() {
                continue;
            }
            // CRIU's images are plain files in one directory.
            if !kind.is_file() || inside.components().count() != 1 {
                return Err(invalid(format!(
                    "{}: checkpoint entry {} is not a plain image file",
                    path.display(),
                    name.display()
                )));
            }
            let target = images.join(inside);
            let mut out = std::fs::File::create(&target).map_err(io("create", &target))?;
            std::io::copy(&mut entry, &mut out).map_err(io("write", &target))?;
        } else if name == Path::new(archive::ROOTFS_DIFF) {
            let mut diff = tar::Archive::new(&mut entry);
            diff.set_preserve_permissions(true);
            diff.set_preserve_ownerships(true);
            diff.set_preserve_mtime(true);
            diff.set_overwrite(true);
            // `unpack` keeps every entry inside the root filesystem.
            diff.unpack(&rootfs).map_err(|e| {
                invalid(format!("{}: {}: {e}", path.display(), archive::ROOTFS_DIFF))
            })?;
        } else if name == Path::new(archive::DELETED_FILES) {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_METADATA + 1)
                .read_to_end(&mut bytes)
                .map_err(io("read", path))?;
            deleted = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("{}: deleted.files: {e}", path.display())))?;
        } else if name == Path::new(archive::CONTAINER_LOG) && !record.log_path.is_empty() {
            let log = Path::new(&record.log_path);
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
            }
            let mut out = std::fs::File::create(log).map_err(io("create", log))?;
            std::io::copy(&mut entry, &mut out).map_err(io("write", log))?;
        }
    }
    if !images.join("inventory.img").is_file() {
        return Err(invalid(format!(
            "{} has no CRIU images (checkpoint/inventory.img)",
            path.display()
        )));
    }
    for file in &deleted {
        remove_inside(&rootfs, file)?;
    }
    Ok(())
}

/// [`unpack`] from a checkpoint directory (a checkpoint image's layer).
fn unpack_dir(dir: &Path, record: &ContainerRecord) -> Result<(), ContainerError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerError::Io { op, path, source }
    };
    let images = record.dir.join(RESTORE_DIR).join(archive::CHECKPOINT_DIR);
    std::fs::create_dir_all(&images).map_err(io("create directory", &images))?;
    let source = dir.join(archive::CHECKPOINT_DIR);
    for entry in std::fs::read_dir(&source).map_err(io("read directory", &source))? {
        let entry = entry.map_err(io("read directory", &source))?;
        let from = entry.path();
        let to = images.join(entry.file_name());
        let mut input = open_regular(&from)?;
        let mut out = std::fs::File::create(&to).map_err(io("create", &to))?;
        std::io::copy(&mut input, &mut out).map_err(io("copy", &from))?;
    }
    if !images.join("inventory.img").is_file() {
        return Err(invalid(format!(
            "{} has no CRIU images (checkpoint/inventory.img)",
            dir.display()
        )));
    }
    let rootfs = mountpoint(&record.dir);
    let diff = dir.join(archive::ROOTFS_DIFF);
    if diff.exists() {
        let mut tar = tar::Archive::new(BufReader::new(open_regular(&diff)?));
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(true);
        tar.set_preserve_mtime(true);
        tar.set_overwrite(true);
        tar.unpack(&rootfs)
            .map_err(|e| invalid(format!("{}: {e}", diff.display())))?;
    }
    let deleted = dir.join(archive::DELETED_FILES);
    if deleted.exists() {
        let mut bytes = Vec::new();
        open_regular(&deleted)?
            .take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .map_err(io("read", &deleted))?;
        let files: Vec<String> = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", deleted.display())))?;
        for file in &files {
            remove_inside(&rootfs, file)?;
        }
    }
    let log = dir.join(archive::CONTAINER_LOG);
    if log.exists() && !record.log_path.is_empty() {
        let target = Path::new(&record.log_path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        let mut input = open_regular(&log)?;
        let mut out = std::fs::File::create(target).map_err(io("create", target))?;
        std::io::copy(&mut input, &mut out).map_err(io("copy", &log))?;
    }
    Ok(())
}

/// Removes `file` (a path as the container sees it) from the root
/// filesystem at `root`, never outside it: no `..`, and its directory
/// resolves inside the root.
fn remove_inside(root: &Path, file: &str) -> Result<(), ContainerError> {
    let mut rel = PathBuf::new();
    for component in Path::new(file).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!("deleted file {file:?} leaves the root")));
            }
        }
    }
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(());
    };
    let root = root.canonicalize().map_err(|source| ContainerError::Io {
        op: "resolve",
        path: root.to_path_buf(),
        source,
    })?;
    let Ok(dir) = root.join(parent).canonicalize() else {
        // Its directory is gone already.
        return Ok(());
    };
    if !dir.starts_with(&root) {
        return Err(invalid(format!("deleted file {file:?} leaves the root")));
    }
    let target = dir.join(name);
    let removed = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(_) => return Ok(()),
    };
    removed.map_err(|source| ContainerError::Io {
        op: "remove",
        path: target,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_paths_to_files_name_archives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.tar");
        std::fs::write(&file, b"").expect("write");
        let config = |image: &str| cri::ContainerConfig {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            requested_archive(&config(&file.display().to_string())),
            Some(file.clone())
        );
        assert_eq!(requested_archive(&config("busybox")), None);
        assert_eq!(
            requested_archive(&config(&dir.path().display().to_string())),
            None
        );
        assert_eq!(requested_archive(&config("c.tar")), None);
    }

    #[test]
    fn the_restored_config_runs_the_dumped_process() {
        let spec = serde_json::json!({
            "process": {
                "args": ["sh", "-c", "count"],
                "env": ["PATH=/bin", "A=b=c", "junk"],
                "cwd": "/work"
            }
        });
        let request = cri::ContainerConfig {
            command: vec!["ignored".into()],
            args: vec!["ignored".into()],
            log_path: "c.log".into(),
            ..Default::default()
        };
        let config = restored_config(&request, "busybox:1", &spec);
        assert_eq!(config.image.map(|i| i.image).as_deref(), Some("busybox:1"));
        assert_eq!(config.command, ["sh", "-c", "count"]);
        assert!(config.args.is_empty());
        let env: Vec<(String, String)> = config
            .envs
            .into_iter()
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect();
        assert_eq!(
            env,
            [("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())]
        );
        assert_eq!(config.working_dir, "/work");
        assert_eq!(config.log_path, "c.log");
    }

    #[test]
    fn deletions_stay_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"x").expect("write");
        std::fs::create_dir_all(root.path().join("etc/sub")).expect("mkdir");
        std::fs::write(root.path().join("etc/gone"), b"x").expect("write");
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        remove_inside(root.path(), "/etc/gone").expect("remove file");
        remove_inside(root.path(), "/etc/sub").expect("remove dir");
        remove_inside(root.path(), "/etc/missing").expect("missing is fine");
        assert!(!root.path().join("etc/gone").exists());
        assert!(!root.path().join("etc/sub").exists());
        assert!(remove_inside(root.path(), "/../x").is_err());
        assert!(remove_inside(root.path(), "/escape/keep").is_err());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn metadata_must_be_there_and_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.tar");
        let write = |files: &[(&str, &[u8])]| {
            let mut tar = tar::Builder::new(std::fs::File::create(&path).expect("create"));
            for (name, bytes) in files {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o600);
                header.set_cksum();
                tar.append_data(&mut header, name, *bytes).expect("append");
            }
            tar.finish().expect("finish");
        };
        write(&[(
            archive::CONFIG_DUMP,
            br#"{"rootfsImageName":"busybox:1","rootfsImageRef":"sha256:ab"}"#,
        )]);
        assert!(matches!(
            read_metadata(&path),
            Err(ContainerError::InvalidArgument { .. })
        ));
        write(&[
            (
                archive::CONFIG_DUMP,
                br#"{"rootfsImageName":"busybox:1","rootfsImageRef":"sha256:ab"}"#,
            ),
            (archive::SPEC_DUMP, b"not json"),
        ]);
        assert!(read_metadata(&path).is_err());
        write(&[
            (
                archive::CONFIG_DUMP,
                br#"{"rootfsImageName":"busybox:1","rootfsImageRef":"sha256:ab"}"#,
            ),
            (archive::SPEC_DUMP, b"{}"),
        ]);
        let meta = read_metadata(&path).expect("metadata");
        assert_eq!(base_images(&meta), ["busybox:1", "sha256:ab"]);
        std::fs::write(&path, b"not a tar at all, just some text").expect("write");
        assert!(read_metadata(&path).is_err());
    }
}
