//! Durability against real servers: the daemon's binary, killed with SIGKILL
//! and started again with the same config file (the same state folder and
//! MQTT session), writes what a daemon that was never killed writes.
//!
//! - A simulated busy day with duplicates and reordering, published at a
//!   steady rate over a real Mosquitto, ends in a real InfluxDB 1.x with the
//!   same points, point for point, whether the daemon ran throughout or was
//!   killed three times while it was published.
//! - A ticket issued before a kill and served after the restart is one point
//!   with its exact durations.
//! - A wait breach whose deadline fell while the daemon was down fires once,
//!   point and alert, after the restart.

mod common;
// Shared with the spool tests and `tests/ops_http.rs`, which use other parts of it.
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;
// Paced publishing and comparing whole databases serve only the kill test,
// which needs the simulator (feature `simulate`).
#[cfg_attr(not(feature = "simulate"), allow(dead_code))]
#[path = "durability/mqtt.rs"]
mod mqtt;
#[cfg_attr(not(feature = "simulate"), allow(dead_code))]
#[path = "durability/points.rs"]
mod points;
#[cfg(feature = "simulate")]
#[path = "durability/scenario.rs"]
mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::Subscriber;
use common::{Influx1, Mosquitto, MosquittoOptions};
use daemon::{data_dir_of, wait_until_journaled, Daemon, DEADLINE};
use mqtt::{next_on, Message, Publisher};
use points::Row;
use queuewatch::time::Millis;

const MINUTE_MS: i64 = 60_000;

#[cfg(feature = "simulate")]
mod kills {
    //! The kill test: two runs of one scenario, compared point for point.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rand::{Rng, SeedableRng};

    use crate::common::Subscriber;
    use crate::common::{self, Influx1, Mosquitto};
    use crate::daemon::{Daemon, Recovery, DEADLINE};
    use crate::mqtt::{next_on, Publisher};
    use crate::points::{self, Row, MEASUREMENTS};
    use crate::scenario::{Scenario, END_OFFICE};

    const SEED: u64 = 20_261_130;
    const OFFICES: u32 = 10;
    /// Messages per second: a simulated day in about seven seconds.
    const RATE: f64 = 3_000.0;
    const CLIENT_ID: &str = "queuewatch-durable";
    /// Snapshots as often as allowed, so that kills land before, during and
    /// after them and recovery goes through snapshot and journal alike.
    const CHECKPOINT_INTERVAL: &str = "1s";

    /// What one run left behind.
    struct Outcome {
        points: BTreeMap<&'static str, Vec<Row>>,
        logs: String,
        recoveries: Vec<Option<Recovery>>,
        /// Kills that came while the day was still being published.
        kills_while_publishing: usize,
        seconds: f64,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_three_times_writes_what_a_clean_run_writes() {
        let started = Instant::now();
        let scenario = Scenario::build(OFFICES, SEED);
        assert!(scenario.day.len() >= 20_000, "{} messages: too few to kill in the middle of", scenario.day.len());
        assert!(
            scenario.swaps >= 100 && scenario.duplicates >= 300,
            "{} swaps, {} duplicates",
            scenario.swaps,
            scenario.duplicates
        );
        let kills = kill_moments(scenario.day.len());

        let clean = run(&scenario, "clean", &[]).await;
        let killed = run(&scenario, "killed", &kills).await;
        println!(
            "{} messages ({} duplicates, {} swapped pairs); clean run {:.1} s, killed run {:.1} s (kills after messages {kills:?}, {} of them while publishing); recoveries {:?}; {:.1} s in all",
            scenario.day.len() + scenario.tail.len(),
            scenario.duplicates,
            scenario.swaps,
            clean.seconds,
            killed.seconds,
            killed.kills_while_publishing,
            killed.recoveries,
            started.elapsed().as_secs_f64(),
        );

        let differences: Vec<String> = MEASUREMENTS
            .iter()
            .filter_map(|measurement| {
                points::difference(measurement, &clean.points[measurement], &killed.points[measurement])
            })
            .collect();
        assert!(
            differences.is_empty(),
            "the killed run's points differ from the clean run's:\n{}\n\n=== clean run ===\n{}\n=== killed run ===\n{}",
            differences.join("\n"),
            clean.logs,
            killed.logs
        );
        let tickets = clean.points["ticket"].len();
        assert!(tickets >= scenario.issued, "{tickets} ticket points for {} tickets issued", scenario.issued);
        let counts: Vec<String> = MEASUREMENTS
            .iter()
            .map(|measurement| format!("{measurement} {}", clean.points[measurement].len()))
            .collect();
        println!("identical points: {}", counts.join(", "));

        assert_eq!(killed.recoveries.len(), 3, "{}", killed.logs);
        for recovery in &killed.recoveries {
            let recovered = recovery.is_some_and(|recovery| recovery.replayed > 0 || recovery.snapshot > 0);
            assert!(recovered, "a restart recovered nothing: {:?}\n{}", killed.recoveries, killed.logs);
        }
    }

