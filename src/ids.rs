//! Identifiers that can only be built valid.
//!
//! Offices, services, counters and staff become InfluxDB tags, so they are
//! restricted to 1–64 characters of `A-Z a-z 0-9 _ . -`. Ticket numbers are
//! freer (any Unicode but control characters, 1–64 characters) because they
//! are only ever written as string fields.

use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid identifier or ticket number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("is empty")]
    Empty,
    #[error("is longer than 64 characters")]
    TooLong,
    #[error("contains a character other than A-Z a-z 0-9 _ . -")]
    BadCharacter,
    #[error("contains a control character")]
    ControlCharacter,
}

/// Maximum length, in characters, of identifiers and ticket numbers.
pub const MAX_ID_CHARS: usize = 64;

/// Checks the identifier rule shared by offices, services, counters and staff.
pub fn validate_ident(text: &str) -> Result<(), InvalidId> {
    if text.is_empty() {
        return Err(InvalidId::Empty);
    }
    // The alphabet is ASCII, so bytes are characters here.
    if text.len() > MAX_ID_CHARS {
        return Err(InvalidId::TooLong);
    }
    if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err(InvalidId::BadCharacter);
    }
    Ok(())
}

macro_rules! ident_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                validate_ident(text)?;
                Ok(Self(Arc::from(text)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as a tag: shares the string, allocates nothing.
            pub fn tag(&self) -> Arc<str> {
                self.0.clone()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        /// Through [`Self::parse`]: stored state (a snapshot) cannot make an invalid identifier.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(CheckedVisitor(Self::parse))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

ident_type!(
    /// An office (a service hall, a clinic): the unit whose tickets are tracked together.
    OfficeId
);
ident_type!(
    /// A service offered at an office (`ktp`, `sim`, `poli-umum`).
    ServiceId
);
ident_type!(
    /// A counter (loket) where tickets are called and served.
    CounterId
);
ident_type!(
    /// A member of staff at a counter.
    StaffId
);

/// Identifiers seen before, handed out again instead of validated and
/// allocated again: publishers repeat the same few offices, services,
/// counters and staff in every message. Bounded: a publisher inventing a
/// name per message only empties the cache now and then.
#[derive(Debug, Default)]
pub struct IdCache {
    pub(crate) offices: Interned<OfficeId>,
    pub(crate) services: Interned<ServiceId>,
    pub(crate) counters: Interned<CounterId>,
    pub(crate) staff: Interned<StaffId>,
}

/// Names of one kind kept by [`IdCache`].
#[derive(Debug)]
pub(crate) struct Interned<T> {
    known: hashbrown::HashMap<Box<str>, T>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned { known: hashbrown::HashMap::new() }
    }
}

/// How many names of one kind an [`IdCache`] keeps before starting afresh.
const MAX_INTERNED: usize = 4096;

impl<T: Clone> Interned<T> {
    /// The identifier for `text`, parsed (and kept) only the first time.
    pub(crate) fn get(&mut self, text: &str, parse: fn(&str) -> Result<T, InvalidId>) -> Result<T, InvalidId> {
        if let Some(id) = self.known.get(text) {
            return Ok(id.clone());
        }
        let id = parse(text)?;
        if self.known.len() >= MAX_INTERNED {
            self.known.clear();
        }
        self.known.insert(text.into(), id.clone());
        Ok(id)
    }
}

impl ServiceId {
    /// The service of a ticket no event has named a service for.
    pub fn unknown() -> ServiceId {
        ServiceId(Arc::from("unknown"))
    }
}

/// A ticket number as printed by the kiosk (`A-017`). Reused daily. Stored
/// inline (no allocation) up to 24 bytes, which covers real ticket numbers:
/// the tracker keeps one per open ticket.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketNo(compact_str::CompactString);

impl TicketNo {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if text.is_empty() {
            return Err(InvalidId::Empty);
        }
        // ASCII text (most ticket numbers) is checked byte by byte: its
        // characters are its bytes, and its control characters are ASCII's.
        if text.len() > MAX_ID_CHARS && text.chars().count() > MAX_ID_CHARS {
            return Err(InvalidId::TooLong);
        }
        let control = if text.is_ascii() {
            text.bytes().any(|byte| byte.is_ascii_control())
        } else {
            text.chars().any(char::is_control)
        };
        if control {
            return Err(InvalidId::ControlCharacter);
        }
        Ok(Self(compact_str::CompactString::from(text)))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl serde::Serialize for TicketNo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Through [`TicketNo::parse`]: stored state (a snapshot) cannot make an invalid ticket number.
impl<'de> serde::Deserialize<'de> for TicketNo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedVisitor(TicketNo::parse))
    }
}

