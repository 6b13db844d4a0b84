//! The live side of an office: gauges (`queue`, `office`), counter sessions
//! (`counter`), satisfaction buttons (`feedback`), idle counters and silent
//! offices, and the alerts they raise.
//!
//! Everything here runs inside the office's ordered loop (see the parent
//! module), so it sees exactly the events with `ts` up to the moment it
//! describes. Two things depend on wall time and exist only in
//! [`Mode::Live`]: whether an office is `silent`, and gauges for configured
//! offices that have never been heard.
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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::store::{renumber, NameId, SlotId};
use super::{BreachState, Mode, OfficeContext, Output, TrackerSettings};
use crate::event::{Event, EventType};
use crate::ids::{CounterId, OfficeId, ServiceId, TicketNo};
use crate::point::{seconds, FieldValue};
use crate::time::Millis;

/// Gauges stop this long after an office's last event while nothing is open
/// there, so a replay across a gap of days does not write a row every
/// interval of the gap.
pub(super) const GAUGE_SPAN_AFTER_LAST_EVENT_MS: i64 = 24 * 3_600_000;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Wait,
    Service,
    Idle,
    Silent,
}

impl AlertKind {
    /// The tag value, shared rather than allocated for every point.
    pub(super) fn tag(self) -> Arc<str> {
        static TAGS: std::sync::LazyLock<[Arc<str>; 4]> = std::sync::LazyLock::new(|| {
            [AlertKind::Wait, AlertKind::Service, AlertKind::Idle, AlertKind::Silent]
                .map(|kind| Arc::from(kind.as_str()))
        });
        TAGS[self as usize].clone()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Wait => "wait",
            AlertKind::Service => "service",
            AlertKind::Idle => "idle",
            AlertKind::Silent => "silent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// A breach alert changing state. `id` is the same when firing and when resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: String,
    pub kind: AlertKind,
    pub state: AlertState,
    pub office: OfficeId,
    pub service: Option<ServiceId>,
    pub ticket: Option<TicketNo>,
    pub counter: Option<CounterId>,
    pub target_ms: i64,
    /// The deadline that was missed.
    pub since: Millis,
    /// When the state changed (office clock for breaches, wall clock for `silent`).
    pub ts: Millis,
}

impl Alert {
    /// The JSON published on the alerts topic.
    pub fn to_json(&self) -> String {
        let mut message = serde_json::Map::new();
        message.insert("id".into(), self.id.clone().into());
        message.insert("kind".into(), self.kind.as_str().into());
        message.insert("state".into(), self.state.as_str().into());
        message.insert("office".into(), self.office.as_str().into());
        if let Some(service) = &self.service {
            message.insert("service".into(), service.as_str().into());
        }
        if let Some(ticket) = &self.ticket {
            message.insert("ticket".into(), ticket.as_str().into());
        }
        if let Some(counter) = &self.counter {
            message.insert("counter".into(), counter.as_str().into());
        }
        message.insert("target_s".into(), serde_json::json!(self.target_ms as f64 / 1000.0));
        message.insert("since".into(), self.since.to_rfc3339().into());
        message.insert("ts".into(), self.ts.to_rfc3339().into());
        serde_json::Value::Object(message).to_string()
    }
}

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
    services: HashMap<Option<NameId>, ServiceGauge>,
    /// By interned counter, in first-seen order.
    counters: BTreeMap<NameId, CounterState>,
    sends_counter_events: bool,
    /// The `silent` alert, while firing: its deadline.
    silent_since: Option<Millis>,
}

/// One service's queue, kept up to date as segments change so that a
/// snapshot costs nothing per ticket. A stored state leaves out what the
/// open segments determine (see [`OfficeLive::restore_queues`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ServiceGauge {
    issued: i64,
    called: i64,
    last_event: Option<Millis>,
    #[serde(skip)]
    waiting: i64,
    #[serde(skip)]
    in_service: i64,
    /// Waiting segments whose issue time is known, oldest first.
    #[serde(skip)]
    waiting_since: BTreeSet<(Millis, SlotId)>,
    /// How many of `waiting_since` lie before the bound (the last snapshot's
    /// `over_target`), kept up as tickets join and leave so that the next
    /// snapshot counts only the tickets that passed their target since.
    #[serde(skip)]
    over_target: Option<OverTarget>,
    /// The service's wait target at this office (looked up once).
    #[serde(skip)]
    wait_ms: Option<i64>,
    /// What the last written `queue` row of this service said.
    last_row: Option<QueueRow>,
}

