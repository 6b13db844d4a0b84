//! One office as a discrete-event simulation: a queue of scheduled actions
//! processed in (time, scheduling order), each of which may emit events at
//! its own time. So an office's events come out in timestamp order, and the
//! same seed gives the same events.
//!
//! Layout: this file holds [`OfficeSim`], its queue of scheduled actions and
//! the payloads it emits; `day.rs` the office day (opening, the arrival
//! process, lunch breaks, silent-kiosk hours, closing); `tickets.rs` a
//! ticket's way from arrival through the queues and the counters to its end.

mod day;
mod tickets;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{self, OfficeKind, ServiceSpec};
use super::payload::PayloadBuilder;
use super::realism::Realism;
use super::truth::TicketTruth;
use super::SimEvent;
use crate::event::EventType;
use crate::time::Millis;

const MINUTE_MS: i64 = 60_000;
const HEARTBEAT_EVERY_MS: i64 = MINUTE_MS;

/// The settings an office needs from the options.
#[derive(Debug, Clone)]
pub(super) struct OfficeSetup {
    pub index: usize,
    pub counters: usize,
    pub seed: u64,
    /// Office days to simulate; 0 = forever.
    pub days: u32,
    pub start: Millis,
    pub topic_prefix: String,
    pub realism: Realism,
    pub truth: TruthRecording,
}

/// Whether an office keeps the ground truth of its tickets as they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TruthRecording {
    Off,
    Kept,
}

pub(super) struct OfficeSim {
    name: String,
    topic: String,
    zone: Tz,
    services: &'static [ServiceSpec],
    rng: ChaCha8Rng,
    days: u32,
    start: Millis,
    actions: BinaryHeap<Reverse<Scheduled>>,
    scheduled: u64,
    emitted: u64,
    outbox: VecDeque<SimEvent>,
    counters: Vec<Counter>,
    /// Waiting tickets per service, oldest first.
    queues: Vec<VecDeque<TicketKey>>,
    /// Tickets not yet over. Only looked up, never iterated, so its order
    /// cannot leak into the events.
    tickets: HashMap<TicketKey, Ticket>,
    next_ticket_key: TicketKey,
    /// Tickets issued today per service (numbers restart daily).
    issued_today: Vec<u32>,
    /// Set at closing time: no more transfers, counters close once their queues are empty.
    closing: bool,
    /// The day being simulated is the last one (never with `days` = 0).
    last_day: bool,
    pending_feedback: u32,
    day: Option<DayPlan>,
    /// Expected tickets on an ordinary day (a busy day has its own in `DayPlan`).
    tickets_per_day: f64,
    realism: Realism,
    /// Planned silent-kiosk hours: (office day, seconds after opening).
    kiosk_outages: Vec<(u32, f64)>,
    /// Today's silent-kiosk hours: `[from, until)`.
    silent_kiosk: Vec<(Millis, Millis)>,
    /// Every ticket's end so far, when kept.
    truth: Option<Vec<TicketTruth>>,
    shape_integral_h: f64,
    shape_bound: f64,
    service_weight_total: f64,
}

