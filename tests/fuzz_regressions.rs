//! Inputs the fuzz targets of `fuzz/` found (`scripts/fuzz.sh`), each kept as
//! a plain test of what must hold for it.

mod common;

use std::sync::Arc;

use common::Influx1;
use queuewatch::point::{FieldValue, Point};

/// `encode_line`: a newline in a tag value became a bare space, which ends the
/// tag set, so the rest of the tag was read as a field and the line was refused
/// (or misread). It becomes an escaped space, as a newline in a string field
/// becomes a space.
#[tokio::test]
async fn a_newline_in_a_tag_value_becomes_an_escaped_space_and_the_line_stays_valid() {
    let mut point = Point::new("ticket", 1_795_572_600_000_000_000);
    point.tag("office", Arc::from("x\ny")).tag("service", Arc::from("a\r\nb"));
    point.field("ticket", FieldValue::Str("c\nd".into()));
    let line = point.to_line();
    assert_eq!(line, r#"ticket,office=x\ y,service=a\ \ b ticket="c d" 1795572600000000000"#);

    let influx = Influx1::start();
    influx.create_database("qw").await;
    influx.write("qw", "ns", &line).await;
    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    let read: Vec<_> =
        rows.iter().map(|row| (row["office"].as_str(), row["service"].as_str(), row["ticket"].as_str())).collect();
    assert_eq!(read, [(Some("x y"), Some("a  b"), Some("c d"))]);
}

/// `decode_event`: a payload whose invalid UTF-8 lay inside the string of a
/// field the decoder ignores was accepted (serde_json does not check the
/// strings it skips); the wire format says UTF-8, so it is `malformed_json`.
#[test]
fn a_payload_with_invalid_utf8_in_an_ignored_field_is_malformed_json() {
    use queuewatch::event::{decode, DecodeLimits, RejectReason};
    use queuewatch::time::Millis;
    let findings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/findings/decode_event");
    let mut found = 0;
    for entry in std::fs::read_dir(&findings).unwrap() {
        let payload = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(std::str::from_utf8(&payload).is_err(), "a finding of invalid UTF-8");
        let rejection = decode(&payload, None, Millis::now(), &DecodeLimits::default()).unwrap_err();
        assert_eq!(rejection.reason, RejectReason::MalformedJson, "{}", rejection.detail);
        assert!(rejection.detail.contains("not valid UTF-8"), "{}", rejection.detail);
        found += 1;
    }
    assert_eq!(found, 2, "both findings checked");
    // The same bytes at the top level, outside any object, are malformed too.
    let rejection = decode(b"\"\xff\"", None, Millis::now(), &DecodeLimits::default()).unwrap_err();
    assert_eq!(rejection.reason, RejectReason::MalformedJson);
}
