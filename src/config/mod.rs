//! berthd's configuration: built-in defaults for everything, overridden by a
//! TOML file (`/etc/berth/config.toml` or `--config PATH`).
//!
//! Unknown keys and bad values are errors that name the key; nothing falls
//! back silently. `berthd config default` prints [`Config::default_toml`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where berthd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The largest gRPC message berthd accepts or sends by default: 16 MiB, as
/// the kubelet's CRI client.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

const MIRRORS_EXAMPLE: &str = "\
[registry.mirrors]
# Pull registry.k8s.io images from a local mirror first:
# [registry.mirrors.\"registry.k8s.io\"]
# endpoints = [\"http://localhost:5000\"]
";

const METRICS_EXAMPLE: &str = "\
[metrics]
# Prometheus endpoint (GET /metrics), off while empty; e.g. \"127.0.0.1:9387\".
";

const HOSTS_EXAMPLE: &str = "\
[registry.hosts]
# Per-registry settings:
# [registry.hosts.\"registry.example.com\"]
# plain_http = false
# skip_verify = false
# ca_file = \"/etc/berth/certs/registry.example.com.pem\"
# username = \"robot\"
# password = \"secret\"
";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the
    /// wrong type; the parser's message names the key and line.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line, column and key.
        source: Box<toml::de::Error>,
    },
    /// A key has a value of the right type that berthd cannot use.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `registry.mirrors."docker.io".endpoints`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration of berthd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: the metadata store, content store and snapshots.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: shim sockets,
    /// namespace pins, bundles.
    pub state: PathBuf,
    /// Log filter: a level (`info`, `debug`, ...) or `tracing` directives
    /// such as `berthd=debug,h2=warn`. `RUST_LOG` overrides it.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// How cgroups are created: directly in the cgroup filesystem, or as
    /// systemd units (must match the kubelet's `cgroupDriver`).
    pub cgroup_driver: CgroupDriver,
    /// The runtime handler used when a pod names none.
    pub default_runtime: String,
    /// The CRI gRPC endpoint.
    pub grpc: GrpcConfig,
    /// The exec/attach/port-forward streaming server.
    pub streaming: StreamingConfig,
    /// The Prometheus metrics endpoint (off by default).
    pub metrics: MetricsConfig,
    /// Pod networking through CNI plugins.
    pub cni: CniConfig,
    /// Image registries: mirrors and per-registry settings.
    pub registry: RegistryConfig,
    /// Runtime handlers (a pod's RuntimeClass handler) by name. A file that
    /// has a `[runtimes]` table replaces the built-in set.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text, one line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The cgroup manager berthd and the OCI runtime use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// cgroups are directories in the cgroup filesystem.
    Cgroupfs,
    /// cgroups are systemd slices and scopes.
    Systemd,
}

/// The CRI gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Path of the unix socket (mode 0660).
    pub address: PathBuf,
    /// Group that owns the socket, so its members may use it; unset keeps
    /// root's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Largest request accepted, in bytes.
    pub max_recv_message_size: usize,
    /// Largest response sent, in bytes.
    pub max_send_message_size: usize,
}

/// The streaming server that serves exec, attach and port-forward URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Listen address; port 0 picks a free port at start.
    pub address: String,
    /// How long a URL handed out by Exec, Attach or PortForward stays usable.
    #[serde(with = "humantime_serde")]
    pub url_lifetime: Duration,
    /// A streaming connection with no traffic for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// The Prometheus metrics endpoint: `GET /metrics` in the text
/// exposition format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address (IP:PORT, e.g. `127.0.0.1:9387`); empty turns the
    /// endpoint off.
    pub address: String,
}

/// Pod networking through CNI plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of network configurations (`*.conflist`, `*.conf`,
    /// `*.json`); the first valid one in name order is used.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
}

/// Image registries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Layers of one image downloaded at once.
    pub max_concurrent_downloads: usize,
    /// A pull that receives no byte for this long fails.
    #[serde(with = "humantime_serde")]
    pub progress_timeout: Duration,
    /// Mirrors by registry host (`docker.io`, `registry.k8s.io`, ...).
    pub mirrors: BTreeMap<String, RegistryMirror>,
    /// Settings by registry host (`host` or `host:port`).
    pub hosts: BTreeMap<String, RegistryHost>,
}

