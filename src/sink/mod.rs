//! The batching writer to InfluxDB.
//!
//! Owns getting line protocol from producers into InfluxDB: batching,
//! compression, retries, and the count of every point's fate.
//!
//! Invariants:
//! - One writer task owns the pending lines and the batch being written;
//!   producers only hold [`SinkHandle`]s and nothing is shared or locked.
//! - Producers and the task talk over a bounded channel of
//!   [`CHANNEL_CAPACITY`] chunks. When it is full, [`SinkHandle::send`]
//!   waits: the daemon slows down rather than drop points. While InfluxDB
//!   answers with transient errors the task retries the same batch and reads
//!   nothing new, so the backpressure reaches the producers.
//! - A batch leaves when it holds `batch_size` lines, when its oldest line
//!   has waited `flush_interval`, or on [`SinkHandle::flush`]. Cuts are at
//!   line boundaries; lines keep their order.
//! - Every line ends up counted exactly once in [`SinkReport`]: written
//!   (2xx), rejected (a 4xx other than 413, or a single line still too large),
//!   or unwritten at shutdown. Nothing is dropped silently.
//! - 429 and 5xx are retried with capped exponential backoff for as long as
//!   the daemon runs; 413 halves the batch and writes each half.
//! - Shutdown begins when the last handle is dropped: what remains is written
//!   and transient errors retried until `shutdown_deadline` has passed since
//!   then; whatever is left is counted and logged as unwritten.
//! - Secrets come from [`Secrets`], resolved from the environment or a file,
//!   never from the config file, and never appear in logs or `Debug` output.
//!
//! Layout: `batch.rs` is the pure line buffer, `task.rs` the writer task,
//! `writer.rs` the destinations (InfluxDB v1, v2, a file, nothing).

mod batch;
mod task;
mod writer;

use std::fmt;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::config::{InfluxApi, InfluxConfig};
pub use writer::{DiscardWriter, FileWriter, V1Writer, V2Writer, WriteError, WriteFuture, Writer};

/// How many chunks (calls to [`SinkHandle::send`]) the channel holds before
/// producers wait.
pub const CHANNEL_CAPACITY: usize = 64;

/// Secrets resolved from the environment or files by the caller (never from
/// config, never logged: `Debug` shows only whether each is set).
#[derive(Clone, Default)]
pub struct Secrets {
    pub token: Option<String>,
    pub password: Option<String>,
}

impl Secrets {
    /// The token from the environment variable named by `token_env` or the
    /// file named by `token_file` (trimmed), the password from the
    /// environment variable named by `password_env`. Every problem is
    /// reported at once, each naming its key.
    pub fn resolve(config: &InfluxConfig) -> Result<Secrets, SinkError> {
        let mut problems = Vec::new();
        let mut secrets = Secrets::default();
        if let Some(name) = &config.token_env {
            secrets.token = from_env("influxdb.token_env", name, &mut problems);
        }
        if let Some(path) = &config.token_file {
            match std::fs::read_to_string(path) {
                Ok(text) if text.trim().is_empty() => {
                    problems.push(format!("influxdb.token_file: {path:?} is empty"));
                }
                Ok(text) => secrets.token = Some(text.trim().to_string()),
                Err(error) => problems.push(format!("influxdb.token_file: cannot read {path:?}: {error}")),
            }
        }
        if let Some(name) = &config.password_env {
            secrets.password = from_env("influxdb.password_env", name, &mut problems);
        }
        if problems.is_empty() {
            Ok(secrets)
        } else {
            Err(SinkError::Config(problems.join("\n")))
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |secret: &Option<String>| if secret.is_some() { "<set>" } else { "<unset>" };
        formatter
            .debug_struct("Secrets")
            .field("token", &shown(&self.token))
            .field("password", &shown(&self.password))
            .finish()
    }
}

/// Why the sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A config value or secret is unusable; the message names the key.
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

/// What the writer task reports when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkReport {
    pub points_written: u64,
    /// Refused permanently (4xx other than 413, or one line still too large);
    /// counted, never silently dropped.
    pub points_rejected: u64,
    pub points_unwritten_at_shutdown: u64,
    /// Every write attempt, retries and 413 halves included.
    pub requests: u64,
    /// Attempts made again after a transient failure.
    pub retries: u64,
}

