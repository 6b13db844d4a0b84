//! Secret files: passwords, tokens and private keys that queuewatch reads
//! from a file named in the config (`mqtt.password_file`,
//! `mqtt.client_key_file`), checked the same way wherever they are read.
//!
//! Invariants:
//! - A secret file that its group or others may write is refused: whoever can
//!   write it chooses what queuewatch presents as its identity (or, for a
//!   password, can make it log in somewhere else's way). The error names the
//!   config key and the file, never the content.
//! - A secret file that others may read is used, with a warning given once per
//!   file in this process: container secrets are often mode 0444, where the
//!   mount itself is what keeps them private.
//! - The content of a secret never appears in an error or a log line: the
//!   errors here carry the key, the path and the mode only.
//! - The mode is read from the opened file (`fstat`), so the check and the
//!   read concern the same file even if it is replaced meanwhile.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a secret file cannot be used. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{key}: cannot read {path:?}: {source}")]
    Unreadable { key: String, path: PathBuf, source: std::io::Error },
    #[error(
        "{key}: {path:?} may be written by its {who} (mode {mode:04o}); a secret file must be writable by its owner only (chmod go-w)"
    )]
    WritableByOthers { key: String, path: PathBuf, who: &'static str, mode: u32 },
    #[error("{key}: {path:?} is empty")]
    Empty { key: String, path: PathBuf },
}

/// Who may read a secret file besides its owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    OwnerAndGroup,
    Anyone,
}

/// Reads the secret file named by `key`, refusing one that its group or
/// others may write; warns once (through `tracing`) if anyone may read it.
pub fn read(key: &str, path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let unreadable = |source| SecretFileError::Unreadable { key: key.to_string(), path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if check_mode(key, path, &metadata)? == Readers::Anyone {
        if let Some(warning) = readable_by_anyone_warning_once(key, path) {
            tracing::warn!(key, "{warning}");
        }
    }
    let mut content = Vec::new();
    file.read_to_end(&mut content).map_err(unreadable)?;
    if content.is_empty() {
        return Err(SecretFileError::Empty { key: key.to_string(), path: path.to_path_buf() });
    }
    Ok(content)
}

/// [`read`] as text, without one trailing newline (`echo` and editors add
/// one): a password or a token.
pub fn read_text(key: &str, path: &Path) -> Result<String, SecretFileError> {
    let content = read(key, path)?;
    let text = String::from_utf8(content).map_err(|_| SecretFileError::Unreadable {
        key: key.to_string(),
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    let secret = text.strip_suffix('\n').map_or(text.as_str(), |line| line.strip_suffix('\r').unwrap_or(line));
    if secret.is_empty() {
        return Err(SecretFileError::Empty { key: key.to_string(), path: path.to_path_buf() });
    }
    Ok(secret.to_string())
}

/// Checks the secret file's mode without reading it (for `check-config`):
/// an error if its group or others may write it, else who may read it.
pub fn inspect(key: &str, path: &Path) -> Result<Readers, SecretFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| SecretFileError::Unreadable {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    check_mode(key, path, &metadata)
}

/// The warning for a secret file anyone may read, the first time it is asked
/// for this file in this process; `None` afterwards.
pub fn readable_by_anyone_warning_once(key: &str, path: &Path) -> Option<String> {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    // A poisoned set only means another thread panicked while inserting: the set is still usable.
    let mut warned = WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    warned.insert(path.to_path_buf()).then(|| {
        format!("{key}: {path:?} may be read by any user on this machine; make it readable by its owner (and group) only (chmod o-r)")
    })
}

#[cfg(unix)]
fn check_mode(key: &str, path: &Path, metadata: &std::fs::Metadata) -> Result<Readers, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(who) = who {
        return Err(SecretFileError::WritableByOthers { key: key.to_string(), path: path.to_path_buf(), who, mode });
    }
    Ok(if mode & 0o004 != 0 { Readers::Anyone } else { Readers::OwnerAndGroup })
}

/// Other systems have no Unix modes to check.
#[cfg(not(unix))]
fn check_mode(_key: &str, _path: &Path, _metadata: &std::fs::Metadata) -> Result<Readers, SecretFileError> {
    Ok(Readers::OwnerAndGroup)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret_file(mode: u32, content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_secret_file_others_may_write_is_refused_with_its_key_and_without_its_content() {
        for (mode, who) in [(0o666, "group and others"), (0o620, "group"), (0o602, "others")] {
            let (_dir, path) = secret_file(mode, "planted-secret\n");
            let error = read_text("mqtt.password_file", &path).unwrap_err().to_string();
            assert!(error.starts_with("mqtt.password_file: "), "{error}");
            assert!(error.contains(&format!("may be written by its {who} (mode {mode:04o})")), "{error}");
            assert!(!error.contains("planted-secret"), "{error}");
            let inspected = inspect("mqtt.client_key_file", &path).unwrap_err().to_string();
            assert!(inspected.starts_with("mqtt.client_key_file: "), "{inspected}");
        }
    }

    #[test]
    fn a_secret_file_anyone_may_read_is_used_and_warned_about_once() {
        let (_dir, path) = secret_file(0o644, "s3cret\n");
        assert_eq!(inspect("mqtt.password_file", &path).unwrap(), Readers::Anyone);
        assert_eq!(read_text("mqtt.password_file", &path).unwrap(), "s3cret");
        // `read` took the one warning for this file.
        assert_eq!(readable_by_anyone_warning_once("mqtt.password_file", &path), None);
        let (_other_dir, other) = secret_file(0o444, "s3cret");
        let warning = readable_by_anyone_warning_once("mqtt.password_file", &other).unwrap();
        assert!(warning.starts_with("mqtt.password_file: ") && warning.contains("any user"), "{warning}");
        assert_eq!(readable_by_anyone_warning_once("mqtt.password_file", &other), None);
    }

    #[test]
    fn a_private_secret_file_is_read_without_its_trailing_newline() {
        for mode in [0o600, 0o640, 0o400] {
            let (_dir, path) = secret_file(mode, "s3cret\r\n");
            assert_eq!(inspect("mqtt.password_file", &path).unwrap(), Readers::OwnerAndGroup);
            assert_eq!(read_text("mqtt.password_file", &path).unwrap(), "s3cret");
        }
        let (_dir, path) = secret_file(0o600, "\n");
        let error = read_text("mqtt.password_file", &path).unwrap_err().to_string();
        assert!(error.ends_with("is empty"), "{error}");
    }
}
