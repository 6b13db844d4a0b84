//! Every alert rule over a simulated week, minute by minute, against an independent model.
//!
//! The week: 12 offices over the three zones, the simulator's realistic defaults (walk-outs,
//! busy days with people left at closing, lunches, a silent kiosk hour), replayed by
//! `queuewatch replay` into a real InfluxDB 1.6 with the offices' hours, plus the daemon's own
//! `queuewatch` row every minute as `run` writes it. Three outages at known times: InfluxDB
//! down 10 minutes (every query fails), queuewatch stopped 5 minutes (it writes nothing, its
//! rows for the gap arrive after the restart), the broker down 5 minutes (no event arrives;
//! queuewatch runs on).
//!
//! Each rule is evaluated once a minute over the whole week the way Grafana evaluates it (see
//! the parent module), with its `for`, `noDataState` and `execErrState`. The independent model
//! says when each condition is truly on. It reads the simulator's published events (what the
//! ticket machines and counters said: when each ticket was issued, called and closed, when
//! counters opened and closed) and the offices' hours, never queuewatch's points. Tickets
//! whose `issued` the silent kiosk never published are invisible to any observer of the
//! events, so the model leaves them out, as it leaves out when a walk-out left (their number
//! waits in the hall's queue until a counter calls it).
//!
//! Required, per rule: no page outside opening hours + grace, no false page, no missed
//! condition (each paged within its `for` + a tolerance), no flap, and no "resolved" during
//! an outage for a condition that did not end.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use queuewatch::config::Config;
use queuewatch::simulate::audit::{within_open_day, OfficeWeek};
use queuewatch::simulate::SimOptions;

/// Monday 2026-11-23, 06:00 in Jakarta.
const WEEK_START: &str = "2026-11-23T06:00:00+07:00";
const MINUTE: i64 = 60_000;
/// How far the rows may lag the model: the reorder window, the snapshot interval, the
/// keepalive minute and the evaluation minute.
const TOLERANCE: i64 = 2 * MINUTE;
const WAIT_TARGET_MS: i64 = 15 * MINUTE;
/// `tracking.snapshot_interval`'s default: gauge rows are written on this grid.
const SNAPSHOT_INTERVAL_MS: i64 = 10_000;
const CLOSE_GRACE_MS: i64 = 30 * MINUTE;
/// Longer than any segment lives: an open day and its grace.
const DAY_SPAN: i64 = 12 * 60 * MINUTE;

/// Rules whose pages do not yet match the model minute for minute: their false pages, misses
/// and flaps are printed, not asserted (every other column is). None today: the last one,
/// `oldest-wait-twice-target`, became exact when queuewatch began to write a queue row as the
/// oldest waiting ticket passes twice its target.
const NOT_YET_EXACT: [&str; 0] = [];

/// The outages, as (start, minutes).
struct Outages {
    influxdb: (i64, i64),
    queuewatch: (i64, i64),
    broker: (i64, i64),
}

impl Outages {
    fn during(window: (i64, i64), at: i64) -> bool {
        (window.0..window.0 + window.1 * MINUTE).contains(&at)
    }

    /// The newest row time office data can have when evaluated at `at`: queuewatch writes
    /// nothing while stopped, and nothing new arrives while the broker is down.
    fn office_data_until(&self, at: i64) -> i64 {
        for window in [self.queuewatch, self.broker] {
            if Outages::during(window, at) {
                return window.0;
            }
        }
        at
    }

