//! `drain`: catching up a backlog. Simulator events are queued in a real
//! Mosquitto (persistence on) for the daemon's persistent session while the
//! daemon is away; then `queuewatch run` starts and the scenario times, from
//! its start, how long until 99.5 % and 100 % of the ticket points, and then
//! every expected point, are queryable in a real InfluxDB 1.x, and checks the
//! result point for point.
//!
//! What must stay true:
//! - The broker holds the whole backlog before the daemon starts (its
//!   `$SYS` store count says so), and the daemon's session is created once,
//!   before the first publish, and never resumed by anyone but the daemon.
//! - The expected points come from the library's pipeline in replay mode on
//!   the same events and config, ended as `queuewatch replay` ends. A live
//!   daemon's office clocks run on with wall time after the last event, so
//!   it may write more time-driven points (gauge rows, breaches) stamped
//!   after an office's last event minus the reorder window; those are counted
//!   apart. Every other point must be expected, with equal fields; the
//!   `office` rows' arrival counts (`accepted`, `rejected`, `clock_ahead`)
//!   follow arrivals in wall time, not event time, and are compared apart.
//! - No flush events are added: the last events of each office wait for the
//!   reorder window in wall time, as they would in production, which is why
//!   99.5 % of the ticket points is reported apart from 100 %.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Args;
use serde_json::Value;

use queuewatch::point::{FieldValue, Point};
use queuewatch::time::Millis;

use crate::input::{replay_points, simulated, InputEnd, SimulatedInput};
use crate::measure::{rss_of, CpuSample};
use crate::publisher::Publisher;
use crate::report::{rate_text, verdict, Report};
use crate::servers::{
    broker_summary, daemon_config, settings_text, BrokerStore, DaemonArgs, Influx, Servers, StoredPoint,
};

/// The backlog queued in the broker while its consumer is away, and how it is
/// watched: what `drain` and `baseline` share.
#[derive(Args)]
pub struct BacklogArgs {
    /// Simulator events queued in the broker.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// Simulated offices.
    #[arg(long, default_value_t = 40)]
    pub offices: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The publisher's QoS 1 messages awaiting PUBACK at once.
    #[arg(long, default_value_t = 1_000)]
    pub inflight: u16,
    /// How often InfluxDB is asked for the count of points, in ms.
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
    /// Gives up after this many seconds from the consumer's start.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(Args)]
pub struct DrainArgs {
    #[command(flatten)]
    backlog: BacklogArgs,
    /// Kills the daemon with SIGKILL this many seconds after its start and
    /// starts it again at once on the same state folder (recovery under load).
    #[arg(long, value_name = "SECONDS")]
    kill_after_s: Option<f64>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// The share of the ticket points reported apart from all of them: the rest
/// waits for the reorder window.
const MOST_TICKET_POINTS: f64 = 0.995;
/// A Node-RED flow (mqtt-in, a pairing function, influxdb batch) drained the
/// same kind of backlog at 8,000 to 11,000 events/s on this kind of machine;
/// the target is five times that, shown against both ends.
const NODE_RED_EVENTS_PER_S: [f64; 2] = [8_000.0, 11_000.0];
const TARGET_TIMES_NODE_RED: f64 = 5.0;
/// queuewatch's own CPU per event during the drain.
const TARGET_CPU_US_PER_EVENT: f64 = 5.0;
/// How often progress goes to standard error.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Between two point-for-point checks that found points missing.
const RECHECK_AFTER: Duration = Duration::from_secs(2);

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let SimulatedInput { messages, start, last_at_by_office, .. } =
        simulated(args.backlog.events, args.backlog.offices, args.backlog.seed)?;
    let events = messages.len() as u64;
    let config = daemon_config(&args.daemon.set)?;
    let window_ms = config.tracking.reorder_window.as_millis() as i64;
    let expected = Expected::new(replay_points(&config, &messages, InputEnd::Drain)?)?;
    let ticket_keys = expected.count("ticket");
    ensure!(ticket_keys > 0, "the input closes no ticket: use more events");
    let most_ticket_points = (MOST_TICKET_POINTS * ticket_keys as f64).ceil() as u64;
    let held_ticket_points = expected.within_window_of_end("ticket", &last_at_by_office, window_ms);
    eprintln!(
        "drain: {events} events, expecting {} points ({} distinct), {ticket_keys} of them ticket points",
        expected.points, expected.distinct
    );

