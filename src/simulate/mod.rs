//! `queuewatch simulate`: the events of simulated public-service offices,
//! published over MQTT (for trying a deployment, load tests and the demo) or
//! written as NDJSON (for `queuewatch replay` and load tests without a broker).
//!
//! Owns the model and its generator. Pure core, IO at the edges:
//! [`Simulation`] is a plain iterator of [`SimEvent`]s (no clock, no IO);
//! [`publish`] paces them onto a broker and [`write_ndjson`] writes them out.
//!
//! What must stay true:
//! - **Deterministic.** The same [`SimOptions`] (seed, offices, counters, days,
//!   start, topic prefix) give the same events, payload bytes and order.
//!   Randomness comes only from `ChaCha8Rng`, one stream per office seeded
//!   from the seed, so an office's events do not depend on how many other
//!   offices run. Event times come from the model, never from the wall clock
//!   (only the command line's default `--start` reads it).
//! - **In order.** Events come out in timestamp order across offices (ties:
//!   office order, then the order the office produced them), so each office's
//!   timestamps never go backwards.
//! - **Valid and complete.** Every payload is accepted by the decoder and
//!   carries `office`; every ticket ends (see [`TicketEnd`]) before its
//!   office's last day ends, and no event but `feedback` refers to a ticket
//!   already over. With [`Realism::tidy`] every ticket issued is published
//!   and closed by an event (finished, no-show, cancelled, or transferred and
//!   then closed).
//! - **The truth is exact.** [`Simulation::truth`] has one record per ticket,
//!   its final end; a ticket whose end has no event (walked out, left at
//!   closing) and whose final segment was published is exactly one a tracker
//!   still finds waiting when the office closes.
//! - **Closing on time means it.** With [`Closing::AtClosingTime`] no ticket
//!   is called, cancelled, transferred or issued at or after 15:30 local;
//!   only tickets already called finish (recall, start, no-show, finish,
//!   feedback). [`office_config_toml`] gives a daemon those hours.
//! - **Off is off.** A realism part that is off draws nothing from the
//!   office's stream: [`Realism::tidy`] gives byte for byte the events of the
//!   model before realism existed.
//!
//! # The model
//!
//! Offices come from a fixed list (`mpp-jakarta-pusat`, `samsat-bandung`,
//! `dukcapil-surabaya`, `rs-makassar`, `mpp-denpasar`, `samsat-medan`,
//! `dukcapil-semarang`, `rs-yogyakarta`, `mpp-balikpapan`, `samsat-palembang`,
//! `dukcapil-manado`, `rs-jayapura`); beyond twelve the list repeats with a
//! number (`mpp-jakarta-pusat-2`). Each is in its own time zone (WIB +07:00,
//! WITA +08:00 for Makassar, Denpasar, Balikpapan, Manado, WIT +09:00 for
//! Jayapura) and its timestamps carry that offset. Services, ticket letter,
//! share of arrivals and median service time:
//!
//! | office | services |
//! |---|---|
//! | `mpp-*` | `ktp` A 30% 6 min, `kk` B 25% 5 min, `akta` C 15% 8 min, `paspor` D 15% 12 min, `sim` E 15% 10 min |
//! | `samsat-*` | `pkb` A 60% 4 min, `bbn` B 25% 9 min, `mutasi` C 15% 12 min |
//! | `dukcapil-*` | `ktp` A 40% 6 min, `kk` B 30% 5 min, `akta` C 20% 8 min, `pindah` D 10% 7 min |
//! | `rs-*` | `poli-umum` A 40% 9 min, `poli-anak` B 25% 11 min, `farmasi` C 35% 4 min |
//!
//! Service times are lognormal around the median (σ of the log 0.45),
//! clamped to 30 s … 8 × median.
//!
//! **A day** (every day is a working day): counters open at 07:30 local
//! (`counter_opened` with `staff`), the kiosk issues tickets until 15:00, and
//! counters close at 15:30 (`counter_closed`): at once when idle, after their
//! current ticket otherwise; whoever still waits leaves without an event (with
//! `Closing::WhenQueuesEmpty`, the tidy model, they stay instead while tickets
//! they handle still wait, and serve them). One or two counters (never all) take
//! a lunch break of 40–60 min starting 12:00–12:20 or 12:30–12:45, finishing
//! their current ticket first (`counter_closed`, later `counter_opened`).
//! Arrivals are a non-homogeneous Poisson process, drawn by thinning, whose
//! intensity has a base level, a morning peak centred on 09:15 (about
//! 08:30–10:00), a dip to half during 12:00–13:00, a smaller bump around
//! 13:45 and a taper in the last half hour. Expected tickets per day are
//! 80–92% (drawn per office) of what the counters can serve in the opening
//! hours. Each office publishes a `heartbeat` every 60 simulated seconds.
//!
//! **Counters** are `loket-1` … `loket-N`, each with its own staff member.
//! Every service gets a counter, further counters go to the services with the
//! most work per counter, and each counter also takes the service after its
//! own, so most services have more than one counter. A counter serves one
//! ticket at a time: the longest-waiting ticket among the services it handles
//! (FIFO per service), 5–20 s after its previous ticket, 2–10 s after a
//! ticket arrives while it is idle, or 10–90 s after opening.
//!
//! **A ticket**: `issued` (number per service with its letter, `A-001`,
//! restarting daily) → `called` (counter, staff) → 6% need a `recalled`
//! (30% of those twice), 45–90 s apart → `started` after a walk of 10–60 s →
//! `finished` after the service time. 3% never come: one or two recalls, then
//! `no_show`. 2% of services end `transferred` to another service of the
//! office instead (once per ticket, never after closing time); the ticket
//! keeps its number and joins the back of that service's queue. Every
//! customer has a patience (lognormal, median 60 min, σ 0.5; half as much
//! again after a transfer): still waiting after it, they `cancelled`. After
//! `finished`, 40% press `feedback` 5–30 s later with a rating of
//! round(4.7 − 0.06 × minutes waited + N(0, 0.8)) clamped to 1–5.
//!
//! **Realism** ([`Realism`]; each part has an option that turns it off, and
//! [`Realism::tidy`] turns all off). The defaults are near what a busy
//! Indonesian service hall sees:
//! - *Walk-outs*, 4 % of tickets (`--walkouts`): someone who will not wait
//!   long, and leaves without telling anyone if not called within 5–45 min
//!   of taking the ticket (uniform). No event says they left, and their
//!   ticket stays in the queue, as it does on the hall's display: when a
//!   counter calls it, nobody comes (a recall, then `no_show`); still in the
//!   queue at closing, it is never called. Called in time, they are served
//!   like anyone. They take no part in the patience draw.
//! - *Closing on time* (`--closing on-time`, default; `when-empty` is the tidy
//!   model): counters close at 15:30 whoever waits, as halls that keep office
//!   hours do; a ticket already called is finished.
//! - *Busy days*, 20 % of office-days (`--busy-days`): expected arrivals are
//!   110–125 % (uniform) of what the counters can serve, instead of 80–92 %,
//!   as after a holiday or at a tax deadline; people who came on such a day
//!   expect to wait and have twice the patience. The queue grows all day, and
//!   at closing some people are still waiting (left at closing; over a week
//!   of twelve offices, 2–29 on each of 15 office-days).
//! - *A service's counters at lunch together*, 10 % of office-days
//!   (`--service-lunch-days`): instead of the one or two breaks, every counter
//!   of one service (one whose counters are not all the office's) begins its
//!   break at 12:00 + U(0, 10 min), for 40–60 min, so for half an hour at
//!   least nobody serves it while its customers wait (they keep waiting; their
//!   patience runs on).
//! - *A silent kiosk*, one hour per office and simulated week
//!   (`--kiosk-outages N`): the hour starts at 07:30 + U(0, 6.5 h) on a day
//!   drawn among the week's seven (weeks count from the office's first day).
//!   Its tickets are printed and served as usual, but their `issued` is never
//!   published (nor later): a tracker first hears of them through `called`.
//!
//! **Truth.** [`Simulation::recording_truth`] keeps, per ticket, how it ended
//! ([`TicketEnd`]: served, no_show, cancelled, walked_out, left_at_close),
//! when, and whether its final segment was published (`seen`: its `issued`
//! was, or it was transferred by a published `transferred`); [`write_truth`]
//! writes it as NDJSON (format in `truth.rs`).
//!
//! **Start and days.** The simulation starts at `start` (every office's
//! heartbeat begins there). An office's first day is the first local date
//! whose issuing hours (until 15:00) are not over at `start`; when `start`
//! falls within opening hours, counters open at `start` and arrivals begin
//! then. With `days` = N the office's events end after its N-th day, once its
//! last counter has closed; with 0 it runs forever.
//!
//! Every payload has `type`, `ts` (RFC 3339, milliseconds, the office's
//! offset), `office`, the fields of its type, and last an `id`
//! `<office>-<n>`, counting the office's events from 1.

