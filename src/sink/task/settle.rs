//! How a delivery's attempt ends: counted, retried, split, or its refused
//! lines dead-lettered, and its lines settled.

use super::*;

impl WriterTask {
    /// Counts what one attempt decided and sends what comes next: the same
    /// part again after a backoff, what a refusal or a 413 leaves of it, the
    /// delivery's next part, or the delivery to the spool.
    pub(super) async fn settle(&mut self, mut delivery: Delivery, result: Result<(), WriteError>) {
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
                if delivery.origin == Origin::Spool {
                    self.draining_counted += lines;
                }
            }
            // Too large: halve and send each half, down to single lines.
            Err(WriteError::TooLarge) if lines > 1 && !self.gave_up => {
                let (first_half, second_half) = delivery.take_batch().split_in_half();
                self.attempt_parts(delivery, first_half, second_half);
                return;
            }
            // Lines refused for their content (a partial write): all of them,
            // or those the answer names and the others sent apart, or the
            // halves (`refusal.rs`), down to the lines refused.
            Err(WriteError::Permanent { status, message }) if !self.gave_up => {
                let batch = delivery.take_batch();
                let lines_of: Vec<&str> = batch.text.lines().collect();
                match verdict(&lines_of, &message) {
                    Verdict::All => delivery.refused.add(&batch.text, lines, status, &message, Millis::now()),
                    Verdict::Split(named) => {
                        let (named, others) = batch.split_by(&named);
                        self.attempt_parts(delivery, others, named);
                        return;
                    }
                    Verdict::Halve => {
                        let (first_half, second_half) = batch.split_in_half();
                        self.attempt_parts(delivery, first_half, second_half);
                        return;
                    }
                }
            }
            // The others are stored (v3's per-line answer): only the lines it
            // names are refused, nothing to halve, whatever the deadline.
            Err(WriteError::LinesRefused { status, refused }) => {
                let batch = delivery.take_batch();
                let lines_of: Vec<&str> = batch.text.lines().collect();
                let now = Millis::now();
                let mut named = 0u64;
                for refusal in &refused {
                    if let Some(line) = lines_of.get(refusal.index) {
                        delivery.refused.add(&format!("{line}\n"), 1, status, &refusal.message, now);
                        named += 1;
                    }
                }
                let written = lines - named;
                self.report.points_written += written;
                self.counters.written.fetch_add(written, Ordering::Relaxed);
                if delivery.origin == Origin::Spool {
                    self.draining_counted += written;
                }
            }
            // Past the deadline, lines not yet told apart are unwritten, not refused.
            Err(WriteError::Permanent { .. }) if lines > 1 => {
                self.end_unfinished(delivery).await;
                return;
            }
            Err(WriteError::Permanent { status, message }) => {
                let batch = delivery.take_batch();
                delivery.refused.add(&batch.text, lines, status, &message, Millis::now());
            }
            Err(WriteError::TooLarge) if !self.gave_up => {
                let batch = delivery.take_batch();
                let message = format!("the line alone is too large ({} bytes)", batch.text.len());
                delivery.refused.add(&batch.text, lines, 413, &message, Millis::now());
            }
            Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. }))
                if delivery.origin == Origin::Memory && self.spool.is_some() =>
            {
                let mut parts = std::iter::once(std::mem::replace(&mut delivery.part, Part::new(Batch::empty())))
                    .chain(std::mem::take(&mut delivery.later).into_iter().rev());
                while let Some(part) = parts.next() {
                    if let Err(part) = self.spool_part(part).await {
                        // No room (or a disk error): what is left is retried from memory.
                        delivery.part = part;
                        delivery.later = parts.collect();
                        delivery.later.reverse();
                        delivery.failures_in_a_row = 1;
                        if self.gave_up {
                            self.end_unfinished(delivery).await;
                        } else {
                            self.retry(delivery, error);
                        }
                        return;
                    }
                }
                // Every part is in the spool (its lines settled with the delivery's).
                self.end_delivery(delivery).await;
                return;
            }
            Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. })) if !self.gave_up => {
                self.retry(delivery, error);
                return;
            }
            // The deadline has passed: nothing more is attempted.
            Err(WriteError::TooLarge | WriteError::Transient { .. } | WriteError::Tls { .. }) => {
                self.end_unfinished(delivery).await;
                return;
            }
        }
        if let Some(next) = delivery.later.pop() {
            delivery.part = next;
            if self.gave_up {
                self.end_unfinished(delivery).await;
                return;
            }
            delivery.failures_in_a_row = 0;
            self.in_flight_lines += delivery.memory_lines();
            self.attempt(delivery, Duration::ZERO);
        } else {
            self.end_delivery(delivery).await;
        }
    }

    /// Sends `first` now and `second` after it, in place of the delivery's part.
    fn attempt_parts(&mut self, mut delivery: Delivery, first: Batch, second: Batch) {
        delivery.later.push(Part::new(second));
        delivery.part = Part::new(first);
        delivery.failures_in_a_row = 0;
        self.in_flight_lines += delivery.memory_lines();
        self.attempt(delivery, Duration::ZERO);
    }

    /// Every part of the delivery is written, refused or spooled: its
    /// refused lines go to the dead-letter file (one append), then its lines
    /// are settled; a spooled batch leaves the spool.
    async fn end_delivery(&mut self, mut delivery: Delivery) {
        self.write_refused(&mut delivery).await;
        match delivery.origin {
            Origin::Memory => self.mark_settled(delivery.first, delivery.lines),
            Origin::Spool => {
                self.draining = false;
                self.draining_counted = 0;
                self.with_spool(Spool::ack).await;
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
    /// deadline passed): what it had refused is dead-lettered, lines handed
    /// over are unwritten; a spooled batch stays in the spool.
    async fn end_unfinished(&mut self, mut delivery: Delivery) {
        self.write_refused(&mut delivery).await;
        match delivery.origin {
            Origin::Memory => self.report.points_unwritten_at_shutdown += delivery.unsent_lines(),
            Origin::Spool => self.draining = false,
        }
    }

    /// The lines the delivery had refused: into the dead-letter file (when
    /// there is one) in one append with the server's answers, as many as
    /// `storage.dead_letter_max_bytes` leaves room for; counted as refused,
    /// and those not kept as dropped. Logged at a limited rate.
    async fn write_refused(&mut self, delivery: &mut Delivery) {
        let refused = std::mem::take(&mut delivery.refused);
        let lines = refused.lines();
        if lines == 0 {
            return;
        }
        let (first_line, reason) =
            refused.first().map(|(line, reason)| (line.to_string(), reason.to_string())).unwrap_or_default();
        let appended = match self.dead_letters.clone() {
            Some(dead_letters) => {
                match tokio::task::spawn_blocking(move || dead_letters.append_refused(&refused)).await {
                    Ok(Ok(appended)) => appended,
                    Ok(Err(error)) => {
                        error!(error = %error, lines, "Cannot write refused lines to the dead-letter file; they are counted as dropped.");
                        Appended { kept: 0, dropped: lines }
                    }
                    // File IO does not panic short of a bug; its panic is the task's.
                    Err(error) => std::panic::resume_unwind(
                        error.try_into_panic().unwrap_or_else(|_| Box::new("dead-letter write cancelled")),
                    ),
                }
            }
            None => Appended::default(),
        };
        let dead_letter_file =
            self.dead_letters.as_ref().map(|file| file.path().display().to_string()).unwrap_or_default();
        if let Some(refusals) = self.refusal_log.failed(Instant::now()) {
            warn!(
                lines,
                reason = %reason,
                refusals,
                line = %first_line,
                dead_letter_file = %dead_letter_file,
                writer = %self.writer.describe(),
                "InfluxDB refused lines; they are counted as refused and kept in the dead-letter file, if there is one."
            );
        }
        if appended.dropped > 0 {
            if let Some(drops) = self.dead_letter_full_log.failed(Instant::now()) {
                error!(
                    dropped = appended.dropped,
                    drops,
                    dead_letter_file = %dead_letter_file,
                    "Refused lines are dropped and counted, not kept: the dead-letter file is full \
                     (storage.dead_letter_max_bytes). Fix their cause, then re-send or move the file."
                );
            }
        }
        self.counters.dead_lettered.fetch_add(appended.kept, Ordering::Relaxed);
        self.counters.dead_letter_dropped.fetch_add(appended.dropped, Ordering::Relaxed);
        self.report.points_rejected += lines;
        self.counters.rejected.fetch_add(lines, Ordering::Relaxed);
        if delivery.origin == Origin::Spool {
            self.draining_counted += lines;
        }
    }

    pub(super) fn mark_settled(&mut self, first: u64, lines: u64) {
        let prefix = self.settled.settle(first, lines);
        self.counters.settled.store(prefix, Ordering::Relaxed);
    }
}