impl OfficeSim {
    pub(super) fn new(setup: &OfficeSetup) -> OfficeSim {
        let (name, kind, zone): (String, OfficeKind, Tz) = model::office_identity(setup.index);
        let services = kind.services();
        // One stream per office: an office's events do not depend on how many
        // other offices are simulated.
        let mut rng = ChaCha8Rng::seed_from_u64(setup.seed);
        rng.set_stream(setup.index as u64);
        let counters = setup.counters.max(1);
        let load = uniform(&mut rng, model::LOAD);
        let tickets_per_day = model::expected_tickets_per_day(services, counters, load);
        let (shape_integral_h, shape_bound) = model::arrival_shape_integral_and_bound();
        let handled = model::assign_services(services, counters);
        let counters = handled
            .into_iter()
            .enumerate()
            .map(|(counter, services)| Counter {
                name: format!("loket-{}", counter + 1),
                staff: model::staff_name(setup.index, counter),
                services,
                state: CounterState::Closed,
                break_after_ticket_ms: None,
            })
            .collect();
        let topic = format!("{}/{}/events", setup.topic_prefix, name);
        let mut office = OfficeSim {
            name,
            topic,
            zone,
            services,
            rng,
            days: setup.days,
            start: setup.start,
            actions: BinaryHeap::new(),
            scheduled: 0,
            emitted: 0,
            outbox: VecDeque::new(),
            counters,
            queues: vec![VecDeque::new(); services.len()],
            tickets: HashMap::new(),
            next_ticket_key: 0,
            issued_today: vec![0; services.len()],
            closing: false,
            last_day: false,
            pending_feedback: 0,
            day: None,
            tickets_per_day,
            realism: setup.realism,
            kiosk_outages: Vec::new(),
            silent_kiosk: Vec::new(),
            truth: match setup.truth {
                TruthRecording::Off => None,
                TruthRecording::Kept => Some(Vec::new()),
            },
            shape_integral_h,
            shape_bound,
            service_weight_total: services.iter().map(|service| service.weight).sum(),
        };
        office.schedule(setup.start, Action::Heartbeat);
        let first_date = office.first_date();
        office.schedule(setup.start, Action::PlanDay { day: 0, date: first_date });
        office
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The tickets ended so far, in issue order (empty unless kept).
    pub(super) fn truth(&self) -> Vec<TicketTruth> {
        let mut records = self.truth.clone().unwrap_or_default();
        // Stable: tickets issued at the same instant keep the order they ended in.
        records.sort_by_key(|record| record.issued_at);
        records
    }

    /// The office's next event, or `None` once its last day is over.
    pub(super) fn next_event(&mut self) -> Option<SimEvent> {
        while self.outbox.is_empty() {
            if self.finished() {
                return None;
            }
            let Reverse(next) = self.actions.pop()?;
            self.perform(next.at, next.action);
        }
        self.outbox.pop_front()
    }

    /// The first local date whose issuing hours are not over at the start.
    fn first_date(&self) -> NaiveDate {
        let local_start = self.zone.timestamp_millis_opt(self.start.0).earliest();
        let mut date = local_start.map_or(NaiveDate::MIN, |local| local.date_naive());
        if self.local_time(date, model::ISSUING_END_MINUTE) <= self.start {
            date = date.succ_opt().unwrap_or(date);
        }
        date
    }

    /// The instant of `minute` after local midnight on `date`.
    fn local_time(&self, date: NaiveDate, minute: u32) -> Millis {
        let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default() + chrono::Duration::minutes(i64::from(minute));
        // Indonesian zones have no daylight saving, so every local time exists
        // once; a gap elsewhere would fall back to reading it as UTC.
        let instant = self.zone.from_local_datetime(&naive).earliest().map_or(naive.and_utc(), |t| t.to_utc());
        Millis(instant.timestamp_millis())
    }

    fn schedule(&mut self, at: Millis, action: Action) {
        self.scheduled += 1;
        self.actions.push(Reverse(Scheduled { at, order: self.scheduled, action }));
    }

    fn schedule_after(&mut self, at: Millis, seconds: (f64, f64), action: Action) {
        let delay_s = uniform(&mut self.rng, seconds);
        self.schedule(at.plus_ms(seconds_to_ms(delay_s)), action);
    }

    fn perform(&mut self, at: Millis, action: Action) {
        match action {
            Action::Heartbeat => self.heartbeat(at),
            Action::PlanDay { day, date } => self.plan_day(at, day, date),
            Action::OpenCounter { counter } => self.open_counter(at, counter),
            Action::TryCall { counter } => self.try_call(at, counter),
            Action::Arrival => self.arrival(at),
            Action::GiveUp { ticket, generation } => self.give_up(at, ticket, generation),
            Action::WalkOut { ticket, generation } => self.walk_out(at, ticket, generation),
            Action::Recall { ticket } => self.recall(at, ticket),
            Action::Start { ticket } => self.start_service(at, ticket),
            Action::NoShow { ticket } => self.no_show(at, ticket),
            Action::EndService { ticket } => self.end_service(at, ticket),
            Action::Feedback(feedback) => self.feedback(at, *feedback),
            Action::LunchBreak { counter, length_ms } => self.lunch_break(at, counter, length_ms),
            Action::ClosingTime => self.closing_time(at),
        }
    }

    /// After closing time on the last day, once every ticket is over,
    /// every counter closed and every feedback pressed. What is left in the
    /// action queue then (old patience deadlines) would emit nothing.
    fn finished(&self) -> bool {
        self.last_day
            && self.closing
            && self.tickets.is_empty()
            && self.pending_feedback == 0
            && self.counters.iter().all(|counter| counter.state == CounterState::Closed)
    }

    fn heartbeat(&mut self, at: Millis) {
        if self.finished() {
            return;
        }
        let payload = self.payload(EventType::Heartbeat, at);
        self.emit(at, EventType::Heartbeat, payload);
        self.schedule(at.plus_ms(HEARTBEAT_EVERY_MS), Action::Heartbeat);
    }

    fn emit(&mut self, at: Millis, kind: EventType, payload: String) {
        self.outbox.push_back(SimEvent { at, office: self.name.clone(), topic: self.topic.clone(), kind, payload });
    }

    fn next_id(&mut self) -> String {
        self.emitted += 1;
        format!("{}-{}", self.name, self.emitted)
    }

    fn timestamp(&self, at: Millis) -> String {
        use chrono::SecondsFormat;
        match self.zone.timestamp_millis_opt(at.0).earliest() {
            Some(local) => local.to_rfc3339_opts(SecondsFormat::Millis, false),
            // Outside chrono's range (beyond the year 262143): epoch milliseconds are still valid.
            None => at.0.to_string(),
        }
    }

    fn payload(&mut self, kind: EventType, at: Millis) -> String {
        let id = self.next_id();
        PayloadBuilder::new(kind, &self.timestamp(at), &self.name).finish(&id)
    }

    fn counter_payload(&mut self, kind: EventType, at: Millis, counter: usize) -> String {
        let id = self.next_id();
        let counter = &self.counters[counter];
        PayloadBuilder::new(kind, &self.timestamp(at), &self.name)
            .field("counter", &counter.name)
            .field("staff", &counter.staff)
            .finish(&id)
    }

    fn ticket_payload(&mut self, kind: EventType, at: Millis, ticket: TicketKey, counter: Option<usize>) -> String {
        let id = self.next_id();
        self.ticket_payload_builder(kind, at, ticket, counter).finish(&id)
    }

    fn ticket_payload_builder(
        &self,
        kind: EventType,
        at: Millis,
        ticket: TicketKey,
        counter: Option<usize>,
    ) -> PayloadBuilder {
        let mut builder = PayloadBuilder::new(kind, &self.timestamp(at), &self.name);
        if let Some(ticket) = self.tickets.get(&ticket) {
            builder = builder.field("ticket", &ticket.number).field("service", self.services[ticket.service].name);
        }
        if let Some(counter) = counter {
            let counter = &self.counters[counter];
            builder = builder.field("counter", &counter.name).field("staff", &counter.staff);
        }
        builder
    }
}

type TicketKey = u64;

#[derive(Debug, Clone, Copy)]
struct DayPlan {
    opening: Millis,
    issuing_end: Millis,
    /// Expected tickets today (more on a busy day).
    tickets_per_day: f64,
    /// Patience today relative to the model's (more on a busy day).
    patience_factor: f64,
}

#[derive(Debug)]
struct Counter {
    name: String,
    staff: String,
    /// Service indices, sorted.
    services: Vec<usize>,
    state: CounterState,
    /// A lunch break that begins once the current ticket is done.
    break_after_ticket_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterState {
    Closed,
    /// Open, nothing to do, not about to call.
    Idle,
    /// A `TryCall` is scheduled.
    Calling,
    Serving(TicketKey),
}

#[derive(Debug)]
struct Ticket {
    number: String,
    service: usize,
    state: TicketState,
    /// When it last joined a queue (issue or transfer).
    queued_at: Millis,
    /// Bumped on every enqueue so that an old patience deadline does not cancel it.
    generation: u32,
    /// Time spent waiting, over all its queues.
    waited_ms: i64,
    recalls_left: u8,
    no_show: bool,
    transferred: bool,
    /// When it was first issued.
    issued_at: Millis,
    /// Its current segment was published (`issued`, or `transferred`).
    seen: bool,
    /// A walk-out: leaves this long after joining the queue, or when a counter would call it.
    walkout_after_ms: Option<i64>,
    /// When a walk-out left (unseen); the ticket waits on in the queue.
    left_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketState {
    Waiting,
    Called { counter: usize },
    Served { counter: usize },
}

#[derive(Debug)]
struct Feedback {
    number: String,
    service: usize,
    counter: usize,
    rating: u8,
}

#[derive(Debug)]
enum Action {
    Heartbeat,
    PlanDay { day: u32, date: NaiveDate },
    OpenCounter { counter: usize },
    TryCall { counter: usize },
    Arrival,
    GiveUp { ticket: TicketKey, generation: u32 },
    WalkOut { ticket: TicketKey, generation: u32 },
    Recall { ticket: TicketKey },
    Start { ticket: TicketKey },
    NoShow { ticket: TicketKey },
    EndService { ticket: TicketKey },
    Feedback(Box<Feedback>),
    LunchBreak { counter: usize, length_ms: i64 },
    ClosingTime,
}

/// An action at a time; equal times keep the order they were scheduled in.
#[derive(Debug)]
struct Scheduled {
    at: Millis,
    order: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

fn uniform(rng: &mut ChaCha8Rng, (low, high): (f64, f64)) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

fn seconds_to_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}
