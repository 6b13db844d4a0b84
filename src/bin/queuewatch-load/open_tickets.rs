//! Tickets issued and never called, for the scenarios that measure a
//! tracker holding many of them: `memory` (bytes per open ticket) and
//! `replay --open-tickets` (events/s while they are open).

use std::fmt::Write as _;

use queuewatch::time::Millis;

/// `issued` events spread round-robin over `offices`: per office one ticket
/// every `spacing_ms` from `first_ts`, services taken in turn.
pub struct OpenTickets<'a> {
    pub offices: &'a [String],
    /// Services and the ticket letter each issues.
    pub services: &'a [(&'a str, char)],
    pub first_ts: Millis,
    pub spacing_ms: i64,
    /// Between the office and the number in each event's `id`: ids must
    /// not collide with those of events replayed after them.
    pub id_infix: &'a str,
}

impl OpenTickets<'_> {
    /// The payload of ticket `index` (0-based), written into `payload`.
    pub fn payload(&self, index: usize, payload: &mut String) {
        let office = &self.offices[index % self.offices.len()];
        let number = index / self.offices.len();
        let (service, letter) = self.services[number % self.services.len()];
        let ts = self.first_ts.plus_ms(number as i64 * self.spacing_ms);
        payload.clear();
        let _ = write!(
            payload,
            r#"{{"type":"issued","ts":{},"office":"{office}","ticket":"{letter}-{:04}","service":"{service}","id":"{office}{}-{}"}}"#,
            ts.0,
            number / self.services.len() + 1,
            self.id_infix,
            number + 1
        );
    }
}
