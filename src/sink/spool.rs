//! The spool: batches of line protocol waiting on disk, in order, while
//! InfluxDB is unavailable (`data_dir/spool`, at most `spool_max_bytes`).
//!
//! ```text
//! data_dir/spool/
//!   lock                 held (flock) by the writer that owns the spool
//!   spool-<first>.qwsp   segments: batches numbered first, first+1, …
//!   quarantine/          damaged segments set aside, kept for an operator
//! ```
//!
//! Invariants:
//! - Segments use the journal's framing (`crate::storage::journal`): a
//!   header, then `length | crc32 | number | record` frames, numbered without
//!   gaps. A record is `spooled_at i64 (ms) | lines u32 | text`.
//! - A batch counts as spooled only once its frame is `fdatasync`ed; a failed
//!   write is cut back off the file, and nothing more is appended until that
//!   cut succeeds ([`SegmentWriter`]), so no frame follows a torn one.
//! - Damage never stops a start and never deletes a batch that reads back.
//!   A crash can only tear the newest segment's last frame (cut off, as the
//!   journal does). Any other damage (a bad checksum, a wrong number, a
//!   record that does not decode, a bad header, a file that cannot be read)
//!   sets the segment aside in `quarantine/` (copied there whole, or renamed
//!   there when nothing of it reads), keeps its good batches before the
//!   damage in place, and counts it ([`Spool::quarantined`]); later segments
//!   are still sent: batches may land in any order (see `crate::sink`).
//! - The counts (`lines`, `bytes`) are those of the batches that read back:
//!   a segment found damaged when it is drained has its lost batches taken
//!   off them, so the spool always drains to empty.
//! - A segment that cannot be read when it is drained stays in place and
//!   [`Spool::next`] fails; the writer tries again with backoff. After
//!   [`READ_ATTEMPTS`] failures in a row it is set aside like damage.
//! - Batches leave in the order they were appended, one at a time: [`Spool::next`]
//!   hands out the oldest, [`Spool::ack`] forgets it once InfluxDB took it (or
//!   its refused lines are dead-lettered). A segment file is deleted when its
//!   last batch is acknowledged; killed before that, its batches are sent
//!   again at the next start, which is harmless (writes are idempotent).
//! - Memory stays bounded: only the segment being drained is held, and
//!   segments are cut at [`segment_target`] bytes.
//! - [`Spool::has_room`] refuses a batch that would take the unacknowledged
//!   bytes past `max_bytes` (unless the spool is empty): the writer then
//!   stops taking lines and the back-pressure reaches MQTT. On disk, the
//!   acknowledged batches of the segment being drained come on top, until
//!   its file goes: at most one segment. Quarantined files do not count.
//!
//! All of it is blocking file IO; the writer task runs it on a blocking thread.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{error, warn};

use crate::storage::journal::{
    check_header, frame, frame_at, numbered_files, SegmentWriter, FRAME_HEADER_BYTES, HEADER_BYTES, MAX_RECORD_BYTES,
};
use crate::storage::{lock_folder, sync_dir, StorageError};
use crate::time::Millis;

/// The spool format this version writes and reads.
pub const SPOOL_FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"qwspool1";
const RECORD_HEADER_BYTES: usize = 12;
/// The folder in the spool where damaged segments are set aside.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
/// Failed reads in a row after which a segment is set aside.
pub(crate) const READ_ATTEMPTS: u32 = 10;
/// Waits between the reads of a segment at start, before it is set aside.
const OPEN_READ_RETRIES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// One spooled batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpooledBatch {
    pub number: u64,
    /// When it was spooled (wall clock).
    pub spooled_at: Millis,
    pub lines: usize,
    pub text: String,
}

impl SpooledBatch {
    fn frame_bytes(&self) -> u64 {
        (FRAME_HEADER_BYTES + RECORD_HEADER_BYTES + self.text.len()) as u64
    }
}

