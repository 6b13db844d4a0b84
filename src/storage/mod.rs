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
//!     mqtt-session.toml  the filters the broker confirmed in the session (`crate::mqtt::session`)
//! ```
//!
//! Durability in one sentence: a message is acknowledged to the broker only
//! once the journal record of it is on disk (`fdatasync`), so every message
//! the broker forgot is in the journal, and the snapshot plus the journal
//! after it rebuild the state the daemon had (see `crate::durable`).
//!
//! The state belongs to one MQTT session: what the broker keeps for us is
//! exactly what the journal lacks. A session is the broker's host and the
//! client id: the scheme and the port are not part of it (the same broker
//! serves `mqtt://` on 1883 and `mqtts://` on 8883 from one session store).
//! Started with another host or client id, the daemon refuses to start and
//! says what to run: `queuewatch state adopt` (the same broker under another
//! name: keep the state) or `queuewatch state set-aside` (start afresh; the
//! old state is renamed, never deleted). State is never set aside silently,
//! and a `SESSION` file that cannot be read stops the start with its path.

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
    #[error("{path}: format version {found} was written by a queuewatch older than the release before this one, which this version no longer reads ({supported}); start that older release's successor once to bring the state up to date, or move the state folder aside to start without it")]
    OldVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: journal records {} to {} are missing; move the state folder aside to start without it", after + 1, found - 1)]
    Gap { path: PathBuf, after: u64, found: u64 },
    #[error(
        "{path}: the saved state belongs to the MQTT session {recorded}, and the config names {configured}. \
         If it is the same broker under another name, run `queuewatch state adopt --config FILE` to keep the \
         state; to start afresh, run `queuewatch state set-aside --config FILE` (the state is renamed, not deleted)"
    )]
    OtherSession { path: PathBuf, recorded: String, configured: String },
    #[error("{path}: {detail}; move the state folder aside to start without it, or run `queuewatch state adopt --config FILE` if it is this daemon's")]
    UnknownSession { path: PathBuf, detail: String },
    /// Something that runs one at a time holds the lock at `path`.
    #[error("{path}: {holder} is running on this state folder; wait for it to end")]
    InUse { path: PathBuf, holder: String },
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

/// The `SESSION` file as written: `format = N` (read by [`folder_version`]),
/// then the URL and client id as TOML strings, so that the file reads back
/// whatever characters they hold.
#[derive(serde::Deserialize)]
struct SessionFile {
    mqtt_url: String,
    client_id: String,
}

impl Session {
    /// The session `config` names.
    pub fn of(config: &crate::config::Config) -> Session {
        Session { mqtt_url: config.mqtt.url.clone(), client_id: config.mqtt.client_id.clone() }
    }

    fn to_text(&self) -> String {
        let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
        format!(
            "format = {STATE_FOLDER_VERSION}\nmqtt_url = {}\nclient_id = {}\n",
            quote(&self.mqtt_url),
            quote(&self.client_id)
        )
    }

    /// What identifies the session at the broker: its host (lower case, as
    /// host names compare) and the client id. Not the scheme nor the port:
    /// one broker serves its listeners from one session store.
    fn identity(&self) -> (String, &str) {
        let host = match crate::config::parse_broker_url(&self.mqtt_url) {
            Ok(url) => url.host.to_ascii_lowercase(),
            // Not a URL this version parses: only the same text is the same broker.
            Err(_) => self.mqtt_url.clone(),
        };
        (host, &self.client_id)
    }

    pub fn describe(&self) -> String {
        format!("{} with client id {:?}", self.mqtt_url, self.client_id)
    }
}

/// The folder format a `SESSION` file names, if it names one.
fn folder_version(session_text: &str) -> Option<u32> {
    session_text.lines().next()?.strip_prefix("format = ")?.trim().parse().ok()
}

/// What to do with state that belongs to another session, chosen by the
/// operator (`queuewatch state adopt|set-aside`); the daemon itself never
/// chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherSession {
    /// Refuse to start, saying what to run.
    Refuse,
    /// Keep the state and record the configured session as its owner.
    Adopt,
    /// Rename the state aside and start afresh.
    SetAside,
}

/// The open, locked state folder.
#[derive(Debug)]
pub struct StateDir {
    state: PathBuf,
    /// Held for the daemon's lifetime: the lock goes with the file.
    _lock: File,
}

