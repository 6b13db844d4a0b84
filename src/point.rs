//! InfluxDB points and their line-protocol encoding.
//!
//! Owns escaping. Every point the tracker produces goes through
//! [`Point::write_line`]; nothing else formats line protocol. Timestamps are
//! nanoseconds so that a deterministic sub-millisecond offset can keep two
//! tickets closing in the same millisecond from overwriting each other.

use std::sync::Arc;

/// A field value. A field name always carries the same variant. Strings
/// are inline up to 24 bytes (ticket numbers, staff), so most points need
/// no allocation for them.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    Str(compact_str::CompactString),
}

/// One point: measurement, tags (already valid identifiers), fields, time.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: &'static str,
    /// Tag keys in ascending order, the order InfluxDB prefers.
    pub tags: Vec<(&'static str, Arc<str>)>,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub time_ns: i64,
}

impl Point {
    pub fn new(measurement: &'static str, time_ns: i64) -> Point {
        Point { measurement, tags: Vec::with_capacity(4), fields: Vec::with_capacity(14), time_ns }
    }

    /// Adds a tag, keeping tags sorted by key.
    pub fn tag(&mut self, key: &'static str, value: Arc<str>) -> &mut Self {
        let position = self.tags.partition_point(|(existing, _)| *existing < key);
        self.tags.insert(position, (key, value));
        self
    }

    pub fn field(&mut self, key: &'static str, value: FieldValue) -> &mut Self {
        self.fields.push((key, value));
        self
    }

    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }

    pub fn field_value(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Appends this point as one line of line protocol, with its newline.
    pub fn write_line(&self, out: &mut String) {
        // Measurement names and keys are `&'static str` of this crate, all
        // plain identifiers: only tag values and string fields are escaped.
        push_plain(out, self.measurement);
        for (key, value) in &self.tags {
            if value.is_empty() {
                continue; // InfluxDB refuses empty tag values; absent is the honest encoding.
            }
            out.push(',');
            push_plain(out, key);
            out.push('=');
            escape_into(out, value, &[',', ' ', '=']);
        }
        let mut separator = ' ';
        for (key, value) in &self.fields {
            out.push(separator);
            separator = ',';
            push_plain(out, key);
            out.push('=');
            match value {
                FieldValue::Float(number) => write_float(out, *number),
                FieldValue::Int(number) => {
                    out.push_str(itoa::Buffer::new().format(*number));
                    out.push('i');
                }
                FieldValue::Str(text) => {
                    out.push('"');
                    escape_into(out, text, &['"']);
                    out.push('"');
                }
            }
        }
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(self.time_ns));
        out.push('\n');
    }

    /// The point as a single line, without the trailing newline.
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(160);
        self.write_line(&mut line);
        line.pop();
        line
    }
}

/// Floats must stay floats in line protocol and must be finite; Rust's
/// shortest round-trip formatting prints `3.5` as `3.5` and `3.0` as `3`,
/// which InfluxDB reads as a float because it has no `i` suffix.
fn write_float(out: &mut String, number: f64) {
    if !number.is_finite() {
        out.push('0');
    } else if number.fract() == 0.0 && number.abs() < 1e15 {
        // Whole seconds are common: print them as integers (still a float
        // in line protocol, having no `i` suffix).
        out.push_str(itoa::Buffer::new().format(number as i64));
    } else if let Some(millis) = whole_millis(number) {
        write_millis_as_seconds(out, millis);
    } else {
        out.push_str(ryu::Buffer::new().format_finite(number));
    }
}

/// Below this many seconds a float that is a whole number of milliseconds
/// differs from every other such float by more than its rounding interval.
const MAX_MILLIS_SECONDS: f64 = 1e9;

/// `number` as whole milliseconds, when it is the float nearest to a whole
/// number of milliseconds (what [`seconds`] makes) and not too large.
fn whole_millis(number: f64) -> Option<i64> {
    if number.abs() >= MAX_MILLIS_SECONDS {
        return None;
    }
    let millis = (number * 1000.0).round();
    (millis / 1000.0 == number).then_some(millis as i64)
}

/// Prints `millis / 1000` the way ryu prints the float nearest to it: the
/// decimal `seconds.fraction` is the shortest text that reads back as that
/// float (any other decimal with fewer digits is at least 1 ms away, far
/// outside the float's rounding interval below `MAX_MILLIS_SECONDS`), and
/// ryu prints numbers of this size without an exponent. Saves ryu's
/// general search on the most common kind of field.
fn write_millis_as_seconds(out: &mut String, millis: i64) {
    if millis < 0 {
        out.push('-');
    }
    let magnitude = millis.unsigned_abs();
    out.push_str(itoa::Buffer::new().format(magnitude / 1000));
    let fraction = magnitude % 1000;
    let digits = [b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8, b'0' + (fraction % 10) as u8];
    let used = if fraction.is_multiple_of(100) {
        1
    } else if fraction.is_multiple_of(10) {
        2
    } else {
        3
    };
    out.push('.');
    for digit in &digits[..used] {
        out.push(char::from(*digit));
    }
}

