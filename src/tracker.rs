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
//!   belongs to closed (the keys an open segment keeps, its first
//!   [`SEGMENT_KEYS_KEPT`], are never forgotten; its later events' keys, and
//!   those of events that belong to no segment, count as closed at the
//!   event's time), or less when its office's closed tickets and keys reach
//!   `limits.max_remembered_per_office`: then the least recently closed go
//!   first, decided as events are applied in the ordered loop.
//! - Points are a pure function of the applied events: writing one twice is
//!   harmless. Every time-driven output (breach deadlines, expiries,
//!   snapshots) fires from the same ordered loop as the events, once the
//!   office clock has passed its time plus the reorder window, so a replay
//!   and a live run write the same points. Only what depends on wall time
//!   itself (`silent`, and alerts) differs, and only in [`Mode::Live`].
//!
//! Layout: this file holds the clock, the reorder buffer, the ordered loop,
//! dedup and ticket segments with their breaches (the ticket side, in
//! [`OfficeState`]); `live.rs` the per-office gauges, counter sessions,
//! feedback, idle counters and silence (the live side, its own state behind
//! a narrow interface); `held.rs` the reorder buffer; `store.rs` the compact
//! storage. Both sides read the
//! office's identity and interned names from one [`OfficeContext`].

mod held;
mod hours;
mod live;
pub mod state;
mod store;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use held::{Held, HeldKey};
use store::{renumber, stamp, unstamp, NameId, Names, Seen, SlotId, Stamp, Tickets, PENDING};

use crate::config::{ClockMode, Config, LimitsConfig, OfficeConfig, OfficeSla, SlaConfig, Targets};
use crate::event::{Event, EventType, RejectReason, Rejection};
use crate::ids::{CounterId, OfficeId, ServiceId, StaffId, TicketNo};
use crate::point::{seconds, FieldValue, Point};
use crate::time::{duration_ms, Millis};

pub use live::{Alert, AlertKind, AlertState};
use live::{QueueShare, GAUGE_SPAN_AFTER_LAST_EVENT_MS};

/// Whether wall time means anything: a live daemon, or a replay of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run`: office clocks follow the wall clock between events; offices can be `silent`.
    Live,
    /// `replay`: pure event time; no `silent`, and alerts are not published.
    Replay,
}

/// Settings the tracker needs, in milliseconds.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    pub reorder_window_ms: i64,
    pub max_ticket_age_ms: i64,
    pub dedup_horizon_ms: i64,
    pub snapshot_interval_ms: i64,
    pub gauge_idle_after_ms: i64,
    /// A multiple of the snapshot interval (at least one).
    pub gauge_keepalive_ms: i64,
    pub silence_after_ms: i64,
    /// After an office's day closes, how long segments may stay open.
    pub close_grace_ms: i64,
    /// Whether office clocks may run ahead of the wall clock ([`Mode::Live`] only).
    pub clock: ClockMode,
    /// Whether `queue` and `office` gauge rows are written at all.
    pub gauges: bool,
    pub sla: SlaConfig,
    pub offices: BTreeMap<OfficeId, OfficeConfig>,
    /// `offices.only_configured`.
    pub only_configured: bool,
    pub limits: LimitsConfig,
    pub mode: Mode,
}

impl TrackerSettings {
    pub fn new(config: &Config, mode: Mode) -> TrackerSettings {
        let tracking = &config.tracking;
        let snapshot_interval_ms = duration_ms(tracking.snapshot_interval).max(1);
        TrackerSettings {
            reorder_window_ms: duration_ms(tracking.reorder_window),
            max_ticket_age_ms: duration_ms(tracking.max_ticket_age).max(1),
            dedup_horizon_ms: duration_ms(tracking.dedup_horizon),
            snapshot_interval_ms,
            gauge_idle_after_ms: duration_ms(tracking.gauge_idle_after),
            gauge_keepalive_ms: duration_ms(tracking.gauge_keepalive).max(snapshot_interval_ms),
            silence_after_ms: duration_ms(tracking.silence_after).max(1),
            close_grace_ms: duration_ms(tracking.close_grace),
            clock: tracking.clock,
            gauges: tracking.gauges,
            sla: config.sla.clone(),
            offices: config.offices.clone(),
            only_configured: config.only_configured,
            limits: config.limits,
            mode,
        }
    }

    /// How long a name, or an office not in the config, stays remembered
    /// after its last use when nothing refers to it any more: past the dedup
    /// horizon, past the gauges' idle time and their own lifetime.
    fn forget_after_ms(&self) -> i64 {
        self.dedup_horizon_ms.max(self.gauge_idle_after_ms).max(GAUGE_SPAN_AFTER_LAST_EVENT_MS)
            + self.gauge_keepalive_ms
            + self.snapshot_interval_ms
    }

