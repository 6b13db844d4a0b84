//! Decoding one MQTT payload into a validated [`Event`].
//!
//! Owns the wire format. A payload either becomes an `Event` whose every field
//! obeys the contract (identifiers valid, required fields present, timestamp
//! parsed) or a [`Rejection`] with exactly one [`RejectReason`]. Decoding never
//! panics and never looks at tracker state.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::ids::{CounterId, IdCache, InvalidId, OfficeId, ServiceId, StaffId, TicketNo};
use crate::time::{parse_rfc3339, Millis};

mod scan;

pub(crate) use scan::members as object_members;

/// The closed set of event types ticket machines publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Issued,
    Called,
    Recalled,
    Started,
    Finished,
    NoShow,
    Cancelled,
    Transferred,
    CounterOpened,
    CounterClosed,
    Feedback,
    Heartbeat,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        EventType::Issued,
        EventType::Called,
        EventType::Recalled,
        EventType::Started,
        EventType::Finished,
        EventType::NoShow,
        EventType::Cancelled,
        EventType::Transferred,
        EventType::CounterOpened,
        EventType::CounterClosed,
        EventType::Feedback,
        EventType::Heartbeat,
    ];

    /// What the type requires and means: the one table the decoder
    /// ([`decode`]), the tracker's snapshot reader and the tracker read.
    /// Adding a variant fails to compile here first.
    pub const fn shape(self) -> Shape {
        use Field::{Counter, Rating, Service, Ticket, ToService};
        // Ranks: `issued` < `called` < `recalled` < `started` < closing
        // events at equal timestamps; a counter opens before and closes after
        // the tickets it handles at the same millisecond.
        let (name, requires, reads_ticket, closes_segment, rank): (_, &'static [Field], _, _, _) = match self {
            EventType::Issued => ("issued", &[Ticket, Service], true, false, 1),
            EventType::Called => ("called", &[Ticket, Counter], true, false, 2),
            EventType::Recalled => ("recalled", &[Ticket, Counter], true, false, 3),
            EventType::Started => ("started", &[Ticket, Counter], true, false, 4),
            EventType::Finished => ("finished", &[Ticket, Counter], true, true, 5),
            EventType::NoShow => ("no_show", &[Ticket, Counter], true, true, 5),
            EventType::Cancelled => ("cancelled", &[Ticket], true, true, 5),
            EventType::Transferred => ("transferred", &[Ticket, Counter, ToService], true, true, 5),
            EventType::CounterOpened => ("counter_opened", &[Counter], false, false, 0),
            EventType::CounterClosed => ("counter_closed", &[Counter], false, false, 7),
            // Feedback may name the ticket it rates, without requiring it.
            EventType::Feedback => ("feedback", &[Rating], true, false, 6),
            EventType::Heartbeat => ("heartbeat", &[], false, false, 6),
        };
        Shape { name, requires, reads_ticket, closes_segment, rank }
    }

    pub fn as_str(self) -> &'static str {
        self.shape().name
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Events that belong to a ticket and so require `ticket`.
    pub fn needs_ticket(self) -> bool {
        self.requires(Field::Ticket)
    }

    pub fn needs_counter(self) -> bool {
        self.requires(Field::Counter)
    }

    fn requires(self, field: Field) -> bool {
        let requires = self.shape().requires;
        requires.contains(&field)
    }

    /// Events that end a ticket's segment.
    pub fn is_closing(self) -> bool {
        self.shape().closes_segment
    }

    /// Position among events of equal timestamp (see [`EventType::shape`]).
    pub fn rank(self) -> u8 {
        self.shape().rank
    }
}

/// What one event type requires and means ([`EventType::shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The type's name on the wire.
    pub name: &'static str,
    /// The fields a message of this type must carry, in the order a missing
    /// one is named.
    pub requires: &'static [Field],
    /// Whether `ticket` means something for this type (ticket events and
    /// feedback); for the others it is ignored like an unknown field.
    pub reads_ticket: bool,
    /// Whether the event ends its ticket's segment.
    pub closes_segment: bool,
    /// Position among events of equal timestamp.
    pub rank: u8,
}

