//! Figures of an office day, read back from the line protocol a replay
//! wrote: what the tracker made of a simulated week at offices with
//! opening hours. Used by the office-day test and the load harness's
//! `office-day` scenario, on any build's output (so a build before a change
//! can be measured on the same events).
//!
//! It reads only the wire format (measurement, `office` and `outcome` tags,
//! the `waiting` and `in_service` fields, the time) and the offices' hours
//! from the config, never the tracker, so it checks the output as a user's
//! query would see it.

use std::collections::BTreeMap;

use chrono::{Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone};

use crate::config::OfficeConfig;
use crate::ids::OfficeId;
use crate::time::Millis;

/// A simulated week (or any run of days) ready to replay against its
/// offices' hours: the events as NDJSON, a heartbeat per office the next
/// morning (the wall clock passing the last day's close, as it would for a
/// daemon), the ground truth, and the config of the offices.
pub struct OfficeWeek {
    pub events_ndjson: String,
    pub events: u64,
    pub truth: Vec<super::TicketTruth>,
    /// `[offices.<id>]` sections with the simulated hours.
    pub offices_toml: String,
}

impl OfficeWeek {
    /// Simulates `options` (which must end: `days` above 0) to its end.
    pub fn simulate(options: &super::SimOptions) -> OfficeWeek {
        let mut simulation = super::Simulation::recording_truth(options);
        let mut events_ndjson = String::new();
        let mut events = 0;
        let mut last_by_office: BTreeMap<String, Millis> = BTreeMap::new();
        for event in simulation.by_ref() {
            events_ndjson.push_str(&event.payload);
            events_ndjson.push('\n');
            events += 1;
            last_by_office.insert(event.office, event.at);
        }
        // The next morning: past every close + grace, before any opening.
        for (office, last) in &last_by_office {
            let next_morning = last.plus_ms(12 * 3_600_000);
            events_ndjson
                .push_str(&format!("{{\"type\":\"heartbeat\",\"ts\":{},\"office\":\"{office}\"}}\n", next_morning.0));
            events += 1;
        }
        OfficeWeek {
            events_ndjson,
            events,
            truth: simulation.truth(),
            offices_toml: super::office_config_toml(options),
        }
    }

    /// Tickets the tracker must write as `abandoned`: seen, and ended with no event.
    pub fn expected_abandoned(&self) -> u64 {
        self.truth.iter().filter(|ticket| ticket.seen && ticket.end.is_silent()).count() as u64
    }

    /// Tickets by how they ended, seen or not.
    pub fn ends(&self) -> BTreeMap<&'static str, u64> {
        let mut ends = BTreeMap::new();
        for ticket in &self.truth {
            *ends.entry(ticket.end.as_str()).or_default() += 1;
        }
        ends
    }
}

/// The local time of day at which leftover queues are counted.
pub const EVENING_MINUTE: u32 = 20 * 60;

/// What a replay wrote, against the offices' opening hours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayAudit {
    /// Lines read.
    pub points: u64,
    pub by_measurement: BTreeMap<String, u64>,
    /// `ticket` points by `outcome`.
    pub ticket_outcomes: BTreeMap<String, u64>,
    /// `queue` and `office` rows stamped outside every open day (from a day's
    /// first opening to its last close + grace) of their office.
    pub rows_outside_hours: u64,
    /// Of those, the rows showing someone waiting or in service.
    pub rows_outside_hours_with_people: u64,
    /// Summed over office-days: the office's `waiting` at 20:00 local (its
    /// last `office` row at or before then, that day).
    pub waiting_at_evening: i64,
    /// Office-days counted in `waiting_at_evening`.
    pub evenings: u64,
}

impl DayAudit {
    /// Reads the line protocol of a replay. Offices not in `offices`, or
    /// without hours, are counted in the totals only.
    pub fn of(lines: &str, offices: &BTreeMap<OfficeId, OfficeConfig>, close_grace_ms: i64) -> DayAudit {
        let mut audit = DayAudit::default();
        // office → local date → (time, waiting) of its last `office` row at or before 20:00.
        let mut evenings: BTreeMap<String, BTreeMap<NaiveDate, (Millis, i64)>> = BTreeMap::new();
        for line in lines.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let Some(row) = Row::parse(line) else { continue };
            audit.points += 1;
            *audit.by_measurement.entry(row.measurement.to_string()).or_default() += 1;
            if row.measurement == "ticket" {
                let outcome = row.tag("outcome").unwrap_or("none").to_string();
                *audit.ticket_outcomes.entry(outcome).or_default() += 1;
                continue;
            }
            if row.measurement != "queue" && row.measurement != "office" {
                continue;
            }
            let Some(config) = row
                .tag("office")
                .and_then(|office| OfficeId::parse(office).ok())
                .and_then(|office| offices.get(&office))
                .filter(|config| config.has_hours())
            else {
                continue;
            };
            let people = row.int("waiting").unwrap_or(0) + row.int("in_service").unwrap_or(0);
            if !within_open_day(config, row.at, close_grace_ms) {
                audit.rows_outside_hours += 1;
                audit.rows_outside_hours_with_people += u64::from(people > 0);
            }
            if row.measurement == "office" {
                let local = config.timezone.timestamp_millis_opt(row.at.0).earliest();
                if let Some(local) = local {
                    let date = local.date_naive();
                    let evening = local_instant(config, date, EVENING_MINUTE);
                    // A row after 20:00 also tells the state at 20:00 of the
                    // next day only through rows of that day, so it is kept
                    // for its own date only while at or before 20:00.
                    if evening.is_some_and(|evening| row.at <= evening) {
                        let waiting = row.int("waiting").unwrap_or(0);
                        let office = row.tag("office").unwrap_or_default().to_string();
                        let day = evenings.entry(office).or_default().entry(date).or_insert((row.at, waiting));
                        if row.at >= day.0 {
                            *day = (row.at, waiting);
                        }
                    }
                }
            }
        }
        for days in evenings.values() {
            for (_, waiting) in days.values() {
                audit.waiting_at_evening += waiting;
                audit.evenings += 1;
            }
        }
        audit
    }

    /// `ticket` points of `outcome`.
    pub fn tickets(&self, outcome: &str) -> u64 {
        self.ticket_outcomes.get(outcome).copied().unwrap_or(0)
    }
}

