//! `queuewatch-load`: the load harness behind `scripts/load.sh`.
//!
//! Four scenarios, each a subcommand that prints its figures on standard
//! output (progress goes to standard error):
//! - `replay`: events/s through decode, and through decode + track + encode,
//!   on one thread with nothing written, plus allocations per event;
//! - `memory`: resident bytes per open ticket in a tracker holding a million
//!   open tickets, and the resident memory of an idle `queuewatch run`;
//! - `e2e`: events/s from a QoS 1 publisher through a real Mosquitto and
//!   `queuewatch run` into a real InfluxDB 1.x, checking nothing is lost;
//! - `latency`: event-to-point latency at a fixed offered rate.
//!
//! What must stay true:
//! - Servers listen on 127.0.0.1 only, on free ports, in a temporary folder
//!   of their own; they are killed and the folder removed when the scenario
//!   ends, whether it succeeds, fails or is interrupted (SIGINT/SIGTERM).
//! - Every loop is bounded in count and time.
//! - The input is deterministic: the simulator with a fixed seed (shifted to
//!   a start in the recent past where the daemon must accept the timestamps),
//!   or a generator whose only input is the wall clock (`latency`).
//!
//! The global allocator counts allocations while counting is switched on,
//! which the timed passes never do, so counting costs them one relaxed load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::{Args, Parser, Subcommand};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::Value;

use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits, Event};
use queuewatch::mqtt::office_from_topic;
use queuewatch::pipeline::Pipeline;
use queuewatch::simulate::{parse_start, SimOptions, Simulation};
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(name = "queuewatch-load", about = "Load scenarios for queuewatch; see scripts/load.sh.")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Events/s through decode, and decode + track + encode, on one thread; allocations per event.
    Replay(ReplayArgs),
    /// Resident bytes per open ticket in the tracker; resident memory of an idle daemon.
    Memory(MemoryArgs),
    /// Events/s publisher → Mosquitto (QoS 1) → queuewatch run → InfluxDB 1.x, nothing lost.
    E2e(E2eArgs),
    /// Event-to-point latency at a fixed offered rate.
    Latency(LatencyArgs),
}

