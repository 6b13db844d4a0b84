//! `queuewatch simulate`: the generator is deterministic, its events are valid
//! and have the model's shape, a simulated day goes through the tracker
//! cleanly, and publishing delivers exactly the generated sequence to a real
//! Mosquitto.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Timelike;
use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits, Event, EventType};
use queuewatch::ids::OfficeId;
use queuewatch::pipeline::Pipeline;
use queuewatch::simulate::{parse_start, publish, write_ndjson, Realism, SimEvent, SimOptions, Simulation};
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Note};

/// Far beyond any simulated timestamp, so `future_timestamp` never applies.
const FAR_FUTURE: Millis = Millis(32_503_680_000_000); // 3000-01-01

fn at(text: &str) -> Millis {
    parse_start(text).unwrap()
}

/// One office day from 06:00 WIB, before any office opens.
fn one_day(offices: u32, seed: u64) -> SimOptions {
    SimOptions { offices, seed, ..SimOptions::new(at("2026-11-27T06:00:00+07:00")) }
}

fn decode_event(event: &SimEvent) -> Event {
    let office = OfficeId::parse(&event.office).expect("office names are identifiers");
    decode(event.payload.as_bytes(), Some(&office), FAR_FUTURE, &DecodeLimits::default())
        .unwrap_or_else(|rejection| panic!("{} rejected: {rejection}", event.payload))
}

fn counts_by_type(events: &[SimEvent]) -> BTreeMap<EventType, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(event.kind).or_insert(0) += 1;
    }
    counts
}

