use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_temp() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::new(dir.path()).expect("open content store");
    (dir, store)
}

fn ingest_files(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("content/ingest"))
        .expect("read ingest")
        .map(|e| e.expect("entry").path())
        .collect()
}

const HELLO_SHA256: &str =
    "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

#[test]
fn digest_parses_strictly() {
    let d = Digest::parse(HELLO_SHA256).expect("valid digest");
    assert_eq!(d.to_string(), HELLO_SHA256);
    assert_eq!(d.algorithm(), "sha256");
    assert_eq!(d.hex(), &HELLO_SHA256[7..]);
    assert_eq!(Digest::sha256(b"hello"), d);
    assert_eq!(HELLO_SHA256.parse::<Digest>().expect("FromStr"), d);

    let cases = [
        ("", "found no `:`"),
        (&HELLO_SHA256[7..], "found no `:`"),
        (
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "unsupported algorithm \"sha512\"",
        ),
        (
            "SHA256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "unsupported algorithm \"SHA256\"",
        ),
        (
            "sha256:2CF24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "character 'C' at offset 8 is not a lowercase hex digit",
        ),
        ("sha256:../../../../etc/passwd", "character '.' at offset 7"),
        ("sha256:abc", "has 3 hex digits; a sha256 digest has 64"),
        ("sha256:", "has 0 hex digits"),
        (
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240",
            "has 65 hex digits",
        ),
        (
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982 ",
            "character ' ' at offset 70",
        ),
    ];
    for (input, want) in cases {
        let err = Digest::parse(input).expect_err(input).to_string();
        assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
        assert!(err.starts_with("invalid digest "), "{err}");
    }
}

