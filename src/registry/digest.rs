//! Content digests (`sha256:<hex>`), as image references, manifests and
//! descriptors name blobs, validated as go-digest does: a known algorithm
//! and exactly its number of lowercase hex digits, so a digest is always
//! safe to use as a file name.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::input::quoted;

/// A hash algorithm a digest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256, what every registry uses.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name in a digest string.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha384 => "sha384",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex digits of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha384 => 96,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<DigestAlgorithm> {
        [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha384,
            DigestAlgorithm::Sha512,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {digest}: {reason}")]
pub struct DigestError {
    /// The string, quoted and cut short.
    pub digest: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A validated content digest: `<algorithm>:<lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    // The whole `algorithm:hex` string, so `as_str` borrows.
    text: String,
}

impl Digest {
    /// Parses and validates `algorithm:hex`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let fail = |reason: String| DigestError {
            digest: quoted(text),
            reason,
        };
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| fail("expected <algorithm>:<hex>, e.g. sha256:…".into()))?;
        if !is_algorithm_grammar(algorithm) {
            return Err(fail(format!(
                "{} is not an algorithm name",
                quoted(algorithm)
            )));
        }
        let algorithm = DigestAlgorithm::from_name(algorithm).ok_or_else(|| {
            fail(format!(
                "unsupported algorithm {} (sha256, sha384 or sha512)",
                quoted(algorithm)
            ))
        })?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("the part after ':' must be hex digits".into()));
        }
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail("hex digits must be lowercase".into()));
        }
        if hex.len() != algorithm.hex_len() {
            return Err(fail(format!(
                "{} needs {} hex digits, found {}",
                algorithm.name(),
                algorithm.hex_len(),
                hex.len()
            )));
        }
        Ok(Digest {
            algorithm,
            text: text.to_owned(),
        })
    }

    /// The digest of `data` with `algorithm`.
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Digest::of(DigestAlgorithm::Sha256, data)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `[A-Za-z][A-Za-z0-9]*` components joined by one of `+._-`, as the
/// reference grammar writes a digest algorithm.
fn is_algorithm_grammar(name: &str) -> bool {
    name.split(['+', '.', '_', '-']).all(|component| {
        let mut chars = component.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric())
    })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Digest, DigestError> {
        Digest::parse(text)
    }
}

/// Hashes content as it streams, with the algorithm of the digest it must
/// match.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha384(h) => (DigestAlgorithm::Sha384, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            text: format!("{}:{hex}", algorithm.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_input() {
        let digest = Digest::sha256(b"");
        assert_eq!(digest.as_str(), EMPTY_SHA256);
        assert_eq!(digest.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(digest.hex().len(), 64);
        assert_eq!(Digest::parse(EMPTY_SHA256), Ok(digest));
    }

    #[test]
    fn other_algorithms_round_trip() {
        for algorithm in [DigestAlgorithm::Sha384, DigestAlgorithm::Sha512] {
            let digest = Digest::of(algorithm, b"berth");
            assert_eq!(digest.hex().len(), algorithm.hex_len());
            assert_eq!(Digest::parse(digest.as_str()), Ok(digest));
        }
    }

    #[test]
    fn bad_digests_say_what_is_wrong() {
        let hex64 = "a".repeat(64);
        let cases: &[(String, &str)] = &[
            ("sha256".into(), "expected <algorithm>:<hex>"),
            (format!("md5:{hex64}"), "unsupported algorithm \"md5\""),
            (format!("9sha:{hex64}"), "is not an algorithm name"),
            (format!("sha256:{}", "A".repeat(64)), "must be lowercase"),
            ("sha256:abc".into(), "sha256 needs 64 hex digits, found 3"),
            (format!("sha256:{}", "g".repeat(64)), "must be hex digits"),
            (
                format!("sha512:{hex64}"),
                "sha512 needs 128 hex digits, found 64",
            ),
        ];
        for (input, reason) in cases {
            let err = Digest::parse(input).expect_err(input);
            assert!(err.to_string().contains(reason), "{input}: {err}");
        }
    }
}
