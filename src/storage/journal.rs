//! The journal: numbered records in segment files, appended by one thread
//! that commits them in groups (one `fdatasync` for whatever arrived while
//! the previous commit ran) and publishes the highest durable number.
//!
//! Invariants:
//! - Records are numbered 1, 2, 3, … without gaps across segments; a segment
//!   is named by the number of its first record (`journal-<first>.qwj`) and a
//!   new one is started at every checkpoint, so the journal is cut behind a
//!   snapshot by deleting whole files.
//! - A frame is `length u32 | crc32 u32 | number u64 | record`, the checksum
//!   covering number and record. A crash can only leave a torn last frame;
//!   reading stops at the first frame that is cut off or fails its checksum,
//!   and the file is cut there, so nothing after a bad frame is ever applied
//!   (it could not be applied in order).
//! - The durable number only grows, and only after `fdatasync` returned: an
//!   acknowledgement waits for it. A failed write (a full disk) is retried
//!   with backoff after cutting the file back to its last good length, and
//!   meanwhile nothing more is committed, so nothing more is acknowledged and
//!   the bounded channel into the thread fills: the daemon waits and the
//!   broker keeps the rest. A cut that fails is tried again before anything
//!   more is written ([`SegmentWriter`]): a frame after a torn one would be
//!   acknowledged and then lost, since reading stops at the torn one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::{sync_dir, StorageError};

/// The journal format this version writes and reads.
pub const JOURNAL_FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"qwjournl";
/// A segment begins with `magic [8] | version u32 | 0u32`.
pub(crate) const HEADER_BYTES: usize = 16;
pub(crate) const FRAME_HEADER_BYTES: usize = 16;
/// Larger frames are taken as corruption (a record holds one MQTT payload).
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 20;
/// How long a group waits for more records before it is committed: at a
/// few thousand messages a second, committing each as it comes means an
/// `fdatasync` per message or two, which costs more CPU than the rest of the
/// daemon; lingering makes groups of several messages for a couple of
/// milliseconds more before their acknowledgements go (points do not wait).
const LINGER: Duration = Duration::from_millis(2);

/// The next command, waiting for one until `until` (a short sleep between
/// looks: this thread does nothing else).
fn receive_within(receiver: &mut mpsc::Receiver<Command>, until: std::time::Instant) -> Option<Command> {
    loop {
        match receiver.try_recv() {
            Ok(command) => return Some(command),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let now = std::time::Instant::now();
                if now >= until {
                    return None;
                }
                std::thread::sleep((until - now).min(Duration::from_micros(250)));
            }
        }
    }
}

/// Records waiting for the journal thread; full means the daemon waits.
const CHANNEL_CAPACITY: usize = 8192;

/// A segment file's name for its first record number.
pub fn segment_name(first: u64) -> String {
    format!("journal-{first:020}.qwj")
}

/// Segment files in `dir`, by first record number.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    numbered_files(dir, "journal-", ".qwj")
}

