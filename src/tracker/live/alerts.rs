//! The [`Alert`] type (a breach, an idle counter or a silent office, firing
//! or resolved) and silence: an office with opening hours that has sent
//! nothing for `silence_after` while open (live only).

use std::sync::Arc;

use super::OfficeLive;
use crate::ids::{CounterId, OfficeId, ServiceId, TicketNo};
use crate::time::Millis;
use crate::tracker::{Mode, OfficeContext, Output, TrackerSettings};

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
    pub(in crate::tracker) fn tag(self) -> Arc<str> {
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
impl OfficeLive {
    /// A message from this office arrived at wall time `now`.
    pub(in crate::tracker) fn heard_at(
        &mut self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        now: Millis,
        out: &mut Output,
    ) {
        self.last_arrival_wall = Some(now);
        if settings.mode == Mode::Live {
            self.resolve_silence(ctx, now, out);
        }
    }
    /// Raises or resolves the `silent` alert (live only, offices with opening hours).
    pub(in crate::tracker) fn check_silence(
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
    /// `silent` at `at`: live runs, offices with opening hours only.
    pub(super) fn silent_at(
        &self,
        ctx: &OfficeContext,
        settings: &TrackerSettings,
        at: Millis,
        now: Millis,
    ) -> Option<bool> {
        let config = ctx.config.as_ref().filter(|config| config.has_hours())?;
        if settings.mode != Mode::Live {
            return None;
        }
        let last_arrival = self.last_arrival_wall.unwrap_or(now);
        Some(config.is_open_at(at) && now.since(last_arrival) >= settings.silence_after_ms)
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
