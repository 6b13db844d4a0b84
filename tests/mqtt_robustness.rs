//! The daemon against a real Mosquitto when input or the broker misbehave:
//! bad messages are rejected, counted and acknowledged without stalling what
//! follows, and a broker restart (which loses the session) is survived.

mod common;

use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto};
use queuewatch::config::Config;
use queuewatch::event::RejectReason;
use queuewatch::tracker::Note;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::oneshot;

fn config(mqtt: &Mosquitto, influx: &Influx1, extra_mqtt: &str) -> Config {
    Config::parse(&format!(
        r#"
[mqtt]
url = "{}"
client_id = "robust"
{extra_mqtt}
[influxdb]
api = "v1"
url = "{}"
database = "qw"
flush_interval = "100ms"
[tracking]
reorder_window = "1s"
"#,
        mqtt.url, influx.url
    ))
    .expect("valid test config")
}

struct Publisher {
    client: AsyncClient,
    pump: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(mqtt: &Mosquitto) -> Publisher {
        let mut options = MqttOptions::new("robust-publisher", "127.0.0.1", mqtt.port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut event_loop) = AsyncClient::new(options, 256);
        let pump = tokio::spawn(async move {
            loop {
                if event_loop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Publisher { client, pump }
    }

    async fn send(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.pump.abort();
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

    let rows = influx.wait_for_rows("qw", "ticket", 1, Duration::from_secs(30)).await;
    assert_eq!(rows[0]["ticket"], "A1");
    assert_eq!(rows[0]["wait_s"], 10);

    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), daemon).await.unwrap().unwrap().unwrap();
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

    // A first run creates the persistent session, and a SIGTERM-like stop
    // ends it; what is published afterwards waits in the broker.
    common::create_session(&mqtt, "robust", "queue/+/events").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), daemon).await.unwrap().unwrap().unwrap();

    let publisher = Publisher::connect(&mqtt).await;
    for event in ticket_events("o1", "B2", "2026-11-20T09:00") {
        publisher.send("queue/o1/events", event).await;
    }
    publisher.send("queue/o1/events", r#"{"type":"heartbeat","ts":"2026-11-20T09:05:00+07:00"}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(queuewatch::daemon::run(config(&mqtt, &influx, ""), async {
        let _ = stopped.await;
    }));
    let rows = influx.wait_for_rows("qw", "ticket", 1, Duration::from_secs(30)).await;
    assert_eq!(rows[0]["ticket"], "B2");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), daemon).await.unwrap().unwrap().unwrap();
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The broker keeps no state on disk here, so it comes back without the
    // session: the daemon must subscribe again by itself.
    mqtt.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let publisher = Publisher::connect(&mqtt).await;
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
    let report = tokio::time::timeout(Duration::from_secs(30), daemon).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stats.notes.get(Note::ClockSkew), 0);
    assert!(report.sink.points_written >= 1);
}
