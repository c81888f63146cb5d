use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    name: String,
    n: u64,
}

fn rec(name: &str, n: u64) -> Rec {
    Rec {
        name: name.into(),
        n,
    }
}

fn open_temp() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/dir/berth.redb");
    let store = Store::open(&path).expect("open store");
    (dir, path, store)
}

#[test]
fn records_survive_reopen() {
    let (_dir, path, store) = open_temp();
    assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
    store
        .put(Table::Sandboxes, "a", &rec("a", 1))
        .expect("put a");
    store
        .put(Table::Sandboxes, "b", &rec("b", 2))
        .expect("put b");
    store
        .put(Table::Sandboxes, "a", &rec("a", 3))
        .expect("replace a");
    store
        .put(Table::Containers, "c", &rec("c", 4))
        .expect("put c");
    assert!(store.delete(Table::Containers, "c").expect("delete c"));
    assert!(
        !store
            .delete(Table::Containers, "c")
            .expect("delete c again")
    );
    drop(store);

    let store = Store::open(&path).expect("reopen");
    assert_eq!(
        store.list::<Rec>(Table::Sandboxes).expect("list"),
        vec![
            ("a".to_string(), rec("a", 3)),
            ("b".to_string(), rec("b", 2))
        ]
    );
    assert_eq!(store.get::<Rec>(Table::Containers, "c").expect("get"), None);
    assert_eq!(store.get::<Rec>(Table::Images, "x").expect("get"), None);
}

#[test]
fn second_open_is_refused_while_first_is_open() {
    let (_dir, path, store) = open_temp();
    let err = Store::open(&path).expect_err("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another berthd"), "{err}");
    drop(store);
    Store::open(&path).expect("open after the first closed");
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path, store) = open_temp();
    store
        .transaction(|tx| {
            let t = tx.tx.open_table(META)?;
            drop(t);
            let mut meta = tx.tx.open_table(META)?;
            meta.insert(SCHEMA_KEY, b"99".as_slice())?;
            Ok(())
        })
        .expect("bump version");
    drop(store);
    let err = Store::open(&path).expect_err("newer schema");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn failed_transaction_changes_nothing() {
    let (_dir, _path, store) = open_temp();
    store
        .put(Table::Images, "keep", &rec("keep", 1))
        .expect("put");
    let result: Result<(), StoreError> = store.transaction(|tx| {
        tx.put(Table::Images, "new", &rec("new", 2))?;
        tx.delete(Table::Images, "keep")?;
        Err(StoreError::NameTaken {
            name: "x".into(),
            holder: "y".into(),
        })
    });
    assert!(result.is_err());
    let ids: Vec<String> = store
        .list::<Rec>(Table::Images)
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ids, ["keep"]);
}

#[test]
fn names_are_reserved_once() {
    let (_dir, _path, store) = open_temp();
    store.reserve_name("pod_ns_1", "id1").expect("reserve");
    store
        .reserve_name("pod_ns_1", "id1")
        .expect("same holder again");
    let err = store.reserve_name("pod_ns_1", "id2").expect_err("taken");
    assert_eq!(err.to_string(), "name \"pod_ns_1\" is reserved by id1");
    store
        .release_name("pod_ns_1", "id2")
        .expect("release by non-holder");
    assert!(
        store.reserve_name("pod_ns_1", "id2").is_err(),
        "non-holder must not release"
    );
    store.release_name("pod_ns_1", "id1").expect("release");
    store
        .reserve_name("pod_ns_1", "id2")
        .expect("reserve after release");
}

#[test]
fn undecodable_record_names_table_and_key() {
    let (_dir, _path, store) = open_temp();
    store
        .put(Table::Containers, "c1", &"not a record")
        .expect("put");
    let err = store
        .get::<Rec>(Table::Containers, "c1")
        .expect_err("decode");
    let msg = err.to_string();
    assert!(msg.contains("containers") && msg.contains("c1"), "{msg}");
}
