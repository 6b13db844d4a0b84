//! Staff privacy (`[privacy] staff`): who served a ticket is personal data,
//! so a deployment may keep it (`keep`, the default), replace it by a keyed
//! hash (`hash`) or remove it (`drop`).
//!
//! Owns the rewrite of a payload's `staff` field and the hash key. The
//! rewrite happens once, where a message is received (the daemon's loop for
//! MQTT, `replay` for NDJSON), before anything else sees the payload:
//! before the journal stores it, before the redelivery hash is taken, before
//! it is decoded, logged, echoed or turned into points. Everything after
//! (journal, snapshots, points, spool, dead letters, alerts, echoes) then
//! only ever holds the rewritten bytes.
//!
//! Invariants:
//! - **Deterministic.** The same payload and key always give the same bytes,
//!   so a message the broker redelivers after a restart rewrites to what the
//!   journal holds and is recognised as a duplicate, and a hash stays the
//!   same across restarts and days.
//! - **Same verdict.** `hash` accepts and rejects exactly what `keep` does,
//!   with the same reason: a staff value that is not a valid identifier, or
//!   not a string, is replaced by a placeholder that fails in the same way
//!   and names nobody (an invalid name is never hashed into a valid one).
//!   `drop` removes the field, whatever its value, as if it had never been
//!   sent. A payload that may name staff but is not a JSON object is
//!   replaced by a placeholder that is rejected for the same reason.
//! - **Cheap when there is nothing to do.** A payload without the bytes
//!   `"staff"` and without a `\u` escape (through which a key could spell
//!   `staff`) is passed on as it is, after two byte searches.
//! - **The key never leaves this module**: no `Debug`, no error, no log line
//!   carries it (errors name the config key, the variable or the file).
//!
//! The hash: `s-` followed by the first 8 bytes, in lowercase hex, of
//! HMAC-SHA256(key, staff id as UTF-8), where the key is the bytes of the
//! variable or file less one trailing newline. An `s-` and 16 hex digits is
//! a valid identifier (1–64 of `A-Z a-z 0-9 _ . -`).

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use hashbrown::HashMap;
use ring::hmac;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Config, PrivacyConfig, StaffMode};
use crate::event::{decode, DecodeLimits, RejectReason};
use crate::ids::{validate_ident, InvalidId};
use crate::time::Millis;

/// The shortest key accepted, in bytes: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// The prefix of every staff hash.
pub const HASH_PREFIX: &str = "s-";

/// Hex digits of the HMAC kept (64 bits: collisions among an office's
/// staff are out of the question, and the value stays short).
const HASH_HEX_DIGITS: usize = 16;

/// The staff key, read from where the config says. Its bytes are never shown.
pub struct StaffKey(Vec<u8>);

impl fmt::Debug for StaffKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaffKey(withheld)")
    }
}

/// What to do with staff ids, with the key `hash` needs.
pub struct StaffPrivacy {
    action: Action,
    /// `mqtt.max_payload_bytes`: an oversized payload is rejected before it
    /// is read, so its placeholder must be oversized too.
    max_payload_bytes: usize,
}

enum Action {
    Keep,
    Hash(Box<Hasher>),
    Drop,
}

/// The key, and the hashes already computed: a staff id recurs in every
/// event of its shift, and the HMAC is most of a rewrite's cost.
struct Hasher {
    key: hmac::Key,
    /// Staff id → its hash as a JSON string (quoted). Bounded: cleared when
    /// full, since ids come from input.
    known: std::sync::Mutex<HashMap<String, String>>,
}

/// How many staff ids [`Hasher`] keeps before starting afresh.
const MAX_KNOWN_HASHES: usize = 16_384;

impl Hasher {
    fn new(key: &[u8]) -> Hasher {
        Hasher { key: hmac::Key::new(hmac::HMAC_SHA256, key), known: Default::default() }
    }

    /// `"s-…"`, quoted, for a valid staff id.
    fn quoted(&self, staff: &str) -> String {
        // A poisoned lock only means another thread panicked mid-insert; the map is still sound.
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hash) = known.get(staff) {
            return hash.clone();
        }
        if known.len() >= MAX_KNOWN_HASHES {
            known.clear();
        }
        let hash = format!("\"{}\"", staff_hash(&self.key, staff));
        known.insert(staff.to_string(), hash.clone());
        hash
    }
}

