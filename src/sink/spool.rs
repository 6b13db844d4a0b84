//! The spool: batches of line protocol waiting on disk, in order, while
//! InfluxDB is unavailable (`data_dir/spool`, at most `spool_max_bytes`).
//!
//! ```text
//! data_dir/spool/
//!   lock                 held (flock) by the writer that owns the spool
//!   spool-<first>.qwsp   segments: batches numbered first, first+1, …
//! ```
//!
//! Invariants:
//! - Segments use the journal's framing (`crate::storage::journal`): a
//!   header, then `length | crc32 | number | record` frames, numbered without
//!   gaps. A record is `spooled_at i64 (ms) | lines u32 | text`. A crash can
//!   only tear the last frame; reading cuts the file there and removes the
//!   segments after a bad frame, as the journal does.
//! - A batch counts as spooled only once its frame is `fdatasync`ed; a failed
//!   write is cut back off the file, so no half frame is ever followed by more.
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
//!   its file goes: at most one segment.
//!
//! All of it is blocking file IO; the writer task runs it on a blocking thread.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use crate::storage::journal::{
    check_header, create_segment_file, frame, frame_at, numbered_files, FRAME_HEADER_BYTES, HEADER_BYTES,
};
use crate::storage::{lock_folder, StorageError};
use crate::time::Millis;

/// The spool format this version writes and reads.
pub const SPOOL_FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"qwspool1";
const RECORD_HEADER_BYTES: usize = 12;

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
#[derive(Debug)]
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
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    lines: usize,
    frame_bytes: u64,
    spooled_at: Millis,
}

#[derive(Debug)]
struct Closed {
    first: u64,
    path: PathBuf,
    first_spooled_at: Option<Millis>,
}

#[derive(Debug)]
struct Writing {
    first: u64,
    path: PathBuf,
    file: File,
    length: u64,
    first_spooled_at: Option<Millis>,
}

/// What opening a spool found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub batches: u64,
    pub lines: u64,
    /// Bytes cut off a torn or corrupt end.
    pub bytes_discarded: u64,
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
    /// segment (cutting a torn tail) and counts what waits in it.
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
        };
        let mut recovered = Recovered::default();
        let mut ended = false;
        for (first, path) in segments(dir)? {
            if ended {
                let bytes = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
                error!(file = %path.display(), bytes, "Removing a spool segment that follows a corrupt one.");
                std::fs::remove_file(&path).map_err(|source| StorageError::io(&path, source))?;
                recovered.bytes_discarded += bytes;
                continue;
            }
            let (batches, cut) = read_segment(&path, first)?;
            if cut > 0 {
                ended = true;
                recovered.bytes_discarded += cut;
            }
            if batches.is_empty() {
                std::fs::remove_file(&path).map_err(|source| StorageError::io(&path, source))?;
                continue;
            }
            for batch in &batches {
                spool.bytes += batch.frame_bytes();
                spool.lines += batch.lines as u64;
                recovered.batches += 1;
                recovered.lines += batch.lines as u64;
            }
            spool.next_number = batches.last().map_or(first, |batch| batch.number + 1);
            let first_spooled_at = batches.first().map(|batch| batch.spooled_at);
            spool.closed.push_back(Closed { first, path, first_spooled_at });
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
        let written = writing.file.write_all(&bytes).and_then(|()| writing.file.sync_data());
        if let Err(source) = written {
            let _ = writing.file.set_len(writing.length);
            // Reopened in append mode, the file continues at its new end.
            return Err(StorageError::io(&writing.path, source));
        }
        writing.length += bytes.len() as u64;
        writing.first_spooled_at.get_or_insert(now);
        self.next_number += 1;
        self.bytes += bytes.len() as u64;
        self.lines += lines as u64;
        if writing.length >= self.segment_target {
            self.close_writing();
        }
        Ok(())
    }

    /// The oldest batch not yet handed out; `None` when the spool holds
    /// nothing more, or one batch is still out (they go one at a time).
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
            if let Some(path) = self.reading.take() {
                remove(&path)?;
            }
            if let Some(Closed { first, path, .. }) = self.closed.pop_front() {
                let (batches, cut) = read_segment(&path, first)?;
                if cut > 0 {
                    // Written and checked by this process: only a failing disk gets here.
                    error!(file = %path.display(), bytes = cut, "A spool segment was damaged after it was written.");
                }
                self.loaded = batches.into();
                self.reading = Some(path);
                continue;
            }
            if self.writing.as_ref().is_some_and(|writing| writing.length > HEADER_BYTES as u64) {
                self.close_writing();
                continue;
            }
            return Ok(None);
        }
    }

    /// Forgets the batch handed out by [`Spool::next`]: InfluxDB has it.
    /// Its segment file goes once its last batch is acknowledged.
    pub fn ack(&mut self) -> Result<(), StorageError> {
        let Some(outstanding) = self.outstanding.take() else { return Ok(()) };
        self.lines -= outstanding.lines as u64;
        self.bytes -= outstanding.frame_bytes;
        if self.loaded.is_empty() {
            if let Some(path) = self.reading.take() {
                remove(&path)?;
            }
        }
        Ok(())
    }

    fn create_segment(&mut self) -> Result<Writing, StorageError> {
        let first = self.next_number;
        let path = self.dir.join(segment_name(first));
        drop(create_segment_file(&path, MAGIC, SPOOL_FORMAT_VERSION)?);
        // Appends continue at the end even after a failed write was cut off.
        let file = OpenOptions::new().append(true).open(&path).map_err(|source| StorageError::io(&path, source))?;
        Ok(Writing { first, path, file, length: HEADER_BYTES as u64, first_spooled_at: None })
    }

    fn close_writing(&mut self) {
        if let Some(writing) = self.writing.take() {
            let Writing { first, path, first_spooled_at, .. } = writing;
            self.closed.push_back(Closed { first, path, first_spooled_at });
        }
    }
}

/// Spool segment files in `dir`, by first batch number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    numbered_files(dir, "spool-", ".qwsp")
}

/// The batches of a segment, and how many bytes were cut off its end (a
/// torn or corrupt frame, or a record that does not decode).
fn read_segment(path: &Path, first: u64) -> Result<(Vec<SpooledBatch>, u64), StorageError> {
    let bytes = std::fs::read(path).map_err(|source| StorageError::io(path, source))?;
    check_header(path, &bytes, MAGIC, SPOOL_FORMAT_VERSION)?;
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
    let cut = (bytes.len() - offset) as u64;
    if cut > 0 {
        warn!(file = %path.display(), at = offset, bytes = cut, "The spool ends in a torn or corrupt batch; cutting it there.");
        let file = OpenOptions::new().write(true).open(path).map_err(|source| StorageError::io(path, source))?;
        file.set_len(offset as u64).and_then(|()| file.sync_all()).map_err(|source| StorageError::io(path, source))?;
    }
    Ok((batches, cut))
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
            spool.ack().unwrap();
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
        assert_eq!(drain(&mut spool).concat(), lines(0..20));
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
        spool.ack().unwrap();
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