#[test]
fn the_same_seed_gives_the_same_events_and_another_seed_does_not() {
    let first: Vec<SimEvent> = Simulation::new(&one_day(3, 7)).collect();
    let again: Vec<SimEvent> = Simulation::new(&one_day(3, 7)).collect();
    let other: Vec<SimEvent> = Simulation::new(&one_day(3, 8)).collect();
    assert!(first.len() > 1000, "{} events", first.len());
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn every_payload_decodes_and_each_office_stays_in_time_order() {
    let events: Vec<SimEvent> = Simulation::new(&one_day(4, 1)).collect();
    let mut last_by_office: HashMap<String, Millis> = HashMap::new();
    let mut last_overall = Millis(i64::MIN);
    for event in &events {
        let decoded = decode_event(event);
        assert_eq!(decoded.ts, event.at, "{}", event.payload);
        assert_eq!(decoded.kind, event.kind);
        assert_eq!(decoded.office.as_str(), event.office);
        assert_eq!(event.topic, format!("queue/{}/events", event.office));
        let last = last_by_office.entry(event.office.clone()).or_insert(Millis(i64::MIN));
        assert!(event.at >= *last, "{} goes back in time", event.payload);
        *last = event.at;
        assert!(event.at >= last_overall, "events come out in timestamp order across offices");
        last_overall = event.at;
    }
    assert_eq!(last_by_office.len(), 4);
    // The fourth office is in WITA.
    assert!(events.iter().any(|event| event.office == "rs-makassar" && event.payload.contains("+08:00")));
}

#[test]
fn a_simulated_day_has_every_event_type_and_a_morning_peak() {
    let events: Vec<SimEvent> = Simulation::new(&one_day(3, 1)).collect();
    let counts = counts_by_type(&events);
    eprintln!("{} events: {counts:?}", events.len());
    for kind in EventType::ALL {
        assert!(counts.get(&kind).copied().unwrap_or(0) > 0, "no {kind} in {counts:?}");
    }

    // Tickets issued per hour, local time (these three offices are all WIB).
    let wib = chrono::FixedOffset::east_opt(7 * 3600).unwrap();
    let issued_between = |from_h: f64, to_h: f64| {
        let issued = events
            .iter()
            .filter(|event| event.kind == EventType::Issued)
            .filter(|event| {
                let local = chrono::DateTime::from_timestamp_millis(event.at.0).unwrap().with_timezone(&wib);
                let hour = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
                (from_h..to_h).contains(&hour)
            })
            .count();
        issued as f64 / (to_h - from_h)
    };
    let peak = issued_between(8.5, 10.0);
    let lunch = issued_between(12.0, 13.0);
    let afternoon = issued_between(13.25, 14.25);
    eprintln!("issued per hour: morning peak {peak:.0}, lunch {lunch:.0}, afternoon {afternoon:.0}");
    assert!(peak > 1.5 * lunch, "peak {peak} vs lunch {lunch}");
    assert!(afternoon > lunch, "afternoon {afternoon} vs lunch {lunch}");

    // Rates of the ticket outcomes stay near the model's.
    let issued = counts[&EventType::Issued] as f64;
    let no_show = counts[&EventType::NoShow] as f64 / issued;
    let transferred = counts[&EventType::Transferred] as f64 / issued;
    let cancelled = counts[&EventType::Cancelled] as f64 / issued;
    let feedback = counts[&EventType::Feedback] as f64 / counts[&EventType::Finished] as f64;
    eprintln!("per ticket: no_show {no_show:.3}, transferred {transferred:.3}, cancelled {cancelled:.3}");
    eprintln!("feedback per finished ticket: {feedback:.2}");
    assert!((0.01..0.06).contains(&no_show), "{no_show}");
    assert!((0.005..0.05).contains(&transferred), "{transferred}");
    assert!(cancelled < 0.15, "{cancelled}");
    assert!((0.3..0.5).contains(&feedback), "{feedback}");
}

/// Feeds events through a pipeline as `replay` does (the office from the
/// payload, no wall time passing); returns it and the `ticket` points written.
fn through_the_pipeline(events: &[SimEvent]) -> (Pipeline, usize) {
    let mut pipeline = Pipeline::new(&Config::default(), Mode::Replay);
    let mut ticket_points = 0usize;
    let mut count_ticket_points = |pipeline: &mut Pipeline| {
        if let Some((lines, _)) = pipeline.take_lines() {
            ticket_points += lines.lines().filter(|line| line.starts_with("ticket,")).count();
        }
    };
    for event in events {
        pipeline.handle(Ok(None), event.payload.as_bytes(), Millis(0), FAR_FUTURE).expect("accepted");
        count_ticket_points(&mut pipeline);
    }
    pipeline.drain(Millis(0));
    count_ticket_points(&mut pipeline);
    (pipeline, ticket_points)
}

#[test]
fn a_tidy_simulated_day_through_the_pipeline_closes_every_ticket_cleanly() {
    // Tidy: every ticket issued is published and closed by an event.
    let options = SimOptions { realism: Realism::tidy(), ..one_day(3, 1) };
    let events: Vec<SimEvent> = Simulation::new(&options).collect();
    let counts = counts_by_type(&events);
    let (pipeline, ticket_points) = through_the_pipeline(&events);

    let stats = pipeline.stats();
    assert_eq!(stats.rejected_total(), 0, "{}", stats.summary());
    for note in [Note::OrphanClose, Note::AfterClose, Note::ClockSkew, Note::Duplicate, Note::Late] {
        assert_eq!(stats.notes.get(note), 0, "{note:?}: {}", stats.summary());
    }
    assert_eq!(pipeline.tracker().open_segments(), 0, "every ticket is closed by the end of the day");
    // One point per segment: each issue opens one, each transfer another.
    assert_eq!(ticket_points, counts[&EventType::Issued] + counts[&EventType::Transferred]);
}

#[test]
fn a_realistic_day_through_the_pipeline_leaves_waiting_exactly_the_seen_tickets_that_left_unseen() {
    // A busy day everywhere, and silent kiosk hours likely on it.
    let realism = Realism { busy_day_share: 1.0, kiosk_outages_per_week: 7, ..Realism::default() };
    let options = SimOptions { realism, ..one_day(3, 1) };
    let mut simulation = Simulation::recording_truth(&options);
    let events: Vec<SimEvent> = simulation.by_ref().collect();
    let truth = simulation.truth();
    let (pipeline, _) = through_the_pipeline(&events);

    let stats = pipeline.stats();
    assert_eq!(stats.rejected_total(), 0, "{}", stats.summary());
    let left_unseen = truth.iter().filter(|record| record.seen && record.end.is_silent()).count();
    let never_seen = truth.iter().filter(|record| !record.seen).count();
    eprintln!("{} tickets: {left_unseen} seen ones left unseen, {never_seen} never seen", truth.len());
    assert!(left_unseen > 0 && never_seen > 0);
    // What a tracker closing each day's waiting segments would call abandoned.
    assert_eq!(pipeline.tracker().open_segments(), left_unseen, "{}", stats.summary());
}

#[test]
fn ndjson_lines_are_the_payloads_and_name_their_office() {
    let options = one_day(2, 3);
    let mut written = Vec::new();
    let count = write_ndjson(&options, &mut written).unwrap();
    let text = String::from_utf8(written).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let events: Vec<SimEvent> = Simulation::new(&options).collect();
    assert_eq!(count as usize, events.len());
    assert_eq!(lines, events.iter().map(|event| event.payload.as_str()).collect::<Vec<_>>());
    for line in lines.iter().step_by(97) {
        let event = decode(line.as_bytes(), None, FAR_FUTURE, &DecodeLimits::default()).expect("names its office");
        assert!(event.office.as_str() == "mpp-jakarta-pusat" || event.office.as_str() == "samsat-bandung");
    }
}

/// The last half hour of issuing at two offices: a couple of hundred events.
fn short_run(url: &str) -> SimOptions {
    SimOptions {
        url: url.to_string(),
        offices: 2,
        counters: 3,
        seed: 11,
        ..SimOptions::new(at("2026-11-27T14:40:00+07:00"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_arrive_over_mqtt_exactly_as_generated() {
    use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet};

    let mqtt = common::Mosquitto::start();
    let subscriber_id = "simulate-test-subscriber";
    common::create_session(&mqtt, subscriber_id, "queue/+/events").await;

    let rate = 5000.0;
    let options =
        SimOptions { rate: Some(rate), client_id: Some("simulate-test-publisher".into()), ..short_run(&mqtt.url) };
    let expected: Vec<(String, String)> = Simulation::new(&options).map(|event| (event.topic, event.payload)).collect();
    assert!((100..400).contains(&expected.len()), "{} events", expected.len());

    let report = publish(&options, std::future::pending()).await.expect("published");
    assert_eq!(report.events_published, expected.len() as u64);
    assert_eq!(report.events_acknowledged, expected.len() as u64);
    assert!(!report.interrupted);
    let paced = Duration::from_secs_f64((expected.len() - 1) as f64 / rate);
    assert!(report.elapsed >= paced, "{:?} < {paced:?}", report.elapsed);

    let mut subscriber_options = MqttOptions::new(subscriber_id, "127.0.0.1", mqtt.port);
    subscriber_options.set_clean_session(false);
    let (_subscriber, mut event_loop) = AsyncClient::new(subscriber_options, 64);
    let mut received = Vec::new();
    // Only a hang fails this: the deadline is far beyond what delivery needs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < expected.len() {
        assert!(Instant::now() < deadline, "received {} of {} events", received.len(), expected.len());
        match tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(publish)))) => {
                received.push((publish.topic.clone(), String::from_utf8(publish.payload.to_vec()).unwrap()));
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => panic!("subscriber: {error}"),
        }
    }
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_paces_events_by_their_timestamps() {
    let mqtt = common::Mosquitto::start();
    let speed = 3600.0; // an hour a second
    let options = SimOptions { speed, ..short_run(&mqtt.url) };
    let events: Vec<SimEvent> = Simulation::new(&options).collect();
    let span_ms = events.last().unwrap().at.since(options.start);
    let paced = Duration::from_secs_f64(span_ms as f64 / 1000.0 / speed);

    let report = publish(&options, std::future::pending()).await.expect("published");
    assert_eq!(report.events_published, events.len() as u64);
    assert!(report.complete());
    assert_eq!(report.simulated_until, Some(events.last().unwrap().at));
    // Pacing is a lower bound: never faster than the timestamps allow. How
    // much slower a loaded machine makes it is not the simulator's behaviour.
    assert!(report.elapsed >= paced, "{:?} < {paced:?}", report.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_publishing_and_waits_for_what_was_sent() {
    let mqtt = common::Mosquitto::start();
    // Real time from a mid-day start: the counters open at once, then
    // nothing happens for at least ten seconds.
    let options = SimOptions { speed: 1.0, ..short_run(&mqtt.url) };
    let opening_burst = Simulation::new(&options).take_while(|event| event.at == options.start).count();
    let mut received = count_received(&mqtt, "simulate-burst-watcher", "queue/+/events").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        publish(&options, async move {
            let _ = stopped.await;
        })
        .await
    });
    // Shutdown is asked for once the opening burst has gone through the
    // broker, long before the next event is due.
    tokio::time::timeout(Duration::from_secs(60), received.wait_for(|count| *count >= opening_burst))
        .await
        .expect("the opening burst arrives")
        .unwrap();
    stop.send(()).unwrap();
    // Unstopped, the run would go on for simulated hours in real time: only a hang fails this.
    let report = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publishing ends once shutdown is asked for")
        .unwrap()
        .expect("published");
    assert!(report.interrupted);
    assert_eq!(report.events_published, opening_burst as u64);
    assert!(report.complete());
}

/// Counts the messages the broker delivers on `filter`, from a persistent
/// session that is subscribed before this returns.
async fn count_received(
    mqtt: &common::Mosquitto,
    client_id: &str,
    filter: &str,
) -> tokio::sync::watch::Receiver<usize> {
    use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet};

    common::create_session(mqtt, client_id, filter).await;
    let mut options = MqttOptions::new(client_id, "127.0.0.1", mqtt.port);
    options.set_clean_session(false);
    let (client, mut event_loop) = AsyncClient::new(options, 64);
    let (count, received) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match event_loop.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(_))) => count.send_modify(|count| *count += 1),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if count.is_closed() {
                return;
            }
        }
    });
    received
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error() {
    let url = format!("mqtt://127.0.0.1:{}", common::free_port());
    let options = SimOptions { url: url.clone(), ..one_day(1, 1) };
    let error = publish(&options, std::future::pending()).await.expect_err("nothing listens there");
    assert!(error.to_string().contains(&url), "{error:#}");
}
