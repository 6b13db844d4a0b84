//! InfluxDB 1.x (Debian ships 1.6) and its HTTP query API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::process::{find_binary, http_request_status, http_status, start_on_free_ports, ServerProcess};
use crate::{
    http_client, http_client_builder, or_panic, temp_dir, try_free_port, write_file, Error, TempDir, POLL_INTERVAL,
};

/// An InfluxDB 1.x server with its HTTP API on `127.0.0.1:port`, every
/// optional service off, and no authentication unless started with
/// [`Influx1::start_with_auth`]; HTTPS when started with [`Influx1::start_https`].
pub struct Influx1 {
    pub port: u16,
    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT`
    pub url: String,
    client: InfluxClient,
    process: ServerProcess,
    dir: TempDir,
    https: bool,
}

/// The PEM files of an InfluxDB server that speaks HTTPS.
#[derive(Debug, Clone)]
pub struct HttpsFiles {
    /// `https-certificate`: the server's certificate (then any intermediates).
    pub cert_file: PathBuf,
    /// `https-private-key`: its private key.
    pub key_file: PathBuf,
    /// The CA that certificate chains to, which the guard's own client trusts.
    pub ca_file: PathBuf,
}

impl Influx1 {
    /// Panics if it does not start.
    pub fn start() -> Influx1 {
        or_panic(Influx1::try_start())
    }

    pub fn try_start() -> Result<Influx1, Error> {
        Influx1::try_start_with(None, None)
    }

    /// With `[http] auth-enabled = true` and one admin user, `user` with
    /// `password`, through whom this guard's own queries go. Panics if it
    /// does not start.
    pub fn start_with_auth(user: &str, password: &str) -> Influx1 {
        or_panic(Influx1::try_start_with(Some((user, password)), None))
    }

    /// Serving HTTPS only (`[http] https-enabled = true`) with `files`'
    /// certificate and key, at `https://127.0.0.1:PORT`; this guard's own
    /// queries trust `files.ca_file`. Panics if it does not start.
    pub fn start_https(files: &HttpsFiles) -> Influx1 {
        or_panic(Influx1::try_start_with(None, Some(files)))
    }

    fn try_start_with(admin: Option<(&str, &str)>, https: Option<&HttpsFiles>) -> Result<Influx1, Error> {
        let program = find_binary("influxd", "/usr/bin/influxd", "influxdb")?;
        let dir = temp_dir("influxdb")?;
        let root = dir.path();
        let config_path = root.join("influxdb.conf");
        let log_path = root.join("influxd.log");
        let (process, http_port) = start_on_free_ports(
            || {
                let http_port = try_free_port()?;
                let rpc_port = try_free_port()?;
                write_file(&config_path, &config_text(root, http_port, rpc_port, admin.is_some(), https))?;
                let process = ServerProcess::new("influxd", program.clone(), log_path.clone())
                    .debian_package("influxdb")
                    .args(["-config".to_string(), config_path.display().to_string()]);
                Ok((process, http_port))
            },
            |http_port| pings(*http_port, https.is_some()),
        )?;
        let (url, mut client) = match https {
            Some(files) => {
                let url = format!("https://127.0.0.1:{http_port}");
                let client = InfluxClient::trusting(&url, &files.ca_file)?;
                (url, client)
            }
            None => {
                let url = format!("http://127.0.0.1:{http_port}");
                (url.clone(), InfluxClient::new(&url))
            }
        };
        if let Some((user, password)) = admin {
            // With authentication on and no user yet, InfluxDB takes exactly
            // this statement without credentials.
            let statement = format!(
                "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
                quote_ident(user),
                password.replace('\'', "\\'")
            );
            let url = reqwest::Url::parse_with_params("http://influx/query", &[("q", statement.as_str())])
                .expect("a valid query URL");
            let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            let status = http_request_status(http_port, "POST", &path);
            if status != Some(200) {
                return Err(Error::Response {
                    what: format!("POST /query {statement}"),
                    status: status.unwrap_or(0),
                    body: String::new(),
                });
            }
            client.credentials = Some(Credentials::Basic { user: user.to_string(), password: password.to_string() });
        }
        Ok(Influx1 { port: http_port, client, url, process, dir, https: https.is_some() })
    }

