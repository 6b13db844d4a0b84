//! The pure core: follows every ticket at every office.
//!
//! [`Tracker::ingest`] takes a validated event and the wall time it arrived;
//! [`Tracker::advance`] lets wall time pass; [`Tracker::drain`] ends the input.
//! Each appends to an [`Output`]: closed-segment points and counts of what was
//! noted. The tracker does no IO and never reads a clock, so every rule here is
//! testable with plain data and a replay gives the same points as a live run.
//!
//! Invariants:
//! - Offices are independent: nothing in one office's state is read while
//!   handling another office's event.
//! - Each office has its own clock: the newest accepted event's ts plus the
//!   wall time elapsed since it arrived. It never runs backwards.
//! - Events are held until the office clock passes `ts + reorder_window`, then
//!   applied in (ts, rank, content) order, so within the window the output
//!   depends only on which events arrived, never on their order.
//! - `released_upto` only grows; every event with `ts < released_upto` has
//!   been applied, and an arrival below it is `late`.
//! - A dedup key stays known until `dedup_horizon` after the segment it
//!   belongs to closed (keys of open segments are never forgotten).
//! - Points are a pure function of the applied events: writing one twice is
//!   harmless.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use crate::config::{SlaConfig, Targets, TrackingConfig};
use crate::event::{Event, EventType};
use crate::ids::{CounterId, OfficeId, ServiceId, StaffId, TicketNo};
use crate::point::{seconds, FieldValue, Point};
use crate::time::{duration_ms, Millis};

/// Settings the tracker needs, in milliseconds.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    pub reorder_window_ms: i64,
    pub max_ticket_age_ms: i64,
    pub dedup_horizon_ms: i64,
    pub sla: SlaConfig,
}

impl TrackerSettings {
    pub fn new(tracking: &TrackingConfig, sla: &SlaConfig) -> TrackerSettings {
        TrackerSettings {
            reorder_window_ms: duration_ms(tracking.reorder_window),
            max_ticket_age_ms: duration_ms(tracking.max_ticket_age).max(1),
            dedup_horizon_ms: duration_ms(tracking.dedup_horizon),
            sla: sla.clone(),
        }
    }
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings::new(&TrackingConfig::default(), &SlaConfig::default())
    }
}

/// What the tracker noticed about an accepted event, besides its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Note {
    /// Same (office, id), or same (office, type, ticket, counter, ts), as an event already seen.
    Duplicate,
    /// A closing event for a ticket with no other known event: writes nothing.
    OrphanClose,
    /// An event after its ticket's segment closed (a recall after `finished`): changes nothing.
    AfterClose,
    /// Arrived after the reorder window had passed its ts.
    Late,
    /// A duration came out negative (device clocks disagree) and was left out.
    ClockSkew,
}

impl Note {
    pub const ALL: [Note; 5] = [Note::Duplicate, Note::OrphanClose, Note::AfterClose, Note::Late, Note::ClockSkew];

    pub fn as_str(self) -> &'static str {
        match self {
            Note::Duplicate => "duplicate",
            Note::OrphanClose => "orphan_close",
            Note::AfterClose => "after_close",
            Note::Late => "late",
            Note::ClockSkew => "clock_skew",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`Note`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoteCounts([u64; 5]);

impl NoteCounts {
    pub fn add(&mut self, note: Note) {
        self.0[note.index()] += 1;
    }

    pub fn get(&self, note: Note) -> u64 {
        self.0[note.index()]
    }

    pub fn merge(&mut self, other: &NoteCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// What one call produced. Callers drain `points` and keep `notes` summed.
#[derive(Debug, Default)]
pub struct Output {
    pub points: Vec<Point>,
    pub notes: NoteCounts,
}

/// How a segment ended: the `outcome` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Served,
    NoShow,
    Cancelled,
    Transferred,
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::NoShow => "no_show",
            Outcome::Cancelled => "cancelled",
            Outcome::Transferred => "transferred",
            Outcome::Expired => "expired",
        }
    }

    fn of(kind: EventType) -> Option<Outcome> {
        match kind {
            EventType::Finished => Some(Outcome::Served),
            EventType::NoShow => Some(Outcome::NoShow),
            EventType::Cancelled => Some(Outcome::Cancelled),
            EventType::Transferred => Some(Outcome::Transferred),
            _ => None,
        }
    }
}

/// Follows every ticket at every office.
#[derive(Debug)]
pub struct Tracker {
    settings: TrackerSettings,
    offices: HashMap<OfficeId, OfficeState>,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Tracker {
        Tracker { settings, offices: HashMap::new() }
    }

