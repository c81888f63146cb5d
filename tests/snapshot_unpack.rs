//! Unpacking layers into overlay snapshots, as root: whiteouts that a real
//! overlay mount honours, metadata kept, every compression, diff ID checks,
//! cancellation, and hostile layers that try to write outside the snapshot.
//!
//! Every hostile test aims at a directory it owns outside the snapshot
//! store (the "target") and proves that nothing there changed.

mod support;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berthd::content::Digest;
use berthd::snapshot::{ChainId, Compression, Snapshot, SnapshotError, SnapshotStore};
use berthd::store::Store;
use support::image::{Layer, LayerCompression, MTIME};
use tokio::io::AsyncWriteExt;

/// A snapshot store on a private root.
struct Fixture {
    dir: tempfile::TempDir,
    snapshots: SnapshotStore,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("berth.redb")).expect("store");
        let snapshots = SnapshotStore::open(dir.path(), store).expect("snapshot store");
        Fixture { dir, snapshots }
    }

    fn snapshot_root(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    /// Unpacks a layer built by the support builder.
    async fn unpack(
        &self,
        parent: Option<&ChainId>,
        layer: &Layer,
    ) -> Result<Snapshot, SnapshotError> {
        let built = layer.build();
        let compression = Compression::from_media_type(&built.media_type).expect("media type");
        self.unpack_blob(parent, &built.diff_id, compression, built.blob)
            .await
    }

    async fn unpack_blob(
        &self,
        parent: Option<&ChainId>,
        diff_id: &str,
        compression: Compression,
        blob: Vec<u8>,
    ) -> Result<Snapshot, SnapshotError> {
        let diff_id = Digest::parse(diff_id).expect("diff id");
        self.snapshots
            .unpack(parent, &diff_id, compression, std::io::Cursor::new(blob))
            .await
    }

    /// Unpacks an uncompressed tar.
    async fn unpack_tar(&self, tar: Vec<u8>) -> Result<Snapshot, SnapshotError> {
        let diff_id = Digest::sha256(&tar);
        self.unpack_blob(None, diff_id.as_str(), Compression::None, tar)
            .await
    }

    fn fs(&self, snapshot: &Snapshot) -> PathBuf {
        self.snapshots.fs_path(snapshot)
    }

    /// Nothing but committed snapshots under `<root>/snapshots`.
    fn assert_no_leftovers(&self) {
        let names = dir_names(&self.snapshot_root());
        let ids: Vec<String> = self
            .snapshots
            .list()
            .expect("list")
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        let mut ids_sorted = ids.clone();
        ids_sorted.sort();
        assert_eq!(
            names, ids_sorted,
            "only committed snapshot directories remain"
        );
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A directory outside the snapshot store that hostile layers aim at,
/// holding one file, `victim`.
struct Target {
    dir: tempfile::TempDir,
}

impl Target {
    fn new() -> Target {
        let dir = tempfile::Builder::new()
            .prefix("berth-target-")
            .tempdir_in("/tmp")
            .expect("target dir");
        std::fs::write(dir.path().join("victim"), "original\n").expect("victim");
        Target { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The target path without its leading `/`.
    fn relative(&self) -> String {
        self.path()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned()
    }

    /// Fails unless the target holds exactly its victim, untouched and not
    /// linked from anywhere.
    fn assert_untouched(&self) {
        assert_eq!(
            dir_names(self.path()),
            ["victim"],
            "nothing was added to the target"
        );
        let victim = self.path().join("victim");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "original\n"
        );
        let meta = std::fs::symlink_metadata(&victim).expect("victim");
        assert_eq!(meta.nlink(), 1, "nothing hard-linked the victim");
        assert!(
            rustix::fs::lgetxattr(self.path(), "trusted.overlay.opaque", &mut [0u8; 8]).is_err(),
            "the target dir got no opaque xattr"
        );
    }
}

fn assert_unsafe(result: Result<Snapshot, SnapshotError>, path_part: &str) -> String {
    match result {
        Err(e @ SnapshotError::UnsafeEntry { .. }) => {
            let msg = e.to_string();
            eprintln!("refused as it should be: {msg}");
            assert!(msg.contains(path_part), "{msg} should name {path_part}");
            msg
        }
        other => panic!("expected the layer to be refused as unsafe, got {other:?}"),
    }
}

// ---------------------------------------------------------------- tar tools

/// A tar written entry by entry, with names and link targets verbatim.
struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    fn new() -> RawTar {
        RawTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header
    }

    fn append(
        mut self,
        mut header: tar::Header,
        name: &str,
        link: Option<&str>,
        data: &[u8],
    ) -> RawTar {
        assert!(name.len() <= 100 && link.is_none_or(|l| l.len() <= 100));
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.builder.append(&header, data).expect("append");
        self
    }

    fn file(self, name: &str, data: &str) -> RawTar {
        self.append(
            Self::header(tar::EntryType::Regular, 0o644),
            name,
            None,
            data.as_bytes(),
        )
    }

    fn dir(self, name: &str, mode: u32) -> RawTar {
        self.append(
            Self::header(tar::EntryType::Directory, mode),
            name,
            None,
            &[],
        )
    }

    fn symlink(self, name: &str, target: &str) -> RawTar {
        self.append(
            Self::header(tar::EntryType::Symlink, 0o777),
            name,
            Some(target),
            &[],
        )
    }

    fn hardlink(self, name: &str, target: &str) -> RawTar {
        self.append(
            Self::header(tar::EntryType::Link, 0o644),
            name,
            Some(target),
            &[],
        )
    }

    fn pax(mut self, extensions: &[(&str, &[u8])]) -> RawTar {
        self.builder
            .append_pax_extensions(extensions.iter().copied())
            .expect("pax");
        self
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

// ------------------------------------------------------------ overlay mount

/// An overlay mount, unmounted (and its mount point removed) on drop, so a
/// failing test leaves no mount behind.
struct OverlayMount {
    target: tempfile::TempDir,
}

impl OverlayMount {
    /// Mounts a read-only overlay of `lowerdirs` (top first).
    fn new(lowerdirs: &[PathBuf]) -> OverlayMount {
        let mount = support::require_binary("mount");
        let target = tempfile::tempdir().expect("mount point");
        let lower: Vec<String> = lowerdirs.iter().map(|p| p.display().to_string()).collect();
        let status = std::process::Command::new(mount)
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(target.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount overlay: {status}");
        OverlayMount { target }
    }

    fn path(&self) -> &Path {
        self.target.path()
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let umount = support::require_binary("umount");
        let status = std::process::Command::new(umount)
            .arg(self.target.path())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("umount {} failed: {status:?}", self.target.path().display());
        }
    }
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let dir = dir.to_string_lossy();
    mounts
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|m| m.starts_with(dir.as_ref()))
        })
        .map(str::to_owned)
        .collect()
}

// ----------------------------------------------------------------- the tests

#[tokio::test]
async fn whiteouts_become_overlay_whiteouts_that_hide_lower_files() {
    if !support::root_tests("whiteouts_become_overlay_whiteouts_that_hide_lower_files") {
        return;
    }
    let f = Fixture::new();
    let bottom = Layer::new()
        .dir("a", 0o755)
        .file("a/keep", "keep\n", 0o644)
        .file("a/gone", "gone\n", 0o644)
        .dir("d", 0o755)
        .file("d/old", "old\n", 0o644)
        .dir("d/sub", 0o755)
        .file("d/sub/deep", "deep\n", 0o644)
        .file("top-gone", "x", 0o644);
    let top = Layer::new()
        .dir("a", 0o755)
        .whiteout("a/gone")
        .dir("d", 0o755)
        .opaque("d")
        .file("d/new", "new\n", 0o644)
        .whiteout("top-gone");
    let s1 = f.unpack(None, &bottom).await.expect("bottom layer");
    let s2 = f.unpack(Some(&s1.chain_id), &top).await.expect("top layer");
    assert_eq!(s2.parent.as_ref(), Some(&s1.chain_id));
    assert_eq!(
        s2.chain_id,
        ChainId::chain(&[s1.diff_id.clone(), s2.diff_id.clone()])[1]
    );

    // In the snapshot: a 0/0 character device and an opaque xattr, no
    // `.wh.` names.
    let fs2 = f.fs(&s2);
    for gone in ["a/gone", "top-gone"] {
        let meta = std::fs::symlink_metadata(fs2.join(gone)).expect("whiteout");
        assert!(
            meta.file_type().is_char_device(),
            "{gone} is a character device"
        );
        assert_eq!(meta.rdev(), 0, "{gone} is device 0/0");
    }
    let mut value = [0u8; 8];
    let n = rustix::fs::lgetxattr(fs2.join("d"), "trusted.overlay.opaque", &mut value)
        .expect("opaque xattr");
    assert_eq!(&value[..n], b"y");
    assert_eq!(dir_names(&fs2.join("d")), ["new"]);
    assert_eq!(dir_names(&fs2), ["a", "d", "top-gone"]);

    // Through a real overlay mount the lower files are hidden.
    let lowerdirs = f
        .snapshots
        .lowerdirs(&[s1.chain_id.clone(), s2.chain_id.clone()])
        .expect("lowerdirs");
    assert_eq!(lowerdirs, [fs2.clone(), f.fs(&s1)]);
    {
        let mount = OverlayMount::new(&lowerdirs);
        let root = mount.path();
        assert_eq!(dir_names(root), ["a", "d"]);
        assert_eq!(dir_names(&root.join("a")), ["keep"]);
        assert_eq!(
            dir_names(&root.join("d")),
            ["new"],
            "opaque hides d/old and d/sub"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("a/keep")).expect("keep"),
            "keep\n"
        );
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("d/sub/deep").exists());
    }
    assert!(mounted_under(f.dir.path()).is_empty(), "overlay unmounted");
    f.assert_no_leftovers();
}

