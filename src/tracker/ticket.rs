//! The ticket side: segments (one per visit to a service) and what each
//! ticket event does to them.

use super::*;

/// Where an event's ticket stands before the event.
#[derive(Clone, Copy)]
pub(super) struct TicketPlace<'a> {
    ticket: &'a TicketNo,
    slot: Option<SlotId>,
    has_open: bool,
    was_closed: bool,
}

/// A ticket number's state: its open segment, or the memory of its last
/// close (when, and its service, for feedback after the close).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum TicketState {
    Open(Segment),
    Closed { at: Stamp, service: Option<NameId> },
}

impl TicketState {
    pub(super) fn open(&self) -> Option<&Segment> {
        match self {
            TicketState::Open(segment) => Some(segment),
            TicketState::Closed { .. } => None,
        }
    }

    pub(super) fn open_mut(&mut self) -> Option<&mut Segment> {
        match self {
            TicketState::Open(segment) => Some(segment),
            TicketState::Closed { .. } => None,
        }
    }

    pub(super) fn closed_at(&self) -> Option<Millis> {
        match self {
            TicketState::Open(_) => None,
            TicketState::Closed { at, .. } => Some(at.get()),
        }
    }
}

/// One waiting-and-service segment of a ticket, kept small (about 100
/// bytes): times as `Option<Stamp>` (8 bytes), names interned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Segment {
    pub(super) generation: u32,
    /// Saturates at 255: no customer is called more often.
    pub(super) recalls: u8,
    pub(super) wait_breach: BreachState,
    pub(super) service_breach: BreachState,
    pub(super) service: Option<NameId>,
    pub(super) last_call_counter: Option<NameId>,
    /// The counter this segment keeps busy (from its call to its close).
    pub(super) busy_counter: Option<NameId>,
    pub(super) staff: Option<NameId>,
    /// The issue time when `issue_known`, else the first event's time (an
    /// orphan): one field serves both, since an issued segment's first event
    /// is its issue.
    pub(super) start: Millis,
    pub(super) issue_known: bool,
    pub(super) last_event: Millis,
    pub(super) first_call: Option<Stamp>,
    pub(super) last_call: Option<Stamp>,
    pub(super) started: Option<Stamp>,
    /// The last call when the customer arrived at the counter: what `walk_s` measures from.
    pub(super) walk_from: Option<Stamp>,
    /// Issue time of the ticket's first segment (across transfers), when known.
    pub(super) visit_start: Option<Stamp>,
    /// The deadline of a raised service breach (alert `since`), kept for its
    /// id because the service start can still move; a wait deadline cannot.
    pub(super) service_since: Option<Stamp>,
    /// The time of this segment's live timer entry.
    pub(super) scheduled: Millis,
}

impl Segment {
    /// What this segment adds to its service's queue gauge.
    pub(super) fn queue_share(&self) -> QueueShare {
        QueueShare { service: self.service, waiting: self.first_call.is_none(), issue: self.issue() }
    }

    /// When and how the segment ends if no event closes it. At an office
    /// with hours: at the close of its day (the first close after the
    /// visit's issue, or after its first event when the issue is unknown),
    /// once `close_grace` has passed; stamped at the close, or at the
    /// segment's last event if that came during the grace. Elsewhere (and
    /// where hours never close): `max_ticket_age` after its last event.
    pub(super) fn end_of_life(&self, settings: &TrackerSettings, ctx: &OfficeContext) -> EndOfLife {
        let anchor = unstamp(self.visit_start).unwrap_or(self.start);
        // A day whose close + grace is already behind the segment's own
        // events (a late issue moved its start back) is not its day.
        let anchor = anchor.max(self.last_event.minus_ms(settings.close_grace_ms));
        if let Some(close) = ctx.hours.as_ref().and_then(|hours| hours.day_close_after(anchor)) {
            return EndOfLife {
                fires_at: close.plus_ms(settings.close_grace_ms),
                at: close.max(self.last_event),
                cause: EndCause::DayClosed,
            };
        }
        let expiry = self.last_event.plus_ms(settings.max_ticket_age_ms);
        EndOfLife { fires_at: expiry, at: expiry, cause: EndCause::MaxAge }
    }

