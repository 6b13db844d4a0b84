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
//!   (2xx), refused (dead-lettered: see below), left in the spool, or
//!   unwritten at shutdown. Nothing is dropped silently.
//! - With a [`SinkStore`] (`queuewatch run`), a batch that meets a transient
//!   failure (connection refused, timeout, 5xx, 429, and 401/403/404, which
//!   an operator fixes while we wait) goes to the disk spool (`spool.rs`) and
//!   counts as settled once synced; while the spool holds anything, every new
//!   batch goes behind it and the spool is sent, oldest first and one batch
//!   at a time, with capped exponential backoff. When the spool is full the
//!   task takes no more lines, so [`SinkHandle::send`] waits and MQTT
//!   acknowledgements stop: the broker holds the backlog. Without a store
//!   (`replay`, the demo), transient failures are retried in memory.
//! - A failed TLS handshake (an untrusted certificate, one for another host)
//!   is transient too: the batch goes to the spool, and the writer builds its
//!   HTTP client again with `influxdb.ca_file` read anew before its next try
//!   (`tls.rs`), so a corrected certificate needs no restart.
//! - 413 and a refusal of the batch's content (400, 422: InfluxDB 1.x answers
//!   `400 partial write` naming one bad line, 2.x `422`, 3.x's v1 and v2
//!   APIs `400` for the whole batch) halve the batch and send each half, down
//!   to single lines; a single line still refused goes to the dead-letter
//!   file (`dead_letter.rs`) with the server's answer. Writes are idempotent,
//!   so re-sending the lines a partial write stored is harmless. InfluxDB 3's
//!   own API (`api = "v3"`) stores the good lines of a batch and names each
//!   refused one: those go to the dead-letter file with their reasons and the
//!   rest count as written, in one request.
//! - After a 401 or 403 the writer reads `token_file` / `password_file`
//!   again before its next try, so a rotated secret needs no restart.
//! - Shutdown begins when the last handle is dropped: what remains is written
//!   and transient errors retried until `shutdown_deadline` has passed since
//!   then; whatever is left is counted and logged as unwritten. [`finish`]
//!   is the one way producers end a writer: should the task panic or not end
//!   in time, the report it returns still counts every point handed over
//!   and not written or refused as unwritten, and names the failure.
//! - [`SinkHandle::progress`] reads the counts while the task runs (shared
//!   atomic counters, written only by the handles and the task), among them
//!   `points_settled`: the longest prefix of the lines handed over that are
//!   all written, refused or spooled, exact whatever order batches end in. A
//!   checkpoint waits for it (`durable.rs`), not for the written and refused
//!   counts, which may include lines after one still in flight.
//! - Secrets come from [`Secrets`], resolved from the environment or a file,
//!   never from the config file, and never appear in logs or `Debug` output.
//!
//! Layout: `batch.rs` is the pure line buffer, `task.rs` the writer task,
//! `writer.rs` the destinations (InfluxDB v1, v2, v3, a file, nothing), `tls.rs`
//! their HTTP client's trust (HTTPS) and TLS failures,
//! `spool.rs` the disk spool, `dead_letter.rs` the refused lines.

mod backoff;
mod batch;
pub mod dead_letter;
mod refusal;
mod spool;
mod task;
pub mod tls;
mod writer;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::error;

use crate::time::Millis;

