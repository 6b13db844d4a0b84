//! The demo's live table: per office, what the tap has shown so far.
//!
//! Pure: [`Board::apply`] takes tapped points and alerts, [`Board::render`]
//! returns the table as a `String`. No IO, no clock; the caller decides when
//! and where to draw it.
//!
//! What each column is made of:
//! - `waiting`: the `waiting` field of the office's latest `office` gauge.
//! - `oldest wait`: the largest `oldest_wait_s` among the latest `queue` rows
//!   of the office's services (rows are written only when they carry news,
//!   so each service's latest row is its current state).
//! - `service level`: the mean of `wait_within_target` over `ticket` points.
//! - `avg wait`: the mean of `wait_s` over `ticket` points.
//! - `served`, `no-shows`: `ticket` points by `outcome`.
//! - `left`: `ticket` points whose `outcome` is `cancelled` (gave up with an
//!   event) or `abandoned` (still waiting when the office closed: the
//!   tracker's name for people who left unseen).
//! - `open breaches`: alerts firing and not yet resolved (by alert id).
//!
//! "Latest" means latest received, not latest in time: before an office is
//! heard, the daemon writes its `office` gauges on the wall clock, and once it
//! is heard they restart on the office clock, which may be earlier.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::TimeZone as _;
use chrono_tz::Tz;

use crate::point::{FieldValue, Point};
use crate::tracker::{Alert, AlertState};

/// What the daemon shows the board: a copy of every point and alert
/// ([`crate::daemon::Outputs`]'s observers send them).
#[derive(Debug, Clone)]
pub enum Tapped {
    Point(Point),
    Alert(Alert),
}

/// An office the board shows from the start, in display order.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardOffice {
    pub id: String,
    pub name: String,
    pub zone: Tz,
}

/// What the board cannot learn from the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub events_published: u64,
    pub points_written: u64,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// The simulator has published its last day; the daemon runs on.
    SimulationEnded,
    /// Shutdown was asked for: the simulator stops, the daemon flushes.
    Stopping,
    /// Everything has stopped; the table is final.
    Stopped,
}

/// The state behind the table.
#[derive(Debug)]
pub struct Board {
    rows: Vec<Row>,
    row_by_office: HashMap<String, usize>,
    /// The line under the table (where the broker listens, where points go).
    note: String,
}

#[derive(Debug)]
struct Row {
    office: BoardOffice,
    waiting: Option<i64>,
    /// Time of the latest `office` gauge, in nanoseconds.
    clock_ns: Option<i64>,
    /// The latest `oldest_wait_s` of each service.
    oldest_wait_s: BTreeMap<String, f64>,
    tickets_with_target: u64,
    tickets_within_target: u64,
    tickets_with_wait: u64,
    wait_sum_s: f64,
    served: u64,
    no_shows: u64,
    left: u64,
    open_alerts: BTreeSet<String>,
}

const COLUMNS: [&str; 8] =
    ["waiting", "oldest wait", "service level", "avg wait", "served", "no-shows", "left", "open breaches"];

impl Board {
    pub fn new(offices: Vec<BoardOffice>, note: String) -> Board {
        let mut board = Board { rows: Vec::with_capacity(offices.len()), row_by_office: HashMap::new(), note };
        for office in offices {
            board.add_row(office);
        }
        board
    }

    pub fn apply(&mut self, tapped: &Tapped) {
        match tapped {
            Tapped::Point(point) => self.apply_point(point),
            Tapped::Alert(alert) => self.apply_alert(alert),
        }
    }

    pub fn apply_point(&mut self, point: &Point) {
        let Some(office) = point.tag_value("office") else { return };
        let row = self.row_mut(office);
        match point.measurement {
            "ticket" => row.apply_ticket(point),
            "office" => {
                row.clock_ns = Some(point.time_ns);
                if let Some(waiting) = int_field(point, "waiting") {
                    row.waiting = Some(waiting);
                }
            }
            "queue" => {
                let oldest_wait_s = float_field(point, "oldest_wait_s").unwrap_or(0.0);
                let service = point.tag_value("service").unwrap_or("unknown");
                row.oldest_wait_s.insert(service.to_owned(), oldest_wait_s);
            }
            _ => {}
        }
    }

    pub fn apply_alert(&mut self, alert: &Alert) {
        let row = self.row_mut(alert.office.as_str());
        match alert.state {
            AlertState::Firing => row.open_alerts.insert(alert.id.clone()),
            AlertState::Resolved => row.open_alerts.remove(&alert.id),
        };
    }

