//! Proves the test harness in `common` against the real servers: each server
//! starts on its own port, takes data the way queuewatch sends it, and gives
//! it back the way the other integration tests read it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Influx1, Mosquitto, VictoriaMetrics};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PACKET_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_qos1_message_published_to_mosquitto_reaches_a_subscriber() {
    let broker = Mosquitto::start();
    assert_eq!(broker.url, format!("mqtt://127.0.0.1:{}", broker.port));
    let mut subscriber = TestClient::connect(&broker, "smoke-sub", Session::Clean);
    subscriber.expect_connack().await;
    subscriber.client.subscribe("qw/o1/events", QoS::AtLeastOnce).await.unwrap();
    let granted = subscriber.expect_suback().await;
    assert_eq!(granted, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    let mut publisher = TestClient::connect(&broker, "smoke-pub", Session::Clean);
    publisher.expect_connack().await;
    let payload = br#"{"type":"heartbeat","ts":1796173200123}"#;
    publisher.client.publish("qw/o1/events", QoS::AtLeastOnce, false, payload.to_vec()).await.unwrap();
    publisher.next_matching("PubAck", |packet| matches!(packet, Packet::PubAck(_))).await;

    let message = subscriber.expect_publish().await;
    assert_eq!(message.topic, "qw/o1/events");
    assert_eq!(message.qos, QoS::AtLeastOnce);
    assert_eq!(&message.payload[..], &payload[..]);
}

#[tokio::test]
async fn a_persistent_session_keeps_more_than_the_default_1000_queued_messages() {
    const MESSAGES: usize = 1500;
    let broker = Mosquitto::start();
    let mut subscriber = TestClient::connect(&broker, "smoke-queue", Session::Persistent);
    subscriber.expect_connack().await;
    subscriber.client.subscribe("qw/o1/events", QoS::AtLeastOnce).await.unwrap();
    subscriber.expect_suback().await;
    subscriber.client.disconnect().await.unwrap();
    subscriber.finish().await;

    let mut publisher = TestClient::connect(&broker, "smoke-queue-pub", Session::Clean);
    publisher.expect_connack().await;
    let client = publisher.client.clone();
    // Publishing waits while the request channel is full, so it runs beside
    // the loop that drains it.
    let publishing = tokio::spawn(async move {
        for index in 0..MESSAGES {
            client.publish("qw/o1/events", QoS::AtLeastOnce, false, index.to_string()).await.unwrap();
        }
    });
    for _ in 0..MESSAGES {
        publisher.next_matching("PubAck", |packet| matches!(packet, Packet::PubAck(_))).await;
    }
    publishing.await.unwrap();

    let mut subscriber = TestClient::connect(&broker, "smoke-queue", Session::Persistent);
    let session_present = subscriber.expect_connack().await;
    assert!(session_present, "the broker should have kept the session");
    let mut received = BTreeSet::new();
    while received.len() < MESSAGES {
        let message = subscriber.expect_publish().await;
        let index: usize = std::str::from_utf8(&message.payload).unwrap().parse().unwrap();
        received.insert(index);
    }
    assert_eq!(received, (0..MESSAGES).collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn a_restarted_broker_takes_connections_on_the_same_port_again() {
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let mut client = TestClient::connect(&broker, "smoke-restart", Session::Clean);
    client.expect_connack().await;

    broker.stop();
    let error = client.next_error().await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing should listen on {port}");

    broker.restart();
    assert_eq!(broker.port, port);
    // The client's loop keeps polling, which is how rumqttc reconnects.
    client.expect_connack().await;
    client.client.subscribe("qw/o1/events", QoS::AtLeastOnce).await.unwrap();
    client.expect_suback().await;
    client.client.publish("qw/o1/events", QoS::AtLeastOnce, false, b"after restart".to_vec()).await.unwrap();
    let message = client.expect_publish().await;
    assert_eq!(&message.payload[..], b"after restart", "after the error {error}");
}

#[tokio::test]
async fn influxdb_returns_a_written_point_with_its_tags_fields_and_nanosecond_time() {
    let influx = Influx1::start();
    assert_eq!(influx.url, format!("http://127.0.0.1:{}", influx.port));
    influx.create_database("queuewatch").await;
    let line = "queue_segment,office=o1,service=ktp wait_s=12.5,ticket=\"A-001\" 1796173200123";
    influx.write("queuewatch", "ms", line).await;

    let rows = influx.rows("queuewatch", "SELECT * FROM queue_segment").await;
    assert_eq!(
        rows,
        vec![json!({
            "time": 1_796_173_200_123_000_000_i64,
            "office": "o1",
            "service": "ktp",
            "ticket": "A-001",
            "wait_s": 12.5,
        })
        .as_object()
        .unwrap()
        .clone()]
    );

    let grouped = influx.rows("queuewatch", "SELECT wait_s FROM queue_segment GROUP BY *").await;
    assert_eq!(grouped.len(), 1);
    assert_eq!(grouped[0]["office"], "o1", "series tags are merged into rows: {grouped:?}");
    assert_eq!(grouped[0]["service"], "ktp");
    assert_eq!(grouped[0]["wait_s"], 12.5);

    let missing = influx.query("queuewatch", "SELECT * FROM nowhere").await;
    assert_eq!(missing, json!({"results": [{"statement_id": 0}]}));
}

#[test]
fn two_influxdb_servers_start_at_once_without_colliding() {
    let starting: Vec<_> = (0..2).map(|_| std::thread::spawn(Influx1::start)).collect();
    let servers: Vec<Influx1> = starting.into_iter().map(|thread| thread.join().unwrap()).collect();
    assert_ne!(servers[0].port, servers[1].port);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        for (index, influx) in servers.iter().enumerate() {
            influx.create_database("queuewatch").await;
            influx.write("queuewatch", "ms", &format!("probe,server={index} value={index}i 1000")).await;
        }
        for (index, influx) in servers.iter().enumerate() {
            let rows = influx.wait_for_rows("queuewatch", "probe", 1, Duration::from_secs(5)).await;
            assert_eq!(rows.len(), 1, "each server holds only its own point: {rows:?}");
            assert_eq!(rows[0]["server"], index.to_string());
            assert_eq!(rows[0]["value"], index);
            assert_eq!(rows[0]["time"], 1_000_000_000_i64);
        }
    });
}

