//! queuewatch's persistent session on the broker, as far as queuewatch can
//! know it: whether it has one, the filters the broker confirmed in it, and
//! whether a connection found it lost.
//!
//! Owned by the MQTT source ([`super::MqttSource`]). Invariants:
//! - **Only what the broker confirmed is remembered.** A filter counts as
//!   subscribed once its SUBACK granted it, and stops counting once its
//!   UNSUBACK came; the list is kept in the state folder
//!   (`data_dir/state/mqtt-session.toml`), which belongs to one broker
//!   session (`crate::storage`: set aside or adopted with the rest of the
//!   state), written aside and renamed into place. So a filter the config no
//!   longer names is unsubscribed at the next connection whose session is
//!   present, across restarts too, and no filter is ever believed subscribed
//!   that the broker did not grant. Without a journal (`storage.journal =
//!   false`) there is no state folder, and the memory lasts the run.
//! - **Having had a session is known from that file**: a connection that
//!   finds no session where one was remembered has lost it, and says so
//!   ([`SessionLoss::Absent`]). A first start knows of no session and loses none.
//! - **A takeover shows as a connection the broker closed while staying
//!   up.** Mosquitto closes an MQTT 3.1.1 client's connection without a word
//!   when another client logs in with its client id (rumqttc reports
//!   "connection closed by peer", as for a broker that stops). The source
//!   then tries again at once: a broker that is stopping refuses, one that
//!   closed us for another login accepts ([`SessionLoss::TakenOver`]).
//! - The decisions are pure ([`judge`], [`SessionMemory::to_unsubscribe`]);
//!   the file's IO is at the edge, and a file that cannot be read or written
//!   costs only the memory (logged), never the connection.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// The file, in the state folder.
pub const SESSION_FILE: &str = "mqtt-session.toml";

/// Why queuewatch's session is gone: each is counted and logged as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionLoss {
    /// The broker answered a connection without the session queuewatch had
    /// (CONNACK `session_present = false`): what it held is gone.
    Absent,
    /// The broker closed the connection and accepted the next one at once:
    /// another client logged in with queuewatch's client id.
    TakenOver,
}

impl SessionLoss {
    pub const ALL: [SessionLoss; 2] = [SessionLoss::Absent, SessionLoss::TakenOver];

    /// The `cause` label of `queuewatch_mqtt_sessions_lost_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionLoss::Absent => "absent",
            SessionLoss::TakenOver => "taken_over",
        }
    }

    /// What an operator reads in the log: what happened and its likely causes.
    pub fn explanation(self) -> &'static str {
        match self {
            SessionLoss::Absent => {
                "The broker no longer has queuewatch's persistent session (CONNACK without session_present): \
                 the events it held for queuewatch while the connection was down are lost. Likely causes: \
                 another client logged in with queuewatch's client id and a clean session (a takeover: \
                 deploy/README.md, use_username_as_clientid), the broker lost its database (persistence off, \
                 mosquitto.db deleted, another broker behind the same address), or the session expired \
                 (persistent_client_expiration)."
            }
            SessionLoss::TakenOver => {
                "The broker closed queuewatch's connection and let it in again at once: most likely another \
                 client logged in with queuewatch's client id (a takeover: deploy/README.md, \
                 use_username_as_clientid), and events queued for queuewatch that this client may not read \
                 were dropped; or the broker refused a packet (see its log)."
            }
        }
    }
}

