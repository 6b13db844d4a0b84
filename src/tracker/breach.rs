//! A segment's breaches: the wait and service deadlines, their alerts.

use super::*;

/// Whether a breach was raised for a segment, and whether its alert is still firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) enum BreachState {
    #[default]
    None,
    Firing,
    Resolved,
}

impl OfficeState {
    /// A segment's earliest deadline has come: raise what is due, expire it
    /// if idle for the max age, and schedule its next deadline.
    pub(super) fn segment_deadline(&mut self, settings: &TrackerSettings, slot: SlotId, at: Millis, out: &mut Output) {
        let Some(segment) = self.segment(slot) else { return };
        let targets = self.ctx.targets(settings, segment.service);
        let wait_due = segment.wait_deadline(&targets).is_some_and(|deadline| deadline <= at);
        let service_due = segment.service_deadline(&targets).is_some_and(|deadline| deadline <= at);
        let end = segment.end_of_life(settings, &self.ctx);
        let outcome = end.outcome(segment);
        if wait_due {
            self.raise_segment_breach(settings, slot, AlertKind::Wait, targets.wait_ms, out);
        }
        if service_due {
            self.raise_segment_breach(settings, slot, AlertKind::Service, targets.service_ms, out);
        }
        if end.fires_at <= at {
            self.close(settings, slot, Closing { outcome, at: end.at, event: None }, out);
        } else {
            self.schedule(settings, slot, Scheduling::Renew);
        }
    }

    /// Raises a wait or service breach for an open segment: its point, and a firing alert.
    pub(super) fn raise_segment_breach(
        &mut self,
        settings: &TrackerSettings,
        slot: SlotId,
        kind: AlertKind,
        target_ms: i64,
        out: &mut Output,
    ) {
        let Some(segment) = self.segment_mut(slot) else { return };
        let deadline = match kind {
            AlertKind::Wait => segment.issue().map(|issue| issue.plus_ms(target_ms)),
            _ => segment.service_start().map(|start| start.plus_ms(target_ms)),
        };
        let Some(deadline) = deadline else { return };
        match kind {
            AlertKind::Wait => segment.wait_breach = BreachState::Firing,
            _ => {
                segment.service_breach = BreachState::Firing;
                segment.service_since = Some(Stamp::new(deadline));
            }
        }
        let segment = segment.clone();
        let ticket = self.tickets.ticket(slot).clone();
        let service = self.ctx.service_name(segment.service);
        let mut point = self.ctx.point(out, "breach", point_time_ns(deadline, &ticket));
        point.tag("service", service.tag());
        point.tag("kind", kind.tag());
        if kind == AlertKind::Service {
            if let Some(counter) = segment.busy_counter.or(segment.last_call_counter) {
                point.tag("counter", self.ctx.counters.get(counter).tag());
            }
        }
        point.field("ticket", FieldValue::Str(ticket.as_str().into()));
        point.field("target_s", seconds(target_ms));
        self.ctx.open_field(&mut point, deadline);
        out.points.push(point);
        let targets = self.ctx.targets(settings, segment.service);
        let clock = self.released_upto.max(deadline).plus_ms(settings.reorder_window_ms);
        let alert = self.segment_alert(slot, &segment, kind, AlertState::Firing, deadline, clock, &targets);
        out.alerts.push(alert);
    }

    /// A resolved wait alert (its deadline is the issue plus the target).
    pub(super) fn push_resolved(
        &self,
        settings: &TrackerSettings,
        slot: SlotId,
        kind: AlertKind,
        at: Millis,
        out: &mut Output,
    ) {
        let Some(segment) = self.segment(slot) else { return };
        let targets = self.ctx.targets(settings, segment.service);
        let Some(since) = segment.issue().map(|issue| issue.plus_ms(targets.wait_ms)) else { return };
        out.alerts.push(self.segment_alert(slot, segment, kind, AlertState::Resolved, since, at, &targets));
    }

    /// An alert about a segment's wait or service breach.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn segment_alert(
        &self,
        slot: SlotId,
        segment: &Segment,
        kind: AlertKind,
        state: AlertState,
        since: Millis,
        at: Millis,
        targets: &Targets,
    ) -> Alert {
        let ticket = self.tickets.ticket(slot);
        let counter =
            segment.busy_counter.or(segment.last_call_counter).map(|counter| self.ctx.counters.get(counter).clone());
        Alert {
            id: format!("{}:{}:{}:{}", kind.as_str(), self.ctx.office, ticket, since.0),
            kind,
            state,
            office: self.ctx.office.clone(),
            service: Some(self.ctx.service_name(segment.service)),
            ticket: Some(ticket.clone()),
            counter: if kind == AlertKind::Service { counter } else { None },
            target_ms: if kind == AlertKind::Wait { targets.wait_ms } else { targets.service_ms },
            since,
            ts: at,
        }
    }
}
