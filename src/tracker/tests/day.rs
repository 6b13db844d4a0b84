//! The office day: at offices with opening hours, what is still open at
//! the day's close is closed once `close_grace` has passed (`abandoned`
//! if never called, else `expired`), lunch closes nothing, and `office`
//! rows and breaches say whether the office was open.
//!
//! Script times are UTC (2026-11-27 is a Friday); the offices' hours are
//! local, so a case in Jakarta (+07:00) closing at 16:00 closes at 09:00.

use super::*;

/// The tracker's test config plus office o1 with these hours.
fn config_with_hours(zone: &str, hours: &str, days: &str) -> Config {
    let text = format!(
        "[sla.services.ktp]\nwait_target = \"10m\"\nservice_target = \"15m\"\n\
         [offices.o1]\ntimezone = \"{zone}\"\nhours = \"{hours}\"\ndays = \"{days}\"\n"
    );
    Config::parse(&text).unwrap()
}

fn day_settings(zone: &str, hours: &str, days: &str) -> TrackerSettings {
    TrackerSettings::new(&config_with_hours(zone, hours, days), Mode::Replay)
}

fn jakarta() -> TrackerSettings {
    day_settings("Asia/Jakarta", "08:00-16:00", "Mon-Sun")
}

/// Rows of `measurement` with their fields, `office=o1` left out.
fn rows_of(settings: TrackerSettings, script: &str, measurement: &str) -> Vec<String> {
    let (points, _) = run_script(settings, script);
    let mut rows: Vec<&Point> = points.iter().filter(|point| point.measurement == measurement).collect();
    rows.sort_by_key(|point| point.time_ns);
    rows.into_iter()
        .map(|point| {
            let fields: Vec<String> =
                point.fields.iter().map(|(key, value)| format!("{key}={}", render_value(value))).collect();
            format!("@{} {}", render_time(point.time_ns.div_euclid(1_000_000)), fields.join(" "))
        })
        .collect()
}

