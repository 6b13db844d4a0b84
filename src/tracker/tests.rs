//! Tracker rules, one short case each: a script of events in arrival order,
//! and the points (rendered compactly) that the contract says it writes.
//!
//! Script line: `[dN/]HH:MM[:SS[.mmm]] type [ticket] [key=value ...]`, where
//! keys are office (default o1), service, counter, to, staff, id, rating and
//! `at=` (wall arrival time, same format; default: replay, no wall time).
//! Rendered point: `office outcome service [counter] @time fields...`, fields
//! in point order without the two target fields (checked on their own).

use super::*;
use crate::config::{Config, ServiceSla};
use std::time::Duration;

const BASE_MS: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

fn parse_time(text: &str) -> Millis {
    let (day, clock) = match text.split_once('/') {
        Some((day, clock)) => (day.trim_start_matches('d').parse::<i64>().unwrap(), clock),
        None => (0, text),
    };
    let (clock, millis) = match clock.split_once('.') {
        Some((clock, millis)) => (clock, millis.parse::<i64>().unwrap()),
        None => (clock, 0),
    };
    let parts: Vec<i64> = clock.split(':').map(|part| part.parse().unwrap()).collect();
    let seconds = parts[0] * 3600 + parts[1] * 60 + parts.get(2).copied().unwrap_or(0);
    Millis(BASE_MS + day * 86_400_000 + seconds * 1000 + millis)
}