    // The backlog: the daemon's session first, then every event, with the daemon away.
    let mut servers = Servers::start_with("drain", &args.daemon, BrokerStore::Persistent).await?;
    let (queued_s, stored) = queue_backlog(&servers, messages, &args.backlog).await?;
    eprintln!("drain: {events} events queued in {queued_s:.1} s; the broker holds {stored} messages");

    // The drain, timed from the daemon's start.
    let goal = Goal {
        expected: &expected,
        last_at_by_office: &last_at_by_office,
        window_ms,
        timeout_s: args.backlog.timeout_s,
        poll_ms: args.backlog.poll_ms,
        kill_after_s: args.kill_after_s,
    };
    let CatchUp {
        cpu_before, connected_s, milestones, comparison, last_ticket_count, killed, end_sample, summary, ..
    } = catch_up(&mut servers, &args.daemon, &goal).await?;
    let started = cpu_before.at;

    let mut report = Report::new("drain");
    report.line(
        "input",
        format!(
            "{events} simulator events (seed {}, {} offices, from {start}), queued in Mosquitto (persistence on, \
             max_queued_messages large enough, the daemon's persistent session created first) by a QoS 1 publisher \
             in {queued_s:.1} s; the broker's store then held {stored} messages",
            args.backlog.seed, args.backlog.offices
        ),
    );
    report.line(
        "path",
        format!(
            "Mosquitto (max_inflight_messages {}) -> queuewatch run ({}, started after the backlog was queued, \
             connected after {connected_s:.2} s) -> InfluxDB 1.x; counts polled every {} ms",
            args.daemon.broker_inflight,
            settings_text(&args.daemon.set),
            args.backlog.poll_ms
        ),
    );
    report.line(
        "expected points",
        format!(
            "{} ({:.2} per event; in-process pipeline in replay mode on the same events and config, ended as \
             `queuewatch replay` ends): {}",
            expected.distinct,
            expected.distinct as f64 / events as f64,
            expected.by_measurement_text()
        ),
    );
    let seconds = |at: Instant| at.duration_since(started).as_secs_f64();
    let most_s = milestones.most_tickets.as_ref().map(|sample| seconds(sample.at));
    report.line(
        "99.5 % of the ticket points",
        match most_s {
            Some(most_s) => {
                let rate = events as f64 / most_s;
                let against: Vec<String> = NODE_RED_EVENTS_PER_S
                    .iter()
                    .map(|node_red| {
                        let target = TARGET_TIMES_NODE_RED * node_red;
                        format!(
                            ">= {} (5x {node_red}): {} ({:.1}x Node-RED)",
                            rate_text(target),
                            verdict(rate >= target, rate / target),
                            rate / node_red
                        )
                    })
                    .collect();
                format!(
                    "{most_ticket_points} of {ticket_keys} queryable {most_s:.1} s after the daemon's start: {} \
                     [target 5x a Node-RED flow's 8,000-11,000 events/s: {}]",
                    rate_text(rate),
                    against.join("; ")
                )
            }
            None => format!("not reached within {} s", args.backlog.timeout_s),
        },
    );
    report.line(
        "all ticket points",
        match milestones.all_tickets {
            Some(at) => format!(
                "{ticket_keys} queryable after {:.1} s: {} ({held_ticket_points} of them stamped within the {} ms \
                 reorder window before their office's last event, which waits for that window in wall time)",
                seconds(at),
                rate_text(events as f64 / seconds(at)),
                window_ms
            ),
            None => format!("not reached within {} s: {last_ticket_count} queryable", args.backlog.timeout_s),
        },
    );
    report.line(
        "everything written",
        match &milestones.everything {
            Some(sample) => format!(
                "every expected point of every measurement queryable after {:.1} s: {}",
                seconds(sample.at),
                rate_text(events as f64 / seconds(sample.at))
            ),
            None => format!("not reached within {} s", args.backlog.timeout_s),
        },
    );
    report.line("point for point", comparison.text(&expected));
    if let Some(most) = &milestones.most_tickets {
        report.line("CPU, daemon start until 99.5 % of the ticket points", most.shares_since(&cpu_before));
    }
    report.line("CPU, daemon start until everything written", end_sample.shares_since(&cpu_before));
    let daemon_us_per_event = end_sample.used_since(&cpu_before, "queuewatch") * 1e6 / events as f64;
    report.line(
        "queuewatch CPU per event",
        format!(
            "{daemon_us_per_event:.1} µs (intake with acknowledgements, decode, track, encode, HTTP; its whole run \
             until everything written, startup included) [target <= {TARGET_CPU_US_PER_EVENT} µs: {}]",
            verdict(daemon_us_per_event <= TARGET_CPU_US_PER_EVENT, daemon_us_per_event / TARGET_CPU_US_PER_EVENT)
        ),
    );
    if let Some((used_s, restart_s, recovery)) = &killed {
        report.line(
            "killed",
            format!(
                "SIGKILL after {} s (it had used {used_s:.2} s of CPU, not in the figures above), started again at once on the same state folder, connected {restart_s:.2} s later: {recovery}",
                args.kill_after_s.unwrap_or_default()
            ),
        );
    }
    report.line("daemon summary", summary);
    report.line("broker log", broker_summary(&servers.broker_warnings()));
    report.line("reproduce", reproduce_command(&args));
    report.print();