#[tokio::test]
async fn metadata_links_and_special_files_are_kept() {
    if !support::root_tests("metadata_links_and_special_files_are_kept") {
        return;
    }
    let f = Fixture::new();
    let mut tar = RawTar::new()
        .dir("./", 0o755)
        .dir("bin", 0o755)
        .append(
            {
                let mut h = RawTar::header(tar::EntryType::Regular, 0o4755);
                h.set_uid(0);
                h
            },
            "bin/setuid",
            None,
            b"#!/bin/sh\n",
        )
        .append(
            {
                let mut h = RawTar::header(tar::EntryType::Regular, 0o2640);
                h.set_uid(1000);
                h.set_gid(1000);
                h
            },
            "bin/owned",
            None,
            b"owned",
        )
        .dir("tmp", 0o1777)
        .append(
            {
                let mut h = RawTar::header(tar::EntryType::Directory, 0o750);
                h.set_uid(1001);
                h.set_gid(100);
                h
            },
            "home/",
            None,
            &[],
        )
        .symlink("bin/sh", "busybox")
        .symlink("etc-passwd", "/etc/passwd")
        .symlink("up", "../../../..")
        .hardlink("bin/hard", "bin/owned")
        .hardlink("bin/hard-abs", "/bin/owned")
        .append(
            {
                let mut h = RawTar::header(tar::EntryType::Char, 0o666);
                h.set_device_major(1).expect("major");
                h.set_device_minor(3).expect("minor");
                h
            },
            "dev-null",
            None,
            &[],
        )
        .append(
            {
                let mut h = RawTar::header(tar::EntryType::Block, 0o660);
                h.set_device_major(7).expect("major");
                h.set_device_minor(0).expect("minor");
                h
            },
            "loop0",
            None,
            &[],
        )
        .append(
            RawTar::header(tar::EntryType::Fifo, 0o620),
            "fifo",
            None,
            &[],
        )
        .pax(&[
            ("SCHILY.xattr.user.berth", b"hello"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("mtime", b"946684800.123456789"),
        ])
        .file("xattrs", "x");
    tar = tar
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("xdir", 0o700);
    let s = f.unpack_tar(tar.finish()).await.expect("unpack");
    let fs = f.fs(&s);
    let stat =
        |p: &str| std::fs::symlink_metadata(fs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    let setuid = stat("bin/setuid");
    assert_eq!(setuid.mode() & 0o7777, 0o4755, "setuid kept");
    let owned = stat("bin/owned");
    assert_eq!(owned.mode() & 0o7777, 0o2640, "setgid kept after chown");
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    assert_eq!(owned.mtime(), MTIME as i64);
    assert_eq!(stat("tmp").mode() & 0o7777, 0o1777, "sticky dir");
    let home = stat("home");
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o750, 1001, 100)
    );
    assert_eq!(
        home.mtime(),
        MTIME as i64,
        "directory mtime set after its content"
    );
    assert_eq!(stat("bin").mtime(), MTIME as i64);
    assert_eq!(stat("").mode() & 0o7777, 0o755, "root dir entry applied");

    // Symlinks keep their target verbatim, even pointing out.
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).expect("link"),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(fs.join("etc-passwd")).expect("link"),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(fs.join("up")).expect("link"),
        Path::new("../../../..")
    );
    assert_eq!(stat("bin/sh").mtime(), MTIME as i64, "symlink mtime");

    // Hard links share the inode; an absolute target is inside the layer.
    assert_eq!(stat("bin/hard").ino(), owned.ino());
    assert_eq!(stat("bin/hard-abs").ino(), owned.ino());
    assert_eq!(stat("bin/owned").nlink(), 3);

    let null = stat("dev-null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    let loop0 = stat("loop0");
    assert!(loop0.file_type().is_block_device());
    assert_eq!(
        (
            rustix::fs::major(loop0.rdev()),
            rustix::fs::minor(loop0.rdev())
        ),
        (7, 0)
    );
    let fifo = stat("fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);

    let mut value = [0u8; 64];
    let n = rustix::fs::lgetxattr(fs.join("xattrs"), "user.berth", &mut value).expect("xattr");
    assert_eq!(&value[..n], b"hello");
    assert!(
        rustix::fs::lgetxattr(fs.join("xattrs"), "trusted.overlay.redirect", &mut value).is_err(),
        "overlay xattrs from a layer are dropped"
    );
    let n = rustix::fs::lgetxattr(fs.join("xdir"), "user.dir", &mut value).expect("dir xattr");
    assert_eq!(&value[..n], b"d");
    assert_eq!(
        stat("xattrs").mtime_nsec(),
        123_456_789,
        "PAX sub-second mtime"
    );

    // Usage: every inode once (the hard links share one), bytes allocated.
    // root, bin, setuid, owned(+2 links), tmp, home, sh, etc-passwd, up,
    // dev-null, loop0, fifo, xattrs, xdir.
    assert_eq!(s.inodes, 14);
    assert!(s.size >= 4096 * 4, "directories take blocks: {}", s.size);
    assert_eq!(f.snapshots.usage().expect("usage").inodes, 14);
}

#[tokio::test]
async fn gzip_zstd_and_plain_layers_unpack() {
    if !support::root_tests("gzip_zstd_and_plain_layers_unpack") {
        return;
    }
    let f = Fixture::new();
    let content = |name: &str| {
        Layer::new()
            .dir("data", 0o755)
            .file("data/name", name, 0o644)
            .file("data/big", vec![b'z'; 300_000], 0o600)
    };
    // Through the builder: gzip and plain.
    let gz = f.unpack(None, &content("gzip")).await.expect("gzip");
    let plain = f
        .unpack(None, &content("plain").compression(LayerCompression::None))
        .await
        .expect("plain");
    // By hand: zstd, and gzip under Docker's media type.
    let tar = content("zstd").tar();
    let zstd_blob = zstd::encode_all(tar.as_slice(), 3).expect("zstd");
    let zstd = f
        .unpack_blob(
            None,
            Digest::sha256(&tar).as_str(),
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd")
                .expect("zstd media type"),
            zstd_blob,
        )
        .await
        .expect("zstd");
    let tar = content("docker").tar();
    let docker = f
        .unpack_blob(
            None,
            Digest::sha256(&tar).as_str(),
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .expect("docker media type"),
            gzip(&tar),
        )
        .await
        .expect("docker gzip");
    for (snapshot, name) in [
        (&gz, "gzip"),
        (&plain, "plain"),
        (&zstd, "zstd"),
        (&docker, "docker"),
    ] {
        let fs = f.fs(snapshot);
        assert_eq!(
            std::fs::read_to_string(fs.join("data/name")).expect("name"),
            name
        );
        assert_eq!(
            std::fs::read(fs.join("data/big")).expect("big"),
            vec![b'z'; 300_000]
        );
    }
    let mut ids: Vec<u64> = f
        .snapshots
        .list()
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4], "small directory numbers");

    // An empty layer (just the end-of-archive blocks) is an empty directory.
    let empty = f.unpack(None, &Layer::new()).await.expect("empty layer");
    assert!(dir_names(&f.fs(&empty)).is_empty());
    assert_eq!((empty.id, empty.inodes), (5, 1));
    f.assert_no_leftovers();
}

