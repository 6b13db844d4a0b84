//! Limits and forgetting: the office's rate, its names, and what it remembers
//! of closed tickets.

use super::*;

impl OfficeState {
    /// Takes one message from the office's rate bucket, which fills at the
    /// configured rate on the office clock: a backlog delivered at once
    /// after an outage carries its own event times and passes, a flood of
    /// fresh messages does not.
    /// `ts` is the message's own time, the clock of an office not heard yet.
    pub(super) fn take_token(&mut self, settings: &TrackerSettings, now: Millis, ts: Millis) -> bool {
        let (rate, burst) = (settings.limits.max_messages_per_second_per_office, settings.limits.max_burst_per_office);
        if rate == 0 {
            return true;
        }
        let capacity = i64::try_from(burst.max(1)).unwrap_or(i64::MAX).saturating_mul(1000);
        // The message's own time counts too: the office clock moves only
        // with admitted messages (and wall time, live), so a bucket run dry
        // in a replay would otherwise never fill again. The decoder bounds
        // how far ahead of the wall clock a time can be.
        let clock = self.clock(settings, now).map_or(ts, |clock| clock.max(ts));
        let (tokens, filled_to) = self.bucket.unwrap_or((capacity, clock));
        let gained = clock.since(filled_to).max(0).saturating_mul(i64::try_from(rate).unwrap_or(i64::MAX));
        let tokens = tokens.saturating_add(gained).min(capacity);
        let filled_to = filled_to.max(clock);
        if tokens >= 1000 {
            self.bucket = Some((tokens - 1000, filled_to));
            true
        } else {
            self.bucket = Some((tokens, filled_to));
            false
        }
    }

    /// Whether the office may be forgotten as a whole: not in the config,
    /// nothing open, held or remembered, and its last event longer ago than
    /// names are kept.
    pub(super) fn forgettable(&self, settings: &TrackerSettings, watermark: Millis) -> bool {
        self.ctx.config.is_none()
            && self.open_segments == 0
            && self.held.len() == 0
            && self.tickets.len() == 0
            && self.live.is_idle()
            && self.live.last_event_ts().is_none_or(|last| last < watermark.minus_ms(settings.forget_after_ms()))
    }

    /// Sets the time the event's names count as used at, and returns the
    /// first name or new open ticket beyond the office's `[limits]`, if any:
    /// checked as the event is applied, so which events pass depends on the
    /// event-time order alone, as everything else here. A name is looked up
    /// only while its kind is at its limit.
    pub(super) fn check_names(&mut self, settings: &TrackerSettings, event: &Event) -> Option<String> {
        let limits = &settings.limits;
        let ctx = &mut self.ctx;
        ctx.services.set_now(event.ts);
        ctx.counters.set_now(event.ts);
        ctx.staff.set_now(event.ts);
        fn new_beyond<T: Clone + Eq + std::hash::Hash>(names: &Names<T>, value: Option<&T>, max: usize) -> bool {
            max > 0 && names.len() >= max && value.is_some_and(|value| !names.contains(value))
        }
        // A heartbeat's names are never interned.
        if event.kind != EventType::Heartbeat {
            let max = limits.max_services_per_office;
            for service in [&event.service, &event.to_service] {
                if new_beyond(&ctx.services, service.as_ref(), max) {
                    return Some(format!(
                        "new service {}: the office has {} already (limits.max_services_per_office)",
                        service.as_ref().map_or("", |service| service.as_str()),
                        ctx.services.len()
                    ));
                }
            }
            if new_beyond(&ctx.counters, event.counter.as_ref(), limits.max_counters_per_office) {
                return Some(format!(
                    "new counter {}: the office has {} already (limits.max_counters_per_office)",
                    event.counter.as_ref().map_or("", |counter| counter.as_str()),
                    ctx.counters.len()
                ));
            }
            if new_beyond(&ctx.staff, event.staff.as_ref(), limits.max_staff_per_office) {
                return Some(format!(
                    "new staff id: the office has {} already (limits.max_staff_per_office)",
                    ctx.staff.len()
                ));
            }
        }
        let full = |len: usize, max: usize| max > 0 && len >= max;
        let opens = matches!(
            event.kind,
            EventType::Issued | EventType::Called | EventType::Recalled | EventType::Started | EventType::Transferred
        );
        if opens && full(self.open_segments, limits.max_open_tickets_per_office) {
            let open =
                event.ticket.as_ref().and_then(|ticket| self.tickets.find(ticket)).and_then(|slot| self.segment(slot));
            if open.is_none() {
                return Some(format!(
                    "new ticket: {} tickets are open at the office already (limits.max_open_tickets_per_office)",
                    self.open_segments
                ));
            }
        }
        None
    }

