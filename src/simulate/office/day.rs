//! The office day: its plan (opening, issuing hours, a busy day's load and
//! patience), the arrival process, lunch breaks, silent-kiosk hours and
//! closing time.

use chrono::NaiveDate;
use rand::Rng;
use rand_distr::Exp1;

use super::{model, seconds_to_ms, uniform, Action, CounterState, DayPlan, OfficeSim, MINUTE_MS};
use crate::simulate::realism::Closing;
use crate::simulate::truth::TicketEnd;
use crate::time::Millis;

impl OfficeSim {
    pub(super) fn plan_day(&mut self, at: Millis, day: u32, date: NaiveDate) {
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
    pub(super) fn next_arrival_after(&mut self, after: Millis) -> Option<Millis> {
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

    pub(super) fn lunch_break(&mut self, at: Millis, counter: usize, length_ms: i64) {
        match self.counters[counter].state {
            CounterState::Idle | CounterState::Calling => {
                self.close_counter(at, counter);
                self.schedule(at.plus_ms(length_ms), Action::OpenCounter { counter });
            }
            CounterState::Serving(_) => self.counters[counter].break_after_ticket_ms = Some(length_ms),
            CounterState::Closed => {}
        }
    }

    pub(super) fn closing_time(&mut self, at: Millis) {
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
}