/// The spool folder, open and locked.
pub(crate) struct Spool {
    dir: PathBuf,
    _lock: File,
    max_bytes: u64,
    segment_target: u64,
    /// The segment being appended to, if any.
    writing: Option<Writing>,
    /// Closed segments not yet being drained, oldest first.
    closed: VecDeque<Closed>,
    /// The segment being drained and its batches not yet handed out.
    reading: Option<PathBuf>,
    loaded: VecDeque<SpooledBatch>,
    /// The batch handed out by `next` and not yet acknowledged.
    outstanding: Option<Outstanding>,
    next_number: u64,
    /// Frame bytes and lines of the batches not yet acknowledged.
    bytes: u64,
    lines: u64,
    /// Segments set aside in `quarantine/` since the spool was opened.
    quarantined: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Spool")
            .field("dir", &self.dir)
            .field("lines", &self.lines)
            .field("bytes", &self.bytes)
            .field("quarantined", &self.quarantined)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    lines: usize,
    frame_bytes: u64,
    spooled_at: Millis,
}

/// A segment no longer appended to, and what it holds.
#[derive(Debug)]
struct Closed {
    first: u64,
    path: PathBuf,
    first_spooled_at: Option<Millis>,
    lines: u64,
    bytes: u64,
    /// Failed reads of it in a row while draining.
    read_failures: u32,
}

struct Writing {
    first: u64,
    segment: SegmentWriter,
    first_spooled_at: Option<Millis>,
    lines: u64,
    bytes: u64,
}

/// What opening a spool found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub batches: u64,
    pub lines: u64,
    /// Bytes cut off a torn end (a crash while appending).
    pub bytes_discarded: u64,
    /// Segments set aside in `quarantine/`, and their bytes that do not read back.
    pub segments_quarantined: u64,
    pub bytes_quarantined: u64,
}

/// A segment's name for its first batch number.
fn segment_name(first: u64) -> String {
    format!("spool-{first:020}.qwsp")
}

/// The size at which a segment is closed and a new one begun: an eighth of
/// the spool, within 64 KiB and 8 MiB, so that acknowledged batches free
/// disk space in steps and one segment (plus one batch) is all the memory a
/// drain needs.
pub(crate) fn segment_target(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 << 10, 8 << 20)
}