#[tokio::test]
async fn a_wrong_diff_id_leaves_nothing() {
    if !support::root_tests("a_wrong_diff_id_leaves_nothing") {
        return;
    }
    let f = Fixture::new();
    let built = Layer::new().file("etc/motd", "hi\n", 0o644).build();
    let claimed = Digest::sha256(b"some other layer");
    let err = f
        .unpack_blob(
            None,
            claimed.as_str(),
            Compression::Gzip,
            built.blob.clone(),
        )
        .await
        .expect_err("diff id mismatch");
    assert!(
        matches!(&err, SnapshotError::DiffIdMismatch { expected, actual }
            if *expected == claimed && actual.as_str() == built.diff_id),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(claimed.as_str()) && msg.contains(&built.diff_id),
        "{msg}"
    );
    assert!(f.snapshots.list().expect("list").is_empty());
    f.assert_no_leftovers();

    // A stream cut short or corrupted fails the same clean way.
    let half = built.blob[..built.blob.len() / 2].to_vec();
    let err = f
        .unpack_blob(None, &built.diff_id, Compression::Gzip, half)
        .await
        .expect_err("truncated");
    assert!(matches!(err, SnapshotError::Read { .. }), "{err:?}");
    let err = f
        .unpack_blob(None, &built.diff_id, Compression::Zstd, built.blob.clone())
        .await
        .expect_err("gzip data announced as zstd");
    assert!(matches!(err, SnapshotError::Read { .. }), "{err:?}");
    f.assert_no_leftovers();

    // The right diff ID then works.
    f.unpack_blob(None, &built.diff_id, Compression::Gzip, built.blob)
        .await
        .expect("unpack");
}

