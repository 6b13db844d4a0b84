//! The writer task: owns the pending lines, cuts batches, writes them with
//! retries, splits on 413 and counts every line into exactly one of written,
//! rejected or unwritten-at-shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{error, info, warn};

use super::batch::{Batch, Pending};
use super::{Counters, SinkReport, WriteError, Writer};

/// What producers put in the channel.
#[derive(Debug)]
pub(crate) enum Command {
    Lines { text: String, count: usize },
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub max_backoff: Duration,
    pub shutdown_deadline: Duration,
}

/// The first retry waits this long; each further one twice as long, up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Transient failures are logged at most once per this period.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

pub(crate) struct WriterTask {
    writer: Box<dyn Writer>,
    settings: Settings,
    commands: mpsc::Receiver<Command>,
    shutdown: Shutdown,
    pending: Pending,
    report: SinkReport,
    /// The written and rejected counts of `report`, readable while the task runs.
    counters: Arc<Counters>,
    failure_log: FailureLog,
    /// Set once the shutdown deadline has passed: nothing more is attempted.
    gave_up: bool,
}

/// The inputs of the main loop.
enum Input {
    Command(Command),
    FlushIntervalElapsed,
    HandlesDropped,
}

/// How one batch (or half of one) ended.
enum Delivery {
    Written,
    Rejected { status: u16, message: String },
    TooLarge,
    GaveUp,
}

impl WriterTask {
    /// `handles_alive` never carries a message: it closes when the last
    /// handle is dropped, which is how a task busy retrying learns that
    /// shutdown has begun without taking lines out of `commands`.
    pub fn new(
        writer: Box<dyn Writer>,
        settings: Settings,
        commands: mpsc::Receiver<Command>,
        handles_alive: mpsc::Receiver<()>,
        counters: Arc<Counters>,
    ) -> WriterTask {
        WriterTask {
            writer,
            settings,
            commands,
            shutdown: Shutdown { handles_alive, started: None, deadline: settings.shutdown_deadline },
            pending: Pending::default(),
            report: SinkReport::default(),
            counters,
            failure_log: FailureLog::default(),
            gave_up: false,
        }
    }

