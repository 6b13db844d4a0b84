//! Dead letters: the lines InfluxDB refused for themselves (a field type
//! conflict, a time beyond the retention policy, a line it cannot parse),
//! with the server's answer, in `data_dir/dead-letters.lp`, and re-sending
//! them once the cause is fixed.
//!
//! The file is line protocol, readable by people and by InfluxDB's own
//! tools: the lines refused together follow one comment that says when and
//! why (a comment holds for the lines after it, up to the next one).
//!
//! ```text
//! # 2026-11-30T08:50:01.250Z status 400: partial write: points beyond retention policy dropped=2
//! segment,office=o1,service=ktp wait_s=12i 1795737600000000000
//! segment,office=o1,service=ktp wait_s=14i 1795737600000000007
//! ```
//!
//! Invariants:
//! - The refused lines of a batch are appended in one write and one
//!   `fdatasync` before they count as refused; a file the append creates has
//!   its folder synced too, so it survives a crash.
//! - The file holds at most `storage.dead_letter_max_bytes`: lines beyond it
//!   are dropped, counted (`points_dead_letter_dropped`) and logged, never
//!   written. What a running `resend-dead-letters` puts back comes on top.
//! - Appends hold `dead-letters.lock` (flock) for their few milliseconds, and
//!   so does [`resend`] while it moves the file aside and while it puts lines
//!   back, so no append lands in a file a resend has already read. The file
//!   is opened for each append, so a daemon keeps appending to a new one.
//! - [`resend`] holds `dead-letters.resend.lock` for its whole run: a second
//!   one is refused. It moves the file aside (`dead-letters.resending.lp`)
//!   before it sends anything; lines InfluxDB takes leave, lines it still
//!   refuses go back with its new answer, lines it cannot be asked about
//!   (InfluxDB down) go back unchanged. A resend that dies midway leaves the
//!   moved file, which the next resend takes up first; a line sent twice is
//!   harmless (writes are idempotent).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::backoff::backoff_delay;
use super::refusal::{verdict, Verdict};
use super::{influx_writer, Secrets, SinkError, WriteError, Writer};
use crate::config::Config;
use crate::storage::{sync_dir, StorageError};
use crate::time::Millis;

/// The dead-letter file's name in `storage.data_dir`.
pub const DEAD_LETTER_FILE: &str = "dead-letters.lp";
const RESENDING_FILE: &str = "dead-letters.resending.lp";
const APPEND_LOCK_FILE: &str = "dead-letters.lock";
const RESEND_LOCK_FILE: &str = "dead-letters.resend.lock";

pub use crate::config::DEFAULT_DEAD_LETTER_MAX_BYTES;

/// Where refused lines go.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    path: PathBuf,
    dir: PathBuf,
    max_bytes: u64,
    /// Synced appends made through this value and its clones.
    appends: Arc<AtomicU64>,
}

/// One refused line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The comment before the line, without `# `.
    pub reason: String,
    /// The line, without its newline.
    pub line: String,
}

/// What one append did with the lines it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Lines written to the file.
    pub kept: u64,
    /// Lines dropped: the file had reached `max_bytes`.
    pub dropped: u64,
}

/// Lines refused so far and why, waiting to be appended together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refused {
    groups: Vec<RefusedGroup>,
    lines: u64,
}

#[derive(Debug, Clone)]
struct RefusedGroup {
    /// The comment's text: time, status and answer.
    reason: String,
    /// Whole lines, each ending with `'\n'`.
    text: String,
}