/// An optional field of [`Event`] that a type may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ticket,
    Service,
    Counter,
    ToService,
    Rating,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Ticket => "ticket",
            Field::Service => "service",
            Field::Counter => "counter",
            Field::ToService => "to_service",
            Field::Rating => "rating",
        }
    }
}

impl Shape {
    /// The first required field that `present` says is absent.
    pub fn first_missing(&self, present: impl Fn(Field) -> bool) -> Option<Field> {
        self.requires.iter().copied().find(|field| !present(*field))
    }
}

impl Event {
    /// The first field its type requires that it lacks.
    pub fn missing_field(&self) -> Option<Field> {
        self.kind.shape().first_missing(|field| match field {
            Field::Ticket => self.ticket.is_some(),
            Field::Service => self.service.is_some(),
            Field::Counter => self.counter.is_some(),
            Field::ToService => self.to_service.is_some(),
            Field::Rating => self.rating.is_some(),
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated event. Fields required by its type are guaranteed `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub office: OfficeId,
    pub kind: EventType,
    pub ts: Millis,
    /// Inline up to 24 bytes (publishers' ids mostly are), so that most
    /// events need no allocation for it.
    pub id: Option<CompactString>,
    pub ticket: Option<TicketNo>,
    pub service: Option<ServiceId>,
    pub counter: Option<CounterId>,
    pub to_service: Option<ServiceId>,
    pub staff: Option<StaffId>,
    pub rating: Option<u8>,
}

/// The reasons a message is rejected. Their names are the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MalformedJson,
    NotAnObject,
    UnknownType,
    MissingField,
    InvalidTimestamp,
    FutureTimestamp,
    InvalidIdentifier,
    InvalidValue,
    OfficeMismatch,
    Oversized,
    /// The office is not in the config and `offices.only_configured` is set.
    UnknownOffice,
    /// One of the `[limits]`: a new office, service, counter, staff id or
    /// open ticket beyond its limit, or more messages than the office's rate.
    CardinalityLimit,
    /// The topic matches none of `mqtt.topics` (a filter removed from the
    /// config, still subscribed; a subscription made by hand).
    UnexpectedTopic,
}

impl RejectReason {
    pub const ALL: [RejectReason; 13] = [
        RejectReason::MalformedJson,
        RejectReason::NotAnObject,
        RejectReason::UnknownType,
        RejectReason::MissingField,
        RejectReason::InvalidTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::InvalidIdentifier,
        RejectReason::InvalidValue,
        RejectReason::OfficeMismatch,
        RejectReason::Oversized,
        RejectReason::UnknownOffice,
        RejectReason::CardinalityLimit,
        RejectReason::UnexpectedTopic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::InvalidIdentifier => "invalid_identifier",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::OfficeMismatch => "office_mismatch",
            RejectReason::Oversized => "oversized",
            RejectReason::UnknownOffice => "unknown_office",
            RejectReason::CardinalityLimit => "cardinality_limit",
            RejectReason::UnexpectedTopic => "unexpected_topic",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the reason, a human detail, and what could be salvaged
/// for echoing back to the publisher (its office and `id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    pub office: Option<OfficeId>,
    pub id: Option<String>,
}

/// Limits the decoder enforces, from `[mqtt]` and `[tracking]`.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_payload_bytes: usize,
    pub max_future_skew_ms: i64,
    /// Timestamps must be strictly after this (`tracking.min_timestamp`).
    pub min_timestamp: Millis,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        let tracking = crate::config::TrackingConfig::default();
        DecodeLimits {
            max_payload_bytes: 16 * 1024,
            max_future_skew_ms: crate::time::duration_ms(tracking.max_future_skew),
            min_timestamp: tracking.min_timestamp,
        }
    }
}

/// Maximum length, in characters, of an event `id`.
pub const MAX_EVENT_ID_CHARS: usize = 128;

/// Decodes one payload.
///
/// `topic_office` is the office named by the topic (`None` when the filter
/// has no `+`, in which case the payload must carry `office`). `wall_now` is
/// the receiver's wall clock, used only for the `future_timestamp` guard.
pub fn decode(
    payload: &[u8],
    topic_office: Option<&OfficeId>,
    wall_now: Millis,
    limits: &DecodeLimits,
) -> Result<Event, Rejection> {
    decode_ids(payload, topic_office, wall_now, limits, Ids::Fresh)
}

/// [`decode`], sharing identifiers already seen through `ids` rather than
/// allocating them again (what a long-running pipeline uses).
pub fn decode_with(
    payload: &[u8],
    topic_office: Option<&OfficeId>,
    wall_now: Millis,
    limits: &DecodeLimits,
    ids: &mut IdCache,
) -> Result<Event, Rejection> {
    decode_ids(payload, topic_office, wall_now, limits, Ids::Cached(ids))
}

/// Where identifiers come from: parsed afresh, or shared through a cache.
enum Ids<'a> {
    Fresh,
    Cached(&'a mut IdCache),
}

impl Ids<'_> {
    fn office(&mut self, text: &str) -> Result<OfficeId, InvalidId> {
        match self {
            Ids::Fresh => OfficeId::parse(text),
            Ids::Cached(cache) => cache.offices.get(text, OfficeId::parse),
        }
    }