    /// The newest office clock shown, in the first office's zone.
    pub fn simulated_time(&self) -> Option<chrono::DateTime<Tz>> {
        let clock_ns = self.rows.iter().filter_map(|row| row.clock_ns).max()?;
        let zone = self.rows.first().map_or(chrono_tz::UTC, |row| row.office.zone);
        zone.timestamp_millis_opt(clock_ns.div_euclid(1_000_000)).single()
    }

    /// The header line, the table, and the note.
    pub fn render(&self, status: &Status) -> String {
        let simulated =
            self.simulated_time().map_or_else(|| "-".to_string(), |time| time.format("%a %d %b %H:%M %Z").to_string());
        let mut text = format!(
            "queuewatch demo · simulated {simulated} · events published {} · points written {}",
            status.events_published, status.points_written
        );
        match status.phase {
            Phase::Running => {}
            Phase::SimulationEnded => text.push_str(" · simulation ended"),
            Phase::Stopping => text.push_str(" · stopping"),
            Phase::Stopped => text.push_str(" · stopped"),
        }
        text.push_str("\n\n");

        let name_width = self.rows.iter().map(|row| row.office.name.chars().count()).max().unwrap_or(0).max(6);
        let _ = write!(text, "{:<name_width$}", "office");
        for column in COLUMNS {
            let _ = write!(text, "  {column}");
        }
        text.push('\n');
        for row in &self.rows {
            let _ = write!(text, "{:<name_width$}", row.office.name);
            for (column, cell) in COLUMNS.iter().zip(row.cells()) {
                let _ = write!(text, "  {cell:>width$}", width = column.len());
            }
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.note);
        if matches!(status.phase, Phase::Running | Phase::SimulationEnded) {
            text.push_str(" · Ctrl-C to stop");
        }
        text.push('\n');
        text
    }

    fn add_row(&mut self, office: BoardOffice) -> usize {
        let index = self.rows.len();
        self.row_by_office.insert(office.id.clone(), index);
        self.rows.push(Row {
            office,
            waiting: None,
            clock_ns: None,
            oldest_wait_s: BTreeMap::new(),
            tickets_with_target: 0,
            tickets_within_target: 0,
            tickets_with_wait: 0,
            wait_sum_s: 0.0,
            served: 0,
            no_shows: 0,
            left: 0,
            open_alerts: BTreeSet::new(),
        });
        index
    }

    /// The office's row; an office nobody announced gets one at the end.
    fn row_mut(&mut self, office: &str) -> &mut Row {
        let index = match self.row_by_office.get(office) {
            Some(index) => *index,
            None => {
                let zone = self.rows.first().map_or(chrono_tz::UTC, |row| row.office.zone);
                self.add_row(BoardOffice { id: office.to_string(), name: office.to_string(), zone })
            }
        };
        &mut self.rows[index]
    }
}

impl Row {
    fn apply_ticket(&mut self, point: &Point) {
        match point.tag_value("outcome") {
            Some("served") => self.served += 1,
            Some("no_show") => self.no_shows += 1,
            Some("cancelled" | "abandoned") => self.left += 1,
            _ => {}
        }
        if let Some(within) = int_field(point, "wait_within_target") {
            self.tickets_with_target += 1;
            self.tickets_within_target += u64::from(within == 1);
        }
        if let Some(wait_s) = float_field(point, "wait_s") {
            self.tickets_with_wait += 1;
            self.wait_sum_s += wait_s;
        }
    }

    /// The cells after the name, in [`COLUMNS`] order; `-` where nothing is known yet.
    fn cells(&self) -> [String; 8] {
        let unknown = || "-".to_string();
        [
            self.waiting.map_or_else(unknown, |waiting| waiting.to_string()),
            self.oldest_wait_s.values().copied().reduce(f64::max).map_or_else(unknown, format_wait),
            share(self.tickets_within_target, self.tickets_with_target)
                .map_or_else(unknown, |share| format!("{:.1}%", share * 100.0)),
            mean(self.wait_sum_s, self.tickets_with_wait).map_or_else(unknown, format_wait),
            self.served.to_string(),
            self.no_shows.to_string(),
            self.left.to_string(),
            self.open_alerts.len().to_string(),
        ]
    }
}

fn int_field(point: &Point, key: &str) -> Option<i64> {
    match point.field_value(key)? {
        FieldValue::Int(value) => Some(*value),
        _ => None,
    }
}

