//! The daemon's durability: every input given to the pipeline is journaled,
//! a message is acknowledged only once its record is on disk, the tracker's
//! state is snapshotted in the background, and on start the latest snapshot
//! plus the journal after it rebuild the state the daemon had.
//!
//! Invariants (checked by `tests/durability.rs` and this module's tests):
//! - **Ack after durable.** A message's acknowledgement waits until the
//!   journal thread reports its record synced; acknowledgements leave in
//!   the order the messages arrived (MQTT requires it), including those of
//!   messages that are not events (our own alerts).
//! - **Journal order is application order.** A record is appended right
//!   after the pipeline applied it, from the one loop that owns the pipeline,
//!   with the times it was applied at; applying the records again in order
//!   rebuilds the same state and writes the same points.
//! - **A snapshot is committed only when its points are settled.** The
//!   snapshot after record n is put in place (and the journal up to n
//!   removed) only once the journal holds n and every writer has written or
//!   refused every point handed to it up to then; points still in flight at
//!   a crash are written again by replaying the journal after the snapshot.
//! - **Downtime is not office time.** Recovery ends with a `resume` record:
//!   office clocks restart from the newest event time they had, so the
//!   backlog the broker kept is not late and no deadline fires for time
//!   nobody observed. Deadlines that fell in the downtime fire once the
//!   backlog has moved the clocks past them, as they would have live.
//! - **A redelivery of a journaled message is not taken twice**, after a
//!   restart of the daemon or on any reconnection whose session is present
//!   (a broker restart, a network failure). The broker redelivers (DUP set)
//!   what it sent but had not seen acknowledged, and acknowledgements lag
//!   behind intake (they wait for the journal's sync; those rumqttc had
//!   queued when the connection dropped are discarded by it). Those messages
//!   are in the journal (or the snapshot): taken again, hours or days old in
//!   event time, they would be late events, or reopen tickets closed past
//!   the dedup horizon. So at each connection whose session is present
//!   ([`Durability::connected`]) the hashes of the last 65,536 messages
//!   journaled are counted (after a restart, those of the journal after the
//!   snapshot and of the last messages before it, kept in the snapshot), and
//!   a redelivered message matching one is acknowledged and counted a
//!   redelivery (and a duplicate), until the first message that is not a
//!   redelivery. A snapshot is committed only once every acknowledgement up
//!   to it has been handed to the MQTT client, whose queue is smaller than
//!   the hashes kept; the broker's own window of unacknowledged messages
//!   (`max_inflight_messages`, 1000 as shipped) is far smaller too.
//! - **A record is bounded by the payload limit.** An oversized payload is
//!   rejected on its length alone, so its record keeps only its first
//!   `mqtt.max_payload_bytes` + 1 bytes: replayed, it is rejected the same
//!   way, and the journal never holds 256 KiB for one message. Its hash is
//!   taken over the same bytes, live and in recovery alike.
//! - **Recovery publishes no alerts.** Alerts of replayed records were
//!   published before the crash; the points they go with are written again
//!   (idempotent), alerts are not (each carries a stable id regardless).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use rumqttc::Publish;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::mqtt::{office_from_topic, Acker};
use crate::pipeline::Pipeline;
use crate::sink::SinkHandle;
use crate::storage::journal::{self, Command, JournalHandle};
use crate::storage::record::Record;
use crate::storage::{snapshot, Session, StateDir, StorageError};
use crate::time::Millis;
use crate::tracker::state::{self, StateError};
use crate::tracker::{Fnv, Tracker};

/// What recovery found and did, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot's record number (0: none).
    pub snapshot: u64,
    /// Journal records applied after it.
    pub replayed: u64,
    /// Bytes cut off a torn or corrupt journal end.
    pub bytes_discarded: u64,
    pub open_tickets: usize,
}

