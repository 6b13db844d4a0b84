//! Destinations for batches: InfluxDB v1, v2 and v3 over HTTP(S), a file, nothing.
//!
//! A [`Writer`] sends one batch once and says how it went; it never retries
//! and never logs. Retrying, splitting and counting belong to the writer task
//! (`task.rs`), so every destination gets the same rules. A destination that
//! sends an encoded body (InfluxDB: gzip) names its encoder, which the writer
//! task runs on a blocking thread once per batch, off the async threads.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use influxdb2::api::write::TimestampPrecision;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt as _;

use super::tls::ClientSetup;
use super::{InfluxConfig, Secrets, SinkError};

/// The future a [`Writer`] returns.
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + 'a>>;

/// Turns a batch into the body a [`Writer`] sends; CPU work only.
pub type Encoder = fn(&str) -> Bytes;

/// One destination for batches of line protocol.
pub trait Writer: Send + Sync {
    /// Sends `body` (whole lines, each ending with `'\n'`) once.
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a>;

    /// Where the lines go, for logs. Never contains a secret.
    fn describe(&self) -> String;

    /// How this writer encodes a batch before sending it, if it does. The
    /// writer task runs it on a blocking thread, once per batch however often
    /// the batch is retried, and passes the result to [`Writer::write_encoded`].
    fn encoder(&self) -> Option<Encoder> {
        None
    }

    /// Sends `lines` once; `encoded` is what [`Writer::encoder`] made of them,
    /// `None` when it was not run.
    fn write_encoded<'a>(&'a self, lines: &'a str, encoded: Option<&'a Bytes>) -> WriteFuture<'a> {
        let _ = encoded;
        self.write(lines)
    }
}

/// Why one write failed; decides what the writer task does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Worth retrying as is: 429, 5xx, 401/403/404, a redirect (not
    /// followed), 405, 408 or another status that says nothing about the
    /// lines, connection refused, timeout.
    #[error("transient failure (status {status:?}): {message}")]
    Transient { status: Option<u16>, retry_after: Option<Duration>, message: String },
    /// The TLS handshake failed (an untrusted certificate, one for another
    /// host): an operator fixes it while we wait, so it is retried like a
    /// transient failure. The message says what to check.
    #[error("{message}")]
    Tls { message: String },
    /// 413: the body must be split and sent again in smaller pieces.
    #[error("request body too large (413)")]
    TooLarge,
    /// Lines refused for their content (400, 422): sending the same body
    /// again would fail the same way.
    #[error("rejected with status {status}: {message}")]
    Permanent { status: u16, message: String },
    /// These lines refused for their content, each named, and every other
    /// line of the batch stored (InfluxDB 3's `/api/v3/write_lp` with
    /// `accept_partial`): nothing to halve or send again.
    #[error("{} line(s) refused with status {status}", refused.len())]
    LinesRefused { status: u16, refused: Vec<RefusedLine> },
}

/// One line a server refused in a batch whose other lines it stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// Its index among the batch's lines, from 0.
    pub index: usize,
    /// The server's reason.
    pub message: String,
}

/// InfluxDB 1.x: `POST {url}/write?db=..&precision=ns[&rp=..]`, gzipped,
/// with basic auth when a username is configured.
///
/// After a 401 or 403 the password is read again from `password_file`, if
/// one is configured, for the next try; after a TLS failure the client is
/// built again with the roots as they are then.
pub struct V1Writer {
    /// Whether bodies are gzipped (`influxdb.compression`).
    gzip: bool,
    client: RwLock<reqwest::Client>,
    setup: ClientSetup,
    write_url: Url,
    username: Option<String>,
    password: RwLock<Option<String>>,
    password_file: Option<String>,
}

