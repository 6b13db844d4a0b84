//! `[privacy]`: what becomes of staff ids, and where the hash key is (never the key).

use std::path::PathBuf;

use super::reader::Section;
use super::FileCheck;

/// `[privacy]`: what becomes of staff ids (see `crate::privacy`). Holds
/// where the hash key is, never the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacyConfig {
    pub staff: StaffMode,
    /// The environment variable that holds the hash key.
    pub staff_key_env: Option<String>,
    /// The file that holds the hash key (a secret file: see `secret`).
    pub staff_key_file: Option<PathBuf>,
}

/// `privacy.staff`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StaffMode {
    /// As sent: what queuewatch always did, so an upgrade changes no series.
    #[default]
    Keep,
    /// A keyed hash (`s-` and 16 hex digits), the same for the same key and id.
    Hash,
    /// Removed, as if never sent.
    Drop,
}

/// `privacy.staff`, `privacy.staff_key_env`, `privacy.staff_key_file`. With
/// `hash` the key is to be read at load ([`FileCheck::StaffKey`]), so that a
/// missing or short key is a config error, and forgotten
/// (`privacy::StaffPrivacy` reads it again at start). A key given with `keep`
/// or `drop` is an error too: it says the operator meant to hash, and the
/// staff would be kept or dropped without a word.
pub(super) fn parse_privacy(
    section: &mut Section<'_>,
    privacy: &mut PrivacyConfig,
    problems: &mut Vec<String>,
    file_checks: &mut Vec<(usize, FileCheck)>,
) {
    if let Some(mode) = section.string("staff", problems) {
        match mode.as_str() {
            "keep" => privacy.staff = StaffMode::Keep,
            "hash" => privacy.staff = StaffMode::Hash,
            "drop" => privacy.staff = StaffMode::Drop,
            other => problems.push(format!("privacy.staff: {other:?} is not \"keep\", \"hash\" or \"drop\"")),
        }
    }
    if let Some(name) = section.string("staff_key_env", problems) {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            problems.push(format!("privacy.staff_key_env: {name:?} is not an environment variable name"));
        } else {
            privacy.staff_key_env = Some(name);
        }
    }
    if let Some(path) = section.string("staff_key_file", problems) {
        if path.is_empty() {
            problems.push("privacy.staff_key_file: must not be empty".into());
        } else {
            privacy.staff_key_file = Some(path.into());
        }
    }
    if section.has("staff_key") {
        problems.push(
            "privacy.staff_key: secrets are never read from the config file; use staff_key_env or staff_key_file"
                .into(),
        );
        section.mark_seen("staff_key");
    }
    let given = section.has("staff_key_env") || section.has("staff_key_file");
    match privacy.staff {
        _ if section.has("staff_key_env") && section.has("staff_key_file") => {
            problems.push("privacy.staff_key_file: give staff_key_env or staff_key_file, not both".into())
        }
        StaffMode::Hash if !given => problems.push(
            "privacy.staff: \"hash\" needs a key of at least 16 bytes: set privacy.staff_key_env or privacy.staff_key_file"
                .into(),
        ),
        StaffMode::Hash => file_checks.push((problems.len(), FileCheck::StaffKey)),
        StaffMode::Keep | StaffMode::Drop if given => {
            let mode = if privacy.staff == StaffMode::Keep { "keep" } else { "drop" };
            let key = if section.has("staff_key_env") { "staff_key_env" } else { "staff_key_file" };
            problems.push(format!(
                "privacy.{key}: a key is used only with privacy.staff = \"hash\", and staff is \"{mode}\" \
                 (set staff = \"hash\", or remove the key)"
            ));
        }
        StaffMode::Keep | StaffMode::Drop => {}
    }
}
