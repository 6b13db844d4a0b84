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
//! Layout: this file holds the public face (the [`Tracker`], its settings,
//! [`Output`], notes and outcomes); `office.rs` one office's state, clock and
//! ordered loop with its timers; `ticket.rs` the ticket side (segments and
//! what each ticket event does to them); `breach.rs` a segment's deadlines and
//! alerts; `closing.rs` closing a segment and its `ticket` point; `limits.rs`
//! the rate, name and memory limits and forgetting; `dedup.rs` dedup keys and
//! hashing; `live/` the per-office gauges, counter sessions, feedback, idle
//! counters and silence (the live side, its own state behind a narrow
//! interface); `held.rs` the reorder buffer; `store.rs` the compact storage;
//! `state.rs` snapshots. Both sides read the office's identity and interned
//! names from one [`OfficeContext`].

mod breach;
mod closing;
mod dedup;
mod held;
mod hours;
mod limits;
mod live;
mod office;
pub mod state;
mod store;
mod ticket;

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

pub use closing::point_time_ns;
pub(crate) use dedup::Fnv;
pub use live::{Alert, AlertKind, AlertState};

use breach::*;
use closing::*;
use dedup::*;
use live::{QueueShare, GAUGE_SPAN_AFTER_LAST_EVENT_MS};
use office::*;
use ticket::*;

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
        // In office order, so that a replay's last points come out in the
        // same order on every run (a hash map's order changes per process).
        let mut offices: Vec<(&OfficeId, &mut OfficeState)> = self.offices.iter_mut().collect();
        offices.sort_unstable_by_key(|(office, _)| *office);
        for (_, office) in offices {
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

#[cfg(test)]
mod tests;