    fn service(&mut self, text: &str) -> Result<ServiceId, InvalidId> {
        match self {
            Ids::Fresh => ServiceId::parse(text),
            Ids::Cached(cache) => cache.services.get(text, ServiceId::parse),
        }
    }

    fn counter(&mut self, text: &str) -> Result<CounterId, InvalidId> {
        match self {
            Ids::Fresh => CounterId::parse(text),
            Ids::Cached(cache) => cache.counters.get(text, CounterId::parse),
        }
    }

    fn staff(&mut self, text: &str) -> Result<StaffId, InvalidId> {
        match self {
            Ids::Fresh => StaffId::parse(text),
            Ids::Cached(cache) => cache.staff.get(text, StaffId::parse),
        }
    }
}

fn decode_ids(
    payload: &[u8],
    topic_office: Option<&OfficeId>,
    wall_now: Millis,
    limits: &DecodeLimits,
    mut ids: Ids<'_>,
) -> Result<Event, Rejection> {
    let from_topic = Known { office: topic_office, id: None };
    let raw = read_raw(payload, limits).map_err(|refusal| from_topic.reject(refusal))?;
    // The id is checked first so that every later rejection can echo it.
    let id = checked_id(raw.id.as_deref()).map_err(|refusal| from_topic.reject(refusal))?;
    let with_id = Known { office: topic_office, id };
    let office =
        decode_office(raw.office.as_deref(), topic_office, &mut ids).map_err(|refusal| with_id.reject(refusal))?;
    let known = Known { office: Some(&office), id };
    let kind = decode_kind(raw.kind.as_deref()).map_err(|refusal| known.reject(refusal))?;
    let ts = decode_ts(raw.ts.as_ref(), wall_now, limits).map_err(|refusal| known.reject(refusal))?;
    let fields = decode_fields(&raw, kind, &mut ids).map_err(|refusal| known.reject(refusal))?;
    fields.check_required(kind).map_err(|refusal| known.reject(refusal))?;
    let Fields { ticket, service, counter, to_service, staff, rating } = fields;
    Ok(Event { office, kind, ts, id: id.map(CompactString::new), ticket, service, counter, to_service, staff, rating })
}

/// Why a payload is refused, before the office and id known by then are added.
type Refusal = (RejectReason, String);

/// What a rejection tells of its message besides the reason: the office and
/// the id, as far as they were decoded.
struct Known<'a> {
    office: Option<&'a OfficeId>,
    id: Option<&'a str>,
}

