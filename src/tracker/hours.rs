//! An office's opening hours as instants: when it is open, and when its
//! day closes.
//!
//! The config gives hours as minute-of-day ranges in the office's time zone
//! and a set of open weekdays (`OfficeConfig`). The tracker asks two things
//! of them, both on event time: whether the office is open at an instant
//! (the `open` field, a transition being news), and when the day that an
//! instant belongs to closes (segments still open then are closed).
//!
//! What must stay true:
//! - **A day closes at the end of its last range.** Gaps between ranges of
//!   the same day (lunch) close nothing. A range ending at 24:00 followed by
//!   one starting at 00:00 the next day is one stretch: no close at
//!   midnight. An office open round the clock never closes, and the caller
//!   keeps the `max_ticket_age` rule.
//! - **Pure and cheap.** Answers depend on the config and the instant alone;
//!   the open stretches of a window of days around the last question are
//!   kept, so the questions of one day cost a binary search, not a time-zone
//!   conversion each.

use std::cell::RefCell;

use chrono::{Datelike, Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone};

use crate::config::OfficeConfig;
use crate::time::Millis;

/// Days of open stretches computed at once.
const WINDOW_DAYS: i64 = 16;
/// How far ahead a day close is looked for: past this, there is none
/// (hours on no day, or open round the clock).
const LOOKAHEAD_DAYS: i64 = 8;
const DAY_MS: i64 = 86_400_000;

/// The opening hours of one office, with a cache of their instants.
#[derive(Debug, Clone)]
pub(super) struct Hours {
    timezone: chrono_tz::Tz,
    ranges: Vec<(u32, u32)>,
    days: [bool; 7],
    window: RefCell<Window>,
}

/// The open stretches `[start, end)` (merged where one ends as the next
/// begins) of the local dates from `first_date` on, covering the instants
/// `[from, to)`. A stretch reaching `to` may go on beyond it.
#[derive(Debug, Clone, Default)]
struct Window {
    from: Millis,
    to: Millis,
    stretches: Vec<Stretch>,
}

#[derive(Debug, Clone, Copy)]
struct Stretch {
    start: Millis,
    end: Millis,
    /// Whether the day closes at `end`: the next stretch begins on a later
    /// local date (a gap within the same date is a break, not a close).
    closes_day: bool,
}

impl Hours {
    /// The hours of an office, if it has any.
    pub(super) fn of(config: &OfficeConfig) -> Option<Hours> {
        config.has_hours().then(|| Hours {
            timezone: config.timezone,
            ranges: config.hours.clone(),
            days: config.days,
            window: RefCell::new(Window::default()),
        })
    }

    /// Whether the office is open at `at`.
    pub(super) fn is_open_at(&self, at: Millis) -> bool {
        self.with_window(at, |window| window.stretch_at(at).is_some())
    }

    /// Whether an opening or a closing lies in `(after, upto]`: the snapshot
    /// at `upto` is then the first at or after it.
    pub(super) fn changes_within(&self, after: Millis, upto: Millis) -> bool {
        self.next_change_after(after).is_some_and(|change| change <= upto)
    }

    /// The first opening or closing after `at`, if one comes within the look-ahead.
    pub(super) fn next_change_after(&self, at: Millis) -> Option<Millis> {
        self.with_window(at, |window| {
            let index = window.stretches.partition_point(|stretch| stretch.end <= at);
            let stretch = window.stretches.get(index)?;
            let change = if stretch.start > at { stretch.start } else { stretch.end };
            (change < window.to).then_some(change)
        })
    }

    /// The close of the day `anchor` belongs to: the first day close after
    /// `anchor` (strictly: a ticket taken at the closing moment is after
    /// closing, and waits for the next day's close). `None` when there is no
    /// close within the look-ahead.
    pub(super) fn day_close_after(&self, anchor: Millis) -> Option<Millis> {
        self.with_window(anchor, |window| {
            let index = window.stretches.partition_point(|stretch| stretch.end <= anchor);
            window.stretches[index..]
                .iter()
                .find(|stretch| stretch.closes_day)
                .map(|stretch| stretch.end)
                .filter(|close| close.since(anchor) <= LOOKAHEAD_DAYS * DAY_MS)
        })
    }