impl StateDir {
    /// Creates `data_dir` if needed, takes its lock, and checks that the
    /// state belongs to `session`; state of another session is refused.
    pub fn open(data_dir: &Path, session: &Session) -> Result<StateDir, StorageError> {
        StateDir::open_with(data_dir, session, OtherSession::Refuse)
    }

    /// [`StateDir::open`], with state of another session handled as `other`.
    /// `SetAside` renames the state aside even when it is the same session
    /// (an explicit fresh start).
    pub fn open_with(data_dir: &Path, session: &Session, other: OtherSession) -> Result<StateDir, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::io(data_dir, source))?;
        let lock = lock_folder(data_dir)?;

        let state = data_dir.join("state");
        let session_path = state.join("SESSION");
        let recorded = match std::fs::read_to_string(&session_path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(StorageError::io(&session_path, source)),
        };
        if let Some(found) = recorded.as_deref().and_then(folder_version) {
            if found > STATE_FOLDER_VERSION {
                return Err(StorageError::Version { path: session_path, found, supported: STATE_FOLDER_VERSION });
            }
        }
        let holds_state = state.exists() && has_state_files(&state)?;
        let write_session;
        match (other, recorded) {
            (OtherSession::SetAside, _) if state.exists() => {
                let aside = data_dir.join(format!("state.set-aside-{}", crate::time::Millis::now().0));
                warn!(from = %state.display(), to = %aside.display(), "Setting the saved state aside, as asked; starting afresh.");
                std::fs::rename(&state, &aside).map_err(|source| StorageError::io(&state, source))?;
                sync_dir(data_dir)?;
                write_session = true;
            }
            (_, None) if holds_state && other != OtherSession::Adopt => {
                return Err(StorageError::UnknownSession {
                    path: session_path,
                    detail: "state without a SESSION file naming its MQTT session".into(),
                });
            }
            (_, None) => write_session = true,
            (other, Some(text)) => {
                let parsed: Option<Session> = toml::from_str::<SessionFile>(&text)
                    .ok()
                    .map(|file| Session { mqtt_url: file.mqtt_url, client_id: file.client_id });
                match parsed {
                    Some(recorded) if recorded.identity() == session.identity() => {
                        // The same session under another spelling (scheme, port): record the new one.
                        write_session = recorded != *session;
                    }
                    Some(recorded) if other == OtherSession::Refuse => {
                        return Err(StorageError::OtherSession {
                            path: state.clone(),
                            recorded: recorded.describe(),
                            configured: session.describe(),
                        });
                    }
                    None if other == OtherSession::Refuse => {
                        return Err(StorageError::UnknownSession {
                            path: session_path,
                            detail: "not a SESSION file this queuewatch can read".into(),
                        });
                    }
                    recorded => {
                        warn!(
                            state = %state.display(),
                            recorded = %recorded.map_or_else(|| "unreadable".to_owned(), |recorded| recorded.describe()),
                            configured = %session.describe(),
                            "Adopting the saved state for the configured MQTT session, as asked."
                        );
                        write_session = true;
                    }
                }
            }
        }
        if write_session {
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

/// Whether the state folder holds anything but its `SESSION` file (and the
/// temporary file of writing it).
fn has_state_files(state: &Path) -> Result<bool, StorageError> {
    for entry in std::fs::read_dir(state).map_err(|source| StorageError::io(state, source))? {
        let entry = entry.map_err(|source| StorageError::io(state, source))?;
        if !matches!(entry.file_name().to_str(), Some("SESSION" | "SESSION.tmp")) {
            return Ok(true);
        }
    }
    Ok(false)
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
    #[cfg(test)]
    synced::note(dir);
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| StorageError::io(dir, source))
}

/// The folders [`sync_dir`] synced on this thread: what a test of "a new
/// file's folder is synced" can observe (a crash cannot be staged in a test).
#[cfg(test)]
pub(crate) mod synced {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static FOLDERS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn note(dir: &Path) {
        FOLDERS.with(|folders| folders.borrow_mut().push(dir.to_path_buf()));
    }

    /// The folders synced on this thread since the last call.
    pub(crate) fn take() -> Vec<PathBuf> {
        FOLDERS.with(|folders| std::mem::take(&mut *folders.borrow_mut()))
    }
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