    pub fn settings(&self) -> &TrackerSettings {
        &self.settings
    }

    /// Takes one accepted event that arrived at wall time `now`.
    pub fn ingest(&mut self, event: Event, now: Millis, out: &mut Output) {
        let settings = &self.settings;
        let office = match self.offices.get_mut(&event.office) {
            Some(office) => office,
            None => self
                .offices
                .entry(event.office.clone())
                .or_insert_with(|| OfficeState::new(event.office.clone(), event.ts, now)),
        };
        office.ingest(settings, event, now, out);
    }

    /// Lets wall time pass: applies held events whose window has passed and
    /// expires idle segments, in every office.
    pub fn advance(&mut self, now: Millis, out: &mut Output) {
        for office in self.offices.values_mut() {
            let watermark = office.clock(now).minus_ms(self.settings.reorder_window_ms);
            office.release(&self.settings, watermark, watermark, out);
            office.forget(&self.settings, watermark);
        }
    }

    /// End of input (end of a replay, or shutdown): applies every held event,
    /// then writes what is due by each office's final clock. Open segments
    /// stay open and unwritten.
    pub fn drain(&mut self, now: Millis, out: &mut Output) {
        for office in self.offices.values_mut() {
            let watermark = office.clock(now).minus_ms(self.settings.reorder_window_ms);
            office.release(&self.settings, Millis(i64::MAX), watermark, out);
        }
    }

    /// The office's clock at wall time `now`, if the office has been heard.
    pub fn office_clock(&self, office: &OfficeId, now: Millis) -> Option<Millis> {
        self.offices.get(office).map(|state| state.clock(now))
    }

    /// Open segments across all offices.
    pub fn open_segments(&self) -> usize {
        self.offices.values().map(|office| office.open_segments).sum()
    }

    /// Events held in reorder buffers across all offices.
    pub fn held_events(&self) -> usize {
        self.offices.values().map(|office| office.held.len()).sum()
    }
}

/// Where a held event sorts: time, rank, then content so that equal
/// (ts, rank) pairs still have one order whatever their arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HeldKey {
    ts: Millis,
    rank: u8,
    content: u64,
    arrival: u64,
}

#[derive(Debug)]
struct OfficeState {
    office_tag: Arc<str>,
    clock_base_ts: Millis,
    clock_base_wall: Millis,
    released_upto: Millis,
    held: BTreeMap<HeldKey, Event>,
    arrivals: u64,
    tickets: HashMap<TicketNo, TicketState>,
    open_segments: usize,
    /// (deadline = last event + max age, segment generation, ticket); lazily validated.
    expiries: BinaryHeap<Reverse<(Millis, u64, TicketNo)>>,
    /// Tickets whose closure is remembered, to forget after the dedup horizon.
    closed_memory: BinaryHeap<Reverse<(Millis, TicketNo)>>,
    /// Dedup keys and when they may be forgotten (`i64::MAX` while their segment is open).
    seen: HashMap<u64, Millis>,
    forget_queue: BinaryHeap<Reverse<(Millis, u64)>>,
    generations: u64,
}

#[derive(Debug, Default)]
struct TicketState {
    open: Option<Segment>,
    /// When the ticket's last segment closed, if remembered.
    closed_at: Option<Millis>,
    /// Dedup keys of the events applied to the open segment.
    keys: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Segment {
    generation: u64,
    service: Option<ServiceId>,
    issue: Option<Millis>,
    first_event: Millis,
    last_event: Millis,
    first_call: Option<Millis>,
    last_call: Option<Millis>,
    last_call_counter: Option<CounterId>,
    recalls: u32,
    started: Option<Millis>,
    /// The last call when the customer arrived at the counter: what `walk_s` measures from.
    walk_from: Option<Millis>,
    staff: Option<StaffId>,
    /// Issue time of the ticket's first segment (across transfers), when known.
    visit_start: Option<Millis>,
}

impl Segment {
    fn deadline(&self, settings: &TrackerSettings) -> Millis {
        self.last_event.plus_ms(settings.max_ticket_age_ms)
    }
}

/// How an event reaches `apply`: in its place, or after the window had passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Late,
}

