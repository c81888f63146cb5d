//! Finding the CNI network configuration: the first valid `*.conflist`,
//! `*.conf` or `*.json` file of the configuration directory, in name order,
//! whose plugins are all installed.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A network configuration list ready to hand to plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// File it was read from.
    pub path: PathBuf,
    /// The network's name.
    pub name: String,
    /// The CNI spec version it is written for.
    pub cni_version: String,
    /// Plugin types in chain order (`bridge`, `portmap`, ...).
    pub plugins: Vec<String>,
    /// The configuration list as JSON; a single-plugin `.conf` is wrapped
    /// into a list.
    pub list: Value,
}

/// Why no network configuration is usable.
#[derive(Debug, thiserror::Error)]
pub enum NetworkConfigError {
    /// The directory has no configuration file at all.
    #[error("no network config found in {dir}")]
    NoConfig {
        /// The configuration directory.
        dir: PathBuf,
    },
    /// The directory cannot be read.
    #[error("cannot read network config dir {dir}: {source}")]
    ReadDir {
        /// The configuration directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a valid configuration.
    #[error("invalid network config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plugin the configuration names is not installed.
    #[error("network config {path}: CNI plugin {plugin:?} not found in {dirs}")]
    PluginMissing {
        /// The file.
        path: PathBuf,
        /// The plugin type.
        plugin: String,
        /// The plugin directories searched, comma-separated.
        dirs: String,
    },
}

impl NetworkConfig {
    /// Loads the first usable configuration of `conf_dir`. When none is
    /// usable the error is that of the first candidate file (or
    /// [`NetworkConfigError::NoConfig`] when there is none).
    pub fn load(
        conf_dir: &Path,
        bin_dirs: &[PathBuf],
    ) -> Result<NetworkConfig, NetworkConfigError> {
        let entries = match std::fs::read_dir(conf_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NetworkConfigError::NoConfig {
                    dir: conf_dir.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(NetworkConfigError::ReadDir {
                    dir: conf_dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                ) && p.is_file()
            })
            .collect();
        files.sort();
        let mut first_error = None;
        for path in files {
            match NetworkConfig::from_file(&path, bin_dirs) {
                Ok(config) => return Ok(config),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "skipping network config");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| NetworkConfigError::NoConfig {
            dir: conf_dir.to_path_buf(),
        }))
    }

    /// Reads and checks one configuration file.
    pub fn from_file(
        path: &Path,
        bin_dirs: &[PathBuf],
    ) -> Result<NetworkConfig, NetworkConfigError> {
        let invalid = |reason: String| NetworkConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        let value: Value = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let list = if is_list {
            value
        } else {
            // A single plugin configuration: wrap it into a one-plugin list.
            let name = value.get("name").cloned().unwrap_or(Value::Null);
            let version = value.get("cniVersion").cloned().unwrap_or(Value::Null);
            serde_json::json!({ "cniVersion": version, "name": name, "plugins": [value] })
        };
        let text_field = |key: &str| -> Result<String, NetworkConfigError> {
            match list.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(invalid(format!("missing or empty \"{key}\""))),
            }
        };
        let name = text_field("name")?;
        let cni_version = text_field("cniVersion")?;
        let plugins = match list.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins,
            _ => return Err(invalid("\"plugins\" is missing or empty".into())),
        };
        let mut types = Vec::with_capacity(plugins.len());
        for (i, plugin) in plugins.iter().enumerate() {
            let kind = match plugin.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => t.clone(),
                _ => return Err(invalid(format!("plugins[{i}] has no valid \"type\""))),
            };
            if !bin_dirs.iter().any(|dir| dir.join(&kind).is_file()) {
                return Err(NetworkConfigError::PluginMissing {
                    path: path.to_path_buf(),
                    plugin: kind,
                    dirs: bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            types.push(kind);
        }
        Ok(NetworkConfig {
            path: path.to_path_buf(),
            name,
            cni_version,
            plugins: types,
            list,
        })
    }
}

/// A plugin type is a file name: no path separators, no `..`.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        _tmp: tempfile::TempDir,
        conf: PathBuf,
        bin: PathBuf,
    }

    fn dirs(plugins: &[&str]) -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let conf = tmp.path().join("net.d");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&conf).expect("conf dir");
        std::fs::create_dir_all(&bin).expect("bin dir");
        for p in plugins {
            std::fs::write(bin.join(p), "#!/bin/sh\n").expect("plugin");
        }
        Dirs {
            _tmp: tmp,
            conf,
            bin,
        }
    }

    const LIST: &str =
        r#"{"cniVersion":"1.0.0","name":"berth","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;

    #[test]
    fn missing_dir_and_empty_dir_are_no_config() {
        let d = dirs(&[]);
        let missing = d.conf.join("nope");
        let e =
            NetworkConfig::load(&missing, std::slice::from_ref(&d.bin)).expect_err("missing dir");
        assert!(matches!(e, NetworkConfigError::NoConfig { .. }), "{e}");
        std::fs::write(d.conf.join("README"), "not a config").expect("write");
        let e = NetworkConfig::load(&d.conf, std::slice::from_ref(&d.bin)).expect_err("empty dir");
        assert!(
            e.to_string().starts_with("no network config found in"),
            "{e}"
        );
    }

    #[test]
    fn first_valid_file_in_name_order_wins() {
        let d = dirs(&["bridge", "portmap", "loopback"]);
        std::fs::write(d.conf.join("00-broken.conflist"), "{").expect("write");
        std::fs::write(d.conf.join("10-berth.conflist"), LIST).expect("write");
        std::fs::write(
            d.conf.join("20-lo.conf"),
            r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
        )
        .expect("write");
        let c = NetworkConfig::load(&d.conf, std::slice::from_ref(&d.bin)).expect("valid config");
        assert_eq!(c.name, "berth");
        assert_eq!(c.plugins, ["bridge", "portmap"]);
        assert!(c.path.ends_with("10-berth.conflist"));
    }

    #[test]
    fn single_plugin_conf_is_wrapped() {
        let d = dirs(&["loopback"]);
        std::fs::write(
            d.conf.join("99-lo.conf"),
            r#"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#,
        )
        .expect("write");
        let c = NetworkConfig::load(&d.conf, std::slice::from_ref(&d.bin)).expect("valid config");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.list["plugins"][0]["type"], "loopback");
    }

    #[test]
    fn missing_plugin_binary_is_named() {
        let d = dirs(&["bridge"]);
        std::fs::write(d.conf.join("10-berth.conflist"), LIST).expect("write");
        let e = NetworkConfig::load(&d.conf, std::slice::from_ref(&d.bin))
            .expect_err("portmap missing");
        let msg = e.to_string();
        assert!(
            msg.contains("\"portmap\"") && msg.contains(&d.bin.display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn invalid_files_name_the_problem() {
        let d = dirs(&["bridge"]);
        let cases = [
            (
                r#"{"name":"x","plugins":[{"type":"bridge"}]}"#,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
                "plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../sh"}]}"#,
                "plugins[0]",
            ),
        ];
        for (text, needle) in cases {
            let path = d.conf.join("a.conflist");
            std::fs::write(&path, text).expect("write");
            let e = NetworkConfig::from_file(&path, std::slice::from_ref(&d.bin)).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
