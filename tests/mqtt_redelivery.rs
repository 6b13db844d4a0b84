//! Redeliveries on a reconnection (issue 21, item 2): a backlog drained from
//! a persistent Mosquitto that is restarted gracefully while queuewatch keeps
//! running writes exactly what the same drain without restarts writes.
//!
//! At each restart the broker redelivers (DUP) what it had sent and not seen
//! acknowledged; queuewatch had taken those in and journaled them. Taken
//! again, hours old in event time, they would be late, reopen tickets closed
//! long ago (phantom `expired` points with hours of `waiting` rows), or count
//! as duplicates. They must be recognised as redeliveries: acknowledged,
//! counted (`queuewatch_mqtt_redeliveries_total`), never given to the tracker.
//!
//! Both runs drain the same backlog, the kill test's simulated busy day (with
//! duplicates, reordering and a tail that settles every point by event time),
//! queued in the daemon's session before it starts; the restarted run's broker
//! is restarted 3, 10 and 30 s after the daemon's start, each time while the
//! backlog is still draining (checked). Their points are compared measurement
//! by measurement, and their counts: the restarted run took exactly the clean
//! run's messages plus the redeliveries, with the same late, late_dropped and
//! duplicate counts otherwise.

mod common;
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "durability/mqtt.rs"]
mod mqtt;
#[allow(dead_code)]
#[path = "durability/points.rs"]
mod points;
#[allow(dead_code)]
#[path = "durability/scenario.rs"]
mod scenario;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto, MosquittoOptions};
use daemon::{Daemon, DEADLINE};
use mqtt::{Message, Publisher};
use points::{Row, MEASUREMENTS};
use scenario::Scenario;

const SEED: u64 = 20_261_207;
/// The backlog's size: enough for a debug build's drain to outlast the last
/// restart on two busy cores (the test checks that it did).
const OFFICES: u32 = 100;
const CLIENT_ID: &str = "queuewatch-redelivery";
/// When the broker is restarted, from the daemon's start.
const RESTARTS: [Duration; 3] = [Duration::from_secs(3), Duration::from_secs(10), Duration::from_secs(30)];
/// The shipped broker config's window of unacknowledged messages.
const BROKER_INFLIGHT: u32 = 1000;

/// What one drain left behind.
struct Outcome {
    points: BTreeMap<&'static str, Vec<Row>>,
    metrics: BTreeMap<String, f64>,
    logs: String,
    /// Queueing the backlog in the broker.
    queue_s: f64,
    /// From the daemon's start until it had taken the whole backlog.
    drain_s: f64,
    /// The daemon's connections to the broker, and why each earlier one ended.
    connections: usize,
    failures: Vec<String>,
}

