//! The live rules: breaches, gauges, counters, feedback, idle, silent and
//! alerts, each with a script and a controlled clock (never a sleep).
//!
//! Rendered point: `measurement tag=value,... @time field=value ...`, tags
//! sorted, `office=o1` left out.

use super::*;

fn render(point: &Point) -> String {
    let tags: Vec<String> = point
        .tags
        .iter()
        .filter(|(key, value)| !(*key == "office" && &**value == "o1"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut text = point.measurement.to_string();
    if !tags.is_empty() {
        text.push_str(&format!(" {}", tags.join(",")));
    }
    text.push_str(&format!(" @{}", render_time(point.time_ns.div_euclid(1_000_000))));
    for (key, value) in &point.fields {
        text.push_str(&format!(" {key}={}", render_value(value)));
    }
    text
}

fn live_config(extra: &str) -> Config {
    let mut text = String::from("[sla.services.ktp]\nwait_target = \"10m\"\nservice_target = \"15m\"\n");
    text.push_str(extra);
    Config::parse(&text).unwrap()
}

/// Runs a script in replay mode and returns the points of `measurement`, rendered.
fn points_of(config: &Config, script: &str, measurement: &str) -> Vec<String> {
    let (points, _) = run_script(TrackerSettings::new(config, Mode::Replay), script);
    let mut points: Vec<&Point> = points.iter().filter(|point| point.measurement == measurement).collect();
    points.sort_by_key(|point| (point.time_ns, render(point)));
    points.into_iter().map(render).collect()
}

#[track_caller]
fn check_points(config: &Config, script: &str, measurement: &str, expected: &[&str]) {
    let actual = points_of(config, script, measurement);
    assert_eq!(actual, expected, "\nactual:\n{}\n", actual.join("\n"));
}

#[test]
fn a_ticket_not_called_by_its_wait_target_breaches_at_the_deadline() {
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp
         08:12 called A1 counter=c1
         08:20 finished A1 counter=c1",
        "breach",
        &["breach kind=wait,service=ktp @08:10:00 ticket=A1 target_s=600"],
    );
}

#[test]
fn a_call_exactly_at_the_deadline_is_in_time() {
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp\n08:10 called A1 counter=c1\n08:11 finished A1",
        "breach",
        &[],
    );
}

#[test]
fn a_call_arriving_within_the_window_after_the_deadline_still_proves_it_false() {
    // The clock reaches 08:10:08 (not past deadline + window) before the
    // 08:09:59 call arrives; it is put in its place and nothing breaches.
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp
         08:10:08 heartbeat
         08:09:59 called A1 counter=c1
         08:11 finished A1 counter=c1",
        "breach",
        &[],
    );
}

#[test]
fn a_segment_still_in_service_past_its_target_breaches_with_its_counter() {
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp
         08:00 issued B1 service=sim
         08:01 called B1 counter=c2
         08:04 called A1 counter=c1
         08:05 started A1 counter=c1
         08:10 finished B1 counter=c2
         08:25 finished A1 counter=c1",
        "breach",
        &["breach counter=c1,kind=service,service=ktp @08:20:00 ticket=A1 target_s=900"],
    );
}

#[test]
fn service_time_starts_at_the_last_call_without_a_start() {
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp\n08:01 called A1 counter=c1\n08:03 recalled A1 counter=c1\n08:30 finished A1",
        "breach",
        &["breach counter=c1,kind=service,service=ktp @08:18:00 ticket=A1 target_s=900"],
    );
}

#[test]
fn a_breach_is_raised_only_once_the_window_has_passed_the_deadline() {
    let config = live_config("");
    assert!(points_of(&config, "08:00 issued A1 service=ktp\n08:10:09 heartbeat", "breach").is_empty());
    assert_eq!(points_of(&config, "08:00 issued A1 service=ktp\n08:10:11 heartbeat", "breach").len(), 1);
}

