//! What a `Checkpoint` call asks of the shim, carried in
//! `CheckpointTaskRequest.options` (a protobuf `Any`): containerd's
//! `containerd.runc.v1.CheckpointOptions`, so that containerd clients and
//! berthd speak the same message. Every field is understood:
//!
//! ```text
//! bool exit = 1;                   // stop the container after the dump
//! bool open_tcp = 2;               // --tcp-established
//! bool external_unix_sockets = 3;  // --ext-unix-sk
//! bool terminal = 4;               // --shell-job
//! bool file_locks = 5;             // --file-locks
//! repeated string empty_namespaces = 6; // --empty-ns <ns>
//! string cgroups_mode = 7;         // --manage-cgroups-mode
//! string image_path = 8;           // --image-path (the request's `path` wins)
//! string work_path = 9;            // --work-path (dump.log, stats-dump)
//! ```
//!
//! The runtime marks the namespaces the container joined by path (the
//! pod's network namespace) as external to the dump itself, as it does for
//! CRI-O and containerd: no flag names them.

use std::path::PathBuf;

use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, CodedOutputStream};

/// The type URL of containerd's runc checkpoint options.
pub const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

/// How the runtime checkpoints a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Stop the container once it is dumped (Kubernetes' forensic
    /// checkpoints leave it running: `false`).
    pub exit: bool,
    /// Dump established TCP connections.
    pub open_tcp: bool,
    /// Dump unix sockets whose peer is outside the container.
    pub external_unix_sockets: bool,
    /// The container has a terminal (CRIU's shell-job mode).
    pub terminal: bool,
    /// Dump file locks.
    pub file_locks: bool,
    /// Namespaces to restore empty (`network`, ...).
    pub empty_namespaces: Vec<String>,
    /// CRIU's cgroup mode (`soft`, `full`, `strict`, `ignore`), empty for
    /// the runtime's default.
    pub cgroups_mode: String,
    /// Where CRIU writes its images (the request's `path` overrides it).
    pub image_path: Option<PathBuf>,
    /// Where CRIU writes its log (`dump.log`) and statistics.
    pub work_path: Option<PathBuf>,
}

/// Why checkpoint options could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointOptionsError {
    /// The `Any` holds a message this shim does not know.
    #[error("unsupported checkpoint options type {0:?}")]
    UnknownType(String),
    /// The message does not decode.
    #[error("malformed {CHECKPOINT_OPTIONS_TYPE}: {0}")]
    Malformed(String),
}

impl CheckpointOptions {
    /// Encodes the options as the `Any` of a `CheckpointTaskRequest`.
    pub fn to_any(&self) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            // Writing into a Vec cannot fail; proto3 leaves defaults out.
            let flags = [
                (1, self.exit),
                (2, self.open_tcp),
                (3, self.external_unix_sockets),
                (4, self.terminal),
                (5, self.file_locks),
            ];
            for (field, set) in flags {
                if set {
                    let _ = out.write_bool(field, true);
                }
            }
            for ns in &self.empty_namespaces {
                let _ = out.write_string(6, ns);
            }
            let path = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let strings = [
                (7, self.cgroups_mode.clone()),
                (8, path(&self.image_path)),
                (9, path(&self.work_path)),
            ];
            for (field, text) in strings {
                if !text.is_empty() {
                    let _ = out.write_string(field, &text);
                }
            }
            let _ = out.flush();
        }
        let mut any = Any::new();
        any.type_url = CHECKPOINT_OPTIONS_TYPE.to_owned();
        any.value = value;
        any
    }

    /// Decodes the options of a `CheckpointTaskRequest` (`None` or an empty
    /// type: the defaults).
    pub fn from_any(any: Option<&Any>) -> Result<Self, CheckpointOptionsError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Self::default());
        };
        let type_url = any.type_url.as_str();
        if type_url.rsplit('/').next() != Some(CHECKPOINT_OPTIONS_TYPE) {
            return Err(CheckpointOptionsError::UnknownType(type_url.to_owned()));
        }
        let malformed = |field: u32, e: protobuf::Error| {
            CheckpointOptionsError::Malformed(format!("field {field}: {e}"))
        };
        let mut options = Self::default();
        let mut input = CodedInputStream::from_bytes(&any.value);
        while let Some(tag) = input
            .read_raw_tag_or_eof()
            .map_err(|e| CheckpointOptionsError::Malformed(e.to_string()))?
        {
            let (field, wire) = (tag >> 3, tag & 7);
            let wire = protobuf::rt::WireType::new(wire).ok_or_else(|| {
                CheckpointOptionsError::Malformed(format!("field {field} has wire type {wire}"))
            })?;
            use protobuf::rt::WireType::{LengthDelimited, Varint};
            match (field, wire) {
                (1..=5, Varint) => {
                    let set = input.read_bool().map_err(|e| malformed(field, e))?;
                    match field {
                        1 => options.exit = set,
                        2 => options.open_tcp = set,
                        3 => options.external_unix_sockets = set,
                        4 => options.terminal = set,
                        _ => options.file_locks = set,
                    }
                }
                (6..=9, LengthDelimited) => {
                    let text = input.read_string().map_err(|e| malformed(field, e))?;
                    let path = (!text.is_empty()).then(|| PathBuf::from(&text));
                    match field {
                        6 => options.empty_namespaces.push(text),
                        7 => options.cgroups_mode = text,
                        8 => options.image_path = path,
                        _ => options.work_path = path,
                    }
                }
                (1..=9, _) => {
                    return Err(CheckpointOptionsError::Malformed(format!(
                        "field {field} has the wrong wire type"
                    )));
                }
                _ => input
                    .skip_field(wire)
                    .map_err(|e| CheckpointOptionsError::Malformed(e.to_string()))?,
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let options = CheckpointOptions {
            exit: false,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into(), "ipc".into()],
            cgroups_mode: "soft".into(),
            image_path: Some("/var/lib/x/checkpoint".into()),
            work_path: Some("/var/lib/x".into()),
        };
        let any = options.to_any();
        assert_eq!(any.type_url, CHECKPOINT_OPTIONS_TYPE);
        assert_eq!(CheckpointOptions::from_any(Some(&any)).ok(), Some(options));
        let default = CheckpointOptions::default();
        assert!(default.to_any().value.is_empty());
        assert_eq!(
            CheckpointOptions::from_any(None).ok(),
            Some(CheckpointOptions::default())
        );
    }

    #[test]
    fn refuses_other_types_and_wrong_wire_types() {
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        assert!(matches!(
            CheckpointOptions::from_any(Some(&any)),
            Err(CheckpointOptionsError::UnknownType(_))
        ));
        any.type_url = format!("type.googleapis.com/{CHECKPOINT_OPTIONS_TYPE}");
        // Field 8 (image_path) as a varint.
        any.value = vec![8 << 3, 1];
        assert!(matches!(
            CheckpointOptions::from_any(Some(&any)),
            Err(CheckpointOptionsError::Malformed(_))
        ));
        // Truncated string.
        any.value = vec![(9 << 3) | 2, 10, b'/'];
        assert!(CheckpointOptions::from_any(Some(&any)).is_err());
        // Unknown fields are skipped.
        any.value = vec![15 << 3, 1, 1 << 3, 1];
        let options = CheckpointOptions::from_any(Some(&any)).ok();
        assert_eq!(options.map(|o| o.exit), Some(true));
    }
}