impl fmt::Debug for StaffPrivacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.action {
            Action::Keep => "keep",
            Action::Hash(_) => "hash",
            Action::Drop => "drop",
        };
        f.debug_struct("StaffPrivacy").field("staff", &mode).finish_non_exhaustive()
    }
}

impl StaffPrivacy {
    /// Staff ids as they are sent (`privacy.staff = "keep"`).
    pub fn keep() -> StaffPrivacy {
        StaffPrivacy { action: Action::Keep, max_payload_bytes: usize::MAX }
    }

    /// From `[privacy]`, reading the key for `hash`; the error names the key, never its bytes.
    pub fn from_config(config: &Config) -> Result<StaffPrivacy, String> {
        let action = match config.privacy.staff {
            StaffMode::Keep => Action::Keep,
            StaffMode::Drop => Action::Drop,
            StaffMode::Hash => {
                let key = read_key(&config.privacy)?.ok_or(
                    "privacy.staff: \"hash\" needs privacy.staff_key_env or privacy.staff_key_file".to_string(),
                )?;
                Action::Hash(Box::new(Hasher::new(&key.0)))
            }
        };
        Ok(StaffPrivacy { action, max_payload_bytes: config.mqtt.max_payload_bytes })
    }

    /// Hashing with `key` as it is (no length rule), for the load harness and tests.
    pub fn hashing(key: &[u8]) -> StaffPrivacy {
        StaffPrivacy { action: Action::Hash(Box::new(Hasher::new(key))), max_payload_bytes: usize::MAX }
    }

    /// Removing staff, for the load harness and tests.
    pub fn dropping() -> StaffPrivacy {
        StaffPrivacy { action: Action::Drop, max_payload_bytes: usize::MAX }
    }

    /// The hash of `staff` (`hash` mode only).
    pub fn hash(&self, staff: &str) -> Option<String> {
        match &self.action {
            Action::Hash(hasher) => Some(staff_hash(&hasher.key, staff)),
            _ => None,
        }
    }

    /// Whether the rewrite changes anything at all (not `keep`).
    pub fn rewrites(&self) -> bool {
        !matches!(self.action, Action::Keep)
    }

    /// The payload with its staff rewritten; borrowed when unchanged.
    pub fn rewrite<'a>(&self, payload: &'a [u8]) -> Cow<'a, [u8]> {
        if matches!(self.action, Action::Keep) || !may_name_staff(payload) {
            return Cow::Borrowed(payload);
        }
        self.rewrite_slow(payload).map_or(Cow::Borrowed(payload), Cow::Owned)
    }

    /// Rewrites an MQTT message's payload in place.
    pub fn rewrite_publish(&self, publish: &mut rumqttc::Publish) {
        if let Cow::Owned(rewritten) = self.rewrite(&publish.payload) {
            publish.payload = rewritten.into();
        }
    }

    /// `None`: nothing to change after all.
    #[cold]
    fn rewrite_slow(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() > self.max_payload_bytes {
            // Rejected as `oversized` on its length alone: the same length, naming nobody.
            return Some(vec![b' '; payload.len()]);
        }
        let Some(object) = Object::read(payload) else {
            return Some(not_an_object_placeholder(payload).to_vec());
        };
        if !object.members.iter().any(|member| member.is_staff) {
            return None;
        }
        Some(match &self.action {
            Action::Keep => return None,
            Action::Hash(hasher) => object.replace_staff(payload, |value| hashed_value(hasher, value)),
            Action::Drop => object.without_staff(payload),
        })
    }
}