#[test]
fn an_open_counter_idle_while_people_wait_breaches_after_the_idle_target() {
    check_points(
        &live_config("[sla]\nidle_target = \"5m\"\n"),
        "07:55 counter_opened counter=c1 staff=budi
         07:56 counter_opened counter=c2
         07:57 issued A0 service=ktp
         07:57:30 called A0 counter=c2
         07:59 finished A0 counter=c2
         07:59:10 called X1 counter=c2
         08:01 issued A1 service=ktp
         08:08 finished X1 counter=c2
         08:09 called A1 counter=c1
         08:10 finished A1 counter=c1
         08:20 heartbeat",
        "breach",
        &["breach counter=c1,kind=idle @08:06:00 target_s=300"],
    );
}

#[test]
fn idle_without_an_idle_target_is_off() {
    check_points(
        &live_config(""),
        "07:55 counter_opened counter=c1\n08:01 issued A1 service=ktp\n08:30 heartbeat",
        "breach",
        &["breach kind=wait,service=ktp @08:11:00 ticket=A1 target_s=600"],
    );
}

#[test]
fn queue_gauges_reflect_exactly_the_events_up_to_each_multiple() {
    check_points(
        &live_config(""),
        "08:00:00 issued A1 service=ktp
         08:00:05 issued A2 service=ktp
         08:00:10 called A1 counter=c1
         08:00:41 heartbeat",
        "queue",
        &[
            "queue service=ktp @08:00:00 waiting=1 in_service=0 over_target=0 issued=1 called=0 oldest_wait_s=0",
            "queue service=ktp @08:00:10 waiting=1 in_service=1 over_target=0 issued=1 called=1 oldest_wait_s=5",
        ],
    );
}

#[test]
fn a_queue_row_is_written_only_when_it_carries_news() {
    // 08:00:20 and 08:00:30 would repeat 08:00:10; the finish at 08:00:33
    // changes in_service; nothing changes after it until the keepalive.
    check_points(
        &live_config(""),
        "08:00:00 issued A1 service=ktp
         08:00:05 issued A2 service=ktp
         08:00:10 called A1 counter=c1
         08:00:33 finished A1 counter=c1
         08:00:55 heartbeat",
        "queue",
        &[
            "queue service=ktp @08:00:00 waiting=1 in_service=0 over_target=0 issued=1 called=0 oldest_wait_s=0",
            "queue service=ktp @08:00:10 waiting=1 in_service=1 over_target=0 issued=1 called=1 oldest_wait_s=5",
            "queue service=ktp @08:00:40 waiting=1 in_service=0 over_target=0 issued=0 called=0 oldest_wait_s=35",
        ],
    );
}

#[test]
fn while_someone_waits_a_queue_row_is_written_every_keepalive() {
    let points = points_of(&live_config(""), "08:00:05 issued A1 service=ktp\n08:03:11 heartbeat", "queue");
    let times: Vec<&str> = points.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    assert_eq!(times, ["@08:00:10", "@08:01:00", "@08:02:00", "@08:03:00"]);
    assert!(points[3].ends_with("oldest_wait_s=175"), "{points:?}");
    let mut hourly = live_config("");
    hourly.tracking.gauge_keepalive = std::time::Duration::from_secs(120);
    let points = points_of(&hourly, "08:00:05 issued A1 service=ktp\n08:03:11 heartbeat", "queue");
    let times: Vec<&str> = points.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    assert_eq!(times, ["@08:00:10", "@08:02:00"]);
}

#[test]
fn a_queue_that_empties_writes_a_row_of_zeros_and_then_nothing() {
    let points =
        points_of(&live_config(""), "08:00:05 issued A1 service=ktp\n08:00:15 cancelled A1\n08:05 heartbeat", "queue");
    assert_eq!(
        points,
        [
            "queue service=ktp @08:00:10 waiting=1 in_service=0 over_target=0 issued=1 called=0 oldest_wait_s=5",
            "queue service=ktp @08:00:20 waiting=0 in_service=0 over_target=0 issued=0 called=0 oldest_wait_s=0",
        ]
    );
}

#[test]
fn a_customer_crossing_the_target_is_news() {
    // Nothing happens between 08:00 and 08:10:10 but the wait passing the target.
    let mut config = live_config("");
    config.tracking.gauge_keepalive = std::time::Duration::from_secs(3600);
    let points = points_of(&config, "08:00 issued A1 service=ktp\n08:10:21 heartbeat", "queue");
    let times: Vec<&str> = points.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    assert_eq!(times, ["@08:00:00", "@08:10:10"]);
    assert!(points[1].contains("over_target=1"), "{points:?}");
}