#[test]
fn digest_round_trips_through_serde() {
    let d = Digest::sha256(b"hello");
    let json = serde_json::to_string(&d).expect("serialize");
    assert_eq!(json, format!("\"{HELLO_SHA256}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).expect("parse"), d);
    let bad = serde_json::from_str::<Digest>("\"sha256:xyz\"").expect_err("bad digest");
    assert!(bad.to_string().contains("invalid digest"), "{bad}");
}

#[tokio::test]
async fn streaming_write_commits_into_place() {
    let (dir, store) = open_temp();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256(&data);
    assert!(!store.has(&digest).await.expect("has"));

    let mut writer = store
        .writer(&digest, Some(data.len() as u64))
        .await
        .expect("writer");
    for chunk in data.chunks(7919) {
        writer.write_all(chunk).await.expect("write chunk");
        // The temporary file exists while the blob streams; the blob not.
        assert!(!store.has(&digest).await.expect("has"));
    }
    assert_eq!(writer.written(), data.len() as u64);
    let info = writer.commit().await.expect("commit");
    assert_eq!(
        info,
        BlobInfo {
            digest: digest.clone(),
            size: data.len() as u64
        }
    );

    assert!(store.has(&digest).await.expect("has"));
    assert_eq!(
        store.path(&digest),
        dir.path().join("content/blobs/sha256").join(digest.hex())
    );
    assert_eq!(store.size(&digest).await.expect("size"), data.len() as u64);
    assert_eq!(store.read(&digest).await.expect("read"), data);
    let mut streamed = Vec::new();
    store
        .open(&digest)
        .await
        .expect("open")
        .read_to_end(&mut streamed)
        .await
        .expect("read stream");
    assert_eq!(streamed, data);
    assert!(ingest_files(dir.path()).is_empty());
}

#[tokio::test]
async fn digest_mismatch_names_both_digests_and_leaves_nothing() {
    let (dir, store) = open_temp();
    let expected = Digest::sha256(b"what the manifest says");
    let mut writer = store.writer(&expected, None).await.expect("writer");
    writer
        .write_all(b"what the server sent")
        .await
        .expect("write");
    let err = writer.commit().await.expect_err("mismatch");
    let actual = Digest::sha256(b"what the server sent");
    assert!(
        matches!(&err, ContentError::DigestMismatch { expected: e, actual: a } if *e == expected && *a == actual),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(expected.as_str()) && msg.contains(actual.as_str()),
        "{msg}"
    );
    assert!(!store.has(&expected).await.expect("has"));
    assert!(ingest_files(dir.path()).is_empty());
    assert!(store.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn truncated_blob_is_refused() {
    let (dir, store) = open_temp();
    let data = b"0123456789";
    let digest = Digest::sha256(data);
    let mut writer = store.writer(&digest, Some(10)).await.expect("writer");
    writer.write_all(&data[..6]).await.expect("write");
    let err = writer.commit().await.expect_err("truncated");
    assert!(
        matches!(
            err,
            ContentError::SizeMismatch {
                expected: 10,
                actual: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("blob {digest}: expected 10 bytes, got 6")
    );
    assert!(!store.has(&digest).await.expect("has"));
    assert!(ingest_files(dir.path()).is_empty());
}

#[tokio::test]
async fn oversized_blob_is_refused_while_it_streams() {
    let (dir, store) = open_temp();
    let digest = Digest::sha256(b"0123456789");
    let mut writer = store.writer(&digest, Some(10)).await.expect("writer");
    writer.write_all(b"01234").await.expect("first half");
    let err = writer
        .write_all(b"56789ABCDEF")
        .await
        .expect_err("past the size");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("expected 10 bytes"), "{err}");
    let err = writer.commit().await.expect_err("too long");
    assert!(
        matches!(err, ContentError::TooLong { expected: 10, .. }),
        "{err:?}"
    );
    assert!(ingest_files(dir.path()).is_empty());
}

#[tokio::test]
async fn dropping_an_uncommitted_writer_removes_its_file() {
    let (dir, store) = open_temp();
    let digest = Digest::sha256(b"abc");
    let mut writer = store.writer(&digest, None).await.expect("writer");
    writer.write_all(b"ab").await.expect("write");
    writer.flush().await.expect("flush");
    assert_eq!(ingest_files(dir.path()).len(), 1);
    drop(writer);
    assert!(ingest_files(dir.path()).is_empty());
    assert!(!store.has(&digest).await.expect("has"));
}

#[tokio::test]
async fn concurrent_writers_of_one_digest_both_commit_intact() {
    let (dir, store) = open_temp();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let digest = Digest::sha256(&data);
    let mut a = store
        .writer(&digest, Some(data.len() as u64))
        .await
        .expect("a");
    let mut b = store
        .writer(&digest, Some(data.len() as u64))
        .await
        .expect("b");
    assert_eq!(
        ingest_files(dir.path()).len(),
        2,
        "distinct temporary files"
    );
    // Interleave the two streams chunk by chunk.
    for chunk in data.chunks(10_000) {
        a.write_all(chunk).await.expect("write a");
        b.write_all(chunk).await.expect("write b");
    }
    let (ra, rb) = tokio::join!(a.commit(), b.commit());
    ra.expect("commit a");
    rb.expect("commit b: committing an existing blob is fine");
    assert_eq!(store.read(&digest).await.expect("read"), data);
    assert!(ingest_files(dir.path()).is_empty());

    // Many writers at once, on separate tasks, some of them wrong.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let data = data.clone();
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = store.writer(&digest, None).await.expect("writer");
            let mut content = data;
            if i % 2 == 1 {
                content[i] ^= 0xff;
            }
            for chunk in content.chunks(4096) {
                w.write_all(chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
            w.commit().await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("join") {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 4,
        "the four intact writers commit, the four corrupt ones fail"
    );
    assert_eq!(store.read(&digest).await.expect("read"), data);
    assert!(ingest_files(dir.path()).is_empty());
}

#[tokio::test]
async fn delete_list_and_missing_blobs() {
    let (dir, store) = open_temp();
    let mut digests = Vec::new();
    for content in [&b"one"[..], b"two", b"three"] {
        let d = Digest::sha256(content);
        let mut w = store
            .writer(&d, Some(content.len() as u64))
            .await
            .expect("w");
        w.write_all(content).await.expect("write");
        w.commit().await.expect("commit");
        digests.push(d);
    }
    // A stray file in the blob directory is not a blob.
    std::fs::write(dir.path().join("content/blobs/sha256/stray"), b"x").expect("stray");
    digests.sort();
    let listed: Vec<Digest> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(listed, digests);

    assert!(store.delete(&digests[0]).await.expect("delete"));
    assert!(!store.delete(&digests[0]).await.expect("delete again"));
    assert!(!store.has(&digests[0]).await.expect("has"));
    for err in [
        store.read(&digests[0]).await.expect_err("read"),
        store.size(&digests[0]).await.expect_err("size"),
        store.open(&digests[0]).await.expect_err("open"),
    ] {
        assert!(
            matches!(&err, ContentError::NotFound(d) if *d == digests[0]),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("blob {} not found", digests[0]));
    }
    assert_eq!(store.list().await.expect("list").len(), 2);
}

#[tokio::test]
async fn read_detects_a_corrupted_blob() {
    let (_dir, store) = open_temp();
    let d = Digest::sha256(b"good");
    let mut w = store.writer(&d, None).await.expect("w");
    w.write_all(b"good").await.expect("write");
    w.commit().await.expect("commit");
    std::fs::write(store.path(&d), b"evil").expect("tamper");
    let err = store.read(&d).await.expect_err("corrupt");
    assert!(
        matches!(&err, ContentError::Corrupt { actual, .. } if *actual == Digest::sha256(b"evil")),
        "{err:?}"
    );
}

#[test]
fn open_sweeps_ingest_leftovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ContentStore::new(dir.path()).expect("open");
    let ingest = dir.path().join("content/ingest");
    std::fs::write(ingest.join("deadbeef.1.0"), b"half a blob").expect("leftover");
    std::fs::create_dir(ingest.join("odd-dir")).expect("leftover dir");
    drop(first);
    let _store = ContentStore::new(dir.path()).expect("reopen");
    assert!(ingest_files(dir.path()).is_empty());
}
