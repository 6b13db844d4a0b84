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
//!
//! Layout: this file holds [`Config`], the parse entry and the file checks
//! it leaves to preflight; `reader.rs` reads a table key by key; each other
//! file owns one section family, its types, defaults and parse function
//! (`mqtt`, `influxdb`, `tracking`, `sla`, `offices`, `alerts`, `storage`,
//! `limits`, `http`, `privacy`). Sections are read in the order of this
//! file's `parse_values`, which is the order their problems are reported in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ids::OfficeId;

mod alerts;
mod http;
mod influxdb;
mod limits;
mod mqtt;
mod offices;
mod privacy;
mod reader;
mod sla;
mod storage;
mod tracking;

pub use alerts::AlertsConfig;
pub use http::HttpConfig;
pub use influxdb::{check_influx_url, Compression, InfluxApi, InfluxConfig};
pub use limits::LimitsConfig;
pub use mqtt::{
    parse_broker_url, parse_mqtt_url, validate_topic_filter, BrokerUrl, ClientAuthFiles, MqttConfig, MqttTlsConfig,
};
pub use offices::{parse_days, parse_hours, OfficeConfig};
pub use privacy::{PrivacyConfig, StaffMode};
pub use sla::{OfficeSla, ServiceSla, SlaConfig, Targets};
pub use storage::{StorageConfig, DEFAULT_DEAD_LETTER_MAX_BYTES, DEFAULT_SPOOL_MAX_BYTES};
pub use tracking::{ClockMode, TrackingConfig};

use limits::parse_limits;
use privacy::parse_privacy;
use reader::{at_least, at_most, Section, SECOND};
use tracking::check_tracking;

/// Longer than any supervisor waits before it kills the process.
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);

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
            mqtt::parse_mqtt(table, &mut config.mqtt, &mut problems, &mut file_checks);
        }
        if let Some(table) = top.table("influxdb", &mut problems) {
            influxdb::parse_influxdb(table, &mut config.influxdb, &mut problems, &mut file_checks);
        }
        if let Some(table) = top.table("tracking", &mut problems) {
            tracking::parse_tracking(table, &mut config.tracking, &mut problems);
        }
        // On the values in force, so that a default that no longer fits a
        // configured value is caught too.
        check_tracking(&config.tracking, &mut problems);

        if let Some(table) = top.table("sla", &mut problems) {
            config.sla = sla::parse_global_sla(table, &mut problems);
        }
        if let Some(table) = top.table("offices", &mut problems) {
            offices::parse_offices(table, &mut config, &mut problems);
        }
        if let Some(table) = top.table("alerts", &mut problems) {
            alerts::parse_alerts(table, &mut config.alerts, &mut problems);
        }
        if let Some(table) = top.table("storage", &mut problems) {
            storage::parse_storage(table, &mut config.storage, &mut problems);
        }
        if let Some(table) = top.table("limits", &mut problems) {
            config.limits = parse_limits(table, &mut problems);
        }
        if let Some(table) = top.table("http", &mut problems) {
            http::parse_http(table, &mut config.http, &mut problems);
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

/// docs/configuration.md against the keys the parser asks for.
#[cfg(test)]
mod reference_tests;

#[cfg(test)]
pub(crate) mod tests;
