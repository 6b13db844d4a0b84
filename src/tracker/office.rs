//! One office's ordered loop: its clock, the reorder buffer's releases, the
//! timers (breach deadlines, expiries, snapshots) and the order in which
//! events are applied. The state ([`OfficeState`]) is defined here; its ticket
//! side, limits and dedup keys are in the sibling files.

use super::*;

/// A segment's earliest pending deadline (wait or service target, or
/// expiry) in an office's timer heap: 8 bytes, since every open segment has
/// one. Lazily validated against `Segment::scheduled` and the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerKey {
    pub(super) slot: SlotId,
    pub(super) generation: u32,
}

/// Who an office is, and the names interned for it: what both the ticket
/// side ([`OfficeState`]) and the live side ([`live::OfficeLive`]) read.
#[derive(Debug, Clone)]
pub(super) struct OfficeContext {
    pub(super) office: OfficeId,
    pub(super) office_tag: Arc<str>,
    pub(super) region_tag: Option<Arc<str>>,
    pub(super) config: Option<OfficeConfig>,
    /// The office's opening hours as instants, when it has hours.
    pub(super) hours: Option<hours::Hours>,
    pub(super) services: Names<ServiceId>,
    pub(super) counters: Names<CounterId>,
    pub(super) staff: Names<StaffId>,
    /// Targets by service `NameId` (index 0: the `unknown` service).
    pub(super) targets_cache: std::cell::RefCell<Vec<Option<Targets>>>,
}

impl OfficeContext {
    pub(super) fn service_name(&self, service: Option<NameId>) -> ServiceId {
        service.map_or_else(ServiceId::unknown, |id| self.services.get(id).clone())
    }

    /// The targets in force for a service, looked up in the config once per
    /// service and office and kept (they are asked for at every snapshot).
    pub(super) fn targets(&self, settings: &TrackerSettings, service: Option<NameId>) -> Targets {
        let index = service.map_or(0, |id| id.get() as usize);
        if let Some(Some(targets)) = self.targets_cache.borrow().get(index) {
            return *targets;
        }
        let targets = settings.sla.targets_for(settings.office_sla(&self.office), &self.service_name(service));
        let mut cache = self.targets_cache.borrow_mut();
        if cache.len() <= index {
            cache.resize(index + 1, None);
        }
        cache[index] = Some(targets);
        targets
    }

    /// Adds the `open` field (1/0 at `at`) to a point, for an office with hours.
    pub(super) fn open_field(&self, point: &mut Point, at: Millis) {
        if let Some(hours) = &self.hours {
            point.field("open", FieldValue::Int(i64::from(hours.is_open_at(at))));
        }
    }

    /// A point with the tags every point of this office carries.
    pub(super) fn point(&self, out: &mut Output, measurement: &'static str, time_ns: i64) -> Point {
        let mut point = out.new_point(measurement, time_ns);
        point.tag("office", self.office_tag.clone());
        if let Some(region) = &self.region_tag {
            point.tag("region", region.clone());
        }
        point
    }
}

/// One office: the ordered loop (clock, reorder buffer, timers) and the
/// ticket side (segments, dedup) live here; the live side (gauges, counter
/// sessions, feedback, idle counters, silence) is `live`, which this side
/// tells what changed through a narrow set of calls and which reads nothing
/// of it but the counts it is handed.
#[derive(Debug, Clone)]
pub(super) struct OfficeState {
    pub(super) ctx: OfficeContext,
    /// `(newest ts, wall time it arrived)`; `None` until the office is heard.
    pub(super) clock_base: Option<(Millis, Millis)>,
    pub(super) released_upto: Millis,
    /// Held events with their dedup keys, computed once at arrival.
    pub(super) held: Held,
    pub(super) arrivals: u64,
    pub(super) tickets: Tickets<TicketState>,
    pub(super) open_segments: usize,
    /// Open segments not yet called.
    pub(super) waiting: usize,
    pub(super) timers: BinaryHeap<Reverse<(Millis, TimerKey)>>,
    /// Tickets whose closure is remembered, to forget after the dedup horizon.
    pub(super) closed_memory: BinaryHeap<Reverse<(Millis, SlotId)>>,
    pub(super) seen: Seen,
    /// By slot: how many dedup keys the slot's open segment has (saturating;
    /// at `u16::MAX` the dedup table counts them when the segment closes).
    pub(super) key_counts: Vec<u16>,
    /// Segment generations, and one-off tags for dedup keys of events that
    /// belong to no open segment.
    pub(super) generations: u32,
    pub(super) live: live::OfficeLive,
    /// The message-rate bucket (`limits.max_messages_per_second_per_office`):
    /// thousandths of a message, and the office clock it was filled up to.
    /// Not stored in states: a restarted daemon starts every bucket full.
    pub(super) bucket: Option<(i64, Millis)>,
    /// The watermark of the last pass that forgot unused names.
    pub(super) names_swept: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheduling {
    Renew,
    Update,
}

/// How an event reaches `apply`: in its place, or after the window had passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    InOrder,
    Late,
}

