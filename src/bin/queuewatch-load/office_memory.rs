//! `office-memory`: the most one office can make the tracker hold. Each
//! office sends at its message rate limit (`limits.max_messages_per_second_per_office`)
//! for longer than the dedup horizon, every event with an `id`, in one of two
//! patterns (`--flood`):
//! - `invent`: a new ticket with every other message and the oldest open one
//!   closed with the rest, so that it keeps `limits.max_open_tickets_per_office`
//!   open while remembering every closed ticket and dedup key the limits let it;
//! - `recalls`: `--tickets` tickets issued, then recalled in turn and never
//!   closed, so that their open segments collect events.
//!
//! The figure is the tracker's live heap at its peak, per office, and how fast
//! it still grew over the second half; `max_offices` offices cost that many
//! times it.

use anyhow::ensure;
use clap::{Args, ValueEnum};
use std::fmt::Write as _;

use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits};
use queuewatch::time::{duration_ms, Millis};
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

use crate::alloc::AllocCounts;
use crate::measure::mb;
use crate::report::Report;
use crate::{FAR_FUTURE_WALL, REPLAY_NOW};

#[derive(Args)]
pub struct OfficeMemoryArgs {
    /// Offices sending at once.
    #[arg(long, default_value_t = 1)]
    offices: usize,
    /// `limits.max_remembered_per_office` (0: no limit, as before it existed); default: the config default.
    #[arg(long)]
    max_remembered: Option<usize>,
    /// How long each office sends, as a multiple of `tracking.dedup_horizon`.
    #[arg(long, default_value_t = 1.5)]
    horizons: f64,
    /// What each office sends.
    #[arg(long, value_enum, default_value_t = Flood::Invent)]
    flood: Flood,
    /// `--flood recalls`: the tickets issued and then recalled in turn.
    #[arg(long, default_value_t = 100)]
    tickets: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Flood {
    /// New tickets, the oldest open one finished in turn, up to the open tickets' limit.
    Invent,
    /// `--tickets` tickets issued, then recalled in turn, never closed.
    Recalls,
}

impl Flood {
    /// The event type and ticket number of message `index`, with `open` tickets kept open.
    fn event(self, index: usize, open: usize) -> (&'static str, usize) {
        match (self, index.checked_sub(open)) {
            (_, None) => ("issued", index),
            // Issues the next ticket and finishes the oldest open one in turn.
            (Flood::Invent, Some(after)) if after % 2 == 0 => ("issued", open + after / 2),
            (Flood::Invent, Some(after)) => ("finished", after / 2),
            (Flood::Recalls, Some(after)) => ("recalled", after % open),
        }
    }

