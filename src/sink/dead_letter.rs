//! Dead letters: the lines InfluxDB refused for themselves (a field type
//! conflict, a line it cannot parse), each with the server's answer, in
//! `data_dir/dead-letters.lp`, and re-sending them once the cause is fixed.
//!
//! The file is line protocol, readable by people and by InfluxDB's own
//! tools: every refused line follows a comment that says when and why.
//!
//! ```text
//! # 2026-11-30T08:50:01.250Z status 400: partial write: field type conflict: ...
//! segment,office=o1,service=ktp wait_s=12i 1795737600000000000
//! ```
//!
//! Invariants:
//! - An entry (comment and line) is appended in one write and `fdatasync`ed
//!   before the line counts as refused; the file is opened for each append,
//!   so [`resend`] can move it aside while a daemon keeps appending.
//! - [`resend`] moves the file aside (`dead-letters.resending.lp`) before it
//!   sends anything; lines InfluxDB takes leave, lines it still refuses go
//!   back with its new answer, lines it cannot be asked about (InfluxDB
//!   down) go back unchanged. A resend that dies midway leaves the moved
//!   file, which the next resend takes up first; a line sent twice is
//!   harmless (writes are idempotent).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

use super::task::backoff_delay;
use super::{influx_writer, Secrets, SinkError, WriteError, Writer};
use crate::config::Config;
use crate::storage::StorageError;
use crate::time::Millis;

/// The dead-letter file's name in `storage.data_dir`.
pub const DEAD_LETTER_FILE: &str = "dead-letters.lp";
const RESENDING_FILE: &str = "dead-letters.resending.lp";

/// Where refused lines go.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    path: PathBuf,
}

/// One refused line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The comment before the line, without `# `.
    pub reason: String,
    /// The line, without its newline.
    pub line: String,
}

impl DeadLetters {
    /// The dead-letter file of `data_dir`.
    pub fn in_dir(data_dir: &Path) -> DeadLetters {
        DeadLetters { path: data_dir.join(DEAD_LETTER_FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends refused lines with the server's answer and syncs them.
    pub fn append(&self, lines: &str, status: u16, message: &str, now: Millis) -> Result<(), StorageError> {
        let entries: Vec<(&str, &str)> = lines.lines().map(|line| (line, message)).collect();
        self.append_each(&entries, status, now)
    }

    /// Appends refused lines, each `(line, the server's answer about it)`,
    /// in one write, and syncs them.
    pub fn append_each(&self, entries: &[(&str, &str)], status: u16, now: Millis) -> Result<(), StorageError> {
        let mut text = String::new();
        for (line, message) in entries {
            write_entry(&mut text, &reason(now, status, message), line);
        }
        append_text(&self.path, &text)
    }
}

fn write_entry(text: &mut String, reason: &str, line: &str) {
    text.push_str("# ");
    text.push_str(reason);
    text.push('\n');
    text.push_str(line);
    text.push('\n');
}

fn append_text(path: &Path, text: &str) -> Result<(), StorageError> {
    let mut file =
        OpenOptions::new().create(true).append(true).open(path).map_err(|source| StorageError::io(path, source))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|source| StorageError::io(path, source))
}

/// An entry's comment: when, and the server's answer.
fn reason(now: Millis, status: u16, message: &str) -> String {
    format!("{} status {status}: {}", now.to_rfc3339(), one_line(message))
}

/// A server message on one line (it may hold newlines).
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The entries of a dead-letter file's text: every line that is not a
/// comment, with the comment just before it (empty if none).
pub fn parse(text: &str) -> Vec<DeadLetter> {
    let mut entries = Vec::new();
    let mut reason = String::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            reason = comment.trim().to_string();
        } else if !line.trim().is_empty() {
            entries.push(DeadLetter { reason: std::mem::take(&mut reason), line: line.to_string() });
        }
    }
    entries
}

/// What [`resend`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResendReport {
    /// Lines InfluxDB took: they left the file.
    pub written: u64,
    /// Lines still refused: back in the file with the new answer.
    pub refused: u64,
    /// Lines not tried or not answered (InfluxDB unavailable): back unchanged.
    pub kept: u64,
}

impl ResendReport {
    /// One line per count, for the command's output.
    pub fn summary(&self) -> String {
        format!(
            "re-sent and written: {}\nstill refused (kept with the new answer): {}\nnot tried, InfluxDB unavailable (kept): {}\n",
            self.written, self.refused, self.kept
        )
    }
}

/// `queuewatch resend-dead-letters`: re-sends the dead letters of
/// `storage.data_dir` to the configured InfluxDB.
pub async fn resend_configured(config: &Config) -> Result<ResendReport, SinkError> {
    let secrets = Secrets::resolve(&config.influxdb)?;
    let writer = influx_writer(&config.influxdb, &secrets)?;
    let report =
        resend(writer.as_ref(), &config.storage.data_dir, config.influxdb.batch_size, config.influxdb.max_backoff)
            .await?;
    Ok(report)
}