pub use crate::config::{InfluxApi, InfluxConfig};
pub use dead_letter::{Appended, DeadLetters, ResendReport, DEAD_LETTER_FILE};
pub use task::MAX_IN_FLIGHT;
pub use writer::{
    DiscardWriter, Encoder, FileWriter, RefusedLine, V1Writer, V2Writer, V3Writer, WriteError, WriteFuture, Writer,
};

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
            match read_token_file(path) {
                Ok(token) => secrets.token = Some(token),
                Err(problem) => problems.push(problem),
            }
        }
        if let Some(name) = &config.password_env {
            secrets.password = from_env("influxdb.password_env", name, &mut problems);
        }
        if let Some(path) = &config.password_file {
            match read_password_file(path) {
                Ok(password) => secrets.password = Some(password),
                Err(problem) => problems.push(problem),
            }
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

/// The password in `path` (`influxdb.password_file`), without one trailing
/// newline; read again after a 401/403. The file is refused if others may
/// write it (`crate::secret`); the error names the key, never the content.
pub(crate) fn read_password_file(path: &str) -> Result<String, String> {
    crate::secret::read_text("influxdb.password_file", Path::new(path)).map_err(|error| error.to_string())
}

/// The token in `path` (`influxdb.token_file`), trimmed, checked as above.
pub(crate) fn read_token_file(path: &str) -> Result<String, String> {
    let token = crate::secret::read_text("influxdb.token_file", Path::new(path)).map_err(|error| error.to_string())?;
    match token.trim() {
        "" => Err(format!("influxdb.token_file: {path:?} is empty")),
        trimmed => Ok(trimmed.to_string()),
    }
}

/// Why the sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A config value or secret is unusable (the message names the key), or
    /// the HTTP client cannot be built with it (the roots for `https://`).
    #[error("{0}")]
    Config(String),
    /// The spool or the dead-letter file cannot be used.
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// What the writer keeps on disk (`queuewatch run`): the spool and the
/// dead-letter file, both in `storage.data_dir`.
#[derive(Debug)]
pub struct SinkStore {
    spool: Option<spool::Spool>,
    dead_letters: DeadLetters,
}

impl SinkStore {
    /// Opens `data_dir/spool` (taking its lock; none when `spool_max_bytes`
    /// is 0) and names `data_dir/dead-letters.lp`. What waits in the spool
    /// is sent first, before any line handed over.
    pub fn open(data_dir: &Path, spool_max_bytes: u64) -> Result<SinkStore, SinkError> {
        std::fs::create_dir_all(data_dir).map_err(|source| crate::storage::StorageError::io(data_dir, source))?;
        let spool = if spool_max_bytes > 0 {
            let (spool, recovered) = spool::Spool::open(&data_dir.join("spool"), spool_max_bytes)?;
            if recovered.lines > 0 || recovered.bytes_discarded > 0 || recovered.segments_quarantined > 0 {
                tracing::info!(
                    batches = recovered.batches,
                    points = recovered.lines,
                    bytes_discarded = recovered.bytes_discarded,
                    segments_quarantined = recovered.segments_quarantined,
                    bytes_quarantined = recovered.bytes_quarantined,
                    "Points waiting in the spool are sent first."
                );
            }
            Some(spool)
        } else {
            None
        };
        Ok(SinkStore { spool, dead_letters: DeadLetters::in_dir(data_dir) })
    }

    /// The dead-letter file holds at most `max_bytes` (`storage.dead_letter_max_bytes`).
    pub fn with_dead_letter_max_bytes(self, max_bytes: u64) -> SinkStore {
        SinkStore { dead_letters: self.dead_letters.with_max_bytes(max_bytes), ..self }
    }
}

/// What the writer task reports when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkReport {
    pub points_written: u64,
    /// Refused for themselves (single lines after halving); with a store
    /// they are in the dead-letter file. Counted, never silently dropped.
    pub points_rejected: u64,
    /// Handed over and neither written, refused nor spooled when the writer
    /// ended (the journal has them: `queuewatch run` derives them again).
    pub points_unwritten_at_shutdown: u64,
    /// In the spool when the writer ended, sent at the next start (those that
    /// were there when it started and are still there included).
    pub points_left_in_spool: u64,
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
        self.points_left_in_spool += other.points_left_in_spool;
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

/// Counts of a running writer, as [`SinkHandle::progress`] reads them (and
/// the metrics export). Counts only grow; `spool_*` are levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkProgress {
    /// Points accepted by [`SinkHandle::send`] from every handle.
    pub points_handed: u64,
    /// Points InfluxDB took, those re-sent from the spool included.
    pub points_written: u64,
    /// Points refused for themselves (single lines after halving); with a
    /// store they are in the dead-letter file.
    pub points_rejected: u64,
    /// Of `points_rejected`, those written to the dead-letter file.
    pub points_dead_lettered: u64,
    /// Of `points_rejected`, those dropped because the dead-letter file had
    /// reached `storage.dead_letter_max_bytes` (or the file could not be written).
    pub points_dead_letter_dropped: u64,
    /// The longest prefix of the points handed over (in the order they were
    /// handed) that are all written, refused or spooled. Batches end in any
    /// order, so this can be less than their sum; a checkpoint waits for it.
    pub points_settled: u64,
    /// Points put in the spool since the writer started.
    pub points_spooled: u64,
    /// Points that were waiting in the spool when the writer started.
    pub points_spooled_before_start: u64,
    /// Points in the spool now (the batch being re-sent included).
    pub spool_points: u64,
    /// Bytes in the spool now (framing included), at most `spool_max_bytes`.
    pub spool_bytes: u64,
    /// When the oldest batch in the spool was spooled (wall clock).
    pub spool_oldest: Option<Millis>,
    /// The spool is full: the writer takes no more lines and MQTT
    /// acknowledgements have stopped until InfluxDB takes some.
    pub spool_full: bool,
    /// Damaged spool segments set aside in `data_dir/spool/quarantine`
    /// since the writer started (at its start included): their batches
    /// before the damage are sent, the rest is kept there, not sent.
    pub spool_segments_quarantined: u64,
    /// Write requests made (retries, halves and spool re-sends included).
    pub requests: u64,
    /// Requests made again after a transient failure.
    pub retries: u64,
    /// Failed write requests, by kind of failure.
    pub write_errors: WriteErrors,
}