impl Refused {
    /// Adds `lines` lines (`text`, whole lines) refused with `status` and `message` at `at`.
    pub fn add(&mut self, text: &str, lines: u64, status: u16, message: &str, at: Millis) {
        let reason = format!("{} status {status}: {}", at.to_rfc3339(), one_line(message));
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.groups.push(RefusedGroup { reason, text });
        self.lines += lines;
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The first refused line and its reason, for a log.
    pub fn first(&self) -> Option<(&str, &str)> {
        let group = self.groups.first()?;
        Some((group.text.lines().next().unwrap_or_default(), group.reason.as_str()))
    }
}

impl DeadLetters {
    /// The dead-letter file of `data_dir`, holding at most
    /// [`DEFAULT_DEAD_LETTER_MAX_BYTES`].
    pub fn in_dir(data_dir: &Path) -> DeadLetters {
        DeadLetters {
            path: data_dir.join(DEAD_LETTER_FILE),
            dir: data_dir.to_path_buf(),
            max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
            appends: Arc::default(),
        }
    }

    /// The same file, holding at most `max_bytes` (`storage.dead_letter_max_bytes`; 0: none kept).
    pub fn with_max_bytes(self, max_bytes: u64) -> DeadLetters {
        DeadLetters { max_bytes, ..self }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Synced appends made so far through this value and its clones.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
    }

    /// Appends refused lines with the server's answer and syncs them.
    pub fn append(&self, lines: &str, status: u16, message: &str, now: Millis) -> Result<Appended, StorageError> {
        let mut refused = Refused::default();
        refused.add(lines, lines.lines().count() as u64, status, message, now);
        self.append_refused(&refused)
    }

    /// Appends every group of `refused` in one write and one sync, as many
    /// lines as the file has room for (see the module's invariants).
    pub(crate) fn append_refused(&self, refused: &Refused) -> Result<Appended, StorageError> {
        if refused.lines == 0 {
            return Ok(Appended::default());
        }
        if self.max_bytes == 0 {
            return Ok(Appended { kept: 0, dropped: refused.lines });
        }
        let _lock = hold(&self.dir.join(APPEND_LOCK_FILE))?;
        let used = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(StorageError::io(&self.path, source)),
        };
        let mut room = self.max_bytes.saturating_sub(used);
        let mut text = String::new();
        let mut appended = Appended::default();
        for group in &refused.groups {
            let comment_bytes = group.reason.len() as u64 + 3;
            let mut comment_written = false;
            for line in group.text.lines() {
                let needed = line.len() as u64 + 1 + if comment_written { 0 } else { comment_bytes };
                if needed > room {
                    appended.dropped += 1;
                    // Once full, smaller lines later do not jump the queue.
                    room = 0;
                    continue;
                }
                if !comment_written {
                    write_comment(&mut text, &group.reason);
                    comment_written = true;
                }
                text.push_str(line);
                text.push('\n');
                room -= needed;
                appended.kept += 1;
            }
        }
        if !text.is_empty() {
            append_text(&self.path, &text)?;
            self.appends.fetch_add(1, Ordering::Relaxed);
        }
        Ok(appended)
    }
}

fn write_comment(text: &mut String, reason: &str) {
    text.push_str("# ");
    text.push_str(reason);
    text.push('\n');
}

fn write_entry(text: &mut String, reason: &str, line: &str) {
    write_comment(text, reason);
    text.push_str(line);
    text.push('\n');
}

/// Appends `text` to the file at `path` (created if missing, then its folder
/// synced too) and syncs it. The caller holds the append lock.
fn append_text(path: &Path, text: &str) -> Result<(), StorageError> {
    let (mut file, created) = match OpenOptions::new().create_new(true).append(true).open(path) {
        Ok(file) => (file, true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            (OpenOptions::new().append(true).open(path).map_err(|source| StorageError::io(path, source))?, false)
        }
        Err(source) => return Err(StorageError::io(path, source)),
    };
    file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|source| StorageError::io(path, source))?;
    if created {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Takes the lock file at `path` (flock), waiting for it; held while the file lives.
fn hold(path: &Path) -> Result<File, StorageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| StorageError::io(path, source))?;
    file.lock().map_err(|source| StorageError::io(path, source))?;
    Ok(file)
}

