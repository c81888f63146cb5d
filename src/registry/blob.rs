//! Streaming one blob (config or layer) of a resolved image into a
//! caller's sink, hashed on the way, with a progress timeout.

use oci_client::errors::DigestError;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_stream::StreamExt;

use sha2::Digest as _;

use super::error::{Target, chain};
use super::manifest::{DOCKER_CONFIG, Descriptor, LAYER_MEDIA_TYPES, OCI_CONFIG};
use super::{Registries, RegistryError, ResolvedImage};
use crate::content::Digest;

impl Registries {
    /// Streams `blob` of `image` from the endpoint that served its manifest
    /// into `sink`, hashing every chunk; returns the bytes written.
    ///
    /// Fails with [`RegistryError::SizeMismatch`] as soon as the blob is
    /// announced or grows bigger than its descriptor says, or ends
    /// shorter; with [`RegistryError::DigestMismatch`] when the bytes do
    /// not hash to its digest; with [`RegistryError::Timeout`] when no byte
    /// arrives for `progress_timeout`. The sink has then received
    /// unverified bytes: treat what it holds as garbage unless this returns
    /// `Ok` (write to a temporary file, rename on success).
    ///
    /// Fetches of one image may run concurrently (each takes `&self`);
    /// at most `max_concurrent_downloads` of them transfer at a time, the
    /// others wait their turn.
    pub async fn fetch_blob<W>(
        &self,
        image: &ResolvedImage,
        blob: &Descriptor,
        mut sink: W,
    ) -> Result<u64, RegistryError>
    where
        W: AsyncWrite + Unpin,
    {
        let target = Target {
            reference: image.reference.to_string(),
            object: format!("{} {}", blob_kind(blob), blob.digest),
            endpoint: image.endpoint.url.clone(),
        };
        // The semaphore is never closed, so acquiring only ever waits.
        let _turn = image.session.downloads.acquire().await.ok();
        let timeout = self.progress_timeout;
        let mut stream = tokio::time::timeout(
            timeout,
            image
                .session
                .client
                .pull_blob_stream(&image.session.reference, blob.digest.as_str()),
        )
        .await
        .map_err(|_| target.timeout(timeout))?
        .map_err(|e| target.oci(e))?;
        if let Some(announced) = stream.content_length
            && announced != blob.size
        {
            return Err(target.size_mismatch(blob.size, announced));
        }
        let mut hasher = sha2::Sha256::new();
        let mut received: u64 = 0;
        loop {
            let next = tokio::time::timeout(timeout, stream.next())
                .await
                .map_err(|_| target.timeout(timeout))?;
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                // `oci-client` checks the digest too and reports a mismatch
                // as the stream's last item; ours, below, names both sides.
                Some(Err(err)) if is_digest_error(&err) => break,
                Some(Err(err)) => return Err(target.transport(chain(&err))),
            };
            received += chunk.len() as u64;
            if received > blob.size {
                return Err(target.size_mismatch(blob.size, received));
            }
            hasher.update(&chunk);
            sink.write_all(&chunk)
                .await
                .map_err(|source| RegistryError::Write {
                    reference: target.reference.clone(),
                    object: target.object.clone(),
                    source,
                })?;
        }
        sink.flush().await.map_err(|source| RegistryError::Write {
            reference: target.reference.clone(),
            object: target.object.clone(),
            source,
        })?;
        if received != blob.size {
            return Err(target.size_mismatch(blob.size, received));
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != blob.digest {
            return Err(target.digest_mismatch(&blob.digest, actual));
        }
        tracing::debug!(
            image = %target.reference,
            blob = %blob.digest,
            bytes = received,
            "fetched blob"
        );
        Ok(received)
    }
}

/// `config`, `layer` or `blob`, for messages.
fn blob_kind(blob: &Descriptor) -> &'static str {
    let media_type = blob.media_type.as_str();
    if media_type == OCI_CONFIG || media_type == DOCKER_CONFIG {
        "config"
    } else if LAYER_MEDIA_TYPES.contains(&media_type) {
        "layer"
    } else {
        "blob"
    }
}

fn is_digest_error(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some())
}