#[test]
fn the_oldest_wait_passing_twice_the_target_is_news() {
    // ktp's wait target is 10 min: A1 passes it at 08:10 and twice it at
    // 08:20; the first snapshot after each says so, with no keepalive between.
    let mut config = live_config("");
    config.tracking.gauge_keepalive = std::time::Duration::from_secs(3600);
    let points = points_of(&config, "08:00 issued A1 service=ktp\n08:20:21 heartbeat", "queue");
    let times: Vec<&str> = points.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    assert_eq!(times, ["@08:00:00", "@08:10:10", "@08:20:10"]);
    assert!(points[2].ends_with("over_target=1 issued=0 called=0 oldest_wait_s=1210"), "{points:?}");
    // Once called, nobody waits: no row at 08:20:10.
    let called =
        points_of(&config, "08:00 issued A1 service=ktp\n08:19 called A1 counter=1\n08:20:21 heartbeat", "queue");
    assert!(called.iter().all(|p| !p.contains("@08:20:10")), "{called:?}");
}

#[test]
fn waiting_past_the_target_counts_as_over_target() {
    let points = points_of(&live_config(""), "08:00 issued A1 service=ktp\n08:10:21 heartbeat", "queue");
    assert!(points.iter().any(|p| p.starts_with("queue service=ktp @08:10:00 waiting=1 in_service=0 over_target=0")));
    assert!(points.iter().any(|p| p.starts_with("queue service=ktp @08:10:10 waiting=1 in_service=0 over_target=1")));
}

#[test]
fn a_service_drops_out_of_the_gauges_after_gauge_idle_after() {
    let config = live_config("[tracking]\ngauge_idle_after = \"30s\"\n");
    let points =
        points_of(&config, "08:00:00 issued A1 service=ktp\n08:00:05 cancelled A1\n08:01:30 heartbeat", "queue");
    let times: Vec<&str> = points.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    // The row of zeros at 08:00:10 is the series' last; the service then
    // drops out (it would write no news anyway) and is back when heard.
    assert_eq!(times, ["@08:00:00", "@08:00:10"]);
    let back = points_of(
        &config,
        "08:00:00 issued A1 service=ktp\n08:00:05 cancelled A1\n08:01:30 issued A2 service=ktp\n08:01:45 heartbeat",
        "queue",
    );
    let times: Vec<&str> = back.iter().map(|p| p.split(' ').nth(2).unwrap()).collect();
    assert_eq!(times, ["@08:00:00", "@08:00:10", "@08:01:30"]);
}

#[test]
fn office_gauges_count_messages_and_carry_name_region_and_counters() {
    let config = live_config("[offices.o1]\nname = \"MPP Satu\"\nregion = \"jabar\"\n");
    let settings = TrackerSettings::new(&config, Mode::Replay);
    let mut tracker = Tracker::new(settings);
    let mut out = Output::default();
    for line in
        ["08:00:01 counter_opened counter=c1", "08:00:02 issued A1 service=ktp", "08:00:03 called A1 counter=c1"]
    {
        tracker.ingest(script_event(line).0, Millis(0), &mut out);
    }
    tracker.note_rejection(&OfficeId::parse("o1").unwrap(), Millis(0), &mut out);
    tracker.ingest(script_event("08:00:25 heartbeat").0, Millis(0), &mut out);
    tracker.drain(Millis(0), &mut out);
    let offices: Vec<String> = out.points.iter().filter(|p| p.measurement == "office").map(render).collect();
    assert_eq!(
        offices,
        ["office region=jabar @08:00:10 waiting=0 in_service=1 accepted=4 rejected=1 clock_ahead=0 counters_open=1 \
             last_event_age_s=7 name=MPP Satu"]
    );
    let tickets = out.points.iter().filter(|p| p.measurement == "ticket");
    assert!(tickets.count() == 0, "A1 is still open");
}