/// The journal, the acknowledgements waiting for it and the checkpoint in progress.
pub struct Durability {
    dir: StateDir,
    journal: JournalHandle,
    /// The number of the last record appended.
    last: u64,
    /// Records appended since the last [`Durability::hand_over`], framed,
    /// the last of them numbered `last`: the journal thread gets them in one
    /// command per run of messages rather than one each (a channel send, an
    /// allocation and often a wake-up of that thread per record).
    framed: Vec<u8>,
    /// Where a record is encoded before it is framed (kept for its capacity).
    scratch: Vec<u8>,
    /// Acknowledgements waiting for their record (or the one before them) to be durable.
    acks: VecDeque<(u64, Publish)>,
    checkpoint: Option<Checkpoint>,
    /// The last committed snapshot's record number.
    committed: u64,
    /// When it was committed (the file's time for one found at start).
    committed_at: Option<std::time::SystemTime>,
    /// Hashes of the last messages journaled, oldest first (kept in snapshots).
    recent: VecDeque<u64>,
    /// Journal bytes handed over since the last checkpoint began: a
    /// checkpoint (and with it a new segment) is due by size as well as by
    /// time, so that a flood cannot grow one segment without bound.
    handed_since_roll: u64,
    segment_bytes: u64,
    /// From a connection whose session is present until the first message
    /// that is not a redelivery: hashes of journaled messages, with how many
    /// copies are still expected.
    redeliveries: Option<HashMap<u64, u32>>,
    /// After a recovery, until the first message journaled: the hashes of
    /// every message the journal and snapshot hold (more than `recent`
    /// keeps), for the first connections' redeliveries.
    recovered: Option<HashMap<u64, u32>>,
    /// `mqtt.max_payload_bytes`: a record keeps at most one byte more.
    max_payload_bytes: usize,
}

/// Messages whose hashes are kept for recognising redeliveries: well above
/// the MQTT client's request queue (16,384), which is all that may still be
/// unacknowledged before a committed snapshot.
const RECENT_MESSAGES: usize = 65_536;

/// The room kept for framed records between two hand-overs: a run of
/// ordinary messages fits; a run of large ones grows it.
const HAND_OVER_BYTES: usize = 64 * 1024;

/// The payload a record keeps: all of it, or for an oversized one (rejected
/// on its length alone) its first `max_payload_bytes` + 1 bytes, which a
/// replay rejects the same way.
fn journaled_payload(payload: &[u8], max_payload_bytes: usize) -> &[u8] {
    &payload[..payload.len().min(max_payload_bytes.saturating_add(1))]
}

/// How many of each hash `hashes` holds.
fn count_copies<'h>(hashes: impl IntoIterator<Item = &'h u64>) -> HashMap<u64, u32> {
    let hashes = hashes.into_iter();
    let mut copies: HashMap<u64, u32> = HashMap::with_capacity(hashes.size_hint().0);
    for hash in hashes {
        *copies.entry(*hash).or_default() += 1;
    }
    copies
}

/// A message's identity for recognising its redelivery: topic and
/// (journaled) payload. Stored in snapshots, so it must not change between
/// builds: the tracker's FNV hash, not std's, whose algorithm may change
/// with the compiler.
fn message_hash(topic: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = Fnv::new();
    hasher.write(&(topic.len() as u64).to_le_bytes());
    hasher.write(topic);
    hasher.write(payload);
    hasher.finish()
}

/// A snapshot's body: the recent message hashes, then the tracker's state.
fn snapshot_body(recent: &[u64], state: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + recent.len() * 8 + state.len());
    body.extend_from_slice(&u32::try_from(recent.len()).unwrap_or(u32::MAX).to_le_bytes());
    for hash in recent {
        body.extend_from_slice(&hash.to_le_bytes());
    }
    body.extend_from_slice(state);
    body
}

/// The recent message hashes and the state bytes of a snapshot's body.
fn split_snapshot_body(body: &[u8]) -> Option<(Vec<u64>, &[u8])> {
    let (count, rest) = body.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let hashes_bytes = rest.get(..count.checked_mul(8)?)?;
    let hashes =
        hashes_bytes.chunks_exact(8).filter_map(|chunk| Some(u64::from_le_bytes(chunk.try_into().ok()?))).collect();
    Some((hashes, &rest[count * 8..]))
}

/// A snapshot being written or waiting for its points to be settled.
struct Checkpoint {
    number: u64,
    /// Points each writer had been handed when the snapshot was taken.
    handed: Vec<u64>,
    started: Instant,
    writing: Option<tokio::task::JoinHandle<Result<PathBuf, StorageError>>>,
    written: Option<PathBuf>,
}

