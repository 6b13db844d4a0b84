//! `replay`: events per second through decode, track and encode on one
//! thread with nothing written, and allocations per event.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;

use queuewatch::config::{Config, ServiceSla};
use queuewatch::event::{decode, DecodeLimits, Event};
use queuewatch::ids::ServiceId;
use queuewatch::pipeline::Pipeline;
use queuewatch::privacy::StaffPrivacy;
use queuewatch::simulate::{parse_start, Realism, SimOptions, Simulation};
use queuewatch::stats::Stats;
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

use crate::alloc::{count_allocations, AllocCounts};
use crate::measure::{best, rss_of};
use crate::open_tickets::OpenTickets;
use crate::report::Report;
use crate::{FAR_FUTURE_WALL, REPLAY_NOW};

#[derive(Args)]
pub struct ReplayArgs {
    /// Simulator events generated and replayed.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Simulated offices.
    #[arg(long, default_value_t = 50)]
    offices: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed passes of each measurement; the best and the median are reported.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Tickets issued and never called, taken (untimed) before every timed
    /// pass: spread over the same offices in the hour before the stream,
    /// for a service of their own whose wait target, like the ticket age,
    /// is 30 days, so that they stay open and raise nothing throughout.
    #[arg(long, default_value_t = 0)]
    open_tickets: usize,
    /// Only the decode + track + encode passes (for a profiler: run under
    /// callgrind with `--toggle-collect='*run_pipeline*'`).
    #[arg(long)]
    pipeline_only: bool,
}

/// The simulated start of `replay`: fixed, so every run replays the same bytes.
const REPLAY_START: &str = "2026-11-02T06:00:00+07:00";

/// The service of `--open-tickets`, and how long they stay open and unbreached.
const OPEN_SERVICE: (&str, char) = ("backlog", 'Z');
const OPEN_FOR: Duration = Duration::from_secs(30 * 86_400);

pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    ensure!(args.passes > 0, "--passes must be at least 1");
    let start = parse_start(REPLAY_START).map_err(anyhow::Error::msg)?;
    let options = SimOptions {
        offices: args.offices,
        counters: 6,
        seed: args.seed,
        days: 0,
        realism: Realism::tidy(),
        ..SimOptions::new(start)
    };
    let generated = Instant::now();
    let simulated: Vec<_> = Simulation::new(&options).take(args.events).collect();
    let span_days = match (simulated.first(), simulated.last()) {
        (Some(first), Some(last)) => last.at.since(first.at) as f64 / 86_400_000.0,
        _ => 0.0,
    };
    let offices = Simulation::new(&options).office_names();
    let payloads: Vec<String> = simulated.into_iter().map(|event| event.payload).collect();
    let events = payloads.len();
    ensure!(events == args.events, "the simulation gave {events} events, not {}", args.events);
    let payload_bytes: usize = payloads.iter().map(String::len).sum();
    eprintln!("replay: generated {events} events in {:.1} s", generated.elapsed().as_secs_f64());

    let limits = DecodeLimits::default();
    let config = if args.open_tickets > 0 { open_tickets_config()? } else { Config::default() };
    // Gauges every hour instead of every 10 s: what the gauges cost.
    let hourly_gauges = {
        let mut config = config.clone();
        config.tracking.snapshot_interval = Duration::from_secs(3_600);
        config
    };
    let decode_all = |payloads: &[String]| -> Vec<Event> {
        payloads.iter().filter_map(|payload| decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits).ok()).collect()
    };
    let prefix = open_ticket_payloads(args.open_tickets, &offices, start);
    ensure!(decode_all(&prefix).len() == prefix.len(), "an open ticket's event was rejected");

    let mut report = Report::new("replay");
    report.line("machine", "one thread; run under `taskset -c 0` by scripts/load.sh");
    report.line(
        "input",
        format!(
            "{events} simulator events (seed {}, {} offices, {span_days:.1} simulated days, {:.0} bytes/payload on average), in memory",
            args.seed,
            args.offices,
            payload_bytes as f64 / events.max(1) as f64
        ),
    );

    if !prefix.is_empty() {
        report.line("open tickets", open_tickets_footprint(&config, &prefix, offices.len()));
    }
    if args.pipeline_only {
        let (pipeline_s, _) = pipeline_passes(&config, &prefix, &payloads, args.passes, 1, "decode + track + encode");
        report.rate("decode + track + encode (Pipeline::handle + take_lines)", events, &pipeline_s, Some(1_000_000.0));
        report.print();
        return Ok(());
    }

    // Decoding alone.
    let mut rejected = 0;
    let decode_s = timed(args.passes, "decode", || {
        rejected = 0;
        for payload in &payloads {
            match decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits) {
                Ok(event) => drop(black_box(event)),
                Err(_) => rejected += 1,
            }
        }
    });
    ensure!(rejected == 0, "{rejected} simulated events were rejected by the decoder");

    // The staff rewrite (`privacy.staff`), alone: what it adds before
    // decoding, for payloads without and with a staff field.
    let (with_staff, without_staff): (Vec<&String>, Vec<&String>) =
        payloads.iter().partition(|payload| payload.contains("\"staff\""));
    let mut rewrite_ns = Vec::new();
    for (mode, privacy) in [
        ("keep", StaffPrivacy::keep()),
        ("hash", StaffPrivacy::hashing(b"load-harness-key-0123456789")),
        ("drop", StaffPrivacy::dropping()),
    ] {
        for (which, part) in [("without staff", &without_staff), ("with staff", &with_staff)] {
            let seconds = timed(args.passes, &format!("staff rewrite, {mode}, {which}"), || {
                for payload in part.iter() {
                    drop(black_box(privacy.rewrite(payload.as_bytes())));
                }
            });
            rewrite_ns.push(format!("{mode} {which} {:.0} ns", best(&seconds) * 1e9 / part.len().max(1) as f64));
        }
    }

    // Tracking pre-decoded events, points dropped unencoded, then encoded.
    let mut by_measurement = BTreeMap::new();
    let mut track_s = Vec::new();
    let mut track_encode_s = Vec::new();
    for pass in 1..=args.passes {
        for encode in [false, true] {
            let mut tracker = Tracker::new(TrackerSettings::new(&config, Mode::Replay));
            feed(&mut tracker, decode_all(&prefix), &mut None);
            let decoded = decode_all(&payloads);
            let timer = Instant::now();
            track(&mut tracker, decoded, encode.then_some(&mut by_measurement));
            let elapsed_s = timer.elapsed().as_secs_f64();
            drop(tracker); // freeing the tracker is not timed
            eprintln!("replay: pass {pass}: track{} {elapsed_s:.3} s", if encode { " + encode" } else { "" });
            if encode {
                track_encode_s.push(elapsed_s);
            } else {
                track_s.push(elapsed_s);
            }
        }
    }

    // The whole pipeline, as the daemon drives it: lines taken after every
    // message.
    let (pipeline_s, mut pipelines) =
        pipeline_passes(&config, &prefix, &payloads, args.passes, 1, "decode + track + encode");
    let (pipeline, prefix_stats) = pipelines.pop().expect("at least one pass");
    let stats = pipeline.stats().clone();
    let open_segments = pipeline.tracker().open_segments();
    drop(pipeline);
    let accepted = (stats.accepted - prefix_stats.accepted) as usize;
    ensure!(accepted == events && stats.rejected_total() == 0, "not every event was accepted");
    let points_per_pass = stats.points - prefix_stats.points;
    let measured: usize = by_measurement.values().sum();
    ensure!(
        measured as u64 == points_per_pass * args.passes as u64,
        "track wrote {measured} points, pipeline {points_per_pass}"
    );

    // Diagnostics, one pass each: lines taken in chunks, and hourly gauges.
    let (chunked_s, _) =
        pipeline_passes(&config, &prefix, &payloads, 1, 1_000, "pipeline, lines taken every 1,000 events");
    let (hourly_s, hourly) = pipeline_passes(&hourly_gauges, &prefix, &payloads, 1, 1, "pipeline, gauges hourly");
    let hourly_points = hourly.last().map_or(0, |(pipeline, before)| pipeline.stats().points - before.points);
    drop(hourly);

    // Allocations: one more pass of each, counted and not timed.
    let decode_allocations = count_allocations(|| {
        for payload in &payloads {
            drop(black_box(decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits)));
        }
    });
    let prepared = open_pipeline(&config, &prefix);
    let pipeline_allocations = count_allocations(|| drop(run_pipeline(prepared, &payloads, 1)));

    report.line(
        "output",
        format!(
            "{points_per_pass} points ({:.2} per event: {}), {open_segments} segments open at the end",
            points_per_pass as f64 / events as f64,
            by_measurement
                .iter()
                .map(|(name, count)| format!("{name} {}", count / args.passes))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    report.rate("decode only", events, &decode_s, None);
    report.line(
        "staff rewrite before decoding (privacy.staff), per payload, best pass",
        format!("{} ({} of {events} payloads carry staff)", rewrite_ns.join(", "), with_staff.len()),
    );
    report.rate("track only (pre-decoded events, points dropped unencoded)", events, &track_s, None);
    report.rate("track + encode (pre-decoded events)", events, &track_encode_s, None);
    report.rate("decode + track + encode (Pipeline::handle + take_lines)", events, &pipeline_s, Some(1_000_000.0));
    let per_event_ns = |seconds: &[f64]| best(seconds) * 1e9 / events as f64;
    report.line(
        "cost per event (best passes)",
        format!(
            "decode {:.0} ns, track {:.0} ns, encode {:.0} ns ({:.0} ns per point), pipeline {:.0} ns \
             (of which {:.0} ns beyond decode + track + encode)",
            per_event_ns(&decode_s),
            per_event_ns(&track_s),
            per_event_ns(&track_encode_s) - per_event_ns(&track_s),
            (best(&track_encode_s) - best(&track_s)) * 1e9 / points_per_pass.max(1) as f64,
            per_event_ns(&pipeline_s),
            per_event_ns(&pipeline_s) - per_event_ns(&decode_s) - per_event_ns(&track_encode_s)
        ),
    );
    report.rate("diagnostic: pipeline taking lines every 1,000 events", events, &chunked_s, None);
    report.rate(
        &format!(
            "diagnostic: pipeline with tracking.snapshot_interval = 1h ({:.2} points per event)",
            hourly_points as f64 / events as f64
        ),
        events,
        &hourly_s,
        None,
    );
    report.allocations("allocations, decode only", &decode_allocations, events);
    report.allocations("allocations, decode + track + encode", &pipeline_allocations, events);
    report.print();
    Ok(())
}

/// Runs `work` `passes` times, returning each pass's seconds.
fn timed(passes: usize, name: &str, mut work: impl FnMut()) -> Vec<f64> {
    (1..=passes)
        .map(|pass| {
            let timer = Instant::now();
            work();
            let elapsed_s = timer.elapsed().as_secs_f64();
            eprintln!("replay: pass {pass}: {name} {elapsed_s:.3} s");
            elapsed_s
        })
        .collect()
}

/// Feeds `events` to a tracker in replay mode, then drains it; its points
/// are dropped, after being encoded and counted by measurement when
/// `encoded` is given.
fn track(tracker: &mut Tracker, events: Vec<Event>, mut encoded: Option<&mut BTreeMap<&'static str, usize>>) {
    feed(tracker, events, &mut encoded);
    let mut out = Output::default();
    tracker.drain(REPLAY_NOW, &mut out);
    take_points(&mut out, &mut encoded, &mut String::new());
}

/// Feeds `events` to a tracker in replay mode, without draining it.
fn feed(tracker: &mut Tracker, events: Vec<Event>, encoded: &mut Option<&mut BTreeMap<&'static str, usize>>) {
    let mut out = Output::default();
    let mut lines = String::with_capacity(1 << 20);
    for event in events {
        tracker.ingest(event, REPLAY_NOW, &mut out);
        take_points(&mut out, encoded, &mut lines);
    }
}

/// Drops the points of `out`, after encoding them (into `lines`, cleared
/// now and then) and counting them by measurement when `encoded` is given.
fn take_points(out: &mut Output, encoded: &mut Option<&mut BTreeMap<&'static str, usize>>, lines: &mut String) {
    if let Some(counts) = encoded.as_deref_mut() {
        for point in out.points.drain(..) {
            point.write_line(lines);
            *counts.entry(point.measurement).or_default() += 1;
        }
        if lines.len() > 1 << 20 {
            lines.clear();
        }
    } else {
        out.points.clear();
    }
    out.alerts.clear();
}

/// `passes` timed runs of [`run_pipeline`], each on a pipeline that has
/// taken `prefix` first (untimed). The pipelines are returned with their
/// counts after the prefix, so that freeing them is not timed either.
fn pipeline_passes(
    config: &Config,
    prefix: &[String],
    payloads: &[String],
    passes: usize,
    take_every: usize,
    name: &str,
) -> (Vec<f64>, Vec<(Pipeline, Stats)>) {
    let mut pipelines = Vec::new();
    let seconds = (1..=passes)
        .map(|pass| {
            let pipeline = open_pipeline(config, prefix);
            let before = pipeline.stats().clone();
            let timer = Instant::now();
            let pipeline = run_pipeline(pipeline, payloads, take_every);
            let elapsed_s = timer.elapsed().as_secs_f64();
            eprintln!("replay: pass {pass}: {name} {elapsed_s:.3} s");
            pipelines.push((pipeline, before));
            elapsed_s
        })
        .collect();
    (seconds, pipelines)
}

/// A replay pipeline that has taken `prefix` (its lines dropped).
fn open_pipeline(config: &Config, prefix: &[String]) -> Pipeline {
    let mut pipeline = Pipeline::new(config, Mode::Replay);
    for payload in prefix {
        let _ = pipeline.handle(Ok(None), payload.as_bytes(), REPLAY_NOW, FAR_FUTURE_WALL);
    }
    drop(pipeline.take_lines());
    pipeline
}

/// `Pipeline::handle` for every payload, taking (and dropping) the encoded
/// lines after every `take_every` messages, then `drain`.
fn run_pipeline(mut pipeline: Pipeline, payloads: &[String], take_every: usize) -> Pipeline {
    for (index, payload) in payloads.iter().enumerate() {
        let _ = pipeline.handle(Ok(None), payload.as_bytes(), REPLAY_NOW, FAR_FUTURE_WALL);
        if (index + 1) % take_every == 0 {
            drop(black_box(pipeline.take_lines()));
        }
    }
    pipeline.drain(REPLAY_NOW);
    drop(black_box(pipeline.take_lines()));
    pipeline
}

/// The default config, but for the open tickets' service and the ticket
/// age: 30 days, so that the open tickets neither breach nor expire.
fn open_tickets_config() -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.tracking.max_ticket_age = OPEN_FOR;
    // Tens of thousands open per office, past the default limit.
    config.limits.max_open_tickets_per_office = 0;
    let service = ServiceId::parse(OPEN_SERVICE.0).map_err(|error| anyhow::anyhow!("{error}"))?;
    config.sla.services.insert(service, ServiceSla { wait_target: Some(OPEN_FOR), service_target: None });
    Ok(config)
}

