//! The services' queues, kept up to date as segments change, and the gauge
//! snapshot: which `queue` and `office` rows carry news, and the snapshots
//! that can be skipped because none would.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ceil_to, OfficeLive, GAUGE_SPAN_AFTER_LAST_EVENT_MS};
use crate::point::{seconds, FieldValue};
use crate::time::Millis;
use crate::tracker::store::{NameId, SlotId};
use crate::tracker::{Mode, OfficeContext, Output, TrackerSettings};

/// One service's queue, kept up to date as segments change so that a
/// snapshot costs nothing per ticket. A stored state leaves out what the
/// open segments determine (see [`OfficeLive::restore_queues`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct ServiceGauge {
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
pub(super) struct OfficeRow {
    waiting: i64,
    in_service: i64,
    counters_open: Option<i64>,
    silent: Option<bool>,
}

/// What one open segment contributes to its service's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::tracker) struct QueueShare {
    pub(in crate::tracker) service: Option<NameId>,
    pub(in crate::tracker) waiting: bool,
    pub(in crate::tracker) issue: Option<Millis>,
}

/// What a snapshot needs to know of the ticket side.
#[derive(Debug, Clone, Copy)]
pub(in crate::tracker) struct SnapshotFacts {
    pub(in crate::tracker) open_segments: usize,
    /// The time of the earliest event still held for reordering.
    pub(in crate::tracker) next_held: Option<Millis>,
    /// Before this time the loop applies no event and fires no deadline:
    /// the office's state stands still until then.
    pub(in crate::tracker) next_change: Millis,
}
impl OfficeLive {
    pub(in crate::tracker) fn count_issued(&mut self, service: Option<NameId>, at: Millis) {
        let gauge = self.service_gauge(service, at);
        gauge.issued += 1;
    }

    pub(in crate::tracker) fn count_called(&mut self, service: Option<NameId>, at: Millis) {
        let gauge = self.service_gauge(service, at);
        gauge.called += 1;
    }

    pub(in crate::tracker) fn touch_service(&mut self, service: Option<NameId>, at: Millis) {
        self.service_gauge(service, at);
    }

    pub(in crate::tracker) fn queue_add(&mut self, share: QueueShare, slot: SlotId) {
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

    pub(in crate::tracker) fn queue_remove(&mut self, share: QueueShare, slot: SlotId) {
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

    /// Rebuilds the queue counts, which are not stored, from the open
    /// segments' shares: the same calls that built them, without marking
    /// a change for the next snapshot.
    pub(in crate::tracker) fn restore_queues(&mut self, shares: impl IntoIterator<Item = (QueueShare, SlotId)>) {
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

    /// `office` gauges on the wall clock for a configured office never heard (live only).
    pub(in crate::tracker) fn unheard_snapshots(
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
    pub(in crate::tracker) fn snapshot(
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
    pub(super) fn drop_services_idle_since(&mut self, before: Millis) {
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