    /// Kills the server (no clean shutdown: writers see connections refused).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the server if it runs, then starts it again on the same port
    /// with the same configuration and data. Panics if it does not start.
    pub fn restart(&mut self) {
        let (port, https) = (self.port, self.https);
        self.process.restart(|| pings(port, https));
    }

    /// A client of its HTTP API that can be cloned into tasks.
    pub fn client(&self) -> InfluxClient {
        self.client.clone()
    }

    /// `CREATE DATABASE "name"`; panics unless the server confirms it.
    pub async fn create_database(&self, name: &str) {
        or_panic(self.client.create_database(name).await)
    }

    /// Writes `lines` (line protocol, times in `precision`: `ns`, `ms`, ...)
    /// to `db`; panics unless the server answers 204.
    pub async fn write(&self, db: &str, precision: &str, lines: &str) {
        or_panic(self.client.write(db, precision, lines).await)
    }

    /// Runs `influxql` against `db` with nanosecond epoch times and returns the
    /// JSON response as the server sent it (statement errors included).
    pub async fn query(&self, db: &str, influxql: &str) -> Value {
        or_panic(self.client.query(db, influxql).await)
    }

    /// Runs `influxql` and returns one map per row (column name to value) over
    /// all series of the first statement. Series tags (`GROUP BY *` or
    /// `GROUP BY tag`) are merged into each row. `time` is in nanoseconds.
    /// Panics if the statement failed.
    pub async fn rows(&self, db: &str, influxql: &str) -> Vec<Map<String, Value>> {
        self.client.rows_or_panic(db, influxql).await
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
        self.client.wait_for_rows(db, measurement, min_rows, timeout).await
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// What the server has logged so far (`influxd.log` in its folder).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its folder: `influxdb.conf`, `influxd.log` and the data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl AsRef<InfluxClient> for Influx1 {
    fn as_ref(&self) -> &InfluxClient {
        &self.client
    }
}

/// So that a query helper takes a server guard or a client alike.
impl AsRef<InfluxClient> for InfluxClient {
    fn as_ref(&self) -> &InfluxClient {
        self
    }
}

/// InfluxDB's v1 HTTP API (`/query`, `/write`) at one URL: InfluxDB 1.x, and
/// 3.x's compatibility endpoints.
#[derive(Clone)]
pub struct InfluxClient {
    url: String,
    http: reqwest::Client,
    /// For a server with authentication on.
    pub(crate) credentials: Option<Credentials>,
}

/// How an [`InfluxClient`] proves who it is.
#[derive(Clone)]
pub(crate) enum Credentials {
    /// 1.x: a user and password, as HTTP basic authentication.
    Basic { user: String, password: String },
    /// 3.x: `Authorization: Token ...`.
    Token(String),
}

impl InfluxClient {
    /// A client of the server at `url` (`http://host:port`).
    pub fn new(url: &str) -> InfluxClient {
        InfluxClient { url: url.to_string(), http: http_client(), credentials: None }
    }