#[test]
fn the_region_tag_is_on_every_point_of_the_office() {
    let config = live_config("[offices.o1]\nregion = \"jabar\"\n");
    let (points, _) = run_script(
        TrackerSettings::new(&config, Mode::Replay),
        "08:00 issued A1 service=ktp\n08:20 finished A1 counter=c1\n08:21 feedback A1 rating=4\n08:40 heartbeat",
    );
    assert!(!points.is_empty());
    for point in &points {
        assert_eq!(point.tag_value("region"), Some("jabar"), "{}", render(point));
    }
}

#[test]
fn a_counter_session_writes_open_busy_and_served_on_close() {
    check_points(
        &live_config(""),
        "08:00 counter_opened counter=c1 staff=budi
         08:00:10 issued A1 service=ktp
         08:01 called A1 counter=c1
         08:05 finished A1 counter=c1
         08:06 issued A2 service=ktp
         08:10 called A2 counter=c1
         08:12 called A2 counter=c1
         08:20 finished A2 counter=c1
         08:06 issued A3 service=ktp
         08:21 called A3 counter=c1
         08:22 no_show A3 counter=c1
         08:30 counter_closed counter=c1",
        "counter",
        &["counter counter=c1 @08:30:00 open_s=1800 busy_s=900 served=2 staff=budi"],
    );
}

#[test]
fn busy_time_is_the_union_of_overlapping_segments() {
    check_points(
        &live_config(""),
        "08:00 counter_opened counter=c1
         08:00 issued A1 service=ktp
         08:00 issued A2 service=ktp
         08:01 called A1 counter=c1
         08:02 called A2 counter=c1
         08:03 finished A1 counter=c1
         08:04 finished A2 counter=c1
         08:10 counter_closed counter=c1",
        "counter",
        &["counter counter=c1 @08:10:00 open_s=600 busy_s=180 served=2"],
    );
}

#[test]
fn feedback_names_the_service_of_a_known_ticket() {
    check_points(
        &live_config(""),
        "08:00 issued A1 service=ktp
         08:05 called A1 counter=c1
         08:10 finished A1 counter=c1
         08:10:30 feedback A1 counter=c1 rating=5
         08:11 feedback counter=c2 rating=2
         08:12 feedback Z9 rating=1",
        "feedback",
        &[
            "feedback counter=c1,service=ktp @08:10:30 rating=5 ticket=A1",
            "feedback counter=c2 @08:11:00 rating=2",
            "feedback @08:12:00 rating=1 ticket=Z9",
        ],
    );
}

/// A live tracker at wall time = event time, to watch alerts appear.
struct Live {
    tracker: Tracker,
    out: Output,
}

impl Live {
    fn new(config: &Config) -> Live {
        Live { tracker: Tracker::new(TrackerSettings::new(config, Mode::Live)), out: Output::default() }
    }

    fn event(&mut self, line: &str) {
        let (event, _) = script_event(line);
        let wall = event.ts;
        self.tracker.ingest(event, wall, &mut self.out);
    }

    fn at(&mut self, time: &str) {
        self.tracker.advance(parse_time(time), &mut self.out);
    }

    fn alerts(&mut self) -> Vec<String> {
        self.out
            .alerts
            .drain(..)
            .map(|alert| format!("{} {} {}", alert.kind.as_str(), alert.state.as_str(), alert.id))
            .collect()
    }
}

#[test]
fn a_live_wait_alert_fires_after_deadline_plus_window_and_resolves_on_call() {
    let mut live = Live::new(&live_config(""));
    live.event("08:00 issued A1 service=ktp");
    live.at("08:10:09");
    assert!(live.alerts().is_empty(), "the window has not passed the deadline");
    live.at("08:10:11");
    let deadline_ms = parse_time("08:10").0;
    assert_eq!(live.alerts(), [format!("wait firing wait:o1:A1:{deadline_ms}")]);
    live.event("08:12 called A1 counter=c1");
    live.at("08:12:11");
    assert_eq!(live.alerts(), [format!("wait resolved wait:o1:A1:{deadline_ms}")]);
}