    /// Three moments (messages handed to the publisher) spread over the day,
    /// each at a seeded-random place within its stretch.
    fn kill_moments(messages: usize) -> Vec<usize> {
        let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
        [(0.05, 0.25), (0.40, 0.55), (0.70, 0.85)]
            .iter()
            .map(|&(from, to)| (random.random_range(from..to) * messages as f64) as usize)
            .collect()
    }

    /// Publishes the scenario to a daemon of its own (its own Mosquitto and
    /// InfluxDB), killing it with SIGKILL once the publisher has handed over
    /// each of `kill_after` messages and starting it again a second later;
    /// then stops it with SIGTERM once it has taken everything, and reads
    /// what it wrote.
    async fn run(scenario: &Scenario, name: &str, kill_after: &[usize]) -> Outcome {
        let started = Instant::now();
        let mqtt = Mosquitto::start_persistent(&crate::common::MosquittoOptions::default());
        let influx = Influx1::start();
        influx.create_database("qw").await;
        let dir = tempfile::tempdir().unwrap();
        let config_text = replace_once(
            &replace_once(
                &common::daemon_config_text(&mqtt.url, CLIENT_ID, "", &influx.url, ""),
                "reorder_window = \"1s\"",
                "reorder_window = \"30s\"",
            ),
            "[storage]\n",
            &format!("[storage]\ncheckpoint_interval = \"{CHECKPOINT_INTERVAL}\"\n"),
        );
        let config = common::write_config(dir.path(), &config_text);
        // The session exists before the daemon first connects: the broker
        // keeps every message for it, whether the daemon runs or not.
        common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
        let end_topic = format!("queue/{END_OFFICE}/rejected");
        let mut ends = Subscriber::start(mqtt.port, "end-watcher", &end_topic).await;

        let mut daemon = Daemon::start(&config, dir.path(), name);
        daemon.wait_until_connected().await;
        let publisher = Publisher::connect(mqtt.port, "kiosks");
        let publishing = publisher.publish_paced(Arc::new(scenario.day.clone()), RATE);
        let mut kills_while_publishing = 0;
        for &moment in kill_after {
            while publisher.handed() < moment {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if !publishing.is_finished() {
                kills_while_publishing += 1;
            }
            daemon.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            daemon.restart();
            daemon.wait_until_connected().await;
        }
        publishing.await.unwrap();
        publisher.wait_until_acknowledged().await;
        publisher.publish_all(&scenario.tail).await;
        publisher.wait_until_acknowledged().await;

        // The end marker comes last: once it is echoed, every message before
        // it was taken in, and a graceful stop applies and writes the rest.
        let mut skipped = Vec::new();
        if next_on(&mut ends, &end_topic, &mut skipped).await.is_none() {
            panic!("{name}: the end marker was not echoed in {DEADLINE:?}\n{}", daemon.log_tails(60));
        }
        daemon.terminate().await;

        let mut points = BTreeMap::new();
        for measurement in MEASUREMENTS {
            points.insert(measurement, points::rows(&influx, "qw", measurement).await);
        }
        Outcome {
            points,
            logs: daemon.log_tails(40),
            recoveries: daemon.recoveries_after_restarts(),
            kills_while_publishing,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// `text` with `from` replaced by `to`; fails unless `from` occurs exactly once.
    fn replace_once(text: &str, from: &str, to: &str) -> String {
        assert_eq!(text.matches(from).count(), 1, "{from:?} once in:\n{text}");
        text.replace(from, to)
    }
}

const OFFICE: &str = "mpp-durable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_issued_before_a_kill_and_served_after_the_restart_is_one_exact_point() {
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let (dir, config, data_dir) = config_for(&mqtt, &influx, "");
    common::create_session(&mqtt, "durable-daemon", "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;

    let kiosk = Publisher::connect(mqtt.port, "kiosk");
    let issued_at = Millis::now().0 - 30 * MINUTE_MS;
    let event = |kind: &str, after_ms: i64, more: &str| {
        let ts = issued_at + after_ms;
        Message::event(OFFICE, format!(r#"{{"type":"{kind}","ts":{ts},"ticket":"Q-4417","id":"{kind}-1"{more}}}"#))
    };
    kiosk.publish_all(&[event("issued", 0, r#","service":"ktp""#)]).await;
    kiosk.wait_until_acknowledged().await;
    wait_until_journaled(&data_dir, b"Q-4417", &daemon).await;
    daemon.kill();

    // While it is down, the broker keeps the rest of the visit for its session.
    let at_counter = r#","counter":"c1","staff":"budi""#;
    kiosk
        .publish_all(&[
            event("called", 240_123, at_counter),
            event("started", 270_456, at_counter),
            event("finished", 990_789, at_counter),
        ])
        .await;
    kiosk.wait_until_acknowledged().await;
    daemon.restart();
    points::wait_for_points(&influx, "ticket", 1, &daemon).await;
    daemon.terminate().await;

    let tickets = points::rows(&influx, "qw", "ticket").await;
    assert_eq!(tickets.len(), 1, "{tickets:#?}\n{}", daemon.log_tails(40));
    assert_eq!(tickets[0].time_ns.div_euclid(1_000_000), issued_at + 990_789, "{}", tickets[0]);
    let expected = tags_and_fields(&[
        ("counter", "\"c1\""),
        ("office", &format!("\"{OFFICE}\"")),
        ("outcome", "\"served\""),
        ("service", "\"ktp\""),
        ("ticket", "\"Q-4417\""),
        ("recalls", "0"),
        ("wait_s", "240.123"),
        ("walk_s", "30.333"),
        ("service_s", "720.333"),
        ("total_s", "990.789"),
        ("visit_s", "990.789"),
        ("wait_target_s", "900"),
        ("service_target_s", "1200"),
        ("wait_within_target", "1"),
        ("service_within_target", "1"),
        ("staff", "\"budi\""),
    ]);
    assert_eq!(tickets[0].tags_and_fields, expected);
    let recoveries = daemon.recoveries_after_restarts();
    assert!(
        matches!(recoveries.as_slice(), [Some(recovery)] if recovery.replayed >= 1),
        "the issue came back from the journal: {recoveries:?}\n{}",
        daemon.log_tails(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_due_during_the_downtime_fires_once_after_it() {
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let (dir, config, data_dir) = config_for(&mqtt, &influx, "[sla]\nwait_target = \"5m\"\n");
    common::create_session(&mqtt, "durable-daemon", "queue/+/events").await;
    let alerts_topic = format!("queue/{OFFICE}/alerts");
    let mut alerts = Subscriber::start(mqtt.port, "alert-watcher", &alerts_topic).await;
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;

    // Recent enough that the alert is not stale (alerts over an hour late
    // are counted, not sent), old enough that the office's next event,
    // 6 min later, is still in the past and not held as ahead of the clock.
    let issued_at = Millis::now().0 - 10 * MINUTE_MS;
    let deadline = issued_at + 5 * MINUTE_MS;
    let issued = |ticket: &str, ts: i64| {
        Message::event(OFFICE, format!(r#"{{"type":"issued","ts":{ts},"ticket":"{ticket}","service":"ktp"}}"#))
    };
    let kiosk = Publisher::connect(mqtt.port, "kiosk");
    kiosk.publish_all(&[issued("A-771", issued_at)]).await;
    kiosk.wait_until_acknowledged().await;
    wait_until_journaled(&data_dir, b"A-771", &daemon).await;
    daemon.kill();

    // Downtime is not office time: only the office's next event, past the
    // deadline, tells the restarted daemon that A-771 was not called in time.
    kiosk.publish_all(&[issued("A-772", issued_at + 6 * MINUTE_MS)]).await;
    kiosk.wait_until_acknowledged().await;
    daemon.restart();

    let mut others = Vec::new();
    let Some(firing) = next_on(&mut alerts, &alerts_topic, &mut others).await else {
        panic!("no alert in {DEADLINE:?}\n{}", daemon.log_tails(40));
    };
    assert_eq!(
        (firing["state"].as_str(), firing["kind"].as_str(), firing["ticket"].as_str()),
        (Some("firing"), Some("wait"), Some("A-771")),
        "{firing}"
    );
    assert_eq!(firing["since"], Millis(deadline).to_rfc3339(), "{firing}");
    assert_eq!(firing["target_s"], 300.0, "{firing}");
    points::wait_for_points(&influx, "breach", 1, &daemon).await;
    daemon.terminate().await;

    // Whatever the daemon published has arrived once a marker published after its exit has.
    let marker = Message { topic: alerts_topic.clone(), payload: r#"{"marker":"after the daemon stopped"}"#.into() };
    kiosk.publish_all(&[marker]).await;
    let mut alerts_for_a771 = vec![firing.clone()];
    loop {
        let Some(alert) = next_on(&mut alerts, &alerts_topic, &mut others).await else {
            panic!("the marker did not arrive in {DEADLINE:?}");
        };
        if alert.get("marker").is_some() {
            break;
        }
        if alert["ticket"] == "A-771" {
            alerts_for_a771.push(alert);
        }
    }
    let firings =
        alerts_for_a771.iter().filter(|alert| alert["state"] == "firing" && alert["id"] == firing["id"]).count();
    assert_eq!(firings, 1, "{alerts_for_a771:#?}");

    let breaches: Vec<Row> = points::rows(&influx, "qw", "breach")
        .await
        .into_iter()
        .filter(|row| row.tags_and_fields.contains("ticket=\"A-771\""))
        .collect();
    assert_eq!(breaches.len(), 1, "{breaches:#?}");
    assert_eq!(breaches[0].time_ns.div_euclid(1_000_000), deadline, "{}", breaches[0]);
    let expected = tags_and_fields(&[
        ("kind", "\"wait\""),
        ("office", &format!("\"{OFFICE}\"")),
        ("service", "\"ktp\""),
        ("target_s", "300"),
        ("ticket", "\"A-771\""),
    ]);
    assert_eq!(breaches[0].tags_and_fields, expected);
    let recoveries = daemon.recoveries_after_restarts();
    assert!(
        matches!(recoveries.as_slice(), [Some(recovery)] if recovery.replayed >= 1),
        "the issue came back from the journal: {recoveries:?}\n{}",
        daemon.log_tails(40)
    );
}

/// A config file for client `durable-daemon` with `more` appended, in a new
/// folder; returns the folder, the file and its state folder.
fn config_for(mqtt: &Mosquitto, influx: &Influx1, more: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let text = common::daemon_config_text(&mqtt.url, "durable-daemon", "", &influx.url, more);
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &text);
    (dir, config, data_dir_of(&text))
}

/// The `key=value` text of [`Row`] for these tags and fields (values as JSON).
fn tags_and_fields(pairs: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = pairs.iter().copied().collect();
    sorted.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(" ")
}

/// The state folder a released queuewatch left when it was killed mid-day (see
/// `tests/data/state-v1/make.sh`): this version starts on it and carries on exactly. Each
/// release keeps reading the previous release's formats; a change of format that drops
/// them fails here before it reaches a user's upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_folder_of_the_previous_release_is_read_and_resumed_exactly() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v1");
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    copy_folder(&fixture.join("data"), &data_dir);
    let config_text = std::fs::read_to_string(fixture.join("config.toml.in"))
        .unwrap()
        .replace("@MQTT@", &mqtt.url)
        .replace("@DATA@", &data_dir.display().to_string())
        .replace("http://127.0.0.1:9", &influx.url);
    let config = common::write_config(dir.path(), &config_text);
    common::create_session(&mqtt, "upgrade-daemon", "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "upgraded");
    daemon.wait_until_connected().await;

    // 2026-12-07 08:00 in Jakarta, when Q-1 was issued.
    let base = 1_796_605_200_000;
    let event = |kind: &str, at_s: i64, ticket: &str| {
        let more = if kind == "issued" { r#","service":"ktp""# } else { r#","counter":"c1""# };
        let ts = base + at_s * 1000;
        Message::event(
            "kantor-a",
            format!(r#"{{"type":"{kind}","ts":{ts},"ticket":"{ticket}","id":"{kind}-{ticket}-2"{more}}}"#),
        )
    };
    let kiosk = Publisher::connect(mqtt.port, "kiosk");
    kiosk
        .publish_all(&[
            event("called", 600, "Q-1"),
            event("started", 630, "Q-1"),
            event("finished", 900, "Q-1"),
            event("called", 700, "Q-3"),
            event("started", 720, "Q-3"),
            event("finished", 1000, "Q-3"),
        ])
        .await;
    kiosk.wait_until_acknowledged().await;
    points::wait_for_points(&influx, "ticket", 3, &daemon).await;
    daemon.terminate().await;

    let tickets = points::rows(&influx, "qw", "ticket").await;
    let summary: Vec<(i64, String)> = tickets
        .iter()
        .map(|row| {
            let field = |name: &str| {
                row.tags_and_fields
                    .split(' ')
                    .find(|pair| pair.starts_with(&format!("{name}=")))
                    .unwrap_or("")
                    .to_string()
            };
            (
                (row.time_ns / 1_000_000 - base) / 1000,
                format!("{} {} {}", field("ticket"), field("wait_s"), field("total_s")),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            // From the spool: Q-2 was served before the kill.
            (400, "ticket=\"Q-2\" wait_s=60 total_s=340".to_string()),
            // From the snapshot: Q-1 waited 10 minutes.
            (900, "ticket=\"Q-1\" wait_s=600 total_s=900".to_string()),
            // From the journal after the snapshot: Q-3 was issued at 500 s.
            (1000, "ticket=\"Q-3\" wait_s=200 total_s=500".to_string()),
        ],
        "{tickets:#?}\n{}",
        daemon.log_tails(40)
    );
    let recoveries = daemon.recoveries();
    assert!(
        matches!(recoveries.as_slice(), [Some(recovery)] if recovery.snapshot > 0 && recovery.replayed >= 1),
        "the snapshot and the journal after it were read: {recoveries:?}\n{}",
        daemon.log_tails(40)
    );
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A flood keeps the daemon's channel full: checkpoints still come, by size when the interval
/// is far off, so the journal (and what a restart reads) stays about a segment long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_checkpointed_by_journal_size_and_the_journal_stays_short() {
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let segment_bytes = 1 << 20;
    let (dir, config, data_dir) =
        config_for(&mqtt, &influx, &format!("checkpoint_interval = \"1h\"\njournal_segment_bytes = {segment_bytes}\n"));
    common::create_session(&mqtt, "durable-daemon", "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "flood");
    daemon.wait_until_connected().await;

    // About 5 MiB of journal: five segments' worth.
    let start = Millis::now().0 - 60 * MINUTE_MS;
    let padding = "x".repeat(120);
    let messages: Vec<Message> = (0..20_000)
        .map(|n| {
            let payload = format!(
                r#"{{"type":"issued","ts":{},"ticket":"F-{n}","service":"ktp","id":"flood-{n}","note":"{padding}"}}"#,
                start + n
            );
            Message::event(OFFICE, payload)
        })
        .collect();
    let kiosk = Publisher::connect(mqtt.port, "kiosk");
    kiosk.publish_all(&messages).await;
    kiosk.wait_until_acknowledged().await;
    wait_until_journaled(&data_dir, b"flood-19999", &daemon).await;
    daemon.terminate().await;

    let log = daemon.log_tails(10_000);
    let snapshots = log.matches("Snapshot taken").count();
    let journal_bytes: u64 = std::fs::read_dir(data_dir.join("state"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("journal-"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert!(snapshots >= 3, "{snapshots} snapshots during the flood\n{}", daemon.log_tails(30));
    // Without checkpoints by size all 5 MiB would be left. What is left is at most the segment
    // that triggered the last checkpoint plus what came while that snapshot was written (with
    // 10,000 tickets open, half a second on a quiet machine, more on a busy one): under 3.
    assert!(journal_bytes < 3 * segment_bytes, "{journal_bytes} journal bytes left\n{}", daemon.log_tails(30));
}
