//! The live side of an office: gauges (`queue`, `office`), counter sessions
//! (`counter`), satisfaction buttons (`feedback`), idle counters and silent
//! offices, and the alerts they raise.
//!
//! Everything here runs inside the office's ordered loop (see the parent
//! module), so it sees exactly the events with `ts` up to the moment it
//! describes. Two things depend on wall time and exist only in
//! [`Mode::Live`](super::Mode::Live): whether an office is `silent`, and
//! gauges for configured offices that have never been heard.
//!
//! [`OfficeLive`] owns this state and reads nothing of the ticket side: the
//! ticket side tells it what changed (a segment joined or left a queue, a
//! counter became busy, a ticket was served) and hands it the few counts a
//! decision needs (open segments, people waiting, the next held event's
//! time). Its idle-counter deadlines are its own timer heap, merged into the
//! office's ordered loop by the parent.
//!
//! Gauge rows are written only when they carry news (see
//! [`OfficeLive::snapshot`]); the last written row of each series is kept
//! here, so the decision depends on event-time state alone.
//!
//! Layout: this file holds [`OfficeLive`] (the state, what forgetting and a
//! stored state need of it, the arrival counts); `gauges.rs` the services'
//! queues and the `queue` and `office` rows of a snapshot; `counters.rs`
//! counter sessions, feedback and idle counters; `alerts.rs` the [`Alert`]
//! type and silence. Each adds its methods to [`OfficeLive`].

mod alerts;
mod counters;
mod gauges;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use super::store::{renumber, NameId};
use super::{BreachState, TrackerSettings};
use crate::time::Millis;

pub use alerts::{Alert, AlertKind, AlertState};
pub(super) use gauges::{QueueShare, SnapshotFacts};

use counters::CounterState;
use gauges::{OfficeRow, ServiceGauge};

/// Gauges stop this long after an office's last event while nothing is open
/// there, so a replay across a gap of days does not write a row every
/// interval of the gap.
pub(super) const GAUGE_SPAN_AFTER_LAST_EVENT_MS: i64 = 24 * 3_600_000;
/// Per-office live state.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct OfficeLive {
    next_snapshot: Option<Millis>,
    /// Newest ts among applied events.
    last_event_ts: Option<Millis>,
    /// Wall time of the last message (accepted or rejected).
    last_arrival_wall: Option<Millis>,
    /// Messages accepted and rejected since the last `office` row.
    accepted_in_interval: i64,
    rejected_in_interval: i64,
    /// Events stamped ahead of the wall clock since the last `office` row.
    clock_ahead_in_interval: i64,
    /// Whether an event was applied or a queue or counter changed (an
    /// expiry changes them without an event) since the last snapshot.
    changed_since_snapshot: bool,
    /// Idle-counter deadlines, lazily validated against the counter's idle start.
    idle_deadlines: BinaryHeap<Reverse<(Millis, NameId)>>,
    /// What the last written `office` row said, to write the next only when it carries news.
    last_office_row: Option<OfficeRow>,
    /// By interned service; `None` is the `unknown` service of orphans.
    /// Ordered, so that the rows of one snapshot come out in the same order
    /// on every run (a hash map's order changes from process to process).
    services: BTreeMap<Option<NameId>, ServiceGauge>,
    /// By interned counter, in first-seen order.
    counters: BTreeMap<NameId, CounterState>,
    sends_counter_events: bool,
    /// The `silent` alert, while firing: its deadline.
    silent_since: Option<Millis>,
}

/// Forgetting what is no longer in use (see `OfficeState::forget_names`).
impl OfficeLive {
    /// Drops the services and counters nothing happens at any more: a
    /// service with nobody waiting or served and no event since `cutoff`; a
    /// counter with no session open, nobody served and no idle alert, whose
    /// name `unused` says was last used before `cutoff`.
    pub(super) fn forget_unused(&mut self, cutoff: Millis, unused: impl Fn(NameId) -> bool) {
        // The snapshots' own rule, for when there are none (`tracking.gauges = false`).
        self.drop_services_idle_since(cutoff);
        self.counters.retain(|counter, state| {
            state.open_since.is_some()
                || state.active > 0
                || state.idle_since.is_some()
                || state.idle_breach != BreachState::None
                || !unused(*counter)
        });
        let counters = &self.counters;
        self.idle_deadlines.retain(|Reverse((_, counter))| counters.contains_key(counter));
    }

