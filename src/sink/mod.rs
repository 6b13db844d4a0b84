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
//!   waits: the daemon slows down rather than drop points. At most
//!   [`MAX_IN_FLIGHT`] batches are being written at once; while they are
//!   (InfluxDB slow, or answering with transient errors that are retried),
//!   the task reads nothing new once a full batch waits, so the
//!   backpressure reaches the producers.
//! - A batch leaves when it holds `batch_size` lines, when its oldest line
//!   has waited `flush_interval`, or on [`SinkHandle::flush`]. Cuts are at
//!   line boundaries; the lines of a batch (and of its 413 halves, sent one
//!   after the other) keep their order, but two batches in flight may land
//!   in either order. That is harmless because no two lines of a run share
//!   a series and a time (points are pure functions of the events, each
//!   ticket with its own time offset), so no line overwrites another.
//! - Every line ends up counted exactly once in [`SinkReport`]: written
//!   (2xx), rejected (a 4xx other than 413, or a single line still too large),
//!   or unwritten at shutdown. Nothing is dropped silently.
//! - 429 and 5xx are retried with capped exponential backoff for as long as
//!   the daemon runs; 413 halves the batch and writes each half.
//! - Shutdown begins when the last handle is dropped: what remains is written
//!   and transient errors retried until `shutdown_deadline` has passed since
//!   then; whatever is left is counted and logged as unwritten. [`finish`]
//!   is the one way producers end a writer: should the task panic or not end
//!   in time, the report it returns still counts every point handed over
//!   and not written or refused as unwritten, and names the failure.
//! - [`SinkHandle::progress`] reads the counts while the task runs (shared
//!   atomic counters, written only by the handles and the task), among them
//!   `points_settled`: the longest prefix of the lines handed over that are
//!   all written or refused, exact whatever order batches end in. A
//!   checkpoint waits for it (`durable.rs`), not for the written and refused
//!   counts, which may include lines after one still in flight.
//! - Secrets come from [`Secrets`], resolved from the environment or a file,
//!   never from the config file, and never appear in logs or `Debug` output.
//!
//! Layout: `batch.rs` is the pure line buffer, `task.rs` the writer task,
//! `writer.rs` the destinations (InfluxDB v1, v2, a file, nothing).

mod batch;
mod task;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::error;

pub use crate::config::{InfluxApi, InfluxConfig};
pub use task::MAX_IN_FLIGHT;
pub use writer::{DiscardWriter, Encoder, FileWriter, V1Writer, V2Writer, WriteError, WriteFuture, Writer};

/// How many chunks (calls to [`SinkHandle::send`]) the channel holds before
/// producers wait.
pub const CHANNEL_CAPACITY: usize = 64;

/// How long a writer may keep retrying after shutdown was asked for.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How much longer than its shutdown deadline [`finish`] waits for a writer
/// task before it counts the task as failed.
const FINISH_GRACE: Duration = Duration::from_secs(5);

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
    /// Set when the writer task did not end normally; its report is then
    /// rebuilt from the live counts by [`finish`].
    pub failure: Option<SinkFailure>,
}

impl SinkReport {
    /// Adds `other`'s counts (several writers of one run); the first failure stays.
    pub fn add(&mut self, other: &SinkReport) {
        self.points_written += other.points_written;
        self.points_rejected += other.points_rejected;
        self.points_unwritten_at_shutdown += other.points_unwritten_at_shutdown;
        self.requests += other.requests;
        self.retries += other.retries;
        self.failure = self.failure.or(other.failure);
    }
}

/// How a writer task failed to end normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkFailure {
    #[error("the writer task failed")]
    Panicked,
    #[error("the writer task did not finish in time")]
    TimedOut,
}