    pub(super) fn issue(&self) -> Option<Millis> {
        self.issue_known.then_some(self.start)
    }

    pub(super) fn first_call(&self) -> Option<Millis> {
        unstamp(self.first_call)
    }

    pub(super) fn last_call(&self) -> Option<Millis> {
        unstamp(self.last_call)
    }

    pub(super) fn started(&self) -> Option<Millis> {
        unstamp(self.started)
    }

    /// When service started: at `started`, else at the last call (as `service_s`).
    pub(super) fn service_start(&self) -> Option<Millis> {
        self.started().or(self.last_call())
    }

    pub(super) fn wait_deadline(&self, targets: &Targets) -> Option<Millis> {
        if self.wait_breach != BreachState::None || self.first_call.is_some() {
            return None;
        }
        self.issue().map(|issue| issue.plus_ms(targets.wait_ms))
    }

    pub(super) fn service_deadline(&self, targets: &Targets) -> Option<Millis> {
        if self.service_breach != BreachState::None {
            return None;
        }
        self.service_start().map(|start| start.plus_ms(targets.service_ms))
    }

    /// The earliest of the pending deadlines.
    pub(super) fn next_deadline(&self, settings: &TrackerSettings, ctx: &OfficeContext, targets: &Targets) -> Millis {
        [self.wait_deadline(targets), self.service_deadline(targets)]
            .into_iter()
            .flatten()
            .fold(self.end_of_life(settings, ctx).fires_at, Millis::min)
    }
}

impl OfficeState {
    /// The service of a ticket that is open, or closed within the dedup horizon.
    pub(super) fn ticket_service(&self, ticket: Option<&TicketNo>) -> Option<ServiceId> {
        let state = self.tickets.get(self.tickets.find(ticket?)?)?;
        let service = match state {
            TicketState::Open(segment) => segment.service,
            TicketState::Closed { service, .. } => *service,
        };
        Some(self.ctx.service_name(service))
    }

    pub(super) fn segment(&self, slot: SlotId) -> Option<&Segment> {
        self.tickets.get(slot).and_then(TicketState::open)
    }

    pub(super) fn segment_mut(&mut self, slot: SlotId) -> Option<&mut Segment> {
        self.tickets.get_mut(slot).and_then(TicketState::open_mut)
    }

