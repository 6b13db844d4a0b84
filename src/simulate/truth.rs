//! Ground truth: how each simulated ticket really ended, including the
//! endings no event shows (walk-outs, people left at closing), and whether
//! a tracker could know the ticket's final segment.
//!
//! One record per ticket (a transferred ticket's record is its final end).
//! The file is NDJSON, one record a line, office by office in office order
//! and, within an office, in issue order:
//!
//! `{"office":"mpp-jakarta-pusat","ticket":"A-001","issued":"2026-11-27T07:31:02.113+07:00","end":"served","at":"2026-11-27T07:40:12.020+07:00","seen":true}`

use std::io::Write;

use crate::time::Millis;

/// How a ticket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TicketEnd {
    /// `finished`.
    Served,
    /// `no_show`.
    NoShow,
    /// `cancelled`: out of patience while waiting.
    Cancelled,
    /// Left while waiting, before any call, with no event.
    WalkedOut,
    /// Still waiting when the counters closed; left with no event.
    LeftAtClose,
}

impl TicketEnd {
    pub const ALL: [TicketEnd; 5] =
        [TicketEnd::Served, TicketEnd::NoShow, TicketEnd::Cancelled, TicketEnd::WalkedOut, TicketEnd::LeftAtClose];

    /// The name in the truth file.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketEnd::Served => "served",
            TicketEnd::NoShow => "no_show",
            TicketEnd::Cancelled => "cancelled",
            TicketEnd::WalkedOut => "walked_out",
            TicketEnd::LeftAtClose => "left_at_close",
        }
    }

    /// Ended with no event: a tracker that saw the segment finds it still waiting.
    pub fn is_silent(self) -> bool {
        match self {
            TicketEnd::WalkedOut | TicketEnd::LeftAtClose => true,
            TicketEnd::Served | TicketEnd::NoShow | TicketEnd::Cancelled => false,
        }
    }
}

/// One ticket's ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketTruth {
    pub office: String,
    pub ticket: String,
    /// When it was first issued, and that time as the events write it (the office's offset).
    pub issued_at: Millis,
    pub issued: String,
    pub end: TicketEnd,
    /// When it ended, and that time as the events write it.
    pub end_at: Millis,
    pub at: String,
    /// Its final segment was published: its `issued` was, or it was
    /// transferred in by a (always published) `transferred` event.
    pub seen: bool,
}

impl TicketTruth {
    /// The record as one line of JSON, without the newline. Every value is
    /// an identifier, a ticket number or a timestamp: none needs escaping.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"office":"{}","ticket":"{}","issued":"{}","end":"{}","at":"{}","seen":{}}}"#,
            self.office,
            self.ticket,
            self.issued,
            self.end.as_str(),
            self.at,
            self.seen
        )
    }
}

/// Writes records as NDJSON; returns how many.
pub(super) fn write_records(records: &[TicketTruth], writer: impl Write) -> std::io::Result<u64> {
    let mut writer = std::io::BufWriter::with_capacity(1 << 16, writer);
    for record in records {
        writer.write_all(record.to_json().as_bytes())?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(records.len() as u64)
}
