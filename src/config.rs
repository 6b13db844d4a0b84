//! The TOML configuration.
//!
//! Owns every key operators write. [`Config::parse`] reports every problem
//! at once, each naming the dotted key, so an operator fixes a config in one
//! pass. Unknown keys are errors: a typo must never silently fall back to a
//! default.
//!
//! What must stay true: this module reads values only, and imports nothing of
//! the adapters (a leaf that they read). The files a config names (TLS PEM,
//! the staff key, secret files' modes) are checked by `crate::preflight`, which
//! loads a config file for the commands: [`Config::parse_values`] hands it
//! each [`FileCheck`] at its place among the problems, so that all of them are
//! reported at once, in the order of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ids::{validate_ident, OfficeId, ServiceId};
use crate::time::{duration_ms, Millis};

/// The longest duration any key accepts. Every point's time is an event time
/// plus at most a duration or two (an expiry is the last event plus
/// `max_ticket_age` plus the window; a breach is a deadline), and event times
/// lie between 1970 and the wall clock plus `max_future_skew`, so a year
/// keeps every point far inside InfluxDB's range (1677-09-21 to 2262-04-11).
/// No queue needs a longer setting: a longer value is a typo.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The core counts in whole milliseconds: a shorter duration would be zero.
const MILLISECOND: Duration = Duration::from_millis(1);

/// Gauges and silence are judged on the daemon's ticks (every 200 ms); an
/// interval below a second would be a row per office on every tick, and a
/// silence shorter than a second is no silence.
const SECOND: Duration = Duration::from_secs(1);

/// Longer than any supervisor waits before it kills the process.
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);

/// MQTT carries the keep-alive in a 16-bit count of seconds.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(u16::MAX as u64);

/// 1970-01-01T00:00:00Z: `tracking.min_timestamp` may not be earlier (no
/// device sends a real time before it; a negative epoch is a clock never set).
const UNIX_EPOCH: Millis = Millis(0);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub influxdb: InfluxConfig,
    pub tracking: TrackingConfig,
    pub sla: SlaConfig,
    pub offices: BTreeMap<OfficeId, OfficeConfig>,
    /// `offices.only_configured`: events of offices not in `offices` are
    /// rejected as `unknown_office`.
    pub only_configured: bool,
    pub limits: LimitsConfig,
    pub alerts: AlertsConfig,
    pub storage: StorageConfig,
    pub http: HttpConfig,
    pub privacy: PrivacyConfig,
    /// `shutdown_timeout`: from SIGTERM (or SIGINT) to exit, every phase of
    /// the stop included (see `daemon::ShutdownBudget`).
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt: MqttConfig::default(),
            influxdb: InfluxConfig::default(),
            tracking: TrackingConfig::default(),
            sla: SlaConfig::default(),
            offices: BTreeMap::new(),
            only_configured: false,
            limits: LimitsConfig::default(),
            alerts: AlertsConfig::default(),
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            privacy: PrivacyConfig::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Docker stops a container 10 s after SIGTERM and systemd's unit allows
/// more; 8 s leaves room for the process to exit on its own.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

/// `[http]`: the operations endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `listen`: the address to serve on; `None` (an empty string) turns the endpoint off.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9108))) }
    }
}

/// `[privacy]`: what becomes of staff ids (see `crate::privacy`). Holds
/// where the hash key is, never the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacyConfig {
    pub staff: StaffMode,
    /// The environment variable that holds the hash key.
    pub staff_key_env: Option<String>,
    /// The file that holds the hash key (a secret file: see `secret`).
    pub staff_key_file: Option<PathBuf>,
}

/// `privacy.staff`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StaffMode {
    /// As sent: what queuewatch always did, so an upgrade changes no series.
    #[default]
    Keep,
    /// A keyed hash (`s-` and 16 hex digits), the same for the same key and id.
    Hash,
    /// Removed, as if never sent.
    Drop,
}

/// `[storage]`: where `run` keeps what it has acknowledged (see `crate::storage`).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// The state folder: lock file, journal, snapshots.
    pub data_dir: std::path::PathBuf,
    /// How often the tracker's state is snapshotted (and the journal cut behind it).
    pub checkpoint_interval: Duration,
    /// `false`: no journal, messages acknowledged once taken in (a crash loses what was held).
    pub journal: bool,
    /// Journal bytes after which a checkpoint is taken before its interval
    /// is up: a flood cannot grow the journal (nor recovery) without bound.
    pub journal_segment_bytes: u64,
    /// The most the point spool (`data_dir/spool`) holds while InfluxDB is
    /// unavailable; when full, MQTT messages are no longer acknowledged.
    /// 0: no spool (points wait in memory, as `replay` does).
    pub spool_max_bytes: u64,
    /// The most the dead-letter file (`data_dir/dead-letters.lp`) holds;
    /// refused lines beyond it are dropped and counted. 0: none kept.
    pub dead_letter_max_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: "/var/lib/queuewatch".into(),
            checkpoint_interval: Duration::from_secs(60),
            journal: true,
            journal_segment_bytes: 64 << 20,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
        }
    }
}

/// `[limits]`: what one office's publishers may make the daemon remember,
/// so that a buggy or hostile publisher hurts only its own office. Each is
/// a count of things in memory at once (names and tickets no longer in use
/// are forgotten, see `tracker`); 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Offices not named in the config, at once (configured ones never count).
    pub max_offices: usize,
    pub max_services_per_office: usize,
    pub max_counters_per_office: usize,
    pub max_staff_per_office: usize,
    pub max_open_tickets_per_office: usize,
    /// Closed tickets and dedup keys of closed segments (and of events that
    /// belong to no open segment, or come after an open segment's first
    /// `tracker::SEGMENT_KEYS_KEPT` keys) remembered for `tracking.dedup_horizon`;
    /// beyond it the least recently closed are forgotten early.
    pub max_remembered_per_office: usize,
    /// Sustained messages per second of the office's clock.
    pub max_messages_per_second_per_office: usize,
    /// Messages an office may send at once beyond the sustained rate.
    pub max_burst_per_office: usize,
}

impl Default for LimitsConfig {
    /// Room for 1,000 offices of 1,000 tickets a day many times over (see
    /// docs/configuration.md, "Limits").
    fn default() -> Self {
        LimitsConfig {
            max_offices: 5_000,
            max_services_per_office: 200,
            max_counters_per_office: 500,
            max_staff_per_office: 2_000,
            max_open_tickets_per_office: 10_000,
            // A busy hall's whole day, ten times: 1,000 tickets and ~6
            // events of 2 keys each, 13,000 a day (docs/configuration.md, "Limits").
            max_remembered_per_office: 130_000,
            max_messages_per_second_per_office: 200,
            max_burst_per_office: 20_000,
        }
    }
}

/// `storage.spool_max_bytes` when not given: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// `storage.dead_letter_max_bytes` when not given: 256 MiB, over a million
/// refused lines; past it an office sending refused lines at its full rate
/// fills no more of the state disk.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 256 << 20;

/// `[offices.<id>]`: what is known about an office beyond its events.
#[derive(Debug, Clone, PartialEq)]
pub struct OfficeConfig {
    pub name: Option<String>,
    /// Tag added to every point of the office, for roll-ups by region.
    pub region: Option<String>,
    pub timezone: chrono_tz::Tz,
    /// Opening hours as minute-of-day ranges `[start, end)`, local time.
    pub hours: Vec<(u32, u32)>,
    /// Open weekdays, Monday first.
    pub days: [bool; 7],
    pub sla: OfficeSla,
}

impl Default for OfficeConfig {
    fn default() -> Self {
        OfficeConfig {
            name: None,
            region: None,
            timezone: chrono_tz::Asia::Jakarta,
            hours: Vec::new(),
            days: [true; 7],
            sla: OfficeSla::default(),
        }
    }
}

impl OfficeConfig {
    /// Whether opening hours are configured (only then can an office be `silent`).
    pub fn has_hours(&self) -> bool {
        !self.hours.is_empty()
    }

    /// Whether the office is open at `at`, in its own time zone.
    pub fn is_open_at(&self, at: crate::time::Millis) -> bool {
        use chrono::{Datelike, TimeZone, Timelike};
        let Some(local) = self.timezone.timestamp_millis_opt(at.0).single() else { return false };
        let weekday = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        self.days[weekday] && self.hours.iter().any(|(start, end)| (*start..*end).contains(&minute))
    }
}

/// `[alerts]`: MQTT messages for breaches and rejections (`run` only).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// `{office}` is replaced by the office id.
    pub topic: String,
    pub rejects_topic: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            topic: "queue/{office}/alerts".into(),
            rejects_topic: "queue/{office}/rejected".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// As written, `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topics: Vec<String>,
    pub max_payload_bytes: usize,
    pub keep_alive: Duration,
    /// The MQTT user name; without it queuewatch connects anonymously.
    pub username: Option<String>,
    /// The name of the environment variable that holds the password.
    pub password_env: Option<String>,
    /// A file that holds the password (one trailing newline is ignored),
    /// read again on every connection attempt.
    pub password_file: Option<String>,
    /// `Some` for an `mqtts://` URL: TLS, with these files.
    pub tls: Option<MqttTlsConfig>,
}