impl Spool {
    /// Opens (creating) the spool in `dir`, takes its lock, checks every
    /// segment (cutting a torn tail, setting damaged segments aside) and
    /// counts what waits in it. Fails only when the folder itself cannot be
    /// used (created, locked, listed), never over a segment's content.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovered), StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::io(dir, source))?;
        let lock = lock_folder(dir)?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            max_bytes,
            segment_target: segment_target(max_bytes),
            writing: None,
            closed: VecDeque::new(),
            reading: None,
            loaded: VecDeque::new(),
            outstanding: None,
            next_number: 1,
            bytes: 0,
            lines: 0,
            quarantined: 0,
        };
        let mut recovered = Recovered::default();
        let found = segments(dir)?;
        let newest = found.last().map(|(first, _)| *first);
        for (first, path) in found {
            // A new segment never takes the name of a file found here.
            spool.next_number = spool.next_number.max(first + 1);
            let read = read_at_open(&path, first);
            let (batches, keep_file) = match spool.settle_damage(&path, read, Some(first) == newest) {
                Settled::Kept { batches, cut } => {
                    recovered.bytes_discarded += cut;
                    (batches, false)
                }
                Settled::Quarantined { batches, lost_bytes } => {
                    recovered.segments_quarantined += 1;
                    recovered.bytes_quarantined += lost_bytes;
                    (batches, false)
                }
                Settled::Stuck { batches } => (batches, true),
            };
            if batches.is_empty() {
                if !keep_file {
                    if let Err(error) = remove(&path) {
                        warn!(error = %error, "Cannot remove an empty spool segment.");
                    }
                }
                continue;
            }
            let lines: u64 = batches.iter().map(|batch| batch.lines as u64).sum();
            let bytes: u64 = batches.iter().map(SpooledBatch::frame_bytes).sum();
            spool.bytes += bytes;
            spool.lines += lines;
            recovered.batches += batches.len() as u64;
            recovered.lines += lines;
            spool.next_number = spool.next_number.max(batches.last().map_or(first, |batch| batch.number + 1));
            let first_spooled_at = batches.first().map(|batch| batch.spooled_at);
            spool.closed.push_back(Closed { first, path, first_spooled_at, lines, bytes, read_failures: 0 });
        }
        Ok((spool, recovered))
    }

    /// Lines waiting in the spool (handed out and not acknowledged included).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes waiting in the spool (framing included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Segments set aside in `quarantine/` since the spool was opened
    /// (at the opening included).
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }

    /// When the oldest batch still waiting was spooled.
    pub fn oldest(&self) -> Option<Millis> {
        if let Some(outstanding) = self.outstanding {
            return Some(outstanding.spooled_at);
        }
        if let Some(batch) = self.loaded.front() {
            return Some(batch.spooled_at);
        }
        if let Some(closed) = self.closed.front() {
            return closed.first_spooled_at;
        }
        self.writing.as_ref()?.first_spooled_at
    }

    /// Whether a batch of `text_bytes` may be appended without passing
    /// `max_bytes`. An empty spool takes any batch, so none waits forever.
    pub fn has_room(&self, text_bytes: usize) -> bool {
        self.lines == 0 || self.bytes + (FRAME_HEADER_BYTES + RECORD_HEADER_BYTES + text_bytes) as u64 <= self.max_bytes
    }

    /// Appends a batch and syncs it to disk. On an error nothing of it stays
    /// in the file and the caller still owns the lines.
    pub fn append(&mut self, text: &str, lines: usize, now: Millis) -> Result<(), StorageError> {
        if self.writing.is_none() {
            self.writing = Some(self.create_segment()?);
        }
        let number = self.next_number;
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + text.len());
        record.extend_from_slice(&now.0.to_le_bytes());
        record.extend_from_slice(&u32::try_from(lines).unwrap_or(u32::MAX).to_le_bytes());
        record.extend_from_slice(text.as_bytes());
        let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + record.len());
        frame(&mut bytes, number, &record);
        let Some(writing) = self.writing.as_mut() else { unreachable!("created above") };
        writing.segment.append(&bytes).map_err(|source| StorageError::io(writing.segment.path(), source))?;
        writing.first_spooled_at.get_or_insert(now);
        writing.lines += lines as u64;
        writing.bytes += bytes.len() as u64;
        self.next_number += 1;
        self.bytes += bytes.len() as u64;
        self.lines += lines as u64;
        if writing.segment.length() >= self.segment_target {
            self.close_writing();
        }
        Ok(())
    }

    /// The oldest batch not yet handed out; `None` when the spool holds
    /// nothing more, or one batch is still out (they go one at a time).
    /// An error is a segment that cannot be read now: it stays first, to be
    /// tried again (see the module's invariants).
    pub fn next(&mut self) -> Result<Option<SpooledBatch>, StorageError> {
        if self.outstanding.is_some() {
            return Ok(None);
        }
        loop {
            if let Some(batch) = self.loaded.pop_front() {
                let frame_bytes = batch.frame_bytes();
                self.outstanding = Some(Outstanding { lines: batch.lines, frame_bytes, spooled_at: batch.spooled_at });
                return Ok(Some(batch));
            }
            self.remove_drained();
            if let Some(mut closed) = self.closed.pop_front() {
                let read = read_segment(&closed.path, closed.first);
                if matches!(read, Err(SegmentError::Unreadable(_))) {
                    closed.read_failures += 1;
                    if closed.read_failures < READ_ATTEMPTS {
                        let Err(SegmentError::Unreadable(source)) = read else { unreachable!("matched above") };
                        let error = StorageError::io(&closed.path, source);
                        self.closed.push_front(closed);
                        return Err(error);
                    }
                }
                // A torn end that took nothing counted off (a failed append
                // left it) is only cut; anything else is damage.
                let harmless = read.as_ref().is_ok_and(|segment| {
                    segment.end == End::Torn
                        && segment.batches.iter().map(|batch| batch.lines as u64).sum::<u64>() == closed.lines
                });
                let (batches, keep_file) = match self.settle_damage(&closed.path, read, harmless) {
                    Settled::Kept { batches, .. } | Settled::Quarantined { batches, .. } => (batches, false),
                    // Nothing of it reads and it cannot be set aside: it stays, tried again later.
                    Settled::Stuck { batches } if batches.is_empty() && closed.lines > 0 => {
                        let error = StorageError::Corrupt {
                            path: closed.path.clone(),
                            detail: "cannot be read, nor set aside in the quarantine folder".into(),
                        };
                        self.closed.push_front(closed);
                        return Err(error);
                    }
                    Settled::Stuck { batches } => (batches, true),
                };
                // What did not read back leaves the counts: the spool drains to empty.
                let lines: u64 = batches.iter().map(|batch| batch.lines as u64).sum();
                let bytes: u64 = batches.iter().map(SpooledBatch::frame_bytes).sum();
                self.lines -= closed.lines.saturating_sub(lines).min(self.lines);
                self.bytes -= closed.bytes.saturating_sub(bytes).min(self.bytes);
                self.loaded = batches.into();
                // A damaged file that could not be set aside is not removed once drained.
                self.reading = (!keep_file).then_some(closed.path);
                continue;
            }
            if self.writing.as_ref().is_some_and(|writing| writing.bytes > 0) {
                self.close_writing();
                continue;
            }
            return Ok(None);
        }
    }

    /// Forgets the batch handed out by [`Spool::next`]: InfluxDB has it.
    /// Its segment file goes once its last batch is acknowledged.
    pub fn ack(&mut self) {
        let Some(outstanding) = self.outstanding.take() else { return };
        self.lines -= outstanding.lines as u64;
        self.bytes -= outstanding.frame_bytes;
        if self.loaded.is_empty() {
            self.remove_drained();
        }
    }

    /// Removes the file of the segment drained. Should that fail, its
    /// batches are sent again at the next start, which is harmless.
    fn remove_drained(&mut self) {
        if let Some(path) = self.reading.take() {
            if let Err(error) = remove(&path) {
                error!(error = %error, "Cannot remove a sent spool segment; it is sent again at the next start.");
            }
        }
    }

    fn create_segment(&mut self) -> Result<Writing, StorageError> {
        let first = self.next_number;
        let segment = SegmentWriter::create(&self.dir.join(segment_name(first)), MAGIC, SPOOL_FORMAT_VERSION)?;
        Ok(Writing { first, segment, first_spooled_at: None, lines: 0, bytes: 0 })
    }

    fn close_writing(&mut self) {
        if let Some(writing) = self.writing.take() {
            let Writing { first, segment, first_spooled_at, lines, bytes } = writing;
            let path = segment.path().to_path_buf();
            self.closed.push_back(Closed { first, path, first_spooled_at, lines, bytes, read_failures: 0 });
        }
    }

    /// Decides what becomes of a segment as read: whole, it is kept; torn
    /// where a torn end is `harmless` (the newest segment at start: a crash
    /// while appending), it is cut there; otherwise it is set aside in
    /// `quarantine/` and its good batches before the damage stay in place.
    /// Logged here; an error to set it aside is logged too, and the segment
    /// then stays as it is.
    fn settle_damage(&mut self, path: &Path, read: Result<Segment, SegmentError>, harmless: bool) -> Settled {
        let (segment, detail) = match read {
            Ok(segment @ Segment { end: End::Whole, .. }) => return Settled::Kept { batches: segment.batches, cut: 0 },
            Ok(segment @ Segment { end: End::Torn, .. }) if harmless => {
                let cut = (segment.bytes.len() - segment.good) as u64;
                warn!(file = %path.display(), at = segment.good, bytes = cut, "The spool ends in a torn batch (a crash while appending); cutting it there.");
                if let Err(error) = cut_file(path, segment.good as u64) {
                    error!(error = %error, "Cannot cut a torn spool segment; it is cut at the next start.");
                }
                return Settled::Kept { batches: segment.batches, cut };
            }
            Ok(segment) => {
                let problem = match segment.end {
                    End::Torn => "a batch cut short",
                    End::Whole | End::Damaged => "a batch that fails its checksum or does not decode",
                };
                let detail = format!("{problem} at byte {}", segment.good);
                (Some(segment), detail)
            }
            Err(SegmentError::Unreadable(error)) => (None, format!("it cannot be read: {error}")),
            Err(SegmentError::Header(error)) => (None, error.to_string()),
        };
        let kept = segment.as_ref().map_or(0, |segment| segment.batches.len());
        match self.quarantine(path, segment.as_ref()) {
            Ok(aside) => {
                self.quarantined += 1;
                let lost_bytes = segment.as_ref().map_or_else(
                    || std::fs::metadata(&aside).map_or(0, |meta| meta.len()),
                    |segment| (segment.bytes.len() - segment.good) as u64,
                );
                error!(
                    file = %path.display(),
                    quarantined = %aside.display(),
                    problem = %detail,
                    batches_kept = kept,
                    bytes_set_aside = lost_bytes,
                    "A damaged spool segment is set aside (kept in the quarantine folder, not sent); the batches before the damage are still sent."
                );
                Settled::Quarantined { batches: segment.map(|segment| segment.batches).unwrap_or_default(), lost_bytes }
            }
            Err(error) => {
                error!(file = %path.display(), problem = %detail, error = %error, "A damaged spool segment cannot be set aside; its good batches are sent and the file stays as it is.");
                Settled::Stuck { batches: segment.map(|segment| segment.batches).unwrap_or_default() }
            }
        }
    }

    /// Puts a copy of the damaged segment at `path` in `quarantine/` (or the
    /// file itself, renamed, when nothing of it was read) and cuts `path`
    /// back to its good batches. Returns where the damaged one is now.
    fn quarantine(&self, path: &Path, segment: Option<&Segment>) -> Result<PathBuf, StorageError> {
        let folder = self.dir.join(QUARANTINE_DIR);
        std::fs::create_dir_all(&folder).map_err(|source| StorageError::io(&folder, source))?;
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = folder.join(format!("{name}.{}", Millis::now().0));
        match segment {
            Some(segment) => {
                // A copy first, then the cut: a crash in between finds the
                // same damage again and makes a second copy, nothing worse.
                let mut copy = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&aside)
                    .map_err(|source| StorageError::io(&aside, source))?;
                copy.write_all(&segment.bytes)
                    .and_then(|()| copy.sync_all())
                    .map_err(|source| StorageError::io(&aside, source))?;
                sync_dir(&folder)?;
                cut_file(path, segment.good as u64)?;
            }
            None => {
                std::fs::rename(path, &aside).map_err(|source| StorageError::io(&aside, source))?;
                sync_dir(&folder)?;
                sync_dir(&self.dir)?;
            }
        }
        Ok(aside)
    }
}