/// Mirrors of one registry, tried in order before the registry itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryMirror {
    /// Base URLs (`https://mirror.example.com`, `http://localhost:5000`);
    /// the repository path is kept.
    pub endpoints: Vec<String>,
}

/// Settings of one registry host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHost {
    /// Speak plain HTTP. Unset: plain HTTP for `localhost` and
    /// `127.0.0.0/8`, TLS for every other host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    /// Accept any TLS certificate (never on a production node).
    pub skip_verify: bool,
    /// Extra CA certificate (PEM) to trust for this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Basic-auth user, used when a pull carries no credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A runtime handler: which shim runs a pod's objects and which OCI runtime
/// the shim drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The shim binary (a name is looked up next to berthd, then in `PATH`).
    pub shim: PathBuf,
    /// The runc-compatible OCI runtime binary.
    pub runtime: PathBuf,
    /// State directory passed to the runtime's `--root`; default
    /// `<state>/runtime/<handler>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_root: Option<PathBuf>,
    /// Extra global arguments given to every runtime invocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_args: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let handler = |runtime: &str| RuntimeHandler {
            shim: "berth-shim".into(),
            runtime: runtime.into(),
            runtime_root: None,
            runtime_args: Vec::new(),
        };
        Config {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_runtime: "runc".into(),
            grpc: GrpcConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            runtimes: [("runc", handler("runc")), ("crun", handler("crun"))]
                .into_iter()
                .map(|(name, h)| (name.to_string(), h))
                .collect(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/berth/berth.sock".into(),
            gid: None,
            max_recv_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            url_lifetime: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(4 * 60 * 60),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_concurrent_downloads: 3,
            progress_timeout: Duration::from_secs(5 * 60),
            mirrors: BTreeMap::new(),
            hosts: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Loads the configuration: `path` when given (it must exist), else
    /// [`DEFAULT_CONFIG_PATH`] when it exists, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                let config = Config::default();
                config.validate()?;
                Ok(config)
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses and validates a configuration file's text; `path` is only
    /// used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The complete default configuration file, commented.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Config::default())
            .expect("the default configuration is always serialisable");
        // The empty registry tables get commented examples.
        let body = body
            .replacen("[registry.mirrors]\n", MIRRORS_EXAMPLE, 1)
            .replacen("[registry.hosts]\n", HOSTS_EXAMPLE, 1)
            .replacen("[metrics]\n", METRICS_EXAMPLE, 1);
        format!(
            "# berthd configuration (berthd config default).\n\
             # Every key is optional: a key left out keeps the value shown here.\n\
             # Reference: the Configuration section of berth's README.\n\n{body}"
        )
    }

    /// Checks what the types alone cannot: paths are absolute, names and
    /// addresses are well formed, the default runtime exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        absolute("root", &self.root)?;
        absolute("state", &self.state)?;
        absolute("grpc.address", &self.grpc.address)?;
        absolute("cni.conf_dir", &self.cni.conf_dir)?;
        if self.cni.bin_dirs.is_empty() {
            return Err(invalid("cni.bin_dirs", "needs at least one directory"));
        }
        for dir in &self.cni.bin_dirs {
            absolute("cni.bin_dirs", dir)?;
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.log_level)
            .map_err(|e| invalid("log_level", format!("{:?}: {e}", self.log_level)))?;
        for (key, size) in [
            (
                "grpc.max_recv_message_size",
                self.grpc.max_recv_message_size,
            ),
            (
                "grpc.max_send_message_size",
                self.grpc.max_send_message_size,
            ),
        ] {
            if size < 4096 {
                return Err(invalid(
                    key,
                    format!("{size} bytes is too small (min 4096)"),
                ));
            }
        }
        self.streaming.address.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "streaming.address",
                format!("{:?} is not IP:PORT: {e}", self.streaming.address),
            )
        })?;
        metrics_address(&self.metrics.address)?;
        if self.streaming.url_lifetime.is_zero() {
            return Err(invalid("streaming.url_lifetime", "must be longer than 0s"));
        }
        if self.registry.max_concurrent_downloads == 0 {
            return Err(invalid(
                "registry.max_concurrent_downloads",
                "must be at least 1",
            ));
        }
        if self.registry.progress_timeout.is_zero() {
            return Err(invalid(
                "registry.progress_timeout",
                "must be longer than 0s",
            ));
        }
        for (host, mirror) in &self.registry.mirrors {
            let key = format!("registry.mirrors.{host:?}.endpoints");
            registry_host(&format!("registry.mirrors.{host:?}"), host)?;
            if mirror.endpoints.is_empty() {
                return Err(invalid(key, "needs at least one endpoint"));
            }
            for endpoint in &mirror.endpoints {
                endpoint_url(&key, endpoint)?;
            }
        }
        for (host, settings) in &self.registry.hosts {
            let key = format!("registry.hosts.{host:?}");
            registry_host(&key, host)?;
            if settings.password.is_some() && settings.username.is_none() {
                return Err(invalid(format!("{key}.password"), "set without username"));
            }
            if let Some(ca) = &settings.ca_file {
                absolute(&format!("{key}.ca_file"), ca)?;
            }
        }
        if self.runtimes.is_empty() {
            return Err(invalid("runtimes", "needs at least one runtime handler"));
        }
        for (name, handler) in &self.runtimes {
            let key = format!("runtimes.{name:?}");
            handler_name(&key, name)?;
            if handler.shim.as_os_str().is_empty() {
                return Err(invalid(format!("{key}.shim"), "is empty"));
            }
            if handler.runtime.as_os_str().is_empty() {
                return Err(invalid(format!("{key}.runtime"), "is empty"));
            }
            if let Some(root) = &handler.runtime_root {
                absolute(&format!("{key}.runtime_root"), root)?;
            }
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            let known: Vec<_> = self.runtimes.keys().map(String::as_str).collect();
            return Err(invalid(
                "default_runtime",
                format!(
                    "{:?} is not a configured runtime handler (have: {})",
                    self.default_runtime,
                    known.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Path of the metadata store.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("berth.redb")
    }

    /// The runtime handler a pod gets for `name` (empty = the default).
    pub fn runtime_handler(&self, name: &str) -> Option<(&str, &RuntimeHandler)> {
        let name = if name.is_empty() {
            self.default_runtime.as_str()
        } else {
            name
        };
        self.runtimes
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The configuration with secrets replaced, fit for logs and for
    /// `crictl info`.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        for host in config.registry.hosts.values_mut() {
            if host.password.is_some() {
                host.password = Some("<redacted>".into());
            }
        }
        config
    }
}

fn absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{} is not an absolute path", path.display()),
        ))
    }
}