impl V1Writer {
    pub fn new(config: &InfluxConfig, secrets: &Secrets) -> Result<V1Writer, SinkError> {
        let mut write_url = parse_http_url(&config.url)?;
        write_url
            .path_segments_mut()
            .map_err(|()| SinkError::Config(format!("influxdb.url: {:?} cannot take a path", config.url)))?
            .pop_if_empty()
            .push("write");
        {
            let mut query = write_url.query_pairs_mut();
            query.append_pair("db", &config.database).append_pair("precision", "ns");
            if let Some(retention_policy) = &config.retention_policy {
                query.append_pair("rp", retention_policy);
            }
        }
        let gzip = config.gzip();
        let setup =
            ClientSetup::new(&write_url, config.ca_file.as_deref(), config.request_timeout, write_headers(gzip));
        let client = build_client(&setup).map_err(SinkError::Config)?;
        Ok(V1Writer {
            gzip,
            client: RwLock::new(client),
            setup,
            write_url,
            username: config.username.clone(),
            password: RwLock::new(secrets.password.clone()),
            password_file: config.password_file.clone(),
        })
    }

    async fn write_body(&self, body: Bytes) -> Result<(), WriteError> {
        let username = self.username.as_deref();
        let password = self.password.read().unwrap_or_else(PoisonError::into_inner).clone();
        let answer = post(&self.client, &self.setup, &self.write_url, body, |request| match username {
            Some(username) => request.basic_auth(username, password),
            None => request,
        })
        .await?;
        let Some(Answer { status, retry_after, mut message }) = answer else { return Ok(()) };
        if let (401 | 403, Some(path)) = (status, &self.password_file) {
            match super::read_password_file(path) {
                Ok(password) => *self.password.write().unwrap_or_else(PoisonError::into_inner) = Some(password),
                Err(problem) => message = format!("{message} ({problem})"),
            }
        }
        classify(status, &message, retry_after)
    }
}

impl Writer for V1Writer {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        self.write_encoded(body, None)
    }

    fn describe(&self) -> String {
        format!("InfluxDB v1 {}", without_credentials(&self.write_url))
    }

    fn encoder(&self) -> Option<Encoder> {
        self.gzip.then_some(gzip as Encoder)
    }

    fn write_encoded<'a>(&'a self, lines: &'a str, encoded: Option<&'a Bytes>) -> WriteFuture<'a> {
        Box::pin(async move { self.write_body(body_of(self.gzip, lines, encoded)).await })
    }
}

/// InfluxDB 3: `POST {url}/api/v3/write_lp?db=..&precision=nanosecond&accept_partial=true`,
/// gzipped, with `Authorization: Bearer ..` when a token is given.
///
/// With `accept_partial`, 3.x stores the lines it can and answers 400
/// "partial write of line protocol occurred" with one entry per refused
/// line (its `line_number` and why); that answer is
/// [`WriteError::LinesRefused`], so the refused lines are told apart in one
/// request, where the v1 and v2 APIs of 3.x refuse the whole batch and the
/// writer task halves it. Any other answer is classified as for the other
/// APIs. After a 401 or 403 the token is read again from `token_file`, if
/// one is configured; after a TLS failure the client is built again.
pub struct V3Writer {
    /// Whether bodies are gzipped (`influxdb.compression`).
    gzip: bool,
    client: RwLock<reqwest::Client>,
    setup: ClientSetup,
    write_url: Url,
    token: RwLock<Option<String>>,
    token_file: Option<String>,
}

impl V3Writer {
    pub fn new(config: &InfluxConfig, secrets: &Secrets) -> Result<V3Writer, SinkError> {
        let mut write_url = parse_http_url(&config.url)?;
        write_url
            .path_segments_mut()
            .map_err(|()| SinkError::Config(format!("influxdb.url: {:?} cannot take a path", config.url)))?
            .pop_if_empty()
            .extend(["api", "v3", "write_lp"]);
        write_url
            .query_pairs_mut()
            .append_pair("db", &config.database)
            .append_pair("precision", "nanosecond")
            .append_pair("accept_partial", "true");
        let gzip = config.gzip();
        let setup =
            ClientSetup::new(&write_url, config.ca_file.as_deref(), config.request_timeout, write_headers(gzip));
        let client = build_client(&setup).map_err(SinkError::Config)?;
        Ok(V3Writer {
            gzip,
            client: RwLock::new(client),
            setup,
            write_url,
            token: RwLock::new(secrets.token.clone()),
            token_file: config.token_file.clone(),
        })
    }

