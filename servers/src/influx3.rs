//! InfluxDB 3 Core. No package registry offers it, so its binary is found
//! where the project keeps a build of it (see [`find_influxdb3`]) and
//! unpacked once into cargo's `target/` folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::influx::{Credentials, InfluxClient};
use crate::process::{http_status, start_on_free_ports, ServerProcess};
use crate::{http_client, or_panic, temp_dir, try_free_port, Error, TempDir};

/// The variable that names the `influxdb3` binary, or a `.xz` of it.
pub const INFLUXDB3_ENV: &str = "QUEUEWATCH_INFLUXDB3";

/// Where the project keeps its build when the variable is not set,
/// relative to the repository root.
pub const INFLUXDB3_SHARED_XZ: &str = "../shared/influxdb3/influxdb3.xz";

/// How an [`Influx3`] server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Influx3Options {
    pub auth: Influx3Auth,
    /// `--wal-flush-interval`: a write is answered once the write-ahead log
    /// holding it is flushed, so this is also about how long a write takes.
    /// The server's default is 1 s, which the kit keeps.
    pub wal_flush_interval: Duration,
}

impl Default for Influx3Options {
    fn default() -> Influx3Options {
        Influx3Options { auth: Influx3Auth::Off, wal_flush_interval: Duration::from_secs(1) }
    }
}

/// Whether the server checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Influx3Auth {
    /// `--without-auth`.
    Off,
    /// Tokens checked; an admin token is created with
    /// `influxdb3 create token --admin` once the server runs.
    AdminToken,
}

/// An InfluxDB 3 Core server with its HTTP API on `127.0.0.1:port`, its
/// catalog and data in a temporary folder (object store `file`), telemetry
/// off. Its own queries go through the v1 query API (`/query`, InfluxQL),
/// with the admin token when authentication is on.
pub struct Influx3 {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The admin token, when started with [`Influx3Auth::AdminToken`].
    pub token: Option<String>,
    client: InfluxClient,
    http: reqwest::Client,
    auth: Influx3Auth,
    process: ServerProcess,
    dir: TempDir,
}

impl Influx3 {
    /// Without authentication; panics if it does not start.
    pub fn start() -> Influx3 {
        or_panic(Influx3::try_start(&Influx3Options::default()))
    }

    /// With authentication and an admin token ([`Influx3::token`]); panics
    /// if it does not start.
    pub fn start_with_auth() -> Influx3 {
        or_panic(Influx3::try_start(&Influx3Options { auth: Influx3Auth::AdminToken, ..Influx3Options::default() }))
    }

    pub fn try_start(options: &Influx3Options) -> Result<Influx3, Error> {
        let program = find_influxdb3()?;
        let dir = temp_dir("influxdb3")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("influxdb3.log");
        let auth = options.auth;
        let wal_flush_interval = format!("{}ms", options.wal_flush_interval.as_millis());
        let (process, port) = start_on_free_ports(
            || {
                let port = try_free_port()?;
                let mut args = vec![
                    "serve".to_string(),
                    "--node-id".into(),
                    "queuewatch-test".into(),
                    "--object-store".into(),
                    "file".into(),
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                    "--http-bind".into(),
                    format!("127.0.0.1:{port}"),
                    "--wal-flush-interval".into(),
                    wal_flush_interval.clone(),
                    "--disable-telemetry-upload".into(),
                    "--log-filter".into(),
                    "warn".into(),
                ];
                if auth == Influx3Auth::Off {
                    args.push("--without-auth".into());
                }
                let process = ServerProcess::new("influxdb3", program.clone(), log_path.clone()).args(args);
                Ok((process, port))
            },
            |port| is_ready(*port, auth),
        )
        .map_err(with_python_hint)?;
        let url = format!("http://127.0.0.1:{port}");
        let mut client = InfluxClient::new(&url);
        let token = match auth {
            Influx3Auth::Off => None,
            Influx3Auth::AdminToken => {
                let token = create_admin_token(&program, &url)?;
                client.credentials = Some(Credentials::Token(token.clone()));
                Some(token)
            }
        };
        Ok(Influx3 { port, url, token, client, http: http_client(), auth, process, dir })
    }

    /// Kills the server (no clean shutdown: writers see connections refused).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// with the same data (and tokens). Panics if it does not start.
    pub fn restart(&mut self) {
        let (port, auth) = (self.port, self.auth);
        self.process.restart(|| is_ready(port, auth));
    }

    /// A client of its v1 query and write API, with the admin token if any.
    pub fn client(&self) -> InfluxClient {
        self.client.clone()
    }

    /// Creates database `name` (`POST /api/v3/configure/database`); a
    /// database is also created by its first write.
    pub async fn create_database(&self, name: &str) {
        let body = serde_json::json!({ "db": name }).to_string();
        let request = self
            .http
            .post(format!("{}/api/v3/configure/database", self.url))
            .header("Content-Type", "application/json")
            .body(body);
        self.configure(request).await;
    }

    /// Deletes table (measurement) `table` of `db`
    /// (`DELETE /api/v3/configure/table`): 3.x has no `DROP MEASUREMENT`.
    /// The table is renamed aside, and a new one of that name may have
    /// other field types.
    pub async fn delete_table(&self, db: &str, table: &str) {
        let request =
            self.http.delete(format!("{}/api/v3/configure/table", self.url)).query(&[("db", db), ("table", table)]);
        self.configure(request).await;
    }

