//! The result of a CNI ADD: the interfaces, addresses, routes and DNS
//! settings a plugin chain reports, parsed from the 0.3.x, 0.4.0, 1.0.0 and
//! 1.1.0 result shapes into one owned type.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What a plugin chain set up for one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The spec version the result is written in.
    pub cni_version: String,
    /// Interfaces created or touched, on the host and in the sandbox.
    #[serde(default)]
    pub interfaces: Vec<CniInterface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<CniIpConfig>,
    /// Routes added in the sandbox.
    #[serde(default)]
    pub routes: Vec<CniRoute>,
    /// DNS settings the network suggests.
    #[serde(default)]
    pub dns: CniDns,
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniInterface {
    /// Interface name (`eth0`, `berth0`, `veth1234`).
    pub name: String,
    /// Hardware address, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for an interface inside the sandbox; absent for host
    /// interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniIpConfig {
    /// Address with its prefix length (`10.88.0.5/16`).
    pub address: IpNet,
    /// Default gateway for this address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRoute {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; the interface's default gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings of a result (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniDns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Why a plugin's output is not a result berth understands.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The output is not JSON, or not of the result shape.
    #[error("malformed CNI result: {0}")]
    Json(#[source] serde_json::Error),
    /// The result names no `cniVersion`.
    #[error("CNI result has no \"cniVersion\"")]
    NoVersion,
    /// The result is written in a version whose shape berth does not parse.
    #[error("CNI result version {0:?} is not supported (0.3.0 to 1.1.0 are)")]
    UnsupportedVersion(String),
    /// An interface index points past the interface list.
    #[error("CNI result ips[{ip}] names interface {index}, but it has {count} interfaces")]
    BadInterfaceIndex {
        /// Position of the address in `ips`.
        ip: usize,
        /// The index it names.
        index: usize,
        /// How many interfaces the result lists.
        count: usize,
    },
}

/// Result versions whose shape [`CniResult`] matches (the 0.3.0 shape,
/// unchanged through 1.1.0 for the fields berth reads).
const PARSED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniResult {
    /// Parses a result from its JSON value (a plugin's stdout).
    pub fn from_value(value: &serde_json::Value) -> Result<CniResult, ResultError> {
        let version = value
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .ok_or(ResultError::NoVersion)?;
        if !PARSED_VERSIONS.contains(&version) {
            return Err(ResultError::UnsupportedVersion(version.to_string()));
        }
        let result = CniResult::deserialize(value).map_err(ResultError::Json)?;
        for (i, ip) in result.ips.iter().enumerate() {
            if let Some(index) = ip.interface
                && index >= result.interfaces.len()
            {
                return Err(ResultError::BadInterfaceIndex {
                    ip: i,
                    index,
                    count: result.interfaces.len(),
                });
            }
        }
        Ok(result)
    }

    /// Parses a result from a plugin's stdout.
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, ResultError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(ResultError::Json)?;
        CniResult::from_value(&value)
    }

    /// The pod's addresses: those on the sandbox interface named `ifname`
    /// or, when the result does not tie addresses to named sandbox
    /// interfaces, all of them. IPv4 addresses come first, then IPv6, each
    /// in result order.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let on_ifname = |ip: &&CniIpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| iface.name == ifname && iface.sandbox.is_some())
        };
        let mut ips: Vec<IpAddr> = if self.ips.iter().any(|ip| on_ifname(&ip)) {
            self.ips
                .iter()
                .filter(on_ifname)
                .map(|ip| ip.address.addr())
                .collect()
        } else {
            self.ips.iter().map(|ip| ip.address.addr()).collect()
        };
        // Stable: keeps the result order within each family.
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_0_3_1_with_version_fields() {
        let text = r#"{
            "cniVersion": "0.3.1",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"], "search": ["svc.local"]}
        }"#;
        let r = CniResult::from_slice(text.as_bytes()).expect("0.3.1 result");
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(
            r.ips[0].address,
            "10.1.0.5/24".parse::<IpNet>().expect("net")
        );
        assert_eq!(r.ips[0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns.nameservers, ["10.1.0.1"]);
        assert_eq!(r.pod_ips("eth0"), [ip("10.1.0.5")]);
    }

    #[test]
    fn parses_0_4_0_and_1_0_0_dual_stack_ipv4_first() {
        for version in ["0.4.0", "1.0.0"] {
            let text = format!(
                r#"{{"cniVersion": "{version}",
                "interfaces": [{{"name": "berth0"}}, {{"name": "eth0", "sandbox": "/run/netns/p"}}],
                "ips": [
                    {{"address": "fd00::5/64", "interface": 1}},
                    {{"address": "10.88.0.1/16", "interface": 0}},
                    {{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}}
                ],
                "routes": [{{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}}, {{"dst": "::/0"}}]}}"#
            );
            let r = CniResult::from_slice(text.as_bytes()).expect(version);
            assert_eq!(r.cni_version, version);
            assert_eq!(r.routes.len(), 2);
            assert_eq!(
                r.pod_ips("eth0"),
                [ip("10.88.0.5"), ip("fd00::5")],
                "{version}: only eth0's, IPv4 first"
            );
        }
    }

    #[test]
    fn parses_1_1_0_with_mtu_and_unknown_fields() {
        let text = r#"{"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p", "mtu": 1450, "socketPath": "/x"}],
            "ips": [{"address": "10.2.0.3/24", "interface": 0}],
            "routes": [{"dst": "10.0.0.0/8", "mtu": 1400, "table": 10}]}"#;
        let r = CniResult::from_slice(text.as_bytes()).expect("1.1.0 result");
        assert_eq!(r.interfaces[0].mtu, Some(1450));
        assert_eq!(r.pod_ips("eth0"), [ip("10.2.0.3")]);
    }

    #[test]
    fn unnamed_interfaces_report_all_ips() {
        let text = r#"{"cniVersion": "1.0.0",
            "ips": [{"address": "fd00::7/64"}, {"address": "10.3.0.7/24"}]}"#;
        let r = CniResult::from_slice(text.as_bytes()).expect("result");
        assert_eq!(r.pod_ips("eth0"), [ip("10.3.0.7"), ip("fd00::7")]);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let cases = [
            (r#"{"ips": []}"#, "no \"cniVersion\""),
            (
                r#"{"cniVersion": "0.2.0", "ip4": {}}"#,
                "\"0.2.0\" is not supported",
            ),
            (
                r#"{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 2}]}"#,
                "names interface 2, but it has 0",
            ),
            (
                r#"{"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]}"#,
                "malformed CNI result",
            ),
            ("garbage", "malformed CNI result"),
        ];
        for (text, needle) in cases {
            let e = CniResult::from_slice(text.as_bytes()).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
