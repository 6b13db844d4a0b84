//! `flood`: offices flooding at their message rate limit
//! (`limits.max_messages_per_second_per_office`) for a long time (30 min by
//! default), through a real Mosquitto into `queuewatch run` (the release
//! binary, journal on) and InfluxDB 1.x, with what a misbehaving kiosk sends:
//! ticket events, copies of messages sent shortly before, messages the
//! decoder rejects, and more than the rate lets through. Every one of them is
//! journaled, rejected or not. The daemon's resident memory and the journal
//! and snapshot bytes on disk are sampled every second. At the flood's end
//! the daemon is killed with SIGKILL and started again on the same state
//! folder, and its recovery is timed (its "State recovered." line, then
//! `/readyz` answering 200) with the memory it took.
//!
//! What it shows: checkpoints keep the journal bounded however long the
//! flood (about `storage.checkpoint_interval` of messages, or
//! `storage.journal_segment_bytes`), so recovery reads about that much and
//! its time and memory do not grow with the flood's length.

use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use queuewatch::time::Millis;

use crate::measure::{mb, rss_of};
use crate::publisher::Publisher;
use crate::report::Report;
use crate::servers::{broker_summary, daemon_config, settings_text, DaemonArgs, Servers};

#[derive(Args)]
pub struct FloodArgs {
    /// How long the flood lasts (`30m`, `90s`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Offices flooding at once, each at its rate limit.
    #[arg(long, default_value_t = 1)]
    offices: usize,
    /// Messages offered beyond each office's rate limit, as a fraction of it:
    /// refused on arrival (`cardinality_limit`) once the burst allowance
    /// (`limits.max_burst_per_office`) is spent.
    #[arg(long, default_value_t = 0.25)]
    over_rate: f64,
    /// Share of the messages that are copies of one sent shortly before (duplicates).
    #[arg(long, default_value_t = 0.10)]
    duplicates: f64,
    /// Share of the messages the decoder rejects (bad JSON, no ticket, an
    /// unknown type, a time before `tracking.min_timestamp`).
    #[arg(long, default_value_t = 0.05)]
    malformed: f64,
    /// Tickets each office has in progress at once, each issued, called
    /// (sometimes recalled), started and finished in turn.
    #[arg(long, default_value_t = 400)]
    tickets_in_progress: usize,
    /// How often the figures are reported (memory and journal are sampled every second).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    report_every: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// How often memory and the journal are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the restarted daemon is looked at while it recovers.
const RECOVERY_POLL: Duration = Duration::from_millis(10);
/// The longest a restart may take to recover and be ready.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(300);

pub async fn flood(args: FloodArgs) -> anyhow::Result<()> {
    ensure!(args.offices > 0 && args.tickets_in_progress > 0, "--offices and --tickets-in-progress must be above 0");
    ensure!(
        args.over_rate >= 0.0 && (0.0..1.0).contains(&(args.duplicates + args.malformed)),
        "--over-rate must be at least 0, --duplicates + --malformed below 1"
    );
    let config = daemon_config(&args.daemon.set)?;
    let limit = config.limits.max_messages_per_second_per_office;
    ensure!(limit > 0, "limits.max_messages_per_second_per_office is 0: no rate limit to flood at");
    // Messages the decoder rejects take no token: the rest are offered at the limit × (1 + over_rate).
    let per_office = limit as f64 * (1.0 + args.over_rate) / (1.0 - args.malformed);
    let rate = per_office * args.offices as f64;

    let mut servers = Servers::start("flood", &args.daemon).await?;
    servers.start_daemon(&args.daemon).await?;
    let publisher = Publisher::connect(servers.mqtt_port(), "queuewatch-load-flood", 1_000).await?;
    let mut offices: Vec<OfficeFlood> = (0..args.offices)
        .map(|index| OfficeFlood::new(&format!("flood-{index:03}"), args.tickets_in_progress, args.seed + index as u64))
        .collect();

    eprintln!(
        "flood: {} office(s) at {per_office:.0} messages/s each (limit {limit}/s) for {}",
        args.offices,
        humantime::format_duration(args.duration)
    );
    let cpu_before = servers.cpu();
    let started = Instant::now();
    let mut series = Series::default();
    let mut next_sample = started;
    let mut next_report = started + args.report_every;
    let mut sent = Sent::default();
    let mut behind_max = Duration::ZERO;
    for message in 0u64.. {
        let due = started + Duration::from_secs_f64(message as f64 / rate);
        if due.duration_since(started) >= args.duration {
            break;
        }
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            behind_max = behind_max.max(now - due);
        }
        let office = &mut offices[message as usize % args.offices];
        let (kind, payload) = office.next(&args, &mut sent);
        publisher.publish(office.topic.clone(), payload).await?;
        sent.count(kind);
        if Instant::now() >= next_sample {
            series.sample(&servers, started)?;
            next_sample += SAMPLE_EVERY;
        }
        // The interval that ends with the flood is closed after it.
        if Instant::now() >= next_report && next_report < started + args.duration {
            let counts = Counts::scrape(&servers).await;
            series.close_interval(counts, &sent);
            eprintln!("flood: {}", series.intervals.last().map(Interval::text).unwrap_or_default());
            next_report += args.report_every;
        }
    }
    // The flood's end: one last look, then no chance to checkpoint or flush.
    series.sample(&servers, started)?;
    let counts = Counts::scrape(&servers).await;
    series.close_interval(counts, &sent);
    let flood_s = started.elapsed().as_secs_f64();
    let cpu = servers.cpu().since(&cpu_before);
    let at_kill = series.samples.last().copied().context("no sample")?;
    let flood_peak_rss = servers.daemon_pid().and_then(|pid| rss_of(&pid.to_string()).ok()).map(|(_, peak)| peak);
    servers.ensure_daemon_alive()?;
    servers.kill_daemon();
    let recovery = recover(&mut servers, &args.daemon).await?;
    let acked = publisher.wait_acked(sent.total(), Instant::now() + Duration::from_secs(60)).await;
    publisher.close().await;
    let summary = servers.stop_daemon().await?;