/// The writer task has ended; nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the InfluxDB writer task has ended")]
pub struct SinkClosed;

/// Handle used by producers. Cloneable; the writer task shuts down once
/// every clone is dropped.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    commands: mpsc::Sender<task::Command>,
    /// Never sent on: the task learns that the last handle is gone when it
    /// closes, even while it is busy retrying and not reading `commands`.
    _alive: mpsc::Sender<()>,
}

impl SinkHandle {
    /// Queues `lines`: complete line-protocol lines, each ending with
    /// `'\n'`; `count` is the number of lines (checked in debug builds).
    /// Waits while the channel is full.
    pub async fn send(&self, lines: String, count: usize) -> Result<(), SinkClosed> {
        if lines.is_empty() {
            return Ok(());
        }
        self.commands.send(task::Command::Lines { text: lines, count }).await.map_err(|_| SinkClosed)
    }

    /// Resolves when everything sent before this call has been written (or
    /// given up on as a permanent 4xx).
    pub async fn flush(&self) -> Result<(), SinkClosed> {
        let (reply, done) = oneshot::channel();
        self.commands.send(task::Command::Flush(reply)).await.map_err(|_| SinkClosed)?;
        done.await.map_err(|_| SinkClosed)
    }
}

/// Starts the writer task for the configured InfluxDB API. Must be called
/// within a Tokio runtime. The task ends after every [`SinkHandle`] is
/// dropped: it then writes what remains, retrying transient errors until
/// `shutdown_deadline` elapses (counting what is still unwritten in
/// `points_unwritten_at_shutdown`), and returns the report.
pub fn spawn(
    config: &InfluxConfig,
    secrets: Secrets,
    shutdown_deadline: Duration,
) -> Result<(SinkHandle, JoinHandle<SinkReport>), SinkError> {
    let writer: Box<dyn Writer> = match config.api {
        InfluxApi::V1 => Box::new(V1Writer::new(config, &secrets)?),
        InfluxApi::V2 => Box::new(V2Writer::new(config, &secrets)?),
    };
    Ok(spawn_with(writer, config.batch_size, config.flush_interval, config.max_backoff, shutdown_deadline))
}