    /// Forgets the services, counters and staff ids nothing refers to any
    /// more and not used since `watermark` less [`TrackerSettings::forget_after_ms`]:
    /// paced on the office clock, a pass over the office's tickets at most
    /// every quarter of that time.
    pub(super) fn forget_names(&mut self, settings: &TrackerSettings, watermark: Millis) {
        let keep_ms = settings.forget_after_ms();
        if watermark < self.names_swept.plus_ms(keep_ms / 4) {
            return;
        }
        self.names_swept = watermark;
        let cutoff = watermark.minus_ms(keep_ms);
        let ctx = &self.ctx;
        let stale: [hashbrown::HashSet<NameId>; 3] = [
            ctx.services.unused_since(cutoff).collect(),
            ctx.counters.unused_since(cutoff).collect(),
            ctx.staff.unused_since(cutoff).collect(),
        ];
        self.live.forget_unused(cutoff, |counter| stale[1].contains(&counter));
        if stale.iter().all(hashbrown::HashSet::is_empty) {
            return;
        }
        // What still refers to a name: tickets (open or remembered closed)
        // and the live side.
        let mut used = [ctx.services.len(), ctx.counters.len(), ctx.staff.len()].map(|len| vec![false; len]);
        let mut mark = |kind: usize, id: Option<NameId>| {
            if let Some(id) = id {
                used[kind][id.get() as usize - 1] = true;
            }
        };
        for (_, state) in self.tickets.slots() {
            match state {
                Some(TicketState::Open(segment)) => {
                    mark(0, segment.service);
                    mark(1, segment.last_call_counter);
                    mark(1, segment.busy_counter);
                    mark(2, segment.staff);
                }
                Some(TicketState::Closed { service, .. }) => mark(0, *service),
                None => {}
            }
        }
        let [services, counters, staff] = self.live.name_ids();
        services.into_iter().for_each(|id| mark(0, Some(id)));
        counters.into_iter().for_each(|id| mark(1, Some(id)));
        staff.into_iter().for_each(|id| mark(2, Some(id)));
        let keep = |kind: usize| {
            let (used, stale) = (&used[kind], &stale[kind]);
            move |id: NameId| used[id.get() as usize - 1] || !stale.contains(&id)
        };
        let services = self.ctx.services.retain(keep(0));
        let counters = self.ctx.counters.retain(keep(1));
        let staff = self.ctx.staff.retain(keep(2));
        if [&services, &counters, &staff].iter().all(|renumbered| {
            renumbered.iter().enumerate().all(|(i, id)| id.is_some_and(|id| id.get() as usize == i + 1))
        }) {
            return;
        }
        self.ctx.targets_cache.borrow_mut().clear();
        self.live.renumber(&services, &counters, &staff);
        let renumber_opt = |names: &[Option<NameId>], id: Option<NameId>| id.and_then(|id| renumber(names, id));
        for state in self.tickets.states_mut() {
            match state {
                TicketState::Open(segment) => {
                    segment.service = renumber_opt(&services, segment.service);
                    segment.last_call_counter = renumber_opt(&counters, segment.last_call_counter);
                    segment.busy_counter = renumber_opt(&counters, segment.busy_counter);
                    segment.staff = renumber_opt(&staff, segment.staff);
                }
                TicketState::Closed { service, .. } => *service = renumber_opt(&services, *service),
            }
        }
    }

    /// Forgets dedup keys and closed tickets once the horizon has passed.
    pub(super) fn forget(&mut self, settings: &TrackerSettings, watermark: Millis) {
        let cutoff = watermark.minus_ms(settings.dedup_horizon_ms);
        self.seen.maybe_sweep(cutoff, watermark, (settings.dedup_horizon_ms / 4).max(1000));
        while let Some(Reverse((closed_at, slot))) = self.closed_memory.peek().copied() {
            if closed_at >= cutoff {
                break;
            }
            self.closed_memory.pop();
            let forgettable = self.tickets.get(slot).is_some_and(|state| state.closed_at() == Some(closed_at));
            if forgettable {
                self.tickets.remove(slot);
            }
        }
        // Last: the tickets just forgotten no longer hold their names.
        self.forget_names(settings, watermark);
    }

    /// Keeps what the office remembers of closed segments (closed tickets,
    /// and the dedup keys of closed segments and of events that belong to
    /// none) within `limits.max_remembered_per_office`, forgetting the least
    /// recently closed first (a ticket before keys closed at the same time).
    /// Runs wherever something closes, as events are applied in event-time
    /// order, so what is forgotten depends on the events alone.
    ///
    /// A closed ticket counts once per close still in `closed_memory`: a
    /// number closed, issued again and closed again counts twice until its
    /// first close is forgotten, since that entry takes memory too.
    pub(super) fn limit_remembered(&mut self, settings: &TrackerSettings, out: &mut Output) {
        let max = settings.limits.max_remembered_per_office;
        if max == 0 {
            return;
        }
        let mut forgotten = 0u64;
        while self.closed_memory.len() + self.seen.closed_keys() > max {
            let ticket_closed = self.closed_memory.peek().map(|Reverse((at, _))| *at);
            let keys_closed = self.seen.oldest_closed();
            match (ticket_closed, keys_closed) {
                (Some(ticket_at), keys_at) if keys_at.is_none_or(|keys_at| ticket_at <= keys_at) => {
                    if let Some(Reverse((closed_at, slot))) = self.closed_memory.pop() {
                        if self.tickets.get(slot).is_some_and(|state| state.closed_at() == Some(closed_at)) {
                            self.tickets.remove(slot);
                            forgotten += 1;
                        }
                    }
                }
                (_, Some(_)) => forgotten += self.seen.forget_oldest() as u64,
                (_, None) => break,
            }
        }
        if forgotten > 0 {
            match out.forgotten_early.last_mut() {
                Some((office, count)) if *office == self.ctx.office => *count += forgotten,
                _ => out.forgotten_early.push((self.ctx.office.clone(), forgotten)),
            }
        }
    }
}
