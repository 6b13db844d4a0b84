//! The fixture day's figures computed from its events alone, by the rules of
//! docs/tracking.md ("How tickets are followed") and docs/metrics.md, without
//! queuewatch or InfluxDB: what the dashboards must show.
//!
//! The fixture keeps to what these rules need: every ticket is issued, then
//! either cancelled while waiting, or called once and closed as `served`
//! (after `started`) or `no_show`; no recalls, transfers or duplicates; one
//! message is rejected for a bad service identifier.

use std::collections::BTreeMap;

use chrono::DateTime;
use serde_json::Value;

/// Wait and service targets of the test's config, in seconds, by service.
pub fn targets_s(service: &str) -> (f64, f64) {
    match service {
        "ktp" => (600.0, 900.0),
        "paspor" => (1800.0, 1500.0),
        _ => (900.0, 1200.0),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Served,
    NoShow,
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Ticket {
    pub office: String,
    pub number: String,
    pub service: String,
    pub issued_ms: i64,
    pub called_ms: Option<i64>,
    pub counter: Option<String>,
    pub started_ms: Option<i64>,
    pub closed: Option<(Outcome, i64)>,
}

impl Ticket {
    pub fn wait_s(&self) -> Option<f64> {
        self.called_ms.map(|called| (called - self.issued_ms) as f64 / 1000.0)
    }

    /// 1 when called within the wait target, 0 when called later or cancelled
    /// while waiting after waiting past it, none otherwise.
    pub fn wait_within_target(&self) -> Option<f64> {
        let (wait_target, _) = targets_s(&self.service);
        match (self.wait_s(), self.closed) {
            (Some(wait), _) => Some(if wait <= wait_target { 1.0 } else { 0.0 }),
            (None, Some((Outcome::Cancelled, at))) if (at - self.issued_ms) as f64 / 1000.0 > wait_target => Some(0.0),
            _ => None,
        }
    }

    /// Breach deadlines (kind, time) this ticket passed.
    pub fn breaches(&self) -> Vec<(&'static str, i64)> {
        let (wait_target, service_target) = targets_s(&self.service);
        let mut breaches = Vec::new();
        let wait_deadline = self.issued_ms + (wait_target * 1000.0) as i64;
        let wait_ended = self.called_ms.or(self.closed.map(|(_, at)| at));
        if wait_ended.is_none_or(|ended| ended > wait_deadline) {
            breaches.push(("wait", wait_deadline));
        }
        if let Some(service_start) = self.started_ms.or(self.called_ms) {
            let service_deadline = service_start + (service_target * 1000.0) as i64;
            if self.closed.is_none_or(|(_, at)| at > service_deadline) {
                breaches.push(("service", service_deadline));
            }
        }
        breaches
    }

    pub fn outcome_at(&self, outcome: Outcome) -> Option<i64> {
        self.closed.filter(|(kind, _)| *kind == outcome).map(|(_, at)| at)
    }
}

#[derive(Clone, Debug)]
pub struct Feedback {
    pub office: String,
    pub counter: String,
    pub rating: f64,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct CounterSession {
    pub opened_ms: i64,
    pub closed_ms: i64,
    pub busy_ms: i64,
}

/// The fixture day, as its events say.
#[derive(Debug, Default)]
pub struct Day {
    pub tickets: Vec<Ticket>,
    pub feedback: Vec<Feedback>,
    /// (office, counter) → its one session of the day.
    pub counters: BTreeMap<(String, String), CounterSession>,
    /// Messages rejected, by office.
    pub rejected: BTreeMap<String, u64>,
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl Day {
    pub fn from_ndjson(text: &str) -> Day {
        let mut day = Day::default();
        let mut open: BTreeMap<(String, String), usize> = BTreeMap::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let event: Value = serde_json::from_str(line).expect("fixture line is JSON");
            let text_of = |key: &str| event.get(key).and_then(Value::as_str).map(str::to_string);
            let office = text_of("office").expect("every fixture event names its office");
            if ["service", "ticket", "counter"].iter().any(|key| text_of(key).is_some_and(|v| !is_identifier(&v))) {
                *day.rejected.entry(office).or_default() += 1;
                continue;
            }
            let at_ms = DateTime::parse_from_rfc3339(&text_of("ts").unwrap()).unwrap().timestamp_millis();
            let kind = text_of("type").unwrap();
            let counter = text_of("counter");
            let key = (office.clone(), text_of("ticket").unwrap_or_default());
            match kind.as_str() {
                "issued" => {
                    open.insert(key.clone(), day.tickets.len());
                    day.tickets.push(Ticket {
                        office,
                        number: key.1,
                        service: text_of("service").unwrap(),
                        issued_ms: at_ms,
                        called_ms: None,
                        counter: None,
                        started_ms: None,
                        closed: None,
                    });
                }
                "called" => {
                    let ticket = &mut day.tickets[open[&key]];
                    assert!(ticket.called_ms.is_none(), "the fixture calls each ticket once: {line}");
                    ticket.called_ms = Some(at_ms);
                    ticket.counter = counter;
                }
                "started" => day.tickets[open[&key]].started_ms = Some(at_ms),
                "finished" | "no_show" | "cancelled" => {
                    let outcome = match kind.as_str() {
                        "finished" => Outcome::Served,
                        "no_show" => Outcome::NoShow,
                        _ => Outcome::Cancelled,
                    };
                    let index = open.remove(&key).unwrap_or_else(|| panic!("close of an unknown ticket: {line}"));
                    let ticket = &mut day.tickets[index];
                    ticket.closed = Some((outcome, at_ms));
                    if let (Some(called), Some(counter)) = (ticket.called_ms, &ticket.counter) {
                        day.counters.entry((ticket.office.clone(), counter.clone())).or_default().busy_ms +=
                            at_ms - called;
                    }
                }
                "counter_opened" => {
                    day.counters.entry((office, counter.unwrap())).or_default().opened_ms = at_ms;
                }
                "counter_closed" => {
                    day.counters.entry((office, counter.unwrap())).or_default().closed_ms = at_ms;
                }
                "feedback" => day.feedback.push(Feedback {
                    office,
                    counter: counter.unwrap(),
                    rating: event["rating"].as_f64().unwrap(),
                    at_ms,
                }),
                "heartbeat" => {}
                other => panic!("the model does not know {other:?}"),
            }
        }
        assert!(open.is_empty(), "every fixture ticket closes by the end of the day: {open:?}");
        day
    }

    pub fn offices(&self) -> Vec<String> {
        let mut offices: Vec<String> = self.tickets.iter().map(|ticket| ticket.office.clone()).collect();
        offices.sort();
        offices.dedup();
        offices
    }

    /// Tickets of `office` that closed in [from, to].
    pub fn closed_in<'a>(&'a self, office: &'a str, from_ms: i64, to_ms: i64) -> impl Iterator<Item = &'a Ticket> + 'a {
        self.tickets.iter().filter(move |ticket| {
            ticket.office == office && ticket.closed.is_some_and(|(_, at)| (from_ms..=to_ms).contains(&at))
        })
    }

    /// The figures of `office` over tickets closed, breaches due and buttons
    /// pressed in [from, to].
    pub fn figures(&self, office: &str, from_ms: i64, to_ms: i64) -> Figures {
        let closed: Vec<&Ticket> = self.closed_in(office, from_ms, to_ms).collect();
        let count = |outcome| closed.iter().filter(|ticket| ticket.closed.unwrap().0 == outcome).count() as u64;
        let waits: Vec<f64> = closed.iter().filter_map(|ticket| ticket.wait_s()).collect();
        let within: Vec<f64> = closed.iter().filter_map(|ticket| ticket.wait_within_target()).collect();
        let ratings: Vec<f64> = self
            .feedback
            .iter()
            .filter(|feedback| feedback.office == office && (from_ms..=to_ms).contains(&feedback.at_ms))
            .map(|feedback| feedback.rating)
            .collect();
        let breaches = self
            .tickets
            .iter()
            .filter(|ticket| ticket.office == office)
            .flat_map(|ticket| ticket.breaches())
            .filter(|(_, at)| (from_ms..=to_ms).contains(at))
            .count() as u64;
        Figures {
            served: count(Outcome::Served),
            no_shows: count(Outcome::NoShow),
            cancelled: count(Outcome::Cancelled),
            service_level: mean(&within),
            average_wait_s: mean(&waits),
            p90_wait_s: percentile(&waits, 90.0),
            satisfaction: mean(&ratings),
            breaches,
        }
    }

    /// Tickets of `office` waiting at `at_ms`: issued by then, neither called nor closed by then.
    pub fn waiting_at(&self, office: &str, at_ms: i64) -> u64 {
        self.tickets
            .iter()
            .filter(|ticket| ticket.office == office && ticket.issued_ms <= at_ms)
            .filter(|ticket| ticket.called_ms.is_none_or(|called| called > at_ms))
            .filter(|ticket| ticket.closed.is_none_or(|(_, closed)| closed > at_ms))
            .count() as u64
    }
}

/// The key figures of one office over a range.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub served: u64,
    pub no_shows: u64,
    pub cancelled: u64,
    pub service_level: Option<f64>,
    pub average_wait_s: Option<f64>,
    pub p90_wait_s: Option<f64>,
    pub satisfaction: Option<f64>,
    pub breaches: u64,
}

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// InfluxQL's PERCENTILE: nearest rank, the value at index
/// floor(n × p / 100 + 0.5) − 1 of the sorted values; none when that index
/// falls outside them.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() as f64 * p / 100.0 + 0.5).floor() as i64 - 1;
    usize::try_from(rank).ok().and_then(|index| sorted.get(index).copied())
}