    let mut report = Report::new("flood");
    report.line(
        "input",
        format!(
            "{} office(s), each {per_office:.0} messages/s (limit {limit}/s, {:.0} % over it; {:.0} % copies of a \
             recent message, {:.0} % rejected by the decoder, the rest ticket events with ids, {} tickets in \
             progress at once, seed {}) for {flood_s:.0} s: {} messages ({} ticket events, {} copies, {} malformed); \
             the publisher at most {:.2} s behind its schedule; {}",
            args.offices,
            args.over_rate * 100.0,
            args.duplicates * 100.0,
            args.malformed * 100.0,
            args.tickets_in_progress,
            args.seed,
            sent.total(),
            sent.events,
            sent.copies,
            sent.malformed,
            behind_max.as_secs_f64(),
            match acked {
                Some(_) => "every message acknowledged by the broker".to_string(),
                None => "NOT every message acknowledged by the broker within 60 s".to_string(),
            }
        ),
    );
    report.line("daemon", format!("{}; release build", settings_text(&args.daemon.set)));
    let last = series.intervals.last().context("no interval")?;
    report.line("daemon counts at the flood's end", last.counts.text());
    report.line("cpu during the flood", cpu);
    for interval in &series.intervals {
        report.line("over time", interval.text());
    }
    let journal_peak = series.samples.iter().map(|sample| sample.journal_bytes).max().unwrap_or(0);
    let rss_peak = series.samples.iter().map(|sample| sample.rss).max().unwrap_or(0);
    let half = series.samples.len() / 2;
    let journal_peak_second_half = series.samples[half..].iter().map(|sample| sample.journal_bytes).max().unwrap_or(0);
    report.line(
        "journal on disk",
        format!(
            "peak {:.1} MB (second half of the flood: {:.1} MB), {:.1} MB at the kill in {} segment(s); \
             snapshot {:.2} MB at the kill; {} checkpoints seen (the snapshot file changed)",
            mb(journal_peak),
            mb(journal_peak_second_half),
            mb(at_kill.journal_bytes),
            at_kill.journal_segments,
            mb(at_kill.snapshot_bytes),
            series.checkpoints
        ),
    );
    report.line(
        "resident memory during the flood",
        format!(
            "peak sampled {:.1} MB (VmHWM {}), {:.1} MB at the kill",
            mb(rss_peak),
            flood_peak_rss.map_or("unknown".into(), |peak| format!("{:.1} MB", mb(peak))),
            mb(at_kill.rss)
        ),
    );
    report.line("recovery after SIGKILL at the flood's end", recovery.text());
    report.line("shutdown", summary);
    report.line("broker", broker_summary(&servers.broker_warnings()));
    report.print();
    Ok(())
}