#[test]
fn alerts_carry_what_subscribers_need() {
    let mut live = Live::new(&live_config(""));
    live.event("08:00 issued A1 service=ktp");
    live.at("08:10:11");
    let alert = live.out.alerts.pop().unwrap();
    let json: serde_json::Value = serde_json::from_str(&alert.to_json()).unwrap();
    assert_eq!(json["kind"], "wait");
    assert_eq!(json["state"], "firing");
    assert_eq!(json["office"], "o1");
    assert_eq!(json["service"], "ktp");
    assert_eq!(json["ticket"], "A1");
    assert_eq!(json["target_s"], 600.0);
    assert_eq!(json["since"], "2026-11-27T08:10:00.000Z");
    assert!(json.get("counter").is_none());
}

#[test]
fn a_service_alert_resolves_when_the_ticket_closes() {
    let mut live = Live::new(&live_config(""));
    live.event("08:00 issued A1 service=ktp");
    live.event("08:01 called A1 counter=c1");
    live.at("08:16:11");
    assert_eq!(live.alerts().len(), 1);
    live.event("08:17 finished A1 counter=c1");
    live.at("08:17:11");
    let resolved = live.alerts();
    assert_eq!(resolved.len(), 1);
    assert!(resolved[0].starts_with("service resolved service:o1:A1:"));
}

#[test]
fn an_idle_alert_resolves_when_the_counter_calls_someone() {
    let mut live = Live::new(&live_config("[sla]\nidle_target = \"5m\"\n"));
    live.event("08:00 counter_opened counter=c1");
    live.event("08:01 issued A1 service=ktp");
    live.at("08:06:11");
    assert_eq!(live.alerts(), [format!("idle firing idle:o1:c1:{}", parse_time("08:06").0)]);
    live.event("08:07 called A1 counter=c1");
    live.at("08:07:11");
    assert_eq!(live.alerts(), [format!("idle resolved idle:o1:c1:{}", parse_time("08:06").0)]);
}

#[test]
fn an_office_with_hours_goes_silent_and_is_resolved_when_heard_again() {
    // 2026-11-27 is a Friday; 08:00 UTC is 15:00 in Jakarta, inside 07:00-16:00.
    let config = live_config("[offices.o1]\nhours = \"07:00-16:00\"\n[tracking]\nsilence_after = \"15m\"\n");
    let mut live = Live::new(&config);
    live.event("08:00 heartbeat");
    live.at("08:14:59");
    assert!(live.alerts().is_empty());
    live.at("08:15:00");
    assert_eq!(live.alerts(), [format!("silent firing silent:o1:{}", parse_time("08:15").0)]);
    live.event("08:20 heartbeat");
    assert_eq!(live.alerts(), [format!("silent resolved silent:o1:{}", parse_time("08:15").0)]);
}

#[test]
fn an_office_is_not_silent_outside_its_hours_and_replay_never_reports_silence() {
    let config = live_config("[offices.o1]\nhours = \"07:00-16:00\"\n");
    let mut live = Live::new(&config);
    live.event("09:30 heartbeat"); // 16:30 in Jakarta: closed
    live.at("10:30");
    assert!(live.alerts().is_empty());
    let replayed = points_of(&config, "08:00 heartbeat\n08:40 heartbeat", "office");
    assert!(replayed.iter().all(|p| !p.contains("silent=")), "{replayed:?}");
}

#[test]
fn a_configured_office_gets_gauges_in_a_live_run_before_it_is_heard() {
    let config = live_config("[offices.quiet]\nname = \"Quiet\"\n");
    let mut live = Live::new(&config);
    live.at("08:00:10");
    live.at("08:00:41");
    // A rejected message makes the next row due, carrying the count.
    let quiet = OfficeId::parse("quiet").unwrap();
    live.tracker.note_rejection(&quiet, parse_time("08:00:45"), &mut live.out);
    live.at("08:01:31");
    let offices: Vec<String> = live.out.points.iter().filter(|p| p.measurement == "office").map(render).collect();
    // From the daemon's start (08:00:10, less the window) on the wall clock;
    // then only rows with news.
    assert_eq!(
        offices,
        [
            "office office=quiet @08:00:00 waiting=0 in_service=0 accepted=0 rejected=0 clock_ahead=0 name=Quiet",
            "office office=quiet @08:00:40 waiting=0 in_service=0 accepted=0 rejected=1 clock_ahead=0 name=Quiet",
        ]
    );
}

