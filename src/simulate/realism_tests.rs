//! The realism of the office day, checked over simulated weeks against the
//! events and the ground truth: walk-outs, closing on time, busy days, the
//! silent kiosk, and that [`Realism::tidy`] is the model as it was.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDate, Timelike};

use super::*;

/// Seven office days from 06:00 WIB, before any office opens.
fn week(offices: u32, realism: Realism) -> SimOptions {
    let start = parse_start("2026-11-27T06:00:00+07:00").unwrap();
    SimOptions { offices, days: 7, realism, ..SimOptions::new(start) }
}

/// A simulation run to its end: its events and its truth.
struct Run {
    events: Vec<Parsed>,
    truth: Vec<TicketTruth>,
}

/// The parts of an event these tests look at.
#[derive(Debug, Clone)]
struct Parsed {
    kind: EventType,
    office: String,
    ticket: Option<String>,
    ts: DateTime<FixedOffset>,
}

impl Parsed {
    /// Ticket numbers restart daily: (office, ticket, local date) names a ticket.
    fn ticket_key(&self) -> Option<(String, String, NaiveDate)> {
        Some((self.office.clone(), self.ticket.clone()?, self.ts.date_naive()))
    }

    fn local_minute(&self) -> u32 {
        self.ts.hour() * 60 + self.ts.minute()
    }
}

fn truth_key(record: &TicketTruth) -> (String, String, NaiveDate) {
    let issued = DateTime::parse_from_rfc3339(&record.issued).unwrap();
    (record.office.clone(), record.ticket.clone(), issued.date_naive())
}

fn run(options: &SimOptions) -> Run {
    let mut simulation = Simulation::recording_truth(options);
    let events = simulation
        .by_ref()
        .map(|event| {
            let value: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
            Parsed {
                kind: event.kind,
                office: event.office,
                ticket: value.get("ticket").and_then(|ticket| ticket.as_str()).map(str::to_string),
                ts: DateTime::parse_from_rfc3339(value["ts"].as_str().unwrap()).unwrap(),
            }
        })
        .collect();
    Run { events, truth: simulation.truth() }
}

fn count_ends(truth: &[TicketTruth], end: TicketEnd) -> usize {
    truth.iter().filter(|record| record.end == end).count()
}