/// What a message is.
#[derive(Clone, Copy)]
enum Kind {
    /// The next event of a ticket in progress, with an `id`.
    Event,
    /// A copy of a message sent shortly before.
    Copy,
    /// One the decoder rejects.
    Malformed,
}

#[derive(Default)]
struct Sent {
    events: u64,
    copies: u64,
    malformed: u64,
}

impl Sent {
    fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Event => self.events += 1,
            Kind::Copy => self.copies += 1,
            Kind::Malformed => self.malformed += 1,
        }
    }

    fn total(&self) -> u64 {
        self.events + self.copies + self.malformed
    }
}

/// A ticket's next event.
#[derive(Clone, Copy)]
enum Step {
    Issue,
    Call,
    Recall,
    Start,
    Finish,
}

/// One office's messages: tickets in progress served round-robin, each
/// message the next step of the next one, with copies and malformed ones mixed in.
struct OfficeFlood {
    office: String,
    topic: String,
    /// Per ticket in progress: its number and next step.
    tickets: Vec<(u64, Step)>,
    next_ticket: usize,
    next_number: u64,
    /// The last messages sent, to copy from.
    recent: VecDeque<String>,
    rng: ChaCha8Rng,
}

/// How many recent messages a copy is taken from (a couple of seconds' worth).
const RECENT: usize = 512;
const SERVICES: [&str; 3] = ["ktp", "kk", "akta"];

