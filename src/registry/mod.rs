//! Registry access: image references normalised as the kubelet and Docker
//! do, mirrors and per-registry settings from the config, authentication,
//! and verified manifest and blob downloads through `oci-client`.
