//! Snapshot files: the tracker's state after record `number`, written to a
//! temporary file, synced, then renamed into place (and the folder synced),
//! so a snapshot file is either whole or absent. A snapshot is committed
//! (renamed) only once every point its records produced has been settled by
//! the writers, which is what lets the journal before it be deleted.
//! A temporary file that will not be committed (its write or its rename
//! failed, or the daemon stops first) is removed at once, so that on a
//! nearly full disk its space goes back to the journal; one a crash left is
//! removed at the next start.
//!
//! Layout: `magic 8 | format version u32 | crc32 of the rest u32 | number u64 | state`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use super::{sync_dir, StorageError};

/// The snapshot file format this version writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"qwsnapst";
const HEADER_BYTES: usize = 16;

pub fn snapshot_name(number: u64) -> String {
    format!("snapshot-{number:020}.qws")
}

/// The temporary file the snapshot after record `number` is written to.
pub fn pending_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{}.tmp", snapshot_name(number)))
}

/// Writes the snapshot of the state after record `number` to a temporary
/// file and syncs it; [`commit`] puts it in place. On an error the
/// temporary file is gone: on a nearly full disk its space is the journal's.
pub fn write_pending(dir: &Path, number: u64, state: &[u8]) -> Result<PathBuf, StorageError> {
    let path = pending_path(dir, number);
    let mut body = Vec::with_capacity(8 + state.len());
    body.extend_from_slice(&number.to_le_bytes());
    body.extend_from_slice(state);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let written = File::create(&path).and_then(|mut file| {
        file.write_all(&header).and_then(|()| file.write_all(&body)).and_then(|()| file.sync_all())
    });
    match written {
        Ok(()) => Ok(path),
        Err(source) => {
            discard_pending(&path);
            Err(StorageError::io(&path, source))
        }
    }
}

/// Puts a pending snapshot in place and removes the older ones. If it
/// cannot be put in place, the pending file is removed.
pub fn commit(dir: &Path, pending: &Path, number: u64) -> Result<(), StorageError> {
    let path = dir.join(snapshot_name(number));
    if let Err(source) = std::fs::rename(pending, &path) {
        discard_pending(pending);
        return Err(StorageError::io(&path, source));
    }
    sync_dir(dir)?;
    for (older, older_path) in list(dir)? {
        if older < number {
            let _ = std::fs::remove_file(older_path);
        }
    }
    Ok(())
}

/// Removes a pending snapshot that will not be committed. A failure is
/// logged: the next start removes it (see [`remove_pending`]).
pub fn discard_pending(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            warn!(file = %path.display(), error = %error, "Cannot remove an unfinished snapshot; the next start does.")
        }
    }
}

/// Removes the pending snapshots a crash left behind (at start, before any is written).
pub fn remove_pending(dir: &Path) -> Result<(), StorageError> {
    for entry in std::fs::read_dir(dir).map_err(|source| StorageError::io(dir, source))? {
        let entry = entry.map_err(|source| StorageError::io(dir, source))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot-") && name.ends_with(".qws.tmp") {
            std::fs::remove_file(entry.path()).map_err(|source| StorageError::io(&entry.path(), source))?;
        }
    }
    Ok(())
}