impl OfficeFlood {
    fn new(office: &str, tickets: usize, seed: u64) -> OfficeFlood {
        OfficeFlood {
            office: office.to_string(),
            topic: format!("queue/{office}/events"),
            tickets: (0..tickets as u64).map(|number| (number, Step::Issue)).collect(),
            next_ticket: 0,
            next_number: tickets as u64,
            recent: VecDeque::with_capacity(RECENT),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn next(&mut self, args: &FloodArgs, sent: &mut Sent) -> (Kind, String) {
        let ts = Millis::now().0;
        let office = &self.office;
        let draw: f64 = self.rng.random();
        if draw < args.malformed {
            let payload = match sent.malformed % 4 {
                0 => format!(r#"{{"type":"issued","ts":{ts},"office":"{office}","ticket":"#),
                1 => format!(r#"{{"type":"called","ts":{ts},"office":"{office}","counter":"loket-1"}}"#),
                2 => format!(r#"{{"type":"teleported","ts":{ts},"office":"{office}","ticket":"Z-1"}}"#),
                _ => format!(r#"{{"type":"issued","ts":1000,"office":"{office}","ticket":"Z-2","service":"ktp"}}"#),
            };
            return (Kind::Malformed, payload);
        }
        if draw < args.malformed + args.duplicates && !self.recent.is_empty() {
            let index = self.rng.random_range(0..self.recent.len());
            return (Kind::Copy, self.recent[index].clone());
        }
        let slot = self.next_ticket;
        self.next_ticket = (self.next_ticket + 1) % self.tickets.len();
        let (number, step) = self.tickets[slot];
        let ticket = format!("A-{number:07}");
        let counter = format!("loket-{}", slot % 8 + 1);
        let service = SERVICES[number as usize % SERVICES.len()];
        let (kind, extra, next) = match step {
            Step::Issue => ("issued", format!(r#""service":"{service}""#), Step::Call),
            Step::Call => {
                let next = if self.rng.random_bool(0.1) { Step::Recall } else { Step::Start };
                ("called", format!(r#""counter":"{counter}""#), next)
            }
            Step::Recall => ("recalled", format!(r#""counter":"{counter}""#), Step::Start),
            Step::Start => ("started", format!(r#""counter":"{counter}""#), Step::Finish),
            Step::Finish => ("finished", format!(r#""counter":"{counter}""#), Step::Issue),
        };
        let payload = format!(
            r#"{{"type":"{kind}","ts":{ts},"office":"{office}","ticket":"{ticket}",{extra},"id":"{office}-{number}-{kind}"}}"#
        );
        self.tickets[slot] = match next {
            Step::Issue => {
                self.next_number += 1;
                (self.next_number, Step::Issue)
            }
            next => (number, next),
        };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(payload.clone());
        (Kind::Event, payload)
    }
}

/// One look at the daemon and its state folder.
#[derive(Clone, Copy, Default)]
struct Sample {
    at_s: f64,
    rss: u64,
    journal_bytes: u64,
    journal_segments: usize,
    snapshot_bytes: u64,
    /// The snapshot's record number (its file name), to count checkpoints.
    snapshot_number: u64,
}

/// What the daemon's `/metrics` counted so far.
#[derive(Default)]
struct Counts {
    accepted: f64,
    /// Rejected on arrival as `cardinality_limit`: over the office's rate.
    over_rate: f64,
    rejected: f64,
    duplicates: f64,
    /// Accepted, then refused when applied: a new ticket or name beyond the office's limits.
    over_limits: f64,
    snapshot_age_s: Option<f64>,
}

impl Counts {
    /// `/metrics` of the running daemon (zeros if it does not answer).
    async fn scrape(servers: &Servers) -> Counts {
        let Some(url) = servers.daemon_log().and_then(|log| ops_url(&log)) else { return Counts::default() };
        let text = match fetch(&format!("{url}/metrics")).await {
            Ok((_, text)) => text,
            Err(error) => {
                eprintln!("flood: /metrics: {error:#}");
                return Counts::default();
            }
        };
        let value = |name: &str| metric(&text, name).unwrap_or(0.0);
        let rejected = text
            .lines()
            .filter(|line| line.starts_with("queuewatch_events_rejected_total{"))
            .filter_map(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse::<f64>().ok()))
            .sum();
        Counts {
            accepted: value("queuewatch_events_accepted_total"),
            over_rate: value(r#"queuewatch_events_rejected_total{reason="cardinality_limit"}"#),
            rejected,
            duplicates: value(r#"queuewatch_event_outcomes_total{outcome="duplicate"}"#),
            over_limits: value(r#"queuewatch_event_outcomes_total{outcome="cardinality_limit"}"#),
            snapshot_age_s: metric(&text, "queuewatch_last_snapshot_age_seconds"),
        }
    }

    fn text(&self) -> String {
        format!(
            "{:.0} accepted ({:.0} duplicates, {:.0} refused when applied: a new ticket or name over the office's \
             limits), {:.0} rejected ({:.0} of them over the rate), newest snapshot {}",
            self.accepted,
            self.duplicates,
            self.over_limits,
            self.rejected,
            self.over_rate,
            self.snapshot_age_s.map_or("none".into(), |age| format!("{age:.0} s old"))
        )
    }
}

/// One reporting interval: the extremes of its samples and the counts at its end.
struct Interval {
    end_s: f64,
    rss_max: u64,
    rss_end: u64,
    journal_max: u64,
    journal_end: u64,
    snapshot_end: u64,
    sent: u64,
    counts: Counts,
}

impl Interval {
    fn text(&self) -> String {
        format!(
            "{:>6.0} s: RSS {:.1} MB (max {:.1}), journal {:.1} MB (max {:.1}), snapshot {:.2} MB; {} sent, {}",
            self.end_s,
            mb(self.rss_end),
            mb(self.rss_max),
            mb(self.journal_end),
            mb(self.journal_max),
            mb(self.snapshot_end),
            self.sent,
            self.counts.text()
        )
    }
}

#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    /// Where the current interval's samples start.
    interval_start: usize,
    intervals: Vec<Interval>,
    checkpoints: usize,
}

impl Series {
    fn sample(&mut self, servers: &Servers, started: Instant) -> anyhow::Result<()> {
        let pid = servers.daemon_pid().context("the daemon is not running")?;
        let (rss, _) = rss_of(&pid.to_string())?;
        let mut sample = state_files(&servers.daemon_data_dir().join("state"));
        sample.at_s = started.elapsed().as_secs_f64();
        sample.rss = rss;
        if let Some(previous) = self.samples.last() {
            if sample.snapshot_number != previous.snapshot_number {
                self.checkpoints += 1;
            }
        }
        self.samples.push(sample);
        Ok(())
    }

    fn close_interval(&mut self, counts: Counts, sent: &Sent) {
        let samples = &self.samples[self.interval_start..];
        let Some(last) = samples.last() else { return };
        self.intervals.push(Interval {
            end_s: last.at_s,
            rss_max: samples.iter().map(|sample| sample.rss).max().unwrap_or(0),
            rss_end: last.rss,
            journal_max: samples.iter().map(|sample| sample.journal_bytes).max().unwrap_or(0),
            journal_end: last.journal_bytes,
            snapshot_end: last.snapshot_bytes,
            sent: sent.total(),
            counts,
        });
        self.interval_start = self.samples.len();
    }
}

/// The journal segments and the snapshot in the state folder (`data_dir/state`).
fn state_files(state: &Path) -> Sample {
    let mut sample = Sample::default();
    for entry in fs::read_dir(state).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A file removed between the listing and its size counts as empty.
        let bytes = entry.metadata().map_or(0, |metadata| metadata.len());
        if name.starts_with("journal-") && name.ends_with(".qwj") {
            sample.journal_bytes += bytes;
            sample.journal_segments += 1;
        } else if let Some(number) = name.strip_prefix("snapshot-").and_then(|rest| rest.strip_suffix(".qws")) {
            sample.snapshot_bytes += bytes;
            sample.snapshot_number = sample.snapshot_number.max(number.parse().unwrap_or(0));
        }
    }
    sample
}

/// What the restart after the kill took.
struct Recovery {
    /// The journal and snapshot the restart found.
    found: Sample,
    /// From the start of the process to its "State recovered." line.
    recovered_s: f64,
    /// The daemon's own figure in that line, and its fields.
    line: String,
    /// From the start of the process until `/readyz` answered 200.
    ready_s: f64,
    /// The highest resident memory sampled until then, and the kernel's peak (VmHWM).
    rss_max: u64,
    hwm_at_ready: u64,
    rss_at_ready: u64,
}

impl Recovery {
    fn text(&self) -> String {
        format!(
            "the restart found {:.1} MB of journal in {} segment(s) and a {:.2} MB snapshot; \"State recovered.\" \
             {:.2} s after the process started ({}); /readyz 200 after {:.2} s; resident memory until ready: peak \
             {:.1} MB (VmHWM), {:.1} MB at ready",
            mb(self.found.journal_bytes),
            self.found.journal_segments,
            mb(self.found.snapshot_bytes),
            self.recovered_s,
            self.line,
            self.ready_s,
            mb(self.hwm_at_ready.max(self.rss_max)),
            mb(self.rss_at_ready),
        )
    }
}

/// Starts the daemon again on the same state folder and follows it until
/// it is ready: its recovery line, then `/readyz` 200, sampling its memory.
async fn recover(servers: &mut Servers, daemon: &DaemonArgs) -> anyhow::Result<Recovery> {
    let found = state_files(&servers.daemon_data_dir().join("state"));
    let started = Instant::now();
    servers.launch_daemon(daemon)?;
    let deadline = started + RECOVERY_DEADLINE;
    let (mut recovered_s, mut line, mut rss_max) = (None, String::new(), 0);
    loop {
        ensure!(Instant::now() < deadline, "the restarted daemon was not ready within {RECOVERY_DEADLINE:?}");
        servers.ensure_daemon_alive()?;
        if let Some(pid) = servers.daemon_pid() {
            if let Ok((rss, _)) = rss_of(&pid.to_string()) {
                rss_max = rss_max.max(rss);
            }
        }
        let log = servers.daemon_log().unwrap_or_default();
        if recovered_s.is_none() {
            if let Some(found) = log.lines().find(|line| line.contains("State recovered.")) {
                recovered_s = Some(started.elapsed().as_secs_f64());
                line = found.split_once("State recovered.").map_or(found, |(_, rest)| rest).trim().to_string();
            }
        }
        if recovered_s.is_some() {
            if let Some(url) = ops_url(&log) {
                if let Ok((200, _)) = fetch(&format!("{url}/readyz")).await {
                    break;
                }
            }
        }
        tokio::time::sleep(RECOVERY_POLL).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    let pid = servers.daemon_pid().context("the restarted daemon is gone")?;
    let (rss_at_ready, hwm_at_ready) = rss_of(&pid.to_string())?;
    Ok(Recovery {
        found,
        recovered_s: recovered_s.unwrap_or(ready_s),
        line,
        ready_s,
        rss_max,
        hwm_at_ready,
        rss_at_ready,
    })
}

/// The operations endpoint's base URL, from the daemon's log.
fn ops_url(log: &str) -> Option<String> {
    let line = log.lines().find(|line| line.contains("Operations endpoint listening."))?;
    let address = line.split_once("address=")?.1.split_whitespace().next()?;
    Some(format!("http://{address}"))
}

/// (status, body) of a GET.
async fn fetch(url: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The value of the sample `name` (with its labels) in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