pub mod audit;
mod model;
mod office;
mod payload;
mod publish;
mod realism;
mod truth;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

pub use self::model::display_name;
use self::office::{OfficeSetup, OfficeSim, TruthRecording};
pub use self::publish::{publish, SimReport};
pub use self::realism::{parse_closing, parse_percent, Closing, Realism};
pub use self::truth::{TicketEnd, TicketTruth};
use crate::event::EventType;
use crate::time::Millis;

/// What to simulate and how to publish it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// The broker, `mqtt://host:port`.
    pub url: String,
    /// Number of offices.
    pub offices: u32,
    /// Counters per office (at least one is simulated).
    pub counters: u32,
    pub seed: u64,
    /// Simulated seconds per wall second when pacing by the model.
    pub speed: f64,
    /// When set, publish this many events per second instead of pacing by
    /// the model (timestamps still come from the model).
    pub rate: Option<f64>,
    /// Office days to simulate; 0 = forever.
    pub days: u32,
    /// The simulated start.
    pub start: Millis,
    /// Topics are `<topic_prefix>/<office>/events`.
    pub topic_prefix: String,
    /// The MQTT client id; `queuewatch-simulate-<pid>` when absent.
    pub client_id: Option<String>,
    /// How untidy the days are; [`Realism::tidy`] for none of it.
    pub realism: Realism,
}

