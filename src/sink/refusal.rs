//! Which lines of a batch InfluxDB refused, from its answer: pure, no IO.
//!
//! InfluxDB 1.x answers `400 partial write: <reason> dropped=N` (2.x: `422`,
//! same text) having stored every other line of the batch, and names one
//! reason only. Halving the batch down to single lines finds the refused
//! ones, at about two requests a refused line. Two reasons name the lines
//! themselves, which `queuewatch` exploits (measured against a real 1.6):
//!
//! - `points beyond retention policy dropped=N`: the N oldest lines. A point
//!   is dropped when its time is before the retention policy's start (or
//!   that start's shard group), a threshold in time, so the dropped lines
//!   are the N with the smallest timestamps. A field type conflict in the
//!   same batch hides this answer (the shard's error wins).
//! - `field type conflict: input field "F" on measurement "M" is type T,
//!   already exists as type U dropped=N`: the lines of M whose field F has
//!   type T. Only the first conflict is named, and N counts one shard only.
//!
//! So [`verdict`] says: every line refused (`dropped` equals the batch's
//! lines, or a single line), or the batch split into the lines the reason
//! names and the others (each sent again: the others are taken, harmlessly
//! again, and the named ones are refused as a whole), or halving when the
//! answer names nothing usable (a line that does not parse, an unknown
//! reason). A batch of old or mistyped lines so costs three requests, not
//! two a line, and its refused lines reach the dead-letter file in one write.

/// What to do with a batch InfluxDB refused (400, 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every line of it was refused.
    All,
    /// The lines marked `true` are those the answer names; send the others
    /// and those two groups apart.
    Split(Vec<bool>),
    /// Nothing usable in the answer: halve.
    Halve,
}

/// The verdict on `lines` (the batch's lines, in order) refused with `message`.
pub(crate) fn verdict(lines: &[&str], message: &str) -> Verdict {
    if lines.len() <= 1 {
        return Verdict::All;
    }
    let answer = Answer::parse(message);
    if answer.dropped == Some(lines.len()) {
        return Verdict::All;
    }
    match answer.named(lines) {
        Some(mask) if mask.contains(&true) && mask.contains(&false) => Verdict::Split(mask),
        _ => Verdict::Halve,
    }
}

/// What a refusal's text says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    dropped: Option<usize>,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    BeyondRetention,
    FieldTypeConflict { measurement: String, field: String, kind: FieldKind },
    Other,
}

/// A field value's type, as line protocol writes it and InfluxDB names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Float,
    Integer,
    Unsigned,
    String,
    Boolean,
}

impl FieldKind {
    fn named(name: &str) -> Option<FieldKind> {
        Some(match name {
            "float" => FieldKind::Float,
            "integer" => FieldKind::Integer,
            "unsigned" => FieldKind::Unsigned,
            "string" => FieldKind::String,
            "boolean" => FieldKind::Boolean,
            _ => return None,
        })
    }

    /// The type of a field value as written in a line.
    fn of_value(value: &str) -> FieldKind {
        let number = |suffix: char| {
            value.strip_suffix(suffix).is_some_and(|digits| {
                let digits = digits.strip_prefix('-').unwrap_or(digits);
                !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
            })
        };
        if value.starts_with('"') {
            FieldKind::String
        } else if number('i') {
            FieldKind::Integer
        } else if number('u') {
            FieldKind::Unsigned
        } else if matches!(value, "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE") {
            FieldKind::Boolean
        } else {
            FieldKind::Float
        }
    }
}

