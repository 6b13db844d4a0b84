//! The operations endpoint and the shutdown budget against real servers:
//! the daemon's binary with a real Mosquitto and a real InfluxDB 1.x.
//!
//! - `/metrics` parses as Prometheus text and its counts equal the summary
//!   of `queuewatch replay` over the same events, published live.
//! - `/healthz` answers 200; `/readyz` 200 while connected, 503 with the
//!   reason once the broker is stopped, 200 again once it is back.
//! - SIGTERM while a day is being published exits 0 within
//!   `shutdown_timeout`, and the next start delivers the rest: the final
//!   points equal a clean replay's, point for point. So does SIGTERM while
//!   InfluxDB is stalled (stopped with SIGSTOP).

mod common;
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;
#[cfg_attr(not(feature = "simulate"), allow(dead_code))]
#[path = "durability/mqtt.rs"]
mod mqtt;
// Shared with the durability and spool tests, which use other parts of it.
#[allow(dead_code)]
#[path = "durability/points.rs"]
mod points;
#[cfg(feature = "simulate")]
#[path = "durability/scenario.rs"]
mod scenario;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto, MosquittoOptions};
use daemon::{Daemon, DEADLINE};
use mqtt::{Message, Publisher};

/// The scenario file published live and replayed: duplicates, reordering,
/// malformed and invalid messages.
const SCENARIO: &str = include_str!("data/scenario.ndjson");

/// A heartbeat per office of the scenario, 14 hours after its last event
/// (past `tracking.max_ticket_age`): every point of the day is then decided
/// by event time, and the office clocks, which a live run lets follow the
/// wall clock, cross no further gauge interval with anything to report.
const SETTLE: &str = r#"{"office": "mpp-jkt", "type": "heartbeat", "ts": "2026-11-26T22:30:00+07:00", "id": "settle-1"}
{"office": "rs-mks", "type": "heartbeat", "ts": "2026-11-26T22:30:00+07:00", "id": "settle-2"}
{"office": "samsat-bdg", "type": "heartbeat", "ts": "2026-11-26T22:30:00+07:00", "id": "settle-3"}
"#;

/// One scrape: each sample's value by its name and labels
/// (`name{key="value",…}`, labels sorted).
type Samples = BTreeMap<String, f64>;

/// Scrapes `/metrics` and parses it with a Prometheus text parser; fails
/// unless every sample line parses.
async fn scrape(base: &str) -> Samples {
    common::scrape_metrics(base).await
}

/// The counts of a `queuewatch replay` summary as the metrics name them.
fn expected_from_replay_summary(summary: &str) -> Samples {
    let mut expected = Samples::new();
    let number = |text: &str| text.trim().parse::<f64>().unwrap_or_else(|_| panic!("a count in {text:?}"));
    let mut section = "";
    for line in summary.lines() {
        let Some((name, value)) = line.rsplit_once(':') else { continue };
        // Four spaces: the ticket points by outcome, under `ticket`, which no metric splits.
        if name.starts_with("    ") {
            continue;
        }
        let indented = name.starts_with("  ");
        let name = name.trim();
        match (indented, name) {
            (false, "events accepted") => {
                section = "outcomes";
                expected.insert("queuewatch_events_accepted_total".into(), number(value));
            }
            (false, "events rejected") => section = "rejected",
            (false, "points produced") => section = "points",
            (false, _) => section = "",
            (true, name) => match section {
                "outcomes"
                    if ["applied", "duplicate", "after_close", "orphan_close", "late_dropped"].contains(&name) =>
                {
                    expected.insert(format!("queuewatch_event_outcomes_total{{outcome=\"{name}\"}}"), number(value));
                }
                "outcomes" => {
                    expected.insert(format!("queuewatch_event_remarks_total{{remark=\"{name}\"}}"), number(value));
                }
                "rejected" => {
                    let reason = name.strip_prefix("rejected ").expect("rejected <reason>");
                    expected.insert(format!("queuewatch_events_rejected_total{{reason=\"{reason}\"}}"), number(value));
                }
                "points" => {
                    expected
                        .insert(format!("queuewatch_points_produced_total{{measurement=\"{name}\"}}"), number(value));
                }
                _ => {}
            },
        }
    }
    expected
}

