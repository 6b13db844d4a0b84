//! The writer task: owns the pending lines, cuts batches, writes up to
//! [`MAX_IN_FLIGHT`] of them at once with retries, splits on 413 and counts
//! every line into exactly one of written, rejected or unwritten-at-shutdown.
//!
//! Each batch on its way is a [`Delivery`]: its parts (the batch, or what a
//! 413 or a refusal left of it: halves, or the lines a refusal names and the
//! others, see `refusal.rs`) go out one after another, each encoded (gzip)
//! on a blocking thread before its first attempt. So encoding never holds up
//! the async threads, and one batch is encoded while another is being
//! written: neither InfluxDB nor this task waits on the other. Each attempt
//! runs as its own Tokio task; this task alone decides what follows (count,
//! retry, split) from its result. The lines a delivery's parts had refused
//! go to the dead-letter file in one append (one `fdatasync`) when it ends,
//! and its lines are settled then, together. Deliveries end in any order,
//! so [`Watermark`] keeps the prefix of lines that are all settled.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{error, info, warn};

use super::backoff::backoff_delay;
use super::batch::{count_lines, Batch, Pending, Watermark};
use super::dead_letter::{Appended, DeadLetters, Refused};
use super::refusal::{verdict, Verdict};
use super::spool::Spool;
use super::{Counters, SinkReport, SinkStore, WriteError, Writer};
use crate::time::Millis;

mod settle;

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
    /// Lines of the in-memory deliveries in `attempts`, not yet counted anywhere.
    in_flight_lines: u64,
    settled: Watermark,
    report: SinkReport,
    /// The counts readable while the task runs.
    counters: Arc<Counters>,
    failure_log: FailureLog,
    /// Rate limits for the logs of refused lines, and of those the full
    /// dead-letter file could not keep.
    refusal_log: FailureLog,
    dead_letter_full_log: FailureLog,
    /// Set once the shutdown deadline has passed: nothing more is attempted.
    gave_up: bool,
    /// The spool; `None` without a store, or for the moment a blocking
    /// thread works on it.
    spool: Option<Box<Spool>>,
    dead_letters: Option<DeadLetters>,
    /// A spooled batch is being sent (one at a time).
    draining: bool,
    /// Lines of the batch being sent from the spool already counted written or refused.
    draining_counted: u64,
    /// Reads of the spool that failed in a row, and when to try again.
    spool_read_failures: u32,
    spool_read_retry_at: Option<Instant>,
    /// Until when new batches bypass a spool that failed to take one.
    spool_failing_until: Option<Instant>,
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

/// Where a delivery's lines come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Lines handed over, numbered from `Delivery::first`, counted in the watermark.
    Memory,
    /// A batch from the spool: already settled, acknowledged to the spool once done.
    Spool,
}

/// One batch on its way: the part being attempted and the parts after it.
struct Delivery {
    /// Lines handed over: the number of its first line; its lines, `first ..
    /// first + lines`, are settled together when it ends.
    first: u64,
    lines: u64,
    part: Part,
    /// Parts still to send after `part`, the next one last.
    later: Vec<Part>,
    failures_in_a_row: u32,
    origin: Origin,
    /// Lines its parts had refused, appended to the dead-letter file in one
    /// write when it ends.
    refused: Refused,
}

/// Whole lines sent in one request.
struct Part {
    batch: Batch,
    /// What the writer's encoder made of `batch`, once made.
    encoded: Option<Bytes>,
}

impl Part {
    fn new(batch: Batch) -> Part {
        Part { batch, encoded: None }
    }
}

impl Delivery {
    fn new(first: u64, batch: Batch, origin: Origin) -> Delivery {
        let lines = batch.lines as u64;
        let part = Part::new(batch);
        Delivery { first, lines, part, later: Vec::new(), failures_in_a_row: 0, origin, refused: Refused::default() }
    }

    /// Takes the current part's lines, leaving it empty.
    fn take_batch(&mut self) -> Batch {
        self.part.encoded = None;
        std::mem::replace(&mut self.part.batch, Batch::empty())
    }

    /// Lines not yet written or refused: the current part and those after it.
    fn unsent_lines(&self) -> u64 {
        (self.part.batch.lines + self.later.iter().map(|part| part.batch.lines).sum::<usize>()) as u64
    }