    fn office_sla(&self, office: &OfficeId) -> Option<&OfficeSla> {
        self.offices.get(office).map(|config| &config.sla)
    }
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings::new(&Config::default(), Mode::Replay)
    }
}

/// What became of an accepted event, and what was noticed about it.
///
/// Every accepted event gets exactly one outcome ([`Note::OUTCOMES`]) once
/// it leaves the reorder buffer (a duplicate at once): applied, or one of
/// the four ways of changing nothing. The others ([`Note::REMARKS`]) are
/// remarks on applied (or, for `ClockAhead`, held) events and do not add up
/// to anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Note {
    /// Applied to the office's state (it may still have written nothing).
    Applied,
    /// Same (office, id), or same (office, type, ticket, counter, ts), as an event already seen.
    Duplicate,
    /// A closing event for a ticket with no other known event: writes nothing.
    OrphanClose,
    /// An event after its ticket's segment closed (a recall after `finished`): changes nothing.
    AfterClose,
    /// Arrived after the reorder window had passed its ts, and no open
    /// segment it could belong to was left: changes nothing.
    LateDropped,
    /// Arrived after the reorder window had passed its ts, and was applied
    /// to the open segment it belongs to.
    Late,
    /// Would have added a name or an open ticket beyond one of the office's
    /// `[limits]`: changes nothing (and is echoed as `cardinality_limit`).
    CardinalityLimit,
    /// A duration came out negative (device clocks disagree) and was left out.
    ClockSkew,
    /// Stamped more than [`CLOCK_AHEAD_TOLERANCE_MS`] ahead of the wall clock
    /// at arrival (`tracking.clock = "wall"`): held without moving the office clock.
    ClockAhead,
}

/// The dedup keys an open segment keeps for its whole life: its first
/// events' (8 with an `id`: the issue, the call, four recalls, the start and
/// the close; a simulated day's segments have at most six). Keys of its later events are remembered like those
/// of events that belong to no segment: for `dedup_horizon` after their own
/// time, counted in `limits.max_remembered_per_office`, so a ticket that
/// never closes cannot collect keys without bound.
pub const SEGMENT_KEYS_KEPT: usize = 16;

/// How far ahead of its arrival an event may be stamped before it counts as
/// `clock_ahead` (NTP-synchronised devices and the broker's delivery stay well within it).
pub const CLOCK_AHEAD_TOLERANCE_MS: i64 = 1000;

impl Note {
    pub const OUTCOMES: [Note; 6] = [
        Note::Applied,
        Note::Duplicate,
        Note::AfterClose,
        Note::OrphanClose,
        Note::LateDropped,
        Note::CardinalityLimit,
    ];
    pub const REMARKS: [Note; 3] = [Note::Late, Note::ClockSkew, Note::ClockAhead];
    pub const ALL: [Note; 9] = [
        Note::Applied,
        Note::Duplicate,
        Note::AfterClose,
        Note::OrphanClose,
        Note::LateDropped,
        Note::CardinalityLimit,
        Note::Late,
        Note::ClockSkew,
        Note::ClockAhead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Note::Applied => "applied",
            Note::Duplicate => "duplicate",
            Note::OrphanClose => "orphan_close",
            Note::AfterClose => "after_close",
            Note::LateDropped => "late_dropped",
            Note::CardinalityLimit => "cardinality_limit",
            Note::Late => "late",
            Note::ClockSkew => "clock_skew",
            Note::ClockAhead => "clock_ahead",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`Note`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoteCounts([u64; Note::ALL.len()]);

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

    /// Accepted events that have had their outcome (all of them, once the
    /// reorder buffers are drained).
    pub fn outcomes_total(&self) -> u64 {
        Note::OUTCOMES.iter().map(|note| self.get(*note)).sum()
    }
}

/// What one call produced. Callers drain `points` and keep `notes` summed.
#[derive(Debug, Default)]
pub struct Output {
    pub points: Vec<Point>,
    pub notes: NoteCounts,
    /// Breach alerts raised and resolved (published by `run` only).
    pub alerts: Vec<Alert>,
    /// Accepted events refused when applied (`cardinality_limit`), to echo.
    pub rejections: Vec<Rejection>,
    /// Closed tickets and dedup keys forgotten before the dedup horizon
    /// because their office reached `limits.max_remembered_per_office`, by
    /// office (consecutive counts of one office summed).
    pub forgotten_early: Vec<(OfficeId, u64)>,
    /// Points already encoded, handed back for their buffers to be reused
    /// by the next points (see [`Output::recycle`]).
    spare_points: Vec<Point>,
}

/// How many encoded points an [`Output`] keeps for reuse.
const MAX_SPARE_POINTS: usize = 64;

impl Output {
    /// Hands back a point that is no longer needed, so that a later point
    /// reuses its tag and field buffers instead of allocating new ones.
    pub fn recycle(&mut self, mut point: Point) {
        if self.spare_points.len() < MAX_SPARE_POINTS {
            point.tags.clear();
            point.fields.clear();
            self.spare_points.push(point);
        }
    }