/// `mqtt.ca_file`, `mqtt.client_cert_file` and `mqtt.client_key_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTlsConfig {
    /// PEM certificates the broker's must chain to; `None`: the platform's trust store.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key, for brokers that require one (mutual TLS).
    pub client_auth: Option<ClientAuthFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthFiles {
    /// PEM: the client's certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: its private key (a secret file: see `secret`).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfluxApi {
    /// `/write`, InfluxDB 1.x.
    V1,
    /// `/api/v2/write`, InfluxDB 1.8+, 2.x, 3.x and compatible servers.
    V2,
    /// `/api/v3/write_lp`, InfluxDB 3: a batch's good lines are stored and
    /// each refused one named, so refused lines cost no halving.
    V3,
}

/// How request bodies to InfluxDB are encoded (`influxdb.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, unless the URL names this machine (`localhost`, a loopback
    /// address), where compressing costs both ends CPU and saves nothing.
    Auto,
    Gzip,
    None,
}

impl Compression {
    const ALL: [Compression; 3] = [Compression::Auto, Compression::Gzip, Compression::None];

    /// Its value of `influxdb.compression`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Auto => "auto",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InfluxConfig {
    pub api: InfluxApi,
    pub url: String,
    // v2
    pub org: String,
    pub bucket: String,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    // v1
    pub database: String,
    pub retention_policy: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    /// A file that holds the password (one trailing newline is ignored),
    /// read again after InfluxDB answers 401 or 403.
    pub password_file: Option<String>,
    // both
    /// PEM CA certificate(s) an `https://` URL's certificate must chain to;
    /// without it, the platform's trust store.
    pub ca_file: Option<PathBuf>,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub request_timeout: Duration,
    pub max_backoff: Duration,
    pub compression: Compression,
}

impl InfluxConfig {
    /// Whether bodies are gzipped: `compression`, with `auto` decided by the URL's host.
    pub fn gzip(&self) -> bool {
        match self.compression {
            Compression::Gzip => true,
            Compression::None => false,
            Compression::Auto => !reqwest::Url::parse(&self.url).is_ok_and(|url| is_this_machine(&url)),
        }
    }
}

/// `localhost` or a loopback address: a server on this machine.
fn is_this_machine(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingConfig {
    pub reorder_window: Duration,
    pub max_ticket_age: Duration,
    pub dedup_horizon: Duration,
    pub max_future_skew: Duration,
    pub snapshot_interval: Duration,
    pub gauge_idle_after: Duration,
    pub silence_after: Duration,
    /// How long after an office's day closes (the end of its last range of
    /// opening hours that day) the segments still open are closed:
    /// `abandoned` if never called, else `expired`.
    pub close_grace: Duration,
    /// Whether `queue` and `office` gauge rows are written at all (a
    /// backfill of months may do without them).
    pub gauges: bool,
    /// A `queue`/`office` row is written at least this often while something
    /// waits (a multiple of `snapshot_interval`), keeping `oldest_wait_s` fresh.
    pub gauge_keepalive: Duration,
    /// Event timestamps must be strictly after this instant (devices whose
    /// clock was never set send 0001-01-01, 1970 or 2000-01-01).
    pub min_timestamp: Millis,
    /// What office clocks follow: the wall clock (`run`) or event time (the demo).
    pub clock: ClockMode,
}

/// `tracking.clock`: whether an office clock may run ahead of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// An office clock never runs ahead of the real wall clock: an event
    /// stamped ahead of its arrival waits in the reorder buffer without
    /// dragging the clock (counted as `clock_ahead`).
    #[default]
    Wall,
    /// An office clock follows its newest event, however far ahead (the demo
    /// compresses time on purpose).
    Event,
}

impl ClockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::Wall => "wall",
            ClockMode::Event => "event",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlaConfig {
    pub wait_target: Duration,
    pub service_target: Duration,
    /// `idle` breaches are off unless set.
    pub idle_target: Option<Duration>,
    pub services: BTreeMap<ServiceId, ServiceSla>,
}

/// `[offices.<id>.sla]`: the same keys as `[sla]`, each overriding it for one office.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OfficeSla {
    pub wait_target: Option<Duration>,
    pub service_target: Option<Duration>,
    pub idle_target: Option<Duration>,
    pub services: BTreeMap<ServiceId, ServiceSla>,
}

/// Per-service overrides; `None` falls back to the `[sla]` default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceSla {
    pub wait_target: Option<Duration>,
    pub service_target: Option<Duration>,
}

/// The targets in force for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub wait_ms: i64,
    pub service_ms: i64,
}

impl SlaConfig {
    /// The targets for `service`, at an office with `office` overrides if any.
    /// Most specific first: the office's service table, the office's own
    /// defaults, the global service table, the global defaults. An office
    /// that sets `wait_target` thus sets it for all its services unless it
    /// names a service itself.
    pub fn targets_for(&self, office: Option<&OfficeSla>, service: &ServiceId) -> Targets {
        let office_service = office.and_then(|office| office.services.get(service)).copied().unwrap_or_default();
        let global_service = self.services.get(service).copied().unwrap_or_default();
        let wait = office_service
            .wait_target
            .or(office.and_then(|office| office.wait_target))
            .or(global_service.wait_target)
            .unwrap_or(self.wait_target);
        let service_target = office_service
            .service_target
            .or(office.and_then(|office| office.service_target))
            .or(global_service.service_target)
            .unwrap_or(self.service_target);
        Targets { wait_ms: duration_ms(wait), service_ms: duration_ms(service_target) }
    }

    /// The idle target at an office, if idle breaches are on there.
    pub fn idle_target_ms(&self, office: Option<&OfficeSla>) -> Option<i64> {
        office.and_then(|office| office.idle_target).or(self.idle_target).map(duration_ms)
    }
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            reorder_window: Duration::from_secs(10),
            max_ticket_age: Duration::from_secs(12 * 3600),
            dedup_horizon: Duration::from_secs(3600),
            max_future_skew: Duration::from_secs(300),
            snapshot_interval: Duration::from_secs(10),
            gauge_idle_after: Duration::from_secs(3600),
            silence_after: Duration::from_secs(15 * 60),
            close_grace: Duration::from_secs(30 * 60),
            gauge_keepalive: Duration::from_secs(60),
            gauges: true,
            // 2020-01-01T00:00:00Z
            min_timestamp: Millis(1_577_836_800_000),
            clock: ClockMode::Wall,
        }
    }
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            wait_target: Duration::from_secs(15 * 60),
            service_target: Duration::from_secs(20 * 60),
            idle_target: None,
            services: BTreeMap::new(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "queuewatch".into(),
            topics: vec!["queue/+/events".into()],
            max_payload_bytes: 16 * 1024,
            keep_alive: Duration::from_secs(30),
            username: None,
            password_env: None,
            password_file: None,
            tls: None,
        }
    }
}

impl Default for InfluxConfig {
    fn default() -> Self {
        InfluxConfig {
            api: InfluxApi::V2,
            url: "http://127.0.0.1:8086".into(),
            org: String::new(),
            bucket: "queuewatch".into(),
            token_env: None,
            token_file: None,
            database: "queuewatch".into(),
            retention_policy: None,
            username: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            batch_size: 5000,
            flush_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            compression: Compression::Auto,
        }
    }
}

/// A check of a file the config names, which needs the file system and is
/// left to `crate::preflight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// A secret file, named by `key`, if it is there yet: it must not be one
    /// that others may write.
    SecretIfPresent { key: String, path: PathBuf },
    /// The files of `mqtt.tls` (`mqtt.ca_file`, `mqtt.client_cert_file`,
    /// `mqtt.client_key_file`): there, PEM of their kind, the key fitting the
    /// certificate and a private file.
    MqttTls,
    /// `influxdb.ca_file`: there, and PEM CA certificates.
    InfluxCaFile { path: PathBuf },
    /// The key of `privacy.staff = "hash"` (from `privacy`): there, at least
    /// 16 bytes, and if a file, a private one.
    StaffKey,
}

/// A config's values as far as they parse, every problem found in them, and
/// the file checks they call for.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    pub problems: Vec<String>,
    /// Each check with the number of `problems` found before it: its own
    /// problems belong there, so that all read in the order of the file.
    pub file_checks: Vec<(usize, FileCheck)>,
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{}", problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<String> },
}