impl Known<'_> {
    fn reject(&self, (reason, detail): Refusal) -> Rejection {
        Rejection { reason, detail, office: self.office.cloned(), id: self.id.map(str::to_owned) }
    }
}

/// The fields whose use depends on the event type, decoded.
struct Fields {
    ticket: Option<TicketNo>,
    service: Option<ServiceId>,
    counter: Option<CounterId>,
    to_service: Option<ServiceId>,
    staff: Option<StaffId>,
    rating: Option<u8>,
}

impl Fields {
    /// Every field the event type requires is present.
    fn check_required(&self, kind: EventType) -> Result<(), Refusal> {
        let present = |field: Field| match field {
            Field::Ticket => self.ticket.is_some(),
            Field::Service => self.service.is_some(),
            Field::Counter => self.counter.is_some(),
            Field::ToService => self.to_service.is_some(),
            Field::Rating => self.rating.is_some(),
        };
        match kind.shape().first_missing(present) {
            Some(field) => Err((RejectReason::MissingField, format!("{}: required for {kind}", field.name()))),
            None => Ok(()),
        }
    }
}

/// The payload's fields as JSON gives them: within the size limit, a JSON
/// object, read by the scanner or else by serde_json.
fn read_raw<'a>(payload: &'a [u8], limits: &DecodeLimits) -> Result<RawEvent<'a>, Refusal> {
    if payload.len() > limits.max_payload_bytes {
        return Err((RejectReason::Oversized, format!("{} bytes, limit {}", payload.len(), limits.max_payload_bytes)));
    }
    let first_byte = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first_byte != Some(&b'{') {
        if let Err(error) = std::str::from_utf8(payload) {
            return Err((RejectReason::MalformedJson, not_utf8(error)));
        }
        // A valid JSON document that is not an object, or no JSON at all.
        return Err(match serde_json::from_slice::<de::IgnoredAny>(payload) {
            Ok(_) => (RejectReason::NotAnObject, "payload is not a JSON object".into()),
            Err(error) => (RejectReason::MalformedJson, error.to_string()),
        });
    }
    // The scanner takes what publishers send; serde_json decides the rest,
    // and words every rejection.
    let scanned = match scan::scan(payload) {
        Some(raw) => Ok(raw),
        None => {
            // serde_json does not check the strings it ignores, and the wire
            // format is UTF-8 throughout (the scanner checked it already).
            if let Err(error) = std::str::from_utf8(payload) {
                return Err((RejectReason::MalformedJson, not_utf8(error)));
            }
            serde_json::from_slice::<RawEvent>(payload)
        }
    };
    scanned.map_err(|error| {
        let reason = match error.classify() {
            serde_json::error::Category::Data => RejectReason::InvalidValue,
            _ => RejectReason::MalformedJson,
        };
        (reason, error.to_string())
    })
}

/// The event's id, if any, within its length limit.
fn checked_id(id: Option<&str>) -> Result<Option<&str>, Refusal> {
    match id {
        Some(id) if id.len() > MAX_EVENT_ID_CHARS && id.chars().count() > MAX_EVENT_ID_CHARS => {
            Err((RejectReason::InvalidValue, format!("id: longer than {MAX_EVENT_ID_CHARS} characters")))
        }
        id => Ok(id),
    }
}

/// The payload's office, which must be the topic's when both name one.
fn decode_office(
    payload_office: Option<&str>,
    topic_office: Option<&OfficeId>,
    ids: &mut Ids<'_>,
) -> Result<OfficeId, Refusal> {
    match (payload_office, topic_office) {
        (Some(text), topic) => {
            let office = ids.office(text).map_err(|e| (RejectReason::InvalidIdentifier, format!("office: {e}")))?;
            if let Some(topic) = topic {
                if *topic != office {
                    return Err((
                        RejectReason::OfficeMismatch,
                        format!("payload office {office:?} differs from topic office {topic:?}"),
                    ));
                }
            }
            Ok(office)
        }
        (None, Some(topic)) => Ok(topic.clone()),
        (None, None) => Err((RejectReason::MissingField, "office: required by this topic".into())),
    }
}

