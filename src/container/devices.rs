//! The container's devices: the CRI's device nodes (type, major and minor
//! read from the host) and the device cgroup rules that let it use them;
//! a privileged container gets every device of the host.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use super::spec::{SpecError, invalid, io};

/// Directories of `/dev` a privileged container does not get as device
/// nodes: they are mounted separately or are not devices.
const SKIPPED_DEV_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Devices and the cgroup rules that go with them.
#[derive(Debug, Default)]
pub struct Devices {
    /// Nodes the runtime creates in the container.
    pub nodes: Vec<LinuxDevice>,
    /// Device cgroup rules: deny everything, then allow these (runc adds
    /// its own defaults: null, zero, full, tty, random, urandom, ptmx,
    /// pts, tun and mknod of any).
    pub rules: Vec<LinuxDeviceCgroup>,
}

/// The devices of the spec.
pub fn build(requested: &[cri::Device], privileged: bool) -> Result<Devices, SpecError> {
    let mut out = Devices {
        nodes: Vec::new(),
        rules: vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ],
    };
    if privileged {
        out.nodes = host_devices(Path::new("/dev"))?;
        out.rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()?,
        );
    }
    for (i, device) in requested.iter().enumerate() {
        let field = format!("config.devices[{i}]");
        let permissions = if device.permissions.is_empty() {
            "rwm"
        } else {
            device.permissions.as_str()
        };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(
                format!("{field}.permissions"),
                format!(
                    "{} is not a combination of r, w and m",
                    crate::input::quoted(permissions)
                ),
            ));
        }
        let host = Path::new(&device.host_path);
        if !host.is_absolute() {
            return Err(invalid(
                format!("{field}.host_path"),
                "is not an absolute path",
            ));
        }
        let container = if device.container_path.is_empty() {
            host.to_path_buf()
        } else {
            PathBuf::from(&device.container_path)
        };
        if !container.is_absolute() {
            return Err(invalid(
                format!("{field}.container_path"),
                "is not an absolute path",
            ));
        }
        let meta = std::fs::metadata(host).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SpecError::NotFound(format!(
                    "device {} ({field}) does not exist",
                    host.display()
                ))
            } else {
                io("stat", host)(e)
            }
        })?;
        let found = if meta.is_dir() {
            // A directory stands for every device under it.
            let mut nodes = Vec::new();
            walk(host, &mut nodes, &[])?;
            nodes
                .into_iter()
                .map(|(path, node)| {
                    let rel = path.strip_prefix(host).unwrap_or(&path);
                    (container.join(rel), node)
                })
                .collect()
        } else {
            let node = node(&meta).ok_or_else(|| {
                invalid(
                    format!("{field}.host_path"),
                    format!("{} is not a device node", host.display()),
                )
            })?;
            vec![(container, node)]
        };
        for (path, node) in found {
            if privileged {
                // Already there with every permission.
                out.nodes.retain(|n| n.path() != &path);
            }
            out.rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(node.typ)
                    .major(node.major)
                    .minor(node.minor)
                    .access(permissions)
                    .build()?,
            );
            out.nodes.push(node.into_device(path)?);
        }
    }
    Ok(out)
}

/// What a device node is.
struct Node {
    typ: LinuxDeviceType,
    major: i64,
    minor: i64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Node {
    fn into_device(self, path: PathBuf) -> Result<LinuxDevice, SpecError> {
        Ok(LinuxDeviceBuilder::default()
            .path(path)
            .typ(self.typ)
            .major(self.major)
            .minor(self.minor)
            .file_mode(self.mode)
            .uid(self.uid)
            .gid(self.gid)
            .build()?)
    }
}

fn node(meta: &std::fs::Metadata) -> Option<Node> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else if ft.is_fifo() {
        LinuxDeviceType::P
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(Node {
        typ,
        major: i64::from(rustix::fs::major(rdev)),
        minor: i64::from(rustix::fs::minor(rdev)),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Every device node under `dir`, not following symlinks.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, Node)>, skip: &[&str]) -> Result<(), SpecError> {
    let entries = std::fs::read_dir(dir).map_err(io("read", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Devices come and go.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("stat", &path)(e)),
        };
        let name = entry.file_name();
        if meta.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                walk(&path, out, &[])?;
            }
        } else if name != "console"
            && let Some(node) = node(&meta)
        {
            out.push((path, node));
        }
    }
    Ok(())
}

/// Every device of the host, as a privileged container sees them.
fn host_devices(dev: &Path) -> Result<Vec<LinuxDevice>, SpecError> {
    let mut found = Vec::new();
    walk(dev, &mut found, SKIPPED_DEV_DIRS)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
        .into_iter()
        .map(|(path, node)| node.into_device(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str, container: &str, permissions: &str) -> cri::Device {
        cri::Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn a_device_node_is_read_from_the_host() {
        let out = build(&[device("/dev/null", "/dev/mynull", "rw")], false).expect("devices");
        assert_eq!(out.nodes.len(), 1);
        let null = &out.nodes[0];
        assert_eq!(null.path(), Path::new("/dev/mynull"));
        assert_eq!(null.typ(), LinuxDeviceType::C);
        assert_eq!((null.major(), null.minor()), (1, 3));
        assert_eq!(out.rules.len(), 2);
        assert!(!out.rules[0].allow(), "everything is denied first");
        let rule = &out.rules[1];
        assert!(rule.allow());
        assert_eq!((rule.major(), rule.minor()), (Some(1), Some(3)));
        assert_eq!(rule.access().as_deref(), Some("rw"));
    }

    #[test]
    fn bad_devices_are_named() {
        let err = build(&[device("/dev/does-not-exist", "", "")], false).expect_err("missing");
        assert!(matches!(err, SpecError::NotFound(_)), "{err}");
        let err = build(&[device("/dev/null", "/dev/null", "rwx")], false).expect_err("perm");
        assert!(
            err.to_string().contains("config.devices[0].permissions"),
            "{err}"
        );
        let err = build(&[device("/etc/hostname", "", "")], false).expect_err("not a device");
        assert!(err.to_string().contains("not a device node"), "{err}");
        assert!(build(&[device("dev/null", "", "")], false).is_err());
    }

    #[test]
    fn privileged_gets_every_host_device() {
        let out = build(&[], true).expect("devices");
        assert!(out.nodes.iter().any(|n| n.path() == Path::new("/dev/null")));
        assert!(!out.nodes.iter().any(|n| n.path().starts_with("/dev/pts")));
        assert!(out.rules.iter().any(|r| r.allow() && r.major().is_none()));
    }
}