    fn windows(&self) -> [(&'static str, (i64, i64)); 3] {
        [("influxdb", self.influxdb), ("queuewatch", self.queuewatch), ("broker", self.broker)]
    }
}

/// One ticket segment as the published events tell it.
#[derive(Debug, Clone)]
struct Segment {
    office: String,
    service: String,
    issue: i64,
    first_call: Option<i64>,
    close: Option<i64>,
    /// `Some(within)` when the segment counts towards the service level (called, or
    /// cancelled while waiting past the target).
    within: Option<bool>,
}

/// What the events say, per office.
#[derive(Default)]
struct Observed {
    /// Per office, sorted by issue time.
    segments: BTreeMap<String, Vec<Segment>>,
    /// Per office: (time, counters open after it), for offices that send counter events.
    counters: BTreeMap<String, Vec<(i64, i64)>>,
    /// Every event's time, sorted.
    event_times: Vec<i64>,
}

fn observe(events_ndjson: &str) -> Observed {
    let mut observed = Observed::default();
    let mut open: HashMap<(String, String), Segment> = HashMap::new();
    let mut counters_open: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let close = |segment: &mut Segment, at: i64, within: Option<bool>| {
        segment.close = Some(at);
        if segment.within.is_none() {
            segment.within = within;
        }
    };
    for line in events_ndjson.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let office = event["office"].as_str().unwrap().to_string();
        let ts = event["ts"].as_str().map(at).or_else(|| event["ts"].as_i64()).unwrap();
        observed.event_times.push(ts);
        let kind = event["type"].as_str().unwrap();
        let ticket = event["ticket"].as_str().map(str::to_owned);
        match (kind, ticket) {
            ("counter_opened" | "counter_closed", _) => {
                let counter = event["counter"].as_str().unwrap().to_string();
                let set = counters_open.entry(office.clone()).or_default();
                if kind == "counter_opened" {
                    set.insert(counter);
                } else {
                    set.remove(&counter);
                }
                let count = set.len() as i64;
                observed.counters.entry(office).or_default().push((ts, count));
            }
            ("issued", Some(ticket)) => {
                let service = event["service"].as_str().unwrap().to_string();
                let segment =
                    Segment { office: office.clone(), service, issue: ts, first_call: None, close: None, within: None };
                if let Some(old) = open.insert((office, ticket), segment) {
                    observed.segments.entry(old.office.clone()).or_default().push(old);
                }
            }
            ("called" | "recalled" | "started", Some(ticket)) => {
                if let Some(segment) = open.get_mut(&(office, ticket)) {
                    if segment.first_call.is_none() {
                        segment.first_call = Some(ts);
                        segment.within = Some(ts - segment.issue <= WAIT_TARGET_MS);
                    }
                }
            }
            ("finished" | "no_show" | "cancelled" | "transferred", Some(ticket)) => {
                let key = (office.clone(), ticket);
                if let Some(mut segment) = open.remove(&key) {
                    let within =
                        (kind == "cancelled" && segment.first_call.is_none() && ts - segment.issue > WAIT_TARGET_MS)
                            .then_some(false);
                    close(&mut segment, ts, within);
                    observed.segments.entry(segment.office.clone()).or_default().push(segment);
                }
                if kind == "transferred" {
                    let service = event["to_service"].as_str().unwrap().to_string();
                    let segment = Segment { office, service, issue: ts, first_call: None, close: None, within: None };
                    open.insert(key, segment);
                }
            }
            _ => {}
        }
    }
    for segment in open.into_values() {
        observed.segments.entry(segment.office.clone()).or_default().push(segment);
    }
    for segments in observed.segments.values_mut() {
        segments.sort_by_key(|segment| segment.issue);
    }
    observed.event_times.sort_unstable();
    observed
}

/// The independent model: whether each rule's condition is truly on, per instance, at `at`.
struct Model {
    observed: Observed,
    offices: BTreeMap<queuewatch::ids::OfficeId, queuewatch::config::OfficeConfig>,
    regions: BTreeMap<String, String>,
    outages: Outages,
}

impl Model {
    fn open(&self, office: &str, at: i64) -> bool {
        let config = &self.offices[&queuewatch::ids::OfficeId::parse(office).unwrap()];
        config.is_open_at(queuewatch::time::Millis(at))
    }

    fn labels(&self, office: &str) -> Labels {
        Labels::from([("office".to_string(), office.to_string()), ("region".to_string(), self.regions[office].clone())])
    }

