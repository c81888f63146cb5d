//! Layer media types and the compression each one implies.

use std::fmt;

use super::SnapshotError;
use crate::input::quoted;

/// How a layer blob wraps its tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// The blob is the tar itself.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

/// Layer media types berth unpacks, with their compression. Foreign and
/// non-distributable layers are still tars and unpack the same way.
const MEDIA_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
];

impl Compression {
    /// The compression of a layer with this media type; a media type that
    /// is not a layer berth knows is [`SnapshotError::UnsupportedMediaType`].
    pub fn from_media_type(media_type: &str) -> Result<Compression, SnapshotError> {
        MEDIA_TYPES
            .iter()
            .find(|(known, _)| *known == media_type)
            .map(|&(_, compression)| compression)
            .ok_or_else(|| SnapshotError::UnsupportedMediaType(quoted(media_type)))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}
