//! The files a pod's containers mount: `/etc/hosts`, `/etc/resolv.conf`
//! and `/etc/hostname`, written once per sandbox.

use std::path::Path;

use super::record::{Dns, NamespaceMode, SandboxRecord};

/// The node's resolver configuration, copied for pods without DNS settings.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The node's hosts file, copied for host-network pods.
const HOST_HOSTS: &str = "/etc/hosts";

/// `/etc/hosts` of a pod with its own network namespace.
const POD_HOSTS: &str = "\
# Kubernetes-managed hosts file (berth).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
";

/// Paths of a sandbox's files.
pub fn hosts_path(dir: &Path) -> std::path::PathBuf {
    dir.join("hosts")
}

/// Path of the sandbox's resolv.conf.
pub fn resolv_conf_path(dir: &Path) -> std::path::PathBuf {
    dir.join("resolv.conf")
}

/// Path of the sandbox's hostname file.
pub fn hostname_path(dir: &Path) -> std::path::PathBuf {
    dir.join("hostname")
}

/// The resolv.conf for `dns`; `None` when the pod has no DNS settings and
/// gets the node's file.
pub fn resolv_conf(dns: &Dns) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(out)
}

/// Writes the three files into the sandbox directory.
pub fn write(record: &SandboxRecord, node_hostname: &str) -> std::io::Result<()> {
    let dir = &record.dir;
    let host_network = record.namespaces.network == NamespaceMode::Node;
    let hosts = if host_network {
        std::fs::read_to_string(HOST_HOSTS).unwrap_or_else(|_| POD_HOSTS.to_string())
    } else {
        POD_HOSTS.to_string()
    };
    std::fs::write(hosts_path(dir), hosts)?;
    let resolv = match resolv_conf(&record.dns) {
        Some(text) => text,
        None => std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default(),
    };
    std::fs::write(resolv_conf_path(dir), resolv)?;
    let hostname = if record.hostname.is_empty() || host_network {
        node_hostname
    } else {
        &record.hostname
    };
    std::fs::write(hostname_path(dir), format!("{hostname}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        assert_eq!(resolv_conf(&Dns::default()), None);
        let dns = Dns {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).as_deref(),
            Some(
                "search default.svc.cluster.local svc.cluster.local\n\
                 nameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
            )
        );
    }
}
