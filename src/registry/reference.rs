//! Image references, parsed and normalised exactly as the kubelet and
//! Docker do (`reference.ParseNormalizedNamed` of distribution/reference,
//! then the kubelet's default tag): `busybox` is
//! `docker.io/library/busybox:latest`.
//!
//! Grammar: `[registry/]path[:tag][@digest]`. The first `/`-separated
//! component is a registry when it contains `.` or `:`, is `localhost`, or
//! has an uppercase letter (a repository never has one); otherwise the
//! registry is `docker.io`, where a one-component path gets the `library/`
//! prefix. A reference with neither tag nor digest gets the tag `latest`.

use std::fmt;
use std::str::FromStr;

use crate::content::Digest;
use crate::input::quoted;

/// The registry of references that name none: Docker Hub.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// The tag of references that carry neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Old name of Docker Hub, normalised to [`DEFAULT_REGISTRY`].
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";

/// Namespace of Docker Hub's official images.
const OFFICIAL_PREFIX: &str = "library/";

/// Longest `registry/path` Docker accepts.
const NAME_MAX_LEN: usize = 255;

/// Longest tag.
const TAG_MAX_LEN: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input}: {reason}")]
pub struct ReferenceError {
    /// The reference as given, quoted and cut short.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A normalised image reference: registry, repository path, and a tag, a
/// digest or both (the digest decides what is fetched; the tag is kept for
/// naming).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as the kubelet does.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            input: quoted(input),
            reason,
        };
        if input.is_empty() {
            return Err(fail("it is empty".into()));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(fail(
                "a 64-character hex string is an image id, not a repository name".into(),
            ));
        }
        let (registry, remainder) = split_registry(input);
        let (name, digest) = match remainder.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|e| fail(e.to_string()))?;
                (name, Some(digest))
            }
            None => (remainder.as_str(), None),
        };
        let (repository, tag) = match name.split_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (name, None),
        };
        check_registry(registry).map_err(fail)?;
        check_repository(repository).map_err(fail)?;
        let full_len = registry.len() + 1 + repository.len();
        if full_len > NAME_MAX_LEN {
            return Err(fail(format!(
                "the name {registry}/… is {full_len} characters long; at most {NAME_MAX_LEN}"
            )));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(fail)?;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// The registry as references name it: `docker.io`, `localhost:5000`,
    /// `registry.k8s.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (always, unless it has a digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as people write it: `busybox`, `user/repo`,
    /// `registry.k8s.io/pause`.
    pub fn familiar_name(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix(OFFICIAL_PREFIX) {
            Some(short) if !short.contains('/') => short.to_owned(),
            _ => self.repository.clone(),
        }
    }

    /// The whole reference as people write it: `busybox:latest`.
    pub fn familiar(&self) -> String {
        self.with_suffix(self.familiar_name())
    }

    /// The same repository pinned to `digest`, without a tag:
    /// `docker.io/library/busybox@sha256:…` (the form of a repo digest).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The host that serves the registry API (`registry-1.docker.io` for
    /// Docker Hub, the registry itself otherwise).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    fn with_suffix(&self, mut name: String) -> String {
        if let Some(tag) = &self.tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            name.push('@');
            name.push_str(digest.as_str());
        }
        name
    }
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.name()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(input)
    }
}

/// Splits off the registry as Docker's `splitDockerDomain` does.
fn split_registry(input: &str) -> (&str, String) {
    let (registry, remainder) = match input.split_once('/') {
        None => (DEFAULT_REGISTRY, input),
        Some((first, rest)) if first == LEGACY_DEFAULT_REGISTRY => (DEFAULT_REGISTRY, rest),
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        Some(_) => (DEFAULT_REGISTRY, input),
    };
    if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
        (registry, format!("{OFFICIAL_PREFIX}{remainder}"))
    } else {
        (registry, remainder.to_owned())
    }
}

