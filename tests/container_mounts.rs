//! A container's mounts and devices end to end, through a real berthd,
//! berth-shim and runc: CRI bind mounts read-write, read-only and
//! recursively read-only, their propagation (private, rslave, rshared) as
//! mounts made later on either side show it, host-path symlinks resolved,
//! a missing source created as containerd does, a source that cannot be
//! reached refused; a read-only root filesystem; host devices with their
//! cgroup permissions.
//!
//! Needs root. The test's host mounts live in a temporary directory and
//! are unmounted even when an assertion fails.

mod support;

use std::path::{Path, PathBuf};

use berth_cri_proto::v1::*;
use nix::mount::{MntFlags, MsFlags};
use support::container::{TestPod, pod_config};
use tonic::Code;

/// A temporary directory on the host and the mounts the test made in it,
/// unmounted (last first) on drop.
struct HostDir {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl HostDir {
    fn new() -> HostDir {
        HostDir {
            dir: tempfile::Builder::new()
                .prefix("berth-mounts-")
                .tempdir()
                .expect("temp dir"),
            mounts: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
        path
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    /// Mounts a tmpfs on `rel`.
    fn tmpfs(&mut self, rel: &str) {
        let path = self.path(rel);
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {rel}: {e}"));
        self.mounts.push(path);
    }

    /// Makes `rel` a mount point of its own in a shared peer group, so
    /// mounts under it propagate to its bind mounts.
    fn shared(&mut self, rel: &str) {
        let path = self.path(rel);
        nix::mount::mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind {rel} on itself: {e}"));
        self.mounts.push(path.clone());
        nix::mount::mount(
            None::<&str>,
            &path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("make {rel} shared: {e}"));
    }

    /// Mounts of the host under the directory, from /proc/mounts.
    fn mounted(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/mounts")
            .expect("read /proc/mounts")
            .lines()
            .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&dir)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        for path in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        }
    }
}

fn mount(container: &str, host: &Path) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    }
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

