//! berth's default pod network (`cni/10-berth.conflist`, installed by
//! packaging) and rendering it for the pod CIDRs the kubelet assigns the
//! node through CRI `UpdateRuntimeConfig`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Value, json};

/// The default network config list, as shipped in `cni/`.
pub const DEFAULT_CONFLIST: &str = include_str!("../../cni/10-berth.conflist");

/// The file name it is installed under in the CNI config dir.
pub const DEFAULT_CONFLIST_FILE: &str = "10-berth.conflist";

/// Why the default config cannot be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum DefaultConfigError {
    /// A pod CIDR is not a network address with a prefix length.
    #[error("invalid pod CIDR {}: {reason}", crate::input::quoted(cidr))]
    InvalidCidr {
        /// The text given.
        cidr: String,
        /// What is wrong.
        reason: String,
    },
    /// No pod CIDR was given.
    #[error("no pod CIDR given")]
    NoCidr,
    /// The shipped config is not what this code edits (a build defect).
    #[error("default CNI config is malformed: {0}")]
    Malformed(String),
    /// The file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Parses the CRI pod CIDR field: one CIDR or a comma-separated list
/// (dual stack), e.g. `10.244.1.0/24,fd00:10:244:1::/64`.
pub fn parse_pod_cidrs(text: &str) -> Result<Vec<IpNet>, DefaultConfigError> {
    let cidrs = text
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<IpNet>()
                .map_err(|e| DefaultConfigError::InvalidCidr {
                    cidr: c.to_string(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cidrs.is_empty() {
        return Err(DefaultConfigError::NoCidr);
    }
    Ok(cidrs)
}

/// The default config list with its `host-local` ranges replaced by
/// `pod_cidrs` (one range set each, host bits cleared) and a default route
/// per address family; everything else is kept. Returns pretty JSON.
pub fn render_default_conflist(pod_cidrs: &[IpNet]) -> Result<String, DefaultConfigError> {
    if pod_cidrs.is_empty() {
        return Err(DefaultConfigError::NoCidr);
    }
    let malformed = |what: &str| DefaultConfigError::Malformed(what.to_string());
    let mut list: Value =
        serde_json::from_str(DEFAULT_CONFLIST).map_err(|e| malformed(&e.to_string()))?;
    let ipam = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .and_then(|plugins| plugins.iter_mut().find(|p| p["type"] == "bridge"))
        .and_then(|bridge| bridge.get_mut("ipam"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| malformed("no bridge plugin with an ipam section"))?;
    let ranges: Vec<Value> = pod_cidrs
        .iter()
        .map(|cidr| json!([{ "subnet": cidr.trunc().to_string() }]))
        .collect();
    let mut routes = Vec::new();
    if pod_cidrs.iter().any(|c| matches!(c, IpNet::V4(_))) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
        routes.push(json!({ "dst": "::/0" }));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    ipam.insert("routes".into(), Value::Array(routes));
    serde_json::to_string_pretty(&list).map_err(|e| malformed(&e.to_string()))
}

/// Writes [`render_default_conflist`] for `pod_cidrs` to
/// `<conf_dir>/10-berth.conflist` atomically (a reader sees the old file
/// or the new one, never a mix). Returns the file's path.
pub fn write_default_conflist(
    conf_dir: &Path,
    pod_cidrs: &[IpNet],
) -> Result<PathBuf, DefaultConfigError> {
    let text = render_default_conflist(pod_cidrs)?;
    let path = conf_dir.join(DEFAULT_CONFLIST_FILE);
    // Not a config extension, so a concurrent config load skips it.
    let tmp = conf_dir.join(format!(".{DEFAULT_CONFLIST_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(conf_dir)?;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DefaultConfigError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_what_the_docs_say() {
        let list: Value = serde_json::from_str(DEFAULT_CONFLIST).expect("valid JSON");
        assert_eq!(list["name"], "berth");
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "berth0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn renders_dual_stack_pod_cidrs() {
        let cidrs = parse_pod_cidrs("10.244.1.7/24, fd00:10:244:1::/64").expect("cidrs");
        let list: Value =
            serde_json::from_str(&render_default_conflist(&cidrs).expect("render")).expect("json");
        let ipam = &list["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert_eq!(list["plugins"][0]["bridge"], "berth0", "the rest is kept");
        assert_eq!(list["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn rejects_bad_cidrs() {
        assert!(matches!(
            parse_pod_cidrs(" , "),
            Err(DefaultConfigError::NoCidr)
        ));
        let e = parse_pod_cidrs("10.0.0.0/33").expect_err("bad prefix");
        assert!(e.to_string().contains("\"10.0.0.0/33\""), "{e}");
        assert!(render_default_conflist(&[]).is_err());
    }

    #[test]
    fn writes_atomically_into_the_conf_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cidrs = parse_pod_cidrs("10.244.2.0/24").expect("cidr");
        let path = write_default_conflist(&tmp.path().join("net.d"), &cidrs).expect("write");
        let list: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.2.0/24"
        );
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("net.d"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [DEFAULT_CONFLIST_FILE], "no temp file left");
    }
}
