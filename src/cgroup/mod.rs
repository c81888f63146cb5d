//! cgroups for pods: creating a pod's leaf cgroup under the kubelet's
//! cgroup parent, moving a process into it, and removing it again, on
//! cgroup v1 (one hierarchy per controller) and v2 (the unified hierarchy).
//!
//! The layout is read from `/proc/self/mountinfo` once. A hybrid host
//! (v1 controllers plus an empty v2 hierarchy at `/sys/fs/cgroup/unified`)
//! is treated as v1.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup path is not a clean absolute-or-relative path.
    #[error("cgroup path {0}: must not contain `..` or be empty")]
    InvalidPath(String),
    /// No cgroup hierarchy is mounted.
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// The cgroup hierarchies of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the mount point of each hierarchy that has controllers
    /// (and the named `systemd` one).
    V1(Vec<PathBuf>),
    /// cgroup v2: the mount point of the unified hierarchy.
    V2(PathBuf),
}

impl Hierarchy {
    /// Reads the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        Hierarchy::from_mountinfo(&text)
    }

    /// Parses mountinfo lines.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, CgroupError> {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in text.lines() {
            // `id parent major:minor root mountpoint opts [optional...] - fstype source superopts`
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let superopts = right.nth(1).unwrap_or_default();
            match fstype {
                "cgroup" => {
                    let useful = superopts.split(',').any(|o| {
                        !matches!(
                            o,
                            "rw" | "ro"
                                | "nosuid"
                                | "nodev"
                                | "noexec"
                                | "relatime"
                                | "clone_children"
                        ) && !o.starts_with("release_agent")
                    });
                    if useful {
                        v1.push(PathBuf::from(unescape(mountpoint)));
                    }
                }
                "cgroup2" => v2 = Some(PathBuf::from(unescape(mountpoint))),
                _ => {}
            }
        }
        if !v1.is_empty() {
            v1.sort();
            v1.dedup();
            Ok(Hierarchy::V1(v1))
        } else if let Some(v2) = v2 {
            Ok(Hierarchy::V2(v2))
        } else {
            Err(CgroupError::NoHierarchy)
        }
    }

    /// The directories that make up cgroup `path` (relative to every
    /// hierarchy's root).
    pub fn dirs(&self, path: &str) -> Result<Vec<PathBuf>, CgroupError> {
        let relative = clean(path)?;
        Ok(match self {
            Hierarchy::V1(mounts) => mounts.iter().map(|m| m.join(&relative)).collect(),
            Hierarchy::V2(root) => vec![root.join(&relative)],
        })
    }

    /// Creates cgroup `path` (parents included) and moves `pid` into it.
    pub fn join(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        let relative = clean(path)?;
        for dir in self.dirs(path)? {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            if dir.join("cpuset.cpus").exists() {
                inherit_cpuset(&dir, &relative)?;
            }
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io("write", &procs))?;
        }
        Ok(())
    }

    /// Removes cgroup `path` (not its parents) once its processes are
    /// gone; a missing cgroup is fine. Retries briefly while the kernel
    /// still counts exiting processes.
    pub async fn remove(&self, path: &str) -> Result<(), CgroupError> {
        for dir in self.dirs(path)? {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(io("remove", &dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// The cgroup of a pod object named `name` (a sandbox or container id)
/// under the kubelet's `parent`: `<parent>/<name>` with the cgroupfs
/// driver; with the systemd driver the parent slice is expanded into its
/// path (`kubepods-burstable-pod1.slice` is
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`)
/// and the object gets a `berth-<name>.scope`.
pub fn object_path(driver: crate::config::CgroupDriver, parent: &str, name: &str) -> String {
    match driver {
        crate::config::CgroupDriver::Cgroupfs => {
            format!("{}/{name}", parent.trim_end_matches('/'))
        }
        crate::config::CgroupDriver::Systemd => {
            format!("{}/berth-{name}.scope", expand_slice(parent))
        }
    }
}

/// The kubelet's pod cgroup `parent` as a path relative to the hierarchies'
/// roots (a systemd slice expanded).
pub fn parent_path(driver: crate::config::CgroupDriver, parent: &str) -> String {
    match driver {
        crate::config::CgroupDriver::Cgroupfs => parent.trim_end_matches('/').to_string(),
        crate::config::CgroupDriver::Systemd => expand_slice(parent),
    }
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; anything else is kept.
fn expand_slice(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice").filter(|s| !s.contains('/')) else {
        return slice.to_string();
    };
    if stem == "-" || stem.is_empty() {
        return String::new();
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path.join("/")
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no
/// process can join it: give each level from the hierarchy root down to
/// `dir` its parent's where it has none.
fn inherit_cpuset(dir: &Path, relative: &Path) -> Result<(), CgroupError> {
    let depth = relative.components().count();
    let mut levels: Vec<&Path> = dir.ancestors().take(depth + 1).collect();
    levels.reverse();
    for pair in levels.windows(2) {
        let (parent, child) = (pair[0], pair[1]);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let target = child.join(file);
            let current = std::fs::read_to_string(&target).map_err(io("read", &target))?;
            if current.trim().is_empty() {
                let source = parent.join(file);
                let value = std::fs::read_to_string(&source).map_err(io("read", &source))?;
                std::fs::write(&target, value.trim()).map_err(io("write", &target))?;
            }
        }
    }
    Ok(())
}

/// A cgroup path relative to a hierarchy root: no `..`, no empty path.
fn clean(path: &str) -> Result<PathBuf, CgroupError> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidPath(crate::input::quoted(path)));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(CgroupError::InvalidPath(crate::input::quoted(path)));
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let code = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(u8::try_from(code).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
";

    const UNIFIED: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_is_v1() {
        let h = Hierarchy::from_mountinfo(HYBRID).expect("hierarchy");
        assert_eq!(
            h,
            Hierarchy::V1(vec![
                "/sys/fs/cgroup/cpu,cpuacct".into(),
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/systemd".into(),
            ])
        );
        let dirs = h.dirs("/kubepods/pod1/abc").expect("dirs");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/abc")));
    }

    #[test]
    fn unified_is_v2() {
        let h = Hierarchy::from_mountinfo(UNIFIED).expect("hierarchy");
        assert_eq!(h, Hierarchy::V2("/sys/fs/cgroup".into()));
        assert_eq!(
            h.dirs("a/b").expect("dirs"),
            [PathBuf::from("/sys/fs/cgroup/a/b")]
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        let h = Hierarchy::from_mountinfo(UNIFIED).expect("hierarchy");
        assert!(h.dirs("/kubepods/../../etc").is_err());
        assert!(h.dirs("/").is_err());
        assert!(h.dirs("").is_err());
    }

    #[test]
    fn object_paths_per_driver() {
        use crate::config::CgroupDriver;
        assert_eq!(
            object_path(CgroupDriver::Cgroupfs, "/kubepods/pod1/", "abc"),
            "/kubepods/pod1/abc"
        );
        assert_eq!(
            object_path(
                CgroupDriver::Systemd,
                "kubepods-burstable-pod1.slice",
                "abc"
            ),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-abc.scope"
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
