//! Manifests as registries serve them: OCI and Docker schema 2 image
//! manifests and manifest lists (OCI indexes), parsed just enough to find
//! the platform's manifest, the config and the layers. Docker schema 1 and
//! anything that is not a container image are refused by name.

use serde::Deserialize;

use super::platform::Platform;
use crate::content::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 manifest, signed (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 manifest (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer media types berth unpacks: OCI and Docker, uncompressed, gzip and
/// zstd, including the (deprecated) non-distributable and foreign kinds.
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The `Accept` list of manifest requests. Schema 1 is listed so that a
/// registry that only has a schema 1 manifest says so, and berth can
/// refuse it by name instead of reporting "not found".
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// Largest manifest accepted (containerd's limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// A blob as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// What the blob is (`application/vnd.oci.image.layer.v1.tar+gzip`, …).
    pub media_type: String,
    /// Digest of the blob's bytes.
    pub digest: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// A manifest exactly as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// Media type: the manifest's `mediaType`, or the OCI type its shape
    /// implies when it has none.
    pub media_type: String,
    /// Digest of [`RawManifest::bytes`].
    pub digest: Digest,
    /// The bytes, verified against the digest.
    pub bytes: Vec<u8>,
}

/// What a manifest turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Manifest {
    /// A manifest list / OCI index.
    Index {
        media_type: String,
        entries: Vec<IndexEntry>,
    },
    /// One image.
    Image {
        media_type: String,
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// An entry of a manifest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub descriptor: Descriptor,
    /// `None` for entries without a platform (attestations, artifacts).
    pub platform: Option<Platform>,
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManifestError {
    /// Well formed, but not something berth pulls.
    Unsupported(String),
    /// Not a well-formed manifest.
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<Vec<WireDescriptor>>,
    config: Option<WireDescriptor>,
    layers: Option<Vec<WireDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    platform: Option<WirePlatform>,
}

#[derive(Deserialize)]
struct WirePlatform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

impl Manifest {
    /// Parses a manifest's bytes.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let envelope: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Invalid(format!("not a manifest: {e}")))?;
        let media_type = envelope.media_type.as_deref();
        if envelope.schema_version == Some(1)
            || matches!(media_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
        {
            return Err(ManifestError::Unsupported(
                "it has a Docker schema 1 manifest, which berth does not pull (deprecated since \
                 2015; push the image again with a current client)"
                    .into(),
            ));
        }
        match envelope.schema_version {
            Some(2) => {}
            Some(other) => {
                return Err(ManifestError::Unsupported(format!(
                    "manifest schemaVersion {other} (only 2 is known)"
                )));
            }
            None => return Err(ManifestError::Invalid("schemaVersion is missing".into())),
        }
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(ManifestError::Unsupported(format!(
                    "manifest media type {other:?} is not an image manifest or manifest list"
                )));
            }
            // The OCI spec made `mediaType` optional at first: go by shape.
            None => envelope.manifests.is_some(),
        };
        if is_index {
            let entries = envelope
                .manifests
                .ok_or_else(|| ManifestError::Invalid("manifest list has no `manifests`".into()))?
                .into_iter()
                .map(IndexEntry::from_wire)
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Index {
                media_type: media_type.unwrap_or(OCI_INDEX).to_owned(),
                entries,
            })
        } else {
            let config = envelope
                .config
                .ok_or_else(|| ManifestError::Invalid("manifest has no `config`".into()))?;
            let config = descriptor("config", config)?;
            if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
                return Err(ManifestError::Unsupported(format!(
                    "it is not a container image: config media type {:?}",
                    config.media_type
                )));
            }
            let layers = envelope
                .layers
                .unwrap_or_default()
                .into_iter()
                .map(|layer| descriptor("layer", layer))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(layer) = layers
                .iter()
                .find(|l| !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
            {
                return Err(ManifestError::Unsupported(format!(
                    "layer {} has media type {:?}, which berth cannot unpack",
                    layer.digest, layer.media_type
                )));
            }
            Ok(Manifest::Image {
                media_type: media_type.unwrap_or(OCI_MANIFEST).to_owned(),
                config,
                layers,
            })
        }
    }

    pub(crate) fn media_type(&self) -> &str {
        match self {
            Manifest::Index { media_type, .. } | Manifest::Image { media_type, .. } => media_type,
        }
    }
}