/// FNV-1a (64 bits) of the NDJSON of a run: a fingerprint that does not
/// depend on the Rust version, as `DefaultHasher` may.
fn ndjson_fingerprint(options: &SimOptions) -> u64 {
    let mut written = Vec::new();
    write_ndjson(options, &mut written).unwrap();
    written.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn tidy_gives_byte_for_byte_the_events_of_the_model_before_realism() {
    // Fingerprints of `simulate --ndjson` taken before realism existed.
    let cases = [
        ("2026-11-27T06:00:00+07:00", 3, 6, 2, 1, 0x0866_f369_b29e_cf27_u64),
        ("2026-11-27T14:40:00+07:00", 2, 3, 1, 11, 0xf67a_aea4_b739_b96d),
    ];
    for (start, offices, counters, days, seed, fingerprint) in cases {
        let options = SimOptions {
            offices,
            counters,
            days,
            seed,
            realism: Realism::tidy(),
            ..SimOptions::new(parse_start(start).unwrap())
        };
        assert_eq!(ndjson_fingerprint(&options), fingerprint, "{start} offices {offices} seed {seed}");
    }
}

#[test]
fn tidy_closes_every_ticket_with_an_event() {
    let truth = run(&week(2, Realism::tidy())).truth;
    assert!(truth.len() > 3000, "{} tickets", truth.len());
    assert!(truth.iter().all(|record| record.seen && !record.end.is_silent()));
}

#[test]
fn walkouts_not_called_in_time_leave_unseen_and_their_numbers_end_as_no_shows_or_at_closing() {
    let Run { events, truth } = run(&week(4, Realism::default()));
    let walked_out = count_ends(&truth, TicketEnd::WalkedOut);
    let no_shows = count_ends(&truth, TicketEnd::NoShow);
    let no_shows_tidy =
        count_ends(&run(&week(4, Realism { walkout_share: 0.0, ..Realism::default() })).truth, TicketEnd::NoShow);
    let share = walked_out as f64 / truth.len() as f64;
    eprintln!(
        "{walked_out} walk-outs never called of {} tickets ({:.2} %); no-shows {no_shows} against {no_shows_tidy} without walk-outs",
        truth.len(),
        share * 100.0
    );
    // Of the 4 % impatient, those called within their 5-45 min stay; the others leave, and
    // most of their numbers are called later in vain (no-shows); the rest are still waiting at
    // closing.
    assert!(walked_out > 0 && share < 0.04, "{share}");
    assert!(no_shows > no_shows_tidy, "called walk-outs are no-shows: {no_shows} vs {no_shows_tidy}");
    let with_events_besides_issued: HashSet<_> =
        events.iter().filter(|event| event.kind != EventType::Issued).filter_map(Parsed::ticket_key).collect();
    for record in truth.iter().filter(|record| record.end == TicketEnd::WalkedOut) {
        assert!(!with_events_besides_issued.contains(&truth_key(record)), "{record:?} has events");
        assert!(record.end_at >= record.issued_at);
    }
    let off = run(&week(2, Realism { walkout_share: 0.0, ..Realism::default() })).truth;
    assert_eq!(count_ends(&off, TicketEnd::WalkedOut), 0);
}

#[test]
fn busy_days_leave_tickets_waiting_at_closing_only_when_counters_close_on_time() {
    // (realism, some tickets left at closing over a week of four offices)
    let cases = [
        (Realism::default(), true),
        (Realism { closing: Closing::WhenQueuesEmpty, ..Realism::default() }, false),
        (Realism { busy_day_share: 1.0, ..Realism::tidy() }, false),
        (Realism { busy_day_share: 1.0, closing: Closing::AtClosingTime, ..Realism::tidy() }, true),
    ];
    for (realism, leftovers_expected) in cases {
        let truth = run(&week(4, realism)).truth;
        let left = count_ends(&truth, TicketEnd::LeftAtClose);
        eprintln!("{realism:?}: {left} left at closing");
        assert_eq!(left > 0, leftovers_expected, "{realism:?}: {left} left at closing");
        for record in truth.iter().filter(|record| record.end == TicketEnd::LeftAtClose) {
            assert!(record.at.contains("T15:30:00.000+"), "{record:?}");
        }
    }
}

#[test]
fn after_closing_only_tickets_already_called_have_events() {
    let closing = model::CLOSING_MINUTE;
    for realism in [Realism::default(), Realism { busy_day_share: 1.0, ..Realism::default() }] {
        let Run { events, .. } = run(&week(4, realism));
        let mut called_before_closing = HashSet::new();
        let mut after_closing: BTreeMap<EventType, usize> = BTreeMap::new();
        for event in &events {
            if event.local_minute() < closing {
                if event.kind == EventType::Called {
                    called_before_closing.extend(event.ticket_key());
                }
                continue;
            }
            *after_closing.entry(event.kind).or_insert(0) += 1;
            match event.kind {
                EventType::Recalled
                | EventType::Started
                | EventType::NoShow
                | EventType::Finished
                | EventType::Feedback => {
                    let key = event.ticket_key().unwrap();
                    assert!(called_before_closing.contains(&key), "{event:?} was not in service at closing");
                }
                EventType::Heartbeat | EventType::CounterClosed => {}
                EventType::Issued
                | EventType::Called
                | EventType::Transferred
                | EventType::Cancelled
                | EventType::CounterOpened => panic!("{event:?} after closing"),
            }
        }
        eprintln!("after closing: {after_closing:?}");
        assert!(after_closing.get(&EventType::Finished).copied().unwrap_or(0) > 0, "some service runs over");
    }
}

#[test]
fn a_silent_kiosk_hour_publishes_no_issued_and_its_tickets_appear_through_called() {
    let Run { events, truth } = run(&week(4, Realism::default()));
    let issued: Vec<&Parsed> = events.iter().filter(|event| event.kind == EventType::Issued).collect();
    let issued_keys: HashSet<_> = issued.iter().filter_map(|event| event.ticket_key()).collect();
    // Tickets of the silent hours: unseen, or seen again once transferred.
    let not_issued: Vec<&TicketTruth> =
        truth.iter().filter(|record| !issued_keys.contains(&truth_key(record))).collect();
    let unseen: Vec<&TicketTruth> = truth.iter().filter(|record| !record.seen).collect();
    assert_eq!(issued.len() + not_issued.len(), truth.len());
    assert!(unseen.iter().all(|record| !issued_keys.contains(&truth_key(record))));
    assert!(unseen.len() * 10 >= not_issued.len() * 9, "few are transferred: {} of {}", unseen.len(), not_issued.len());
    let mut silent_span_by_office: HashMap<&str, (Millis, Millis)> = HashMap::new();
    for record in &not_issued {
        let span = silent_span_by_office.entry(&record.office).or_insert((record.issued_at, record.issued_at));
        span.0 = span.0.min(record.issued_at);
        span.1 = span.1.max(record.issued_at);
    }
    // One outage per office and week, of an hour.
    assert_eq!(silent_span_by_office.len(), 4, "{silent_span_by_office:?}");
    let called: HashSet<_> =
        events.iter().filter(|event| event.kind == EventType::Called).filter_map(Parsed::ticket_key).collect();
    for (office, (from, until)) in &silent_span_by_office {
        assert!(until.since(*from) <= 3_600_000, "{office}: {from} … {until}");
        let issued_meanwhile = issued
            .iter()
            .filter(|event| event.office == *office)
            .filter(|event| (from.0..=until.0).contains(&event.ts.timestamp_millis()));
        assert_eq!(issued_meanwhile.count(), 0, "{office}");
    }
    let served_unseen: Vec<&&TicketTruth> = unseen.iter().filter(|record| record.end == TicketEnd::Served).collect();
    assert!(!served_unseen.is_empty());
    assert!(served_unseen.iter().all(|record| called.contains(&truth_key(record))));
}

#[test]
fn every_truth_line_matches_the_events_of_its_ticket() {
    let Run { events, truth } = run(&week(3, Realism { busy_day_share: 0.5, ..Realism::default() }));
    // The events that end a ticket, by ticket, with their time.
    let mut ends: HashMap<(String, String, NaiveDate), Vec<(EventType, i64)>> = HashMap::new();
    let mut issued_at: HashMap<(String, String, NaiveDate), i64> = HashMap::new();
    for event in &events {
        let Some(key) = event.ticket_key() else { continue };
        match event.kind {
            EventType::Finished | EventType::NoShow | EventType::Cancelled => {
                ends.entry(key).or_default().push((event.kind, event.ts.timestamp_millis()));
            }
            EventType::Issued => {
                issued_at.insert(key, event.ts.timestamp_millis());
            }
            _ => {}
        }
    }
    let mut keys = HashSet::new();
    for record in &truth {
        let key = truth_key(record);
        assert!(keys.insert(key.clone()), "one line per ticket: {record:?}");
        let expected_event = match record.end {
            TicketEnd::Served => Some(EventType::Finished),
            TicketEnd::NoShow => Some(EventType::NoShow),
            TicketEnd::Cancelled => Some(EventType::Cancelled),
            TicketEnd::WalkedOut | TicketEnd::LeftAtClose => None,
        };
        let found = ends.get(&key).cloned().unwrap_or_default();
        match expected_event {
            Some(kind) => assert_eq!(found, [(kind, record.end_at.0)], "{record:?}"),
            None => assert!(found.is_empty(), "{record:?} ended unseen but has {found:?}"),
        }
        match issued_at.get(&key) {
            Some(at) => assert_eq!(*at, record.issued_at.0, "{record:?}"),
            // Issued while the kiosk was silent: seen only if transferred since.
            None => assert!(!record.seen || record.end != TicketEnd::WalkedOut, "{record:?}"),
        }
        assert_eq!(DateTime::parse_from_rfc3339(&record.at).unwrap().timestamp_millis(), record.end_at.0);
    }
    assert_eq!(keys.len(), truth.len());
    for end in TicketEnd::ALL {
        assert!(count_ends(&truth, end) > 0, "no {end:?}");
    }
    // The file's lines are the records, in the same order.
    let mut written = Vec::new();
    let options = week(3, Realism { busy_day_share: 0.5, ..Realism::default() });
    assert_eq!(write_truth(&options, &mut written).unwrap() as usize, truth.len());
    let lines: Vec<String> = String::from_utf8(written).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines, truth.iter().map(TicketTruth::to_json).collect::<Vec<_>>());
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["office"], "mpp-jakarta-pusat");
    assert!(first["seen"].is_boolean());
}

