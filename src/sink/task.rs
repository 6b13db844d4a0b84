//! The writer task: owns the pending lines, cuts batches, writes up to
//! [`MAX_IN_FLIGHT`] of them at once with retries, splits on 413 and counts
//! every line into exactly one of written, rejected or unwritten-at-shutdown.
//!
//! Each batch on its way is a [`Delivery`]: its parts (the batch, or the
//! halves a 413 left of it) go out one after another, in order, each encoded
//! (gzip) on a blocking thread before its first attempt. So encoding never
//! holds up the async threads, and one batch is encoded while another is
//! being written: neither InfluxDB nor this task waits on the other. Each
//! attempt runs as its own Tokio task; this task alone decides what follows
//! (count, retry, split) from its result. Deliveries end in any order, so
//! [`Watermark`] keeps the prefix of lines that are all written or refused.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{error, info, warn};

use super::batch::{Batch, Pending, Watermark};
use super::{Counters, SinkReport, WriteError, Writer};

/// Batches being written at once (their retries and 413 halves included).
/// Two keep InfluxDB busy while the next batch is encoded and sent; more
/// would only queue inside InfluxDB.
pub const MAX_IN_FLIGHT: usize = 2;

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
    pub max_in_flight: usize,
}

/// The first retry waits this long; each further one twice as long, up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Transient failures are logged at most once per this period.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

pub(crate) struct WriterTask {
    writer: Arc<dyn Writer>,
    settings: Settings,
    commands: mpsc::Receiver<Command>,
    /// Never carries a message: closes when the last handle is dropped.
    handles_alive: mpsc::Receiver<()>,
    /// Whether `commands` may still yield something.
    commands_open: bool,
    /// When shutdown began: the last handle was dropped.
    shutdown_started: Option<Instant>,
    pending: Pending,
    /// Lines received so far; a line's number is how many came before it.
    received: u64,
    /// Lines numbered below this leave without waiting for a full batch (a flush asked for them).
    flush_upto: u64,
    /// Flush requests: answered once every line numbered below theirs is settled.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    attempts: JoinSet<(Delivery, Result<(), WriteError>)>,
    /// Lines of the deliveries in `attempts`, not yet counted anywhere.
    in_flight_lines: u64,
    settled: Watermark,
    report: SinkReport,
    /// The written, rejected and settled counts, readable while the task runs.
    counters: Arc<Counters>,
    failure_log: FailureLog,
    /// Set once the shutdown deadline has passed: nothing more is attempted.
    gave_up: bool,
}

/// The inputs of the main loop.
enum Input {
    Command(Command),
    CommandsClosed,
    Attempted(Delivery, Result<(), WriteError>),
    FlushIntervalElapsed,
    HandlesDropped,
    DeadlinePassed,
}

/// One batch on its way: the part being attempted and the parts after it.
struct Delivery {
    part: Part,
    /// Parts still to send after `part`, the next one last.
    later: Vec<Part>,
    failures_in_a_row: u32,
}

/// Whole lines sent in one request, with their place among all lines.
struct Part {
    /// The number of its first line.
    first: u64,
    batch: Batch,
    /// What the writer's encoder made of `batch`, once made.
    encoded: Option<Bytes>,
}

impl Delivery {
    fn lines(&self) -> u64 {
        (self.part.batch.lines + self.later.iter().map(|part| part.batch.lines).sum::<usize>()) as u64
    }
}

impl WriterTask {
    /// `handles_alive` never carries a message: it closes when the last
    /// handle is dropped, which is how a task whose channel is full learns
    /// that shutdown has begun without taking lines out of `commands`.
    pub fn new(
        writer: Box<dyn Writer>,
        settings: Settings,
        commands: mpsc::Receiver<Command>,
        handles_alive: mpsc::Receiver<()>,
        counters: Arc<Counters>,
    ) -> WriterTask {
        WriterTask {
            writer: Arc::from(writer),
            settings,
            commands,
            handles_alive,
            commands_open: true,
            shutdown_started: None,
            pending: Pending::default(),
            received: 0,
            flush_upto: 0,
            flushes: VecDeque::new(),
            attempts: JoinSet::new(),
            in_flight_lines: 0,
            settled: Watermark::default(),
            report: SinkReport::default(),
            counters,
            failure_log: FailureLog::default(),
            gave_up: false,
        }
    }