fn render_time(at_ms: i64) -> String {
    let since_base = at_ms - BASE_MS;
    let day = since_base.div_euclid(86_400_000);
    let in_day = since_base.rem_euclid(86_400_000);
    let (hours, minutes, seconds, millis) =
        (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    let mut text = format!("{hours:02}:{minutes:02}:{seconds:02}");
    if millis != 0 {
        text.push_str(&format!(".{millis:03}"));
    }
    if day != 0 {
        text = format!("d{day}/{text}");
    }
    text
}

/// Parses one script line into (event, wall arrival).
fn script_event(line: &str) -> (Event, Option<Millis>) {
    let mut words = line.split_whitespace();
    let ts = parse_time(words.next().unwrap());
    let kind = EventType::parse(words.next().unwrap()).unwrap();
    let mut event = Event {
        office: OfficeId::parse("o1").unwrap(),
        kind,
        ts,
        id: None,
        ticket: None,
        service: None,
        counter: None,
        to_service: None,
        staff: None,
        rating: None,
    };
    let mut arrival = None;
    for word in words {
        match word.split_once('=') {
            None => event.ticket = Some(TicketNo::parse(word).unwrap()),
            Some(("office", value)) => event.office = OfficeId::parse(value).unwrap(),
            Some(("service", value)) => event.service = Some(ServiceId::parse(value).unwrap()),
            Some(("counter", value)) => event.counter = Some(CounterId::parse(value).unwrap()),
            Some(("to", value)) => event.to_service = Some(ServiceId::parse(value).unwrap()),
            Some(("staff", value)) => event.staff = Some(StaffId::parse(value).unwrap()),
            Some(("id", value)) => event.id = Some(value.into()),
            Some(("rating", value)) => event.rating = Some(value.parse().unwrap()),
            Some(("at", value)) => arrival = Some(parse_time(value)),
            Some((key, _)) => panic!("unknown script key {key}"),
        }
    }
    (event, arrival)
}

fn render_point(point: &Point) -> String {
    let mut text = format!(
        "{} {} {}",
        point.tag_value("office").unwrap(),
        point.tag_value("outcome").unwrap(),
        point.tag_value("service").unwrap()
    );
    if let Some(counter) = point.tag_value("counter") {
        text.push_str(&format!(" {counter}"));
    }
    text.push_str(&format!(" @{}", render_time(point.time_ns.div_euclid(1_000_000))));
    for (key, value) in &point.fields {
        if key.ends_with("_target_s") {
            continue;
        }
        text.push_str(&format!(" {key}={}", render_value(value)));
    }
    text
}

/// A field value as the rendered points show it.
fn render_value(value: &FieldValue) -> String {
    match value {
        FieldValue::Float(number) => format!("{number}"),
        FieldValue::Int(number) => format!("{number}"),
        FieldValue::Str(text) => text.to_string(),
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.sla.services.insert(
        ServiceId::parse("ktp").unwrap(),
        ServiceSla { wait_target: Some(Duration::from_secs(600)), service_target: Some(Duration::from_secs(900)) },
    );
    config
}

fn settings() -> TrackerSettings {
    TrackerSettings::new(&config(), Mode::Replay)
}

/// Runs a script through a fresh tracker, then drains it.
fn run_script(settings: TrackerSettings, script: &str) -> (Vec<Point>, NoteCounts) {
    let mut tracker = Tracker::new(settings);
    let mut out = Output::default();
    let mut last_wall = Millis(0);
    for line in script.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (event, arrival) = script_event(line);
        let wall = arrival.unwrap_or(Millis(0));
        last_wall = last_wall.max(wall);
        tracker.ingest(event, wall, &mut out);
    }
    tracker.drain(last_wall, &mut out);
    (out.points, out.notes)
}

/// Like `run_script`, keeping only `ticket` points.
fn run_tickets(settings: TrackerSettings, script: &str) -> (Vec<Point>, NoteCounts) {
    let (points, notes) = run_script(settings, script);
    (points.into_iter().filter(|point| point.measurement == "ticket").collect(), notes)
}

/// The notes of a script, but `applied` (most events are; scripts state the exceptions).
fn render_notes(notes: &NoteCounts) -> String {
    Note::ALL
        .iter()
        .filter(|note| **note != Note::Applied && notes.get(**note) > 0)
        .map(|note| format!("{}={}", note.as_str(), notes.get(*note)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[track_caller]
fn check_with(settings: TrackerSettings, script: &str, expected_points: &str, expected_notes: &str) {
    let (points, notes) = run_script(settings, script);
    let mut points: Vec<Point> = points.into_iter().filter(|point| point.measurement == "ticket").collect();
    // Offices drain in no particular order; points are compared in time order.
    points.sort_by_key(|point| point.time_ns);
    let actual: Vec<String> = points.iter().map(render_point).collect();
    // A line starting with an office (`o1 `) starts a point; others continue it.
    let mut expected: Vec<String> = Vec::new();
    for line in expected_points.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let starts_point = line.starts_with('o') && line.as_bytes().get(1).is_some_and(u8::is_ascii_digit);
        match expected.last_mut() {
            Some(last) if !starts_point => {
                last.push(' ');
                last.push_str(&words);
            }
            _ => expected.push(words),
        }
    }
    assert_eq!(actual, expected, "\nactual points:\n{}\n", actual.join("\n"));
    assert_eq!(render_notes(&notes), expected_notes, "notes");
}

#[track_caller]
fn check(script: &str, expected_points: &str, expected_notes: &str) {
    check_with(settings(), script, expected_points, expected_notes)
}

#[test]
fn served_ticket_measures_wait_walk_service_total_and_visit() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1 staff=budi
         08:05:30 started A1 counter=c1
         08:15:30 finished A1 counter=c1",
        "o1 served ktp c1 @08:15:30 ticket=A1 recalls=0 wait_s=300 walk_s=30 service_s=600 total_s=930 visit_s=930
         wait_within_target=1 service_within_target=1 staff=budi",
        "",
    );
}

#[test]
fn later_calls_and_recalls_count_as_recalls_and_move_the_last_call() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:06 recalled A1 counter=c1
         08:07 called A1 counter=c2
         08:07:10 started A1 counter=c2
         08:10 finished A1",
        "o1 served ktp c2 @08:10:00 ticket=A1 recalls=2 wait_s=300 walk_s=10 service_s=170 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn a_start_without_a_call_is_the_first_call() {
    check(
        "08:00 issued A1 service=sim
         08:20 started A1 counter=c3
         08:30 finished A1 counter=c3",
        "o1 served sim c3 @08:30:00 ticket=A1 recalls=0 wait_s=1200 walk_s=0 service_s=600 total_s=1800 visit_s=1800
         wait_within_target=0 service_within_target=1",
        "",
    );
}

