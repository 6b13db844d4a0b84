//! What `queuewatch run` keeps on disk so that it loses nothing when it dies:
//! the state folder (`storage.data_dir`).
//!
//! ```text
//! data_dir/
//!   lock                 held (flock) by the running daemon; holds its pid
//!   state/
//!     SESSION            the MQTT session the state belongs to (broker URL, client id)
//!     snapshot-<n>.qws   the tracker's state after journal record n (the newest only)
//!     journal-<f>.qwj    journal segments, records f, f+1, …
//! ```
//!
//! Durability in one sentence: a message is acknowledged to the broker only
//! once the journal record of it is on disk (`fdatasync`), so every message
//! the broker forgot is in the journal, and the snapshot plus the journal
//! after it rebuild the state the daemon had (see `crate::durable`).
//!
//! The state belongs to one MQTT session: what the broker keeps for us is
//! exactly what the journal lacks. Started against another broker or with
//! another client id, the daemon sets the old state aside (renamed, never
//! deleted) and starts afresh, saying so.

pub mod journal;
pub mod record;
pub mod snapshot;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

/// What can go wrong with the state folder.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: another queuewatch ({holder}) is using this state folder (storage.data_dir); one daemon per folder"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("{path}: format version {found} is newer than this queuewatch understands ({supported}); run a newer queuewatch, or move the state folder aside to start without it")]
    Version { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: journal records {} to {} are missing; move the state folder aside to start without it", after + 1, found - 1)]
    Gap { path: PathBuf, after: u64, found: u64 },
}

impl StorageError {
    pub fn io(path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io { path: path.into(), source }
    }
}

/// The MQTT session a state folder belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub mqtt_url: String,
    pub client_id: String,
}

/// The layout of the state folder (the `SESSION` file's first line); the
/// journal and snapshot files carry versions of their own.
pub const STATE_FOLDER_VERSION: u32 = 1;

impl Session {
    fn to_text(&self) -> String {
        format!("format = {STATE_FOLDER_VERSION}\nmqtt_url = {:?}\nclient_id = {:?}\n", self.mqtt_url, self.client_id)
    }
}

/// The folder format a `SESSION` file names, if it names one.
fn folder_version(session_text: &str) -> Option<u32> {
    session_text.lines().next()?.strip_prefix("format = ")?.trim().parse().ok()
}

/// The open, locked state folder.
#[derive(Debug)]
pub struct StateDir {
    state: PathBuf,
    /// Held for the daemon's lifetime: the lock goes with the file.
    _lock: File,
}

impl StateDir {
    /// Creates `data_dir` if needed, takes its lock, and sets aside state of
    /// another session.
    pub fn open(data_dir: &Path, session: &Session) -> Result<StateDir, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::io(data_dir, source))?;
        let lock = lock_folder(data_dir)?;

        let state = data_dir.join("state");
        let session_path = state.join("SESSION");
        match std::fs::read_to_string(&session_path) {
            Ok(text) if folder_version(&text).is_some_and(|found| found > STATE_FOLDER_VERSION) => {
                let found = folder_version(&text).unwrap_or_default();
                return Err(StorageError::Version { path: session_path, found, supported: STATE_FOLDER_VERSION });
            }
            Ok(text) if text == session.to_text() => {}
            Ok(_) | Err(_) if state.exists() => {
                let aside = data_dir.join(format!("state.set-aside-{}", crate::time::Millis::now().0));
                warn!(
                    from = %state.display(),
                    to = %aside.display(),
                    mqtt = %session.mqtt_url,
                    client_id = %session.client_id,
                    "The saved state belongs to another MQTT session (broker or client id); setting it aside and starting afresh."
                );
                std::fs::rename(&state, &aside).map_err(|source| StorageError::io(&state, source))?;
            }
            _ => {}
        }
        if !state.exists() {
            std::fs::create_dir_all(&state).map_err(|source| StorageError::io(&state, source))?;
            let temporary = state.join("SESSION.tmp");
            std::fs::write(&temporary, session.to_text()).map_err(|source| StorageError::io(&temporary, source))?;
            File::open(&temporary)
                .and_then(|file| file.sync_all())
                .map_err(|source| StorageError::io(&temporary, source))?;
            std::fs::rename(&temporary, &session_path).map_err(|source| StorageError::io(&session_path, source))?;
            sync_dir(&state)?;
            sync_dir(data_dir)?;
        }
        Ok(StateDir { state, _lock: lock })
    }

    /// The folder that holds snapshots and journal segments.
    pub fn path(&self) -> &Path {
        &self.state
    }
}

/// Takes the lock of folder `dir` (`dir/lock`, holding our pid) for as
/// long as the returned file is open: one process per folder.
pub fn lock_folder(dir: &Path) -> Result<File, StorageError> {
    let lock_path = dir.join("lock");
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| StorageError::io(&lock_path, source))?;
    if let Err(error) = lock.try_lock() {
        let mut holder = String::new();
        let _ = lock.read_to_string(&mut holder);
        let holder = match (error, holder.trim()) {
            (std::fs::TryLockError::WouldBlock, "") => "a process".to_owned(),
            (std::fs::TryLockError::WouldBlock, pid) => format!("process {pid}"),
            (std::fs::TryLockError::Error(source), _) => return Err(StorageError::io(&lock_path, source)),
        };
        return Err(StorageError::Locked { path: dir.into(), holder });
    }
    let _ = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| writeln!(lock, "{}", std::process::id()));
    Ok(lock)
}

/// Syncs a folder, so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| StorageError::io(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(client_id: &str) -> Session {
        Session { mqtt_url: "mqtt://127.0.0.1:1883".into(), client_id: client_id.into() }
    }

    #[test]
    fn a_second_daemon_on_the_same_folder_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path(), &session("qw")).unwrap();
        let error = StateDir::open(dir.path(), &session("qw")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("another queuewatch"), "{message}");
        assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
        drop(first);
        StateDir::open(dir.path(), &session("qw")).expect("the lock goes with the daemon");
    }

    #[test]
    fn a_state_folder_of_a_newer_format_is_refused_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateDir::open(dir.path(), &session("qw")).unwrap());
        let session_path = dir.path().join("state").join("SESSION");
        std::fs::write(&session_path, "format = 7\nsomething new\n").unwrap();
        let error = StateDir::open(dir.path(), &session("qw")).unwrap_err();
        assert!(error.to_string().contains("format version 7 is newer"), "{error}");
        assert!(session_path.exists());
    }

    #[test]
    fn state_of_another_session_is_set_aside_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path(), &session("qw")).unwrap();
        std::fs::write(state.path().join("journal-00000000000000000001.qwj"), b"x").unwrap();
        drop(state);
        let same = StateDir::open(dir.path(), &session("qw")).unwrap();
        assert!(same.path().join("journal-00000000000000000001.qwj").exists(), "same session: kept");
        drop(same);
        let other = StateDir::open(dir.path(), &session("another")).unwrap();
        assert!(!other.path().join("journal-00000000000000000001.qwj").exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("state.set-aside-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