/// What became of a segment read at start or when drained.
enum Settled {
    /// In place, `cut` bytes of a torn end cut off.
    Kept { batches: Vec<SpooledBatch>, cut: u64 },
    /// Set aside; `batches` (those before the damage) stay in place.
    Quarantined { batches: Vec<SpooledBatch>, lost_bytes: u64 },
    /// Damaged, and could not be set aside: the file stays as it is (never
    /// removed this run), `batches` (those before the damage) are sent.
    Stuck { batches: Vec<SpooledBatch> },
}

/// Spool segment files in `dir`, by first batch number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    numbered_files(dir, "spool-", ".qwsp")
}

/// A segment as read: its good batches and what follows them.
struct Segment {
    batches: Vec<SpooledBatch>,
    /// The file's bytes, and how many of them (header and good frames) read back.
    bytes: Vec<u8>,
    good: usize,
    end: End,
}

/// What follows a segment's good batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Whole,
    /// A frame cut short by the end of the file, or zeros: what a crash
    /// while appending leaves.
    Torn,
    /// A frame that fails its checksum, has the wrong number or does not decode.
    Damaged,
}

#[derive(Debug, thiserror::Error)]
enum SegmentError {
    #[error("{0}")]
    Unreadable(std::io::Error),
    #[error("{0}")]
    Header(StorageError),
}