/// Failed write requests by kind of failure (HTTP status class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteErrors {
    /// No HTTP answer: connection refused or reset, timeout.
    pub transport: u64,
    /// 401 and 403 (credentials re-read before the next try).
    pub unauthorized: u64,
    /// 404 (database or bucket missing).
    pub not_found: u64,
    /// 413 (the batch is halved).
    pub too_large: u64,
    /// 400 and 422: lines refused for their content.
    pub refused: u64,
    /// 429.
    pub throttled: u64,
    /// 5xx.
    pub server: u64,
    /// A failed TLS handshake: an untrusted certificate, one for another host.
    pub tls: u64,
    /// A status InfluxDB does not answer a write with: a redirect (never
    /// followed), 405, 408, other 4xx; a URL or proxy to correct.
    pub unexpected: u64,
}

/// The kinds of [`WriteErrors`], as indexes into [`Counters::write_errors`].
const ERROR_KINDS: usize = 9;

fn error_kind(error: &WriteError) -> usize {
    match error {
        WriteError::Transient { status: None, .. } => 0,
        WriteError::Transient { status: Some(401 | 403), .. } => 1,
        WriteError::Transient { status: Some(404), .. } => 2,
        WriteError::TooLarge => 3,
        WriteError::Transient { status: Some(429), .. } => 5,
        WriteError::Transient { status: Some(500..), .. } => 6,
        WriteError::Tls { .. } => 7,
        WriteError::Permanent { .. } | WriteError::LinesRefused { .. } => 4,
        WriteError::Transient { status: Some(_), .. } => 8,
    }
}

/// The live counts behind [`SinkProgress`]. Relaxed ordering: each counter is
/// read on its own.
#[derive(Debug)]
pub(crate) struct Counters {
    handed: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dead_letter_dropped: AtomicU64,
    pub(crate) settled: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) spooled_before_start: AtomicU64,
    pub(crate) spool_points: AtomicU64,
    pub(crate) spool_bytes: AtomicU64,
    /// Milliseconds since the epoch; `i64::MIN` when the spool is empty.
    pub(crate) spool_oldest_ms: AtomicI64,
    pub(crate) spool_full: AtomicBool,
    pub(crate) spool_quarantined: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    write_errors: [AtomicU64; ERROR_KINDS],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dead_letter_dropped: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            spooled_before_start: AtomicU64::new(0),
            spool_points: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            spool_oldest_ms: AtomicI64::new(i64::MIN),
            spool_full: AtomicBool::new(false),
            spool_quarantined: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            write_errors: Default::default(),
        }
    }
}

