//! Every message has exactly one fate, through the whole decoder → tracker
//! path: rejected with a reason, or accepted and then applied, `duplicate`,
//! `after_close`, `orphan_close` or `late_dropped` (`late`, `clock_skew` and
//! `clock_ahead` are remarks, not outcomes). And every point the pipeline
//! encodes lies inside the time range InfluxDB can store.

use proptest::prelude::*;
use queuewatch::config::{ClockMode, Config};
use queuewatch::ids::OfficeId;
use queuewatch::pipeline::Pipeline;
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Note};

/// 2026-11-27T00:00:00Z.
const DAY_MS: i64 = 1_795_737_600_000;

/// InfluxDB's time range, in nanoseconds (1677-09-21 to 2262-04-11).
const INFLUX_MIN_NS: i64 = -9_223_372_036_854_775_806;
const INFLUX_MAX_NS: i64 = 9_223_372_036_854_775_806;

/// Feeds `(office, payload, wall)` messages, then drains; returns the
/// pipeline and every encoded line.
fn run(mode: Mode, messages: &[(String, String, Millis)]) -> (Pipeline, Vec<String>) {
    run_with(Config::default(), mode, messages)
}

/// The test offices with opening hours that close within the messages' morning
/// (a lunch break, then the close at 03:00 UTC and its grace of 10 minutes).
fn config_with_hours() -> Config {
    Config::parse(
        "[tracking]\nclose_grace = \"10m\"\n\
         [offices.o1]\ntimezone = \"UTC\"\nhours = \"00:30-01:30,02:00-03:00\"\n\
         [offices.o2]\ntimezone = \"Asia/Jakarta\"\nhours = \"07:00-09:00\"\ndays = \"Mon-Thu\"\n",
    )
    .unwrap()
}

fn run_with(mut config: Config, mode: Mode, messages: &[(String, String, Millis)]) -> (Pipeline, Vec<String>) {
    config.tracking.clock = ClockMode::Wall;
    let mut pipeline = Pipeline::new(&config, mode);
    let mut lines = Vec::new();
    let mut last_wall = Millis(0);
    for (office, payload, wall) in messages {
        let office = OfficeId::parse(office).map(Some).map_err(|_| unreachable_rejection());
        let tracker_now = if mode == Mode::Live { *wall } else { Millis(0) };
        last_wall = last_wall.max(tracker_now);
        let _ = pipeline.handle(office, payload.as_bytes(), tracker_now, *wall);
        if mode == Mode::Live {
            pipeline.advance(tracker_now);
        }
        take(&mut pipeline, &mut lines);
    }
    pipeline.drain(last_wall);
    take(&mut pipeline, &mut lines);
    (pipeline, lines)
}

fn unreachable_rejection() -> queuewatch::event::Rejection {
    unreachable!("the test's office names are valid")
}

fn take(pipeline: &mut Pipeline, lines: &mut Vec<String>) {
    if let Some((text, _)) = pipeline.take_lines() {
        lines.extend(text.lines().map(str::to_owned));
    }
}

fn line_time_ns(line: &str) -> i64 {
    line.rsplit(' ').next().and_then(|time| time.parse().ok()).unwrap_or_else(|| panic!("no time in {line}"))
}