impl OfficeState {
    fn new(office: OfficeId, first_ts: Millis, now: Millis) -> OfficeState {
        let office_tag: Arc<str> = Arc::from(office.as_str());
        OfficeState {
            office_tag,
            clock_base_ts: first_ts,
            clock_base_wall: now,
            released_upto: Millis(i64::MIN),
            held: BTreeMap::new(),
            arrivals: 0,
            tickets: HashMap::new(),
            open_segments: 0,
            expiries: BinaryHeap::new(),
            closed_memory: BinaryHeap::new(),
            seen: HashMap::new(),
            forget_queue: BinaryHeap::new(),
            generations: 0,
        }
    }

    fn clock(&self, now: Millis) -> Millis {
        self.clock_base_ts.plus_ms(now.since(self.clock_base_wall).max(0))
    }

    fn ingest(&mut self, settings: &TrackerSettings, event: Event, now: Millis, out: &mut Output) {
        let (id_key, content_key) = dedup_keys(&event);
        let is_duplicate =
            id_key.is_some_and(|key| self.seen.contains_key(&key)) || self.seen.contains_key(&content_key);
        if is_duplicate {
            out.notes.add(Note::Duplicate);
            return;
        }
        for key in id_key.into_iter().chain([content_key]) {
            self.seen.insert(key, Millis(i64::MAX));
        }

        let clock = self.clock(now);
        if event.ts > clock {
            self.clock_base_ts = event.ts;
            self.clock_base_wall = now;
        }

        if event.ts < self.released_upto {
            out.notes.add(Note::Late);
            self.apply(settings, event, Arrival::Late, out);
        } else {
            self.arrivals += 1;
            let key = HeldKey { ts: event.ts, rank: event.kind.rank(), content: content_key, arrival: self.arrivals };
            self.held.insert(key, event);
        }
        let watermark = self.clock(now).minus_ms(settings.reorder_window_ms);
        self.release(settings, watermark, watermark, out);
        self.forget(settings, watermark);
    }

    /// Applies held events with `ts < event_limit` and expires segments whose
    /// deadline is `< expiry_limit`, merged in time order (an event at exactly
    /// a deadline keeps the segment alive).
    fn release(&mut self, settings: &TrackerSettings, event_limit: Millis, expiry_limit: Millis, out: &mut Output) {
        loop {
            let next_event_ts = self.held.first_key_value().map(|(key, _)| key.ts).filter(|ts| *ts < event_limit);
            let next_expiry = self.next_expiry(settings).filter(|deadline| *deadline < expiry_limit);
            match (next_event_ts, next_expiry) {
                (Some(ts), Some(deadline)) if deadline < ts => self.expire_next(settings, out),
                (Some(_), _) => {
                    if let Some((_, event)) = self.held.pop_first() {
                        self.apply(settings, event, Arrival::InOrder, out);
                    }
                }
                (None, Some(_)) => self.expire_next(settings, out),
                (None, None) => break,
            }
        }
        let applied_upto = if event_limit == Millis(i64::MAX) { expiry_limit } else { event_limit };
        self.released_upto = self.released_upto.max(applied_upto);
    }

    /// The earliest valid expiry deadline, discarding stale heap entries.
    fn next_expiry(&mut self, settings: &TrackerSettings) -> Option<Millis> {
        while let Some(Reverse((deadline, generation, ticket))) = self.expiries.peek() {
            let current = self
                .tickets
                .get(ticket)
                .and_then(|state| state.open.as_ref())
                .filter(|segment| segment.generation == *generation)
                .map(|segment| segment.deadline(settings));
            match current {
                Some(current) if current == *deadline => return Some(current),
                Some(current) => {
                    // The segment saw events since: reschedule at its new deadline.
                    let Reverse((_, generation, ticket)) = self.expiries.pop()?;
                    self.expiries.push(Reverse((current, generation, ticket)));
                }
                None => {
                    self.expiries.pop();
                }
            }
        }
        None
    }