/// Escapes `specials` and backslashes with a backslash. Newlines cannot be
/// represented in line protocol; identifiers and tickets never contain them
/// (control characters are rejected at decode), so they become spaces here as
/// a last line of defence.
fn escape_into(out: &mut String, text: &str, specials: &[char]) {
    // Identifiers and most tickets need no escaping at all.
    if text.bytes().all(is_plain) {
        out.push_str(text);
        return;
    }
    for character in text.chars() {
        // A newline becomes a space, escaped like any other where a space is special.
        let character = if character == '\n' || character == '\r' { ' ' } else { character };
        if character == '\\' || specials.contains(&character) {
            out.push('\\');
        }
        out.push(character);
    }
}

/// A byte that needs no escaping anywhere in line protocol.
fn is_plain(byte: u8) -> bool {
    PLAIN[usize::from(byte)]
}

/// [`is_plain`] by table: one load a byte, on every tag value and string field.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/');
        byte += 1;
    }
    table
};

/// A measurement name or key of this crate: always plain (checked in debug builds).
fn push_plain(out: &mut String, name: &'static str) {
    debug_assert!(name.bytes().all(is_plain), "{name:?} needs escaping");
    out.push_str(name);
}

/// Seconds with millisecond resolution, from a span in milliseconds.
pub fn seconds(span_ms: i64) -> FieldValue {
    FieldValue::Float(span_ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character_in_its_place() {
        let mut point = Point::new("ticket", 1_000_000_123);
        point.tag("office", Arc::from("a b,c=d"));
        point.field("ticket", FieldValue::Str(r#"A "1" \ x"#.into()));
        point.field("recalls", FieldValue::Int(2));
        point.field("wait_s", FieldValue::Float(61.5));
        point.field("zero_s", FieldValue::Float(0.0));
        assert_eq!(
            point.to_line(),
            r#"ticket,office=a\ b\,c\=d ticket="A \"1\" \\ x",recalls=2i,wait_s=61.5,zero_s=0 1000000123"#
        );
    }

    #[test]
    fn tags_are_kept_sorted() {
        let mut point = Point::new("m", 0);
        point.tag("service", Arc::from("s")).tag("counter", Arc::from("c")).tag("office", Arc::from("o"));
        point.field("x", FieldValue::Int(1));
        assert_eq!(point.to_line(), "m,counter=c,office=o,service=s x=1i 0");
    }

    #[test]
    fn seconds_have_millisecond_resolution() {
        assert_eq!(seconds(1234), FieldValue::Float(1.234));
        assert_eq!(seconds(-5), FieldValue::Float(-0.005));
    }

    /// Reads back a string field the way InfluxDB does: `\"` and `\\` unescape.
    fn read_string_field(line: &str, key: &str) -> Option<String> {
        let start = line.find(&format!("{key}=\""))? + key.len() + 2;
        let mut value = String::new();
        let mut characters = line[start..].chars();
        while let Some(character) = characters.next() {
            match character {
                '\\' => value.push(characters.next()?),
                '"' => return Some(value),
                other => value.push(other),
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn seconds_print_as_ryu_prints_them(millis in -999_999_999_999i64..999_999_999_999, scale in 0u32..13) {
            let millis = millis / 10i64.pow(scale);
            let number = millis as f64 / 1000.0;
            let mut printed = String::new();
            write_float(&mut printed, number);
            let expected = if number.fract() == 0.0 {
                itoa::Buffer::new().format(number as i64).to_string()
            } else {
                ryu::Buffer::new().format_finite(number).to_string()
            };
            proptest::prop_assert_eq!(printed, expected);
        }

        #[test]
        fn any_float_prints_as_ryu_prints_it(number in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let mut printed = String::new();
            write_float(&mut printed, number);
            let expected = if number.fract() == 0.0 && number.abs() < 1e15 {
                itoa::Buffer::new().format(number as i64).to_string()
            } else {
                ryu::Buffer::new().format_finite(number).to_string()
            };
            proptest::prop_assert_eq!(printed, expected);
        }

        #[test]
        fn string_fields_round_trip_through_line_protocol(ticket in "\\PC{1,64}", staff in "[A-Za-z0-9_.-]{1,64}") {
            let mut point = Point::new("ticket", 1);
            point.tag("office", Arc::from("o1"));
            point.field("ticket", FieldValue::Str(ticket.as_str().into()));
            point.field("staff", FieldValue::Str(staff.as_str().into()));
            let line = point.to_line();
            proptest::prop_assert!(!line.contains('\n'));
            proptest::prop_assert_eq!(read_string_field(&line, "ticket"), Some(ticket));
            proptest::prop_assert_eq!(read_string_field(&line, "staff"), Some(staff));
        }
    }
}