/// `metrics.address`: empty (off) or IP:PORT with a port a scraper can
/// be told (not 0).
fn metrics_address(address: &str) -> Result<(), ConfigError> {
    const KEY: &str = "metrics.address";
    if address.is_empty() {
        return Ok(());
    }
    let parsed: SocketAddr = address.parse().map_err(|e| {
        invalid(
            KEY,
            format!("{address:?} is not IP:PORT (e.g. \"127.0.0.1:9387\"): {e}"),
        )
    })?;
    if parsed.port() == 0 {
        return Err(invalid(
            KEY,
            format!("{address:?}: port 0 would pick a port no scraper knows"),
        ));
    }
    Ok(())
}

/// A registry key is `host` or `host:port`, as image references name it.
fn registry_host(key: &str, host: &str) -> Result<(), ConfigError> {
    let ok = !host.is_empty()
        && !host.contains('/')
        && !host.contains("://")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{host:?} is not a registry host (host or host:port)"),
        ))
    }
}

fn endpoint_url(key: &str, endpoint: &str) -> Result<(), ConfigError> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(invalid(
            key,
            format!("{endpoint:?} is not an http:// or https:// URL with a host"),
        )),
    }
}

/// Runtime handler names are RuntimeClass handlers: DNS labels.
fn handler_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a valid handler name (lowercase letters, digits, '-')"),
        ))
    }
}

#[cfg(test)]
mod tests;