/// `s-` + the first 16 hex digits of HMAC-SHA256(key, staff).
fn staff_hash(key: &hmac::Key, staff: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let tag = hmac::sign(key, staff.as_bytes());
    let mut hash = String::with_capacity(HASH_PREFIX.len() + HASH_HEX_DIGITS);
    hash.push_str(HASH_PREFIX);
    for byte in &tag.as_ref()[..HASH_HEX_DIGITS / 2] {
        hash.push(char::from(HEX[usize::from(byte >> 4)]));
        hash.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hash
}

/// Reads the key `[privacy]` names, if it names one: at least
/// [`MIN_KEY_BYTES`] bytes once one trailing newline is taken off. Errors
/// name the config key and the variable or file, never the key's bytes.
pub fn read_key(privacy: &PrivacyConfig) -> Result<Option<StaffKey>, String> {
    let (config_key, source, mut bytes) = if let Some(name) = &privacy.staff_key_env {
        let value = std::env::var_os(name)
            .ok_or_else(|| format!("privacy.staff_key_env: the environment variable {name:?} is not set"))?;
        ("privacy.staff_key_env", format!("the environment variable {name:?}"), value.into_encoded_bytes())
    } else if let Some(path) = &privacy.staff_key_file {
        // The mode first (a key others may write is refused); one that anyone
        // may read is left to the config's warnings.
        crate::secret::inspect("privacy.staff_key_file", path).map_err(|error| error.to_string())?;
        let bytes = std::fs::read(path)
            .map_err(|error| format!("privacy.staff_key_file: cannot read {:?}: {error}", Path::new(path)))?;
        ("privacy.staff_key_file", format!("{:?}", Path::new(path)), bytes)
    } else {
        return Ok(None);
    };
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{config_key}: the key in {source} is {} bytes; at least {MIN_KEY_BYTES} are needed \
             (e.g. `head -c 32 /dev/urandom | base64`)",
            bytes.len()
        ));
    }
    Ok(Some(StaffKey(bytes)))
}

/// Whether a payload may carry a `staff` member: it has the bytes `"staff"`,
/// or a `\u` escape (a key may spell `staff` with escapes). False positives
/// only cost the slow path.
fn may_name_staff(payload: &[u8]) -> bool {
    static STAFF_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"staff\""));
    STAFF_KEY.find(payload).is_some()
        || memchr::memchr_iter(b'\\', payload).any(|at| payload.get(at + 1) == Some(&b'u'))
}

/// What stands in for a payload that may name staff but is not a JSON
/// object: a payload the decoder rejects for the same reason (the decoder
/// decides, as it would for the original).
fn not_an_object_placeholder(payload: &[u8]) -> &'static [u8] {
    let office = crate::ids::OfficeId::parse("o").ok();
    let limits = DecodeLimits { max_payload_bytes: usize::MAX, ..DecodeLimits::default() };
    match decode(payload, office.as_ref(), Millis(i64::MAX / 2), &limits).map_err(|rejection| rejection.reason) {
        Err(RejectReason::NotAnObject) => b"[]",
        // A value of the wrong type found before the syntax error.
        Err(RejectReason::InvalidValue) => b"{\"staff\":0",
        // `malformed_json`: the decoder's detail is then this text's.
        _ => b"staff withheld (privacy.staff): the payload was not a valid JSON object",
    }
}

/// The replacement for a staff value: its hash when it is a valid
/// identifier, else a placeholder that the decoder rejects the same way.
fn hashed_value(hasher: &Hasher, raw: &str) -> Cow<'static, str> {
    match raw.as_bytes().first() {
        // Without escapes the id is the text between the quotes (already checked).
        Some(b'"') if !raw.contains('\\') => hashed_text(hasher, &raw[1..raw.len().saturating_sub(1).max(1)]),
        Some(b'"') => match serde_json::from_str::<String>(raw) {
            Ok(staff) => hashed_text(hasher, &staff),
            // A string serde_json cannot read (a lone surrogate): the decoder rejects it.
            Err(_) => Cow::Borrowed("\"\\ud800\""),
        },
        // `null` (absent), `true`, `false` name nobody.
        Some(b'n' | b't' | b'f') => Cow::Owned(raw.to_string()),
        Some(b'[') => Cow::Borrowed("[]"),
        Some(b'{') => Cow::Borrowed("{}"),
        // A number: of the same kind, so that the rejection reads the same.
        _ if raw.bytes().any(|byte| matches!(byte, b'.' | b'e' | b'E')) => Cow::Borrowed("0.0"),
        _ => Cow::Borrowed("0"),
    }
}

/// The JSON string for the staff id `staff`: its hash, or a placeholder of the same fault.
fn hashed_text(hasher: &Hasher, staff: &str) -> Cow<'static, str> {
    match validate_ident(staff) {
        Ok(()) => Cow::Owned(hasher.quoted(staff)),
        Err(InvalidId::Empty) => Cow::Borrowed("\"\""),
        Err(InvalidId::TooLong) => Cow::Borrowed(TOO_LONG_PLACEHOLDER),
        Err(InvalidId::BadCharacter | InvalidId::ControlCharacter) => Cow::Borrowed("\"?\""),
    }
}

/// 65 characters: longer than an identifier may be.
const TOO_LONG_PLACEHOLDER: &str = "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"";

/// A JSON object's top-level members, as positions in the payload.
struct Object {
    /// The position of the opening brace.
    open: usize,
    members: Vec<Member>,
}