#[test]
fn an_office_row_is_written_when_its_state_changes_or_messages_were_rejected() {
    // Accepted and rejected are arrival counts: each row carries those
    // since the previous row, whenever the replay's arrivals released it.
    let mut config = live_config("");
    config.tracking.gauge_keepalive = std::time::Duration::from_secs(3600);
    let mut tracker = Tracker::new(TrackerSettings::new(&config, Mode::Replay));
    let mut out = Output::default();
    let o1 = OfficeId::parse("o1").unwrap();
    for line in [
        "08:00:01 counter_opened counter=c1",
        "08:00:02 issued A1 service=ktp",
        "08:00:33 called A1 counter=c1",
        "08:01:15 heartbeat",
    ] {
        tracker.ingest(script_event(line).0, Millis(0), &mut out);
    }
    tracker.note_rejection(&o1, Millis(0), &mut out);
    tracker.ingest(script_event("08:01:36 heartbeat").0, Millis(0), &mut out);
    tracker.drain(Millis(0), &mut out);
    let times: Vec<String> = out
        .points
        .iter()
        .filter(|p| p.measurement == "office")
        .map(|p| format!("{} {}", render_time(p.time_ns / 1_000_000), p.to_line().split(' ').nth(1).unwrap()))
        .collect();
    assert_eq!(
        times,
        [
            "08:00:10 waiting=1i,in_service=0i,accepted=3i,rejected=0i,clock_ahead=0i,counters_open=1i,last_event_age_s=8",
            "08:00:40 waiting=0i,in_service=1i,accepted=1i,rejected=0i,clock_ahead=0i,counters_open=1i,last_event_age_s=7",
            "08:01:10 waiting=0i,in_service=1i,accepted=1i,rejected=1i,clock_ahead=0i,counters_open=1i,last_event_age_s=37",
        ]
    );
}

#[test]
fn offices_have_their_own_targets() {
    let config = live_config("[offices.o2.sla]\nwait_target = \"30m\"\n");
    check_points(
        &config,
        "08:00 issued A1 service=ktp office=o1
         08:00 issued A1 service=ktp office=o2
         08:20 heartbeat office=o1
         08:40 heartbeat office=o2",
        "breach",
        &[
            "breach kind=wait,service=ktp @08:10:00 ticket=A1 target_s=600",
            "breach kind=wait,office=o2,service=ktp @08:30:00 ticket=A1 target_s=1800",
        ],
    );
}

#[test]
fn a_replay_writes_the_same_points_as_a_live_run_of_the_same_events() {
    let config = live_config("[sla]\nidle_target = \"5m\"\n[tracking]\nsnapshot_interval = \"1m\"\n");
    let script = "07:55 counter_opened counter=c1
        08:00 issued A1 service=ktp
        08:03 issued A2 service=sim
        08:12 called A1 counter=c1
        08:13 started A1 counter=c1
        08:40 finished A1 counter=c1
        08:41 feedback A1 rating=3
        08:41 called A2 counter=c1
        08:45 finished A2 counter=c1
        09:00 counter_closed counter=c1
        09:30 heartbeat";
    let (replayed, _) = run_script(TrackerSettings::new(&config, Mode::Replay), script);
    let mut live = Live::new(&config);
    for line in script.lines() {
        live.event(line.trim());
        // Wall time runs on between events, in small steps.
        let (event, _) = script_event(line.trim());
        live.tracker.advance(event.ts.plus_ms(1), &mut live.out);
    }
    let mut replayed: Vec<String> = replayed.iter().filter(|p| p.measurement != "office").map(Point::to_line).collect();
    let mut lived: Vec<String> = live
        .out
        .points
        .iter()
        .filter(|p| p.measurement != "office" && p.time_ns / 1_000_000 < parse_time("09:29:50").0)
        .map(Point::to_line)
        .collect();
    replayed.sort();
    lived.sort();
    assert_eq!(lived, replayed);
    assert!(replayed.iter().any(|line| line.starts_with("breach,counter=c1,kind=idle")));
    assert!(replayed.iter().any(|line| line.starts_with("breach,counter=c1,kind=service")));
}