impl Counters {
    fn progress(&self) -> SinkProgress {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let errors = |kind: usize| load(&self.write_errors[kind]);
        let oldest = self.spool_oldest_ms.load(Ordering::Relaxed);
        SinkProgress {
            points_handed: load(&self.handed),
            points_written: load(&self.written),
            points_rejected: load(&self.rejected),
            points_dead_lettered: load(&self.dead_lettered),
            points_dead_letter_dropped: load(&self.dead_letter_dropped),
            points_settled: load(&self.settled),
            points_spooled: load(&self.spooled),
            points_spooled_before_start: load(&self.spooled_before_start),
            spool_points: load(&self.spool_points),
            spool_bytes: load(&self.spool_bytes),
            spool_oldest: (oldest != i64::MIN).then_some(Millis(oldest)),
            spool_full: self.spool_full.load(Ordering::Relaxed),
            spool_segments_quarantined: load(&self.spool_quarantined),
            requests: load(&self.requests),
            retries: load(&self.retries),
            write_errors: WriteErrors {
                transport: errors(0),
                unauthorized: errors(1),
                not_found: errors(2),
                too_large: errors(3),
                refused: errors(4),
                throttled: errors(5),
                server: errors(6),
                tls: errors(7),
                unexpected: errors(8),
            },
        }
    }

