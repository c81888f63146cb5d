//! Whether a runtime handler can run a pod in its own user namespace: the
//! pod's containers need idmapped bind mounts (runc >= 1.2, crun >= 1.9),
//! which the OCI runtime reports in `<runtime> features` as
//! `linux.mountExtensions.idmap.enabled`.

use std::path::Path;

use super::SandboxError;
use crate::input::quoted;

/// The field a refused user namespace is reported on.
const USERNS_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";

/// Whether a `<runtime> features` document (OCI runtime-spec
/// `features.md`) says the runtime supports idmapped mounts.
pub fn idmap_mounts_supported(features: &serde_json::Value) -> bool {
    features
        .pointer("/linux/mountExtensions/idmap/enabled")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// Succeeds when handler `handler`'s runtime `runtime` supports idmapped
/// mounts (`supported`, from the daemon's one `<runtime> features` probe
/// at start); otherwise an InvalidArgument that says why the pod's user
/// namespace cannot be honoured.
pub(super) fn require(handler: &str, runtime: &Path, supported: bool) -> Result<(), SandboxError> {
    if supported {
        return Ok(());
    }
    Err(SandboxError::InvalidArgument {
        field: format!("{USERNS_FIELD}.mode"),
        reason: format!(
            "POD needs idmapped mounts, and runtime handler {}'s runtime {} does not \
             report them (`{} features`: linux.mountExtensions.idmap.enabled is not \
             true; runc >= 1.2 or crun >= 1.9 has them)",
            quoted(handler),
            quoted(&runtime.display().to_string()),
            runtime.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmap_comes_from_the_mount_extensions() {
        let doc = |json: &str| serde_json::from_str::<serde_json::Value>(json).expect("json");
        assert!(idmap_mounts_supported(&doc(
            r#"{"linux":{"mountExtensions":{"idmap":{"enabled":true}}}}"#
        )));
        for without in [
            r#"{"linux":{"mountExtensions":{"idmap":{"enabled":false}}}}"#,
            r#"{"linux":{"mountExtensions":{}}}"#,
            r#"{"linux":{"namespaces":["user"]}}"#,
            r#"{"mountOptions":["rro"]}"#,
        ] {
            assert!(!idmap_mounts_supported(&doc(without)), "{without}");
        }
    }

    #[test]
    fn a_runtime_without_features_is_refused_with_the_reason() {
        let err =
            require("old", Path::new("/nonexistent/runc"), false).expect_err("no such runtime");
        let text = err.to_string();
        assert!(
            text.contains("userns_options.mode")
                && text.contains("\"old\"")
                && text.contains("idmap"),
            "{text}"
        );
        assert!(matches!(err, SandboxError::InvalidArgument { .. }));
    }
}