/// Files in `dir` named `<prefix><number><suffix>` (segments of the journal,
/// of the spool), by number.
pub(crate) fn numbered_files(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| StorageError::io(dir, source))? {
        let entry = entry.map_err(|source| StorageError::io(dir, source))?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|name| name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        else {
            continue;
        };
        found.push((first, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// What reading the journal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadSummary {
    /// The highest record number read (or `after`, if none).
    pub last: u64,
    /// Records handed to the callback.
    pub applied: u64,
    /// Bytes cut off the journal: a torn or corrupt tail, and any segment after it.
    pub bytes_discarded: u64,
}

/// Hands every record numbered above `after` to `apply`, in order. A torn or
/// corrupt frame ends the journal there: the file is cut at that frame and
/// later segments are removed (see the module's invariants). A gap between
/// `after` and the first record found is an error: the records in it are lost.
pub fn read(dir: &Path, after: u64, mut apply: impl FnMut(u64, &[u8])) -> Result<ReadSummary, StorageError> {
    let mut summary = ReadSummary { last: after, ..ReadSummary::default() };
    let segments = segments(dir)?;
    let mut ended = false;
    for (first, path) in segments {
        if ended {
            let bytes = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
            error!(file = %path.display(), bytes, "Removing a journal segment that follows a corrupt one.");
            std::fs::remove_file(&path).map_err(|source| StorageError::io(&path, source))?;
            summary.bytes_discarded += bytes;
            continue;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(|source| StorageError::io(&path, source))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|source| StorageError::io(&path, source))?;
        check_header(&path, &bytes, MAGIC, JOURNAL_FORMAT_VERSION)?;
        let mut offset = HEADER_BYTES;
        let mut expected = first;
        while offset < bytes.len() {
            let Some((number, record, next)) = frame_at(&bytes, offset) else {
                break;
            };
            if number != expected {
                break;
            }
            if number > after {
                if number != summary.last + 1 {
                    return Err(StorageError::Gap { path, after: summary.last, found: number });
                }
                apply(number, record);
                summary.applied += 1;
                summary.last = number;
            }
            expected += 1;
            offset = next;
        }
        if offset < bytes.len() {
            let cut = (bytes.len() - offset) as u64;
            warn!(file = %path.display(), at = offset, bytes = cut, "The journal ends in a torn or corrupt record; cutting it there.");
            file.set_len(offset as u64).map_err(|source| StorageError::io(&path, source))?;
            file.sync_all().map_err(|source| StorageError::io(&path, source))?;
            summary.bytes_discarded += cut;
            ended = true;
        }
    }
    Ok(summary)
}

/// The header of a segment file of the kind `magic` names (the journal's, the spool's).
pub(crate) fn file_header(magic: &[u8; 8], version: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(magic);
    header.extend_from_slice(&version.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header
}

/// Creates (or empties) the segment file at `path` with its header, synced
/// along with its folder before any frame is written to it.
pub(crate) fn create_segment_file(path: &Path, magic: &[u8; 8], version: u32) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|source| StorageError::io(path, source))?;
    file.write_all(&file_header(magic, version))
        .and_then(|()| file.sync_all())
        .map_err(|source| StorageError::io(path, source))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Checks a segment's header against `magic` and `version`.
pub(crate) fn check_header(path: &Path, bytes: &[u8], magic: &[u8; 8], supported: u32) -> Result<(), StorageError> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != magic {
        // A segment is created with its header synced before any record:
        // a shorter one can only be one torn at creation, holding nothing.
        if bytes.len() < HEADER_BYTES && magic.starts_with(&bytes[..bytes.len().min(8)]) {
            return Ok(());
        }
        return Err(StorageError::Corrupt {
            path: path.into(),
            detail: "not a queuewatch segment of this kind".into(),
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != supported {
        return Err(StorageError::Version { path: path.into(), found: version, supported });
    }
    Ok(())
}

/// The frame at `offset`: its number, its record and where the next begins;
/// `None` if it is cut off or fails its checksum.
pub(crate) fn frame_at(bytes: &[u8], offset: usize) -> Option<(u64, &[u8], usize)> {
    let header = bytes.get(offset..offset + FRAME_HEADER_BYTES)?;
    let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if length > MAX_RECORD_BYTES {
        return None;
    }
    let end = offset + FRAME_HEADER_BYTES + length;
    let covered = bytes.get(offset + 8..end)?;
    if crc32fast::hash(covered) != checksum {
        return None;
    }
    let number = u64::from_le_bytes(header[8..16].try_into().ok()?);
    Some((number, &covered[8..], end))
}

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, number: u64, record: &[u8]) {
    let length = u32::try_from(record.len()).unwrap_or(u32::MAX);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&number.to_le_bytes());
    hasher.update(record);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(record);
}

/// What the daemon asks of the journal thread.
#[derive(Debug)]
pub enum Command {
    /// Records already framed by [`frame`], in order, the last numbered
    /// `last`: the daemon hands over a run of records in one command.
    Framed { last: u64, frames: Vec<u8> },
    /// Start a new segment whose first record is `first` (at a checkpoint).
    Roll { first: u64 },
    /// Remove the segments that hold only records below `below` (a snapshot covers them).
    Forget { below: u64 },
}

/// The daemon's end of the journal thread.
pub struct JournalHandle {
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<u64>,
    failing: watch::Receiver<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl JournalHandle {
    /// Starts the thread appending to a new segment whose first record is `first`.
    pub fn start(dir: &Path, first: u64) -> Result<JournalHandle, StorageError> {
        let files = Files::create(dir, first)?;
        let (commands, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let (durable_sender, durable) = watch::channel(first.saturating_sub(1));
        let (failing_sender, failing) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("queuewatch-journal".into())
            .spawn(move || Committer { files, durable: durable_sender, failing: failing_sender }.run(receiver))
            .map_err(|source| StorageError::io(dir, source))?;
        Ok(JournalHandle { commands, durable, failing, thread })
    }

    /// Hands a command over, waiting while the thread is behind (full channel).
    /// False if the thread has stopped.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// The highest record number known to be on disk.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Resolves when the durable number changes.
    pub async fn durable_changed(&mut self) {
        if self.durable.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the last commit failed (the disk is full or failing).
    pub fn failing(&self) -> bool {
        *self.failing.borrow()
    }

    /// Commits what was handed over and stops the thread.
    pub async fn close(self) -> u64 {
        let JournalHandle { commands, durable, thread, .. } = self;
        // The thread commits what is left and ends once the channel is closed.
        drop(commands);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        let last = *durable.borrow();
        last
    }
}

/// What a segment writer needs of its file; a test puts a disk that fills
/// up or fails in its place.
pub(crate) trait SegmentFile: Write + Send {
    fn sync_data(&mut self) -> std::io::Result<()>;
    /// Cuts the file to `length` and continues writing there.
    fn cut_to(&mut self, length: u64) -> std::io::Result<()>;
}

impl SegmentFile for File {
    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn cut_to(&mut self, length: u64) -> std::io::Result<()> {
        self.set_len(length)?;
        self.seek(SeekFrom::Start(length)).map(drop)
    }
}

/// A segment file being appended to, frame by frame (the journal's, the
/// spool's): every append is synced, and a failed one is cut back off.
/// Should the cut fail too, nothing more is written until a cut succeeds,
/// so no frame ever lands behind a torn one (a reader stops at the first
/// bad frame, and would lose every frame after it).
pub(crate) struct SegmentWriter {
    pub(crate) file: Box<dyn SegmentFile>,
    path: PathBuf,
    /// The file's length after the last successful append.
    good_length: u64,
    /// A failed append may have left part of its bytes after `good_length`.
    torn: bool,
}

impl SegmentWriter {
    /// Creates the segment at `path` with its header (see [`create_segment_file`]).
    pub(crate) fn create(path: &Path, magic: &[u8; 8], version: u32) -> Result<SegmentWriter, StorageError> {
        let file = create_segment_file(path, magic, version)?;
        Ok(SegmentWriter { file: Box::new(file), path: path.into(), good_length: HEADER_BYTES as u64, torn: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length after the last successful append.
    pub(crate) fn length(&self) -> u64 {
        self.good_length
    }

    /// Writes `bytes` at the end and syncs; on failure the file is cut back
    /// to its last good length, so a retry never leaves half a frame inside.
    /// A cut that fails is tried again before the next append, which fails
    /// while it does.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.cut_back()?;
        }
        match self.file.write_all(bytes).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.good_length += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.torn = true;
                // Failing, it is tried again (and reported) by the next append.
                let _ = self.cut_back();
                Err(error)
            }
        }
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        self.file.cut_to(self.good_length).map_err(|error| {
            std::io::Error::new(error.kind(), format!("cannot cut a failed write back off the file: {error}"))
        })?;
        self.torn = false;
        Ok(())
    }
}

/// The current segment and the folder it lives in.
struct Files {
    dir: PathBuf,
    segment: SegmentWriter,
}

impl Files {
    fn create(dir: &Path, first: u64) -> Result<Files, StorageError> {
        let segment = SegmentWriter::create(&dir.join(segment_name(first)), MAGIC, JOURNAL_FORMAT_VERSION)?;
        Ok(Files { dir: dir.into(), segment })
    }

    fn commit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.segment.append(bytes)
    }
}

struct Committer {
    files: Files,
    durable: watch::Sender<u64>,
    failing: watch::Sender<bool>,
}

impl Committer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(1 << 20);
        let mut last_number = *self.durable.borrow();
        while let Some(command) = receiver.blocking_recv() {
            let mut next = Some(command);
            let lingering_until = std::time::Instant::now() + LINGER;
            // Group commit: everything that arrived while the last commit ran,
            // and for up to `LINGER` more while records keep trickling in.
            while let Some(command) = next.take().or_else(|| receive_within(&mut receiver, lingering_until)) {
                match command {
                    Command::Framed { last, frames } => {
                        batch.extend_from_slice(&frames);
                        last_number = last;
                        if batch.len() >= 4 << 20 {
                            break;
                        }
                    }
                    Command::Roll { first } => {
                        self.commit_with_retries(&mut batch, last_number);
                        self.roll(first);
                    }
                    Command::Forget { below } => self.forget(below),
                }
            }
            self.commit_with_retries(&mut batch, last_number);
        }
        self.commit_with_retries(&mut batch, last_number);
    }

    /// Commits `batch` (retrying until it is on disk) and publishes `last_number` as durable.
    fn commit_with_retries(&mut self, batch: &mut Vec<u8>, last_number: u64) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        while let Err(error) = self.files.commit(batch) {
            if failures == 0 || failures.is_power_of_two() {
                error!(
                    file = %self.files.segment.path().display(),
                    error = %error,
                    failures = failures + 1,
                    "Cannot write the journal: messages are no longer acknowledged (the broker keeps them) until it can."
                );
            }
            failures += 1;
            self.failing.send_replace(true);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if failures > 0 {
            info!(file = %self.files.segment.path().display(), failures, "The journal is written again; acknowledgements resume.");
            self.failing.send_replace(false);
        }
        batch.clear();
        self.durable.send_replace(last_number);
    }

    fn roll(&mut self, first: u64) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match Files::create(&self.files.dir, first) {
                Ok(files) => {
                    self.files = files;
                    self.failing.send_replace(false);
                    return;
                }
                Err(error) => {
                    error!(error = %error, "Cannot start a journal segment; retrying (nothing more is acknowledged meanwhile).");
                    self.failing.send_replace(true);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn forget(&mut self, below: u64) {
        let Ok(found) = segments(&self.files.dir) else { return };
        // A segment holds the records from its first up to the next one's first.
        for pair in found.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= below && path != self.files.segment.path() {
                if let Err(error) = std::fs::remove_file(path) {
                    warn!(file = %path.display(), error = %error, "Cannot remove a journal segment a snapshot covers.");
                }
            }
        }
    }
}

/// Files that fail as failing disks do, for the tests of the journal and the spool.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs::{File, OpenOptions};
    use std::io::{Seek, SeekFrom, Write};
    use std::path::Path;

    use super::SegmentFile;

    /// A segment whose next writes stop halfway through and fail, and whose
    /// next cuts fail without cutting anything, as on a failing disk.
    pub(crate) struct TornWrites {
        file: File,
        writes_failing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        cuts_failing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    /// Takes one from `counter` if it is above zero.
    fn take_one(counter: &std::sync::atomic::AtomicUsize) -> bool {
        counter
            .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    impl Write for TornWrites {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if take_one(&self.writes_failing) {
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            self.file.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    impl SegmentFile for TornWrites {
        fn sync_data(&mut self) -> std::io::Result<()> {
            self.file.sync_data()
        }

        fn cut_to(&mut self, length: u64) -> std::io::Result<()> {
            if take_one(&self.cuts_failing) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            self.file.cut_to(length)
        }
    }

    /// Opens the segment at `path` as the committer does (not in append
    /// mode: writes land where the file's position is), behind [`TornWrites`].
    pub(crate) fn torn_writes(path: &Path, writes_failing: usize, cuts_failing: usize) -> TornWrites {
        let mut file = OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        TornWrites {
            file,
            writes_failing: std::sync::Arc::new(writes_failing.into()),
            cuts_failing: std::sync::Arc::new(cuts_failing.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::torn_writes;
    use super::*;

    fn append_all(dir: &Path, first: u64, records: &[&[u8]]) {
        let mut files = Files::create(dir, first).unwrap();
        let mut batch = Vec::new();
        for (index, record) in records.iter().enumerate() {
            frame(&mut batch, first + index as u64, record);
        }
        files.commit(&batch).unwrap();
    }

    fn read_all(dir: &Path, after: u64) -> (Vec<(u64, Vec<u8>)>, ReadSummary) {
        let mut seen = Vec::new();
        let summary = read(dir, after, |number, record| seen.push((number, record.to_vec()))).unwrap();
        (seen, summary)
    }

    #[test]
    fn records_read_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 1, &[b"a", b"b"]);
        append_all(dir.path(), 3, &[b"c"]);
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]);
        assert_eq!(summary, ReadSummary { last: 3, applied: 3, bytes_discarded: 0 });
        let (seen, _) = read_all(dir.path(), 2);
        assert_eq!(seen, vec![(3, b"c".to_vec())], "records a snapshot covers are skipped");
    }

    #[test]
    fn a_torn_final_record_is_cut_off_and_the_journal_goes_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 1, &[b"first", b"second"]);
        let path = dir.path().join(segment_name(1));
        let length = std::fs::metadata(&path).unwrap().len();
        // The crash came in the middle of the second frame.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(length - 3).unwrap();
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"first".to_vec())]);
        assert_eq!(summary.bytes_discarded, (FRAME_HEADER_BYTES + 6 - 3) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (HEADER_BYTES + FRAME_HEADER_BYTES + 5) as u64);
        // Reading again finds a clean journal.
        assert_eq!(read_all(dir.path(), 0).1.bytes_discarded, 0);
    }

    #[test]
    fn a_checksum_mismatch_ends_the_journal_and_drops_the_segments_after_it() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 1, &[b"one", b"two", b"three"]);
        append_all(dir.path(), 4, &[b"four"]);
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a bit inside the second record.
        let second = HEADER_BYTES + FRAME_HEADER_BYTES + 3 + FRAME_HEADER_BYTES;
        bytes[second] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"one".to_vec())]);
        assert_eq!(summary.last, 1);
        assert!(!dir.path().join(segment_name(4)).exists(), "records after a hole can never be applied in order");
    }

    #[test]
    fn a_segment_torn_while_it_was_created_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 1, &[b"one"]);
        std::fs::write(dir.path().join(segment_name(2)), &MAGIC[..5]).unwrap();
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!((seen.len(), summary.last), (1, 1));
    }

    #[test]
    fn missing_records_after_a_snapshot_are_an_error_not_a_silent_gap() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 5, &[b"five"]);
        let error = read(dir.path(), 2, |_, _| {}).unwrap_err();
        assert!(matches!(error, StorageError::Gap { after: 2, found: 5, .. }), "{error}");
    }

    #[test]
    fn a_newer_journal_format_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        append_all(dir.path(), 1, &[b"one"]);
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 2;
        std::fs::write(&path, &bytes).unwrap();
        let error = read(dir.path(), 0, |_, _| {}).unwrap_err();
        assert!(error.to_string().contains("format version 2"), "{error}");
    }

    /// A segment on a disk with `room` bytes left: a write beyond it puts
    /// what fits in the file and fails with "no space left on device".
    struct FullDisk {
        file: File,
        room: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for FullDisk {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let room = self.room.load(std::sync::atomic::Ordering::SeqCst);
            if room == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let written = self.file.write(&bytes[..bytes.len().min(room)])?;
            self.room.fetch_sub(written, std::sync::atomic::Ordering::SeqCst);
            Ok(written)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    impl SegmentFile for FullDisk {
        fn sync_data(&mut self) -> std::io::Result<()> {
            self.file.sync_data()
        }

        fn cut_to(&mut self, length: u64) -> std::io::Result<()> {
            self.file.cut_to(length)
        }
    }

    #[test]
    fn a_full_disk_stops_the_durable_number_and_leaves_no_partial_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::create(dir.path(), 1).unwrap();
        let room = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(FRAME_HEADER_BYTES + 4 + 7));
        let file = OpenOptions::new().append(true).open(dir.path().join(segment_name(1))).unwrap();
        files.segment.file = Box::new(FullDisk { file, room: room.clone() });
        let (durable_sender, durable) = watch::channel(0);
        let (failing_sender, failing) = watch::channel(false);
        let mut committer = Committer { files, durable: durable_sender, failing: failing_sender };
        let mut batch = Vec::new();
        frame(&mut batch, 1, b"kept");
        committer.commit_with_retries(&mut batch, 1);
        assert_eq!(*durable.borrow(), 1);

        // The next group does not fit: the committer keeps retrying (on its
        // own thread), says it is failing, and publishes nothing as durable.
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut batch = Vec::new();
            frame(&mut batch, 2, b"waits for room");
            committer.commit_with_retries(&mut batch, 2);
            sender.send(()).unwrap();
            committer
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !*failing.borrow() {
            assert!(std::time::Instant::now() < deadline, "the failure was never reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*durable.borrow(), 1, "nothing more is durable, so nothing more is acknowledged");
        let on_disk = std::fs::metadata(dir.path().join(segment_name(1))).unwrap().len();
        assert_eq!(on_disk, (HEADER_BYTES + FRAME_HEADER_BYTES + 4) as u64, "the partial frame was cut off");

        // Space comes back: the group is written whole, and reads back clean.
        room.store(1 << 20, std::sync::atomic::Ordering::SeqCst);
        receiver.recv_timeout(Duration::from_secs(10)).expect("the retry succeeds once there is room");
        let committer = thread.join().unwrap();
        assert_eq!(*durable.borrow(), 2);
        assert!(!*failing.borrow());
        drop(committer);
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"kept".to_vec()), (2, b"waits for room".to_vec())]);
        assert_eq!(summary.bytes_discarded, 0);
    }

    #[test]
    fn a_failed_cut_back_holds_the_journal_until_the_torn_frame_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::create(dir.path(), 1).unwrap();
        let mut batch = Vec::new();
        frame(&mut batch, 1, b"kept");
        files.commit(&batch).unwrap();
        // The next write stops halfway, and the two cuts after it fail.
        files.segment.file = Box::new(torn_writes(&dir.path().join(segment_name(1)), 1, 2));
        let (durable_sender, durable) = watch::channel(1);
        let (failing_sender, _failing) = watch::channel(false);
        let mut committer = Committer { files, durable: durable_sender, failing: failing_sender };
        let mut batch = Vec::new();
        frame(&mut batch, 2, b"acknowledged once durable");
        committer.commit_with_retries(&mut batch, 2);
        assert_eq!(*durable.borrow(), 2);
        drop(committer);
        // Record 2 was published as durable, so it must read back: nothing
        // was written after the half frame the failed write left.
        let (seen, summary) = read_all(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"kept".to_vec()), (2, b"acknowledged once durable".to_vec())]);
        assert_eq!(summary.bytes_discarded, 0);
    }

    /// One record as the daemon hands it over.
    fn framed(number: u64, record: &[u8]) -> Command {
        let mut frames = Vec::new();
        frame(&mut frames, number, record);
        Command::Framed { last: number, frames }
    }

    #[tokio::test]
    async fn the_thread_publishes_the_durable_number_after_each_group_and_forgets_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = JournalHandle::start(dir.path(), 1).unwrap();
        for number in 1..=3 {
            assert!(journal.send(framed(number, &[number as u8])).await);
        }
        while journal.durable() < 3 {
            journal.durable_changed().await;
        }
        assert!(journal.send(Command::Roll { first: 4 }).await);
        assert!(journal.send(framed(4, &[4])).await);
        assert!(journal.send(Command::Forget { below: 4 }).await);
        assert_eq!(journal.close().await, 4);
        assert!(!dir.path().join(segment_name(1)).exists());
        let (seen, _) = read_all(dir.path(), 3);
        assert_eq!(seen, vec![(4, vec![4])]);
    }

    proptest::proptest! {
        /// Whatever a crash or a bad disk did to the end of the journal, reading
        /// it gives a prefix of what was written, in order, and never panics.
        #[test]
        fn a_damaged_journal_reads_back_as_a_prefix_of_what_was_written(
            records in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..30),
            cut in 0usize..2000,
            flip in proptest::option::of((0usize..2000, 0u8..8)),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            append_all(dir.path(), 1, &slices);
            let path = dir.path().join(segment_name(1));
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some((at, bit)) = flip {
                if at < bytes.len() && at >= HEADER_BYTES {
                    bytes[at] ^= 1 << bit;
                }
            }
            let keep = bytes.len().saturating_sub(cut % (bytes.len() - HEADER_BYTES + 1));
            bytes.truncate(keep.max(HEADER_BYTES));
            std::fs::write(&path, &bytes).unwrap();
            let (seen, summary) = read_all(dir.path(), 0);
            proptest::prop_assert!(seen.len() <= records.len());
            for (index, (number, record)) in seen.iter().enumerate() {
                proptest::prop_assert_eq!(*number, index as u64 + 1);
                proptest::prop_assert_eq!(record, &records[index]);
            }
            proptest::prop_assert_eq!(summary.last, seen.len() as u64);
            // What was cut stays cut: a second read finds a clean journal with the same records.
            let (again, summary) = read_all(dir.path(), 0);
            proptest::prop_assert_eq!(again, seen);
            proptest::prop_assert_eq!(summary.bytes_discarded, 0);
        }
    }
}