/// Whether `at` lies within an open day of the office: from the day's first
/// opening to its last close + grace (lunch breaks inside).
pub fn within_open_day(config: &OfficeConfig, at: Millis, close_grace_ms: i64) -> bool {
    use chrono::Datelike;
    let Some(local) = config.timezone.timestamp_millis_opt(at.0).earliest() else { return false };
    let (Some(first), Some(last)) =
        (config.hours.iter().map(|range| range.0).min(), config.hours.iter().map(|range| range.1).max())
    else {
        return false;
    };
    // The grace may reach past midnight: the day before counts too.
    [local.date_naive(), local.date_naive() - ChronoDuration::days(1)].into_iter().any(|date| {
        config.days[date.weekday().num_days_from_monday() as usize]
            && local_instant(config, date, first).is_some_and(|open| open <= at)
            && local_instant(config, date, last).is_some_and(|close| at < close.plus_ms(close_grace_ms))
    })
}

/// `minute` (0..=1440) after local midnight of `date` in the office's zone.
fn local_instant(config: &OfficeConfig, date: NaiveDate, minute: u32) -> Option<Millis> {
    let (date, minute) = if minute >= 1440 { (date.succ_opt()?, minute - 1440) } else { (date, minute) };
    let time = NaiveTime::from_hms_opt(minute / 60, minute % 60, 0)?;
    let local = config.timezone.from_local_datetime(&date.and_time(time)).earliest()?;
    Some(Millis(local.timestamp_millis()))
}

/// One line of line protocol, as much of it as the audit reads.
struct Row<'a> {
    measurement: &'a str,
    tags: Vec<(&'a str, &'a str)>,
    fields: Vec<(&'a str, &'a str)>,
    at: Millis,
}

impl<'a> Row<'a> {
    /// Splits `measurement,tags fields time` at the spaces outside quotes and
    /// escapes. Escaped characters are left escaped: the audit compares only
    /// plain identifiers and numbers.
    fn parse(line: &'a str) -> Option<Row<'a>> {
        let parts = split_unquoted(line, b' ');
        let [series, fields, time] = parts.as_slice() else { return None };
        let mut series = split_unquoted(series, b',').into_iter();
        let measurement = series.next()?;
        let tags = series.filter_map(|tag| tag.split_once('=')).collect();
        let fields = split_unquoted(fields, b',').into_iter().filter_map(|field| field.split_once('=')).collect();
        let time_ns: i64 = time.parse().ok()?;
        Some(Row { measurement, tags, fields, at: Millis(time_ns.div_euclid(1_000_000)) })
    }

    fn tag(&self, key: &str) -> Option<&'a str> {
        self.tags.iter().find(|(name, _)| *name == key).map(|(_, value)| *value)
    }

    fn int(&self, key: &str) -> Option<i64> {
        let (_, value) = self.fields.iter().find(|(name, _)| *name == key)?;
        value.strip_suffix('i')?.parse().ok()
    }
}

/// Splits at `separator` where it is neither escaped nor inside a quoted string.
fn split_unquoted(text: &str, separator: u8) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut parts, mut start, mut quoted, mut index) = (Vec::new(), 0, false, 0);
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 1,
            b'"' => quoted = !quoted,
            byte if byte == separator && !quoted => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    parts.push(&text[start.min(text.len())..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_hours;

    fn offices() -> BTreeMap<OfficeId, OfficeConfig> {
        let config = OfficeConfig { hours: parse_hours("07:30-15:30").unwrap(), ..OfficeConfig::default() };
        BTreeMap::from([(OfficeId::parse("o1").unwrap(), config)])
    }

    #[test]
    fn rows_outside_the_open_day_and_the_evening_queue_are_counted() {
        // 2026-12-07, Jakarta (+07:00): 08:00 local is 01:00Z, 15:50 local 08:50Z, 19:00 local 12:00Z.
        let ns = |text: &str| crate::time::parse_rfc3339(text).unwrap().0 * 1_000_000;
        let lines = [
            format!("office,office=o1 waiting=3i,in_service=1i,name=\"a b\" {}", ns("2026-12-07T01:00:00Z")),
            format!("office,office=o1 waiting=2i,in_service=0i {}", ns("2026-12-07T08:50:00Z")),
            format!("queue,office=o1,service=ktp waiting=2i,in_service=0i {}", ns("2026-12-07T12:00:00Z")),
            format!("office,office=o1 waiting=2i,in_service=0i {}", ns("2026-12-07T12:00:00Z")),
            format!(
                "ticket,office=o1,outcome=abandoned,service=ktp ticket=\"A 1\",recalls=0i {}",
                ns("2026-12-07T08:30:00Z")
            ),
        ]
        .join("\n");
        let audit = DayAudit::of(&lines, &offices(), 30 * 60_000);
        assert_eq!(audit.points, 5);
        assert_eq!(audit.tickets("abandoned"), 1);
        // 15:50 is within the grace; 19:00 is outside, twice (queue and office).
        assert_eq!((audit.rows_outside_hours, audit.rows_outside_hours_with_people), (2, 2));
        assert_eq!((audit.waiting_at_evening, audit.evenings), (2, 1));
    }
}