    ensure!(
        milestones.everything.is_some(),
        "not every expected point was queryable within {} s",
        args.backlog.timeout_s
    );
    ensure!(
        comparison.is_exact(),
        "InfluxDB does not hold exactly the expected points: {}",
        comparison.text(&expected)
    );
    Ok(())
}

/// What the daemon's catch-up must reach, and how it is watched.
pub struct Goal<'a> {
    pub expected: &'a Expected,
    pub last_at_by_office: &'a BTreeMap<String, Millis>,
    pub window_ms: i64,
    pub timeout_s: u64,
    pub poll_ms: u64,
    /// Kills the daemon this many seconds after its start and starts it again.
    pub kill_after_s: Option<f64>,
}

/// What one catch-up by `queuewatch run` measured.
pub struct CatchUp {
    /// CPU of every process at the daemon's start: the clock starts here.
    pub cpu_before: CpuSample,
    pub connected_s: f64,
    pub milestones: Milestones,
    pub comparison: Comparison,
    pub last_ticket_count: u64,
    /// (CPU seconds the killed daemon had used, seconds to reconnect, its recovery line).
    pub killed: Option<(f64, f64, String)>,
    /// At everything written, or at the end of the watch.
    pub end_sample: CpuSample,
    /// The daemon's peak resident memory (VmHWM), read before it was stopped.
    pub rss_peak_bytes: Option<u64>,
    /// The daemon's exit and closing summary.
    pub summary: String,
}