    pub async fn run(mut self) -> SinkReport {
        // Running: until every handle is dropped (and the channel is empty)
        // or the shutdown deadline passed while a write was being retried.
        while !self.gave_up {
            self.write_full_batches().await;
            let due_at = self.pending.due_at(self.settings.flush_interval);
            if due_at.is_some_and(|due_at| due_at <= Instant::now()) {
                self.write_all_pending().await;
                continue;
            }
            let input = tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => Input::Command(command),
                    None => Input::HandlesDropped,
                },
                () = sleep_until(due_at.unwrap_or_else(Instant::now)), if due_at.is_some() => {
                    Input::FlushIntervalElapsed
                }
            };
            match input {
                Input::Command(Command::Lines { text, count }) => {
                    let added = self.pending.push(text, Instant::now());
                    debug_assert_eq!(added, count, "SinkHandle::send: count disagrees with the lines");
                }
                Input::Command(Command::Flush(reply)) => {
                    self.write_all_pending().await;
                    if !self.gave_up {
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = reply.send(());
                    }
                }
                Input::FlushIntervalElapsed => self.write_all_pending().await,
                Input::HandlesDropped => break,
            }
        }

        // Shutting down: write what remains until the deadline, then count the rest.
        self.shutdown.begin(Instant::now());
        self.write_all_pending().await;
        while let Some(command) = self.commands.recv().await {
            if let Command::Lines { text, .. } = command {
                self.pending.push(text, Instant::now());
            }
            self.write_full_batches().await;
        }
        self.write_all_pending().await;
        if self.report.points_unwritten_at_shutdown > 0 {
            error!(
                points_unwritten = self.report.points_unwritten_at_shutdown,
                deadline = ?self.settings.shutdown_deadline,
                writer = %self.writer.describe(),
                "Shutdown deadline passed with points still unwritten; they are lost."
            );
        }
        self.report
    }

    async fn write_full_batches(&mut self) {
        while self.pending.lines() >= self.settings.batch_size.max(1) {
            self.write_next_batch().await;
        }
    }

    async fn write_all_pending(&mut self) {
        while self.pending.lines() > 0 {
            self.write_next_batch().await;
        }
    }

    async fn write_next_batch(&mut self) {
        if self.gave_up {
            self.report.points_unwritten_at_shutdown += self.pending.discard() as u64;
        } else if let Some(batch) = self.pending.take(self.settings.batch_size) {
            self.write_batch(batch).await;
        }
    }

    /// Writes one batch, halving it on 413 until the pieces fit.
    async fn write_batch(&mut self, batch: Batch) {
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let lines = part.lines as u64;
            if self.gave_up {
                self.report.points_unwritten_at_shutdown += lines;
                continue;
            }
            match self.write_with_retries(&part).await {
                Delivery::Written => self.count_written(lines),
                Delivery::Rejected { status, message } => {
                    warn!(
                        status,
                        message = %message,
                        points = lines,
                        writer = %self.writer.describe(),
                        "InfluxDB rejected a batch; its points are counted as rejected."
                    );
                    self.count_rejected(lines);
                }
                Delivery::TooLarge if part.lines > 1 => {
                    let (first, second) = part.split_in_half();
                    // Popped last-in first-out: the first half goes out first.
                    parts.push(second);
                    parts.push(first);
                }
                Delivery::TooLarge => {
                    warn!(
                        status = 413,
                        points = 1,
                        bytes = part.text.len(),
                        writer = %self.writer.describe(),
                        "InfluxDB refused a single line as too large; it is counted as rejected."
                    );
                    self.count_rejected(1);
                }
                Delivery::GaveUp => {
                    self.gave_up = true;
                    self.report.points_unwritten_at_shutdown += lines;
                }
            }
        }
    }

    fn count_written(&mut self, lines: u64) {
        self.report.points_written += lines;
        self.counters.written.fetch_add(lines, Ordering::Relaxed);
    }

    fn count_rejected(&mut self, lines: u64) {
        self.report.points_rejected += lines;
        self.counters.rejected.fetch_add(lines, Ordering::Relaxed);
    }

    /// Sends `part` until it is written, refused, or the shutdown deadline passes.
    async fn write_with_retries(&mut self, part: &Batch) -> Delivery {
        let mut failures_in_a_row: u32 = 0;
        loop {
            if self.shutdown.deadline_passed(Instant::now()) {
                return Delivery::GaveUp;
            }
            self.report.requests += 1;
            let Some(result) = self.shutdown.run_until_deadline(self.writer.write(&part.text)).await else {
                return Delivery::GaveUp;
            };
            let (status, retry_after, message) = match result {
                Ok(()) => {
                    if let Some(failures) = self.failure_log.recovered() {
                        info!(failures, writer = %self.writer.describe(), "InfluxDB writes succeed again.");
                    }
                    return Delivery::Written;
                }
                Err(WriteError::TooLarge) => return Delivery::TooLarge,
                Err(WriteError::Permanent { status, message }) => return Delivery::Rejected { status, message },
                Err(WriteError::Transient { status, retry_after, message }) => (status, retry_after, message),
            };
            let delay = backoff_delay(failures_in_a_row, retry_after, self.settings.max_backoff);
            failures_in_a_row = failures_in_a_row.saturating_add(1);
            if let Some(failures) = self.failure_log.failed(Instant::now()) {
                warn!(
                    status = ?status,
                    message = %message,
                    failures,
                    retry_in = ?delay,
                    writer = %self.writer.describe(),
                    "InfluxDB write failed; retrying."
                );
            }
            if self.shutdown.run_until_deadline(sleep(delay)).await.is_none() {
                return Delivery::GaveUp;
            }
            self.report.retries += 1;
        }
    }
}