/// `count` `issued` events over `offices` in the hour before `start`, in time order.
fn open_ticket_payloads(count: usize, offices: &[String], start: Millis) -> Vec<String> {
    if count == 0 || offices.is_empty() {
        return Vec::new();
    }
    let per_office = count.div_ceil(offices.len()) as i64;
    let tickets = OpenTickets {
        offices,
        services: &[OPEN_SERVICE],
        first_ts: start.minus_ms(3_600_000),
        spacing_ms: (3_600_000 / per_office).max(1),
        // The simulator's ids are `<office>-<n>`.
        id_infix: "-open",
    };
    (0..count)
        .map(|index| {
            let mut payload = String::with_capacity(160);
            tickets.payload(index, &mut payload);
            payload
        })
        .collect()
}

/// What the open tickets cost in memory: heap bytes still live per ticket
/// after a pipeline took them, and the resident memory they added.
fn open_tickets_footprint(config: &Config, prefix: &[String], offices: usize) -> String {
    let rss_before = rss_of("self").map_or(0, |(rss, _)| rss);
    let heap = AllocCounts::start();
    let pipeline = open_pipeline(config, prefix);
    let heap = heap.stop();
    let rss_after = rss_of("self").map_or(0, |(rss, _)| rss);
    // The last few of each office are still held for reordering.
    let open = pipeline.tracker().open_segments() + pipeline.tracker().held_events();
    drop(pipeline);
    format!(
        "{open} open (or held for reordering) at the start of every pass, over {offices} offices ({:.0} heap \
         bytes per open ticket still live, {:.0} resident bytes per open ticket added)",
        heap.live_bytes() as f64 / open.max(1) as f64,
        rss_after.saturating_sub(rss_before) as f64 / open.max(1) as f64
    )
}
