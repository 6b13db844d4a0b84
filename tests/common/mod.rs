//! Real servers for integration tests.
//!
//! Each test starts its own Mosquitto, InfluxDB 1.x or VictoriaMetrics on free
//! loopback ports, inside its own temporary folder, and the guard kills and
//! reaps the process when it drops. Tests can therefore run in parallel (cargo
//! nextest runs each test in its own process) and leave nothing behind.
//!
//! What must stay true:
//! - A missing server binary is a failure that names the Debian package to
//!   install, never a skipped test.
//! - Every listener binds 127.0.0.1 on a port picked here, never a default
//!   port, so parallel instances cannot collide.
//! - The process is stopped before its temporary folder is removed (the guard
//!   field is declared before the `TempDir`, and fields drop in order).

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tempfile::TempDir;

/// How long a server may take to accept connections after it is spawned.
/// Generous because CI runs many tests on two cores at once.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness and row counts are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A server that exits during startup (typically because another process took
/// its port between `free_port` and its bind) is started again on fresh ports
/// this many times in all.
const START_ATTEMPTS: usize = 3;

/// A port that was free a moment ago on 127.0.0.1. Another process may take it
/// before the caller binds it; the `start` functions below retry on fresh ports
/// when their server exits during startup.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// The `queuewatch` binary that cargo built for this integration test.
pub fn queuewatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_queuewatch"))
}

/// Writes `toml` to `dir/queuewatch.toml` and returns that path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("queuewatch.toml");
    fs::write(&path, toml).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

// ---------------------------------------------------------------------------
// Mosquitto

