//! `replay`: events per second through decode, track and encode on one
//! thread with nothing written, and allocations per event.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;

use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits, Event};
use queuewatch::pipeline::Pipeline;
use queuewatch::simulate::{parse_start, SimOptions, Simulation};
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

use crate::alloc::count_allocations;
use crate::measure::best;
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
}

/// The simulated start of `replay`: fixed, so every run replays the same bytes.
const REPLAY_START: &str = "2026-11-02T06:00:00+07:00";

pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    ensure!(args.passes > 0, "--passes must be at least 1");
    let start = parse_start(REPLAY_START).map_err(anyhow::Error::msg)?;
    let options = SimOptions { offices: args.offices, counters: 6, seed: args.seed, days: 0, ..SimOptions::new(start) };
    let generated = Instant::now();
    let simulated: Vec<_> = Simulation::new(&options).take(args.events).collect();
    let span_days = match (simulated.first(), simulated.last()) {
        (Some(first), Some(last)) => last.at.since(first.at) as f64 / 86_400_000.0,
        _ => 0.0,
    };
    let payloads: Vec<String> = simulated.into_iter().map(|event| event.payload).collect();
    let events = payloads.len();
    ensure!(events == args.events, "the simulation gave {events} events, not {}", args.events);
    let payload_bytes: usize = payloads.iter().map(String::len).sum();
    eprintln!("replay: generated {events} events in {:.1} s", generated.elapsed().as_secs_f64());

    let limits = DecodeLimits::default();
    let config = Config::default();
    // Gauges every hour instead of every 10 s: what the gauges cost.
    let hourly_gauges = {
        let mut config = Config::default();
        config.tracking.snapshot_interval = Duration::from_secs(3_600);
        config
    };
    let decode_all = || -> Vec<Event> {
        payloads.iter().filter_map(|payload| decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits).ok()).collect()
    };

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

    // Tracking pre-decoded events, points dropped unencoded, then encoded.
    let mut by_measurement = BTreeMap::new();
    let mut track_s = Vec::new();
    let mut track_encode_s = Vec::new();
    for pass in 1..=args.passes {
        for encode in [false, true] {
            let decoded = decode_all();
            let timer = Instant::now();
            let tracker = track(&config, decoded, encode.then_some(&mut by_measurement));
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
    // message. Pipelines are kept until the timing is over, so that freeing
    // them is not timed.
    let mut pipelines = Vec::new();
    let pipeline_s = timed(args.passes, "decode + track + encode", || {
        pipelines.push(run_pipeline(&config, &payloads, 1));
    });
    let pipeline = pipelines.pop().expect("at least one pass");
    let stats = pipeline.stats().clone();
    let open_segments = pipeline.tracker().open_segments();
    drop(pipeline);
    ensure!(stats.accepted as usize == events && stats.rejected_total() == 0, "not every event was accepted");
    let points_per_pass = stats.points;
    let measured: usize = by_measurement.values().sum();
    ensure!(
        measured as u64 == points_per_pass * args.passes as u64,
        "track wrote {measured} points, pipeline {points_per_pass}"
    );

    // Diagnostics, one pass each: lines taken in chunks, and hourly gauges.
    let chunked_s = timed(1, "pipeline, lines taken every 1,000 events", || {
        pipelines.push(run_pipeline(&config, &payloads, 1_000));
    });
    let hourly_s = timed(1, "pipeline, gauges hourly", || {
        pipelines.push(run_pipeline(&hourly_gauges, &payloads, 1));
    });
    let hourly_points = pipelines.last().map_or(0, |pipeline| pipeline.stats().points);
    drop(pipelines);

    // Allocations: one more pass of each, counted and not timed.
    let decode_allocations = count_allocations(|| {
        for payload in &payloads {
            drop(black_box(decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits)));
        }
    });
    let pipeline_allocations = count_allocations(|| drop(run_pipeline(&config, &payloads, 1)));

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

/// A tracker fed `events` in replay mode; its points are dropped, after being
/// encoded (into a buffer cleared now and then) and counted by measurement
/// when `encoded` is given.
fn track(config: &Config, events: Vec<Event>, mut encoded: Option<&mut BTreeMap<&'static str, usize>>) -> Tracker {
    let mut tracker = Tracker::new(TrackerSettings::new(config, Mode::Replay));
    let mut out = Output::default();
    let mut lines = String::with_capacity(1 << 20);
    let mut take = |out: &mut Output| {
        if let Some(counts) = encoded.as_deref_mut() {
            for point in out.points.drain(..) {
                point.write_line(&mut lines);
                *counts.entry(point.measurement).or_default() += 1;
            }
            if lines.len() > 1 << 20 {
                lines.clear();
            }
        } else {
            out.points.clear();
        }
        out.alerts.clear();
    };
    for event in events {
        tracker.ingest(event, REPLAY_NOW, &mut out);
        take(&mut out);
    }
    tracker.drain(REPLAY_NOW, &mut out);
    take(&mut out);
    tracker
}

/// `Pipeline::handle` for every payload, taking (and dropping) the encoded
/// lines after every `take_every` messages, then `drain`.
fn run_pipeline(config: &Config, payloads: &[String], take_every: usize) -> Pipeline {
    let mut pipeline = Pipeline::new(config, Mode::Replay);
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