#[test]
fn a_counter_session_reported_with_a_ticket_field_is_still_a_counter_session() {
    let at = |minute: i64| Millis(DAY_MS + 3_600_000 + minute * 60_000);
    let messages: Vec<(String, String, Millis)> = [
        (r#"{"type":"counter_opened","ts":"2026-11-27T01:00:00Z","counter":"c1","ticket":"A1"}"#, 0),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:05:00Z","ticket":""}"#, 5),
        (r#"{"type":"counter_closed","ts":"2026-11-27T01:30:00Z","counter":"c1","ticket":"A1"}"#, 30),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:31:00Z"}"#, 31),
    ]
    .into_iter()
    .map(|(payload, minute)| ("o1".to_string(), payload.to_string(), at(minute)))
    .collect();
    let (pipeline, lines) = run(Mode::Replay, &messages);
    let counters: Vec<&String> = lines.iter().filter(|line| line.starts_with("counter,")).collect();
    assert_eq!(counters.len(), 1, "{lines:#?}");
    assert!(counters[0].starts_with("counter,counter=c1,office=o1 open_s=1800,busy_s=0,served=0i "), "{counters:?}");
    let stats = pipeline.stats();
    assert_eq!((stats.accepted, stats.notes.get(Note::Applied)), (4, 4), "{}", stats.summary());
    // Nothing of them is left behind: no open segment, no held event.
    assert_eq!(pipeline.tracker().open_segments(), 0);
    assert_eq!(pipeline.tracker().held_events(), 0);
}

/// One message: an event type, a ticket, a timestamp offset, an id, and
/// fields a sloppy vendor might add.
fn message() -> impl Strategy<Value = (String, String, i64)> {
    let kind = prop_oneof![
        Just("issued"),
        Just("called"),
        Just("recalled"),
        Just("started"),
        Just("finished"),
        Just("no_show"),
        Just("cancelled"),
        Just("transferred"),
        Just("counter_opened"),
        Just("counter_closed"),
        Just("feedback"),
        Just("heartbeat"),
        Just("warp"),
    ];
    let ticket = prop_oneof![Just(None), (0u8..6).prop_map(|n| Some(format!("\"A{n}\""))), Just(Some("7".to_string()))];
    // Mostly within a morning; some from unset device clocks, some ahead of the wall clock.
    let ts = prop_oneof![
        8 => (0i64..4 * 3_600_000).prop_map(|offset| format!("{}", DAY_MS + offset)),
        1 => Just("\"0001-01-01T00:00:00Z\"".to_string()),
        1 => Just("946684800000".to_string()),
        1 => (0i64..600_000).prop_map(|ahead| format!("{}", DAY_MS + 4 * 3_600_000 + ahead)),
    ];
    let office = prop_oneof![Just("o1"), Just("o2")];
    (kind, ticket, ts, proptest::option::of(0u8..20), office, 0i64..4 * 3_600_000).prop_map(
        |(kind, ticket, ts, id, office, wall_offset)| {
            let mut fields = vec![format!("\"type\":\"{kind}\""), format!("\"ts\":{ts}")];
            if let Some(ticket) = ticket {
                fields.push(format!("\"ticket\":{ticket}"));
            }
            fields.extend([
                "\"service\":\"ktp\"".to_string(),
                "\"counter\":\"c1\"".to_string(),
                "\"to_service\":\"sim\"".to_string(),
                "\"rating\":4".to_string(),
            ]);
            if let Some(id) = id {
                fields.push(format!("\"id\":\"e{id}\""));
            }
            (office.to_string(), format!("{{{}}}", fields.join(",")), wall_offset)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn every_accepted_event_has_exactly_one_outcome_and_every_point_time_is_storable(
        raw in proptest::collection::vec(message(), 1..120),
        live in any::<bool>(),
        hours in any::<bool>(),
    ) {
        // Arrivals in wall order; each message's wall time is its offset into the morning.
        let mut raw = raw;
        raw.sort_by_key(|(_, _, wall_offset)| *wall_offset);
        let messages: Vec<(String, String, Millis)> = raw
            .into_iter()
            .map(|(office, payload, wall_offset)| (office, payload, Millis(DAY_MS + wall_offset)))
            .collect();
        let mode = if live { Mode::Live } else { Mode::Replay };
        let config = if hours { config_with_hours() } else { Config::default() };
        let (pipeline, lines) = run_with(config, mode, &messages);
        let stats = pipeline.stats();
        prop_assert_eq!(stats.accepted + stats.rejected_total(), messages.len() as u64);
        let outcomes: u64 = Note::OUTCOMES.iter().map(|note| stats.notes.get(*note)).sum();
        prop_assert_eq!(outcomes, stats.accepted, "{}", stats.summary());
        prop_assert_eq!(pipeline.tracker().held_events(), 0);
        for line in &lines {
            let time = line_time_ns(line);
            prop_assert!((INFLUX_MIN_NS..=INFLUX_MAX_NS).contains(&time), "{}", line);
        }
    }
}