    pub(super) fn apply_event(
        &mut self,
        settings: &TrackerSettings,
        event: Event,
        keys: EventKeys,
        arrival: Arrival,
        out: &mut Output,
    ) {
        self.live.note_applied(settings, event.ts);
        // Dispatch on the type, never on which fields happen to be present:
        // a counter event that also carries a ticket is still a counter event.
        let ticket = match (event.kind.needs_ticket(), event.ticket.clone()) {
            (true, Some(ticket)) => ticket,
            _ => return self.apply_unticketed(settings, &event, keys, arrival, out),
        };

        let slot = self.tickets.find(&ticket);
        let state = slot.and_then(|slot| self.tickets.get(slot));
        let open = state.and_then(TicketState::open);
        let has_open = open.is_some();
        let was_closed = state.is_some_and(|state| state.closed_at().is_some());

        if arrival == Arrival::Late {
            // A late event is applied only to the open segment it can belong
            // to; an `issued` for a ticket never seen still opens one, so a
            // kiosk's delayed backlog is not lost.
            let belongs = match open {
                Some(segment) => {
                    segment.issue().is_none_or(|issue| event.ts >= issue) || event.kind == EventType::Issued
                }
                None => event.kind == EventType::Issued && !was_closed,
            };
            if !belongs {
                self.retire_keys(settings, keys, event.ts, out);
                out.notes.add(Note::LateDropped);
                return;
            }
            out.notes.add(Note::Late);
        }

        match event.kind {
            EventType::Issued => {
                let slot = self.apply_issued(settings, &ticket, &event, out);
                self.tag_keys(settings, slot, keys, event.ts, out);
                out.notes.add(Note::Applied);
            }
            EventType::Called | EventType::Recalled | EventType::Started => {
                let slot = match (slot, has_open) {
                    (Some(slot), true) => slot,
                    _ if was_closed => {
                        out.notes.add(Note::AfterClose);
                        self.retire_keys(settings, keys, event.ts, out);
                        return;
                    }
                    _ => {
                        let service = self.ctx.services.intern_opt(event.service.as_ref());
                        self.open_segment(settings, &ticket, service, None, event.ts, None)
                    }
                };
                self.apply_progress(settings, slot, &event, out);
                self.tag_keys(settings, slot, keys, event.ts, out);
                out.notes.add(Note::Applied);
            }
            kind @ (EventType::Finished | EventType::NoShow | EventType::Cancelled | EventType::Transferred) => {
                let place = TicketPlace { ticket: &ticket, slot, has_open, was_closed };
                return self.apply_closing(settings, kind, place, &event, keys, out);
            }
            // Taken above, with no ticket: never here.
            EventType::CounterOpened | EventType::CounterClosed | EventType::Feedback | EventType::Heartbeat => {
                self.retire_keys(settings, keys, event.ts, out);
                out.notes.add(Note::Applied);
                return;
            }
        }
        self.update_idle(settings, event.ts, out);
    }
    /// Counter events, feedback and heartbeats: they belong to no segment.
    fn apply_unticketed(
        &mut self,
        settings: &TrackerSettings,
        event: &Event,
        keys: EventKeys,
        arrival: Arrival,
        out: &mut Output,
    ) {
        self.retire_keys(settings, keys, event.ts, out);
        match event.kind {
            EventType::CounterOpened | EventType::CounterClosed => {
                self.live.apply_counter_event(&mut self.ctx, event, out)
            }
            EventType::Feedback => {
                let service = self.ticket_service(event.ticket.as_ref());
                self.live.apply_feedback(&self.ctx, event, service, out)
            }
            EventType::Heartbeat => {}
            // Ticket events always carry their ticket (`event::decode`
            // and the snapshot reader see to it): never here.
            EventType::Issued
            | EventType::Called
            | EventType::Recalled
            | EventType::Started
            | EventType::Finished
            | EventType::NoShow
            | EventType::Cancelled
            | EventType::Transferred => {}
        }
        self.update_idle(settings, event.ts, out);
        if arrival == Arrival::Late {
            out.notes.add(Note::Late);
        }
        out.notes.add(Note::Applied);
    }

