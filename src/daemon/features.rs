//! What each runtime handler's OCI runtime can do, asked once at start
//! (`<runtime> features`, runc >= 1.1 and crun): the CRI Status reports it
//! per handler so the kubelet knows which pods it may send where.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// How long `<runtime> features` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One handler's features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerFeatures {
    /// The runtime knows the `rro` mount option (recursive read-only).
    pub recursive_read_only_mounts: bool,
    /// The runtime supports idmapped mounts
    /// (`linux.mountExtensions.idmap.enabled`), which a pod with a user
    /// namespace of its own needs.
    pub user_namespaces: bool,
}

/// Reads a `features` document.
fn parse(json: &[u8]) -> HandlerFeatures {
    let doc: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    let rro = doc
        .get("mountOptions")
        .and_then(|o| o.as_array())
        .is_some_and(|o| o.iter().any(|v| v.as_str() == Some("rro")));
    HandlerFeatures {
        recursive_read_only_mounts: rro,
        user_namespaces: crate::sandbox::idmap_mounts_supported(&doc),
    }
}

async fn probe(runtime: &Path) -> HandlerFeatures {
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => parse(&out.stdout),
        _ => {
            tracing::info!(runtime = %runtime.display(), "runtime reports no features; assuming none");
            HandlerFeatures::default()
        }
    }
}

/// The features of every configured handler, by name.
pub async fn probe_all(config: &Config) -> HashMap<String, HandlerFeatures> {
    let mut out = HashMap::new();
    for (name, handler) in &config.runtimes {
        out.insert(name.clone(), probe(&handler.runtime).await);
    }
    out
}

impl super::Daemon {
    /// RunPodSandbox with what the pod's runtime handler can do.
    pub async fn run_sandbox(
        &self,
        spec: crate::sandbox::SandboxSpec,
        runtime_handler: &str,
    ) -> Result<String, super::DaemonError> {
        let idmap = self.handler_features(runtime_handler).user_namespaces;
        Ok(self.sandboxes.run(spec, runtime_handler, idmap).await?)
    }

    /// What runtime handler `name` ("" = the default) can do, as probed at
    /// start (nothing before that, or for an unknown handler).
    pub fn handler_features(&self, name: &str) -> HandlerFeatures {
        let name = if name.is_empty() {
            self.config.default_runtime.as_str()
        } else {
            name
        };
        self.features
            .get()
            .and_then(|f| f.get(name))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rro_comes_from_the_mount_options() {
        let with = br#"{"ociVersionMax":"1.1.0","mountOptions":["ro","rro","rbind"]}"#;
        assert!(parse(with).recursive_read_only_mounts);
        let without = br#"{"mountOptions":["ro","rbind"]}"#;
        assert!(!parse(without).recursive_read_only_mounts);
        assert_eq!(parse(b"not json"), HandlerFeatures::default());
    }

    #[test]
    fn user_namespaces_need_idmapped_mounts() {
        let runc_1_5 = br#"{"mountOptions":["rro"],"linux":{"namespaces":["user"],
            "mountExtensions":{"idmap":{"enabled":true}}}}"#;
        assert!(parse(runc_1_5).user_namespaces);
        // runc 1.1 has no mountExtensions at all.
        let runc_1_1 = br#"{"linux":{"namespaces":["user"]}}"#;
        assert!(!parse(runc_1_1).user_namespaces);
        let disabled = br#"{"linux":{"mountExtensions":{"idmap":{"enabled":false}}}}"#;
        assert!(!parse(disabled).user_namespaces);
    }
}
