//! What berth remembers of an image: its id (the config digest), the names
//! that point at it, its layers' chain ids and the parts of its config that
//! containers are built from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::Digest;
use crate::snapshot::ChainId;

/// One image, as stored in the `images` table under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the digest of its config blob.
    pub id: Digest,
    /// Full tagged names (`docker.io/library/busybox:latest`), sorted.
    pub repo_tags: Vec<String>,
    /// Full digest names (`docker.io/library/busybox@sha256:…`), sorted;
    /// the digest is the one the registry served for the name (a manifest
    /// list's digest when the name pointed at a list).
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest.
    pub manifest: Digest,
    /// Blobs kept in the content store for this image: manifest lists,
    /// the manifest and the config.
    pub blobs: Vec<Digest>,
    /// Chain ids of the layers, bottom first.
    pub chain_ids: Vec<ChainId>,
    /// Compressed size of config and layers, as the registry serves them.
    pub size: u64,
    /// The parts of the image config containers use.
    pub config: ImageConfig,
    /// Never removed by the kubelet's image garbage collection.
    pub pinned: bool,
    /// When berth pulled it, nanoseconds since the epoch.
    pub pulled_at: i64,
}

/// The runtime parts of an OCI image config (`config` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `User`: `name`, `uid`, `name:group`, `uid:gid`, or empty.
    pub user: String,
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal` (`SIGTERM`, `15`, ...), empty for the default.
    pub stop_signal: String,
    /// `ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// `Volumes` keys.
    pub volumes: Vec<String>,
    /// Architecture the image was built for.
    pub architecture: String,
    /// Operating system the image was built for.
    pub os: String,
}

/// The user part of an image's `User`, as the CRI reports it: a numeric uid
/// or a name to be resolved in the image's `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    /// A numeric uid.
    Uid(i64),
    /// A user name.
    Name(String),
}

impl ImageConfig {
    /// The user the image runs as, without the group; `None` when the image
    /// sets none.
    pub fn image_user(&self) -> Option<ImageUser> {
        let user = self.user.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return None;
        }
        Some(match user.parse::<i64>() {
            Ok(uid) if uid >= 0 => ImageUser::Uid(uid),
            _ => ImageUser::Name(user.to_string()),
        })
    }

    /// Reads the runtime parts of an OCI or Docker image config blob.
    pub fn from_blob(blob: &[u8]) -> Result<(ImageConfig, Vec<Digest>), String> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            os: String,
            #[serde(default)]
            config: Option<Runtime>,
            rootfs: RootFs,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase", default)]
        struct Runtime {
            user: Option<String>,
            env: Option<Vec<String>>,
            entrypoint: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
            working_dir: Option<String>,
            labels: Option<BTreeMap<String, String>>,
            stop_signal: Option<String>,
            exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
            volumes: Option<BTreeMap<String, serde_json::Value>>,
        }
        #[derive(Deserialize)]
        struct RootFs {
            #[serde(rename = "type")]
            kind: String,
            diff_ids: Vec<String>,
        }
        let blob: Blob = serde_json::from_slice(blob).map_err(|e| format!("image config: {e}"))?;
        if blob.rootfs.kind != "layers" {
            return Err(format!(
                "image config: rootfs.type is {:?}, not \"layers\"",
                blob.rootfs.kind
            ));
        }
        let diff_ids = blob
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| format!("image config: rootfs.diff_ids: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let rt = blob.config.unwrap_or_default();
        let keys = |m: Option<BTreeMap<String, serde_json::Value>>| {
            m.map(|m| m.into_keys().collect()).unwrap_or_default()
        };
        let config = ImageConfig {
            user: rt.user.unwrap_or_default(),
            env: rt.env.unwrap_or_default(),
            entrypoint: rt.entrypoint.unwrap_or_default(),
            cmd: rt.cmd.unwrap_or_default(),
            working_dir: rt.working_dir.unwrap_or_default(),
            labels: rt.labels.unwrap_or_default(),
            stop_signal: rt.stop_signal.unwrap_or_default(),
            exposed_ports: keys(rt.exposed_ports),
            volumes: keys(rt.volumes),
            architecture: blob.architecture,
            os: blob.os,
        };
        Ok((config, diff_ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_splits_off_the_group() {
        let user = |u: &str| {
            ImageConfig {
                user: u.into(),
                ..Default::default()
            }
            .image_user()
        };
        assert_eq!(user(""), None);
        assert_eq!(user("1002"), Some(ImageUser::Uid(1002)));
        assert_eq!(user("1003:1004"), Some(ImageUser::Uid(1003)));
        assert_eq!(user("www-data"), Some(ImageUser::Name("www-data".into())));
        assert_eq!(
            user("www-data:1004"),
            Some(ImageUser::Name("www-data".into()))
        );
        assert_eq!(user(":1004"), None);
    }

    #[test]
    fn config_blob_is_read() {
        let blob = br#"{"architecture":"amd64","os":"linux",
            "config":{"User":"1000","Env":["PATH=/bin"],"Entrypoint":["/bin/sh"],"Cmd":null,
              "WorkingDir":"/w","Labels":{"a":"b"},"StopSignal":"SIGQUIT",
              "ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}}},
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let (config, diff_ids) = ImageConfig::from_blob(blob).expect("valid config");
        assert_eq!(config.user, "1000");
        assert_eq!(config.entrypoint, ["/bin/sh"]);
        assert!(config.cmd.is_empty());
        assert_eq!(config.exposed_ports, ["80/tcp"]);
        assert_eq!(config.volumes, ["/data"]);
        assert_eq!(config.stop_signal, "SIGQUIT");
        assert_eq!(diff_ids.len(), 1);
    }

    #[test]
    fn bad_config_blobs_are_refused() {
        assert!(ImageConfig::from_blob(b"{").is_err());
        let e = ImageConfig::from_blob(br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#)
            .expect_err("bad diff id");
        assert!(e.contains("diff_ids"), "{e}");
    }
}
