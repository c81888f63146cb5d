//! Unit tests that need no root. Unpacking (chown, mknod, trusted xattrs)
//! is tested as root in `tests/snapshot_unpack.rs`.

use super::*;

fn digest(s: &str) -> Digest {
    Digest::parse(s).expect("test digest")
}

/// sha256 of "a", "b", "c".
const A: &str = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
const B: &str = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";
const C: &str = "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6";

#[test]
fn chain_ids_follow_the_oci_definition() {
    // Expected values computed with sha256sum over "<chain> <diff_id>".
    let chain = ChainId::chain(&[digest(A), digest(B), digest(C)]);
    let want = [
        A,
        "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676",
        "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106",
    ];
    let got: Vec<&str> = chain.iter().map(ChainId::as_str).collect();
    assert_eq!(got, want);
    assert_eq!(ChainId::of(None, &digest(A)), chain[0]);
    assert_eq!(ChainId::of(Some(&chain[0]), &digest(B)), chain[1]);
    assert_eq!(chain[1].child(&digest(C)), chain[2]);
    assert!(ChainId::chain(&[]).is_empty());
    assert_eq!(want[2].parse::<ChainId>().expect("parse"), chain[2]);
    assert!(ChainId::parse("sha256:nope").is_err());
    // Stored as the bare string.
    assert_eq!(
        serde_json::to_string(&chain[0]).expect("json"),
        format!("\"{A}\"")
    );
}

#[test]
fn media_types_map_to_compression() {
    for (media_type, want) in [
        ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Compression::Gzip,
        ),
    ] {
        assert_eq!(
            Compression::from_media_type(media_type).expect(media_type),
            want
        );
    }
    let err = Compression::from_media_type("application/vnd.oci.image.config.v1+json")
        .expect_err("a config is not a layer");
    assert_eq!(
        err.to_string(),
        "unsupported layer media type \"application/vnd.oci.image.config.v1+json\""
    );
}

#[test]
fn entry_paths_are_cleaned_or_refused() {
    let ok: &[(&str, &[&str])] = &[
        ("etc/passwd", &["etc", "passwd"]),
        ("/etc/passwd", &["etc", "passwd"]),
        ("./etc//passwd/", &["etc", "passwd"]),
        ("a/../b", &["b"]),
        ("a/b/../../c", &["c"]),
        ("/", &[]),
        ("./", &[]),
        ("..a/b..", &["..a", "b.."]),
    ];
    for (path, want) in ok {
        let got = unpack::clean_path(path.as_bytes()).expect(path);
        let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(got, want, "{path}");
    }
    for path in ["..", "../x", "a/../../x", "/../etc/passwd", "./a/./../.."] {
        assert_eq!(
            unpack::clean_path(path.as_bytes()),
            Err("its path leaves the layer root through `..`"),
            "{path}"
        );
    }
    assert!(unpack::clean_path("a/".repeat(2049).as_bytes()).is_err());
    assert!(unpack::clean_path(b"a\0b").is_err());
}

fn open_temp() -> (tempfile::TempDir, Store, SnapshotStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("berth.redb")).expect("store");
    let snapshots = SnapshotStore::open(dir.path(), store.clone()).expect("snapshots");
    (dir, store, snapshots)
}

/// Records a snapshot as if it had been unpacked (with an empty `fs`).
fn fake(
    dir: &Path,
    store: &Store,
    id: u64,
    chain_id: &ChainId,
    parent: Option<&ChainId>,
) -> Snapshot {
    let snapshot = Snapshot {
        chain_id: chain_id.clone(),
        id,
        parent: parent.cloned(),
        diff_id: chain_id.digest().clone(),
        size: 4096 * id,
        inodes: id,
        created: SystemTime::UNIX_EPOCH,
    };
    std::fs::create_dir_all(dir.join("snapshots").join(id.to_string()).join("fs")).expect("fs");
    store
        .put(Table::Snapshots, chain_id.as_str(), &snapshot)
        .expect("record");
    snapshot
}

