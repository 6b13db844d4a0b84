//! The tracker's whole state as bytes, and back: what a snapshot holds, so
//! that a restarted daemon carries on where it stopped.
//!
//! [`encode`] writes everything a [`Tracker`] knows but its settings;
//! [`decode`] rebuilds a tracker from those bytes under the settings of the
//! running config. Pure: no IO, no clock. After a restart the caller also
//! calls [`Tracker::resume`], so that the downtime does not count as office time.
//!
//! Layout: [`STATE_FORMAT_VERSION`] as 4 little-endian bytes, then postcard
//! (varints, no field names: only the order of fields says what is what).
//! The serde derives on `Segment`, `TicketState`, `BreachState` and the live
//! side's structs are part of it: changing their fields changes the format,
//! which a test pins, so that the version is bumped with it.
//!
//! Stored, per office (heard ones, and configured ones never heard, whose
//! wall-clock gauges and silence have state too):
//! - its id and interned names (services, counters, staff) in id order;
//! - the clock base, `released_upto`, the arrival and generation counters;
//! - the reorder buffer: each held event (without its office) and its
//!   arrival number;
//! - the ticket slab, every slot in order with its free list, since timers,
//!   gauges and the closed memory refer to tickets by slot number;
//! - dedup keys with their tags, closed generations and the sweep's pacing;
//! - the live side: last written rows, interval counts, services' recent
//!   activity, counter sessions, idle deadlines, silence.
//!
//! Rebuilt on decode, not stored:
//! - from the settings: each office's config, tag and region tag, and the
//!   targets cache. Configured offices missing from the bytes start fresh,
//!   and offices never heard that the config no longer names are left out,
//!   as [`Tracker::new`] would;
//! - from the held events: their dedup keys and sort keys;
//! - from the slab: the ticket-number index, the counts of open and waiting
//!   segments, the queue gauges' waiting and in-service counts, the timer
//!   heap (one entry per open segment at its `scheduled` deadline: the other
//!   entries a live heap holds are stale and skipped when they come up) and
//!   the closed tickets to forget.
//!
//! Checked on decode, so that damaged bytes are an error, never a panic nor
//! an invalid identifier nor a reference that would panic when used:
//! identifiers through their constructors; held events' required fields;
//! every interned-name id against its office's names; the free list against
//! the slab; distinct offices, names, ticket numbers and held keys. Times
//! are not checked for plausibility (there is no invariant to check them
//! against): a damaged time that still decodes gives a wrong state, and a
//! clock moved years ahead a long catch-up. Whoever stores the bytes guards
//! them with a checksum.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize, Serializer};

use super::live::OfficeLive;
use super::store::{NameId, Names, Seen, SlotId, Stamp, Tickets};
use super::{EventKeys, Held, HeldKey, OfficeState, TicketState, TimerKey, Tracker, TrackerSettings};
use crate::event::{Event, EventType};
use crate::ids::{CounterId, OfficeId, ServiceId, StaffId, TicketNo};
use crate::time::Millis;

/// Version of the encoded state; bump on any change to what is encoded.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Why bytes could not be turned back into a tracker.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Written by a later queuewatch, in a format this one cannot know.
    #[error("state format version {found} is newer than this queuewatch understands ({supported})")]
    NewerVersion { found: u32, supported: u32 },
    /// Written in an earlier format that this queuewatch no longer reads.
    #[error("state format version {found} is older than this queuewatch reads ({supported})")]
    OlderVersion { found: u32, supported: u32 },
    /// Not an encoded state: truncated, or not this layout.
    #[error("state is malformed: {0}")]
    Malformed(String),
    /// Decoded, but breaks an invariant of the tracker (a reference out of
    /// range, a duplicate, a missing field).
    #[error("state is invalid: {0}")]
    Invalid(String),
}

/// The tracker's complete state (everything but its settings), compact binary.
pub fn encode(tracker: &Tracker) -> Vec<u8> {
    let bytes = STATE_FORMAT_VERSION.to_le_bytes().to_vec();
    let state = TrackerOut { offices: Offices(&tracker.offices) };
    // Writing into a Vec fails only for a sequence of unknown length or a
    // value whose `Serialize` reports an error; every sequence here comes
    // from an exact-size iterator and no value reports one.
    postcard::to_extend(&state, bytes).expect("every sequence of the state has a known length")
}

