//! Registry access: image references normalised as the kubelet and Docker
//! do, mirrors and per-registry settings from the config, authentication,
//! and verified manifest and blob downloads through `oci-client`.
//!
//! [`Registries`] is built once from [`RegistryConfig`]. A pull is two
//! steps:
//!
//! 1. [`Registries::resolve`] turns a [`Reference`] into a
//!    [`ResolvedImage`]: it tries each [endpoint](Registries::endpoints) in
//!    order (the registry's mirrors, then the registry), fetches the
//!    manifest, resolves a manifest list to this node's [`Platform`],
//!    verifies every manifest against its digest, and keeps the
//!    authenticated session of the endpoint that answered.
//! 2. [`Registries::fetch_blob`] streams the config or a layer from that
//!    endpoint into any `AsyncWrite` while hashing it, and fails unless
//!    size and digest match. Several fetches of one image may run at once;
//!    at most `max_concurrent_downloads` of them transfer at a time.
//!
//! This module knows nothing of CRI: credentials come as [`Credentials`],
//! and every failure is one [`RegistryError`] variant.

mod auth;
mod blob;
mod error;
mod manifest;
mod platform;
mod reference;
mod resolve;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

pub use self::auth::Credentials;
pub use self::error::RegistryError;
pub use self::manifest::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, LAYER_MEDIA_TYPES,
    MAX_MANIFEST_SIZE, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, RawManifest,
};
pub use self::platform::Platform;
pub use self::reference::{
    DEFAULT_REGISTRY, DEFAULT_TAG, DOCKER_HUB_API_HOST, Reference, ReferenceError,
};
pub use self::resolve::ResolvedImage;
use crate::config::RegistryConfig;
pub use crate::content::Digest;

/// `User-Agent` of every registry request.
const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

/// Longest wait for a TCP (and TLS) connection, unless `progress_timeout`
/// is shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The registries berth pulls from, as configured: mirrors, per-host TLS
/// and credentials, timeouts. Cheap to share behind an `Arc`; each pull
/// gets a client session of its own.
#[derive(Debug)]
pub struct Registries {
    mirrors: BTreeMap<String, Vec<Mirror>>,
    hosts: BTreeMap<String, HostSettings>,
    progress_timeout: Duration,
    max_concurrent_downloads: usize,
    platform: Platform,
    proxies: Proxies,
}

/// One place an image can be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, `scheme://host[:port]`: `https://registry-1.docker.io`.
    pub url: String,
    /// `host[:port]` requests go to.
    pub host: String,
    /// Whether it speaks plain HTTP rather than TLS.
    pub plain_http: bool,
    /// The repository path at this endpoint (a mirror's `/v2/<prefix>`
    /// path comes first).
    pub repository: String,
    /// A configured mirror, rather than the registry itself.
    pub mirror: bool,
    /// The image's registry, as references name it (`docker.io`).
    registry: String,
    /// The `registry.hosts` key whose settings apply.
    settings_key: String,
}

/// A mirror endpoint from the config.
#[derive(Debug, Clone)]
struct Mirror {
    plain_http: bool,
    host: String,
    prefix: Option<String>,
}

/// `registry.hosts.<host>`, with the CA file read.
#[derive(Clone)]
struct HostSettings {
    plain_http: Option<bool>,
    skip_verify: bool,
    /// One PEM block per certificate of `ca_file`.
    ca_pems: Vec<Vec<u8>>,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for HostSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSettings")
            .field("plain_http", &self.plain_http)
            .field("skip_verify", &self.skip_verify)
            .field("ca_certificates", &self.ca_pems.len())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
/// `NO_PROXY`), as containerd honours them; like Go's
/// `ProxyFromEnvironment`, never for loopback hosts.
#[derive(Debug, Clone, Default)]
struct Proxies {
    https: Option<String>,
    http: Option<String>,
    no_proxy: Option<String>,
}

impl Proxies {
    /// The proxies for requests to `host`.
    fn for_host(&self, host: &str) -> Proxies {
        if is_loopback(host) {
            Proxies::default()
        } else {
            self.clone()
        }
    }

    fn from_env() -> Proxies {
        let var = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        };
        Proxies {
            https: var(["HTTPS_PROXY", "https_proxy"]),
            http: var(["HTTP_PROXY", "http_proxy"]),
            no_proxy: var(["NO_PROXY", "no_proxy"]),
        }
    }
}