    /// The office's segments issued within the last `DAY_SPAN` before `at`.
    fn recent<'a>(&'a self, office: &str, at: i64) -> &'a [Segment] {
        let Some(segments) = self.observed.segments.get(office) else { return &[] };
        let from = segments.partition_point(|segment| segment.issue < at - DAY_SPAN);
        let to = segments.partition_point(|segment| segment.issue <= at);
        &segments[from..to]
    }

    /// The office's segments waiting (issued, not called, not closed) at `at`, issued at or
    /// before `before`. Every segment is issued during its office's open day, and one still
    /// waiting at the day's close + grace is closed then (`abandoned`): outside the open day
    /// nobody waits.
    fn waiting<'a>(&'a self, office: &str, at: i64, before: i64) -> impl Iterator<Item = &'a Segment> + 'a {
        let config = &self.offices[&queuewatch::ids::OfficeId::parse(office).unwrap()];
        let open_day = within_open_day(config, queuewatch::time::Millis(at), CLOSE_GRACE_MS);
        self.recent(office, at).iter().filter(move |segment| {
            open_day
                && segment.issue <= before
                && segment.first_call.is_none_or(|call| call > at)
                && segment.close.is_none_or(|close| close > at)
        })
    }

    fn counters_open(&self, office: &str, at: i64) -> Option<i64> {
        let changes = self.observed.counters.get(office)?;
        let index = changes.partition_point(|(time, _)| *time <= at);
        Some(if index == 0 { 0 } else { changes[index - 1].1 })
    }

    /// The condition each rule states, as of what its rows can show at `at`. A gauge row is
    /// written at the first snapshot (every `tracking.snapshot_interval`, 10 s) after a change,
    /// and a query sees rows before the evaluation time: `waiting-past-target` and
    /// `oldest-wait-twice-target` read the state of the last snapshot before `at`. (Their
    /// tickets are called, and pass their target or twice it, at any second; sampled at the
    /// minute itself, a call 5 s before it would be a condition the rows cannot show yet.)
    fn condition(&self, uid: &str, at: i64) -> BTreeSet<Labels> {
        match uid {
            "queuewatch-waiting-past-target" | "queuewatch-oldest-wait-twice-target" => {
                self.condition_at(uid, at - SNAPSHOT_INTERVAL_MS)
            }
            _ => self.condition_at(uid, at),
        }
    }

    /// Whether each rule's condition holds at the instant `at`.
    fn condition_at(&self, uid: &str, at: i64) -> BTreeSet<Labels> {
        let offices: Vec<&String> = self.regions.keys().collect();
        let open_offices = || offices.iter().filter(move |office| self.open(office, at));
        match uid {
            "queuewatch-waiting-past-target" => open_offices()
                .filter(|office| self.waiting(office, at, at - WAIT_TARGET_MS).next().is_some())
                .map(|office| self.labels(office))
                .collect(),
            "queuewatch-waiting-no-counter" => open_offices()
                .filter(|office| self.counters_open(office, at) == Some(0))
                .filter(|office| self.waiting(office, at, at).next().is_some())
                .map(|office| self.labels(office))
                .collect(),
            "queuewatch-office-not-open" => open_offices()
                .filter(|office| self.counters_open(office, at) == Some(0))
                .map(|office| self.labels(office))
                .collect(),
            "queuewatch-oldest-wait-twice-target" => open_offices()
                .flat_map(|office| self.waiting(office, at, at - 2 * WAIT_TARGET_MS))
                .map(|segment| {
                    let mut labels = self.labels(&segment.office);
                    labels.insert("service".into(), segment.service.clone());
                    labels
                })
                .collect(),
            "queuewatch-service-level" => open_offices()
                .filter(|office| {
                    let counted: Vec<bool> = self
                        .recent(office, at)
                        .iter()
                        .filter(|segment| segment.close.is_some_and(|close| close > at - 60 * MINUTE && close <= at))
                        .filter_map(|segment| segment.within)
                        .collect();
                    let within = counted.iter().filter(|within| **within).count();
                    counted.len() >= 5 && (within as f64) < 0.8 * counted.len() as f64
                })
                .map(|office| self.labels(office))
                .collect(),
            "queuewatch-no-events" => {
                let delivered_until = self.outages.office_data_until(at);
                let index = self.observed.event_times.partition_point(|time| *time <= delivered_until);
                let newest = if index == 0 { i64::MIN / 2 } else { self.observed.event_times[index - 1] };
                if at - newest > 10 * MINUTE && open_offices().next().is_some() {
                    BTreeSet::from([Labels::new()])
                } else {
                    BTreeSet::new()
                }
            }
            "queuewatch-stopped" => {
                let (start, minutes) = self.outages.queuewatch;
                let stopped_for = at - start;
                // No heartbeat row for 3 minutes, until it writes again.
                let stopped = (3 * MINUTE..minutes * MINUTE).contains(&stopped_for);
                if stopped || Outages::during(self.outages.influxdb, at) {
                    BTreeSet::from([Labels::new()])
                } else {
                    BTreeSet::new()
                }
            }
            // No message of the week is rejected, no idle target is set, replay writes no
            // `silent`, and InfluxDB refuses nothing: never on.
            _ => BTreeSet::new(),
        }
    }

    /// Whether an instance's alert may be on at `at` (opening hours + grace; the daemon's
    /// rules any time).
    fn may_page(&self, labels: &Labels, at: i64) -> bool {
        match labels.get("office") {
            Some(office) => {
                let config = &self.offices[&queuewatch::ids::OfficeId::parse(office).unwrap()];
                within_open_day(config, queuewatch::time::Millis(at), CLOSE_GRACE_MS)
            }
            None => true,
        }
    }
}