    /// Lines that nothing else accounts for while they are in flight: those
    /// handed over and not yet counted written or refused (a spooled batch
    /// stays in the spool until it is done).
    fn memory_lines(&self) -> u64 {
        match self.origin {
            Origin::Memory => self.unsent_lines() + self.refused.lines(),
            Origin::Spool => 0,
        }
    }
}

/// How long new batches bypass a spool that could not take one (a disk error).
const SPOOL_RETRY_AFTER: Duration = Duration::from_secs(5);

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
        store: Option<SinkStore>,
    ) -> WriterTask {
        let (spool, dead_letters) = match store {
            Some(SinkStore { spool, dead_letters }) => (spool.map(Box::new), Some(dead_letters)),
            None => (None, None),
        };
        if let Some(spool) = &spool {
            counters.spooled_before_start.store(spool.lines(), Ordering::Relaxed);
        }
        let task = WriterTask {
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
            refusal_log: FailureLog::default(),
            dead_letter_full_log: FailureLog::default(),
            gave_up: false,
            spool,
            dead_letters,
            draining: false,
            draining_counted: 0,
            spool_read_failures: 0,
            spool_read_retry_at: None,
            spool_failing_until: None,
        };
        task.publish_spool();
        task
    }

    pub async fn run(mut self) -> SinkReport {
        loop {
            if !self.gave_up {
                if self.spooling() {
                    self.spool_due_batches(Instant::now()).await;
                } else {
                    self.start_due_batches(Instant::now());
                }
                self.start_drain().await;
            }
            self.answer_flushes();
            if !self.commands_open && self.pending.lines() == 0 && self.attempts.len() == usize::from(self.draining) {
                // What is left is a spooled batch being re-sent: it stays in
                // the spool for the next start.
                self.attempts.abort_all();
                self.join_aborted().await;
                break;
            }
            let slot_free = self.attempts.len() < self.settings.max_in_flight.max(1);
            let room = if self.spooling() { self.spool_has_room() } else { slot_free };
            let due_at = self.pending.due_at(self.settings.flush_interval).filter(|_| room && !self.gave_up);
            // Lines are read while there is room for them: with a full batch
            // waiting for a free slot (or room in the spool), producers wait
            // (the backpressure).
            let reading = self.commands_open && (self.gave_up || self.pending.lines() < self.settings.batch_size);
            let deadline = self.shutdown_started.map(|started| started + self.settings.shutdown_deadline);
            let spool_retry = self.spool_failing_until.filter(|_| !self.gave_up);
            let read_retry = self.spool_read_retry_at.filter(|_| !self.gave_up);
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
                () = sleep_until(spool_retry.unwrap_or_else(Instant::now)), if spool_retry.is_some() => {
                    self.spool_failing_until = None;
                    continue;
                }
                () = sleep_until(read_retry.unwrap_or_else(Instant::now)), if read_retry.is_some() => {
                    self.spool_read_retry_at = None;
                    continue;
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
                Input::Attempted(delivery, result) => self.settle(delivery, result).await,
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
        if let Some(spool) = &self.spool {
            self.report.points_left_in_spool = spool.lines().saturating_sub(self.draining_counted);
            if self.report.points_left_in_spool > 0 {
                info!(
                    points = self.report.points_left_in_spool,
                    bytes = spool.bytes(),
                    "Points wait in the spool; they are sent first at the next start."
                );
            }
        }
        self.report
    }

    /// Whether new batches go to the spool: it holds something (they go
    /// behind it, in order) and it has not just failed to take one.
    fn spooling(&self) -> bool {
        self.spool.as_ref().is_some_and(|spool| !spool.is_empty()) && self.spool_failing_until.is_none()
    }

    /// Whether the spool can take the next batch.
    fn spool_has_room(&self) -> bool {
        let bytes = self.pending.bytes_of_next(self.settings.batch_size);
        self.spool.as_ref().is_some_and(|spool| spool.has_room(bytes))
    }

    /// Whether a batch is due: full, old enough, asked for by a flush, or left at shutdown.
    fn batch_due(&self, now: Instant) -> bool {
        let first = self.received - self.pending.lines() as u64;
        self.pending.lines() >= self.settings.batch_size
            || self.shutdown_started.is_some()
            || first < self.flush_upto
            || self.pending.due_at(self.settings.flush_interval).is_some_and(|due_at| due_at <= now)
    }

    /// Starts batches while a slot is free and one is due.
    fn start_due_batches(&mut self, now: Instant) {
        while self.attempts.len() < self.settings.max_in_flight.max(1) && self.pending.lines() > 0 {
            if !self.batch_due(now) {
                return;
            }
            let first = self.received - self.pending.lines() as u64;
            let Some(batch) = self.pending.take(self.settings.batch_size) else { return };
            self.in_flight_lines += batch.lines as u64;
            self.attempt(Delivery::new(first, batch, Origin::Memory), Duration::ZERO);
        }
    }

    /// While the spool holds something, due batches go behind it, as long
    /// as it has room; when it has none, lines stay pending, the task stops
    /// reading, and the producers wait.
    async fn spool_due_batches(&mut self, now: Instant) {
        while self.pending.lines() > 0 && self.batch_due(now) && self.spooling() {
            if !self.spool_has_room() {
                if !self.counters.spool_full.swap(true, Ordering::Relaxed) {
                    let progress = self.counters.progress();
                    warn!(
                        spool_bytes = progress.spool_bytes,
                        spool_points = progress.spool_points,
                        oldest = %progress.spool_oldest.map(|at| at.to_rfc3339()).unwrap_or_default(),
                        writer = %self.writer.describe(),
                        "The spool is full: no more points are taken, so MQTT messages are no longer \
                         acknowledged (the broker keeps them) until InfluxDB takes what waits."
                    );
                }
                return;
            }
            let first = self.received - self.pending.lines() as u64;
            let Some(batch) = self.pending.take(self.settings.batch_size) else { return };
            let lines = batch.lines as u64;
            match self.spool_part(Part::new(batch)).await {
                Ok(()) => self.mark_settled(first, lines),
                Err(part) => {
                    // The disk failed: this batch and the next ones for a while are sent directly.
                    self.in_flight_lines += lines;
                    self.attempt(Delivery::new(first, part.batch, Origin::Memory), Duration::ZERO);
                    return;
                }
            }
        }
    }

    /// Appends a part's lines to the spool, counting them spooled (the
    /// caller settles them); gives the part back when the spool cannot take it.
    async fn spool_part(&mut self, part: Part) -> Result<(), Part> {
        if self.spool_failing_until.is_some()
            || !self.spool.as_ref().is_some_and(|spool| spool.has_room(part.batch.text.len()))
        {
            return Err(part);
        }
        let text = part.batch.text;
        let (text, appended) = self
            .with_spool(move |spool| {
                let appended = spool.append(&text, count_lines(&text), Millis::now());
                (text, appended)
            })
            .await
            .unwrap_or_else(|| unreachable!("checked above"));
        let part = Part { batch: Batch { text, lines: part.batch.lines }, ..part };
        match appended {
            Ok(()) => {
                let lines = part.batch.lines as u64;
                self.counters.spooled.fetch_add(lines, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                error!(error = %error, "Cannot write to the spool; points are sent (and retried) from memory for a while.");
                self.spool_failing_until = Some(Instant::now() + SPOOL_RETRY_AFTER);
                Err(part)
            }
        }
    }

    /// Sends the spool's oldest batch, if none is on its way. A read that
    /// fails is tried again with backoff (the spool sets a segment aside
    /// after [`super::spool::READ_ATTEMPTS`] failures in a row); meanwhile
    /// new batches still go behind it, up to `spool_max_bytes`.
    async fn start_drain(&mut self) {
        if self.draining || self.spool_read_retry_at.is_some() || self.shutdown_started.is_some() {
            return;
        }
        if self.spool.as_ref().is_none_or(|spool| spool.is_empty()) {
            return;
        }
        match self.with_spool(Spool::next).await {
            Some(Ok(Some(spooled))) => {
                self.spool_read_failures = 0;
                self.draining = true;
                self.draining_counted = 0;
                let batch = Batch { text: spooled.text, lines: spooled.lines };
                self.attempt(Delivery::new(0, batch, Origin::Spool), Duration::ZERO);
            }
            Some(Err(error)) => {
                let delay = backoff_delay(self.spool_read_failures, None, self.settings.max_backoff);
                self.spool_read_failures = self.spool_read_failures.saturating_add(1);
                error!(error = %error, failures = self.spool_read_failures, retry_in = ?delay, "Cannot read the spool; trying again.");
                self.spool_read_retry_at = Some(Instant::now() + delay);
            }
            Some(Ok(None)) | None => self.spool_read_failures = 0,
        }
    }

    /// Runs `operation` on the spool on a blocking thread (it does file IO
    /// and `fdatasync`); `None` without a spool.
    async fn with_spool<R: Send + 'static>(
        &mut self,
        operation: impl FnOnce(&mut Spool) -> R + Send + 'static,
    ) -> Option<R> {
        let mut spool = self.spool.take()?;
        let done = tokio::task::spawn_blocking(move || {
            let result = operation(&mut spool);
            (spool, result)
        })
        .await;
        let (spool, result) = match done {
            Ok(done) => done,
            // File IO does not panic short of a bug; its panic is the task's.
            Err(error) => std::panic::resume_unwind(
                error.try_into_panic().unwrap_or_else(|_| Box::new("spool operation cancelled")),
            ),
        };
        self.spool = Some(spool);
        self.publish_spool();
        Some(result)
    }

    /// Publishes the spool's levels to the counters.
    fn publish_spool(&self) {
        let Some(spool) = &self.spool else { return };
        self.counters.spool_points.store(spool.lines(), Ordering::Relaxed);
        self.counters.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        self.counters.spool_oldest_ms.store(spool.oldest().map_or(i64::MIN, |at| at.0), Ordering::Relaxed);
        self.counters.spool_quarantined.store(spool.quarantined(), Ordering::Relaxed);
        let next_batch = self.pending.bytes_of_next(self.settings.batch_size);
        if self.counters.spool_full.load(Ordering::Relaxed) && spool.has_room(next_batch) {
            self.counters.spool_full.store(false, Ordering::Relaxed);
            info!(spool_bytes = spool.bytes(), "The spool has room again; points are taken again.");
        }
    }

    /// Sends the delivery's current part after `delay`, encoding it first if
    /// it never was.
    fn attempt(&mut self, mut delivery: Delivery, delay: Duration) {
        self.report.requests += 1;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
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

    fn answer_flushes(&mut self) {
        while self.flushes.front().is_some_and(|(upto, _)| *upto <= self.settled.prefix()) {
            if let Some((_, reply)) = self.flushes.pop_front() {
                // The caller may have stopped waiting; nothing to do then.
                let _ = reply.send(());
            }
        }
    }

    /// Settles what ended before it could be cancelled, after `abort_all`.
    async fn join_aborted(&mut self) {
        while let Some(joined) = self.attempts.join_next().await {
            match joined {
                Ok((delivery, result)) => Box::pin(self.settle(delivery, result)).await,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        self.draining = false;
    }

    /// The shutdown deadline passed: attempts still running are cancelled (an
    /// HTTP request is dropped; InfluxDB writes are idempotent, so a batch
    /// that did arrive and is counted as unwritten is not doubled by
    /// anything), lines pending go to the spool if there is one, and every
    /// other line not yet settled is counted as unwritten.
    /// Flushes still waiting are dropped: their callers see the task gone.
    async fn give_up(&mut self) {
        self.gave_up = true;
        self.attempts.abort_all();
        self.join_aborted().await;
        self.report.points_unwritten_at_shutdown += std::mem::take(&mut self.in_flight_lines);
        while self.spool.is_some() && self.pending.lines() > 0 {
            let first = self.received - self.pending.lines() as u64;
            let Some(batch) = self.pending.take(self.settings.batch_size) else { break };
            let lines = batch.lines as u64;
            match self.spool_part(Part::new(batch)).await {
                Ok(()) => self.mark_settled(first, lines),
                Err(part) => self.report.points_unwritten_at_shutdown += part.batch.lines as u64,
            }
        }
        self.report.points_unwritten_at_shutdown += self.pending.discard() as u64;
        self.flushes.clear();
    }
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