/// The same writer task over any [`Writer`] (tests, the demo's file output,
/// benchmarks' discard sink). Must be called within a Tokio runtime.
pub fn spawn_with(
    writer: Box<dyn Writer>,
    batch_size: usize,
    flush_interval: Duration,
    max_backoff: Duration,
    shutdown_deadline: Duration,
) -> (SinkHandle, JoinHandle<SinkReport>) {
    let (commands, command_receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let (alive, alive_receiver) = mpsc::channel(1);
    let settings = task::Settings { batch_size: batch_size.max(1), flush_interval, max_backoff, shutdown_deadline };
    let writer_task = task::WriterTask::new(writer, settings, command_receiver, alive_receiver);
    (SinkHandle { commands, _alive: alive }, tokio::spawn(writer_task.run()))
}

fn from_env(key: &str, name: &str, problems: &mut Vec<String>) -> Option<String> {
    match std::env::var(name) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => {
            problems.push(format!("{key}: environment variable {name:?} is not set"));
            None
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            problems.push(format!("{key}: environment variable {name:?} is not valid UTF-8"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn token_file_is_read_and_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  xyz-token  ").unwrap();
        let config = InfluxConfig { token_file: Some(file.path().display().to_string()), ..InfluxConfig::default() };
        assert_eq!(Secrets::resolve(&config).unwrap().token.as_deref(), Some("xyz-token"));
    }

    #[test]
    fn token_and_password_come_from_the_named_environment_variables() {
        // Set by cargo for every test run; reading an existing variable avoids
        // `set_var`, which races with other threads reading the environment.
        let config = InfluxConfig {
            token_env: Some("CARGO_PKG_NAME".into()),
            password_env: Some("CARGO_PKG_NAME".into()),
            ..InfluxConfig::default()
        };
        let secrets = Secrets::resolve(&config).unwrap();
        assert_eq!(secrets.token.as_deref(), Some(env!("CARGO_PKG_NAME")));
        assert_eq!(secrets.password.as_deref(), Some(env!("CARGO_PKG_NAME")));
    }

    #[test]
    fn every_missing_secret_is_reported_with_its_key() {
        let config = InfluxConfig {
            token_file: Some("/nonexistent/queuewatch/token".into()),
            password_env: Some("QUEUEWATCH_TEST_UNSET_PASSWORD_VARIABLE".into()),
            ..InfluxConfig::default()
        };
        let message = Secrets::resolve(&config).err().unwrap().to_string();
        assert!(message.contains("influxdb.token_file"), "{message}");
        assert!(message.contains("influxdb.password_env"), "{message}");
        assert!(message.contains("QUEUEWATCH_TEST_UNSET_PASSWORD_VARIABLE"), "{message}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let secrets = Secrets { token: Some("xyz-token".into()), password: None };
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("xyz-token"), "{shown}");
        assert!(shown.contains("<set>") && shown.contains("<unset>"), "{shown}");
    }

    #[tokio::test]
    async fn a_single_line_still_too_large_is_rejected_and_the_others_written() {
        let writer = ScriptedWriter::new(|body| if body.contains("huge") { Err(WriteError::TooLarge) } else { Ok(()) });
        let (sink, task) = spawn_with(Box::new(writer), 10, Duration::from_secs(60), MS, Duration::from_secs(1));
        sink.send("a v=1i 1\nhuge v=2i 2\nb v=3i 3\nc v=4i 4\n".into(), 4).await.unwrap();
        sink.flush().await.unwrap();
        drop(sink);
        let report = task.await.unwrap();
        assert_eq!(report.points_written, 3);
        assert_eq!(report.points_rejected, 1);
        // [a, huge, b, c] 413 → [a, huge] 413 → [a] ok, [huge] 413; [b, c] ok.
        assert_eq!(report.requests, 5);
    }

    #[tokio::test]
    async fn the_deadline_cuts_short_a_request_that_never_answers() {
        let writer = ScriptedWriter::never_answers();
        let (sink, task) = spawn_with(Box::new(writer), 10, MS, MS, Duration::from_millis(50));
        sink.send("a v=1i 1\nb v=2i 2\n".into(), 2).await.unwrap();
        drop(sink);
        let report = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        assert_eq!(report.points_unwritten_at_shutdown, 2);
        assert_eq!(report.points_written, 0);
    }

    #[tokio::test]
    async fn sending_after_the_task_ended_is_an_error_not_a_hang() {
        let (sink, task) = spawn_with(Box::new(DiscardWriter::new()), 10, MS, MS, MS);
        task.abort();
        let _ = task.await;
        assert_eq!(sink.send("a v=1i 1\n".into(), 1).await, Err(SinkClosed));
        assert_eq!(sink.flush().await, Err(SinkClosed));
    }

    const MS: Duration = Duration::from_millis(1);

    type Script = Box<dyn Fn(&str) -> Result<(), WriteError> + Send + Sync>;

    /// Answers each write by a function of its body, or never.
    struct ScriptedWriter {
        answer: Option<Script>,
    }

    impl ScriptedWriter {
        fn new(answer: impl Fn(&str) -> Result<(), WriteError> + Send + Sync + 'static) -> ScriptedWriter {
            ScriptedWriter { answer: Some(Box::new(answer)) }
        }

        fn never_answers() -> ScriptedWriter {
            ScriptedWriter { answer: None }
        }
    }

    impl Writer for ScriptedWriter {
        fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
            match &self.answer {
                Some(answer) => Box::pin(std::future::ready(answer(body))),
                None => Box::pin(std::future::pending()),
            }
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }
}