#[tokio::test]
async fn entries_replace_earlier_ones() {
    if !support::root_tests("entries_replace_earlier_ones") {
        return;
    }
    let f = Fixture::new();
    let tar = RawTar::new()
        .file("x", "first")
        .file("x", "second")
        .dir("d", 0o700)
        .file("d/kept", "kept")
        .dir("d", 0o751)
        .dir("was-dir", 0o755)
        .file("was-dir/child", "gone")
        .file("was-dir", "now a file")
        .file("was-file", "soon a dir")
        .dir("was-file", 0o755)
        .symlink("was-link", "/tmp")
        .dir("was-link", 0o755)
        .file("was-link/inside", "inside")
        .file("a/../b", "cleaned")
        .file("./c", "dot")
        .finish();
    let s = f.unpack_tar(tar).await.expect("unpack");
    let fs = f.fs(&s);
    let read = |p: &str| std::fs::read_to_string(fs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("x"), "second");
    assert_eq!(
        read("d/kept"),
        "kept",
        "a directory over a directory keeps its content"
    );
    assert_eq!(
        std::fs::metadata(fs.join("d"))
            .expect("d")
            .permissions()
            .mode()
            & 0o7777,
        0o751,
        "and takes the new metadata"
    );
    assert_eq!(read("was-dir"), "now a file");
    assert!(fs.join("was-file").is_dir());
    assert!(
        std::fs::symlink_metadata(fs.join("was-link"))
            .expect("was-link")
            .is_dir()
    );
    assert_eq!(read("was-link/inside"), "inside");
    assert!(!Path::new("/tmp/inside").exists());
    assert_eq!(read("b"), "cleaned");
    assert_eq!(read("c"), "dot");
    assert!(!fs.join("a").exists(), "`a/../b` creates no `a`");
}

