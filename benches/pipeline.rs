//! Criterion benchmarks of the pure core: decoding, tracking, line-protocol
//! encoding, and the whole `Pipeline::handle` path, on the simulator's
//! events (`cargo bench --bench pipeline`).
//!
//! The input is two simulated days of a few offices, generated once per
//! process. Every figure is a throughput in elements (events or points) per
//! second. Measurements are kept short so that the whole file runs in a few
//! minutes on two cores; `scripts/load.sh` measures the same paths at a
//! million events.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};

use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits, Event, EventType};
use queuewatch::pipeline::Pipeline;
use queuewatch::point::Point;
use queuewatch::simulate::{parse_start, Realism, SimOptions, Simulation};
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

/// Events in the benchmark stream: a little over two simulated days of four offices.
const EVENTS: usize = 20_000;

/// A wall clock far beyond every simulated timestamp, so that nothing is
/// refused as `future_timestamp` (1 January 2100).
const FAR_FUTURE_WALL: Millis = Millis(4_102_444_800_000);

/// The tracker's wall time in replay mode: constant, office clocks run on event time.
const REPLAY_NOW: Millis = Millis(0);

/// What every benchmark reads, built once.
struct Input {
    payloads: Vec<String>,
    /// The payloads of ticket events only (`issued` … `transferred`).
    ticket_payloads: Vec<String>,
    events: Vec<Event>,
    points: Vec<Point>,
    ticket_points: Vec<Point>,
}

fn input() -> &'static Input {
    static INPUT: OnceLock<Input> = OnceLock::new();
    INPUT.get_or_init(|| {
        let start = parse_start("2026-11-02T06:00:00+07:00").expect("a valid start");
        let options =
            SimOptions { offices: 4, counters: 6, days: 0, realism: Realism::tidy(), ..SimOptions::new(start) };
        let simulated: Vec<_> = Simulation::new(&options).take(EVENTS).collect();
        let limits = DecodeLimits::default();
        let events: Vec<Event> = simulated
            .iter()
            .map(|event| {
                decode(event.payload.as_bytes(), None, FAR_FUTURE_WALL, &limits).expect("simulated events decode")
            })
            .collect();
        let ticket_payloads =
            simulated.iter().filter(|event| event.kind.needs_ticket()).map(|event| event.payload.clone()).collect();
        let points = track(&events).points;
        let ticket_points: Vec<Point> = points.iter().filter(|point| point.measurement == "ticket").cloned().collect();
        let payloads: Vec<String> = simulated.into_iter().map(|event| event.payload).collect();
        assert_eq!(payloads.len(), EVENTS, "the simulation ran short");
        assert!(events.iter().any(|event| event.kind == EventType::Finished));
        assert!(!ticket_points.is_empty(), "the stream closes tickets");
        Input { payloads, ticket_payloads, events, points, ticket_points }
    })
}

fn settings() -> TrackerSettings {
    TrackerSettings::new(&Config::default(), Mode::Replay)
}

/// Every point the tracker writes for `events`, as a replay would.
fn track(events: &[Event]) -> Output {
    let mut tracker = Tracker::new(settings());
    let mut out = Output::default();
    for event in events {
        tracker.ingest(event.clone(), REPLAY_NOW, &mut out);
    }
    tracker.drain(REPLAY_NOW, &mut out);
    out
}

/// Ten samples over four seconds. Every iteration takes the whole stream
/// (tens to hundreds of milliseconds), so each sample is one flat batch of
/// iterations rather than criterion's growing ones, which would not fit.
fn short(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
}

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    short(&mut group);
    let limits = DecodeLimits::default();
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("simulated_events", |b| {
        let payloads = &input().payloads;
        b.iter(|| {
            for payload in payloads {
                let _ = black_box(decode(black_box(payload.as_bytes()), None, FAR_FUTURE_WALL, &limits));
            }
        })
    });
    group.throughput(Throughput::Elements(input().ticket_payloads.len() as u64));
    group.bench_function("ticket_events", |b| {
        let payloads = &input().ticket_payloads;
        b.iter(|| {
            for payload in payloads {
                let _ = black_box(decode(black_box(payload.as_bytes()), None, FAR_FUTURE_WALL, &limits));
            }
        })
    });
    group.finish();
}

fn tracking(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker");
    short(&mut group);
    group.throughput(Throughput::Elements(EVENTS as u64));
    // A fresh tracker per iteration takes the whole stream; cloning the
    // decoded events is setup and not timed. Points are dropped as they come,
    // as the pipeline does after encoding them.
    group.bench_function("ingest_advance", |b| {
        let events = &input().events;
        b.iter_batched(
            || (Tracker::new(settings()), events.clone()),
            |(mut tracker, events)| {
                let mut out = Output::default();
                for event in events {
                    tracker.ingest(event, REPLAY_NOW, &mut out);
                    out.points.clear();
                }
                tracker.advance(REPLAY_NOW, &mut out);
                // Returned, so that freeing the tracker is not timed.
                (tracker, out)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("line_protocol");
    short(&mut group);
    for (name, points) in [("all_points", &input().points), ("ticket_points", &input().ticket_points)] {
        group.throughput(Throughput::Elements(points.len() as u64));
        group.bench_function(name, |b| {
            let mut lines = String::with_capacity(1 << 20);
            b.iter(|| {
                lines.clear();
                for point in points {
                    point.write_line(&mut lines);
                }
                black_box(lines.len())
            })
        });
    }
    group.finish();
}

fn whole_pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    short(&mut group);
    group.throughput(Throughput::Elements(EVENTS as u64));
    // As the daemon does: handle one message, take what it encoded.
    group.bench_function("handle_take_lines", |b| {
        let payloads = &input().payloads;
        let config = Config::default();
        b.iter_batched(
            || Pipeline::new(&config, Mode::Replay),
            |mut pipeline| {
                for payload in payloads {
                    let _ = pipeline.handle(Ok(None), payload.as_bytes(), REPLAY_NOW, FAR_FUTURE_WALL);
                    black_box(pipeline.take_lines());
                }
                pipeline.drain(REPLAY_NOW);
                black_box(pipeline.take_lines());
                pipeline
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decoding, tracking, encoding, whole_pipeline);
criterion_main!(benches);