/// The metrics that differ from `expected` (a count the summary leaves out is zero there).
fn disagreements(expected: &Samples, scraped: &Samples) -> Vec<String> {
    let families = [
        "queuewatch_events_accepted_total",
        "queuewatch_event_outcomes_total{",
        "queuewatch_event_remarks_total{",
        "queuewatch_events_rejected_total{",
        "queuewatch_points_produced_total{",
    ];
    let mut keys: Vec<&String> = expected.keys().collect();
    keys.extend(scraped.keys().filter(|key| families.iter().any(|family| key.starts_with(family))));
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (want, got) = (expected.get(key).copied().unwrap_or(0.0), scraped.get(key).copied().unwrap_or(0.0));
            (want != got).then(|| format!("{key}: replay {want}, live {got}"))
        })
        .collect()
}

fn replay_summary(config: &std::path::Path, events: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let events_path = dir.path().join("events.ndjson");
    std::fs::write(&events_path, events).unwrap();
    let output = std::process::Command::new(common::queuewatch_bin())
        .args(["replay", "--config"])
        .arg(config)
        .arg("--out")
        .arg(dir.path().join("points.lp"))
        .arg(&events_path)
        .output()
        .expect("queuewatch replay runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `condition` every 50 ms until it returns `Ok`, or fails with its
/// last `Err` and `context` after `DEADLINE`.
async fn poll<T, F, Fut>(what: &str, mut condition: F, context: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what} not within {DEADLINE:?}: {last}\n{}", context()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_live_run_agree_with_the_replay_summary_of_the_same_events() {
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    // One topic without `+`: the payload names the office, as in a replay.
    let config_text =
        common::daemon_config_text(&mqtt.url, "ops-metrics", "topics = [\"queue/all/events\"]", &influx.url, "");
    let config = common::write_config(dir.path(), &config_text);
    common::create_session(&mqtt, "ops-metrics", "queue/all/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;
    let base = daemon.ops_url().await;

    let events = format!("{SCENARIO}{SETTLE}");
    let expected = expected_from_replay_summary(&replay_summary(&config, &events));
    assert!(expected.len() >= 8, "{expected:#?}");
    assert!(expected.keys().any(|key| key.contains("rejected")), "the scenario has rejections: {expected:#?}");

    let kiosk = Publisher::connect(mqtt.port, "kiosk");
    let messages: Vec<Message> =
        events.lines().map(|line| Message { topic: "queue/all/events".into(), payload: line.to_string() }).collect();
    kiosk.publish_all(&messages).await;
    kiosk.wait_until_acknowledged().await;

    // Events are released once the office clocks (wall time) pass the
    // reorder window; the loop publishes its counts every second.
    let scraped = poll(
        "the metrics agreeing with the replay",
        || {
            let (base, expected) = (base.clone(), expected.clone());
            async move {
                let scraped = scrape(&base).await;
                let differences = disagreements(&expected, &scraped);
                if differences.is_empty() {
                    Ok(scraped)
                } else {
                    Err(differences.join("\n"))
                }
            }
        },
        || daemon.log_tails(40),
    )
    .await;
    let received = scraped["queuewatch_events_received_total"];
    let rejected: f64 =
        scraped.iter().filter(|(key, _)| key.starts_with("queuewatch_events_rejected_total{")).map(|(_, v)| v).sum();
    assert_eq!(received, scraped["queuewatch_events_accepted_total"] + rejected);
    assert_eq!(received, events.lines().count() as f64, "every line published was received");
    assert_eq!(scraped["queuewatch_mqtt_connected"], 1.0);
    assert!(scraped.contains_key("queuewatch_newest_event_age_seconds"), "{scraped:#?}");
    assert!(scraped.contains_key("queuewatch_journal_bytes"), "{scraped:#?}");
    assert!(scraped["queuewatch_journal_bytes"] > 0.0);
    for key in ["queuewatch_open_tickets", "queuewatch_points_written_total", "queuewatch_points_unsettled"] {
        assert!(scraped.contains_key(key), "{key} in {scraped:#?}");
    }
    let (_, body) = common::http_get(&format!("{base}/metrics")).await;
    for secret_or_input in [influx.url.as_str(), mqtt.url.as_str(), "queue/all/events", "mpp-jkt", "ops-metrics"] {
        assert!(!body.contains(secret_or_input), "/metrics shows {secret_or_input:?}");
    }
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_and_healthz_answers_throughout() {
    let mut mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::write_config(dir.path(), &common::daemon_config_text(&mqtt.url, "ops-ready", "", &influx.url, ""));
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;
    let base = daemon.ops_url().await;
    let answers = |expected_status: u16, needle: &'static str| {
        let base = base.clone();
        move || {
            let base = base.clone();
            async move {
                let (status, body) = common::http_get(&format!("{base}/readyz")).await;
                if status == expected_status && body.contains(needle) {
                    Ok(())
                } else {
                    Err(format!("/readyz answered {status} {body:?}"))
                }
            }
        }
    };

    assert_eq!(common::http_get(&format!("{base}/healthz")).await.0, 200);
    poll("ready while connected", answers(200, "ready"), || daemon.log_tails(40)).await;

    mqtt.stop();
    poll("not ready without the broker", answers(503, "mqtt: not connected"), || daemon.log_tails(40)).await;
    assert_eq!(common::http_get(&format!("{base}/healthz")).await.0, 200, "alive all the same");
    let scraped = scrape(&base).await;
    assert_eq!(scraped["queuewatch_mqtt_connected"], 0.0);

    mqtt.restart();
    poll("ready again once reconnected", answers(200, "ready"), || daemon.log_tails(40)).await;
    assert_eq!(common::http_get(&format!("{base}/nowhere")).await.0, 404);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    use tokio::io::AsyncReadExt;
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::write_config(dir.path(), &common::daemon_config_text(&mqtt.url, "ops-limit", "", &influx.url, ""));
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;
    let base = daemon.ops_url().await;
    let address = base.trim_start_matches("http://").to_string();

    // Idle connections that send nothing hold every place.
    let mut idle = Vec::new();
    for _ in 0..queuewatch::ops::MAX_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Let the endpoint take them all before the next ones arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let extra = 6;
    for n in 0..extra {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "connection {n} beyond the limit: {read:?}");
    }
    drop(idle);
    let refused = poll(
        "the refused connections counted",
        || {
            let base = base.clone();
            async move {
                // The endpoint frees the idle connections' places as it sees them close; until
                // then a scrape is itself refused (and counted), so it is tried again.
                if let Err(error) = reqwest::get(format!("{base}/metrics")).await {
                    return Err(format!("not served yet: {error}"));
                }
                let scraped = scrape(&base).await;
                match scraped.get("queuewatch_http_connections_refused_total") {
                    Some(count) if *count >= extra as f64 => Ok(*count),
                    other => Err(format!("queuewatch_http_connections_refused_total: {other:?}")),
                }
            }
        },
        || daemon.log_tails(40),
    )
    .await;
    assert_eq!(refused, extra as f64);
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_stops_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_text = common::daemon_config_text("mqtt://127.0.0.1:1", "ops-port", "", "http://127.0.0.1:1", "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{address}\""));
    let config = common::write_config(dir.path(), &config_text);
    let output = std::process::Command::new(common::queuewatch_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("queuewatch run starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("http.listen: cannot listen on {address}")), "{stderr}");
    assert!(stderr.to_lowercase().contains("address already in use"), "{stderr}");
}

#[cfg(feature = "simulate")]
mod stops {
    //! SIGTERM in the middle of things, then a start that finishes the day:
    //! the points are a clean replay's.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::common::{self, Influx1, Mosquitto, Subscriber};
    use crate::daemon::{Daemon, DEADLINE};
    use crate::mqtt::{next_on, Publisher};
    use crate::points::{self, MEASUREMENTS};
    use crate::scenario::{Scenario, END_OFFICE};

    /// Messages per second: a simulated day of four offices in about three seconds.
    const RATE: f64 = 3_000.0;
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

    /// What happens to the daemon part-way through the day.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Trouble {
        None,
        /// InfluxDB stops answering (SIGSTOP) before the SIGTERM, and
        /// answers again (SIGCONT) before the next start.
        InfluxStalled,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_while_publishing_exits_in_time_and_the_next_start_delivers_the_rest() {
        stop_and_finish(Trouble::None, 20_261_201).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_while_influxdb_is_stalled_exits_in_time_and_the_next_start_delivers_the_rest() {
        stop_and_finish(Trouble::InfluxStalled, 20_261_202).await;
    }

    async fn stop_and_finish(trouble: Trouble, seed: u64) {
        let scenario = Scenario::build(4, seed);
        assert!(scenario.day.len() >= 5_000, "{} messages", scenario.day.len());
        assert!(
            scenario.swaps >= 20 && scenario.duplicates >= 50,
            "{} swaps, {} duplicates",
            scenario.swaps,
            scenario.duplicates
        );
        let mqtt = Mosquitto::start_persistent(&common::MosquittoOptions::default());
        let influx = Influx1::start();
        influx.create_database("qw").await;
        let client_id = "ops-stop";
        let dir = tempfile::tempdir().unwrap();
        let config_text = format!(
            "shutdown_timeout = \"{}s\"\n{}",
            SHUTDOWN_TIMEOUT.as_secs(),
            common::daemon_config_text(&mqtt.url, client_id, "", &influx.url, "")
                .replace("reorder_window = \"1s\"", "reorder_window = \"10s\"")
        );
        let config = common::write_config(dir.path(), &config_text);

        // The clean replay of everything published, in a database of its own.
        let tracking = "[tracking]\nreorder_window = \"10s\"\n";
        let all: Vec<&str> =
            scenario.day.iter().chain(&scenario.tail).map(|message| message.payload.as_str()).collect();
        common::replay_into(&influx, "clean", tracking, &(all.join("\n") + "\n")).await;

        common::create_session(&mqtt, client_id, "queue/+/events").await;
        let end_topic = format!("queue/{END_OFFICE}/rejected");
        let mut ends = Subscriber::start(mqtt.port, "end-watcher", &end_topic).await;
        let mut daemon = Daemon::start(&config, dir.path(), "daemon");
        daemon.wait_until_connected().await;
        let base = daemon.ops_url().await;
        let publisher = Publisher::connect(mqtt.port, "kiosks");
        let publishing = publisher.publish_paced(Arc::new(scenario.day.clone()), RATE);

        let stop_after = scenario.day.len() * 2 / 5;
        while publisher.handed() < stop_after {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let influx_pid = influx.pid().expect("influxd runs").to_string();
        if trouble == Trouble::InfluxStalled {
            assert!(std::process::Command::new("kill").args(["-STOP", &influx_pid]).status().unwrap().success());
            // Points reach the stalled writer and wait there.
            let deadline = std::time::Instant::now() + DEADLINE;
            while crate::scrape(&base).await.get("queuewatch_points_unsettled").copied().unwrap_or(0.0) == 0.0 {
                assert!(std::time::Instant::now() < deadline, "no points waited\n{}", daemon.log_tails(40));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(!publishing.is_finished(), "the SIGTERM comes while the day is published");
        let took = daemon.terminate().await;
        assert!(
            took <= SHUTDOWN_TIMEOUT,
            "{trouble:?}: SIGTERM to exit took {took:?}, over shutdown_timeout {SHUTDOWN_TIMEOUT:?}\n{}",
            daemon.log_tails(40)
        );
        println!("{trouble:?}: SIGTERM to exit {took:?} (shutdown_timeout {SHUTDOWN_TIMEOUT:?})");
        if trouble == Trouble::InfluxStalled {
            assert!(std::process::Command::new("kill").args(["-CONT", &influx_pid]).status().unwrap().success());
        }

        daemon.restart();
        daemon.wait_until_connected().await;
        publishing.await.unwrap();
        publisher.wait_until_acknowledged().await;
        publisher.publish_all(&scenario.tail).await;
        publisher.wait_until_acknowledged().await;
        let mut skipped = Vec::new();
        if next_on(&mut ends, &end_topic, &mut skipped).await.is_none() {
            panic!("the end marker was not echoed in {DEADLINE:?}\n{}", daemon.log_tails(60));
        }

        // What the day leaves held for reordering is released once the
        // office clocks have run past the window on the wall clock.
        let mut clean = BTreeMap::new();
        for measurement in MEASUREMENTS {
            clean.insert(measurement, points::rows(&influx, "clean", measurement).await);
        }
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let mut differences = Vec::new();
            for measurement in MEASUREMENTS {
                let live = points::rows(&influx, "qw", measurement).await;
                differences.extend(points::difference(measurement, &clean[measurement], &live));
            }
            if differences.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{trouble:?}: the points after the restart differ from a clean replay's:\n{}\n{}",
                differences.join("\n"),
                daemon.log_tails(60)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(clean["ticket"].len() >= scenario.issued, "{} ticket points", clean["ticket"].len());
        let took = daemon.terminate().await;
        assert!(took <= SHUTDOWN_TIMEOUT, "the final stop took {took:?}");
    }
}