/// `over_target` as of the last bound asked for, and the first waiting
/// ticket at or after that bound (the next to pass its target), so that a
/// later bound usually costs no search of the waiting tickets at all.
#[derive(Debug, Clone, Copy)]
struct OverTarget {
    bound: (Millis, SlotId),
    count: i64,
    /// `None` when unknown (that ticket left the queue).
    next: Option<Option<(Millis, SlotId)>>,
}

impl ServiceGauge {
    /// The first instant at which the oldest waiting ticket has waited more
    /// than twice `wait_ms` (its issue + 2 × target + 1 ms), if anyone waits.
    fn oldest_passes_twice_target(&self, wait_ms: i64) -> Option<Millis> {
        let (issue, _) = self.waiting_since.first()?;
        Some(issue.plus_ms(wait_ms.saturating_mul(2)).plus_ms(1))
    }

    /// Waiting tickets issued before `before`, and the issue time of the
    /// first one issued at or after it: counted on from the last bound.
    fn over_target(&mut self, before: Millis) -> (i64, Option<Millis>) {
        let bound = (before, 0);
        let over = match self.over_target {
            Some(last) if last.bound <= bound => match last.next {
                Some(next) if next.is_none_or(|next| next >= bound) => OverTarget { bound, ..last },
                _ => OverTarget {
                    bound,
                    count: last.count + self.waiting_since.range(last.bound..bound).count() as i64,
                    next: Some(self.waiting_since.range(bound..).next().copied()),
                },
            },
            Some(last) => OverTarget {
                bound,
                count: last.count - self.waiting_since.range(bound..last.bound).count() as i64,
                next: Some(self.waiting_since.range(bound..).next().copied()),
            },
            None => OverTarget {
                bound,
                count: self.waiting_since.range(..bound).count() as i64,
                next: Some(self.waiting_since.range(bound..).next().copied()),
            },
        };
        self.over_target = Some(over);
        (over.count, over.next.flatten().map(|(issue, _)| issue))
    }

    fn wait_add(&mut self, entry: (Millis, SlotId)) {
        if !self.waiting_since.insert(entry) {
            return;
        }
        let Some(over) = self.over_target.as_mut() else { return };
        if entry < over.bound {
            over.count += 1;
        } else if let Some(next) = over.next.as_mut().filter(|next| next.is_none_or(|next| entry < next)) {
            *next = Some(entry);
        }
    }

    fn wait_remove(&mut self, entry: (Millis, SlotId)) {
        if !self.waiting_since.remove(&entry) {
            return;
        }
        let Some(over) = self.over_target.as_mut() else { return };
        if entry < over.bound {
            over.count -= 1;
        } else if over.next == Some(Some(entry)) {
            over.next = None;
        }
    }
}

/// The state fields of a `queue` row: a row is news when one of them changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct QueueRow {
    waiting: i64,
    in_service: i64,
    over_target: i64,
}

/// The state fields of an `office` row: a row is news when one of them changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct OfficeRow {
    waiting: i64,
    in_service: i64,
    counters_open: Option<i64>,
    silent: Option<bool>,
}

/// What one open segment contributes to its service's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueShare {
    pub(super) service: Option<NameId>,
    pub(super) waiting: bool,
    pub(super) issue: Option<Millis>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct CounterState {
    open_since: Option<Millis>,
    staff: Option<NameId>,
    /// Segments this counter is busy with now.
    active: u32,
    active_since: Millis,
    busy_ms: i64,
    served: i64,
    /// Idle (open, serving nobody) with people waiting since.
    idle_since: Option<Millis>,
    idle_breach: BreachState,
}

impl OfficeLive {
    pub(super) fn count_issued(&mut self, service: Option<NameId>, at: Millis) {
        let gauge = self.service_gauge(service, at);
        gauge.issued += 1;
    }