#[test]
fn service_time_runs_from_the_last_call_when_there_is_no_start() {
    check(
        "08:00 issued A1 service=ktp
         08:01 called A1 counter=c1
         08:30 finished A1 counter=c1",
        "o1 served ktp c1 @08:30:00 ticket=A1 recalls=0 wait_s=60 service_s=1740 total_s=1800 visit_s=1800
         wait_within_target=1 service_within_target=0",
        "",
    );
}

#[test]
fn no_show_writes_wait_and_total_but_no_service_time() {
    check(
        "08:00 issued A1 service=ktp
         08:12 called A1 counter=c1
         08:14 recalled A1 counter=c1
         08:16 no_show A1 counter=c1",
        "o1 no_show ktp c1 @08:16:00 ticket=A1 recalls=1 wait_s=720 total_s=960 visit_s=960 wait_within_target=0",
        "",
    );
}

#[test]
fn cancelled_while_waiting_counts_against_the_level_only_past_the_target() {
    check(
        "08:00 issued A1 service=ktp
         08:00 issued A2 service=ktp
         08:05 cancelled A1
         08:20 cancelled A2",
        "o1 cancelled ktp @08:05:00 ticket=A1 recalls=0 total_s=300 visit_s=300
         o1 cancelled ktp @08:20:00 ticket=A2 recalls=0 total_s=1200 visit_s=1200 wait_within_target=0",
        "",
    );
}

#[test]
fn transfer_closes_the_segment_and_opens_one_for_the_new_service() {
    check(
        "08:00 issued A1 service=ktp
         08:10 called A1 counter=c1
         08:20 transferred A1 counter=c1 to=kk
         08:30 called A1 counter=c4
         08:40 finished A1 counter=c4",
        "o1 transferred ktp c1 @08:20:00 ticket=A1 recalls=0 wait_s=600 service_s=600 total_s=1200
         wait_within_target=1 service_within_target=1
         o1 served kk c4 @08:40:00 ticket=A1 recalls=0 wait_s=600 service_s=600 total_s=1200 visit_s=2400
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn a_transfer_of_an_unknown_ticket_still_opens_the_new_segment() {
    check(
        "09:00 transferred B7 counter=c1 to=kk
         09:10 called B7 counter=c2
         09:20 finished B7 counter=c2",
        "o1 served kk c2 @09:20:00 ticket=B7 recalls=0 wait_s=600 service_s=600 total_s=1200
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn events_reordered_within_the_window_are_put_in_their_place() {
    check(
        "08:00:10 called A1 counter=c1
         08:00:15 finished A1 counter=c1
         08:00:06 issued A1 service=ktp
         08:00:12 started A1 counter=c1",
        "o1 served ktp c1 @08:00:15 ticket=A1 recalls=0 wait_s=4 walk_s=2 service_s=3 total_s=9 visit_s=9
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn an_issue_that_arrives_after_the_first_call_becomes_the_issue_time() {
    // The issued event is 5 minutes late (beyond the window) but the
    // segment is still open, so it is applied and sets the issue time.
    check(
        "08:05 called A1 counter=c1 service=ktp
         08:06 heartbeat
         08:00 issued A1 service=ktp
         08:10 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "late=1",
    );
}

#[test]
fn a_late_event_for_a_closed_segment_is_dropped() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         08:20 heartbeat
         08:06 started A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "late_dropped=1",
    );
}

#[test]
fn duplicates_by_id_or_by_content_change_nothing() {
    check(
        "08:00 issued A1 service=ktp id=e1
         08:00 issued A1 service=ktp id=e1
         08:05 called A1 counter=c1 id=e2
         08:05:01 recalled A1 counter=c1 id=e2
         08:05 called A1 counter=c1 id=e9
         08:10 finished A1 counter=c1
         08:10 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "duplicate=4",
    );
}

#[test]
fn duplicate_finished_after_close_writes_nothing() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         08:50 heartbeat
         08:10 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "duplicate=1",
    );
}

#[test]
fn duplicates_are_forgotten_after_the_dedup_horizon() {
    // Two hours after the close the copy is no longer recognised as a
    // duplicate; the ticket is forgotten too, and a late event for no open
    // segment is dropped, so the copy still writes nothing.
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         10:30 heartbeat
         10:30:01 heartbeat
         08:10 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "late_dropped=1",
    );
}

#[test]
fn a_recall_after_finished_is_after_close() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         08:10:02 recalled A1 counter=c1
         08:11 called A1 counter=c2",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "after_close=2",
    );
}