    /// Runs `query` on a window that covers `at` and the look-ahead after it.
    fn with_window<T>(&self, at: Millis, query: impl FnOnce(&Window) -> T) -> T {
        let mut window = self.window.borrow_mut();
        let covered = window.from <= at && at.plus_ms(LOOKAHEAD_DAYS * DAY_MS) < window.to;
        if !covered {
            *window = self.window_from(at);
        }
        query(&window)
    }

    /// The stretches of the local dates from the day before `at`'s on.
    fn window_from(&self, at: Millis) -> Window {
        let Some(local) = self.timezone.timestamp_millis_opt(at.0).earliest() else {
            return Window { from: at, to: at, stretches: Vec::new() };
        };
        let first_date = local.date_naive() - ChronoDuration::days(1);
        let mut ranges: Vec<(Millis, Millis, NaiveDate)> = Vec::new();
        for offset in 0..WINDOW_DAYS {
            let date = first_date + ChronoDuration::days(offset);
            if !self.days[date.weekday().num_days_from_monday() as usize] {
                continue;
            }
            for (start, end) in &self.ranges {
                if let (Some(start), Some(end)) = (self.instant(date, *start), self.instant(date, *end)) {
                    ranges.push((start, end, date));
                }
            }
        }
        ranges.sort_by_key(|(start, _, _)| *start);
        let from = self.instant(first_date, 0).unwrap_or(at.minus_ms(DAY_MS));
        let to = self.instant(first_date + ChronoDuration::days(WINDOW_DAYS), 0).unwrap_or(at.plus_ms(DAY_MS));
        // Merge ranges that touch or overlap; remember the date each merged
        // stretch ends on, to tell a break from a close.
        let mut merged: Vec<(Millis, Millis, NaiveDate)> = Vec::new();
        for (start, end, date) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => {
                    if end > last.1 {
                        last.1 = end;
                        last.2 = date;
                    }
                }
                _ => merged.push((start, end, date)),
            }
        }
        let stretches = merged
            .iter()
            .enumerate()
            .map(|(index, (start, end, date))| {
                let closes_day = match merged.get(index + 1) {
                    Some((_, _, next_date)) => next_date > date,
                    // The last stretch: a close, unless it may go on past the window.
                    None => *end < to,
                };
                Stretch { start: *start, end: *end, closes_day }
            })
            .collect();
        Window { from, to, stretches }
    }

    /// The instant of `minute` (0..=1440) after local midnight of `date`.
    fn instant(&self, date: NaiveDate, minute: u32) -> Option<Millis> {
        let (date, minute) = if minute >= 1440 { (date.succ_opt()?, minute - 1440) } else { (date, minute) };
        let time = NaiveTime::from_hms_opt(minute / 60, minute % 60, 0)?;
        let local = date.and_time(time);
        // A time skipped by a daylight-saving change: the first instant after the gap.
        let resolved = self
            .timezone
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| self.timezone.from_local_datetime(&(local + ChronoDuration::hours(1))).earliest())?;
        Some(Millis(resolved.timestamp_millis()))
    }
}

