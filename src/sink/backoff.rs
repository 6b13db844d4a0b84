//! How long the writers wait before trying again: the task's retries of a
//! batch and of the spool, and the dead-letter resend's. A module of its own
//! so that those two need nothing of each other.

use std::time::Duration;

/// The first retry waits this long; each further one twice as long, up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The wait before retry number `failures_in_a_row + 1`: 100 ms doubling,
/// raised to the server's `Retry-After` when it asks for longer, never more
/// than `max_backoff`.
pub(crate) fn backoff_delay(failures_in_a_row: u32, retry_after: Option<Duration>, max_backoff: Duration) -> Duration {
    let exponential = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures_in_a_row.min(31)));
    exponential.max(retry_after.unwrap_or_default()).min(max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_starts_at_100ms_doubles_and_is_capped() {
        let cap = Duration::from_secs(30);
        let delays: Vec<_> = (0..5).map(|failures| backoff_delay(failures, None, cap)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS]);
        assert_eq!(backoff_delay(20, None, cap), cap);
        assert_eq!(backoff_delay(u32::MAX, None, cap), cap);
    }

    #[test]
    fn retry_after_raises_the_delay_but_never_above_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(5)), cap), Duration::from_secs(5));
        assert_eq!(backoff_delay(9, Some(Duration::from_secs(1)), cap), backoff_delay(9, None, cap));
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(120)), cap), cap);
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(1)), 5 * MS), 5 * MS);
    }
}
