//! A ticket's way through the office: arrival, the queue of its service,
//! calls, recalls, no-shows, service, transfers, give-ups and walk-outs,
//! feedback, and the counters that call and serve it.

use rand::Rng;
use rand_distr::StandardNormal;

use super::{
    model, seconds_to_ms, uniform, Action, CounterState, Feedback, OfficeSim, Ticket, TicketKey, TicketState, MINUTE_MS,
};
use crate::event::EventType;
use crate::simulate::payload::PayloadBuilder;
use crate::simulate::truth::{TicketEnd, TicketTruth};
use crate::time::Millis;

impl OfficeSim {
    pub(super) fn open_counter(&mut self, at: Millis, counter: usize) {
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

    pub(super) fn try_call(&mut self, at: Millis, counter: usize) {
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

    pub(super) fn recall(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        let TicketState::Called { counter } = ticket.state else { return };
        ticket.recalls_left = ticket.recalls_left.saturating_sub(1);
        let payload = self.ticket_payload(EventType::Recalled, at, ticket_key, Some(counter));
        self.emit(at, EventType::Recalled, payload);
        self.after_call(at, ticket_key);
    }

    pub(super) fn start_service(&mut self, at: Millis, ticket_key: TicketKey) {
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

    pub(super) fn no_show(&mut self, at: Millis, ticket_key: TicketKey) {
        let Some(ticket) = self.tickets.get(&ticket_key) else { return };
        let TicketState::Called { counter } = ticket.state else { return };
        let payload = self.ticket_payload(EventType::NoShow, at, ticket_key, Some(counter));
        self.emit(at, EventType::NoShow, payload);
        if let Some(ticket) = self.tickets.remove(&ticket_key) {
            self.record_end(&ticket, TicketEnd::NoShow, at);
        }
        self.counter_free(at, counter);
    }

    pub(super) fn end_service(&mut self, at: Millis, ticket_key: TicketKey) {
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

    pub(super) fn give_up(&mut self, at: Millis, ticket_key: TicketKey, generation: u32) {
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
    pub(super) fn walk_out(&mut self, at: Millis, ticket_key: TicketKey, generation: u32) {
        let Some(ticket) = self.tickets.get_mut(&ticket_key) else { return };
        if ticket.state != TicketState::Waiting || ticket.generation != generation {
            return;
        }
        ticket.left_at = Some(at);
    }

    /// Keeps a ticket's end when the truth is kept.
    pub(super) fn record_end(&mut self, ticket: &Ticket, end: TicketEnd, at: Millis) {
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

    pub(super) fn feedback(&mut self, at: Millis, feedback: Feedback) {
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

    pub(super) fn arrival(&mut self, at: Millis) {
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

    pub(super) fn close_counter(&mut self, at: Millis, counter: usize) {
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
}
