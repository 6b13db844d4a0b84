//! The JSON Schema for vendors (`docs/event.schema.json`) and the decoder
//! (`src/event.rs`) must agree on which payloads are events.
//!
//! Every sample is checked both ways, and a rejected sample must be rejected
//! for the reason it is listed under, so that each sample tests the rule it
//! names. Left out, because a schema cannot express them:
//! - `oversized`: the payload's size in bytes depends on the configured limit;
//! - `future_timestamp`: depends on the receiver's clock (the decoder gets a
//!   wall clock far in the future here, so it never trips);
//! - the lower bound of `ts` (`tracking.min_timestamp`): configured, and for
//!   text with an offset not expressible as a pattern (the decoder gets a
//!   bound far in the past here; `src/event.rs` tests the bound itself);
//! - `office_mismatch`, and `office` missing on a topic without one: depend on
//!   the topic (samples have no `office` or the topic's `o1`);
//! - `malformed_json`: a validator needs parsed JSON to begin with;
//! - `1.0` or `1e3` for `ts` or `rating`: JSON Schema compares numbers by value,
//!   so they count as integers there (jsonschema accepts `"ts":1.0`), while
//!   the decoder wants an integer literal;
//! - a key that appears twice: parsed JSON keeps one of them.

use std::sync::OnceLock;

use queuewatch::event::{decode, DecodeLimits, EventType, RejectReason};
use queuewatch::ids::OfficeId;
use queuewatch::time::Millis;
use serde_json::{json, Value};

use Expected::{Accepted, Rejected};
use RejectReason::{InvalidIdentifier, InvalidTimestamp, InvalidValue, MissingField, NotAnObject, UnknownType};

const SCHEMA_TEXT: &str = include_str!("../docs/event.schema.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Accepted,
    Rejected(RejectReason),
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("docs/event.schema.json is not a valid schema: {error}");
    }
}

#[test]
fn the_schema_lists_exactly_the_event_types_of_the_decoder() {
    let schema = schema();
    let listed: Vec<&str> = schema["properties"]["type"]["enum"]
        .as_array()
        .expect("properties.type.enum is an array")
        .iter()
        .map(|kind| kind.as_str().expect("event types are strings"))
        .collect();
    let decoded: Vec<&str> = EventType::ALL.iter().map(|kind| kind.as_str()).collect();
    assert_eq!(listed, decoded);
}

#[test]
fn schema_and_decoder_agree_on_every_sample() {
    let disagreements: Vec<String> =
        samples().iter().filter_map(|(payload, expected)| check(payload, *expected).err()).collect();
    assert!(
        disagreements.is_empty(),
        "{} of {} samples disagree:\n{}",
        disagreements.len(),
        samples().len(),
        disagreements.join("\n")
    );
}

