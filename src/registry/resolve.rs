//! Resolving a reference to one platform's verified manifest, trying the
//! registry's mirrors before the registry itself.

use std::fmt;
use std::sync::Arc;

use oci_client::secrets::RegistryAuth;
use tokio::sync::Semaphore;

use super::auth::Secret;
use super::error::Target;
use super::manifest::{
    ACCEPTED_MANIFESTS, Descriptor, MAX_MANIFEST_SIZE, Manifest, ManifestError, RawManifest,
    select_platform,
};
use super::platform::Platform;
use super::reference::Reference;
use super::{Credentials, Endpoint, Registries, RegistryError};
use crate::content::Digest;

/// An image resolved to one platform's manifest, verified, with the
/// session (client and credentials) of the endpoint that served it, from
/// which [`Registries::fetch_blob`] fetches its blobs.
#[derive(Clone)]
pub struct ResolvedImage {
    /// The reference as asked for.
    pub reference: Reference,
    /// Digest of the platform's image manifest.
    pub digest: Digest,
    /// What the reference points to: the manifest list's digest when it
    /// resolved through one, else [`ResolvedImage::digest`]. This is the
    /// kubelet's repo digest.
    pub repo_digest: Digest,
    /// The platform's image manifest, as served.
    pub manifest: RawManifest,
    /// The manifest list it was chosen from, as served.
    pub index: Option<RawManifest>,
    /// The platform the manifest list gave for the chosen manifest.
    pub platform: Option<Platform>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// The endpoint that served the manifest and serves the blobs.
    pub endpoint: Endpoint,
    pub(crate) session: Session,
}

/// What fetching blobs from the serving endpoint needs.
#[derive(Clone)]
pub(crate) struct Session {
    pub client: oci_client::Client,
    /// The repository at the endpoint, pinned to the manifest digest.
    pub reference: oci_client::Reference,
    /// Transfers of this image that may run at once.
    pub downloads: Arc<Semaphore>,
}

impl ResolvedImage {
    /// The repo digest as a reference: `docker.io/library/busybox@sha256:…`.
    pub fn repo_digest_reference(&self) -> Reference {
        self.reference.with_digest(self.repo_digest.clone())
    }

