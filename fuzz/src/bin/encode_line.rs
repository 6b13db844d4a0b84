//! Line-protocol encoding of arbitrary tag values and string fields: the
//! line must read back (`read_line`) to exactly what was written, with
//! newlines as spaces, and an empty tag left out.

use std::sync::Arc;

use queuewatch::point::{FieldValue, Point};
use queuewatch_fuzz::{expected_text, read_line};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        // Up to three strings, split at the first two 0x00 bytes.
        let mut parts = text.splitn(3, '\0');
        let tag = parts.next().unwrap_or("");
        let field = parts.next().unwrap_or(tag);
        let other_field = parts.next().unwrap_or(field);
        let mut point = Point::new("ticket", 1_795_572_600_000_000_000);
        point.tag("office", Arc::from(tag)).tag("service", Arc::from("ktp"));
        point.field("ticket", FieldValue::Str(field.into()));
        point.field("wait_s", FieldValue::Float(1.5));
        point.field("staff", FieldValue::Str(other_field.into()));
        point.field("n", FieldValue::Int(-3));
        let line = point.to_line();
        let read = read_line(&line).unwrap_or_else(|error| panic!("{line:?} does not read back: {error}"));
        let mut expected_tags = Vec::new();
        if !tag.is_empty() {
            expected_tags.push(("office".to_string(), expected_text(tag)));
        }
        expected_tags.push(("service".to_string(), "ktp".to_string()));
        assert_eq!(read.measurement, "ticket", "{line:?}");
        assert_eq!(read.tags, expected_tags, "{line:?}");
        assert_eq!(
            read.string_fields,
            [("ticket".to_string(), expected_text(field)), ("staff".to_string(), expected_text(other_field))],
            "{line:?}"
        );
        assert_eq!(read.time_ns, point.time_ns, "{line:?}");
    });
}