#[tokio::test]
async fn victoria_metrics_exports_each_field_of_a_line_written_to_api_v2_write_as_a_series() {
    let victoria = VictoriaMetrics::start();
    assert_eq!(victoria.url, format!("http://127.0.0.1:{}", victoria.port));
    // Recent on purpose: VictoriaMetrics drops samples outside its retention
    // or more than about two days ahead.
    let ts_ms = now_ms() - 3_600_000;
    let line = format!("queue_segment,office=o1,service=ktp wait_s=12.5,ticket=\"A-001\" {ts_ms}");
    let response = http()
        .post(format!("{}/api/v2/write", victoria.url))
        .query(&[("org", "queuewatch"), ("bucket", "queuewatch"), ("precision", "ms")])
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap_or_default());

    let series = victoria.export(r#"{__name__=~"queue_segment_.*"}"#).await;
    // Each field becomes a series `{measurement}_{field}`; `org` and `bucket`
    // add no label. VictoriaMetrics 1.79 keeps a string field as a series of
    // zeros (and booleans as 1/0) rather than dropping it.
    assert_eq!(
        series,
        vec![
            json!({
                "metric": {"__name__": "queue_segment_ticket", "office": "o1", "service": "ktp"},
                "values": [0],
                "timestamps": [ts_ms],
            }),
            json!({
                "metric": {"__name__": "queue_segment_wait_s", "office": "o1", "service": "ktp"},
                "values": [12.5],
                "timestamps": [ts_ms],
            }),
        ]
    );
    let waited = victoria.wait_for_samples(r#"{__name__="queue_segment_wait_s"}"#, 1, Duration::from_secs(5)).await;
    assert_eq!(waited, series[1..]);
}

/// Whether a test client asks the broker to keep its session.
#[derive(Clone, Copy)]
enum Session {
    Clean,
    Persistent,
}

/// An MQTT client whose event loop runs in a task that forwards every
/// incoming packet and every connection error, and keeps polling after an
/// error (which is how rumqttc reconnects) until it has sent a DISCONNECT.
struct TestClient {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Result<Packet, String>>,
    event_loop: JoinHandle<()>,
}

impl TestClient {
    fn connect(broker: &Mosquitto, client_id: &str, session: Session) -> TestClient {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(matches!(session, Session::Clean));
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        let (sender, incoming) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                let forwarded = match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => sender.send(Ok(packet)),
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        // Asked to disconnect: stop here rather than reconnect.
                        let _ = sender.send(Err("disconnected on request".into()));
                        break;
                    }
                    Ok(Event::Outgoing(_)) => Ok(()),
                    Err(error) => {
                        let forwarded = sender.send(Err(error.to_string()));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        forwarded
                    }
                };
                if forwarded.is_err() {
                    break;
                }
            }
        });
        TestClient { client, incoming, event_loop }
    }

    /// Skips packets until one matches; panics on a connection error or after
    /// `PACKET_TIMEOUT`.
    async fn next_matching(&mut self, what: &str, wanted: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = tokio::time::Instant::now() + PACKET_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Ok(packet))) if wanted(&packet) => return packet,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => panic!("connection error while waiting for {what}: {error}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {PACKET_TIMEOUT:?}"),
            }
        }
    }

    /// Skips packets until the connection fails and returns the error.
    async fn next_error(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + PACKET_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(error))) => return error,
                Ok(None) => panic!("event loop ended while waiting for an error"),
                Err(_) => panic!("no connection error within {PACKET_TIMEOUT:?}"),
            }
        }
    }

    /// Returns whether the broker had a session for this client. Connection
    /// errors before the ConnAck (a broker still restarting) are skipped.
    async fn expect_connack(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + PACKET_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Ok(Packet::ConnAck(connack)))) => {
                    assert_eq!(connack.code, ConnectReturnCode::Success);
                    return connack.session_present;
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("event loop ended while waiting for ConnAck"),
                Err(_) => panic!("no ConnAck within {PACKET_TIMEOUT:?}"),
            }
        }
    }

    async fn expect_suback(&mut self) -> Vec<SubscribeReasonCode> {
        match self.next_matching("SubAck", |packet| matches!(packet, Packet::SubAck(_))).await {
            Packet::SubAck(suback) => suback.return_codes,
            _ => unreachable!("next_matching returned another packet"),
        }
    }

    async fn expect_publish(&mut self) -> rumqttc::Publish {
        match self.next_matching("Publish", |packet| matches!(packet, Packet::Publish(_))).await {
            Packet::Publish(publish) => publish,
            _ => unreachable!("next_matching returned another packet"),
        }
    }

    /// Waits until the event loop has sent a requested DISCONNECT and ended.
    async fn finish(mut self) {
        let error = self.next_error().await;
        assert_eq!(error, "disconnected on request");
        (&mut self.event_loop).await.unwrap();
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    since_epoch.as_millis() as i64
}
