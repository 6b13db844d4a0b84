//! What the loop publishes for the operations endpoint, and when.

use std::time::Duration;

use crate::durable::Durability;
use crate::ops::{OpsPublisher, OpsSnapshot};
use crate::pipeline::Pipeline;

/// How often the loop publishes its counts for the operations endpoint.
pub(super) const OPS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// When the loop publishes for the endpoint: on its own timer while it has
/// time, and, while a backlog keeps it from the timer (messages come first),
/// after every [`OPS_CHECK_EVERY`] inputs once a second has passed. An input
/// costs an increment and a comparison.
#[derive(Debug)]
pub(super) struct OpsCadence {
    inputs: u32,
    last: std::time::Instant,
}

/// Inputs between looks at the clock (at 55,000 messages a second, about 50 a second).
const OPS_CHECK_EVERY: u32 = 1024;

impl OpsCadence {
    pub(super) fn new() -> OpsCadence {
        OpsCadence { inputs: 0, last: std::time::Instant::now() }
    }

    /// Counts one input; true when it is time to publish.
    pub(super) fn input_due(&mut self) -> bool {
        self.inputs += 1;
        if self.inputs < OPS_CHECK_EVERY {
            return false;
        }
        self.inputs = 0;
        self.last.elapsed() >= OPS_PUBLISH_INTERVAL
    }

    pub(super) fn published(&mut self) {
        self.inputs = 0;
        self.last = std::time::Instant::now();
    }
}

/// Publishes the loop's counts for the operations endpoint (the writer's it
/// reads live).
pub(super) fn publish_ops(publisher: &OpsPublisher, pipeline: &Pipeline, durability: Option<&Durability>) {
    let snapshot = OpsSnapshot {
        at: Some(std::time::Instant::now()),
        stats: pipeline.stats().clone(),
        open_tickets: pipeline.tracker().open_segments() as u64,
        newest_event: pipeline.newest_event(),
        journal_bytes: durability.map(Durability::journal_bytes),
        last_snapshot_at: durability.and_then(Durability::last_snapshot_at),
        journal_failing: durability.is_some_and(Durability::failing),
        ..OpsSnapshot::default()
    };
    publisher.send_replace(snapshot);
}
