//! Object ids: sandboxes, containers and execs get random hex ids, and
//! sandboxes and containers are found by full id or a unique prefix (as
//! `crictl` shows them shortened).

use std::collections::HashMap;

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
