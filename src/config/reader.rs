//! Reading one TOML table key by key ([`Section`]), and the bounds that
//! durations in every section share.
//!
//! What must stay true: every key a section reads goes through
//! [`Section::get`], which marks it known (whatever is left is an "unknown
//! key") and, in tests, records it for the reference check.

use std::collections::BTreeSet;
use std::time::Duration;

/// The longest duration any key accepts. Every point's time is an event time
/// plus at most a duration or two (an expiry is the last event plus
/// `max_ticket_age` plus the window; a breach is a deadline), and event times
/// lie between 1970 and the wall clock plus `max_future_skew`, so a year
/// keeps every point far inside InfluxDB's range (1677-09-21 to 2262-04-11).
/// No queue needs a longer setting: a longer value is a typo.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The core counts in whole milliseconds: a shorter duration would be zero.
pub(super) const MILLISECOND: Duration = Duration::from_millis(1);

/// Gauges and silence are judged on the daemon's ticks (every 200 ms); an
/// interval below a second would be a row per office on every tick, and a
/// silence shorter than a second is no silence.
pub(super) const SECOND: Duration = Duration::from_secs(1);

/// Reports `key` when `value` is below `min`; true when it is not.
pub(super) fn at_least(key: &str, value: Duration, min: Duration, problems: &mut Vec<String>) -> bool {
    if value < min {
        problems.push(format!("{key}: must be at least {}", show(min)));
        return false;
    }
    true
}

/// Reports `key` when `value` is above `max`; true when it is not.
pub(super) fn at_most(key: &str, value: Duration, max: Duration, problems: &mut Vec<String>) -> bool {
    if value > max {
        problems.push(format!("{key}: must be at most {}", show(max)));
        return false;
    }
    true
}

/// A duration as a config file would write it; whole days as days
/// (`humantime` would show 365 days in months of 30.44 days).
pub(super) fn show(duration: Duration) -> String {
    const DAY_S: u64 = 24 * 3600;
    match duration.as_secs() {
        seconds if seconds >= DAY_S && seconds % DAY_S == 0 && duration.subsec_nanos() == 0 => {
            format!("{}days", seconds / DAY_S)
        }
        _ => humantime::format_duration(duration).to_string(),
    }
}

/// A table being read: remembers which keys were consumed so that the rest
/// can be reported as unknown.
pub(super) struct Section<'a> {
    table: &'a toml::Table,
    path: String,
    seen: BTreeSet<String>,
}

impl<'a> Section<'a> {
    pub(super) fn new(table: &'a toml::Table, path: &str) -> Section<'a> {
        Section { table, path: path.to_string(), seen: BTreeSet::new() }
    }

    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub(super) fn mark_seen(&mut self, key: &str) {
        self.seen.insert(key.to_string());
    }

    pub(super) fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        #[cfg(test)]
        super::reference_tests::asked(&self.key(key));
        self.seen.insert(key.to_string());
        self.table.get(key)
    }

    pub(super) fn table(&mut self, key: &str, problems: &mut Vec<String>) -> Option<&'a toml::Table> {
        match self.get(key)? {
            toml::Value::Table(table) => Some(table),
            _ => {
                problems.push(format!("{}: must be a table", self.key(key)));
                None
            }
        }
    }

    pub(super) fn string(&mut self, key: &str, problems: &mut Vec<String>) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(text) => Some(text.clone()),
            other => {
                problems.push(format!("{}: expected a string, found {}", self.key(key), other.type_str()));
                None
            }
        }
    }

    pub(super) fn strings(&mut self, key: &str, problems: &mut Vec<String>) -> Option<Vec<String>> {
        let full_key = self.key(key);
        match self.get(key)? {
            toml::Value::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(text) => texts.push(text.to_string()),
                        None => {
                            problems.push(format!("{full_key}: expected a list of strings"));
                            return None;
                        }
                    }
                }
                Some(texts)
            }
            _ => {
                problems.push(format!("{full_key}: expected a list of strings"));
                None
            }
        }
    }

    pub(super) fn positive_integer(&mut self, key: &str, problems: &mut Vec<String>) -> Option<usize> {
        match self.get(key)? {
            toml::Value::Integer(number) if *number > 0 => usize::try_from(*number).ok(),
            other => {
                problems.push(format!("{}: expected a positive integer, found {other}", self.key(key)));
                None
            }
        }
    }

    pub(super) fn duration(&mut self, key: &str, problems: &mut Vec<String>) -> Option<Duration> {
        let full_key = self.key(key);
        match self.get(key)? {
            toml::Value::String(text) => match humantime::parse_duration(text) {
                Ok(duration) if !at_most(&full_key, duration, MAX_DURATION, problems) => None,
                Ok(duration) => Some(duration),
                Err(_) => {
                    problems
                        .push(format!("{full_key}: invalid duration {text:?} (write e.g. \"10s\", \"15m\", \"12h\")"));
                    None
                }
            },
            other => {
                problems.push(format!("{full_key}: expected a duration string such as \"10s\", found {other}"));
                None
            }
        }
    }

    pub(super) fn finish(self, problems: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                problems.push(format!("{}: unknown key", self.key(key)));
            }
        }
    }
}