/// What a connection's CONNACK says about the session: `had_session` from
/// the memory, `session_present` from the broker, and whether this
/// connection is the at-once retry after the broker closed the last one.
pub fn judge(had_session: bool, session_present: bool, retry_after_close: bool) -> Option<SessionLoss> {
    if retry_after_close {
        Some(SessionLoss::TakenOver)
    } else if had_session && !session_present {
        Some(SessionLoss::Absent)
    } else {
        None
    }
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionFile {
    /// Filters the broker confirmed, sorted.
    filters: Vec<String>,
}

/// What queuewatch knows of its session, and where it keeps it.
#[derive(Debug)]
pub struct SessionMemory {
    /// `None`: kept in memory only (no state folder).
    path: Option<PathBuf>,
    /// `None` while no session is known; the filters the broker confirmed otherwise.
    subscribed: Option<BTreeSet<String>>,
}

impl SessionMemory {
    /// What the state folder `state` remembers of its session. A missing
    /// file knows of no session; an unreadable or damaged one is logged and
    /// treated the same (it is replaced at the next confirmation).
    pub fn load(state: &Path) -> SessionMemory {
        let path = state.join(SESSION_FILE);
        let mut memory = SessionMemory { path: Some(path.clone()), subscribed: None };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return memory,
            Err(error) => {
                warn!(path = %path.display(), %error, "Cannot read what queuewatch remembers of its MQTT session; \
                    filters removed from mqtt.topics stay subscribed until it is written again.");
                return memory;
            }
        };
        match toml::from_str::<SessionFile>(&text) {
            Ok(file) => memory.subscribed = Some(file.filters.into_iter().collect()),
            Err(error) => warn!(path = %path.display(), error = %error.message(), "What queuewatch remembers of its \
                MQTT session is damaged; it is replaced at the next subscription."),
        }
        memory
    }

    /// A memory that is never written: nothing known at first.
    pub fn in_memory() -> SessionMemory {
        SessionMemory { path: None, subscribed: None }
    }

    /// Whether queuewatch knows it has had a session on this broker.
    pub fn had_session(&self) -> bool {
        self.subscribed.is_some()
    }

    /// The filters the broker confirmed in the session.
    pub fn subscribed(&self) -> impl Iterator<Item = &str> {
        self.subscribed.iter().flatten().map(String::as_str)
    }

    /// The remembered filters that `configured` no longer names: to be
    /// unsubscribed on a connection whose session is present.
    pub fn to_unsubscribe(&self, configured: &[String]) -> Vec<String> {
        self.subscribed()
            .filter(|filter| !configured.iter().any(|wanted| wanted == filter))
            .map(str::to_owned)
            .collect()
    }

    /// A CONNACK: the broker has a session for us from now on (`clean_session
    /// = false`); without `session_present` it holds none of our filters.
    pub fn connected(&mut self, session_present: bool) {
        if self.subscribed.is_none() || !session_present {
            self.subscribed = Some(BTreeSet::new());
            self.save();
        }
    }

    /// The broker granted `filters` (a SUBACK).
    pub fn granted(&mut self, filters: &[String]) {
        let subscribed = self.subscribed.get_or_insert_with(BTreeSet::new);
        let before = subscribed.len();
        subscribed.extend(filters.iter().cloned());
        if subscribed.len() != before {
            self.save();
        }
    }

    /// The broker removed `filters` (their UNSUBACKs).
    pub fn removed(&mut self, filters: &[String]) {
        let Some(subscribed) = &mut self.subscribed else { return };
        let before = subscribed.len();
        subscribed.retain(|filter| !filters.contains(filter));
        if subscribed.len() != before {
            self.save();
        }
    }

    /// Writes the file aside, syncs it and renames it into place; a failure
    /// is logged and costs only the memory.
    fn save(&self) {
        let Some(path) = &self.path else { return };
        let file = SessionFile { filters: self.subscribed().map(str::to_owned).collect() };
        if let Err(error) = write_replacing(path, &file) {
            warn!(path = %path.display(), %error, "Cannot write what queuewatch remembers of its MQTT session; \
                filters removed from mqtt.topics may stay subscribed.");
        }
    }
}

fn write_replacing(path: &Path, file: &SessionFile) -> std::io::Result<()> {
    let text = format!(
        "# queuewatch's MQTT session on its broker: the filters the broker confirmed. Written by\n\
         # queuewatch after every SUBACK and UNSUBACK; deleting it only makes queuewatch forget them.\n{}",
        toml::to_string(file).map_err(std::io::Error::other)?
    );
    let temporary = path.with_extension("toml.tmp");
    let mut written = std::fs::File::create(&temporary)?;
    written.write_all(text.as_bytes())?;
    written.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|filter| filter.to_string()).collect()
    }

    #[test]
    fn a_connection_without_the_remembered_session_lost_it_and_a_retry_at_once_after_a_close_was_taken_over() {
        assert_eq!(judge(false, false, false), None, "a first start");
        assert_eq!(judge(false, true, false), None, "a session made beforehand");
        assert_eq!(judge(true, true, false), None);
        assert_eq!(judge(true, false, false), Some(SessionLoss::Absent));
        assert_eq!(judge(true, true, true), Some(SessionLoss::TakenOver));
        assert_eq!(judge(true, false, true), Some(SessionLoss::TakenOver), "counted once, by its likelier cause");
    }

    #[test]
    fn only_confirmed_filters_are_remembered_and_those_no_longer_configured_are_to_be_unsubscribed() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = SessionMemory::load(dir.path());
        assert!(!memory.had_session());
        memory.connected(false);
        assert!(memory.had_session(), "the broker made a session at this CONNACK");
        memory.granted(&filters(&["queue/+/events", "old/+/events"]));

        let mut again = SessionMemory::load(dir.path());
        assert!(again.had_session());
        assert_eq!(again.to_unsubscribe(&filters(&["queue/+/events"])), ["old/+/events"]);
        again.removed(&filters(&["old/+/events"]));
        let after = SessionMemory::load(dir.path());
        assert_eq!(after.subscribed().collect::<Vec<_>>(), ["queue/+/events"]);
        assert!(after.to_unsubscribe(&filters(&["queue/+/events"])).is_empty());

        // A session found absent holds none of the filters.
        let mut lost = SessionMemory::load(dir.path());
        lost.connected(false);
        assert!(lost.had_session() && lost.subscribed().next().is_none());
        assert!(SessionMemory::load(dir.path()).subscribed().next().is_none());
    }

    #[test]
    fn a_damaged_file_knows_of_no_session_and_a_memory_without_a_folder_lasts_the_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SESSION_FILE), "filters = [").unwrap();
        assert!(!SessionMemory::load(dir.path()).had_session());
        let mut memory = SessionMemory::in_memory();
        memory.connected(true);
        memory.granted(&filters(&["queue/+/events"]));
        assert!(memory.had_session());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing written");
    }
}