    pub(super) fn count_called(&mut self, service: Option<NameId>, at: Millis) {
        let gauge = self.service_gauge(service, at);
        gauge.called += 1;
    }

    pub(super) fn touch_service(&mut self, service: Option<NameId>, at: Millis) {
        self.service_gauge(service, at);
    }

    pub(super) fn queue_add(&mut self, share: QueueShare, slot: SlotId) {
        self.changed_since_snapshot = true;
        let gauge = self.services.entry(share.service).or_default();
        if share.waiting {
            gauge.waiting += 1;
            if let Some(issue) = share.issue {
                gauge.wait_add((issue, slot));
            }
        } else {
            gauge.in_service += 1;
        }
    }

    pub(super) fn queue_remove(&mut self, share: QueueShare, slot: SlotId) {
        self.changed_since_snapshot = true;
        let Some(gauge) = self.services.get_mut(&share.service) else { return };
        if share.waiting {
            gauge.waiting -= 1;
            if let Some(issue) = share.issue {
                gauge.wait_remove((issue, slot));
            }
        } else {
            gauge.in_service -= 1;
        }
    }

    fn service_gauge(&mut self, service: Option<NameId>, at: Millis) -> &mut ServiceGauge {
        self.changed_since_snapshot = true;
        let gauge = self.services.entry(service).or_default();
        gauge.last_event = Some(gauge.last_event.map_or(at, |last| last.max(at)));
        gauge
    }

    pub(super) fn acquire_counter(&mut self, counter: NameId, at: Millis) {
        let state = self.counters.entry(counter).or_default();
        if state.active == 0 {
            state.active_since = at;
        }
        state.active += 1;
    }

    pub(super) fn release_counter(&mut self, counter: NameId, at: Millis) {
        let Some(state) = self.counters.get_mut(&counter) else { return };
        if state.active == 0 {
            return;
        }
        state.active -= 1;
        if state.active == 0 {
            state.busy_ms += at.since(state.active_since).max(0);
        }
    }

    pub(super) fn count_served(&mut self, counter: NameId) {
        self.counters.entry(counter).or_default().served += 1;
    }
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

