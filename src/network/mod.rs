//! Pod networking through CNI plugins: finding the node's network
//! configuration ([`NetworkConfig`]), executing plugins per the CNI spec
//! ([`CniClient`]), caching each ADD for its DEL ([`ResultCache`]), reading
//! their results ([`CniResult`]) and berth's default network
//! ([`render_default_conflist`]).
//!
//! This module never imports CRI types: the sandbox lifecycle translates.

mod cache;
mod cni;
mod config;
mod default_config;
mod plugin;
mod result;

pub use cache::{CacheError, CachedAttachment, ResultCache};
pub use cni::{
    Bandwidth, CniClient, CniError, DEFAULT_PLUGIN_TIMEOUT, DnsConfig, LOOPBACK_CONFIG,
    LOOPBACK_IFNAME, PodNetworkRequest, PortMapping, Protocol, ValidAttachment, cni_args,
};
pub use config::{NetworkConfig, NetworkConfigError};
pub use default_config::{
    DEFAULT_CONFLIST, DEFAULT_CONFLIST_FILE, DefaultConfigError, parse_pod_cidrs,
    render_default_conflist, write_default_conflist,
};
pub use plugin::{CniCommand, PluginError};
pub use result::{CniDns, CniInterface, CniIpConfig, CniResult, CniRoute, ResultError};