#[tokio::test]
async fn dot_dot_escapes_are_refused() {
    if !support::root_tests("dot_dot_escapes_are_refused") {
        return;
    }
    let f = Fixture::new();
    let target = Target::new();
    // Enough `..` to climb from the snapshot to `/`, then into the target.
    let climb = format!("{}{}/escape", "../".repeat(16), target.relative());
    for layer in [
        Layer::new().raw_file("../escape", "x", 0o644),
        Layer::new().raw_file(&climb, "x", 0o644),
        Layer::new()
            .dir("a", 0o755)
            .raw_file("a/../../escape", "x", 0o644),
    ] {
        let name = layer.entries().keys().last().cloned().unwrap_or_default();
        let msg = assert_unsafe(f.unpack(None, &layer).await, "escape");
        assert!(msg.contains("leaves the layer root"), "{msg}");
        target.assert_untouched();
        assert!(!f.snapshot_root().join("escape").exists(), "{name}");
        assert!(!f.dir.path().join("escape").exists(), "{name}");
    }
    f.assert_no_leftovers();
    assert!(f.snapshots.list().expect("list").is_empty());
}

#[tokio::test]
async fn absolute_paths_stay_inside_the_snapshot() {
    if !support::root_tests("absolute_paths_stay_inside_the_snapshot") {
        return;
    }
    let f = Fixture::new();
    let target = Target::new();
    let abs = format!("{}/abs", target.path().display());
    let layer = Layer::new().raw_file(&abs, "contained", 0o644).raw_file(
        "/etc/berth-abs-test",
        "contained",
        0o644,
    );
    let s = f
        .unpack(None, &layer)
        .await
        .expect("absolute paths are taken as relative");
    let fs = f.fs(&s);
    assert_eq!(
        std::fs::read_to_string(fs.join(target.relative()).join("abs")).expect("inside"),
        "contained"
    );
    assert_eq!(
        std::fs::read_to_string(fs.join("etc/berth-abs-test")).expect("inside"),
        "contained"
    );
    assert!(!Path::new("/etc/berth-abs-test").exists());
    target.assert_untouched();
}

