//! Counter sessions (`counter_opened`, `counter_closed` and the `counter`
//! point), satisfaction buttons (`feedback`) and idle counters: an open
//! counter serving nobody while people wait, with its own deadline heap.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::{Alert, AlertKind, AlertState, OfficeLive};
use crate::event::{Event, EventType};
use crate::ids::{CounterId, ServiceId};
use crate::point::{seconds, FieldValue};
use crate::time::Millis;
use crate::tracker::store::NameId;
use crate::tracker::{BreachState, OfficeContext, Output, TrackerSettings};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct CounterState {
    pub(super) open_since: Option<Millis>,
    pub(super) staff: Option<NameId>,
    /// Segments this counter is busy with now.
    pub(super) active: u32,
    active_since: Millis,
    busy_ms: i64,
    served: i64,
    /// Idle (open, serving nobody) with people waiting since.
    pub(super) idle_since: Option<Millis>,
    pub(super) idle_breach: BreachState,
}

impl OfficeLive {
    pub(in crate::tracker) fn acquire_counter(&mut self, counter: NameId, at: Millis) {
        let state = self.counters.entry(counter).or_default();
        if state.active == 0 {
            state.active_since = at;
        }
        state.active += 1;
    }

    pub(in crate::tracker) fn release_counter(&mut self, counter: NameId, at: Millis) {
        let Some(state) = self.counters.get_mut(&counter) else { return };
        if state.active == 0 {
            return;
        }
        state.active -= 1;
        if state.active == 0 {
            state.busy_ms += at.since(state.active_since).max(0);
        }
    }

    pub(in crate::tracker) fn count_served(&mut self, counter: NameId) {
        self.counters.entry(counter).or_default().served += 1;
    }

    /// `counter_opened` / `counter_closed`.
    pub(in crate::tracker) fn apply_counter_event(&mut self, ctx: &mut OfficeContext, event: &Event, out: &mut Output) {
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
            Some(open_ms) if open_ms < 0 => out.notes.add(crate::tracker::Note::ClockSkew),
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
    pub(in crate::tracker) fn apply_feedback(
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
        let mut point = ctx.point(out, "feedback", crate::tracker::time_with_offset_ns(event.ts, offset_key));
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
    pub(in crate::tracker) fn update_idle(
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
    pub(in crate::tracker) fn next_idle_deadline(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
    ) -> Option<Millis> {
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
    pub(in crate::tracker) fn fire_idle_deadline(
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