    async fn configure(&self, mut request: reqwest::RequestBuilder) {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("{}: {error}", self.url));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{}: HTTP {status}: {body}", self.url);
    }

    /// Writes `lines` (line protocol, times in `precision`: `ns`, `ms`, ...)
    /// to `db` through the v1 API; panics unless the server answers 204.
    pub async fn write(&self, db: &str, precision: &str, lines: &str) {
        or_panic(self.client.write(db, precision, lines).await)
    }

    /// Runs `influxql` against `db` with nanosecond epoch times and returns the
    /// JSON response as the server sent it (statement errors included).
    pub async fn query(&self, db: &str, influxql: &str) -> Value {
        or_panic(self.client.query(db, influxql).await)
    }

    /// As [`crate::Influx1::rows`]: one map per row, tags merged in; panics if
    /// the statement failed.
    pub async fn rows(&self, db: &str, influxql: &str) -> Vec<Map<String, Value>> {
        self.client.rows_or_panic(db, influxql).await
    }

    /// As [`crate::Influx1::wait_for_rows`]. Written points become readable
    /// once the write-ahead log is flushed.
    pub async fn wait_for_rows(
        &self,
        db: &str,
        measurement: &str,
        min_rows: usize,
        timeout: Duration,
    ) -> Vec<Map<String, Value>> {
        self.client.wait_for_rows(db, measurement, min_rows, timeout).await
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// What the server has logged so far (`influxdb3.log` in its folder).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its folder: `influxdb3.log` and `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl AsRef<InfluxClient> for Influx3 {
    fn as_ref(&self) -> &InfluxClient {
        &self.client
    }
}

/// The `influxdb3` binary: `QUEUEWATCH_INFLUXDB3` when it is set (the binary,
/// or a `.xz` of it), else `../shared/influxdb3/influxdb3.xz` from the
/// repository root. A `.xz` is unpacked once into cargo's target folder,
/// under a name that changes with the file's size and time, so that a new
/// build is unpacked again. Tests that start together may unpack it at the
/// same time: each writes a file of its own and renames it into place,
/// which is atomic, so none ever runs a half-written binary.
pub fn find_influxdb3() -> Result<PathBuf, Error> {
    let (source, from_env) = match std::env::var_os(INFLUXDB3_ENV) {
        Some(path) if !path.is_empty() => (PathBuf::from(path), true),
        _ => (repository_root().join(INFLUXDB3_SHARED_XZ), false),
    };
    if !source.is_file() {
        return Err(Error::Influxdb3NotFound { looked_at: source, from_env });
    }
    if source.extension().is_some_and(|extension| extension == "xz") {
        unpack(&source)
    } else {
        Ok(source)
    }
}

/// The folder above this crate's: the queuewatch repository.
fn repository_root() -> PathBuf {
    let servers = Path::new(env!("CARGO_MANIFEST_DIR"));
    servers.parent().unwrap_or(servers).to_path_buf()
}

/// `CARGO_TARGET_DIR` when set, else `target/` of the repository.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repository_root().join("target"), PathBuf::from)
}

fn unpack(xz: &Path) -> Result<PathBuf, Error> {
    let io = |what: String| move |source| Error::Io { what, source };
    let metadata = std::fs::metadata(xz).map_err(io(format!("read {}", xz.display())))?;
    let modified_s = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_secs());
    let dir = target_dir();
    let binary = dir.join(format!("influxdb3-{}-{modified_s}", metadata.len()));
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let partial = tempfile::Builder::new()
        .prefix(".influxdb3-unpacking-")
        .tempfile_in(&dir)
        .map_err(io(format!("create a file in {}", dir.display())))?;
    let output = partial.reopen().map_err(io(format!("open {}", partial.path().display())))?;
    let unpacking = format!("xz -dc {}", xz.display());
    let status = Command::new("xz").arg("-dc").arg(xz).stdout(output).status().map_err(|source| Error::Spawn {
        program: "xz".into(),
        args: vec![],
        package: Some("xz-utils"),
        source,
    })?;
    if !status.success() {
        return Err(Error::Io { what: unpacking, source: std::io::Error::other(format!("xz exited with {status}")) });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(partial.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("make {} executable", partial.path().display())))?;
    }
    partial
        .persist(&binary)
        .map_err(|error| Error::Io { what: format!("rename to {}", binary.display()), source: error.error })?;
    Ok(binary)
}

/// `/health` answers 200, or with authentication on, 401 to a request
/// without a token (which proves the server checks tokens).
fn is_ready(port: u16, auth: Influx3Auth) -> bool {
    let expected = match auth {
        Influx3Auth::Off => 200,
        Influx3Auth::AdminToken => 401,
    };
    http_status(port, "/health") == Some(expected)
}

/// `influxdb3 create token --admin --host URL --format json`: the token.
/// The command exits 0 even when it fails, so its output decides.
fn create_admin_token(program: &Path, url: &str) -> Result<String, Error> {
    let args = ["create", "token", "--admin", "--host", url, "--format", "json"];
    let what = || format!("{} {}", program.display(), args.join(" "));
    let output = Command::new(program).args(args).output().map_err(|source| Error::Spawn {
        program: program.into(),
        args: vec![],
        package: None,
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let token = serde_json::from_str::<Value>(&stdout)
        .ok()
        .and_then(|answer| answer.get("token").and_then(Value::as_str).map(str::to_string));
    token.ok_or_else(|| Error::Response {
        what: what(),
        status: 0,
        body: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
    })
}

/// The build links Debian's libpython3.11: say so when the loader misses it.
fn with_python_hint(error: Error) -> Error {
    match error {
        Error::Startup { log, name, outcome, program, args } if log.contains("libpython3.11") => Error::Startup {
            log: format!("{log}\n(install the Debian package `libpython3.11`: apt-get install -y libpython3.11)"),
            name,
            outcome,
            program,
            args,
        },
        other => other,
    }
}
