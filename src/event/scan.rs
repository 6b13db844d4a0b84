//! The fast path of decoding: one pass over the payload's bytes for the
//! shape publishers send, borrowing strings.
//!
//! [`scan`] either returns exactly the [`RawEvent`] that serde_json's
//! derived decoder would return for the payload, or `None`: the payload is
//! malformed, or unusual in a way this scanner does not handle (a key given
//! twice, an escaped key, a number other than a plain non-negative integer in
//! `ts` or `rating`, a non-string `ticket`, ...). For `None` the caller runs
//! serde_json, which then gives the result and the rejection details. So
//! what must hold is one way only: every `Some` here equals what serde_json
//! gives; a `None` merely costs time. The tests check this against serde_json
//! over random and mutated payloads. (Timestamps are read the same way, the
//! common form by hand and everything else by chrono: `crate::time::parse_rfc3339`.)

use std::borrow::Cow;

use super::{AnyValue, RawEvent, RawTs, MAX_EPOCH_MS};

/// The payload's fields, or `None` to let serde_json decide.
pub(super) fn scan(payload: &[u8]) -> Option<RawEvent<'_>> {
    let mut raw = RawEvent::default();
    let mut seen = 0u16;
    each_member(payload, |scanner, key| {
        let field = field_index(key);
        if let Some(index) = field {
            // A key given twice is an error for serde_json.
            if seen & (1 << index) != 0 {
                return None;
            }
            seen |= 1 << index;
        }
        match field {
            Some(TYPE) => raw.kind = scanner.optional_string()?,
            Some(TS) => raw.ts = scanner.optional_ts()?,
            Some(ID) => raw.id = scanner.optional_string()?,
            Some(OFFICE) => raw.office = scanner.optional_string()?,
            Some(TICKET) => raw.ticket = scanner.optional_string()?.map(AnyValue::Text),
            Some(SERVICE) => raw.service = scanner.optional_string()?,
            Some(COUNTER) => raw.counter = scanner.optional_string()?,
            Some(TO_SERVICE) => raw.to_service = scanner.optional_string()?,
            Some(STAFF) => raw.staff = scanner.optional_string()?,
            Some(RATING) => raw.rating = scanner.optional_integer()?.map(|value| value as i64),
            _ => scanner.skip_value(0)?,
        }
        Some(())
    })?;
    Some(raw)
}

/// The top-level members of a payload that is one JSON object, each as
/// whether its key is `staff` and where its value starts and ends; `None`
/// to let serde_json decide (an escaped key, malformed JSON, ...). For the
/// staff rewrite (`crate::privacy`), which changes only those values.
pub(crate) fn members(payload: &[u8]) -> Option<Vec<(bool, usize, usize)>> {
    let mut members = Vec::with_capacity(10);
    each_member(payload, |scanner, key| {
        let start = scanner.position;
        scanner.skip_value(0)?;
        members.push((key == FIELDS[STAFF].as_bytes(), start, scanner.position));
        Some(())
    })?;
    Some(members)
}