    async fn write_body(&self, lines: &str, body: Bytes) -> Result<(), WriteError> {
        let token = self.token.read().unwrap_or_else(PoisonError::into_inner).clone();
        let answer = post(&self.client, &self.setup, &self.write_url, body, |request| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        })
        .await?;
        let Some(Answer { status, retry_after, mut message }) = answer else { return Ok(()) };
        if status == 400 {
            if let Some(refused) = partial_write_refusals(lines, &message) {
                return Err(WriteError::LinesRefused { status, refused });
            }
        }
        if let (401 | 403, Some(path)) = (status, &self.token_file) {
            match super::read_token_file(path) {
                Ok(token) => *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(token),
                Err(problem) => message = format!("{message} ({problem})"),
            }
        }
        classify(status, &message, retry_after)
    }
}

impl Writer for V3Writer {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        self.write_encoded(body, None)
    }

    fn describe(&self) -> String {
        format!("InfluxDB v3 {}", without_credentials(&self.write_url))
    }

    fn encoder(&self) -> Option<Encoder> {
        self.gzip.then_some(gzip as Encoder)
    }

    fn write_encoded<'a>(&'a self, lines: &'a str, encoded: Option<&'a Bytes>) -> WriteFuture<'a> {
        Box::pin(async move { self.write_body(lines, body_of(self.gzip, lines, encoded)).await })
    }
}

/// The refused lines of InfluxDB 3's answer to a partial write of `lines`,
/// each with its reason; `None` when `message` is another answer, or names a
/// line that `lines` does not have (then the batch is halved as usual).
///
/// 3.x numbers the lines from 1 and skips empty ones.
fn partial_write_refusals(lines: &str, message: &str) -> Option<Vec<RefusedLine>> {
    #[derive(serde::Deserialize)]
    struct Partial {
        error: String,
        data: Vec<Refusal>,
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        error_message: String,
        line_number: usize,
    }
    let partial: Partial = serde_json::from_str(message).ok()?;
    if !partial.error.starts_with("partial write") || partial.data.is_empty() {
        return None;
    }
    let numbered: Vec<usize> =
        lines.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(index, _)| index).collect();
    let mut refused = partial
        .data
        .into_iter()
        .map(|refusal| {
            let index = *numbered.get(refusal.line_number.checked_sub(1)?)?;
            Some(RefusedLine { index, message: short_message(&refusal.error_message) })
        })
        .collect::<Option<Vec<RefusedLine>>>()?;
    refused.sort_by_key(|line| line.index);
    refused.dedup_by_key(|line| line.index);
    Some(refused)
}

/// InfluxDB 2.x (and 1.8+/3.x compatibility endpoints):
/// `POST /api/v2/write?bucket=..&org=..&precision=ns` through the `influxdb2`
/// crate, gzipped, with `Authorization: Token ..` when a token is given.
///
/// The crate's weak spots and how they are handled here:
/// - it panics on a URL it cannot parse, so the URL is checked first;
/// - its gzip applies only to its `DataPoint` stream API, so the body is
///   gzipped here and `Content-Encoding: gzip` is a default header of the
///   `reqwest` client it is given (that client only ever writes);
/// - it replaces the URL's path with `/api/v2/write`, so a URL with a path
///   (a reverse-proxy prefix) is refused rather than silently ignored;
/// - it treats every status but 204 as an error, so other 2xx are mapped
///   back to success;
/// - its errors drop the response headers, so `Retry-After` is unknown on
///   this path and retries rely on backoff alone.
///
/// After a 401 or 403 the token is read again from `token_file`, if one is
/// configured, and the client rebuilt with it for the next try; after a TLS
/// failure the client is rebuilt with the roots as they are then.
pub struct V2Writer {
    /// Whether bodies are gzipped (`influxdb.compression`).
    gzip: bool,
    /// The client and the token it was built with.
    client: RwLock<(influxdb2::Client, String)>,
    setup: ClientSetup,
    org: String,
    bucket: String,
    base: String,
    token_file: Option<String>,
}