#[test]
fn an_orphan_is_tracked_without_what_cannot_be_known() {
    check(
        "08:05 called A1 counter=c1
         08:05 called A2 counter=c2
         08:06 started A1 counter=c1 service=ktp
         08:10 finished A1 counter=c1
         08:10 no_show A2 counter=c2",
        "o1 no_show unknown c2 @08:10:00 ticket=A2 recalls=0
         o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 walk_s=60 service_s=240 service_within_target=1",
        "",
    );
}

#[test]
fn a_closing_event_for_an_unknown_ticket_is_an_orphan_close() {
    check("08:10 finished Z9 counter=c1", "", "orphan_close=1");
}

#[test]
fn a_segment_idle_for_the_max_age_expires_at_last_event_plus_max_age() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         d1/07:00 heartbeat",
        "o1 expired ktp c1 @20:05:00 ticket=A1 recalls=0 wait_s=300",
        "",
    );
}

#[test]
fn expiry_waits_for_the_reorder_window_after_the_deadline() {
    // Clock ends 5 s past the deadline: not yet due (window is 10 s).
    check("08:00 issued A1 service=ktp\n20:00:05 heartbeat", "", "");
    check("08:00 issued A1 service=ktp\n20:00:11 heartbeat", "o1 expired ktp @20:00:00 ticket=A1 recalls=0", "");
}

