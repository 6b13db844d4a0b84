//! `[influxdb]`: the server, its API, credentials' whereabouts, batching and compression.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::{at_least, Section, MILLISECOND};
use super::FileCheck;

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

/// `[influxdb]`.
pub(super) fn parse_influxdb(
    table: &toml::Table,
    influx: &mut InfluxConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    let mut section = Section::new(table, "influxdb");
    if let Some(api) = section.string("api", problems) {
        match api.as_str() {
            "v1" => influx.api = InfluxApi::V1,
            "v2" => influx.api = InfluxApi::V2,
            "v3" => influx.api = InfluxApi::V3,
            other => problems.push(format!("influxdb.api: {other:?} is none of \"v1\", \"v2\" and \"v3\"")),
        }
    }
    if let Some(url) = section.string("url", problems) {
        match check_influx_url(&url) {
            Ok(_) => influx.url = url,
            Err(problem) => problems.push(problem),
        }
    }
    for (key, slot) in [("org", &mut influx.org), ("bucket", &mut influx.bucket), ("database", &mut influx.database)] {
        if let Some(value) = section.string(key, problems) {
            if value.is_empty() {
                problems.push(format!("influxdb.{key}: must not be empty"));
            }
            *slot = value;
        }
    }
    influx.token_env = section.string("token_env", problems);
    influx.token_file = section.string("token_file", problems);
    influx.retention_policy = section.string("retention_policy", problems);
    influx.username = section.string("username", problems);
    influx.password_env = section.string("password_env", problems);
    influx.password_file = section.string("password_file", problems);
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
    parse_influx_ca_file(&mut section, influx, problems, file_checks);
    if let Some(compression) = section.string("compression", problems) {
        match Compression::ALL.into_iter().find(|known| known.name() == compression) {
            Some(known) => influx.compression = known,
            None => problems
                .push(format!("influxdb.compression: {compression:?} is none of \"auto\", \"gzip\" and \"none\"")),
        }
    }
    if let Some(batch_size) = section.positive_integer("batch_size", problems) {
        influx.batch_size = batch_size;
    }
    for (key, slot) in [
        ("flush_interval", &mut influx.flush_interval),
        ("request_timeout", &mut influx.request_timeout),
        ("max_backoff", &mut influx.max_backoff),
    ] {
        if let Some(value) = section.duration(key, problems) {
            at_least(&format!("influxdb.{key}"), value, MILLISECOND, problems);
            *slot = value;
        }
    }
    section.finish(problems);
}

/// `localhost` or a loopback address: a server on this machine.
fn is_this_machine(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