impl V2Writer {
    pub fn new(config: &InfluxConfig, secrets: &Secrets) -> Result<V2Writer, SinkError> {
        let url = parse_http_url(&config.url)?;
        if url.path() != "/" || url.query().is_some() {
            return Err(SinkError::Config(format!(
                "influxdb.url: {:?}: with api = \"v2\" the URL must not have a path or query \
                 (writes always go to /api/v2/write at its root)",
                config.url
            )));
        }
        let token = secrets.token.clone().unwrap_or_default();
        let gzip = config.gzip();
        let setup = ClientSetup::new(&url, config.ca_file.as_deref(), config.request_timeout, write_headers(gzip));
        let client = v2_client(&setup, url.as_str(), &config.org, token.clone()).map_err(SinkError::Config)?;
        Ok(V2Writer {
            gzip,
            client: RwLock::new((client, token)),
            setup,
            org: config.org.clone(),
            bucket: config.bucket.clone(),
            base: url.to_string(),
            token_file: config.token_file.clone(),
        })
    }

    /// Reads `token_file` again and rebuilds the client with it; the problem, if that fails.
    fn reload_token(&self) -> Option<String> {
        let path = self.token_file.as_ref()?;
        let rebuilt = super::read_token_file(path)
            .and_then(|token| Ok((v2_client(&self.setup, &self.base, &self.org, token.clone())?, token)));
        match rebuilt {
            Ok(client) => {
                *self.client.write().unwrap_or_else(PoisonError::into_inner) = client;
                None
            }
            Err(problem) => Some(problem),
        }
    }
}

/// The influxdb2 client over `setup`'s HTTP client; the error says why not.
fn v2_client(setup: &ClientSetup, base: &str, org: &str, token: String) -> Result<influxdb2::Client, String> {
    influxdb2::ClientBuilder::with_builder(setup.builder()?, base, org, token).build().map_err(cannot_build)
}

impl Writer for V2Writer {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        self.write_encoded(body, None)
    }

    fn describe(&self) -> String {
        let base = Url::parse(&self.base).map_or_else(|_| self.base.clone(), |url| without_credentials(&url));
        format!("InfluxDB v2 {base} bucket {:?}", self.bucket)
    }

    fn encoder(&self) -> Option<Encoder> {
        self.gzip.then_some(gzip as Encoder)
    }

    fn write_encoded<'a>(&'a self, lines: &'a str, encoded: Option<&'a Bytes>) -> WriteFuture<'a> {
        Box::pin(async move {
            let body = body_of(self.gzip, lines, encoded);
            let client = self.client.read().unwrap_or_else(PoisonError::into_inner).0.clone();
            let result = client
                .write_line_protocol_with_precision(&self.org, &self.bucket, body, TimestampPrecision::Nanoseconds)
                .await;
            match result {
                Ok(()) => Ok(()),
                Err(influxdb2::RequestError::Http { status, mut text }) => {
                    if matches!(status.as_u16(), 401 | 403) {
                        if let Some(problem) = self.reload_token() {
                            text = format!("{text} ({problem})");
                        }
                    }
                    classify(status.as_u16(), &text, None)
                }
                Err(influxdb2::RequestError::ReqwestProcessing { source }) => {
                    Err(request_error(&self.setup, &source, |builder| {
                        // With the token in force now (a 401 may have replaced it meanwhile).
                        let mut current = self.client.write().unwrap_or_else(PoisonError::into_inner);
                        let token = current.1.clone();
                        let client = influxdb2::ClientBuilder::with_builder(builder, &self.base, &self.org, token)
                            .build()
                            .map_err(cannot_build)?;
                        current.0 = client;
                        Ok(())
                    }))
                }
                // Serializing and Deserializing belong to other calls of the
                // crate; should one appear, retrying is the choice that loses nothing.
                Err(other) => {
                    Err(WriteError::Transient { status: None, retry_after: None, message: other.to_string() })
                }
            }
        })
    }
}