impl Durability {
    /// Opens the state folder (taking its lock), rebuilds `pipeline`'s state
    /// from the snapshot and the journal, and starts the journal thread.
    /// `now` is the wall time office clocks resume at.
    pub async fn recover(
        config: &Config,
        pipeline: &mut Pipeline,
        now: Millis,
    ) -> Result<(Durability, Recovery), StorageError> {
        let session = Session::of(config);
        let dir = StateDir::open(&config.storage.data_dir, &session)?;
        let mut recovery = Recovery::default();
        snapshot::remove_pending(dir.path())?;
        let mut recent = VecDeque::new();
        let mut committed_at = None;
        if let Some((number, body)) = snapshot::load_newest(dir.path())? {
            let path = dir.path().join(snapshot::snapshot_name(number));
            let (hashes, bytes) = split_snapshot_body(&body)
                .ok_or_else(|| StorageError::Corrupt { path: path.clone(), detail: "cut-off message hashes".into() })?;
            recent.extend(hashes);
            let tracker = state::decode(pipeline.tracker().settings().clone(), bytes).map_err(|error| match error {
                StateError::NewerVersion { found, supported } => StorageError::Version { path, found, supported },
                StateError::OlderVersion { found, supported } => StorageError::OldVersion { path, found, supported },
                error => StorageError::Corrupt { path, detail: error.to_string() },
            })?;
            pipeline.replace_tracker(tracker);
            recovery.snapshot = number;
            committed_at = std::fs::metadata(dir.path().join(snapshot::snapshot_name(number)))
                .and_then(|metadata| metadata.modified())
                .ok();
        }
        let topics = config.mqtt.topics.clone();
        let max_payload_bytes = config.mqtt.max_payload_bytes;
        let mut malformed = 0u64;
        let summary = journal::read(dir.path(), recovery.snapshot, |_, bytes| match Record::decode(bytes) {
            Ok(record) => {
                if let Record::Message { topic, payload, .. } = &record {
                    recent.push_back(message_hash(topic.as_bytes(), journaled_payload(payload, max_payload_bytes)));
                }
                apply(pipeline, &topics, &record);
            }
            Err(_) => malformed += 1,
        })?;
        let recovered = count_copies(&recent);
        while recent.len() > RECENT_MESSAGES {
            recent.pop_front();
        }
        if malformed > 0 {
            error!(records = malformed, "Journal records this version cannot read were skipped.");
        }
        recovery.replayed = summary.applied;
        recovery.bytes_discarded = summary.bytes_discarded;
        // Alerts of replayed records went out before the crash.
        drop(pipeline.take_alerts());
        drop(pipeline.take_refused());

        let journal = JournalHandle::start(dir.path(), summary.last + 1)?;
        let mut durability = Durability {
            dir,
            journal,
            last: summary.last,
            framed: Vec::with_capacity(HAND_OVER_BYTES),
            scratch: Vec::with_capacity(256),
            acks: VecDeque::new(),
            checkpoint: None,
            committed: recovery.snapshot,
            committed_at,
            recent,
            handed_since_roll: 0,
            segment_bytes: config.storage.journal_segment_bytes,
            redeliveries: None,
            recovered: (!recovered.is_empty()).then_some(recovered),
            max_payload_bytes,
        };
        if summary.last > 0 {
            let resume = Record::Resume { now };
            apply(pipeline, &topics, &resume);
            durability.append(&resume);
            durability.hand_over().await;
        }
        recovery.open_tickets = pipeline.tracker().open_segments();
        Ok((durability, recovery))
    }

    /// Journals a message the pipeline has just taken in; its acknowledgement
    /// waits for the record to be durable.
    pub fn message(&mut self, publish: Publish, tracker_now: Millis, wall_now: Millis) {
        if self.recent.len() == RECENT_MESSAGES {
            self.recent.pop_front();
        }
        let payload = journaled_payload(&publish.payload, self.max_payload_bytes);
        self.recent.push_back(message_hash(publish.topic.as_ref(), payload));
        // From now on `recent` is what was journaled last.
        self.recovered = None;
        let topic = String::from_utf8_lossy(publish.topic.as_ref());
        let record = Record::Message { topic, payload: payload.into(), tracker_now, wall_now };
        self.append(&record);
        self.acks.push_back((self.last, publish));
    }