/// Walks a payload that is one JSON object: `value` gets the scanner at each
/// member's value, with its key, and must read the value. `None` when the
/// payload is not such an object or `value` gave up.
fn each_member<'a>(payload: &'a [u8], mut value: impl FnMut(&mut Scanner<'a>, &'a [u8]) -> Option<()>) -> Option<()> {
    // Checked once for the whole payload, which is stricter than serde_json
    // (it does not check the strings it ignores), so that every string
    // below is a slice of valid text.
    let text = std::str::from_utf8(payload).ok()?;
    let mut scanner = Scanner { text, bytes: payload, position: 0 };
    scanner.skip_whitespace();
    scanner.expect(b'{')?;
    scanner.skip_whitespace();
    if scanner.peek() == Some(b'}') {
        scanner.position += 1;
    } else {
        loop {
            scanner.expect(b'"')?;
            let key = scanner.key()?;
            scanner.skip_whitespace();
            scanner.expect(b':')?;
            scanner.skip_whitespace();
            value(&mut scanner, key)?;
            scanner.skip_whitespace();
            match scanner.next()? {
                b',' => scanner.skip_whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scanner.skip_whitespace();
    (scanner.position == payload.len()).then_some(())
}

/// The keys of [`RawEvent`], by index.
const FIELDS: [&str; 10] =
    ["type", "ts", "id", "office", "ticket", "service", "counter", "to_service", "staff", "rating"];
const TYPE: usize = 0;
const TS: usize = 1;
const ID: usize = 2;
const OFFICE: usize = 3;
const TICKET: usize = 4;
const SERVICE: usize = 5;
const COUNTER: usize = 6;
const TO_SERVICE: usize = 7;
const STAFF: usize = 8;
const RATING: usize = 9;

/// The index in [`FIELDS`] of a key, by its length first.
fn field_index(key: &[u8]) -> Option<usize> {
    let index = match key.len() {
        2 if key[0] == b't' => TS,
        2 => ID,
        4 => TYPE,
        5 => STAFF,
        6 if key[0] == b'o' => OFFICE,
        6 if key[0] == b't' => TICKET,
        6 => RATING,
        7 if key[0] == b's' => SERVICE,
        7 => COUNTER,
        10 => TO_SERVICE,
        _ => return None,
    };
    (FIELDS[index].as_bytes() == key).then_some(index)
}

/// Values nested deeper than this in unknown fields are left to serde_json.
const MAX_DEPTH: usize = 32;

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn expect_literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.position + literal.len();
        (self.bytes.get(self.position..end)? == literal).then(|| self.position = end)
    }

    /// JSON's whitespace (not form feed, unlike `u8::is_ascii_whitespace`).
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.position += 1;
        }
    }

    /// A key after its opening quote, without escapes.
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.position;
        let end = self.string_end(start);
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.position = end + 1;
        Some(&self.bytes[start..end])
    }

    /// The position of the first `"`, `\\` or control character from `start`
    /// on (the length when there is none), eight bytes at a time.
    fn string_end(&self, start: usize) -> usize {
        const ONES: u64 = u64::MAX / 255;
        let mut position = start;
        while let Some(chunk) = self.bytes.get(position..position + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let control = word.wrapping_sub(ONES * 0x20) & !word;
            let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'"')));
            let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'\\')));
            let found = (control | quote | backslash) & (ONES << 7);
            if found != 0 {
                return position + (found.trailing_zeros() / 8) as usize;
            }
            position += 8;
        }
        while let Some(&byte) = self.bytes.get(position) {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                break;
            }
            position += 1;
        }
        position
    }

    /// `null` (`Some(None)`) or a string; anything else is `None`.
    fn optional_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        match self.next()? {
            b'n' => self.expect_literal(b"ull").map(|()| None),
            b'"' => self.string().map(Some),
            _ => None,
        }
    }

    /// A string after its opening quote, escapes decoded, as valid UTF-8.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.position;
        let end = self.string_end(start);
        match *self.bytes.get(end)? {
            b'"' => {
                self.position = end + 1;
                self.text.get(start..end).map(Cow::Borrowed)
            }
            b'\\' => {
                self.position = end;
                self.escaped_string(start).map(Cow::Owned)
            }
            _ => None,
        }
    }

    /// The rest of a string from `start` with escapes, from the first backslash on.
    #[cold]
    fn escaped_string(&mut self, start: usize) -> Option<String> {
        let mut text = self.bytes[start..self.position].to_vec();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(text).ok(),
                b'\\' => match self.next()? {
                    b'"' => text.push(b'"'),
                    b'\\' => text.push(b'\\'),
                    b'/' => text.push(b'/'),
                    b'b' => text.push(b'\x08'),
                    b'f' => text.push(b'\x0c'),
                    b'n' => text.push(b'\n'),
                    b'r' => text.push(b'\r'),
                    b't' => text.push(b'\t'),
                    b'u' => {
                        let unit = self.hex4()?;
                        let code = match unit {
                            0xD800..=0xDBFF => {
                                self.expect_literal(b"\\u")?;
                                let low = self.hex4()?;
                                if !(0xDC00..=0xDFFF).contains(&low) {
                                    return None;
                                }
                                0x1_0000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                            }
                            0xDC00..=0xDFFF => return None,
                            _ => u32::from(unit),
                        };
                        let character = char::from_u32(code)?;
                        text.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => return None,
                },
                byte if byte < 0x20 => return None,
                byte => text.push(byte),
            }
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.bytes.get(self.position..self.position + 4)?;
        let mut value = 0u16;
        for &digit in digits {
            value = value * 16 + (digit as char).to_digit(16)? as u16;
        }
        self.position += 4;
        Some(value)
    }

    /// `null` or a plain non-negative integer that fits an `i64`.
    fn optional_integer(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'n' => {
                self.position += 1;
                self.expect_literal(b"ull").map(|()| None)
            }
            b'0'..=b'9' => self.integer().filter(|&value| value <= i64::MAX as u64).map(Some),
            _ => None,
        }
    }

    /// Digits as JSON writes an integer (no leading zero), not followed by
    /// a fraction or an exponent, within `u64`.
    fn integer(&mut self) -> Option<u64> {
        let start = self.position;
        let mut value: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.position += 1;
        }
        let digits = self.position - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(value),
        }
    }

    /// `ts`: `null`, text, or epoch milliseconds in range.
    fn optional_ts(&mut self) -> Option<Option<RawTs<'a>>> {
        match self.peek()? {
            b'n' => {
                self.position += 1;
                self.expect_literal(b"ull").map(|()| None)
            }
            b'"' => {
                self.position += 1;
                self.string().map(|text| Some(RawTs::Text(text)))
            }
            b'0'..=b'9' => {
                let value = self.integer()?;
                (value <= MAX_EPOCH_MS as u64).then_some(Some(RawTs::Millis(value as i64)))
            }
            _ => None,
        }
    }

    /// Skips any JSON value, at least as strictly as serde_json ignores one.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.next()? {
            b'n' => self.expect_literal(b"ull"),
            b't' => self.expect_literal(b"rue"),
            b'f' => self.expect_literal(b"alse"),
            b'"' => self.skip_string(),
            b'-' => self.skip_number(),
            b'0'..=b'9' => {
                self.position -= 1;
                self.skip_number()
            }
            b'[' if depth < MAX_DEPTH => {
                self.skip_whitespace();
                if self.peek()? == b']' {
                    self.position += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.skip_whitespace();
                    match self.next()? {
                        b',' => self.skip_whitespace(),
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'{' if depth < MAX_DEPTH => {
                self.skip_whitespace();
                if self.peek()? == b'}' {
                    self.position += 1;
                    return Some(());
                }
                loop {
                    self.expect(b'"')?;
                    self.skip_string()?;
                    self.skip_whitespace();
                    self.expect(b':')?;
                    self.skip_whitespace();
                    self.skip_value(depth + 1)?;
                    self.skip_whitespace();
                    match self.next()? {
                        b',' => self.skip_whitespace(),
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// A string after its opening quote, checked as strictly as serde_json
    /// checks the strings it ignores, and as valid UTF-8.
    fn skip_string(&mut self) -> Option<()> {
        self.string().map(drop)
    }

    /// A number's grammar (after an optional minus sign).
    fn skip_number(&mut self) -> Option<()> {
        let digits = |scanner: &mut Scanner| {
            let start = scanner.position;
            while let Some(b'0'..=b'9') = scanner.peek() {
                scanner.position += 1;
            }
            (scanner.position > start).then_some(())
        };
        match self.next()? {
            b'0' => {
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.position += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.position += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.position += 1;
            }
            digits(self)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde_json's derived decoder makes of the payload (the oracle).
    fn serde_json_raw(payload: &[u8]) -> Result<RawEvent<'_>, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// The property: whatever the scanner returns, serde_json returns too.
    fn check(payload: &[u8]) -> Result<(), TestCaseError> {
        if let Some(scanned) = scan(payload) {
            match serde_json_raw(payload) {
                Ok(expected) => prop_assert_eq!(scanned, expected, "{:?}", String::from_utf8_lossy(payload)),
                Err(error) => {
                    return Err(TestCaseError::fail(format!(
                        "scanned {:?}, serde_json: {error}",
                        String::from_utf8_lossy(payload)
                    )))
                }
            }
        }
        Ok(())
    }

    fn whitespace() -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => Just(""), 2 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r"), 1 => Just("\u{c}")]
    }

    fn string_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => "[a-zA-Z0-9 _.:+-]{0,12}".prop_map(String::into_bytes),
            2 => "\\PC{0,4}".prop_map(String::into_bytes),
            1 => prop::sample::select(vec![
                r"\n", r"\t", r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\r", r"\u0065", r"\u00e9", r"\u2212",
                r"\uD83D\uDE00", r"\ud83d\ude00", r"\uD83D", r"\uDE00", r"\uD83Dx", r"\uD83D\n", r"\uD83D\uD83D",
                r"\u12", r"\uZZZZ", r"\x", r"\u0000", r"\u001f",
            ])
            .prop_map(|escape| escape.as_bytes().to_vec()),
            1 => prop::sample::select(vec![vec![0xff], vec![0xc3], vec![0xe2, 0x88], vec![0x01], vec![0x1f], vec![0x7f]]),
        ]
    }

    fn string() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(string_piece(), 0..4).prop_map(|pieces| {
            let mut text = vec![b'"'];
            pieces.iter().for_each(|piece| text.extend_from_slice(piece));
            text.push(b'"');
            text
        })
    }

    fn number() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => (0u64..2_000_000_000_000_000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            2 => (0u8..8).prop_map(|n| n.to_string()),
            2 => prop::sample::select(vec![
                "-0", "0", "00", "01", "-01", "1.0", "1.5", "1.", ".5", "1e3", "1E3", "1e+3", "1e-3", "1e", "1e+",
                "-", "--1", "+1", "1e400", "-1e400", "1e-400", "0e999999", "253402300799999", "253402300800000",
                "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
                "18446744073709551615", "18446744073709551616", "99999999999999999999999", "1796173200123.0",
                "0.1e1", "5", "6", "-5", "1x", "NaN", "Infinity",
            ])
            .prop_map(str::to_string),
        ]
        .prop_map(String::into_bytes)
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            3 => string(),
            3 => number(),
            1 => prop::sample::select(vec!["null", "true", "false", "nul", "tru", "nulll", "[]", "{}", "[,]", "[1,]"])
                .prop_map(|literal| literal.as_bytes().to_vec()),
            1 => prop::sample::select(vec![
                r#""2026-11-27T08:00:00.123+07:00""#, r#""2026-11-27T01:00:00Z""#, r#""yesterday""#,
            ])
            .prop_map(|text| text.as_bytes().to_vec()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec((inner.clone(), whitespace()), 0..4).prop_map(|items| {
                    let mut text = vec![b'['];
                    for (index, (item, space)) in items.iter().enumerate() {
                        if index > 0 {
                            text.push(b',');
                        }
                        text.extend_from_slice(space.as_bytes());
                        text.extend_from_slice(item);
                    }
                    text.push(b']');
                    text
                }),
                prop::collection::vec((string(), inner), 0..4).prop_map(|entries| {
                    let mut text = vec![b'{'];
                    for (index, (key, item)) in entries.iter().enumerate() {
                        if index > 0 {
                            text.push(b',');
                        }
                        text.extend_from_slice(key);
                        text.push(b':');
                        text.extend_from_slice(item);
                    }
                    text.push(b'}');
                    text
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::sample::select(FIELDS.to_vec()).prop_map(|key| format!("\"{key}\"").into_bytes()),
            1 => prop::sample::select(vec![r#""typ\u0065""#, r#""t\u0073""#, r#""firmware""#, r#""Type""#, r#""""#])
                .prop_map(|key| key.as_bytes().to_vec()),
            1 => string(),
        ]
    }

    /// A field value that fits its key more often than not.
    fn field_value(key: &[u8]) -> BoxedStrategy<Vec<u8>> {
        let text = |values: Vec<&'static str>| {
            prop::sample::select(values).prop_map(|value| format!("\"{value}\"").into_bytes()).boxed()
        };
        let fitting = match key {
            b"\"type\"" => text(vec!["issued", "called", "finished", "heartbeat", "feedback", "issu\\u0065d", "nope"]),
            b"\"ts\"" => prop_oneof![
                (1_577_836_800_001u64..1_900_000_000_000).prop_map(|n| n.to_string().into_bytes()),
                text(vec!["2026-11-27T08:00:00.123+07:00", "2026-11-27T01:00:00Z", "2026-11-27 01:00:00\\u221205:30"]),
            ]
            .boxed(),
            b"\"rating\"" => (0u8..8).prop_map(|n| n.to_string().into_bytes()).boxed(),
            _ => text(vec!["A-001", "ktp", "c1", "mpp-1", "s.1", "e-1", "A\\u00e9", "k t p", ""]),
        };
        prop_oneof![3 => fitting, 2 => value()].boxed()
    }

    fn object() -> impl Strategy<Value = Vec<u8>> {
        let entry = key().prop_flat_map(|key| {
            let value = field_value(&key);
            (Just(key), value, whitespace(), whitespace())
        });
        (whitespace(), prop::collection::vec(entry, 0..9), whitespace()).prop_map(|(before, entries, after)| {
            let mut text = before.as_bytes().to_vec();
            text.push(b'{');
            for (index, (key, value, space, other_space)) in entries.iter().enumerate() {
                if index > 0 {
                    text.push(b',');
                }
                text.extend_from_slice(space.as_bytes());
                text.extend_from_slice(key);
                text.extend_from_slice(other_space.as_bytes());
                text.push(b':');
                text.extend_from_slice(space.as_bytes());
                text.extend_from_slice(value);
            }
            text.push(b'}');
            text.extend_from_slice(after.as_bytes());
            text
        })
    }

    /// An object with a few bytes cut, doubled, inserted or replaced.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let edit =
            (any::<prop::sample::Index>(), 0u8..4, prop::sample::select(b"{}[],:\"\\ 0-.eE\x0cnul\xff".to_vec()));
        (object(), prop::collection::vec(edit, 1..4)).prop_map(|(mut text, edits)| {
            for (at, kind, byte) in edits {
                if text.is_empty() {
                    break;
                }
                let at = at.index(text.len());
                match kind {
                    0 => drop(text.remove(at)),
                    1 => text.insert(at, text[at]),
                    2 => text.insert(at, byte),
                    _ => text[at] = byte,
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn scanned_objects_are_what_serde_json_reads(payload in object()) {
            check(&payload)?;
        }

        #[test]
        fn scanned_mutated_objects_are_what_serde_json_reads(payload in mutated()) {
            check(&payload)?;
        }

        #[test]
        fn scanned_arbitrary_bytes_are_what_serde_json_reads(
            payload in prop::collection::vec(prop::sample::select(b"{}[],:\" \"typets0123456789nul\\ue-.".to_vec()), 0..60)
        ) {
            check(&payload)?;
        }
    }

    #[test]
    fn what_publishers_send_is_scanned_not_left_to_serde_json() {
        for payload in [
            r#"{"type":"issued","ts":"2026-11-16T07:30:00.000+09:00","office":"rs-jayapura","ticket":"A-001","service":"ktp","id":"rs-jayapura-331"}"#,
            r#"{"type":"heartbeat","ts":1796173200123}"#,
            r#" {"type":"feedback","ts":1796173200123,"rating":5,"ticket":null,"firmware":{"v":[1,2.5e3,true,null]}} "#,
            r#"{"type":"issu\u0065d","ts":1,"ticket":"A\u00e9 \ud83d\ude00","service":"ktp"}"#,
        ] {
            let scanned = scan(payload.as_bytes()).unwrap_or_else(|| panic!("left to serde_json: {payload}"));
            assert_eq!(scanned, serde_json_raw(payload.as_bytes()).unwrap());
        }
    }

    #[test]
    fn what_serde_json_refuses_is_not_scanned() {
        for payload in [
            r#"{"type":"heartbeat","type":"heartbeat","ts":1}"#,
            r#"{"type":"heartbeat","ts":1,}"#,
            r#"{"type":"heartbeat","ts":01}"#,
            r#"{"type":"heartbeat","ts":1}x"#,
            "\u{c}{\"type\":\"heartbeat\",\"ts\":1}",
            r#"{"type":"heartbeat","ts":1,"x":[1,]}"#,
            r#"{"type":"a\uD83D","ts":1}"#,
        ] {
            assert!(scan(payload.as_bytes()).is_none(), "{payload}");
        }
        assert!(scan(b"{\"type\":\"\xff\",\"ts\":1}").is_none());
    }
}