struct Member {
    is_staff: bool,
    /// The value's bytes (`value.0..value.1`), without surrounding whitespace.
    value: (usize, usize),
}

impl Object {
    /// The members of `payload` when it is one JSON object.
    fn read(payload: &[u8]) -> Option<Object> {
        std::str::from_utf8(payload).ok()?;
        let open = payload.iter().position(|byte| !byte.is_ascii_whitespace())?;
        if payload[open] != b'{' {
            return None;
        }
        // What publishers send, in one pass over the bytes; the rest through serde_json.
        if let Some(scanned) = crate::event::object_members(payload) {
            let members = scanned.into_iter().map(|(is_staff, start, end)| Member { is_staff, value: (start, end) });
            return Some(Object { open, members: members.collect() });
        }
        let Members(raw) = serde_json::from_slice::<Members<'_>>(payload).ok()?;
        let base = payload.as_ptr() as usize;
        let members = raw
            .into_iter()
            .map(|(is_staff, value)| {
                // Borrowed from `payload` (`from_slice` reads raw values in place).
                let start = (value.get().as_ptr() as usize).checked_sub(base)?;
                let end = start + value.get().len();
                (end <= payload.len()).then_some(Member { is_staff, value: (start, end) })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Object { open, members })
    }

    /// The payload with each staff value replaced; everything else as it was.
    fn replace_staff(&self, payload: &[u8], replace: impl Fn(&str) -> Cow<'static, str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 32);
        let mut copied = 0;
        for member in self.members.iter().filter(|member| member.is_staff) {
            let (start, end) = member.value;
            out.extend_from_slice(&payload[copied..start]);
            // The raw value is a slice of text serde_json has checked.
            let raw = std::str::from_utf8(&payload[start..end]).unwrap_or("null");
            out.extend_from_slice(replace(raw).as_bytes());
            copied = end;
        }
        out.extend_from_slice(&payload[copied..]);
        out
    }

    /// The payload without its staff members; the others' bytes as they were.
    fn without_staff(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len());
        out.extend_from_slice(&payload[..=self.open]);
        // Where the next member's text starts: after the brace, then after each comma.
        let mut member_start = self.open + 1;
        let mut kept = 0;
        let mut last_end = self.open + 1;
        for member in &self.members {
            let (_, end) = member.value;
            if !member.is_staff {
                if kept > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&payload[member_start..end]);
                kept += 1;
            }
            last_end = end;
            let after = end + payload[end..].iter().take_while(|byte| is_json_whitespace(**byte)).count();
            member_start = after + 1;
        }
        // The whitespace and the closing brace after the last member.
        out.extend_from_slice(&payload[last_end..]);
        out
    }
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\t' | b'\r')
}

