//! Counts of what happened to incoming messages.
//!
//! Owned by the task that owns the tracker; nothing else writes it.

use std::fmt::Write as _;

use crate::event::RejectReason;
use crate::point::Point;
use crate::tracker::{Note, NoteCounts, Outcome};

/// Totals since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that decoded into a valid event (duplicates included).
    pub accepted: u64,
    pub rejected: [u64; RejectReason::ALL.len()],
    pub notes: NoteCounts,
    /// Points handed to the sink.
    pub points: u64,
    /// The same points by measurement, in the order of [`MEASUREMENTS`].
    pub points_by_measurement: [u64; MEASUREMENTS.len()],
    /// `ticket` points by their `outcome` tag, in the order of [`Outcome::ALL`].
    pub ticket_outcomes: [u64; Outcome::ALL.len()],
    /// Closed tickets and dedup keys forgotten before the dedup horizon, their
    /// office being at `limits.max_remembered_per_office`.
    pub forgotten_early: u64,
    /// Messages the broker delivered again after a reconnection or a
    /// restart that the journal already held (also accepted, and duplicates).
    pub redelivered: u64,
    /// Retained copies the broker sent because of a subscription: not
    /// events, acknowledged and skipped.
    pub retained: u64,
}

/// The measurements the pipeline writes (the daemon's own `queuewatch` row aside).
pub const MEASUREMENTS: [&str; 6] = ["ticket", "breach", "queue", "counter", "feedback", "office"];

impl Stats {
    /// Counts one point of `measurement` (one of [`MEASUREMENTS`]).
    pub fn point(&mut self, measurement: &str) {
        self.points += 1;
        if let Some(index) = MEASUREMENTS.iter().position(|known| *known == measurement) {
            self.points_by_measurement[index] += 1;
        }
    }

    /// Counts one point handed to the sink: by measurement, and a `ticket`
    /// point by its outcome too.
    pub fn count_point(&mut self, point: &Point) {
        self.point(point.measurement);
        if point.measurement == "ticket" {
            let outcome = point.tag_value("outcome");
            if let Some(index) = Outcome::ALL.iter().position(|known| Some(known.as_str()) == outcome) {
                self.ticket_outcomes[index] += 1;
            }
        }
    }

    /// `ticket` points of `outcome` so far.
    pub fn ticket_points_of(&self, outcome: Outcome) -> u64 {
        self.ticket_outcomes[outcome as usize]
    }

    /// Points of `measurement` so far.
    pub fn points_of(&self, measurement: &str) -> u64 {
        MEASUREMENTS.iter().position(|known| *known == measurement).map_or(0, |index| self.points_by_measurement[index])
    }

    pub fn reject(&mut self, reason: RejectReason) {
        self.rejected[reason as usize] += 1;
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize]
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Accepted events still waiting in a reorder buffer for their outcome.
    pub fn held(&self) -> u64 {
        self.accepted.saturating_sub(self.notes.outcomes_total())
    }

    /// A multi-line human summary: what became of the accepted events (each
    /// has exactly one outcome once it leaves the reorder buffer), the
    /// remarks on applied events, then the rejections by reason.
    pub fn summary(&self) -> String {
        let mut text = format!("events accepted: {}\n", self.accepted);
        for note in Note::OUTCOMES {
            let _ = writeln!(text, "  {}: {}", note.as_str(), self.notes.get(note));
        }
        if self.held() > 0 {
            let _ = writeln!(text, "  still held for reordering: {}", self.held());
        }
        for note in Note::REMARKS {
            let count = self.notes.get(note);
            if count > 0 {
                let _ = writeln!(text, "  {}: {count}", note.as_str());
            }
        }
        if self.forgotten_early > 0 {
            let _ = writeln!(
                text,
                "  closed tickets and dedup keys forgotten early (limits.max_remembered_per_office): {}",
                self.forgotten_early
            );
        }
        if self.redelivered > 0 {
            let _ = writeln!(
                text,
                "  of the duplicates, redelivered by the broker and already journaled: {}",
                self.redelivered
            );
        }
        if self.retained > 0 {
            let _ = writeln!(text, "retained copies skipped: {}", self.retained);
        }
        let _ = writeln!(text, "events rejected: {}", self.rejected_total());
        for reason in RejectReason::ALL {
            let count = self.rejected(reason);
            if count > 0 {
                let _ = writeln!(text, "  rejected {}: {count}", reason.as_str());
            }
        }
        let _ = writeln!(text, "points produced: {}", self.points);
        for (measurement, count) in MEASUREMENTS.iter().zip(self.points_by_measurement) {
            if count > 0 {
                let _ = writeln!(text, "  {measurement}: {count}");
            }
            if measurement == &"ticket" && count > 0 {
                for (outcome, count) in Outcome::ALL.iter().zip(self.ticket_outcomes) {
                    let _ = writeln!(text, "    {}: {count}", outcome.as_str());
                }
            }
        }
        text
    }

    /// One line for periodic logs.
    pub fn one_line(&self) -> String {
        self.summary().trim_end().replace("\n    ", ", ").replace("\n  ", ", ").replace('\n', "; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_non_zero_reasons() {
        let mut stats = Stats { accepted: 3, ..Stats::default() };
        stats.reject(RejectReason::MalformedJson);
        stats.notes.add(Note::Duplicate);
        stats.notes.add(Note::Applied);
        let summary = stats.summary();
        assert!(summary.contains("events rejected: 1"));
        assert!(summary.contains("rejected malformed_json: 1"));
        assert!(summary.contains("\n  applied: 1\n  duplicate: 1\n  after_close: 0\n"), "{summary}");
        assert!(summary.contains("still held for reordering: 1"), "{summary}");
        assert!(!summary.contains("oversized"));
        assert!(!summary.contains("clock_skew"));
    }
}