/// Runs a live script whose lines carry their wall arrival (`at=`), letting
/// the wall clock tick every second in between, as the daemon does.
fn run_live_with_ticks(config: &Config, script: &str, until: &str) -> (Vec<Point>, NoteCounts, Vec<String>) {
    let mut tracker = Tracker::new(TrackerSettings::new(config, Mode::Live));
    let mut out = Output::default();
    let mut raised = Vec::new();
    let mut wall = None;
    let mut tick_to = |tracker: &mut Tracker, out: &mut Output, to: Millis, wall: &mut Option<Millis>| {
        let mut at = wall.unwrap_or(to);
        while at < to {
            at = at.plus_ms(1000).min(to);
            tracker.advance(at, out);
            for point in out.points.iter().filter(|point| point.measurement == "breach") {
                let seen = format!("{} raised at {}", render(point), render_time(at.0));
                if !raised.iter().any(|known: &String| known.starts_with(&render(point))) {
                    raised.push(seen);
                }
            }
        }
        *wall = Some(to);
    };
    for line in script.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (event, arrival) = script_event(line);
        let arrival = arrival.expect("every line has at=");
        tick_to(&mut tracker, &mut out, arrival, &mut wall);
        tracker.ingest(event, arrival, &mut out);
    }
    tick_to(&mut tracker, &mut out, parse_time(until), &mut wall);
    tracker.drain(parse_time(until), &mut out);
    (out.points, out.notes, raised)
}

/// A kiosk on time, and a counter caller whose clock runs 4 minutes fast
/// (inside the 5-minute max_future_skew), interleaved.
const FAST_CALLER: &str = "
    08:00:00 issued A1 service=ktp at=08:00:00
    08:01:00 issued B1 service=ktp at=08:01:00
    08:09:00 called A1 counter=c1 at=08:05:00
    08:06:00 issued C1 service=ktp at=08:06:00
    08:12:00 finished A1 counter=c1 at=08:08:00
    08:13:00 called B1 counter=c1 at=08:09:00
    08:09:30 issued D1 service=ktp at=08:09:30
    08:14:00 finished B1 counter=c1 at=08:10:00
    08:15:00 called C1 counter=c1 at=08:11:00
    08:16:00 finished C1 counter=c1 at=08:12:00
    08:12:30 called D1 counter=c2 at=08:12:30
    08:13:00 finished D1 counter=c2 at=08:13:00";