/// Deserialises a string through a checked constructor, so a bad value is an error.
struct CheckedVisitor<T>(fn(&str) -> Result<T, InvalidId>);

impl<T> serde::de::Visitor<'_> for CheckedVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a valid identifier")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(|error| E::custom(format_args!("identifier {text:?} {error}")))
    }
}

impl fmt::Display for TicketNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TicketNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_cache_hands_out_the_same_identifier_and_still_rejects_bad_ones() {
        let mut cache = IdCache::default();
        let first = cache.services.get("ktp", ServiceId::parse).unwrap();
        let second = cache.services.get("ktp", ServiceId::parse).unwrap();
        assert!(Arc::ptr_eq(&first.0, &second.0), "shared, not allocated again");
        assert!(cache.services.get("k t p", ServiceId::parse).is_err());
        assert!(cache.offices.get("", OfficeId::parse).is_err());
        for n in 0..(MAX_INTERNED + 10) {
            cache.counters.get(&format!("c{n}"), CounterId::parse).unwrap();
        }
        assert!(cache.counters.known.len() <= MAX_INTERNED, "bounded");
    }
    use super::*;

    #[test]
    fn identifiers_accept_the_tag_alphabet_only() {
        assert!(OfficeId::parse("mpp-jakarta_01.a").is_ok());
        assert_eq!(OfficeId::parse(""), Err(InvalidId::Empty));
        assert_eq!(OfficeId::parse("a b"), Err(InvalidId::BadCharacter));
        assert_eq!(OfficeId::parse("a,b"), Err(InvalidId::BadCharacter));
        assert_eq!(OfficeId::parse(&"x".repeat(65)), Err(InvalidId::TooLong));
        assert!(OfficeId::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn stored_identifiers_are_checked_when_read_back() {
        let office = OfficeId::parse("o-1").unwrap();
        let bytes = postcard::to_allocvec(&office).unwrap();
        assert_eq!(postcard::from_bytes::<OfficeId>(&bytes).unwrap(), office);
        let bad = postcard::to_allocvec("o 1").unwrap();
        assert!(postcard::from_bytes::<OfficeId>(&bad).is_err());
        let ticket = TicketNo::parse("A-017 é").unwrap();
        let bytes = postcard::to_allocvec(&ticket).unwrap();
        assert_eq!(postcard::from_bytes::<TicketNo>(&bytes).unwrap(), ticket);
        let bad = postcard::to_allocvec("A\n1").unwrap();
        assert!(postcard::from_bytes::<TicketNo>(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn ticket_numbers_are_checked_character_by_character(text in "(\\PC|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]){0,70}") {
            let characters = text.chars().count();
            let expected = if text.is_empty() {
                Err(InvalidId::Empty)
            } else if characters > MAX_ID_CHARS {
                Err(InvalidId::TooLong)
            } else if text.chars().any(char::is_control) {
                Err(InvalidId::ControlCharacter)
            } else {
                Ok(())
            };
            proptest::prop_assert_eq!(TicketNo::parse(&text).map(drop), expected);
        }
    }

    #[test]
    fn tickets_allow_unicode_but_not_control_characters() {
        assert!(TicketNo::parse("A-017 \"é\\").is_ok());
        assert!(TicketNo::parse(&"é".repeat(64)).is_ok());
        assert_eq!(TicketNo::parse(&"é".repeat(65)), Err(InvalidId::TooLong));
        assert_eq!(TicketNo::parse("A\n1"), Err(InvalidId::ControlCharacter));
        assert_eq!(TicketNo::parse(""), Err(InvalidId::Empty));
    }
}