impl Window {
    fn stretch_at(&self, at: Millis) -> Option<&Stretch> {
        let index = self.stretches.partition_point(|stretch| stretch.end <= at);
        self.stretches.get(index).filter(|stretch| stretch.start <= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_days, parse_hours};

    fn hours(zone: &str, ranges: &str, days: &str) -> Hours {
        let config = OfficeConfig {
            timezone: zone.parse().unwrap(),
            hours: parse_hours(ranges).unwrap(),
            days: parse_days(days).unwrap(),
            ..OfficeConfig::default()
        };
        Hours::of(&config).unwrap()
    }

    fn at(text: &str) -> Millis {
        crate::time::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn a_day_closes_at_the_end_of_its_last_range_and_lunch_closes_nothing() {
        let hours = hours("Asia/Jakarta", "07:30-12:00,13:00-15:30", "Mon-Fri");
        // Monday 2026-12-07.
        assert_eq!(hours.day_close_after(at("2026-12-07T08:00:00+07:00")), Some(at("2026-12-07T15:30:00+07:00")));
        assert_eq!(hours.day_close_after(at("2026-12-07T12:30:00+07:00")), Some(at("2026-12-07T15:30:00+07:00")));
        // Before opening: the same day.
        assert_eq!(hours.day_close_after(at("2026-12-07T06:00:00+07:00")), Some(at("2026-12-07T15:30:00+07:00")));
        // At or after the close: the next open day's (Friday's close is followed by Monday's).
        assert_eq!(hours.day_close_after(at("2026-12-07T15:30:00+07:00")), Some(at("2026-12-08T15:30:00+07:00")));
        assert_eq!(hours.day_close_after(at("2026-12-11T18:00:00+07:00")), Some(at("2026-12-14T15:30:00+07:00")));
        assert!(hours.is_open_at(at("2026-12-07T07:30:00+07:00")));
        assert!(!hours.is_open_at(at("2026-12-07T12:00:00+07:00")));
        assert!(!hours.is_open_at(at("2026-12-12T09:00:00+07:00")));
        assert_eq!(hours.next_change_after(at("2026-12-07T11:00:00+07:00")), Some(at("2026-12-07T12:00:00+07:00")));
        assert_eq!(hours.next_change_after(at("2026-12-07T12:00:00+07:00")), Some(at("2026-12-07T13:00:00+07:00")));
    }

    #[test]
    fn each_zone_closes_on_its_own_clock() {
        for (zone, offset) in [("Asia/Jakarta", "+07:00"), ("Asia/Makassar", "+08:00"), ("Asia/Jayapura", "+09:00")] {
            let hours = hours(zone, "08:00-16:00", "Mon-Sun");
            let morning = at(&format!("2026-12-07T09:00:00{offset}"));
            assert_eq!(hours.day_close_after(morning), Some(at(&format!("2026-12-07T16:00:00{offset}"))), "{zone}");
        }
    }

    #[test]
    fn hours_ending_at_midnight_close_at_midnight_unless_the_next_day_opens_then() {
        let evening = hours("Asia/Jakarta", "16:00-24:00", "Mon-Sun");
        assert_eq!(evening.day_close_after(at("2026-12-07T20:00:00+07:00")), Some(at("2026-12-08T00:00:00+07:00")));
        let round_the_clock = hours("Asia/Jakarta", "00:00-24:00", "Mon-Sun");
        assert_eq!(round_the_clock.day_close_after(at("2026-12-07T20:00:00+07:00")), None);
        assert_eq!(round_the_clock.next_change_after(at("2026-12-07T20:00:00+07:00")), None);
        // Open round the clock on weekdays: the close is Friday's midnight.
        let weekdays = hours("Asia/Jakarta", "00:00-24:00", "Mon-Fri");
        assert_eq!(weekdays.day_close_after(at("2026-12-07T20:00:00+07:00")), Some(at("2026-12-12T00:00:00+07:00")));
    }

    #[test]
    fn the_window_moves_with_the_questions() {
        let hours = hours("Asia/Jakarta", "08:00-16:00", "Mon-Sun");
        let mut day = at("2026-12-07T09:00:00+07:00");
        for _ in 0..60 {
            assert_eq!(hours.day_close_after(day), Some(day.plus_ms(7 * 3_600_000)));
            day = day.plus_ms(DAY_MS);
        }
        // And back.
        assert_eq!(hours.day_close_after(at("2026-12-07T09:00:00+07:00")), Some(at("2026-12-07T16:00:00+07:00")));
        assert!(hours.changes_within(at("2026-12-07T15:59:55+07:00"), at("2026-12-07T16:00:05+07:00")));
        assert!(!hours.changes_within(at("2026-12-07T15:59:45+07:00"), at("2026-12-07T15:59:55+07:00")));
    }
}
