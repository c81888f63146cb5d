//! A container root filesystem is an overlay of image snapshots with a
//! writable layer of its own: the merged view, writes landing in the upper
//! dir, whiteouts hiding lower files, and a clean unmount; in a pod with a
//! user namespace, layers seen through the pod's ID mappings. Needs root.

mod support;

use std::os::unix::fs::MetadataExt;

use berthd::container::rootfs::{RootfsIdmap, mount_rootfs, mountpoint, unmount_rootfs};

#[test]
fn overlay_of_snapshots_with_a_private_upper_layer() {
    if !support::root_tests("overlay_of_snapshots_with_a_private_upper_layer") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("snapshots/1/fs");
    let top = tmp.path().join("snapshots/2/fs");
    std::fs::create_dir_all(base.join("etc")).expect("base");
    std::fs::create_dir_all(&top).expect("top");
    std::fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("passwd");
    std::fs::write(base.join("old"), "base").expect("old");
    std::fs::write(top.join("old"), "top").expect("shadowing file");
    let dir = tmp.path().join("containers/c1");

    let root = mount_rootfs(&dir, &[top.clone(), base.clone()], None).expect("mount");
    assert_eq!(root, mountpoint(&dir));
    assert_eq!(
        std::fs::read_to_string(root.join("old")).expect("read"),
        "top",
        "top layer wins"
    );
    assert!(root.join("etc/passwd").exists(), "base layer visible");
    std::fs::write(root.join("new"), "written").expect("write in container");
    std::fs::remove_file(root.join("etc/passwd")).expect("delete lower file");
    assert_eq!(
        std::fs::read_to_string(dir.join("fs/new")).expect("upper"),
        "written"
    );
    assert!(
        base.join("etc/passwd").exists(),
        "lower layers are never written"
    );

    unmount_rootfs(&dir).expect("unmount");
    unmount_rootfs(&dir).expect("unmount again is fine");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(&root.display().to_string()),
        "overlay left mounted"
    );
}

/// A process in a new user namespace, killed and reaped when dropped.
struct UserNamespaceHolder(std::process::Child);

impl Drop for UserNamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn layers_are_idmapped_for_a_pod_user_namespace() {
    if !support::root_tests("layers_are_idmapped_for_a_pod_user_namespace") {
        return;
    }
    let holder = UserNamespaceHolder(
        std::process::Command::new(support::require_binary("unshare"))
            .args(["--user", "sleep", "60"])
            .spawn()
            .expect("unshare (util-linux) starts"),
    );
    let pid = holder.0.id();
    let userns = std::path::PathBuf::from(format!("/proc/{pid}/ns/user"));
    let ours = std::fs::metadata("/proc/self/ns/user").expect("ours").ino();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&userns).map(|m| m.ino()).unwrap_or(ours) == ours {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare --user did not"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Written by us, as berth-pause's parent does.
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 200000 65536\n").expect("uid_map");
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 300000 65536\n").expect("gid_map");

    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("snapshots/1/fs");
    std::fs::create_dir_all(base.join("etc")).expect("base");
    std::fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("passwd");
    std::os::unix::fs::chown(base.join("etc/passwd"), Some(0), Some(0)).expect("chown");
    std::fs::write(base.join("nobody-file"), "x").expect("file");
    std::os::unix::fs::chown(base.join("nobody-file"), Some(1000), Some(1000)).expect("chown");
    let dir = tmp.path().join("containers/c1");

    let idmap = RootfsIdmap {
        userns: &userns,
        root_uid: 200000,
        root_gid: 300000,
    };
    let root = mount_rootfs(&dir, std::slice::from_ref(&base), Some(idmap)).expect("mount");
    let owner = |p: &std::path::Path| {
        let m = std::fs::metadata(p).expect("stat");
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&root), (200000, 300000), "the pod's root owns /");
    assert_eq!(owner(&root.join("etc/passwd")), (200000, 300000));
    assert_eq!(owner(&root.join("nobody-file")), (201000, 301000));
    assert_eq!(owner(&base.join("etc/passwd")), (0, 0), "layers unchanged");
    assert!(
        !dir.join("idmapped").exists(),
        "the idmapped layer mounts are detached once the overlay holds them"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.contains(&dir.display().to_string()))
            .count(),
        1,
        "only the overlay is mounted: {mounts}"
    );

    unmount_rootfs(&dir).expect("unmount");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&dir.display().to_string()), "left mounted");

    // An idmapped layer a crash left attached is detached with the rootfs,
    // so removing the container dir cannot reach into the shared layer.
    let stale = dir.join("idmapped/0");
    std::fs::create_dir_all(&stale).expect("stale dir");
    let status = std::process::Command::new(support::require_binary("mount"))
        .args(["--bind"])
        .arg(&base)
        .arg(&stale)
        .status()
        .expect("mount --bind");
    assert!(status.success());
    unmount_rootfs(&dir).expect("unmount with a stale layer");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(&stale.display().to_string()),
        "stale layer"
    );
    std::fs::remove_dir_all(&dir).expect("remove the container dir");
    assert!(base.join("etc/passwd").exists(), "the layer is untouched");

    // A user namespace that is not there fails cleanly, leaving nothing
    // mounted.
    let dir2 = tmp.path().join("containers/c2");
    let gone = tmp.path().join("no-such-userns");
    let e = mount_rootfs(
        &dir2,
        std::slice::from_ref(&base),
        Some(RootfsIdmap {
            userns: &gone,
            ..idmap
        }),
    )
    .expect_err("no user namespace");
    assert!(e.to_string().contains("no-such-userns"), "{e}");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&dir2.display().to_string()));
}