    fn text(self, open: usize) -> String {
        match self {
            Flood::Invent => format!(
                "{open} tickets kept open, then a new ticket issued and the oldest finished in turn, every event with an id"
            ),
            Flood::Recalls => format!("{open} tickets issued, then recalled in turn and never closed, every event with an id"),
        }
    }
}

pub fn office_memory(args: &OfficeMemoryArgs) -> anyhow::Result<()> {
    ensure!(args.offices > 0 && args.horizons > 0.0, "--offices and --horizons must be above 0");
    let mut config = Config::default();
    if let Some(max) = args.max_remembered {
        config.limits.max_remembered_per_office = max;
    }
    let limits = config.limits;
    let rate = limits.max_messages_per_second_per_office;
    ensure!(rate > 0 && limits.max_open_tickets_per_office > 0, "the default config limits rate and open tickets");
    let horizon_ms = duration_ms(config.tracking.dedup_horizon);
    let spacing_ms = (1000 / rate as i64).max(1);
    let messages = ((horizon_ms as f64 * args.horizons) / spacing_ms as f64) as usize;
    // Keeps one below the limit open: every issue opens a ticket, none is refused.
    let open = match args.flood {
        Flood::Invent => limits.max_open_tickets_per_office - 1,
        Flood::Recalls => args.tickets.clamp(1, limits.max_open_tickets_per_office),
    };
    let offices: Vec<String> = (1..=args.offices).map(|index| format!("flood-{index:04}")).collect();
    let decode_limits = DecodeLimits::default();
    let mut tracker = Tracker::new(TrackerSettings::new(&config, Mode::Replay));
    let mut out = Output::default();
    let mut payload = String::with_capacity(256);
    let first_ts = Millis(1_793_577_600_000); // 2026-11-02T00:00:00Z

    let heap_before = AllocCounts::start();
    let (mut peak, mut peak_at, mut refused, mut forgotten) = (0i64, 0usize, 0u64, 0u64);
    let mut live_at_half = 0i64;
    for index in 0..messages {
        let ts = first_ts.plus_ms(index as i64 * spacing_ms);
        let (kind, number) = args.flood.event(index, open);
        for office in &offices {
            payload.clear();
            let _ = write!(
                payload,
                r#"{{"type":"{kind}","ts":{},"office":"{office}","ticket":"T{number}","service":"ktp","counter":"c1","id":"{office}-{index}"}}"#,
                ts.0
            );
            let event = decode(payload.as_bytes(), None, FAR_FUTURE_WALL, &decode_limits)
                .map_err(|rejection| anyhow::anyhow!("{payload}: {rejection}"))?;
            refused += u64::from(tracker.ingest_admitted(event, REPLAY_NOW, REPLAY_NOW, &mut out).is_err());
        }
        forgotten += out.forgotten_early.drain(..).map(|(_, count)| count).sum::<u64>();
        out.points.clear();
        out.alerts.clear();
        out.rejections.clear();
        if index % 4096 == 0 || index == messages / 2 {
            let live = heap_before.so_far().live_bytes();
            if live > peak {
                (peak, peak_at) = (live, index);
            }
            if index == messages / 2 {
                live_at_half = live;
            }
        }
    }
    let heap = heap_before.stop();
    let second_half_s = (messages - messages / 2) as f64 * spacing_ms as f64 / 1000.0;
    let growth_per_s = (heap.live_bytes() - live_at_half) as f64 / second_half_s / args.offices as f64;
    ensure!(refused == 0, "{refused} messages refused: the flood must stay within the rate limit");
    let per_office = peak as f64 / args.offices as f64;
    let max_offices = limits.max_offices as f64;
    let mut report = Report::new("office-memory");
    report.line(
        "input",
        format!(
            "{} office(s), each {messages} messages at {rate}/s of event time ({:.1} h, {} x dedup_horizon {} s): {}",
            args.offices,
            messages as f64 * spacing_ms as f64 / 3.6e6,
            args.horizons,
            horizon_ms / 1000,
            args.flood.text(open)
        ),
    );
    report.line(
        "limits",
        format!(
            "max_remembered_per_office {} ({}), max_open_tickets_per_office {}",
            limits.max_remembered_per_office,
            if limits.max_remembered_per_office == 0 { "none" } else { "default or given" },
            limits.max_open_tickets_per_office
        ),
    );
    report.line(
        "held at the end",
        format!(
            "{} open tickets, {} tickets remembered in all, {} dedup keys, {} events held; {forgotten} forgotten early",
            tracker.open_segments(),
            tracker.remembered_tickets(),
            tracker.dedup_keys(),
            tracker.held_events()
        ),
    );
    report.line(
        "tracker heap per office at its peak",
        format!(
            "{:.1} MB (peak after message {peak_at} of {messages}; {:.1} MB live at the end over all offices)",
            mb(per_office as u64),
            mb(heap.live_bytes().max(0) as u64)
        ),
    );
    report.line(
        "heap growth per office over the second half",
        format!(
            "{:.2} KB per second of event time ({:.1} MB an hour)",
            growth_per_s / 1e3,
            growth_per_s * 3600.0 / 1e6
        ),
    );
    report.line(
        "for limits.max_offices offices",
        format!("{:.1} GB ({} x the figure per office)", per_office * max_offices / 1e9, limits.max_offices),
    );
    report.print();
    drop(tracker);
    Ok(())
}
