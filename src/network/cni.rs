//! The CNI client: runs a network's plugin chain for ADD (in order, each
//! plugin getting the previous one's result), DEL (in reverse, from the
//! cached ADD), CHECK, STATUS and GC when the network's version has them,
//! and brings up a sandbox's loopback interface.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cache::{CacheError, CachedAttachment, ResultCache};
use super::config::NetworkConfig;
use super::plugin::{AttachmentEnv, CniCommand, PluginError, PluginRunner, quote};
use super::result::{CniResult, ResultError};

/// How long one plugin call may take unless configured otherwise.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The interface name the loopback plugin is run for.
pub const LOOPBACK_IFNAME: &str = "lo";

/// The configuration berth runs the `loopback` plugin with, on its own,
/// before the pod's network (as containerd does): the node's network config
/// then only has to describe the pod's real interface.
pub const LOOPBACK_CONFIG: &str =
    r#"{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#;

/// One pod attachment to ask plugins for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkRequest {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// The sandbox's network namespace (`CNI_NETNS`); may be empty on DEL
    /// when the namespace is already gone.
    pub netns_path: PathBuf,
    /// The interface to create in the sandbox (`CNI_IFNAME`, `eth0`).
    pub ifname: String,
    /// Pod namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// Pod name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// Pod UID (`K8S_POD_UID`).
    pub pod_uid: String,
    /// Host ports, for plugins with the `portMappings` capability.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping, for plugins with the `bandwidth` capability.
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    /// DNS settings, for plugins with the `dns` capability.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
}

/// A host port forwarded to the pod; serialises as the `portMappings`
/// runtime config entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Host address to bind; all addresses when absent.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// Transport protocol of a [`PortMapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// Traffic shaping; serialises as the `bandwidth` runtime config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate, bits per second.
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    pub ingress_burst: u64,
    /// Egress rate, bits per second.
    pub egress_rate: u64,
    /// Egress burst, bits.
    pub egress_burst: u64,
}