    /// Rebuilds the queue counts, which are not stored, from the open
    /// segments' shares: the same calls that built them, without marking
    /// a change for the next snapshot.
    pub(super) fn restore_queues(&mut self, shares: impl IntoIterator<Item = (QueueShare, SlotId)>) {
        let changed = self.changed_since_snapshot;
        for gauge in self.services.values_mut() {
            (gauge.waiting, gauge.in_service) = (0, 0);
            gauge.waiting_since.clear();
            gauge.over_target = None;
        }
        for (share, slot) in shares {
            self.queue_add(share, slot);
        }
        self.changed_since_snapshot = changed;
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

/// What a snapshot needs to know of the ticket side.
#[derive(Debug, Clone, Copy)]
pub(super) struct SnapshotFacts {
    pub(super) open_segments: usize,
    /// The time of the earliest event still held for reordering.
    pub(super) next_held: Option<Millis>,
    /// Before this time the loop applies no event and fires no deadline:
    /// the office's state stands still until then.
    pub(super) next_change: Millis,
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

    /// A message from this office arrived at wall time `now`.
    pub(super) fn heard_at(&mut self, ctx: &OfficeContext, settings: &TrackerSettings, now: Millis, out: &mut Output) {
        self.last_arrival_wall = Some(now);
        if settings.mode == Mode::Live {
            self.resolve_silence(ctx, now, out);
        }
    }

    /// `office` gauges on the wall clock for a configured office never heard (live only).
    pub(super) fn unheard_snapshots(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        now: Millis,
        out: &mut Output,
    ) {
        if settings.mode != Mode::Live || !settings.gauges {
            return;
        }
        let limit = now.minus_ms(settings.reorder_window_ms);
        let interval = settings.snapshot_interval_ms;
        let mut at = *self.next_snapshot.get_or_insert_with(|| ceil_to(limit, interval));
        while at < limit {
            let silent = self.silent_at(ctx, settings, at, now);
            let row = OfficeRow { waiting: 0, in_service: 0, counters_open: None, silent };
            if self.office_row_due(row) || self.opens_or_closes_by(ctx, settings, at) {
                self.write_office_row(ctx, row, at, out);
            }
            at = at.plus_ms(interval);
        }
        self.next_snapshot = Some(at);
    }

    /// Raises or resolves the `silent` alert (live only, offices with opening hours).
    pub(super) fn check_silence(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        now: Millis,
        out: &mut Output,
    ) {
        if settings.mode != Mode::Live {
            return;
        }
        let Some(config) = ctx.config.as_ref().filter(|config| config.has_hours()) else { return };
        // A configured office never heard is measured from the daemon's start.
        let last_arrival = *self.last_arrival_wall.get_or_insert(now);
        let open = config.is_open_at(now);
        let silent = open && now.since(last_arrival) >= settings.silence_after_ms;
        match (silent, self.silent_since) {
            (true, None) => {
                let since = last_arrival.plus_ms(settings.silence_after_ms);
                self.silent_since = Some(since);
                out.alerts.push(silent_alert(ctx, AlertState::Firing, since, now));
            }
            (false, Some(_)) if !open => self.resolve_silence(ctx, now, out),
            _ => {}
        }
    }

    fn resolve_silence(&mut self, ctx: &OfficeContext, now: Millis, out: &mut Output) {
        if let Some(since) = self.silent_since.take() {
            out.alerts.push(silent_alert(ctx, AlertState::Resolved, since, now));
        }
    }

    /// The gauges at `next_snapshot`: every event with `ts <= T` is applied
    /// and none later. Rows are written only when they carry news, decided
    /// on event-time state alone so that a replay writes what a live run
    /// writes: a `queue` row when its `waiting`, `in_service` or
    /// `over_target` differ from the series' last written row, when tickets
    /// were issued or called in the interval, or when someone waits and T is
    /// a multiple of `gauge_keepalive` (keeping `oldest_wait_s` fresh), or
    /// when the oldest waiting ticket passed twice its wait target in the
    /// interval: the row then says so at once rather than at the next
    /// keepalive, so that a rule comparing `oldest_wait_s` with twice the
    /// target fires when the wait does (`over_target` does the same at the
    /// target itself).
    pub(super) fn snapshot(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        facts: SnapshotFacts,
        now: Millis,
        out: &mut Output,
    ) {
        let Some(at) = self.next_snapshot else { return };
        let interval = settings.snapshot_interval_ms;
        self.next_snapshot = Some(at.plus_ms(interval));
        let quiet_for_long = facts.open_segments == 0
            && self.last_event_ts.is_none_or(|last| at.since(last) > GAUGE_SPAN_AFTER_LAST_EVENT_MS);
        if quiet_for_long {
            // Skip ahead to the next event rather than write a gap's worth of empty rows.
            if let Some(next_held) = facts.next_held {
                let next = ceil_to(next_held, interval);
                if next > at {
                    self.next_snapshot = Some(next);
                }
            }
            return;
        }

        self.drop_idle_services(settings, at);

        // Nothing applied since the last snapshot, nobody waiting (so no
        // over_target can change and no keepalive is due), no counts
        // pending and no wall-clock field: every row would repeat the last
        // written one, so none is due. Most snapshots of a night end here.
        let changed = std::mem::take(&mut self.changed_since_snapshot);
        let wall_clock_fields = settings.mode == Mode::Live && ctx.config.as_ref().is_some_and(|c| c.has_hours());
        let opening_or_closing = self.opens_or_closes_by(ctx, settings, at);
        let unchanged = !changed
            && !opening_or_closing
            && !wall_clock_fields
            && self.rejected_in_interval == 0
            && self.clock_ahead_in_interval == 0
            && self.services.values().all(|gauge| gauge.waiting == 0 && gauge.issued == 0 && gauge.called == 0);
        if unchanged {
            self.skip_snapshots_without_news(ctx, settings, at, facts);
            return;
        }

        let keepalive_due = at.0.rem_euclid(settings.gauge_keepalive_ms) == 0;
        let time_ns = at.0.saturating_mul(1_000_000);
        let (mut waiting, mut in_service) = (0, 0);
        for (service, gauge) in &mut self.services {
            let wait_ms = *gauge.wait_ms.get_or_insert_with(|| ctx.targets(settings, *service).wait_ms);
            // Waiting longer than the target at T: issued before T - target.
            let (over_target, _) = gauge.over_target(at.minus_ms(wait_ms));
            let row = QueueRow { waiting: gauge.waiting, in_service: gauge.in_service, over_target };
            waiting += row.waiting;
            in_service += row.in_service;
            let due = gauge.last_row != Some(row)
                || gauge.issued > 0
                || gauge.called > 0
                || (row.waiting > 0 && keepalive_due)
                || gauge
                    .oldest_passes_twice_target(wait_ms)
                    .is_some_and(|pass| pass > at.minus_ms(interval) && pass <= at);
            if !due {
                continue;
            }
            gauge.last_row = Some(row);
            let oldest_wait_ms = gauge.waiting_since.first().map_or(0, |(issue, _)| at.since(*issue).max(0));
            let (issued, called) = (std::mem::take(&mut gauge.issued), std::mem::take(&mut gauge.called));
            let mut point = ctx.point(out, "queue", time_ns);
            point.tag("service", ctx.service_name(*service).tag());
            point.field("waiting", FieldValue::Int(row.waiting));
            point.field("in_service", FieldValue::Int(row.in_service));
            point.field("over_target", FieldValue::Int(row.over_target));
            point.field("issued", FieldValue::Int(issued));
            point.field("called", FieldValue::Int(called));
            point.field("oldest_wait_s", seconds(oldest_wait_ms));
            out.points.push(point);
        }

        let counters_open = self
            .sends_counter_events
            .then(|| self.counters.values().filter(|counter| counter.open_since.is_some()).count() as i64);
        let row = OfficeRow { waiting, in_service, counters_open, silent: self.silent_at(ctx, settings, at, now) };
        if self.office_row_due(row) || (waiting > 0 && keepalive_due) || opening_or_closing {
            self.write_office_row(ctx, row, at, out);
        }
        if !wall_clock_fields {
            self.skip_snapshots_without_news(ctx, settings, at, facts);
        }
    }

    /// Services idle for longer than `gauge_idle_after` at `at` drop out of
    /// the gauges (a service that comes back starts a new series of rows).
    fn drop_idle_services(&mut self, settings: &TrackerSettings, at: Millis) {
        self.drop_services_idle_since(at.minus_ms(settings.gauge_idle_after_ms));
    }

    /// Drops the services nobody waits at or is served at, with no event since `before`.
    fn drop_services_idle_since(&mut self, before: Millis) {
        self.services.retain(|_, gauge| {
            gauge.waiting > 0 || gauge.in_service > 0 || gauge.last_event.is_some_and(|last| last >= before)
        });
    }

    /// After the snapshot at `at`, every series' state equals its last
    /// written row and no counts are pending. Until the office's state
    /// changes (`facts.next_change`), a later snapshot can only carry news
    /// when `over_target` grows (a waiting ticket passes its target), when
    /// the oldest waiting ticket passes twice its target, when a
    /// keepalive is due while someone waits, or when it is `quiet_for_long`
    /// (a rule of its own). The snapshots before the first of these would
    /// write nothing and only drop idle services, so they are taken in one
    /// step: at night, most snapshots of a replay. Dropping idle services
    /// once, at the last skipped time, drops the same services: one idle at
    /// some time is idle at every later time while nothing changes. Not
    /// used when rows carry wall-clock fields (`silent`).
    fn skip_snapshots_without_news(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        at: Millis,
        facts: SnapshotFacts,
    ) {
        let mut bound = facts.next_change;
        // The snapshot at or after the next opening or closing carries it.
        if let Some(change) = ctx.hours.as_ref().and_then(|hours| hours.next_change_after(at)) {
            bound = bound.min(change);
        }
        if let (0, Some(last)) = (facts.open_segments, self.last_event_ts) {
            bound = bound.min(last.plus_ms(GAUGE_SPAN_AFTER_LAST_EVENT_MS).plus_ms(1));
        }
        let keepalive_ms = settings.gauge_keepalive_ms;
        for (service, gauge) in &mut self.services {
            if gauge.waiting > 0 {
                let next_keepalive = at.0.div_euclid(keepalive_ms).saturating_add(1).saturating_mul(keepalive_ms);
                bound = bound.min(Millis(next_keepalive));
            }
            // `over_target` counts issues before T - target: the first not
            // yet counted at `at` is counted from its issue + target + 1 ms.
            let wait_ms = *gauge.wait_ms.get_or_insert_with(|| ctx.targets(settings, *service).wait_ms);
            if let (_, Some(issue)) = gauge.over_target(at.minus_ms(wait_ms)) {
                bound = bound.min(issue.plus_ms(wait_ms).plus_ms(1));
            }
            if let Some(pass) = gauge.oldest_passes_twice_target(wait_ms).filter(|pass| *pass > at) {
                bound = bound.min(pass);
            }
        }
        // Snapshots at `at + k * interval < bound`, k >= 1, are skipped.
        let interval = settings.snapshot_interval_ms;
        let skipped = bound.since(at).saturating_sub(1) / interval;
        if skipped <= 0 {
            return;
        }
        let last_skipped = at.plus_ms(skipped.saturating_mul(interval));
        self.drop_idle_services(settings, last_skipped);
        self.next_snapshot = Some(last_skipped.plus_ms(interval));
    }

    /// Whether the office opened or closed since the snapshot before `at`:
    /// the row at `at` is then news, whatever else changed. Decided on the
    /// snapshot time alone, so nothing about it is stored.
    fn opens_or_closes_by(&self, ctx: &OfficeContext, settings: &TrackerSettings, at: Millis) -> bool {
        ctx.hours.as_ref().is_some_and(|hours| hours.changes_within(at.minus_ms(settings.snapshot_interval_ms), at))
    }

    /// An `office` row carries news when its state changed since the last
    /// written row, or when messages were rejected or stamped ahead since
    /// then (a vendor debugging firmware must see it at once).
    fn office_row_due(&self, row: OfficeRow) -> bool {
        self.last_office_row != Some(row) || self.rejected_in_interval > 0 || self.clock_ahead_in_interval > 0
    }

    /// Writes the `office` row at `at`; the arrival counts since the last
    /// written row ride on it.
    fn write_office_row(&mut self, ctx: &OfficeContext, row: OfficeRow, at: Millis, out: &mut Output) {
        self.last_office_row = Some(row);
        let mut point = ctx.point(out, "office", at.0.saturating_mul(1_000_000));
        point.field("waiting", FieldValue::Int(row.waiting));
        point.field("in_service", FieldValue::Int(row.in_service));
        point.field("accepted", FieldValue::Int(std::mem::take(&mut self.accepted_in_interval)));
        point.field("rejected", FieldValue::Int(std::mem::take(&mut self.rejected_in_interval)));
        point.field("clock_ahead", FieldValue::Int(std::mem::take(&mut self.clock_ahead_in_interval)));
        if let Some(open) = row.counters_open {
            point.field("counters_open", FieldValue::Int(open));
        }
        if let Some(last) = self.last_event_ts {
            point.field("last_event_age_s", seconds(at.since(last).max(0)));
        }
        if let Some(silent) = row.silent {
            point.field("silent", FieldValue::Int(i64::from(silent)));
        }
        ctx.open_field(&mut point, at);
        if let Some(name) = ctx.config.as_ref().and_then(|config| config.name.as_ref()) {
            point.field("name", FieldValue::Str(name.as_str().into()));
        }
        out.points.push(point);
    }

    /// `silent` at `at`: live runs, offices with opening hours only.
    fn silent_at(&self, ctx: &OfficeContext, settings: &TrackerSettings, at: Millis, now: Millis) -> Option<bool> {
        let config = ctx.config.as_ref().filter(|config| config.has_hours())?;
        if settings.mode != Mode::Live {
            return None;
        }
        let last_arrival = self.last_arrival_wall.unwrap_or(now);
        Some(config.is_open_at(at) && now.since(last_arrival) >= settings.silence_after_ms)
    }

    /// `counter_opened` / `counter_closed`.
    pub(super) fn apply_counter_event(&mut self, ctx: &mut OfficeContext, event: &Event, out: &mut Output) {
        let Some(counter) = &event.counter else { return };
        let counter_id = ctx.counters.intern(counter);
        let staff = ctx.staff.intern_opt(event.staff.as_ref());
        self.sends_counter_events = true;
        let state = self.counters.entry(counter_id).or_default();
        if staff.is_some() {
            state.staff = staff;
        }
        if event.kind == EventType::CounterOpened {
            if state.open_since.is_none() {
                state.open_since = Some(event.ts);
                state.busy_ms = 0;
                state.served = 0;
                state.active_since = event.ts;
            }
            return;
        }
        // Closed: the session's point. Without a known opening (the daemon
        // started mid-session) open_s is unknown and busy/served cover what was seen.
        let busy_ms = state.busy_ms + if state.active > 0 { event.ts.since(state.active_since).max(0) } else { 0 };
        let open_ms = state.open_since.map(|open| event.ts.since(open));
        let served = state.served;
        let staff = state.staff.map(|staff| ctx.staff.get(staff).clone());
        state.open_since = None;
        state.busy_ms = 0;
        state.served = 0;
        state.active_since = event.ts;

        let mut point = ctx.point(out, "counter", event.ts.0.saturating_mul(1_000_000));
        point.tag("counter", counter.tag());
        match open_ms {
            Some(open_ms) if open_ms < 0 => out.notes.add(super::Note::ClockSkew),
            Some(open_ms) => {
                point.field("open_s", seconds(open_ms));
            }
            None => {}
        }
        let busy_ms = open_ms.filter(|open| *open >= 0).map_or(busy_ms, |open| busy_ms.min(open));
        point.field("busy_s", seconds(busy_ms));
        point.field("served", FieldValue::Int(served));
        if let Some(staff) = staff {
            point.field("staff", FieldValue::Str(staff.as_str().into()));
        }
        out.points.push(point);
    }

    /// A satisfaction button press; `service` is its ticket's, when known.
    pub(super) fn apply_feedback(
        &mut self,
        ctx: &OfficeContext,
        event: &Event,
        service: Option<ServiceId>,
        out: &mut Output,
    ) {
        let Some(rating) = event.rating else { return };
        let offset_key = event
            .ticket
            .as_ref()
            .map(|ticket| ticket.as_str())
            .or(event.counter.as_ref().map(|counter| counter.as_str()))
            .unwrap_or("");
        let mut point = ctx.point(out, "feedback", super::time_with_offset_ns(event.ts, offset_key));
        if let Some(counter) = &event.counter {
            point.tag("counter", counter.tag());
        }
        if let Some(service) = service {
            point.tag("service", service.tag());
        }
        point.field("rating", FieldValue::Int(i64::from(rating)));
        if let Some(ticket) = &event.ticket {
            point.field("ticket", FieldValue::Str(ticket.as_str().into()));
        }
        out.points.push(point);
    }

    /// Re-evaluates which open counters are idle while `waiting` people
    /// wait, after anything at `at` changed; starts or cancels their idle
    /// deadlines.
    pub(super) fn update_idle(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        waiting: usize,
        at: Millis,
        out: &mut Output,
    ) {
        let Some(idle_target_ms) = settings.sla.idle_target_ms(settings.office_sla(&ctx.office)) else { return };
        let mut resolved = Vec::new();
        for (counter, state) in &mut self.counters {
            let idle = waiting > 0 && state.open_since.is_some() && state.active == 0;
            match (idle, state.idle_since) {
                (true, None) => {
                    state.idle_since = Some(at);
                    state.idle_breach = BreachState::None;
                    self.idle_deadlines.push(Reverse((at.plus_ms(idle_target_ms), *counter)));
                }
                (false, Some(since)) => {
                    if state.idle_breach == BreachState::Firing {
                        resolved.push((*counter, since.plus_ms(idle_target_ms)));
                    }
                    state.idle_since = None;
                    state.idle_breach = BreachState::None;
                }
                _ => {}
            }
        }
        for (counter, deadline) in resolved {
            let mut alert = idle_alert(ctx, counter, deadline, idle_target_ms, at);
            alert.state = AlertState::Resolved;
            out.alerts.push(alert);
        }
    }

    /// The earliest idle deadline that still stands (its counter is idle
    /// since exactly the start it was set for and has not breached),
    /// discarding stale ones.
    pub(super) fn next_idle_deadline(&mut self, ctx: &OfficeContext, settings: &TrackerSettings) -> Option<Millis> {
        let idle_target_ms = settings.sla.idle_target_ms(settings.office_sla(&ctx.office));
        while let Some(Reverse((at, counter))) = self.idle_deadlines.peek().copied() {
            let valid = idle_target_ms.is_some_and(|target_ms| {
                self.counters.get(&counter).is_some_and(|state| {
                    state.idle_breach == BreachState::None
                        && state.idle_since.map(|since| since.plus_ms(target_ms)) == Some(at)
                })
            });
            if valid {
                return Some(at);
            }
            self.idle_deadlines.pop();
        }
        None
    }

    /// The earliest idle deadline has come: the counter has been idle with
    /// people waiting for the idle target. `released_upto` is how far the
    /// office's loop has got, for the alert's time.
    pub(super) fn fire_idle_deadline(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        released_upto: Millis,
        out: &mut Output,
    ) {
        let Some(Reverse((at, counter))) = self.idle_deadlines.pop() else { return };
        let Some(idle_target_ms) = settings.sla.idle_target_ms(settings.office_sla(&ctx.office)) else { return };
        let Some(state) = self.counters.get_mut(&counter) else { return };
        state.idle_breach = BreachState::Firing;
        let mut point = ctx.point(out, "breach", at.0.saturating_mul(1_000_000));
        point.tag("counter", ctx.counters.get(counter).tag());
        point.tag("kind", AlertKind::Idle.tag());
        point.field("target_s", seconds(idle_target_ms));
        ctx.open_field(&mut point, at);
        out.points.push(point);
        let mut alert = idle_alert(ctx, counter, at, idle_target_ms, released_upto.max(at));
        alert.ts = alert.ts.plus_ms(settings.reorder_window_ms);
        out.alerts.push(alert);
    }
}

fn silent_alert(ctx: &OfficeContext, state: AlertState, since: Millis, now: Millis) -> Alert {
    Alert {
        id: format!("silent:{}:{}", ctx.office, since.0),
        kind: AlertKind::Silent,
        state,
        office: ctx.office.clone(),
        service: None,
        ticket: None,
        counter: None,
        target_ms: 0,
        since,
        ts: now,
    }
}

fn idle_alert(ctx: &OfficeContext, counter: NameId, since: Millis, target_ms: i64, ts: Millis) -> Alert {
    let counter: &CounterId = ctx.counters.get(counter);
    Alert {
        id: format!("idle:{}:{}:{}", ctx.office, counter, since.0),
        kind: AlertKind::Idle,
        state: AlertState::Firing,
        office: ctx.office.clone(),
        service: None,
        ticket: None,
        counter: Some(counter.clone()),
        target_ms,
        since,
        ts,
    }
}

/// The first multiple of `interval_ms` at or after `at`.
fn ceil_to(at: Millis, interval_ms: i64) -> Millis {
    Millis(at.0.div_euclid(interval_ms).saturating_add(i64::from(at.0.rem_euclid(interval_ms) != 0)) * interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tickets joining and leaving the queue between snapshots whose bound
    /// moves forward and, after a change of target, back: the running count
    /// and the next ticket to pass always equal a count from scratch.
    #[test]
    fn the_running_over_target_count_equals_a_count_from_scratch() {
        let mut gauge = ServiceGauge::default();
        // A small linear congruential sequence: the same steps every run.
        let mut state = 12_345u64;
        let mut next = move |below: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % below
        };
        let mut bound = 0i64;
        for step in 0..5_000 {
            let entry = (Millis(next(2_000) as i64), next(8) as SlotId);
            match next(3) {
                0 | 1 => gauge.wait_add(entry),
                _ => gauge.wait_remove(entry),
            }
            if step % 7 == 0 {
                bound = if step % 700 == 0 { bound - next(300) as i64 } else { bound + next(40) as i64 };
                let expected_count = gauge.waiting_since.range(..(Millis(bound), 0)).count() as i64;
                let expected_next = gauge.waiting_since.range((Millis(bound), 0)..).next().map(|(issue, _)| *issue);
                assert_eq!(gauge.over_target(Millis(bound)), (expected_count, expected_next), "step {step}");
            }
        }
    }
}
