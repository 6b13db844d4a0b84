//! Never dropping a point on InfluxDB's account, against real servers: the
//! daemon's binary takes events over a real Mosquitto and writes to a real
//! InfluxDB 1.x, which is stopped, refuses the password, runs out of spool
//! or refuses one line; the points that end up in InfluxDB are compared
//! with those a clean `queuewatch replay` of the same events writes.
//!
//! - InfluxDB killed for a minute mid-stream and started again: the points
//!   wait in the spool (the daemon's memory stays flat) and arrive, exact.
//! - A wrong password in `influxdb.password_file`: 401s, nothing lost; the
//!   right one written into the file: everything arrives without a restart.
//! - A spool too small for the outage: the daemon stops taking messages
//!   (the broker keeps them) and says so; nothing is lost once InfluxDB is back.
//! - One line refused (a field type conflict): the others are stored, that
//!   line alone is in the dead-letter file, and `resend-dead-letters` stores
//!   it once the conflict is gone.

mod common;
// Shared with the durability tests, which use more of them.
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
#[cfg(feature = "simulate")]
#[path = "durability/scenario.rs"]
mod scenario;
#[path = "durability/spool.rs"]
mod spool;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Influx1, Mosquitto};
use daemon::Daemon;
use mqtt::{Message, Publisher};
use queuewatch::time::Millis;
use spool::{
    assert_same_tickets, ndjson, resend_dead_letters, spool_bytes, tickets, wait_until, wait_until_spool_empty,
    CLIENT_ID,
};

const MINUTE_MS: i64 = 60_000;

/// [`spool::config_for`] this test's broker and InfluxDB 1.x.
fn config_for(
    mqtt: &Mosquitto,
    influx: &Influx1,
    influx_keys: &str,
    storage_keys: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    spool::config_for(&mqtt.url, &influx.url, influx_keys, storage_keys)
}