impl Config {
    /// What the config's values allow but an operator should know weakens
    /// it, each prefixed by its key: topic filters that let a publisher name
    /// any office. (`crate::preflight::warnings` adds the secret files any
    /// user may read.)
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for filter in &self.mqtt.topics {
            if !filter.split('/').any(|level| level == "+") {
                warnings.push(format!(
                    "mqtt.topics: {filter:?} has no \"+\" level for the office, so each message's payload names \
                     its office: any client that may publish on it can report for every office (the broker's ACL \
                     cannot tell offices apart); prefer a filter such as \"queue/+/events\" with an ACL per office"
                ));
            }
        }
        warnings
    }

    /// The secret files the config names, each with its key: those any user
    /// may read are warned about.
    pub fn secret_files(&self) -> [(&'static str, Option<&Path>); 5] {
        let key_file = self.mqtt.tls.as_ref().and_then(|tls| tls.client_auth.as_ref()).map(|files| &files.key_file);
        [
            ("mqtt.password_file", self.mqtt.password_file.as_deref().map(Path::new)),
            ("mqtt.client_key_file", key_file.map(PathBuf::as_path)),
            ("influxdb.password_file", self.influxdb.password_file.as_deref().map(Path::new)),
            ("influxdb.token_file", self.influxdb.token_file.as_deref().map(Path::new)),
            ("privacy.staff_key_file", self.privacy.staff_key_file.as_deref()),
        ]
    }

    /// Parses TOML text, its values only (`crate::preflight::parse` checks
    /// the files it names too); on failure returns every problem, each
    /// prefixed by its key.
    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        let parsed = Config::parse_values(text)?;
        if parsed.problems.is_empty() {
            Ok(parsed.config)
        } else {
            Err(parsed.problems)
        }
    }

    /// The values of TOML text as far as they parse, with every problem and
    /// the file checks due; `Err` only for text that is not TOML.
    pub fn parse_values(text: &str) -> Result<Parsed, Vec<String>> {
        let root: toml::Table = match text.parse() {
            Ok(root) => root,
            Err(error) => return Err(vec![format!("invalid TOML: {}", error.to_string().trim())]),
        };
        let mut problems = Vec::new();
        let mut file_checks = Vec::new();
        let mut config = Config::default();
        let mut top = Section::new(&root, "");

        if let Some(table) = top.table("mqtt", &mut problems) {
            let mut section = Section::new(table, "mqtt");
            let defaults = &mut config.mqtt;
            if let Some(url) = section.string("url", &mut problems) {
                match parse_broker_url(&url) {
                    Ok(broker) => {
                        defaults.host = broker.host;
                        defaults.port = broker.port;
                        defaults.tls = broker.tls.then(MqttTlsConfig::default);
                        defaults.url = url;
                    }
                    Err(why) => problems.push(format!("mqtt.url: {why}")),
                }
            }
            if let Some(client_id) = section.string("client_id", &mut problems) {
                if client_id.is_empty() || client_id.len() > 256 {
                    problems.push("mqtt.client_id: must be 1-256 bytes".into());
                } else {
                    defaults.client_id = client_id;
                }
            }
            if let Some(topics) = section.strings("topics", &mut problems) {
                if topics.is_empty() {
                    problems.push("mqtt.topics: at least one topic filter is needed".into());
                }
                for topic in &topics {
                    if let Err(why) = validate_topic_filter(topic) {
                        problems.push(format!("mqtt.topics: {topic:?}: {why}"));
                    }
                }
                defaults.topics = topics;
            }
            if let Some(bytes) = section.positive_integer("max_payload_bytes", &mut problems) {
                defaults.max_payload_bytes = bytes;
            }
            if let Some(keep_alive) = section.duration("keep_alive", &mut problems) {
                let within_protocol = at_most("mqtt.keep_alive", keep_alive, MAX_KEEP_ALIVE, &mut problems);
                if at_least("mqtt.keep_alive", keep_alive, SECOND, &mut problems) && within_protocol {
                    defaults.keep_alive = keep_alive;
                }
            }
            parse_mqtt_credentials(&mut section, defaults, &mut problems);
            parse_mqtt_tls(&mut section, defaults, &mut problems, &mut file_checks);
            section.finish(&mut problems);
        }

        if let Some(table) = top.table("influxdb", &mut problems) {
            let mut section = Section::new(table, "influxdb");
            let influx = &mut config.influxdb;
            if let Some(api) = section.string("api", &mut problems) {
                match api.as_str() {
                    "v1" => influx.api = InfluxApi::V1,
                    "v2" => influx.api = InfluxApi::V2,
                    "v3" => influx.api = InfluxApi::V3,
                    other => problems.push(format!("influxdb.api: {other:?} is none of \"v1\", \"v2\" and \"v3\"")),
                }
            }
            if let Some(url) = section.string("url", &mut problems) {
                match check_influx_url(&url) {
                    Ok(_) => influx.url = url,
                    Err(problem) => problems.push(problem),
                }
            }
            for (key, slot) in
                [("org", &mut influx.org), ("bucket", &mut influx.bucket), ("database", &mut influx.database)]
            {
                if let Some(value) = section.string(key, &mut problems) {
                    if value.is_empty() {
                        problems.push(format!("influxdb.{key}: must not be empty"));
                    }
                    *slot = value;
                }
            }
            influx.token_env = section.string("token_env", &mut problems);
            influx.token_file = section.string("token_file", &mut problems);
            influx.retention_policy = section.string("retention_policy", &mut problems);
            influx.username = section.string("username", &mut problems);
            influx.password_env = section.string("password_env", &mut problems);
            influx.password_file = section.string("password_file", &mut problems);
            for (key, value) in [("token_file", &influx.token_file), ("password_file", &influx.password_file)] {
                match value.as_deref() {
                    Some("") => problems.push(format!("influxdb.{key}: must not be empty")),
                    // A file others may write is refused now rather than at the first write.
                    Some(path) => file_checks.push((
                        problems.len(),
                        FileCheck::SecretIfPresent { key: format!("influxdb.{key}"), path: path.into() },
                    )),
                    None => {}
                }
            }
            if influx.password_env.is_some() && influx.password_file.is_some() {
                problems.push("influxdb.password_file: give password_env or password_file, not both".into());
            }
            if section.has("token") || section.has("password") {
                problems.push(
                    "influxdb: secrets are never read from the config file; \
                     use token_env, token_file, password_env or password_file"
                        .into(),
                );
                section.mark_seen("token");
                section.mark_seen("password");
            }
            if influx.token_env.is_some() && influx.token_file.is_some() {
                problems.push("influxdb.token_file: give token_env or token_file, not both".into());
            }
            parse_influx_ca_file(&mut section, influx, &mut problems, &mut file_checks);
            if let Some(compression) = section.string("compression", &mut problems) {
                match Compression::ALL.into_iter().find(|known| known.name() == compression) {
                    Some(known) => influx.compression = known,
                    None => problems.push(format!(
                        "influxdb.compression: {compression:?} is none of \"auto\", \"gzip\" and \"none\""
                    )),
                }
            }
            if let Some(batch_size) = section.positive_integer("batch_size", &mut problems) {
                influx.batch_size = batch_size;
            }
            for (key, slot) in [
                ("flush_interval", &mut influx.flush_interval),
                ("request_timeout", &mut influx.request_timeout),
                ("max_backoff", &mut influx.max_backoff),
            ] {
                if let Some(value) = section.duration(key, &mut problems) {
                    at_least(&format!("influxdb.{key}"), value, MILLISECOND, &mut problems);
                    *slot = value;
                }
            }
            section.finish(&mut problems);
        }

        if let Some(table) = top.table("tracking", &mut problems) {
            let mut section = Section::new(table, "tracking");
            let tracking = &mut config.tracking;
            for (key, slot) in [
                ("reorder_window", &mut tracking.reorder_window),
                ("max_ticket_age", &mut tracking.max_ticket_age),
                ("dedup_horizon", &mut tracking.dedup_horizon),
                ("max_future_skew", &mut tracking.max_future_skew),
                ("snapshot_interval", &mut tracking.snapshot_interval),
                ("gauge_idle_after", &mut tracking.gauge_idle_after),
                ("silence_after", &mut tracking.silence_after),
                ("close_grace", &mut tracking.close_grace),
            ] {
                if let Some(value) = section.duration(key, &mut problems) {
                    *slot = value;
                }
            }
            if let Some(value) = section.get("gauges") {
                match value.as_bool() {
                    Some(gauges) => tracking.gauges = gauges,
                    None => problems.push("tracking.gauges: expected true or false".into()),
                }
            }
            match section.duration("gauge_keepalive", &mut problems) {
                Some(keepalive) => tracking.gauge_keepalive = keepalive,
                // Unset: the default, rounded up to a multiple of the
                // interval, so that coarser gauges need no second key.
                None => {
                    let whole_ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                    let interval_ms = whole_ms(tracking.snapshot_interval).max(1);
                    let default_ms = whole_ms(TrackingConfig::default().gauge_keepalive);
                    let rounded_ms = default_ms.div_ceil(interval_ms).saturating_mul(interval_ms);
                    tracking.gauge_keepalive = Duration::from_millis(rounded_ms);
                }
            }
            if let Some(text) = section.string("min_timestamp", &mut problems) {
                match crate::time::parse_rfc3339(&text) {
                    Some(at) if at < UNIX_EPOCH => problems
                        .push(format!("tracking.min_timestamp: {text:?} must not be before 1970-01-01T00:00:00Z")),
                    Some(at) => tracking.min_timestamp = at,
                    None => problems.push(format!(
                        "tracking.min_timestamp: {text:?} is not RFC 3339 with an offset (write e.g. \"2020-01-01T00:00:00Z\")"
                    )),
                }
            }
            if let Some(clock) = section.string("clock", &mut problems) {
                match clock.as_str() {
                    "wall" => tracking.clock = ClockMode::Wall,
                    "event" => tracking.clock = ClockMode::Event,
                    other => problems.push(format!("tracking.clock: {other:?} is neither \"wall\" nor \"event\"")),
                }
            }
            section.finish(&mut problems);
        }
        // On the values in force, so that a default that no longer fits a
        // configured value is caught too.
        check_tracking(&config.tracking, &mut problems);

        if let Some(table) = top.table("sla", &mut problems) {
            let rules = parse_sla(table, "sla", &mut problems);
            let defaults = SlaConfig::default();
            config.sla = SlaConfig {
                wait_target: rules.wait_target.unwrap_or(defaults.wait_target),
                service_target: rules.service_target.unwrap_or(defaults.service_target),
                idle_target: rules.idle_target,
                services: rules.services,
            };
        }

        if let Some(table) = top.table("offices", &mut problems) {
            for (name, value) in table {
                let path = format!("offices.{name}");
                // The one setting among the office tables: a boolean, where an office is a table.
                if name == "only_configured" && !value.is_table() {
                    #[cfg(test)]
                    reference_tests::asked(&path);
                    match value.as_bool() {
                        Some(only) => config.only_configured = only,
                        None => problems.push(format!("{path}: expected true or false")),
                    }
                    continue;
                }
                let office = match OfficeId::parse(name) {
                    Ok(office) => office,
                    Err(why) => {
                        problems.push(format!("{path}: office id {why}"));
                        continue;
                    }
                };
                let Some(office_table) = value.as_table() else {
                    problems.push(format!("{path}: must be a table"));
                    continue;
                };
                config.offices.insert(office, parse_office(office_table, &path, &mut problems));
            }
        }

        if let Some(table) = top.table("alerts", &mut problems) {
            let mut section = Section::new(table, "alerts");
            if let Some(value) = section.get("enabled") {
                match value.as_bool() {
                    Some(enabled) => config.alerts.enabled = enabled,
                    None => problems.push("alerts.enabled: expected true or false".into()),
                }
            }
            for (key, slot) in
                [("topic", &mut config.alerts.topic), ("rejects_topic", &mut config.alerts.rejects_topic)]
            {
                if let Some(topic) = section.string(key, &mut problems) {
                    if topic.is_empty() || topic.contains('+') || topic.contains('#') {
                        problems.push(format!("alerts.{key}: {topic:?} must be a topic name without wildcards"));
                    }
                    *slot = topic;
                }
            }
            section.finish(&mut problems);
        }

        if let Some(table) = top.table("storage", &mut problems) {
            let mut section = Section::new(table, "storage");
            if let Some(dir) = section.string("data_dir", &mut problems) {
                if dir.is_empty() {
                    problems.push("storage.data_dir: must not be empty".into());
                } else {
                    config.storage.data_dir = dir.into();
                }
            }
            if let Some(interval) = section.duration("checkpoint_interval", &mut problems) {
                if at_least("storage.checkpoint_interval", interval, SECOND, &mut problems) {
                    config.storage.checkpoint_interval = interval;
                }
            }
            if let Some(value) = section.get("journal") {
                match value.as_bool() {
                    Some(journal) => config.storage.journal = journal,
                    None => problems.push("storage.journal: expected true or false".into()),
                }
            }
            if let Some(value) = section.get("journal_segment_bytes") {
                match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
                    Some(bytes) if bytes >= 1 << 20 => config.storage.journal_segment_bytes = bytes,
                    _ => problems.push(format!(
                        "storage.journal_segment_bytes: expected a number of bytes of at least 1048576 (1 MiB), found {value}"
                    )),
                }
            }
            if let Some(value) = section.get("spool_max_bytes") {
                match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
                    Some(bytes) => config.storage.spool_max_bytes = bytes,
                    None => problems.push(format!(
                        "storage.spool_max_bytes: expected a number of bytes (0 for no spool), found {value}"
                    )),
                }
            }
            if let Some(value) = section.get("dead_letter_max_bytes") {
                match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
                    Some(bytes) => config.storage.dead_letter_max_bytes = bytes,
                    None => problems.push(format!(
                        "storage.dead_letter_max_bytes: expected a number of bytes (0 to keep none), found {value}"
                    )),
                }
            }
            section.finish(&mut problems);
        }

        if let Some(table) = top.table("limits", &mut problems) {
            config.limits = parse_limits(table, &mut problems);
        }

        if let Some(table) = top.table("http", &mut problems) {
            let mut section = Section::new(table, "http");
            if let Some(listen) = section.string("listen", &mut problems) {
                match parse_listen(&listen) {
                    Ok(address) => config.http.listen = address,
                    Err(why) => problems.push(format!("http.listen: {listen:?} {why}")),
                }
            }
            section.finish(&mut problems);
        }

        if let Some(table) = top.table("privacy", &mut problems) {
            let mut section = Section::new(table, "privacy");
            parse_privacy(&mut section, &mut config.privacy, &mut problems, &mut file_checks);
            section.finish(&mut problems);
        }

        if let Some(timeout) = top.duration("shutdown_timeout", &mut problems) {
            let within = at_most("shutdown_timeout", timeout, MAX_SHUTDOWN_TIMEOUT, &mut problems);
            if at_least("shutdown_timeout", timeout, SECOND, &mut problems) && within {
                config.shutdown_timeout = timeout;
            }
        }

        top.finish(&mut problems);
        Ok(Parsed { config, problems, file_checks })
    }
}