impl SimOptions {
    /// The command line's defaults, starting at `start`.
    pub fn new(start: Millis) -> SimOptions {
        SimOptions {
            url: "mqtt://127.0.0.1:1883".into(),
            offices: 3,
            counters: 6,
            seed: 1,
            speed: 1.0,
            rate: None,
            days: 1,
            start,
            topic_prefix: "queue".into(),
            client_id: None,
            realism: Realism::default(),
        }
    }

    /// Every problem with the options, at once.
    pub fn validate(&self) -> Result<(), InvalidOptions> {
        let mut problems = Vec::new();
        if let Err(problem) = crate::config::parse_mqtt_url(&self.url) {
            problems.push(format!("url: {problem}"));
        }
        if self.offices == 0 {
            problems.push("offices: must be at least 1".into());
        }
        if self.counters == 0 {
            problems.push("counters: must be at least 1".into());
        }
        if !is_positive(self.speed) {
            problems.push(format!("speed: {}: expected a number above 0", self.speed));
        }
        if let Some(rate) = self.rate.filter(|rate| !is_positive(*rate)) {
            problems.push(format!("rate: {rate}: expected a number above 0"));
        }
        if let Err(problem) = validate_topic_prefix(&self.topic_prefix) {
            problems.push(format!("topic-prefix: {problem}"));
        }
        problems.extend(self.realism.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidOptions(problems))
        }
    }
}

/// Options that cannot work, each problem naming its option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulate options: {}", .0.join("; "))]
pub struct InvalidOptions(pub Vec<String>);

/// One event as an office would publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// The event's `ts`.
    pub at: Millis,
    pub office: String,
    /// `<topic_prefix>/<office>/events`
    pub topic: String,
    pub kind: EventType,
    /// The JSON object, `office` included.
    pub payload: String,
}

/// The generator: every office's events, in timestamp order. Finite unless
/// `days` is 0.
pub struct Simulation {
    offices: Vec<OfficeSim>,
    /// The next event of each office, waiting for its turn.
    heads: Vec<Option<SimEvent>>,
    /// (time of the office's head, office index), earliest first.
    order: BinaryHeap<Reverse<(Millis, usize)>>,
}

impl Simulation {
    pub fn new(options: &SimOptions) -> Simulation {
        Simulation::build(options, TruthRecording::Off)
    }

    /// The same events, and each ticket's ground truth kept as it ends (for
    /// [`Simulation::truth`]). Memory grows with the tickets: for runs of some days.
    pub fn recording_truth(options: &SimOptions) -> Simulation {
        Simulation::build(options, TruthRecording::Kept)
    }

