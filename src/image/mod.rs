//! Images: pulling (registry → content store and snapshots), the catalog of
//! pulled images, removal and garbage collection, and filesystem usage.
//!
//! One file per operation: [`pull`], [`remove`]; the records and the
//! in-memory catalog live in [`record`] and [`catalog`].

mod catalog;
mod pull;
mod record;
mod remove;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use catalog::{Catalog, name_key};
pub use pull::Pulled;
pub use record::{ImageConfig, ImageRecord, ImageUser};

use crate::config::Config;
use crate::content::{ContentError, ContentStore};
use crate::input::quoted;
use crate::registry::{ReferenceError, Registries, RegistryError};
use crate::snapshot::{SnapshotError, SnapshotStore, Usage};
use crate::store::{Store, StoreError};

/// What went wrong with an image operation.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name is not a valid reference.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// The registry refused, failed, or served something wrong.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The image's config or manifest does not describe a usable image.
    #[error("image {reference}: {reason}")]
    InvalidImage {
        /// The reference being pulled.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// No image matches the name or id.
    #[error("image {0} not found")]
    NotFound(String),
    /// The image is used by containers and cannot be removed.
    #[error("image {image} is in use by container(s) {containers}")]
    InUse {
        /// The image id.
        image: String,
        /// The container ids, comma-separated.
        containers: String,
    },
    /// A layer could not be unpacked (hostile or corrupt layer included).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Filesystem usage of the image store.
#[derive(Debug, Clone)]
pub struct FsUsage {
    /// The directory images are unpacked in.
    pub mountpoint: PathBuf,
    /// Bytes and inodes used by snapshots and blobs.
    pub usage: Usage,
}

/// The image service: every image operation goes through here.
pub struct Images {
    root: PathBuf,
    catalog: Catalog,
    content: ContentStore,
    snapshots: SnapshotStore,
    registries: Registries,
    /// One pull at a time per image name: a second caller waits and then
    /// finds every layer already there.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls hold it shared; garbage collection holds it exclusively, so it
    /// never collects what a pull in flight has written but not recorded.
    gc: tokio::sync::RwLock<()>,
}

impl Images {
    /// Opens the content and snapshot stores under the root directory and
    /// loads the catalog.
    pub fn open(config: &Config, store: Store) -> Result<Images, ImageError> {
        let content = ContentStore::new(&config.root)?;
        let snapshots = SnapshotStore::open(&config.root, store.clone())?;
        let catalog = Catalog::load(store)?;
        let registries = Registries::new(&config.registry)?;
        Ok(Images {
            root: config.root.clone(),
            catalog,
            content,
            snapshots,
            registries,
            pulls: Mutex::new(HashMap::new()),
            gc: tokio::sync::RwLock::new(()),
        })
    }

    /// The catalog of pulled images.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The snapshot store (container root filesystems are built on it).
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Every image, optionally only those `filter` names.
    pub fn list(&self, filter: Option<&str>) -> Vec<ImageRecord> {
        match filter.filter(|f| !f.is_empty()) {
            None => self.catalog.list(),
            Some(spec) => self.catalog.resolve(spec).into_iter().collect(),
        }
    }

    /// The image a CRI image spec names, if berth has it.
    pub fn status(&self, spec: &str) -> Option<ImageRecord> {
        self.catalog.resolve(spec)
    }

    /// Disk usage of images: unpacked snapshots plus stored blobs.
    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let snapshots = self.snapshots.usage()?;
        let blobs = self.content.list().await?;
        let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();
        Ok(FsUsage {
            mountpoint: self.snapshots_dir(),
            usage: Usage {
                bytes: snapshots.bytes + blob_bytes,
                inodes: snapshots.inodes + blobs.len() as u64,
            },
        })
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn pull_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        // Forget locks nobody holds or waits for, so the map stays small.
        pulls.retain(|_, lock| Arc::strong_count(lock) > 1);
        pulls.entry(key.to_string()).or_default().clone()
    }
}

fn invalid_image(reference: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidImage {
        reference: quoted(reference),
        reason: reason.into(),
    }
}