    /// A client of the server at `url` (`https://host:port`) that trusts the
    /// CA certificate(s) in the PEM file `ca_file`.
    pub fn trusting(url: &str, ca_file: &Path) -> Result<InfluxClient, Error> {
        let what = || format!("trust the CA in {}", ca_file.display());
        let pem = std::fs::read(ca_file).map_err(|source| Error::Io { what: what(), source })?;
        let mut builder = http_client_builder().tls_built_in_root_certs(false);
        for certificate in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| Error::Request { what: what(), source })?
        {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|source| Error::Request { what: what(), source })?;
        Ok(InfluxClient { url: url.to_string(), http, credentials: None })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some(Credentials::Basic { user, password }) => request.basic_auth(user, Some(password)),
            Some(Credentials::Token(token)) => request.header("Authorization", format!("Token {token}")),
            None => request,
        }
    }

    /// `CREATE DATABASE "name"`; an error unless the server confirms it.
    pub async fn create_database(&self, name: &str) -> Result<(), Error> {
        let statement = format!("CREATE DATABASE {}", quote_ident(name));
        let what = || format!("POST /query {statement}");
        let response = self
            .authorized(self.http.post(format!("{}/query", self.url)))
            .form(&[("q", statement.as_str())])
            .send()
            .await
            .map_err(|source| Error::Request { what: what(), source })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() || body.contains("\"error\"") {
            return Err(Error::Response { what: what(), status: status.as_u16(), body });
        }
        Ok(())
    }

    /// `POST /write` of `lines` to `db`; an error unless the server answers 204.
    pub async fn write(&self, db: &str, precision: &str, lines: &str) -> Result<(), Error> {
        let what = || format!("POST /write?db={db}");
        let response = self
            .authorized(self.http.post(format!("{}/write", self.url)))
            .query(&[("db", db), ("precision", precision)])
            .body(lines.to_owned())
            .send()
            .await
            .map_err(|source| Error::Request { what: what(), source })?;
        let status = response.status();
        if status != 204 {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::Response { what: what(), status: status.as_u16(), body });
        }
        Ok(())
    }

    /// Runs `influxql` against `db` with nanosecond epoch times and returns the
    /// JSON response as the server sent it (statement errors included); an
    /// error when the server cannot be asked or answers something else than JSON.
    pub async fn query(&self, db: &str, influxql: &str) -> Result<Value, Error> {
        let what = || format!("GET /query {influxql}");
        let response = self
            .authorized(self.http.get(format!("{}/query", self.url)))
            .query(&[("db", db), ("q", influxql), ("epoch", "ns")])
            .send()
            .await
            .map_err(|source| Error::Request { what: what(), source })?;
        let status = response.status();
        let body = response.text().await.map_err(|source| Error::Request { what: what(), source })?;
        serde_json::from_str(&body).map_err(|_| Error::Response { what: what(), status: status.as_u16(), body })
    }

    /// [`InfluxClient::query`]'s rows over all series of the first
    /// statement, tags merged in; panics if the request or statement failed.
    pub async fn rows_or_panic(&self, db: &str, influxql: &str) -> Vec<Map<String, Value>> {
        let response = or_panic(self.query(db, influxql).await);
        match flatten_rows(&response) {
            Ok(rows) => rows,
            Err(error) => panic!("{influxql}: {error}"),
        }
    }

    /// Polls `SELECT * FROM "measurement"` until it returns at least
    /// `min_rows` rows and returns them. Panics with what it last saw when
    /// `timeout` passes first. A missing database or measurement, or a
    /// request that fails, counts as no rows while polling.
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
            let outcome = self.query(db, &influxql).await.map_err(|error| error.to_string());
            let outcome = outcome.and_then(|response| flatten_rows(&response));
            if let Ok(rows) = &outcome {
                if rows.len() >= min_rows {
                    return rows.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!("waited {timeout:?} for {min_rows} rows in {db}.{measurement}; last answer: {outcome:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Rows of all series of the first statement result, tags merged in; an
/// error when the request or the statement failed.
pub fn flatten_rows(response: &Value) -> Result<Vec<Map<String, Value>>, String> {
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
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether the server answers on its HTTP port: `/ping`'s 204, or with
/// HTTPS, the 400 that Go's server gives a plain HTTP request on a TLS port
/// (which proves it serves, without a TLS client on the starting thread).
fn pings(port: u16, https: bool) -> bool {
    http_status(port, "/ping") == Some(if https { 400 } else { 204 })
}

fn config_text(root: &Path, http_port: u16, rpc_port: u16, auth_enabled: bool, https: Option<&HttpsFiles>) -> String {
    let https = match https {
        Some(files) => format!(
            "https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"",
            files.cert_file.display(),
            files.key_file.display()
        ),
        None => "https-enabled = false".to_string(),
    };
    // Keys that 1.6 does not know are ignored, so a typo here shows up only
    // as a default (a port collision on 8088, a `_internal` database).
    format!(
        r#"reporting-disabled = true
# The RPC service for backup and restore; it defaults to 8088, which parallel
# servers would fight over.
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
  auth-enabled = {auth_enabled}
  {https}
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
    )
}