/// Rebuilds a tracker from [`encode`]'s bytes under `settings` (the settings
/// of the running config): fields derived from settings (office config,
/// region tag, targets cache, configured offices never heard) are rebuilt
/// from them, not stored.
pub fn decode(settings: TrackerSettings, bytes: &[u8]) -> Result<Tracker, StateError> {
    let Some((version, body)) = bytes.split_first_chunk::<4>() else {
        return Err(StateError::Malformed(format!("{} bytes: too short for a format version", bytes.len())));
    };
    let version = u32::from_le_bytes(*version);
    if version > STATE_FORMAT_VERSION {
        return Err(StateError::NewerVersion { found: version, supported: STATE_FORMAT_VERSION });
    }
    if version < STATE_FORMAT_VERSION {
        return Err(StateError::OlderVersion { found: version, supported: STATE_FORMAT_VERSION });
    }
    let (state, rest) =
        postcard::take_from_bytes::<TrackerIn>(body).map_err(|error| StateError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(StateError::Malformed(format!("{} bytes left over after the state", rest.len())));
    }

    let mut offices = HashMap::with_capacity(state.offices.len());
    for stored in state.offices {
        // Not heard means configured when the state was written; no longer
        // configured, it would not exist in a tracker started now either.
        if stored.clock_base.is_none() && !settings.offices.contains_key(&stored.office) {
            continue;
        }
        let office = stored.office.clone();
        let restored = restore_office(&settings, stored)
            .map_err(|reason| StateError::Invalid(format!("office {office}: {reason}")))?;
        if offices.insert(office.clone(), restored).is_some() {
            return Err(StateError::Invalid(format!("office {office} is stored twice")));
        }
    }
    for office in settings.offices.keys() {
        if !offices.contains_key(office) {
            offices.insert(office.clone(), OfficeState::new(&settings, office.clone()));
        }
    }
    Ok(Tracker::with_offices(settings, offices))
}

impl Tracker {
    /// Called once after recovering the state on a restart, with the wall
    /// time the tracker runs on from now.
    ///
    /// Office clocks restart from the newest event time they had: the
    /// downtime does not count as elapsed office time. An office clock is
    /// its newest ts plus the wall time since that event arrived; left as it
    /// was, the whole downtime would pass at the first `advance`: every held
    /// event released and every deadline in the downtime fired at once, and
    /// the events the broker kept during the downtime, delivered now, all
    /// `late`. Restarted at its newest ts, each office clock gives them the
    /// reorder window as usual and runs on as they come in.
    ///
    /// What the live side measures on the wall clock restarts at `now` for
    /// the same reason: the last arrival, so that the downtime is not taken
    /// as office silence (no false `silent` alert on restart), and the
    /// wall-clock gauges of offices never heard. A `silent` alert already
    /// firing stays firing until the office is heard.
    pub fn resume(&mut self, now: Millis) {
        for office in self.offices.values_mut() {
            let heard = office.clock_base.is_some();
            if let Some((base_ts, _)) = office.clock_base {
                office.clock_base = Some((base_ts, now));
            }
            office.live.resume(now, heard);
        }
    }
}

/// The whole state as written; [`TrackerIn`] as read.
#[derive(Serialize)]
struct TrackerOut<'a> {
    offices: Offices<'a>,
}

#[derive(Deserialize)]
struct TrackerIn {
    offices: Vec<OfficeIn>,
}

/// One office as written. Field for field in the order of [`OfficeIn`]:
/// postcard writes no names, so the order is the format.
#[derive(Serialize)]
struct OfficeOut<'a> {
    office: &'a OfficeId,
    services: &'a [ServiceId],
    counters: &'a [CounterId],
    staff: &'a [StaffId],
    clock_base: Option<(Millis, Millis)>,
    released_upto: Millis,
    arrivals: u64,
    generations: u32,
    held: HeldOut<'a>,
    slots: Slots<'a>,
    free: &'a [SlotId],
    seen: SeenOut<'a>,
    live: &'a OfficeLive,
}