/// Committed snapshots in `dir`, by number.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| StorageError::io(dir, source))? {
        let entry = entry.map_err(|source| StorageError::io(dir, source))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if let Some(number) = name.strip_prefix("snapshot-").and_then(|rest| rest.strip_suffix(".qws")?.parse().ok()) {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest snapshot that reads back whole: its number and state bytes.
/// A damaged newest one is reported and an older one used (the journal
/// after it must then still be there, which reading the journal checks);
/// one in a newer format is an error, never skipped.
pub fn load_newest(dir: &Path) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
    let found = list(dir)?;
    let mut damaged = Vec::new();
    for (number, path) in found.into_iter().rev() {
        match read(&path) {
            Ok(state) => return Ok(Some((number, state))),
            Err(error @ StorageError::Version { .. }) => return Err(error),
            Err(error) => {
                error!(error = %error, "A snapshot is damaged; trying an older one.");
                damaged.push(path);
            }
        }
    }
    match damaged.into_iter().next() {
        Some(path) => Err(StorageError::Corrupt {
            path,
            detail: "no snapshot reads back whole; move the state folder aside to start without it".into(),
        }),
        None => Ok(None),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, StorageError> {
    let bytes = std::fs::read(path).map_err(|source| StorageError::io(path, source))?;
    let corrupt = |detail: &str| StorageError::Corrupt { path: path.into(), detail: detail.into() };
    if bytes.len() < HEADER_BYTES + 8 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a queuewatch snapshot"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(StorageError::Version { path: path.into(), found: version, supported: SNAPSHOT_FORMAT_VERSION });
    }
    let checksum = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32fast::hash(&bytes[HEADER_BYTES..]) != checksum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(bytes[HEADER_BYTES + 8..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_snapshot_reads_back_and_replaces_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pending(dir.path(), 10, b"state at 10").unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), None, "a pending snapshot is not yet one");
        commit(dir.path(), &first, 10).unwrap();
        let second = write_pending(dir.path(), 20, b"state at 20").unwrap();
        commit(dir.path(), &second, 20).unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), Some((20, b"state at 20".to_vec())));
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_temporary_file_left_by_a_crash_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_pending(dir.path(), 10, b"half done").unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        remove_pending(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A tmpfs of `bytes` mounted on a new temporary folder for as long as it
    /// lives: a real filesystem that runs out of space. Mounting needs root
    /// (CAP_SYS_ADMIN); without it the test fails and says so.
    struct SmallFs {
        dir: tempfile::TempDir,
    }

    impl SmallFs {
        fn mount(bytes: u64) -> SmallFs {
            let dir = tempfile::tempdir().unwrap();
            let output = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "queuewatch-test"])
                .arg(dir.path())
                .output()
                .expect("mount (util-linux) runs");
            assert!(
                output.status.success(),
                "this test mounts a {bytes}-byte tmpfs, which needs root (CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            SmallFs { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }

    #[test]
    fn a_snapshot_that_does_not_fit_leaves_no_temporary_file_and_the_journal_the_room() {
        let disk = SmallFs::mount(64 << 10);
        let state = vec![7u8; 200 << 10];
        let error = write_pending(disk.path(), 10, &state).unwrap_err();
        assert!(error.to_string().contains("No space left"), "{error}");
        let left: Vec<_> = std::fs::read_dir(disk.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
        // The room is the journal's again: records still become durable.
        let mut records = Vec::new();
        for number in 1..=40 {
            super::super::journal::frame(&mut records, number, &[number as u8; 1000]);
        }
        let mut segment = super::super::journal::SegmentWriter::create(
            &disk.path().join(super::super::journal::segment_name(1)),
            b"qwjournl",
            super::super::journal::JOURNAL_FORMAT_VERSION,
        )
        .unwrap();
        segment.append(&records).expect("the journal has the room the snapshot left");
    }

    #[test]
    fn a_snapshot_that_cannot_be_put_in_place_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Something that cannot be replaced by a rename sits where it goes.
        std::fs::create_dir(dir.path().join(snapshot_name(10))).unwrap();
        std::fs::write(dir.path().join(snapshot_name(10)).join("in the way"), b"x").unwrap();
        let pending = write_pending(dir.path(), 10, b"state").unwrap();
        assert!(commit(dir.path(), &pending, 10).is_err());
        assert!(!pending.exists());
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_to_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_pending(dir.path(), 10, b"ten").unwrap();
        std::fs::rename(&older, dir.path().join(snapshot_name(10))).unwrap();
        let newer = write_pending(dir.path(), 20, b"twenty").unwrap();
        std::fs::rename(&newer, dir.path().join(snapshot_name(20))).unwrap();
        let path = dir.path().join(snapshot_name(20));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), Some((10, b"ten".to_vec())));
    }

    #[test]
    fn only_damaged_snapshots_are_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(snapshot_name(3)), b"qwsnapst garbage").unwrap();
        let error = load_newest(dir.path()).unwrap_err();
        assert!(error.to_string().contains("move the state folder aside"), "{error}");
    }

    #[test]
    fn a_newer_snapshot_format_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let pending = write_pending(dir.path(), 1, b"x").unwrap();
        let mut bytes = std::fs::read(&pending).unwrap();
        bytes[8] = 9;
        std::fs::write(dir.path().join(snapshot_name(1)), bytes).unwrap();
        let error = load_newest(dir.path()).unwrap_err();
        assert!(error.to_string().contains("format version 9"), "{error}");
    }
}