    /// A new point: a recycled one when there is one.
    fn new_point(&mut self, measurement: &'static str, time_ns: i64) -> Point {
        match self.spare_points.pop() {
            Some(mut point) => {
                point.measurement = measurement;
                point.time_ns = time_ns;
                point
            }
            None => Point::new(measurement, time_ns),
        }
    }
}

/// How a segment ended: the `outcome` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Served,
    NoShow,
    Cancelled,
    Transferred,
    Expired,
    /// Still waiting, never called, when the office's day closed (plus the
    /// grace): the person left at some unknown time.
    Abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Served,
        Outcome::NoShow,
        Outcome::Cancelled,
        Outcome::Transferred,
        Outcome::Expired,
        Outcome::Abandoned,
    ];

    /// The tag value, shared rather than allocated for every point.
    fn tag(self) -> Arc<str> {
        static TAGS: std::sync::LazyLock<[Arc<str>; 6]> =
            std::sync::LazyLock::new(|| Outcome::ALL.map(|outcome| Arc::from(outcome.as_str())));
        TAGS[self as usize].clone()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::NoShow => "no_show",
            Outcome::Cancelled => "cancelled",
            Outcome::Transferred => "transferred",
            Outcome::Expired => "expired",
            Outcome::Abandoned => "abandoned",
        }
    }

    fn of(kind: EventType) -> Option<Outcome> {
        match kind {
            EventType::Finished => Some(Outcome::Served),
            EventType::NoShow => Some(Outcome::NoShow),
            EventType::Cancelled => Some(Outcome::Cancelled),
            EventType::Transferred => Some(Outcome::Transferred),
            EventType::Issued
            | EventType::Called
            | EventType::Recalled
            | EventType::Started
            | EventType::CounterOpened
            | EventType::CounterClosed
            | EventType::Feedback
            | EventType::Heartbeat => None,
        }
    }
}