fn snapshot_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .expect("read snapshots")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_cleans_up_after_a_crash() {
    let (dir, store, snapshots) = open_temp();
    let chain = ChainId::chain(&[digest(A), digest(B)]);
    fake(dir.path(), &store, 1, &chain[0], None);
    let lost = fake(dir.path(), &store, 2, &chain[1], Some(&chain[0]));
    drop(snapshots);

    let root = dir.path().join("snapshots");
    // An unpack that never finished, a removal cut short, a directory
    // renamed into place whose record was never written, a snapshot whose
    // directory vanished, and something that is not ours.
    std::fs::create_dir_all(root.join(".unpack-abc-1-0/fs/etc")).expect("unpack leftover");
    std::fs::create_dir_all(root.join(".remove-7/fs")).expect("remove leftover");
    std::fs::create_dir_all(root.join("9/fs/bin")).expect("unrecorded dir");
    std::fs::remove_dir_all(root.join("2")).expect("lose a snapshot dir");
    std::fs::write(root.join("README"), "hands off").expect("foreign file");

    let snapshots = SnapshotStore::open(dir.path(), store).expect("reopen");
    assert_eq!(snapshot_dir_names(dir.path()), ["1", "README"]);
    let listed: Vec<ChainId> = snapshots
        .list()
        .expect("list")
        .into_iter()
        .map(|s| s.chain_id)
        .collect();
    assert_eq!(listed, [chain[0].clone()]);
    assert_eq!(snapshots.get(&lost.chain_id).expect("get"), None);
}

#[test]
fn open_creates_the_table_in_an_older_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("berth.redb")).expect("store");
    let snapshots = SnapshotStore::open(dir.path(), store).expect("snapshots");
    assert!(snapshots.list().expect("list of an empty table").is_empty());
    let root = dir.path().join("snapshots");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&root).expect("stat").permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "layers hold setuid files: keep host users out"
    );
}

#[tokio::test]
async fn lowerdirs_are_top_layer_first() {
    let (dir, store, snapshots) = open_temp();
    let chain = ChainId::chain(&[digest(A), digest(B), digest(C)]);
    fake(dir.path(), &store, 3, &chain[0], None);
    fake(dir.path(), &store, 1, &chain[1], Some(&chain[0]));
    fake(dir.path(), &store, 2, &chain[2], Some(&chain[1]));
    let root = dir.path().join("snapshots");
    assert_eq!(
        snapshots.lowerdirs(&chain).expect("lowerdirs"),
        [root.join("2/fs"), root.join("1/fs"), root.join("3/fs")]
    );
    let usage = snapshots.usage().expect("usage");
    assert_eq!(
        usage,
        Usage {
            bytes: 4096 * 6,
            inodes: 6
        }
    );

    let missing = ChainId::of(Some(&chain[2]), &digest(A));
    let mut longer = chain.clone();
    longer.push(missing.clone());
    let err = snapshots.lowerdirs(&longer).expect_err("missing snapshot");
    assert!(
        matches!(&err, SnapshotError::NotFound(c) if *c == missing),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("snapshot {missing} not found"));
}

#[tokio::test]
async fn remove_refuses_parents_and_deletes_leaves() {
    let (dir, store, snapshots) = open_temp();
    let chain = ChainId::chain(&[digest(A), digest(B)]);
    fake(dir.path(), &store, 1, &chain[0], None);
    fake(dir.path(), &store, 2, &chain[1], Some(&chain[0]));

    let err = snapshots.remove(&chain[0]).await.expect_err("has a child");
    assert!(
        matches!(&err, SnapshotError::HasChildren { child, .. } if *child == chain[1]),
        "{err:?}"
    );
    assert!(snapshots.remove(&chain[1]).await.expect("remove leaf"));
    assert!(!snapshots.remove(&chain[1]).await.expect("remove again"));
    assert!(snapshots.remove(&chain[0]).await.expect("remove base"));
    assert!(snapshots.list().expect("list").is_empty());
    assert!(snapshot_dir_names(dir.path()).is_empty());
}

#[tokio::test]
async fn unpacking_an_existing_chain_id_does_not_read_the_stream() {
    let (dir, store, snapshots) = open_temp();
    let existing = fake(dir.path(), &store, 5, &ChainId::base(&digest(A)), None);
    // A stream that fails if read at all.
    let (_writer, reader) = tokio::io::duplex(8);
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        snapshots.unpack(None, &digest(A), Compression::Gzip, reader),
    )
    .await
    .expect("returns without reading")
    .expect("existing snapshot");
    assert_eq!(got, existing);
}
