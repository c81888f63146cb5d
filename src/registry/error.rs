//! [`RegistryError`], the one error of registry access, and the
//! translation of `oci-client`'s errors into it.

use std::time::Duration;

use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};

use super::reference::ReferenceError;

/// What went wrong talking to registries. Each variant maps to one CRI
/// answer; every message names the image and, for network failures, the
/// endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference is malformed.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// The pull's credentials cannot be used as given.
    #[error("invalid registry credentials: {reason}")]
    InvalidCredentials {
        /// What is wrong with them.
        reason: String,
    },
    /// The registry configuration cannot be used.
    #[error("registry config `{key}`: {reason}")]
    Config {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry has no such image, manifest or blob.
    #[error("{object} of {reference} not found at {endpoint}")]
    NotFound {
        /// The image, in full form.
        reference: String,
        /// What was asked for: `manifest`, `blob sha256:…`.
        object: String,
        /// The endpoint that answered.
        endpoint: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error("not authorized to pull {reference} from {endpoint}: {detail}")]
    Unauthorized {
        /// The image, in full form.
        reference: String,
        /// The endpoint that refused.
        endpoint: String,
        /// The registry's reason.
        detail: String,
    },
    /// Content does not have the digest it must have.
    #[error("{object} of {reference} from {endpoint} has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The image, in full form.
        reference: String,
        /// What was fetched.
        object: String,
        /// The endpoint that served it.
        endpoint: String,
        /// The digest it must have.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A blob does not have the size its descriptor gives.
    #[error("{object} of {reference} from {endpoint}: sent {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The image, in full form.
        reference: String,
        /// What was fetched.
        object: String,
        /// The endpoint that served it.
        endpoint: String,
        /// The descriptor's size.
        expected: u64,
        /// Bytes announced or received (when too many: as soon as there
        /// were too many).
        actual: u64,
    },
    /// No byte arrived for the configured `progress_timeout`.
    #[error(
        "no progress for {} fetching {object} of {reference} from {endpoint}",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The image, in full form.
        reference: String,
        /// What was being fetched.
        object: String,
        /// The endpoint that stalled.
        endpoint: String,
        /// How long nothing arrived.
        after: Duration,
    },
    /// The image exists but berth cannot pull it: Docker schema 1, not a
    /// container image, no manifest for this node's platform.
    #[error("cannot pull {reference}: {reason}")]
    Unsupported {
        /// The image, in full form.
        reference: String,
        /// Why, naming what was found.
        reason: String,
    },
    /// A manifest is malformed.
    #[error("{object} of {reference} from {endpoint} is invalid: {reason}")]
    InvalidManifest {
        /// The image, in full form.
        reference: String,
        /// Which manifest.
        object: String,
        /// The endpoint that served it.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint could not be reached or answered with a server error.
    #[error("cannot fetch {object} of {reference} from {endpoint}: {detail}")]
    Transport {
        /// The image, in full form.
        reference: String,
        /// What was being fetched.
        object: String,
        /// The endpoint.
        endpoint: String,
        /// The cause, with its chain.
        detail: String,
    },
    /// The caller's sink refused a write.
    #[error("cannot write {object} of {reference}: {source}")]
    Write {
        /// The image, in full form.
        reference: String,
        /// What was being fetched.
        object: String,
        /// The sink's error.
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Whether a mirror that failed this way should give way to the next
    /// endpoint: it does not have the image or cannot serve it now. Auth
    /// failures, bad content and unsupported images are reported.
    pub fn falls_through(&self) -> bool {
        matches!(
            self,
            RegistryError::NotFound { .. }
                | RegistryError::Transport { .. }
                | RegistryError::Timeout { .. }
        )
    }
}

/// What a request was about, to name in its errors.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub reference: String,
    pub object: String,
    pub endpoint: String,
}