/// Follows every ticket at every office. A clone is a snapshot of the
/// whole state (see [`state`]).
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: TrackerSettings,
    offices: HashMap<OfficeId, OfficeState>,
    /// Offices in `offices` that the config does not name (`limits.max_offices`).
    unconfigured: usize,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Tracker {
        // Configured offices exist before they are ever heard, so that they
        // get `office` gauges (live) and can be found silent.
        let offices = settings
            .offices
            .keys()
            .map(|office| (office.clone(), OfficeState::new(&settings, office.clone())))
            .collect();
        Tracker { settings, offices, unconfigured: 0 }
    }

    /// A tracker holding `offices` (a restored state).
    fn with_offices(settings: TrackerSettings, offices: HashMap<OfficeId, OfficeState>) -> Tracker {
        let unconfigured = offices.values().filter(|office| office.ctx.config.is_none()).count();
        Tracker { settings, offices, unconfigured }
    }

    /// Takes one decoded event that arrived at wall time `now` (`wall`: see
    /// [`Tracker::ingest_with_wall`]) if it may enter at all: its office
    /// must be configured (`offices.only_configured`) or fit
    /// `limits.max_offices`, and be within its message rate. An event
    /// refused here changes nothing; the caller counts and echoes it.
    pub fn ingest_admitted(
        &mut self,
        event: Event,
        now: Millis,
        wall: Millis,
        out: &mut Output,
    ) -> Result<(), Rejection> {
        let settings = &self.settings;
        let office = match self.offices.get_mut(&event.office) {
            Some(office) => {
                if !office.take_token(settings, now, event.ts) {
                    return Err(refusal(settings, &event, Refusal::Rate));
                }
                office
            }
            None => {
                let limit = settings.limits.max_offices;
                if settings.only_configured {
                    return Err(refusal(settings, &event, Refusal::UnknownOffice));
                } else if limit > 0 && self.unconfigured >= limit {
                    return Err(refusal(settings, &event, Refusal::Offices));
                }
                new_office(settings, &mut self.offices, &mut self.unconfigured, &event, now)
            }
        };
        office.ingest(settings, event, now, wall, out);
        Ok(())
    }

    pub fn settings(&self) -> &TrackerSettings {
        &self.settings
    }

    /// Takes one accepted event that arrived at wall time `now`.
    pub fn ingest(&mut self, event: Event, now: Millis, out: &mut Output) {
        self.ingest_with_wall(event, now, now, out);
    }

    /// Takes one accepted event. `now` is the time office clocks run on (the
    /// wall clock less the daemon's own stalls, see `daemon`); `wall` is the
    /// real wall time of its arrival, against which a device clock running
    /// ahead is judged.
    pub fn ingest_with_wall(&mut self, event: Event, now: Millis, wall: Millis, out: &mut Output) {
        let settings = &self.settings;
        let office = match self.offices.get_mut(&event.office) {
            Some(office) => office,
            None => new_office(settings, &mut self.offices, &mut self.unconfigured, &event, now),
        };
        office.ingest(settings, event, now, wall, out);
    }

    /// Counts a rejected message against its office, if the office is known
    /// (heard or configured): unknown offices are not created from rejected
    /// input, which keeps memory bounded against junk topics. A rejected
    /// message still proves the office is not silent.
    pub fn note_rejection(&mut self, office: &OfficeId, now: Millis, out: &mut Output) {
        if let Some(state) = self.offices.get_mut(office) {
            state.live.note_rejection();
            state.live.heard_at(&state.ctx, &self.settings, now, out);
        }
    }

    /// Lets wall time pass: applies held events whose window has passed,
    /// fires due deadlines and snapshots, in every office.
    pub fn advance(&mut self, now: Millis, out: &mut Output) {
        let settings = &self.settings;
        let before = self.offices.len();
        self.offices.retain(|_, office| {
            match office.clock(settings, now) {
                Some(clock) => {
                    let watermark = clock.minus_ms(settings.reorder_window_ms);
                    office.release(settings, watermark, watermark, now, out);
                    office.forget(settings, watermark);
                    if office.forgettable(settings, watermark) {
                        return false;
                    }
                }
                None => office.live.unheard_snapshots(&office.ctx, settings, now, out),
            }
            office.live.check_silence(&office.ctx, settings, now, out);
            true
        });
        // Only offices not in the config are ever forgotten.
        self.unconfigured -= before - self.offices.len();
    }

    /// End of input (end of a replay, or shutdown): applies every held event,
    /// then writes what is due by each office's final clock. Open segments
    /// stay open and unwritten.
    pub fn drain(&mut self, now: Millis, out: &mut Output) {
        for office in self.offices.values_mut() {
            if let Some(clock) = office.clock(&self.settings, now) {
                let watermark = clock.minus_ms(self.settings.reorder_window_ms);
                office.release(&self.settings, Millis(i64::MAX), watermark, now, out);
            }
        }
    }

    /// Whether the office is tracked (heard and not forgotten, or configured).
    pub fn knows(&self, office: &OfficeId) -> bool {
        self.offices.contains_key(office)
    }

    /// The office's clock at wall time `now`, if the office has been heard.
    pub fn office_clock(&self, office: &OfficeId, now: Millis) -> Option<Millis> {
        self.offices.get(office).and_then(|state| state.clock(&self.settings, now))
    }

    /// Open segments across all offices.
    pub fn open_segments(&self) -> usize {
        self.offices.values().map(|office| office.open_segments).sum()
    }

    /// Ticket numbers remembered (open, or closed within the dedup horizon).
    pub fn remembered_tickets(&self) -> usize {
        self.offices.values().map(|office| office.tickets.len()).sum()
    }

    /// Dedup keys remembered across all offices.
    pub fn dedup_keys(&self) -> usize {
        self.offices.values().map(|office| office.seen.len()).sum()
    }

    /// Events held in reorder buffers across all offices.
    pub fn held_events(&self) -> usize {
        self.offices.values().map(|office| office.held.len()).sum()
    }
}

/// Starts following an office on its first message, which takes from a full rate bucket.
fn new_office<'a>(
    settings: &TrackerSettings,
    offices: &'a mut HashMap<OfficeId, OfficeState>,
    unconfigured: &mut usize,
    event: &Event,
    now: Millis,
) -> &'a mut OfficeState {
    *unconfigured += usize::from(!settings.offices.contains_key(&event.office));
    let office =
        offices.entry(event.office.clone()).or_insert_with(|| OfficeState::new(settings, event.office.clone()));
    office.take_token(settings, now, event.ts);
    office
}

/// Why [`Tracker::ingest_admitted`] refused a message.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    UnknownOffice,
    Offices,
    Rate,
}

#[cold]
fn refusal(settings: &TrackerSettings, event: &Event, why: Refusal) -> Rejection {
    let limits = &settings.limits;
    let (reason, detail) = match why {
        Refusal::UnknownOffice => (
            RejectReason::UnknownOffice,
            format!("office {} is not in the config (offices.only_configured)", event.office),
        ),
        Refusal::Offices => (
            RejectReason::CardinalityLimit,
            format!("{} offices not in the config are known already (limits.max_offices)", limits.max_offices),
        ),
        Refusal::Rate => (
            RejectReason::CardinalityLimit,
            format!(
                "more than {} messages a second, {} at once (limits.max_messages_per_second_per_office, \
                 limits.max_burst_per_office)",
                limits.max_messages_per_second_per_office, limits.max_burst_per_office
            ),
        ),
    };
    Rejection { reason, detail, office: Some(event.office.clone()), id: event.id.as_ref().map(|id| id.to_string()) }
}