fn decode_kind(kind_text: Option<&str>) -> Result<EventType, Refusal> {
    let kind_text = kind_text.ok_or_else(|| (RejectReason::MissingField, "type".into()))?;
    EventType::parse(kind_text).ok_or_else(|| (RejectReason::UnknownType, format!("type {kind_text:?}")))
}

/// The event's time, within the accepted range and not too far ahead of `wall_now`.
fn decode_ts(ts: Option<&RawTs<'_>>, wall_now: Millis, limits: &DecodeLimits) -> Result<Millis, Refusal> {
    let ts = match ts {
        None => return Err((RejectReason::MissingField, "ts".into())),
        Some(RawTs::Invalid(detail)) => return Err((RejectReason::InvalidTimestamp, detail.clone())),
        Some(RawTs::Millis(ms)) => Millis(*ms),
        Some(RawTs::Text(text)) => {
            parse_rfc3339(text).ok_or_else(|| (RejectReason::InvalidTimestamp, format!("ts {text:?}")))?
        }
    };
    // One accepted range for text and integer timestamps: a device whose
    // clock was never set sends 0001-01-01, 1970 or 2000-01-01, and times
    // computed from such a ts (deadlines, expiries) would fall outside what
    // InfluxDB can store.
    if ts <= limits.min_timestamp {
        return Err((
            RejectReason::InvalidTimestamp,
            format!("ts {ts} is not after tracking.min_timestamp {}", limits.min_timestamp),
        ));
    }
    if ts.since(wall_now) > limits.max_future_skew_ms {
        return Err((
            RejectReason::FutureTimestamp,
            format!("ts {ts} is more than {} ms ahead of {wall_now}", limits.max_future_skew_ms),
        ));
    }
    Ok(ts)
}

/// The identifiers, the ticket and the rating, each checked as far as it is present.
fn decode_fields(raw: &RawEvent<'_>, kind: EventType, ids: &mut Ids<'_>) -> Result<Fields, Refusal> {
    let ident_error = |field: &str, error: InvalidId| (RejectReason::InvalidIdentifier, format!("{field}: {error}"));
    // Only ticket events and feedback use `ticket`; for the others (a
    // vendor that fills every field) it is ignored like any unknown field,
    // even when malformed, so that their own meaning is not lost.
    let ticket = match raw.ticket.as_ref().filter(|_| kind.shape().reads_ticket) {
        Some(AnyValue::Text(text)) => Some(TicketNo::parse(text).map_err(|e| ident_error("ticket", e))?),
        Some(AnyValue::Other(what)) => {
            return Err((RejectReason::InvalidValue, format!("ticket: expected a string, found {what}")))
        }
        None => None,
    };
    let service =
        raw.service.as_deref().map(|text| ids.service(text)).transpose().map_err(|e| ident_error("service", e))?;
    let counter =
        raw.counter.as_deref().map(|text| ids.counter(text)).transpose().map_err(|e| ident_error("counter", e))?;
    let to_service = raw
        .to_service
        .as_deref()
        .map(|text| ids.service(text))
        .transpose()
        .map_err(|e| ident_error("to_service", e))?;
    let staff = raw.staff.as_deref().map(|text| ids.staff(text)).transpose().map_err(|e| ident_error("staff", e))?;
    let rating = match raw.rating {
        None => None,
        Some(value) if (1..=5).contains(&value) => Some(value as u8),
        Some(value) => return Err((RejectReason::InvalidValue, format!("rating {value}: not 1-5"))),
    };
    Ok(Fields { ticket, service, counter, to_service, staff, rating })
}

/// The payload as JSON gives it, borrowing strings where it can. Unknown
/// fields are ignored; `null` counts as absent.
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    office: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ticket: Option<AnyValue<'a>>,
    #[serde(borrow)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    counter: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to_service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    staff: Option<Cow<'a, str>>,
    rating: Option<i64>,
}