#[test]
fn each_field_required_by_a_type_is_required_by_both() {
    let mut disagreements = Vec::new();
    for kind in EventType::ALL {
        let payload = minimal_event(kind);
        if let Err(disagreement) = check(&payload.to_string(), Accepted) {
            disagreements.push(disagreement);
        }
        for field in payload.as_object().unwrap().keys() {
            let mut without = payload.clone();
            without.as_object_mut().unwrap().remove(field);
            if let Err(disagreement) = check(&without.to_string(), Rejected(MissingField)) {
                disagreements.push(disagreement);
            }
            let mut null = payload.clone();
            null[field] = Value::Null;
            if let Err(disagreement) = check(&null.to_string(), Rejected(MissingField)) {
                disagreements.push(disagreement);
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn the_samples_cover_every_type_and_every_reason_a_schema_can_express() {
    let samples = samples();
    for kind in EventType::ALL {
        let needle = format!(r#""type":"{kind}""#);
        assert!(
            samples.iter().any(|(payload, expected)| *expected == Accepted && payload.contains(&needle)),
            "no accepted sample of type {kind}"
        );
    }
    for reason in [NotAnObject, UnknownType, MissingField, InvalidTimestamp, InvalidIdentifier, InvalidValue] {
        assert!(samples.iter().any(|(_, expected)| *expected == Rejected(reason)), "no sample rejected as {reason}");
    }
}

/// The payloads, each with what the decoder must do with it.
fn samples() -> Vec<(String, Expected)> {
    let listed: &[(&str, Expected)] = &[
        // One minimal event of each type.
        (r#"{"type":"issued","ts":1796173200123,"ticket":"A-001","service":"ktp"}"#, Accepted),
        (r#"{"type":"called","ts":1796173200123,"ticket":"A-001","counter":"c1"}"#, Accepted),
        (r#"{"type":"recalled","ts":1796173200123,"ticket":"A-001","counter":"c1"}"#, Accepted),
        (r#"{"type":"started","ts":1796173200123,"ticket":"A-001","counter":"c1"}"#, Accepted),
        (r#"{"type":"finished","ts":1796173200123,"ticket":"A-001","counter":"c1"}"#, Accepted),
        (r#"{"type":"no_show","ts":1796173200123,"ticket":"A-001","counter":"c1"}"#, Accepted),
        (r#"{"type":"cancelled","ts":1796173200123,"ticket":"A-001"}"#, Accepted),
        (r#"{"type":"transferred","ts":1796173200123,"ticket":"A-001","counter":"c1","to_service":"sim"}"#, Accepted),
        (r#"{"type":"counter_opened","ts":1796173200123,"counter":"c1"}"#, Accepted),
        (r#"{"type":"counter_closed","ts":1796173200123,"counter":"c1"}"#, Accepted),
        (r#"{"type":"feedback","ts":1796173200123,"rating":5}"#, Accepted),
        (r#"{"type":"heartbeat","ts":1796173200123}"#, Accepted),
        // Optional fields, unknown fields, nulls, escapes, whitespace.
        (
            r#"{"type":"issued","ts":"2026-11-27T08:00:00.123456+07:00","office":"o1","id":"e-1","ticket":"A-001",
                "service":"ktp","counter":"c1","staff":"s.1","rating":1,"firmware":{"v":[1,2]}}"#,
            Accepted,
        ),
        (r#"{"type":"heartbeat","ts":1,"id":null,"office":null,"ticket":null,"staff":null,"rating":null}"#, Accepted),
        (r#"{"type":"issu\u0065d","ts":1,"ticket":"A\u00e9","service":"ktp"}"#, Accepted),
        (" \n {\"type\":\"heartbeat\",\"ts\":1} \n", Accepted),
        (r#"{"type":"cancelled","ts":1,"ticket":"A 017 \"x\" \\ é"}"#, Accepted),
        (r#"{"type":"finished","ts":1,"ticket":"A-1","counter":"Loket_01.B-2"}"#, Accepted),
        // Timestamps the decoder accepts.
        (r#"{"type":"heartbeat","ts":0}"#, Accepted),
        (r#"{"type":"heartbeat","ts":253402300799999}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:00:00Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27t01:00:00.5z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27 01:00:00-05:30"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:00:00\u221205:30"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:00:00.123456789012+23:59"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-11-27T01:00:00-00:00"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2024-02-29T12:00:00Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2000-02-29T12:00:00Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2026-04-30T23:59:59Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"2016-12-31T23:59:60Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"1900-01-01T00:00:00Z"}"#, Accepted),
        (r#"{"type":"heartbeat","ts":"9999-12-31T23:59:59.999Z"}"#, Accepted),
        // not_an_object
        ("[1]", Rejected(NotAnObject)),
        ("42", Rejected(NotAnObject)),
        (r#""issued""#, Rejected(NotAnObject)),
        ("null", Rejected(NotAnObject)),
        // unknown_type
        (r#"{"type":"teleported","ts":1}"#, Rejected(UnknownType)),
        (r#"{"type":"Issued","ts":1,"ticket":"A","service":"ktp"}"#, Rejected(UnknownType)),
        (r#"{"type":"","ts":1}"#, Rejected(UnknownType)),
        // missing_field
        (r#"{"ts":1}"#, Rejected(MissingField)),
        (r#"{"type":null,"ts":1}"#, Rejected(MissingField)),
        (r#"{"type":"heartbeat"}"#, Rejected(MissingField)),
        (r#"{"type":"heartbeat","ts":null}"#, Rejected(MissingField)),
        (r#"{"type":"issued","ts":1,"ticket":"A"}"#, Rejected(MissingField)),
        (r#"{"type":"issued","ts":1,"service":"ktp"}"#, Rejected(MissingField)),
        (r#"{"type":"called","ts":1,"ticket":"A"}"#, Rejected(MissingField)),
        (r#"{"type":"called","ts":1,"counter":"c1"}"#, Rejected(MissingField)),
        (r#"{"type":"cancelled","ts":1,"ticket":null}"#, Rejected(MissingField)),
        (r#"{"type":"transferred","ts":1,"ticket":"A","counter":"c1","service":"sim"}"#, Rejected(MissingField)),
        (r#"{"type":"counter_opened","ts":1,"staff":"s1"}"#, Rejected(MissingField)),
        (r#"{"type":"counter_closed","ts":1,"counter":null}"#, Rejected(MissingField)),
        (r#"{"type":"feedback","ts":1,"ticket":"A"}"#, Rejected(MissingField)),
        // invalid_timestamp
        (r#"{"type":"heartbeat","ts":"yesterday"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-02-30T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-04-31T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2023-02-29T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"1900-02-29T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-13-01T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T24:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:60:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:61Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00.Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00+24:00"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00+07"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00+0700"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00 UTC"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":" 2026-11-27T08:00:00Z"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"2026-11-27T08:00:00Z "}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":"1796173200123"}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":1.5}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":-1}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":253402300800000}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":18446744073709551616}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":true}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":[1]}"#, Rejected(InvalidTimestamp)),
        (r#"{"type":"heartbeat","ts":{"ms":1}}"#, Rejected(InvalidTimestamp)),
        // invalid_identifier
        (r#"{"type":"issued","ts":1,"ticket":"A","service":"k t p"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"issued","ts":1,"ticket":"A","service":"ktp\n"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"issued","ts":1,"ticket":"A","service":"kt\u00e9"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"called","ts":1,"ticket":"A","counter":""}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"heartbeat","ts":1,"office":"o/1"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"heartbeat","ts":1,"staff":"a,b"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"heartbeat","ts":1,"to_service":"x=y"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"issued","ts":1,"ticket":"","service":"ktp"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"cancelled","ts":1,"ticket":"A\u0007"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"cancelled","ts":1,"ticket":"A\u0085"}"#, Rejected(InvalidIdentifier)),
        (r#"{"type":"cancelled","ts":1,"ticket":"A\u007f"}"#, Rejected(InvalidIdentifier)),
        // invalid_value
        (r#"{"type":"feedback","ts":1,"rating":6}"#, Rejected(InvalidValue)),
        (r#"{"type":"feedback","ts":1,"rating":0}"#, Rejected(InvalidValue)),
        (r#"{"type":"feedback","ts":1,"rating":"5"}"#, Rejected(InvalidValue)),
        (r#"{"type":"heartbeat","ts":1,"rating":-1}"#, Rejected(InvalidValue)),
        (r#"{"type":"issued","ts":1,"ticket":7,"service":"ktp"}"#, Rejected(InvalidValue)),
        (r#"{"type":5,"ts":1}"#, Rejected(InvalidValue)),
        (r#"{"type":"heartbeat","ts":1,"id":5}"#, Rejected(InvalidValue)),
        (r#"{"type":"heartbeat","ts":1,"office":1}"#, Rejected(InvalidValue)),
        (r#"{"type":"heartbeat","ts":1,"staff":true}"#, Rejected(InvalidValue)),
        (r#"{"type":"heartbeat","ts":1,"counter":["c1"]}"#, Rejected(InvalidValue)),
        (r#"{"type":"cancelled","ts":1,"ticket":["A"]}"#, Rejected(InvalidValue)),
        (r#"{"type":"feedback","ts":1,"rating":3,"ticket":7}"#, Rejected(InvalidValue)),
        (r#"{"type":"feedback","ts":1,"rating":3,"ticket":""}"#, Rejected(InvalidIdentifier)),
        // A field that only ticket events and feedback use is ignored elsewhere, even malformed.
        (r#"{"type":"counter_opened","ts":1,"counter":"c1","ticket":"A1"}"#, Accepted),
        (r#"{"type":"counter_closed","ts":1,"counter":"c1","ticket":""}"#, Accepted),
        (r#"{"type":"heartbeat","ts":1,"ticket":7}"#, Accepted),
        (r#"{"type":"heartbeat","ts":1,"ticket":"A\u0007"}"#, Accepted),
        (r#"{"type":"counter_opened","ts":1,"counter":"c1","ticket":{"n":1}}"#, Accepted),
    ];
    let mut samples: Vec<(String, Expected)> =
        listed.iter().map(|(payload, expected)| (payload.to_string(), *expected)).collect();

    // Lengths are counted in characters (code points), by both.
    // A heartbeat ignores `ticket`, whatever its value; a cancellation checks it.
    let with = |field: &str, text: String| json!({"type": "heartbeat", "ts": 1, field: text}).to_string();
    let on_cancelled = |text: String| json!({"type": "cancelled", "ts": 1, "ticket": text}).to_string();
    samples.extend([
        (with("service", "s".repeat(64)), Accepted),
        (with("service", "s".repeat(65)), Rejected(InvalidIdentifier)),
        (with("staff", "9".repeat(65)), Rejected(InvalidIdentifier)),
        (with("ticket", "é".repeat(64)), Accepted),
        (with("ticket", "😀".repeat(64)), Accepted),
        (with("ticket", "é".repeat(65)), Accepted),
        (on_cancelled("é".repeat(64)), Accepted),
        (on_cancelled("é".repeat(65)), Rejected(InvalidIdentifier)),
        (with("id", "é".repeat(128)), Accepted),
        (with("id", "x".repeat(129)), Rejected(InvalidValue)),
    ]);
    samples
}

/// The smallest payload of `kind` that both accept: `type`, `ts` and the
/// fields the type requires.
fn minimal_event(kind: EventType) -> Value {
    let mut event = json!({"type": kind.as_str(), "ts": 1_796_173_200_123_i64});
    if kind.needs_ticket() {
        event["ticket"] = json!("A-001");
    }
    if kind.needs_counter() {
        event["counter"] = json!("c1");
    }
    match kind {
        EventType::Issued => event["service"] = json!("ktp"),
        EventType::Transferred => event["to_service"] = json!("sim"),
        EventType::Feedback => event["rating"] = json!(4),
        _ => {}
    }
    event
}

/// Decodes `payload` and validates it against the schema; describes any
/// disagreement with `expected`.
fn check(payload: &str, expected: Expected) -> Result<(), String> {
    let topic_office = OfficeId::parse("o1").unwrap();
    // Far in the future, so that `future_timestamp` never trips.
    let wall_now = Millis(i64::MAX / 2);
    // Far in the past, so that the configured lower bound never trips.
    let limits = DecodeLimits { min_timestamp: Millis(i64::MIN / 2), ..DecodeLimits::default() };
    let decoded = decode(payload.as_bytes(), Some(&topic_office), wall_now, &limits);
    let decoder_says = match &decoded {
        Ok(_) => Accepted,
        Err(rejection) => Rejected(rejection.reason),
    };
    if decoder_says != expected {
        return Err(format!("decoder: {decoded:?}, sample expects {expected:?}: {payload}"));
    }

    let instance: Value = serde_json::from_str(payload).map_err(|error| format!("not JSON ({error}): {payload}"))?;
    let schema_errors: Vec<String> = validator().iter_errors(&instance).map(|error| error.to_string()).collect();
    match (expected, schema_errors.is_empty()) {
        (Accepted, true) | (Rejected(_), false) => Ok(()),
        (Accepted, false) => Err(format!("schema rejects what the decoder accepts: {payload}: {schema_errors:?}")),
        (Rejected(reason), true) => Err(format!("schema accepts what the decoder rejects as {reason}: {payload}")),
    }
}

/// The schema compiled once for all samples of a test binary.
fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| match jsonschema::draft202012::new(&schema()) {
        Ok(validator) => validator,
        Err(error) => panic!("docs/event.schema.json does not compile: {error}"),
    })
}

fn schema() -> Value {
    serde_json::from_str(SCHEMA_TEXT).expect("docs/event.schema.json is JSON")
}