/// A segment's earliest pending deadline (wait or service target, or
/// expiry) in an office's timer heap: 8 bytes, since every open segment has
/// one. Lazily validated against `Segment::scheduled` and the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimerKey {
    slot: SlotId,
    generation: u32,
}

/// Who an office is, and the names interned for it: what both the ticket
/// side ([`OfficeState`]) and the live side ([`live::OfficeLive`]) read.
#[derive(Debug, Clone)]
struct OfficeContext {
    office: OfficeId,
    office_tag: Arc<str>,
    region_tag: Option<Arc<str>>,
    config: Option<OfficeConfig>,
    /// The office's opening hours as instants, when it has hours.
    hours: Option<hours::Hours>,
    services: Names<ServiceId>,
    counters: Names<CounterId>,
    staff: Names<StaffId>,
    /// Targets by service `NameId` (index 0: the `unknown` service).
    targets_cache: std::cell::RefCell<Vec<Option<Targets>>>,
}

impl OfficeContext {
    fn service_name(&self, service: Option<NameId>) -> ServiceId {
        service.map_or_else(ServiceId::unknown, |id| self.services.get(id).clone())
    }

    /// The targets in force for a service, looked up in the config once per
    /// service and office and kept (they are asked for at every snapshot).
    fn targets(&self, settings: &TrackerSettings, service: Option<NameId>) -> Targets {
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
    fn open_field(&self, point: &mut Point, at: Millis) {
        if let Some(hours) = &self.hours {
            point.field("open", FieldValue::Int(i64::from(hours.is_open_at(at))));
        }
    }

    /// A point with the tags every point of this office carries.
    fn point(&self, out: &mut Output, measurement: &'static str, time_ns: i64) -> Point {
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
struct OfficeState {
    ctx: OfficeContext,
    /// `(newest ts, wall time it arrived)`; `None` until the office is heard.
    clock_base: Option<(Millis, Millis)>,
    released_upto: Millis,
    /// Held events with their dedup keys, computed once at arrival.
    held: Held,
    arrivals: u64,
    tickets: Tickets<TicketState>,
    open_segments: usize,
    /// Open segments not yet called.
    waiting: usize,
    timers: BinaryHeap<Reverse<(Millis, TimerKey)>>,
    /// Tickets whose closure is remembered, to forget after the dedup horizon.
    closed_memory: BinaryHeap<Reverse<(Millis, SlotId)>>,
    seen: Seen,
    /// By slot: how many dedup keys the slot's open segment has (saturating;
    /// at `u16::MAX` the dedup table counts them when the segment closes).
    key_counts: Vec<u16>,
    /// Segment generations, and one-off tags for dedup keys of events that
    /// belong to no open segment.
    generations: u32,
    live: live::OfficeLive,
    /// The message-rate bucket (`limits.max_messages_per_second_per_office`):
    /// thousandths of a message, and the office clock it was filled up to.
    /// Not stored in states: a restarted daemon starts every bucket full.
    bucket: Option<(i64, Millis)>,
    /// The watermark of the last pass that forgot unused names.
    names_swept: Millis,
}

/// A ticket number's state: its open segment, or the memory of its last
/// close (when, and its service, for feedback after the close).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum TicketState {
    Open(Segment),
    Closed { at: Stamp, service: Option<NameId> },
}

impl TicketState {
    fn open(&self) -> Option<&Segment> {
        match self {
            TicketState::Open(segment) => Some(segment),
            TicketState::Closed { .. } => None,
        }
    }

    fn open_mut(&mut self) -> Option<&mut Segment> {
        match self {
            TicketState::Open(segment) => Some(segment),
            TicketState::Closed { .. } => None,
        }
    }

    fn closed_at(&self) -> Option<Millis> {
        match self {
            TicketState::Open(_) => None,
            TicketState::Closed { at, .. } => Some(at.get()),
        }
    }
}

/// One waiting-and-service segment of a ticket, kept small (about 100
/// bytes): times as `Option<Stamp>` (8 bytes), names interned.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    generation: u32,
    /// Saturates at 255: no customer is called more often.
    recalls: u8,
    wait_breach: BreachState,
    service_breach: BreachState,
    service: Option<NameId>,
    last_call_counter: Option<NameId>,
    /// The counter this segment keeps busy (from its call to its close).
    busy_counter: Option<NameId>,
    staff: Option<NameId>,
    /// The issue time when `issue_known`, else the first event's time (an
    /// orphan): one field serves both, since an issued segment's first event
    /// is its issue.
    start: Millis,
    issue_known: bool,
    last_event: Millis,
    first_call: Option<Stamp>,
    last_call: Option<Stamp>,
    started: Option<Stamp>,
    /// The last call when the customer arrived at the counter: what `walk_s` measures from.
    walk_from: Option<Stamp>,
    /// Issue time of the ticket's first segment (across transfers), when known.
    visit_start: Option<Stamp>,
    /// The deadline of a raised service breach (alert `since`), kept for its
    /// id because the service start can still move; a wait deadline cannot.
    service_since: Option<Stamp>,
    /// The time of this segment's live timer entry.
    scheduled: Millis,
}

/// Whether a breach was raised for a segment, and whether its alert is still firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
enum BreachState {
    #[default]
    None,
    Firing,
    Resolved,
}

impl Segment {
    /// What this segment adds to its service's queue gauge.
    fn queue_share(&self) -> QueueShare {
        QueueShare { service: self.service, waiting: self.first_call.is_none(), issue: self.issue() }
    }

