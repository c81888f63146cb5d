//! The container's mounts: the OCI defaults (proc, dev, sysfs, cgroup),
//! the pod's files (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`) and
//! `/dev/shm`, the termination-message file, and the kubelet's bind mounts
//! with their propagation; ordered so a parent is mounted before what is
//! mounted inside it.
//!
//! In a pod with a user namespace of its own the bind mounts of files and
//! directories (the kubelet's, the pod's files, the termination-message
//! file) are idmapped with the pod's mappings, as containerd does: a file
//! the host's root owns is the container root's own. The OCI runtime makes
//! them with `mount_setattr(MOUNT_ATTR_IDMAP)` (runc >= 1.2), so their
//! filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs, ...).

use std::path::{Component, Path, PathBuf};

use berth_cri_proto::v1 as cri;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount, MountBuilder};

use super::spec::{SpecError, SpecInput, invalid, io};
use crate::input::quoted;
use crate::sandbox::{IdMapping, NamespaceMode, UserNamespace};

/// The annotation the kubelet sets to the container's
/// `terminationMessagePath`.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// The file in the container's directory that backs it when the kubelet
/// does not mount one.
pub const TERMINATION_LOG: &str = "termination-log";

/// Mounts and the root's propagation they need.
#[derive(Debug)]
pub struct Mounts {
    /// In mount order.
    pub mounts: Vec<Mount>,
    /// `rslave` or `rshared` when a mount propagates from or to the host.
    pub rootfs_propagation: Option<String>,
    /// Missing host paths to create as directories, once the whole spec
    /// is known to be valid ([`Mounts::create_missing_sources`]).
    missing: Vec<PathBuf>,
}

impl Mounts {
    /// Creates the missing sources of CRI mounts as directories (like
    /// containerd and Docker: the kubelet's hostPath type "" means exactly
    /// that) and points their mounts at the resolved paths. Called last, so
    /// a refused request creates nothing on the host.
    pub fn create_missing_sources(&mut self) -> Result<(), SpecError> {
        for host in std::mem::take(&mut self.missing) {
            std::fs::create_dir_all(&host).map_err(io("create", &host))?;
            let resolved = std::fs::canonicalize(&host).map_err(io("resolve", &host))?;
            for m in self
                .mounts
                .iter_mut()
                .filter(|m| m.source().as_deref() == Some(host.as_path()))
            {
                m.set_source(Some(resolved.clone()));
            }
        }
        Ok(())
    }
}

/// The mounts of the spec.
pub fn build(input: &SpecInput<'_>, privileged: bool) -> Result<Mounts, SpecError> {
    let config = input.config;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);

    let mut rootfs_propagation: Option<&str> = None;
    let mut cri_mounts = Vec::new();
    let mut destinations = Vec::new();
    let mut missing = Vec::new();
    let userns = input.sandbox.user_namespace.as_ref();
    for (i, m) in config.mounts.iter().enumerate() {
        let (mount, absent) = cri_mount(i, m, &mut rootfs_propagation, userns)?;
        missing.extend(absent);
        if destinations.contains(mount.destination()) {
            return Err(invalid(
                format!("config.mounts[{i}].container_path"),
                format!("{} is mounted twice", mount.destination().display()),
            ));
        }
        destinations.push(mount.destination().clone());
        cri_mounts.push(mount);
    }
    let taken = |dest: &Path| destinations.iter().any(|d| d == dest);

    let mut extra = Vec::new();
    let sandbox = input.sandbox;
    let files_mode = if readonly_rootfs { "ro" } else { "rw" };
    for (dest, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
        ("/etc/hostname", "hostname"),
    ] {
        let source = sandbox.dir.join(file);
        if !taken(Path::new(dest)) && source.exists() {
            let mut mount = bind(dest, source, &["rbind", "rprivate", files_mode])?;
            idmap(&mut mount, userns)?;
            extra.push(mount);
        }
    }
    if !taken(Path::new("/dev/shm")) {
        let shm = if sandbox.namespaces.ipc == NamespaceMode::Node {
            Some(PathBuf::from("/dev/shm"))
        } else {
            sandbox.shm_dir()
        };
        if let Some(shm) = shm {
            extra.push(bind("/dev/shm", shm, &["rbind", "rprivate", "rw"])?);
        }
    }
    if let Some(path) = config.annotations.get(TERMINATION_MESSAGE_PATH) {
        let dest = clean(path).filter(|p| p.is_absolute()).ok_or_else(|| {
            invalid(
                format!("config.annotations[{TERMINATION_MESSAGE_PATH:?}]"),
                format!("{} is not an absolute path", quoted(path)),
            )
        })?;
        if !taken(&dest) {
            let source = input.container_dir.join(TERMINATION_LOG);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&source)
                .map_err(io("create", &source))?;
            let mut mount = bind(dest, source, &["rbind", "rprivate", "rw"])?;
            idmap(&mut mount, userns)?;
            extra.push(mount);
        }
    }

    let all_taken = |dest: &Path| taken(dest) || extra.iter().any(|m| m.destination() == dest);
    // A mount of the whole /dev replaces the default ones inside it.
    let dev_replaced = taken(Path::new("/dev"));
    let mut mounts: Vec<Mount> = default_mounts(privileged)?
        .into_iter()
        .filter(|m| !all_taken(m.destination()))
        .filter(|m| !(dev_replaced && m.destination().starts_with("/dev")))
        .collect();
    mounts.extend(extra);
    mounts.extend(cri_mounts);
    // Stable: a parent has fewer components than anything inside it.
    mounts.sort_by_key(|m| m.destination().components().count());
    Ok(Mounts {
        mounts,
        rootfs_propagation: rootfs_propagation.map(String::from),
        missing,
    })
}

