//! `memory`: resident bytes per open ticket in a tracker holding a million
//! open tickets, and the resident memory of an idle `queuewatch run`.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use clap::Args;

use queuewatch::config::Config;
use queuewatch::event::{decode, DecodeLimits};
use queuewatch::time::Millis;
use queuewatch::tracker::{Mode, Output, Tracker, TrackerSettings};

use crate::alloc::AllocCounts;
use crate::measure::{mb, rss_of};
use crate::open_tickets::OpenTickets;
use crate::report::{verdict, Report};
use crate::servers::{interruptible, runtime, DaemonArgs, Servers};
use crate::{FAR_FUTURE_WALL, REPLAY_NOW};

#[derive(Args)]
pub struct MemoryArgs {
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

/// Services and the ticket letters they issue, as at an `mpp` office.
const SERVICES: [(&str, char); 5] = [("ktp", 'A'), ("kk", 'B'), ("akta", 'C'), ("paspor", 'D'), ("sim", 'E')];

pub fn memory(args: &MemoryArgs) -> anyhow::Result<()> {
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
    // However many tickets an office gets here, none is refused by a limit.
    let mut config = Config::default();
    config.limits.max_open_tickets_per_office = 0;
    let mut tracker = Tracker::new(TrackerSettings::new(&config, Mode::Replay));
    let mut out = Output::default();
    let mut payload = String::with_capacity(256);
    // Per office: one ticket every 600 ms, so that 1,000 tickets span 10 min,
    // within the default wait target (15 min) and far from expiry (12 h).
    let tickets = OpenTickets {
        offices: &offices,
        services: &SERVICES,
        first_ts: Millis(1_793_577_600_000), // 2026-11-02T00:00:00Z
        spacing_ms: 600,
        id_infix: "",
    };

    let rss_before = rss_of("self")?.0;
    let heap_before = AllocCounts::start();
    for index in 0..args.tickets {
        tickets.payload(index, &mut payload);
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