#[test]
fn reissuing_an_open_number_expires_the_old_segment_first() {
    check(
        "08:00 issued A1 service=ktp
         09:00 issued A1 service=sim
         09:05 called A1 counter=c1
         09:06 finished A1 counter=c1",
        "o1 expired ktp @09:00:00 ticket=A1 recalls=0
         o1 served sim c1 @09:06:00 ticket=A1 recalls=0 wait_s=300 service_s=60 total_s=360 visit_s=360
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn numbers_reused_the_next_day_are_new_tickets() {
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         d1/08:00 issued A1 service=ktp
         d1/08:01 called A1 counter=c1
         d1/08:02 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1
         o1 served ktp c1 @d1/08:02:00 ticket=A1 recalls=0 wait_s=60 service_s=60 total_s=120 visit_s=120
         wait_within_target=1 service_within_target=1",
        "",
    );
}

#[test]
fn a_negative_duration_is_left_out_and_counted_as_clock_skew() {
    // The late start (beyond the window) precedes the call on the device clocks.
    check(
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:06 heartbeat
         08:04 started A1 counter=c1
         08:10 finished A1 counter=c1",
        "o1 served ktp c1 @08:10:00 ticket=A1 recalls=0 wait_s=300 service_s=360 total_s=600 visit_s=600
         wait_within_target=1 service_within_target=1",
        "late=1 clock_skew=1",
    );
}

#[test]
fn offices_never_affect_each_other() {
    check(
        "08:00 issued A1 service=ktp office=o1
         08:00 issued A1 service=ktp office=o2
         08:05 called A1 counter=c1 office=o1
         09:00 finished A1 counter=c1 office=o1
         08:01 called A1 counter=c1 office=o2
         08:02 finished A1 counter=c1 office=o2",
        "o2 served ktp c1 @08:02:00 ticket=A1 recalls=0 wait_s=60 service_s=60 total_s=120 visit_s=120
         wait_within_target=1 service_within_target=1
         o1 served ktp c1 @09:00:00 ticket=A1 recalls=0 wait_s=300 service_s=3300 total_s=3600 visit_s=3600
         wait_within_target=1 service_within_target=0",
        "",
    );
}

#[test]
fn targets_come_from_the_service_or_the_defaults() {
    let (points, _) = run_tickets(
        settings(),
        "08:00 issued A1 service=ktp\n08:00:30 cancelled A1\n08:00 issued B1 service=sim\n08:01 cancelled B1",
    );
    let targets: Vec<_> = points
        .iter()
        .map(|p| (p.field_value("wait_target_s").cloned(), p.field_value("service_target_s").cloned()))
        .collect();
    assert_eq!(
        targets,
        vec![
            (Some(FieldValue::Float(600.0)), Some(FieldValue::Float(900.0))),
            (Some(FieldValue::Float(900.0)), Some(FieldValue::Float(1200.0))),
        ]
    );
}

#[test]
fn tickets_closing_in_the_same_millisecond_get_distinct_times() {
    let (points, _) = run_tickets(
        settings(),
        "08:00 issued A1 service=ktp\n08:00 issued A2 service=ktp\n08:01 cancelled A1\n08:01 cancelled A2",
    );
    assert_eq!(points.len(), 2);
    assert_ne!(points[0].time_ns, points[1].time_ns);
    assert_eq!(points[0].time_ns / 1_000_000, points[1].time_ns / 1_000_000);
}

#[test]
fn live_clock_runs_on_between_events_and_releases_held_events() {
    let mut tracker = Tracker::new(settings());
    let mut out = Output::default();
    let wall = Millis(5_000_000);
    for line in ["08:00 issued A1 service=ktp", "08:01 cancelled A1"] {
        tracker.ingest(script_event(line).0, wall, &mut out);
    }
    let tickets = |out: &Output| out.points.iter().filter(|point| point.measurement == "ticket").count();
    assert_eq!(tickets(&out), 0, "held for the reorder window");
    tracker.advance(wall.plus_ms(9_999), &mut out);
    assert_eq!(tickets(&out), 0, "clock 08:01:09.999 has not passed 08:01:10");
    tracker.advance(wall.plus_ms(10_001), &mut out);
    assert_eq!(tickets(&out), 1);
}

#[test]
fn expiry_in_a_live_run_follows_the_wall_clock() {
    let mut tracker = Tracker::new(settings());
    let mut out = Output::default();
    tracker.ingest(script_event("08:00 issued A1 service=ktp").0, Millis(0), &mut out);
    let tickets = |out: &Output| -> Vec<String> {
        out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect()
    };
    tracker.advance(Millis(12 * 3_600_000 + 10_000), &mut out);
    assert!(tickets(&out).is_empty());
    tracker.advance(Millis(12 * 3_600_000 + 10_001), &mut out);
    assert_eq!(tickets(&out), vec!["o1 expired ktp @20:00:00 ticket=A1 recalls=0"]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A plausible day for a few tickets at two offices: sorted events.
    fn scenario() -> impl Strategy<Value = Vec<Event>> {
        let ticket_life = (0usize..2, 0usize..4, 0u8..6, 0i64..40_000, proptest::collection::vec(1i64..8_000, 5));
        proptest::collection::vec(ticket_life, 1..12).prop_map(|tickets| {
            let mut events = Vec::new();
            for (office_index, ticket_index, shape, start_ms, gaps) in tickets {
                let office = ["o1", "o2"][office_index];
                let ticket = format!("T{ticket_index}");
                let mut at = BASE_MS + 8 * 3_600_000 + start_ms;
                let mut push = |kind: &str, extra: &str, at: i64| {
                    let line = format!("00:00 {kind} {ticket} office={office} {extra}");
                    let (mut event, _) = script_event(&line);
                    event.ts = Millis(at);
                    events.push(event);
                };
                if shape != 5 {
                    push("issued", "service=ktp", at);
                }
                at += gaps[0];
                push("called", "counter=c1", at);
                at += gaps[1];
                if shape % 2 == 0 {
                    push("recalled", "counter=c2", at);
                    at += gaps[2];
                }
                push("started", "counter=c2", at);
                at += gaps[3];
                match shape {
                    0 | 5 => push("finished", "counter=c2 staff=s1", at),
                    1 => push("no_show", "counter=c2", at),
                    2 => push("cancelled", "", at),
                    3 => push("transferred", "counter=c2 to=kk", at),
                    _ => {}
                }
                at += gaps[4];
                push("called", "counter=c3", at);
            }
            events.sort_by_key(|event| (event.ts, event.kind.rank()));
            events
        })
    }

    fn outcome_of(settings: TrackerSettings, arrivals: &[Event]) -> (Vec<String>, NoteCounts) {
        let mut tracker = Tracker::new(settings);
        let mut out = Output::default();
        for event in arrivals {
            tracker.ingest(event.clone(), Millis(0), &mut out);
        }
        tracker.drain(Millis(0), &mut out);
        let mut lines: Vec<String> = out.points.iter().map(Point::to_line).collect();
        lines.retain(|line| !line.starts_with("office,"));
        lines.sort();
        out.notes.0[Note::Duplicate.index()] = 0;
        (lines, out.notes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

        #[test]
        fn shuffling_within_the_window_and_duplicating_changes_nothing(
            events in scenario(),
            jitters in proptest::collection::vec(0i64..9_999, 80),
            copies in proptest::collection::vec((0usize..80, 0usize..80), 0..10),
        ) {
            let baseline = outcome_of(settings(), &events);
            // Arrival order: by ts plus a jitter smaller than the window, so
            // each event arrives within the window of the newest one seen.
            let mut keyed: Vec<(i64, usize, Event)> = events
                .iter()
                .enumerate()
                .map(|(index, event)| (event.ts.0 + jitters[index % jitters.len()], index, event.clone()))
                .collect();
            keyed.sort_by_key(|(key, index, _)| (*key, *index));
            let mut arrivals: Vec<Event> = keyed.into_iter().map(|(_, _, event)| event).collect();
            for (from, to) in copies {
                if arrivals.is_empty() { break; }
                let copy = arrivals[from % arrivals.len()].clone();
                let position = (to % arrivals.len()).max(from % arrivals.len() + 1).min(arrivals.len());
                arrivals.insert(position, copy);
            }
            prop_assert_eq!(outcome_of(settings(), &arrivals), baseline);
        }

        /// With `limits.max_remembered_per_office` biting all the time, what
        /// is forgotten early still depends on the events alone.
        #[test]
        fn shuffling_within_the_window_changes_nothing_when_the_memory_limit_bites(
            events in scenario(),
            jitters in proptest::collection::vec(0i64..9_999, 80),
            max_remembered in 1usize..12,
        ) {
            let mut limited = settings();
            limited.limits.max_remembered_per_office = max_remembered;
            let baseline = outcome_of(limited.clone(), &events);
            let mut keyed: Vec<(i64, usize, Event)> = events
                .iter()
                .enumerate()
                .map(|(index, event)| (event.ts.0 + jitters[index % jitters.len()], index, event.clone()))
                .collect();
            keyed.sort_by_key(|(key, index, _)| (*key, *index));
            let arrivals: Vec<Event> = keyed.into_iter().map(|(_, _, event)| event).collect();
            prop_assert_eq!(outcome_of(limited, &arrivals), baseline);
        }

        #[test]
        fn an_office_output_never_depends_on_other_offices(events in scenario()) {
            let all = outcome_of(settings(), &events).0;
            let only_o1: Vec<Event> = events.iter().filter(|e| e.office.as_str() == "o1").cloned().collect();
            let alone = outcome_of(settings(), &only_o1).0;
            let o1_in_all: Vec<String> = all.into_iter().filter(|line| line.contains("office=o1")).collect();
            prop_assert_eq!(o1_in_all, alone);
        }
    }
}

mod day;
mod limits;
mod live;
mod state;