#[tokio::test]
async fn bind_mounts_propagation_readonly_rootfs_and_devices() {
    if !support::root_tests("bind_mounts_propagation_readonly_rootfs_and_devices") {
        return;
    }
    let mut host = HostDir::new();
    let data = host.mkdir("data");
    host.write("data/hello", "hello\n");
    host.mkdir("data/sub");
    host.tmpfs("data/sub");
    let prop = host.mkdir("prop");
    host.shared("prop");
    host.mkdir("prop/later");
    host.mkdir("prop/inner");
    let link = host.path("link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink link -> data");
    let missing = host.path("missing/dir");

    let (_registry, image, berthd) = support::berthd_with_busybox("berth/mounts").await;
    let mut config = pod_config("mnt", "binds");
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let mut pod = TestPod::run(&berthd, &image, config).await;

    let mut config = pod.container("binds", &["sleep", "3600"]);
    config.mounts = vec![
        mount("/rw", &data),
        Mount {
            readonly: true,
            ..mount("/ro", &data)
        },
        Mount {
            readonly: true,
            recursive_read_only: true,
            ..mount("/rro", &data)
        },
        Mount {
            readonly: true,
            ..mount("/linked", &link)
        },
        Mount {
            propagation: MountPropagation::PropagationPrivate as i32,
            ..mount("/private", &prop)
        },
        Mount {
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..mount("/slave", &prop)
        },
        mount("/created", &missing),
    ];
    config.devices = vec![
        Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        },
        // Not one of the devices runc always allows (null, zero, …),
        // so its cgroup rule is the one asked for. Reading an unbound
        // loop device gives nothing; writing to it is never attempted.
        Device {
            container_path: "/dev/myloop".into(),
            host_path: "/dev/loop7".into(),
            permissions: "r".into(),
        },
    ];
    let binds = pod.start(config).await;
    // Bidirectional propagation needs a privileged container to mount.
    let mut config = pod.container("bidi", &["sleep", "3601"]);
    config.mounts = vec![Mount {
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..mount("/shared", &prop)
    }];
    security(&mut config).privileged = true;
    let bidi = pod.start(config).await;
    let mut config = pod.container("rootfs", &["sleep", "3602"]);
    config.mounts = vec![mount("/rw", &data)];
    security(&mut config).readonly_rootfs = true;
    let rootfs = pod.start(config).await;

    // Read-write, read-only, recursively read-only.
    assert_eq!(
        pod.sh(&binds, "cat /rw/hello /ro/hello").await,
        "hello\nhello\n"
    );
    pod.sh(&binds, "echo new > /rw/new").await;
    assert_eq!(
        std::fs::read_to_string(data.join("new")).expect("written through /rw"),
        "new\n"
    );
    let err = pod.sh_fails(&binds, "touch /ro/x").await;
    assert!(err.contains("Read-only file system"), "{err}");
    // A read-only mount leaves the mounts below it writable…
    pod.sh(&binds, "touch /ro/sub/through-ro").await;
    assert!(data.join("sub/through-ro").exists());
    // …a recursively read-only one does not.
    assert_eq!(pod.sh(&binds, "ls /rro/sub").await, "through-ro\n");
    let err = pod.sh_fails(&binds, "touch /rro/sub/x").await;
    assert!(err.contains("Read-only file system"), "{err}");
    let err = pod.sh_fails(&binds, "touch /rro/x").await;
    assert!(err.contains("Read-only file system"), "{err}");
    // The symlink is resolved on the host: the mount is its target.
    assert_eq!(pod.sh(&binds, "cat /linked/hello").await, "hello\n");
    // A missing source is created as a directory (containerd's rule for
    // hostPath type "").
    assert!(missing.is_dir(), "{} was not created", missing.display());
    pod.sh(&binds, "touch /created/file").await;
    assert!(missing.join("file").exists());

    // ContainerStatus reports the mounts as asked.
    let status = pod.status(&binds).await;
    let reported: Vec<(&str, bool, i32)> = status
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.readonly, m.propagation))
        .collect();
    assert!(
        reported.contains(&("/ro", true, MountPropagation::PropagationPrivate as i32))
            && reported.contains(&(
                "/slave",
                false,
                MountPropagation::PropagationHostToContainer as i32
            ))
            && reported.len() == 7,
        "{reported:?}"
    );

    // Propagation: a mount made on the host after the start reaches the
    // rslave and rshared mounts, not the private one…
    host.tmpfs("prop/later");
    host.write("prop/later/marker", "late\n");
    assert_eq!(pod.sh(&binds, "cat /slave/later/marker").await, "late\n");
    assert_eq!(pod.sh(&bidi, "cat /shared/later/marker").await, "late\n");
    assert_eq!(pod.sh(&binds, "ls -A /private/later").await, "");
    // …and one made in the container under the rshared mount reaches the
    // host.
    let inner = host.path("prop/inner");
    host.mounts.push(inner.clone());
    pod.sh(
        &bidi,
        "mount -t tmpfs -o size=1m tmpfs /shared/inner && echo up > /shared/inner/from-container",
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(inner.join("from-container")).expect("propagated to the host"),
        "up\n"
    );

    // Devices: the node as given, the access its permissions allow.
    assert_eq!(
        pod.sh(&binds, "stat -c '%t,%T %F' /dev/mynull /dev/myloop")
            .await,
        "1,3 character special file\n7,7 block special file\n"
    );
    pod.sh(&binds, "echo discard > /dev/mynull").await;
    pod.sh(&binds, "head -c 1 /dev/myloop > /dev/null").await;
    let err = pod.sh_fails(&binds, "echo x > /dev/myloop").await;
    assert!(err.contains("Operation not permitted"), "{err}");
    // Devices not asked for are not reachable.
    // (runc lets any node be made, not opened.)
    let err = pod
        .sh_fails(&binds, "mknod /tmp/loop b 7 6 && head -c 1 /tmp/loop")
        .await;
    assert!(err.contains("Operation not permitted"), "{err}");

    // Read-only root filesystem: the rootfs and the pod's files are
    // read-only, /dev/shm and a read-write mount are not.
    let err = pod.sh_fails(&rootfs, "touch /x").await;
    assert!(err.contains("Read-only file system"), "{err}");
    let err = pod
        .sh_fails(&rootfs, "echo 127.0.0.2 x >> /etc/hosts")
        .await;
    assert!(err.contains("Read-only file system"), "{err}");
    pod.sh(&rootfs, "touch /dev/shm/x /rw/from-rootfs").await;
    assert!(data.join("from-rootfs").exists());
    pod.sh(&binds, "touch /x").await;

    pod.remove().await;
    drop(berthd);
    // Only the test's own host mounts are left under its directory…
    let mut left: Vec<PathBuf> = host
        .mounted()
        .iter()
        .filter_map(|l| l.split(' ').nth(1).map(PathBuf::from))
        .collect();
    let mut own = host.mounts.clone();
    left.sort();
    own.sort();
    assert_eq!(left, own, "host mounts under the test's directory");
    // …and none once it removed them.
    let dir = host.path("").display().to_string();
    drop(host);
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(!mounts.contains(&dir), "mounts left under {dir}");
}

