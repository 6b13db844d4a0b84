//! `office-day`: a simulated week of offices with opening hours, replayed by
//! a `queuewatch` binary (this build's by default, or any other, to compare
//! builds on the same events), and what its output says about the day:
//! points per event, gauge rows outside opening hours, people still
//! waiting at 20:00, and the `abandoned` points against the simulator's
//! ground truth.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Args;

use queuewatch::config::{Config, TrackingConfig};
use queuewatch::simulate::audit::{DayAudit, OfficeWeek};
use queuewatch::simulate::SimOptions;
use queuewatch::time::{duration_ms, Millis};

use crate::report::Report;

#[derive(Args)]
pub struct OfficeDayArgs {
    /// The `queuewatch` binary whose `replay` is measured [default: the one beside this harness].
    #[arg(long, value_name = "FILE")]
    queuewatch: Option<PathBuf>,
    #[arg(long, default_value_t = 12)]
    offices: u32,
    #[arg(long, default_value_t = 5)]
    counters: u32,
    #[arg(long, default_value_t = 7)]
    days: u32,
    #[arg(long, default_value_t = 19)]
    seed: u64,
}

/// Monday 2026-11-02, 06:00 in Jakarta.
const START: Millis = Millis(1_793_574_000_000);

pub fn office_day(args: &OfficeDayArgs) -> anyhow::Result<()> {
    let binary = match &args.queuewatch {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("queuewatch"),
    };
    let options = SimOptions {
        offices: args.offices,
        counters: args.counters,
        seed: args.seed,
        days: args.days,
        ..SimOptions::new(START)
    };
    eprintln!("office-day: simulating {} offices for {} days", args.offices, args.days);
    let week = OfficeWeek::simulate(&options);
    let folder = tempfile::tempdir()?;
    let events = folder.path().join("week.ndjson");
    let config_path = folder.path().join("offices.toml");
    let lines_path = folder.path().join("week.lp");
    std::fs::write(&events, &week.events_ndjson)?;
    // Only the offices: the binary measured may be older than this build's keys.
    std::fs::write(&config_path, &week.offices_toml)?;

    eprintln!("office-day: {} replay", binary.display());
    let started = Instant::now();
    let output = Command::new(&binary)
        .arg("replay")
        .arg("--config")
        .arg(&config_path)
        .arg("--out")
        .arg(&lines_path)
        .arg(&events)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));

    let config = Config::parse(&week.offices_toml).map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
    let grace_ms = duration_ms(TrackingConfig::default().close_grace);
    let audit = DayAudit::of(&std::fs::read_to_string(&lines_path)?, &config.offices, grace_ms);

    let mut report = Report::new("office-day");
    report.line("binary", binary.display().to_string());
    report.line(
        "input",
        format!(
            "{} offices x {} days, seed {}, {} events (with a heartbeat per office the next morning)",
            args.offices, args.days, args.seed, week.events
        ),
    );
    let ends: Vec<String> = week.ends().iter().map(|(end, count)| format!("{end} {count}")).collect();
    report.line("ground truth, tickets by end", ends.join(", "));
    report.line(
        "points",
        format!(
            "{} ({:.2} per event), replayed in {seconds:.2} s",
            audit.points,
            audit.points as f64 / week.events as f64
        ),
    );
    let by_measurement: Vec<String> =
        audit.by_measurement.iter().map(|(measurement, count)| format!("{measurement} {count}")).collect();
    report.line("points by measurement", by_measurement.join(", "));
    let outcomes: Vec<String> =
        audit.ticket_outcomes.iter().map(|(outcome, count)| format!("{outcome} {count}")).collect();
    report.line("ticket points by outcome", outcomes.join(", "));
    report.line(
        "gauge rows outside opening hours + grace",
        format!(
            "{} ({} of them showing people waiting or in service)",
            audit.rows_outside_hours, audit.rows_outside_hours_with_people
        ),
    );
    report
        .line("tickets waiting at 20:00", format!("{} over {} office-days", audit.waiting_at_evening, audit.evenings));
    report.line(
        "abandoned points",
        format!(
            "{} (ground truth: {} seen tickets ended with no event)",
            audit.tickets("abandoned"),
            week.expected_abandoned()
        ),
    );
    report.print();
    Ok(())
}