    fn aside_folders(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("state.set-aside-"))
            .collect()
    }

    fn with_journal(dir: &Path, session: &Session) {
        let state = StateDir::open(dir, session).unwrap();
        std::fs::write(state.path().join("journal-00000000000000000001.qwj"), b"x").unwrap();
    }

    #[test]
    fn state_of_another_session_is_refused_with_what_to_run_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        with_journal(dir.path(), &session("qw"));
        let error = StateDir::open(dir.path(), &session("another")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("client id \"qw\"") && message.contains("client id \"another\""), "{message}");
        assert!(
            message.contains("queuewatch state adopt") && message.contains("queuewatch state set-aside"),
            "{message}"
        );
        assert!(dir.path().join("state/journal-00000000000000000001.qwj").exists());
        assert!(aside_folders(dir.path()).is_empty());
    }

    #[test]
    fn the_same_broker_under_another_scheme_port_or_case_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let at = |url: &str| Session { mqtt_url: url.into(), client_id: "qw".into() };
        with_journal(dir.path(), &at("mqtt://Broker.example"));
        for url in ["mqtt://broker.example:1883", "mqtts://broker.example", "mqtts://BROKER.example:8883/"] {
            let state = StateDir::open(dir.path(), &at(url)).unwrap_or_else(|error| panic!("{url}: {error}"));
            assert!(state.path().join("journal-00000000000000000001.qwj").exists(), "{url}");
            let recorded = std::fs::read_to_string(state.path().join("SESSION")).unwrap();
            assert!(recorded.contains(url), "the SESSION file names the configured URL: {recorded}");
        }
        let error = StateDir::open(dir.path(), &at("mqtt://10.0.0.5")).unwrap_err();
        assert!(matches!(error, StorageError::OtherSession { .. }), "{error}");
    }

    #[test]
    fn adopt_keeps_the_state_for_the_new_session_and_set_aside_renames_it() {
        let dir = tempfile::tempdir().unwrap();
        with_journal(dir.path(), &session("qw"));
        let host = Session { mqtt_url: "mqtt://broker.example".into(), client_id: "qw".into() };
        drop(StateDir::open_with(dir.path(), &host, OtherSession::Adopt).unwrap());
        let state = StateDir::open(dir.path(), &host).expect("adopted");
        assert!(state.path().join("journal-00000000000000000001.qwj").exists());
        drop(state);
        drop(StateDir::open_with(dir.path(), &session("fresh"), OtherSession::SetAside).unwrap());
        assert_eq!(aside_folders(dir.path()).len(), 1);
        let fresh = StateDir::open(dir.path(), &session("fresh")).unwrap();
        assert!(!fresh.path().join("journal-00000000000000000001.qwj").exists());
    }

    #[test]
    fn an_unreadable_or_missing_session_file_stops_the_start_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        with_journal(dir.path(), &session("qw"));
        let session_path = dir.path().join("state/SESSION");
        std::fs::write(&session_path, "format = 1\nmqtt_url = \"mqtt://x\n").unwrap();
        let error = StateDir::open(dir.path(), &session("qw")).unwrap_err();
        assert!(error.to_string().contains("SESSION"), "{error}");
        std::fs::remove_file(&session_path).unwrap();
        let error = StateDir::open(dir.path(), &session("qw")).unwrap_err();
        assert!(error.to_string().contains("without a SESSION file"), "{error}");
        // A read error (here: a folder where the file should be) names the path and the OS error.
        std::fs::create_dir(&session_path).unwrap();
        let error = StateDir::open(dir.path(), &session("qw")).unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }) && error.to_string().contains("SESSION"), "{error}");
        assert!(dir.path().join("state/journal-00000000000000000001.qwj").exists());
        assert!(aside_folders(dir.path()).is_empty());
    }

    #[test]
    fn a_session_file_of_the_previous_release_reads_as_the_same_session() {
        let dir = tempfile::tempdir().unwrap();
        with_journal(dir.path(), &session("qw"));
        // As releases before TOML quoting wrote it (Rust's `{:?}`).
        std::fs::write(
            dir.path().join("state/SESSION"),
            "format = 1\nmqtt_url = \"mqtt://127.0.0.1:1883\"\nclient_id = \"qw\"\n",
        )
        .unwrap();
        let state = StateDir::open(dir.path(), &session("qw")).unwrap();
        assert!(state.path().join("journal-00000000000000000001.qwj").exists());
    }
}