#[derive(Deserialize)]
struct OfficeIn {
    office: OfficeId,
    services: Vec<ServiceId>,
    counters: Vec<CounterId>,
    staff: Vec<StaffId>,
    clock_base: Option<(Millis, Millis)>,
    released_upto: Millis,
    arrivals: u64,
    generations: u32,
    held: Vec<HeldEvent<'static>>,
    slots: Vec<(TicketNo, Option<TicketState>)>,
    free: Vec<SlotId>,
    seen: SeenIn,
    live: OfficeLive,
}

impl<'a> OfficeOut<'a> {
    fn of(office: &'a OfficeState) -> OfficeOut<'a> {
        OfficeOut {
            office: &office.ctx.office,
            services: office.ctx.services.values(),
            counters: office.ctx.counters.values(),
            staff: office.ctx.staff.values(),
            clock_base: office.clock_base,
            released_upto: office.released_upto,
            arrivals: office.arrivals,
            generations: office.generations,
            held: HeldOut(&office.held),
            slots: Slots(&office.tickets),
            free: office.tickets.free_slots(),
            seen: SeenOut::of(&office.seen),
            live: &office.live,
        }
    }
}

/// A held event as stored: without its office (the one holding it) and
/// without what is computed from it (dedup and sort keys).
#[derive(Serialize, Deserialize)]
struct HeldEvent<'a> {
    arrival: u64,
    kind: Cow<'a, str>,
    ts: Millis,
    id: Option<Cow<'a, str>>,
    ticket: Option<Cow<'a, TicketNo>>,
    service: Option<Cow<'a, ServiceId>>,
    counter: Option<Cow<'a, CounterId>>,
    to_service: Option<Cow<'a, ServiceId>>,
    staff: Option<Cow<'a, StaffId>>,
    rating: Option<u8>,
}

impl<'a> HeldEvent<'a> {
    fn of(arrival: u64, event: &'a Event) -> HeldEvent<'a> {
        HeldEvent {
            arrival,
            kind: Cow::Borrowed(event.kind.as_str()),
            ts: event.ts,
            id: event.id.as_deref().map(Cow::Borrowed),
            ticket: event.ticket.as_ref().map(Cow::Borrowed),
            service: event.service.as_ref().map(Cow::Borrowed),
            counter: event.counter.as_ref().map(Cow::Borrowed),
            to_service: event.to_service.as_ref().map(Cow::Borrowed),
            staff: event.staff.as_ref().map(Cow::Borrowed),
            rating: event.rating,
        }
    }

    /// The event, with the fields its type requires, as `event::decode`
    /// guarantees them (the tracker relies on that contract).
    fn into_event(self, office: &OfficeId) -> Result<Event, String> {
        let kind = EventType::parse(&self.kind).ok_or_else(|| format!("held event of unknown type {:?}", self.kind))?;
        let event = Event {
            office: office.clone(),
            kind,
            ts: self.ts,
            id: self.id.as_deref().map(compact_str::CompactString::new),
            ticket: self.ticket.map(Cow::into_owned),
            service: self.service.map(Cow::into_owned),
            counter: self.counter.map(Cow::into_owned),
            to_service: self.to_service.map(Cow::into_owned),
            staff: self.staff.map(Cow::into_owned),
            rating: self.rating,
        };
        if let Some(field) = event.missing_field() {
            return Err(format!("held {kind} event without its {}", field.name()));
        }
        if event.rating.is_some_and(|rating| !(1..=5).contains(&rating)) {
            return Err(format!("held {kind} event with a rating out of 1-5"));
        }
        Ok(event)
    }
}

/// Dedup keys as written; [`SeenIn`] as read.
#[derive(Serialize)]
struct SeenOut<'a> {
    keys: SeenKeys<'a>,
    closed: SeenClosed<'a>,
    last_sweep: Option<Millis>,
    len_after_sweep: u64,
}

#[derive(Deserialize)]
struct SeenIn {
    /// Keys are hashes, as likely to be large as small: 8 fixed bytes, not a varint.
    keys: Vec<([u8; 8], u32)>,
    closed: Vec<(u32, Millis)>,
    last_sweep: Option<Millis>,
    len_after_sweep: u64,
}

