//! RunPodSandbox's config, checked: every field berth uses is validated
//! here, and a bad one is an error naming it, before anything is created.

use std::collections::BTreeMap;

use berth_cri_proto::v1 as cri;

use super::SandboxError;
use super::record::{Dns, NamespaceMode, Namespaces, PortMapping, SandboxMetadata};
use crate::input::quoted;

/// A validated pod sandbox config.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Pod identity.
    pub metadata: SandboxMetadata,
    /// Hostname (may be empty: the node's for host-network pods).
    pub hostname: String,
    /// Log directory.
    pub log_directory: String,
    /// DNS settings.
    pub dns: Dns,
    /// hostPorts.
    pub port_mappings: Vec<PortMapping>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Namespace choices.
    pub namespaces: Namespaces,
    /// Parent cgroup.
    pub cgroup_parent: String,
    /// Sysctls, each in a namespace the pod owns.
    pub sysctls: BTreeMap<String, String>,
    /// Privileged pod.
    pub privileged: bool,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SandboxError {
    SandboxError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

impl SandboxSpec {
    /// Checks a RunPodSandbox config.
    pub fn from_cri(config: Option<cri::PodSandboxConfig>) -> Result<SandboxSpec, SandboxError> {
        let config = config.ok_or_else(|| invalid("config", "is missing"))?;
        let meta = config
            .metadata
            .ok_or_else(|| invalid("config.metadata", "is missing"))?;
        for (field, value) in [
            ("config.metadata.name", &meta.name),
            ("config.metadata.namespace", &meta.namespace),
            ("config.metadata.uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "is empty"));
            }
            if value.contains('_') && field != "config.metadata.uid" || value.contains('/') {
                return Err(invalid(
                    field,
                    format!("{} may not contain '/' or '_'", quoted(value)),
                ));
            }
            if value.len() > 253 {
                return Err(invalid(field, "is longer than 253 characters"));
            }
        }
        if !config.hostname.is_empty() {
            check_hostname(&config.hostname)?;
        }
        if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
            return Err(invalid(
                "config.log_directory",
                format!("{} is not an absolute path", quoted(&config.log_directory)),
            ));
        }
        let linux = config.linux.unwrap_or_default();
        let security = linux.security_context.unwrap_or_default();
        let ns = security.namespace_options.unwrap_or_default();
        let namespaces = namespaces(&ns)?;
        let mut port_mappings = Vec::new();
        for (i, pm) in config.port_mappings.iter().enumerate() {
            port_mappings.push(port_mapping(i, pm)?);
        }
        let sysctls: BTreeMap<String, String> = linux.sysctls.into_iter().collect();
        for (key, value) in &sysctls {
            check_sysctl(key, value, &namespaces)?;
        }
        let dns = config
            .dns_config
            .map(|d| Dns {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            })
            .unwrap_or_default();
        for (i, server) in dns.servers.iter().enumerate() {
            if server.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    format!("config.dns_config.servers[{i}]"),
                    format!("{} is not an IP address", quoted(server)),
                ));
            }
        }
        Ok(SandboxSpec {
            metadata: SandboxMetadata {
                name: meta.name,
                uid: meta.uid,
                namespace: meta.namespace,
                attempt: meta.attempt,
            },
            hostname: config.hostname,
            log_directory: config.log_directory,
            dns,
            port_mappings,
            labels: config.labels.into_iter().collect(),
            annotations: config.annotations.into_iter().collect(),
            namespaces,
            cgroup_parent: linux.cgroup_parent,
            sysctls,
            privileged: security.privileged,
        })
    }

    /// The name the sandbox reserves, as containerd builds it.
    pub fn reserved_name(&self) -> String {
        let m = &self.metadata;
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }
}

fn namespaces(ns: &cri::NamespaceOption) -> Result<Namespaces, SandboxError> {
    let mode = |field: &str, value: i32, allowed: &[NamespaceMode]| {
        let mode = match cri::NamespaceMode::try_from(value) {
            Ok(cri::NamespaceMode::Pod) => NamespaceMode::Pod,
            Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
            Ok(cri::NamespaceMode::Node) => NamespaceMode::Node,
            Ok(cri::NamespaceMode::Target) => {
                return Err(invalid(field, "TARGET is not valid for a pod sandbox"));
            }
            Err(_) => return Err(invalid(field, format!("unknown namespace mode {value}"))),
        };
        if allowed.contains(&mode) {
            Ok(mode)
        } else {
            Err(invalid(
                field,
                format!("{mode:?} is not valid for a pod sandbox"),
            ))
        }
    };
    use NamespaceMode::{Container, Node, Pod};
    let field = "config.linux.security_context.namespace_options";
    let namespaces = Namespaces {
        network: mode(&format!("{field}.network"), ns.network, &[Pod, Node])?,
        pid: mode(&format!("{field}.pid"), ns.pid, &[Pod, Container, Node])?,
        ipc: mode(&format!("{field}.ipc"), ns.ipc, &[Pod, Node])?,
    };
    if let Some(userns) = &ns.userns_options
        && cri::NamespaceMode::try_from(userns.mode) != Ok(cri::NamespaceMode::Node)
    {
        return Err(invalid(
            format!("{field}.userns_options.mode"),
            "user namespaces are not supported by berth yet",
        ));
    }
    Ok(namespaces)
}