impl Registries {
    /// Builds the registries from the config: mirror URLs are checked and
    /// CA files read now, so a bad config fails at start, naming the key.
    pub fn new(config: &RegistryConfig) -> Result<Registries, RegistryError> {
        let mut mirrors = BTreeMap::new();
        for (registry, mirror) in &config.mirrors {
            let key = format!("registry.mirrors.{registry:?}.endpoints");
            let endpoints = mirror
                .endpoints
                .iter()
                .map(|url| Mirror::parse(&key, url))
                .collect::<Result<Vec<_>, _>>()?;
            mirrors.insert(registry.clone(), endpoints);
        }
        let mut hosts = BTreeMap::new();
        for (host, settings) in &config.hosts {
            let key = format!("registry.hosts.{host:?}");
            let ca_pems = match &settings.ca_file {
                Some(path) => read_ca_file(&format!("{key}.ca_file"), path)?,
                None => Vec::new(),
            };
            hosts.insert(
                host.clone(),
                HostSettings {
                    plain_http: settings.plain_http,
                    skip_verify: settings.skip_verify,
                    ca_pems,
                    username: settings.username.clone(),
                    password: settings.password.clone(),
                },
            );
        }
        let registries = Registries {
            mirrors,
            hosts,
            progress_timeout: config.progress_timeout,
            max_concurrent_downloads: config.max_concurrent_downloads.max(1),
            platform: Platform::host(),
            proxies: Proxies::from_env(),
        };
        // Building a client checks the CA certificates for real.
        for (host, settings) in &registries.hosts {
            if !settings.ca_pems.is_empty() {
                let key = format!("registry.hosts.{host:?}.ca_file");
                registries.http_client(Some(settings), host, &key)?;
            }
        }
        Ok(registries)
    }

    /// The same registries resolving manifest lists to `platform` instead
    /// of the host's.
    pub fn with_platform(mut self, platform: Platform) -> Registries {
        self.platform = platform;
        self
    }

    /// The platform manifest lists are resolved to.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// How long a fetch may go without receiving a byte.
    pub fn progress_timeout(&self) -> Duration {
        self.progress_timeout
    }

