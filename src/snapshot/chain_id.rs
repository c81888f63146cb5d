//! Chain IDs: the identity of a layer together with every layer below it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::content::{ContentError, Digest};

/// The chain ID of a layer, as the OCI image spec defines it:
/// `chain(L0) = diff_id(L0)` and
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))` over the
/// `sha256:…` strings. Two images that share their bottom layers share
/// those layers' chain IDs, and so their snapshots.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(Digest);

impl ChainId {
    /// The chain ID of a bottom layer: its diff ID.
    pub fn base(diff_id: &Digest) -> ChainId {
        ChainId(diff_id.clone())
    }

    /// The chain ID of the layer `diff_id` stacked on this chain.
    pub fn child(&self, diff_id: &Digest) -> ChainId {
        ChainId(Digest::sha256(format!("{} {}", self.0, diff_id).as_bytes()))
    }

    /// The chain ID of layer `diff_id` on `parent` (or at the bottom).
    pub fn of(parent: Option<&ChainId>, diff_id: &Digest) -> ChainId {
        match parent {
            Some(parent) => parent.child(diff_id),
            None => ChainId::base(diff_id),
        }
    }

    /// The chain IDs of an image's layers from their diff IDs, both bottom
    /// layer first (the order of the config's `rootfs.diff_ids`).
    pub fn chain(diff_ids: &[Digest]) -> Vec<ChainId> {
        let mut out: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = ChainId::of(out.last(), diff_id);
            out.push(next);
        }
        out
    }

    /// Parses a chain ID (a `sha256:` digest).
    pub fn parse(value: &str) -> Result<ChainId, ContentError> {
        Digest::parse(value).map(ChainId)
    }

    /// The chain ID as a digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", self.0)
    }
}

impl FromStr for ChainId {
    type Err = ContentError;

    fn from_str(s: &str) -> Result<ChainId, ContentError> {
        ChainId::parse(s)
    }
}
