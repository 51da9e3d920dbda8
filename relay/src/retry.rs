//! Retry schedule of an outbox row the broker rejected.
//!
//! Invariant: the delay grows with each attempt and is capped at five minutes.

use std::time::Duration;

/// Retry delay of an outbox row after its `attempts`-th failed publish.
pub fn retry_after(attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 10)).unwrap_or(0);
    Duration::from_millis(500u64.saturating_mul(2u64.pow(exp))).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_retries_back_off_to_five_minutes() {
        assert_eq!(retry_after(0), Duration::from_millis(500));
        assert_eq!(retry_after(1), Duration::from_secs(1));
        assert_eq!(retry_after(20), Duration::from_secs(300));
    }
}