/// Starts the daemon on the backlog queued before and watches InfluxDB
/// until every expected point is there (checked point for point) or the
/// timeout passes; then stops the daemon.
pub async fn catch_up(servers: &mut Servers, daemon: &DaemonArgs, goal: &Goal<'_>) -> anyhow::Result<CatchUp> {
    let expected = goal.expected;
    let ticket_keys = expected.count("ticket");
    let most_ticket_points = (MOST_TICKET_POINTS * ticket_keys as f64).ceil() as u64;
    let cpu_before = servers.cpu();
    let started = cpu_before.at;
    servers.spawn_daemon(daemon).await?;
    let connected_s = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(goal.timeout_s);
    let counted = expected.counted_fields()?;
    let ticket_index = counted.iter().position(|(measurement, _)| measurement == "ticket").context("no ticket")?;
    let mut milestones = Milestones::default();
    let mut comparison = None;
    let mut next_check = started;
    let mut next_progress = started + PROGRESS_EVERY;
    let mut last_counts = vec![0; counted.len()];
    let mut killed: Option<(f64, f64, String)> = None;
    let mut rss_peak_bytes = None;
    loop {
        if let Some(kill_after_s) = goal.kill_after_s.filter(|_| killed.is_none()) {
            if started.elapsed().as_secs_f64() >= kill_after_s {
                let used = servers.kill_daemon();
                let restarted = Instant::now();
                servers.spawn_daemon(daemon).await?;
                let recovery = servers.daemon_recovery_line().unwrap_or_else(|| "(no recovery line)".into());
                eprintln!("drain: killed after {kill_after_s} s; restarted: {recovery}");
                killed = Some((used, restarted.elapsed().as_secs_f64(), recovery));
            }
        }
        match servers.influx.counts(&counted).await {
            Ok(counts) => last_counts = counts,
            Err(error) => eprintln!("drain: count query failed: {error:#}"),
        }
        let now = Instant::now();
        let tickets = last_counts[ticket_index];
        if milestones.first_ticket.is_none() && tickets > 0 {
            milestones.first_ticket = Some(now);
        }
        if milestones.most_tickets.is_none() && tickets >= most_ticket_points {
            milestones.most_tickets = Some(servers.cpu());
        }
        if milestones.all_tickets.is_none() && tickets >= ticket_keys {
            milestones.all_tickets = Some(now);
        }
        let every_count_reached =
            counted.iter().zip(&last_counts).all(|((measurement, _), count)| *count >= expected.count(measurement));
        if every_count_reached && now >= next_check {
            // Reached at `at`, if the check finds nothing missing.
            let at = servers.cpu();
            let outcome = compare(&servers.influx, expected, goal.last_at_by_office, goal.window_ms).await?;
            if outcome.missing_total() == 0 {
                milestones.everything = Some(at);
                comparison = Some(outcome);
                break;
            }
            eprintln!("drain: {} expected points still missing; checking again", outcome.missing_total());
            next_check = Instant::now() + RECHECK_AFTER;
            comparison = Some(outcome);
        }
        if now >= next_progress {
            eprintln!(
                "drain: {:.1} s: {tickets} of {ticket_keys} ticket points queryable; {} of {} points",
                now.duration_since(started).as_secs_f64(),
                last_counts.iter().sum::<u64>(),
                expected.distinct
            );
            next_progress = now + PROGRESS_EVERY;
        }
        if now >= deadline {
            if comparison.is_none() {
                comparison = Some(compare(&servers.influx, expected, goal.last_at_by_office, goal.window_ms).await?);
            }
            break;
        }
        if let Some(pid) = servers.daemon_pid() {
            rss_peak_bytes = rss_of(&pid.to_string()).ok().map(|(_, peak)| peak).or(rss_peak_bytes);
        }
        tokio::time::sleep(Duration::from_millis(goal.poll_ms)).await;
    }
    let end_sample = milestones.everything.as_ref().map_or_else(|| servers.cpu(), clone_sample);
    servers.ensure_daemon_alive()?;
    if let Some(pid) = servers.daemon_pid() {
        rss_peak_bytes = rss_of(&pid.to_string()).ok().map(|(_, peak)| peak).or(rss_peak_bytes);
    }
    let summary = servers.stop_daemon().await?;
    let comparison = comparison.context("no comparison was made")?;
    Ok(CatchUp {
        cpu_before,
        connected_s,
        milestones,
        comparison,
        last_ticket_count: last_counts[ticket_index],
        killed,
        end_sample,
        rss_peak_bytes,
        summary,
    })
}

/// Creates the daemon's session, publishes `messages` into it with the
/// consumer away, and waits until the broker acknowledged and stored them
/// all: the seconds that took and the broker's store count.
pub async fn queue_backlog(
    servers: &Servers,
    messages: Vec<(String, String)>,
    backlog: &BacklogArgs,
) -> anyhow::Result<(f64, u64)> {
    let events = messages.len() as u64;
    servers.create_daemon_session().await?;
    let publisher = Publisher::connect(servers.mqtt_port(), "queuewatch-load-publisher", backlog.inflight).await?;
    let publish_started = Instant::now();
    for (topic, payload) in messages {
        publisher.publish(topic, payload).await?;
    }
    let acked_at = publisher.wait_acked(events, publish_started + Duration::from_secs(backlog.timeout_s)).await;
    publisher.close().await;
    let queued_s = acked_at
        .with_context(|| format!("the broker did not acknowledge all {events} events within {} s", backlog.timeout_s))?
        .duration_since(publish_started)
        .as_secs_f64();
    let stored = wait_until_stored(servers, events).await?;
    Ok((queued_s, stored))
}