    pub async fn run(mut self) -> SinkReport {
        loop {
            if !self.gave_up {
                self.start_due_batches(Instant::now());
            }
            self.answer_flushes();
            if !self.commands_open && self.pending.lines() == 0 && self.attempts.is_empty() {
                break;
            }
            let slot_free = self.attempts.len() < self.settings.max_in_flight.max(1);
            let due_at = self.pending.due_at(self.settings.flush_interval).filter(|_| slot_free && !self.gave_up);
            // Lines are read while there is room for them: with a full batch
            // waiting for a free slot, producers wait (the backpressure).
            let reading = self.commands_open && (self.gave_up || self.pending.lines() < self.settings.batch_size);
            let deadline = self.shutdown_started.map(|started| started + self.settings.shutdown_deadline);
            let input = tokio::select! {
                biased;
                Some(joined) = self.attempts.join_next() => match joined {
                    Ok((delivery, result)) => Input::Attempted(delivery, result),
                    // A writer that panics is a bug: the task fails with it,
                    // and `finish` counts what was not written.
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    Err(_) => continue,
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !self.gave_up => {
                    Input::DeadlinePassed
                }
                command = self.commands.recv(), if reading => match command {
                    Some(command) => Input::Command(command),
                    None => Input::CommandsClosed,
                },
                // Only ever yields `None`, once every handle is gone.
                _ = self.handles_alive.recv(), if self.shutdown_started.is_none() => Input::HandlesDropped,
                () = sleep_until(due_at.unwrap_or_else(Instant::now)), if due_at.is_some() => {
                    Input::FlushIntervalElapsed
                }
            };
            match input {
                Input::Command(Command::Lines { text, count }) => {
                    let added = self.pending.push(text, Instant::now());
                    debug_assert_eq!(added, count, "SinkHandle::send: count disagrees with the lines");
                    self.received += added as u64;
                    if self.gave_up {
                        self.report.points_unwritten_at_shutdown += self.pending.discard() as u64;
                    }
                }
                Input::Command(Command::Flush(reply)) => {
                    self.flush_upto = self.received;
                    self.flushes.push_back((self.received, reply));
                }
                Input::CommandsClosed => {
                    self.commands_open = false;
                    self.shutdown_started.get_or_insert_with(Instant::now);
                }
                Input::HandlesDropped => {
                    self.shutdown_started.get_or_insert_with(Instant::now);
                }
                Input::Attempted(delivery, result) => self.settle(delivery, result),
                // Handled at the top of the loop.
                Input::FlushIntervalElapsed => {}
                Input::DeadlinePassed => self.give_up().await,
            }
        }
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

    /// Starts batches while a slot is free and one is due: full, old enough,
    /// asked for by a flush, or left at shutdown.
    fn start_due_batches(&mut self, now: Instant) {
        while self.attempts.len() < self.settings.max_in_flight.max(1) && self.pending.lines() > 0 {
            let first = self.received - self.pending.lines() as u64;
            let due = self.pending.lines() >= self.settings.batch_size
                || self.shutdown_started.is_some()
                || first < self.flush_upto
                || self.pending.due_at(self.settings.flush_interval).is_some_and(|due_at| due_at <= now);
            if !due {
                return;
            }
            let Some(batch) = self.pending.take(self.settings.batch_size) else { return };
            self.in_flight_lines += batch.lines as u64;
            let part = Part { first, batch, encoded: None };
            self.attempt(Delivery { part, later: Vec::new(), failures_in_a_row: 0 }, Duration::ZERO);
        }
    }

    /// Sends the delivery's current part after `delay`, encoding it first if
    /// it never was.
    fn attempt(&mut self, mut delivery: Delivery, delay: Duration) {
        self.report.requests += 1;
        let writer = Arc::clone(&self.writer);
        self.attempts.spawn(async move {
            if !delay.is_zero() {
                sleep(delay).await;
            }
            let part = &mut delivery.part;
            if let (None, Some(encode)) = (&part.encoded, writer.encoder()) {
                let text = std::mem::take(&mut part.batch.text);
                let encoding = tokio::task::spawn_blocking(move || {
                    let encoded = encode(&text);
                    (text, encoded)
                });
                let (text, encoded) = match encoding.await {
                    Ok(done) => done,
                    // Encoding into memory cannot fail short of a bug; its panic is the task's.
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                };
                part.batch.text = text;
                part.encoded = Some(encoded);
            }
            let result = writer.write_encoded(&part.batch.text, part.encoded.as_ref()).await;
            (delivery, result)
        });
    }

    /// Counts what one attempt decided and sends what comes next: the same
    /// part again after a backoff, its halves, or the delivery's next part.
    fn settle(&mut self, mut delivery: Delivery, result: Result<(), WriteError>) {
        self.in_flight_lines -= delivery.lines();
        let lines = delivery.part.batch.lines as u64;
        match result {
            Ok(()) => {
                if let Some(failures) = self.failure_log.recovered() {
                    info!(failures, writer = %self.writer.describe(), "InfluxDB writes succeed again.");
                }
                self.report.points_written += lines;
                self.counters.written.fetch_add(lines, Ordering::Relaxed);
                self.mark_settled(&delivery.part);
            }
            Err(WriteError::Permanent { status, message }) => {
                warn!(
                    status,
                    message = %message,
                    points = lines,
                    writer = %self.writer.describe(),
                    "InfluxDB rejected a batch; its points are counted as rejected."
                );
                self.count_rejected(&delivery.part);
            }
            Err(WriteError::TooLarge) if lines > 1 && !self.gave_up => {
                let Part { first, batch, .. } = delivery.part;
                let (first_half, second_half) = batch.split_in_half();
                let second = Part { first: first + first_half.lines as u64, batch: second_half, encoded: None };
                delivery.later.push(second);
                delivery.part = Part { first, batch: first_half, encoded: None };
                delivery.failures_in_a_row = 0;
                self.in_flight_lines += delivery.lines();
                self.attempt(delivery, Duration::ZERO);
                return;
            }
            Err(WriteError::TooLarge) if !self.gave_up => {
                warn!(
                    status = 413,
                    points = 1,
                    bytes = delivery.part.batch.text.len(),
                    writer = %self.writer.describe(),
                    "InfluxDB refused a single line as too large; it is counted as rejected."
                );
                self.count_rejected(&delivery.part);
            }
            Err(WriteError::Transient { status, retry_after, message }) if !self.gave_up => {
                let delay = backoff_delay(delivery.failures_in_a_row, retry_after, self.settings.max_backoff);
                delivery.failures_in_a_row = delivery.failures_in_a_row.saturating_add(1);
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
                self.report.retries += 1;
                self.in_flight_lines += delivery.lines();
                self.attempt(delivery, delay);
                return;
            }
            // The deadline has passed: nothing more is attempted.
            Err(WriteError::TooLarge | WriteError::Transient { .. }) => {
                self.report.points_unwritten_at_shutdown += delivery.lines();
                return;
            }
        }
        if let Some(next) = delivery.later.pop() {
            if self.gave_up {
                self.report.points_unwritten_at_shutdown += delivery.lines() - lines;
                return;
            }
            delivery.part = next;
            delivery.failures_in_a_row = 0;
            self.in_flight_lines += delivery.lines();
            self.attempt(delivery, Duration::ZERO);
        }
    }

    fn count_rejected(&mut self, part: &Part) {
        let lines = part.batch.lines as u64;
        self.report.points_rejected += lines;
        self.counters.rejected.fetch_add(lines, Ordering::Relaxed);
        self.mark_settled(part);
    }

    fn mark_settled(&mut self, part: &Part) {
        let prefix = self.settled.settle(part.first, part.batch.lines as u64);
        self.counters.settled.store(prefix, Ordering::Relaxed);
    }

    fn answer_flushes(&mut self) {
        while self.flushes.front().is_some_and(|(upto, _)| *upto <= self.settled.prefix()) {
            if let Some((_, reply)) = self.flushes.pop_front() {
                // The caller may have stopped waiting; nothing to do then.
                let _ = reply.send(());
            }
        }
    }

    /// The shutdown deadline passed: attempts still running are cancelled (an
    /// HTTP request is dropped; InfluxDB writes are idempotent, so a batch
    /// that did arrive and is counted as unwritten is not doubled by
    /// anything), and every line not yet settled is counted as unwritten.
    /// Flushes still waiting are dropped: their callers see the task gone.
    async fn give_up(&mut self) {
        self.gave_up = true;
        self.attempts.abort_all();
        while let Some(joined) = self.attempts.join_next().await {
            match joined {
                // Those that ended before they could be cancelled still count.
                Ok((delivery, result)) => self.settle(delivery, result),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        self.report.points_unwritten_at_shutdown += std::mem::take(&mut self.in_flight_lines);
        self.report.points_unwritten_at_shutdown += self.pending.discard() as u64;
        self.flushes.clear();
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