    /// Bytes of the manifest(s), config and layers.
    pub fn size(&self) -> u64 {
        let manifests =
            self.manifest.bytes.len() + self.index.as_ref().map_or(0, |i| i.bytes.len());
        manifests as u64 + self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl fmt::Debug for ResolvedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedImage")
            .field("reference", &self.reference.to_string())
            .field("digest", &self.digest)
            .field("repo_digest", &self.repo_digest)
            .field("media_type", &self.manifest.media_type)
            .field("platform", &self.platform)
            .field("config", &self.config)
            .field("layers", &self.layers)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Registries {
    /// Resolves `reference` to this node's platform: fetches the manifest
    /// (by digest when the reference has one, else by tag) from the first
    /// endpoint that has it, resolves a manifest list, and verifies every
    /// manifest against the digest that names it.
    ///
    /// A mirror that is unreachable, stalls, fails with a server error or
    /// does not have the image gives way to the next endpoint; any other
    /// failure (refused credentials, bad content, an image berth cannot
    /// run) is returned at once.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<ResolvedImage, RegistryError> {
        let secret = credentials.map(Credentials::secret).transpose()?.flatten();
        for mirror in self.mirror_endpoints(reference) {
            match self.resolve_at(reference, &mirror, secret.as_ref()).await {
                Ok(image) => return Ok(resolved(image)),
                Err(err) if err.falls_through() => {
                    tracing::warn!(
                        image = %reference,
                        mirror = %mirror.url,
                        error = %err,
                        "mirror failed; trying the next endpoint"
                    );
                }
                Err(err) => return Err(err),
            }
        }
        let registry = self.registry_endpoint(reference);
        self.resolve_at(reference, &registry, secret.as_ref())
            .await
            .map(resolved)
    }

    async fn resolve_at(
        &self,
        reference: &Reference,
        endpoint: &Endpoint,
        secret: Option<&Secret>,
    ) -> Result<ResolvedImage, RegistryError> {
        let target = |object: String| Target {
            reference: reference.to_string(),
            object,
            endpoint: endpoint.url.clone(),
        };
        let client = self.oci_client(endpoint)?;
        let auth = self
            .registry_auth(endpoint, secret, &target("token".into()))
            .await?;
        let top_reference = endpoint.oci_reference(reference);
        let (top, manifest) = self
            .fetch_manifest(
                &client,
                &auth,
                &top_reference,
                reference.digest(),
                &target("manifest".into()),
            )
            .await?;
        let (index, chosen, platform, manifest) = match manifest {
            Manifest::Image { .. } => (None, top, None, manifest),
            Manifest::Index { entries, .. } => {
                let entry = select_platform(&entries, &self.platform).map_err(|available| {
                    target("manifest list".into())
                        .unsupported(no_platform(&self.platform, &available))
                })?;
                let expected = &entry.descriptor;
                let child = target(format!("manifest {}", expected.digest));
                let (raw, manifest) = self
                    .fetch_manifest(
                        &client,
                        &auth,
                        &top_reference.clone_with_digest(expected.digest.to_string()),
                        Some(&expected.digest),
                        &child,
                    )
                    .await?;
                if raw.bytes.len() as u64 != expected.size {
                    return Err(child.size_mismatch(expected.size, raw.bytes.len() as u64));
                }
                (Some(top), raw, entry.platform.clone(), manifest)
            }
        };
        let Manifest::Image { config, layers, .. } = manifest else {
            return Err(target(format!("manifest {}", chosen.digest))
                .unsupported("its manifest list names another manifest list for this platform"));
        };
        Ok(ResolvedImage {
            reference: reference.clone(),
            digest: chosen.digest.clone(),
            repo_digest: index.as_ref().unwrap_or(&chosen).digest.clone(),
            session: Session {
                client,
                reference: top_reference.clone_with_digest(chosen.digest.to_string()),
                downloads: Arc::new(Semaphore::new(self.max_concurrent_downloads)),
            },
            manifest: chosen,
            index,
            platform,
            config,
            layers,
            endpoint: endpoint.clone(),
        })
    }

    /// Fetches one manifest and checks it: size limit, digest (`expected`,
    /// else the registry's `Docker-Content-Digest`, which `oci-client`
    /// checks), and that it is something berth pulls.
    async fn fetch_manifest(
        &self,
        client: &oci_client::Client,
        auth: &RegistryAuth,
        reference: &oci_client::Reference,
        expected: Option<&Digest>,
        target: &Target,
    ) -> Result<(RawManifest, Manifest), RegistryError> {
        let (bytes, _) = tokio::time::timeout(
            self.progress_timeout,
            client.pull_manifest_raw(reference, auth, ACCEPTED_MANIFESTS),
        )
        .await
        .map_err(|_| target.timeout(self.progress_timeout))?
        .map_err(|e| target.oci(e))?;
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(target.invalid_manifest(format!(
                "{} bytes is larger than the {MAX_MANIFEST_SIZE}-byte limit",
                bytes.len()
            )));
        }
        let digest = match expected {
            Some(expected) => {
                let actual = Digest::sha256(&bytes);
                if actual != *expected {
                    return Err(target.digest_mismatch(expected, actual));
                }
                actual
            }
            None => Digest::sha256(&bytes),
        };
        let manifest = Manifest::parse(&bytes).map_err(|e| match e {
            ManifestError::Unsupported(reason) => target.unsupported(reason),
            ManifestError::Invalid(reason) => target.invalid_manifest(reason),
        })?;
        let raw = RawManifest {
            media_type: manifest.media_type().to_owned(),
            digest,
            bytes: bytes.to_vec(),
        };
        Ok((raw, manifest))
    }
}

impl Endpoint {
    /// The `oci-client` reference of `reference` at this endpoint: by
    /// digest when it has one, else by tag. At a mirror the image's
    /// registry goes along as the `ns` query parameter, as containerd does.
    fn oci_reference(&self, reference: &Reference) -> oci_client::Reference {
        let registry = if self.mirror {
            self.registry.clone()
        } else {
            self.host.clone()
        };
        let repository = self.repository.clone();
        let mut oci = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => {
                oci_client::Reference::with_digest(registry, repository, digest.to_string())
            }
            (None, tag) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.unwrap_or(super::DEFAULT_TAG).to_owned(),
            ),
        };
        if self.mirror {
            oci.set_mirror_registry(self.host.clone());
        }
        oci
    }
}

fn resolved(image: ResolvedImage) -> ResolvedImage {
    tracing::info!(
        image = %image.reference,
        endpoint = %image.endpoint.url,
        digest = %image.digest,
        repo_digest = %image.repo_digest,
        "resolved image"
    );
    image
}

/// Why no manifest fits: the platform wanted and those on offer.
fn no_platform(wanted: &Platform, available: &[Platform]) -> String {
    if available.is_empty() {
        return format!(
            "its manifest list has no image for {wanted} (it names no platform images)"
        );
    }
    let available: Vec<String> = available.iter().map(ToString::to_string).collect();
    format!(
        "its manifest list has no image for {wanted}; it has {}",
        available.join(", ")
    )
}