/// `[limits]`: whole numbers, 0 for no limit.
fn parse_limits(table: &toml::Table, problems: &mut Vec<String>) -> LimitsConfig {
    let mut section = Section::new(table, "limits");
    let mut limits = LimitsConfig::default();
    for (key, slot) in [
        ("max_offices", &mut limits.max_offices),
        ("max_services_per_office", &mut limits.max_services_per_office),
        ("max_counters_per_office", &mut limits.max_counters_per_office),
        ("max_staff_per_office", &mut limits.max_staff_per_office),
        ("max_open_tickets_per_office", &mut limits.max_open_tickets_per_office),
        ("max_remembered_per_office", &mut limits.max_remembered_per_office),
        ("max_messages_per_second_per_office", &mut limits.max_messages_per_second_per_office),
        ("max_burst_per_office", &mut limits.max_burst_per_office),
    ] {
        if let Some(value) = section.get(key) {
            match value.as_integer().and_then(|number| usize::try_from(number).ok()) {
                Some(number) => *slot = number,
                None => problems.push(format!("limits.{key}: expected a whole number (0 for no limit), found {value}")),
            }
        }
    }
    section.finish(problems);
    limits
}

/// `mqtt.username`, `mqtt.password_env`, `mqtt.password_file`. Only where
/// the password is: it is read when connecting, never from this file.
fn parse_mqtt_credentials(section: &mut Section<'_>, mqtt: &mut MqttConfig, problems: &mut Vec<String>) {
    if let Some(username) = section.string("username", problems) {
        // MQTT strings carry a 16-bit length.
        if username.is_empty() || username.len() > usize::from(u16::MAX) {
            problems.push("mqtt.username: must be 1-65535 bytes".into());
        } else {
            mqtt.username = Some(username);
        }
    }
    if let Some(name) = section.string("password_env", problems) {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            problems.push(format!("mqtt.password_env: {name:?} is not an environment variable name"));
        } else {
            mqtt.password_env = Some(name);
        }
    }
    if let Some(path) = section.string("password_file", problems) {
        if path.is_empty() {
            problems.push("mqtt.password_file: must not be empty".into());
        } else {
            mqtt.password_file = Some(path);
        }
    }
    if section.has("password") {
        problems.push(
            "mqtt.password: secrets are never read from the config file; use password_env or password_file".into(),
        );
        section.mark_seen("password");
    }
    if mqtt.password_env.is_some() && mqtt.password_file.is_some() {
        problems.push("mqtt.password_file: give password_env or password_file, not both".into());
    }
    // MQTT 3.1.1 sends a password only with a user name.
    let has_password = section.has("password_env") || section.has("password_file");
    if has_password && !section.has("username") {
        problems.push("mqtt.username: needed with mqtt.password_env or mqtt.password_file".into());
    }
}

/// `privacy.staff`, `privacy.staff_key_env`, `privacy.staff_key_file`. With
/// `hash` the key is to be read at load ([`FileCheck::StaffKey`]), so that a
/// missing or short key is a config error, and forgotten
/// (`privacy::StaffPrivacy` reads it again at start). A key given with `keep`
/// or `drop` is an error too: it says the operator meant to hash, and the
/// staff would be kept or dropped without a word.
fn parse_privacy(
    section: &mut Section<'_>,
    privacy: &mut PrivacyConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    if let Some(mode) = section.string("staff", problems) {
        match mode.as_str() {
            "keep" => privacy.staff = StaffMode::Keep,
            "hash" => privacy.staff = StaffMode::Hash,
            "drop" => privacy.staff = StaffMode::Drop,
            other => problems.push(format!("privacy.staff: {other:?} is not \"keep\", \"hash\" or \"drop\"")),
        }
    }
    if let Some(name) = section.string("staff_key_env", problems) {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            problems.push(format!("privacy.staff_key_env: {name:?} is not an environment variable name"));
        } else {
            privacy.staff_key_env = Some(name);
        }
    }
    if let Some(path) = section.string("staff_key_file", problems) {
        if path.is_empty() {
            problems.push("privacy.staff_key_file: must not be empty".into());
        } else {
            privacy.staff_key_file = Some(path.into());
        }
    }
    if section.has("staff_key") {
        problems.push(
            "privacy.staff_key: secrets are never read from the config file; use staff_key_env or staff_key_file"
                .into(),
        );
        section.mark_seen("staff_key");
    }
    let given = section.has("staff_key_env") || section.has("staff_key_file");
    match privacy.staff {
        _ if section.has("staff_key_env") && section.has("staff_key_file") => {
            problems.push("privacy.staff_key_file: give staff_key_env or staff_key_file, not both".into())
        }
        StaffMode::Hash if !given => problems.push(
            "privacy.staff: \"hash\" needs a key of at least 16 bytes: set privacy.staff_key_env or privacy.staff_key_file"
                .into(),
        ),
        StaffMode::Hash => file_checks.push((problems.len(), FileCheck::StaffKey)),
        StaffMode::Keep | StaffMode::Drop if given => {
            let mode = if privacy.staff == StaffMode::Keep { "keep" } else { "drop" };
            let key = if section.has("staff_key_env") { "staff_key_env" } else { "staff_key_file" };
            problems.push(format!(
                "privacy.{key}: a key is used only with privacy.staff = \"hash\", and staff is \"{mode}\" \
                 (set staff = \"hash\", or remove the key)"
            ));
        }
        StaffMode::Keep | StaffMode::Drop => {}
    }
}