    /// A connection to the broker, before its first message: with the
    /// session present, its first messages may be redeliveries of messages
    /// journaled already (see the module's invariants); without it, nothing
    /// is redelivered.
    pub fn connected(&mut self, session_present: bool) {
        self.redeliveries = match (session_present, &self.recovered) {
            (false, _) => None,
            (true, Some(recovered)) => Some(recovered.clone()),
            (true, None) => Some(count_copies(&self.recent)),
        };
    }

    /// Whether `publish` is the broker's redelivery of a message already
    /// journaled (see the module's invariants); the caller acknowledges it
    /// in order and counts it a redelivery.
    pub fn is_redelivery(&mut self, publish: &Publish) -> bool {
        let Some(redeliveries) = &mut self.redeliveries else { return false };
        if !publish.dup {
            // Redeliveries come first after a connection: they are over.
            self.redeliveries = None;
            return false;
        }
        let payload = journaled_payload(&publish.payload, self.max_payload_bytes);
        match redeliveries.get_mut(&message_hash(publish.topic.as_ref(), payload)) {
            Some(copies) if *copies > 0 => {
                *copies -= 1;
                true
            }
            _ => false,
        }
    }

    /// A message that is not an event (our own alert): acknowledged in order,
    /// once the records before it are durable.
    pub fn ack_in_order(&mut self, publish: Publish) {
        self.acks.push_back((self.last, publish));
    }

    /// Journals `Pipeline::advance(tracker_now)`, just applied.
    pub fn advance(&mut self, tracker_now: Millis) {
        self.append(&Record::Advance { tracker_now });
    }

    /// Appends `record` to the records the next [`Durability::hand_over`]
    /// gives the journal thread. Never waits: the daemon loop hands over
    /// after every input (at most `MESSAGE_BATCH` messages), which bounds
    /// what is kept here.
    fn append(&mut self, record: &Record<'_>) {
        self.scratch.clear();
        record.encode(&mut self.scratch);
        self.last += 1;
        journal::frame(&mut self.framed, self.last, &self.scratch);
    }

    /// Gives the records appended so far to the journal thread. The daemon
    /// loop calls it after every input it handled: until then the records
    /// are only in memory and their acknowledgements wait.
    pub async fn hand_over(&mut self) {
        if self.framed.is_empty() {
            return;
        }
        let frames = std::mem::replace(&mut self.framed, Vec::with_capacity(HAND_OVER_BYTES));
        self.handed_since_roll += frames.len() as u64;
        if !self.journal.send(Command::Framed { last: self.last, frames }).await {
            error!("The journal thread has stopped; nothing more is acknowledged.");
        }
    }

    /// Hands the acknowledgements whose records are durable to `acker`.
    pub fn release_acks(&mut self, acker: &mut Acker) {
        let durable = self.journal.durable();
        while let Some((number, _)) = self.acks.front() {
            if *number > durable {
                break;
            }
            if let Some((_, publish)) = self.acks.pop_front() {
                acker.ack(&publish);
            }
        }
    }

    /// Resolves when more records are durable.
    pub async fn durable_changed(&mut self) {
        self.journal.durable_changed().await;
    }

    /// Acknowledgements waiting for the journal.
    pub fn acks_waiting(&self) -> usize {
        self.acks.len()
    }

    /// The state folder (`data_dir/state`), which belongs to one broker session.
    pub fn state_path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether the journal cannot be written (a full disk).
    pub fn failing(&self) -> bool {
        self.journal.failing()
    }

    /// The bytes of the journal's segment files on disk now (a directory
    /// listing: called once a second for the operations endpoint, not per
    /// message).
    pub fn journal_bytes(&self) -> u64 {
        let Ok(segments) = journal::segments(self.dir.path()) else { return 0 };
        segments.iter().filter_map(|(_, path)| std::fs::metadata(path).ok()).map(|metadata| metadata.len()).sum()
    }

    /// When the newest snapshot in place was committed; `None` before the first.
    pub fn last_snapshot_at(&self) -> Option<std::time::SystemTime> {
        self.committed_at
    }

