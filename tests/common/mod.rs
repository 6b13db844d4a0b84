//! What the integration tests share: the real servers of `queuewatch-servers`
//! (Mosquitto, InfluxDB 1.x and 3.x and VictoriaMetrics, each on free loopback ports in
//! a temporary folder of its own, stopped when its guard drops; the load
//! harness starts its servers with the same kit), and the daemon's binary and
//! config file.
//!
//! A missing server binary is a failure that names the Debian package to
//! install (or, for InfluxDB 3 Core, where it was looked for), never a
//! skipped test.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod logins;
pub mod pki;
pub mod responder;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use queuewatch_servers::{
    create_session, free_port, Influx1, Influx3, InfluxClient, Mosquitto, MosquittoOptions, VictoriaMetrics,
};

/// The `queuewatch` binary that cargo built for this integration test.
pub fn queuewatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_queuewatch"))
}

/// The config text of a daemon under test: the broker at `mqtt_url` as
/// `client_id` (with `mqtt_extra` lines in `[mqtt]`), InfluxDB 1.x at
/// `influx_url`, database `qw`, flushed every 100 ms, a 1 s reorder window,
/// the operations endpoint on a free port (logged at start);
/// `more` is appended (further sections).
pub fn daemon_config_text(mqtt_url: &str, client_id: &str, mqtt_extra: &str, influx_url: &str, more: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
{mqtt_extra}
[influxdb]
api = "v1"
url = "{influx_url}"
database = "qw"
flush_interval = "100ms"
[tracking]
reorder_window = "1s"
[http]
listen = "127.0.0.1:0"
[storage]
data_dir = "{}"
{more}"#,
        state_dir().display()
    )
}

/// A new, empty state folder (`storage.data_dir`) for a daemon under test,
/// in cargo's folder for test output.
pub fn state_dir() -> PathBuf {
    tempfile::Builder::new().prefix("state-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap().keep()
}

/// Creates database `db` in `influx` and writes `events` (NDJSON text) into it
/// with `queuewatch replay`, under `config` (sections besides `[influxdb]`);
/// fails the test, with the replay's output, if the replay fails.
pub async fn replay_into(influx: &Influx1, db: &str, config: &str, events: &str) {
    influx.create_database(db).await;
    replay_to(&influx.url, db, config, events);
}

/// Writes `events` (NDJSON text) with `queuewatch replay` through the v1 API
/// to database `db` of the InfluxDB at `url`, under `config`: first more
/// `[influxdb]` keys if any (credentials), then other sections. Fails the
/// test, with the replay's output, if the replay fails.
pub fn replay_to(url: &str, db: &str, config: &str, events: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(
        dir.path(),
        &format!(
            "[influxdb]\napi = \"v1\"\nurl = \"{url}\"\ndatabase = \"{db}\"\nflush_interval = \"100ms\"\n{config}"
        ),
    );
    let events_path = dir.path().join("events.ndjson");
    fs::write(&events_path, events).unwrap();
    let output = std::process::Command::new(queuewatch_bin())
        .args(["replay", "--config"])
        .arg(&config_path)
        .arg(&events_path)
        .output()
        .expect("queuewatch replay runs");
    assert!(
        output.status.success(),
        "replay failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `toml` to `dir/queuewatch.toml` and returns that path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("queuewatch.toml");
    fs::write(&path, toml).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

/// Collects every message on an MQTT filter from the moment the broker
/// confirmed the subscription, in the background.
pub struct Subscriber {
    messages: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    _pump: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `filter` on the broker at `port` as `client_id` and waits for the SUBACK.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(std::time::Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (sender, messages) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
        let pump = tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            let _client = client;
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(subscribed) = subscribed.take() {
                            let _ = subscribed.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let value = serde_json::from_slice(&publish.payload).unwrap_or(serde_json::Value::Null);
                        let _ = sender.send((publish.topic.clone(), value));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), is_subscribed)
            .await
            .expect("the broker confirms the subscription")
            .unwrap();
        Subscriber { messages, _pump: pump }
    }

    /// The next message (topic, JSON payload or null) before `deadline`, or `None`.
    pub async fn next_before(&mut self, deadline: tokio::time::Instant) -> Option<(String, serde_json::Value)> {
        tokio::time::timeout_at(deadline, self.messages.recv()).await.ok().flatten()
    }
}

/// The daemon's `/metrics` at `base` (`http://127.0.0.1:PORT`), each sample
/// keyed `name{label="value",…}` (labels sorted). Fails the test unless every
/// sample line parses and the body ends as OpenMetrics requires.
pub async fn scrape_metrics(base: &str) -> std::collections::BTreeMap<String, f64> {
    let (status, body) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the metrics parse");
    let sample_lines = body.lines().filter(|line| !line.is_empty() && !line.starts_with('#')).count();
    assert_eq!(scrape.samples.len(), sample_lines, "every sample line parses:\n{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> =
                sample.labels.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
            labels.sort();
            let key =
                if labels.is_empty() { sample.metric } else { format!("{}{{{}}}", sample.metric, labels.join(",")) };
            let value = match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                other => panic!("{key}: unexpected {other:?}"),
            };
            (key, value)
        })
        .collect()
}

/// A GET (the daemon's operations endpoint): status and body.
#[allow(dead_code)]
pub async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The `queuewatch run` binary, its log (stderr, and stdout should it print
/// anything) collected as it comes.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `queuewatch run --config CONFIG` with the variables `env` set.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(queuewatch_bin());
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("QUEUEWATCH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start queuewatch");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for output in [stdout, stderr] {
            let collected = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let mut log = collected.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Daemon { child, log }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `text`; fails the test if the daemon ends
    /// first or after a minute (only a hang takes that long).
    pub async fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(text) {
            assert!(self.is_running(), "queuewatch ended:\n{}", self.log());
            assert!(Instant::now() < deadline, "no {text:?} in:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("the daemon's status").is_none()
    }

    /// The operations endpoint's base URL (`http://127.0.0.1:<port>`), as
    /// the daemon logged it; waits for the line.
    pub async fn ops_url(&mut self) -> String {
        self.wait_for_log(OPS_LISTENING).await;
        ops_url_in(&self.log())
    }
}

/// What the daemon logs once its operations endpoint listens.
pub const OPS_LISTENING: &str = "Operations endpoint listening.";

/// The operations endpoint's base URL (`http://127.0.0.1:<port>`) in a
/// daemon's log, which holds [`OPS_LISTENING`].
pub fn ops_url_in(log: &str) -> String {
    let line = log.lines().find(|line| line.contains(OPS_LISTENING)).unwrap_or_default();
    let address = line.split_once("address=").map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""));
    format!("http://{}", address.unwrap_or_else(|| panic!("no address in {line:?}")))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
