//! Object ids: sandboxes, containers and execs get random hex ids, and
//! sandboxes and containers are found by full id or a unique prefix (as
//! `crictl` shows them shortened).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// A new random id of `bytes` bytes, as lowercase hex (32 bytes give the
/// 64-digit ids the kubelet is used to).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// What a lookup by id or id prefix found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Exactly one object.
    Found(T),
    /// Several objects share the prefix.
    Ambiguous,
    /// No object has the id or prefix.
    NotFound,
}

/// Finds `id` in `objects`: the full id first, else the one id that starts
/// with it.
pub fn find<'a, T>(objects: &'a HashMap<String, T>, id: &str) -> Lookup<&'a T> {
    if let Some(object) = objects.get(id) {
        return Lookup::Found(object);
    }
    let mut matches = objects.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, object)), None) => Lookup::Found(object),
        (Some(_), Some(_)) => Lookup::Ambiguous,
        (None, _) => Lookup::NotFound,
    }
}

/// One object (sandbox, container) in memory: its record and the lock its
/// lifecycle operations take, so operations on one object are serialised
/// without a lock over all objects.
pub struct Object<R> {
    record: Mutex<R>,
    /// Held by an operation (start, stop, remove, ...) for its duration.
    pub op: tokio::sync::Mutex<()>,
}

impl<R: Clone> Object<R> {
    /// A copy of the current record.
    pub fn record(&self) -> R {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What `read` makes of the current record, without copying it.
    pub fn with<T>(&self, read: impl FnOnce(&R) -> T) -> T {
        read(&self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the record in place when `change` says it did (returns
    /// `true`), atomically with respect to every other reader and writer;
    /// returns the changed record.
    pub fn update(&self, change: impl FnOnce(&mut R) -> bool) -> Option<R> {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut record).then(|| record.clone())
    }

    /// Replaces the record (after it was written to the store).
    pub fn set(&self, record: R) {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = record;
    }
}

/// The objects of one kind, by id.
pub struct Objects<R> {
    by_id: RwLock<HashMap<String, Arc<Object<R>>>>,
}

impl<R: Clone> Default for Objects<R> {
    fn default() -> Self {
        Objects {
            by_id: RwLock::new(HashMap::new()),
        }
    }
}

impl<R: Clone> Objects<R> {
    /// Adds (or replaces) the object `id`.
    pub fn insert(&self, id: &str, record: R) -> Arc<Object<R>> {
        let object = Arc::new(Object {
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
        });
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), object.clone());
        object
    }

    /// Forgets the object `id`.
    pub fn remove(&self, id: &str) {
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The object with this full id or unique id prefix.
    pub fn find(&self, id: &str) -> Lookup<Arc<Object<R>>> {
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        match find(&by_id, id) {
            Lookup::Found(object) => Lookup::Found(object.clone()),
            Lookup::Ambiguous => Lookup::Ambiguous,
            Lookup::NotFound => Lookup::NotFound,
        }
    }

    /// Every object.
    pub fn all(&self) -> Vec<Arc<Object<R>>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let a = random_hex(32).expect("id");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32).expect("id"));
    }

    #[test]
    fn full_id_or_unique_prefix() {
        let objects: HashMap<String, u8> = [
            ("abc1".to_string(), 1),
            ("abc2".to_string(), 2),
            ("ab".to_string(), 3),
        ]
        .into();
        assert_eq!(find(&objects, "ab"), Lookup::Found(&3), "a full id wins");
        assert_eq!(find(&objects, "abc1"), Lookup::Found(&1));
        assert_eq!(find(&objects, "abc"), Lookup::Ambiguous);
        assert_eq!(find(&objects, "x"), Lookup::NotFound);
    }
}