    /// The tickets ended so far, office by office in office order, each
    /// office's in issue order. Empty unless built by [`Simulation::recording_truth`].
    pub fn truth(&self) -> Vec<TicketTruth> {
        self.offices.iter().flat_map(OfficeSim::truth).collect()
    }

    fn build(options: &SimOptions, truth: TruthRecording) -> Simulation {
        let mut offices: Vec<OfficeSim> = (0..options.offices as usize)
            .map(|index| {
                OfficeSim::new(&OfficeSetup {
                    index,
                    counters: options.counters.max(1) as usize,
                    seed: options.seed,
                    days: options.days,
                    start: options.start,
                    topic_prefix: options.topic_prefix.clone(),
                    realism: options.realism,
                    truth,
                })
            })
            .collect();
        let heads: Vec<Option<SimEvent>> = offices.iter_mut().map(OfficeSim::next_event).collect();
        let order = heads
            .iter()
            .enumerate()
            .filter_map(|(index, head)| head.as_ref().map(|event| Reverse((event.at, index))))
            .collect();
        Simulation { offices, heads, order }
    }

    /// The simulated offices' names, in office order.
    pub fn office_names(&self) -> Vec<String> {
        self.offices.iter().map(|office| office.name().to_string()).collect()
    }
}

impl Iterator for Simulation {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        let Reverse((_, index)) = self.order.pop()?;
        let event = self.heads[index].take()?;
        self.heads[index] = self.offices[index].next_event();
        if let Some(next) = &self.heads[index] {
            self.order.push(Reverse((next.at, index)));
        }
        Some(event)
    }
}

/// Writes the simulation as NDJSON, one payload (which names its office) per
/// line, as fast as it is generated. Returns the number of events written.
/// With `days` = 0 it writes until the writer fails.
pub fn write_ndjson(options: &SimOptions, writer: impl Write) -> std::io::Result<u64> {
    let mut writer = std::io::BufWriter::with_capacity(1 << 16, writer);
    let mut written = 0u64;
    for event in Simulation::new(options) {
        writer.write_all(event.payload.as_bytes())?;
        writer.write_all(b"\n")?;
        written += 1;
    }
    writer.flush()?;
    Ok(written)
}

/// Writes the ground truth of the simulation of `options` as NDJSON (see
/// [`TicketTruth`]), generating it to its end; returns the number of tickets.
/// The simulation must end: `days` = 0 is refused.
pub fn write_truth(options: &SimOptions, writer: impl Write) -> std::io::Result<u64> {
    if options.days == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the ground truth needs a simulation that ends (days above 0)",
        ));
    }
    let mut simulation = Simulation::recording_truth(options);
    simulation.by_ref().for_each(drop);
    truth::write_records(&simulation.truth(), writer)
}

/// The hours the simulated counters keep, every day, as the config's
/// minute-of-day ranges (`OfficeConfig::hours`).
pub fn opening_hours() -> [(u32, u32); 1] {
    [(model::OPENING_MINUTE, model::CLOSING_MINUTE)]
}

/// The `[offices.<id>]` sections of a daemon config for the offices `options`
/// simulates: name, region (`wib`, `wita`, `wit`), time zone, and the
/// opening hours the simulated counters keep, every day. With
/// [`Closing::AtClosingTime`] no ticket is called outside these hours.
pub fn office_config_toml(options: &SimOptions) -> String {
    let [(opening, closing)] = opening_hours();
    let hours = format!("{}-{}", model::clock(opening), model::clock(closing));
    let mut text = String::new();
    for index in 0..options.offices as usize {
        let (id, _, zone) = model::office_identity(index);
        if index > 0 {
            text.push('\n');
        }
        text.push_str(&format!(
            "[offices.{id}]\nname = \"{}\"\nregion = \"{}\"\ntimezone = \"{}\"\nhours = \"{hours}\"\ndays = \"Mon-Sun\"\n",
            display_name(&id),
            model::zone_region(zone),
            zone.name()
        ));
    }
    text
}

/// `--start`: RFC 3339 with an offset (`2026-11-27T07:00:00+07:00`).
pub fn parse_start(text: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|datetime| Millis(datetime.timestamp_millis()))
        .map_err(|error| format!("{text:?}: not RFC 3339 with an offset ({error})"))
}