#[test]
fn the_same_options_give_the_same_events_and_truth() {
    let options = week(2, Realism::default());
    let first = run(&options);
    let again = run(&options);
    assert_eq!(first.truth, again.truth);
    assert_eq!(first.events.len(), again.events.len());
    let mut with_days_forever = options.clone();
    with_days_forever.days = 0;
    assert!(write_truth(&with_days_forever, Vec::new()).is_err());
}

#[test]
fn the_office_config_parses_and_names_each_office_its_zone_and_hours() {
    let options = SimOptions { offices: 13, ..SimOptions::new(Millis(0)) };
    let text = office_config_toml(&options);
    let config = crate::config::Config::parse(&text).unwrap_or_else(|problems| panic!("{problems:?}\n{text}"));
    assert_eq!(config.offices.len(), 13);
    let office = |id: &str| &config.offices[&crate::ids::OfficeId::parse(id).unwrap()];
    assert_eq!(office("mpp-jakarta-pusat").name.as_deref(), Some("MPP Jakarta Pusat"));
    assert_eq!(office("mpp-jakarta-pusat-2").name.as_deref(), Some("MPP Jakarta Pusat 2"));
    assert_eq!(office("rs-makassar").timezone, chrono_tz::Asia::Makassar);
    assert_eq!(office("rs-makassar").region.as_deref(), Some("wita"));
    assert_eq!(office("rs-jayapura").region.as_deref(), Some("wit"));
    for office in config.offices.values() {
        assert_eq!(office.hours, [(model::OPENING_MINUTE, model::CLOSING_MINUTE)]);
        assert_eq!(office.days, [true; 7]);
    }
}