/// Reads a segment at start, trying again a little later when it cannot be
/// read (a disk's passing error); then it is set aside.
fn read_at_open(path: &Path, first: u64) -> Result<Segment, SegmentError> {
    let mut read = read_segment(path, first);
    for wait in OPEN_READ_RETRIES {
        if !matches!(read, Err(SegmentError::Unreadable(_))) {
            break;
        }
        std::thread::sleep(wait);
        read = read_segment(path, first);
    }
    read
}

/// The batches of a segment up to its first bad frame, and what follows them.
fn read_segment(path: &Path, first: u64) -> Result<Segment, SegmentError> {
    let bytes = std::fs::read(path).map_err(SegmentError::Unreadable)?;
    check_header(path, &bytes, MAGIC, SPOOL_FORMAT_VERSION).map_err(SegmentError::Header)?;
    let mut batches = Vec::new();
    let mut offset = HEADER_BYTES.min(bytes.len());
    let mut expected = first;
    while offset < bytes.len() {
        let Some((number, record, next)) = frame_at(&bytes, offset) else { break };
        let Some(batch) = decode(number, record).filter(|_| number == expected) else { break };
        batches.push(batch);
        expected += 1;
        offset = next;
    }
    let end = if offset == bytes.len() {
        End::Whole
    } else if torn_at(&bytes, offset) {
        End::Torn
    } else {
        End::Damaged
    };
    Ok(Segment { batches, bytes, good: offset, end })
}