impl OfficeState {
    pub(super) fn new(settings: &TrackerSettings, office: OfficeId) -> OfficeState {
        let config = settings.offices.get(&office).cloned();
        OfficeState {
            ctx: OfficeContext {
                office_tag: Arc::from(office.as_str()),
                region_tag: config.as_ref().and_then(|config| config.region.as_deref()).map(Arc::from),
                hours: config.as_ref().and_then(hours::Hours::of),
                config,
                office,
                services: Names::default(),
                counters: Names::default(),
                staff: Names::default(),
                targets_cache: Default::default(),
            },
            clock_base: None,
            released_upto: Millis(i64::MIN),
            held: Held::default(),
            arrivals: 0,
            tickets: Tickets::default(),
            open_segments: 0,
            waiting: 0,
            timers: BinaryHeap::new(),
            closed_memory: BinaryHeap::new(),
            seen: Seen::default(),
            key_counts: Vec::new(),
            generations: 0,
            live: live::OfficeLive::default(),
            bucket: None,
            names_swept: Millis(i64::MIN),
        }
    }

    /// The office clock: newest ts plus the wall time since it arrived.
    /// With `clock = "wall"` in a live run it never passes `now` (unless an
    /// event within the ahead tolerance already stands there): `now` may
    /// jump forward when the daemon has worked off a stall (see `daemon`),
    /// and an office clock must not run ahead of the wall clock then either.
    pub(super) fn clock(&self, settings: &TrackerSettings, now: Millis) -> Option<Millis> {
        let (base_ts, base_wall) = self.clock_base?;
        let clock = base_ts.plus_ms(now.since(base_wall).max(0));
        if settings.mode == Mode::Live && settings.clock == ClockMode::Wall {
            Some(clock.min(now.max(base_ts)))
        } else {
            Some(clock)
        }
    }

    pub(super) fn next_tag(&mut self) -> u32 {
        // Wraps after four billion segments; a tag is only compared for
        // equality with recent ones, long after any old one is forgotten.
        self.generations = self.generations.wrapping_add(1);
        if self.generations == PENDING {
            self.generations = 0;
        }
        self.generations
    }

    /// Tells the live side which counters are idle now that something at `at` changed.
    pub(super) fn update_idle(&mut self, settings: &TrackerSettings, at: Millis, out: &mut Output) {
        self.live.update_idle(&self.ctx, settings, self.waiting, at, out);
    }

    pub(super) fn ingest(
        &mut self,
        settings: &TrackerSettings,
        event: Event,
        now: Millis,
        wall: Millis,
        out: &mut Output,
    ) {
        self.live.note_accepted();
        self.live.heard_at(&self.ctx, settings, now, out);
        let keys = EventKeys::of(&event);
        if keys.iter().any(|key| self.seen.contains(key)) {
            out.notes.add(Note::Duplicate);
            return;
        }
        for key in keys.iter() {
            self.seen.insert(key, PENDING);
        }

        // With `clock = "wall"`, a device whose clock runs fast must not drag
        // its office's clock ahead (breaches would fire early and every other
        // device's events would arrive late): its event waits in the reorder
        // buffer like any other, and the clock moves at most to `now`.
        let ahead = settings.mode == Mode::Live
            && settings.clock == ClockMode::Wall
            && event.ts.since(wall) > CLOCK_AHEAD_TOLERANCE_MS;
        let clock_ts = if ahead {
            out.notes.add(Note::ClockAhead);
            self.live.note_clock_ahead();
            event.ts.min(now)
        } else {
            event.ts
        };
        match self.clock(settings, now) {
            Some(clock) if clock_ts <= clock => {}
            _ => self.clock_base = Some((clock_ts, now)),
        }

        if event.ts < self.released_upto {
            self.apply(settings, event, keys, Arrival::Late, out);
        } else {
            self.arrivals += 1;
            let key = HeldKey { ts: event.ts, rank: event.kind.rank(), content: keys.content, arrival: self.arrivals };
            self.held.insert(key, event, keys);
        }
        if let Some(clock) = self.clock(settings, now) {
            let watermark = clock.minus_ms(settings.reorder_window_ms);
            self.release(settings, watermark, watermark, now, out);
            self.forget(settings, watermark);
        }
    }

