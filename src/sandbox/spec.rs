//! RunPodSandbox's config, checked: every field berth uses is validated
//! here, and a bad one is an error naming it, before anything is created.

use std::collections::BTreeMap;

use berth_cri_proto::v1 as cri;

use super::SandboxError;
use super::record::{
    Dns, IdMapping, NamespaceMode, Namespaces, PortMapping, SandboxMetadata, UserNamespace,
};
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
    /// The pod's own user namespace (`userns_options.mode` POD); `None`:
    /// the node's.
    pub user_namespace: Option<UserNamespace>,
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
        let user_namespace = user_namespace(&ns, &namespaces)?;
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
            user_namespace,
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
    Ok(namespaces)
}

/// The pod's user namespace, as containerd and CRI-O take it: NODE (or no
/// options) is the node's; POD is one of the pod's own, with exactly one
/// uid and one gid mapping that map container id 0; CONTAINER and TARGET
/// are not modes a pod can have.
fn user_namespace(
    ns: &cri::NamespaceOption,
    namespaces: &Namespaces,
) -> Result<Option<UserNamespace>, SandboxError> {
    let field = "config.linux.security_context.namespace_options.userns_options";
    let Some(userns) = &ns.userns_options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(userns.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !userns.uids.is_empty() || !userns.gids.is_empty() {
                return Err(invalid(
                    format!("{field}.uids"),
                    "ID mappings need mode POD; mode NODE uses the node's user namespace",
                ));
            }
            return Ok(None);
        }
        Ok(cri::NamespaceMode::Pod) => {}
        Ok(mode @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => {
            return Err(invalid(
                format!("{field}.mode"),
                format!(
                    "{} is not supported for a pod's user namespace (NODE or POD)",
                    mode.as_str_name()
                ),
            ));
        }
        Err(_) => {
            return Err(invalid(
                format!("{field}.mode"),
                format!("unknown namespace mode {}", userns.mode),
            ));
        }
    }
    let parent = "config.linux.security_context.namespace_options";
    for (name, mode) in [
        ("network", namespaces.network),
        ("pid", namespaces.pid),
        ("ipc", namespaces.ipc),
    ] {
        if mode == NamespaceMode::Node {
            return Err(invalid(
                format!("{parent}.{name}"),
                "NODE cannot be combined with a user namespace of the pod                  (userns_options.mode POD): the node's namespace is not owned by it",
            ));
        }
    }
    Ok(Some(UserNamespace {
        uid: id_mapping(&format!("{field}.uids"), &userns.uids)?,
        gid: id_mapping(&format!("{field}.gids"), &userns.gids)?,
    }))
}

