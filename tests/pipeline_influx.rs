//! The whole pipeline against real servers: the scenario of
//! `tests/scenario` published over a real Mosquitto to `queuewatch run`, and
//! fed to `queuewatch replay`, must yield exactly the contract's points in a
//! real InfluxDB 1.x, field by field; the v2 path reaches a real server that
//! speaks `/api/v2/write` (VictoriaMetrics, which keeps millisecond times and
//! numbers, so that is what is compared there).

mod common;
mod scenario;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{queuewatch_bin, write_config, Influx1, Mosquitto, VictoriaMetrics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn v1_config(influx: &Influx1, mqtt_url: &str, database: &str, client_id: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
topics = ["queue/+/events"]
[influxdb]
api = "v1"
url = "{}"
database = "{database}"
flush_interval = "200ms"
[http]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
{}"#,
        influx.url,
        common::state_dir().display(),
        scenario::TRACKING_AND_SLA
    )
}

/// Kills the daemon if the test fails before stopping it, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn replay_to(config: &Path, events: &Path) -> std::process::Output {
    Command::new(queuewatch_bin())
        .args(["replay", "--config"])
        .arg(config)
        .arg(events)
        .output()
        .expect("queuewatch replay runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_the_scenario_writes_exactly_the_contract_points_to_influxdb_v1() {
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &v1_config(&influx, "mqtt://127.0.0.1:1", "qw", "unused"));
    // Split in two files: state must carry across them.
    let lines: Vec<&str> = scenario::EVENTS.lines().collect();
    let (first_half, second_half) = lines.split_at(lines.len() / 2);
    std::fs::write(dir.path().join("one.ndjson"), first_half.join("\n")).unwrap();
    std::fs::write(dir.path().join("two.ndjson"), second_half.join("\n")).unwrap();

    let output = Command::new(queuewatch_bin())
        .args(["replay", "--config"])
        .arg(&config)
        .arg(dir.path().join("one.ndjson"))
        .arg(dir.path().join("two.ndjson"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "replay failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in scenario::SUMMARY_LINES {
        assert!(stdout.lines().any(|l| l.trim() == line), "summary lacks {line:?}:\n{stdout}");
    }

    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    let problems = scenario::compare_influx_rows(&rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_rewrites_the_same_points_and_adds_none() {
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &v1_config(&influx, "mqtt://127.0.0.1:1", "qw", "unused"));
    let events = dir.path().join("scenario.ndjson");
    std::fs::write(&events, scenario::EVENTS).unwrap();
    for _ in 0..2 {
        assert!(replay_to(&config, &events).status.success());
    }
    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    let problems = scenario::compare_influx_rows(&rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Publishes each scenario line to its office's topic, QoS 1, in order.
async fn publish_lines(mqtt: &Mosquitto, client_id: &str, lines: &[&str]) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", mqtt.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    let total = lines.len();
    let publishing = {
        let client = client.clone();
        let lines: Vec<(String, Vec<u8>)> = lines
            .iter()
            .map(|line| {
                let office = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|value| value.get("office").and_then(|o| o.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "mpp-jkt".to_string());
                (format!("queue/{office}/events"), line.as_bytes().to_vec())
            })
            .collect();
        tokio::spawn(async move {
            for (topic, payload) in lines {
                client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
            }
        })
    };
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < total {
        assert!(Instant::now() < deadline, "broker acknowledged {acked} of {total} publishes");
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await
        {
            acked += 1;
        }
    }
    publishing.await.unwrap();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_run_of_the_scenario_writes_exactly_the_contract_points_and_stops_cleanly_on_sigterm() {
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &v1_config(&influx, &mqtt.url, "qw", "qw-daemon"));

    // The first half is published while the daemon is away (the broker keeps
    // it in the persistent session), the rest while it runs.
    common::create_session(&mqtt, "qw-daemon", "queue/+/events").await;
    let lines: Vec<&str> = scenario::EVENTS.lines().collect();
    let (before, after) = lines.split_at(lines.len() / 2);
    publish_lines(&mqtt, "publisher-1", before).await;

    let log_path = dir.path().join("daemon.log");
    let mut daemon = KillOnDrop(
        Command::new(queuewatch_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    publish_lines(&mqtt, "publisher-2", after).await;

    // The last points are final once each office clock has passed their time
    // plus the 10 s reorder window; allow generous slack for a busy machine.
    let rows = influx.wait_for_rows("qw", "ticket", 17, Duration::from_secs(90)).await;
    let problems = scenario::compare_influx_rows(&rows);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(problems.is_empty(), "{}\n--- daemon log ---\n{log}", problems.join("\n"));

    let status = Command::new("kill").arg("-TERM").arg(daemon.0.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "daemon did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("queuewatch stopped."), "{log}");
    assert!(log.contains("malformed_json: 1") && log.contains("duplicate: 3"), "{log}");
    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    assert_eq!(rows.len(), 17, "nothing more is written at shutdown (P02 stays open)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_the_v2_api_reaches_a_real_v2_server() {
    let victoria = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[influxdb]
api = "v2"
url = "{}"
org = "queuewatch"
bucket = "queuewatch"
flush_interval = "200ms"
{}"#,
            victoria.url,
            scenario::TRACKING_AND_SLA
        ),
    );
    let events = dir.path().join("scenario.ndjson");
    std::fs::write(&events, scenario::EVENTS).unwrap();
    let output = replay_to(&config, &events);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let mut expected: Vec<(String, String, i64, f64)> = scenario::expected_points()
        .into_iter()
        .filter_map(|point| {
            let wait = point.fields.get("wait_s")?.as_f64()?;
            Some((point.office, point.outcome, point.time_ms, wait))
        })
        .collect();
    // VictoriaMetrics keeps millisecond times and numeric values, as
    // `{measurement}_{field}` series labelled with the tags.
    let series =
        victoria.wait_for_samples(r#"{__name__="ticket_wait_s"}"#, expected.len(), Duration::from_secs(30)).await;
    let mut samples: Vec<(String, String, i64, f64)> = Vec::new();
    for line in &series {
        let metric = &line["metric"];
        let office = metric["office"].as_str().unwrap().to_string();
        let outcome = metric["outcome"].as_str().unwrap().to_string();
        let values = line["values"].as_array().unwrap();
        let timestamps = line["timestamps"].as_array().unwrap();
        for (value, timestamp) in values.iter().zip(timestamps) {
            samples.push((office.clone(), outcome.clone(), timestamp.as_i64().unwrap(), value.as_f64().unwrap()));
        }
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(samples, expected);
}

#[test]
fn check_config_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n");
    let output = Command::new(queuewatch_bin()).arg("check-config").arg(&good).output().unwrap();
    assert!(output.status.success());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nurl = \"http://x\"\nqos = 2\n[tracking]\nreorder_window = \"soon\"\n").unwrap();
    let output = Command::new(queuewatch_bin()).arg("check-config").arg(&bad).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["mqtt.url", "mqtt.qos: unknown key", "tracking.reorder_window: invalid duration \"soon\""] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(stderr.contains("bad.toml"), "errors name the file:\n{stderr}");
}