/// Attempts per request before a resend gives up on an unavailable InfluxDB.
const RESEND_ATTEMPTS: u32 = 5;

/// Re-sends the dead letters of `data_dir` through `writer`, `batch_size`
/// lines at a time, finding the lines still refused by halving, or from the
/// server's per-line answer (v3) (see the module's invariants).
pub async fn resend(
    writer: &dyn Writer,
    data_dir: &Path,
    batch_size: usize,
    max_backoff: Duration,
) -> Result<ResendReport, StorageError> {
    let dead_letters = DeadLetters::in_dir(data_dir);
    let resending = data_dir.join(RESENDING_FILE);
    // A resend that died midway left its file: it goes first.
    if dead_letters.path.exists() {
        if resending.exists() {
            let text = std::fs::read_to_string(&dead_letters.path)
                .map_err(|source| StorageError::io(&dead_letters.path, source))?;
            append_text(&resending, &text)?;
            std::fs::remove_file(&dead_letters.path).map_err(|source| StorageError::io(&dead_letters.path, source))?;
        } else {
            std::fs::rename(&dead_letters.path, &resending).map_err(|source| StorageError::io(&resending, source))?;
        }
        crate::storage::sync_dir(data_dir)?;
    }
    let text = match std::fs::read_to_string(&resending) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(ResendReport::default()),
        Err(source) => return Err(StorageError::io(&resending, source)),
    };
    let entries = parse(&text);
    let mut report = ResendReport::default();
    let mut back = String::new();
    let mut unavailable = false;
    for chunk in entries.chunks(batch_size.max(1)) {
        if unavailable {
            for entry in chunk {
                write_entry(&mut back, &entry.reason, &entry.line);
            }
            report.kept += chunk.len() as u64;
            continue;
        }
        let mut parts = vec![chunk];
        while let Some(part) = parts.pop() {
            let body: String = part.iter().map(|entry| format!("{}\n", entry.line)).collect();
            match write_with_retries(writer, &body, max_backoff).await {
                Ok(()) => report.written += part.len() as u64,
                Err(WriteError::Permanent { .. } | WriteError::TooLarge) if part.len() > 1 => {
                    let (first, second) = split_entries(part);
                    parts.push(second);
                    parts.push(first);
                }
                Err(WriteError::Permanent { status, message }) => {
                    write_entry(&mut back, &reason(Millis::now(), status, &message), &part[0].line);
                    report.refused += 1;
                }
                // The others are stored (v3).
                Err(WriteError::LinesRefused { status, refused }) => {
                    for refusal in &refused {
                        write_entry(
                            &mut back,
                            &reason(Millis::now(), status, &refusal.message),
                            &part[refusal.index].line,
                        );
                    }
                    report.refused += refused.len() as u64;
                    report.written += (part.len() - refused.len()) as u64;
                }
                Err(WriteError::TooLarge) => {
                    let reason = format!("{} status 413: the line alone is too large", Millis::now().to_rfc3339());
                    write_entry(&mut back, &reason, &part[0].line);
                    report.refused += 1;
                }
                Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. })) => {
                    warn!(error = %error, "InfluxDB is unavailable; the dead letters not re-sent stay in the file.");
                    unavailable = true;
                    for part in std::iter::once(part).chain(parts.drain(..).rev()) {
                        for entry in part {
                            write_entry(&mut back, &entry.reason, &entry.line);
                        }
                        report.kept += part.len() as u64;
                    }
                }
            }
        }
    }
    if !back.is_empty() {
        append_text(&dead_letters.path, &back)?;
    }
    std::fs::remove_file(&resending).map_err(|source| StorageError::io(&resending, source))?;
    crate::storage::sync_dir(data_dir)?;
    Ok(report)
}

/// Halves entries as [`super::batch::Batch::split_in_half`] halves lines.
fn split_entries(entries: &[DeadLetter]) -> (&[DeadLetter], &[DeadLetter]) {
    entries.split_at(entries.len() / 2)
}

async fn write_with_retries(writer: &dyn Writer, body: &str, max_backoff: Duration) -> Result<(), WriteError> {
    let mut failures = 0;
    loop {
        match writer.write(body).await {
            Err(WriteError::Transient { .. } | WriteError::Tls { .. }) if failures + 1 < RESEND_ATTEMPTS => {
                tokio::time::sleep(backoff_delay(failures, None, max_backoff)).await;
                failures += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dead_letters = DeadLetters::in_dir(dir.path());
        dead_letters.append("a v=1i 1\nb v=2i 2\n", 400, "partial write:\nfield type conflict", Millis(0)).unwrap();
        let text = std::fs::read_to_string(dead_letters.path()).unwrap();
        let entries = parse(&text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, "a v=1i 1");
        assert_eq!(entries[1].reason, "1970-01-01T00:00:00.000Z status 400: partial write: field type conflict");
    }
}
