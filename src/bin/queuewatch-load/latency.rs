//! `latency`: event-to-point latency at a fixed offered rate, from a
//! generator whose only input is the wall clock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Args;

use queuewatch::time::Millis;

use crate::measure::percentile;
use crate::publisher::Publisher;
use crate::report::{rate_text, verdict, Report};
use crate::servers::{broker_summary, daemon_config, settings_text, DaemonArgs, Influx, Servers};

#[derive(Args)]
pub struct LatencyArgs {
    /// Offered events per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Offices the tickets are spread over.
    #[arg(long, default_value_t = 50)]
    offices: usize,
    /// Time between a ticket's `issued`, `called` and `finished`, in ms (about).
    #[arg(long, default_value_t = 3)]
    gap_ms: u64,
    /// How often InfluxDB is asked for new `ticket` points, in ms.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    #[command(flatten)]
    daemon: DaemonArgs,
}

pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    ensure!(args.rate > 0.0 && args.offices > 0 && args.seconds > 0, "rate, offices and seconds must be above 0");
    let tickets = ((args.rate * args.seconds as f64) / 3.0).floor() as usize;
    ensure!(tickets > 0, "fewer than one ticket at this rate and duration");
    // Slot n carries event kind n % 3 of ticket n / 3 - kind * lag: a ticket's
    // three events are `lag` tickets (about gap_ms) apart.
    let lag = ((args.gap_ms as f64 * args.rate / 3_000.0).round() as usize).max(1);
    let slots = 3 * (tickets + 2 * lag);
    let config = daemon_config(&args.daemon.set)?;
    let window_ms = config.tracking.reorder_window.as_millis() as f64;
    let flush_interval_ms = config.influxdb.flush_interval.as_millis();
    let offices: Vec<String> = (0..args.offices).map(|index| format!("lat-{index:03}")).collect();

    let mut servers = Servers::start("latency", &args.daemon).await?;
    servers.start_daemon(&args.daemon).await?;
    let publisher = Publisher::connect(servers.mqtt_port(), "queuewatch-load-latency", 1_000).await?;

    // finished ts (epoch ms) per ticket, shared with the poller.
    let finished: Arc<Vec<AtomicU64>> = Arc::new((0..tickets).map(|_| AtomicU64::new(0)).collect());
    let publishing_done = Arc::new(AtomicBool::new(false));
    let poll_deadline_after_publishing = Duration::from_millis(window_ms as u64 + 30_000);
    let poller = {
        let influx = servers.influx.clone();
        let finished = finished.clone();
        let done = publishing_done.clone();
        let poll = Duration::from_millis(args.poll_ms);
        let offices = args.offices;
        tokio::spawn(async move {
            poll_latencies(&influx, &finished, offices, poll, &done, poll_deadline_after_publishing).await
        })
    };

    let cpu_before = servers.cpu();
    let started = Instant::now();
    let mut published = 0usize;
    let mut behind_max = Duration::ZERO;
    for slot in 0..slots {
        let due = started + Duration::from_secs_f64(slot as f64 / args.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            behind_max = behind_max.max(now - due);
        }
        let kind = slot % 3;
        let Some(ticket) = (slot / 3).checked_sub(kind * lag).filter(|ticket| *ticket < tickets) else {
            continue;
        };
        let office = &offices[ticket % args.offices];
        let number = ticket / args.offices + 1;
        let counter = number % 6 + 1;
        let ts = Millis::now();
        let payload = match kind {
            0 => format!(
                r#"{{"type":"issued","ts":"{}","office":"{office}","ticket":"A-{number:06}","service":"ktp","id":"{office}-{number}-i"}}"#,
                ts.to_rfc3339()
            ),
            1 => format!(
                r#"{{"type":"called","ts":"{}","office":"{office}","ticket":"A-{number:06}","counter":"loket-{counter}","id":"{office}-{number}-c"}}"#,
                ts.to_rfc3339()
            ),
            _ => format!(
                r#"{{"type":"finished","ts":"{}","office":"{office}","ticket":"A-{number:06}","counter":"loket-{counter}","id":"{office}-{number}-f"}}"#,
                ts.to_rfc3339()
            ),
        };
        publisher.publish(format!("queue/{office}/events"), payload).await?;
        if kind == 2 {
            finished[ticket].store(ts.0 as u64, Ordering::Relaxed);
        }
        published += 1;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let cpu = servers.cpu().since(&cpu_before);
    publishing_done.store(true, Ordering::Relaxed);
    let acked_at = publisher.wait_acked(published as u64, Instant::now() + Duration::from_secs(30)).await;
    let polled = poller.await.context("the InfluxDB poller")??;
    publisher.close().await;
    servers.ensure_daemon_alive()?;
    let summary = servers.stop_daemon().await?;

    let mut latencies: Vec<f64> = polled
        .seen_ms
        .iter()
        .enumerate()
        .filter_map(|(ticket, seen)| {
            seen.map(|seen| seen - (finished[ticket].load(Ordering::Relaxed) as f64 + window_ms))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let seen = latencies.len();
    let mut report = Report::new("latency");
    report.line(
        "input",
        format!(
            "{tickets} tickets (issued, called, finished ~{:.1} ms apart; ts = wall clock at publish) over {} offices: \
             {published} events in {publish_s:.1} s = {} offered (target rate {}), publisher at most {:.0} ms behind schedule, \
             all PUBACKed: {}",
            lag as f64 * 3_000.0 / args.rate,
            args.offices,
            rate_text(published as f64 / publish_s),
            rate_text(args.rate),
            behind_max.as_secs_f64() * 1e3,
            if acked_at.is_some() { "yes" } else { "NO" }
        ),
    );
    report.line(
        "definition",
        format!(
            "latency = first poll that returned the point (its send time) - (finished ts + reorder window {window_ms:.0} ms); \
             daemon: {}; flush_interval {flush_interval_ms} ms, tick 200 ms",
            settings_text(&args.daemon.set)
        ),
    );
    report.line(
        "poll resolution",
        format!(
            "every {} ms asked; measured period mean {:.0} ms, max {:.0} ms ({} polls, up to {} rows per answer)",
            args.poll_ms, polled.mean_period_ms, polled.max_period_ms, polled.polls, polled.max_rows
        ),
    );
    if seen > 0 {
        let p99 = percentile(&latencies, 0.99);
        report.line(
            "event-to-point latency",
            format!(
                "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, min {:.0} ms over {seen} tickets [target p99 <= 2000 ms: {}]",
                percentile(&latencies, 0.50),
                p99,
                latencies[seen - 1],
                latencies[0],
                verdict(p99 <= 2_000.0, p99 / 2_000.0)
            ),
        );
    }
    report.line(
        "ticket points",
        format!(
            "{seen} of {tickets} seen by the polls; {} more only in the final full query; {} never written",
            polled.seen_only_at_end,
            tickets - seen - polled.seen_only_at_end
        ),
    );
    report.line("CPU while publishing", cpu);
    report.line("daemon summary", summary);
    report.line("broker log", broker_summary(&servers.broker_warnings()));
    report.print();
    let never_written = tickets - seen - polled.seen_only_at_end;
    ensure!(never_written == 0, "{never_written} ticket points never written");
    Ok(())
}

struct Polled {
    /// Per ticket: wall time (epoch ms) of the poll that first returned its point.
    seen_ms: Vec<Option<f64>>,
    seen_only_at_end: usize,
    polls: usize,
    mean_period_ms: f64,
    max_period_ms: f64,
    max_rows: usize,
}

/// Polls for `ticket` points newer than the oldest finished ticket not yet
/// seen, recording when each first shows up, until every ticket is seen or
/// `after_publishing` has passed since publishing ended.
async fn poll_latencies(
    influx: &Influx,
    finished: &[AtomicU64],
    offices: usize,
    poll: Duration,
    publishing_done: &AtomicBool,
    after_publishing: Duration,
) -> anyhow::Result<Polled> {
    let tickets = finished.len();
    let mut seen_ms: Vec<Option<f64>> = vec![None; tickets];
    let mut seen = 0usize;
    let mut frontier = 0usize; // every ticket before it has been seen
    let mut polls = 0usize;
    let mut max_rows = 0usize;
    let mut last_sent: Option<Instant> = None;
    let mut period_sum_ms = 0.0;
    let mut max_period_ms: f64 = 0.0;
    let mut stop_at: Option<Instant> = None;
    loop {
        if stop_at.is_none() && publishing_done.load(Ordering::Relaxed) {
            stop_at = Some(Instant::now() + after_publishing);
        }
        if seen == tickets || stop_at.is_some_and(|stop| Instant::now() >= stop) {
            break;
        }
        while frontier < tickets && seen_ms[frontier].is_some() {
            frontier += 1;
        }
        let oldest_unseen_ms = finished.get(frontier).map_or(0, |ts| ts.load(Ordering::Relaxed));
        if oldest_unseen_ms == 0 {
            // Its `finished` is not yet published: nothing can be due.
            tokio::time::sleep(poll).await;
            continue;
        }
        let since_ns = oldest_unseen_ms as i64 * 1_000_000;
        let sent = Instant::now();
        let sent_wall_ms = wall_ms();
        if let Some(previous) = last_sent {
            let period_ms = sent.duration_since(previous).as_secs_f64() * 1e3;
            period_sum_ms += period_ms;
            max_period_ms = max_period_ms.max(period_ms);
        }
        last_sent = Some(sent);
        polls += 1;
        let query = format!(r#"SELECT "ticket", "office" FROM "ticket" WHERE time >= {since_ns}"#);
        match influx.rows(&query).await {
            Ok(rows) => {
                max_rows = max_rows.max(rows.len());
                for (ticket_field, office) in rows {
                    if let Some(ticket) = latency_ticket_index(&office, &ticket_field, offices) {
                        if ticket < tickets && seen_ms[ticket].is_none() {
                            seen_ms[ticket] = Some(sent_wall_ms);
                            seen += 1;
                        }
                    }
                }
            }
            Err(error) => eprintln!("latency: poll failed: {error:#}"),
        }
        let next = sent + poll;
        if next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
    // Points that arrived after the polls gave up on them.
    let mut seen_only_at_end = 0;
    if let Ok(rows) = influx.rows(r#"SELECT "ticket", "office" FROM "ticket""#).await {
        let mut late = HashSet::new();
        for (ticket_field, office) in rows {
            if let Some(ticket) = latency_ticket_index(&office, &ticket_field, offices) {
                if ticket < tickets && seen_ms[ticket].is_none() {
                    late.insert(ticket);
                }
            }
        }
        seen_only_at_end = late.len();
    }
    let mean_period_ms = if polls > 1 { period_sum_ms / (polls - 1) as f64 } else { 0.0 };
    Ok(Polled { seen_ms, seen_only_at_end, polls, mean_period_ms, max_period_ms, max_rows })
}

/// `lat-007` + `A-000012` → the generator's ticket index.
fn latency_ticket_index(office: &str, ticket: &str, offices: usize) -> Option<usize> {
    let office_index: usize = office.strip_prefix("lat-")?.parse().ok()?;
    let number: usize = ticket.strip_prefix("A-")?.parse().ok()?;
    Some((number.checked_sub(1)?) * offices + office_index)
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3
}
