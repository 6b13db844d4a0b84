//! The servers of the scenarios that go through the broker: Mosquitto and
//! InfluxDB 1.x from `queuewatch-servers` (free loopback ports, a temporary
//! folder each), and `queuewatch run` against them, with its config and log in
//! a temporary folder of its own. Everything is killed and every folder
//! removed when [`Servers`] drops, whether the scenario succeeds, fails or is
//! interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use queuewatch_servers::{
    quote_ident, temp_dir, try_create_session, Influx1, InfluxClient, Mosquitto, MosquittoOptions, ServerProcess,
    TempDir, STARTUP_TIMEOUT,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use queuewatch::config::Config;

use crate::measure::{cpu_seconds_of, CpuSample};

#[derive(Args)]
pub struct DaemonArgs {
    /// The `queuewatch` binary (default: next to this one).
    #[arg(long)]
    queuewatch: Option<PathBuf>,
    /// Mosquitto's `max_inflight_messages`: QoS 1 messages sent to the daemon awaiting its PUBACK
    /// (the shipped `deploy/mosquitto/queuewatch.conf` sets 1000: acknowledgements wait for the
    /// journal's commit, so a small window leaves the broker idle while it runs).
    #[arg(long, default_value_t = 1000)]
    pub broker_inflight: u32,
    /// Copy the daemon's, Mosquitto's and InfluxDB's logs into this folder when the scenario ends.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<PathBuf>,
    /// A daemon setting other than its default, `section.key=VALUE` with the value in TOML
    /// (`--set alerts.enabled=false --set 'tracking.snapshot_interval="1h"'`). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The daemon's MQTT client id (its persistent session) and InfluxDB database.
pub const DAEMON_CLIENT_ID: &str = "queuewatch-load";
const DATABASE: &str = "queuewatch";
/// Mosquitto's queue for the daemon's session: the whole backlog of a run must fit.
const BROKER_MAX_QUEUED_MESSAGES: u64 = 10_000_000;

/// The daemon's config: defaults but for where the servers are, and the
/// `--set` overrides (`section.key=value`, the value in TOML).
fn daemon_config_text(
    mqtt_url: &str,
    influx_url: &str,
    state_dir: &Path,
    overrides: &[String],
) -> anyhow::Result<String> {
    let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    sections.entry("storage").or_default().push(format!("data_dir = {:?}", state_dir.display().to_string()));
    sections
        .entry("mqtt")
        .or_default()
        .extend([format!("url = \"{mqtt_url}\""), format!("client_id = \"{DAEMON_CLIENT_ID}\"")]);
    sections.entry("influxdb").or_default().extend([
        "api = \"v1\"".to_string(),
        format!("url = \"{influx_url}\""),
        format!("database = \"{DATABASE}\""),
    ]);
    // The operations endpoint on a free port, so that runs never collide on 9108.
    if !overrides.iter().any(|setting| setting.trim_start().starts_with("http.listen")) {
        sections.entry("http").or_default().push("listen = \"127.0.0.1:0\"".to_string());
    }
    for setting in overrides {
        let (key, value) = setting.split_once('=').with_context(|| format!("--set {setting}: expected KEY=VALUE"))?;
        let (section, key) =
            key.trim().rsplit_once('.').with_context(|| format!("--set {setting}: expected section.key"))?;
        sections.entry(section).or_default().push(format!("{key} = {}", value.trim()));
    }
    let mut text = String::from("# Written by queuewatch-load.\n");
    for (section, lines) in sections {
        let _ = writeln!(text, "[{section}]\n{}", lines.join("\n"));
    }
    Ok(text)
}

/// The daemon's config as the daemon will read it (with placeholder addresses).
pub fn daemon_config(overrides: &[String]) -> anyhow::Result<Config> {
    let text = daemon_config_text("mqtt://127.0.0.1:1", "http://127.0.0.1:1", Path::new("/nonexistent"), overrides)?;
    Config::parse(&text).map_err(|problems| anyhow::anyhow!("daemon config: {}\n{text}", problems.join("; ")))
}

/// Where Mosquitto keeps its sessions and queues.
#[derive(Clone, Copy)]
pub enum BrokerStore {
    /// In memory only (`persistence false`): enough when the daemon is connected throughout.
    Memory,
    /// `persistence true` in the scenario's folder, as a production broker
    /// holding a backlog for an absent subscriber runs; it saves on shutdown
    /// (and every 30 min), so saving costs nothing during a run. It also
    /// publishes `$SYS` every second, for [`Servers::broker_stored_messages`].
    Persistent,
}

/// Runs a scenario that starts servers, stopping early (and so cleaning up)
/// on SIGINT or SIGTERM.
pub fn with_servers(scenario: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime()?.block_on(interruptible(scenario))
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("the Tokio runtime")
}

/// `scenario`, or an error when a signal comes first; either way its servers
/// are dropped (killed, their folder removed) before this returns.
pub async fn interruptible<T>(scenario: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        outcome = scenario => outcome,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); servers stopped"),
        _ = terminate.recv() => bail!("interrupted (SIGTERM); servers stopped"),
    }
}