/// One of the kubelet's bind mounts.
fn cri_mount(
    i: usize,
    m: &cri::Mount,
    rootfs_propagation: &mut Option<&'static str>,
    userns: Option<&UserNamespace>,
) -> Result<(Mount, Option<PathBuf>), SpecError> {
    let field = |name: &str| format!("config.mounts[{i}].{name}");
    let dest = clean(&m.container_path)
        .filter(|p| p.is_absolute() && p != Path::new("/"))
        .ok_or_else(|| {
            invalid(
                field("container_path"),
                format!(
                    "{} is not an absolute path below /",
                    quoted(&m.container_path)
                ),
            )
        })?;
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(invalid(field("image"), "image volumes are not supported"));
    }
    // The kubelet's own mappings for this mount, else the pod's.
    let mappings = match (
        userns,
        m.uid_mappings.is_empty() && m.gid_mappings.is_empty(),
    ) {
        (None, true) => None,
        (None, false) => {
            return Err(invalid(
                field("uid_mappings"),
                "ID-mapped mounts need a user namespace of the pod \
                 (userns_options.mode POD), and this pod has none",
            ));
        }
        (Some(userns), true) => Some((
            vec![oci_mapping(&userns.uid)?],
            vec![oci_mapping(&userns.gid)?],
        )),
        (Some(_), false) => Some((
            mount_mappings(&field("uid_mappings"), &m.uid_mappings)?,
            mount_mappings(&field("gid_mappings"), &m.gid_mappings)?,
        )),
    };
    let host = Path::new(&m.host_path);
    if !host.is_absolute() {
        return Err(invalid(
            field("host_path"),
            format!("{} is not an absolute path", quoted(&m.host_path)),
        ));
    }
    // A missing source is created as a directory, but only once the whole
    // request is valid (`Mounts::create_missing_sources`); a symlink to
    // nothing is an error.
    let (source, absent) = match std::fs::symlink_metadata(host) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let path = clean(&m.host_path).unwrap_or_else(|| host.to_path_buf());
            (path.clone(), Some(path))
        }
        _ => match std::fs::canonicalize(host) {
            Ok(source) => (source, None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::NotFound(format!(
                    "{}: {} leads to nothing (a dangling symlink)",
                    field("host_path"),
                    quoted(&m.host_path)
                )));
            }
            Err(e) => return Err(io("resolve", host)(e)),
        },
    };

    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
        Ok(cri::MountPropagation::PropagationHostToContainer) => {
            if *rootfs_propagation != Some("rshared") {
                *rootfs_propagation = Some("rslave");
            }
            "rslave"
        }
        Ok(cri::MountPropagation::PropagationBidirectional) => {
            *rootfs_propagation = Some("rshared");
            "rshared"
        }
        Err(_) => {
            return Err(invalid(
                field("propagation"),
                format!("unknown propagation {}", m.propagation),
            ));
        }
    };
    let mut options = vec!["rbind", propagation, if m.readonly { "ro" } else { "rw" }];
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(
                field("recursive_read_only"),
                "needs readonly to be set too",
            ));
        }
        if propagation != "rprivate" {
            return Err(invalid(
                field("recursive_read_only"),
                "needs PROPAGATION_PRIVATE",
            ));
        }
        options.push("rro");
    }
    let mut mount = bind(dest, source, &options)?;
    if let Some((uids, gids)) = mappings {
        mount.set_uid_mappings(Some(uids));
        mount.set_gid_mappings(Some(gids));
    }
    Ok((mount, absent))
}

