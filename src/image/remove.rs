//! RemoveImage and garbage collection: an image goes with all its names;
//! then snapshots and blobs no image references any more are deleted.

use std::collections::{HashMap, HashSet};

use super::{ImageError, ImageRecord, Images};
use crate::snapshot::ChainId;

impl Images {
    /// Removes the image `spec` names (id, id prefix or any of its names)
    /// with all its tags and digests. Removing an image that is not there
    /// succeeds, as the CRI asks. `users` lists the containers using an
    /// image id; an image in use is refused.
    pub async fn remove(
        &self,
        spec: &str,
        users: impl Fn(&str) -> Vec<String>,
    ) -> Result<Option<ImageRecord>, ImageError> {
        let Some(image) = self.catalog.resolve(spec) else {
            return Ok(None);
        };
        let containers = users(image.id.as_str());
        if !containers.is_empty() {
            return Err(ImageError::InUse {
                image: image.id.to_string(),
                containers: containers.join(", "),
            });
        }
        let removed = self.catalog.remove(&image.id)?;
        tracing::info!(image = %image.id, tags = ?image.repo_tags, "image removed");
        self.collect_garbage().await;
        Ok(removed)
    }

    /// Deletes snapshots and blobs no image references. Waits for pulls in
    /// flight (they hold what they wrote but have not recorded yet). Errors
    /// are logged: what is not collected now is collected next time.
    pub async fn collect_garbage(&self) {
        let _exclusive = self.gc.write().await;
        let images = self.catalog.list();
        let live_chains: HashSet<&ChainId> = images.iter().flat_map(|i| &i.chain_ids).collect();
        let live_blobs: HashSet<_> = images.iter().flat_map(|i| &i.blobs).collect();

        match self.snapshots.list() {
            Ok(all) => {
                let depth = depths(&all);
                let mut dead: Vec<_> = all
                    .iter()
                    .filter(|s| !live_chains.contains(&s.chain_id))
                    .collect();
                // Top layers first: a parent goes after its children.
                dead.sort_by_key(|s| std::cmp::Reverse(depth.get(&s.chain_id).copied()));
                for snapshot in dead {
                    match self.snapshots.remove(&snapshot.chain_id).await {
                        Ok(_) => {
                            tracing::debug!(chain_id = %snapshot.chain_id, "snapshot collected")
                        }
                        Err(e) => {
                            tracing::warn!(chain_id = %snapshot.chain_id, error = %e, "snapshot not collected")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list snapshots for garbage collection"),
        }
        match self.content.list().await {
            Ok(blobs) => {
                for blob in blobs.iter().filter(|b| !live_blobs.contains(&b.digest)) {
                    if let Err(e) = self.content.delete(&blob.digest).await {
                        tracing::warn!(blob = %blob.digest, error = %e, "blob not collected");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list blobs for garbage collection"),
        }
    }
}

/// How many layers lie under each snapshot.
fn depths(all: &[crate::snapshot::Snapshot]) -> HashMap<ChainId, usize> {
    let parents: HashMap<&ChainId, Option<&ChainId>> = all
        .iter()
        .map(|s| (&s.chain_id, s.parent.as_ref()))
        .collect();
    all.iter()
        .map(|s| {
            let mut depth = 0;
            let mut at = s.parent.as_ref();
            while let Some(parent) = at {
                depth += 1;
                at = parents.get(parent).copied().flatten();
                if depth > all.len() {
                    break;
                }
            }
            (s.chain_id.clone(), depth)
        })
        .collect()
}
