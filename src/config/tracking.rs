//! `[tracking]`: the reorder window, ticket ages, gauges, the office clocks.

use std::time::Duration;

use super::reader::{at_least, show, Section, MILLISECOND, SECOND};
use crate::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingConfig {
    pub reorder_window: Duration,
    pub max_ticket_age: Duration,
    pub dedup_horizon: Duration,
    pub max_future_skew: Duration,
    pub snapshot_interval: Duration,
    pub gauge_idle_after: Duration,
    pub silence_after: Duration,
    /// How long after an office's day closes (the end of its last range of
    /// opening hours that day) the segments still open are closed:
    /// `abandoned` if never called, else `expired`.
    pub close_grace: Duration,
    /// Whether `queue` and `office` gauge rows are written at all (a
    /// backfill of months may do without them).
    pub gauges: bool,
    /// A `queue`/`office` row is written at least this often while something
    /// waits (a multiple of `snapshot_interval`), keeping `oldest_wait_s` fresh.
    pub gauge_keepalive: Duration,
    /// Event timestamps must be strictly after this instant (devices whose
    /// clock was never set send 0001-01-01, 1970 or 2000-01-01).
    pub min_timestamp: Millis,
    /// What office clocks follow: the wall clock (`run`) or event time (the demo).
    pub clock: ClockMode,
}

/// `tracking.clock`: whether an office clock may run ahead of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// An office clock never runs ahead of the real wall clock: an event
    /// stamped ahead of its arrival waits in the reorder buffer without
    /// dragging the clock (counted as `clock_ahead`).
    #[default]
    Wall,
    /// An office clock follows its newest event, however far ahead (the demo
    /// compresses time on purpose).
    Event,
}

impl ClockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::Wall => "wall",
            ClockMode::Event => "event",
        }
    }
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            reorder_window: Duration::from_secs(10),
            max_ticket_age: Duration::from_secs(12 * 3600),
            dedup_horizon: Duration::from_secs(3600),
            max_future_skew: Duration::from_secs(300),
            snapshot_interval: Duration::from_secs(10),
            gauge_idle_after: Duration::from_secs(3600),
            silence_after: Duration::from_secs(15 * 60),
            close_grace: Duration::from_secs(30 * 60),
            gauge_keepalive: Duration::from_secs(60),
            gauges: true,
            // 2020-01-01T00:00:00Z
            min_timestamp: Millis(1_577_836_800_000),
            clock: ClockMode::Wall,
        }
    }
}

/// 1970-01-01T00:00:00Z: `tracking.min_timestamp` may not be earlier (no
/// device sends a real time before it; a negative epoch is a clock never set).
const UNIX_EPOCH: Millis = Millis(0);

/// `[tracking]`: its values; how they relate is [`check_tracking`]'s.
pub(super) fn parse_tracking(table: &toml::Table, tracking: &mut TrackingConfig, problems: &mut Vec<String>) {
    let mut section = Section::new(table, "tracking");
    for (key, slot) in [
        ("reorder_window", &mut tracking.reorder_window),
        ("max_ticket_age", &mut tracking.max_ticket_age),
        ("dedup_horizon", &mut tracking.dedup_horizon),
        ("max_future_skew", &mut tracking.max_future_skew),
        ("snapshot_interval", &mut tracking.snapshot_interval),
        ("gauge_idle_after", &mut tracking.gauge_idle_after),
        ("silence_after", &mut tracking.silence_after),
        ("close_grace", &mut tracking.close_grace),
    ] {
        if let Some(value) = section.duration(key, problems) {
            *slot = value;
        }
    }
    if let Some(value) = section.get("gauges") {
        match value.as_bool() {
            Some(gauges) => tracking.gauges = gauges,
            None => problems.push("tracking.gauges: expected true or false".into()),
        }
    }
    match section.duration("gauge_keepalive", problems) {
        Some(keepalive) => tracking.gauge_keepalive = keepalive,
        // Unset: the default, rounded up to a multiple of the
        // interval, so that coarser gauges need no second key.
        None => {
            let whole_ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            let interval_ms = whole_ms(tracking.snapshot_interval).max(1);
            let default_ms = whole_ms(TrackingConfig::default().gauge_keepalive);
            let rounded_ms = default_ms.div_ceil(interval_ms).saturating_mul(interval_ms);
            tracking.gauge_keepalive = Duration::from_millis(rounded_ms);
        }
    }
    if let Some(text) = section.string("min_timestamp", problems) {
        match crate::time::parse_rfc3339(&text) {
            Some(at) if at < UNIX_EPOCH => {
                problems.push(format!("tracking.min_timestamp: {text:?} must not be before 1970-01-01T00:00:00Z"))
            }
            Some(at) => tracking.min_timestamp = at,
            None => problems.push(format!(
                "tracking.min_timestamp: {text:?} is not RFC 3339 with an offset (write e.g. \"2020-01-01T00:00:00Z\")"
            )),
        }
    }
    if let Some(clock) = section.string("clock", problems) {
        match clock.as_str() {
            "wall" => tracking.clock = ClockMode::Wall,
            "event" => tracking.clock = ClockMode::Event,
            other => problems.push(format!("tracking.clock: {other:?} is neither \"wall\" nor \"event\"")),
        }
    }
    section.finish(problems);
}

/// The bounds of the `[tracking]` durations and how they relate.
pub(super) fn check_tracking(tracking: &TrackingConfig, problems: &mut Vec<String>) {
    at_least("tracking.snapshot_interval", tracking.snapshot_interval, SECOND, problems);
    at_least("tracking.silence_after", tracking.silence_after, SECOND, problems);
    at_least("tracking.max_ticket_age", tracking.max_ticket_age, MILLISECOND, problems);
    // Events are put in their place only while their ticket may still be
    // open: a window as long as the maximum age would hold events for
    // tickets that expire meanwhile.
    if tracking.reorder_window >= tracking.max_ticket_age {
        problems.push(format!(
            "tracking.reorder_window: must be below tracking.max_ticket_age ({})",
            show(tracking.max_ticket_age)
        ));
    }
    // A redelivery may come as late as the window allows and still be taken
    // in order; it must still be recognised as a duplicate then.
    if tracking.dedup_horizon < tracking.reorder_window {
        problems.push(format!(
            "tracking.dedup_horizon: must be at least tracking.reorder_window ({})",
            show(tracking.reorder_window)
        ));
    }
    // Keep-alive rows are written at snapshot times.
    let interval_ns = tracking.snapshot_interval.as_nanos();
    if tracking.gauge_keepalive.is_zero()
        || interval_ns == 0
        || !tracking.gauge_keepalive.as_nanos().is_multiple_of(interval_ns)
    {
        problems.push(format!(
            "tracking.gauge_keepalive: must be a positive multiple of tracking.snapshot_interval ({})",
            show(tracking.snapshot_interval)
        ));
    }
}