fn port_mapping(i: usize, pm: &cri::PortMapping) -> Result<PortMapping, SandboxError> {
    let field = format!("config.port_mappings[{i}]");
    let protocol = match cri::Protocol::try_from(pm.protocol) {
        Ok(cri::Protocol::Tcp) => "tcp",
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        Err(_) => {
            return Err(invalid(
                format!("{field}.protocol"),
                format!("unknown protocol {}", pm.protocol),
            ));
        }
    };
    let port = |name: &str, value: i32, zero_ok: bool| match u16::try_from(value) {
        Ok(0) if zero_ok => Ok(0),
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(
            format!("{field}.{name}"),
            format!("{value} is not a port (1-65535)"),
        )),
    };
    let container_port = port("container_port", pm.container_port, false)?;
    let host_port = port("host_port", pm.host_port, true)?;
    if !pm.host_ip.is_empty() && pm.host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(
            format!("{field}.host_ip"),
            format!("{} is not an IP address", quoted(&pm.host_ip)),
        ));
    }
    Ok(PortMapping {
        protocol: protocol.into(),
        container_port,
        host_port,
        host_ip: pm.host_ip.clone(),
    })
}

/// RFC 1123 hostname, at most 64 characters (the kernel's limit).
fn check_hostname(hostname: &str) -> Result<(), SandboxError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if hostname.len() <= 64 && hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(invalid(
            "config.hostname",
            format!("{} is not a valid hostname", quoted(hostname)),
        ))
    }
}

/// A sysctl is allowed when it belongs to a namespace the pod owns.
fn check_sysctl(key: &str, value: &str, ns: &Namespaces) -> Result<(), SandboxError> {
    let field = format!("config.linux.sysctls[{}]", quoted(key));
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !key.contains("..");
    if !key_ok {
        return Err(invalid(field, "is not a sysctl name"));
    }
    if value.contains('\n') {
        return Err(invalid(field, "the value contains a newline"));
    }
    let key = key.replace('/', ".");
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    let allowed = if key.starts_with("net.") {
        ns.network == NamespaceMode::Pod
    } else if ipc {
        ns.ipc == NamespaceMode::Pod
    } else {
        matches!(key.as_str(), "kernel.hostname" | "kernel.domainname")
    };
    if allowed {
        Ok(())
    } else {
        Err(invalid(
            field,
            "is not namespaced to this pod (net.* needs the pod's network namespace, \
             kernel.shm*/msg*/sem and fs.mqueue.* its IPC namespace)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            hostname: "web-1".into(),
            ..Default::default()
        }
    }

    fn err(config: cri::PodSandboxConfig) -> String {
        SandboxSpec::from_cri(Some(config))
            .expect_err("invalid config")
            .to_string()
    }

    #[test]
    fn valid_config_and_name() {
        let spec = SandboxSpec::from_cri(Some(base())).expect("valid");
        assert_eq!(spec.reserved_name(), "web_default_uid-1_2");
        assert_eq!(spec.namespaces.network, NamespaceMode::Pod);
        assert_eq!(spec.namespaces.pid, NamespaceMode::Pod);
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(SandboxSpec::from_cri(None).is_err());
        let mut c = base();
        if let Some(m) = c.metadata.as_mut() {
            m.name.clear();
        }
        assert!(err(c).contains("config.metadata.name"));
        let mut c = base();
        c.hostname = "bad_host".into();
        assert!(err(c).contains("config.hostname"));
        let mut c = base();
        c.port_mappings = vec![cri::PortMapping {
            container_port: 70000,
            ..Default::default()
        }];
        assert!(err(c).contains("config.port_mappings[0].container_port"));
        let mut c = base();
        c.dns_config = Some(cri::DnsConfig {
            servers: vec!["not-an-ip".into()],
            ..Default::default()
        });
        assert!(err(c).contains("config.dns_config.servers[0]"));
    }

    #[test]
    fn sysctls_must_belong_to_the_pods_namespaces() {
        let with = |key: &str, host_net: bool| {
            let mut c = base();
            let mut linux = cri::LinuxPodSandboxConfig::default();
            linux.sysctls.insert(key.into(), "1".into());
            if host_net {
                linux.security_context = Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            c.linux = Some(linux);
            SandboxSpec::from_cri(Some(c))
        };
        with("net.ipv4.ip_forward", false).expect("net sysctl in pod netns");
        with("kernel.shm_rmid_forced", false).expect("ipc sysctl");
        let e = with("net.ipv4.ip_forward", true).expect_err("host network");
        assert!(e.to_string().contains("net.ipv4.ip_forward"), "{e}");
        let e = with("kernel.panic", false).expect_err("not namespaced");
        assert!(e.to_string().contains("not namespaced"), "{e}");
        with("kernel..x", false).expect_err("bad name");
    }
}