/// `host[:port]`: DNS labels, an IPv4 address or a bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("registry {} is invalid: {why}", quoted(registry)));
    let (host_ok, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((ipv6, after)) = rest.split_once(']') else {
            return bad("'[' without ']'");
        };
        let port = if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(port)
        } else {
            return bad("expected ':' and a port after ']'");
        };
        let ok = !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (ok, port)
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        (!host.is_empty() && host.split('.').all(is_dns_label), port)
    };
    if !host_ok {
        return bad("the host must be DNS labels, an IPv4 address or [IPv6]");
    }
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => {
            bad("the port must be a number")
        }
        _ => Ok(()),
    }
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Lowercase components joined by `/`, each
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository name {} must be lowercase",
            quoted(repository)
        ));
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(format!(
                "repository name {} has an empty path component (a leading, trailing or double '/')",
                quoted(repository)
            ));
        }
        if !is_path_component(component) {
            return Err(format!(
                "repository path component {} is invalid: use [a-z0-9] separated by '.', '_', '__' or dashes",
                quoted(component)
            ));
        }
    }
    Ok(())
}

fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One run of alphanumerics.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // One separator: `.`, `_`, `__` or any number of `-`.
        match bytes[i] {
            b'.' => i += 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = tag.len() <= TAG_MAX_LEN
        && tag.as_bytes().first().is_some_and(|&b| word(b))
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {} is invalid: 1 to {TAG_MAX_LEN} characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
            quoted(tag)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// input, full form, familiar form, registry, repository, tag, digest
    /// (`""` for none); `DIGEST` stands for a sha256 digest.
    #[rustfmt::skip]
    const NORMALISED: &[[&str; 7]] = &[
        ["busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", "latest", ""],
        ["busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36", "docker.io", "library/busybox", "1.36", ""],
        ["user/repo", "docker.io/user/repo:latest", "user/repo:latest", "docker.io", "user/repo", "latest", ""],
        ["docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", "latest", ""],
        ["index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", "latest", ""],
        ["index.docker.io/user/repo:v1", "docker.io/user/repo:v1", "user/repo:v1", "docker.io", "user/repo", "v1", ""],
        ["docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", "latest", ""],
        ["docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest", "docker.io", "library/a/b", "latest", ""],
        ["docker.io/a.b-c__d--e_f/x", "docker.io/a.b-c__d--e_f/x:latest", "a.b-c__d--e_f/x:latest", "docker.io", "a.b-c__d--e_f/x", "latest", ""],
        ["localhost/x", "localhost/x:latest", "localhost/x:latest", "localhost", "x", "latest", ""],
        ["localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest", "localhost:5000", "x", "latest", ""],
        ["127.0.0.1:5000/a/b:v2", "127.0.0.1:5000/a/b:v2", "127.0.0.1:5000/a/b:v2", "127.0.0.1:5000", "a/b", "v2", ""],
        ["[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest", "[::1]:5000", "x", "latest", ""],
        ["[fe80::1]/x", "[fe80::1]/x:latest", "[fe80::1]/x:latest", "[fe80::1]", "x", "latest", ""],
        ["registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9", "registry.k8s.io", "pause", "3.9", ""],
        ["myhost:5000/ns/app", "myhost:5000/ns/app:latest", "myhost:5000/ns/app:latest", "myhost:5000", "ns/app", "latest", ""],
        // An uppercase first component can only be a registry.
        ["Registry/app", "Registry/app:latest", "Registry/app:latest", "Registry", "app", "latest", ""],
        // `localhost:5000` alone is Docker Hub's `library/localhost` at tag 5000.
        ["localhost:5000", "docker.io/library/localhost:5000", "localhost:5000", "docker.io", "library/localhost", "5000", ""],
        ["busybox:_t.-x", "docker.io/library/busybox:_t.-x", "busybox:_t.-x", "docker.io", "library/busybox", "_t.-x", ""],
        ["busybox@DIGEST", "docker.io/library/busybox@DIGEST", "busybox@DIGEST", "docker.io", "library/busybox", "", "DIGEST"],
        ["busybox:1.36@DIGEST", "docker.io/library/busybox:1.36@DIGEST", "busybox:1.36@DIGEST", "docker.io", "library/busybox", "1.36", "DIGEST"],
        ["localhost:5000/x@DIGEST", "localhost:5000/x@DIGEST", "localhost:5000/x@DIGEST", "localhost:5000", "x", "", "DIGEST"],
    ];

    #[test]
    fn normalises_like_docker() {
        let digest = format!("sha256:{HEX}");
        let tag128 = "t".repeat(128);
        let long_tag = [
            format!("x:{tag128}"),
            format!("docker.io/library/x:{tag128}"),
            format!("x:{tag128}"),
            "docker.io".into(),
            "library/x".into(),
            tag128.clone(),
            String::new(),
        ];
        let rows = NORMALISED
            .iter()
            .map(|row| row.map(|cell| cell.replace("DIGEST", &digest)))
            .chain([long_tag]);
        for [input, full, familiar, registry, repository, tag, digest] in rows {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            assert_eq!(r.to_string(), full, "full form of {input}");
            assert_eq!(r.familiar(), familiar, "familiar form of {input}");
            assert_eq!(r.registry(), registry, "registry of {input}");
            assert_eq!(r.repository(), repository, "repository of {input}");
            assert_eq!(
                r.tag().map(str::to_owned),
                none_if_empty(&tag),
                "tag of {input}"
            );
            assert_eq!(
                r.digest().map(ToString::to_string),
                none_if_empty(&digest),
                "digest of {input}"
            );
            // The full form is a fixed point.
            assert_eq!(Reference::parse(&full).as_ref(), Ok(&r), "reparse {full}");
        }
    }

    #[test]
    fn refuses_bad_references_precisely() {
        let long_tag = "t".repeat(129);
        let long_name = format!("example.com/{}", "a".repeat(250));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "it is empty"),
            (HEX.into(), "is an image id"),
            (
                "Busybox".into(),
                "repository name \"library/Busybox\" must be lowercase",
            ),
            ("docker.io/User/repo".into(), "must be lowercase"),
            ("localhost:5000/App".into(), "must be lowercase"),
            ("busybox:".into(), "tag \"\" is invalid"),
            ("busybox:.x".into(), "tag \".x\" is invalid"),
            ("busybox:-x".into(), "tag \"-x\" is invalid"),
            // `busybox:a` before a '/' can only be a registry with a bad port.
            (
                "busybox:a/b".into(),
                "registry \"busybox:a\" is invalid: the port must be a number",
            ),
            (
                format!("busybox:{long_tag}"),
                "is invalid: 1 to 128 characters",
            ),
            ("busybox@".into(), "invalid digest"),
            (
                "busybox@sha256:abc".into(),
                "has 3 hex digits; a sha256 digest has 64",
            ),
            (
                format!("busybox@md5:{HEX}"),
                "unsupported algorithm \"md5\"",
            ),
            (
                format!("busybox@sha256:{}", HEX.to_uppercase()),
                "is not a lowercase hex digit",
            ),
            ("example.com/".into(), "the repository name is empty"),
            ("example.com//x".into(), "empty path component"),
            ("x/".into(), "empty path component"),
            ("/x".into(), "empty path component"),
            ("a/b_-c".into(), "path component \"b_-c\" is invalid"),
            ("a/b___c".into(), "path component \"b___c\" is invalid"),
            ("a/-b".into(), "path component \"-b\" is invalid"),
            ("a/b.".into(), "path component \"b.\" is invalid"),
            ("a/b c".into(), "path component \"b c\" is invalid"),
            (
                "exa_mple.com/x".into(),
                "registry \"exa_mple.com\" is invalid",
            ),
            ("-x.com/y".into(), "registry \"-x.com\" is invalid"),
            ("host:/x".into(), "the port must be a number"),
            ("host:50a/x".into(), "the port must be a number"),
            ("[::1/x".into(), "'[' without ']'"),
            ("[]:5000/x".into(), "registry \"[]:5000\" is invalid"),
            ("[::1]x/y".into(), "expected ':' and a port after ']'"),
            (long_name, "at most 255"),
        ];
        for (input, reason) in cases {
            let err = Reference::parse(&input).expect_err(&input);
            let message = err.to_string();
            assert!(message.contains(reason), "{input:?}: {message}");
            assert!(message.starts_with("invalid image reference "), "{message}");
        }
    }

    #[test]
    fn with_digest_drops_the_tag() {
        let digest = Digest::sha256(b"x");
        let r = Reference::parse("busybox:1.36").expect("parse");
        let pinned = r.with_digest(digest.clone());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/busybox@{digest}")
        );
        assert_eq!(pinned.tag(), None);
    }

    #[test]
    fn docker_hub_is_served_by_registry_1() {
        let hub = Reference::parse("busybox").expect("parse");
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        let local = Reference::parse("localhost:5000/x").expect("parse");
        assert_eq!(local.api_host(), "localhost:5000");
    }

    #[test]
    fn long_inputs_are_quoted_short() {
        let input = "A".repeat(10_000);
        let err = Reference::parse(&input).expect_err("uppercase");
        assert!(err.to_string().len() < 400, "{err}");
    }
}