/// Polls the broker's store count until it holds `events` messages (its
/// `$SYS` report lags up to a second), at most 10 times.
async fn wait_until_stored(servers: &Servers, events: u64) -> anyhow::Result<u64> {
    let mut stored = 0;
    for _ in 0..10 {
        stored = servers.broker_stored_messages().await?;
        if stored >= events {
            return Ok(stored);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the broker holds {stored} messages, not the {events} events queued for the daemon")
}

fn clone_sample(sample: &CpuSample) -> CpuSample {
    CpuSample { at: sample.at, seconds: sample.seconds.clone() }
}

/// When each milestone was reached, with the CPU used by then.
#[derive(Default)]
pub struct Milestones {
    /// The first ticket point queryable.
    pub first_ticket: Option<Instant>,
    pub most_tickets: Option<CpuSample>,
    pub all_tickets: Option<Instant>,
    pub everything: Option<CpuSample>,
}

/// A point's identity in InfluxDB: measurement, tags, time.
type PointKey = (String, BTreeMap<String, String>, i64);

/// The expected points, by identity; a later point with the same identity
/// replaces an earlier one, as in InfluxDB.
pub struct Expected {
    points: usize,
    distinct: usize,
    by_key: HashMap<PointKey, Vec<(&'static str, FieldValue)>>,
    by_measurement: BTreeMap<String, u64>,
    /// The sum of `accepted` over the expected `office` rows.
    accepted: i64,
}

impl Expected {
    pub fn new(points: Vec<Point>) -> anyhow::Result<Expected> {
        let count = points.len();
        let mut by_key = HashMap::with_capacity(count);
        for point in points {
            let tags = point
                .tags
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            by_key.insert((point.measurement.to_string(), tags, point.time_ns), point.fields);
        }
        let mut by_measurement = BTreeMap::new();
        let mut accepted = 0;
        for ((measurement, _, _), fields) in &by_key {
            *by_measurement.entry(measurement.clone()).or_default() += 1;
            if measurement == "office" {
                accepted += fields
                    .iter()
                    .find_map(|(name, value)| match (*name, value) {
                        ("accepted", FieldValue::Int(count)) => Some(*count),
                        _ => None,
                    })
                    .unwrap_or(0);
            }
        }
        Ok(Expected { points: count, distinct: by_key.len(), by_key, by_measurement, accepted })
    }

    /// The expected points of `measurement`: tags (empty ones left out), time, fields.
    pub fn points_of<'a>(
        &'a self,
        measurement: &'a str,
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, i64, &'a [(&'static str, FieldValue)])> + 'a {
        self.by_key
            .iter()
            .filter(move |((name, _, _), _)| name == measurement)
            .map(|((_, tags, time_ns), fields)| (tags, *time_ns, fields.as_slice()))
    }

    /// Distinct expected points of `measurement`.
    pub fn count(&self, measurement: &str) -> u64 {
        self.by_measurement.get(measurement).copied().unwrap_or(0)
    }

    /// For each measurement, a field every expected point of it carries:
    /// what `COUNT` counts points by.
    fn counted_fields(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut common: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for ((measurement, _, _), fields) in &self.by_key {
            let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
            common.entry(measurement).and_modify(|shared| shared.retain(|name| names.contains(name))).or_insert(names);
        }
        common
            .into_iter()
            .map(|(measurement, mut shared)| {
                shared.sort_unstable();
                let field = shared.first().with_context(|| format!("no field is in every `{measurement}` point"))?;
                Ok((measurement.to_string(), field.to_string()))
            })
            .collect()
    }

    /// Expected points of `measurement` stamped less than the reorder window
    /// before their office's last event: a live daemon releases their events
    /// only once that window has passed in wall time.
    fn within_window_of_end(
        &self,
        measurement: &str,
        last_at_by_office: &BTreeMap<String, Millis>,
        window_ms: i64,
    ) -> u64 {
        let held_from_ns = |office: &str| {
            last_at_by_office
                .get(office)
                .map_or(i64::MAX, |last_at| last_at.minus_ms(window_ms).0.saturating_mul(1_000_000))
        };
        self.by_key
            .keys()
            .filter(|(name, tags, time_ns)| {
                name == measurement && tags.get("office").is_some_and(|office| *time_ns > held_from_ns(office))
            })
            .count() as u64
    }

    fn by_measurement_text(&self) -> String {
        self.by_measurement.iter().map(|(name, count)| format!("{name} {count}")).collect::<Vec<_>>().join(", ")
    }
}