/// Whether what follows `offset` is what a crash while appending leaves: a
/// frame that runs past the end of the file, or zeros.
fn torn_at(bytes: &[u8], offset: usize) -> bool {
    let rest = &bytes[offset..];
    let Some(length) = rest.get(..4).map(|length| u32::from_le_bytes([length[0], length[1], length[2], length[3]]))
    else {
        return true;
    };
    let length = length as usize;
    rest.len() < FRAME_HEADER_BYTES
        || (length <= MAX_RECORD_BYTES && FRAME_HEADER_BYTES + length > rest.len())
        || rest.iter().all(|byte| *byte == 0)
}

/// Cuts the file at `path` to `length` bytes, synced.
fn cut_file(path: &Path, length: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|source| StorageError::io(path, source))?;
    file.set_len(length).and_then(|()| file.sync_all()).map_err(|source| StorageError::io(path, source))
}

fn decode(number: u64, record: &[u8]) -> Option<SpooledBatch> {
    let (spooled_at, rest) = record.split_first_chunk::<8>()?;
    let (lines, text) = rest.split_first_chunk::<4>()?;
    let text = std::str::from_utf8(text).ok()?.to_string();
    let lines = u32::from_le_bytes(*lines) as usize;
    (super::batch::count_lines(&text) == lines).then_some(SpooledBatch {
        number,
        spooled_at: Millis(i64::from_le_bytes(*spooled_at)),
        lines,
        text,
    })
}

