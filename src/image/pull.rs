//! PullImage: resolve the reference, store the manifest and config, stream
//! every missing layer from the registry straight into the unpacker (layers
//! in parallel), then record the image.

use std::time::Instant;

use futures_util::future::try_join_all;

use super::record::{ImageConfig, ImageRecord};
use super::{ImageError, Images, invalid_image};
use crate::content::{ContentStore, Digest};
use crate::registry::{Credentials, Descriptor, Reference, RegistryError, ResolvedImage};
use crate::snapshot::{ChainId, Compression};

/// Largest image config berth reads into memory.
const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;

/// Bytes buffered between a layer download and its unpacker.
const PIPE_BUFFER: usize = 256 * 1024;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image as recorded.
    pub image: ImageRecord,
    /// Layers downloaded and unpacked (the others were already there).
    pub layers_fetched: usize,
    /// Compressed bytes downloaded for those layers.
    pub bytes_fetched: u64,
}

impl Images {
    /// Pulls `image` (any reference form) with optional credentials.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Pulled, ImageError> {
        let reference = Reference::parse(image)?;
        let key = super::name_key(&reference);
        let lock = self.pull_lock(&key);
        let _one_at_a_time = lock.lock().await;
        let _no_gc = self.gc.read().await;
        let started = Instant::now();

        let resolved = self.registries.resolve(&reference, credentials).await?;
        let config_blob = self.fetch_config(&resolved).await?;
        let (config, diff_ids) =
            ImageConfig::from_blob(&config_blob).map_err(|reason| invalid_image(image, reason))?;
        if diff_ids.len() != resolved.layers.len() {
            return Err(invalid_image(
                image,
                format!(
                    "the manifest has {} layers but the config lists {} diff ids",
                    resolved.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let chain_ids = ChainId::chain(&diff_ids);

        let mut blobs = Vec::new();
        if let Some(index) = &resolved.index {
            store_blob(&self.content, &index.digest, &index.bytes).await?;
            blobs.push(index.digest.clone());
        }
        store_blob(
            &self.content,
            &resolved.manifest.digest,
            &resolved.manifest.bytes,
        )
        .await?;
        blobs.push(resolved.manifest.digest.clone());
        store_blob(&self.content, &resolved.config.digest, &config_blob).await?;
        blobs.push(resolved.config.digest.clone());

        let mut fetches = Vec::new();
        for (i, layer) in resolved.layers.iter().enumerate() {
            if self.snapshots.get(&chain_ids[i])?.is_some() {
                continue;
            }
            let parent = i.checked_sub(1).map(|p| &chain_ids[p]);
            fetches.push(self.fetch_layer(&resolved, layer, parent, &diff_ids[i]));
        }
        let layers_fetched = fetches.len();
        let bytes_fetched: u64 = try_join_all(fetches).await?.into_iter().sum();
        crate::metrics::add_pulled_bytes(bytes_fetched);

        let mut repo_tags = Vec::new();
        if let (Some(tag), None) = (reference.tag(), reference.digest()) {
            repo_tags.push(format!("{}:{tag}", reference.name()));
        }
        let repo_digests = vec![format!("{}@{}", reference.name(), resolved.repo_digest)];
        let record = ImageRecord {
            id: resolved.config.digest.clone(),
            repo_tags,
            repo_digests,
            manifest: resolved.manifest.digest.clone(),
            blobs,
            chain_ids,
            size: resolved.config.size + resolved.layers.iter().map(|l| l.size).sum::<u64>(),
            config,
            pinned: false,
            pulled_at: crate::clock::now_nanos(),
        };
        let outcome = self.catalog.commit(record.clone(), |_| false)?;
        let record = self.catalog.get(&record.id).unwrap_or(record);
        tracing::info!(
            image = %reference,
            id = %record.id,
            endpoint = %resolved.endpoint.url,
            layers = resolved.layers.len(),
            layers_fetched,
            bytes_fetched,
            millis = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        drop(_no_gc);
        if !outcome.dropped.is_empty() {
            self.collect_garbage().await;
        }
        Ok(Pulled {
            image: record,
            layers_fetched,
            bytes_fetched,
        })
    }

    async fn fetch_config(&self, resolved: &ResolvedImage) -> Result<Vec<u8>, ImageError> {
        let config = &resolved.config;
        if config.size > MAX_CONFIG_SIZE {
            return Err(invalid_image(
                &resolved.reference.to_string(),
                format!(
                    "config blob of {} bytes exceeds {MAX_CONFIG_SIZE}",
                    config.size
                ),
            ));
        }
        if self.content.has(&config.digest).await? {
            return Ok(self.content.read(&config.digest).await?);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(config.size).unwrap_or(0));
        self.registries
            .fetch_blob(resolved, config, &mut bytes)
            .await?;
        Ok(bytes)
    }

    /// Streams one layer from the registry into the unpacker; returns the
    /// bytes downloaded.
    async fn fetch_layer(
        &self,
        resolved: &ResolvedImage,
        layer: &Descriptor,
        parent: Option<&ChainId>,
        diff_id: &Digest,
    ) -> Result<u64, ImageError> {
        let compression = Compression::from_media_type(&layer.media_type)?;
        let (writer, reader) = tokio::io::duplex(PIPE_BUFFER);
        let started = Instant::now();
        let (fetched, unpacked) = tokio::join!(
            self.registries.fetch_blob(resolved, layer, writer),
            self.snapshots.unpack(parent, diff_id, compression, reader),
        );
        // A failed download explains a failed unpack (the stream ended
        // early); a download cut short by the unpacker (a write error) is
        // explained by the unpacker, or needed no more because the layer
        // appeared meanwhile.
        let (bytes, snapshot) = match (fetched, unpacked) {
            (Err(e), _) if !matches!(e, RegistryError::Write { .. }) => return Err(e.into()),
            (_, Err(e)) => return Err(e.into()),
            (Ok(bytes), Ok(snapshot)) => (bytes, snapshot),
            (Err(_), Ok(snapshot)) => (0, snapshot),
        };
        tracing::debug!(
            layer = %layer.digest,
            chain_id = %snapshot.chain_id,
            bytes,
            millis = started.elapsed().as_millis() as u64,
            "layer unpacked"
        );
        Ok(bytes)
    }
}

/// Stores a small blob already in memory (and already verified).
async fn store_blob(
    content: &ContentStore,
    digest: &Digest,
    bytes: &[u8],
) -> Result<(), ImageError> {
    if content.has(digest).await? {
        return Ok(());
    }
    let mut writer = content.writer(digest, Some(bytes.len() as u64)).await?;
    tokio::io::AsyncWriteExt::write_all(&mut writer, bytes)
        .await
        .map_err(|source| crate::content::ContentError::Io {
            op: "write",
            path: content.path(digest),
            source,
        })?;
    writer.commit().await?;
    Ok(())
}