#[tokio::test]
async fn nothing_is_written_through_a_symlink() {
    if !support::root_tests("nothing_is_written_through_a_symlink") {
        return;
    }
    let f = Fixture::new();
    let target = Target::new();
    let t = target.path().display().to_string();
    let climb = format!("{}{}", "../".repeat(16), target.relative());
    let layers: Vec<(&str, Vec<u8>, &str)> = vec![
        // evil -> /target, then evil/x.
        (
            "write through",
            RawTar::new()
                .symlink("evil", &t)
                .file("evil/x", "x")
                .finish(),
            "evil/x",
        ),
        // The same, with a relative target that climbs out.
        (
            "relative",
            RawTar::new()
                .symlink("evil", &climb)
                .file("evil/x", "x")
                .finish(),
            "evil/x",
        ),
        // A chain: a -> b -> /target.
        (
            "chain",
            RawTar::new()
                .symlink("b", &t)
                .symlink("a", "b")
                .file("a/x", "x")
                .finish(),
            "a/x",
        ),
        // A symlink deeper in the path, and a directory under it.
        (
            "deep",
            RawTar::new()
                .dir("d", 0o755)
                .symlink("d/e", &t)
                .dir("d/e/sub", 0o755)
                .finish(),
            "d/e/sub",
        ),
        // A whiteout and an opaque marker aimed through the link.
        (
            "whiteout",
            RawTar::new()
                .symlink("evil", &t)
                .file("evil/.wh.victim", "")
                .finish(),
            "evil/.wh.victim",
        ),
        (
            "opaque",
            RawTar::new()
                .symlink("evil", &t)
                .file("evil/.wh..wh..opq", "")
                .finish(),
            "evil/.wh..wh..opq",
        ),
        // A hard link whose name or target goes through the link.
        (
            "link name",
            RawTar::new()
                .file("f", "f")
                .symlink("evil", &t)
                .hardlink("evil/h", "f")
                .finish(),
            "evil/h",
        ),
        (
            "link target",
            RawTar::new()
                .symlink("evil", &t)
                .hardlink("h", "evil/victim")
                .finish(),
            "\"h\"",
        ),
        // A symlink named like a path under the link.
        (
            "symlink under link",
            RawTar::new()
                .symlink("evil", &t)
                .symlink("evil/s", "/")
                .finish(),
            "evil/s",
        ),
    ];
    for (case, tar, path) in layers {
        let msg = assert_unsafe(f.unpack_tar(tar).await, path);
        assert!(msg.contains("symbolic link"), "{case}: {msg}");
        target.assert_untouched();
        f.assert_no_leftovers();
    }
    assert!(f.snapshots.list().expect("list").is_empty());
}