/// The bounds of the `[tracking]` durations and how they relate.
/// `mqtt.ca_file`, `mqtt.client_cert_file`, `mqtt.client_key_file`: only
/// with an `mqtts://` URL; the client certificate and key both or neither.
/// The files must exist and hold PEM of their kind at load, and the key must
/// be a private file; the password file too, if it is there yet
/// ([`FileCheck`]).
fn parse_mqtt_tls(
    section: &mut Section<'_>,
    mqtt: &mut MqttConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    let mut path = |key: &str| {
        let text = section.string(key, problems)?;
        if text.is_empty() {
            problems.push(format!("mqtt.{key}: must not be empty"));
            return None;
        }
        Some(PathBuf::from(text))
    };
    let ca_file = path("ca_file");
    let cert_file = path("client_cert_file");
    let key_file = path("client_key_file");
    if let Some(path) = &mqtt.password_file {
        let check = FileCheck::SecretIfPresent { key: "mqtt.password_file".into(), path: path.into() };
        file_checks.push((problems.len(), check));
    }
    let Some(tls) = &mut mqtt.tls else {
        for (key, given) in [
            ("ca_file", ca_file.is_some()),
            ("client_cert_file", cert_file.is_some()),
            ("client_key_file", key_file.is_some()),
        ] {
            if given {
                problems.push(format!("mqtt.{key}: TLS files need an mqtts:// mqtt.url, not {:?}", mqtt.url));
            }
        }
        return;
    };
    tls.ca_file = ca_file;
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => tls.client_auth = Some(ClientAuthFiles { cert_file, key_file }),
        (Some(_), None) => {
            problems.push("mqtt.client_key_file: needed with mqtt.client_cert_file (both or neither)".into())
        }
        (None, Some(_)) => {
            problems.push("mqtt.client_cert_file: needed with mqtt.client_key_file (both or neither)".into())
        }
        (None, None) => {}
    }
    file_checks.push((problems.len(), FileCheck::MqttTls));
}

/// `influxdb.url`: an `http://` or `https://` URL with a host, and without a
/// user name or password, which would sit in the config and reach the logs
/// (they come from `influxdb.username` and a password or token variable or
/// file). A problem names the key and never shows a password.
pub fn check_influx_url(url: &str) -> Result<reqwest::Url, String> {
    let shown = match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) if url.contains('@') => "(not shown: it may hold a password)".to_string(),
        Err(_) => url.to_string(),
    };
    match reqwest::Url::parse(url) {
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => Err(format!(
            "influxdb.url: {shown:?} holds a user name or password; give the user as influxdb.username and the \
             password in influxdb.password_env or influxdb.password_file (v1), or a token in influxdb.token_env \
             or influxdb.token_file (v2)"
        )),
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => Ok(parsed),
        Ok(_) => Err(format!("influxdb.url: {shown:?} is not an http:// or https:// URL")),
        Err(error) => Err(format!("influxdb.url: {shown:?} is not a valid URL: {error}")),
    }
}

/// `influxdb.ca_file`: only with an `https://` URL, a file of PEM CA certificates.
fn parse_influx_ca_file(
    section: &mut Section<'_>,
    influx: &mut InfluxConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    let Some(path) = section.string("ca_file", problems) else { return };
    if path.is_empty() {
        problems.push("influxdb.ca_file: must not be empty".into());
    } else if !influx.url.starts_with("https://") {
        problems.push(format!("influxdb.ca_file: needs an https:// influxdb.url, not {:?}", influx.url));
    } else {
        file_checks.push((problems.len(), FileCheck::InfluxCaFile { path: PathBuf::from(&path) }));
    }
    influx.ca_file = Some(PathBuf::from(path));
}

fn check_tracking(tracking: &TrackingConfig, problems: &mut Vec<String>) {
    at_least("tracking.snapshot_interval", tracking.snapshot_interval, SECOND, problems);
    at_least("tracking.silence_after", tracking.silence_after, SECOND, problems);
    at_least("tracking.max_ticket_age", tracking.max_ticket_age, MILLISECOND, problems);
    // Events are put in their place only while their ticket may still be
    // open: a window as long as the maximum age would hold events for
    // tickets that expire meanwhile.
    if tracking.reorder_window >= tracking.max_ticket_age {
        problems.push(format!(
            "tracking.reorder_window: must be below tracking.max_ticket_age ({})",
            show(tracking.max_ticket_age)
        ));
    }
    // A redelivery may come as late as the window allows and still be taken
    // in order; it must still be recognised as a duplicate then.
    if tracking.dedup_horizon < tracking.reorder_window {
        problems.push(format!(
            "tracking.dedup_horizon: must be at least tracking.reorder_window ({})",
            show(tracking.reorder_window)
        ));
    }
    // Keep-alive rows are written at snapshot times.
    let interval_ns = tracking.snapshot_interval.as_nanos();
    if tracking.gauge_keepalive.is_zero()
        || interval_ns == 0
        || !tracking.gauge_keepalive.as_nanos().is_multiple_of(interval_ns)
    {
        problems.push(format!(
            "tracking.gauge_keepalive: must be a positive multiple of tracking.snapshot_interval ({})",
            show(tracking.snapshot_interval)
        ));
    }
}

/// `http.listen`: empty for no endpoint, else an IP address and a port
/// (`127.0.0.1:9108`, `[::1]:9108`, `0.0.0.0:9108`; port 0 picks a free one).
/// Names are not resolved: the endpoint binds where it is told, nowhere else.
fn parse_listen(text: &str) -> Result<Option<std::net::SocketAddr>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| "is not an IP address and port such as \"127.0.0.1:9108\" (or \"\" for none)")
}

/// Reports `key` when `value` is below `min`; true when it is not.
fn at_least(key: &str, value: Duration, min: Duration, problems: &mut Vec<String>) -> bool {
    if value < min {
        problems.push(format!("{key}: must be at least {}", show(min)));
        return false;
    }
    true
}

/// Reports `key` when `value` is above `max`; true when it is not.
fn at_most(key: &str, value: Duration, max: Duration, problems: &mut Vec<String>) -> bool {
    if value > max {
        problems.push(format!("{key}: must be at most {}", show(max)));
        return false;
    }
    true
}

/// A duration as a config file would write it; whole days as days
/// (`humantime` would show 365 days in months of 30.44 days).
fn show(duration: Duration) -> String {
    const DAY_S: u64 = 24 * 3600;
    match duration.as_secs() {
        seconds if seconds >= DAY_S && seconds % DAY_S == 0 && duration.subsec_nanos() == 0 => {
            format!("{}days", seconds / DAY_S)
        }
        _ => humantime::format_duration(duration).to_string(),
    }
}

fn parse_sla(table: &toml::Table, path: &str, problems: &mut Vec<String>) -> OfficeSla {
    let mut sla = OfficeSla::default();
    let mut section = Section::new(table, path);
    for (key, slot) in [
        ("wait_target", &mut sla.wait_target),
        ("service_target", &mut sla.service_target),
        ("idle_target", &mut sla.idle_target),
    ] {
        if let Some(value) = section.duration(key, problems) {
            at_least(&format!("{path}.{key}"), value, MILLISECOND, problems);
            *slot = Some(value);
        }
    }
    if let Some(services) = section.table("services", problems) {
        for (name, value) in services {
            let service_path = format!("{path}.services.{name}");
            let service = match ServiceId::parse(name) {
                Ok(service) => service,
                Err(why) => {
                    problems.push(format!("{service_path}: service name {why}"));
                    continue;
                }
            };
            let Some(service_table) = value.as_table() else {
                problems.push(format!("{service_path}: must be a table"));
                continue;
            };
            let mut service_section = Section::new(service_table, &service_path);
            let mut overrides = ServiceSla::default();
            for (key, slot) in
                [("wait_target", &mut overrides.wait_target), ("service_target", &mut overrides.service_target)]
            {
                if let Some(value) = service_section.duration(key, problems) {
                    at_least(&format!("{service_path}.{key}"), value, MILLISECOND, problems);
                    *slot = Some(value);
                }
            }
            service_section.finish(problems);
            sla.services.insert(service, overrides);
        }
    }
    section.finish(problems);
    sla
}

fn parse_office(table: &toml::Table, path: &str, problems: &mut Vec<String>) -> OfficeConfig {
    let mut office = OfficeConfig::default();
    let mut section = Section::new(table, path);
    office.name = section.string("name", problems);
    if let Some(region) = section.string("region", problems) {
        match validate_ident(&region) {
            Ok(()) => office.region = Some(region),
            Err(why) => problems.push(format!("{path}.region: {region:?} {why}")),
        }
    }
    if let Some(timezone) = section.string("timezone", problems) {
        match timezone.parse::<chrono_tz::Tz>() {
            Ok(zone) => office.timezone = zone,
            Err(_) => problems.push(format!("{path}.timezone: {timezone:?} is not an IANA time zone")),
        }
    }
    if let Some(hours) = section.string("hours", problems) {
        match parse_hours(&hours) {
            Ok(ranges) => office.hours = ranges,
            Err(why) => problems.push(format!("{path}.hours: {hours:?}: {why}")),
        }
    }
    if let Some(days) = section.string("days", problems) {
        match parse_days(&days) {
            Ok(set) => office.days = set,
            Err(why) => problems.push(format!("{path}.days: {days:?}: {why}")),
        }
    }
    if let Some(sla) = section.table("sla", problems) {
        office.sla = parse_sla(sla, &format!("{path}.sla"), problems);
    }
    section.finish(problems);
    office
}

