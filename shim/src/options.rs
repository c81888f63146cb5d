//! What a shim task runs, carried in `CreateTaskRequest.options` (a protobuf
//! `Any`): an OCI bundle through runc, or the pod's pause process.
//!
//! Two option messages are understood, both protobuf-encoded:
//! - `containerd.runc.v1.Options` (containerd's own, so containerd clients
//!   can drive berth-shim): only `binary_name = 6` and `root = 7` are read.
//!   No options at all means runc with its defaults.
//! - `berth.shim.v1.PauseOptions` (`string binary = 1; repeated string args
//!   = 2;`): run `berth-pause` with these arguments (see
//!   [`crate::pause::USAGE`]) instead of an OCI runtime. This is how a pod
//!   sandbox's shim supervises the pause process.

use std::path::PathBuf;

use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, CodedOutputStream};

/// The type URL of containerd's runc options.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The type URL of berth's pause options.
pub const PAUSE_OPTIONS_TYPE: &str = "berth.shim.v1.PauseOptions";

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOptions {
    /// An OCI bundle, through a runc-compatible runtime.
    Runc {
        /// The runtime binary (`runc` from `PATH` when `None`).
        binary: Option<PathBuf>,
        /// The runtime's state root (`--root`; the runtime's default when
        /// `None`).
        root: Option<PathBuf>,
    },
    /// The pod's pause process.
    Pause {
        /// The pause binary (`berth-pause` beside the shim when `None`).
        binary: Option<PathBuf>,
        /// Its arguments, without the program name.
        args: Vec<String>,
    },
}

/// Why task options could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The `Any` holds a message this shim does not know.
    #[error("unsupported task options type {0:?}")]
    UnknownType(String),
    /// The message does not decode.
    #[error("malformed {type_url}: {reason}")]
    Malformed {
        /// The message's type.
        type_url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::Runc {
            binary: None,
            root: None,
        }
    }
}

impl TaskOptions {
    /// Encodes the options as the `Any` of a `CreateTaskRequest`.
    pub fn to_any(&self) -> Any {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (type_url, fields): (&str, Vec<(u32, String)>) = match self {
            Self::Runc { binary, root } => {
                (RUNC_OPTIONS_TYPE, vec![(6, path(binary)), (7, path(root))])
            }
            Self::Pause { binary, args } => {
                let mut fields = vec![(1, path(binary))];
                fields.extend(args.iter().map(|a| (2, a.clone())));
                (PAUSE_OPTIONS_TYPE, fields)
            }
        };
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            for (field, text) in fields {
                // Proto3 leaves empty singular strings out; repeated args
                // are always written (an empty arg is still an arg).
                if !text.is_empty() || field == 2 {
                    // Writing into a Vec cannot fail.
                    let _ = out.write_string(field, &text);
                }
            }
            let _ = out.flush();
        }
        let mut any = Any::new();
        any.type_url = type_url.to_owned();
        any.value = value;
        any
    }

    /// Decodes the options of a `CreateTaskRequest` (`None`: runc with its
    /// defaults).
    pub fn from_any(any: Option<&Any>) -> Result<Self, OptionsError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Self::default());
        };
        let type_url = any.type_url.as_str();
        // Accept both `name` and `type.googleapis.com/name`.
        let name = type_url.rsplit('/').next().unwrap_or(type_url);
        let fields = decode_strings(&any.value).map_err(|reason| OptionsError::Malformed {
            type_url: type_url.to_owned(),
            reason,
        })?;
        let path = |field: u32| {
            fields
                .iter()
                .rev()
                .find(|(f, v)| *f == field && !v.is_empty())
                .map(|(_, v)| PathBuf::from(v))
        };
        match name {
            RUNC_OPTIONS_TYPE => Ok(Self::Runc {
                binary: path(6),
                root: path(7),
            }),
            PAUSE_OPTIONS_TYPE => Ok(Self::Pause {
                binary: path(1),
                args: fields
                    .iter()
                    .filter(|(f, _)| *f == 2)
                    .map(|(_, v)| v.clone())
                    .collect(),
            }),
            _ => Err(OptionsError::UnknownType(type_url.to_owned())),
        }
    }
}

/// Every length-delimited field that holds UTF-8, in order; other fields
/// are skipped.
fn decode_strings(bytes: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut fields = Vec::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire) = (tag >> 3, tag & 7);
        let wire = protobuf::rt::WireType::new(wire)
            .ok_or_else(|| format!("field {field} has wire type {wire}"))?;
        if wire == protobuf::rt::WireType::LengthDelimited {
            match input.read_string() {
                Ok(text) => fields.push((field, text)),
                Err(e) => return Err(format!("field {field}: {e}")),
            }
        } else {
            input.skip_field(wire).map_err(|e| e.to_string())?;
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for options in [
            TaskOptions::default(),
            TaskOptions::Runc {
                binary: Some("/usr/bin/crun".into()),
                root: Some("/run/berth/runc".into()),
            },
            TaskOptions::Pause {
                binary: None,
                args: vec!["--state-dir".into(), "/run/x".into(), "".into()],
            },
        ] {
            let any = options.to_any();
            assert_eq!(TaskOptions::from_any(Some(&any)).expect("decode"), options);
        }
    }

    #[test]
    fn reads_containerd_runc_options_and_refuses_unknown_types() {
        // containerd.runc.v1.Options{no_pivot_root: true (1, varint),
        // binary_name: "crun" (6), root: "/r" (7)}
        let mut any = Any::new();
        any.type_url = format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}");
        any.value = vec![8, 1, 50, 4, b'c', b'r', b'u', b'n', 58, 2, b'/', b'r'];
        assert_eq!(
            TaskOptions::from_any(Some(&any)).expect("decode"),
            TaskOptions::Runc {
                binary: Some("crun".into()),
                root: Some("/r".into())
            }
        );
        assert_eq!(
            TaskOptions::from_any(None).expect("none"),
            TaskOptions::default()
        );
        any.type_url = "example.Other".into();
        assert!(matches!(
            TaskOptions::from_any(Some(&any)),
            Err(OptionsError::UnknownType(_))
        ));
    }
}