/// The state of every instance of every rule after each minute.
type Timeline = BTreeMap<Labels, Vec<(i64, State)>>;

/// Evaluates every rule once a minute from `from` to `to`, as Grafana's scheduler does.
async fn evaluate_week(
    influx: &Influx1,
    db: &str,
    rules: &[Rule],
    outages: &Outages,
    from: i64,
    to: i64,
) -> BTreeMap<String, Timeline> {
    let client = Arc::new(reqwest::Client::new());
    let mut timelines: BTreeMap<String, Timeline> = BTreeMap::new();
    let mut states: BTreeMap<String, BTreeMap<Labels, (State, i64)>> = BTreeMap::new();
    let mut now = from;
    while now <= to {
        let influx_down = Outages::during(outages.influxdb, now);
        // Every distinct query of the minute, run at once.
        let mut rendered: BTreeSet<String> = BTreeSet::new();
        let render = |query: &RuleQuery| -> String {
            let range = query.relative_time_range.expect("relativeTimeRange");
            let influxql = query.model["query"].as_str().expect("model.query");
            let until = if influxql.contains("FROM \"queuewatch\"") { now } else { outages.office_data_until(now) };
            let to_ms = (now - range.to * 1000).min(until + 1);
            render_macros(influxql, now - range.from * 1000, to_ms)
        };
        if !influx_down {
            for rule in rules {
                for query in rule.data.iter().filter(|query| query.datasource_uid != "__expr__") {
                    rendered.insert(render(query));
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for query in rendered {
            let (client, url, db) = (client.clone(), influx.url.clone(), db.to_string());
            tasks.spawn(async move {
                let response: Value = client
                    .get(format!("{url}/query"))
                    .query(&[("db", db.as_str()), ("q", query.as_str()), ("epoch", "ns")])
                    .send()
                    .await
                    .expect("InfluxDB answers")
                    .json()
                    .await
                    .expect("JSON");
                let series = series_of(&query, &response);
                (query, series)
            });
        }
        let mut answers: HashMap<String, Vec<Series>> = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (query, series) = joined.expect("query task");
            answers.insert(query, series);
        }

        for rule in rules {
            let rule_states = states.entry(rule.uid.clone()).or_default();
            let firing: Option<BTreeSet<Labels>> = if influx_down {
                match rule.exec_err_state.as_str() {
                    "KeepLast" => None,
                    "Alerting" => Some(BTreeSet::from([Labels::new()])),
                    other => panic!("execErrState {other} is not modelled here"),
                }
            } else {
                let mut results: BTreeMap<String, Results> = BTreeMap::new();
                for query in &rule.data {
                    let result = if query.datasource_uid == "__expr__" {
                        evaluate_expression(&query.model, &results)
                    } else {
                        Results::Series(answers[&render(query)].clone())
                    };
                    results.insert(query.ref_id.clone(), result);
                }
                let numbers = match results.remove(&rule.condition).expect("condition") {
                    Results::Numbers(numbers) => numbers,
                    Results::Series(_) => panic!("condition of {} is not numbers", rule.uid),
                };
                if numbers.is_empty() {
                    match rule.no_data_state.as_str() {
                        "KeepLast" => None,
                        "Alerting" => Some(BTreeSet::from([Labels::new()])),
                        "OK" => Some(BTreeSet::new()),
                        other => panic!("noDataState {other}"),
                    }
                } else {
                    Some(
                        numbers
                            .into_iter()
                            .filter(|(_, value)| *value != 0.0 && !value.is_nan())
                            .map(|(labels, _)| labels)
                            .collect(),
                    )
                }
            };
            let Some(firing) = firing else { continue };
            let for_ms = humantime::parse_duration(&rule.for_duration).unwrap().as_millis() as i64;
            let timeline = timelines.entry(rule.uid.clone()).or_default();
            let mut changes: Vec<(Labels, State)> = Vec::new();
            for (labels, (state, _)) in rule_states.iter_mut() {
                if !firing.contains(labels) && *state != State::Normal {
                    *state = State::Normal;
                    changes.push((labels.clone(), State::Normal));
                }
            }
            for labels in firing {
                let entry = rule_states.entry(labels.clone()).or_insert((State::Normal, now));
                if entry.0 == State::Normal {
                    entry.1 = now;
                }
                let state = if now - entry.1 >= for_ms { State::Alerting } else { State::Pending };
                if entry.0 != state {
                    entry.0 = state;
                    changes.push((labels, state));
                }
            }
            for (labels, state) in changes {
                timeline.entry(labels).or_default().push((now, state));
            }
        }
        now += MINUTE;
    }
    timelines
}

/// Maximal intervals [start, end] (minutes) in which an instance's model condition is on.
fn intervals(on: &[(i64, bool)]) -> Vec<(i64, i64)> {
    let mut result = Vec::new();
    let mut start = None;
    let mut last = 0;
    for (time, value) in on {
        match (value, start) {
            (true, None) => start = Some(*time),
            (false, Some(begin)) => {
                result.push((begin, last));
                start = None;
            }
            _ => {}
        }
        last = *time;
    }
    if let Some(begin) = start {
        result.push((begin, last));
    }
    result
}

#[derive(Debug, Default, Clone)]
struct Tally {
    pages: usize,
    false_pages: Vec<String>,
    missed: Vec<String>,
    flaps: Vec<String>,
    outside_hours: Vec<String>,
    resolved_in_outage: Vec<String>,
    true_conditions: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_over_a_simulated_week_pages_exactly_the_true_conditions_within_opening_hours() {
    let start = at(WEEK_START);
    let options =
        SimOptions { offices: 12, counters: 5, seed: 20, days: 7, ..SimOptions::new(queuewatch::time::Millis(start)) };
    let week = OfficeWeek::simulate(&options);
    let day = |n: i64, time: &str| at(&format!("2026-11-{:02}T{time}:00+07:00", 23 + n));
    let outages =
        Outages { influxdb: (day(1, "10:00"), 10), queuewatch: (day(2, "11:00"), 5), broker: (day(3, "13:00"), 5) };

    // The offices' events, replayed with their hours, and the daemon's own rows.
    let influx = Influx1::start();
    let config = format!("[sla]\nwait_target = \"15m\"\nservice_target = \"20m\"\n{}", week.offices_toml);
    common::replay_into(&influx, "week", &config, &week.events_ndjson).await;
    let observed = observe(&week.events_ndjson);
    // Until Sunday 23:00: every office has closed its last day, and the next morning's
    // heartbeats (which end the replay) are not yet due. Without events, a replay writes no
    // rows, where a running daemon's wall clock would (the offices opening on Monday).
    let end = start + 6 * 86_400_000 + 17 * 60 * MINUTE;
    let mut heartbeats = String::new();
    let mut minute = start.div_euclid(MINUTE) * MINUTE;
    while minute <= end {
        if !Outages::during(outages.queuewatch, minute) {
            let delivered_until = outages.office_data_until(minute);
            let index = observed.event_times.partition_point(|time| *time <= delivered_until);
            let newest = observed.event_times.get(index.wrapping_sub(1)).copied().unwrap_or(start);
            let age_s = (minute - newest).max(0) as f64 / 1000.0;
            heartbeats.push_str(&format!(
                "queuewatch,instance=queuewatch accepted=0i,rejected=0i,points_written=0i,points_refused=0i,\
                 open_tickets=0i,newest_event_age_s={age_s},uptime_s=60,mqtt_sessions_lost=0i {}\n",
                minute * 1_000_000
            ));
        }
        minute += MINUTE;
    }
    load_line_protocol(&influx, "week", &heartbeats).await;

    let parsed = Config::parse(&week.offices_toml).unwrap();
    let regions: BTreeMap<String, String> = parsed
        .offices
        .iter()
        .map(|(office, config)| (office.as_str().to_string(), config.region.clone().unwrap_or_default()))
        .collect();
    let model = Model { observed, offices: parsed.offices, regions, outages };

    // QUEUEWATCH_WEEK_RULES=uid,uid evaluates only those rules and prints every finding (to
    // study one rule without the whole week's queries).
    let only: Option<Vec<String>> =
        std::env::var("QUEUEWATCH_WEEK_RULES").ok().map(|list| list.split(',').map(str::to_owned).collect());
    let rules: Vec<Rule> =
        all_rules().into_iter().filter(|rule| only.as_ref().is_none_or(|only| only.contains(&rule.uid))).collect();
    let shown = if only.is_some() { usize::MAX } else { 5 };
    // QUEUEWATCH_WEEK_DAYS=N evaluates the first N days only (with QUEUEWATCH_WEEK_RULES).
    let end = match std::env::var("QUEUEWATCH_WEEK_DAYS").ok().and_then(|days| days.parse::<i64>().ok()) {
        Some(days) if only.is_some() => end.min(start + days * 86_400_000),
        _ => end,
    };
    let from = start + 60 * MINUTE;
    let timelines = evaluate_week(&influx, "week", &rules, &model.outages, from, end).await;

    let mut stopped_pages = 0;
    let mut table = String::from(
        "rule | true conditions | pages | false pages | missed | flaps | outside hours | resolved in outage\n",
    );
    let mut failures = Vec::new();
    for rule in &rules {
        let for_ms = humantime::parse_duration(&rule.for_duration).unwrap().as_millis() as i64;
        let timeline = timelines.get(&rule.uid).cloned().unwrap_or_default();
        // The model, minute by minute, per instance.
        let mut minutes = Vec::new();
        let mut conditions = Vec::new();
        let mut minute = from;
        while minute <= end {
            minutes.push(minute);
            conditions.push(model.condition(&rule.uid, minute));
            minute += MINUTE;
        }
        let mut model_on: BTreeMap<Labels, Vec<(i64, bool)>> = BTreeMap::new();
        let instances: BTreeSet<Labels> =
            conditions.iter().flatten().cloned().chain(timeline.keys().cloned()).collect();
        for labels in instances {
            let on = minutes.iter().zip(&conditions).map(|(minute, on)| (*minute, on.contains(&labels))).collect();
            model_on.insert(labels, on);
        }
        let mut tally = Tally::default();
        for (labels, on) in &model_on {
            let true_intervals = intervals(on);
            let changes = timeline.get(labels).cloned().unwrap_or_default();
            let pages: Vec<i64> =
                changes.iter().filter(|(_, state)| *state == State::Alerting).map(|(time, _)| *time).collect();
            let resolves: Vec<i64> = changes
                .windows(2)
                .filter(|pair| pair[0].1 == State::Alerting && pair[1].1 == State::Normal)
                .map(|pair| pair[1].0)
                .collect();
            let alerting_at = |time: i64| {
                changes
                    .iter()
                    .take_while(|(at, _)| *at <= time)
                    .last()
                    .is_some_and(|(_, state)| *state == State::Alerting)
            };
            let name = |time: i64| format!("{labels:?} at {}", render_time(time));
            tally.pages += pages.len();
            for page in &pages {
                let justified = true_intervals
                    .iter()
                    .any(|(begin, finish)| *begin <= page - for_ms + TOLERANCE && *finish >= page - TOLERANCE);
                if !justified {
                    // What the model and the rule did around it, to tell a late model from an early rule.
                    let near = |time: i64| (page - 60 * MINUTE..=page + 10 * MINUTE).contains(&time);
                    let model_near: Vec<String> = true_intervals
                        .iter()
                        .filter(|(begin, finish)| near(*begin) || near(*finish))
                        .map(|(begin, finish)| format!("{}..{}", render_time(*begin), render_time(*finish)))
                        .collect();
                    let rule_near: Vec<String> = changes
                        .iter()
                        .filter(|(time, _)| near(*time))
                        .map(|(time, state)| format!("{state:?} {}", render_time(*time)))
                        .collect();
                    tally.false_pages.push(format!("{}; model on {model_near:?}; rule {rule_near:?}", name(*page)));
                }
            }
            for (begin, finish) in &true_intervals {
                if finish - begin < for_ms + 2 * TOLERANCE {
                    continue;
                }
                // While InfluxDB is down no rule is evaluated, and while queuewatch or the
                // broker is down no office row is new: a condition that starts before an outage
                // is due later by the outage's length, one that starts during it is due its
                // `for` after the outage.
                let mut due = begin + for_ms + TOLERANCE + MINUTE;
                for (_, (outage_start, minutes)) in model.outages.windows() {
                    let outage_end = outage_start + minutes * MINUTE;
                    if (*begin - for_ms..due).contains(&outage_start) {
                        due += minutes * MINUTE;
                    } else if (outage_start..outage_end).contains(begin) {
                        due = due.max(outage_end + for_ms + TOLERANCE + MINUTE);
                    }
                }
                // A condition an outage cut shorter than its `for` could not be paged.
                if due > *finish {
                    continue;
                }
                tally.true_conditions += 1;
                if !alerting_at(due) {
                    let near = |time: i64| (begin - 10 * MINUTE..=finish + 10 * MINUTE).contains(&time);
                    let rule_near: Vec<String> = changes
                        .iter()
                        .filter(|(time, _)| near(*time))
                        .map(|(time, state)| format!("{state:?} {}", render_time(*time)))
                        .collect();
                    tally.missed.push(format!("{} until {}; rule {rule_near:?}", name(*begin), render_time(*finish)));
                }
            }
            for resolve in &resolves {
                if let Some(next) = pages.iter().find(|page| **page > *resolve) {
                    let steady =
                        true_intervals.iter().any(|(begin, finish)| *begin <= resolve - TOLERANCE && *finish >= *next);
                    if next - resolve <= 30 * MINUTE && steady {
                        tally.flaps.push(name(*resolve));
                    }
                }
                for (outage, window) in model.outages.windows() {
                    let in_outage = (window.0..window.0 + window.1 * MINUTE + TOLERANCE).contains(resolve);
                    // Still on at the resolve and a tolerance later: it did not end.
                    let on_at = |time: i64| on.iter().any(|(at, value)| *value && *at == time);
                    let condition_ended = !(on_at(*resolve) && on_at(*resolve + TOLERANCE));
                    if in_outage && !condition_ended {
                        tally.resolved_in_outage.push(format!("{} during the {outage} outage", name(*resolve)));
                    }
                }
            }
            for minute in &minutes {
                if alerting_at(*minute) && !model.may_page(labels, *minute) {
                    tally.outside_hours.push(name(*minute));
                    break;
                }
            }
        }
        if rule.uid == "queuewatch-stopped" {
            stopped_pages = tally.pages;
        }
        table.push_str(&format!(
            "{} | {} | {} | {} | {} | {} | {} | {}\n",
            rule.uid,
            tally.true_conditions,
            tally.pages,
            tally.false_pages.len(),
            tally.missed.len(),
            tally.flaps.len(),
            tally.outside_hours.len(),
            tally.resolved_in_outage.len()
        ));
        let exact = !NOT_YET_EXACT.contains(&rule.uid.as_str());
        for (what, list, asserted) in [
            ("false page", &tally.false_pages, exact),
            ("missed", &tally.missed, exact),
            ("flap", &tally.flaps, exact),
            ("outside hours", &tally.outside_hours, true),
            ("resolved in outage", &tally.resolved_in_outage, true),
        ] {
            let lines = list.iter().take(shown).map(|item| format!("{}: {what}: {item}", rule.uid));
            if asserted {
                failures.extend(lines);
            } else {
                lines.for_each(|line| eprintln!("not yet exact: {line}"));
            }
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
    // The week did page: the queuewatch stop and the InfluxDB outage.
    if only.is_none() {
        assert_eq!(stopped_pages, 2, "{table}");
    }
}

/// `at` as `YYYY-MM-DD HH:MM` in Jakarta.
fn render_time(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(7 * 3600).unwrap())
        .format("%Y-%m-%d %H:%M")
        .to_string()
}