#[tokio::test]
async fn hard_links_out_of_the_layer_are_refused() {
    if !support::root_tests("hard_links_out_of_the_layer_are_refused") {
        return;
    }
    let f = Fixture::new();
    let target = Target::new();
    let passwd_links = std::fs::metadata("/etc/passwd")
        .expect("/etc/passwd")
        .nlink();

    // `..` out of the layer: refused as unsafe.
    let climb = format!("{}{}/victim", "../".repeat(16), target.relative());
    for link in ["../../etc/passwd", climb.as_str()] {
        let layer = Layer::new().file("f", "f", 0o644).hardlink("x", link);
        let msg = assert_unsafe(f.unpack(None, &layer).await, "\"x\"");
        assert!(msg.contains("leaves the layer root"), "{msg}");
        target.assert_untouched();
    }
    // An absolute target is inside the layer, where it does not exist.
    for link in [
        format!("{}/victim", target.path().display()),
        "/etc/passwd".to_owned(),
    ] {
        let tar = RawTar::new().hardlink("x", &link).finish();
        match f.unpack_tar(tar).await {
            Err(e @ SnapshotError::BadEntry { .. }) => {
                assert!(e.to_string().contains("not in the layer"), "{e}");
            }
            other => panic!("{link}: expected a refused hard link, got {other:?}"),
        }
        target.assert_untouched();
    }
    assert_eq!(
        std::fs::metadata("/etc/passwd")
            .expect("/etc/passwd")
            .nlink(),
        passwd_links,
        "/etc/passwd was not linked"
    );
    f.assert_no_leftovers();
    assert!(f.snapshots.list().expect("list").is_empty());
}