/// `"07:30-12:00,13:00-15:30"` into minute-of-day ranges.
pub fn parse_hours(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (start, end) = part.split_once('-').ok_or_else(|| format!("{part:?} is not HH:MM-HH:MM"))?;
        let (start, end) = (parse_clock(start.trim())?, parse_clock(end.trim())?);
        if start >= end {
            return Err(format!("{part:?} ends before it starts"));
        }
        ranges.push((start, end));
    }
    Ok(ranges)
}

fn parse_clock(text: &str) -> Result<u32, String> {
    let (hours, minutes) = text.split_once(':').ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let (Ok(hours), Ok(minutes)) = (hours.parse::<u32>(), minutes.parse::<u32>()) else {
        return Err(format!("{text:?} is not HH:MM"));
    };
    if hours > 24 || minutes > 59 || (hours == 24 && minutes != 0) {
        return Err(format!("{text:?} is not a time of day"));
    }
    Ok(hours * 60 + minutes)
}

/// `"Mon-Fri"`, `"Mon-Sat"`, `"Mon,Wed,Fri"`, `"Sat-Mon"` into a weekday set.
pub fn parse_days(text: &str) -> Result<[bool; 7], String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let index = |name: &str| {
        let lower = name.trim().to_ascii_lowercase();
        NAMES
            .iter()
            .position(|day| lower.starts_with(day) && lower.len() >= 3)
            .ok_or_else(|| format!("{name:?} is not a weekday"))
    };
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (mut day, last) = (index(first)?, index(last)?);
                loop {
                    days[day] = true;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days[index(part)?] = true,
        }
    }
    Ok(days)
}

/// A broker's address as `mqtt.url` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`
    pub tls: bool,
}

/// `mqtt://host:port` (port defaulting to 1883) or `mqtts://host:port` (TLS,
/// port defaulting to 8883).
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (rest, false, 1883)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true, 8883)
    } else {
        return Err(format!("{url:?}: must start with mqtt:// or mqtts:// (TLS)"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(format!("{url:?}: expected mqtt://host:port or mqtts://host:port"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host, port),
            _ => return Err(format!("{url:?}: invalid port {port:?}")),
        },
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    Ok(BrokerUrl { host: host.to_string(), port, tls })
}

/// `mqtt://host:port` only, port defaulting to 1883 (the simulator does not speak TLS).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    match parse_broker_url(url)? {
        BrokerUrl { tls: true, .. } => Err(format!("{url:?}: must start with mqtt://")),
        BrokerUrl { host, port, .. } => Ok((host, port)),
    }
}

/// Subscription filters: `+` matches one level (the office), `#` only last.
pub fn validate_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty filter");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index != levels.len() - 1) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// A table being read: remembers which keys were consumed so that the rest
/// can be reported as unknown.
struct Section<'a> {
    table: &'a toml::Table,
    path: String,
    seen: BTreeSet<String>,
}

impl<'a> Section<'a> {
    fn new(table: &'a toml::Table, path: &str) -> Section<'a> {
        Section { table, path: path.to_string(), seen: BTreeSet::new() }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn mark_seen(&mut self, key: &str) {
        self.seen.insert(key.to_string());
    }

    fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        #[cfg(test)]
        reference_tests::asked(&self.key(key));
        self.seen.insert(key.to_string());
        self.table.get(key)
    }

    fn table(&mut self, key: &str, problems: &mut Vec<String>) -> Option<&'a toml::Table> {
        match self.get(key)? {
            toml::Value::Table(table) => Some(table),
            _ => {
                problems.push(format!("{}: must be a table", self.key(key)));
                None
            }
        }
    }

    fn string(&mut self, key: &str, problems: &mut Vec<String>) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(text) => Some(text.clone()),
            other => {
                problems.push(format!("{}: expected a string, found {}", self.key(key), other.type_str()));
                None
            }
        }
    }

    fn strings(&mut self, key: &str, problems: &mut Vec<String>) -> Option<Vec<String>> {
        let full_key = self.key(key);
        match self.get(key)? {
            toml::Value::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(text) => texts.push(text.to_string()),
                        None => {
                            problems.push(format!("{full_key}: expected a list of strings"));
                            return None;
                        }
                    }
                }
                Some(texts)
            }
            _ => {
                problems.push(format!("{full_key}: expected a list of strings"));
                None
            }
        }
    }

    fn positive_integer(&mut self, key: &str, problems: &mut Vec<String>) -> Option<usize> {
        match self.get(key)? {
            toml::Value::Integer(number) if *number > 0 => usize::try_from(*number).ok(),
            other => {
                problems.push(format!("{}: expected a positive integer, found {other}", self.key(key)));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, problems: &mut Vec<String>) -> Option<Duration> {
        let full_key = self.key(key);
        match self.get(key)? {
            toml::Value::String(text) => match humantime::parse_duration(text) {
                Ok(duration) if !at_most(&full_key, duration, MAX_DURATION, problems) => None,
                Ok(duration) => Some(duration),
                Err(_) => {
                    problems
                        .push(format!("{full_key}: invalid duration {text:?} (write e.g. \"10s\", \"15m\", \"12h\")"));
                    None
                }
            },
            other => {
                problems.push(format!("{full_key}: expected a duration string such as \"10s\", found {other}"));
                None
            }
        }
    }

    fn finish(self, problems: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                problems.push(format!("{}: unknown key", self.key(key)));
            }
        }
    }
}

/// docs/configuration.md against the keys the parser asks for.
#[cfg(test)]
mod reference_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_typical_config_parses() {
        let config = Config::parse(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "queuewatch"
topics = ["queue/+/events"]
[influxdb]
api = "v1"
url = "http://127.0.0.1:8086"
database = "queuewatch"
flush_interval = "1s"
[tracking]
reorder_window = "10s"
max_ticket_age = "12h"
[sla]
wait_target = "15m"
service_target = "20m"
[sla.services.ktp]
wait_target = "10m"
service_target = "15m"
"#,
        )
        .unwrap();
        assert_eq!(config.influxdb.api, InfluxApi::V1);
        let v3 = Config::parse("[influxdb]\napi = \"v3\"\ndatabase = \"qw\"\n").unwrap();
        assert_eq!((v3.influxdb.api, v3.influxdb.database.as_str()), (InfluxApi::V3, "qw"));
        let problems = Config::parse("[influxdb]\napi = \"v4\"\n").unwrap_err();
        assert_eq!(problems, ["influxdb.api: \"v4\" is none of \"v1\", \"v2\" and \"v3\""]);
        let ktp = config.sla.targets_for(None, &ServiceId::parse("ktp").unwrap());
        assert_eq!(ktp, Targets { wait_ms: 600_000, service_ms: 900_000 });
        let other = config.sla.targets_for(None, &ServiceId::parse("sim").unwrap());
        assert_eq!(other, Targets { wait_ms: 900_000, service_ms: 1_200_000 });
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let problems = Config::parse(
            r#"
[mqtt]
url = "tcp://x"
colour = "blue"
[influxdb]
flush_interval = "1 parsec"
api = "v9"
token = "secret"
[tracking]
reorder_window = 10
[sla.services."k t p"]
wait_target = "1m"
"#,
        )
        .unwrap_err();
        let joined = problems.join("\n");
        for expected in [
            "mqtt.url",
            "mqtt.colour: unknown key",
            "influxdb.flush_interval: invalid duration \"1 parsec\"",
            "influxdb.api",
            "secrets are never read",
            "tracking.reorder_window",
            "sla.services.k t p",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }

    #[test]
    fn mqtt_urls_need_the_scheme_and_default_the_port() {
        assert_eq!(parse_mqtt_url("mqtt://broker:1884").unwrap(), ("broker".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_mqtt_url("http://broker").is_err());
        assert!(parse_mqtt_url("mqtt://broker:0").is_err());
        assert!(parse_mqtt_url("mqtts://broker").is_err(), "the simulator speaks plain MQTT only");
        let tls = |host: &str, port| BrokerUrl { host: host.into(), port, tls: true };
        assert_eq!(parse_broker_url("mqtts://broker").unwrap(), tls("broker", 8883));
        assert_eq!(parse_broker_url("mqtts://broker:8884/").unwrap(), tls("broker", 8884));
        assert_eq!(
            parse_broker_url("mqtt://broker").unwrap(),
            BrokerUrl { host: "broker".into(), port: 1883, tls: false }
        );
    }

    #[test]
    fn a_topic_filter_without_an_office_level_is_warned_about() {
        let config =
            Config::parse("[mqtt]\ntopics = [\"queue/+/events\", \"queue/all/events\", \"queue/#\"]\n").unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("mqtt.topics: \"queue/all/events\" has no \"+\" level"), "{warnings:?}");
        assert!(warnings[1].starts_with("mqtt.topics: \"queue/#\" has no \"+\" level"), "{warnings:?}");
        assert!(Config::parse("").unwrap().warnings().is_empty());
    }