fn float_field(point: &Point, key: &str) -> Option<f64> {
    match point.field_value(key)? {
        FieldValue::Float(value) => Some(*value),
        FieldValue::Int(value) => Some(*value as f64),
        FieldValue::Str(_) => None,
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn mean(sum: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn format_wait(seconds: f64) -> String {
    let total_s = seconds.max(0.0).round() as u64;
    let (hours, minutes, secs) = (total_s / 3600, total_s / 60 % 60, total_s % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{secs:02}")
    } else {
        format!("{minutes}:{secs:02}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{OfficeId, ServiceId, TicketNo};
    use crate::time::Millis;
    use crate::tracker::AlertKind;

    /// 2026-11-27T09:15:00+07:00
    const NINE_FIFTEEN_MS: i64 = 1_795_745_700_000;

    fn board() -> Board {
        Board::new(
            vec![
                BoardOffice { id: "mpp-a".into(), name: "MPP A".into(), zone: chrono_tz::Asia::Jakarta },
                BoardOffice { id: "rs-b".into(), name: "RS B".into(), zone: chrono_tz::Asia::Makassar },
            ],
            "broker mqtt://127.0.0.1:1883".into(),
        )
    }

    fn point(measurement: &'static str, office: &str, time_ms: i64) -> Point {
        let mut point = Point::new(measurement, time_ms * 1_000_000);
        point.tag("office", Arc::from(office));
        point
    }

    fn ticket(office: &str, outcome: &str, wait_s: Option<f64>, within: Option<i64>) -> Tapped {
        let mut point = point("ticket", office, NINE_FIFTEEN_MS);
        point.tag("outcome", Arc::from(outcome));
        point.field("ticket", FieldValue::Str("A-001".into()));
        if let Some(wait_s) = wait_s {
            point.field("wait_s", FieldValue::Float(wait_s));
        }
        if let Some(within) = within {
            point.field("wait_within_target", FieldValue::Int(within));
        }
        Tapped::Point(point)
    }

    fn office_gauge(office: &str, time_ms: i64, waiting: i64) -> Tapped {
        let mut point = point("office", office, time_ms);
        point.field("waiting", FieldValue::Int(waiting));
        Tapped::Point(point)
    }

    fn queue_gauge(office: &str, time_ms: i64, service: &str, oldest_wait_s: f64) -> Tapped {
        let mut point = point("queue", office, time_ms);
        point.tag("service", Arc::from(service));
        point.field("oldest_wait_s", FieldValue::Float(oldest_wait_s));
        Tapped::Point(point)
    }

    fn alert(office: &str, ticket: &str, state: AlertState) -> Tapped {
        Tapped::Alert(Alert {
            id: format!("wait:{office}:{ticket}"),
            kind: AlertKind::Wait,
            state,
            office: OfficeId::parse(office).unwrap(),
            service: Some(ServiceId::parse("ktp").unwrap()),
            ticket: Some(TicketNo::parse(ticket).unwrap()),
            counter: None,
            target_ms: 600_000,
            since: Millis(NINE_FIFTEEN_MS),
            ts: Millis(NINE_FIFTEEN_MS),
        })
    }

    fn running() -> Status {
        Status { events_published: 120, points_written: 45, phase: Phase::Running }
    }

    /// The cells after the office name on its row.
    fn cells(rendered: &str, name: &str) -> Vec<String> {
        let line = rendered
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in\n{rendered}"));
        line[name.len()..].split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn an_office_nothing_was_heard_from_shows_dashes_and_zeros() {
        let rendered = board().render(&running());
        assert_eq!(cells(&rendered, "RS B"), ["-", "-", "-", "-", "0", "0", "0", "0"]);
        assert!(rendered.starts_with("queuewatch demo · simulated - · events published 120 · points written 45\n"));
        assert!(rendered
            .contains("office  waiting  oldest wait  service level  avg wait  served  no-shows  left  open breaches"));
        assert!(rendered.ends_with("\nbroker mqtt://127.0.0.1:1883 · Ctrl-C to stop\n"), "{rendered}");
        let stopped = board().render(&Status { phase: Phase::Stopped, ..running() });
        assert!(stopped.ends_with("\nbroker mqtt://127.0.0.1:1883\n"), "{stopped}");
    }

    #[test]
    fn tickets_give_service_level_average_wait_served_no_shows_and_left() {
        let mut board = board();
        board.apply(&ticket("mpp-a", "served", Some(120.0), Some(1)));
        board.apply(&ticket("mpp-a", "served", Some(1200.0), Some(0)));
        board.apply(&ticket("mpp-a", "no_show", Some(300.0), Some(1)));
        board.apply(&ticket("mpp-a", "cancelled", None, Some(0)));
        // Still waiting when the office closed: left, as a cancelled ticket did.
        board.apply(&ticket("mpp-a", "abandoned", None, None));
        // An expired ticket has neither field: it counts nowhere.
        board.apply(&ticket("mpp-a", "expired", None, None));
        let rendered = board.render(&running());
        // 2 of 4 within target; (120 + 1200 + 300) / 3 = 540 s.
        assert_eq!(cells(&rendered, "MPP A"), ["-", "-", "50.0%", "9:00", "2", "1", "2", "0"]);
        assert_eq!(cells(&rendered, "RS B"), ["-", "-", "-", "-", "0", "0", "0", "0"]);
    }

    #[test]
    fn gauges_give_waiting_and_the_largest_oldest_wait_of_the_latest_rows() {
        let mut board = board();
        board.apply(&office_gauge("rs-b", NINE_FIFTEEN_MS - 10_000, 9));
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS - 10_000, "farmasi", 4000.0));
        board.apply(&office_gauge("rs-b", NINE_FIFTEEN_MS, 5));
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS, "farmasi", 65.0));
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS, "poli-umum", 500.4));
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS, "poli-anak", 0.0));
        let rendered = board.render(&running());
        assert_eq!(cells(&rendered, "RS B"), ["5", "8:20", "-", "-", "0", "0", "0", "0"]);
    }

    #[test]
    fn a_service_without_news_keeps_its_latest_row() {
        // Rows come only with news: poli-umum's row at 09:15 still holds at 09:16.
        let mut board = board();
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS, "poli-umum", 500.4));
        board.apply(&queue_gauge("rs-b", NINE_FIFTEEN_MS + 60_000, "farmasi", 65.0));
        assert_eq!(cells(&board.render(&running()), "RS B")[1], "8:20");
    }

    #[test]
    fn the_latest_gauge_received_wins_even_when_it_is_earlier() {
        let mut board = board();
        // Before it is heard, an office's gauges run on the wall clock (later);
        // once heard, on its own clock.
        board.apply(&office_gauge("mpp-a", NINE_FIFTEEN_MS + 3_600_000, 0));
        board.apply(&office_gauge("mpp-a", NINE_FIFTEEN_MS, 7));
        assert_eq!(cells(&board.render(&running()), "MPP A")[0], "7");
        assert_eq!(board.simulated_time().unwrap().to_rfc3339(), "2026-11-27T09:15:00+07:00");
    }

    #[test]
    fn open_breaches_are_alerts_firing_and_not_resolved() {
        let mut board = board();
        board.apply(&alert("mpp-a", "A-001", AlertState::Firing));
        board.apply(&alert("mpp-a", "A-002", AlertState::Firing));
        board.apply(&alert("mpp-a", "A-003", AlertState::Firing));
        board.apply(&alert("mpp-a", "A-002", AlertState::Resolved));
        // A resolution whose firing was missed changes nothing.
        board.apply(&alert("mpp-a", "A-009", AlertState::Resolved));
        board.apply(&alert("rs-b", "B-001", AlertState::Firing));
        let rendered = board.render(&running());
        assert_eq!(cells(&rendered, "MPP A")[7], "2");
        assert_eq!(cells(&rendered, "RS B")[7], "1");
    }

    #[test]
    fn the_header_shows_the_newest_office_clock_in_the_first_office_zone_and_the_phase() {
        let mut board = board();
        board.apply(&office_gauge("mpp-a", NINE_FIFTEEN_MS - 60_000, 1));
        board.apply(&office_gauge("rs-b", NINE_FIFTEEN_MS, 1));
        let status = Status { events_published: 7, points_written: 3, phase: Phase::SimulationEnded };
        let header = board.render(&status).lines().next().unwrap().to_string();
        assert_eq!(
            header,
            "queuewatch demo · simulated Fri 27 Nov 09:15 WIB · events published 7 · points written 3 · simulation ended"
        );
    }

    #[test]
    fn an_office_nobody_announced_gets_a_row_under_its_id() {
        let mut board = board();
        board.apply(&ticket("samsat-x", "served", Some(61.0), Some(1)));
        assert_eq!(cells(&board.render(&running()), "samsat-x"), ["-", "-", "100.0%", "1:01", "1", "0", "0", "0"]);
    }

    #[test]
    fn waits_of_an_hour_and_more_show_hours() {
        assert_eq!(format_wait(0.0), "0:00");
        assert_eq!(format_wait(59.6), "1:00");
        assert_eq!(format_wait(3599.0), "59:59");
        assert_eq!(format_wait(3725.0), "1:02:05");
    }
}