impl<'a> SeenOut<'a> {
    fn of(seen: &'a Seen) -> SeenOut<'a> {
        let (last_sweep, len_after_sweep) = seen.sweep_pacing();
        SeenOut { keys: SeenKeys(seen), closed: SeenClosed(seen), last_sweep, len_after_sweep: len_after_sweep as u64 }
    }
}

/// The offices, each written straight from the tracker, not collected first.
struct Offices<'a>(&'a HashMap<OfficeId, OfficeState>);

impl Serialize for Offices<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values().map(OfficeOut::of))
    }
}

struct HeldOut<'a>(&'a Held);

impl Serialize for HeldOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.in_order().into_iter().map(|(key, event)| HeldEvent::of(key.arrival, event)))
    }
}

struct Slots<'a>(&'a Tickets<TicketState>);

impl Serialize for Slots<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.slots())
    }
}

struct SeenKeys<'a>(&'a Seen);

impl Serialize for SeenKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.entries().map(|(key, tag)| (key.to_le_bytes(), tag)))
    }
}

struct SeenClosed<'a>(&'a Seen);

impl Serialize for SeenClosed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.closed())
    }
}

/// An instant stored as its [`Millis`] (a varint of the time), not as its
/// internal representation, which would take the longest varint for every
/// time of this century.
impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Millis::deserialize(deserializer).map(Stamp::new)
    }
}

/// Rebuilds one office: its stored state checked, its derived state rebuilt.
fn restore_office(settings: &TrackerSettings, stored: OfficeIn) -> Result<OfficeState, String> {
    let mut office = OfficeState::new(settings, stored.office);
    office.ctx.services = names(stored.services, "service")?;
    office.ctx.counters = names(stored.counters, "counter")?;
    office.ctx.staff = names(stored.staff, "staff")?;
    let known = NameCounts {
        services: office.ctx.services.values().len(),
        counters: office.ctx.counters.values().len(),
        staff: office.ctx.staff.values().len(),
    };

    office.tickets = tickets(stored.slots, stored.free)?;
    for (_, state) in office.tickets.slots() {
        match state {
            Some(TicketState::Open(segment)) => {
                known.service(segment.service)?;
                known.counter(segment.last_call_counter)?;
                known.counter(segment.busy_counter)?;
                known.staff(segment.staff)?;
            }
            Some(TicketState::Closed { service, .. }) => known.service(*service)?,
            None => {}
        }
    }
    office.live = stored.live;
    let [services, counters, staff] = office.live.name_ids();
    services.into_iter().try_for_each(|id| known.service(Some(id)))?;
    counters.into_iter().try_for_each(|id| known.counter(Some(id)))?;
    staff.into_iter().try_for_each(|id| known.staff(Some(id)))?;

    let mut held_keys = BTreeSet::new();
    for held in stored.held {
        let arrival = held.arrival;
        if arrival > stored.arrivals {
            return Err(format!("held event number {arrival} is past the arrival count {}", stored.arrivals));
        }
        let event = held.into_event(&office.ctx.office)?;
        let keys = EventKeys::of(&event);
        let key = HeldKey { ts: event.ts, rank: event.kind.rank(), content: keys.content, arrival };
        if !held_keys.insert(key) {
            return Err(format!("held event number {arrival} is stored twice"));
        }
        office.held.insert(key, event, keys);
    }
    let len_after_sweep = usize::try_from(stored.seen.len_after_sweep)
        .map_err(|_| format!("dedup table size {} does not fit this machine", stored.seen.len_after_sweep))?;
    office.seen = Seen::from_parts(
        stored.seen.keys.into_iter().map(|(key, tag)| (u64::from_le_bytes(key), tag)),
        stored.seen.closed,
        (stored.seen.last_sweep, len_after_sweep),
    );
    office.clock_base = stored.clock_base;
    office.released_upto = stored.released_upto;
    office.arrivals = stored.arrivals;
    office.generations = stored.generations;
    // When names were last used is not stored: each counts as used now.
    let restored_at = office.released_upto;
    office.ctx.services.touch_all(restored_at);
    office.ctx.counters.touch_all(restored_at);
    office.ctx.staff.touch_all(restored_at);
    office.names_swept = restored_at;
    rebuild_from_slots(&mut office);
    Ok(office)
}