#[derive(Args)]
struct ReplayArgs {
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

#[derive(Args)]
struct MemoryArgs {
    /// Open tickets held by the tracker.
    #[arg(long, default_value_t = 1_000_000)]
    tickets: usize,
    /// Offices the tickets are spread over.
    #[arg(long, default_value_t = 1_000)]
    offices: usize,
    /// How long the daemon idles before its resident memory is read.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// Only the tracker measurement (no servers, no daemon).
    #[arg(long)]
    tracker_only: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct E2eArgs {
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

#[derive(Args)]
struct LatencyArgs {
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

#[derive(Args)]
struct DaemonArgs {
    /// The `queuewatch` binary (default: next to this one).
    #[arg(long)]
    queuewatch: Option<PathBuf>,
    /// Mosquitto's `max_inflight_messages`: QoS 1 messages sent to the daemon awaiting its PUBACK.
    #[arg(long, default_value_t = 100)]
    broker_inflight: u32,
    /// Copy the daemon's, Mosquitto's and InfluxDB's logs into this folder when the scenario ends.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<PathBuf>,
    /// A daemon setting other than its default, `section.key=VALUE` with the value in TOML
    /// (`--set alerts.enabled=false --set 'tracking.snapshot_interval="1h"'`). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Scenario::Replay(args) => replay(&args),
        Scenario::Memory(args) => memory(&args),
        Scenario::E2e(args) => with_servers(e2e(args)),
        Scenario::Latency(args) => with_servers(latency(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("queuewatch-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// replay

/// A wall clock beyond every simulated timestamp (2100-01-01), so nothing is `future_timestamp`.
const FAR_FUTURE_WALL: Millis = Millis(4_102_444_800_000);
/// The tracker's wall time in replay mode: constant, office clocks run on event time.
const REPLAY_NOW: Millis = Millis(0);
/// The simulated start of `replay`: fixed, so every run replays the same bytes.
const REPLAY_START: &str = "2026-11-02T06:00:00+07:00";

fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
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

// ---------------------------------------------------------------------------
// memory

/// Services and the ticket letters they issue, as at an `mpp` office.
const SERVICES: [(&str, char); 5] = [("ktp", 'A'), ("kk", 'B'), ("akta", 'C'), ("paspor", 'D'), ("sim", 'E')];

fn memory(args: &MemoryArgs) -> anyhow::Result<()> {
    ensure!(args.offices > 0 && args.tickets > 0, "--offices and --tickets must be at least 1");
    let mut report = Report::new("memory");
    tracker_memory(args, &mut report)?;
    if !args.tracker_only {
        let idle = runtime()?.block_on(interruptible(daemon_idle_memory(args)))?;
        report.line(
            "idle daemon (queuewatch run, connected to Mosquitto and InfluxDB 1.x)",
            format!(
                "VmRSS {:.1} MB after {} s idle (VmHWM {:.1} MB) [target <= 30 MB: {}]",
                mb(idle.rss_bytes),
                args.idle_seconds,
                mb(idle.hwm_bytes),
                verdict(idle.rss_bytes as f64 <= 30.0 * 1e6, idle.rss_bytes as f64 / 30e6)
            ),
        );
    }
    report.print();
    Ok(())
}

fn tracker_memory(args: &MemoryArgs, report: &mut Report) -> anyhow::Result<()> {
    let offices: Vec<String> = (1..=args.offices).map(|index| format!("office-{index:04}")).collect();
    let limits = DecodeLimits::default();
    let mut tracker = Tracker::new(TrackerSettings::new(&Config::default(), Mode::Replay));
    let mut out = Output::default();
    let mut payload = String::with_capacity(256);
    // Per office: one ticket every 600 ms, so that 1,000 tickets span 10 min,
    // within the default wait target (15 min) and far from expiry (12 h).
    let first_ts = Millis(1_793_577_600_000); // 2026-11-02T00:00:00Z
    let spacing_ms = 600;

    let rss_before = rss_of("self")?.0;
    let heap_before = AllocCounts::start();
    for index in 0..args.tickets {
        let office = &offices[index % args.offices];
        let number = index / args.offices;
        let (service, letter) = SERVICES[number % SERVICES.len()];
        let ts = first_ts.plus_ms(number as i64 * spacing_ms);
        payload.clear();
        let _ = write!(
            payload,
            r#"{{"type":"issued","ts":{},"office":"{office}","ticket":"{letter}-{:04}","service":"{service}","id":"{office}-{}"}}"#,
            ts.0,
            number / SERVICES.len() + 1,
            number + 1
        );
        let event = decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &limits)
            .map_err(|rejection| anyhow::anyhow!("{payload}: {rejection}"))?;
        tracker.ingest(event, REPLAY_NOW, &mut out);
        out.points.clear();
        out.alerts.clear();
    }
    tracker.advance(REPLAY_NOW, &mut out);
    tracker.drain(REPLAY_NOW, &mut out);
    out.points.clear();
    out.alerts.clear();
    let heap = heap_before.stop();
    let rss_after = rss_of("self")?.0;

    ensure!(tracker.held_events() == 0, "{} events still held after drain", tracker.held_events());
    ensure!(
        tracker.open_segments() == args.tickets,
        "{} open segments, expected {}",
        tracker.open_segments(),
        args.tickets
    );
    let rss_per_ticket = rss_after.saturating_sub(rss_before) as f64 / args.tickets as f64;
    let heap_per_ticket = heap.live_bytes() as f64 / args.tickets as f64;
    report.line(
        "input",
        format!(
            "{} open tickets (one `issued` each, with `id`, numbers A-0001 …) over {} offices, never closed; \
             advance + drain, 0 held",
            args.tickets, args.offices
        ),
    );
    report.line(
        "tracker resident bytes per open ticket",
        format!(
            "{rss_per_ticket:.0} B (VmRSS {:.1} MB -> {:.1} MB) [target <= 256 B: {}]",
            mb(rss_before),
            mb(rss_after),
            verdict(rss_per_ticket <= 256.0, rss_per_ticket / 256.0)
        ),
    );
    report.line(
        "tracker heap bytes per open ticket",
        format!(
            "{heap_per_ticket:.0} B requested from the allocator and still live ({:.2} live allocations per ticket; \
             {:.1} allocations per ingested event in all)",
            heap.live_allocations() as f64 / args.tickets as f64,
            heap.allocations as f64 / args.tickets as f64
        ),
    );
    drop(tracker);
    Ok(())
}

struct IdleMemory {
    rss_bytes: u64,
    hwm_bytes: u64,
}

async fn daemon_idle_memory(args: &MemoryArgs) -> anyhow::Result<IdleMemory> {
    let mut servers = Servers::start("memory", &args.daemon).await?;
    servers.start_daemon(&args.daemon).await?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let pid = servers.daemon_pid().context("the daemon")?;
    servers.ensure_daemon_alive()?;
    let (rss_bytes, hwm_bytes) = rss_of(&pid.to_string())?;
    servers.stop_daemon().await?;
    Ok(IdleMemory { rss_bytes, hwm_bytes })
}

// ---------------------------------------------------------------------------
// e2e

async fn e2e(args: E2eArgs) -> anyhow::Result<()> {
    // Timestamps must be in the past for a live daemon: the simulation starts
    // at 06:00 (UTC+7) three weeks ago, so the events are the same every day
    // but for whole days.
    let start = local_morning_days_ago(21);
    let options = SimOptions { offices: args.offices, counters: 6, seed: args.seed, days: 0, ..SimOptions::new(start) };
    let mut messages: Vec<(String, String)> = Vec::with_capacity(args.events + args.offices as usize);
    let mut last_at = start;
    for event in Simulation::new(&options).take(args.events) {
        last_at = event.at;
        messages.push((event.topic, event.payload));
    }
    let events = messages.len();
    ensure!(events == args.events, "the simulation gave {events} events, not {}", args.events);
    let mut office_names: Vec<String> = messages
        .iter()
        .filter_map(|(topic, _)| topic.split('/').nth(1).map(str::to_string))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    office_names.sort();

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
    let publisher = Publisher::connect(servers.mqtt_port, "queuewatch-load-publisher", args.inflight).await?;

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
    let mut pipeline = Pipeline::new(config, Mode::Replay);
    let mut expected = Expected { ticket_points: 0, ticket_keys: 0, all_points: 0, by_measurement: BTreeMap::new() };
    let mut keys = HashSet::new();
    let mut count_lines = |lines: &str| {
        for line in lines.lines() {
            let measurement = line.split([',', ' ']).next().unwrap_or_default();
            *expected.by_measurement.entry(measurement.to_string()).or_default() += 1;
            expected.all_points += 1;
            if measurement == "ticket" {
                expected.ticket_points += 1;
                let series = line.split(' ').next().unwrap_or_default();
                let time = line.rsplit(' ').next().unwrap_or_default();
                keys.insert(format!("{series} {time}"));
            }
        }
    };
    for (topic, payload) in messages {
        let topic_office = office_from_topic(&config.mqtt.topics, topic);
        if let Err(rejection) = pipeline.handle(topic_office, payload.as_bytes(), REPLAY_NOW, FAR_FUTURE_WALL) {
            bail!("the pipeline rejected a simulated event: {rejection}: {payload}");
        }
        if let Some((lines, _)) = pipeline.take_lines() {
            count_lines(&lines);
        }
    }
    pipeline.advance(REPLAY_NOW);
    if let Some((lines, _)) = pipeline.take_lines() {
        count_lines(&lines);
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

// ---------------------------------------------------------------------------
// latency

async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
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
    let publisher = Publisher::connect(servers.mqtt_port, "queuewatch-load-latency", 1_000).await?;

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

// ---------------------------------------------------------------------------
// Servers: Mosquitto, InfluxDB 1.x and the daemon, on 127.0.0.1 in a temporary folder

/// The daemon's MQTT client id (its persistent session) and InfluxDB database.
const DAEMON_CLIENT_ID: &str = "queuewatch-load";
const DATABASE: &str = "queuewatch";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's config: defaults but for where the servers are, and the
/// `--set` overrides (`section.key=value`, the value in TOML).
fn daemon_config_text(mqtt_url: &str, influx_url: &str, overrides: &[String]) -> anyhow::Result<String> {
    let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    sections
        .entry("mqtt")
        .or_default()
        .extend([format!("url = \"{mqtt_url}\""), format!("client_id = \"{DAEMON_CLIENT_ID}\"")]);
    sections.entry("influxdb").or_default().extend([
        "api = \"v1\"".to_string(),
        format!("url = \"{influx_url}\""),
        format!("database = \"{DATABASE}\""),
    ]);
    for setting in overrides {
        let (key, value) = setting.split_once('=').with_context(|| format!("--set {setting}: expected KEY=VALUE"))?;
        let (section, key) =
            key.trim().rsplit_once('.').with_context(|| format!("--set {setting}: expected section.key"))?;
        sections.entry(section).or_default().push(format!("{key} = {}", value.trim()));
    }
    let mut text = String::from("# Written by queuewatch-load.\n");
    for (section, lines) in sections {
        let _ = writeln!(text, "[{section}]\n{}", lines.join("\n"));
    }
    Ok(text)
}

/// The daemon's config as the daemon will read it (with placeholder addresses).
fn daemon_config(overrides: &[String]) -> anyhow::Result<Config> {
    let text = daemon_config_text("mqtt://127.0.0.1:1", "http://127.0.0.1:1", overrides)?;
    Config::parse(&text).map_err(|problems| anyhow::anyhow!("daemon config: {}\n{text}", problems.join("; ")))
}

/// Runs a scenario that starts servers, stopping early (and so cleaning up)
/// on SIGINT or SIGTERM.
fn with_servers(scenario: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime()?.block_on(interruptible(scenario))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("the Tokio runtime")
}

/// `scenario`, or an error when a signal comes first; either way its servers
/// are dropped (killed, their folder removed) before this returns.
async fn interruptible<T>(scenario: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        outcome = scenario => outcome,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); servers stopped"),
        _ = terminate.recv() => bail!("interrupted (SIGTERM); servers stopped"),
    }
}

/// Mosquitto, InfluxDB and (once started) the daemon. Dropping it kills them
/// in that order, then removes the folder (fields drop in declaration order).
struct Servers {
    daemon: Option<ServerProcess>,
    /// Both held only to be killed on drop.
    _mosquitto: ServerProcess,
    _influxd: ServerProcess,
    mqtt_port: u16,
    influx: Influx,
    keep_logs: Option<PathBuf>,
    dir: TempDir,
}

impl Drop for Servers {
    /// Keeps the logs if asked (the processes and the folder go after this).
    fn drop(&mut self) {
        let Some(keep) = &self.keep_logs else { return };
        if let Err(error) = fs::create_dir_all(keep) {
            eprintln!("keep logs in {}: {error}", keep.display());
            return;
        }
        for name in ["queuewatch.log", "queuewatch.toml", "mosquitto.log", "mosquitto.conf", "influxd.log"] {
            let _ = fs::copy(self.dir.path().join(name), keep.join(name));
        }
    }
}

impl Servers {
    async fn start(scenario: &str, options: &DaemonArgs) -> anyhow::Result<Servers> {
        let dir = TempDir::new(&format!("queuewatch-load-{scenario}"))?;
        let (mosquitto, mqtt_port) = start_mosquitto(dir.path(), options.broker_inflight).await?;
        let (influxd, influx_port) = start_influxd(dir.path()).await?;
        let influx = Influx::new(influx_port)?;
        influx.create_database().await?;
        Ok(Servers {
            daemon: None,
            _mosquitto: mosquitto,
            _influxd: influxd,
            mqtt_port,
            influx,
            keep_logs: options.keep_logs.clone(),
            dir,
        })
    }

    /// Creates the daemon's persistent session first (so nothing published
    /// from now on is lost), then starts `queuewatch run` and waits until it
    /// is connected.
    async fn start_daemon(&mut self, options: &DaemonArgs) -> anyhow::Result<()> {
        let binary = match &options.queuewatch {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("locate this binary")?.with_file_name("queuewatch"),
        };
        ensure!(
            binary.is_file(),
            "{} not found: build it (cargo build --release) or pass --queuewatch",
            binary.display()
        );
        create_session(self.mqtt_port, DAEMON_CLIENT_ID, "queue/+/events").await?;
        let config_path = self.dir.path().join("queuewatch.toml");
        let mqtt_url = format!("mqtt://127.0.0.1:{}", self.mqtt_port);
        fs::write(&config_path, daemon_config_text(&mqtt_url, &self.influx.url, &options.set)?)?;
        let mut daemon = ServerProcess::spawn(
            "queuewatch",
            Command::new(&binary).arg("run").arg("--config").arg(&config_path).env("QUEUEWATCH_LOG", "info"),
            &self.dir.path().join("queuewatch.log"),
        )?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !daemon.log().contains("Connected to the MQTT broker.") {
            if let Some(status) = daemon.exited() {
                bail!("queuewatch exited during startup ({status}):\n{}", daemon.log());
            }
            ensure!(Instant::now() < deadline, "queuewatch did not connect in {STARTUP_TIMEOUT:?}:\n{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The broker's own complaints (dropped messages, errors, connections
    /// that ended without a DISCONNECT), from its log.
    fn broker_warnings(&self) -> Vec<String> {
        let complaints = ["dropped", "Warning", "Error", "error", "timeout", "closed its connection"];
        fs::read_to_string(self.dir.path().join("mosquitto.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| complaints.iter().any(|complaint| line.contains(complaint)))
            .filter(|line| !line.contains("should not be run as root"))
            // The readiness probe connects and closes without a word.
            .filter(|line| !line.contains("Client <unknown> closed its connection"))
            .map(str::to_string)
            .collect()
    }

    /// CPU seconds used so far by each process of the scenario.
    fn cpu(&self) -> CpuSample {
        let mut seconds = Vec::new();
        let processes = [
            ("queuewatch", self.daemon.as_ref().and_then(ServerProcess::pid)),
            ("influxd", self._influxd.pid()),
            ("mosquitto", self._mosquitto.pid()),
        ];
        for (name, pid) in processes {
            if let Some(used) = pid.and_then(|pid| cpu_seconds_of(&pid.to_string())) {
                seconds.push((name, used));
            }
        }
        if let Some(used) = cpu_seconds_of("self") {
            seconds.push(("queuewatch-load (publisher, poller)", used));
        }
        CpuSample { at: Instant::now(), seconds }
    }

    fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|daemon| daemon.child.as_ref()).map(Child::id)
    }

    fn ensure_daemon_alive(&mut self) -> anyhow::Result<()> {
        if let Some(daemon) = &mut self.daemon {
            if let Some(status) = daemon.exited() {
                bail!("queuewatch exited ({status}):\n{}", daemon.log());
            }
        }
        Ok(())
    }

    /// SIGTERM, wait for the exit (30 s at most), and return the daemon's
    /// closing summary line.
    async fn stop_daemon(&mut self) -> anyhow::Result<String> {
        let mut daemon = self.daemon.take().context("no daemon running")?;
        let pid = daemon.child.as_ref().map(Child::id).context("the daemon has been reaped")?;
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = daemon.exited() {
                break status;
            }
            ensure!(Instant::now() < deadline, "queuewatch did not stop within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = daemon.log();
        let summary = log
            .lines()
            .rfind(|line| line.contains("queuewatch stopped."))
            .map(|line| line.split_once("queuewatch stopped.").map_or(line, |(_, rest)| rest).trim().to_string())
            .unwrap_or_else(|| "(no summary line)".into());
        let problems: Vec<&str> =
            log.lines().filter(|line| line.contains(" ERROR ") || line.contains(" WARN ")).collect();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for line in &problems {
            // `<time>  WARN <target>: <message> <fields>`: counted by target and message.
            let message =
                line.split_once(" WARN ").or_else(|| line.split_once(" ERROR ")).map_or(*line, |(_, rest)| rest);
            let message = message.split_once('.').map_or(message, |(head, _)| head);
            *kinds.entry(message.trim()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(message, count)| format!("{count} × {message}.")).collect();
        Ok(format!(
            "{status}; {summary}; {} WARN/ERROR log lines{}{}",
            problems.len(),
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", ")
        ))
    }
}

async fn start_mosquitto(dir: &Path, inflight: u32) -> anyhow::Result<(ServerProcess, u16)> {
    let program = find_binary("mosquitto", "/usr/sbin/mosquitto", "mosquitto")?;
    let config_path = dir.join("mosquitto.conf");
    for attempt in 1..=3 {
        let port = free_port()?;
        fs::write(
            &config_path,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 # The default of 1000 drops further QoS 1 messages for a slow or\n\
                 # offline persistent session silently; the whole backlog must fit.\n\
                 max_queued_messages 10000000\n\
                 max_inflight_messages {inflight}\n\
                 # Started as root, Mosquitto would switch to the user mosquitto,\n\
                 # which cannot write its log into this folder.\n\
                 user root\n\
                 log_dest file {log}\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                log = dir.join("mosquitto.log").display()
            ),
        )?;
        let mut process = ServerProcess::spawn(
            "mosquitto",
            Command::new(&program).arg("-c").arg(&config_path),
            &dir.join("mosquitto.out"),
        )?;
        match process.wait_ready(|| tcp_accepts(port)).await {
            Ok(()) => return Ok((process, port)),
            Err(error) if attempt < 3 && process.exited().is_some() => {
                eprintln!("mosquitto exited during startup ({error:#}); retrying on another port");
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the last attempt returns")
}

async fn start_influxd(dir: &Path) -> anyhow::Result<(ServerProcess, u16)> {
    let program = find_binary("influxd", "/usr/bin/influxd", "influxdb")?;
    let config_path = dir.join("influxdb.conf");
    let root = dir.display();
    for attempt in 1..=3 {
        let http_port = free_port()?;
        let rpc_port = free_port()?;
        fs::write(
            &config_path,
            format!(
                r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/influx/meta"
  logging-enabled = false
[data]
  dir = "{root}/influx/data"
  wal-dir = "{root}/influx/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[retention]
  enabled = false
"#
            ),
        )?;
        let mut process = ServerProcess::spawn(
            "influxd",
            Command::new(&program).arg("-config").arg(&config_path),
            &dir.join("influxd.log"),
        )?;
        match process.wait_ready(|| http_status(http_port, "/ping") == Some(204)).await {
            Ok(()) => return Ok((process, http_port)),
            Err(error) if attempt < 3 && process.exited().is_some() => {
                eprintln!("influxd exited during startup ({error:#}); retrying on other ports");
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the last attempt returns")
}

/// A child process whose output goes to a log file; killed and reaped on drop.
struct ServerProcess {
    name: &'static str,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    fn spawn(name: &'static str, command: &mut Command, log_path: &Path) -> anyhow::Result<ServerProcess> {
        let log = File::create(log_path).with_context(|| format!("create {}", log_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(ServerProcess { name, child: Some(child), log_path: log_path.to_path_buf() })
    }

    async fn wait_ready(&mut self, mut is_ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                bail!("{} exited during startup ({status}):\n{}", self.name, self.log());
            }
            if is_ready() {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{} not ready after {STARTUP_TIMEOUT:?}:\n{}", self.name, self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, once it has exited (reaping it).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A folder under the system temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// InfluxDB 1.x's HTTP API.
#[derive(Clone)]
struct Influx {
    url: String,
    http: reqwest::Client,
}

impl Influx {
    fn new(port: u16) -> anyhow::Result<Influx> {
        // No proxy: an environment's HTTP_PROXY must not capture loopback requests.
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
        Ok(Influx { url: format!("http://127.0.0.1:{port}"), http })
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let statement = format!("CREATE DATABASE \"{DATABASE}\"");
        let response = self.http.post(format!("{}/query", self.url)).form(&[("q", statement.as_str())]).send().await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success() && !body.contains("\"error\""), "{statement}: HTTP {status}: {body}");
        Ok(())
    }

    async fn query(&self, influxql: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/query", self.url))
            .query(&[("db", DATABASE), ("q", influxql), ("epoch", "ns")])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success(), "{influxql}: HTTP {status}: {body}");
        let value: Value = serde_json::from_str(&body).with_context(|| format!("{influxql}: not JSON: {body}"))?;
        let statement_error = value
            .get("results")
            .and_then(Value::as_array)
            .and_then(|results| results.iter().find_map(|result| result.get("error")));
        if let Some(error) = statement_error.or_else(|| value.get("error")) {
            bail!("{influxql}: {error}");
        }
        Ok(value)
    }

    async fn count_ticket_points(&self) -> anyhow::Result<u64> {
        Ok(self.ticket_counts().await?.0)
    }

    /// (all `ticket` points, those of the e2e sentinels (service `load`)).
    async fn ticket_counts(&self) -> anyhow::Result<(u64, u64)> {
        let value = self
            .query(r#"SELECT COUNT("ticket") FROM "ticket"; SELECT COUNT("ticket") FROM "ticket" WHERE "service" = 'load'"#)
            .await?;
        let count = |statement: usize| {
            value.pointer(&format!("/results/{statement}/series/0/values/0/1")).and_then(Value::as_u64).unwrap_or(0)
        };
        Ok((count(0), count(1)))
    }

    /// Rows of a two-column query (besides time), as strings.
    async fn rows(&self, influxql: &str) -> anyhow::Result<Vec<(String, String)>> {
        let value = self.query(influxql).await?;
        let mut rows = Vec::new();
        let empty = Vec::new();
        let series = value.pointer("/results/0/series").and_then(Value::as_array).unwrap_or(&empty);
        for one in series {
            for row in one.get("values").and_then(Value::as_array).unwrap_or(&empty) {
                let column = |index: usize| row.get(index).and_then(Value::as_str).unwrap_or_default().to_string();
                rows.push((column(1), column(2)));
            }
        }
        Ok(rows)
    }
}

/// Creates a persistent session for `client_id` subscribed to `filter`, then
/// disconnects: the broker keeps what is published for it from now on.
async fn create_session(port: u16, client_id: &str, filter: &str) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(Instant::now() < deadline, "no SUBACK from the broker");
        match tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::SubAck(_)))) => break,
            Ok(Err(error)) => bail!("creating the daemon's session: {error}"),
            _ => {}
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await;
    Ok(())
}

/// A QoS 1 publisher: a task polls the event loop and counts PUBACKs.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    /// Set by `close`: the connection's end is no error.
    closing: Arc<AtomicBool>,
    driver: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(port: u16, client_id: &str, inflight: u16) -> anyhow::Result<Publisher> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_clean_session(true).set_inflight(inflight.max(1)).set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let (connected_sender, connected) = tokio::sync::oneshot::channel();
        let driver = {
            let acked = acked.clone();
            let closing = closing.clone();
            tokio::spawn(async move {
                let mut connected_sender = Some(connected_sender);
                let mut failures = 0u32;
                loop {
                    match event_loop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            if let Some(sender) = connected_sender.take() {
                                let _ = sender.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            if closing.load(Ordering::Relaxed) {
                                return;
                            }
                            failures += 1;
                            eprintln!("publisher: MQTT error: {error}");
                            if failures >= 20 {
                                return; // bounded: the scenario's deadline reports the rest
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .context("the publisher did not connect in 10 s")?
            .context("the publisher's event loop stopped")?;
        Ok(Publisher { client, acked, closing, driver })
    }

    async fn publish(&self, topic: String, payload: String) -> anyhow::Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.context("publish")
    }

    /// When all `count` PUBACKs had arrived, or `None` at the deadline.
    async fn wait_acked(&self, count: u64, deadline: Instant) -> Option<Instant> {
        loop {
            if self.acked.load(Ordering::Relaxed) >= count {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn close(self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while !self.driver.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.driver.abort();
    }
}

/// The daemon's settings in one phrase.
fn settings_text(overrides: &[String]) -> String {
    if overrides.is_empty() {
        "api v1, every other setting at its default".into()
    } else {
        format!("api v1, {}, every other setting at its default", overrides.join(", "))
    }
}

/// What the broker's log says about dropped messages and errors.
fn broker_summary(warnings: &[String]) -> String {
    match warnings {
        [] => "no dropped messages, warnings, errors or broken connections".into(),
        [first, ..] => format!("{} complaint lines, the first: {first}", warnings.len()),
    }
}

fn find_binary(name: &str, debian_path: &str, package: &str) -> anyhow::Result<PathBuf> {
    let debian_path = PathBuf::from(debian_path);
    if debian_path.is_file() {
        return Ok(debian_path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()))
        .with_context(|| {
            format!("`{name}` not found: install the Debian package `{package}` (apt-get install -y {package})")
        })
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).is_ok()
}

/// The status of `GET path` on 127.0.0.1:port, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(_) => return None,
        }
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    std::str::from_utf8(&head[..filled]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Measuring

/// CPU seconds per process at one instant.
struct CpuSample {
    at: Instant,
    seconds: Vec<(&'static str, f64)>,
}

impl CpuSample {
    /// `name 12.3 s (85% of a core)` for each process, from `earlier` to `self`.
    fn since(&self, earlier: &CpuSample) -> String {
        let elapsed_s = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let mut parts = Vec::new();
        for (name, now) in &self.seconds {
            let before = earlier.seconds.iter().find(|(other, _)| other == name).map_or(0.0, |(_, used)| *used);
            let used = now - before;
            parts.push(format!("{name} {used:.1} s ({:.0}% of a core)", used / elapsed_s * 100.0));
        }
        format!("over {elapsed_s:.1} s on {} cores: {}", cores(), parts.join(", "))
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (clock ticks of 1/100 s,
/// the value of CLK_TCK on Linux).
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// (VmRSS, VmHWM) in bytes of `/proc/<pid>`.
fn rss_of(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1e3
}

/// 06:00 at UTC+7 (where most simulated offices are), `days` days before today there.
fn local_morning_days_ago(days: i64) -> Millis {
    const DAY_MS: i64 = 86_400_000;
    const OFFSET_MS: i64 = 7 * 3_600_000;
    let local = Millis::now().0 + OFFSET_MS;
    let local_midnight = local - local.rem_euclid(DAY_MS);
    Millis(local_midnight - OFFSET_MS - days * DAY_MS + 6 * 3_600_000)
}

fn best(seconds: &[f64]) -> f64 {
    seconds.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(seconds: &[f64]) -> f64 {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The value at `fraction` of the sorted `values` (nearest rank).
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn rate_text(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped} events/s")
}

/// "met", or "MISSED" with how far off (`ratio` = measured / target, in the
/// direction where above 1 is worse for ceilings and below 1 for floors).
fn verdict(met: bool, ratio: f64) -> String {
    if met {
        "met".into()
    } else {
        format!("MISSED, {ratio:.2}x the target")
    }
}

/// Figures of one scenario, printed as `scenario: name: value` lines.
struct Report {
    scenario: &'static str,
    lines: Vec<(String, String)>,
}

impl Report {
    fn new(scenario: &'static str) -> Report {
        Report { scenario, lines: Vec::new() }
    }

    fn line(&mut self, name: &str, value: impl Into<String>) {
        self.lines.push((name.to_string(), value.into()));
    }

    fn rate(&mut self, name: &str, events: usize, seconds: &[f64], target: Option<f64>) {
        let best_rate = events as f64 / best(seconds);
        let mut text = format!(
            "{} best, {} median of {} passes ({:.3} s best)",
            rate_text(best_rate),
            rate_text(events as f64 / median(seconds)),
            seconds.len(),
            best(seconds)
        );
        if let Some(target) = target {
            let _ = write!(
                text,
                " [target >= {}: {}]",
                rate_text(target),
                verdict(best_rate >= target, best_rate / target)
            );
        }
        self.line(name, text);
    }

    fn allocations(&mut self, name: &str, counts: &AllocCounts, events: usize) {
        self.line(
            name,
            format!(
                "{:.2} allocations and {:.0} bytes allocated per event",
                counts.allocations as f64 / events as f64,
                counts.allocated_bytes as f64 / events as f64
            ),
        );
    }

    fn print(&self) {
        for (name, value) in &self.lines {
            println!("{}: {name}: {value}", self.scenario);
        }
    }
}

// ---------------------------------------------------------------------------
// The counting allocator

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting calls and bytes while `COUNTING` is on.
/// A `realloc` counts as one allocation of the new size and a free of the old.
struct CountingAllocator;

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            FREES.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
            FREES.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        System.realloc(pointer, layout, new_size)
    }
}

/// What was allocated and freed between `start` and `stop`.
#[derive(Debug, Clone, Copy, Default)]
struct AllocCounts {
    allocations: u64,
    allocated_bytes: u64,
    frees: u64,
    freed_bytes: u64,
}

impl AllocCounts {
    fn read() -> AllocCounts {
        AllocCounts {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            allocated_bytes: ALLOCATED_BYTES.load(Ordering::Relaxed),
            frees: FREES.load(Ordering::Relaxed),
            freed_bytes: FREED_BYTES.load(Ordering::Relaxed),
        }
    }

    /// Switches counting on and returns the counts so far.
    fn start() -> AllocCounts {
        let counts = AllocCounts::read();
        COUNTING.store(true, Ordering::SeqCst);
        counts
    }

    /// Switches counting off and returns what happened since `self`.
    fn stop(self) -> AllocCounts {
        COUNTING.store(false, Ordering::SeqCst);
        let now = AllocCounts::read();
        AllocCounts {
            allocations: now.allocations - self.allocations,
            allocated_bytes: now.allocated_bytes - self.allocated_bytes,
            frees: now.frees - self.frees,
            freed_bytes: now.freed_bytes - self.freed_bytes,
        }
    }

    fn live_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }

    fn live_allocations(&self) -> i64 {
        // A realloc counts once on each side, so it cancels out.
        self.allocations as i64 - self.frees as i64
    }
}

fn count_allocations(work: impl FnOnce()) -> AllocCounts {
    let before = AllocCounts::start();
    work();
    before.stop()
}
