//! The live side against real servers: a replayed morning at one office
//! yields exactly the expected `breach`, `queue`, `office`, `counter` and
//! `feedback` points in a real InfluxDB 1.x; a live run over a real
//! Mosquitto raises a wait alert after deadline + window and resolves it
//! when the ticket is called; a rejected message is echoed to its office;
//! the daemon writes its own `queuewatch` row at start.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto, Subscriber};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

const EVENTS: &str = include_str!("data/live_scenario.ndjson");

const CONFIG: &str = r#"
[tracking]
snapshot_interval = "1m"
[sla]
idle_target = "5m"
[sla.services.ktp]
wait_target = "10m"
service_target = "15m"
[offices.mpp-sby]
name = "MPP Surabaya"
region = "jatim"
"#;

fn at(local: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&format!("2026-11-26T{local}+07:00")).unwrap().timestamp_millis()
}

/// Rows of `measurement` keyed by (millisecond time, a tag), without `office`/`region` columns.
async fn rows(influx: &Influx1, measurement: &str) -> Vec<Map<String, Value>> {
    influx.rows("qw", &format!("SELECT * FROM {measurement}")).await
}

fn row_at<'a>(rows: &'a [Map<String, Value>], time_ms: i64, tag: (&str, &str)) -> &'a Map<String, Value> {
    let found: Vec<&Map<String, Value>> = rows
        .iter()
        .filter(|row| row["time"].as_i64().map(|ns| ns.div_euclid(1_000_000)) == Some(time_ms))
        .filter(|row| row.get(tag.0).and_then(Value::as_str) == Some(tag.1))
        .collect();
    assert_eq!(found.len(), 1, "rows at {time_ms} with {tag:?}: {found:?}");
    found[0]
}