impl Answer {
    /// Reads InfluxDB's text, raw or inside its JSON body (`\"` for `"`).
    fn parse(message: &str) -> Answer {
        let text = message.replace("\\\"", "\"");
        let dropped = text.rfind("dropped=").and_then(|at| {
            let digits: String = text[at + "dropped=".len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        let reason = if text.contains("points beyond retention policy") {
            Reason::BeyondRetention
        } else {
            field_type_conflict(&text).unwrap_or(Reason::Other)
        };
        Answer { dropped, reason }
    }

    /// For each line, whether the answer's reason names it; `None` when it
    /// names no line or a line cannot be read.
    fn named(&self, lines: &[&str]) -> Option<Vec<bool>> {
        match &self.reason {
            Reason::BeyondRetention => {
                let dropped = self.dropped.filter(|dropped| (1..lines.len()).contains(dropped))?;
                let times: Vec<i64> = lines.iter().map(|line| Some(shape(line)?.time)).collect::<Option<_>>()?;
                let mut sorted = times.clone();
                sorted.sort_unstable();
                // The dropped lines are those before a threshold; a tie across it cannot be told apart.
                let (last_dropped, first_kept) = (sorted[dropped - 1], sorted[dropped]);
                (last_dropped < first_kept).then(|| times.iter().map(|time| *time <= last_dropped).collect())
            }
            Reason::FieldTypeConflict { measurement, field, kind } => lines
                .iter()
                .map(|line| {
                    let shape = shape(line)?;
                    Some(shape.measurement == *measurement && shape.fields.contains(&(field.clone(), *kind)))
                })
                .collect(),
            Reason::Other => None,
        }
    }
}

/// `field type conflict: input field "F" on measurement "M" is type T, …`.
fn field_type_conflict(text: &str) -> Option<Reason> {
    let rest = &text[text.find("field type conflict: input field \"")? + "field type conflict: input field \"".len()..];
    let (field, rest) = rest.split_once("\" on measurement \"")?;
    let (measurement, rest) = rest.split_once("\" is type ")?;
    let kind = FieldKind::named(rest.split(|character: char| !character.is_ascii_alphabetic()).next()?)?;
    Some(Reason::FieldTypeConflict { measurement: measurement.to_string(), field: field.to_string(), kind })
}

/// What a line of line protocol is about: its measurement, its fields'
/// keys and types (names unescaped), and its time.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    measurement: String,
    fields: Vec<(String, FieldKind)>,
    time: i64,
}

/// Reads a line's shape; `None` if it is not line protocol with a time.
fn shape(line: &str) -> Option<Shape> {
    let bytes = line.as_bytes();
    // The measurement ends at the first comma or space not escaped, the tags
    // at the first space not escaped.
    let measurement_end = unescaped(bytes, 0, b", ");
    let measurement = unescape(&line[..measurement_end]);
    let mut at = unescaped(bytes, measurement_end, b" ") + 1;
    // Fields: `key=value` separated by commas, up to a space outside quotes.
    let mut fields = Vec::new();
    loop {
        let key_end = unescaped(bytes, at, b"=");
        let key = unescape(line.get(at..key_end)?);
        let value_start = key_end + 1;
        at = value_start;
        let mut quoted = false;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' if quoted => at += 1,
                b'"' => quoted = !quoted,
                b',' | b' ' if !quoted => break,
                _ => {}
            }
            at += 1;
        }
        let value = line.get(value_start..at.min(bytes.len()))?;
        if key.is_empty() || value.is_empty() {
            return None;
        }
        fields.push((key, FieldKind::of_value(value)));
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b' ') => break,
            _ => return None,
        }
    }
    let time = line.get(at + 1..)?.trim_end().parse().ok()?;
    Some(Shape { measurement, fields, time })
}

