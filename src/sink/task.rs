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

use super::batch::{count_lines, Batch, Pending, Watermark};
use super::dead_letter::DeadLetters;
use super::spool::Spool;
use super::{Counters, SinkReport, SinkStore, WriteError, Writer};
use crate::time::Millis;

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

/// A line InfluxDB refused, and its answer.
#[derive(Debug, Clone)]
struct Refusal {
    line: String,
    message: String,
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
    /// Lines of the in-memory deliveries in `attempts`, not yet counted anywhere.
    in_flight_lines: u64,
    settled: Watermark,
    report: SinkReport,
    /// The counts readable while the task runs.
    counters: Arc<Counters>,
    failure_log: FailureLog,
    /// Rate limit for the log of refused lines.
    refusal_log: FailureLog,
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
    /// The spool cannot be read: nothing more is sent from it this run.
    spool_unreadable: bool,
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
    /// Lines handed over, numbered in `Part::first`, counted in the watermark.
    Memory,
    /// A batch from the spool: already settled, acknowledged to the spool once done.
    Spool,
}

/// One batch on its way: the part being attempted and the parts after it.
struct Delivery {
    part: Part,
    /// Parts still to send after `part`, the next one last.
    later: Vec<Part>,
    failures_in_a_row: u32,
    origin: Origin,
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

    /// Lines that nothing else accounts for while they are in flight: those
    /// handed over (a spooled batch stays in the spool until it is done).
    fn memory_lines(&self) -> u64 {
        match self.origin {
            Origin::Memory => self.lines(),
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
            gave_up: false,
            spool,
            dead_letters,
            draining: false,
            draining_counted: 0,
            spool_unreadable: false,
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
            let part = Part { first, batch, encoded: None };
            self.attempt(
                Delivery { part, later: Vec::new(), failures_in_a_row: 0, origin: Origin::Memory },
                Duration::ZERO,
            );
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
            let part = Part { first, batch, encoded: None };
            if let Err(part) = self.spool_part(part).await {
                // The disk failed: this batch and the next ones for a while are sent directly.
                self.in_flight_lines += part.batch.lines as u64;
                self.attempt(
                    Delivery { part, later: Vec::new(), failures_in_a_row: 0, origin: Origin::Memory },
                    Duration::ZERO,
                );
                return;
            }
        }
    }

