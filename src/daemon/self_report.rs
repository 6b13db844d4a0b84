//! The daemon's own `queuewatch` row.

use std::sync::Arc;

use crate::point::{FieldValue, Point};
use crate::sink::SinkProgress;
use crate::time::Millis;

/// The `queuewatch` measurement: what the daemon has done since it started.
/// Written at start and at every whole minute of the wall clock, so that a
/// dashboard (and the "queuewatch stopped writing" alert) sees the daemon
/// alive while every office is quiet. Pure: the caller gathers the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfReport {
    /// `mqtt.client_id`: one series per daemon.
    pub instance: Arc<str>,
    /// The point's time.
    pub at: Millis,
    /// When the daemon started, on the wall clock.
    pub started: Millis,
    /// Events accepted and messages rejected since the start.
    pub accepted: u64,
    pub rejected: u64,
    pub sink: SinkProgress,
    pub open_tickets: usize,
    /// The newest accepted event's ts over all offices.
    pub newest_event: Option<Millis>,
    /// MQTT sessions lost or taken over since the start (see `mqtt::session`).
    pub mqtt_sessions_lost: u64,
}

impl SelfReport {
    pub fn to_point(&self) -> Point {
        let mut point = Point::new("queuewatch", self.at.0.saturating_mul(1_000_000));
        point.tag("instance", Arc::clone(&self.instance));
        let count = |number: u64| FieldValue::Int(i64::try_from(number).unwrap_or(i64::MAX));
        let seconds = |span_ms: i64| FieldValue::Float(span_ms as f64 / 1000.0);
        point.field("accepted", count(self.accepted));
        point.field("rejected", count(self.rejected));
        point.field("points_written", count(self.sink.points_written));
        point.field("points_refused", count(self.sink.points_rejected));
        point.field("points_dead_letter_dropped", count(self.sink.points_dead_letter_dropped));
        point.field("open_tickets", count(self.open_tickets as u64));
        if let Some(newest) = self.newest_event {
            point.field("newest_event_age_s", seconds(self.at.since(newest)));
        }
        point.field("uptime_s", seconds(self.at.since(self.started)));
        point.field("mqtt_sessions_lost", count(self.mqtt_sessions_lost));
        point
    }
}

/// The first whole minute of the wall clock after `now`.
pub(super) fn next_whole_minute(now: Millis) -> Millis {
    const MINUTE_MS: i64 = 60_000;
    Millis(now.0.div_euclid(MINUTE_MS).saturating_add(1).saturating_mul(MINUTE_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: Millis = Millis(1_795_737_600_000);

    #[test]
    fn self_reports_fall_on_the_next_whole_minute() {
        assert_eq!(next_whole_minute(Millis(1_795_737_600_000)), Millis(1_795_737_660_000));
        assert_eq!(next_whole_minute(Millis(1_795_737_600_001)), Millis(1_795_737_660_000));
        assert_eq!(next_whole_minute(Millis(1_795_737_659_999)), Millis(1_795_737_660_000));
    }

    #[test]
    fn the_self_report_is_one_point_tagged_with_the_instance() {
        let report = SelfReport {
            instance: Arc::from("qw-1"),
            at: WALL,
            started: WALL.minus_ms(90_500),
            accepted: 1200,
            rejected: 3,
            sink: SinkProgress {
                points_handed: 9000,
                points_written: 8990,
                points_rejected: 2,
                points_dead_letter_dropped: 1,
                points_settled: 8992,
                ..SinkProgress::default()
            },
            open_tickets: 41,
            newest_event: Some(WALL.minus_ms(2_250)),
            mqtt_sessions_lost: 1,
        };
        assert_eq!(
            report.to_point().to_line(),
            "queuewatch,instance=qw-1 accepted=1200i,rejected=3i,points_written=8990i,points_refused=2i,\
             points_dead_letter_dropped=1i,open_tickets=41i,newest_event_age_s=2.25,uptime_s=90.5,mqtt_sessions_lost=1i 1795737600000000000"
        );
        let before_any_event = SelfReport { newest_event: None, ..report };
        assert!(!before_any_event.to_point().to_line().contains("newest_event_age_s"));
    }
}