/// DNS settings; serialises as the `dns` runtime config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default)]
    pub searches: Vec<String>,
    /// Resolver options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// An attachment that still exists, for GC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidAttachment {
    /// The sandbox id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The request cannot be passed to plugins.
    #[error("invalid pod network request: {field}: {reason}")]
    InvalidRequest {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The network configuration (current or cached) is unusable.
    #[error("network {network:?}: invalid config: {reason}")]
    InvalidConfig {
        /// The network's name.
        network: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin failed.
    #[error("network {network:?}: {source}")]
    Plugin {
        /// The network's name.
        network: String,
        /// What the plugin did.
        source: PluginError,
    },
    /// The chain's result cannot be read.
    #[error("network {network:?}: CNI plugin {plugin:?} ADD: {source}")]
    Result {
        /// The network's name.
        network: String,
        /// The plugin that printed it.
        plugin: String,
        /// What is wrong with it.
        source: ResultError,
    },
    /// CHECK was asked for an attachment berth has no record of.
    #[error("network {network:?}: no cached ADD for {container_id}/{ifname}")]
    NotAttached {
        /// The network's name.
        network: String,
        /// The sandbox id.
        container_id: String,
        /// The interface name.
        ifname: String,
    },
    /// The result cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Runs CNI plugins for pods and remembers what each ADD did.
#[derive(Debug, Clone)]
pub struct CniClient {
    runner: PluginRunner,
    bin_dirs: Vec<PathBuf>,
    cache: ResultCache,
}

/// A plugin chain ready to run: the list and its plugins' types.
struct Chain<'a> {
    name: String,
    version: String,
    list: &'a Value,
    plugins: Vec<(String, &'a Value)>,
}

impl CniClient {
    /// A client that finds plugins in `bin_dirs` (in order; joined they are
    /// `CNI_PATH`) and caches ADD results in `cache_dir`, with
    /// [`DEFAULT_PLUGIN_TIMEOUT`] per plugin call.
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> CniClient {
        CniClient {
            runner: PluginRunner::new(bin_dirs.clone(), DEFAULT_PLUGIN_TIMEOUT),
            bin_dirs,
            cache: ResultCache::new(cache_dir),
        }
    }

    /// The same client with another limit per plugin call; a plugin that
    /// exceeds it is killed.
    pub fn with_timeout(self, timeout: Duration) -> CniClient {
        CniClient {
            runner: PluginRunner::new(self.bin_dirs.clone(), timeout),
            ..self
        }
    }

    /// The result cache (to list attachments left by removed pods).
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// Attaches a pod to `network`: runs ADD through the chain, caches the
    /// config, arguments and result, and returns the result. When a plugin
    /// fails, the chain is DEL'd (best effort) so no half-made attachment
    /// is left, and the ADD error is returned.
    pub async fn add(
        &self,
        network: &NetworkConfig,
        req: &PodNetworkRequest,
    ) -> Result<CniResult, CniError> {
        validate(req, true)?;
        let chain = Chain::new(&network.list)?;
        let args = cni_args(req);
        let runtime = runtime_config(req);
        let outcome = self.add_chain(&chain, req, &args, &runtime).await;
        let saved = outcome.and_then(|(result, raw)| {
            let entry = CachedAttachment::new(
                &chain.name,
                network.list.clone(),
                req.clone(),
                args.clone(),
                raw,
            );
            self.cache.save(&entry)?;
            Ok(result)
        });
        if saved.is_err()
            && let Err(e) = self.del_chain(&chain, req, &args, &runtime, None).await
        {
            tracing::warn!(container_id = %req.container_id, error = %e, "CNI DEL after a failed ADD failed");
        }
        saved
    }

    async fn add_chain(
        &self,
        chain: &Chain<'_>,
        req: &PodNetworkRequest,
        args: &str,
        runtime: &Map<String, Value>,
    ) -> Result<(CniResult, Value), CniError> {
        let mut prev: Option<Value> = None;
        let mut last = String::new();
        for (kind, plugin) in &chain.plugins {
            let stdin = chain.stdin(plugin, prev.as_ref(), runtime, None);
            let out = self
                .runner
                .run(kind, CniCommand::Add, Some(env(req, args)), &stdin)
                .await
                .map_err(|source| chain.plugin_error(source))?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| {
                chain.plugin_error(PluginError::BadOutput {
                    plugin: kind.clone(),
                    command: CniCommand::Add,
                    reason: e.to_string(),
                    output: quote(&out),
                })
            })?;
            prev = Some(value);
            last.clone_from(kind);
        }
        let raw = prev.unwrap_or(Value::Null);
        let result = CniResult::from_value(&raw).map_err(|source| CniError::Result {
            network: chain.name.clone(),
            plugin: last,
            source,
        })?;
        Ok((result, raw))
    }

    /// Detaches a pod: runs DEL through the chain in reverse. When berth
    /// cached the attachment's ADD, DEL uses its config, arguments and
    /// result (even after a restart or a config change); otherwise it uses
    /// `network`, the current config (and does nothing when there is none).
    /// Every plugin gets its DEL even when another failed; the first
    /// failure is returned and the cache entry kept, so a retry uses it
    /// again. The cache entry is removed once DEL succeeds; DEL of a pod
    /// that is not attached succeeds.
    pub async fn del(
        &self,
        network: Option<&NetworkConfig>,
        req: &PodNetworkRequest,
    ) -> Result<(), CniError> {
        validate(req, false)?;
        let cached = match self.cached(network, req) {
            Ok(cached) => cached,
            Err(e) => {
                tracing::warn!(container_id = %req.container_id, error = %e, "CNI cache unreadable; DEL uses the current config");
                None
            }
        };
        match (&cached, network) {
            (Some(entry), _) => {
                let chain = Chain::new(&entry.config)?;
                // The pod's identity and ports from ADD; the netns as it is now.
                let mut request = entry.request.clone();
                request.netns_path.clone_from(&req.netns_path);
                let runtime = runtime_config(&request);
                self.del_chain(
                    &chain,
                    &request,
                    &entry.cni_args,
                    &runtime,
                    Some(&entry.result),
                )
                .await?;
                self.cache.remove(
                    &entry.network_name,
                    &entry.request.container_id,
                    &entry.request.ifname,
                )?;
                Ok(())
            }
            (None, Some(network)) => {
                let chain = Chain::new(&network.list)?;
                self.del_chain(&chain, req, &cni_args(req), &runtime_config(req), None)
                    .await?;
                // An unreadable entry would otherwise outlive the pod.
                self.cache
                    .remove(&network.name, &req.container_id, &req.ifname)?;
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    async fn del_chain(
        &self,
        chain: &Chain<'_>,
        req: &PodNetworkRequest,
        args: &str,
        runtime: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        // Before 0.4.0, DEL got no previous result.
        let prev = prev.filter(|_| version_at_least(&chain.version, (0, 4, 0)));
        // Every plugin gets its DEL even when a later one's failed, so as
        // little as possible is left; the first failure is reported.
        let mut first_error = None;
        for (kind, plugin) in chain.plugins.iter().rev() {
            let stdin = chain.stdin(plugin, prev, runtime, None);
            if let Err(source) = self
                .runner
                .run(kind, CniCommand::Del, Some(env(req, args)), &stdin)
                .await
            {
                tracing::debug!(container_id = %req.container_id, error = %source, "CNI DEL failed");
                first_error.get_or_insert(chain.plugin_error(source));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn cached(
        &self,
        network: Option<&NetworkConfig>,
        req: &PodNetworkRequest,
    ) -> Result<Option<CachedAttachment>, CacheError> {
        if let Some(network) = network
            && let Some(entry) = self
                .cache
                .load(&network.name, &req.container_id, &req.ifname)?
        {
            return Ok(Some(entry));
        }
        self.cache.find(&req.container_id, &req.ifname)
    }

    /// Checks that an attachment is still as its ADD left it, with the
    /// cached config and result. Does nothing for networks older than
    /// 0.4.0 or with `disableCheck`.
    pub async fn check(
        &self,
        network: &NetworkConfig,
        req: &PodNetworkRequest,
    ) -> Result<(), CniError> {
        validate(req, true)?;
        let entry = self
            .cached(Some(network), req)?
            .ok_or_else(|| CniError::NotAttached {
                network: network.name.clone(),
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            })?;
        let chain = Chain::new(&entry.config)?;
        if !version_at_least(&chain.version, (0, 4, 0)) || flag(chain.list, "disableCheck") {
            return Ok(());
        }
        let mut request = entry.request.clone();
        request.netns_path.clone_from(&req.netns_path);
        let runtime = runtime_config(&request);
        for (kind, plugin) in &chain.plugins {
            let stdin = chain.stdin(plugin, Some(&entry.result), &runtime, None);
            self.runner
                .run(
                    kind,
                    CniCommand::Check,
                    Some(env(&request, &entry.cni_args)),
                    &stdin,
                )
                .await
                .map_err(|source| chain.plugin_error(source))?;
        }
        Ok(())
    }

    /// Asks each plugin whether the network is ready for ADD (CNI 1.1.0
    /// STATUS). Networks of older versions are ready when their config is
    /// valid.
    pub async fn status(&self, network: &NetworkConfig) -> Result<(), CniError> {
        let chain = Chain::new(&network.list)?;
        if !version_at_least(&chain.version, (1, 1, 0)) {
            return Ok(());
        }
        for (kind, plugin) in &chain.plugins {
            let stdin = chain.stdin(plugin, None, &Map::new(), None);
            self.runner
                .run(kind, CniCommand::Status, None, &stdin)
                .await
                .map_err(|source| chain.plugin_error(source))?;
        }
        Ok(())
    }

    /// Lets each plugin release what belongs to attachments not in `valid`
    /// (CNI 1.1.0 GC). Does nothing for older networks or with
    /// `disableGC`; there, detach stale attachments with [`CniClient::del`]
    /// (the cache lists them).
    pub async fn gc(
        &self,
        network: &NetworkConfig,
        valid: &[ValidAttachment],
    ) -> Result<(), CniError> {
        let chain = Chain::new(&network.list)?;
        if !version_at_least(&chain.version, (1, 1, 0)) || flag(chain.list, "disableGC") {
            return Ok(());
        }
        let valid = serde_json::to_value(valid).map_err(|e| chain.invalid(e.to_string()))?;
        for (kind, plugin) in &chain.plugins {
            let stdin = chain.stdin(
                plugin,
                None,
                &Map::new(),
                Some(("cni.dev/valid-attachments", valid.clone())),
            );
            self.runner
                .run(kind, CniCommand::Gc, None, &stdin)
                .await
                .map_err(|source| chain.plugin_error(source))?;
        }
        Ok(())
    }

    /// Brings up `lo` in a sandbox's netns with the `loopback` plugin
    /// ([`LOOPBACK_CONFIG`]). Nothing is cached: `lo` goes with the netns.
    pub async fn loopback_up(&self, container_id: &str, netns_path: &Path) -> Result<(), CniError> {
        let req = PodNetworkRequest {
            container_id: container_id.to_string(),
            netns_path: netns_path.to_path_buf(),
            ifname: LOOPBACK_IFNAME.to_string(),
            pod_namespace: String::new(),
            pod_name: String::new(),
            pod_uid: String::new(),
            port_mappings: Vec::new(),
            bandwidth: None,
            dns: None,
        };
        validate(&req, true)?;
        let list: Value =
            serde_json::from_str(LOOPBACK_CONFIG).map_err(|e| CniError::InvalidConfig {
                network: "cni-loopback".into(),
                reason: e.to_string(),
            })?;
        let chain = Chain::new(&list)?;
        self.add_chain(&chain, &req, "IgnoreUnknown=1", &Map::new())
            .await
            .map(|_| ())
    }
}

impl<'a> Chain<'a> {
    fn new(list: &'a Value) -> Result<Chain<'a>, CniError> {
        let text = |key: &str| list.get(key).and_then(Value::as_str).unwrap_or_default();
        let name = text("name").to_string();
        let invalid = |reason: String| CniError::InvalidConfig {
            network: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("missing \"name\"".into()));
        }
        let version = text("cniVersion").to_string();
        if version.is_empty() {
            return Err(invalid("missing \"cniVersion\"".into()));
        }
        let plugins = match list.get("plugins").and_then(Value::as_array) {
            Some(p) if !p.is_empty() => p,
            _ => return Err(invalid("\"plugins\" is missing or empty".into())),
        };
        let mut chain = Vec::with_capacity(plugins.len());
        for (i, plugin) in plugins.iter().enumerate() {
            match plugin.get("type").and_then(Value::as_str) {
                Some(kind) if plugin.is_object() && !kind.is_empty() => {
                    chain.push((kind.to_string(), plugin));
                }
                _ => return Err(invalid(format!("plugins[{i}] has no \"type\""))),
            }
        }
        Ok(Chain {
            name,
            version,
            list,
            plugins: chain,
        })
    }

    fn invalid(&self, reason: String) -> CniError {
        CniError::InvalidConfig {
            network: self.name.clone(),
            reason,
        }
    }

    fn plugin_error(&self, source: PluginError) -> CniError {
        CniError::Plugin {
            network: self.name.clone(),
            source,
        }
    }

    /// A plugin's stdin: its config with the list's `name` and
    /// `cniVersion`, the previous result, and the runtime config for the
    /// capabilities it declares.
    fn stdin(
        &self,
        plugin: &Value,
        prev: Option<&Value>,
        runtime: &Map<String, Value>,
        extra: Option<(&str, Value)>,
    ) -> Vec<u8> {
        let mut config = plugin.as_object().cloned().unwrap_or_default();
        config.insert("name".into(), Value::String(self.name.clone()));
        config.insert("cniVersion".into(), Value::String(self.version.clone()));
        if let Some(prev) = prev {
            config.insert("prevResult".into(), prev.clone());
        }
        let declared: Map<String, Value> = runtime
            .iter()
            .filter(|(cap, _)| {
                plugin
                    .get("capabilities")
                    .and_then(|c| c.get(cap.as_str()))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !declared.is_empty() {
            config.insert("runtimeConfig".into(), Value::Object(declared));
        }
        if let Some((key, value)) = extra {
            config.insert(key.into(), value);
        }
        Value::Object(config).to_string().into_bytes()
    }
}

/// The environment of a call about one attachment.
fn env<'a>(req: &'a PodNetworkRequest, args: &'a str) -> AttachmentEnv<'a> {
    AttachmentEnv {
        container_id: &req.container_id,
        netns: req.netns_path.to_str().unwrap_or_default(),
        ifname: &req.ifname,
        args,
    }
}

/// `CNI_ARGS` for a pod, as the kubelet's runtimes pass them.
pub fn cni_args(req: &PodNetworkRequest) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        req.pod_namespace, req.pod_name, req.container_id, req.pod_uid
    )
}

/// The runtime config values berth can give; each plugin gets those its
/// `capabilities` declare.
fn runtime_config(req: &PodNetworkRequest) -> Map<String, Value> {
    let mut map = Map::new();
    let mut put = |key: &str, value: Result<Value, serde_json::Error>| {
        if let Ok(value) = value {
            map.insert(key.into(), value);
        }
    };
    put("portMappings", serde_json::to_value(&req.port_mappings));
    if let Some(bandwidth) = &req.bandwidth {
        put("bandwidth", serde_json::to_value(bandwidth));
    }
    if let Some(dns) = &req.dns {
        put("dns", serde_json::to_value(dns));
    }
    map
}

/// Checks what plugins and the cache rely on: the spec's container id and
/// interface name rules, and `CNI_ARGS` values without separators. A DEL
/// may have no netns any more.
fn validate(req: &PodNetworkRequest, needs_netns: bool) -> Result<(), CniError> {
    let bad = |field, reason: &str| {
        Err(CniError::InvalidRequest {
            field,
            reason: reason.to_string(),
        })
    };
    let id = &req.container_id;
    if id.is_empty()
        || !id.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad(
            "container_id",
            "must be letters, digits, '_', '.' or '-', starting with a letter or digit",
        );
    }
    let ifname = &req.ifname;
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(
            "ifname",
            "must be 1 to 15 characters without '/', ':' or spaces",
        );
    }
    if req.netns_path.to_str().is_none() {
        return bad("netns_path", "must be UTF-8");
    }
    if needs_netns && req.netns_path.as_os_str().is_empty() {
        return bad("netns_path", "is empty");
    }
    for (field, value) in [
        ("pod_namespace", &req.pod_namespace),
        ("pod_name", &req.pod_name),
        ("pod_uid", &req.pod_uid),
    ] {
        if value.contains([';', '=']) {
            return bad(field, "must not contain ';' or '='");
        }
    }
    Ok(())
}

/// Whether `version` (`major.minor.patch`) is at least `min`.
fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next().unwrap_or(Ok(0))) {
        (Some(Ok(major)), Some(Ok(minor)), Ok(patch)) => (major, minor, patch) >= min,
        _ => false,
    }
}

/// A boolean list-level setting (`disableCheck`, `disableGC`).
fn flag(list: &Value, key: &str) -> bool {
    list.get(key).and_then(Value::as_bool).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PodNetworkRequest {
        PodNetworkRequest {
            container_id: "abc123".into(),
            netns_path: "/run/netns/p".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: Some("127.0.0.1".parse().expect("ip")),
            }],
            bandwidth: None,
            dns: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                ..DnsConfig::default()
            }),
        }
    }

    #[test]
    fn cni_args_carry_the_pod_identity() {
        assert_eq!(
            cni_args(&request()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities() {
        let list = serde_json::json!({
            "cniVersion": "1.0.0", "name": "berth",
            "plugins": [
                {"type": "bridge", "bridge": "berth0"},
                {"type": "portmap", "capabilities": {"portMappings": true, "dns": false}}
            ]
        });
        let chain = Chain::new(&list).expect("chain");
        let runtime = runtime_config(&request());
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": []});

        let bridge: Value =
            serde_json::from_slice(&chain.stdin(chain.plugins[0].1, None, &runtime, None))
                .expect("json");
        assert_eq!(
            bridge,
            serde_json::json!({"type": "bridge", "bridge": "berth0", "name": "berth", "cniVersion": "1.0.0"})
        );

        let portmap: Value =
            serde_json::from_slice(&chain.stdin(chain.plugins[1].1, Some(&prev), &runtime, None))
                .expect("json");
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            serde_json::json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}
            ]}),
            "dns is not declared true, so only portMappings"
        );
    }

    #[test]
    fn bandwidth_and_dns_capabilities() {
        let mut req = request();
        req.bandwidth = Some(Bandwidth {
            ingress_rate: 1000,
            ingress_burst: 10,
            egress_rate: 2000,
            egress_burst: 20,
        });
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "bandwidth", "capabilities": {"bandwidth": true, "dns": true}}]});
        let chain = Chain::new(&list).expect("chain");
        let v: Value = serde_json::from_slice(&chain.stdin(
            chain.plugins[0].1,
            None,
            &runtime_config(&req),
            None,
        ))
        .expect("json");
        assert_eq!(v["runtimeConfig"]["bandwidth"]["egressBurst"], 20);
        assert_eq!(v["runtimeConfig"]["dns"]["servers"][0], "10.96.0.10");
        assert!(v["runtimeConfig"].get("portMappings").is_none());
    }

    #[test]
    fn chain_rejects_bad_lists() {
        for (list, needle) in [
            (
                serde_json::json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
                "\"name\"",
            ),
            (
                serde_json::json!({"name": "n", "plugins": [{"type": "x"}]}),
                "\"cniVersion\"",
            ),
            (
                serde_json::json!({"name": "n", "cniVersion": "1.0.0", "plugins": []}),
                "\"plugins\"",
            ),
            (
                serde_json::json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{}]}),
                "plugins[0]",
            ),
        ] {
            let e = Chain::new(&list).err().expect("invalid");
            assert!(e.to_string().contains(needle), "{list}: {e}");
        }
    }

    #[test]
    fn requests_are_validated() {
        let mut req = request();
        req.container_id = "../etc".into();
        assert!(validate(&req, true).is_err());
        let mut req = request();
        req.ifname = "averyverylongifname".into();
        assert!(validate(&req, true).is_err());
        let mut req = request();
        req.pod_name = "a;b=c".into();
        let e = validate(&req, true).expect_err("separator");
        assert!(e.to_string().contains("pod_name"), "{e}");
        let mut req = request();
        req.netns_path = PathBuf::new();
        assert!(validate(&req, true).is_err());
        assert!(validate(&req, false).is_ok(), "DEL may have no netns");
    }

    /// A fake plugin that logs its command, keeps its stdin, and prints a
    /// result naming itself on ADD (or `garbage` when asked to).
    fn fake_plugin(dir: &Path, name: &str, add_output: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        let d = dir.display();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$CNI_COMMAND {name}\" >> {d}/log\ncat > {d}/stdin-{name}-$CNI_COMMAND\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then printf '%s' '{add_output}'; fi\n"
            ),
        )
        .expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn result_of(name: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"/n"}}],"ips":[{{"address":"10.9.0.2/24","interface":0}}],"dns":{{"domain":"{name}"}}}}"#
        )
    }

    fn network(dir: &Path, plugins: &[&str]) -> NetworkConfig {
        let plugins: Vec<Value> = plugins
            .iter()
            .map(|p| serde_json::json!({"type": p, "capabilities": {"portMappings": true}}))
            .collect();
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": "fake", "plugins": plugins});
        NetworkConfig {
            path: dir.join("fake.conflist"),
            name: "fake".into(),
            cni_version: "1.0.0".into(),
            plugins: Vec::new(),
            list,
        }
    }

    fn stdin_of(dir: &Path, name: &str, command: &str) -> Value {
        let bytes = std::fs::read(dir.join(format!("stdin-{name}-{command}"))).expect("stdin kept");
        serde_json::from_slice(&bytes).expect("stdin is JSON")
    }

    fn log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    }

    #[tokio::test]
    async fn add_chains_results_and_del_reverses_from_the_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first"));
        fake_plugin(bin, "second", &result_of("second"));
        let net = network(bin, &["first", "second"]);
        let cache_dir = bin.join("cache");
        let client = CniClient::new(vec![bin.to_path_buf()], &cache_dir);
        let req = request();

        let result = client.add(&net, &req).await.expect("ADD");
        assert_eq!(
            result.dns.domain.as_deref(),
            Some("second"),
            "the last plugin's result"
        );
        assert_eq!(
            result.pod_ips("eth0"),
            ["10.9.0.2".parse::<IpAddr>().expect("ip")]
        );
        assert!(stdin_of(bin, "first", "ADD").get("prevResult").is_none());
        assert_eq!(
            stdin_of(bin, "second", "ADD")["prevResult"]["dns"]["domain"],
            "first"
        );
        assert_eq!(
            stdin_of(bin, "second", "ADD")["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(cache_dir.join("fake-abc123-eth0").is_file());

        // A new client (a restarted berthd) with no config at all.
        let restarted = CniClient::new(vec![bin.to_path_buf()], &cache_dir);
        restarted.del(None, &req).await.expect("DEL from the cache");
        assert_eq!(log(bin), "ADD first\nADD second\nDEL second\nDEL first\n");
        assert_eq!(
            stdin_of(bin, "first", "DEL")["prevResult"]["dns"]["domain"],
            "second"
        );
        assert!(
            !cache_dir.join("fake-abc123-eth0").exists(),
            "cache removed"
        );

        restarted.del(Some(&net), &req).await.expect("second DEL");
        assert!(
            stdin_of(bin, "first", "DEL").get("prevResult").is_none(),
            "no cache: no prevResult"
        );
        restarted
            .del(None, &req)
            .await
            .expect("DEL with nothing known is a no-op");
    }

    #[tokio::test]
    async fn a_failed_del_keeps_the_cache_for_a_retry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first"));
        fake_plugin(bin, "second", &result_of("second"));
        let net = network(bin, &["first", "second"]);
        let client = CniClient::new(vec![bin.to_path_buf()], bin.join("cache"));
        client.add(&net, &request()).await.expect("ADD");
        std::fs::remove_file(bin.join("second")).expect("remove plugin");
        let e = client
            .del(Some(&net), &request())
            .await
            .expect_err("DEL fails");
        assert!(e.to_string().contains("\"second\" not found"), "{e}");
        assert!(
            log(bin).ends_with("DEL first\n"),
            "the other plugins still get DEL"
        );
        assert_eq!(
            client.cache().list().expect("list").len(),
            1,
            "kept for a retry"
        );
        fake_plugin(bin, "second", &result_of("second"));
        client
            .del(Some(&net), &request())
            .await
            .expect("retried DEL");
        assert!(client.cache().list().expect("list").is_empty());
    }

    #[tokio::test]
    async fn del_before_0_4_0_has_no_prev_result_and_corrupt_cache_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first").replace("1.0.0", "0.3.1"));
        let mut net = network(bin, &["first"]);
        net.list["cniVersion"] = "0.3.1".into();
        let client = CniClient::new(vec![bin.to_path_buf()], bin.join("cache"));
        client.add(&net, &request()).await.expect("ADD");
        client.del(Some(&net), &request()).await.expect("DEL");
        assert!(stdin_of(bin, "first", "DEL").get("prevResult").is_none());

        std::fs::write(bin.join("cache/fake-abc123-eth0"), "{").expect("corrupt entry");
        client
            .del(Some(&net), &request())
            .await
            .expect("DEL with the current config");
        assert!(!bin.join("cache/fake-abc123-eth0").exists());
    }

    #[tokio::test]
    async fn failed_add_is_rolled_back_and_garbage_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first"));
        fake_plugin(bin, "liar", "this is not json");
        let client = CniClient::new(vec![bin.to_path_buf()], bin.join("cache"));
        let e = client
            .add(&network(bin, &["first", "liar"]), &request())
            .await
            .expect_err("garbage output");
        let msg = e.to_string();
        assert!(
            msg.starts_with("network \"fake\": CNI plugin \"liar\" ADD wrote invalid output")
                && msg.contains("this is not json"),
            "{msg}"
        );
        assert_eq!(
            log(bin),
            "ADD first\nADD liar\nDEL liar\nDEL first\n",
            "rolled back"
        );
        assert!(
            client.cache().list().expect("list").is_empty(),
            "nothing cached"
        );
    }

    #[tokio::test]
    async fn check_needs_the_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first"));
        let net = network(bin, &["first"]);
        let client = CniClient::new(vec![bin.to_path_buf()], bin.join("cache"));
        let e = client
            .check(&net, &request())
            .await
            .expect_err("not attached");
        assert!(matches!(e, CniError::NotAttached { .. }), "{e}");
        client.add(&net, &request()).await.expect("ADD");
        client.check(&net, &request()).await.expect("CHECK");
        assert_eq!(
            stdin_of(bin, "first", "CHECK")["prevResult"]["dns"]["domain"],
            "first"
        );
        // STATUS and GC are 1.1.0 commands: a 1.0.0 network skips them.
        client.status(&net).await.expect("STATUS");
        client.gc(&net, &[]).await.expect("GC");
        assert_eq!(log(bin), "ADD first\nCHECK first\n");
    }

    #[tokio::test]
    async fn status_and_gc_run_for_1_1_0() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bin = tmp.path();
        fake_plugin(bin, "first", &result_of("first"));
        let mut net = network(bin, &["first"]);
        net.list["cniVersion"] = "1.1.0".into();
        let client = CniClient::new(vec![bin.to_path_buf()], bin.join("cache"));
        client.status(&net).await.expect("STATUS");
        let valid = [ValidAttachment {
            container_id: "abc123".into(),
            ifname: "eth0".into(),
        }];
        client.gc(&net, &valid).await.expect("GC");
        assert_eq!(log(bin), "STATUS first\nGC first\n");
        assert_eq!(
            stdin_of(bin, "first", "GC")["cni.dev/valid-attachments"],
            serde_json::json!([{"containerID": "abc123", "ifname": "eth0"}])
        );
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
        assert!(version_at_least("1.1", (1, 1, 0)));
        assert!(!version_at_least("x", (0, 1, 0)));
    }
}