    pub(crate) fn count_error(&self, error: &WriteError) {
        self.write_errors[error_kind(error)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads a writer's [`SinkProgress`] from its shared counters, for the
/// operations endpoint, which must see a full spool even while the daemon
/// loop waits on that writer.
#[derive(Debug, Clone)]
pub struct ProgressReader(Arc<Counters>);

impl ProgressReader {
    /// The counts now.
    pub fn read(&self) -> SinkProgress {
        self.0.progress()
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

    /// Reads the same counts without keeping the writer alive (a handle
    /// would: the writer stops when the last handle is dropped).
    pub fn progress_reader(&self) -> ProgressReader {
        ProgressReader(Arc::clone(&self.counters))
    }

    /// Resolves when everything sent before this call is settled: written,
    /// refused, or safely in the spool.
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
///
/// With a `store`, transient failures send batches to its spool and refused
/// lines to its dead-letter file (see the module's invariants).
pub fn spawn(
    config: &InfluxConfig,
    secrets: Secrets,
    store: Option<SinkStore>,
    shutdown_deadline: Duration,
) -> Result<(SinkHandle, JoinHandle<SinkReport>), SinkError> {
    let writer = influx_writer(config, &secrets)?;
    let settings = task_settings(config.batch_size, config.flush_interval, config.max_backoff, shutdown_deadline);
    Ok(spawn_task(writer, settings, store))
}

/// The writer for the configured InfluxDB API.
pub fn influx_writer(config: &InfluxConfig, secrets: &Secrets) -> Result<Box<dyn Writer>, SinkError> {
    Ok(match config.api {
        InfluxApi::V1 => Box::new(V1Writer::new(config, secrets)?),
        InfluxApi::V2 => Box::new(V2Writer::new(config, secrets)?),
        InfluxApi::V3 => Box::new(V3Writer::new(config, secrets)?),
    })
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
    spawn_task(writer, task_settings(batch_size, flush_interval, max_backoff, shutdown_deadline), None)
}

fn task_settings(
    batch_size: usize,
    flush_interval: Duration,
    max_backoff: Duration,
    shutdown_deadline: Duration,
) -> task::Settings {
    task::Settings {
        batch_size: batch_size.max(1),
        flush_interval,
        max_backoff,
        shutdown_deadline,
        max_in_flight: MAX_IN_FLIGHT,
    }
}

fn spawn_task(
    writer: Box<dyn Writer>,
    settings: task::Settings,
    store: Option<SinkStore>,
) -> (SinkHandle, JoinHandle<SinkReport>) {
    let (commands, command_receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let (alive, alive_receiver) = mpsc::channel(1);
    let counters = Arc::new(Counters::default());
    let shutdown_deadline = settings.shutdown_deadline;
    let writer_task =
        task::WriterTask::new(writer, settings, command_receiver, alive_receiver, Arc::clone(&counters), store);
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
        points_unwritten_at_shutdown: (progress.points_handed + progress.points_spooled_before_start)
            .saturating_sub(progress.points_written + progress.points_rejected + progress.spool_points),
        points_left_in_spool: progress.spool_points,
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
    async fn the_lines_a_batch_had_refused_reach_the_dead_letter_file_in_one_synced_append() {
        // An answer that names no line: the batch is halved down to the three refused.
        let writer = ScriptedWriter::new(|body| {
            if body.contains("bad") {
                Err(WriteError::Permanent {
                    status: 400,
                    message: "partial write: unable to parse 'x': dropped=0".into(),
                })
            } else {
                Ok(())
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = SinkStore::open(dir.path(), 0).unwrap();
        let dead_letters = store.dead_letters.clone();
        let settings = task_settings(16, Duration::from_secs(60), MS, Duration::from_secs(1));
        let (sink, task) = spawn_task(Box::new(writer), settings, Some(store));
        let lines: String = (0..16)
            .map(|number| {
                if [2, 7, 13].contains(&number) {
                    format!("bad v={number}i {number}\n")
                } else {
                    format!("good v={number}i {number}\n")
                }
            })
            .collect();
        sink.send(lines, 16).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(counts(sink.progress()), (16, 13, 3, 16));
        assert_eq!(sink.progress().points_dead_lettered, 3);
        assert_eq!(dead_letters.appends(), 1, "one append, one fdatasync for the batch");
        let entries = dead_letter::parse(&std::fs::read_to_string(dead_letters.path()).unwrap());
        let refused: Vec<&str> = entries.iter().map(|entry| entry.line.as_str()).collect();
        assert_eq!(refused, ["bad v=2i 2", "bad v=7i 7", "bad v=13i 13"]);
        finish(sink, task).await;
    }

    #[tokio::test]
    async fn refused_lines_beyond_the_dead_letter_limit_are_dropped_and_counted() {
        let writer = ScriptedWriter::new(|body| {
            let lines = body.lines().count();
            Err(WriteError::Permanent {
                status: 400,
                message: format!("partial write: points beyond retention policy dropped={lines}"),
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let store = SinkStore::open(dir.path(), 0).unwrap().with_dead_letter_max_bytes(1024);
        let settings = task_settings(100, Duration::from_secs(60), MS, Duration::from_secs(1));
        let (sink, task) = spawn_task(Box::new(writer), settings, Some(store));
        let lines: String = (0..100).map(|number| format!("ticket,office=o1 wait_s={number}i {number}\n")).collect();
        sink.send(lines, 100).await.unwrap();
        sink.flush().await.unwrap();
        let progress = sink.progress();
        assert_eq!((progress.points_rejected, progress.points_settled), (100, 100));
        assert!(progress.points_dead_lettered > 0 && progress.points_dead_letter_dropped > 50, "{progress:?}");
        assert_eq!(progress.points_dead_lettered + progress.points_dead_letter_dropped, 100);
        assert_eq!(progress.requests, 1, "a whole batch beyond retention is one request");
        assert!(std::fs::metadata(dir.path().join(DEAD_LETTER_FILE)).unwrap().len() <= 1024);
        finish(sink, task).await;
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
        assert_eq!(counts(sink.progress()), (3, 2, 1, 3));
        assert_eq!(sink.progress().write_errors.refused, 1);
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
        assert_eq!(counts(sink.progress()), (4, 2, 0, 0), "the second batch is written, the first still in flight");
        gate.add_permits(1);
        sink.flush().await.unwrap();
        assert_eq!(counts(sink.progress()), (4, 4, 0, 4));
        assert_eq!(finish(sink, task).await.points_written, 4);
    }

    /// Handed, written, refused, settled.
    fn counts(progress: SinkProgress) -> (u64, u64, u64, u64) {
        (progress.points_handed, progress.points_written, progress.points_rejected, progress.points_settled)
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
