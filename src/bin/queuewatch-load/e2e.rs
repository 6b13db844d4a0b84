//! `e2e`: events per second from a QoS 1 publisher through a real Mosquitto
//! and `queuewatch run` into a real InfluxDB 1.x, checking that nothing is lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Args;

use queuewatch::config::Config;

use crate::input::{replay_points, simulated, InputEnd, SimulatedInput};
use crate::publisher::Publisher;
use crate::report::{rate_text, verdict, Report};
use crate::servers::{broker_summary, daemon_config, settings_text, DaemonArgs, Influx, Servers};

#[derive(Args)]
pub struct E2eArgs {
    /// Simulator events published.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Simulated offices.
    #[arg(long, default_value_t = 50)]
    offices: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The publisher's QoS 1 messages awaiting PUBACK at once.
    #[arg(long, default_value_t = 1_000)]
    inflight: u16,
    /// How often InfluxDB is asked for the count of `ticket` points, in ms.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Gives up after this many seconds from the first publish.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[command(flatten)]
    daemon: DaemonArgs,
}

pub async fn e2e(args: E2eArgs) -> anyhow::Result<()> {
    let SimulatedInput { mut messages, start, last_at, last_at_by_office } =
        simulated(args.events, args.offices, args.seed)?;
    let events = messages.len();
    let office_names: Vec<String> = last_at_by_office.into_keys().collect();

    // The tail, per office: a sentinel ticket (issued, finished) after the
    // last event, then a heartbeat past it + the reorder window. The heartbeat
    // moves the office clock beyond the window, so the daemon releases what it
    // holds at once instead of 10 s of wall time later; and since the daemon
    // takes messages in order, the sentinels' points show that every event
    // before them has been processed (counting ticket points alone would stop
    // early when the last events close no ticket, e.g. overnight heartbeats).
    let config = daemon_config(&args.daemon.set)?;
    let window_ms = config.tracking.reorder_window.as_millis() as i64;
    let sentinel_ts = last_at.plus_ms(1_000);
    let flush_ts = sentinel_ts.plus_ms(window_ms + 1_000);
    for office in &office_names {
        let topic = format!("queue/{office}/events");
        let tail = [
            format!(
                r#"{{"type":"issued","ts":{},"office":"{office}","ticket":"LOAD-END","service":"load","id":"{office}-load-issued"}}"#,
                sentinel_ts.0
            ),
            format!(
                r#"{{"type":"finished","ts":{},"office":"{office}","ticket":"LOAD-END","counter":"load","id":"{office}-load-finished"}}"#,
                sentinel_ts.0 + 1
            ),
            format!(r#"{{"type":"heartbeat","ts":{},"office":"{office}","id":"{office}-load-flush"}}"#, flush_ts.0),
        ];
        messages.extend(tail.into_iter().map(|payload| (topic.clone(), payload)));
    }

    // What the daemon must write: the same pipeline, in process.
    let expected = expected_points(&config, &messages)?;
    eprintln!(
        "e2e: {events} events (+{} sentinel events), expecting {} ticket points ({} distinct series+time), {} points in all",
        3 * office_names.len(),
        expected.ticket_points,
        expected.ticket_keys,
        expected.all_points
    );

    let mut servers = Servers::start("e2e", &args.daemon).await?;
    servers.start_daemon(&args.daemon).await?;
    let publisher = Publisher::connect(servers.mqtt_port(), "queuewatch-load-publisher", args.inflight).await?;

    let total_messages = messages.len() as u64;
    let cpu_before = servers.cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let poller = {
        let influx = servers.influx.clone();
        let sentinels = office_names.len() as u64;
        let poll = Duration::from_millis(args.poll_ms);
        let acked = publisher.acked.clone();
        tokio::spawn(async move {
            wait_for_sentinels(&influx, sentinels, poll, deadline, started, acked, total_messages).await
        })
    };
    for (topic, payload) in messages {
        if Instant::now() > deadline {
            break;
        }
        publisher.publish(topic, payload).await?;
    }
    let queued_s = started.elapsed().as_secs_f64();
    let acked_at = publisher.wait_acked(total_messages, deadline).await;
    let count = poller.await.context("the InfluxDB poller")??;
    // Every earlier point should be written by the time the sentinels' are;
    // if some are not, they get the reorder window and a flush more.
    let expected_keys = expected.ticket_keys as u64;
    let mut queryable = count.last;
    let mut complete_at = count.reached_at.filter(|_| queryable >= expected_keys);
    if count.reached_at.is_some() && complete_at.is_none() {
        let grace = Duration::from_millis(window_ms as u64) + config.influxdb.flush_interval + Duration::from_secs(5);
        let grace_end = Instant::now() + grace;
        while complete_at.is_none() && Instant::now() < grace_end {
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
            if let Ok(now_queryable) = servers.influx.count_ticket_points().await {
                queryable = now_queryable;
                complete_at = (queryable >= expected_keys).then(Instant::now);
            }
        }
    }
    let cpu = servers.cpu().since(&cpu_before);
    let seconds_to = |at: Option<Instant>| at.map(|at| at.duration_since(started).as_secs_f64());
    let (sentinels_s, complete_s) = (seconds_to(count.reached_at), seconds_to(complete_at));
    publisher.close().await;

    servers.ensure_daemon_alive()?;
    let summary = servers.stop_daemon().await?;
    let final_count = servers.influx.count_ticket_points().await.unwrap_or(count.last);

    let mut report = Report::new("e2e");
    report.line(
        "input",
        format!(
            "{events} simulator events (seed {}, {} offices, from {start}), then per office a sentinel ticket \
             (issued, finished at last ts + 1 s) and a heartbeat past it + the reorder window: {total_messages} messages",
            args.seed, args.offices
        ),
    );
    report.line(
        "path",
        format!(
            "rumqttc QoS 1 (inflight {}) -> Mosquitto (max_inflight_messages {}) -> queuewatch run ({}) -> InfluxDB 1.x",
            args.inflight,
            args.daemon.broker_inflight,
            settings_text(&args.daemon.set)
        ),
    );
    report.line(
        "end of the run",
        "when every expected ticket point is queryable; the sentinels' points must be among them, and since the \
         daemon takes messages in order they show that every event has been processed. The final heartbeats move \
         each office clock past the reorder window, so its 10 s are not waited for (without them the last points \
         would come 10 s of wall time later)",
    );
    report.line(
        "publisher",
        format!(
            "all queued after {queued_s:.1} s, all PUBACKed after {} ({})",
            acked_at
                .map_or("never (deadline)".into(), |at| format!("{:.1} s", at.duration_since(started).as_secs_f64())),
            acked_at
                .map_or("-".into(), |at| rate_text(total_messages as f64 / at.duration_since(started).as_secs_f64()))
        ),
    );
    match (sentinels_s, complete_s) {
        (Some(sentinels_s), Some(complete_s)) => {
            let rate = events as f64 / complete_s;
            report.line(
                "end-to-end throughput",
                format!(
                    "{} ({events} simulator events, first publish -> every expected ticket point queryable in \
                     {complete_s:.1} s; the sentinels' after {sentinels_s:.1} s; counted every {} ms) \
                     [target >= 50,000 events/s: {}]",
                    rate_text(rate),
                    args.poll_ms,
                    verdict(rate >= 50_000.0, rate / 50_000.0)
                ),
            );
        }
        (Some(sentinels_s), None) => report.line(
            "end-to-end throughput",
            format!(
                "not measured: the sentinels' points were queryable after {sentinels_s:.1} s, with {} of {expected_keys} \
                 expected ticket points; {queryable} a reorder window and a flush later (the daemon was still running) \
                 [target >= 50,000 events/s: not met]",
                count.last
            ),
        ),
        _ => report.line(
            "end-to-end throughput",
            format!(
                "not reached within {} s: {} of {expected_keys} ticket points queryable, not every sentinel's \
                 [target >= 50,000 events/s: not met]",
                args.timeout_s, count.last
            ),
        ),
    }
    let lost = (expected.ticket_keys as u64).saturating_sub(final_count);
    report.line(
        "ticket points",
        format!(
            "expected {} (in-process Pipeline on the same events), in InfluxDB {final_count} after the daemon stopped: {}",
            expected.ticket_keys,
            if lost == 0 && final_count == expected.ticket_keys as u64 {
                "nothing lost".to_string()
            } else if lost > 0 {
                format!("{lost} LOST")
            } else {
                format!("{} MORE than expected", final_count - expected.ticket_keys as u64)
            }
        ),
    );
    report.line(
        "all points",
        format!(
            "{} expected ({:.2} per event: {})",
            expected.all_points,
            expected.all_points as f64 / events as f64,
            expected
                .by_measurement
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    report.line("CPU, first publish until the end of the run", cpu);
    report.line("daemon summary", summary);
    report.line("broker log", broker_summary(&servers.broker_warnings()));
    report.print();
    ensure!(sentinels_s.is_some(), "the run did not finish within {} s", args.timeout_s);
    ensure!(
        final_count == expected.ticket_keys as u64,
        "InfluxDB holds {final_count} ticket points, {} expected: the daemon's output is not exact under this load",
        expected.ticket_keys
    );
    Ok(())
}

struct Expected {
    ticket_points: usize,
    /// Distinct (series, time) among the ticket points: what InfluxDB can hold.
    ticket_keys: usize,
    all_points: usize,
    by_measurement: BTreeMap<String, usize>,
}

/// The points a replay of `messages` writes before any wall time passes (the
/// daemon's points, held events aside: the flush heartbeats release them).
fn expected_points(config: &Config, messages: &[(String, String)]) -> anyhow::Result<Expected> {
    let mut expected = Expected { ticket_points: 0, ticket_keys: 0, all_points: 0, by_measurement: BTreeMap::new() };
    let mut keys = HashSet::new();
    for point in replay_points(config, messages, InputEnd::Advance)? {
        *expected.by_measurement.entry(point.measurement.to_string()).or_default() += 1;
        expected.all_points += 1;
        if point.measurement == "ticket" {
            expected.ticket_points += 1;
            let line = point.to_line();
            let series = line.split(' ').next().unwrap_or_default();
            keys.insert(format!("{series} {}", point.time_ns));
        }
    }
    expected.ticket_keys = keys.len();
    Ok(expected)
}

struct CountOutcome {
    /// When every sentinel point was queryable.
    reached_at: Option<Instant>,
    /// Ticket points queryable then (or at the deadline).
    last: u64,
}

/// Polls the count of `ticket` points, and of the sentinels' among them,
/// until every sentinel is queryable or the deadline passes.
async fn wait_for_sentinels(
    influx: &Influx,
    sentinels: u64,
    poll: Duration,
    deadline: Instant,
    started: Instant,
    acked: Arc<AtomicU64>,
    published: u64,
) -> anyhow::Result<CountOutcome> {
    let mut last = 0;
    let mut next_progress = started + Duration::from_secs(5);
    loop {
        let mut sentinels_seen = 0;
        match influx.ticket_counts().await {
            Ok((all, sentinel)) => (last, sentinels_seen) = (all, sentinel),
            Err(error) => eprintln!("e2e: count query failed: {error:#}"),
        }
        let now = Instant::now();
        if sentinels_seen >= sentinels {
            return Ok(CountOutcome { reached_at: Some(now), last });
        }
        if now >= next_progress {
            eprintln!(
                "e2e: {:.0} s: {} of {published} messages PUBACKed, {last} ticket points queryable",
                now.duration_since(started).as_secs_f64(),
                acked.load(Ordering::Relaxed)
            );
            next_progress = now + Duration::from_secs(5);
        }
        if now >= deadline {
            return Ok(CountOutcome { reached_at: None, last });
        }
        tokio::time::sleep(poll).await;
    }
}
