//! Event decoding on arbitrary payloads: never panics; the cached decoder
//! (what the pipeline uses) agrees with the fresh one; an accepted payload is
//! JSON whose fields are what the event carries; a payload naming another
//! office than the topic's is never accepted.

use queuewatch::event::{decode, decode_with, DecodeLimits, Event, RejectReason};
use queuewatch::ids::{IdCache, OfficeId};
use queuewatch::time::Millis;

/// The receiver's clock: 2026-11-25T00:00:00Z.
const WALL_NOW: Millis = Millis(1_795_564_800_000);

fn main() {
    let limits = DecodeLimits::default();
    let topic_office = OfficeId::parse("mpp-a").unwrap();
    let mut cache = IdCache::default();
    afl::fuzz!(|data: &[u8]| {
        for office in [Some(&topic_office), None] {
            let fresh = decode(data, office, WALL_NOW, &limits);
            let cached = decode_with(data, office, WALL_NOW, &limits, &mut cache);
            assert_eq!(fresh, cached, "the cached decoder disagrees");
            match fresh {
                Ok(event) => check_accepted(data, office, &event),
                Err(rejection) => {
                    if rejection.reason == RejectReason::OfficeMismatch {
                        assert!(office.is_some(), "office_mismatch without a topic office");
                    }
                }
            }
        }
    });
}

fn check_accepted(data: &[u8], topic_office: Option<&OfficeId>, event: &Event) {
    // A payload that is not UTF-8 is `malformed_json` (docs/wire-format.md, "Rejections"), even where the
    // invalid bytes lie inside a field the decoder ignores (found here once:
    // fuzz/findings/decode_event/, now tests/fuzz_regressions.rs).
    assert!(std::str::from_utf8(data).is_ok(), "accepted, but not UTF-8");
    let text = String::from_utf8_lossy(data);
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        // Valid JSON (RFC 8259 sets no range) that serde_json cannot hold as an f64,
        // in a field the decoder ignores: accepting it is right.
        Err(error) if error.to_string().starts_with("number out of range") => return,
        Err(error) => panic!("accepted, but serde_json refuses it: {error}"),
    };
    let object = value.as_object().expect("accepted, but not an object");
    if let Some(office) = topic_office {
        assert_eq!(&event.office, office, "the topic's office is the event's");
    }
    if let Some(named) = object.get("office").and_then(|office| office.as_str()) {
        assert_eq!(event.office.as_str(), named, "the payload's office");
    }
    assert_eq!(object.get("type").and_then(|kind| kind.as_str()), Some(event.kind.as_str()));
    let text = |key: &str| object.get(key).and_then(|value| value.as_str());
    if let Some(ticket) = &event.ticket {
        assert_eq!(Some(ticket.as_str()), text("ticket"), "ticket");
    }
    if let Some(service) = &event.service {
        assert_eq!(Some(service.as_str()), text("service"), "service");
    }
    if let Some(counter) = &event.counter {
        assert_eq!(Some(counter.as_str()), text("counter"), "counter");
    }
    if let Some(staff) = &event.staff {
        assert_eq!(Some(staff.as_str()), text("staff"), "staff");
    }
    if let Some(id) = &event.id {
        assert_eq!(Some(id.as_str()), text("id"), "id");
    }
    assert!(event.ts.0 <= WALL_NOW.0 + DecodeLimits::default().max_future_skew_ms, "future timestamp accepted");
}