/// Mosquitto, InfluxDB and (once started) the daemon. Dropping it kills the
/// daemon, then the servers (each removing its folder), then removes the
/// daemon's folder (fields drop in declaration order).
pub struct Servers {
    daemon: Option<ServerProcess>,
    /// Daemons killed so far (each restart logs to a file of its own).
    starts: usize,
    mosquitto: Mosquitto,
    influxd: Influx1,
    pub influx: Influx,
    keep_logs: Option<PathBuf>,
    dir: TempDir,
}

impl Drop for Servers {
    /// Keeps the logs if asked (the processes and the folders go after this).
    fn drop(&mut self) {
        let Some(keep) = &self.keep_logs else { return };
        if let Err(error) = fs::create_dir_all(keep) {
            eprintln!("keep logs in {}: {error}", keep.display());
            return;
        }
        let kept = [
            (self.dir.path(), "queuewatch.log"),
            (self.dir.path(), "queuewatch.toml"),
            (self.mosquitto.dir(), "mosquitto.log"),
            (self.mosquitto.dir(), "mosquitto.conf"),
            (self.influxd.dir(), "influxd.log"),
        ];
        for (dir, name) in kept {
            let _ = fs::copy(dir.join(name), keep.join(name));
        }
        // Each start after a kill logs to a file of its own.
        for restart in 1..=self.starts {
            let name = format!("queuewatch-restart-{restart}.log");
            let _ = fs::copy(self.dir.path().join(&name), keep.join(name));
        }
    }
}

impl Servers {
    /// Mosquitto without persistence, and InfluxDB.
    pub async fn start(scenario: &str, options: &DaemonArgs) -> anyhow::Result<Servers> {
        Servers::start_with(scenario, options, BrokerStore::Memory).await
    }

    pub async fn start_with(scenario: &str, options: &DaemonArgs, store: BrokerStore) -> anyhow::Result<Servers> {
        let dir = temp_dir(&format!("load-{scenario}"))?;
        let broker_options = MosquittoOptions {
            max_queued_messages: BROKER_MAX_QUEUED_MESSAGES,
            max_inflight_messages: options.broker_inflight,
        };
        // Starting waits for each server on this thread.
        let (mosquitto, influxd) = tokio::task::block_in_place(|| {
            let mosquitto = match store {
                BrokerStore::Memory => Mosquitto::try_start(&broker_options)?,
                BrokerStore::Persistent => Mosquitto::try_start_persistent(&broker_options)?,
            };
            anyhow::Ok((mosquitto, Influx1::try_start()?))
        })?;
        let influx = Influx { client: influxd.client() };
        influx.client.create_database(DATABASE).await?;
        Ok(Servers { daemon: None, starts: 0, mosquitto, influxd, influx, keep_logs: options.keep_logs.clone(), dir })
    }

    pub fn influx_url(&self) -> String {
        self.influxd.url.clone()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.mosquitto.port
    }

    /// The scenario's own temporary folder (removed when the servers drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where `--keep-logs` asked for the logs to be copied, if it did.
    pub fn keep_logs(&self) -> Option<&Path> {
        self.keep_logs.as_deref()
    }

    /// Creates the daemon's persistent session: from now on the broker
    /// queues what is published for the daemon, running or not.
    pub async fn create_daemon_session(&self) -> anyhow::Result<()> {
        try_create_session(self.mosquitto.port, DAEMON_CLIENT_ID, "queue/+/events").await?;
        Ok(())
    }

    /// Creates the daemon's persistent session first (so nothing published
    /// from now on is lost), then starts `queuewatch run` and waits until it
    /// is connected.
    pub async fn start_daemon(&mut self, options: &DaemonArgs) -> anyhow::Result<()> {
        self.create_daemon_session().await?;
        self.spawn_daemon(options).await
    }