    #[test]
    fn mqtt_credentials_name_where_the_password_is() {
        let config =
            Config::parse("[mqtt]\nusername = \"queuewatch\"\npassword_file = \"/etc/queuewatch/mqtt-password\"\n")
                .unwrap();
        assert_eq!(config.mqtt.username.as_deref(), Some("queuewatch"));
        assert_eq!(config.mqtt.password_file.as_deref(), Some("/etc/queuewatch/mqtt-password"));
        assert_eq!(config.mqtt.password_env, None);
        let config =
            Config::parse("[mqtt]\nusername = \"queuewatch\"\npassword_env = \"QUEUEWATCH_MQTT_PASSWORD\"\n").unwrap();
        assert_eq!(config.mqtt.password_env.as_deref(), Some("QUEUEWATCH_MQTT_PASSWORD"));
        let config = Config::parse("[mqtt]\nusername = \"queuewatch\"\n").unwrap();
        assert_eq!((config.mqtt.password_env, config.mqtt.password_file), (None, None), "a user name alone is valid");
        assert_eq!(Config::parse("").unwrap().mqtt.username, None, "anonymous by default");
    }

    #[test]
    fn mqtt_credential_problems_are_all_reported_and_never_show_a_secret() {
        let problems = problems_of(
            r#"
[mqtt]
password = "hunter2"
password_env = "QUEUEWATCH_MQTT_PASSWORD"
password_file = "/etc/queuewatch/mqtt-password"
"#,
        );
        assert_reported(
            &problems,
            &[
                "mqtt.password: secrets are never read from the config file",
                "mqtt.password_file: give password_env or password_file, not both",
                "mqtt.username: needed with mqtt.password_env or mqtt.password_file",
            ],
        );
        assert!(!problems.contains("hunter2"), "{problems}");
        assert!(!problems.contains("unknown key"), "{problems}");
        let problems = problems_of("[mqtt]\nusername = \"\"\npassword_env = \"A=B\"\npassword_file = \"\"\n");
        assert_reported(
            &problems,
            &[
                "mqtt.username: must be 1-65535 bytes",
                "mqtt.password_env: \"A=B\" is not an environment variable name",
                "mqtt.password_file: must not be empty",
            ],
        );
        assert_reported(&problems_of("[mqtt]\nusername = 7\n"), &["mqtt.username: expected a string"]);
    }

    #[test]
    fn topic_filters_follow_mqtt_rules() {
        assert!(validate_topic_filter("queue/+/events").is_ok());
        assert!(validate_topic_filter("queue/#").is_ok());
        assert!(validate_topic_filter("queue/#/x").is_err());
        assert!(validate_topic_filter("queue/a+/x").is_err());
    }

    #[test]
    fn offices_take_hours_days_zone_region_and_their_own_targets() {
        let config = Config::parse(
            r#"
[sla]
wait_target = "15m"
[sla.services.ktp]
wait_target = "10m"
[offices.mpp-mks]
name = "MPP Makassar"
region = "sulsel"
timezone = "Asia/Makassar"
hours = "07:30-12:00,13:00-15:30"
days = "Mon-Fri"
[offices.mpp-mks.sla]
wait_target = "20m"
idle_target = "5m"
[offices.mpp-mks.sla.services.paspor]
wait_target = "30m"
"#,
        )
        .unwrap();
        let office = &config.offices[&OfficeId::parse("mpp-mks").unwrap()];
        assert_eq!(office.region.as_deref(), Some("sulsel"));
        assert_eq!(office.hours, vec![(450, 720), (780, 930)]);
        assert_eq!(office.days, [true, true, true, true, true, false, false]);
        let targets = |service: &str| config.sla.targets_for(Some(&office.sla), &ServiceId::parse(service).unwrap());
        assert_eq!(targets("paspor").wait_ms, 1_800_000);
        assert_eq!(targets("ktp").wait_ms, 1_200_000, "the office's own default beats the global service table");
        assert_eq!(targets("ktp").service_ms, 1_200_000);
        assert_eq!(config.sla.idle_target_ms(Some(&office.sla)), Some(300_000));
        assert_eq!(config.sla.idle_target_ms(None), None);
        // Friday 2026-11-27 08:00 WITA is 00:00 UTC; 12:30 WITA is the lunch break.
        let friday_8 = crate::time::Millis(1_795_737_600_000);
        assert!(office.is_open_at(friday_8));
        assert!(!office.is_open_at(friday_8.plus_ms(270 * 60_000)));
        assert!(!office.is_open_at(friday_8.plus_ms(24 * 3_600_000)), "Saturday");
    }

