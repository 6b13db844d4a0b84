//! Time as the tracker sees it: instants in Unix epoch milliseconds.
//!
//! Every instant in the core is a [`Millis`]; every span is an `i64` whose
//! name ends in `_ms`. The tracker never reads the wall clock: callers pass
//! the wall time in, which is what makes replays and tests deterministic.

use std::fmt;

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Millis(pub i64);

impl Millis {
    /// The current wall-clock time. Only adapters call this; the tracker never does.
    pub fn now() -> Millis {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(since_epoch.as_millis() as i64)
    }

    pub fn plus_ms(self, span_ms: i64) -> Millis {
        Millis(self.0.saturating_add(span_ms))
    }

    pub fn minus_ms(self, span_ms: i64) -> Millis {
        Millis(self.0.saturating_sub(span_ms))
    }

    /// `self - earlier`, in milliseconds (negative when `earlier` is later).
    pub fn since(self, earlier: Millis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 in UTC with milliseconds, for logs and messages.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(datetime) => datetime.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Converts a configured duration to whole milliseconds, saturating.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