    fn expire_next(&mut self, settings: &TrackerSettings, out: &mut Output) {
        let Some(Reverse((deadline, _, ticket))) = self.expiries.pop() else { return };
        self.close(settings, &ticket, Outcome::Expired, deadline, None, out);
    }

    /// Forgets dedup keys and closed tickets once the horizon has passed.
    fn forget(&mut self, settings: &TrackerSettings, watermark: Millis) {
        while let Some(Reverse((forget_at, key))) = self.forget_queue.peek().copied() {
            if forget_at >= watermark {
                break;
            }
            self.forget_queue.pop();
            if self.seen.get(&key) == Some(&forget_at) {
                self.seen.remove(&key);
            }
        }
        while let Some(Reverse((closed_at, _))) = self.closed_memory.peek() {
            if closed_at.plus_ms(settings.dedup_horizon_ms) >= watermark {
                break;
            }
            let Some(Reverse((closed_at, ticket))) = self.closed_memory.pop() else { break };
            if let Some(state) = self.tickets.get(&ticket) {
                if state.open.is_none() && state.closed_at == Some(closed_at) {
                    self.tickets.remove(&ticket);
                }
            }
        }
    }

    /// Marks an event's dedup keys as forgettable `dedup_horizon` after `anchor`.
    fn stamp_keys(&mut self, settings: &TrackerSettings, keys: &[u64], anchor: Millis) {
        let forget_at = anchor.plus_ms(settings.dedup_horizon_ms);
        for key in keys {
            if let Some(slot) = self.seen.get_mut(key) {
                if *slot == Millis(i64::MAX) {
                    *slot = forget_at;
                    self.forget_queue.push(Reverse((forget_at, *key)));
                }
            }
        }
    }

    fn apply(&mut self, settings: &TrackerSettings, event: Event, arrival: Arrival, out: &mut Output) {
        let (id_key, content_key) = dedup_keys(&event);
        let keys: Vec<u64> = id_key.into_iter().chain([content_key]).collect();
        let Some(ticket) = event.ticket.clone() else {
            // Office and counter events carry no ticket: nothing to follow yet.
            self.stamp_keys(settings, &keys, event.ts);
            return;
        };

        let state = self.tickets.get(&ticket);
        let open = state.and_then(|state| state.open.as_ref());
        let closed_at = state.and_then(|state| state.closed_at);

        if arrival == Arrival::Late {
            // A late event is applied only to the open segment it can belong
            // to; an `issued` for a ticket never seen still opens one, so a
            // kiosk's delayed backlog is not lost.
            let belongs = match open {
                Some(segment) => segment.issue.is_none_or(|issue| event.ts >= issue) || event.kind == EventType::Issued,
                None => event.kind == EventType::Issued && closed_at.is_none(),
            };
            if !belongs {
                self.stamp_keys(settings, &keys, event.ts);
                return;
            }
        }

        match event.kind {
            EventType::Issued => self.apply_issued(settings, &ticket, &event, out),
            EventType::Called | EventType::Recalled | EventType::Started => {
                if open.is_none() {
                    if closed_at.is_some() {
                        out.notes.add(Note::AfterClose);
                        self.stamp_keys(settings, &keys, event.ts);
                        return;
                    }
                    let service = event.service.clone();
                    self.open_segment(settings, &ticket, service, None, event.ts, None);
                }
                if let Some(segment) = self.open_mut(&ticket) {
                    update_segment(segment, &event);
                }
            }
            kind => {
                let Some(outcome) = Outcome::of(kind) else { return };
                if open.is_some() {
                    if let Some(segment) = self.open_mut(&ticket) {
                        segment.last_event = segment.last_event.max(event.ts);
                        if segment.staff.is_none() || event.staff.is_some() {
                            segment.staff = event.staff.clone().or(segment.staff.take());
                        }
                        if segment.service.is_none() {
                            segment.service = event.service.clone();
                        }
                    }
                    let visit_start = self.open_mut(&ticket).and_then(|segment| segment.visit_start);
                    self.attach_keys(&ticket, &keys);
                    self.close(settings, &ticket, outcome, event.ts, Some(&event), out);
                    if outcome == Outcome::Transferred {
                        self.open_segment(
                            settings,
                            &ticket,
                            event.to_service.clone(),
                            Some(event.ts),
                            event.ts,
                            visit_start,
                        );
                    }
                    return;
                } else if closed_at.is_some() {
                    out.notes.add(Note::AfterClose);
                } else if outcome == Outcome::Transferred {
                    // The first segment is unknown, so the whole visit is too.
                    self.open_segment(settings, &ticket, event.to_service.clone(), Some(event.ts), event.ts, None);
                } else {
                    out.notes.add(Note::OrphanClose);
                }
                self.stamp_keys(settings, &keys, event.ts);
                return;
            }
        }
        self.attach_keys(&ticket, &keys);
    }