/// Interned names in id order, each once.
fn names<T: Clone + Eq + std::hash::Hash + std::fmt::Debug>(values: Vec<T>, kind: &str) -> Result<Names<T>, String> {
    let mut names = Names::default();
    for (index, value) in values.iter().enumerate() {
        if names.intern(value).get() as usize != index + 1 {
            return Err(format!("{kind} {value:?} is interned twice"));
        }
    }
    Ok(names)
}

/// How many names of each kind an office has: the range of valid ids.
struct NameCounts {
    services: usize,
    counters: usize,
    staff: usize,
}

impl NameCounts {
    fn service(&self, id: Option<NameId>) -> Result<(), String> {
        check_name(id, self.services, "service")
    }

    fn counter(&self, id: Option<NameId>) -> Result<(), String> {
        check_name(id, self.counters, "counter")
    }

    fn staff(&self, id: Option<NameId>) -> Result<(), String> {
        check_name(id, self.staff, "staff")
    }
}

fn check_name(id: Option<NameId>, known: usize, kind: &str) -> Result<(), String> {
    match id {
        Some(id) if id.get() as usize > known => Err(format!("{kind} name {id} out of range ({known} interned)")),
        _ => Ok(()),
    }
}

/// The slab, checked: slot numbers fit a `SlotId`, the free list names
/// exactly the empty slots, once each, and occupied slots hold distinct tickets.
fn tickets(slots: Vec<(TicketNo, Option<TicketState>)>, free: Vec<SlotId>) -> Result<Tickets<TicketState>, String> {
    if SlotId::try_from(slots.len()).is_err() {
        return Err(format!("{} ticket slots are more than slot numbers can count", slots.len()));
    }
    let mut on_free_list = vec![false; slots.len()];
    for slot in &free {
        let listed = on_free_list.get_mut(*slot as usize).ok_or_else(|| format!("free slot {slot} out of range"))?;
        if *listed {
            return Err(format!("slot {slot} is on the free list twice"));
        }
        *listed = true;
    }
    for (slot, (_, state)) in slots.iter().enumerate() {
        if state.is_some() == on_free_list[slot] {
            return Err(format!("slot {slot} is on the free list and holds a ticket, or neither"));
        }
    }
    let tickets = Tickets::from_slots(slots, free);
    // A ticket in two slots is found at one of them only.
    for (slot, (ticket, state)) in tickets.slots().enumerate() {
        if state.is_some() && tickets.find(ticket) != Some(slot as SlotId) {
            return Err(format!("ticket {ticket} is stored in two slots"));
        }
    }
    Ok(tickets)
}

/// What the slab determines: counts of open and waiting segments, the
/// timers, the closed tickets to forget, the queue gauges' counts.
fn rebuild_from_slots(office: &mut OfficeState) {
    let mut timers = Vec::new();
    let mut closed_memory = Vec::new();
    for (slot, (_, state)) in office.tickets.slots().enumerate() {
        let slot = slot as SlotId;
        match state {
            Some(TicketState::Open(segment)) => {
                office.open_segments += 1;
                if segment.first_call.is_none() {
                    office.waiting += 1;
                }
                timers.push(Reverse((segment.scheduled, TimerKey { slot, generation: segment.generation })));
            }
            Some(TicketState::Closed { at, .. }) => closed_memory.push(Reverse((at.get(), slot))),
            None => {}
        }
    }
    office.timers = BinaryHeap::from(timers);
    office.closed_memory = BinaryHeap::from(closed_memory);
    // How many dedup keys each open segment has: what its close hands the dedup table.
    let open_slots: HashMap<u32, SlotId> = office
        .tickets
        .slots()
        .enumerate()
        .filter_map(|(slot, (_, state))| {
            state.and_then(TicketState::open).map(|segment| (segment.generation, slot as SlotId))
        })
        .collect();
    office.key_counts = vec![0; office.tickets.slots().len()];
    for (_, tag) in office.seen.entries() {
        if let Some(slot) = open_slots.get(&tag) {
            let count = &mut office.key_counts[*slot as usize];
            *count = count.saturating_add(1);
        }
    }
    let shares = office.tickets.slots().enumerate().filter_map(|(slot, (_, state))| {
        state.and_then(TicketState::open).map(|segment| (segment.queue_share(), slot as SlotId))
    });
    office.live.restore_queues(shares);
}
