//! Closing a segment: how it ended, and its `ticket` point.

use super::*;

/// How a segment that no event closes ends (see [`Segment::end_of_life`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct EndOfLife {
    /// When the ordered loop closes it.
    pub(super) fires_at: Millis,
    /// The time its point is stamped at.
    pub(super) at: Millis,
    pub(super) cause: EndCause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndCause {
    /// The office's day closed: `abandoned` if never called, else `expired`.
    DayClosed,
    /// `max_ticket_age` passed since its last event: `expired`.
    MaxAge,
}

impl EndOfLife {
    pub(super) fn outcome(self, segment: &Segment) -> Outcome {
        match self.cause {
            EndCause::DayClosed if segment.first_call.is_none() => Outcome::Abandoned,
            EndCause::DayClosed | EndCause::MaxAge => Outcome::Expired,
        }
    }
}

/// What a closed segment's point needs besides the segment.
pub(super) struct Closing<'a> {
    pub(super) outcome: Outcome,
    pub(super) at: Millis,
    pub(super) event: Option<&'a Event>,
}

impl OfficeState {
    /// Closes the slot's open segment and writes its point; resolves its
    /// alerts and frees its counter.
    pub(super) fn close(&mut self, settings: &TrackerSettings, slot: SlotId, closing: Closing<'_>, out: &mut Output) {
        let Some(state) = self.tickets.get_mut(slot) else { return };
        let TicketState::Open(segment) =
            std::mem::replace(state, TicketState::Closed { at: Stamp::new(closing.at), service: None })
        else {
            return;
        };
        *state = TicketState::Closed { at: Stamp::new(closing.at), service: segment.service };
        self.live.queue_remove(segment.queue_share(), slot);
        self.open_segments -= 1;
        if segment.first_call.is_none() {
            self.waiting -= 1;
        }
        self.closed_memory.push(Reverse((closing.at, slot)));
        let keys = self.key_counts.get(slot as usize).copied().filter(|count| *count < u16::MAX);
        self.seen.close(segment.generation, closing.at, keys.map(usize::from));
        self.live.touch_service(segment.service, closing.at);

        if let Some(counter) = segment.busy_counter {
            self.live.release_counter(counter, closing.at);
        }
        if closing.outcome == Outcome::Served {
            let counter =
                closing.event.and_then(|event| event.counter.as_ref()).map(|counter| self.ctx.counters.intern(counter));
            if let Some(counter) = counter.or(segment.busy_counter) {
                self.live.count_served(counter);
            }
        }
        let targets = self.ctx.targets(settings, segment.service);
        let wait_since = segment.issue().map(|issue| issue.plus_ms(targets.wait_ms));
        for (kind, breach, since) in [
            (AlertKind::Wait, segment.wait_breach, wait_since),
            (AlertKind::Service, segment.service_breach, unstamp(segment.service_since)),
        ] {
            if let (BreachState::Firing, Some(since)) = (breach, since) {
                // A wait breach raised during the grace resolves when it was raised, not before.
                let at = closing.at.max(since);
                let alert = self.segment_alert(slot, &segment, kind, AlertState::Resolved, since, at, &targets);
                out.alerts.push(alert);
            }
        }

        let ticket = self.tickets.ticket(slot).clone();
        let mut point = self.ctx.point(out, "ticket", point_time_ns(closing.at, &ticket));
        self.fill_segment_point(&mut point, &ticket, &segment, &targets, &closing, out);
        out.points.push(point);
        self.limit_remembered(settings, out);
    }