/// Appends every batch to a file, uncompressed (for the demo and debugging).
pub struct FileWriter {
    path: PathBuf,
    file: tokio::sync::Mutex<tokio::fs::File>,
}

impl FileWriter {
    /// Opens `path` for appending, creating it when missing.
    pub fn open(path: &Path) -> std::io::Result<FileWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileWriter { path: path.to_path_buf(), file: tokio::sync::Mutex::new(tokio::fs::File::from_std(file)) })
    }
}

impl Writer for FileWriter {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        Box::pin(async move {
            let mut file = self.file.lock().await;
            let written = async {
                file.write_all(body.as_bytes()).await?;
                file.flush().await
            };
            // A full disk may free up; retrying loses nothing.
            written.await.map_err(|error| WriteError::Transient {
                status: None,
                retry_after: None,
                message: format!("{}: {error}", self.path.display()),
            })
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Accepts everything and keeps only counts (for benchmarks). Clones share
/// the counts, so keep one to read them after boxing another.
#[derive(Debug, Clone, Default)]
pub struct DiscardWriter {
    counts: Arc<DiscardCounts>,
}

#[derive(Debug, Default)]
struct DiscardCounts {
    lines: AtomicU64,
    bytes: AtomicU64,
    writes: AtomicU64,
}

impl DiscardWriter {
    pub fn new() -> DiscardWriter {
        DiscardWriter::default()
    }

    pub fn lines(&self) -> u64 {
        self.counts.lines.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.counts.bytes.load(Ordering::Relaxed)
    }

    pub fn writes(&self) -> u64 {
        self.counts.writes.load(Ordering::Relaxed)
    }
}

impl Writer for DiscardWriter {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        let lines = super::batch::count_lines(body) as u64;
        self.counts.lines.fetch_add(lines, Ordering::Relaxed);
        self.counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }

    fn describe(&self) -> String {
        "discard".into()
    }
}

/// The status rules shared by the InfluxDB APIs.
///
/// - 400 and 422: the lines themselves are refused. InfluxDB 1.x answers
///   400 to a batch of which only some lines failed ("partial write: field
///   type conflict: ... dropped=N"), having stored the others; 2.x answers
///   422 (or 400 for a line it cannot parse); 3.x's v1 and v2 APIs answer
///   400 and store none of the batch. The writer task finds the lines
///   refused (`refusal.rs`, else by halving) and dead-letters them. (The v3
///   writer reads 3.x's per-line answer before this.)
/// - 413: the batch is split.
/// - Every other status is transient: the lines wait (in the spool) and are
///   tried again. 429 and 5xx: InfluxDB is overloaded or down; 401, 403 and
///   404: a credential, permission or database an operator fixes while we
///   wait; a redirect (3xx, never followed), 405, 408 and any status
///   InfluxDB does not answer a write with: a URL or a proxy in the way,
///   which says nothing about the lines.
pub(crate) fn classify(status: u16, message: &str, retry_after: Option<Duration>) -> Result<(), WriteError> {
    let message = short_message(message);
    match status {
        200..=299 => Ok(()),
        413 => Err(WriteError::TooLarge),
        // Go's answer to plain HTTP on a TLS port: `influxdb.url` should say
        // https://. The lines are fine; an operator fixes the URL.
        400 if message.contains("HTTP request to an HTTPS server") => Err(WriteError::Tls {
            message: format!("influxdb: the server speaks HTTPS; write influxdb.url with https:// ({message})"),
        }),
        400 | 422 => Err(WriteError::Permanent { status, message }),
        300..=399 => Err(WriteError::Transient {
            status: Some(status),
            retry_after,
            message: format!(
                "influxdb: the server answered {status}, a redirect, which is not followed (the credentials \
                 would go along, and a 301 or 302 makes the write a GET); write influxdb.url as the address \
                 that takes writes{}",
                if message.is_empty() { String::new() } else { format!(" ({message})") }
            ),
        }),
        _ => Err(WriteError::Transient { status: Some(status), retry_after, message }),
    }
}

/// A server's answer other than success: its status, the seconds of its
/// `Retry-After` (with 429 and 503), its body.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    message: String,
}

/// POSTs `body` to `url` through the client in `client`, as `authorize`
/// makes the request; `None` on a 2xx answer, else the answer. A request
/// that gets no answer is an error: a TLS failure, after which the client is
/// built again with the roots read anew, or a transport error.
async fn post(
    client: &RwLock<reqwest::Client>,
    setup: &ClientSetup,
    url: &Url,
    body: Bytes,
    authorize: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Result<Option<Answer>, WriteError> {
    let current = client.read().unwrap_or_else(PoisonError::into_inner).clone();
    let response = match authorize(current.post(url.clone()).body(body)).send().await {
        Ok(response) => response,
        Err(error) => {
            return Err(request_error(setup, &error, |builder| {
                let rebuilt = builder.build().map_err(cannot_build)?;
                *client.write().unwrap_or_else(PoisonError::into_inner) = rebuilt;
                Ok(())
            }))
        }
    };
    let status = response.status();
    if status.is_success() {
        return Ok(None);
    }
    // Retry-After is honoured in its seconds form only; the HTTP-date form
    // is rare from InfluxDB and proxies, and falls back to backoff.
    let retry_after = if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    } else {
        None
    };
    let location = status
        .is_redirection()
        .then(|| response.headers().get(reqwest::header::LOCATION)?.to_str().ok().map(location_shown))
        .flatten();
    // A body that cannot be read leaves the message empty; the status decides.
    let message = match location {
        Some(location) => format!("Location: {location}"),
        None => response.text().await.unwrap_or_default(),
    };
    Ok(Some(Answer { status: status.as_u16(), retry_after, message }))
}

fn transport_error(error: &reqwest::Error) -> WriteError {
    let message = if error.is_timeout() { format!("timed out: {error}") } else { error.to_string() };
    WriteError::Transient { status: error.status().map(|status| status.as_u16()), retry_after: None, message }
}

/// A request that got no answer: a TLS failure, after which the writer's
/// client is built again (`install` builds and keeps it) with the roots read
/// anew for the next try, or a transport error.
fn request_error(
    setup: &ClientSetup,
    error: &reqwest::Error,
    install: impl FnOnce(reqwest::ClientBuilder) -> Result<(), String>,
) -> WriteError {
    let Some(message) = setup.tls_failure(error) else { return transport_error(error) };
    match setup.builder().and_then(install) {
        Ok(()) => WriteError::Tls { message },
        // The client as it was stays for the next try.
        Err(problem) => WriteError::Tls { message: format!("{message} ({problem})") },
    }
}

fn build_client(setup: &ClientSetup) -> Result<reqwest::Client, String> {
    setup.builder()?.build().map_err(cannot_build)
}

fn cannot_build(error: impl std::fmt::Display) -> String {
    format!("cannot build the HTTP client: {error}")
}

/// The request body for `lines`: the body encoded ahead of time, else
/// `lines` gzipped or as they are.
fn body_of(gzipped: bool, lines: &str, encoded: Option<&Bytes>) -> Bytes {
    match encoded {
        Some(body) => body.clone(),
        None if gzipped => gzip(lines),
        None => Bytes::copy_from_slice(lines.as_bytes()),
    }
}

fn write_headers(gzipped: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if gzipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers
}

pub(crate) fn gzip(body: &str) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    encoder.write_all(body.as_bytes()).expect("gzip into memory");
    Bytes::from(encoder.finish().expect("gzip into memory"))
}