/// Idmaps a bind mount with the pod's mappings, when it has a user
/// namespace.
fn idmap(mount: &mut Mount, userns: Option<&UserNamespace>) -> Result<(), SpecError> {
    if let Some(userns) = userns {
        mount.set_uid_mappings(Some(vec![oci_mapping(&userns.uid)?]));
        mount.set_gid_mappings(Some(vec![oci_mapping(&userns.gid)?]));
    }
    Ok(())
}

fn oci_mapping(m: &IdMapping) -> Result<LinuxIdMapping, SpecError> {
    Ok(LinuxIdMappingBuilder::default()
        .container_id(m.container_id)
        .host_id(m.host_id)
        .size(m.length)
        .build()?)
}

/// A mount's own mappings from the CRI (both lists must be given).
fn mount_mappings(field: &str, list: &[cri::IdMapping]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    if list.is_empty() {
        return Err(invalid(
            field,
            "is empty while the other list of ID mappings is not: an idmapped mount needs both",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(j, m)| {
            if m.length == 0 {
                return Err(invalid(format!("{field}[{j}].length"), "is 0"));
            }
            oci_mapping(&IdMapping {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
        })
        .collect()
}

/// `path` without `.`, `//` and a trailing `/`; `None` with `..`.
fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn bind(
    dest: impl Into<PathBuf>,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn kernel(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The mounts every container has (those of containerd's CRI, which
/// leaves out `/run`).
fn default_mounts(privileged: bool) -> Result<Vec<Mount>, SpecError> {
    let sys = if privileged { "rw" } else { "ro" };
    Ok(vec![
        kernel("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        kernel(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        kernel(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        kernel(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        kernel(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        kernel(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys],
        )?,
        kernel(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::tests::{World, config, sc};

    fn find<'a>(mounts: &'a [Mount], dest: &str) -> Option<&'a Mount> {
        mounts.iter().find(|m| m.destination() == Path::new(dest))
    }

    fn options(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn mounts(world: &World, c: &cri::ContainerConfig) -> Vec<Mount> {
        world
            .build(c)
            .expect("spec")
            .mounts()
            .clone()
            .expect("mounts")
    }

    fn host_mount(host: &Path, dest: &str) -> cri::Mount {
        cri::Mount {
            container_path: dest.into(),
            host_path: host.to_string_lossy().into_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_pod_files_and_shm() {
        let world = World::new();
        for file in ["hosts", "resolv.conf", "hostname"] {
            std::fs::write(world.sandbox.dir.join(file), "x\n").expect("write");
        }
        let all = mounts(&world, &config());
        for dest in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(find(&all, dest).is_some(), "{dest}");
        }
        assert!(find(&all, "/run").is_none());
        assert!(options(find(&all, "/sys").expect("sys")).contains(&"ro".to_string()));
        let hosts = find(&all, "/etc/hosts").expect("hosts");
        assert_eq!(
            hosts.source().as_deref(),
            Some(world.sandbox.dir.join("hosts").as_path())
        );
        assert_eq!(options(hosts), vec!["rbind", "rprivate", "rw"]);
        let shm = find(&all, "/dev/shm").expect("shm");
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(shm.source(), &world.sandbox.shm_dir());

        let mut c = config();
        sc(&mut c).readonly_rootfs = true;
        let all = mounts(&world, &c);
        assert_eq!(
            options(find(&all, "/etc/resolv.conf").expect("resolv")),
            vec!["rbind", "rprivate", "ro"]
        );
        let spec = world.build(&c).expect("spec");
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
    }

    #[test]
    fn host_ipc_gets_the_hosts_shm_and_missing_pod_files_are_skipped() {
        let mut world = World::new();
        world.sandbox.namespaces.ipc = NamespaceMode::Node;
        let all = mounts(&world, &config());
        let shm = find(&all, "/dev/shm").expect("shm");
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
        assert!(find(&all, "/etc/hosts").is_none());
    }

    #[test]
    fn kubelet_mounts_win_and_are_ordered() {
        let world = World::new();
        std::fs::write(world.sandbox.dir.join("hosts"), "x\n").expect("write");
        let base = tempfile::tempdir().expect("tempdir");
        let hosts = base.path().join("etc-hosts");
        std::fs::write(&hosts, "y\n").expect("write");
        let mut c = config();
        c.mounts = vec![
            host_mount(&base.path().join("inner"), "/data/inner"),
            host_mount(&base.path().join("data"), "/data/"),
            host_mount(&hosts, "/etc/hosts"),
        ];
        let all = mounts(&world, &c);
        let position = |dest: &str| {
            all.iter()
                .position(|m| m.destination() == Path::new(dest))
                .expect(dest)
        };
        assert!(position("/data") < position("/data/inner"));
        assert!(position("/dev") < position("/dev/pts"));
        assert_eq!(
            all.iter()
                .filter(|m| m.destination() == Path::new("/etc/hosts"))
                .count(),
            1
        );
        assert_eq!(
            find(&all, "/etc/hosts").and_then(|m| m.source().clone()),
            Some(hosts)
        );
        // Missing sources are created as directories.
        assert!(base.path().join("inner").is_dir());
    }

    #[test]
    fn propagation_readonly_and_rro() {
        let world = World::new();
        let base = tempfile::tempdir().expect("tempdir");
        let mut c = config();
        let mut m = host_mount(base.path(), "/a");
        m.readonly = true;
        m.recursive_read_only = true;
        let mut slave = host_mount(base.path(), "/b");
        slave.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
        c.mounts = vec![m.clone(), slave.clone()];
        let spec = world.build(&c).expect("spec");
        let all = spec.mounts().clone().expect("mounts");
        assert_eq!(
            options(find(&all, "/a").expect("a")),
            vec!["rbind", "rprivate", "ro", "rro"]
        );
        assert_eq!(
            options(find(&all, "/b").expect("b")),
            vec!["rbind", "rslave", "rw"]
        );
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("rslave"));

        let mut shared = host_mount(base.path(), "/c");
        shared.propagation = cri::MountPropagation::PropagationBidirectional as i32;
        c.mounts = vec![slave, shared];
        let spec = world.build(&c).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("rshared"));

        m.readonly = false;
        c.mounts = vec![m.clone()];
        assert!(world.build(&c).is_err(), "rro needs ro");
        m.readonly = true;
        m.propagation = cri::MountPropagation::PropagationBidirectional as i32;
        c.mounts = vec![m];
        let err = world.build(&c).expect_err("rro needs private");
        assert!(
            err.to_string()
                .contains("config.mounts[0].recursive_read_only"),
            "{err}"
        );
    }

    #[test]
    fn symlinked_sources_are_resolved() {
        let world = World::new();
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(base.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(base.path().join("real"), base.path().join("link"))
            .expect("symlink");
        let mut c = config();
        c.mounts = vec![host_mount(&base.path().join("link"), "/x")];
        let all = mounts(&world, &c);
        let real = std::fs::canonicalize(base.path().join("real")).expect("canonicalize");
        assert_eq!(
            find(&all, "/x").and_then(|m| m.source().clone()),
            Some(real)
        );
    }

    #[test]
    fn bad_mounts_are_named() {
        let world = World::new();
        let base = tempfile::tempdir().expect("tempdir");
        for (dest, host) in [
            ("rel", base.path()),
            ("/x/../y", base.path()),
            ("/", base.path()),
            ("/x", Path::new("rel")),
        ] {
            let mut c = config();
            c.mounts = vec![host_mount(host, dest)];
            let err = world.build(&c).expect_err(dest);
            assert!(err.to_string().starts_with("config.mounts[0]."), "{err}");
        }
        let mut c = config();
        c.mounts = vec![
            host_mount(base.path(), "/x"),
            host_mount(base.path(), "/x/"),
        ];
        assert!(world.build(&c).is_err(), "duplicate destination");
    }

    #[test]
    fn privileged_mounts_sysfs_rw() {
        let mut world = World::new();
        world.sandbox.privileged = true;
        let mut c = config();
        sc(&mut c).privileged = true;
        let all = mounts(&world, &c);
        assert!(options(find(&all, "/sys").expect("sys")).contains(&"rw".to_string()));
        assert!(options(find(&all, "/sys/fs/cgroup").expect("cgroup")).contains(&"rw".to_string()));
    }

    #[test]
    fn termination_message_file() {
        let world = World::new();
        let mut c = config();
        c.annotations.insert(
            TERMINATION_MESSAGE_PATH.into(),
            "/dev/termination-log".into(),
        );
        let all = mounts(&world, &c);
        let source = world.dir.path().join("container").join(TERMINATION_LOG);
        assert_eq!(
            find(&all, "/dev/termination-log").and_then(|m| m.source().clone()),
            Some(source.clone())
        );
        assert!(source.is_file());
        // The kubelet's own mount of it wins.
        c.mounts = vec![host_mount(
            &world.dir.path().join("kubelet-log"),
            "/dev/termination-log",
        )];
        let all = mounts(&world, &c);
        assert_eq!(
            all.iter()
                .filter(|m| m.destination() == Path::new("/dev/termination-log"))
                .count(),
            1
        );
    }

    /// `(container_id, host_id, size)` of each mapping.
    type Ranges = Vec<(u32, u32, u32)>;

    fn mapping(m: &Mount) -> Option<(Ranges, Ranges)> {
        let list = |l: &Option<Vec<LinuxIdMapping>>| {
            l.as_ref().map(|l| {
                l.iter()
                    .map(|m| (m.container_id(), m.host_id(), m.size()))
                    .collect::<Vec<_>>()
            })
        };
        Some((list(m.uid_mappings())?, list(m.gid_mappings())?))
    }

    #[test]
    fn bind_mounts_are_idmapped_in_a_pod_user_namespace() {
        let mut world = World::new();
        let (uid, gid) = (
            IdMapping {
                container_id: 0,
                host_id: 100000,
                length: 65536,
            },
            IdMapping {
                container_id: 0,
                host_id: 200000,
                length: 1000,
            },
        );
        world.sandbox.user_namespace = Some(UserNamespace { uid, gid });
        std::fs::write(world.sandbox.dir.join("hosts"), "x\n").expect("write");
        let base = tempfile::tempdir().expect("tempdir");
        let mut c = config();
        c.annotations.insert(
            TERMINATION_MESSAGE_PATH.into(),
            "/dev/termination-log".into(),
        );
        let mut own = host_mount(&base.path().join("own"), "/own");
        own.uid_mappings = vec![cri::IdMapping {
            container_id: 0,
            host_id: 5000,
            length: 10,
        }];
        own.gid_mappings = own.uid_mappings.clone();
        c.mounts = vec![host_mount(&base.path().join("data"), "/data"), own];
        let all = mounts(&world, &c);
        let pods = Some((vec![(0, 100000, 65536)], vec![(0, 200000, 1000)]));
        for dest in ["/data", "/etc/hosts", "/dev/termination-log"] {
            let m = find(&all, dest).unwrap_or_else(|| panic!("{dest}"));
            assert_eq!(mapping(m), pods, "{dest}");
        }
        let own = find(&all, "/own").expect("/own");
        assert_eq!(
            mapping(own),
            Some((vec![(0, 5000, 10)], vec![(0, 5000, 10)])),
            "the kubelet's own mappings win"
        );
        for dest in ["/proc", "/sys", "/dev/shm"] {
            let m = find(&all, dest).unwrap_or_else(|| panic!("{dest}"));
            assert_eq!(mapping(m), None, "{dest}");
        }

        // Half a mapping is refused, naming the empty list.
        let mut half = host_mount(&base.path().join("half"), "/half");
        half.uid_mappings = vec![cri::IdMapping {
            container_id: 0,
            host_id: 5000,
            length: 10,
        }];
        c.mounts = vec![half.clone()];
        let e = world.build(&c).expect_err("half").to_string();
        assert!(
            e.starts_with("config.mounts[0].gid_mappings: is empty"),
            "{e}"
        );

        // Without a user namespace, no mount is idmapped and the kubelet's
        // mappings are refused.
        world.sandbox.user_namespace = None;
        c.mounts = vec![host_mount(&base.path().join("data"), "/data")];
        let all = mounts(&world, &c);
        assert!(all.iter().all(|m| mapping(m).is_none()));
        half.gid_mappings = half.uid_mappings.clone();
        c.mounts = vec![half];
        let e = world.build(&c).expect_err("no userns").to_string();
        assert!(e.starts_with("config.mounts[0].uid_mappings: "), "{e}");
    }
}
