//! The ADD result cache: for each attachment, the exact network config,
//! arguments and result of its ADD, written atomically, so that DEL and
//! CHECK after a berthd restart use what ADD used (as libcni does).
//!
//! One JSON file per attachment: `<dir>/<network>-<container_id>-<ifname>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cni::PodNetworkRequest;

/// The format tag of a cache entry.
const KIND: &str = "berthCniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    /// Format tag, [`KIND`].
    pub kind: String,
    /// The network's name.
    pub network_name: String,
    /// The configuration list ADD ran with.
    pub config: serde_json::Value,
    /// The request ADD ran for (pod identity, ifname, port mappings).
    pub request: PodNetworkRequest,
    /// The `CNI_ARGS` ADD passed.
    pub cni_args: String,
    /// The chain's final result, as the last plugin printed it.
    pub result: serde_json::Value,
}

/// Why the cache cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A key part would not make a plain file name.
    #[error("CNI cache key {0:?} is not a valid file name part")]
    InvalidKey(String),
    /// The filesystem failed.
    #[error("CNI result cache {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry is not valid.
    #[error("CNI result cache {path}: invalid entry: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The cache directory (for example `<state>/cni/results`).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl CachedAttachment {
    /// An entry for an ADD that just succeeded.
    pub fn new(
        network_name: &str,
        config: serde_json::Value,
        request: PodNetworkRequest,
        cni_args: String,
        result: serde_json::Value,
    ) -> CachedAttachment {
        CachedAttachment {
            kind: KIND.to_string(),
            network_name: network_name.to_string(),
            config,
            request,
            cni_args,
            result,
        }
    }
}

impl ResultCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> ResultCache {
        ResultCache { dir: dir.into() }
    }

    /// The directory entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one attachment.
    pub fn path(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<PathBuf, CacheError> {
        for part in [network, container_id, ifname] {
            if part.is_empty() || part.contains(['/', '\0']) || part.starts_with('.') {
                return Err(CacheError::InvalidKey(part.to_string()));
            }
        }
        Ok(self.dir.join(format!("{network}-{container_id}-{ifname}")))
    }

    /// Writes an entry atomically: a temporary file, synced, renamed over
    /// the entry, and the directory synced.
    pub fn save(&self, entry: &CachedAttachment) -> Result<(), CacheError> {
        let path = self.path(
            &entry.network_name,
            &entry.request.container_id,
            &entry.request.ifname,
        )?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let bytes = serde_json::to_vec(entry).map_err(|source| CacheError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path)(e)
        })
    }

    /// Reads the entry of one attachment, if there is one.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>, CacheError> {
        let path = self.path(network, container_id, ifname)?;
        read_entry(&path)
    }

    /// Finds the entry of an attachment whatever network it was made on
    /// (the configuration may have been replaced since its ADD).
    pub fn find(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>, CacheError> {
        for entry in self.list()? {
            if entry.request.container_id == container_id && entry.request.ifname == ifname {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Every valid entry, in file name order. Unreadable or foreign files
    /// are skipped with a log line.
    pub fn list(&self) -> Result<Vec<CachedAttachment>, CacheError> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_none_or(|e| !e.to_string_lossy().starts_with("tmp"))
            })
            .collect();
        paths.sort();
        let mut entries = Vec::new();
        for path in paths {
            match read_entry(&path) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping CNI cache entry"),
            }
        }
        Ok(entries)
    }

    /// Removes the entry of one attachment; a missing entry is not an error.
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), CacheError> {
        let path = self.path(network, container_id, ifname)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }
}

fn read_entry(path: &Path) -> Result<Option<CachedAttachment>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let entry: CachedAttachment =
        serde_json::from_slice(&bytes).map_err(|source| CacheError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((entry.kind == KIND).then_some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> PodNetworkRequest {
        PodNetworkRequest {
            container_id: id.to_string(),
            netns_path: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "uid-1".into(),
            port_mappings: Vec::new(),
            bandwidth: None,
            dns: None,
        }
    }

    #[test]
    fn save_load_find_remove() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = ResultCache::new(tmp.path().join("cni/results"));
        assert_eq!(cache.load("net", "c1", "eth0").expect("load"), None);
        assert!(cache.list().expect("list").is_empty());
        let entry = CachedAttachment::new(
            "net",
            serde_json::json!({"name": "net"}),
            request("c1"),
            "IgnoreUnknown=1".into(),
            serde_json::json!({"cniVersion": "1.0.0"}),
        );
        cache.save(&entry).expect("save");
        cache.save(&entry).expect("save again replaces");
        assert!(tmp.path().join("cni/results/net-c1-eth0").is_file());
        assert_eq!(
            cache.load("net", "c1", "eth0").expect("load"),
            Some(entry.clone())
        );
        assert_eq!(cache.find("c1", "eth0").expect("find"), Some(entry));
        assert_eq!(cache.find("c2", "eth0").expect("find"), None);
        std::fs::write(tmp.path().join("cni/results/junk"), "{").expect("junk");
        assert_eq!(cache.list().expect("list").len(), 1, "junk is skipped");
        cache.remove("net", "c1", "eth0").expect("remove");
        cache.remove("net", "c1", "eth0").expect("remove twice");
        assert_eq!(cache.load("net", "c1", "eth0").expect("load"), None);
    }

    #[test]
    fn keys_cannot_escape_the_dir() {
        let cache = ResultCache::new("/tmp/x");
        for (net, id, ifname) in [
            ("a/b", "c", "d"),
            ("a", "..", "d"),
            ("a", "c", ""),
            ("a", "c\0", "e"),
        ] {
            assert!(matches!(
                cache.path(net, id, ifname),
                Err(CacheError::InvalidKey(_))
            ));
        }
    }
}