/// Asserts the non-null fields and tags of a row, exactly.
#[track_caller]
fn assert_row(row: &Map<String, Value>, expected: &[(&str, Value)]) {
    let actual: BTreeMap<&str, &Value> =
        row.iter().filter(|(key, value)| *key != "time" && !value.is_null()).map(|(k, v)| (k.as_str(), v)).collect();
    let expected: BTreeMap<&str, &Value> = expected.iter().map(|(k, v)| (*k, v)).collect();
    assert_eq!(actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_morning_writes_exactly_the_expected_live_points() {
    let influx = Influx1::start();
    common::replay_into(&influx, "qw", CONFIG, EVENTS).await;

    let region = ("region", Value::from("jatim"));
    let office = ("office", Value::from("mpp-sby"));

    // Breaches: two waits, one service, one idle counter; nothing else.
    let breaches = rows(&influx, "breach").await;
    assert_eq!(breaches.len(), 4, "{breaches:?}");
    assert_row(
        row_at(&breaches, at("08:10:30"), ("ticket", "A2")),
        &[
            office.clone(),
            region.clone(),
            ("kind", "wait".into()),
            ("service", "ktp".into()),
            ("ticket", "A2".into()),
            ("target_s", 600.into()),
        ],
    );
    assert_row(
        row_at(&breaches, at("08:20:00"), ("ticket", "B1")),
        &[
            office.clone(),
            region.clone(),
            ("kind", "wait".into()),
            ("service", "sim".into()),
            ("ticket", "B1".into()),
            ("target_s", 900.into()),
        ],
    );
    assert_row(
        row_at(&breaches, at("08:27:20"), ("ticket", "A2")),
        &[
            office.clone(),
            region.clone(),
            ("kind", "service".into()),
            ("service", "ktp".into()),
            ("counter", "c1".into()),
            ("ticket", "A2".into()),
            ("target_s", 900.into()),
        ],
    );
    assert_row(
        row_at(&breaches, at("08:05:00"), ("kind", "idle")),
        &[office.clone(), region.clone(), ("kind", "idle".into()), ("counter", "c2".into()), ("target_s", 300.into())],
    );

    // Counter sessions.
    let counters = rows(&influx, "counter").await;
    assert_eq!(counters.len(), 2);
    assert_row(
        row_at(&counters, at("08:45:00"), ("counter", "c1")),
        &[
            office.clone(),
            region.clone(),
            ("counter", "c1".into()),
            ("open_s", 3000.into()),
            ("busy_s", 1560.into()),
            ("served", 2.into()),
            ("staff", "rina".into()),
        ],
    );
    assert_row(
        row_at(&counters, at("08:45:00"), ("counter", "c2")),
        &[
            office.clone(),
            region.clone(),
            ("counter", "c2".into()),
            ("open_s", 3000.into()),
            ("busy_s", 540.into()),
            ("served", 1.into()),
            ("staff", "agus".into()),
        ],
    );

    // Satisfaction buttons.
    let feedback = rows(&influx, "feedback").await;
    assert_eq!(feedback.len(), 2);
    assert_row(
        row_at(&feedback, at("08:09:30"), ("counter", "c1")),
        &[
            office.clone(),
            region.clone(),
            ("counter", "c1".into()),
            ("service", "ktp".into()),
            ("rating", 5.into()),
            ("ticket", "A1".into()),
        ],
    );
    assert_row(
        row_at(&feedback, at("08:41:00"), ("counter", "c2")),
        &[office.clone(), region.clone(), ("counter", "c2".into()), ("rating", 2.into())],
    );

    // Queue gauges: a row when the state changes, counts arrive, or every
    // minute (gauge_keepalive) while someone waits; never a repeat otherwise.
    let queue = rows(&influx, "queue").await;
    let per_service = |service: &str| queue.iter().filter(|row| row["service"] == service).count();
    assert_eq!((per_service("ktp"), per_service("sim")), (14, 28));
    let gauge = |waiting: i64, in_service: i64, over: i64, issued: i64, called: i64, oldest: i64, service: &str| {
        vec![
            office.clone(),
            region.clone(),
            ("service", Value::from(service)),
            ("waiting", waiting.into()),
            ("in_service", in_service.into()),
            ("over_target", over.into()),
            ("issued", issued.into()),
            ("called", called.into()),
            ("oldest_wait_s", oldest.into()),
        ]
    };
    assert_row(row_at(&queue, at("08:00:00"), ("service", "ktp")), &gauge(1, 0, 0, 1, 0, 0, "ktp"));
    assert_row(row_at(&queue, at("08:01:00"), ("service", "ktp")), &gauge(1, 1, 0, 1, 1, 30, "ktp"));
    assert_row(row_at(&queue, at("08:05:00"), ("service", "sim")), &gauge(1, 0, 0, 1, 0, 0, "sim"));
    assert_row(row_at(&queue, at("08:10:00"), ("service", "ktp")), &gauge(1, 0, 0, 0, 0, 570, "ktp"));
    assert_row(row_at(&queue, at("08:11:00"), ("service", "ktp")), &gauge(1, 0, 1, 0, 0, 630, "ktp"));
    assert_row(row_at(&queue, at("08:12:00"), ("service", "ktp")), &gauge(0, 1, 0, 0, 1, 0, "ktp"));
    // The series' last rows show the emptied queues; nothing follows them.
    assert_row(row_at(&queue, at("08:30:00"), ("service", "ktp")), &gauge(0, 0, 0, 0, 0, 0, "ktp"));
    assert_row(row_at(&queue, at("08:40:00"), ("service", "sim")), &gauge(0, 0, 0, 0, 0, 0, "sim"));
    assert!(queue.iter().all(|row| row["time"].as_i64().unwrap() / 1_000_000 <= at("08:40:00")));

    // Office gauges, by the same rule.
    let offices = rows(&influx, "office").await;
    assert_eq!(offices.len(), 35);
    let office_row = row_at(&offices, at("08:10:00"), ("office", "mpp-sby"));
    let mut expected = vec![
        office.clone(),
        region.clone(),
        ("waiting", Value::from(2)),
        ("in_service", 0.into()),
        ("counters_open", 2.into()),
        ("clock_ahead", 0.into()),
        ("last_event_age_s", 30.into()),
        ("name", "MPP Surabaya".into()),
    ];
    expected.push(("accepted", office_row["accepted"].clone()));
    expected.push(("rejected", office_row["rejected"].clone()));
    assert_row(office_row, &expected);
    let total = |field: &str| offices.iter().map(|row| row[field].as_i64().unwrap()).sum::<i64>();
    // Every message counted once: the arrival counts ride on the next row written.
    assert_eq!((total("accepted"), total("rejected")), (18, 1), "every message counted once");
    assert!(offices.iter().all(|row| row.get("silent").is_none_or(Value::is_null)), "a replay never reports silence");
    let last = row_at(&offices, at("08:45:00"), ("office", "mpp-sby"));
    assert_eq!((last["waiting"].as_i64(), last["counters_open"].as_i64()), (Some(0), Some(0)));
}

/// The next alert or echo within `timeout` (the kiosk's own events on the same filter are skipped).
async fn next_alert_or_echo(subscriber: &mut Subscriber, timeout: Duration) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (topic, value) = subscriber.next_before(deadline).await.expect("a message in time");
        if !topic.ends_with("/events") {
            return (topic, value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_raises_a_wait_alert_resolves_it_on_call_and_echoes_rejections() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let config = queuewatch::config::Config::parse(&common::daemon_config_text(
        &mqtt.url,
        "live-daemon",
        "",
        &influx.url,
        "[sla.services.fast]\nwait_target = \"3s\"\n",
    ))
    .unwrap();
    common::create_session(&mqtt, "live-daemon", "queue/+/events").await;
    let mut watcher = Subscriber::start(mqtt.port, "alert-watcher", "queue/o1/+").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon_started = queuewatch::time::Millis::now();
    let daemon = tokio::spawn(queuewatch::daemon::run(config, async {
        let _ = stopped.await;
    }));

    // The daemon's own measurement: a row at start, before anything happened.
    // InfluxDB 1.x keeps each field of a point in a series of its own, so a
    // query racing the write may see some fields of the row and not yet the
    // others: wait until it shows them all.
    let whole_row_by = Instant::now() + Duration::from_secs(30);
    let own = loop {
        let own = influx.wait_for_rows("qw", "queuewatch", 1, Duration::from_secs(30)).await;
        let whole = ["accepted", "rejected", "points_written", "points_refused", "open_tickets", "uptime_s"]
            .iter()
            .all(|field| own[0].get(*field).is_some_and(|value| !value.is_null()));
        if whole || Instant::now() >= whole_row_by {
            break own;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let start_row = &own[0];
    let start_ms = start_row["time"].as_i64().unwrap().div_euclid(1_000_000);
    assert!(start_ms >= daemon_started.0 && start_ms <= queuewatch::time::Millis::now().0, "{start_row:?}");
    assert_row(
        start_row,
        &[
            ("instance", "live-daemon".into()),
            ("accepted", 0.into()),
            ("rejected", 0.into()),
            ("points_written", 0.into()),
            ("points_refused", 0.into()),
            ("points_dead_letter_dropped", 0.into()),
            ("open_tickets", 0.into()),
            ("uptime_s", 0.into()),
            ("mqtt_sessions_lost", 0.into()),
        ],
    );

    let mut options = MqttOptions::new("kiosk", "127.0.0.1", mqtt.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (kiosk, mut kiosk_loop) = AsyncClient::new(options, 64);
    let _kiosk_pump = tokio::spawn(async move { while kiosk_loop.poll().await.is_ok() {} });
    let now = queuewatch::time::Millis::now();
    let issued = format!(r#"{{"type":"issued","ts":{},"ticket":"F1","service":"fast"}}"#, now.0);
    kiosk.publish("queue/o1/events", QoS::AtLeastOnce, false, issued).await.unwrap();
    kiosk.publish("queue/o1/events", QoS::AtLeastOnce, false, r#"{"type":"warp","ts":1,"id":"fw-7"}"#).await.unwrap();

    // The rejection is echoed at once; the alert follows the deadline (3 s) + window (1 s).
    let started = Instant::now();
    let (topic, echo) = next_alert_or_echo(&mut watcher, Duration::from_secs(20)).await;
    assert_eq!(topic, "queue/o1/rejected");
    assert_eq!((echo["reason"].as_str(), echo["id"].as_str()), (Some("unknown_type"), Some("fw-7")));
    let (topic, firing) = next_alert_or_echo(&mut watcher, Duration::from_secs(30)).await;
    assert_eq!(topic, "queue/o1/alerts");
    assert_eq!(firing["state"], "firing");
    assert_eq!(firing["kind"], "wait");
    assert_eq!(firing["ticket"], "F1");
    assert_eq!(firing["service"], "fast");
    assert_eq!(firing["target_s"], 3.0);
    assert_eq!(firing["since"], queuewatch::time::Millis(now.0 + 3000).to_rfc3339());
    assert!(started.elapsed() >= Duration::from_secs(3), "not before the deadline plus the window");

    let called =
        format!(r#"{{"type":"called","ts":{},"ticket":"F1","counter":"c1"}}"#, queuewatch::time::Millis::now().0);
    kiosk.publish("queue/o1/events", QoS::AtLeastOnce, false, called).await.unwrap();
    let (_, resolved) = next_alert_or_echo(&mut watcher, Duration::from_secs(30)).await;
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["id"], firing["id"]);

    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stats.rejected_total(), 1);
    let breaches = influx.wait_for_rows("qw", "breach", 1, Duration::from_secs(10)).await;
    assert_eq!(breaches[0]["ticket"], "F1");
}
