//! One office as a discrete-event simulation: a queue of scheduled actions
//! processed in (time, scheduling order), each of which may emit events at
//! its own time. So an office's events come out in timestamp order, and the
//! same seed gives the same events.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Exp1, StandardNormal};

use super::model::{self, OfficeKind, ServiceSpec};
use super::payload::PayloadBuilder;
use super::realism::{Closing, Realism};
use super::truth::{TicketEnd, TicketTruth};
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

    fn plan_day(&mut self, at: Millis, day: u32, date: NaiveDate) {
        let opening = self.local_time(date, model::OPENING_MINUTE);
        let issuing_end = self.local_time(date, model::ISSUING_END_MINUTE);
        let closing = self.local_time(date, model::CLOSING_MINUTE);
        // Realism first, and only what is switched on draws: off, the day is as before.
        let (tickets_per_day, patience_factor) = match self.realism.busy_day_share {
            share if share > 0.0 && self.rng.random_bool(share) => {
                let load = uniform(&mut self.rng, model::BUSY_LOAD);
                let tickets = model::expected_tickets_per_day(self.services, self.counters.len(), load);
                (tickets, model::BUSY_PATIENCE_FACTOR)
            }
            _ => (self.tickets_per_day, 1.0),
        };
        self.plan_kiosk_outages(day, opening);
        self.day = Some(DayPlan { opening, issuing_end, tickets_per_day, patience_factor });
        self.closing = false;
        self.last_day = self.days > 0 && day + 1 >= self.days;
        self.issued_today.iter_mut().for_each(|count| *count = 0);

        let open_at = opening.max(at);
        for counter in 0..self.counters.len() {
            self.schedule(open_at, Action::OpenCounter { counter });
        }
        if let Some(first) = self.next_arrival_after(open_at) {
            self.schedule(first, Action::Arrival);
        }
        let service_lunch = match self.realism.service_lunch_share {
            share if share > 0.0 && self.rng.random_bool(share) => self.counters_of_a_service_at_lunch(),
            _ => None,
        };
        if let Some(counters) = service_lunch {
            let (from_min, _) = model::LUNCH_STARTS_MINUTE[0];
            for counter in counters {
                let spread_s = f64::from(model::SERVICE_LUNCH_SPREAD_MINUTES) * 60.0;
                let begin = self.local_time(date, from_min).plus_ms(seconds_to_ms(self.rng.random::<f64>() * spread_s));
                let length_ms = seconds_to_ms(uniform(&mut self.rng, model::LUNCH_LENGTH_MINUTES) * 60.0);
                if begin > at {
                    self.schedule(begin, Action::LunchBreak { counter, length_ms });
                }
            }
        } else {
            self.plan_lunch_breaks(at, date);
        }
        self.schedule(closing, Action::ClosingTime);
        if self.days == 0 || day + 1 < self.days {
            if let Some(next_date) = date.succ_opt() {
                let plan_at = self.local_time(next_date, model::OPENING_MINUTE - model::PLAN_AHEAD_MINUTES);
                self.schedule(plan_at.max(closing), Action::PlanDay { day: day + 1, date: next_date });
            }
        }
    }

    /// Lunch breaks: one or two counters, never all of them.
    fn plan_lunch_breaks(&mut self, at: Millis, date: NaiveDate) {
        let wanted = if self.rng.random_bool(0.5) { model::LUNCH_BREAKS.0 } else { model::LUNCH_BREAKS.1 };
        let breaks = wanted.min(self.counters.len().saturating_sub(1));
        let mut on_break: Vec<usize> = Vec::with_capacity(breaks);
        while on_break.len() < breaks {
            let counter = self.rng.random_range(0..self.counters.len());
            if !on_break.contains(&counter) {
                on_break.push(counter);
            }
        }
        for (slot, counter) in on_break.into_iter().enumerate() {
            let (from_min, spread_min) = model::LUNCH_STARTS_MINUTE[slot];
            let begin = self
                .local_time(date, from_min)
                .plus_ms(seconds_to_ms(self.rng.random::<f64>() * f64::from(spread_min) * 60.0));
            let length_ms = seconds_to_ms(uniform(&mut self.rng, model::LUNCH_LENGTH_MINUTES) * 60.0);
            if begin > at {
                self.schedule(begin, Action::LunchBreak { counter, length_ms });
            }
        }
    }

    /// Every counter of one service (drawn among the services whose counters
    /// are not all the office's), for a day on which they lunch together.
    fn counters_of_a_service_at_lunch(&mut self) -> Option<Vec<usize>> {
        let counters_of = |service: usize| -> Vec<usize> {
            (0..self.counters.len()).filter(|counter| self.counters[*counter].services.contains(&service)).collect()
        };
        let candidates: Vec<Vec<usize>> =
            (0..self.services.len()).map(counters_of).filter(|counters| counters.len() < self.counters.len()).collect();
        if candidates.is_empty() {
            return None;
        }
        let pick = self.rng.random_range(0..candidates.len());
        candidates.into_iter().nth(pick)
    }

    /// At the first day of each simulated week, draws that week's silent-kiosk
    /// hours; then sets today's.
    fn plan_kiosk_outages(&mut self, day: u32, opening: Millis) {
        let per_week = self.realism.kiosk_outages_per_week;
        if per_week > 0 && day.is_multiple_of(model::DAYS_PER_WEEK) {
            let window_s =
                f64::from(model::ISSUING_END_MINUTE - model::OPENING_MINUTE - model::KIOSK_OUTAGE_MINUTES) * 60.0;
            for _ in 0..per_week {
                let outage_day = day + self.rng.random_range(0..model::DAYS_PER_WEEK);
                let after_opening_s = self.rng.random::<f64>() * window_s;
                self.kiosk_outages.push((outage_day, after_opening_s));
            }
        }
        let outage_ms = i64::from(model::KIOSK_OUTAGE_MINUTES) * MINUTE_MS;
        self.silent_kiosk = self
            .kiosk_outages
            .iter()
            .filter(|(outage_day, _)| *outage_day == day)
            .map(|(_, after_opening_s)| {
                let from = opening.plus_ms(seconds_to_ms(*after_opening_s));
                (from, from.plus_ms(outage_ms))
            })
            .collect();
        self.kiosk_outages.retain(|(outage_day, _)| *outage_day > day);
    }

    /// The next arrival after `after` on the current day, by thinning a
    /// Poisson process at the bound rate; `None` once issuing has ended.
    fn next_arrival_after(&mut self, after: Millis) -> Option<Millis> {
        let day = self.day?;
        let per_hour_bound = day.tickets_per_day * self.shape_bound / self.shape_integral_h;
        if per_hour_bound <= 0.0 {
            return None;
        }
        let mean_gap_ms = 3_600_000.0 / per_hour_bound;
        let mut candidate_ms = after.0 as f64;
        loop {
            let gap: f64 = self.rng.sample(Exp1);
            candidate_ms += gap * mean_gap_ms;
            if candidate_ms >= day.issuing_end.0 as f64 {
                return None;
            }
            let local_hour =
                f64::from(model::OPENING_MINUTE) / 60.0 + (candidate_ms - day.opening.0 as f64) / 3_600_000.0;
            if self.rng.random::<f64>() * self.shape_bound < model::arrival_shape(local_hour) {
                return Some(Millis(candidate_ms.round() as i64));
            }
        }
    }

    fn open_counter(&mut self, at: Millis, counter: usize) {
        if self.counters[counter].state != CounterState::Closed {
            return;
        }
        // Back from lunch after closing time with nothing left to do: stay closed.
        if self.closing && self.queues_empty_for(counter) {
            return;
        }
        self.counters[counter].state = CounterState::Calling;
        let payload = self.counter_payload(EventType::CounterOpened, at, counter);
        self.emit(at, EventType::CounterOpened, payload);
        self.schedule_after(at, model::FIRST_CALL_S, Action::TryCall { counter });
    }

    fn try_call(&mut self, at: Millis, counter: usize) {
        if self.counters[counter].state != CounterState::Calling {
            return; // went on a break meanwhile
        }
        let Some(ticket_key) = self.take_oldest_for(counter) else {
            if self.closing {
                self.close_counter(at, counter);
            } else {
                self.counters[counter].state = CounterState::Idle;
            }
            return;
        };
        self.counters[counter].state = CounterState::Serving(ticket_key);
        let drawn_no_show = self.rng.random_bool(model::P_NO_SHOW);
        // Someone who walked out is not there when the number is called: recalled, then a no-show.
        let walked_out = self.tickets.get(&ticket_key).is_some_and(|ticket| ticket.left_at.is_some());
        let no_show = drawn_no_show || walked_out;
        let recalls = if drawn_no_show {
            if self.rng.random_bool(0.5) {
                1
            } else {
                2
            }
        } else if self.rng.random_bool(model::P_RECALL) {
            if self.rng.random_bool(model::P_SECOND_RECALL) {
                2
            } else {
                1
            }
        } else {
            0
        };
        let recalls = if walked_out { recalls.max(1) } else { recalls };
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        ticket.state = TicketState::Called { counter };
        ticket.recalls_left = recalls;
        ticket.no_show = no_show;
        ticket.waited_ms += at.since(ticket.queued_at);
        let payload = self.ticket_payload(EventType::Called, at, ticket_key, Some(counter));
        self.emit(at, EventType::Called, payload);
        self.after_call(at, ticket_key);
    }

    /// What follows a call or a recall: another recall, a no-show, or the walk to the counter.
    fn after_call(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get(&ticket_key) else { return };
        if ticket.recalls_left > 0 {
            self.schedule_after(at, model::RECALL_GAP_S, Action::Recall { ticket: ticket_key });
        } else if ticket.no_show {
            self.schedule_after(at, model::RECALL_GAP_S, Action::NoShow { ticket: ticket_key });
        } else {
            self.schedule_after(at, model::WALK_S, Action::Start { ticket: ticket_key });
        }
    }

    fn recall(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        let TicketState::Called { counter } = ticket.state else { return };
        ticket.recalls_left = ticket.recalls_left.saturating_sub(1);
        let payload = self.ticket_payload(EventType::Recalled, at, ticket_key, Some(counter));
        self.emit(at, EventType::Recalled, payload);
        self.after_call(at, ticket_key);
    }

    fn start_service(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        let TicketState::Called { counter } = ticket.state else { return };
        ticket.state = TicketState::Served { counter };
        let median_s = self.services[ticket.service].median_service_s;
        let service_s = (median_s * (model::SERVICE_SIGMA * self.rng.sample::<f64, _>(StandardNormal)).exp())
            .clamp(model::SERVICE_FLOOR_S, median_s * model::SERVICE_MAX_FACTOR);
        let payload = self.ticket_payload(EventType::Started, at, ticket_key, Some(counter));
        self.emit(at, EventType::Started, payload);
        self.schedule(at.plus_ms(seconds_to_ms(service_s)), Action::EndService { ticket: ticket_key });
    }

    fn no_show(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get(&ticket_key) else { return };
        let TicketState::Called { counter } = ticket.state else { return };
        let payload = self.ticket_payload(EventType::NoShow, at, ticket_key, Some(counter));
        self.emit(at, EventType::NoShow, payload);
        if let Some(ticket) = self.tickets.remove(&ticket_key) {
            self.record_end(&ticket, TicketEnd::NoShow, at);
        }
        self.counter_free(at, counter);
    }

    fn end_service(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get(&ticket_key) else { return };
        let TicketState::Served { counter } = ticket.state else { return };
        let can_transfer = !ticket.transferred && !self.closing && self.services.len() > 1;
        if can_transfer && self.rng.random_bool(model::P_TRANSFER) {
            let from = ticket.service;
            let to = (from + self.rng.random_range(1..self.services.len())) % self.services.len();
            let payload = self
                .ticket_payload_builder(EventType::Transferred, at, ticket_key, Some(counter))
                .field("to_service", self.services[to].name)
                .finish(&self.next_id());
            self.emit(at, EventType::Transferred, payload);
            if let Some(ticket) = self.tickets.get_mut(&ticket_key) {
                ticket.service = to;
                ticket.transferred = true;
                // The `transferred` event announces the new segment.
                ticket.seen = true;
            }
            let patience_factor = model::TRANSFER_PATIENCE_FACTOR;
            self.enqueue(at, ticket_key, patience_factor);
        } else {
            let payload = self.ticket_payload(EventType::Finished, at, ticket_key, Some(counter));
            self.emit(at, EventType::Finished, payload);
            if let Some(ticket) = self.tickets.remove(&ticket_key) {
                self.record_end(&ticket, TicketEnd::Served, at);
                if self.rng.random_bool(model::P_FEEDBACK) {
                    let waited_min = ticket.waited_ms as f64 / MINUTE_MS as f64;
                    let mean = model::RATING_BEST - model::RATING_DROP_PER_MIN * waited_min;
                    let noise: f64 = self.rng.sample(StandardNormal);
                    let rating = (mean + model::RATING_NOISE * noise).round().clamp(1.0, 5.0) as u8;
                    let feedback = Feedback { number: ticket.number, service: ticket.service, counter, rating };
                    self.pending_feedback += 1;
                    self.schedule_after(at, model::FEEDBACK_DELAY_S, Action::Feedback(Box::new(feedback)));
                }
            }
        }
        self.counter_free(at, counter);
    }

    fn give_up(&mut self, at: Millis, ticket_key: TicketKey, generation: u32) {
        let Some(ticket) = self.tickets.get(&ticket_key) else { return };
        if ticket.state != TicketState::Waiting || ticket.generation != generation {
            return;
        }
        let service = ticket.service;
        let payload = self.ticket_payload(EventType::Cancelled, at, ticket_key, None);
        self.emit(at, EventType::Cancelled, payload);
        self.queues[service].retain(|waiting| *waiting != ticket_key);
        if let Some(ticket) = self.tickets.remove(&ticket_key) {
            self.record_end(&ticket, TicketEnd::Cancelled, at);
        }
    }

    /// A walk-out leaves, unseen: no event, and the ticket stays in the queue, as
    /// it does on the hall's display. When a counter calls it, nobody comes (a
    /// recall, then `no_show`); still in the queue at closing, it ends there.
    fn walk_out(&mut self, at: Millis, ticket_key: TicketKey, generation: u32) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        if ticket.state != TicketState::Waiting || ticket.generation != generation {
            return;
        }
        ticket.left_at = Some(at);
    }

    /// Keeps a ticket's end when the truth is kept.
    fn record_end(&mut self, ticket: &Ticket, end: TicketEnd, at: Millis) {
        if self.truth.is_none() {
            return;
        }
        let record = TicketTruth {
            office: self.name.clone(),
            ticket: ticket.number.clone(),
            issued_at: ticket.issued_at,
            issued: self.timestamp(ticket.issued_at),
            end,
            end_at: at,
            at: self.timestamp(at),
            seen: ticket.seen,
        };
        if let Some(truth) = self.truth.as_mut() {
            truth.push(record);
        }
    }

    fn feedback(&mut self, at: Millis, feedback: Feedback) {
        self.pending_feedback = self.pending_feedback.saturating_sub(1);
        let id = self.next_id();
        let counter = &self.counters[feedback.counter];
        let payload = PayloadBuilder::new(EventType::Feedback, &self.timestamp(at), &self.name)
            .field("ticket", &feedback.number)
            .field("service", self.services[feedback.service].name)
            .field("counter", &counter.name)
            .field("staff", &counter.staff)
            .integer("rating", i64::from(feedback.rating))
            .finish(&id);
        self.emit(at, EventType::Feedback, payload);
    }

    fn lunch_break(&mut self, at: Millis, counter: usize, length_ms: i64) {
        match self.counters[counter].state {
            CounterState::Idle | CounterState::Calling => {
                self.close_counter(at, counter);
                self.schedule(at.plus_ms(length_ms), Action::OpenCounter { counter });
            }
            CounterState::Serving(_) => self.counters[counter].break_after_ticket_ms = Some(length_ms),
            CounterState::Closed => {}
        }
    }

    fn closing_time(&mut self, at: Millis) {
        self.closing = true;
        match self.realism.closing {
            Closing::AtClosingTime => self.close_on_time(at),
            Closing::WhenQueuesEmpty => self.stay_until_queues_are_empty(at),
        }
    }

    /// Whoever still waits leaves, unseen; idle counters close now, the others
    /// once their current ticket is over (their queues are empty).
    fn close_on_time(&mut self, at: Millis) {
        for service in 0..self.queues.len() {
            while let Some(ticket_key) = self.queues[service].pop_front() {
                if let Some(ticket) = self.tickets.remove(&ticket_key) {
                    match ticket.left_at {
                        Some(left_at) => self.record_end(&ticket, TicketEnd::WalkedOut, left_at),
                        None => self.record_end(&ticket, TicketEnd::LeftAtClose, at),
                    }
                }
            }
        }
        for counter in 0..self.counters.len() {
            if self.counters[counter].state == CounterState::Idle {
                self.close_counter(at, counter);
            }
        }
    }

    fn stay_until_queues_are_empty(&mut self, at: Millis) {
        for counter in 0..self.counters.len() {
            if self.counters[counter].state == CounterState::Idle {
                self.counters[counter].state = CounterState::Calling;
                self.schedule_after(at, (0.0, 5.0), Action::TryCall { counter });
            }
        }
    }

    fn arrival(&mut self, at: Millis) {
        let mut pick = self.rng.random::<f64>() * self.service_weight_total;
        let mut service = self.services.len() - 1;
        for (index, spec) in self.services.iter().enumerate() {
            if pick < spec.weight {
                service = index;
                break;
            }
            pick -= spec.weight;
        }
        self.issued_today[service] += 1;
        let number = format!("{}-{:03}", self.services[service].letter, self.issued_today[service]);
        let walkout_after_ms = match self.realism.walkout_share {
            share if share > 0.0 && self.rng.random_bool(share) => {
                Some(seconds_to_ms(uniform(&mut self.rng, model::WALKOUT_AFTER_MINUTES) * 60.0))
            }
            _ => None,
        };
        let kiosk_silent = self.silent_kiosk.iter().any(|(from, until)| (*from..*until).contains(&at));
        let ticket_key = self.next_ticket_key;
        self.next_ticket_key += 1;
        self.tickets.insert(
            ticket_key,
            Ticket {
                number,
                service,
                state: TicketState::Waiting,
                queued_at: at,
                generation: 0,
                waited_ms: 0,
                recalls_left: 0,
                no_show: false,
                transferred: false,
                issued_at: at,
                seen: !kiosk_silent,
                walkout_after_ms,
                left_at: None,
            },
        );
        // A silent kiosk still prints the ticket; its `issued` is never published.
        if !kiosk_silent {
            let payload = self.ticket_payload(EventType::Issued, at, ticket_key, None);
            self.emit(at, EventType::Issued, payload);
        }
        self.enqueue(at, ticket_key, 1.0);
        if let Some(next) = self.next_arrival_after(at) {
            self.schedule(next, Action::Arrival);
        }
    }

    /// Puts a ticket at the back of its service's queue with a fresh
    /// patience, and wakes an idle counter that handles the service.
    fn enqueue(&mut self, at: Millis, ticket_key: TicketKey, patience_factor: f64) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        ticket.state = TicketState::Waiting;
        ticket.queued_at = at;
        ticket.generation += 1;
        let (service, generation, walkout_after_ms) = (ticket.service, ticket.generation, ticket.walkout_after_ms);
        self.queues[service].push_back(ticket_key);
        match walkout_after_ms {
            // A walk-out leaves before their patience would run out.
            Some(after_ms) => self.schedule(at.plus_ms(after_ms), Action::WalkOut { ticket: ticket_key, generation }),
            None => {
                let noise: f64 = self.rng.sample(StandardNormal);
                let day_factor = self.day.map_or(1.0, |day| day.patience_factor);
                let patience_s =
                    day_factor * patience_factor * model::PATIENCE_MEDIAN_S * (model::PATIENCE_SIGMA * noise).exp();
                let give_up_at = at.plus_ms(seconds_to_ms(patience_s));
                self.schedule(give_up_at, Action::GiveUp { ticket: ticket_key, generation });
            }
        }

        let idle: Vec<usize> = (0..self.counters.len())
            .filter(|counter| {
                self.counters[*counter].state == CounterState::Idle
                    && self.counters[*counter].services.contains(&service)
            })
            .collect();
        if !idle.is_empty() {
            let counter = idle[self.rng.random_range(0..idle.len())];
            self.counters[counter].state = CounterState::Calling;
            self.schedule_after(at, model::IDLE_NOTICE_S, Action::TryCall { counter });
        }
    }

    /// The counter is done with its ticket: lunch, closing, or the next call.
    fn counter_free(&mut self, at: Millis, counter: usize) {
        if let Some(length_ms) = self.counters[counter].break_after_ticket_ms.take() {
            self.close_counter(at, counter);
            self.schedule(at.plus_ms(length_ms), Action::OpenCounter { counter });
        } else if self.closing && self.queues_empty_for(counter) {
            self.close_counter(at, counter);
        } else {
            self.counters[counter].state = CounterState::Calling;
            self.schedule_after(at, model::NEXT_CALL_GAP_S, Action::TryCall { counter });
        }
    }

    fn close_counter(&mut self, at: Millis, counter: usize) {
        self.counters[counter].state = CounterState::Closed;
        let payload = self.counter_payload(EventType::CounterClosed, at, counter);
        self.emit(at, EventType::CounterClosed, payload);
    }

    fn queues_empty_for(&self, counter: usize) -> bool {
        self.counters[counter].services.iter().all(|service| self.queues[*service].is_empty())
    }

    /// Removes and returns the longest-waiting ticket among the counter's
    /// services (a walk-out's too: the counter cannot know they left).
    fn take_oldest_for(&mut self, counter: usize) -> Option<TicketKey> {
        let mut oldest: Option<(Millis, TicketKey, usize)> = None;
        for service in &self.counters[counter].services {
            let Some(head) = self.queues[*service].front() else { continue };
            let queued_at = self.tickets.get(head).map_or(Millis(i64::MAX), |ticket| ticket.queued_at);
            if oldest.is_none_or(|(best, _, _)| queued_at < best) {
                oldest = Some((queued_at, *head, *service));
            }
        }
        let (_, ticket_key, service) = oldest?;
        self.queues[service].pop_front();
        Some(ticket_key)
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
