//! Times as the CRI carries them: nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in nanoseconds since the epoch (0 before it, `i64::MAX` past 2262).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nanoseconds_since_the_epoch() {
        assert_eq!(unix_nanos(UNIX_EPOCH + Duration::new(2, 5)), 2_000_000_005);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(now_nanos() > 1_700_000_000_000_000_000);
    }
}
