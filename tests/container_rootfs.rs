//! A container root filesystem is an overlay of image snapshots with a
//! writable layer of its own: the merged view, writes landing in the upper
//! dir, whiteouts hiding lower files, and a clean unmount. Needs root.

mod support;

use berthd::container::rootfs::{mount_rootfs, mountpoint, unmount_rootfs};

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

    let root = mount_rootfs(&dir, &[top.clone(), base.clone()]).expect("mount");
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