#[tokio::test]
async fn one_chain_id_is_unpacked_once() {
    if !support::root_tests("one_chain_id_is_unpacked_once") {
        return;
    }
    let f = Fixture::new();
    let built = Layer::new()
        .file("big", vec![7u8; 2_000_000], 0o644)
        .build();
    let diff_id = Digest::parse(&built.diff_id).expect("diff id");

    /// A stream that records whether it was read.
    struct Watched {
        inner: std::io::Cursor<Vec<u8>>,
        read: Arc<AtomicBool>,
    }
    impl tokio::io::AsyncRead for Watched {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.read.store(true, Ordering::SeqCst);
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    let flags: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut tasks = Vec::new();
    for flag in &flags {
        let snapshots = f.snapshots.clone();
        let reader = Watched {
            inner: std::io::Cursor::new(built.blob.clone()),
            read: flag.clone(),
        };
        let diff_id = diff_id.clone();
        tasks.push(tokio::spawn(async move {
            snapshots
                .unpack(None, &diff_id, Compression::Gzip, reader)
                .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("join").expect("unpack"));
    }
    assert!(
        results.iter().all(|s| *s == results[0]),
        "all callers get one snapshot"
    );
    let read = flags.iter().filter(|f| f.load(Ordering::SeqCst)).count();
    assert_eq!(read, 1, "exactly one stream was read");
    assert_eq!(f.snapshots.list().expect("list").len(), 1);
    f.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_unpack_while_they_stream_and_cancel_cleanly() {
    if !support::root_tests("layers_unpack_while_they_stream_and_cancel_cleanly") {
        return;
    }
    let f = Fixture::new();
    let layer = Layer::new()
        .file("a-first", "first\n", 0o644)
        .file("b-big", vec![1u8; 4_000_000], 0o644)
        .compression(LayerCompression::None);
    let built = layer.build();
    let diff_id = Digest::parse(&built.diff_id).expect("diff id");
    let first_chunk = 64 * 1024;

    // Feed the first chunk only: the first file appears in the unpack
    // directory while the rest of the layer has not arrived.
    let (mut tx, rx) = tokio::io::duplex(16 * 1024);
    let unpack = {
        let snapshots = f.snapshots.clone();
        let diff_id = diff_id.clone();
        tokio::spawn(async move {
            snapshots
                .unpack(None, &diff_id, Compression::None, rx)
                .await
        })
    };
    tx.write_all(&built.blob[..first_chunk])
        .await
        .expect("first chunk");
    let root = f.snapshot_root();
    let first = wait_for(|| {
        dir_names(&root)
            .iter()
            .map(|n| root.join(n).join("fs/a-first"))
            .find(|p| p.exists())
    })
    .await
    .expect("a-first is unpacked before the stream ends");
    assert!(
        first.to_string_lossy().contains("/.unpack-"),
        "{}",
        first.display()
    );
    assert!(
        f.snapshots.list().expect("list").is_empty(),
        "no record before the end"
    );

    // Cancel: abort the caller mid-stream. The partial directory goes away
    // and the chain ID can be unpacked again.
    unpack.abort();
    assert!(unpack.await.expect_err("aborted").is_cancelled());
    wait_for(|| dir_names(&root).is_empty().then_some(()))
        .await
        .expect("the partial unpack is removed");
    drop(tx);

    // A full stream in slow chunks then works.
    let (mut tx, rx) = tokio::io::duplex(8 * 1024);
    let unpack = {
        let snapshots = f.snapshots.clone();
        let diff_id = diff_id.clone();
        tokio::spawn(async move {
            snapshots
                .unpack(None, &diff_id, Compression::None, rx)
                .await
        })
    };
    for chunk in built.blob.chunks(100_000) {
        tx.write_all(chunk).await.expect("chunk");
    }
    drop(tx);
    let s = unpack.await.expect("join").expect("unpack");
    assert_eq!(
        std::fs::read(f.fs(&s).join("b-big")).expect("big").len(),
        4_000_000
    );
    f.assert_no_leftovers();

    // A stream that stalls forever is cancelled too (a dropped future, not
    // an aborted task).
    let stalled = Layer::new()
        .file("z", vec![2u8; 100_000], 0o644)
        .compression(LayerCompression::None)
        .build();
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    tx.write_all(&stalled.blob[..10_000]).await.expect("part");
    let diff_id = Digest::parse(&stalled.diff_id).expect("diff id");
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        f.snapshots.unpack(None, &diff_id, Compression::None, rx),
    )
    .await;
    assert!(timed_out.is_err(), "the stalled unpack cannot finish");
    wait_for(|| {
        let unpacking = dir_names(&root).iter().any(|n| n.starts_with(".unpack-"));
        (!unpacking).then_some(())
    })
    .await
    .expect("the stalled unpack is removed");
    f.assert_no_leftovers();
    drop(tx);
}

/// Polls `probe` for up to ten seconds.
async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..1000 {
        if let Some(found) = probe() {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn removing_a_snapshot_removes_its_files() {
    if !support::root_tests("removing_a_snapshot_removes_its_files") {
        return;
    }
    let f = Fixture::new();
    let s1 = f
        .unpack(
            None,
            &Layer::new().dir("ro", 0o555).file("ro/f", "f", 0o400),
        )
        .await
        .expect("bottom");
    let s2 = f
        .unpack(Some(&s1.chain_id), &Layer::new().file("g", "g", 0o644))
        .await
        .expect("top");
    assert!(
        f.snapshots.remove(&s1.chain_id).await.is_err(),
        "s1 has a child"
    );
    assert!(f.snapshots.remove(&s2.chain_id).await.expect("remove top"));
    assert!(
        f.snapshots
            .remove(&s1.chain_id)
            .await
            .expect("remove bottom")
    );
    assert!(dir_names(&f.snapshot_root()).is_empty());
    assert_eq!(f.snapshots.usage().expect("usage").inodes, 0);
    // And unpacked again from scratch.
    let again = f
        .unpack(
            None,
            &Layer::new().dir("ro", 0o555).file("ro/f", "f", 0o400),
        )
        .await
        .expect("again");
    assert_eq!(again.chain_id, s1.chain_id);
}