    fn apply_issued(&mut self, settings: &TrackerSettings, ticket: &TicketNo, event: &Event, out: &mut Output) {
        if let Some(segment) = self.open_mut(ticket) {
            if segment.issue.is_none() && event.ts <= segment.first_event {
                // The missing issue of a segment first seen through a later event.
                segment.issue = Some(event.ts);
                segment.first_event = event.ts;
                segment.service = event.service.clone().or(segment.service.take());
                if segment.visit_start.is_none() {
                    segment.visit_start = Some(event.ts);
                }
                return;
            }
            // The number was issued again while still open: the old one expired.
            let expired_at = segment.deadline(settings).min(event.ts);
            self.close(settings, ticket, Outcome::Expired, expired_at, None, out);
        }
        self.open_segment(settings, ticket, event.service.clone(), Some(event.ts), event.ts, Some(event.ts));
    }

    fn open_mut(&mut self, ticket: &TicketNo) -> Option<&mut Segment> {
        self.tickets.get_mut(ticket).and_then(|state| state.open.as_mut())
    }

    fn attach_keys(&mut self, ticket: &TicketNo, keys: &[u64]) {
        if let Some(state) = self.tickets.get_mut(ticket) {
            state.keys.extend_from_slice(keys);
        }
    }

    fn open_segment(
        &mut self,
        settings: &TrackerSettings,
        ticket: &TicketNo,
        service: Option<ServiceId>,
        issue: Option<Millis>,
        first_event: Millis,
        visit_start: Option<Millis>,
    ) {
        self.generations += 1;
        let segment = Segment {
            generation: self.generations,
            service,
            issue,
            first_event,
            last_event: first_event,
            first_call: None,
            last_call: None,
            last_call_counter: None,
            recalls: 0,
            started: None,
            walk_from: None,
            staff: None,
            visit_start,
        };
        self.expiries.push(Reverse((segment.deadline(settings), segment.generation, ticket.clone())));
        let state = self.tickets.entry(ticket.clone()).or_default();
        state.open = Some(segment);
        self.open_segments += 1;
    }

    /// Closes the ticket's open segment and writes its point.
    fn close(
        &mut self,
        settings: &TrackerSettings,
        ticket: &TicketNo,
        outcome: Outcome,
        close_ts: Millis,
        closing: Option<&Event>,
        out: &mut Output,
    ) {
        let Some(state) = self.tickets.get_mut(ticket) else { return };
        let Some(segment) = state.open.take() else { return };
        state.closed_at = Some(close_ts);
        let keys = std::mem::take(&mut state.keys);
        self.open_segments -= 1;
        self.closed_memory.push(Reverse((close_ts, ticket.clone())));
        self.stamp_keys(settings, &keys, close_ts);

        let point = segment_point(settings, &self.office_tag, ticket, &segment, outcome, close_ts, closing, out);
        out.points.push(point);
    }
}

/// Applies a call, recall or start to an open segment.
fn update_segment(segment: &mut Segment, event: &Event) {
    segment.last_event = segment.last_event.max(event.ts);
    if segment.service.is_none() {
        segment.service = event.service.clone();
    }
    if event.staff.is_some() {
        segment.staff = event.staff.clone();
    }
    let is_call = match event.kind {
        EventType::Called => {
            if segment.first_call.is_some() {
                segment.recalls += 1;
            }
            true
        }
        EventType::Recalled => {
            segment.recalls += 1;
            true
        }
        // A start with no earlier call is the first call too.
        EventType::Started => segment.first_call.is_none(),
        _ => false,
    };
    if is_call {
        segment.first_call = Some(segment.first_call.map_or(event.ts, |first| first.min(event.ts)));
        segment.last_call = Some(segment.last_call.map_or(event.ts, |last| last.max(event.ts)));
        segment.last_call_counter = event.counter.clone();
    }
    if event.kind == EventType::Started && segment.started.is_none() {
        segment.started = Some(event.ts);
        segment.walk_from = segment.last_call;
    }
}