fn field(row: &str, key: &str) -> Option<String> {
    row.split_whitespace().find_map(|word| word.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

#[test]
fn at_the_close_plus_grace_a_waiting_ticket_is_abandoned_and_one_in_service_expires_at_the_close() {
    check_with(
        jakarta(),
        "01:00 issued A1 service=ktp
         01:30 issued A2 service=ktp
         08:50 called A2 counter=c1
         08:51 started A2 counter=c1
         09:30:11 heartbeat",
        // Same millisecond: ordered by each ticket's sub-millisecond offset.
        "o1 expired ktp c1 @09:00:00 ticket=A2 recalls=0 wait_s=26400 walk_s=60
         o1 abandoned ktp @09:00:00 ticket=A1 recalls=0 waited_until_close_s=28800",
        "",
    );
}

#[test]
fn the_close_waits_for_the_grace_and_the_reorder_window() {
    let script = "01:00 issued A1 service=ktp\n09:30:05 heartbeat";
    check_with(jakarta(), script, "", "");
    let mut settings = jakarta();
    settings.close_grace_ms = 0;
    check_with(settings, script, "o1 abandoned ktp @09:00:00 ticket=A1 recalls=0 waited_until_close_s=28800", "");
}

#[test]
fn each_of_the_three_indonesian_zones_closes_on_its_own_clock() {
    // 16:00 local is 09:00Z in WIB, 08:00Z in WITA and 07:00Z in WIT.
    for (zone, close) in [("Asia/Jakarta", "09:00"), ("Asia/Makassar", "08:00"), ("Asia/Jayapura", "07:00")] {
        let settings = day_settings(zone, "06:00-16:00", "Mon-Fri");
        let script = "00:30 issued A1 service=ktp\n00:40 issued A2 service=ktp\n00:45 called A2 counter=c1\n\
                      00:50 finished A2 counter=c1\n09:40 heartbeat";
        let (points, _) = run_tickets(settings, script);
        let rendered: Vec<String> = points.iter().map(render_point).collect();
        let waited_s = parse_time(close).since(parse_time("00:30")) / 1000;
        assert_eq!(
            rendered,
            vec![
                "o1 served ktp c1 @00:50:00 ticket=A2 recalls=0 wait_s=300 service_s=300 total_s=600 visit_s=600 \
                 wait_within_target=1 service_within_target=1"
                    .to_string(),
                format!("o1 abandoned ktp @{close}:00 ticket=A1 recalls=0 waited_until_close_s={waited_s}"),
            ],
            "{zone}"
        );
    }
}

#[test]
fn lunch_closes_nothing_and_the_wait_through_lunch_counts() {
    // 08:00-12:00 and 13:00-16:00 in Jakarta: lunch is 05:00Z-06:00Z.
    check_with(
        day_settings("Asia/Jakarta", "08:00-12:00,13:00-16:00", "Mon-Sun"),
        "04:30 issued A1 service=ktp
         05:45 heartbeat
         06:10 called A1 counter=c1
         06:20 finished A1 counter=c1",
        "o1 served ktp c1 @06:20:00 ticket=A1 recalls=0 wait_s=6000 service_s=600 total_s=6600 visit_s=6600
         wait_within_target=0 service_within_target=1",
        "",
    );
}

#[test]
fn hours_ending_at_midnight_close_at_midnight() {
    // 16:00-24:00 in Jakarta: the close is 17:00Z.
    check_with(
        day_settings("Asia/Jakarta", "16:00-24:00", "Mon-Sun"),
        "14:00 issued A1 service=ktp
         17:30:11 heartbeat",
        "o1 abandoned ktp @17:00:00 ticket=A1 recalls=0 waited_until_close_s=10800",
        "",
    );
}

#[test]
fn a_day_without_hours_closes_nothing_and_its_tickets_wait_for_the_next_open_days_close() {
    // Friday's office; Saturday (d1) and Sunday (d2) are closed; Monday (d3) closes at 09:00Z.
    check_with(
        day_settings("Asia/Jakarta", "08:00-16:00", "Mon-Fri"),
        "d1/02:00 issued A1 service=ktp
         d1/10:00 heartbeat
         d2/10:00 heartbeat
         d3/09:30:11 heartbeat",
        "o1 abandoned ktp @d3/09:00:00 ticket=A1 recalls=0 waited_until_close_s=198000",
        "",
    );
}

#[test]
fn a_ticket_issued_after_closing_waits_for_the_next_days_close() {
    check_with(
        jakarta(),
        "09:00 issued A1 service=ktp
         09:40 heartbeat
         d1/02:00 heartbeat
         d1/09:30:11 heartbeat",
        "o1 abandoned ktp @d1/09:00:00 ticket=A1 recalls=0 waited_until_close_s=86400",
        "",
    );
}

#[test]
fn an_event_during_the_grace_stamps_the_close_at_that_event() {
    check_with(
        jakarta(),
        "01:00 issued A1 service=ktp
         09:10 called A1 counter=c1
         09:30:11 heartbeat",
        "o1 expired ktp c1 @09:10:00 ticket=A1 recalls=0 wait_s=29400",
        "",
    );
}

#[test]
fn an_event_for_a_ticket_closed_at_the_close_is_after_close() {
    check_with(
        jakarta(),
        "01:00 issued A1 service=ktp
         09:31 heartbeat
         09:40 called A1 counter=c1
         09:41 finished A1 counter=c1",
        "o1 abandoned ktp @09:00:00 ticket=A1 recalls=0 waited_until_close_s=28800",
        "after_close=2",
    );
}

#[test]
fn a_transfer_during_the_grace_belongs_to_the_visits_day() {
    check_with(
        jakarta(),
        "08:40 issued A1 service=ktp
         08:45 called A1 counter=c1
         09:05 transferred A1 counter=c1 to=sim
         09:30:11 heartbeat",
        "o1 transferred ktp c1 @09:05:00 ticket=A1 recalls=0 wait_s=300 service_s=1200 total_s=1500
         wait_within_target=1 service_within_target=0
         o1 abandoned sim @09:05:00 ticket=A1 recalls=0 waited_until_close_s=0",
        "",
    );
}

#[test]
fn offices_without_hours_still_expire_after_the_max_age() {
    check(
        "01:00 issued A1 service=ktp
         09:31 heartbeat
         13:00:11 heartbeat",
        "o1 expired ktp @13:00:00 ticket=A1 recalls=0",
        "",
    );
}

#[test]
fn a_wait_breach_resolves_at_the_close_and_breaches_say_whether_the_office_was_open() {
    let script = "08:30 issued A1 service=ktp\n09:30:11 heartbeat";
    let breaches = rows_of(jakarta(), script, "breach");
    // Issued 15:30 local: the 10 min target passes at 15:40, while open.
    assert_eq!(breaches, vec!["@08:40:00 ticket=A1 target_s=600 open=1"]);
    let late = rows_of(jakarta(), "08:55 issued A1 service=ktp\n09:30:11 heartbeat", "breach");
    assert_eq!(late, vec!["@09:05:00 ticket=A1 target_s=600 open=0"]);

    let mut tracker = Tracker::new(jakarta());
    let mut out = Output::default();
    for line in script.lines() {
        tracker.ingest(script_event(line).0, Millis(0), &mut out);
    }
    tracker.drain(Millis(0), &mut out);
    let alerts: Vec<(AlertState, String)> =
        out.alerts.iter().map(|alert| (alert.state, render_time(alert.ts.0))).collect();
    assert_eq!(alerts, vec![(AlertState::Firing, "08:40:10".into()), (AlertState::Resolved, "09:00:00".into())]);
}

#[test]
fn office_rows_carry_open_and_the_rows_at_each_opening_and_closing_are_news() {
    let script = "00:59:35 heartbeat
                  01:00:03 issued A1 service=ktp
                  01:02 called A1 counter=c1
                  01:03 finished A1 counter=c1
                  08:30 issued A2 service=ktp
                  d1/00:00 heartbeat";
    let rows = rows_of(jakarta(), script, "office");
    assert!(rows.iter().all(|row| field(row, "open").is_some()), "{rows:#?}");
    let at = |time: &str| rows.iter().find(|row| row.starts_with(&format!("@{time} "))).cloned();
    assert_eq!(at("01:00:00").and_then(|row| field(&row, "open")).as_deref(), Some("1"), "{rows:#?}");
    assert_eq!(at("09:00:00").and_then(|row| field(&row, "open")).as_deref(), Some("0"), "{rows:#?}");
    // Nobody waits past the close + grace.
    let after_grace = at("09:30:00").expect("the row when A2 was abandoned");
    assert_eq!(field(&after_grace, "waiting").as_deref(), Some("0"));
    // A row before opening says closed.
    assert_eq!(field(&rows[0], "open").as_deref(), Some("0"), "{rows:#?}");

    // Offices without hours write no `open`.
    let (points, _) = run_script(settings(), script);
    assert!(points
        .iter()
        .filter(|point| point.measurement == "office")
        .all(|point| point.field_value("open").is_none()));
}

#[test]
fn queue_rows_show_nobody_waiting_after_the_close_plus_grace() {
    let script = "01:00 issued A1 service=ktp
                  02:00 issued A2 service=ktp
                  d1/00:30 heartbeat";
    let close_plus_grace = parse_time("09:30");
    let (points, _) = run_script(jakarta(), script);
    let waiting_after: Vec<String> = points
        .iter()
        .filter(|point| point.measurement == "queue" && point.time_ns >= close_plus_grace.0 * 1_000_000)
        .filter(|point| !matches!(point.field_value("waiting"), Some(FieldValue::Int(0))))
        .map(Point::to_line)
        .collect();
    assert!(waiting_after.is_empty(), "{waiting_after:#?}");
}

#[test]
fn a_live_run_closes_the_day_on_the_wall_clock_as_a_replay_does_on_event_time() {
    let script = "01:00 issued A1 service=ktp
                  01:30 issued A2 service=ktp
                  08:50 called A2 counter=c1";
    let mut live_settings = jakarta();
    live_settings.mode = Mode::Live;
    let mut tracker = Tracker::new(live_settings);
    let mut out = Output::default();
    for line in script.lines() {
        let event = script_event(line.trim()).0;
        let wall = event.ts;
        tracker.ingest(event, wall, &mut out);
    }
    // Nothing speaks after hours: the wall clock alone passes the close.
    tracker.advance(parse_time("09:30:10"), &mut out);
    assert!(out.points.iter().all(|point| point.measurement != "ticket"));
    tracker.advance(parse_time("09:30:11"), &mut out);
    let live: Vec<String> = out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
    let (replayed, _) = run_tickets(jakarta(), &format!("{script}\n09:30:11 heartbeat"));
    let mut replayed: Vec<String> = replayed.iter().map(render_point).collect();
    replayed.sort();
    let mut live_sorted = live.clone();
    live_sorted.sort();
    assert_eq!(live_sorted, replayed);
    assert_eq!(live.len(), 2);
}
