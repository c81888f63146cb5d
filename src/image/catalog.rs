//! The image catalog: every image record in memory for fast lookups (the
//! kubelet asks for image status on every pod sync), persisted in the
//! metadata store. A change is committed to the store before memory changes,
//! so what readers see is always on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use super::record::ImageRecord;
use crate::content::Digest;
use crate::registry::Reference;
use crate::store::{Store, StoreError, Table};

/// Shortest id prefix accepted as a reference to an image.
const MIN_ID_PREFIX: usize = 4;

#[derive(Default)]
struct Index {
    images: BTreeMap<Digest, ImageRecord>,
    /// Every repo tag and repo digest → the image id it names.
    names: HashMap<String, Digest>,
}

impl Index {
    fn insert(&mut self, record: ImageRecord) {
        for name in record.repo_tags.iter().chain(&record.repo_digests) {
            self.names.insert(name.clone(), record.id.clone());
        }
        self.images.insert(record.id.clone(), record);
    }

    fn remove(&mut self, id: &Digest) -> Option<ImageRecord> {
        let record = self.images.remove(id)?;
        for name in record.repo_tags.iter().chain(&record.repo_digests) {
            if self.names.get(name) == Some(id) {
                self.names.remove(name);
            }
        }
        Some(record)
    }
}

/// What a commit changed besides the committed image.
#[derive(Debug, Default)]
pub struct CommitOutcome {
    /// Images that lost their last name to the committed one and were
    /// dropped.
    pub dropped: Vec<ImageRecord>,
}

/// All images berth knows.
pub struct Catalog {
    store: Store,
    index: RwLock<Index>,
    /// Serialises writers so each computes its change from the latest state.
    writer: Mutex<()>,
}

impl Catalog {
    /// Loads every image record from the store.
    pub fn load(store: Store) -> Result<Catalog, StoreError> {
        let mut index = Index::default();
        for (_, record) in store.list::<ImageRecord>(Table::Images)? {
            index.insert(record);
        }
        Ok(Catalog {
            store,
            index: RwLock::new(index),
            writer: Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every image, by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.read().images.values().cloned().collect()
    }

    /// The image with this id.
    pub fn get(&self, id: &Digest) -> Option<ImageRecord> {
        self.read().images.get(id).cloned()
    }

    /// Finds the image a CRI image spec names: a full id (`sha256:…`), a
    /// unique id prefix (as `crictl images` shows), or a reference by tag or
    /// digest (`busybox`, `docker.io/library/busybox:1.36`, `…@sha256:…`).
    pub fn resolve(&self, spec: &str) -> Option<ImageRecord> {
        let index = self.read();
        if let Ok(id) = Digest::parse(spec)
            && let Some(record) = index.images.get(&id)
        {
            return Some(record.clone());
        }
        let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
        if hex.len() >= MIN_ID_PREFIX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            let mut matches = index
                .images
                .values()
                .filter(|r| r.id.hex().starts_with(hex));
            if let (Some(only), None) = (matches.next(), matches.next()) {
                return Some(only.clone());
            }
        }
        let reference = Reference::parse(spec).ok()?;
        let id = index.names.get(&name_key(&reference))?;
        index.images.get(id).cloned()
    }

    /// Records `record` (a pulled image). Its names move to it from any
    /// image that had them; an image left with no name is dropped unless
    /// `keep` says it is still needed (a container uses it).
    pub fn commit(
        &self,
        mut record: ImageRecord,
        keep: impl Fn(&Digest) -> bool,
    ) -> Result<CommitOutcome, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        let mut dropped = Vec::new();
        {
            let index = self.read();
            if let Some(existing) = index.images.get(&record.id) {
                merge_names(&mut record, existing);
                record.pinned |= existing.pinned;
            }
            let mut losers: BTreeMap<Digest, ImageRecord> = BTreeMap::new();
            for name in record.repo_tags.iter().chain(&record.repo_digests) {
                if let Some(owner) = index.names.get(name).filter(|id| **id != record.id) {
                    let loser = losers
                        .entry(owner.clone())
                        .or_insert_with(|| index.images[owner].clone());
                    loser.repo_tags.retain(|n| n != name);
                    loser.repo_digests.retain(|n| n != name);
                }
            }
            for (id, loser) in losers {
                if loser.repo_tags.is_empty() && loser.repo_digests.is_empty() && !keep(&id) {
                    dropped.push(loser);
                } else {
                    changed.push(loser);
                }
            }
        }
        self.store.transaction(|tx| {
            tx.put(Table::Images, record.id.as_str(), &record)?;
            for loser in &changed {
                tx.put(Table::Images, loser.id.as_str(), loser)?;
            }
            for gone in &dropped {
                tx.delete(Table::Images, gone.id.as_str())?;
            }
            Ok(())
        })?;
        let mut index = self.write();
        for loser in changed.into_iter().chain(std::iter::once(record)) {
            index.remove(&loser.id);
            index.insert(loser);
        }
        for gone in &dropped {
            index.remove(&gone.id);
        }
        Ok(CommitOutcome { dropped })
    }