    /// Kills the daemon with SIGKILL (no shutdown at all) and returns the CPU
    /// seconds it had used, which a later sample no longer sees.
    pub fn kill_daemon(&mut self) -> f64 {
        let used = self.daemon_pid().and_then(|pid| cpu_seconds_of(&pid.to_string())).unwrap_or(0.0);
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
        self.starts += 1;
        used
    }

    /// The daemon's log line saying what its state recovery did, if it logged one.
    pub fn daemon_recovery_line(&self) -> Option<String> {
        let log = self.daemon.as_ref()?.log();
        let line = log.lines().find(|line| line.contains("State recovered."))?;
        Some(line.split_once("State recovered.").map_or(line, |(_, rest)| rest).trim().to_string())
    }

    /// Starts `queuewatch run` on the session created before (which must not
    /// be touched again: a client resuming it would be sent its queue) and
    /// waits until it is connected.
    pub async fn spawn_daemon(&mut self, options: &DaemonArgs) -> anyhow::Result<()> {
        self.launch_daemon(options)?;
        self.wait_until_connected().await
    }

    /// Starts `queuewatch run` on the session created before and returns at
    /// once (its recovery and connection still to come).
    pub fn launch_daemon(&mut self, options: &DaemonArgs) -> anyhow::Result<()> {
        let binary = match &options.queuewatch {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("locate this binary")?.with_file_name("queuewatch"),
        };
        ensure!(
            binary.is_file(),
            "{} not found: build it (cargo build --release) or pass --queuewatch",
            binary.display()
        );
        let config_path = self.dir.path().join("queuewatch.toml");
        fs::write(
            &config_path,
            daemon_config_text(&self.mosquitto.url, &self.influxd.url, &self.daemon_data_dir(), &options.set)?,
        )?;
        // A start after a kill logs to a file of its own, so that its lines are not the killed one's.
        let log_name = match self.starts {
            0 => "queuewatch.log".to_string(),
            restarts => format!("queuewatch-restart-{restarts}.log"),
        };
        let mut daemon = ServerProcess::new("queuewatch", binary, self.dir.path().join(log_name))
            .args(["run".to_string(), "--config".to_string(), config_path.display().to_string()])
            .env("QUEUEWATCH_LOG", "info");
        daemon.spawn()?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Waits until the running daemon is connected to the broker.
    pub async fn wait_until_connected(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let daemon = self.daemon.as_mut().context("no daemon running")?;
            if daemon.log().contains("Connected to the MQTT broker.") {
                return Ok(());
            }
            if let Some(status) = daemon.exited() {
                bail!("queuewatch exited during startup ({status}):\n{}", daemon.log());
            }
            ensure!(Instant::now() < deadline, "queuewatch did not connect in {STARTUP_TIMEOUT:?}:\n{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the running daemon has logged so far.
    pub fn daemon_log(&self) -> Option<String> {
        self.daemon.as_ref().map(ServerProcess::log)
    }

    /// The daemon's `storage.data_dir`.
    pub fn daemon_data_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The messages Mosquitto holds in its store (`$SYS/broker/store/messages/count`:
    /// those queued for sessions, retained ones included), as it next reports
    /// them; needs [`BrokerStore::Persistent`], whose broker reports every second.
    pub async fn broker_stored_messages(&self) -> anyhow::Result<u64> {
        const TOPIC: &str = "$SYS/broker/store/messages/count";
        let mut options = MqttOptions::new("queuewatch-load-sys", "127.0.0.1", self.mosquitto.port);
        options.set_clean_session(true);
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        client.subscribe(TOPIC, QoS::AtMostOnce).await.context("subscribe to the broker's $SYS")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = loop {
            ensure!(Instant::now() < deadline, "the broker did not report {TOPIC} within 10 s");
            match tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(publish)))) if publish.topic == TOPIC => {
                    let text = String::from_utf8_lossy(&publish.payload).to_string();
                    break text.trim().parse::<u64>().with_context(|| format!("{TOPIC}: {text:?}"))?;
                }
                Ok(Err(error)) => bail!("asking the broker for {TOPIC}: {error}"),
                _ => {}
            }
        };
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), event_loop.poll()).await;
        Ok(count)
    }

    /// The broker's own complaints (dropped messages, errors, connections
    /// that ended without a DISCONNECT), from its log.
    pub fn broker_warnings(&self) -> Vec<String> {
        let complaints = ["dropped", "Warning", "Error", "error", "timeout", "closed its connection"];
        self.mosquitto
            .log()
            .lines()
            .filter(|line| complaints.iter().any(|complaint| line.contains(complaint)))
            .filter(|line| !line.contains("should not be run as root"))
            // The readiness probe connects and closes without a word.
            .filter(|line| !line.contains("Client <unknown> closed its connection"))
            .map(str::to_string)
            .collect()
    }

    /// CPU seconds used so far by each process of the scenario.
    pub fn cpu(&self) -> CpuSample {
        let mut seconds = Vec::new();
        let processes =
            [("queuewatch", self.daemon_pid()), ("influxd", self.influxd.pid()), ("mosquitto", self.mosquitto.pid())];
        for (name, pid) in processes {
            if let Some(used) = pid.and_then(|pid| cpu_seconds_of(&pid.to_string())) {
                seconds.push((name, used));
            }
        }
        if let Some(used) = cpu_seconds_of("self") {
            seconds.push(("queuewatch-load (publisher, poller)", used));
        }
        CpuSample { at: Instant::now(), seconds }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(ServerProcess::pid)
    }

    pub fn ensure_daemon_alive(&mut self) -> anyhow::Result<()> {
        if let Some(daemon) = &mut self.daemon {
            if let Some(status) = daemon.exited() {
                bail!("queuewatch exited ({status}):\n{}", daemon.log());
            }
        }
        Ok(())
    }

    /// SIGTERM, wait for the exit (30 s at most), and return the daemon's
    /// closing summary line.
    pub async fn stop_daemon(&mut self) -> anyhow::Result<String> {
        let mut daemon = self.daemon.take().context("no daemon running")?;
        let pid = daemon.pid().context("the daemon has been reaped")?;
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = daemon.exited() {
                break status;
            }
            ensure!(Instant::now() < deadline, "queuewatch did not stop within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = daemon.log();
        let summary = log
            .lines()
            .rfind(|line| line.contains("queuewatch stopped."))
            .map(|line| line.split_once("queuewatch stopped.").map_or(line, |(_, rest)| rest).trim().to_string())
            .unwrap_or_else(|| "(no summary line)".into());
        let problems: Vec<&str> =
            log.lines().filter(|line| line.contains(" ERROR ") || line.contains(" WARN ")).collect();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for line in &problems {
            // `<time>  WARN <target>: <message> <fields>`: counted by target and message.
            let message =
                line.split_once(" WARN ").or_else(|| line.split_once(" ERROR ")).map_or(*line, |(_, rest)| rest);
            let message = message.split_once('.').map_or(message, |(head, _)| head);
            *kinds.entry(message.trim()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(message, count)| format!("{count} × {message}.")).collect();
        Ok(format!(
            "{status}; {summary}; {} WARN/ERROR log lines{}{}",
            problems.len(),
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", ")
        ))
    }
}