    /// Follows the office's names being renumbered (`Names::retain`); every
    /// name still referred to here was kept.
    pub(super) fn renumber(
        &mut self,
        services: &[Option<NameId>],
        counters: &[Option<NameId>],
        staff: &[Option<NameId>],
    ) {
        let renumber_opt = |names: &[Option<NameId>], id: Option<NameId>| id.and_then(|id| renumber(names, id));
        self.services = std::mem::take(&mut self.services)
            .into_iter()
            .filter_map(|(service, gauge)| match service {
                None => Some((None, gauge)),
                Some(id) => renumber(services, id).map(|id| (Some(id), gauge)),
            })
            .collect();
        self.counters = std::mem::take(&mut self.counters)
            .into_iter()
            .filter_map(|(counter, mut state)| {
                state.staff = renumber_opt(staff, state.staff);
                renumber(counters, counter).map(|id| (id, state))
            })
            .collect();
        self.idle_deadlines = std::mem::take(&mut self.idle_deadlines)
            .into_iter()
            .filter_map(|Reverse((at, counter))| renumber(counters, counter).map(|id| Reverse((at, id))))
            .collect();
    }

    /// Whether nothing is left here to write or resolve.
    pub(super) fn is_idle(&self) -> bool {
        self.services.is_empty() && self.counters.is_empty() && self.silent_since.is_none()
    }

    /// The newest ts among applied events.
    pub(super) fn last_event_ts(&self) -> Option<Millis> {
        self.last_event_ts
    }
}

/// What a stored state (`state`) needs of the live side.
impl OfficeLive {
    /// The interned (services, counters, staff) this state refers to, for
    /// checking a decoded state against its office's names.
    pub(super) fn name_ids(&self) -> [Vec<NameId>; 3] {
        let services = self.services.keys().flatten().copied().collect();
        let counters = self.counters.keys().chain(self.idle_deadlines.iter().map(|Reverse((_, id))| id)).copied();
        let staff = self.counters.values().filter_map(|counter| counter.staff).collect();
        [services, counters.collect(), staff]
    }

    /// After a restart (see `Tracker::resume`): what is measured on the wall
    /// clock starts again at `now`. The last arrival moves to `now`, so the
    /// downtime does not count as the office's silence; an office never
    /// heard restarts its wall-clock gauges from `now`, as at a first start,
    /// rather than writing rows for the downtime.
    pub(super) fn resume(&mut self, now: Millis, heard: bool) {
        if self.last_arrival_wall.is_some() {
            self.last_arrival_wall = Some(now);
        }
        if !heard {
            self.next_snapshot = None;
        }
    }
}

impl OfficeLive {
    /// An accepted message (its arrival counts go on the next `office` row).
    pub(super) fn note_accepted(&mut self) {
        self.accepted_in_interval += 1;
    }

    /// A rejected message from this office.
    pub(super) fn note_rejection(&mut self) {
        self.rejected_in_interval += 1;
    }

    /// An accepted message stamped ahead of the wall clock.
    pub(super) fn note_clock_ahead(&mut self) {
        self.clock_ahead_in_interval += 1;
    }

    /// An event was applied: gauges start with the earliest applied event,
    /// which (unlike the first arrival) does not depend on arrival order,
    /// at the first multiple of the interval at or after it.
    pub(super) fn note_applied(&mut self, settings: &TrackerSettings, ts: Millis) {
        if self.last_event_ts.is_none() && settings.gauges {
            self.next_snapshot = Some(ceil_to(ts, settings.snapshot_interval_ms));
        }
        self.changed_since_snapshot = true;
        self.last_event_ts = Some(self.last_event_ts.map_or(ts, |last| last.max(ts)));
    }

    /// When the next gauge snapshot is due on the office clock.
    pub(super) fn next_snapshot(&self) -> Option<Millis> {
        self.next_snapshot
    }
}

/// The first multiple of `interval_ms` at or after `at`.
fn ceil_to(at: Millis, interval_ms: i64) -> Millis {
    Millis(at.0.div_euclid(interval_ms).saturating_add(i64::from(at.0.rem_euclid(interval_ms) != 0)) * interval_ms)
}