/// `--speed`, `--rate`: a finite number above zero.
pub fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if is_positive(value) => Ok(value),
        _ => Err(format!("{text:?}: expected a number above 0")),
    }
}

fn is_positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// `--topic-prefix`: one or more topic levels without wildcards.
pub fn validate_topic_prefix(prefix: &str) -> Result<String, String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!("{prefix:?}: must not contain '+', '#' or NUL"));
    }
    Ok(prefix.to_string())
}

#[cfg(test)]
mod realism_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn one_day(offices: u32) -> SimOptions {
        let start = parse_start("2026-11-27T06:00:00+07:00").unwrap();
        SimOptions { offices, ..SimOptions::new(start) }
    }

    #[test]
    fn an_office_does_not_depend_on_how_many_others_run() {
        let alone: Vec<SimEvent> = Simulation::new(&one_day(1)).collect();
        let with_others: Vec<SimEvent> =
            Simulation::new(&one_day(4)).filter(|event| event.office == "mpp-jakarta-pusat").collect();
        assert!(!alone.is_empty());
        assert_eq!(alone, with_others);
    }

    #[test]
    fn timestamps_carry_the_office_offset() {
        let events: Vec<SimEvent> = Simulation::new(&one_day(4)).take(20_000).collect();
        let makassar = events.iter().find(|event| event.office == "rs-makassar").unwrap();
        assert!(makassar.payload.contains("+08:00\""), "{}", makassar.payload);
        let jakarta = events.iter().find(|event| event.office == "mpp-jakarta-pusat").unwrap();
        assert!(jakarta.payload.contains("+07:00\""), "{}", jakarta.payload);
        assert!(jakarta.payload.starts_with(r#"{"type":"heartbeat","ts":"2026-11-27T06:00:00.000+07:00","office""#));
    }

    #[test]
    fn ids_count_each_office_events_from_one() {
        let events: Vec<SimEvent> = Simulation::new(&one_day(2)).collect();
        for office in ["mpp-jakarta-pusat", "samsat-bandung"] {
            for (index, event) in events.iter().filter(|event| event.office == office).enumerate() {
                let expected = format!(r#","id":"{office}-{}"}}"#, index + 1);
                assert!(event.payload.ends_with(&expected), "{} vs {expected}", event.payload);
            }
        }
    }

    #[test]
    fn a_start_after_issuing_hours_begins_with_the_next_day() {
        let start = parse_start("2026-11-27T15:10:00+07:00").unwrap();
        let options = SimOptions { offices: 1, ..SimOptions::new(start) };
        let first_open = Simulation::new(&options).find(|event| event.kind == EventType::CounterOpened).unwrap();
        assert_eq!(first_open.at, parse_start("2026-11-28T07:30:00+07:00").unwrap());
    }

    #[test]
    fn a_start_within_opening_hours_opens_the_counters_at_once() {
        let start = parse_start("2026-11-27T10:00:00+07:00").unwrap();
        let options = SimOptions { offices: 1, ..SimOptions::new(start) };
        let events: Vec<SimEvent> = Simulation::new(&options).collect();
        let opened = events.iter().filter(|event| event.kind == EventType::CounterOpened && event.at == start).count();
        assert_eq!(opened, 6);
        assert!(events.iter().all(|event| event.at >= start));
    }

    #[test]
    fn zero_days_runs_on_past_the_first_day() {
        let start = parse_start("2026-11-27T06:00:00+07:00").unwrap();
        let options = SimOptions { offices: 1, days: 0, ..SimOptions::new(start) };
        let third_day = parse_start("2026-11-29T08:00:00+07:00").unwrap();
        let reached = Simulation::new(&options).find(|event| event.kind == EventType::Issued && event.at > third_day);
        assert!(reached.is_some());
    }

    #[test]
    fn options_report_every_problem() {
        let options = SimOptions {
            url: "http://x".into(),
            offices: 0,
            speed: 0.0,
            rate: Some(f64::NAN),
            topic_prefix: "a/+".into(),
            ..SimOptions::new(Millis(0))
        };
        let problems = options.validate().unwrap_err().0;
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(SimOptions::new(Millis(0)).validate().is_ok());
        assert!(parse_start("2026-11-27T07:00:00").is_err());
    }
}