    /// Whether a snapshot is due: none in progress and records since the last.
    pub fn checkpoint_wanted(&self) -> bool {
        self.checkpoint.is_none() && self.last != self.committed
    }

    /// Whether the journal grew past `storage.journal_segment_bytes` since
    /// the last checkpoint began, and a checkpoint can begin now: a segment
    /// stays about this size however fast messages come, and recovery reads
    /// at most about this much.
    pub fn journal_outgrown(&self) -> bool {
        self.handed_since_roll >= self.segment_bytes && self.checkpoint_wanted()
    }

    /// Starts a snapshot of `tracker`, the pipeline's state after the last
    /// record. The caller has handed every pending point to `sinks`.
    pub async fn begin_checkpoint(&mut self, tracker: Tracker, sinks: &[SinkHandle]) {
        let number = self.last;
        // The records the snapshot covers go to the segment it rolls off.
        self.hand_over().await;
        self.handed_since_roll = 0;
        if !self.journal.send(Command::Roll { first: number + 1 }).await {
            return;
        }
        let dir = self.dir.path().to_path_buf();
        let recent: Vec<u64> = self.recent.iter().copied().collect();
        let writing = tokio::task::spawn_blocking(move || {
            snapshot::write_pending(&dir, number, &snapshot_body(&recent, &state::encode(&tracker)))
        });
        self.checkpoint = Some(Checkpoint {
            number,
            handed: sinks.iter().map(|sink| sink.progress().points_handed).collect(),
            started: Instant::now(),
            writing: Some(writing),
            written: None,
        });
    }

    /// Commits the snapshot in progress once it is written, the journal
    /// holds its records, and the writers have settled its points.
    pub async fn poll_checkpoint(&mut self, sinks: &[SinkHandle], acker: &Acker) {
        let Some(checkpoint) = &mut self.checkpoint else { return };
        if let Some(writing) = checkpoint.writing.take_if(|writing| writing.is_finished()) {
            match writing.await {
                Ok(Ok(path)) => checkpoint.written = Some(path),
                Ok(Err(error)) => {
                    warn!(error = %error, "Cannot write a snapshot; the journal is kept until the next one.");
                    self.checkpoint = None;
                    return;
                }
                Err(error) => {
                    error!(error = %error, "The snapshot task failed; the journal is kept until the next one.");
                    snapshot::discard_pending(&snapshot::pending_path(self.dir.path(), checkpoint.number));
                    self.checkpoint = None;
                    return;
                }
            }
        }
        let Some(written) = &checkpoint.written else { return };
        let settled =
            sinks.iter().zip(&checkpoint.handed).all(|(sink, handed)| sink.progress().points_settled >= *handed);
        let acks_handed =
            acker.waiting() == 0 && self.acks.front().is_none_or(|(number, _)| *number > checkpoint.number);
        if !settled || !acks_handed || self.journal.durable() < checkpoint.number {
            return;
        }
        let number = checkpoint.number;
        match snapshot::commit(self.dir.path(), written, number) {
            Ok(()) => {
                info!(
                    record = number,
                    took_ms = checkpoint.started.elapsed().as_millis() as u64,
                    "Snapshot taken; the journal before it is removed."
                );
                self.committed = number;
                self.committed_at = Some(std::time::SystemTime::now());
                self.journal.send(Command::Forget { below: number + 1 }).await;
            }
            Err(error) => {
                warn!(error = %error, "Cannot put a snapshot in place; the journal is kept until the next one.")
            }
        }
        self.checkpoint = None;
    }

    /// Commits every record appended and stops the journal thread; the
    /// acknowledgements that became durable go to `acker`.
    pub async fn close(mut self, acker: &mut Acker) {
        self.hand_over().await;
        let durable = self.journal.close().await;
        while let Some((number, publish)) = self.acks.pop_front() {
            if number <= durable {
                acker.ack(&publish);
            }
        }
        // A snapshot not committed by now never will be: its file goes.
        if let Some(Checkpoint { number, writing, .. }) = self.checkpoint.take() {
            if let Some(writing) = writing {
                let _ = writing.await;
            }
            snapshot::discard_pending(&snapshot::pending_path(self.dir.path(), number));
        }
    }
}

