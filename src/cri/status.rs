//! Domain errors → gRPC status codes: the one place where that mapping
//! lives. Each domain error enum maps every variant explicitly, so no code
//! is lost to a catch-all.

use tonic::Status;

use crate::daemon::DaemonError;
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

impl IntoStatus for DaemonError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            DaemonError::InvalidPodCidr { .. } => Status::invalid_argument(message),
            DaemonError::Store(e) => e.into_status(),
            DaemonError::Socket(_) | DaemonError::Dir { .. } | DaemonError::Serve(_) => {
                Status::internal(message)
            }
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
