//! `[mqtt]`: the broker, the topic filters, the login's whereabouts and TLS files.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::{at_least, at_most, Section, SECOND};
use super::FileCheck;

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

/// MQTT carries the keep-alive in a 16-bit count of seconds.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(u16::MAX as u64);

/// `[mqtt]`.
pub(super) fn parse_mqtt(
    table: &toml::Table,
    mqtt: &mut MqttConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    let mut section = Section::new(table, "mqtt");
    if let Some(url) = section.string("url", problems) {
        match parse_broker_url(&url) {
            Ok(broker) => {
                mqtt.host = broker.host;
                mqtt.port = broker.port;
                mqtt.tls = broker.tls.then(MqttTlsConfig::default);
                mqtt.url = url;
            }
            Err(why) => problems.push(format!("mqtt.url: {why}")),
        }
    }
    if let Some(client_id) = section.string("client_id", problems) {
        if client_id.is_empty() || client_id.len() > 256 {
            problems.push("mqtt.client_id: must be 1-256 bytes".into());
        } else {
            mqtt.client_id = client_id;
        }
    }
    if let Some(topics) = section.strings("topics", problems) {
        if topics.is_empty() {
            problems.push("mqtt.topics: at least one topic filter is needed".into());
        }
        for topic in &topics {
            if let Err(why) = validate_topic_filter(topic) {
                problems.push(format!("mqtt.topics: {topic:?}: {why}"));
            }
        }
        mqtt.topics = topics;
    }
    if let Some(bytes) = section.positive_integer("max_payload_bytes", problems) {
        mqtt.max_payload_bytes = bytes;
    }
    if let Some(keep_alive) = section.duration("keep_alive", problems) {
        let within_protocol = at_most("mqtt.keep_alive", keep_alive, MAX_KEEP_ALIVE, problems);
        if at_least("mqtt.keep_alive", keep_alive, SECOND, problems) && within_protocol {
            mqtt.keep_alive = keep_alive;
        }
    }
    parse_mqtt_credentials(&mut section, mqtt, problems);
    parse_mqtt_tls(&mut section, mqtt, problems, file_checks);
    section.finish(problems);
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