/// The first index from `from` of a byte in `stops` not escaped by a
/// backslash, or the end. The stops are ASCII, so it is a char boundary.
fn unescaped(bytes: &[u8], from: usize, stops: &[u8]) -> usize {
    let mut at = from;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            byte if stops.contains(&byte) => return at,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// A name with its backslash escapes taken off.
fn unescape(name: &str) -> String {
    let mut plain = String::with_capacity(name.len());
    let mut characters = name.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => plain.extend(characters.next()),
            other => plain.push(other),
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::point::{FieldValue, Point};

    fn check(lines: &[&str], message: &str, expected: Verdict) {
        assert_eq!(verdict(lines, message), expected, "{message}");
    }

    const OLD: &str = "ticket,office=o1 wait_s=5i 1000000000";
    const NEW: &str = "ticket,office=o1 wait_s=6i 9000000000";

    #[test]
    fn a_whole_batch_beyond_retention_is_refused_at_once() {
        check(&[OLD, OLD], r#"{"error":"partial write: points beyond retention policy dropped=2"}"#, Verdict::All);
    }

    #[test]
    fn the_oldest_lines_are_those_beyond_retention() {
        let older = "ticket,office=o2 wait_s=1i 500";
        check(
            &[NEW, OLD, NEW, older],
            "partial write: points beyond retention policy dropped=2",
            Verdict::Split(vec![false, true, false, true]),
        );
    }

    #[test]
    fn lines_at_the_same_time_across_the_threshold_are_halved() {
        check(&[OLD, OLD, NEW], "partial write: points beyond retention policy dropped=1", Verdict::Halve);
    }

    #[test]
    fn a_field_type_conflict_names_the_lines_of_that_measurement_field_and_type() {
        let message = r#"{"error":"partial write: field type conflict: input field \"wait_s\" on measurement \"ticket\" is type float, already exists as type integer dropped=1"}"#;
        let float = "ticket,office=o1 wait_s=2.5,ticket=\"A 1, b\" 3";
        let other = "queue,office=o1 wait_s=2.5 3";
        check(&[OLD, float, other, NEW], message, Verdict::Split(vec![false, true, false, false]));
        check(&[float, float], &message.replace("dropped=1", "dropped=2"), Verdict::All);
    }

    #[test]
    fn a_line_that_does_not_parse_and_an_unknown_reason_are_halved() {
        check(&[OLD, NEW], "partial write: unable to parse 'm v= 3': missing field value dropped=0", Verdict::Halve);
        check(&[OLD, NEW], "something else", Verdict::Halve);
        check(&[OLD], "anything", Verdict::All);
    }

    #[test]
    fn shapes_are_read_through_escapes_and_quotes() {
        let shape = shape(r#"my\ m\,x,tag=a\ b field\=1=1i,s="x, \"y\" z",b=t,u=3u,f=-1.5e3 42"#).unwrap();
        assert_eq!(shape.measurement, "my m,x");
        assert_eq!(
            shape.fields,
            vec![
                ("field=1".to_string(), FieldKind::Integer),
                ("s".to_string(), FieldKind::String),
                ("b".to_string(), FieldKind::Boolean),
                ("u".to_string(), FieldKind::Unsigned),
                ("f".to_string(), FieldKind::Float),
            ]
        );
        assert_eq!(shape.time, 42);
        assert_eq!(super::shape("no fields 12"), None);
        assert_eq!(super::shape("m v=1"), None, "no time");
    }

    proptest::proptest! {
        /// Whatever a point holds, its line reads back with its measurement,
        /// each field's key and type, and its time.
        #[test]
        fn every_line_the_encoder_writes_reads_back_its_shape(
            tag in "\\PC{0,24}",
            text in "\\PC{0,24}",
            integer in proptest::prelude::any::<i64>(),
            float in proptest::prelude::any::<f64>(),
            time in proptest::prelude::any::<i64>(),
        ) {
            let mut point = Point::new("ticket", time);
            point.tag("office", Arc::from(tag.as_str()));
            point.field("ticket", FieldValue::Str(text.as_str().into()));
            point.field("wait_s", FieldValue::Float(float));
            point.field("count", FieldValue::Int(integer));
            let line = point.to_line();
            let read = shape(&line);
            proptest::prop_assert_eq!(read, Some(Shape {
                measurement: "ticket".into(),
                fields: vec![
                    ("ticket".into(), FieldKind::String),
                    ("wait_s".into(), FieldKind::Float),
                    ("count".into(), FieldKind::Integer),
                ],
                time,
            }), "{}", line);
        }
    }
}