    /// Deletes the image `id` with all its names; `None` when it is not
    /// there.
    pub fn remove(&self, id: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if !self.read().images.contains_key(id) {
            return Ok(None);
        }
        self.store.delete(Table::Images, id.as_str())?;
        Ok(self.write().remove(id))
    }
}

/// The repo tag or repo digest a reference stands for; the digest wins
/// when it has both.
pub fn name_key(reference: &Reference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("{}@{digest}", reference.name()),
        (None, Some(tag)) => format!("{}:{tag}", reference.name()),
        (None, None) => reference.name(),
    }
}

fn merge_names(record: &mut ImageRecord, existing: &ImageRecord) {
    for (mine, theirs) in [
        (&mut record.repo_tags, &existing.repo_tags),
        (&mut record.repo_digests, &existing.repo_digests),
    ] {
        mine.extend(theirs.iter().cloned());
        mine.sort();
        mine.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::record::ImageConfig;

    fn digest(n: u8) -> Digest {
        Digest::sha256(&[n])
    }

    fn image(n: u8, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: digest(n),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: tags
                .iter()
                .map(|t| {
                    let name = t.rsplit_once(':').map_or(*t, |(n, _)| n);
                    format!("{name}@{}", digest(n + 100))
                })
                .collect(),
            manifest: digest(n + 100),
            blobs: vec![digest(n), digest(n + 100)],
            chain_ids: Vec::new(),
            size: 1,
            config: ImageConfig::default(),
            pinned: false,
            pulled_at: 0,
        }
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        (dir, Catalog::load(store).expect("catalog"))
    }

    #[test]
    fn resolves_by_id_prefix_and_reference() {
        let (_d, c) = catalog();
        let img = image(1, &["docker.io/library/busybox:latest"]);
        c.commit(img.clone(), |_| false).expect("commit");
        assert_eq!(
            c.resolve(img.id.as_str()).map(|r| r.id),
            Some(img.id.clone())
        );
        assert_eq!(
            c.resolve(&img.id.hex()[..12]).map(|r| r.id),
            Some(img.id.clone())
        );
        assert_eq!(c.resolve("busybox").map(|r| r.id), Some(img.id.clone()));
        assert_eq!(
            c.resolve("busybox:latest").map(|r| r.id),
            Some(img.id.clone())
        );
        let by_digest = format!("busybox@{}", digest(101));
        assert_eq!(c.resolve(&by_digest).map(|r| r.id), Some(img.id.clone()));
        assert!(c.resolve("busybox:1.0").is_none());
        assert!(c.resolve("abc").is_none(), "too short a prefix");
    }

    #[test]
    fn a_moved_tag_drops_the_image_left_without_names() {
        let (dir, c) = catalog();
        let old = image(1, &["docker.io/library/busybox:latest"]);
        c.commit(old.clone(), |_| false).expect("commit old");
        let mut new = image(2, &["docker.io/library/busybox:latest"]);
        new.repo_digests.clear();
        let outcome = c.commit(new.clone(), |_| false).expect("commit new");
        // The old image keeps its repo digest, so it stays, untagged.
        assert!(outcome.dropped.is_empty());
        let old_now = c.get(&old.id).expect("old image kept by its digest");
        assert!(old_now.repo_tags.is_empty());
        assert_eq!(c.resolve("busybox").map(|r| r.id), Some(new.id.clone()));

        // Persisted: a reload sees the same.
        drop(c);
        let store = Store::open(&dir.path().join("db")).expect("reopen");
        let c = Catalog::load(store).expect("reload");
        assert_eq!(c.resolve("busybox").map(|r| r.id), Some(new.id.clone()));
        assert!(c.get(&old.id).expect("old").repo_tags.is_empty());
    }

    #[test]
    fn an_image_losing_every_name_is_dropped_unless_kept() {
        let (_d, c) = catalog();
        let mut old = image(1, &["docker.io/library/a:1"]);
        old.repo_digests.clear();
        c.commit(old.clone(), |_| false).expect("commit");
        let mut new = image(2, &["docker.io/library/a:1"]);
        new.repo_digests.clear();
        let outcome = c.commit(new.clone(), |_| false).expect("commit");
        assert_eq!(outcome.dropped.len(), 1);
        assert!(c.get(&old.id).is_none());

        let mut third = image(3, &["docker.io/library/a:1"]);
        third.repo_digests.clear();
        let outcome = c.commit(third, |id| *id == new.id).expect("commit");
        assert!(outcome.dropped.is_empty(), "in-use image kept");
        assert!(c.get(&new.id).is_some());
    }

    #[test]
    fn repulling_merges_names_and_remove_forgets_them() {
        let (_d, c) = catalog();
        c.commit(image(1, &["docker.io/library/a:1"]), |_| false)
            .expect("commit");
        c.commit(image(1, &["docker.io/library/a:2"]), |_| false)
            .expect("commit");
        let r = c.resolve("a:1").expect("a:1");
        assert_eq!(
            r.repo_tags,
            ["docker.io/library/a:1", "docker.io/library/a:2"]
        );
        assert!(c.remove(&r.id).expect("remove").is_some());
        assert!(c.resolve("a:1").is_none());
        assert!(c.resolve("a:2").is_none());
        assert!(c.remove(&r.id).expect("remove again").is_none());
    }
}