/// What InfluxDB holds against what was expected, per measurement.
#[derive(Default)]
pub struct Comparison {
    /// Expected and present with equal fields.
    pub equal: BTreeMap<String, u64>,
    missing: BTreeMap<String, u64>,
    /// Present with other fields than expected; the first one, for the report.
    differing: BTreeMap<String, u64>,
    first_difference: Option<String>,
    /// Not expected, stamped at or before the office's last event minus the reorder window.
    unexpected: BTreeMap<String, u64>,
    first_unexpected: Option<String>,
    /// Not expected, stamped later: the office clock ran on with wall time.
    after_input: BTreeMap<String, u64>,
    /// The daemon's own `queuewatch` rows.
    daemon_rows: u64,
    /// Expected points present with equal fields but for arrival counts.
    arrivals_differing: BTreeMap<String, u64>,
    /// The sum of `accepted` over every stored `office` row.
    stored_accepted: i64,
}

impl Comparison {
    fn missing_total(&self) -> u64 {
        self.missing.values().sum()
    }

    pub fn is_exact(&self) -> bool {
        self.missing_total() == 0 && self.differing.is_empty() && self.unexpected.is_empty()
    }

    pub fn text(&self, expected: &Expected) -> String {
        let listed = |counts: &BTreeMap<String, u64>| {
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.iter().map(|(name, count)| format!("{name} {count}")).collect::<Vec<_>>().join(", ")
            }
        };
        let mut text = format!(
            "{} of {} expected points present with equal fields, arrival counts aside ({}); missing: {}; with other fields: {}; \
             unexpected: {}; nothing doubled: {}",
            self.equal.values().sum::<u64>(),
            expected.distinct,
            if self.is_exact() { "exact" } else { "NOT EXACT" },
            listed(&self.missing),
            listed(&self.differing),
            listed(&self.unexpected),
            if expected.points == expected.distinct {
                "every expected point has its own series and time".to_string()
            } else {
                format!("{} expected points share a series and time with another", expected.points - expected.distinct)
            },
        );
        text.push_str(&format!(
            "; arrival counts ({}, which follow arrivals, not event time) differ on: {} (sum of `accepted` over the \
             stored `office` rows {}, over the expected ones {})",
            ARRIVAL_FIELDS
                .iter()
                .map(|(measurement, field)| format!("{measurement}.{field}"))
                .collect::<Vec<_>>()
                .join(", "),
            listed(&self.arrivals_differing),
            self.stored_accepted,
            expected.accepted
        ));
        text.push_str(&format!(
            "; besides, stamped after an office's last event minus the reorder window (its clock ran on with wall \
             time): {}; the daemon's own `queuewatch` rows: {}",
            listed(&self.after_input),
            self.daemon_rows
        ));
        if let Some(first) = &self.first_difference {
            text.push_str(&format!("; first with other fields: {first}"));
        }
        if let Some(first) = &self.first_unexpected {
            text.push_str(&format!("; first unexpected: {first}"));
        }
        text
    }
}

/// Reads every point of every expected measurement, office by office (the
/// input's offices, any other office InfluxDB knows, and points without an
/// office), and compares it with the expected ones.
async fn compare(
    influx: &Influx,
    expected: &Expected,
    last_at_by_office: &BTreeMap<String, Millis>,
    window_ms: i64,
) -> anyhow::Result<Comparison> {
    let mut comparison = Comparison::default();
    let mut offices: BTreeMap<String, i64> = last_at_by_office
        .iter()
        .map(|(office, last_at)| (office.clone(), last_at.minus_ms(window_ms).0.saturating_mul(1_000_000)))
        .collect();
    // Offices outside the input, and no office at all: nothing there is expected.
    for office in influx.tag_values("office").await?.into_iter().chain([String::new()]) {
        offices.entry(office).or_insert(i64::MAX);
    }
    for measurement in expected.by_measurement.keys() {
        for (office, input_end_ns) in &offices {
            let influxql = format!(
                "SELECT * FROM \"{measurement}\" WHERE \"office\" = '{}' GROUP BY *",
                office.replace('\\', "\\\\").replace('\'', "\\'")
            );
            for stored in influx.points(&influxql).await? {
                compare_one(&mut comparison, expected, stored, *input_end_ns);
            }
        }
    }
    comparison.daemon_rows = influx.counts(&[("queuewatch".to_string(), "uptime_s".to_string())]).await?[0];
    for (measurement, count) in &expected.by_measurement {
        let found = comparison.equal.get(measurement).copied().unwrap_or(0)
            + comparison.differing.get(measurement).copied().unwrap_or(0);
        if found < *count {
            comparison.missing.insert(measurement.clone(), count - found);
        }
    }
    Ok(comparison)
}