#[test]
fn a_device_running_fast_does_not_move_its_office_clock() {
    let config = live_config("");
    assert_eq!(config.tracking.clock, crate::config::ClockMode::Wall);
    let (points, notes, raised) = run_live_with_ticks(&config, FAST_CALLER, "08:30");
    let tickets: Vec<String> = points.iter().filter(|p| p.measurement == "ticket").map(render_point).collect();
    assert_eq!(
        tickets,
        [
            "o1 served ktp c1 @08:12:00 ticket=A1 recalls=0 wait_s=540 service_s=180 total_s=720 visit_s=720 \
             wait_within_target=1 service_within_target=1",
            "o1 served ktp c2 @08:13:00 ticket=D1 recalls=0 wait_s=180 service_s=30 total_s=210 visit_s=210 \
             wait_within_target=1 service_within_target=1",
            "o1 served ktp c1 @08:14:00 ticket=B1 recalls=0 wait_s=720 service_s=60 total_s=780 visit_s=780 \
             wait_within_target=0 service_within_target=1",
            "o1 served ktp c1 @08:16:00 ticket=C1 recalls=0 wait_s=540 service_s=60 total_s=600 visit_s=600 \
             wait_within_target=1 service_within_target=1",
        ]
    );
    // B1 waited past its 08:11:00 deadline (issued 08:01 by the kiosk): the
    // breach is raised once the real time passes deadline + window, not 4
    // minutes early.
    assert_eq!(raised, ["breach kind=wait,service=ktp @08:11:00 ticket=B1 target_s=600 raised at 08:11:11"]);
    assert_eq!(notes.get(Note::Late), 0);
    assert_eq!(notes.get(Note::LateDropped), 0);
    assert_eq!(notes.get(Note::ClockAhead), 6);
    assert_eq!(notes.get(Note::Applied), 12);
    let ahead: i64 = points
        .iter()
        .filter(|p| p.measurement == "office")
        .filter_map(|p| p.fields.iter().find(|(key, _)| *key == "clock_ahead"))
        .map(|(_, value)| match value {
            FieldValue::Int(count) => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(ahead, 6, "office rows count the events stamped ahead");
}

#[test]
fn with_the_event_clock_a_fast_device_drags_its_office_ahead() {
    // What `clock = "event"` (the demo's compressed time) does with the same
    // stream: the breach fires 4 minutes early and on-time events arrive late.
    let mut config = live_config("");
    config.tracking.clock = crate::config::ClockMode::Event;
    let (_, notes, raised) = run_live_with_ticks(&config, FAST_CALLER, "08:30");
    assert_eq!(raised, ["breach kind=wait,service=ktp @08:11:00 ticket=B1 target_s=600 raised at 08:07:11"]);
    assert!(notes.get(Note::Late) > 0);
    assert_eq!(notes.get(Note::ClockAhead), 0);
}

#[test]
fn an_office_clock_never_passes_the_wall_clock_when_a_stall_shift_ends() {
    // During a writer stall the daemon runs office clocks a minute behind the
    // wall clock; an event stamped at the real time arrives then. Once the
    // backlog is worked off the shift ends and `now` jumps forward by that
    // minute: the office clock follows the wall clock, not the wall clock
    // plus the minute.
    let config = live_config("");
    let mut tracker = Tracker::new(TrackerSettings::new(&config, Mode::Live));
    let mut out = Output::default();
    let (event, _) = script_event("08:00:00 issued A1 service=ktp");
    let real = event.ts;
    tracker.ingest_with_wall(event, real.minus_ms(60_000), real, &mut out);
    let o1 = OfficeId::parse("o1").unwrap();
    assert_eq!(tracker.office_clock(&o1, real.plus_ms(1000)), Some(real.plus_ms(1000)));
    let mut event_clock = config.clone();
    event_clock.tracking.clock = crate::config::ClockMode::Event;
    let mut tracker = Tracker::new(TrackerSettings::new(&event_clock, Mode::Live));
    let (event, _) = script_event("08:00:00 issued A1 service=ktp");
    tracker.ingest_with_wall(event, real.minus_ms(60_000), real, &mut out);
    assert_eq!(tracker.office_clock(&o1, real.plus_ms(1000)), Some(real.plus_ms(61_000)));
}

#[test]
fn with_gauges_off_no_queue_or_office_rows_are_written_and_nothing_else_changes() {
    let script = "08:00 counter_opened counter=c1
                  08:00:05 issued A1 service=ktp
                  08:12 called A1 counter=c1
                  08:20 finished A1 counter=c1
                  08:30 counter_closed counter=c1";
    let on = live_config("");
    let mut off = live_config("");
    off.tracking.gauges = false;
    for measurement in ["queue", "office"] {
        assert!(!points_of(&on, script, measurement).is_empty());
        assert!(points_of(&off, script, measurement).is_empty(), "{measurement}");
    }
    for measurement in ["ticket", "breach", "counter"] {
        assert_eq!(points_of(&off, script, measurement), points_of(&on, script, measurement), "{measurement}");
    }
    // Nor for configured offices never heard, in a live run.
    let mut quiet = live_config("[offices.quiet]\nname = \"Quiet\"\n");
    quiet.tracking.gauges = false;
    let mut live = Live::new(&quiet);
    live.at("08:00:10");
    live.at("08:05:00");
    assert!(live.out.points.is_empty());
}

#[test]
fn a_segment_expiring_while_nobody_waits_is_news_at_the_next_multiple() {
    // A customer called and never finished: the segment expires 12 h after
    // its last event with no event applied around it; the queue row that
    // follows must show it gone at once, not at the next event.
    let script = "08:00:00 issued A1 service=ktp
                  08:01:00 called A1 counter=c1
                  d1/07:00:00 heartbeat";
    let points = points_of(&live_config(""), script, "queue");
    assert!(points.iter().any(|p| p.starts_with("queue service=ktp @20:01:00 waiting=0 in_service=0")), "{points:#?}");
}