impl Outcome {
    fn metric(&self, key: &str) -> f64 {
        self.metrics.get(key).copied().unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_the_broker_restarted_at_3_10_and_30_s_writes_what_a_drain_without_restarts_writes() {
    let started = Instant::now();
    let scenario = Scenario::build(OFFICES, SEED);
    let backlog: Arc<Vec<Message>> = Arc::new(scenario.day.iter().chain(&scenario.tail).cloned().collect());

    // Side by side, each with its own servers: the restarted drain then
    // lasts as long as the two share the machine, and the test half as long.
    let clean = tokio::spawn(drain(Arc::clone(&backlog), "clean", &[]));
    let restarted = tokio::spawn(drain(Arc::clone(&backlog), "restarted", &RESTARTS));
    let (clean, restarted) = (clean.await.unwrap(), restarted.await.unwrap());

    let redelivered = restarted.metric(REDELIVERED);
    let count = |outcome: &Outcome, key: &str| outcome.metric(key);
    let expired = |outcome: &Outcome| {
        outcome.points["ticket"].iter().filter(|row| row.tags_and_fields.contains("outcome=\"expired\"")).count()
    };
    println!(
        "{} messages ({} duplicates, {} swapped pairs) queued in {:.1} s and {:.1} s; clean drain {:.1} s, \
         restarted drain {:.1} s (broker restarted at {RESTARTS:?}); connections {} and {}; redeliveries recognised {} \
         and {redelivered}; accepted {} and {}; late {} and {}; late_dropped {} and {}; duplicates {} and {}; \
         expired tickets {} and {}; {:.1} s in all; the clean run's connections ended: {:?}",
        backlog.len(),
        scenario.duplicates,
        scenario.swaps,
        clean.queue_s,
        restarted.queue_s,
        clean.drain_s,
        restarted.drain_s,
        clean.connections,
        restarted.connections,
        count(&clean, REDELIVERED),
        count(&clean, "queuewatch_events_accepted_total"),
        count(&restarted, "queuewatch_events_accepted_total"),
        count(&clean, LATE),
        count(&restarted, LATE),
        count(&clean, LATE_DROPPED),
        count(&restarted, LATE_DROPPED),
        count(&clean, DUPLICATE),
        count(&restarted, DUPLICATE),
        expired(&clean),
        expired(&restarted),
        started.elapsed().as_secs_f64(),
        clean.failures,
    );

    let differences: Vec<String> = MEASUREMENTS
        .iter()
        .filter_map(|measurement| {
            points::difference(measurement, &clean.points[measurement], &restarted.points[measurement])
        })
        .collect();
    assert!(
        differences.is_empty(),
        "the restarted drain's points differ from the clean drain's (\"killed run\" below is the restarted one):\n{}\n\n\
         === clean ===\n{}\n=== restarted ===\n{}",
        differences.join("\n"),
        clean.logs,
        restarted.logs
    );
    assert!(redelivered > 0.0, "no redelivery after three restarts: the test proves nothing\n{}", restarted.logs);
    // The tracker saw the same events in both runs: the redeliveries never reached it. (The
    // clean run may reconnect too, on a machine so loaded that a keep-alive answer comes late.)
    let beyond_redeliveries = |outcome: &Outcome, key: &str| count(outcome, key) - count(outcome, REDELIVERED);
    for key in ["queuewatch_events_accepted_total", DUPLICATE] {
        assert_eq!(beyond_redeliveries(&restarted, key), beyond_redeliveries(&clean, key), "{key}");
    }
    for key in [LATE, LATE_DROPPED, "queuewatch_events_rejected_total{reason=\"unknown_type\"}"] {
        assert_eq!(count(&restarted, key), count(&clean, key), "{key}");
    }
    assert_eq!(expired(&restarted), expired(&clean), "phantom tickets");
}

const REDELIVERED: &str = "queuewatch_mqtt_redeliveries_total";
const LATE: &str = "queuewatch_event_remarks_total{remark=\"late\"}";
const LATE_DROPPED: &str = "queuewatch_event_outcomes_total{outcome=\"late_dropped\"}";
const DUPLICATE: &str = "queuewatch_event_outcomes_total{outcome=\"duplicate\"}";
/// The scenario's end marker, the last message, is its one rejection.
const END_TAKEN: &str = "queuewatch_events_rejected_total{reason=\"unknown_type\"}";

/// Queues `backlog` in a new persistent broker for the daemon's session,
/// starts the daemon, restarts the broker gracefully at each of `restarts`
/// from the daemon's start, and once the daemon has taken the end marker
/// stops it (SIGTERM) and reads what it wrote.
async fn drain(backlog: Arc<Vec<Message>>, name: &'static str, restarts: &'static [Duration]) -> Outcome {
    let mut mqtt = Mosquitto::start_persistent(&MosquittoOptions {
        max_inflight_messages: BROKER_INFLIGHT,
        ..MosquittoOptions::default()
    });
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config_text = common::daemon_config_text(&mqtt.url, CLIENT_ID, "", &influx.url, "")
        .replace("reorder_window = \"1s\"", "reorder_window = \"30s\"");
    let config = common::write_config(dir.path(), &config_text);
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let queueing = Instant::now();
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    publisher.publish_all(&backlog).await;
    publisher.wait_until_acknowledged().await;
    let queue_s = queueing.elapsed().as_secs_f64();

    let mut daemon = Daemon::start(&config, dir.path(), name);
    let started = Instant::now();
    let base = daemon.ops_url().await;
    for at in restarts {
        tokio::time::sleep_until((started + *at).into()).await;
        let metrics = common::scrape_metrics(&base).await;
        assert!(
            metrics.get(END_TAKEN).copied().unwrap_or(0.0) < 1.0,
            "{name}: the backlog was drained before the restart at {at:?}: make it larger\n{}",
            daemon.log_tails(20)
        );
        // It blocks this thread for the restart; the other drain goes on on the other.
        tokio::task::block_in_place(|| mqtt.restart_gracefully());
    }
    let deadline = Instant::now() + 3 * DEADLINE;
    let metrics = loop {
        let metrics = common::scrape_metrics(&base).await;
        if metrics.get(END_TAKEN).copied().unwrap_or(0.0) >= 1.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{name}: the backlog was not drained\n{}", daemon.log_tails(60));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drain_s = started.elapsed().as_secs_f64();
    let log = daemon.current_log();
    let connections = log.matches("Connected to the MQTT broker.").count();
    let failures = log
        .lines()
        .filter(|line| line.contains("MQTT connection failed"))
        .filter_map(|line| line.split_once("error=").map(|(_, error)| error.to_string()))
        .collect();
    daemon.terminate().await;
    let mut points = BTreeMap::new();
    for measurement in MEASUREMENTS {
        points.insert(measurement, points::rows(&influx, "qw", measurement).await);
    }
    Outcome { points, metrics, logs: daemon.log_tails(40), queue_s, drain_s, connections, failures }
}