/// Fields that count arrivals, not events in event time (docs/metrics.md,
/// "Measurements `queue` and `office`"): a live run and a replay may put an event's arrival on
/// neighbouring rows, so they are compared apart.
const ARRIVAL_FIELDS: [(&str, &str); 3] = [("office", "accepted"), ("office", "rejected"), ("office", "clock_ahead")];

fn is_arrival_field(measurement: &str, field: &str) -> bool {
    ARRIVAL_FIELDS.contains(&(measurement, field))
}

fn compare_one(comparison: &mut Comparison, expected: &Expected, stored: StoredPoint, input_end_ns: i64) {
    let StoredPoint { measurement, tags, fields, time_ns } = stored;
    if measurement == "office" {
        comparison.stored_accepted += fields.get("accepted").and_then(Value::as_i64).unwrap_or(0);
    }
    let key = (measurement, tags, time_ns);
    match expected.by_key.get(&key) {
        Some(expected_fields) => {
            let field_equal = |name: &str, value: &FieldValue| fields.get(name).is_some_and(|cell| same(value, cell));
            let same_names = expected_fields.len() == fields.len()
                && expected_fields.iter().all(|(name, _)| fields.contains_key(*name));
            let event_time_equal = same_names
                && expected_fields
                    .iter()
                    .filter(|(name, _)| !is_arrival_field(&key.0, name))
                    .all(|(name, value)| field_equal(name, value));
            let arrivals_equal = expected_fields
                .iter()
                .filter(|(name, _)| is_arrival_field(&key.0, name))
                .all(|(name, value)| field_equal(name, value));
            if event_time_equal {
                *comparison.equal.entry(key.0.clone()).or_default() += 1;
                if !arrivals_equal {
                    *comparison.arrivals_differing.entry(key.0).or_default() += 1;
                }
            } else {
                if comparison.first_difference.is_none() {
                    comparison.first_difference = Some(format!(
                        "{} {:?} at {}: expected {expected_fields:?}, stored {fields:?}",
                        key.0, key.1, key.2
                    ));
                }
                *comparison.differing.entry(key.0).or_default() += 1;
            }
        }
        None if key.2 >= input_end_ns => *comparison.after_input.entry(key.0).or_default() += 1,
        None => {
            if comparison.first_unexpected.is_none() {
                comparison.first_unexpected = Some(format!("{} {:?} at {}: {fields:?}", key.0, key.1, key.2));
            }
            *comparison.unexpected.entry(key.0).or_default() += 1;
        }
    }
}

/// Whether InfluxDB's JSON value is the field value written.
fn same(written: &FieldValue, stored: &Value) -> bool {
    match written {
        FieldValue::Int(value) => stored.as_i64() == Some(*value),
        FieldValue::Float(value) => stored.as_f64() == Some(*value),
        FieldValue::Str(value) => stored.as_str() == Some(value.as_str()),
    }
}

/// The command line that reproduces this run's figures.
fn reproduce_command(args: &DrainArgs) -> String {
    let mut command = format!(
        "target/release/queuewatch-load drain --events {} --offices {} --seed {}",
        args.backlog.events, args.backlog.offices, args.backlog.seed
    );
    if let Some(kill_after_s) = args.kill_after_s {
        command.push_str(&format!(" --kill-after-s {kill_after_s}"));
    }
    for setting in &args.daemon.set {
        command.push_str(&format!(" --set '{setting}'"));
    }
    command
}