#[tokio::test]
async fn unreachable_mount_sources_and_devices_are_refused() {
    if !support::root_tests("unreachable_mount_sources_and_devices_are_refused") {
        return;
    }
    let host = HostDir::new();
    let dangling = host.path("dangling");
    std::os::unix::fs::symlink(host.path("nowhere"), &dangling).expect("dangling symlink");
    host.write("file", "x\n");

    let (_registry, image, berthd) = support::berthd_with_busybox("berth/mounts-bad").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("mnt", "bad")).await;
    let mut refuse = async |name: &str,
                            mounts: Vec<Mount>,
                            devices: Vec<Device>,
                            code: Option<Code>,
                            words: &[&str]| {
        let mut config = pod.container(name, &["true"]);
        config.mounts = mounts;
        config.devices = devices;
        let err = pod.create(config).await.expect_err(name);
        if let Some(code) = code {
            assert_eq!(err.code(), code, "{name}: {}", err.message());
        }
        for word in words {
            assert!(
                err.message().contains(word),
                "{name}: {word:?} not in {:?}",
                err.message()
            );
        }
    };
    let dangling_text = dangling.display().to_string();
    refuse(
        "dangling",
        vec![mount("/data", &dangling)],
        vec![],
        Some(Code::NotFound),
        &[&dangling_text, "dangling symlink"],
    )
    .await;
    refuse(
        "relative",
        vec![Mount {
            container_path: "/data".into(),
            host_path: "relative/path".into(),
            ..Default::default()
        }],
        vec![],
        Some(Code::InvalidArgument),
        &["config.mounts[0].host_path"],
    )
    .await;
    refuse(
        "rro-needs-ro",
        vec![Mount {
            recursive_read_only: true,
            ..mount("/data", &host.path("file"))
        }],
        vec![],
        Some(Code::InvalidArgument),
        &["config.mounts[0].recursive_read_only"],
    )
    .await;
    refuse(
        "twice",
        vec![
            mount("/data", &host.path("file")),
            mount("/data/", &host.path("file")),
        ],
        vec![],
        Some(Code::InvalidArgument),
        &["config.mounts[1].container_path"],
    )
    .await;
    refuse(
        "no-device",
        vec![],
        vec![Device {
            container_path: "/dev/nope".into(),
            host_path: "/dev/berth-no-such-device".into(),
            permissions: "rw".into(),
        }],
        Some(Code::NotFound),
        &["/dev/berth-no-such-device", "config.devices[0]"],
    )
    .await;
    refuse(
        "not-a-device",
        vec![],
        vec![Device {
            container_path: "/dev/file".into(),
            host_path: host.path("file").display().to_string(),
            permissions: "rw".into(),
        }],
        Some(Code::InvalidArgument),
        &["config.devices[0].host_path", "not a device"],
    )
    .await;
    refuse(
        "bad-permissions",
        vec![],
        vec![Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwx".into(),
        }],
        Some(Code::InvalidArgument),
        &["config.devices[0].permissions"],
    )
    .await;
    pod.assert_only_containers(&[]).await;
    assert!(
        !host.path("nowhere").exists(),
        "a dangling target was created"
    );
    pod.remove().await;
}

/// A host path whose symlink leads nowhere names a missing object:
/// NotFound, naming the field.
#[tokio::test]
async fn a_dangling_mount_source_is_not_found() {
    if !support::root_tests("a_dangling_mount_source_is_not_found") {
        return;
    }
    let host = HostDir::new();
    let dangling = host.path("dangling");
    std::os::unix::fs::symlink(host.path("nowhere"), &dangling).expect("dangling symlink");
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/mounts-dangling").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("mnt", "dangling")).await;
    let mut config = pod.container("dangling", &["true"]);
    config.mounts = vec![mount("/data", &dangling)];
    let err = pod.create(config).await.expect_err("dangling source");
    let message = err.message().to_string();
    pod.assert_only_containers(&[]).await;
    pod.remove().await;
    assert_eq!(err.code(), Code::NotFound, "{message}");
    assert!(
        message.contains("config.mounts[0].host_path")
            && message.contains(&dangling.display().to_string()),
        "{message}"
    );
}

/// A refused CreateContainer leaves nothing behind, on the host either:
/// a missing source is only created once the whole config is accepted.
#[tokio::test]
async fn a_refused_create_leaves_no_created_source() {
    if !support::root_tests("a_refused_create_leaves_no_created_source") {
        return;
    }
    let host = HostDir::new();
    let missing = host.path("missing/dir");
    let (_registry, image, berthd) = support::berthd_with_busybox("berth/mounts-left").await;
    let mut pod = TestPod::run(&berthd, &image, pod_config("mnt", "left")).await;
    let mut config = pod.container("refused", &["true"]);
    config.mounts = vec![
        mount("/created", &missing),
        Mount {
            container_path: "/data".into(),
            host_path: "relative/path".into(),
            ..Default::default()
        },
    ];
    let err = pod.create(config).await.expect_err("relative host path");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    pod.assert_only_containers(&[]).await;
    pod.remove().await;
    assert!(!missing.exists(), "{} was left", missing.display());
}
