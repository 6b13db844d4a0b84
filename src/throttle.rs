//! Rate-limited logging: a line that can repeat per message or per attempt
//! is written the first time, then at most once per interval, carrying how
//! many were left out in between.
//!
//! A module of its own, outside `stats`, so that the adapters that log (MQTT,
//! the pipeline) need nothing of the counts or the tracker. Some modules still
//! keep a rate rule of their own (the sink's failure log, the journal's,
//! alerts' echoes); this is where they belong. What must stay true: the map of
//! keys is bounded (keys come from input), and the caller is told how many
//! lines a written one stands for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Decides whether a repeating log line (per key) may be written now: the
/// first occurrence always, then at most once per `every`, reporting how many
/// were suppressed in between.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter { every, last: HashMap::new() }
    }

    /// `Some(suppressed_since_last)` when the caller should log now.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(key) {
            None => {
                if self.last.len() > 10_000 {
                    self.last.clear(); // keys come from input; keep the map bounded
                }
                self.last.insert(key.to_string(), (now, 0));
                Some(0)
            }
            Some((last, suppressed)) if now.duration_since(*last) >= self.every => {
                let count = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(count)
            }
            Some((_, suppressed)) => {
                *suppressed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_the_first_then_once_per_interval_with_the_suppressed_count() {
        let mut limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.allow("a", start), Some(0));
        assert_eq!(limiter.allow("a", start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow("a", start + Duration::from_secs(2)), None);
        assert_eq!(limiter.allow("b", start + Duration::from_secs(2)), Some(0));
        assert_eq!(limiter.allow("a", start + Duration::from_secs(11)), Some(2));
    }
}