impl IndexEntry {
    fn from_wire(wire: WireDescriptor) -> Result<IndexEntry, ManifestError> {
        let platform = wire
            .platform
            .as_ref()
            .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()));
        Ok(IndexEntry {
            descriptor: descriptor("manifest list entry", wire)?,
            platform,
        })
    }

    /// Whether the entry is an image manifest (not a nested list or an
    /// artifact), the only kind a platform is picked from.
    fn is_image(&self) -> bool {
        matches!(
            self.descriptor.media_type.as_str(),
            OCI_MANIFEST | DOCKER_MANIFEST
        )
    }
}

fn descriptor(what: &str, wire: WireDescriptor) -> Result<Descriptor, ManifestError> {
    let media_type = wire
        .media_type
        .ok_or_else(|| ManifestError::Invalid(format!("a {what} has no mediaType")))?;
    let digest = Digest::parse(&wire.digest)
        .map_err(|e| ManifestError::Invalid(format!("a {what} has an {e}")))?;
    let size = u64::try_from(wire.size)
        .map_err(|_| ManifestError::Invalid(format!("{what} {digest} has size {}", wire.size)))?;
    Ok(Descriptor {
        media_type,
        digest,
        size,
    })
}

/// Picks the entry of a manifest list that `host` runs best; ties go to
/// the earlier entry. On failure, lists the platforms the list has.
pub(crate) fn select_platform<'a>(
    entries: &'a [IndexEntry],
    host: &Platform,
) -> Result<&'a IndexEntry, Vec<Platform>> {
    let best = entries
        .iter()
        .filter(|entry| entry.is_image())
        .filter_map(|entry| {
            let rank = host.rank(entry.platform.as_ref()?)?;
            Some((rank, entry))
        })
        .min_by_key(|(rank, _)| *rank);
    match best {
        Some((_, entry)) => Ok(entry),
        None => {
            // Attestations are listed as `unknown/unknown`: not worth naming.
            let mut available: Vec<Platform> = Vec::new();
            let platforms = entries
                .iter()
                .filter(|entry| entry.is_image())
                .filter_map(|entry| entry.platform.clone())
                .filter(|platform| platform.os != "unknown");
            for platform in platforms {
                if !available.contains(&platform) {
                    available.push(platform);
                }
            }
            Err(available)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn digest(n: u8) -> String {
        Digest::sha256(&[n]).to_string()
    }

    fn image_manifest(media_type: Option<&str>, config_type: &str, layer_type: &str) -> Vec<u8> {
        let mut manifest = json!({
            "schemaVersion": 2,
            "config": {"mediaType": config_type, "digest": digest(0), "size": 10},
            "layers": [
                {"mediaType": layer_type, "digest": digest(1), "size": 20},
                {"mediaType": layer_type, "digest": digest(2), "size": 30},
            ],
        });
        if let Some(media_type) = media_type {
            manifest["mediaType"] = json!(media_type);
        }
        serde_json::to_vec(&manifest).expect("serialise")
    }

    fn entry(n: u8, media_type: &str, platform: serde_json::Value) -> serde_json::Value {
        let mut entry =
            json!({"mediaType": media_type, "digest": digest(n), "size": 100 + n as i64});
        if !platform.is_null() {
            entry["platform"] = platform;
        }
        entry
    }

    fn index(media_type: Option<&str>, entries: Vec<serde_json::Value>) -> Vec<u8> {
        let mut index = json!({"schemaVersion": 2, "manifests": entries});
        if let Some(media_type) = media_type {
            index["mediaType"] = json!(media_type);
        }
        serde_json::to_vec(&index).expect("serialise")
    }

    #[test]
    fn parses_oci_and_docker_image_manifests() {
        let cases = [
            (
                Some(OCI_MANIFEST),
                OCI_CONFIG,
                LAYER_MEDIA_TYPES[1],
                OCI_MANIFEST,
            ),
            (None, OCI_CONFIG, LAYER_MEDIA_TYPES[2], OCI_MANIFEST),
            (
                Some(DOCKER_MANIFEST),
                DOCKER_CONFIG,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                DOCKER_MANIFEST,
            ),
        ];
        for (media_type, config_type, layer_type, expected_type) in cases {
            let bytes = image_manifest(media_type, config_type, layer_type);
            let Ok(Manifest::Image {
                media_type,
                config,
                layers,
            }) = Manifest::parse(&bytes)
            else {
                panic!("{expected_type}: not an image manifest");
            };
            assert_eq!(media_type, expected_type);
            assert_eq!(config.media_type, config_type);
            assert_eq!(config.digest.to_string(), digest(0));
            assert_eq!(config.size, 10);
            let sizes: Vec<u64> = layers.iter().map(|l| l.size).collect();
            assert_eq!(sizes, [20, 30]);
            assert!(layers.iter().all(|l| l.media_type == layer_type));
        }
    }

    #[test]
    fn parses_oci_and_docker_lists() {
        for (media_type, expected) in [
            (Some(OCI_INDEX), OCI_INDEX),
            (Some(DOCKER_MANIFEST_LIST), DOCKER_MANIFEST_LIST),
            (None, OCI_INDEX),
        ] {
            let bytes = index(
                media_type,
                vec![entry(
                    1,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
                )],
            );
            let Ok(Manifest::Index {
                media_type,
                entries,
            }) = Manifest::parse(&bytes)
            else {
                panic!("{expected}: not a list");
            };
            assert_eq!(media_type, expected);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].descriptor.size, 101);
            assert_eq!(
                entries[0]
                    .platform
                    .as_ref()
                    .map(ToString::to_string)
                    .as_deref(),
                Some("linux/arm/v7")
            );
        }
    }

    #[test]
    fn refuses_what_berth_does_not_pull() {
        let schema1 = serde_json::to_vec(&json!({
            "schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [], "signatures": [],
        }))
        .expect("serialise");
        let helm = image_manifest(
            Some(OCI_MANIFEST),
            "application/vnd.cncf.helm.config.v1+json",
            LAYER_MEDIA_TYPES[1],
        );
        let encrypted = image_manifest(
            Some(OCI_MANIFEST),
            OCI_CONFIG,
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        );
        let odd_type = image_manifest(Some("application/json"), OCI_CONFIG, LAYER_MEDIA_TYPES[0]);
        let cases: [(&[u8], &str); 4] = [
            (&schema1, "Docker schema 1"),
            (
                &helm,
                "not a container image: config media type \"application/vnd.cncf.helm.config.v1+json\"",
            ),
            (&encrypted, "which berth cannot unpack"),
            (
                &odd_type,
                "media type \"application/json\" is not an image manifest",
            ),
        ];
        for (bytes, reason) in cases {
            match Manifest::parse(bytes) {
                Err(ManifestError::Unsupported(message)) => {
                    assert!(message.contains(reason), "{message}")
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_malformed_manifests() {
        let no_media_type = serde_json::to_vec(&json!({
            "schemaVersion": 2, "config": {"digest": digest(0), "size": 1}, "layers": [],
        }))
        .expect("serialise");
        let bad_digest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": "sha256:../../etc", "size": 1},
        }))
        .expect("serialise");
        let negative = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(0), "size": -1},
        }))
        .expect("serialise");
        let cases: [(&[u8], &str); 5] = [
            (b"<html>", "not a manifest"),
            (br#"{"mediaType": "x"}"#, "schemaVersion is missing"),
            (&no_media_type, "a config has no mediaType"),
            (&bad_digest, "a config has an invalid digest"),
            (&negative, "has size -1"),
        ];
        for (bytes, reason) in cases {
            match Manifest::parse(bytes) {
                Err(ManifestError::Invalid(message)) => {
                    assert!(message.contains(reason), "{message}")
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
    }

    #[test]
    fn selects_the_best_platform_of_a_list() {
        let bytes = index(
            Some(OCI_INDEX),
            vec![
                entry(
                    1,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "arm", "variant": "v6"}),
                ),
                entry(
                    2,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
                ),
                entry(
                    3,
                    OCI_MANIFEST,
                    json!({"os": "unknown", "architecture": "unknown"}),
                ),
                entry(
                    4,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "amd64"}),
                ),
                entry(
                    5,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
                ),
                entry(
                    6,
                    OCI_INDEX,
                    json!({"os": "linux", "architecture": "s390x"}),
                ),
                entry(7, OCI_MANIFEST, serde_json::Value::Null),
                entry(
                    8,
                    OCI_MANIFEST,
                    json!({"os": "linux", "architecture": "amd64"}),
                ),
            ],
        );
        let Ok(Manifest::Index { entries, .. }) = Manifest::parse(&bytes) else {
            panic!("not a list");
        };
        let pick = |host: Platform| {
            select_platform(&entries, &host).map(|e| e.descriptor.digest.to_string())
        };
        assert_eq!(pick(Platform::new("linux", "amd64", None)), Ok(digest(4)));
        assert_eq!(pick(Platform::new("linux", "arm64", None)), Ok(digest(2)));
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v7"))),
            Ok(digest(5))
        );
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v6"))),
            Ok(digest(1))
        );
        let available = select_platform(&entries, &Platform::new("linux", "s390x", None))
            .expect_err("no s390x image manifest");
        let names: Vec<String> = available.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["linux/arm/v6", "linux/arm64", "linux/amd64", "linux/arm/v7"]
        );
    }
}