    /// A closing event (`finished`, `no_show`, `cancelled`, `transferred`).
    fn apply_closing(
        &mut self,
        settings: &TrackerSettings,
        kind: EventType,
        place: TicketPlace<'_>,
        event: &Event,
        keys: EventKeys,
        out: &mut Output,
    ) {
        let TicketPlace { ticket, slot, has_open, was_closed } = place;
        let Some(outcome) = Outcome::of(kind) else {
            // Unreachable: every closing type has an outcome.
            self.retire_keys(settings, keys, event.ts, out);
            out.notes.add(Note::Applied);
            return;
        };
        match slot.filter(|_| has_open) {
            Some(slot) => {
                let staff = self.ctx.staff.intern_opt(event.staff.as_ref());
                let service = self.ctx.services.intern_opt(event.service.as_ref());
                let mut visit_start = None;
                if let Some(segment) = self.segment_mut(slot) {
                    let share_before = segment.queue_share();
                    segment.last_event = segment.last_event.max(event.ts);
                    segment.staff = staff.or(segment.staff);
                    segment.service = segment.service.or(service);
                    visit_start = unstamp(segment.visit_start);
                    let share_after = segment.queue_share();
                    self.move_share(share_before, share_after, slot);
                }
                self.tag_keys(settings, slot, keys, event.ts, out);
                self.close(settings, slot, Closing { outcome, at: event.ts, event: Some(event) }, out);
                if outcome == Outcome::Transferred {
                    let to_service = self.ctx.services.intern_opt(event.to_service.as_ref());
                    self.open_segment(settings, ticket, to_service, Some(event.ts), event.ts, visit_start);
                }
                self.update_idle(settings, event.ts, out);
                out.notes.add(Note::Applied);
                return;
            }
            None if was_closed => out.notes.add(Note::AfterClose),
            None if outcome == Outcome::Transferred => {
                // The first segment is unknown, so the whole visit is too.
                let to_service = self.ctx.services.intern_opt(event.to_service.as_ref());
                self.open_segment(settings, ticket, to_service, Some(event.ts), event.ts, None);
                self.update_idle(settings, event.ts, out);
                out.notes.add(Note::Applied);
            }
            None => out.notes.add(Note::OrphanClose),
        }
        self.retire_keys(settings, keys, event.ts, out);
    }

    /// Moves a segment's share of the queue gauges when its service, waiting
    /// state or issue time changed.
    pub(super) fn move_share(&mut self, before: QueueShare, after: QueueShare, slot: SlotId) {
        if before != after {
            self.live.queue_remove(before, slot);
            self.live.queue_add(after, slot);
        }
    }

    pub(super) fn apply_issued(
        &mut self,
        settings: &TrackerSettings,
        ticket: &TicketNo,
        event: &Event,
        out: &mut Output,
    ) -> SlotId {
        let service = self.ctx.services.intern_opt(event.service.as_ref());
        if let Some(slot) = self.tickets.find(ticket) {
            let end_at = self.segment(slot).map(|segment| segment.end_of_life(settings, &self.ctx).at);
            if let (Some(segment), Some(end_at)) = (self.segment_mut(slot), end_at) {
                if !segment.issue_known && event.ts <= segment.start {
                    // The missing issue of a segment first seen through a later event.
                    let share_before = segment.queue_share();
                    segment.start = event.ts;
                    segment.issue_known = true;
                    segment.service = service.or(segment.service);
                    if segment.visit_start.is_none() {
                        segment.visit_start = Some(Stamp::new(event.ts));
                    }
                    let service = segment.service;
                    let share_after = segment.queue_share();
                    self.move_share(share_before, share_after, slot);
                    self.live.count_issued(service, event.ts);
                    self.schedule(settings, slot, Scheduling::Update);
                    return slot;
                }
                // The number was issued again while still open: the old one expired.
                let expired_at = end_at.min(event.ts);
                self.close(settings, slot, Closing { outcome: Outcome::Expired, at: expired_at, event: None }, out);
            }
        }
        self.open_segment(settings, ticket, service, Some(event.ts), event.ts, Some(event.ts))
    }

