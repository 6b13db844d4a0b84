//! Real servers on this machine, for queuewatch's integration tests and its
//! load harness: Mosquitto, InfluxDB 1.x, InfluxDB 3 Core and VictoriaMetrics, each started on
//! free loopback ports inside a temporary folder of its own, and stopped (killed
//! and reaped) when its guard drops.
//!
//! Every server has two ways to start: `start()` panics with the reason, as a
//! test wants; `try_start` returns an [`Error`], as the load harness wants.
//!
//! What must stay true:
//! - A missing server binary is an error that names the Debian package to
//!   install (for InfluxDB 3 Core, which no registry offers, where it was
//!   looked for), never a silent skip.
//! - Every listener binds 127.0.0.1 on a port picked here, never a default
//!   port, so parallel instances cannot collide.
//! - The process is stopped before its temporary folder is removed (the
//!   process field is declared before the `TempDir`, and fields drop in order).

mod influx;
mod influx3;
mod mosquitto;
mod mqtt;
mod process;
mod victoria;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

pub use influx::{flatten_rows, quote_ident, HttpsFiles, Influx1, InfluxClient};
pub use influx3::{find_influxdb3, Influx3, Influx3Auth, Influx3Options, INFLUXDB3_ENV, INFLUXDB3_SHARED_XZ};
pub use mosquitto::{mosquitto_passwd, tls_config_text, Mosquitto, MosquittoOptions, TlsListener};
pub use mqtt::{create_session, try_create_session};
pub use process::{find_binary, Readiness, ServerProcess};
pub use tempfile::TempDir;
pub use victoria::VictoriaMetrics;

/// How long a server may take to accept connections after it is spawned.
/// Generous because CI runs many tests on two cores at once.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness, row counts and samples are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A server that exits during startup (typically because another process took
/// its port between `free_port` and its bind) is started again on fresh ports
/// this many times in all.
const START_ATTEMPTS: usize = 3;

/// What can go wrong starting or asking a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{name}` not found at {} nor on PATH: install the Debian package `{package}` \
         (apt-get install -y {package}), or run `bash scripts/test.sh`, which installs it",
        debian_path.display()
    )]
    NotInstalled { name: String, debian_path: PathBuf, package: String },
    #[error(
        "InfluxDB 3 Core not found at {} ({}): no package registry offers it; set {INFLUXDB3_ENV} \
         to its `influxdb3` binary or a .xz of it, or put the project's build at {INFLUXDB3_SHARED_XZ} \
         next to the repository (`bash scripts/test.sh` says whether these tests ran)",
        looked_at.display(),
        if *from_env { "named by the variable" } else { "the shared build" }
    )]
    Influxdb3NotFound { looked_at: PathBuf, from_env: bool },
    #[error("start {program} {args:?}: {source}{}", install_hint(.package))]
    Spawn { program: PathBuf, args: Vec<String>, package: Option<&'static str>, source: std::io::Error },
    #[error(
        "{name} did not start ({outcome:?} after {STARTUP_TIMEOUT:?} at most): {program} {args:?}\n--- its log ---\n{log}"
    )]
    Startup { name: &'static str, outcome: Readiness, program: PathBuf, args: Vec<String>, log: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Request { what: String, source: reqwest::Error },
    #[error("{what}: HTTP {status}: {body}")]
    Response { what: String, status: u16, body: String },
    #[error("{0}")]
    Mqtt(String),
}

fn install_hint(package: &Option<&'static str>) -> String {
    package.map_or_else(String::new, |package| format!(" (install the Debian package `{package}`)"))
}

/// A port that was free a moment ago on 127.0.0.1. Another process may take it
/// before the caller binds it; the `start` functions retry on fresh ports when
/// their server exits during startup.
pub fn free_port() -> u16 {
    try_free_port().expect("bind 127.0.0.1:0 to find a free port")
}

/// [`free_port`], or the error of binding 127.0.0.1:0.
pub fn try_free_port() -> Result<u16, Error> {
    let io = |source| Error::Io { what: "bind 127.0.0.1:0 to find a free port".into(), source };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// A temporary folder `queuewatch-<purpose>-…`, removed when it drops.
pub fn temp_dir(purpose: &str) -> Result<TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!("queuewatch-{purpose}-"))
        .tempdir()
        .map_err(|source| Error::Io { what: "create a temporary folder".into(), source })
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io { what: format!("write {}", path.display()), source })
}

/// An HTTP client for loopback servers.
fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("build an HTTP client")
}

fn http_client_builder() -> reqwest::ClientBuilder {
    // No proxy: a CI environment's HTTP_PROXY must not capture loopback requests.
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30))
}

/// Unwraps a result for a test: panics with the error's message.
fn or_panic<T>(result: Result<T, Error>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}
