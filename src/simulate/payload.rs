//! The JSON of one simulated event, written directly: the simulator's
//! values never need escaping, so no serializer is needed on its hot path.

use crate::event::EventType;

/// Writes one payload: a JSON object with `type`, `ts` and `office` first and
/// `id` last. Every value written is either an identifier, a ticket number of
/// the form `A-001`, or an RFC 3339 timestamp: none needs JSON escaping, and
/// the builder checks that in debug builds.
pub(super) struct PayloadBuilder {
    text: String,
}

impl PayloadBuilder {
    pub(super) fn new(kind: EventType, ts: &str, office: &str) -> PayloadBuilder {
        let mut builder = PayloadBuilder { text: String::with_capacity(192) };
        builder.text.push('{');
        builder.push_string("type", kind.as_str());
        builder.push_string("ts", ts);
        builder.push_string("office", office);
        builder
    }

    pub(super) fn field(mut self, key: &str, value: &str) -> PayloadBuilder {
        self.push_string(key, value);
        self
    }

    pub(super) fn integer(mut self, key: &str, value: i64) -> PayloadBuilder {
        self.push_key(key);
        self.text.push_str(&value.to_string());
        self
    }

    pub(super) fn finish(mut self, id: &str) -> String {
        self.push_string("id", id);
        self.text.push('}');
        self.text
    }

    fn push_key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.text.push('"');
        self.text.push_str(key);
        self.text.push_str("\":");
    }

    fn push_string(&mut self, key: &str, value: &str) {
        debug_assert!(
            value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "{value:?} would need JSON escaping"
        );
        self.push_key(key);
        self.text.push('"');
        self.text.push_str(value);
        self.text.push('"');
    }
}
