//! Content digests: `sha256:<64 lowercase hex>`, parsed strictly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ContentError;
use crate::input::quoted;

/// The only algorithm berth stores content under.
pub const SHA256: &str = "sha256";

/// Hex characters in a sha256 digest.
const SHA256_HEX_LEN: usize = 64;

/// A content digest, always `sha256:` followed by 64 lowercase hex digits.
///
/// Parsing is strict: upper-case hex, other algorithms, missing or extra
/// characters are all refused with a message that says which rule failed,
/// so a digest that reaches a file path can never be anything but hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(value: &str) -> Result<Digest, ContentError> {
        let invalid = |reason: String| ContentError::InvalidDigest {
            value: quoted(value),
            reason,
        };
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(invalid(format!(
                "want `{SHA256}:<{SHA256_HEX_LEN} lowercase hex digits>`, found no `:`"
            )));
        };
        if algorithm != SHA256 {
            return Err(invalid(format!(
                "unsupported algorithm {}; only {SHA256} is supported",
                quoted(algorithm)
            )));
        }
        if let Some((at, c)) = hex
            .char_indices()
            .find(|&(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(invalid(format!(
                "character {c:?} at offset {} is not a lowercase hex digit",
                SHA256.len() + 1 + at
            )));
        }
        if hex.len() != SHA256_HEX_LEN {
            return Err(invalid(format!(
                "has {} hex digits; a {SHA256} digest has {SHA256_HEX_LEN}",
                hex.len()
            )));
        }
        Ok(Digest(value.to_owned()))
    }

    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(Sha256::digest(data).into())
    }

    /// The digest whose sha256 value is `hash`.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("{SHA256}:{}", hex::encode(hash)))
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &str {
        SHA256
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.0[SHA256.len() + 1..]
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = ContentError;

    fn from_str(s: &str) -> Result<Digest, ContentError> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = ContentError;

    fn try_from(value: String) -> Result<Digest, ContentError> {
        Digest::parse(&value)
    }
}

impl TryFrom<&str> for Digest {
    type Error = ContentError;

    fn try_from(value: &str) -> Result<Digest, ContentError> {
        Digest::parse(value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