fn parse_http_url(url: &str) -> Result<Url, SinkError> {
    crate::config::check_influx_url(url).map_err(SinkError::Config)
}

/// A redirect's `Location` for a log: without credentials, resolved
/// against nothing (a relative one stays as it is).
fn location_shown(location: &str) -> String {
    match Url::parse(location) {
        Ok(url) => without_credentials(&url),
        Err(_) if location.contains('@') => "(a location with credentials, not shown)".into(),
        Err(_) => location.to_string(),
    }
}

fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    // Only fails for URLs that cannot have credentials in the first place.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Server messages go into logs; a partial-write answer can list thousands of lines.
fn short_message(message: &str) -> String {
    const LIMIT: usize = 512;
    let message = message.trim();
    if message.len() <= LIMIT {
        return message.to_string();
    }
    let mut end = LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &message[..end], message.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn statuses_map_to_the_product_rules() {
        assert_eq!(classify(204, "", None), Ok(()));
        assert_eq!(classify(200, "", None), Ok(()));
        assert_eq!(classify(413, "too big", None), Err(WriteError::TooLarge));
        for status in [401, 403, 404, 429, 500, 502, 503, 504] {
            assert!(matches!(classify(status, "", None), Err(WriteError::Transient { .. })), "{status}");
        }
        let plain_to_tls = classify(400, "Client sent an HTTP request to an HTTPS server.\n", None);
        assert!(matches!(plain_to_tls, Err(WriteError::Tls { message }) if message.contains("https://")));
        for status in [400, 422] {
            assert!(matches!(classify(status, "", None), Err(WriteError::Permanent { .. })), "{status}");
        }
        // Nothing about the lines: a URL or a proxy in the way, fixed while they wait.
        for status in [301, 302, 307, 308, 405, 408, 409, 415, 418] {
            assert!(matches!(classify(status, "", None), Err(WriteError::Transient { .. })), "{status}");
        }
        let redirect = classify(301, "Location: http://elsewhere/write", None).unwrap_err().to_string();
        assert!(redirect.contains("not followed") && redirect.contains("http://elsewhere/write"), "{redirect}");
        let retry_after = Some(Duration::from_secs(1));
        assert_eq!(
            classify(429, " slow down\n", retry_after),
            Err(WriteError::Transient { status: Some(429), retry_after, message: "slow down".into() })
        );
    }

    #[test]
    fn long_server_messages_are_shortened_at_a_character_boundary() {
        let message = "é".repeat(600);
        let short = short_message(&message);
        assert!(short.len() < 600, "{}", short.len());
        assert!(short.ends_with("(1200 bytes)"));
    }

    #[test]
    fn gzip_round_trips() {
        let body = "m v=1i 1\nm v=2i 2\n";
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&gzip(body)[..]).read_to_string(&mut decoded).unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn descriptions_never_show_url_credentials() {
        let url = Url::parse("http://user:secret@influx:8086/write?db=q").unwrap();
        assert_eq!(without_credentials(&url), "http://influx:8086/write?db=q");
    }

    #[test]
    fn v2_refuses_a_url_path_the_client_would_drop() {
        let config = InfluxConfig { url: "http://influx:8086/prefix".into(), ..InfluxConfig::default() };
        let error = V2Writer::new(&config, &Secrets::default()).err().unwrap();
        assert!(error.to_string().contains("influxdb.url"), "{error}");
    }

    #[test]
    fn v1_keeps_a_url_path_prefix() {
        let config = InfluxConfig {
            url: "http://influx:8086/prefix/".into(),
            retention_policy: Some("autogen".into()),
            ..InfluxConfig::default()
        };
        let writer = V1Writer::new(&config, &Secrets::default()).unwrap();
        assert_eq!(writer.write_url.as_str(), "http://influx:8086/prefix/write?db=queuewatch&precision=ns&rp=autogen");
    }
}