/// A Mosquitto 2.x broker on `127.0.0.1:port`, anonymous, without persistence,
/// with queues large enough that nothing is dropped silently in tests.
pub struct Mosquitto {
    pub port: u16,
    /// `mqtt://127.0.0.1:PORT`
    pub url: String,
    process: ServerProcess,
    dir: TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let program = find_binary("mosquitto", "/usr/sbin/mosquitto", "mosquitto");
        let dir = temp_dir("mosquitto");
        let config_path = dir.path().join("mosquitto.conf");
        let log_path = dir.path().join("mosquitto.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let config = format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 # The default of 1000 drops further QoS 1 messages for an offline\n\
                 # persistent session silently.\n\
                 max_queued_messages 1000000\n\
                 max_inflight_messages 100\n\
                 log_dest stdout\n\
                 log_timestamp true\n"
            );
            write_file(&config_path, &config);
            let mut process = ServerProcess::new("mosquitto", "mosquitto", program.clone(), log_path.clone());
            process.command_args = vec!["-c".into(), config_path.display().to_string()];
            process.spawn();
            match process.wait_until_ready(|| tcp_accepts(port)) {
                Readiness::Ready => {
                    return Mosquitto { port, url: format!("mqtt://127.0.0.1:{port}"), process, dir };
                }
                Readiness::Exited(status) if attempt < START_ATTEMPTS => {
                    eprintln!("mosquitto exited during startup ({status}); retrying on another port");
                }
                outcome => process.fail_startup(outcome),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Kills the broker (no clean shutdown: clients see the connection drop).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the broker if it runs, then starts it again on the same port with
    /// the same configuration. Its sessions and queues are lost (no persistence).
    pub fn restart(&mut self) {
        self.process.stop();
        self.process.spawn();
        let port = self.port;
        let outcome = self.process.wait_until_ready(|| tcp_accepts(port));
        if outcome != Readiness::Ready {
            self.process.fail_startup(outcome);
        }
    }

    /// What the broker has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------
// InfluxDB 1.x

/// An InfluxDB 1.x server (Debian ships 1.6) with its HTTP API on
/// `127.0.0.1:port`, no authentication, and every optional service off.
pub struct Influx1 {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    process: ServerProcess,
    dir: TempDir,
}

impl Influx1 {
    pub fn start() -> Influx1 {
        let program = find_binary("influxd", "/usr/bin/influxd", "influxdb");
        let dir = temp_dir("influxdb");
        let root = dir.path();
        let config_path = root.join("influxdb.conf");
        let log_path = root.join("influxd.log");
        for attempt in 1..=START_ATTEMPTS {
            let http_port = free_port();
            let rpc_port = free_port();
            // Keys that 1.6 does not know are ignored, so a typo here shows up
            // only as a default (a port collision on 8088, a `_internal` database).
            let config = format!(
                r#"reporting-disabled = true
# The RPC service for backup and restore; it defaults to 8088, which parallel
# tests would fight over.
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[retention]
  enabled = false
"#,
                root = root.display(),
            );
            write_file(&config_path, &config);
            let mut process = ServerProcess::new("influxd", "influxdb", program.clone(), log_path.clone());
            process.command_args = vec!["-config".into(), config_path.display().to_string()];
            process.spawn();
            match process.wait_until_ready(|| http_status(http_port, "/ping") == Some(204)) {
                Readiness::Ready => {
                    return Influx1 {
                        port: http_port,
                        url: format!("http://127.0.0.1:{http_port}"),
                        http: http_client(),
                        process,
                        dir,
                    };
                }
                Readiness::Exited(status) if attempt < START_ATTEMPTS => {
                    eprintln!("influxd exited during startup ({status}); retrying on other ports");
                }
                outcome => process.fail_startup(outcome),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `CREATE DATABASE "name"`; panics unless the server confirms it.
    pub async fn create_database(&self, name: &str) {
        let statement = format!("CREATE DATABASE {}", quote_ident(name));
        let response = self
            .http
            .post(format!("{}/query", self.url))
            .form(&[("q", statement.as_str())])
            .send()
            .await
            .unwrap_or_else(|error| panic!("POST /query {statement}: {error}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success() && !body.contains("\"error\""), "{statement}: HTTP {status}: {body}");
    }

    /// Runs `influxql` against `db` with nanosecond epoch times and returns the
    /// JSON response as the server sent it (statement errors included).
    pub async fn query(&self, db: &str, influxql: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/query", self.url))
            .query(&[("db", db), ("q", influxql), ("epoch", "ns")])
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /query {influxql}: {error}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("{influxql}: HTTP {status}, not JSON ({error}): {body}"))
    }

    /// Runs `influxql` and returns one map per row (column name to value) over
    /// all series of the first statement. Series tags (`GROUP BY *` or
    /// `GROUP BY tag`) are merged into each row. `time` is in nanoseconds.
    /// Panics if the statement failed.
    pub async fn rows(&self, db: &str, influxql: &str) -> Vec<Map<String, Value>> {
        let response = self.query(db, influxql).await;
        match flatten_rows(&response) {
            Ok(rows) => rows,
            Err(error) => panic!("{influxql}: {error}"),
        }
    }

    /// Polls `SELECT * FROM "measurement"` until it returns at least
    /// `min_rows` rows and returns them. Panics with what it last saw when
    /// `timeout` passes first. A missing database or measurement counts as no
    /// rows while polling.
    pub async fn wait_for_rows(
        &self,
        db: &str,
        measurement: &str,
        min_rows: usize,
        timeout: Duration,
    ) -> Vec<Map<String, Value>> {
        let influxql = format!("SELECT * FROM {}", quote_ident(measurement));
        let deadline = Instant::now() + timeout;
        loop {
            let response = self.query(db, &influxql).await;
            let outcome = flatten_rows(&response);
            if let Ok(rows) = &outcome {
                if rows.len() >= min_rows {
                    return rows.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!("waited {timeout:?} for {min_rows} rows in {db}.{measurement}; last answer: {:?}", outcome);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Rows of all series of the first statement result, tags merged in.
fn flatten_rows(response: &Value) -> Result<Vec<Map<String, Value>>, String> {
    if let Some(error) = response.get("error") {
        return Err(format!("request error: {error}"));
    }
    let result = response
        .get("results")
        .and_then(|results| results.get(0))
        .ok_or_else(|| format!("no results in {response}"))?;
    if let Some(error) = result.get("error") {
        return Err(format!("statement error: {error}"));
    }
    let mut rows = Vec::new();
    let empty = Vec::new();
    for series in result.get("series").and_then(Value::as_array).unwrap_or(&empty) {
        let columns: Vec<&str> = series["columns"]
            .as_array()
            .ok_or_else(|| format!("series without columns: {series}"))?
            .iter()
            .map(|column| column.as_str().unwrap_or_default())
            .collect();
        let tags = series.get("tags").and_then(Value::as_object);
        for values in series.get("values").and_then(Value::as_array).unwrap_or(&empty) {
            let mut row = Map::new();
            if let Some(tags) = tags {
                row.extend(tags.iter().map(|(key, value)| (key.clone(), value.clone())));
            }
            let values = values.as_array().ok_or_else(|| format!("row is not an array: {values}"))?;
            row.extend(columns.iter().map(|column| column.to_string()).zip(values.iter().cloned()));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// An InfluxQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------
// VictoriaMetrics

/// A single-node VictoriaMetrics on `127.0.0.1:port`. It accepts InfluxDB line
/// protocol on `/write` and `/api/v2/write`, naming each series
/// `{measurement}_{field}`, keeping numeric fields only, and storing
/// millisecond timestamps. Samples more than about two days in the future or
/// older than the retention (100 years here) are dropped.
pub struct VictoriaMetrics {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    process: ServerProcess,
    dir: TempDir,
}

impl VictoriaMetrics {
    pub fn start() -> VictoriaMetrics {
        let program = find_binary("victoria-metrics", "/usr/bin/victoria-metrics", "victoria-metrics");
        let dir = temp_dir("victoria-metrics");
        let log_path = dir.path().join("victoria-metrics.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let mut process =
                ServerProcess::new("victoria-metrics", "victoria-metrics", program.clone(), log_path.clone());
            process.command_args = vec![
                format!("-httpListenAddr=127.0.0.1:{port}"),
                format!("-storageDataPath={}", dir.path().join("vm").display()),
                "-retentionPeriod=100y".into(),
                "-loggerLevel=WARN".into(),
                // Tests read what they just wrote: no response cache, and no
                // 30 s delay before recent samples show in query results.
                "-search.disableCache".into(),
                "-search.latencyOffset=0s".into(),
            ];
            process.spawn();
            match process.wait_until_ready(|| http_status(port, "/health") == Some(200)) {
                Readiness::Ready => {
                    return VictoriaMetrics {
                        port,
                        url: format!("http://127.0.0.1:{port}"),
                        http: http_client(),
                        process,
                        dir,
                    };
                }
                Readiness::Exited(status) if attempt < START_ATTEMPTS => {
                    eprintln!("victoria-metrics exited during startup ({status}); retrying on another port");
                }
                outcome => process.fail_startup(outcome),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Makes everything ingested so far searchable (`/internal/force_flush`;
    /// otherwise recent samples show up only after about a second).
    pub async fn force_flush(&self) {
        let response = self
            .http
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /internal/force_flush: {error}"));
        assert!(response.status().is_success(), "force_flush: HTTP {}", response.status());
    }

    /// Flushes, then exports every series matching `match_selector` (for
    /// example `{__name__=~"queue_.*"}`) over all time, one JSON object per
    /// series: `{"metric":{"__name__":..,label:..},"values":[..],"timestamps":[ms..]}`,
    /// sorted by their `metric` object for stable comparisons.
    pub async fn export(&self, match_selector: &str) -> Vec<Value> {
        self.force_flush().await;
        let response = self
            .http
            .get(format!("{}/api/v1/export", self.url))
            // `end` defaults to now; allow the two days ahead that ingestion accepts.
            .query(&[("match[]", match_selector), ("start", "0"), ("end", &far_future_end())])
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /api/v1/export {match_selector}: {error}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "export {match_selector}: HTTP {status}: {body}");
        let mut series: Vec<Value> = body
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("export line {line:?}: {error}")))
            .collect();
        series.sort_by_key(|one| one["metric"].to_string());
        series
    }

    /// Polls `export(match_selector)` until at least `min_samples` samples in
    /// all have arrived and returns the series. Panics with what it last saw
    /// when `timeout` passes first.
    pub async fn wait_for_samples(&self, match_selector: &str, min_samples: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let series = self.export(match_selector).await;
            let samples: usize = series.iter().map(|one| one["values"].as_array().map_or(0, Vec::len)).sum();
            if samples >= min_samples {
                return series;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {min_samples} samples matching {match_selector}; last export: {series:?}"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Unix seconds three days from now, as text for an `end` query parameter.
fn far_future_end() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the clock is after 1970");
    (now.as_secs() + 3 * 24 * 3600).to_string()
}

// ---------------------------------------------------------------------------
// Process handling shared by the servers

/// A spawned server whose stdout and stderr go to a log file. Killed and
/// reaped on `stop` and on drop.
struct ServerProcess {
    name: &'static str,
    debian_package: &'static str,
    program: PathBuf,
    command_args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    Exited(std::process::ExitStatus),
    TimedOut,
}

impl ServerProcess {
    fn new(name: &'static str, debian_package: &'static str, program: PathBuf, log_path: PathBuf) -> ServerProcess {
        ServerProcess { name, debian_package, program, command_args: Vec::new(), log_path, child: None }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|error| panic!("open {}: {error}", self.log_path.display()));
        let log_for_stderr = log.try_clone().expect("duplicate the log file handle");
        let child = Command::new(&self.program)
            .args(&self.command_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "start {} {:?}: {error} (install the Debian package `{}`)",
                    self.program.display(),
                    self.command_args,
                    self.debian_package
                )
            });
        self.child = Some(child);
    }

    /// Polls `is_ready` until it holds, the process exits, or the startup
    /// timeout passes.
    fn wait_until_ready(&mut self, mut is_ready: impl FnMut() -> bool) -> Readiness {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let child = self.child.as_mut().expect("wait_until_ready after spawn");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Readiness::Exited(status);
            }
            if is_ready() {
                return Readiness::Ready;
            }
            if Instant::now() >= deadline {
                return Readiness::TimedOut;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn fail_startup(&mut self, outcome: Readiness) -> ! {
        self.stop();
        panic!(
            "{} did not start ({outcome:?} after {STARTUP_TIMEOUT:?} at most): {} {:?}\n--- its log ---\n{}",
            self.name,
            self.program.display(),
            self.command_args,
            self.log()
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means it has already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path)
            .unwrap_or_else(|error| format!("(no log at {}: {error})", self.log_path.display()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server binary at its Debian path, or else the first one on `PATH`.
/// Panics naming the package to install: a test never skips for lack of it.
fn find_binary(name: &str, debian_path: &str, debian_package: &str) -> PathBuf {
    let debian_path = PathBuf::from(debian_path);
    if debian_path.is_file() {
        return debian_path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()));
    match on_path.flatten() {
        Some(path) => path,
        None => panic!(
            "`{name}` not found at {} nor on PATH: install the Debian package `{debian_package}` \
             (apt-get install -y {debian_package}), or run `bash scripts/test.sh`, which installs it",
            debian_path.display()
        ),
    }
}

fn temp_dir(server: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("queuewatch-test-{server}-")).tempdir().expect("create a temporary folder")
}

fn write_file(path: &Path, text: &str) {
    let mut file = File::create(path).unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

fn http_client() -> reqwest::Client {
    // No proxy: a CI environment's HTTP_PROXY must not capture loopback requests.
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("build an HTTP client")
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).is_ok()
}

/// The status code of `GET path` on 127.0.0.1:port, or `None` if nothing
/// answers. Plain HTTP/1.0 over std, so `start` needs no async runtime.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(_) => return None,
        }
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    let status_line = std::str::from_utf8(&head[..filled]).ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// MQTT helpers shared by the daemon tests.

/// Creates a persistent session (`clean_session = false`) for `client_id`
/// subscribed to `filter`, then disconnects: from now on the broker queues
/// what is published for that client, whether or not the daemon has
/// connected yet. This is also how a test knows the subscription is in place
/// before it publishes.
pub async fn create_session(mqtt: &Mosquitto, client_id: &str, filter: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", mqtt.port);
    options.set_clean_session(false);
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("queue SUBSCRIBE");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no SUBACK from the broker");
        if let Ok(Event::Incoming(Packet::SubAck(_))) = event_loop.poll().await {
            break;
        }
    }
    client.disconnect().await.expect("queue DISCONNECT");
    let _ = tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await;
}