    /// Appends a part's lines to the spool, counting them settled; gives
    /// the part back when the spool cannot take it.
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
                self.mark_settled(&part);
                Ok(())
            }
            Err(error) => {
                error!(error = %error, "Cannot write to the spool; points are sent (and retried) from memory for a while.");
                self.spool_failing_until = Some(Instant::now() + SPOOL_RETRY_AFTER);
                Err(part)
            }
        }
    }

    /// Sends the spool's oldest batch, if none is on its way.
    async fn start_drain(&mut self) {
        if self.draining || self.spool_unreadable || self.shutdown_started.is_some() {
            return;
        }
        if self.spool.as_ref().is_none_or(|spool| spool.is_empty()) {
            return;
        }
        match self.with_spool(Spool::next).await {
            Some(Ok(Some(spooled))) => {
                self.draining = true;
                self.draining_counted = 0;
                let part = Part { first: 0, batch: Batch { text: spooled.text, lines: spooled.lines }, encoded: None };
                self.attempt(
                    Delivery { part, later: Vec::new(), failures_in_a_row: 0, origin: Origin::Spool },
                    Duration::ZERO,
                );
            }
            Some(Err(error)) => {
                error!(error = %error, "Cannot read the spool; what it holds is sent at the next start.");
                self.spool_unreadable = true;
            }
            Some(Ok(None)) | None => {}
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

    /// Counts what one attempt decided and sends what comes next: the same
    /// part again after a backoff, its halves, the delivery's next part, or
    /// the delivery to the spool.
    async fn settle(&mut self, mut delivery: Delivery, result: Result<(), WriteError>) {
        self.in_flight_lines -= delivery.memory_lines();
        let lines = delivery.part.batch.lines as u64;
        if let Err(error) = &result {
            self.counters.count_error(error);
        }
        match result {
            Ok(()) => {
                if let Some(failures) = self.failure_log.recovered() {
                    info!(failures, writer = %self.writer.describe(), "InfluxDB writes succeed again.");
                }
                self.report.points_written += lines;
                self.counters.written.fetch_add(lines, Ordering::Relaxed);
                self.count_settled(&delivery);
            }
            // Too large, or lines refused for their content (a partial
            // write): halve and send each half, down to the single lines refused.
            Err(WriteError::TooLarge | WriteError::Permanent { .. }) if lines > 1 && !self.gave_up => {
                let Part { first, batch, .. } = delivery.part;
                let (first_half, second_half) = batch.split_in_half();
                let second = Part { first: first + first_half.lines as u64, batch: second_half, encoded: None };
                delivery.later.push(second);
                delivery.part = Part { first, batch: first_half, encoded: None };
                delivery.failures_in_a_row = 0;
                self.in_flight_lines += delivery.memory_lines();
                self.attempt(delivery, Duration::ZERO);
                return;
            }
            // Past the deadline, lines not yet told apart are unwritten, not refused.
            Err(WriteError::Permanent { .. }) if lines > 1 => {
                self.end_unfinished(&delivery);
                return;
            }
            Err(WriteError::Permanent { status, message }) => {
                let line = delivery.part.batch.text.trim_end().to_string();
                self.refuse(&delivery, status, vec![Refusal { line, message }]).await;
            }
            // The others are stored: nothing to halve, whatever the deadline.
            Err(WriteError::LinesRefused { status, refused }) => {
                let lines: Vec<&str> = delivery.part.batch.text.lines().collect();
                let refused = refused
                    .into_iter()
                    .filter_map(|refusal| {
                        let line = lines.get(refusal.index)?.to_string();
                        Some(Refusal { line, message: refusal.message })
                    })
                    .collect();
                self.refuse(&delivery, status, refused).await;
            }
            Err(WriteError::TooLarge) if !self.gave_up => {
                let message = format!("the line alone is too large ({} bytes)", delivery.part.batch.text.len());
                let line = delivery.part.batch.text.trim_end().to_string();
                self.refuse(&delivery, 413, vec![Refusal { line, message }]).await;
            }
            Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. }))
                if delivery.origin == Origin::Memory && self.spool.is_some() =>
            {
                let Delivery { part, later, .. } = delivery;
                let mut parts = std::iter::once(part).chain(later.into_iter().rev());
                while let Some(part) = parts.next() {
                    if let Err(part) = self.spool_part(part).await {
                        // No room (or a disk error): what is left is retried from memory.
                        let mut later: Vec<Part> = parts.collect();
                        later.reverse();
                        let delivery = Delivery { part, later, failures_in_a_row: 1, origin: Origin::Memory };
                        if self.gave_up {
                            self.end_unfinished(&delivery);
                        } else {
                            self.retry(delivery, error);
                        }
                        return;
                    }
                }
                return;
            }
            Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. })) if !self.gave_up => {
                self.retry(delivery, error);
                return;
            }
            // The deadline has passed: nothing more is attempted.
            Err(WriteError::TooLarge | WriteError::Transient { .. } | WriteError::Tls { .. }) => {
                self.end_unfinished(&delivery);
                return;
            }
        }
        if let Some(next) = delivery.later.pop() {
            if self.gave_up {
                delivery.part = next;
                self.end_unfinished(&delivery);
                return;
            }
            delivery.part = next;
            delivery.failures_in_a_row = 0;
            self.in_flight_lines += delivery.memory_lines();
            self.attempt(delivery, Duration::ZERO);
        } else if delivery.origin == Origin::Spool {
            // Every line of the spooled batch is written or dead-lettered.
            self.draining = false;
            self.draining_counted = 0;
            if let Some(Err(error)) = self.with_spool(Spool::ack).await {
                error!(error = %error, "Cannot remove a sent batch from the spool; it is sent again at the next start.");
            }
        }
    }

    /// Sends the delivery's part again after a backoff (logged at a limited rate).
    fn retry(&mut self, mut delivery: Delivery, error: WriteError) {
        let (status, retry_after, message) = match error {
            WriteError::Transient { status, retry_after, message } => (status, retry_after, message),
            WriteError::Tls { message } => (None, None, message),
            WriteError::TooLarge | WriteError::Permanent { .. } | WriteError::LinesRefused { .. } => return,
        };
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
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.in_flight_lines += delivery.memory_lines();
        self.attempt(delivery, delay);
    }

    /// A delivery's current part and later parts will not be attempted (the
    /// deadline passed): lines handed over are unwritten; a spooled batch
    /// stays in the spool.
    fn end_unfinished(&mut self, delivery: &Delivery) {
        match delivery.origin {
            Origin::Memory => self.report.points_unwritten_at_shutdown += delivery.lines(),
            Origin::Spool => self.draining = false,
        }
    }

    /// Lines of the delivery's current part refused for themselves (the part
    /// itself when it is a single line): into the dead-letter file (when
    /// there is one), each with the server's answer, counted as refused; the
    /// part's other lines were stored (v3) and count as written.
    async fn refuse(&mut self, delivery: &Delivery, status: u16, refused: Vec<Refusal>) {
        let rejected = refused.len() as u64;
        let written = (delivery.part.batch.lines as u64).saturating_sub(rejected);
        self.report.points_written += written;
        self.counters.written.fetch_add(written, Ordering::Relaxed);
        let Some(first) = refused.first().cloned() else {
            self.count_settled(delivery);
            return;
        };
        let mut dead_lettered = false;
        if let Some(dead_letters) = self.dead_letters.clone() {
            let appended = tokio::task::spawn_blocking(move || {
                let entries: Vec<(&str, &str)> =
                    refused.iter().map(|refusal| (refusal.line.as_str(), refusal.message.as_str())).collect();
                dead_letters.append_each(&entries, status, Millis::now())
            })
            .await;
            match appended {
                Ok(Ok(())) => dead_lettered = true,
                Ok(Err(error)) => {
                    error!(error = %error, line = %first.line, lines = rejected, "Cannot write refused lines to the dead-letter file.")
                }
                Err(error) => error!(error = %error, "The dead-letter write failed."),
            }
        }
        if let Some(refusals) = self.refusal_log.failed(Instant::now()) {
            warn!(
                status,
                message = %first.message,
                refusals,
                lines = rejected,
                line = %first.line,
                dead_letter_file = %self.dead_letters.as_ref().map(|file| file.path().display().to_string()).unwrap_or_default(),
                writer = %self.writer.describe(),
                "InfluxDB refused a line; it is counted as refused (and kept in the dead-letter file, if there is one)."
            );
        }
        if dead_lettered {
            self.counters.dead_lettered.fetch_add(rejected, Ordering::Relaxed);
        }
        self.report.points_rejected += rejected;
        self.counters.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.count_settled(delivery);
    }

    /// The delivery's current part is written or refused: lines handed over
    /// join the watermark; a spooled batch's lines are noted until it is done.
    fn count_settled(&mut self, delivery: &Delivery) {
        match delivery.origin {
            Origin::Memory => self.mark_settled(&delivery.part),
            Origin::Spool => self.draining_counted += delivery.part.batch.lines as u64,
        }
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
            if let Err(part) = self.spool_part(Part { first, batch, encoded: None }).await {
                self.report.points_unwritten_at_shutdown += part.batch.lines as u64;
            }
        }
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