/// A JSON object's members in order: whether the key is `staff`, and the raw value.
struct Members<'a>(Vec<(bool, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((StaffKeyName(is_staff), value)) = map.next_entry::<StaffKeyName, &'de RawValue>()? {
                    members.push((is_staff, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A member's key, read only for whether it is `staff` (escapes decoded).
struct StaffKeyName(bool);

impl<'de> Deserialize<'de> for StaffKeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = StaffKeyName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<StaffKeyName, E> {
                Ok(StaffKeyName(key == "staff"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OfficeId;

    const KEY: &[u8] = b"0123456789abcdef-office-key";

    fn hashing() -> StaffPrivacy {
        StaffPrivacy::hashing(KEY)
    }

    fn dropping() -> StaffPrivacy {
        StaffPrivacy { max_payload_bytes: 16 * 1024, ..StaffPrivacy::dropping() }
    }

    fn text(privacy: &StaffPrivacy, payload: &str) -> String {
        String::from_utf8(privacy.rewrite(payload.as_bytes()).into_owned()).unwrap()
    }

    fn hash_of(staff: &str) -> String {
        staff_hash(&hmac::Key::new(hmac::HMAC_SHA256, KEY), staff)
    }

    /// What the decoder makes of a payload: the staff, or the reason and detail.
    fn verdict(payload: &[u8]) -> Result<Option<String>, (RejectReason, String)> {
        let office = OfficeId::parse("o1").unwrap();
        let limits = DecodeLimits { min_timestamp: Millis(-1), ..DecodeLimits::default() };
        decode(payload, Some(&office), Millis(1_800_000_000_000), &limits)
            .map(|event| event.staff.map(|staff| staff.as_str().to_string()))
            .map_err(|rejection| (rejection.reason, rejection.detail))
    }

    #[test]
    fn the_hash_is_the_documented_hmac_truncated_to_16_hex_digits() {
        // RFC 4231, test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(staff_hash(&key, "what do ya want for nothing?"), "s-5bdcc146bf60754e");
        let hash = hash_of("budi-santoso");
        assert_eq!(hash.len(), 18);
        assert!(validate_ident(&hash).is_ok());
        assert_eq!(hash, hash_of("budi-santoso"), "the same key and id give the same hash");
        assert_ne!(hash, hash_of("budi-santosa"));
    }

    #[test]
    fn a_remembered_hash_is_the_computed_one_and_the_memory_stays_bounded() {
        let privacy = hashing();
        let Action::Hash(hasher) = &privacy.action else { panic!("hash mode") };
        for round in 0..2 {
            for n in 0..MAX_KNOWN_HASHES + 10 {
                let staff = format!("staff-{n}");
                assert_eq!(hasher.quoted(&staff), format!("\"{}\"", hash_of(&staff)), "round {round}");
            }
        }
        assert!(hasher.known.lock().unwrap().len() <= MAX_KNOWN_HASHES);
    }

    #[test]
    fn keep_and_payloads_without_staff_are_passed_on_untouched() {
        let payload = br#"{"type":"called","ts":1,"ticket":"A1","counter":"c1","staff":"budi"}"#;
        assert!(matches!(StaffPrivacy::keep().rewrite(payload), Cow::Borrowed(_)));
        let without = br#"{"type":"called","ts":1,"ticket":"A\"1","counter":"c1"}"#;
        assert!(matches!(hashing().rewrite(without), Cow::Borrowed(_)));
        assert!(matches!(dropping().rewrite(without), Cow::Borrowed(_)));
        // Named elsewhere than as a key: looked at, and left as it was.
        let ticket_named_staff = br#"{"type":"issued","ts":1,"ticket":"staff","service":"ktp"}"#;
        assert!(matches!(hashing().rewrite(ticket_named_staff), Cow::Borrowed(_)));
    }

    #[test]
    fn hash_replaces_the_value_and_nothing_else() {
        let payload = r#" { "type":"called", "staff" : "budi-santoso" ,"ts":1,"ticket":"A1","counter":"c1"} "#;
        let expected = format!(
            r#" {{ "type":"called", "staff" : "{}" ,"ts":1,"ticket":"A1","counter":"c1"}} "#,
            hash_of("budi-santoso")
        );
        assert_eq!(text(&hashing(), payload), expected);
        assert_eq!(verdict(expected.as_bytes()), Ok(Some(hash_of("budi-santoso"))));
        // Deterministic: a redelivery rewrites to the same bytes.
        assert_eq!(text(&hashing(), payload), text(&hashing(), payload));
    }

    #[test]
    fn an_escaped_staff_key_or_value_is_rewritten_too() {
        let payload = r#"{"type":"called","ts":1,"ticket":"A1","counter":"c1","st\u0061ff":"budi\u002dsantoso"}"#;
        let rewritten = text(&hashing(), payload);
        assert!(!rewritten.contains("budi"), "{rewritten}");
        assert_eq!(verdict(rewritten.as_bytes()), Ok(Some(hash_of("budi-santoso"))));
        let dropped = text(&dropping(), payload);
        assert_eq!(dropped, r#"{"type":"called","ts":1,"ticket":"A1","counter":"c1"}"#);
    }

    #[test]
    fn drop_removes_every_staff_member_wherever_it_stands() {
        for (payload, expected) in [
            (r#"{"staff":"budi","type":"heartbeat","ts":1}"#, r#"{"type":"heartbeat","ts":1}"#),
            (r#"{"type":"heartbeat","staff":"budi","ts":1}"#, r#"{"type":"heartbeat","ts":1}"#),
            (r#"{"type":"heartbeat","ts":1,"staff":"budi"}"#, r#"{"type":"heartbeat","ts":1}"#),
            (r#"{ "staff" : "budi" }"#, "{ }"),
            (r#"{"staff":"a","staff":"b","type":"heartbeat","ts":1}"#, r#"{"type":"heartbeat","ts":1}"#),
            (r#"{"staff":7,"type":"heartbeat","ts":1,"staff":null}"#, r#"{"type":"heartbeat","ts":1}"#),
            (
                "{\n \"type\": \"heartbeat\",\n \"staff\": \"budi\",\n \"ts\": 1\n}\n",
                "{\n \"type\": \"heartbeat\",\n \"ts\": 1\n}\n",
            ),
        ] {
            assert_eq!(text(&dropping(), payload), expected, "{payload}");
        }
        // As if never sent: an invalid staff no longer rejects the event.
        let invalid = text(&dropping(), r#"{"type":"heartbeat","ts":1,"staff":"Budi Santoso"}"#);
        assert_eq!(verdict(invalid.as_bytes()), Ok(None));
    }

    #[test]
    fn hash_rejects_what_keep_rejects_for_the_same_reason_without_the_value() {
        let long = "budi-santoso-".repeat(6);
        let cases = [
            r#""Budi Santoso""#.to_string(),
            format!("{long:?}"),
            r#""""#.to_string(),
            "198705122010011001".to_string(),
            "-1.5e3".to_string(),
            r#"["budi"]"#.to_string(),
            r#"{"name":"budi"}"#.to_string(),
            "true".to_string(),
        ];
        for staff in cases {
            let payload = format!(r#"{{"type":"called","ts":1,"ticket":"A1","counter":"c1","staff":{staff}}}"#);
            let kept = verdict(payload.as_bytes());
            let rewritten = text(&hashing(), &payload);
            let hashed = verdict(rewritten.as_bytes());
            let (kept_reason, hashed_reason) = (kept.clone().unwrap_err().0, hashed.clone().unwrap_err());
            assert_eq!(kept_reason, hashed_reason.0, "{payload} -> {rewritten}");
            for name in ["budi", "Budi", "1987", "1.5"] {
                assert!(!rewritten.contains(name) && !hashed_reason.1.contains(name), "{rewritten}: {hashed:?}");
            }
        }
        // Null counts as absent in every mode.
        let null = r#"{"type":"heartbeat","ts":1,"staff":null}"#;
        assert_eq!(text(&hashing(), null), null);
    }

    #[test]
    fn a_payload_that_is_no_object_keeps_its_reason_but_not_its_content() {
        for payload in [
            r#"{"type":"called","staff":"budi-santoso","#.as_bytes(),
            br#"["staff","budi-santoso"]"#,
            b"{\"staff\":\"budi-santoso\",\"x\":\"\xff\"}",
            br#"not json "staff" budi-santoso"#,
        ] {
            let rewritten = hashing().rewrite(payload).into_owned();
            assert!(memchr::memmem::find(&rewritten, b"budi").is_none());
            let (kept, hashed) = (verdict(payload).unwrap_err(), verdict(&rewritten).unwrap_err());
            assert_eq!(kept.0, hashed.0, "{:?}", String::from_utf8_lossy(payload));
            let dropped = dropping().rewrite(payload).into_owned();
            assert_eq!(hashed.0, verdict(&dropped).unwrap_err().0);
        }
        let oversized = format!(r#"{{"staff":"budi-santoso","pad":"{}"}}"#, "x".repeat(17 * 1024));
        let privacy = StaffPrivacy { max_payload_bytes: 16 * 1024, ..hashing() };
        let rewritten = privacy.rewrite(oversized.as_bytes());
        assert_eq!(verdict(oversized.as_bytes()).unwrap_err(), verdict(&rewritten).unwrap_err(), "same detail too");
        assert!(memchr::memmem::find(&rewritten, b"budi").is_none());
    }

    proptest::proptest! {
        #[test]
        fn the_rewrite_never_panics_and_keeps_the_verdict_for_hash(
            payload in proptest::collection::vec(proptest::sample::select(
                b"{}[]\",:\\u0 staffbudi-1.5ntrue".to_vec()), 0..60),
        ) {
            let mut with_key = b"{\"staff\":".to_vec();
            with_key.extend_from_slice(&payload);
            for payload in [payload, with_key] {
                let rewritten = hashing().rewrite(&payload).into_owned();
                let kept = verdict(&payload);
                let hashed = verdict(&rewritten);
                proptest::prop_assert_eq!(kept.is_ok(), hashed.is_ok(), "{:?} -> {:?}", String::from_utf8_lossy(&payload), String::from_utf8_lossy(&rewritten));
                if let (Err(kept), Err(hashed)) = (kept, hashed) {
                    proptest::prop_assert_eq!(kept.0, hashed.0);
                }
                let _ = dropping().rewrite(&payload);
            }
        }
    }
}