/// When shutdown began, learned either from the command channel closing or,
/// while busy writing, from the last handle being dropped.
struct Shutdown {
    handles_alive: mpsc::Receiver<()>,
    started: Option<Instant>,
    deadline: Duration,
}

impl Shutdown {
    fn begin(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    fn deadline_passed(&self, now: Instant) -> bool {
        self.started.is_some_and(|started| now >= started + self.deadline)
    }

    /// Runs `work` to completion, unless shutdown begins meanwhile and its
    /// deadline passes first: then `work` is dropped (an HTTP request is
    /// cancelled; InfluxDB writes are idempotent, so a batch that did arrive
    /// and is counted as unwritten is not doubled by anything) and `None` returned.
    async fn run_until_deadline<F: std::future::Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            match self.started {
                Some(started) => {
                    return tokio::select! {
                        biased;
                        output = &mut work => Some(output),
                        () = sleep_until(started + self.deadline) => None,
                    };
                }
                None => {
                    tokio::select! {
                        biased;
                        output = &mut work => return Some(output),
                        // Only ever yields `None`, once every handle is gone.
                        _ = self.handles_alive.recv() => self.started = Some(Instant::now()),
                    }
                }
            }
        }
    }
}

/// The wait before retry number `failures_in_a_row + 1`: 100 ms doubling,
/// raised to the server's `Retry-After` when it asks for longer, never more
/// than `max_backoff`.
pub(crate) fn backoff_delay(failures_in_a_row: u32, retry_after: Option<Duration>, max_backoff: Duration) -> Duration {
    let exponential = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures_in_a_row.min(31)));
    exponential.max(retry_after.unwrap_or_default()).min(max_backoff)
}

/// Rate limit for transient-failure logs: the first failure of a streak is
/// logged, then at most one line per [`FAILURE_LOG_PERIOD`] carrying how many
/// failures it stands for.
#[derive(Debug, Default)]
struct FailureLog {
    last_logged: Option<Instant>,
    unlogged: u64,
    streak: u64,
}

impl FailureLog {
    /// Records a failure; returns the number of failures to report when a
    /// log line is due now.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.streak += 1;
        self.unlogged += 1;
        match self.last_logged {
            Some(last) if now.duration_since(last) < FAILURE_LOG_PERIOD => None,
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// Records a success; returns the length of the failure streak it ends, if any.
    fn recovered(&mut self) -> Option<u64> {
        let streak = std::mem::take(&mut self.streak);
        self.unlogged = 0;
        self.last_logged = None;
        (streak > 0).then_some(streak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_starts_at_100ms_doubles_and_is_capped() {
        let cap = Duration::from_secs(30);
        let delays: Vec<_> = (0..5).map(|failures| backoff_delay(failures, None, cap)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS]);
        assert_eq!(backoff_delay(20, None, cap), cap);
        assert_eq!(backoff_delay(u32::MAX, None, cap), cap);
    }

    #[test]
    fn retry_after_raises_the_delay_but_never_above_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(5)), cap), Duration::from_secs(5));
        assert_eq!(backoff_delay(9, Some(Duration::from_secs(1)), cap), backoff_delay(9, None, cap));
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(120)), cap), cap);
        assert_eq!(backoff_delay(0, Some(Duration::from_secs(1)), 5 * MS), 5 * MS);
    }

    #[test]
    fn failures_are_logged_first_then_once_per_period_with_a_count() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.failed(start), Some(1));
        assert_eq!(log.failed(start + Duration::from_secs(1)), None);
        assert_eq!(log.failed(start + Duration::from_secs(5)), None);
        assert_eq!(log.failed(start + Duration::from_secs(10)), Some(3));
        assert_eq!(log.failed(start + Duration::from_secs(11)), None);
        assert_eq!(log.recovered(), Some(5));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failed(start + Duration::from_secs(12)), Some(1));
    }
}
