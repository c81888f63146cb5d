//! Domain errors → gRPC status codes: the one place where that mapping
//! lives. Each domain error enum maps every variant explicitly, so no code
//! is lost to a catch-all.

use tonic::Status;

use crate::container::ContainerError;
use crate::content::ContentError;
use crate::daemon::DaemonError;
use crate::image::ImageError;
use crate::registry::RegistryError;
use crate::sandbox::SandboxError;
use crate::snapshot::SnapshotError;
use crate::store::StoreError;

/// Turns a domain error into the gRPC status the CRI client sees.
pub trait IntoStatus {
    /// The status, with the error's message.
    fn into_status(self) -> Status;
}

impl IntoStatus for StoreError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            StoreError::NameTaken { .. } => Status::already_exists(message),
            StoreError::Locked { .. } => Status::unavailable(message),
            StoreError::NewerSchema { .. }
            | StoreError::Record { .. }
            | StoreError::Io { .. }
            | StoreError::Database(_) => Status::internal(message),
        }
    }
}

impl IntoStatus for ImageError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            ImageError::InvalidReference(_) => Status::invalid_argument(message),
            ImageError::Registry(e) => e.into_status(),
            ImageError::InvalidImage { .. } => Status::failed_precondition(message),
            ImageError::NotFound(_) => Status::not_found(message),
            ImageError::InUse { .. } => Status::failed_precondition(message),
            ImageError::Snapshot(e) => e.into_status(),
            ImageError::Content(e) => e.into_status(),
            ImageError::Store(e) => e.into_status(),
        }
    }
}

impl IntoStatus for RegistryError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            RegistryError::InvalidReference(_) | RegistryError::InvalidCredentials { .. } => {
                Status::invalid_argument(message)
            }
            RegistryError::NotFound { .. } => Status::not_found(message),
            RegistryError::Unauthorized { .. } => Status::unauthenticated(message),
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::InvalidManifest { .. } => Status::data_loss(message),
            RegistryError::Timeout { .. } => Status::deadline_exceeded(message),
            RegistryError::Unsupported { .. } => Status::failed_precondition(message),
            RegistryError::Transport { .. } => Status::unavailable(message),
            RegistryError::Config { .. } | RegistryError::Write { .. } => Status::internal(message),
        }
    }
}

impl IntoStatus for SnapshotError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            SnapshotError::UnsupportedMediaType(_) => Status::failed_precondition(message),
            SnapshotError::DiffIdMismatch { .. }
            | SnapshotError::UnsafeEntry { .. }
            | SnapshotError::BadEntry { .. } => Status::data_loss(message),
            SnapshotError::NotFound(_) => Status::not_found(message),
            SnapshotError::Cancelled { .. } => Status::cancelled(message),
            SnapshotError::HasChildren { .. } => Status::failed_precondition(message),
            SnapshotError::Store(e) => e.into_status(),
            SnapshotError::Apply { .. }
            | SnapshotError::Read { .. }
            | SnapshotError::Io { .. }
            | SnapshotError::Task(_) => Status::internal(message),
        }
    }
}

impl IntoStatus for ContentError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            ContentError::InvalidDigest { .. } => Status::invalid_argument(message),
            ContentError::NotFound(_) => Status::not_found(message),
            ContentError::SizeMismatch { .. }
            | ContentError::TooLong { .. }
            | ContentError::DigestMismatch { .. }
            | ContentError::Corrupt { .. } => Status::data_loss(message),
            ContentError::TooLarge { .. } | ContentError::Io { .. } => Status::internal(message),
        }
    }
}

impl IntoStatus for SandboxError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            SandboxError::InvalidArgument { .. }
            | SandboxError::Ambiguous(_)
            | SandboxError::UnknownHandler(_) => Status::invalid_argument(message),
            SandboxError::NotFound(_) => Status::not_found(message),
            SandboxError::NameTaken { .. } => Status::already_exists(message),
            SandboxError::NotReady(_) => Status::failed_precondition(message),
            SandboxError::Pause(_)
            | SandboxError::PortForward { .. }
            | SandboxError::Network(_)
            | SandboxError::Cgroup(_)
            | SandboxError::Io { .. } => Status::internal(message),
            SandboxError::Store(e) => e.into_status(),
        }
    }
}

impl IntoStatus for ContainerError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            ContainerError::InvalidArgument { .. } | ContainerError::Ambiguous(_) => {
                Status::invalid_argument(message)
            }
            ContainerError::NotFound(_) | ContainerError::ImageNotFound(_) => {
                Status::not_found(message)
            }
            ContainerError::SandboxNotReady(_) => Status::failed_precondition(message),
            ContainerError::NameTaken { .. } => Status::already_exists(message),
            ContainerError::FailedPrecondition(_) => Status::failed_precondition(message),
            ContainerError::Shim(_) => Status::internal(message),
            ContainerError::Timeout(_) => Status::deadline_exceeded(message),
            ContainerError::Spec(e) => match e {
                crate::container::SpecError::InvalidArgument { .. } => {
                    Status::invalid_argument(message)
                }
                crate::container::SpecError::NotFound(_) => Status::not_found(message),
                crate::container::SpecError::Io { .. } | crate::container::SpecError::Oci(_) => {
                    Status::internal(message)
                }
            },
            ContainerError::Snapshot(e) => e.into_status(),
            ContainerError::Rootfs(_) | ContainerError::Io { .. } => Status::internal(message),
            ContainerError::Store(e) => e.into_status(),
        }
    }
}

impl IntoStatus for DaemonError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            DaemonError::InvalidPodCidr { .. }
            | DaemonError::InvalidStreamRequest { .. }
            | DaemonError::InvalidPodResources { .. } => Status::invalid_argument(message),
            DaemonError::StreamingNotReady => Status::unavailable(message),
            DaemonError::Streaming(_) => Status::internal(message),
            DaemonError::Store(e) => e.into_status(),
            DaemonError::Image(e) => e.into_status(),
            DaemonError::Sandbox(e) => e.into_status(),
            DaemonError::Container(e) => e.into_status(),
            DaemonError::Socket(_)
            | DaemonError::Metrics(_)
            | DaemonError::Dir { .. }
            | DaemonError::Serve(_)
            | DaemonError::Events(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes_are_explicit() {
        let taken = StoreError::NameTaken {
            name: "n".into(),
            holder: "id1".into(),
        };
        let s = taken.into_status();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert!(s.message().contains("id1"), "{}", s.message());

        let cidr = DaemonError::InvalidPodCidr {
            cidr: "10.0.0.0/99".into(),
            reason: "bad prefix".into(),
        };
        let s = cidr.into_status();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("pod_cidr"), "{}", s.message());
    }
}