fn remove(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::io(path, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(|number| format!("m v={number}i {number}\n")).collect()
    }

    /// A closed spool of three batches of ten lines, and its one segment.
    fn three_batches_of_ten() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for batch in 0..3 {
            spool.append(&lines(batch * 10..batch * 10 + 10), 10, Millis(0)).unwrap();
        }
        drop(spool);
        let (_, path) = segments(dir.path()).unwrap().remove(0);
        (dir, path)
    }

    fn drain(spool: &mut Spool) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some(batch) = spool.next().unwrap() {
            texts.push(batch.text);
            spool.ack();
        }
        texts
    }

    #[test]
    fn batches_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered, Recovered::default());
        // 128 KiB segments: these 200 batches of ~2 KiB fill two and more.
        for batch in 0..200 {
            spool.append(&lines(batch * 100..batch * 100 + 100), 100, Millis(batch as i64)).unwrap();
        }
        assert_eq!(spool.lines(), 20_000);
        assert!(segments(dir.path()).unwrap().len() >= 2);
        let first = spool.next().unwrap().unwrap();
        assert_eq!((first.number, first.text.as_str()), (1, lines(0..100).as_str()));
        assert_eq!(spool.next().unwrap(), None, "one batch out at a time");
        drop(spool);

        // Killed before the first batch was acknowledged: it comes again.
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.batches, recovered.lines), (200, 20_000));
        assert_eq!(spool.oldest(), Some(Millis(0)));
        let texts = drain(&mut spool);
        assert_eq!(texts.concat(), lines(0..20_000));
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(segments(dir.path()).unwrap().is_empty(), "every acknowledged segment is removed");
        // Numbers go on after a drain.
        spool.append(&lines(0..1), 1, Millis(99)).unwrap();
        assert_eq!(spool.next().unwrap().unwrap().number, 201);
    }

    #[test]
    fn a_torn_last_batch_is_cut_and_the_rest_kept() {
        let (dir, path) = three_batches_of_ten();
        let length = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(length - 7).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.batches, recovered.lines), (2, 20));
        assert!(recovered.bytes_discarded > 0);
        assert_eq!(drain(&mut spool).concat(), lines(0..20));
    }

    #[test]
    fn a_flipped_bit_ends_the_spool_there() {
        let (dir, path) = three_batches_of_ten();
        let mut bytes = std::fs::read(&path).unwrap();
        let length = bytes.len();
        bytes[length - 20] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.lines, 20);
        assert_eq!(recovered.segments_quarantined, 1, "a bad checksum is damage, not a tear");
        assert_eq!(drain(&mut spool).concat(), lines(0..20));
    }

    /// A closed spool of `batches` batches of 100 lines (about 2 KiB each),
    /// which fill segments of 128 KiB: 200 make two segments and more.
    fn many_batches(batches: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for batch in 0..batches {
            spool.append(&lines(batch * 100..batch * 100 + 100), 100, Millis(batch as i64)).unwrap();
        }
        drop(spool);
        dir
    }

    /// Flips a bit in the frame of batch `number` (counted from 1) of the
    /// segment at `path`.
    fn damage_batch(path: &Path, number: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        let mut offset = HEADER_BYTES;
        for _ in 1..number {
            offset = frame_at(&bytes, offset).unwrap().2;
        }
        bytes[offset + FRAME_HEADER_BYTES + 20] ^= 0x08;
        std::fs::write(path, bytes).unwrap();
    }

    /// The files in the spool's quarantine folder.
    fn quarantined_files(dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir.join(QUARANTINE_DIR)) {
            Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn a_bad_frame_sets_its_segment_aside_and_every_other_batch_is_still_sent() {
        let dir = many_batches(200);
        let found = segments(dir.path()).unwrap();
        assert!(found.len() >= 2, "{found:?}");
        let (first, path) = &found[0];
        let original = std::fs::read(path).unwrap();
        // Batch 10 of the oldest segment is damaged: 1..=9 read back, the
        // rest of that segment does not, every later segment does.
        damage_batch(path, 10);
        let damaged = std::fs::read(path).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.segments_quarantined, 1, "{recovered:?}");
        assert_eq!(spool.quarantined(), 1);
        let next_first = found[1].0;
        let lost = (next_first - first - 9) as usize;
        assert_eq!(recovered.lines as usize, 20_000 - lost * 100, "{recovered:?}");
        let texts = drain(&mut spool);
        let expected: Vec<String> = (0..200)
            .filter(|batch| *batch < 9 || *batch >= (next_first - 1) as usize)
            .map(|batch| lines(batch * 100..batch * 100 + 100))
            .collect();
        assert_eq!(texts, expected, "the batches before the damage and every later segment, in order");
        assert!(spool.is_empty());
        // The damaged segment is kept whole in the quarantine folder.
        let aside = quarantined_files(dir.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged);
        assert_ne!(damaged, original);
        // The next start finds nothing more to set aside.
        drop(spool);
        let (_, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered, Recovered::default());
    }

    #[test]
    fn a_segment_with_a_bad_header_is_set_aside_and_the_start_goes_on() {
        let dir = many_batches(200);
        let found = segments(dir.path()).unwrap();
        let (_, path) = &found[0];
        let mut bytes = std::fs::read(path).unwrap();
        bytes[..8].copy_from_slice(b"garbage!");
        std::fs::write(path, &bytes).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).expect("a bad header does not stop the start");
        assert_eq!(recovered.segments_quarantined, 1);
        let texts = drain(&mut spool);
        let kept = (found[1].0 - 1) as usize;
        assert_eq!(texts.concat(), lines(kept * 100..20_000));
        assert_eq!(quarantined_files(dir.path()).len(), 1);
        assert!(!path.exists(), "renamed into the quarantine folder");
    }

    #[test]
    fn a_segment_of_a_newer_format_is_set_aside_not_a_failed_start() {
        let (dir, path) = three_batches_of_ten();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 9;
        std::fs::write(&path, &bytes).unwrap();
        let (spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.segments_quarantined, recovered.lines), (1, 0));
        assert!(spool.is_empty());
        assert_eq!(std::fs::read(&quarantined_files(dir.path())[0]).unwrap(), bytes, "kept as it was");
    }

    #[test]
    fn a_segment_damaged_after_it_was_written_leaves_the_counts_when_it_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for batch in 0..200 {
            spool.append(&lines(batch * 100..batch * 100 + 100), 100, Millis(batch as i64)).unwrap();
        }
        let found = segments(dir.path()).unwrap();
        damage_batch(&found[0].1, 5);
        let lost = (found[1].0 - 1 - 4) * 100;
        let texts = drain(&mut spool);
        assert_eq!(texts.len() as u64 * 100, 20_000 - lost);
        assert_eq!((spool.lines(), spool.bytes()), (0, 0), "the spool drains to empty");
        assert!(spool.is_empty());
        assert_eq!(spool.quarantined(), 1);
        assert_eq!(quarantined_files(dir.path()).len(), 1);
    }

    #[test]
    fn a_segment_that_cannot_be_read_stays_first_and_is_sent_once_it_can() {
        let (dir, path) = three_batches_of_ten();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        // Reading it now fails (a folder in its place), then works again.
        let moved = dir.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        std::fs::create_dir(&path).unwrap();
        for _ in 0..3 {
            assert!(spool.next().is_err());
            assert_eq!(spool.lines(), 30);
        }
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&moved, &path).unwrap();
        assert_eq!(drain(&mut spool).concat(), lines(0..30));
        assert!(spool.is_empty());
        assert_eq!(spool.quarantined(), 0);
    }

    #[test]
    fn a_segment_that_never_reads_is_set_aside_after_its_attempts() {
        let (dir, path) = three_batches_of_ten();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        for _ in 1..READ_ATTEMPTS {
            assert!(spool.next().is_err());
        }
        assert_eq!(spool.next().unwrap(), None);
        assert!(spool.is_empty());
        assert_eq!(spool.quarantined(), 1);
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_cut_back_is_never_followed_by_another_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&lines(0..10), 10, Millis(0)).unwrap();
        let writing = spool.writing.as_mut().unwrap();
        // The next write stops halfway, and the two cuts after it fail.
        writing.segment.file = Box::new(crate::storage::journal::testing::torn_writes(writing.segment.path(), 1, 2));
        assert!(spool.append(&lines(10..20), 10, Millis(1)).is_err());
        assert!(spool.append(&lines(10..20), 10, Millis(1)).is_err(), "the cut still fails");
        spool.append(&lines(10..20), 10, Millis(1)).unwrap();
        spool.append(&lines(20..30), 10, Millis(2)).unwrap();
        assert_eq!(spool.lines(), 30);
        drop(spool);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered, Recovered { batches: 3, lines: 30, ..Recovered::default() });
        assert_eq!(drain(&mut spool).concat(), lines(0..30));
    }

    #[test]
    fn the_spool_refuses_batches_past_its_size_but_always_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 4096).unwrap();
        let big = lines(0..500);
        assert!(big.len() > 4096);
        assert!(spool.has_room(big.len()), "an empty spool takes any batch");
        spool.append(&big, 500, Millis(0)).unwrap();
        assert!(!spool.has_room(10));
        let _ = spool.next().unwrap().unwrap();
        assert!(!spool.has_room(10), "a batch out is still waiting");
        spool.ack();
        assert!(spool.has_room(big.len()));
        let small = lines(0..10);
        let mut appended = 0;
        while spool.has_room(small.len()) {
            spool.append(&small, 10, Millis(0)).unwrap();
            appended += 1;
        }
        assert!(spool.bytes() <= 4096, "{}", spool.bytes());
        assert!(appended > 5);
        assert_eq!(drain(&mut spool).len(), appended);
    }

    #[test]
    fn a_second_writer_on_the_same_spool_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 20).unwrap();
        let error = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert!(error.to_string().contains("another queuewatch"), "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever a crash did to the end of the last segment, the spool
        /// reads back as a prefix of the batches appended, in order.
        #[test]
        fn a_damaged_spool_reads_back_as_a_prefix(sizes in proptest::collection::vec(1usize..20, 1..20), cut in 0usize..600) {
            let dir = tempfile::tempdir().unwrap();
            let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
            let mut expected = Vec::new();
            let mut at = 0;
            for size in &sizes {
                let text = lines(at..at + size);
                spool.append(&text, *size, Millis(0)).unwrap();
                expected.push(text);
                at += size;
            }
            drop(spool);
            let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
            let length = std::fs::metadata(&path).unwrap().len();
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(length.saturating_sub(cut as u64).max(HEADER_BYTES as u64)).unwrap();
            drop(file);
            let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
            let texts = drain(&mut spool);
            proptest::prop_assert_eq!(recovered.batches as usize, texts.len());
            proptest::prop_assert_eq!(&texts[..], &expected[..texts.len()]);
        }
    }
}