    /// When and how the segment ends if no event closes it. At an office
    /// with hours: at the close of its day (the first close after the
    /// visit's issue, or after its first event when the issue is unknown),
    /// once `close_grace` has passed; stamped at the close, or at the
    /// segment's last event if that came during the grace. Elsewhere (and
    /// where hours never close): `max_ticket_age` after its last event.
    fn end_of_life(&self, settings: &TrackerSettings, ctx: &OfficeContext) -> EndOfLife {
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

    fn issue(&self) -> Option<Millis> {
        self.issue_known.then_some(self.start)
    }

    fn first_call(&self) -> Option<Millis> {
        unstamp(self.first_call)
    }

    fn last_call(&self) -> Option<Millis> {
        unstamp(self.last_call)
    }

    fn started(&self) -> Option<Millis> {
        unstamp(self.started)
    }

    /// When service started: at `started`, else at the last call (as `service_s`).
    fn service_start(&self) -> Option<Millis> {
        self.started().or(self.last_call())
    }

    fn wait_deadline(&self, targets: &Targets) -> Option<Millis> {
        if self.wait_breach != BreachState::None || self.first_call.is_some() {
            return None;
        }
        self.issue().map(|issue| issue.plus_ms(targets.wait_ms))
    }

    fn service_deadline(&self, targets: &Targets) -> Option<Millis> {
        if self.service_breach != BreachState::None {
            return None;
        }
        self.service_start().map(|start| start.plus_ms(targets.service_ms))
    }

    /// The earliest of the pending deadlines.
    fn next_deadline(&self, settings: &TrackerSettings, ctx: &OfficeContext, targets: &Targets) -> Millis {
        [self.wait_deadline(targets), self.service_deadline(targets)]
            .into_iter()
            .flatten()
            .fold(self.end_of_life(settings, ctx).fires_at, Millis::min)
    }
}

/// How a segment that no event closes ends (see [`Segment::end_of_life`]).
#[derive(Debug, Clone, Copy)]
struct EndOfLife {
    /// When the ordered loop closes it.
    fires_at: Millis,
    /// The time its point is stamped at.
    at: Millis,
    cause: EndCause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndCause {
    /// The office's day closed: `abandoned` if never called, else `expired`.
    DayClosed,
    /// `max_ticket_age` passed since its last event: `expired`.
    MaxAge,
}

impl EndOfLife {
    fn outcome(self, segment: &Segment) -> Outcome {
        match self.cause {
            EndCause::DayClosed if segment.first_call.is_none() => Outcome::Abandoned,
            EndCause::DayClosed | EndCause::MaxAge => Outcome::Expired,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduling {
    Renew,
    Update,
}

/// How an event reaches `apply`: in its place, or after the window had passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Late,
}

/// What a closed segment's point needs besides the segment.
struct Closing<'a> {
    outcome: Outcome,
    at: Millis,
    event: Option<&'a Event>,
}

impl OfficeState {
    fn new(settings: &TrackerSettings, office: OfficeId) -> OfficeState {
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

    /// Takes one message from the office's rate bucket, which fills at the
    /// configured rate on the office clock: a backlog delivered at once
    /// after an outage carries its own event times and passes, a flood of
    /// fresh messages does not.
    /// `ts` is the message's own time, the clock of an office not heard yet.
    fn take_token(&mut self, settings: &TrackerSettings, now: Millis, ts: Millis) -> bool {
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
    fn forgettable(&self, settings: &TrackerSettings, watermark: Millis) -> bool {
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
    fn check_names(&mut self, settings: &TrackerSettings, event: &Event) -> Option<String> {
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
    fn forget_names(&mut self, settings: &TrackerSettings, watermark: Millis) {
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

    /// The office clock: newest ts plus the wall time since it arrived.
    /// With `clock = "wall"` in a live run it never passes `now` (unless an
    /// event within the ahead tolerance already stands there): `now` may
    /// jump forward when the daemon has worked off a stall (see `daemon`),
    /// and an office clock must not run ahead of the wall clock then either.
    fn clock(&self, settings: &TrackerSettings, now: Millis) -> Option<Millis> {
        let (base_ts, base_wall) = self.clock_base?;
        let clock = base_ts.plus_ms(now.since(base_wall).max(0));
        if settings.mode == Mode::Live && settings.clock == ClockMode::Wall {
            Some(clock.min(now.max(base_ts)))
        } else {
            Some(clock)
        }
    }

    fn next_tag(&mut self) -> u32 {
        // Wraps after four billion segments; a tag is only compared for
        // equality with recent ones, long after any old one is forgotten.
        self.generations = self.generations.wrapping_add(1);
        if self.generations == PENDING {
            self.generations = 0;
        }
        self.generations
    }

    /// Tells the live side which counters are idle now that something at `at` changed.
    fn update_idle(&mut self, settings: &TrackerSettings, at: Millis, out: &mut Output) {
        self.live.update_idle(&self.ctx, settings, self.waiting, at, out);
    }

    /// The service of a ticket that is open, or closed within the dedup horizon.
    fn ticket_service(&self, ticket: Option<&TicketNo>) -> Option<ServiceId> {
        let state = self.tickets.get(self.tickets.find(ticket?)?)?;
        let service = match state {
            TicketState::Open(segment) => segment.service,
            TicketState::Closed { service, .. } => *service,
        };
        Some(self.ctx.service_name(service))
    }

    fn segment(&self, slot: SlotId) -> Option<&Segment> {
        self.tickets.get(slot).and_then(TicketState::open)
    }

    fn segment_mut(&mut self, slot: SlotId) -> Option<&mut Segment> {
        self.tickets.get_mut(slot).and_then(TicketState::open_mut)
    }

    fn ingest(&mut self, settings: &TrackerSettings, event: Event, now: Millis, wall: Millis, out: &mut Output) {
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
    fn release(
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
    fn next_timer(&mut self) -> Option<Millis> {
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

    fn fire_timer(&mut self, settings: &TrackerSettings, out: &mut Output) {
        let Some(Reverse((at, key))) = self.timers.pop() else { return };
        self.segment_deadline(settings, key.slot, at, out);
    }

    /// A segment's earliest deadline has come: raise what is due, expire it
    /// if idle for the max age, and schedule its next deadline.
    fn segment_deadline(&mut self, settings: &TrackerSettings, slot: SlotId, at: Millis, out: &mut Output) {
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

    /// Keeps a segment's timer entry at its earliest deadline. `Renew` after
    /// its entry fired; `Update` after an event, which only adds an entry
    /// when the deadline moved earlier (a later one is found when the old
    /// entry fires).
    fn schedule(&mut self, settings: &TrackerSettings, slot: SlotId, scheduling: Scheduling) {
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

    /// Forgets dedup keys and closed tickets once the horizon has passed.
    fn forget(&mut self, settings: &TrackerSettings, watermark: Millis) {
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

    /// Gives an event's dedup keys a one-off tag that closes at `at`: they
    /// are forgotten `dedup_horizon` after it (events that belong to no open segment).
    fn retire_keys(&mut self, settings: &TrackerSettings, keys: EventKeys, at: Millis, out: &mut Output) {
        let tag = self.next_tag();
        let mut count = 0;
        for key in keys.iter() {
            count += usize::from(self.seen.insert(key, tag));
        }
        self.seen.close(tag, at, Some(count));
        self.limit_remembered(settings, out);
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
    fn limit_remembered(&mut self, settings: &TrackerSettings, out: &mut Output) {
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

    /// Applies one event in its place (or late), unless it would break one
    /// of the office's `[limits]`: then it changes nothing but is counted,
    /// noted against the office and echoed.
    fn apply(&mut self, settings: &TrackerSettings, event: Event, keys: EventKeys, arrival: Arrival, out: &mut Output) {
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

    fn apply_event(
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
            _ => {
                // Counter events, feedback and heartbeats belong to no segment.
                self.retire_keys(settings, keys, event.ts, out);
                match event.kind {
                    EventType::CounterOpened | EventType::CounterClosed => {
                        self.live.apply_counter_event(&mut self.ctx, &event, out)
                    }
                    EventType::Feedback => {
                        let service = self.ticket_service(event.ticket.as_ref());
                        self.live.apply_feedback(&self.ctx, &event, service, out)
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
                return;
            }
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
                        self.close(settings, slot, Closing { outcome, at: event.ts, event: Some(&event) }, out);
                        if outcome == Outcome::Transferred {
                            let to_service = self.ctx.services.intern_opt(event.to_service.as_ref());
                            self.open_segment(settings, &ticket, to_service, Some(event.ts), event.ts, visit_start);
                        }
                        self.update_idle(settings, event.ts, out);
                        out.notes.add(Note::Applied);
                        return;
                    }
                    None if was_closed => out.notes.add(Note::AfterClose),
                    None if outcome == Outcome::Transferred => {
                        // The first segment is unknown, so the whole visit is too.
                        let to_service = self.ctx.services.intern_opt(event.to_service.as_ref());
                        self.open_segment(settings, &ticket, to_service, Some(event.ts), event.ts, None);
                        self.update_idle(settings, event.ts, out);
                        out.notes.add(Note::Applied);
                    }
                    None => out.notes.add(Note::OrphanClose),
                }
                self.retire_keys(settings, keys, event.ts, out);
                return;
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

    /// Moves a segment's share of the queue gauges when its service, waiting
    /// state or issue time changed.
    fn move_share(&mut self, before: QueueShare, after: QueueShare, slot: SlotId) {
        if before != after {
            self.live.queue_remove(before, slot);
            self.live.queue_add(after, slot);
        }
    }

    fn set_key_count(&mut self, slot: SlotId, count: u16) {
        let index = slot as usize;
        if self.key_counts.len() <= index {
            self.key_counts.resize(index + 1, 0);
        }
        self.key_counts[index] = count;
    }

    /// Tags an event's dedup keys with the generation of the segment they
    /// now belong to, while the segment has fewer than [`SEGMENT_KEYS_KEPT`];
    /// beyond them they are retired as the keys of an event that belongs to
    /// no segment (remembered for the horizon after `at`, counted in the
    /// office's limit), so that a segment that never closes holds a bounded
    /// number. Decided as events are applied, in event-time order.
    fn tag_keys(&mut self, settings: &TrackerSettings, slot: SlotId, keys: EventKeys, at: Millis, out: &mut Output) {
        let Some(generation) = self.segment(slot).map(|segment| segment.generation) else { return };
        let held = self.key_counts.get(slot as usize).copied().map_or(0, usize::from);
        if held + keys.len() > SEGMENT_KEYS_KEPT {
            self.retire_keys(settings, keys, at, out);
            return;
        }
        let mut added = 0;
        for key in keys.iter() {
            added += u16::from(self.seen.insert(key, generation));
        }
        if let Some(count) = self.key_counts.get_mut(slot as usize) {
            *count = count.saturating_add(added);
        }
    }

    fn apply_issued(
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
    fn apply_progress(&mut self, settings: &TrackerSettings, slot: SlotId, event: &Event, out: &mut Output) {
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

    fn open_segment(
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

    /// Closes the slot's open segment and writes its point; resolves its
    /// alerts and frees its counter.
    fn close(&mut self, settings: &TrackerSettings, slot: SlotId, closing: Closing<'_>, out: &mut Output) {
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

    /// Raises a wait or service breach for an open segment: its point, and a firing alert.
    fn raise_segment_breach(
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
    fn push_resolved(&self, settings: &TrackerSettings, slot: SlotId, kind: AlertKind, at: Millis, out: &mut Output) {
        let Some(segment) = self.segment(slot) else { return };
        let targets = self.ctx.targets(settings, segment.service);
        let Some(since) = segment.issue().map(|issue| issue.plus_ms(targets.wait_ms)) else { return };
        out.alerts.push(self.segment_alert(slot, segment, kind, AlertState::Resolved, since, at, &targets));
    }

    /// An alert about a segment's wait or service breach.
    #[allow(clippy::too_many_arguments)]
    fn segment_alert(
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

    /// Fills the `ticket` point of a closed segment.
    fn fill_segment_point(
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

/// Applies a call, recall or start to an open segment (names already interned).
fn update_segment(segment: &mut Segment, event: &Event, counter: Option<NameId>, staff: Option<NameId>) {
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

/// Point time in nanoseconds: the millisecond of `at` plus a deterministic
/// sub-millisecond offset from the ticket, so two tickets closing in the same
/// millisecond with the same tags never overwrite each other, while the same
/// ticket's point always lands on the same time (rewrites are harmless).
pub fn point_time_ns(at: Millis, ticket: &TicketNo) -> i64 {
    time_with_offset_ns(at, ticket.as_str())
}

/// `at` in nanoseconds plus a deterministic sub-millisecond offset from `key`.
fn time_with_offset_ns(at: Millis, key: &str) -> i64 {
    let offset_ns = (fnv1a(key.as_bytes()) % 1_000_000) as i64;
    at.0.saturating_mul(1_000_000).saturating_add(offset_ns)
}

/// The two dedup keys of an event: by `id` (if any) and by content
/// (type, ticket, counter, ts). Hashes, not copies, to keep memory per ticket
/// small; computed once, at arrival.
#[derive(Debug, Clone, Copy)]
struct EventKeys {
    id: Option<u64>,
    content: u64,
}

impl EventKeys {
    fn of(event: &Event) -> EventKeys {
        let (id, content) = dedup_keys(event);
        EventKeys { id, content }
    }

    fn iter(self) -> impl Iterator<Item = u64> {
        self.id.into_iter().chain([self.content])
    }

    fn len(self) -> usize {
        1 + usize::from(self.id.is_some())
    }
}

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
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
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