    /// Fills the `ticket` point of a closed segment.
    pub(super) fn fill_segment_point(
        &self,
        point: &mut Point,
        ticket: &TicketNo,
        segment: &Segment,
        targets: &Targets,
        closing: &Closing<'_>,
        out: &mut Output,
    ) {
        let outcome = closing.outcome;
        let service = self.ctx.service_name(segment.service);
        point.tag("service", service.tag());
        point.tag("outcome", outcome.tag());
        let counter = closing
            .event
            .and_then(|event| event.counter.clone())
            .or_else(|| segment.last_call_counter.map(|counter| self.ctx.counters.get(counter).clone()));
        if let Some(counter) = counter {
            point.tag("counter", counter.tag());
        }

        let mut span = |from: Option<Millis>, to: Option<Millis>| -> Option<i64> {
            let span_ms = to?.since(from?);
            if span_ms < 0 {
                out.notes.add(Note::ClockSkew);
                None
            } else {
                Some(span_ms)
            }
        };
        let close = Some(closing.at);
        // Nobody knows when these ended: no total, no visit, no service level.
        let is_expired = matches!(outcome, Outcome::Expired | Outcome::Abandoned);
        let has_service_time = matches!(outcome, Outcome::Served | Outcome::Transferred);
        let is_final = matches!(outcome, Outcome::Served | Outcome::NoShow | Outcome::Cancelled);

        let wait_ms = span(segment.issue(), segment.first_call());
        let walk_ms = span(unstamp(segment.walk_from), segment.started());
        let service_ms = if has_service_time { span(segment.service_start(), close) } else { None };
        let total_ms = if is_expired { None } else { span(segment.issue(), close) };
        let visit_ms = if is_final { span(unstamp(segment.visit_start), close) } else { None };

        point.field("ticket", FieldValue::Str(ticket.as_str().into()));
        point.field("recalls", FieldValue::Int(i64::from(segment.recalls)));
        for (name, value) in [
            ("wait_s", wait_ms),
            ("walk_s", walk_ms),
            ("service_s", service_ms),
            ("total_s", total_ms),
            ("visit_s", visit_ms),
        ] {
            if let Some(span_ms) = value {
                point.field(name, seconds(span_ms));
            }
        }
        if outcome == Outcome::Abandoned {
            if let Some(waited_ms) = span(segment.issue(), close) {
                point.field("waited_until_close_s", seconds(waited_ms));
            }
        }
        point.field("wait_target_s", seconds(targets.wait_ms));
        point.field("service_target_s", seconds(targets.service_ms));

        let wait_within = if is_expired {
            None
        } else if segment.first_call.is_some() {
            wait_ms.map(|wait| wait <= targets.wait_ms)
        } else if outcome == Outcome::Cancelled {
            // Abandoned while waiting: counts against the service level only
            // once the customer had waited longer than the target.
            total_ms.filter(|total| *total > targets.wait_ms).map(|_| false)
        } else {
            None
        };
        if let Some(within) = wait_within {
            point.field("wait_within_target", FieldValue::Int(i64::from(within)));
        }
        if let Some(service_ms) = service_ms {
            point.field("service_within_target", FieldValue::Int(i64::from(service_ms <= targets.service_ms)));
        }
        let staff = closing
            .event
            .and_then(|event| event.staff.clone())
            .or_else(|| segment.staff.map(|staff| self.ctx.staff.get(staff).clone()));
        if let Some(staff) = staff {
            point.field("staff", FieldValue::Str(staff.as_str().into()));
        }
    }
}

/// Point time in nanoseconds: the millisecond of `at` plus a deterministic
/// sub-millisecond offset from the ticket, so two tickets closing in the same
/// millisecond with the same tags never overwrite each other, while the same
/// ticket's point always lands on the same time (rewrites are harmless).
pub fn point_time_ns(at: Millis, ticket: &TicketNo) -> i64 {
    time_with_offset_ns(at, ticket.as_str())
}

/// `at` in nanoseconds plus a deterministic sub-millisecond offset from `key`.
pub(super) fn time_with_offset_ns(at: Millis, key: &str) -> i64 {
    let offset_ns = (fnv1a(key.as_bytes()) % 1_000_000) as i64;
    at.0.saturating_mul(1_000_000).saturating_add(offset_ns)
}