/// A server message on one line (it may hold newlines).
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The entries of a dead-letter file's text: every line that is not a
/// comment, with the last comment before it (empty if none).
pub fn parse(text: &str) -> Vec<DeadLetter> {
    let mut entries = Vec::new();
    let mut reason = String::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            reason = comment.trim().to_string();
        } else if !line.trim().is_empty() {
            entries.push(DeadLetter { reason: reason.clone(), line: line.to_string() });
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
/// lines at a time, finding the lines still refused as the writer does
/// (`refusal.rs`, or the server's per-line answer with v3; see the
/// module's invariants).
pub async fn resend(
    writer: &dyn Writer,
    data_dir: &Path,
    batch_size: usize,
    max_backoff: Duration,
) -> Result<ResendReport, StorageError> {
    let lock_path = data_dir.join(RESEND_LOCK_FILE);
    let _running = try_hold(&lock_path)?
        .ok_or_else(|| StorageError::InUse { path: lock_path.clone(), holder: "another resend-dead-letters".into() })?;
    let dead_letters = DeadLetters::in_dir(data_dir);
    let resending = data_dir.join(RESENDING_FILE);
    {
        let _appends = hold(&data_dir.join(APPEND_LOCK_FILE))?;
        // A resend that died midway left its file: it goes first.
        if dead_letters.path.exists() {
            if resending.exists() {
                let text = std::fs::read_to_string(&dead_letters.path)
                    .map_err(|source| StorageError::io(&dead_letters.path, source))?;
                append_text(&resending, &text)?;
                std::fs::remove_file(&dead_letters.path)
                    .map_err(|source| StorageError::io(&dead_letters.path, source))?;
            } else {
                std::fs::rename(&dead_letters.path, &resending)
                    .map_err(|source| StorageError::io(&resending, source))?;
            }
            sync_dir(data_dir)?;
        }
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
    let all: Vec<usize> = (0..entries.len()).collect();
    for chunk in all.chunks(batch_size.max(1)) {
        if unavailable {
            keep(&mut back, &entries, chunk);
            report.kept += chunk.len() as u64;
            continue;
        }
        let mut parts: Vec<Vec<usize>> = vec![chunk.to_vec()];
        while let Some(part) = parts.pop() {
            let lines: Vec<&str> = part.iter().map(|index| entries[*index].line.as_str()).collect();
            let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
            match write_with_retries(writer, &body, max_backoff).await {
                Ok(()) => report.written += part.len() as u64,
                Err(WriteError::TooLarge) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second.to_vec());
                    parts.push(first.to_vec());
                }
                Err(WriteError::Permanent { status, message }) => match verdict(&lines, &message) {
                    Verdict::All => {
                        let reason = format!("{} status {status}: {}", Millis::now().to_rfc3339(), one_line(&message));
                        write_comment(&mut back, &reason);
                        for line in &lines {
                            back.push_str(line);
                            back.push('\n');
                        }
                        report.refused += part.len() as u64;
                    }
                    Verdict::Split(named) => {
                        let pick = |wanted: bool| -> Vec<usize> {
                            part.iter()
                                .zip(&named)
                                .filter(|(_, is_named)| **is_named == wanted)
                                .map(|(index, _)| *index)
                                .collect()
                        };
                        // The others first: they are taken, the named ones refused together.
                        parts.push(pick(true));
                        parts.push(pick(false));
                    }
                    Verdict::Halve => {
                        let (first, second) = part.split_at(part.len() / 2);
                        parts.push(second.to_vec());
                        parts.push(first.to_vec());
                    }
                },
                // The others are stored (v3): the lines named stay, each with its answer.
                Err(WriteError::LinesRefused { status, refused }) => {
                    for refusal in &refused {
                        let reason =
                            format!("{} status {status}: {}", Millis::now().to_rfc3339(), one_line(&refusal.message));
                        write_entry(&mut back, &reason, &entries[part[refusal.index]].line);
                    }
                    report.refused += refused.len() as u64;
                    report.written += (part.len() - refused.len()) as u64;
                }
                Err(WriteError::TooLarge) => {
                    let reason = format!("{} status 413: the line alone is too large", Millis::now().to_rfc3339());
                    write_entry(&mut back, &reason, &entries[part[0]].line);
                    report.refused += 1;
                }
                Err(error @ (WriteError::Transient { .. } | WriteError::Tls { .. })) => {
                    warn!(error = %error, "InfluxDB is unavailable; the dead letters not re-sent stay in the file.");
                    unavailable = true;
                    for part in std::iter::once(part).chain(parts.drain(..).rev()) {
                        keep(&mut back, &entries, &part);
                        report.kept += part.len() as u64;
                    }
                }
            }
        }
    }
    let _appends = hold(&data_dir.join(APPEND_LOCK_FILE))?;
    if !back.is_empty() {
        append_text(&dead_letters.path, &back)?;
    }
    std::fs::remove_file(&resending).map_err(|source| StorageError::io(&resending, source))?;
    sync_dir(data_dir)?;
    Ok(report)
}

