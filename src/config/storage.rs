//! `[storage]`: the state folder, the journal, the spool and the dead-letter file.

use std::time::Duration;

use super::reader::{at_least, Section, SECOND};

/// `[storage]`: where `run` keeps what it has acknowledged (see `crate::storage`).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// The state folder: lock file, journal, snapshots.
    pub data_dir: std::path::PathBuf,
    /// How often the tracker's state is snapshotted (and the journal cut behind it).
    pub checkpoint_interval: Duration,
    /// `false`: no journal, messages acknowledged once taken in (a crash loses what was held).
    pub journal: bool,
    /// Journal bytes after which a checkpoint is taken before its interval
    /// is up: a flood cannot grow the journal (nor recovery) without bound.
    pub journal_segment_bytes: u64,
    /// The most the point spool (`data_dir/spool`) holds while InfluxDB is
    /// unavailable; when full, MQTT messages are no longer acknowledged.
    /// 0: no spool (points wait in memory, as `replay` does).
    pub spool_max_bytes: u64,
    /// The most the dead-letter file (`data_dir/dead-letters.lp`) holds;
    /// refused lines beyond it are dropped and counted. 0: none kept.
    pub dead_letter_max_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: "/var/lib/queuewatch".into(),
            checkpoint_interval: Duration::from_secs(60),
            journal: true,
            journal_segment_bytes: 64 << 20,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
        }
    }
}

/// `storage.spool_max_bytes` when not given: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// `storage.dead_letter_max_bytes` when not given: 256 MiB, over a million
/// refused lines; past it an office sending refused lines at its full rate
/// fills no more of the state disk.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 256 << 20;

/// `[storage]`.
pub(super) fn parse_storage(table: &toml::Table, storage: &mut StorageConfig, problems: &mut Vec<String>) {
    let mut section = Section::new(table, "storage");
    if let Some(dir) = section.string("data_dir", problems) {
        if dir.is_empty() {
            problems.push("storage.data_dir: must not be empty".into());
        } else {
            storage.data_dir = dir.into();
        }
    }
    if let Some(interval) = section.duration("checkpoint_interval", problems) {
        if at_least("storage.checkpoint_interval", interval, SECOND, problems) {
            storage.checkpoint_interval = interval;
        }
    }
    if let Some(value) = section.get("journal") {
        match value.as_bool() {
            Some(journal) => storage.journal = journal,
            None => problems.push("storage.journal: expected true or false".into()),
        }
    }
    if let Some(value) = section.get("journal_segment_bytes") {
        match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
            Some(bytes) if bytes >= 1 << 20 => storage.journal_segment_bytes = bytes,
            _ => problems.push(format!(
                "storage.journal_segment_bytes: expected a number of bytes of at least 1048576 (1 MiB), found {value}"
            )),
        }
    }
    if let Some(value) = section.get("spool_max_bytes") {
        match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
            Some(bytes) => storage.spool_max_bytes = bytes,
            None => problems
                .push(format!("storage.spool_max_bytes: expected a number of bytes (0 for no spool), found {value}")),
        }
    }
    if let Some(value) = section.get("dead_letter_max_bytes") {
        match value.as_integer().and_then(|bytes| u64::try_from(bytes).ok()) {
            Some(bytes) => storage.dead_letter_max_bytes = bytes,
            None => problems.push(format!(
                "storage.dead_letter_max_bytes: expected a number of bytes (0 to keep none), found {value}"
            )),
        }
    }
    section.finish(problems);
}
