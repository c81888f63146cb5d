//! The content store: blobs (manifests, configs, layers) by digest under
//! `<root>/content/blobs/sha256/<hex>`, written to a temporary file and
//! renamed into place only once their digest matches.