/// Counts of a running writer, as [`SinkHandle::progress`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkProgress {
    /// Points accepted by [`SinkHandle::send`] from every handle.
    pub points_handed: u64,
    pub points_written: u64,
    /// Refused permanently by the server.
    pub points_rejected: u64,
    /// The longest prefix of the points handed over (in the order they were
    /// handed) that are all written or refused. Batches end in any order, so
    /// this can be less than written plus refused; a checkpoint waits for it.
    pub points_settled: u64,
}

/// The live counts behind [`SinkProgress`]. Relaxed ordering: each counter is
/// read on its own and only grows.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    handed: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) settled: AtomicU64,
}

impl Counters {
    fn progress(&self) -> SinkProgress {
        SinkProgress {
            points_handed: self.handed.load(Ordering::Relaxed),
            points_written: self.written.load(Ordering::Relaxed),
            points_rejected: self.rejected.load(Ordering::Relaxed),
            points_settled: self.settled.load(Ordering::Relaxed),
        }
    }
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
    counters: Arc<Counters>,
    shutdown_deadline: Duration,
}

impl SinkHandle {
    /// Queues `lines`: complete line-protocol lines, each ending with
    /// `'\n'`; `count` is the number of lines (checked in debug builds).
    /// Waits while the channel is full.
    pub async fn send(&self, lines: String, count: usize) -> Result<(), SinkClosed> {
        if lines.is_empty() {
            return Ok(());
        }
        self.commands.send(task::Command::Lines { text: lines, count }).await.map_err(|_| SinkClosed)?;
        self.counters.handed.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The counts so far, while the writer runs.
    pub fn progress(&self) -> SinkProgress {
        self.counters.progress()
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
    let settings = task::Settings {
        batch_size: batch_size.max(1),
        flush_interval,
        max_backoff,
        shutdown_deadline,
        max_in_flight: MAX_IN_FLIGHT,
    };
    let counters = Arc::new(Counters::default());
    let writer_task = task::WriterTask::new(writer, settings, command_receiver, alive_receiver, Arc::clone(&counters));
    (SinkHandle { commands, _alive: alive, counters, shutdown_deadline }, tokio::spawn(writer_task.run()))
}

/// Drops `handle` and waits for the writer's report: at most its shutdown
/// deadline and a grace period once the other handles are gone too. If the
/// task panicked or did not end in time, the report is rebuilt from the live
/// counts: every point handed over and neither written nor refused counts as
/// unwritten, and `failure` says what happened.
pub async fn finish(handle: SinkHandle, task: JoinHandle<SinkReport>) -> SinkReport {
    let wait = handle.shutdown_deadline.saturating_add(FINISH_GRACE);
    finish_within(handle, task, wait).await
}

/// [`finish`], waiting no later than `deadline` (the daemon's shutdown
/// budget): a writer still running then is reported as timed out, with every
/// point it had not settled counted unwritten.
pub async fn finish_by(handle: SinkHandle, task: JoinHandle<SinkReport>, deadline: tokio::time::Instant) -> SinkReport {
    let wait = handle.shutdown_deadline.saturating_add(FINISH_GRACE);
    let wait = wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    finish_within(handle, task, wait).await
}

async fn finish_within(handle: SinkHandle, task: JoinHandle<SinkReport>, wait: Duration) -> SinkReport {
    let counters = Arc::clone(&handle.counters);
    drop(handle);
    let failure = match tokio::time::timeout(wait, task).await {
        Ok(Ok(report)) => return report,
        Ok(Err(join_error)) => {
            error!(%join_error, "The InfluxDB writer failed.");
            SinkFailure::Panicked
        }
        Err(_) => {
            error!("The InfluxDB writer did not finish in time.");
            SinkFailure::TimedOut
        }
    };
    let progress = counters.progress();
    SinkReport {
        points_written: progress.points_written,
        points_rejected: progress.points_rejected,
        points_unwritten_at_shutdown: progress
            .points_handed
            .saturating_sub(progress.points_written + progress.points_rejected),
        failure: Some(failure),
        ..SinkReport::default()
    }
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

    #[tokio::test]
    async fn progress_counts_points_handed_written_and_refused_while_the_writer_runs() {
        let writer = ScriptedWriter::new(|body| {
            if body.contains("bad") {
                Err(WriteError::Permanent { status: 400, message: "bad".into() })
            } else {
                Ok(())
            }
        });
        let (sink, task) = spawn_with(Box::new(writer), 1, MS, MS, Duration::from_secs(1));
        sink.send("a v=1i 1\nb v=2i 2\n".into(), 2).await.unwrap();
        sink.send("bad v=3i 3\n".into(), 1).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            sink.progress(),
            SinkProgress { points_handed: 3, points_written: 2, points_rejected: 1, points_settled: 3 }
        );
        let report = finish(sink, task).await;
        assert_eq!((report.points_written, report.points_rejected, report.failure), (2, 1, None));
    }

    #[tokio::test]
    async fn a_writer_task_that_panics_is_reported_with_what_it_did_not_write() {
        let writer = ScriptedWriter::new(|body| if body.contains("boom") { panic!("writer bug") } else { Ok(()) });
        let (sink, task) = spawn_with(Box::new(writer), 1, MS, MS, Duration::from_secs(1));
        sink.send("a v=1i 1\n".into(), 1).await.unwrap();
        sink.flush().await.unwrap();
        sink.send("boom v=2i 2\nc v=3i 3\n".into(), 2).await.unwrap();
        let report = finish(sink, task).await;
        assert_eq!(report.failure, Some(SinkFailure::Panicked));
        assert_eq!((report.points_written, report.points_unwritten_at_shutdown), (1, 2));
    }

    #[tokio::test]
    async fn a_writer_task_that_does_not_end_in_time_is_reported_as_timed_out() {
        let (sink, _task) = spawn_with(
            Box::new(ScriptedWriter::never_answers()),
            10,
            Duration::from_secs(60),
            MS,
            Duration::from_secs(1),
        );
        sink.send("a v=1i 1\n".into(), 1).await.unwrap();
        // Stands in for a task stuck past its deadline.
        let stuck: JoinHandle<SinkReport> = tokio::spawn(std::future::pending());
        let report = finish_within(sink, stuck, 10 * MS).await;
        assert_eq!(report.failure, Some(SinkFailure::TimedOut));
        assert_eq!((report.points_written, report.points_unwritten_at_shutdown), (0, 1));
    }

    #[tokio::test]
    async fn points_settled_waits_for_an_earlier_batch_that_ends_after_a_later_one() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (sink, task) = spawn_with(
            Box::new(GatedWriter(Arc::clone(&gate))),
            2,
            Duration::from_secs(60),
            MS,
            Duration::from_secs(1),
        );
        sink.send("slow v=1i 1\nslow v=2i 2\n".into(), 2).await.unwrap();
        sink.send("b v=3i 3\nc v=4i 4\n".into(), 2).await.unwrap();
        while sink.progress().points_written < 2 {
            tokio::time::sleep(MS).await;
        }
        let progress = SinkProgress { points_handed: 4, points_written: 2, points_rejected: 0, points_settled: 0 };
        assert_eq!(sink.progress(), progress, "the second batch is written, the first still in flight");
        gate.add_permits(1);
        sink.flush().await.unwrap();
        assert_eq!(sink.progress(), SinkProgress { points_written: 4, points_settled: 4, ..progress });
        assert_eq!(finish(sink, task).await.points_written, 4);
    }

    /// Holds every body with a `slow` line until the test lets it through.
    struct GatedWriter(Arc<tokio::sync::Semaphore>);

    impl Writer for GatedWriter {
        fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
            Box::pin(async move {
                if body.contains("slow") {
                    let _ = self.0.acquire().await.map(|permit| permit.forget());
                }
                Ok(())
            })
        }

        fn describe(&self) -> String {
            "gated".into()
        }
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