/// The queries the scenarios ask of InfluxDB, in the daemon's database.
#[derive(Clone)]
pub struct Influx {
    client: InfluxClient,
}

impl Influx {
    /// The response to `influxql`; an error when any statement failed.
    async fn query(&self, influxql: &str) -> anyhow::Result<Value> {
        let value = self.client.query(DATABASE, influxql).await?;
        let statement_error = value
            .get("results")
            .and_then(Value::as_array)
            .and_then(|results| results.iter().find_map(|result| result.get("error")));
        if let Some(error) = statement_error.or_else(|| value.get("error")) {
            bail!("{influxql}: {error}");
        }
        Ok(value)
    }

    pub async fn count_ticket_points(&self) -> anyhow::Result<u64> {
        Ok(self.ticket_counts().await?.0)
    }

    /// (all `ticket` points, those of the e2e sentinels (service `load`)).
    pub async fn ticket_counts(&self) -> anyhow::Result<(u64, u64)> {
        let value = self
            .query(r#"SELECT COUNT("ticket") FROM "ticket"; SELECT COUNT("ticket") FROM "ticket" WHERE "service" = 'load'"#)
            .await?;
        let count = |statement: usize| {
            value.pointer(&format!("/results/{statement}/series/0/values/0/1")).and_then(Value::as_u64).unwrap_or(0)
        };
        Ok((count(0), count(1)))
    }

    /// `SELECT COUNT(field) FROM measurement` for each (measurement, field),
    /// in one request; 0 for a measurement not written yet.
    pub async fn counts(&self, measurement_fields: &[(String, String)]) -> anyhow::Result<Vec<u64>> {
        let influxql: Vec<String> = measurement_fields
            .iter()
            .map(|(measurement, field)| {
                format!("SELECT COUNT({}) FROM {}", quote_ident(field), quote_ident(measurement))
            })
            .collect();
        let value = self.query(&influxql.join("; ")).await?;
        Ok((0..measurement_fields.len())
            .map(|statement| {
                value.pointer(&format!("/results/{statement}/series/0/values/0/1")).and_then(Value::as_u64).unwrap_or(0)
            })
            .collect())
    }

    /// The values of tag `key` in any measurement.
    pub async fn tag_values(&self, key: &str) -> anyhow::Result<BTreeSet<String>> {
        let value = self.query(&format!("SHOW TAG VALUES WITH KEY = {}", quote_ident(key))).await?;
        let empty = Vec::new();
        let series = value.pointer("/results/0/series").and_then(Value::as_array).unwrap_or(&empty);
        Ok(series
            .iter()
            .flat_map(|one| one.get("values").and_then(Value::as_array).unwrap_or(&empty))
            .filter_map(|row| row.get(1).and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Every point of `SELECT * FROM ... GROUP BY *` style queries: tags
    /// (empty ones left out) apart from fields (null ones left out).
    pub async fn points(&self, influxql: &str) -> anyhow::Result<Vec<StoredPoint>> {
        let value = self.query(influxql).await?;
        let mut points = Vec::new();
        let empty = Vec::new();
        let series = value.pointer("/results/0/series").and_then(Value::as_array).unwrap_or(&empty);
        for one in series {
            let measurement = one.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut tags = BTreeMap::new();
            if let Some(series_tags) = one.get("tags").and_then(Value::as_object) {
                for (key, tag) in series_tags {
                    if let Some(tag) = tag.as_str().filter(|tag| !tag.is_empty()) {
                        tags.insert(key.clone(), tag.to_string());
                    }
                }
            }
            let columns: Vec<&str> = one
                .get("columns")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .map(|column| column.as_str().unwrap_or_default())
                .collect();
            for row in one.get("values").and_then(Value::as_array).unwrap_or(&empty) {
                let row = row.as_array().unwrap_or(&empty);
                let mut point = StoredPoint {
                    measurement: measurement.clone(),
                    tags: tags.clone(),
                    fields: BTreeMap::new(),
                    time_ns: 0,
                };
                for (column, cell) in columns.iter().zip(row) {
                    if *column == "time" {
                        point.time_ns = cell.as_i64().with_context(|| format!("{influxql}: time {cell}"))?;
                    } else if !cell.is_null() {
                        point.fields.insert(column.to_string(), cell.clone());
                    }
                }
                points.push(point);
            }
        }
        Ok(points)
    }

    /// Rows of a two-column query (besides time), as strings.
    pub async fn rows(&self, influxql: &str) -> anyhow::Result<Vec<(String, String)>> {
        let value = self.query(influxql).await?;
        let mut rows = Vec::new();
        let empty = Vec::new();
        let series = value.pointer("/results/0/series").and_then(Value::as_array).unwrap_or(&empty);
        for one in series {
            for row in one.get("values").and_then(Value::as_array).unwrap_or(&empty) {
                let column = |index: usize| row.get(index).and_then(Value::as_str).unwrap_or_default().to_string();
                rows.push((column(1), column(2)));
            }
        }
        Ok(rows)
    }
}

/// A point as InfluxDB returns it.
pub struct StoredPoint {
    pub measurement: String,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, Value>,
    pub time_ns: i64,
}

/// The daemon's settings in one phrase.
pub fn settings_text(overrides: &[String]) -> String {
    if overrides.is_empty() {
        "api v1, every other setting at its default".into()
    } else {
        format!("api v1, {}, every other setting at its default", overrides.join(", "))
    }
}

/// What the broker's log says about dropped messages and errors.
pub fn broker_summary(warnings: &[String]) -> String {
    match warnings {
        [] => "no dropped messages, warnings, errors or broken connections".into(),
        [first, ..] => format!("{} complaint lines, the first: {first}", warnings.len()),
    }
}