#[cfg(feature = "simulate")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_stopped_for_a_minute_mid_stream_loses_nothing_and_the_spool_drains() {
    use std::sync::Arc;

    use std::time::Instant;

    use crate::daemon::DEADLINE;
    use crate::points::MEASUREMENTS;
    use crate::scenario::{Scenario, END_OFFICE};

    /// Long enough for the spool to take many batches, short enough for CI.
    const OUTAGE: Duration = Duration::from_secs(60);
    /// A simulated day of three offices (about 6,000 messages) in about 75 s.
    const RATE: f64 = 80.0;

    let started = Instant::now();
    let scenario = Scenario::build(3, 20_261_201);
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_database("qw").await;
    let (dir, config, data_dir) = config_for(&mqtt, &influx, "batch_size = 200\nmax_backoff = \"500ms\"", "");
    // The scenario swaps neighbours up to 5 s apart.
    let text =
        std::fs::read_to_string(&config).unwrap().replacen("reorder_window = \"1s\"", "reorder_window = \"30s\"", 1);
    std::fs::write(&config, text).unwrap();
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let end_topic = format!("queue/{END_OFFICE}/rejected");
    let mut ends = common::Subscriber::start(mqtt.port, "end-watcher", &end_topic).await;
    let mut daemon = Daemon::start(&config, dir.path(), "outage");
    daemon.wait_until_connected().await;
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    let publishing = publisher.publish_paced(Arc::new(scenario.day.clone()), RATE);

    while publisher.handed() < scenario.day.len() / 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = daemon.pid().expect("the daemon runs");
    let rss_before = rss_kib(pid);
    influx.stop();
    let outage_started = Instant::now();
    let handed_at_stop = publisher.handed();
    let (mut rss_max, mut spool_max, mut journal_cut) = (rss_before, 0, false);
    while outage_started.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(rss_kib(pid));
        spool_max = spool_max.max(spool_bytes(&data_dir));
        journal_cut |= daemon.current_log_contains("Snapshot taken");
    }
    let handed_during_outage = publisher.handed() - handed_at_stop;
    let spooled_at_restart = spool_bytes(&data_dir);
    influx.restart();

    publishing.await.unwrap();
    publisher.wait_until_acknowledged().await;
    publisher.publish_all(&scenario.tail).await;
    publisher.wait_until_acknowledged().await;
    let mut skipped = Vec::new();
    if mqtt::next_on(&mut ends, &end_topic, &mut skipped).await.is_none() {
        panic!("the end marker was not echoed in {DEADLINE:?}\n{}", daemon.log_tails(60));
    }
    wait_until_spool_empty(&data_dir, &daemon).await;
    daemon.terminate().await;

    let events = ndjson(scenario.day.iter().chain(&scenario.tail));
    common::replay_into(&influx, "expected", "[tracking]\nreorder_window = \"30s\"\n", &events).await;
    for measurement in MEASUREMENTS {
        let expected = points::rows(&influx, "expected", measurement).await;
        let actual = points::rows(&influx, "qw", measurement).await;
        if let Some(difference) = points::difference(measurement, &expected, &actual) {
            panic!("{difference}\n{}", daemon.log_tails(80));
        }
    }
    let tickets = points::rows(&influx, "qw", "ticket").await.len();
    assert!(tickets >= scenario.issued, "{tickets} ticket points for {} tickets", scenario.issued);

    let logs = daemon.log_tails(400);
    assert!(handed_during_outage > 3_000, "only {handed_during_outage} messages were published during the outage");
    assert!(spooled_at_restart > 100_000, "{spooled_at_restart} bytes spooled after {OUTAGE:?}\n{logs}");
    assert!(journal_cut, "no snapshot was committed during the outage: spooled points are settled\n{logs}");
    assert!(!logs.contains("The spool is full"), "{logs}");
    // Without a spool the daemon would hold the outage's points in memory;
    // with it, memory stays where it was.
    let growth_kib = rss_max.saturating_sub(rss_before);
    assert!(growth_kib < 48 * 1024, "the daemon grew by {growth_kib} KiB during the outage\n{logs}");
    println!(
        "outage {OUTAGE:?}: {handed_during_outage} messages published meanwhile, spool up to {spool_max} bytes, \
         RSS {rss_before} KiB before, {rss_max} KiB at most; {tickets} ticket points identical to a clean replay; \
         {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_loses_nothing_and_the_right_one_in_the_file_lets_everything_through() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start_with_auth("admin", "s3cret pass");
    influx.create_database("qw").await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("influx-password");
    std::fs::write(&password_file, "wrong\n").unwrap();
    let influx_keys = format!("username = \"admin\"\npassword_file = \"{}\"", password_file.display());
    let (dir, config, data_dir) = config_for(&mqtt, &influx, &influx_keys, "");
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "auth");
    daemon.wait_until_connected().await;

    let messages = tickets("o1", 20);
    spool::publish_until_refused_and_spooled(mqtt.port, &messages, &mut daemon, &data_dir).await;
    assert!(points::rows(&influx, "qw", "ticket").await.is_empty());

    std::fs::write(&password_file, "s3cret pass\n").unwrap();
    points::wait_for_points(&influx, "ticket", 20, &daemon).await;
    wait_until_spool_empty(&data_dir, &daemon).await;
    daemon.terminate().await;

    let replay_keys = format!("username = \"admin\"\npassword_file = \"{}\"\n", password_file.display());
    common::replay_into(&influx, "expected", &replay_keys, &ndjson(&messages)).await;
    assert_same_tickets(&influx, &daemon).await;
    assert!(!data_dir.join(queuewatch::sink::DEAD_LETTER_FILE).exists(), "{}", daemon.log_tails(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_stops_taking_messages_the_broker_keeps_them_and_nothing_is_lost() {
    use std::sync::Arc;

    const SPOOL_MAX_BYTES: u64 = 32 * 1024;
    /// Paced, so that the daemon hands its points over in small chunks (one
    /// per tick) and the writer's channel fills within seconds.
    const RATE: f64 = 400.0;
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_database("qw").await;
    let (dir, config, data_dir) = config_for(
        &mqtt,
        &influx,
        "batch_size = 50\nmax_backoff = \"200ms\"",
        &format!("spool_max_bytes = {SPOOL_MAX_BYTES}\n"),
    );
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    influx.stop();
    let mut daemon = Daemon::start(&config, dir.path(), "full");
    daemon.wait_until_connected().await;

    let messages: Vec<Message> = (1..=4).flat_map(|office| tickets(&format!("o{office}"), 750)).collect();
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    let publishing = publisher.publish_paced(Arc::new(messages.clone()), RATE);
    daemon.wait_for_log("The spool is full").await;
    // The endpoint says so while the loop waits on the writer.
    let ops = daemon.ops_url().await;
    let (status, reason) = common::http_get(&format!("{ops}/readyz")).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("the spool is full"), "{reason}");
    let metrics = common::http_get(&format!("{ops}/metrics")).await.1;
    assert!(metrics.lines().any(|line| line == "queuewatch_spool_full 1"), "{metrics}");
    assert!(metrics.contains("queuewatch_spool_oldest_point_age_seconds "), "{metrics}");
    publishing.await.unwrap();
    publisher.wait_until_acknowledged().await;
    // The daemon takes nothing more: its journal stops growing short of the
    // messages published, which the broker keeps.
    let mut journal = journal_bytes(&data_dir);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = journal_bytes(&data_dir);
        if now == journal {
            break;
        }
        journal = now;
    }
    let taken = journal_messages(&data_dir);
    assert!(taken < messages.len() / 2, "{taken} of {} messages taken in with a full spool", messages.len());
    let spooled = spool_bytes(&data_dir);
    assert!(spooled <= SPOOL_MAX_BYTES, "{spooled} bytes in a spool of {SPOOL_MAX_BYTES}");

    influx.restart();
    points::wait_for_points(&influx, "ticket", 3000, &daemon).await;
    wait_until_spool_empty(&data_dir, &daemon).await;
    daemon.wait_for_log("The spool has room again").await;
    let metrics = common::http_get(&format!("{ops}/metrics")).await.1;
    for line in ["queuewatch_spool_full 0", "queuewatch_spool_points 0"] {
        assert!(metrics.lines().any(|rendered| rendered == line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("queuewatch_spool_oldest_point_age_seconds "), "{metrics}");
    assert_eq!(common::http_get(&format!("{ops}/readyz")).await.0, 200);
    daemon.terminate().await;
    common::replay_into(&influx, "expected", "", &ndjson(&messages)).await;
    assert_same_tickets(&influx, &daemon).await;
    println!("with a full spool of {SPOOL_MAX_BYTES} bytes the daemon took {taken} of {} messages", messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_line_alone_is_dead_lettered_and_the_resend_command_stores_it_once_fixed() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    // `uptime_s` of the daemon's own `queuewatch` point is a float: a string
    // already there makes InfluxDB refuse exactly those lines.
    let conflict =
        format!("queuewatch,instance=other uptime_s=\"conflict\" {}\n", (Millis::now().0 - MINUTE_MS) * 1_000_000);
    post(&format!("{}/write?db=qw", influx.url), conflict).await;
    let (dir, config, data_dir) = config_for(&mqtt, &influx, "", "");
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "dead-letter");
    daemon.wait_until_connected().await;

    let messages = tickets("o1", 20);
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    publisher.publish_all(&messages).await;
    publisher.wait_until_acknowledged().await;
    points::wait_for_points(&influx, "ticket", 20, &daemon).await;
    let dead_letter_path = data_dir.join(queuewatch::sink::DEAD_LETTER_FILE);
    wait_until(&daemon, "a dead letter", || dead_letter_path.exists()).await;
    daemon.terminate().await;

    common::replay_into(&influx, "expected", "", &ndjson(&messages)).await;
    assert_same_tickets(&influx, &daemon).await;
    let entries = queuewatch::sink::dead_letter::parse(&std::fs::read_to_string(&dead_letter_path).unwrap());
    assert!(!entries.is_empty());
    for entry in &entries {
        assert!(entry.line.starts_with(&format!("queuewatch,instance={CLIENT_ID} ")), "{entry:?}");
        assert!(entry.reason.contains("status 400") && entry.reason.contains("field type conflict"), "{entry:?}");
    }

    // Not fixed yet: the lines stay, with the new answer.
    let resend = resend_dead_letters(&config);
    assert!(!resend.status.success(), "{}", String::from_utf8_lossy(&resend.stdout));
    assert_eq!(
        queuewatch::sink::dead_letter::parse(&std::fs::read_to_string(&dead_letter_path).unwrap()).len(),
        entries.len()
    );

    post(&format!("{}/query?db=qw", influx.url), "q=DROP+MEASUREMENT+queuewatch".to_string()).await;
    let resend = resend_dead_letters(&config);
    let output = String::from_utf8_lossy(&resend.stdout);
    assert!(resend.status.success(), "{output}\n{}", String::from_utf8_lossy(&resend.stderr));
    assert!(output.contains(&format!("re-sent and written: {}", entries.len())), "{output}");
    let left = std::fs::read_to_string(&dead_letter_path).unwrap_or_default();
    assert!(queuewatch::sink::dead_letter::parse(&left).is_empty(), "{left}");
    let stored = influx.rows("qw", "SELECT uptime_s FROM queuewatch").await;
    assert_eq!(stored.len(), entries.len(), "{stored:?}");
    assert!(stored.iter().all(|row| row["uptime_s"].is_number()), "{stored:?}");
}

// ---- helpers ----

fn journal_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("state"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".qwj"))
        .map(|entry| entry.metadata().map_or(0, |meta| meta.len()))
        .sum()
}

/// Message records in the journal.
fn journal_messages(data_dir: &Path) -> usize {
    let needle = b"\"type\":\"";
    std::fs::read_dir(data_dir.join("state"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".qwj"))
        .map(|entry| {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            bytes.windows(needle.len()).filter(|window| window == needle).count()
        })
        .sum()
}

/// The resident memory of process `pid`, in KiB.
#[cfg(feature = "simulate")]
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn post(url: &str, body: String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", if url.contains("/query") { "application/x-www-form-urlencoded" } else { "text/plain" })
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success() && !text.contains("\"error\""), "POST {url}: {status} {text}");
}