impl Target {
    pub(crate) fn not_found(&self) -> RegistryError {
        RegistryError::NotFound {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    pub(crate) fn unauthorized(&self, detail: impl Into<String>) -> RegistryError {
        RegistryError::Unauthorized {
            reference: self.reference.clone(),
            endpoint: self.endpoint.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn transport(&self, detail: impl Into<String>) -> RegistryError {
        RegistryError::Transport {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn timeout(&self, after: Duration) -> RegistryError {
        RegistryError::Timeout {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
            after,
        }
    }

    pub(crate) fn digest_mismatch(
        &self,
        expected: impl ToString,
        actual: impl ToString,
    ) -> RegistryError {
        RegistryError::DigestMismatch {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    pub(crate) fn size_mismatch(&self, expected: u64, actual: u64) -> RegistryError {
        RegistryError::SizeMismatch {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
            expected,
            actual,
        }
    }

    pub(crate) fn invalid_manifest(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::InvalidManifest {
            reference: self.reference.clone(),
            object: self.object.clone(),
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Unsupported {
            reference: self.reference.clone(),
            reason: reason.into(),
        }
    }

    /// Translates an `oci-client` error about this target.
    pub(crate) fn oci(&self, err: OciDistributionError) -> RegistryError {
        match err {
            OciDistributionError::RegistryError { envelope, .. } => self.envelope(&envelope),
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => self.not_found(),
                401 | 403 => self.unauthorized(format!("HTTP {code}: {}", excerpt(&message))),
                _ => self.transport(format!("HTTP {code}: {}", excerpt(&message))),
            },
            OciDistributionError::UnauthorizedError { .. } => {
                self.unauthorized("the registry answered 401 Unauthorized")
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                self.unauthorized(format!("the token service refused: {}", excerpt(&reason)))
            }
            OciDistributionError::ImageManifestNotFoundError(_) => self.not_found(),
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => self.digest_mismatch(expected, actual),
            other => self.transport(chain(&other)),
        }
    }

    /// Translates the error body of a 4xx answer.
    fn envelope(&self, envelope: &OciEnvelope) -> RegistryError {
        let detail = envelope
            .errors
            .iter()
            .map(|e| format!("{:?}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let codes = || envelope.errors.iter().map(|e| &e.code);
        if codes().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
            self.unauthorized(detail)
        } else if codes().any(|c| {
            matches!(
                c,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::ManifestBlobUnknown
            )
        }) {
            self.not_found()
        } else {
            self.transport(detail)
        }
    }
}

/// An error and its sources, `: `-joined (reqwest's own message only says
/// "error sending request").
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// A server's error body, cut to what fits in a log line.
pub(crate) fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    let body = body.trim();
    match body.char_indices().nth(MAX) {
        None => body.to_owned(),
        Some((cut, _)) => format!("{}…", &body[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            reference: "localhost:5000/x:latest".into(),
            object: "manifest".into(),
            endpoint: "http://localhost:5000".into(),
        }
    }

    fn envelope(code: &str) -> OciDistributionError {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&body).expect("envelope"),
            url: "http://localhost:5000/v2/x/manifests/latest".into(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn maps_registry_answers_to_precise_variants() {
        let t = target();
        let kind = |err: RegistryError| match err {
            RegistryError::NotFound { .. } => "not found",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::Transport { .. } => "transport",
            RegistryError::DigestMismatch { .. } => "digest",
            other => panic!("unexpected {other:?}"),
        };
        let cases = [
            (envelope("MANIFEST_UNKNOWN"), "not found"),
            (envelope("NAME_UNKNOWN"), "not found"),
            (envelope("BLOB_UNKNOWN"), "not found"),
            (envelope("UNAUTHORIZED"), "unauthorized"),
            (envelope("DENIED"), "unauthorized"),
            (envelope("TOOMANYREQUESTS"), "transport"),
            (envelope("SOMETHING_ELSE"), "transport"),
            (server(404), "not found"),
            (server(401), "unauthorized"),
            (server(403), "unauthorized"),
            (server(500), "transport"),
            (server(502), "transport"),
            (
                OciDistributionError::UnauthorizedError { url: "u".into() },
                "unauthorized",
            ),
            (
                OciDistributionError::AuthenticationFailure("no".into()),
                "unauthorized",
            ),
            (
                OciDistributionError::DigestError(DigestError::VerificationError {
                    expected: "a".into(),
                    actual: "b".into(),
                }),
                "digest",
            ),
        ];
        for (err, expected) in cases {
            let shown = err.to_string();
            assert_eq!(kind(t.oci(err)), expected, "{shown}");
        }
    }

    #[test]
    fn messages_name_the_image_and_the_endpoint() {
        let err = target().not_found();
        assert_eq!(
            err.to_string(),
            "manifest of localhost:5000/x:latest not found at http://localhost:5000"
        );
        let err = target().timeout(Duration::from_millis(1500));
        assert_eq!(
            err.to_string(),
            "no progress for 1s 500ms fetching manifest of localhost:5000/x:latest from http://localhost:5000"
        );
    }

    #[test]
    fn only_unavailability_falls_through() {
        let t = target();
        assert!(t.not_found().falls_through());
        assert!(t.transport("refused").falls_through());
        assert!(t.timeout(Duration::from_secs(1)).falls_through());
        assert!(!t.unauthorized("no").falls_through());
        assert!(!t.digest_mismatch("a", "b").falls_through());
        assert!(!t.unsupported("schema 1").falls_through());
    }
}