    /// A call, recall or start for an open segment.
    pub(super) fn apply_progress(&mut self, settings: &TrackerSettings, slot: SlotId, event: &Event, out: &mut Output) {
        let counter = self.ctx.counters.intern_opt(event.counter.as_ref());
        let staff = self.ctx.staff.intern_opt(event.staff.as_ref());
        let event_service = self.ctx.services.intern_opt(event.service.as_ref());
        let Some(segment) = self.segment_mut(slot) else { return };
        let share_before = segment.queue_share();
        let was_waiting = segment.first_call.is_none();
        let previous_counter = segment.busy_counter;
        if segment.service.is_none() {
            segment.service = event_service;
        }
        update_segment(segment, event, counter, staff);
        let now_called = segment.first_call.is_some();
        let service = segment.service;
        let share_after = segment.queue_share();
        let wait_alert = segment.wait_breach == BreachState::Firing && now_called;
        if wait_alert {
            segment.wait_breach = BreachState::Resolved;
        }
        let moved_to = match counter {
            Some(counter) if previous_counter != Some(counter) => {
                segment.busy_counter = Some(counter);
                Some(counter)
            }
            _ => None,
        };
        self.move_share(share_before, share_after, slot);
        if was_waiting && now_called {
            self.waiting -= 1;
            self.live.count_called(service, event.ts);
        } else {
            self.live.touch_service(service, event.ts);
        }
        if let Some(counter) = moved_to {
            if let Some(previous) = previous_counter {
                self.live.release_counter(previous, event.ts);
            }
            self.live.acquire_counter(counter, event.ts);
        }
        if wait_alert {
            self.push_resolved(settings, slot, AlertKind::Wait, event.ts, out);
        }
        self.schedule(settings, slot, Scheduling::Update);
    }

    pub(super) fn open_segment(
        &mut self,
        settings: &TrackerSettings,
        ticket: &TicketNo,
        service: Option<NameId>,
        issue: Option<Millis>,
        first_event: Millis,
        visit_start: Option<Millis>,
    ) -> SlotId {
        let generation = self.next_tag();
        let segment = Segment {
            generation,
            recalls: 0,
            wait_breach: BreachState::None,
            service_breach: BreachState::None,
            service,
            last_call_counter: None,
            busy_counter: None,
            staff: None,
            start: issue.unwrap_or(first_event),
            issue_known: issue.is_some(),
            last_event: first_event,
            first_call: None,
            last_call: None,
            started: None,
            walk_from: None,
            visit_start: stamp(visit_start),
            service_since: None,
            scheduled: Millis(i64::MAX),
        };
        if issue.is_some() {
            self.live.count_issued(service, first_event);
        }
        let share = segment.queue_share();
        let slot =
            self.tickets.find_or_insert(ticket, || TicketState::Closed { at: Stamp::new(first_event), service: None });
        if let Some(state) = self.tickets.get_mut(slot) {
            *state = TicketState::Open(segment);
        }
        self.set_key_count(slot, 0);
        self.live.queue_add(share, slot);
        self.open_segments += 1;
        self.waiting += 1;
        self.schedule(settings, slot, Scheduling::Renew);
        slot
    }
}

/// Applies a call, recall or start to an open segment (names already interned).
pub(super) fn update_segment(segment: &mut Segment, event: &Event, counter: Option<NameId>, staff: Option<NameId>) {
    segment.last_event = segment.last_event.max(event.ts);
    if staff.is_some() {
        segment.staff = staff;
    }
    let is_call = match event.kind {
        EventType::Called => {
            if segment.first_call.is_some() {
                segment.recalls = segment.recalls.saturating_add(1);
            }
            true
        }
        EventType::Recalled => {
            segment.recalls = segment.recalls.saturating_add(1);
            true
        }
        // A start with no earlier call is the first call too.
        EventType::Started => segment.first_call.is_none(),
        EventType::Issued
        | EventType::Finished
        | EventType::NoShow
        | EventType::Cancelled
        | EventType::Transferred
        | EventType::CounterOpened
        | EventType::CounterClosed
        | EventType::Feedback
        | EventType::Heartbeat => false,
    };
    if is_call {
        let first = segment.first_call().map_or(event.ts, |first| first.min(event.ts));
        let last = segment.last_call().map_or(event.ts, |last| last.max(event.ts));
        segment.first_call = Some(Stamp::new(first));
        segment.last_call = Some(Stamp::new(last));
        segment.last_call_counter = counter;
    }
    if event.kind == EventType::Started && segment.started.is_none() {
        segment.started = Some(Stamp::new(event.ts));
        segment.walk_from = segment.last_call;
    }
}
