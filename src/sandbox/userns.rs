//! Whether a runtime handler can run a pod in its own user namespace: the
//! pod's containers need idmapped bind mounts (runc >= 1.2, crun >= 1.9),
//! which the OCI runtime reports in `<runtime> features` as
//! `linux.mountExtensions.idmap.enabled`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SandboxError;
use crate::input::quoted;

/// How long `<runtime> features` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Runs `<runtime> features`; false when it fails, times out or does not
/// say idmapped mounts are enabled.
async fn probe(runtime: &Path) -> bool {
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => serde_json::from_slice(&out.stdout)
            .map(|doc| idmap_mounts_supported(&doc))
            .unwrap_or(false),
        _ => false,
    }
}

/// The probe's answer per runtime binary, asked once each.
#[derive(Debug, Default)]
pub(super) struct IdmapSupport {
    probed: std::sync::Mutex<HashMap<PathBuf, bool>>,
}

impl IdmapSupport {
    /// Succeeds when `runtime` (handler `handler`'s) supports idmapped
    /// mounts; otherwise an InvalidArgument that says why the pod's user
    /// namespace cannot be honoured.
    pub(super) async fn require(&self, handler: &str, runtime: &Path) -> Result<(), SandboxError> {
        let known = self
            .probed
            .lock()
            .ok()
            .and_then(|p| p.get(runtime).copied());
        let supported = match known {
            Some(supported) => supported,
            None => {
                let supported = probe(runtime).await;
                if let Ok(mut probed) = self.probed.lock() {
                    probed.insert(runtime.to_owned(), supported);
                }
                supported
            }
        };
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

    #[tokio::test]
    async fn a_runtime_without_features_is_refused_with_the_reason() {
        let support = IdmapSupport::default();
        let err = support
            .require("old", Path::new("/nonexistent/runc"))
            .await
            .expect_err("no such runtime");
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