/// `ts` is either RFC 3339 text or integer epoch milliseconds; anything else
/// is kept as `Invalid` so it is rejected as `invalid_timestamp`, not as a
/// generic type error.
#[cfg_attr(test, derive(Debug, PartialEq))]
enum RawTs<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
    Invalid(String),
}

/// A field that is checked only for some event types: any JSON value, kept
/// as text when it is a string.
#[cfg_attr(test, derive(Debug, PartialEq))]
enum AnyValue<'a> {
    Text(Cow<'a, str>),
    /// What it was instead of a string, for the rejection's detail.
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for AnyValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyVisitor;
        impl<'de> Visitor<'de> for AnyVisitor {
            type Value = AnyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(AnyValue::Text(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(AnyValue::Text(Cow::Owned(value.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(AnyValue::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(AnyValue::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(AnyValue::Other("a number"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(AnyValue::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AnyValue::Other("null"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(AnyValue::Other("an array"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(AnyValue::Other("an object"))
            }
        }
        deserializer.deserialize_any(AnyVisitor)
    }
}

/// Epoch milliseconds that are a timestamp at all: 1970 to the year 9999
/// (the accepted range, `DecodeLimits`, is narrower).
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl<'de> Visitor<'de> for TsVisitor {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                if (0..=MAX_EPOCH_MS).contains(&value) {
                    Ok(RawTs::Millis(value))
                } else {
                    Ok(RawTs::Invalid(format!("ts {value}: out of range")))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                match i64::try_from(value) {
                    Ok(value) => self.visit_i64(value),
                    Err(_) => Ok(RawTs::Invalid(format!("ts {value}: out of range"))),
                }
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Invalid(format!("ts {value}: not an integer")))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(RawTs::Invalid(format!("ts {value}: not a timestamp")))
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(value.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawTs::Invalid("ts: null".into()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawTs::Invalid("ts: an array".into()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(RawTs::Invalid("ts: an object".into()))
            }
        }
        deserializer.deserialize_any(TsVisitor)
    }
}

/// The rejection detail for a payload that is not UTF-8.
fn not_utf8(error: std::str::Utf8Error) -> String {
    format!("payload is not valid UTF-8 (invalid bytes at byte {})", error.valid_up_to())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn office() -> OfficeId {
        OfficeId::parse("mpp-1").unwrap()
    }

    /// Limits whose lower bound admits the small epoch values of the samples.
    fn test_limits() -> DecodeLimits {
        DecodeLimits { min_timestamp: Millis(-1), ..DecodeLimits::default() }
    }

    fn decode_text(text: &str) -> Result<Event, Rejection> {
        decode(text.as_bytes(), Some(&office()), Millis(1_800_000_000_000), &test_limits())
    }

    fn decode_default(text: &str) -> Result<Event, Rejection> {
        decode(text.as_bytes(), Some(&office()), Millis(1_800_000_000_000), &DecodeLimits::default())
    }

    #[test]
    fn timestamps_of_unset_device_clocks_are_invalid_as_text_and_as_integers() {
        for ts in [
            r#""0001-01-01T00:00:00Z""#,
            r#""1970-01-01T00:00:00Z""#,
            r#""2000-01-01T00:00:00+07:00""#,
            r#""2020-01-01T00:00:00Z""#,
            r#""2020-01-01T06:59:59+07:00""#,
            "0",
            "946684800000",
            "1577836800000",
        ] {
            let rejection = decode_default(&format!(r#"{{"type":"heartbeat","ts":{ts}}}"#)).unwrap_err();
            assert_eq!(rejection.reason, RejectReason::InvalidTimestamp, "{ts}");
        }
        assert_eq!(decode_default(r#"{"type":"heartbeat","ts":1577836800001}"#).unwrap().ts, Millis(1_577_836_800_001));
        assert!(decode_default(r#"{"type":"heartbeat","ts":"2020-01-01T00:00:00.001Z"}"#).is_ok());
        let lowered = DecodeLimits { min_timestamp: Millis(946_684_800_000), ..DecodeLimits::default() };
        let backfill = br#"{"type":"heartbeat","ts":"2015-06-01T08:00:00+07:00"}"#;
        assert!(decode(backfill, Some(&office()), Millis(1_800_000_000_000), &lowered).is_ok());
    }

    #[test]
    fn a_ticket_field_on_an_event_without_a_ticket_is_ignored_even_when_malformed() {
        for kind in ["counter_opened", "counter_closed", "heartbeat"] {
            for ticket in [r#""A1""#, "\"\"", "7", r#""A\u0007""#, "[1]", "{}", "true"] {
                let payload = format!(r#"{{"type":"{kind}","ts":1,"counter":"c1","ticket":{ticket}}}"#);
                let event = decode_text(&payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
                assert_eq!(event.ticket, None, "{payload}");
            }
        }
        let feedback = decode_text(r#"{"type":"feedback","ts":1,"rating":4,"ticket":"A1"}"#).unwrap();
        assert_eq!(feedback.ticket.unwrap().as_str(), "A1");
        assert_eq!(reason(r#"{"type":"feedback","ts":1,"rating":4,"ticket":7}"#), RejectReason::InvalidValue);
        assert_eq!(reason(r#"{"type":"feedback","ts":1,"rating":4,"ticket":""}"#), RejectReason::InvalidIdentifier);
    }

    fn reason(text: &str) -> RejectReason {
        decode_text(text).expect_err("should be rejected").reason
    }

    #[test]
    fn every_type_is_accepted_with_what_its_shape_requires_and_refused_without_each_of_it() {
        let value = |field: Field| match field {
            Field::Ticket => r#""ticket":"A1""#,
            Field::Service => r#""service":"ktp""#,
            Field::Counter => r#""counter":"c1""#,
            Field::ToService => r#""to_service":"kk""#,
            Field::Rating => r#""rating":4"#,
        };
        for kind in EventType::ALL {
            let shape = kind.shape();
            assert_eq!(EventType::parse(shape.name), Some(kind));
            let with = |fields: &[Field]| {
                let mut text = format!(r#"{{"type":"{}","ts":1"#, shape.name);
                fields.iter().for_each(|field| text.push_str(&format!(",{}", value(*field))));
                text + "}"
            };
            let event = decode_text(&with(shape.requires)).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(event.missing_field(), None, "{kind}");
            for dropped in shape.requires {
                let rest: Vec<Field> = shape.requires.iter().copied().filter(|field| field != dropped).collect();
                let rejection = decode_text(&with(&rest)).expect_err("a required field is missing");
                assert_eq!(rejection.reason, RejectReason::MissingField, "{kind} without {}", dropped.name());
                assert!(rejection.detail.starts_with(dropped.name()), "{kind}: {}", rejection.detail);
            }
        }
    }

    #[test]
    fn decodes_a_full_issued_event_with_offset_timestamp() {
        let event = decode_text(
            r#"{"type":"issued","ts":"2026-11-27T08:00:00.123456+07:00","ticket":"A-001","service":"ktp","id":"e1","extra":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(event.kind, EventType::Issued);
        assert_eq!(event.ts, Millis(1_795_741_200_123));
        assert_eq!(event.ticket.unwrap().as_str(), "A-001");
        assert_eq!(event.office, office());
        assert_eq!(event.id.as_deref(), Some("e1"));
    }

    #[test]
    fn epoch_milliseconds_and_zulu_agree() {
        let a = decode_text(r#"{"type":"heartbeat","ts":1795741200123}"#).unwrap();
        let b = decode_text(r#"{"type":"heartbeat","ts":"2026-11-27T01:00:00.123Z"}"#).unwrap();
        assert_eq!(a.ts, b.ts);
    }

    #[test]
    fn each_reason_is_reported() {
        assert_eq!(reason("{"), RejectReason::MalformedJson);
        assert_eq!(reason("\u{1}"), RejectReason::MalformedJson);
        assert_eq!(reason("[1]"), RejectReason::NotAnObject);
        assert_eq!(reason("42"), RejectReason::NotAnObject);
        assert_eq!(reason(r#"{"type":"teleported","ts":1}"#), RejectReason::UnknownType);
        assert_eq!(reason(r#"{"ts":1}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"type":"heartbeat"}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"type":"called","ts":1,"ticket":"A"}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"type":"issued","ts":1,"ticket":"A"}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":"yesterday"}"#), RejectReason::InvalidTimestamp);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00"}"#), RejectReason::InvalidTimestamp);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":1.5}"#), RejectReason::InvalidTimestamp);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":-5}"#), RejectReason::InvalidTimestamp);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":1800000400000}"#), RejectReason::FutureTimestamp);
        assert_eq!(
            reason(r#"{"type":"issued","ts":1,"ticket":"A","service":"k t p"}"#),
            RejectReason::InvalidIdentifier
        );
        assert_eq!(reason(r#"{"type":"issued","ts":1,"ticket":"","service":"ktp"}"#), RejectReason::InvalidIdentifier);
        assert_eq!(reason(r#"{"type":"feedback","ts":1,"rating":6}"#), RejectReason::InvalidValue);
        assert_eq!(reason(r#"{"type":"issued","ts":1,"ticket":7,"service":"ktp"}"#), RejectReason::InvalidValue);
        assert_eq!(reason(r#"{"type":"heartbeat","ts":1,"office":"other"}"#), RejectReason::OfficeMismatch);
        let oversized = format!(r#"{{"type":"heartbeat","ts":1,"pad":"{}"}}"#, "x".repeat(17 * 1024));
        assert_eq!(reason(&oversized), RejectReason::Oversized);
    }

    #[test]
    fn the_id_is_salvaged_for_echoing() {
        let rejection = decode_text(r#"{"type":"nope","ts":1,"id":"abc"}"#).unwrap_err();
        assert_eq!(rejection.id.as_deref(), Some("abc"));
        assert_eq!(rejection.office, Some(office()));
    }

    #[test]
    fn a_topic_without_office_needs_the_payload_to_name_it() {
        let limits = test_limits();
        let missing = decode(br#"{"type":"heartbeat","ts":1}"#, None, Millis(0), &limits).unwrap_err();
        assert_eq!(missing.reason, RejectReason::MissingField);
        let named = decode(br#"{"type":"heartbeat","ts":1,"office":"x"}"#, None, Millis(0), &limits).unwrap();
        assert_eq!(named.office.as_str(), "x");
    }

    #[test]
    fn null_fields_count_as_absent() {
        let event = decode_text(r#"{"type":"heartbeat","ts":1,"staff":null,"id":null}"#).unwrap();
        assert!(event.staff.is_none() && event.id.is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode(&payload, Some(&office()), Millis(1_800_000_000_000), &test_limits());
        }

        #[test]
        fn arbitrary_json_objects_are_decoded_or_rejected_with_a_reason(
            kind in "(issued|called|finished|feedback|nope)",
            ts in proptest::prop_oneof![proptest::num::i64::ANY.prop_map(|n| n.to_string()), "\"[0-9T:.+Z-]{0,30}\""],
            ticket in "\\PC{0,70}",
            counter in "[ -~]{0,70}",
            rating in proptest::num::i64::ANY,
        ) {
            let payload = serde_json::json!({
                "type": kind, "ticket": ticket, "counter": counter, "service": "ktp", "rating": rating,
                "to_service": "kk",
            }).to_string().replacen('{', &format!("{{\"ts\":{ts},"), 1);
            let limits = DecodeLimits::default();
            match decode(payload.as_bytes(), Some(&office()), Millis(1_800_000_000_000), &limits) {
                Ok(event) => {
                    proptest::prop_assert!(event.ticket.is_some() || kind == "feedback");
                    proptest::prop_assert!(event.ts > limits.min_timestamp);
                }
                Err(rejection) => proptest::prop_assert!(!rejection.detail.is_empty()),
            }
        }
    }
}