    /// Applies held events with `ts < event_limit`, and fires timers (segment
    /// deadlines, idle deadlines) and snapshots due `< timer_limit`, merged in
    /// time order: at equal times events first (an event at exactly a
    /// deadline is in time), then timers, then the snapshot, which so
    /// reflects every event with `ts <= T`.
    pub(super) fn release(
        &mut self,
        settings: &TrackerSettings,
        event_limit: Millis,
        timer_limit: Millis,
        now: Millis,
        out: &mut Output,
    ) {
        loop {
            let next_event = self.held.first_ts().filter(|ts| *ts < event_limit);
            let next_timer = self.next_timer().filter(|at| *at < timer_limit);
            let next_idle = self.live.next_idle_deadline(&self.ctx, settings).filter(|at| *at < timer_limit);
            let next_snapshot = self.live.next_snapshot().filter(|at| *at < timer_limit);
            let candidates = [(next_event, 0u8), (next_timer, 1), (next_idle, 2), (next_snapshot, 3)];
            let Some((_, which)) = candidates.into_iter().filter_map(|(at, which)| at.map(|at| (at, which))).min()
            else {
                break;
            };
            match which {
                0 => {
                    if let Some((event, keys)) = self.held.pop_first() {
                        self.apply(settings, event, keys, Arrival::InOrder, out);
                    }
                }
                1 => self.fire_timer(settings, out),
                2 => self.live.fire_idle_deadline(&self.ctx, settings, self.released_upto, out),
                _ => {
                    // Nothing but this loop changes the office's state, so
                    // nothing changes before the next event or deadline it
                    // would take, nor past `timer_limit` within this call.
                    let next_change =
                        [next_event, next_timer, next_idle].into_iter().flatten().fold(timer_limit, Millis::min);
                    let facts = live::SnapshotFacts {
                        open_segments: self.open_segments,
                        next_held: self.held.first_ts(),
                        next_change,
                    };
                    self.live.snapshot(&self.ctx, settings, facts, now, out);
                }
            }
        }
        let applied_upto = if event_limit == Millis(i64::MAX) { timer_limit } else { event_limit };
        self.released_upto = self.released_upto.max(applied_upto);
    }

    /// The earliest valid timer, discarding stale entries.
    pub(super) fn next_timer(&mut self) -> Option<Millis> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            let valid = self
                .segment(key.slot)
                .is_some_and(|segment| segment.generation == key.generation && segment.scheduled == at);
            if valid {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    pub(super) fn fire_timer(&mut self, settings: &TrackerSettings, out: &mut Output) {
        let Some(Reverse((at, key))) = self.timers.pop() else { return };
        self.segment_deadline(settings, key.slot, at, out);
    }

    /// Keeps a segment's timer entry at its earliest deadline. `Renew` after
    /// its entry fired; `Update` after an event, which only adds an entry
    /// when the deadline moved earlier (a later one is found when the old
    /// entry fires).
    pub(super) fn schedule(&mut self, settings: &TrackerSettings, slot: SlotId, scheduling: Scheduling) {
        let Some(segment) = self.segment(slot) else { return };
        let targets = self.ctx.targets(settings, segment.service);
        let next = segment.next_deadline(settings, &self.ctx, &targets);
        let Some(segment) = self.segment_mut(slot) else { return };
        if scheduling == Scheduling::Renew || next < segment.scheduled {
            segment.scheduled = next;
            let key = TimerKey { slot, generation: segment.generation };
            self.timers.push(Reverse((next, key)));
        }
    }

    /// Applies one event in its place (or late), unless it would break one
    /// of the office's `[limits]`: then it changes nothing but is counted,
    /// noted against the office and echoed.
    pub(super) fn apply(
        &mut self,
        settings: &TrackerSettings,
        event: Event,
        keys: EventKeys,
        arrival: Arrival,
        out: &mut Output,
    ) {
        if let Some(detail) = self.check_names(settings, &event) {
            self.retire_keys(settings, keys, event.ts, out);
            self.live.note_rejection();
            out.notes.add(Note::CardinalityLimit);
            out.rejections.push(Rejection {
                reason: RejectReason::CardinalityLimit,
                detail,
                office: Some(self.ctx.office.clone()),
                id: event.id.as_ref().map(|id| id.to_string()),
            });
            return;
        }
        self.apply_event(settings, event, keys, arrival, out);
    }
}