/// Puts entries back as they were, each with its reason.
fn keep(back: &mut String, entries: &[DeadLetter], indexes: &[usize]) {
    let mut last_reason: Option<&str> = None;
    for index in indexes {
        let entry = &entries[*index];
        if last_reason != Some(entry.reason.as_str()) {
            write_comment(back, &entry.reason);
            last_reason = Some(&entry.reason);
        }
        back.push_str(&entry.line);
        back.push('\n');
    }
}

/// Takes the lock file at `path` (flock) if no one holds it; `None` if someone does.
fn try_hold(path: &Path) -> Result<Option<File>, StorageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| StorageError::io(path, source))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(StorageError::io(path, source)),
    }
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
    fn a_new_file_has_its_folder_synced_and_later_appends_do_not_sync_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let dead_letters = DeadLetters::in_dir(dir.path());
        crate::storage::synced::take();
        dead_letters.append("a v=1i 1\n", 400, "refused", Millis(0)).unwrap();
        assert_eq!(crate::storage::synced::take(), vec![dir.path().to_path_buf()], "the file's entry survives a crash");
        dead_letters.append("b v=1i 2\n", 400, "refused", Millis(0)).unwrap();
        assert!(crate::storage::synced::take().is_empty());
    }

    #[test]
    fn the_file_holds_at_most_its_limit_and_says_how_many_lines_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dead_letters = DeadLetters::in_dir(dir.path()).with_max_bytes(300);
        let lines: String = (0..20).map(|number| format!("ticket,office=o1 wait_s={number}i {number}\n")).collect();
        let appended = dead_letters
            .append(&lines, 400, "partial write: points beyond retention policy dropped=20", Millis(0))
            .unwrap();
        let size = std::fs::metadata(dead_letters.path()).unwrap().len();
        assert!(size <= 300, "{size}");
        assert_eq!(appended.kept + appended.dropped, 20);
        assert!(appended.kept >= 3 && appended.dropped >= 10, "{appended:?}");
        let entries = parse(&std::fs::read_to_string(dead_letters.path()).unwrap());
        assert_eq!(entries.len() as u64, appended.kept);
        assert!(
            entries.iter().all(|entry| entry.reason.ends_with("dropped=20")),
            "one comment for the lines refused together"
        );
        // Full: the next lines are dropped whole, nothing is written.
        let appended = dead_letters.append("x v=1i 1\n", 400, "refused", Millis(0)).unwrap();
        assert_eq!(appended, Appended { kept: 0, dropped: 1 });
        assert_eq!(std::fs::metadata(dead_letters.path()).unwrap().len(), size);
        // With no room at all, none is kept and no file is made.
        let none = DeadLetters::in_dir(&dir.path().join("elsewhere")).with_max_bytes(0);
        assert_eq!(none.append("x v=1i 1\n", 400, "refused", Millis(0)).unwrap(), Appended { kept: 0, dropped: 1 });
        assert!(!none.path().exists());
    }

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
