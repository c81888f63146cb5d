//! Single-use tokens: Exec, Attach and PortForward each park their request
//! here under a random token and hand out a URL that names it. The first
//! connection that presents the token takes the request; a token that was
//! used, expired, or never issued is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many requests may wait for their connection at once; beyond that
/// the oldest is dropped (a client that asks and never connects must not
/// grow berthd without bound).
const MAX_PENDING: usize = 4096;

/// Random bytes per token (hex-encoded in the URL).
const TOKEN_BYTES: usize = 16;

/// Parked requests by token.
pub struct Tokens<R> {
    lifetime: Duration,
    pending: Mutex<HashMap<String, (Instant, R)>>,
}

impl<R> Tokens<R> {
    /// An empty cache whose tokens live `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Parks `request` under a fresh random token and returns the token.
    pub fn insert(&self, request: R) -> std::io::Result<String> {
        let token = crate::id::random_hex(TOKEN_BYTES)?;
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, (at, _)| now.duration_since(*at) < self.lifetime);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(t, _)| t.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request parked under `token`, once; `None` when the token
    /// is unknown, used, or expired.
    pub fn take(&self, token: &str) -> Option<R> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (at, request) = pending.remove(token)?;
        (at.elapsed() < self.lifetime).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_once() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let a = tokens.insert("exec").expect("token");
        let b = tokens.insert("attach").expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_BYTES * 2);
        assert_eq!(tokens.take(&a), Some("exec"));
        assert_eq!(tokens.take(&a), None, "used");
        assert_eq!(tokens.take("nope"), None, "never issued");
        assert_eq!(tokens.take(&b), Some("attach"));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = Tokens::new(Duration::from_millis(1));
        let a = tokens.insert(1).expect("token");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.take(&a), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let first = tokens.insert(0).expect("token");
        for i in 1..=MAX_PENDING {
            tokens.insert(i).expect("token");
        }
        assert_eq!(tokens.take(&first), None, "the oldest was dropped");
        assert_eq!(
            tokens.pending.lock().map(|p| p.len()).unwrap_or_default(),
            MAX_PENDING
        );
    }
}