/// The `ticket` point of a closed segment.
#[allow(clippy::too_many_arguments)]
fn segment_point(
    settings: &TrackerSettings,
    office_tag: &Arc<str>,
    ticket: &TicketNo,
    segment: &Segment,
    outcome: Outcome,
    close_ts: Millis,
    closing: Option<&Event>,
    out: &mut Output,
) -> Point {
    let service = segment.service.clone().unwrap_or_else(ServiceId::unknown);
    let targets: Targets = settings.sla.targets_for(&service);
    let mut point = Point::new("ticket", point_time_ns(close_ts, ticket));
    point.tag("office", office_tag.clone());
    point.tag("service", Arc::from(service.as_str()));
    point.tag("outcome", Arc::from(outcome.as_str()));
    let counter = closing.and_then(|event| event.counter.clone()).or_else(|| segment.last_call_counter.clone());
    if let Some(counter) = counter {
        point.tag("counter", Arc::from(counter.as_str()));
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
    let close = Some(close_ts);
    let is_expired = outcome == Outcome::Expired;
    let has_service_time = matches!(outcome, Outcome::Served | Outcome::Transferred);
    let is_final = matches!(outcome, Outcome::Served | Outcome::NoShow | Outcome::Cancelled);

    let wait_ms = span(segment.issue, segment.first_call);
    let walk_ms = span(segment.walk_from, segment.started);
    let service_ms = if has_service_time { span(segment.started.or(segment.last_call), close) } else { None };
    let total_ms = if is_expired { None } else { span(segment.issue, close) };
    let visit_ms = if is_final { span(segment.visit_start, close) } else { None };

    point.field("ticket", FieldValue::Str(ticket.as_str().to_string()));
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
    let staff = closing.and_then(|event| event.staff.clone()).or_else(|| segment.staff.clone());
    if let Some(staff) = staff {
        point.field("staff", FieldValue::Str(staff.as_str().to_string()));
    }
    point
}

/// Point time in nanoseconds: the millisecond of `at` plus a deterministic
/// sub-millisecond offset from the ticket, so two tickets closing in the same
/// millisecond with the same tags never overwrite each other, while the same
/// ticket's point always lands on the same time (rewrites are harmless).
pub fn point_time_ns(at: Millis, ticket: &TicketNo) -> i64 {
    let offset_ns = (fnv1a(ticket.as_str().as_bytes()) % 1_000_000) as i64;
    at.0.saturating_mul(1_000_000).saturating_add(offset_ns)
}

/// The two dedup keys of an event: by `id` (if any) and by content
/// (type, ticket, counter, ts). Hashes, not copies, to keep memory per ticket small.
fn dedup_keys(event: &Event) -> (Option<u64>, u64) {
    let id_key = event.id.as_deref().map(|id| {
        let mut hash = Fnv::new();
        hash.write(b"id\0");
        hash.write(id.as_bytes());
        hash.finish()
    });
    let mut hash = Fnv::new();
    hash.write(b"content\0");
    hash.write(event.kind.as_str().as_bytes());
    hash.write(b"\0");
    hash.write(event.ticket.as_ref().map_or("", |ticket| ticket.as_str()).as_bytes());
    hash.write(b"\0");
    hash.write(event.counter.as_ref().map_or("", |counter| counter.as_str()).as_bytes());
    hash.write(b"\0");
    hash.write(&event.ts.0.to_le_bytes());
    (id_key, hash.finish())
}

/// FNV-1a, 64 bit: stable across releases and platforms, unlike std's
/// hasher, because point times derived from it must never change.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        // A final avalanche so that short keys spread over all bits.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv::new();
    hash.write(bytes);
    hash.finish()
}

#[cfg(test)]
mod tests;