    /// Where `reference` is pulled from, in the order tried: each mirror
    /// configured for its registry, then the registry itself (Docker Hub's
    /// API host for `docker.io`). Plain HTTP for a mirror whose URL says
    /// `http://`; for the registry when `registry.hosts.<host>.plain_http`
    /// says so, or by default when it is `localhost`, in `127.0.0.0/8` or
    /// `::1`.
    pub fn endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let mut endpoints = self.mirror_endpoints(reference);
        endpoints.push(self.registry_endpoint(reference));
        endpoints
    }

    fn mirror_endpoints(&self, reference: &Reference) -> Vec<Endpoint> {
        let registry = reference.registry();
        let mirrors = self.mirrors.get(registry).into_iter().flatten();
        mirrors
            .map(|mirror| Endpoint {
                url: base_url(mirror.plain_http, &mirror.host),
                host: mirror.host.clone(),
                plain_http: mirror.plain_http,
                repository: match &mirror.prefix {
                    Some(prefix) => format!("{prefix}/{}", reference.repository()),
                    None => reference.repository().to_owned(),
                },
                mirror: true,
                registry: registry.to_owned(),
                settings_key: mirror.host.clone(),
            })
            .collect()
    }

    fn registry_endpoint(&self, reference: &Reference) -> Endpoint {
        let registry = reference.registry();
        let host = reference.api_host();
        let plain_http = self
            .settings(registry)
            .and_then(|s| s.plain_http)
            .unwrap_or_else(|| is_loopback(host));
        Endpoint {
            url: base_url(plain_http, host),
            host: host.to_owned(),
            plain_http,
            repository: reference.repository().to_owned(),
            mirror: false,
            registry: registry.to_owned(),
            settings_key: registry.to_owned(),
        }
    }

    /// Settings for `host:port`, else for `host`.
    fn settings(&self, host: &str) -> Option<&HostSettings> {
        self.hosts
            .get(host)
            .or_else(|| self.hosts.get(strip_port(host)))
    }

    fn connect_timeout(&self) -> Duration {
        CONNECT_TIMEOUT.min(self.progress_timeout)
    }

    /// A fresh `oci-client` for one pull from `endpoint`. Fresh, because
    /// `oci-client` keeps the first credentials it sees per host for the
    /// client's lifetime: sharing one would mix pulls' credentials.
    fn oci_client(&self, endpoint: &Endpoint) -> Result<oci_client::Client, RegistryError> {
        let settings = self.settings(&endpoint.settings_key);
        let proxies = self.proxies.for_host(&endpoint.host);
        let config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: settings.is_some_and(|s| s.skip_verify),
            extra_root_certificates: settings
                .map(|s| {
                    s.ca_pems
                        .iter()
                        .map(|pem| Certificate {
                            encoding: CertificateEncoding::Pem,
                            data: pem.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            // berth picks the platform itself (see `platform.rs`).
            platform_resolver: None,
            connect_timeout: Some(self.connect_timeout()),
            user_agent: USER_AGENT,
            https_proxy: proxies.https,
            http_proxy: proxies.http,
            no_proxy: proxies.no_proxy,
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default client on error,
        // silently dropping the CA and TLS settings.
        oci_client::Client::try_from(config).map_err(|e| RegistryError::Config {
            key: format!("registry.hosts.{:?}", endpoint.settings_key),
            reason: format!("cannot build an HTTP client: {}", error::chain(&e)),
        })
    }

    /// A plain HTTP client with an endpoint's TLS settings and proxies
    /// for `host`, for what `oci-client` does not do (the identity token
    /// exchange).
    fn http_client(
        &self,
        settings: Option<&HostSettings>,
        host: &str,
        key: &str,
    ) -> Result<reqwest::Client, RegistryError> {
        let config_error = |reason: String| RegistryError::Config {
            key: key.to_owned(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(self.connect_timeout());
        if let Some(settings) = settings {
            let certificates = settings
                .ca_pems
                .iter()
                .map(|pem| reqwest::Certificate::from_pem(pem))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| config_error(format!("bad CA certificate: {}", error::chain(&e))))?;
            builder = builder
                .danger_accept_invalid_certs(settings.skip_verify)
                .tls_certs_merge(certificates);
        }
        let proxies = self.proxies.for_host(host);
        let no_proxy = || {
            proxies
                .no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string)
        };
        let proxy_error = |address: &str, e: reqwest::Error| {
            config_error(format!("proxy {address:?}: {}", error::chain(&e)))
        };
        if let Some(address) = &proxies.https {
            let proxy = reqwest::Proxy::https(address).map_err(|e| proxy_error(address, e))?;
            builder = builder.proxy(proxy.no_proxy(no_proxy()));
        }
        if let Some(address) = &proxies.http {
            let proxy = reqwest::Proxy::http(address).map_err(|e| proxy_error(address, e))?;
            builder = builder.proxy(proxy.no_proxy(no_proxy()));
        }
        builder
            .build()
            .map_err(|e| config_error(format!("cannot build an HTTP client: {}", error::chain(&e))))
    }
}

impl Mirror {
    /// `http(s)://host[:port]`, optionally with the path `/v2/<prefix>`,
    /// whose prefix goes before every repository (containerd's meaning).
    fn parse(key: &str, url: &str) -> Result<Mirror, RegistryError> {
        let fail = |reason: &str| RegistryError::Config {
            key: key.to_owned(),
            reason: format!("{url:?}: {reason}"),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| fail(&e.to_string()))?;
        let plain_http = match parsed.scheme() {
            "http" => true,
            "https" => false,
            _ => return Err(fail("the scheme must be http or https")),
        };
        let Some(host) = parsed.host_str() else {
            return Err(fail("no host"));
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(fail(
                "credentials do not go in the URL; set registry.hosts.<host>.username/password",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(fail("a query or fragment has no meaning here"));
        }
        let host = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = parsed.path().trim_end_matches('/');
        let prefix = match path {
            "" | "/v2" => None,
            _ => match path.strip_prefix("/v2/") {
                Some(prefix) if prefix.split('/').all(|c| !c.is_empty()) => Some(prefix.to_owned()),
                _ => return Err(fail("the path must be empty, /v2 or /v2/<prefix>")),
            },
        };
        Ok(Mirror {
            plain_http,
            host,
            prefix,
        })
    }
}

fn base_url(plain_http: bool, host: &str) -> String {
    let scheme = if plain_http { "http" } else { "https" };
    format!("{scheme}://{host}")
}

/// `host` of `host:port`, `[::1]` of `[::1]:port`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split(':').next().unwrap_or(host)
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let host = strip_port(host);
    if host == "localhost" {
        return true;
    }
    if let Some(ipv6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return ipv6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a PEM file and splits it into one block per certificate.
fn read_ca_file(key: &str, path: &Path) -> Result<Vec<Vec<u8>>, RegistryError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let fail = |reason: String| RegistryError::Config {
        key: key.to_owned(),
        reason: format!("{}: {reason}", path.display()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut pems = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(fail(format!("{BEGIN} without {END}")));
        };
        let end = start + len + END.len();
        pems.push(format!("{}\n", &rest[start..end]).into_bytes());
        rest = &rest[end..];
    }
    if pems.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(pems)
}

#[cfg(test)]
mod tests;