    #[test]
    fn bad_office_settings_name_their_keys() {
        let problems = Config::parse(
            r#"
[offices.x]
timezone = "Mars/Olympus"
hours = "12:00-08:00"
days = "Funday"
region = "a b"
colour = "red"
[alerts]
topic = "queue/+/alerts"
"#,
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "offices.x.timezone",
            "offices.x.hours",
            "offices.x.days",
            "offices.x.region",
            "offices.x.colour: unknown key",
            "alerts.topic",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
    }

    #[test]
    fn the_influx_password_file_and_the_spool_size_are_read_and_checked() {
        let config = Config::parse(
            "[influxdb]\nusername = \"qw\"\npassword_file = \"/etc/queuewatch/influx-password\"\n\
             [storage]\nspool_max_bytes = 65536\n",
        )
        .unwrap();
        assert_eq!(config.influxdb.password_file.as_deref(), Some("/etc/queuewatch/influx-password"));
        assert_eq!(config.storage.spool_max_bytes, 65536);
        assert_eq!(Config::default().storage.spool_max_bytes, 1 << 30);
        assert_eq!(Config::parse("[storage]\nspool_max_bytes = 0\n").unwrap().storage.spool_max_bytes, 0);
        assert_eq!(Config::default().storage.dead_letter_max_bytes, 256 << 20);
        let config = Config::parse("[storage]\ndead_letter_max_bytes = 4096\n").unwrap();
        assert_eq!(config.storage.dead_letter_max_bytes, 4096);
        let problems = problems_of("[storage]\ndead_letter_max_bytes = -1\n");
        assert_reported(&problems, &["storage.dead_letter_max_bytes: expected a number of bytes"]);
        let problems = problems_of(
            "[influxdb]\npassword_env = \"P\"\npassword_file = \"\"\n[storage]\nspool_max_bytes = \"1GiB\"\n",
        );
        assert_reported(
            &problems,
            &[
                "influxdb.password_file: must not be empty",
                "influxdb.password_file: give password_env or password_file, not both",
                "storage.spool_max_bytes: expected a number of bytes",
            ],
        );
    }

    #[test]
    fn an_influx_url_with_a_user_and_password_is_refused_without_showing_them() {
        for url in ["http://writer:hunter2@influx:8086", "https://writer:hunter2@influx", "http//writer:hunter2@influx"]
        {
            let problems = problems_of(&format!("[influxdb]\nurl = \"{url}\"\n"));
            assert!(problems.contains("influxdb.url"), "{problems}");
            assert!(!problems.contains("hunter2"), "{problems}");
        }
        let problems = problems_of("[influxdb]\nurl = \"http://writer@influx:8086\"\n");
        assert!(problems.contains("holds a user name or password"), "{problems}");
    }

    /// Every problem `text` has, joined, for `contains` checks.
    fn problems_of(text: &str) -> String {
        Config::parse(text).expect_err("the config has problems").join("\n")
    }

    #[track_caller]
    pub(crate) fn assert_reported(problems: &str, expected: &[&str]) {
        for expected in expected {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
    }

    #[test]
    fn durations_below_their_bounds_are_each_reported_with_the_key() {
        let problems = problems_of(
            r#"
[mqtt]
keep_alive = "500ms"
[influxdb]
flush_interval = "500us"
request_timeout = "0s"
max_backoff = "999us"
[tracking]
snapshot_interval = "500us"
silence_after = "999ms"
max_ticket_age = "0s"
[sla]
wait_target = "500us"
service_target = "0s"
idle_target = "0s"
[sla.services.ktp]
wait_target = "0s"
[offices.o1.sla]
service_target = "100us"
"#,
        );
        assert_reported(
            &problems,
            &[
                "mqtt.keep_alive: must be at least 1s",
                "influxdb.flush_interval: must be at least 1ms",
                "influxdb.request_timeout: must be at least 1ms",
                "influxdb.max_backoff: must be at least 1ms",
                "tracking.snapshot_interval: must be at least 1s",
                "tracking.silence_after: must be at least 1s",
                "tracking.max_ticket_age: must be at least 1ms",
                "sla.wait_target: must be at least 1ms",
                "sla.service_target: must be at least 1ms",
                "sla.idle_target: must be at least 1ms",
                "sla.services.ktp.wait_target: must be at least 1ms",
                "offices.o1.sla.service_target: must be at least 1ms",
            ],
        );
    }

    #[test]
    fn no_duration_exceeds_a_year_so_event_times_stay_in_influxdb_range() {
        let problems = problems_of(
            r#"
[mqtt]
keep_alive = "19h"
[influxdb]
max_backoff = "400days"
[tracking]
max_ticket_age = "366days"
dedup_horizon = "100years"
max_future_skew = "2years"
gauge_idle_after = "1000days"
close_grace = "400days"
[sla.services.ktp]
service_target = "367days"
"#,
        );
        assert_reported(
            &problems,
            &[
                "mqtt.keep_alive: must be at most 18h 12m 15s",
                "influxdb.max_backoff: must be at most 365days",
                "tracking.max_ticket_age: must be at most 365days",
                "tracking.dedup_horizon: must be at most 365days",
                "tracking.max_future_skew: must be at most 365days",
                "tracking.gauge_idle_after: must be at most 365days",
                "tracking.close_grace: must be at most 365days",
                "sla.services.ktp.service_target: must be at most 365days",
            ],
        );
        assert!(Config::parse("[tracking]\nmax_ticket_age = \"365days\"\n").is_ok());
        let grace = Config::parse("[tracking]\nclose_grace = \"45m\"\n").unwrap().tracking.close_grace;
        assert_eq!(grace, Duration::from_secs(45 * 60));
        assert_eq!(TrackingConfig::default().close_grace, Duration::from_secs(30 * 60));
    }

    #[test]
    fn the_reorder_window_is_below_the_ticket_age_and_within_the_dedup_horizon() {
        let problems = problems_of("[tracking]\nreorder_window = \"2h\"\nmax_ticket_age = \"2h\"\n");
        assert_reported(&problems, &["tracking.reorder_window: must be below tracking.max_ticket_age (2h)"]);
        let problems = problems_of("[tracking]\nreorder_window = \"30s\"\ndedup_horizon = \"10s\"\n");
        assert_reported(&problems, &["tracking.dedup_horizon: must be at least tracking.reorder_window (30s)"]);
        let config = Config::parse("[tracking]\nreorder_window = \"0s\"\ndedup_horizon = \"0s\"\n").unwrap();
        assert_eq!(config.tracking.reorder_window, Duration::ZERO);
    }

    #[test]
    fn gauges_can_be_turned_off() {
        assert!(Config::default().tracking.gauges);
        assert!(!Config::parse("[tracking]\ngauges = false\n").unwrap().tracking.gauges);
        let problems = Config::parse("[tracking]\ngauges = \"no\"\n").unwrap_err();
        assert_eq!(problems, ["tracking.gauges: expected true or false"]);
    }

    #[test]
    fn gauge_keepalive_is_a_positive_multiple_of_the_snapshot_interval() {
        let config = Config::parse("[tracking]\nsnapshot_interval = \"30s\"\ngauge_keepalive = \"5m\"\n").unwrap();
        assert_eq!(config.tracking.gauge_keepalive, Duration::from_secs(300));
        for keepalive in ["45s", "0s"] {
            let text = format!("[tracking]\nsnapshot_interval = \"30s\"\ngauge_keepalive = \"{keepalive}\"\n");
            assert_reported(
                &problems_of(&text),
                &["tracking.gauge_keepalive: must be a positive multiple of tracking.snapshot_interval (30s)"],
            );
        }
        // Unset, the default (1m) is rounded up to a multiple of the interval.
        let keepalive = |interval: &str| {
            let text = format!("[tracking]\nsnapshot_interval = \"{interval}\"\n");
            Config::parse(&text).unwrap().tracking.gauge_keepalive
        };
        assert_eq!(keepalive("25s"), Duration::from_secs(75));
        assert_eq!(keepalive("1h"), Duration::from_secs(3600));
        assert_eq!(keepalive("10s"), Duration::from_secs(60));
    }

    #[test]
    fn min_timestamp_is_rfc3339_with_an_offset_and_not_before_1970() {
        let config = Config::parse("[tracking]\nmin_timestamp = \"2015-06-01T00:00:00+07:00\"\n").unwrap();
        assert_eq!(config.tracking.min_timestamp, Millis(1_433_091_600_000));
        let config = Config::parse("[tracking]\nmin_timestamp = \"1970-01-01T00:00:00Z\"\n").unwrap();
        assert_eq!(config.tracking.min_timestamp, Millis(0));
        for (value, why) in [
            ("\"2015-06-01T00:00:00\"", "is not RFC 3339 with an offset"),
            ("\"yesterday\"", "is not RFC 3339 with an offset"),
            ("\"1969-12-31T23:59:59.999Z\"", "must not be before 1970-01-01T00:00:00Z"),
            ("2015", "expected a string"),
        ] {
            let problems = problems_of(&format!("[tracking]\nmin_timestamp = {value}\n"));
            assert_reported(&problems, &["tracking.min_timestamp: ", why]);
        }
    }

    #[test]
    fn clock_is_wall_or_event() {
        assert_eq!(Config::parse("[tracking]\nclock = \"event\"\n").unwrap().tracking.clock, ClockMode::Event);
        assert_eq!(Config::parse("[tracking]\nclock = \"wall\"\n").unwrap().tracking.clock, ClockMode::Wall);
        assert_reported(
            &problems_of("[tracking]\nclock = \"Event\"\n"),
            &["tracking.clock: \"Event\" is neither \"wall\" nor \"event\""],
        );
    }

    #[test]
    fn the_example_config_parses_and_documents_the_tracking_defaults() {
        let config = Config::parse(include_str!("../config/queuewatch.toml")).unwrap();
        assert_eq!(config.tracking, TrackingConfig::default());
        assert_eq!(config.tracking.clock, ClockMode::Wall);
        for key in ["gauge_keepalive", "min_timestamp", "clock"] {
            assert!(include_str!("../config/queuewatch.toml").contains(&format!("\n{key} = ")), "{key}");
        }
    }

    #[test]
    fn limits_and_only_configured_parse_and_the_example_documents_the_defaults() {
        let example = Config::parse(include_str!("../config/queuewatch.toml")).unwrap();
        assert_eq!((example.limits, example.only_configured), (LimitsConfig::default(), false));
        let config = Config::parse(
            "[limits]\nmax_offices = 0\nmax_open_tickets_per_office = 7\nmax_remembered_per_office = 9\n\
             [offices]\nonly_configured = true\n[offices.o1]\n",
        )
        .unwrap();
        assert_eq!((config.limits.max_offices, config.limits.max_open_tickets_per_office), (0, 7));
        assert_eq!(config.limits.max_remembered_per_office, 9);
        assert!(config.only_configured && config.offices.len() == 1);
        assert_reported(
            &problems_of(
                "[limits]\nmax_staff_per_office = -1\nmax_offce = 3\nmax_remembered_per_office = \"lots\"\n\
                 [offices]\nonly_configured = \"yes\"\n",
            ),
            &[
                "limits.max_staff_per_office: expected a whole number (0 for no limit), found -1",
                "limits.max_remembered_per_office: expected a whole number (0 for no limit), found \"lots\"",
                "limits.max_offce: unknown key",
                "offices.only_configured: expected true or false",
            ],
        );
    }

    #[test]
    fn day_ranges_may_wrap_the_week() {
        assert_eq!(parse_days("Sat-Mon").unwrap(), [true, false, false, false, false, true, true]);
        assert_eq!(parse_days("Mon,Wed").unwrap(), [true, false, true, false, false, false, false]);
    }
    #[test]
    fn the_operations_endpoint_and_the_shutdown_timeout_have_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.http.listen, Some("127.0.0.1:9108".parse().unwrap()));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(8));
        let config = Config::parse("shutdown_timeout = \"20s\"\n[http]\nlisten = \"[::1]:0\"\n").unwrap();
        assert_eq!(config.http.listen, Some("[::1]:0".parse().unwrap()));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(20));
    }

    #[test]
    fn the_example_config_and_the_systemd_unit_agree_on_the_stop() {
        let example = Config::parse(include_str!("../config/queuewatch.toml")).unwrap();
        assert_eq!((example.shutdown_timeout, &example.http), (DEFAULT_SHUTDOWN_TIMEOUT, &HttpConfig::default()));
        let unit = include_str!("../deploy/systemd/queuewatch.service");
        let stop_s: u64 = unit
            .lines()
            .find_map(|line| line.strip_prefix("TimeoutStopSec=")?.strip_suffix('s')?.parse().ok())
            .expect("TimeoutStopSec=<n>s in the unit");
        assert!(
            Duration::from_secs(stop_s) > example.shutdown_timeout,
            "systemd would SIGKILL before shutdown_timeout"
        );
    }

    #[test]
    fn an_empty_listen_address_turns_the_endpoint_off() {
        assert_eq!(Config::parse("[http]\nlisten = \"\"\n").unwrap().http.listen, None);
    }

    #[test]
    fn bad_listen_addresses_and_shutdown_timeouts_are_each_reported_with_the_key() {
        for (text, expected) in [
            ("[http]\nlisten = \"localhost:9108\"\n", "http.listen: \"localhost:9108\" is not an IP address and port"),
            ("[http]\nlisten = \"127.0.0.1\"\n", "http.listen: \"127.0.0.1\" is not an IP address and port"),
            ("[http]\nlisten = \"127.0.0.1:99999\"\n", "http.listen: \"127.0.0.1:99999\""),
            ("[http]\nlisten = 9108\n", "http.listen: expected a string"),
            ("[http]\nport = 9108\n", "http.port: unknown key"),
            ("shutdown_timeout = \"500ms\"\n", "shutdown_timeout: must be at least 1s"),
            ("shutdown_timeout = \"1h\"\n", "shutdown_timeout: must be at most 10m"),
            ("shutdown_timeout = \"eight\"\n", "shutdown_timeout: invalid duration \"eight\""),
            ("shutdown_timeout = 8\n", "shutdown_timeout: expected a duration string"),
        ] {
            assert_reported(&problems_of(text), &[expected]);
        }
        let both = problems_of("shutdown_timeout = \"0s\"\n[http]\nlisten = \"nowhere\"\n");
        assert_reported(&both, &["shutdown_timeout: must be at least 1s", "http.listen: \"nowhere\""]);
    }
}