/// Gives one journaled input to the pipeline: the single place that maps a
/// record onto the pipeline, for the live loop's inputs and recovery alike.
fn apply(pipeline: &mut Pipeline, topics: &[String], record: &Record<'_>) {
    match record {
        Record::Message { topic, payload, tracker_now, wall_now } => {
            let _ = pipeline.handle(office_from_topic(topics, topic), payload, *tracker_now, *wall_now);
        }
        Record::Advance { tracker_now } => pipeline.advance(*tracker_now),
        Record::Drain { tracker_now } => pipeline.drain(*tracker_now),
        Record::Resume { now } => pipeline.resume(*now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use rumqttc::QoS;

    use crate::tracker::Mode;

    const START: i64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

    /// A morning at three offices: every ticket issued, called, started and
    /// finished, some messages twice, neighbours swapped within seconds.
    /// `(topic, payload, ts)` in publishing order.
    fn morning() -> Vec<(String, String, i64)> {
        let mut messages = Vec::new();
        for office in ["o1", "o2", "o3"] {
            for number in 0..60i64 {
                let issued = START + number * 45_000 + office.len() as i64 * 1_000;
                let called = issued + 120_000 + (number % 7) * 60_000;
                let steps = [
                    ("issued", issued, r#","service":"ktp""#.to_string()),
                    ("called", called, r#","counter":"c1""#.to_string()),
                    ("started", called + 30_000, r#","counter":"c1""#.to_string()),
                    ("finished", called + 330_000 + (number % 5) * 120_000, r#","counter":"c1""#.to_string()),
                ];
                for (kind, ts, extra) in steps {
                    let payload = format!(
                        r#"{{"type":"{kind}","ts":{ts},"ticket":"A{number:03}","id":"{office}-{number}-{kind}"{extra}}}"#
                    );
                    messages.push((format!("queue/{office}/events"), payload, ts));
                }
            }
        }
        messages.sort_by_key(|(_, _, ts)| *ts);
        for index in (5..messages.len()).step_by(17) {
            if messages[index].2 - messages[index - 1].2 < 5_000 {
                messages.swap(index, index - 1);
            }
        }
        let duplicates: Vec<_> = messages.iter().step_by(23).cloned().collect();
        for (offset, duplicate) in duplicates.into_iter().enumerate() {
            let at = (offset * 23 + 40).min(messages.len());
            messages.insert(at, duplicate);
        }
        messages
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut config = Config::default();
        config.tracking.reorder_window = std::time::Duration::from_secs(30);
        config.storage.data_dir = dir.to_path_buf();
        config
    }

    /// Arrival wall time of a message: just after its timestamp.
    fn arrival(ts: i64) -> Millis {
        Millis(ts + 200)
    }

    fn lines(pipeline: &mut Pipeline, into: &mut BTreeSet<String>) {
        if let Some((text, _)) = pipeline.take_lines() {
            into.extend(text.lines().map(str::to_owned));
        }
    }

    fn feed(pipeline: &mut Pipeline, topics: &[String], (topic, payload, ts): &(String, String, i64)) {
        let _ = pipeline.handle(office_from_topic(topics, topic), payload.as_bytes(), arrival(*ts), arrival(*ts));
    }

    async fn wait_until_durable(durability: &mut Durability) {
        durability.hand_over().await;
        while durability.journal.durable() < durability.last {
            durability.durable_changed().await;
        }
    }

    /// The uninterrupted run: every point, and the wall time it ended at.
    fn uninterrupted(config: &Config, messages: &[(String, String, i64)]) -> BTreeSet<String> {
        let mut pipeline = Pipeline::new(config, Mode::Live);
        let mut points = BTreeSet::new();
        for (index, message) in messages.iter().enumerate() {
            feed(&mut pipeline, &config.mqtt.topics, message);
            if index % 50 == 49 {
                pipeline.advance(arrival(message.2));
            }
        }
        pipeline.drain(arrival(messages[messages.len() - 1].2 + 3_600_000));
        lines(&mut pipeline, &mut points);
        points
    }

    #[tokio::test]
    async fn a_crash_with_a_torn_journal_end_after_a_snapshot_writes_what_an_uninterrupted_run_writes() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let messages = morning();
        let expected = uninterrupted(&config, &messages);
        assert!(expected.iter().filter(|line| line.starts_with("ticket,")).count() == 180, "{expected:#?}");

        let topics = config.mqtt.topics.clone();
        let mut points = BTreeSet::new();
        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let (mut durability, recovery) = Durability::recover(&config, &mut pipeline, Millis(START)).await.unwrap();
        assert_eq!(recovery, Recovery::default(), "a new folder holds nothing");
        // A client that is never connected: its request queue takes every acknowledgement.
        let (client, _never_polled) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 100_000);
        let mut acker = Acker::new(client);
        // The record number each message's record got.
        let mut records = Vec::new();
        let crash_at = messages.len() * 2 / 3;
        for (index, message) in messages.iter().enumerate().take(crash_at) {
            feed(&mut pipeline, &topics, message);
            let publish = Publish::new(message.0.as_str(), QoS::AtLeastOnce, message.1.as_bytes());
            durability.message(publish, arrival(message.2), arrival(message.2));
            records.push(durability.last);
            if index % 50 == 49 {
                pipeline.advance(arrival(message.2));
                durability.advance(arrival(message.2));
            }
            if index == crash_at / 2 {
                // A snapshot while events keep arriving: written on another
                // thread while the loop goes on, committed once its records are durable.
                lines(&mut pipeline, &mut points);
                durability.begin_checkpoint(pipeline.tracker().clone(), &[]).await;
            }
            durability.release_acks(&mut acker);
            if index > crash_at / 2 {
                durability.poll_checkpoint(&[], &acker).await;
            }
        }
        wait_until_durable(&mut durability).await;
        durability.release_acks(&mut acker);
        // The snapshot is written on a blocking thread, which a busy machine
        // may not have run yet: poll until it is committed (only a hang fails).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while durability.committed == 0 {
            durability.poll_checkpoint(&[], &acker).await;
            assert!(std::time::Instant::now() < deadline, "the snapshot was committed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        lines(&mut pipeline, &mut points);
        let last_now = arrival(messages[crash_at - 1].2);
        // The crash: the process is gone, its last frame half written.
        drop(pipeline);
        drop(durability);
        let state = dir.path().join("state");
        let (_, newest) = journal::segments(&state).unwrap().pop().unwrap();
        let length = std::fs::metadata(&newest).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(length - 5).unwrap();

        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let (mut durability, recovery) = Durability::recover(&config, &mut pipeline, last_now).await.unwrap();
        assert!(recovery.snapshot > 0 && recovery.replayed > 0 && recovery.bytes_discarded > 0, "{recovery:?}");
        durability.connected(true);
        // The broker redelivers (DUP) everything it had sent and not seen
        // acknowledged, here from well before the snapshot (acknowledgements
        // lagging far behind intake), then what it had not sent yet.
        let stale_from = crash_at / 4;
        let mut recognised = 0;
        for (index, message) in messages.iter().enumerate().skip(stale_from) {
            let mut publish = Publish::new(message.0.as_str(), QoS::AtLeastOnce, message.1.as_bytes());
            publish.dup = index < crash_at;
            if durability.is_redelivery(&publish) {
                recognised += 1;
                continue;
            }
            feed(&mut pipeline, &topics, message);
            durability.message(publish, arrival(message.2), arrival(message.2));
            if index % 50 == 49 {
                pipeline.advance(arrival(message.2));
                durability.advance(arrival(message.2));
            }
        }
        let kept = records.iter().filter(|number| **number <= recovery.snapshot + recovery.replayed).count();
        assert_eq!(
            recognised,
            kept - stale_from,
            "every redelivered message the journal or snapshot kept, and no other"
        );
        pipeline.drain(arrival(messages[messages.len() - 1].2 + 3_600_000));
        lines(&mut pipeline, &mut points);
        let missing: Vec<_> = expected.difference(&points).collect();
        let extra: Vec<_> = points.difference(&expected).collect();
        assert!(missing.is_empty() && extra.is_empty(), "missing {missing:#?}\nextra {extra:#?}");
    }

    #[tokio::test]
    async fn a_snapshot_not_committed_by_the_stop_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let topics = config.mqtt.topics.clone();
        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let (mut durability, _) = Durability::recover(&config, &mut pipeline, Millis(START)).await.unwrap();
        let (client, _never_polled) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 1_000);
        let mut acker = Acker::new(client);
        for message in morning().iter().take(100) {
            feed(&mut pipeline, &topics, message);
            let publish = Publish::new(message.0.as_str(), QoS::AtLeastOnce, message.1.as_bytes());
            durability.message(publish, arrival(message.2), arrival(message.2));
        }
        // Written, never committed: the daemon stops first.
        durability.begin_checkpoint(pipeline.tracker().clone(), &[]).await;
        durability.close(&mut acker).await;
        let left: Vec<String> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn on_every_connection_with_the_session_present_redeliveries_of_journaled_messages_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let (mut durability, _) = Durability::recover(&config, &mut pipeline, Millis(START)).await.unwrap();
        let messages = morning();
        let publish = |index: usize, dup: bool| {
            let mut publish = Publish::new(messages[index].0.as_str(), QoS::AtLeastOnce, messages[index].1.as_bytes());
            publish.dup = dup;
            publish
        };
        durability.connected(true);
        for index in 0..100 {
            assert!(!durability.is_redelivery(&publish(index, false)));
            durability.message(publish(index, false), Millis(START), Millis(START));
        }
        // The broker restarts (or the network fails) and redelivers the last 20 it sent.
        for _ in 0..2 {
            durability.connected(true);
            let recognised = (80..100).filter(|index| durability.is_redelivery(&publish(*index, true))).count();
            assert_eq!(recognised, 20, "every time the broker redelivers them");
        }
        // A message never journaled is not a redelivery, DUP or not; the first new one ends them.
        assert!(!durability.is_redelivery(&publish(150, true)));
        assert!(!durability.is_redelivery(&publish(100, false)));
        assert!(!durability.is_redelivery(&publish(99, true)), "after a new message, a copy is the tracker's to judge");
        // Without the session nothing is redelivered: copies are the tracker's to judge.
        durability.connected(false);
        assert!(!durability.is_redelivery(&publish(99, true)));
    }

    #[tokio::test]
    async fn an_oversized_payload_is_journaled_cut_to_one_byte_over_the_limit_and_replayed_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.mqtt.max_payload_bytes = 1024;
        let oversized = format!(r#"{{"type":"heartbeat","ts":1,"pad":"{}"}}"#, "x".repeat(200 * 1024));
        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let (mut durability, _) = Durability::recover(&config, &mut pipeline, Millis(START)).await.unwrap();
        let publish = Publish::new("queue/o1/events", QoS::AtLeastOnce, oversized.as_bytes());
        let rejected = pipeline.handle(
            office_from_topic(&config.mqtt.topics, "queue/o1/events"),
            oversized.as_bytes(),
            Millis(START),
            Millis(START),
        );
        assert_eq!(rejected.unwrap_err().reason, crate::event::RejectReason::Oversized);
        durability.message(publish.clone(), Millis(START), Millis(START));
        wait_until_durable(&mut durability).await;
        let journal_bytes = durability.journal_bytes();
        assert!(journal_bytes < 2 * 1024, "{journal_bytes} bytes journaled for a 200 KiB payload");
        let stats_before = pipeline.stats().clone();
        drop(durability);

        let mut recovered = Pipeline::new(&config, Mode::Live);
        let (mut durability, recovery) = Durability::recover(&config, &mut recovered, Millis(START)).await.unwrap();
        assert_eq!(recovery.replayed, 1);
        assert_eq!(recovered.stats().rejected, stats_before.rejected, "rejected as oversized again");
        // Its redelivery, whole, is still recognised.
        durability.connected(true);
        let mut redelivered = publish;
        redelivered.dup = true;
        assert!(durability.is_redelivery(&redelivered));
    }

    #[tokio::test]
    async fn a_second_daemon_on_the_same_state_folder_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut pipeline = Pipeline::new(&config, Mode::Live);
        let _first = Durability::recover(&config, &mut pipeline, Millis(START)).await.unwrap();
        let error =
            Durability::recover(&config, &mut Pipeline::new(&config, Mode::Live), Millis(START)).await.err().unwrap();
        assert!(matches!(error, StorageError::Locked { .. }), "{error}");
    }
}
