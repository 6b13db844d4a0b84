//! The daemon against a real Mosquitto when input or the broker misbehave:
//! bad messages are rejected, counted and acknowledged without stalling what
//! follows, and a broker restart (which loses the session) is survived.

mod common;

use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto};
use queuewatch::config::Config;
use queuewatch::event::RejectReason;
use queuewatch::tracker::Note;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch};

fn config(mqtt: &Mosquitto, influx: &Influx1, extra_mqtt: &str) -> Config {
    Config::parse(&common::daemon_config_text(&mqtt.url, "robust", extra_mqtt, &influx.url, ""))
        .expect("valid test config")
}

/// Only a hang fails a wait: far beyond what any step needs, even on a busy machine.
const GENEROUS: Duration = Duration::from_secs(60);

struct Publisher {
    client: AsyncClient,
    /// How many publishes the broker has acknowledged (PUBACK).
    acknowledged: watch::Receiver<usize>,
    pump: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(mqtt: &Mosquitto) -> Publisher {
        let mut options = MqttOptions::new("robust-publisher", "127.0.0.1", mqtt.port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut event_loop) = AsyncClient::new(options, 256);
        let (acknowledged_sender, acknowledged) = watch::channel(0usize);
        let pump = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acknowledged_sender.send_modify(|count| *count += 1),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, acknowledged, pump }
    }

    async fn send(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }

    /// Waits until the broker has acknowledged `count` publishes in all:
    /// they are then in the broker, queued for every subscribed session.
    async fn wait_acknowledged(&mut self, count: usize) {
        let waited = tokio::time::timeout(GENEROUS, self.acknowledged.wait_for(|acknowledged| *acknowledged >= count));
        let all_acknowledged = matches!(waited.await, Ok(Ok(_)));
        assert!(all_acknowledged, "the broker acknowledged {} of {count} publishes", *self.acknowledged.borrow());
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Publishes a message the daemon rejects and waits for its echo on the
/// rejection topic: the daemon is then connected and subscribed. (The
/// session exists beforehand, so the probe waits for the daemon if need be.)
async fn wait_until_the_daemon_listens(mqtt: &Mosquitto, publisher: &Publisher) {
    let options = MqttOptions::new("robust-echo-watcher", "127.0.0.1", mqtt.port);
    let (watcher, mut event_loop) = AsyncClient::new(options, 16);
    watcher.subscribe("queue/+/rejected", QoS::AtLeastOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + GENEROUS;
    let mut probe_sent = false;
    loop {
        let polled = tokio::time::timeout_at(deadline, event_loop.poll()).await;
        match polled.expect("the daemon echoes the probe's rejection") {
            Ok(Event::Incoming(Packet::SubAck(_))) if !probe_sent => {
                publisher.send("queue/o1/events", r#"{"type":"probe","ts":1,"id":"probe"}"#).await;
                probe_sent = true;
            }
            Ok(Event::Incoming(Packet::Publish(echo))) if probe_sent => {
                assert_eq!(echo.topic, "queue/o1/rejected");
                return;
            }
            Ok(_) => {}
            Err(error) => panic!("echo watcher: {error}"),
        }
    }
}

fn ticket_events(office: &str, ticket: &str, base: &str) -> Vec<String> {
    vec![
        format!(r#"{{"type":"issued","ts":"{base}:00+07:00","ticket":"{ticket}","service":"ktp"}}"#),
        format!(r#"{{"type":"called","ts":"{base}:10+07:00","ticket":"{ticket}","counter":"c1","office":"{office}"}}"#),
        format!(r#"{{"type":"finished","ts":"{base}:20+07:00","ticket":"{ticket}","counter":"c1"}}"#),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_rejected_counted_and_do_not_stall_what_follows() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, "max_payload_bytes = 1024"), async {
        let _ = stopped.await;
    }));

    let publisher = Publisher::connect(&mqtt).await;
    let topic = "queue/o1/events";
    // Far above rumqttc's default packet limit (10 KiB) and ours (1 KiB).
    let oversized = format!(r#"{{"type":"heartbeat","ts":1,"pad":"{}"}}"#, "x".repeat(100 * 1024));
    publisher.send(topic, oversized).await;
    publisher.send(topic, "{not json").await;
    publisher.send(topic, "[1,2,3]").await;
    publisher.send(topic, r#"{"type":"heartbeat","ts":1,"office":"o2"}"#).await;
    publisher.send("queue/bad office/events", r#"{"type":"heartbeat","ts":1}"#).await;
    publisher.send(topic, r#"{"type":"issued","ts":"2999-01-01T00:00:00Z","ticket":"F","service":"ktp"}"#).await;
    publisher.send(topic, vec![0xff, 0xfe, b'{']).await;
    for event in ticket_events("o1", "A1", "2026-11-20T08:00") {
        publisher.send(topic, event).await;
    }
    // A later event moves the office clock past the reorder window.
    publisher.send(topic, r#"{"type":"heartbeat","ts":"2026-11-20T08:05:00+07:00"}"#).await;

    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!(rows[0]["ticket"], "A1");
    assert_eq!(rows[0]["wait_s"], 10);

    stop.send(()).unwrap();
    let report = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    let stats = report.stats;
    assert_eq!(stats.rejected(RejectReason::Oversized), 1);
    assert_eq!(stats.rejected(RejectReason::MalformedJson), 2);
    assert_eq!(stats.rejected(RejectReason::NotAnObject), 1);
    assert_eq!(stats.rejected(RejectReason::OfficeMismatch), 1);
    assert_eq!(stats.rejected(RejectReason::InvalidIdentifier), 1);
    assert_eq!(stats.rejected(RejectReason::FutureTimestamp), 1);
    assert_eq!(stats.accepted, 4);
    assert!(report.sink.points_written >= 1, "the ticket point and gauges");
    assert_eq!(report.sink.points_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_daemon_is_away_are_not_lost() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;

    // A first run uses the persistent session, and a SIGTERM-like stop ends
    // it; what is published afterwards waits in the broker.
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    let mut publisher = Publisher::connect(&mqtt).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    wait_until_the_daemon_listens(&mqtt, &publisher).await;
    stop.send(()).unwrap();
    let first_run = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    assert_eq!((first_run.stats.accepted, first_run.stats.rejected_total()), (0, 1), "the probe only");

    let mut away = ticket_events("o1", "B2", "2026-11-20T09:00");
    away.push(r#"{"type":"heartbeat","ts":"2026-11-20T09:05:00+07:00"}"#.to_string());
    for event in &away {
        publisher.send("queue/o1/events", event.clone()).await;
    }
    // The premise: every message is in the broker before the daemon returns
    // (the probe was acknowledged too).
    publisher.wait_acknowledged(1 + away.len()).await;

    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!(rows[0]["ticket"], "B2");
    stop.send(()).unwrap();
    let second_run = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(second_run.stats.accepted, away.len() as u64, "exactly what was published while it was away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reconnects_and_resubscribes_after_the_broker_restarts() {
    let mut mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    // The premise: the daemon was connected when the broker went away.
    let publisher = Publisher::connect(&mqtt).await;
    wait_until_the_daemon_listens(&mqtt, &publisher).await;

    // The broker keeps no state on disk here, so it comes back without the
    // session: the daemon must subscribe again by itself.
    mqtt.restart();
    let deadline = Instant::now() + GENEROUS;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ticket = format!("R{attempt}");
        for event in ticket_events("o1", &ticket, &format!("2026-11-20T10:{attempt:02}")) {
            publisher.send("queue/o1/events", event).await;
        }
        publisher
            .send("queue/o1/events", format!(r#"{{"type":"heartbeat","ts":"2026-11-20T10:{attempt:02}:50+07:00"}}"#))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows = influx.rows("qw", "SELECT * FROM ticket").await;
        if !rows.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no point after the broker restart:\n{}", mqtt.log());
    }
    stop.send(()).unwrap();
    let report = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stats.notes.get(Note::ClockSkew), 0);
    assert!(report.sink.points_written >= 1);
}

/// Issue 21, item 9: a topic that matches none of `mqtt.topics` (here a
/// filter the session holds that the config does not name) took its office
/// from the payload. It is rejected as `unexpected_topic` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_matching_no_configured_filter_is_rejected_and_its_payload_never_names_the_office() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    // A subscription made by hand (or by an older config) in the same session.
    common::create_session(&mqtt, "robust", "legacy/#").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    let publisher = Publisher::connect(&mqtt).await;
    wait_until_the_daemon_listens(&mqtt, &publisher).await;
    publisher
        .send(
            "legacy/feed",
            r#"{"type":"issued","ts":"2026-11-20T08:00:00+07:00","ticket":"L1","service":"ktp","office":"o2"}"#,
        )
        .await;
    for event in ticket_events("o1", "A1", "2026-11-20T08:00") {
        publisher.send("queue/o1/events", event).await;
    }
    publisher.send("queue/o1/events", r#"{"type":"heartbeat","ts":"2026-11-20T08:05:00+07:00"}"#).await;
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!(rows[0]["ticket"], "A1");
    stop.send(()).unwrap();
    let stats = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap().stats;
    assert_eq!(stats.accepted, 4, "A1's three events and the heartbeat, not L1");
    let unexpected_topic = RejectReason::ALL.into_iter().find(|reason| reason.as_str() == "unexpected_topic");
    assert_eq!(unexpected_topic.map(|reason| stats.rejected(reason)), Some(1), "{}", stats.summary());
    let offices = influx.rows("qw", "SELECT * FROM \"office\" WHERE \"office\" = 'o2'").await;
    assert!(offices.is_empty(), "{offices:?}");
}

/// Issue 21, item 9: an oversized payload (rejected on its length alone) was
/// journaled whole, up to the broker's 256 KiB each. Its record keeps only
/// `max_payload_bytes` + 1 bytes, which a recovery rejects the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_journaled_cut_to_the_payload_limit() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    // No snapshot during the test: it would remove the journal it measures.
    let mut config = config(&mqtt, &influx, "max_payload_bytes = 1024");
    config.storage.checkpoint_interval = Duration::from_secs(3600);
    let state = config.storage.data_dir.join("state");
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let publisher = Publisher::connect(&mqtt).await;
    let oversized = format!(r#"{{"type":"heartbeat","ts":1,"pad":"{}"}}"#, "x".repeat(200 * 1024));
    for _ in 0..3 {
        publisher.send("queue/o1/events", oversized.clone()).await;
    }
    for event in ticket_events("o1", "A1", "2026-11-20T08:00") {
        publisher.send("queue/o1/events", event).await;
    }
    publisher.send("queue/o1/events", r#"{"type":"heartbeat","ts":"2026-11-20T08:05:00+07:00"}"#).await;
    influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    stop.send(()).unwrap();
    let report = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stats.rejected(RejectReason::Oversized), 3);

    let journal_bytes: u64 = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("journal-"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    println!("{journal_bytes} bytes of journal for 3 payloads of 200 KiB and 5 events");
    assert!(journal_bytes < 16 * 1024, "{journal_bytes} bytes of journal for 3 payloads of 200 KiB");
    // A start on that state folder replays them as oversized again.
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    let recovered = tokio::time::timeout(GENEROUS, daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(recovered.stats.rejected(RejectReason::Oversized), 3, "{}", recovered.stats.summary());
}