/// The single mapping of `uids` or `gids`.
fn id_mapping(field: &str, mappings: &[cri::IdMapping]) -> Result<IdMapping, SandboxError> {
    let [m] = mappings else {
        return Err(invalid(
            field,
            format!(
                "has {} mappings; a pod's user namespace takes exactly one",
                mappings.len()
            ),
        ));
    };
    let field = format!("{field}[0]");
    if m.container_id != 0 {
        return Err(invalid(
            format!("{field}.container_id"),
            format!(
                "is {}: the mapping must map container id 0 (the pod's root)",
                m.container_id
            ),
        ));
    }
    if m.length == 0 {
        return Err(invalid(format!("{field}.length"), "is 0"));
    }
    // The kernel's ids are u32, and u32::MAX is its invalid id.
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(invalid(
            format!("{field}.length"),
            format!(
                "{} ids from host id {} run past the last id",
                m.length, m.host_id
            ),
        ));
    }
    Ok(IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
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

    fn with_userns(
        mode: cri::NamespaceMode,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
    ) -> Result<SandboxSpec, SandboxError> {
        let maps = |m: &[(u32, u32, u32)]| {
            m.iter()
                .map(|&(container_id, host_id, length)| cri::IdMapping {
                    container_id,
                    host_id,
                    length,
                })
                .collect()
        };
        let mut c = base();
        c.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    userns_options: Some(cri::UserNamespace {
                        mode: mode as i32,
                        uids: maps(uids),
                        gids: maps(gids),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        SandboxSpec::from_cri(Some(c))
    }

    #[test]
    fn pod_user_namespace_takes_one_mapping_of_root() {
        use cri::NamespaceMode::{Container, Node, Pod, Target};
        let one = [(0, 1000, 100000)];
        let spec = with_userns(Pod, &one, &[(0, 2000, 65536)]).expect("valid POD userns");
        assert_eq!(
            spec.user_namespace,
            Some(UserNamespace {
                uid: IdMapping {
                    container_id: 0,
                    host_id: 1000,
                    length: 100000
                },
                gid: IdMapping {
                    container_id: 0,
                    host_id: 2000,
                    length: 65536
                },
            })
        );
        assert_eq!(
            with_userns(Node, &[], &[]).expect("NODE").user_namespace,
            None
        );
        assert_eq!(
            SandboxSpec::from_cri(Some(base()))
                .expect("none")
                .user_namespace,
            None
        );

        let field = "config.linux.security_context.namespace_options.userns_options";
        let err = |r: Result<SandboxSpec, SandboxError>| {
            let e = r.expect_err("must be refused");
            assert!(matches!(e, SandboxError::InvalidArgument { .. }), "{e:?}");
            e.to_string()
        };
        let two = [(0, 1000, 100000), (0, 2000, 100000)];
        let e = err(with_userns(Pod, &two, &two));
        assert!(
            e.starts_with(&format!("{field}.uids: has 2 mappings")),
            "{e}"
        );
        let e = err(with_userns(Pod, &one, &two));
        assert!(
            e.starts_with(&format!("{field}.gids: has 2 mappings")),
            "{e}"
        );
        let e = err(with_userns(Pod, &[], &one));
        assert!(
            e.starts_with(&format!("{field}.uids: has 0 mappings")),
            "{e}"
        );
        let unmapped = [(1, 1000, 100000)];
        let e = err(with_userns(Pod, &unmapped, &unmapped));
        assert!(
            e.starts_with(&format!("{field}.uids[0].container_id: is 1")),
            "{e}"
        );
        let e = err(with_userns(Pod, &one, &unmapped));
        assert!(
            e.starts_with(&format!("{field}.gids[0].container_id")),
            "{e}"
        );
        let e = err(with_userns(Pod, &[(0, 1000, 0)], &one));
        assert!(
            e.starts_with(&format!("{field}.uids[0].length: is 0")),
            "{e}"
        );
        let e = err(with_userns(Pod, &[(0, u32::MAX - 10, 11)], &one));
        assert!(e.contains("run past the last id"), "{e}");
        for mode in [Container, Target] {
            let e = err(with_userns(mode, &[], &[]));
            assert!(
                e.starts_with(&format!("{field}.mode: {}", mode.as_str_name())),
                "{e}"
            );
        }
        let e = err(with_userns(Node, &one, &one));
        assert!(e.starts_with(&format!("{field}.uids")), "{e}");
    }

    #[test]
    fn pod_user_namespace_refuses_node_namespaces() {
        let one = [(0, 1000, 100000)];
        let mut spec = with_userns(cri::NamespaceMode::Pod, &one, &one);
        assert!(spec.is_ok());
        for name in ["network", "pid", "ipc"] {
            let mut c = base();
            let mut ns = cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![cri::IdMapping {
                        container_id: 0,
                        host_id: 1000,
                        length: 100000,
                    }],
                    gids: vec![cri::IdMapping {
                        container_id: 0,
                        host_id: 1000,
                        length: 100000,
                    }],
                }),
                ..Default::default()
            };
            let node = cri::NamespaceMode::Node as i32;
            match name {
                "network" => ns.network = node,
                "pid" => ns.pid = node,
                _ => ns.ipc = node,
            }
            c.linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            });
            spec = SandboxSpec::from_cri(Some(c));
            let e = spec
                .as_ref()
                .expect_err("NODE with a pod userns")
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "config.linux.security_context.namespace_options.{name}: NODE"
                )),
                "{e}"
            );
        }
    }
}
