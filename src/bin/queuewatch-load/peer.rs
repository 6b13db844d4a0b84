//! `peer`: catching up one backlog, side by side: `queuewatch run` and a
//! Node-RED flow as an integrator would write it (`node_red.rs`), each in
//! turn on fresh servers with the same backlog, queued in a persistent
//! Mosquitto session while the consumer is stopped. For each: time from the
//! consumer's start to its first ticket point queryable, to 99.5 % and to
//! 100 % of the ticket points, its peak resident memory and CPU seconds, and
//! how many ticket points are exact; then a table with the ratio.
//!
//! What must stay true:
//! - Both consumers get the same events (the simulator, same seed), the same
//!   broker settings and session (client id, QoS 1, clean = false), a fresh
//!   Mosquitto and InfluxDB each, and the same clock: from spawning the
//!   consumer's process until InfluxDB answers the count.
//! - The ticket points to reach are the same for both: those of a replay of
//!   the events by the library's pipeline (the ground truth `drain` checks
//!   queuewatch against point for point). A peer's ticket point is exact when
//!   a ground-truth point has its office, ticket and millisecond, with equal
//!   `service`, `outcome`, `counter`, `wait_s` and `total_s`.
//! - A peer that stops making progress is bounded: after `--stall-s` seconds
//!   without a new ticket point, or `--timeout-s` from its start, it is
//!   reported as stalled at the share it reached, and the scenario goes on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::{Args, ValueEnum};
use serde_json::Value;

use queuewatch::point::FieldValue;

use crate::drain::{catch_up, queue_backlog, BacklogArgs, CatchUp, Expected, Goal};
use crate::input::{replay_points, simulated, InputEnd, SimulatedInput};
use crate::measure::{cpu_seconds_of, mb, rss_of};
use crate::node_red::{FlowSettings, Install, NodeRed};
use crate::report::Report;
use crate::servers::{daemon_config, settings_text, BrokerStore, DaemonArgs, Servers};

#[derive(Args)]
pub struct PeerArgs {
    #[command(flatten)]
    backlog: BacklogArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Where Node-RED is installed with npm, and kept for the next run.
    #[arg(long, value_name = "DIR", default_value = "target/peer-node-red")]
    node_red_dir: std::path::PathBuf,
    /// Ticket points the flow's join node gathers into one write.
    #[arg(long, default_value_t = 5_000)]
    node_red_batch: usize,
    /// A consumer with no new ticket point for this long (after its start) is stalled.
    #[arg(long, default_value_t = 30)]
    stall_s: u64,
    /// Only this system (both by default).
    #[arg(long, value_enum)]
    only: Option<System>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    Queuewatch,
    NodeRed,
}

/// The share of the ticket points reported apart from all of them.
const MOST: f64 = 0.995;
/// The database both consumers write to (a fresh InfluxDB each).
const DATABASE: &str = "queuewatch";
/// How often progress goes to standard error.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What one consumer did with the backlog.
struct Run {
    system: &'static str,
    first_s: Option<f64>,
    most_s: Option<f64>,
    all_s: Option<f64>,
    /// queuewatch only: every expected point of every measurement, checked.
    everything_s: Option<f64>,
    /// Ticket points queryable at the end.
    reached: u64,
    /// Of them, equal to the ground truth.
    exact: u64,
    rss_peak_bytes: Option<u64>,
    cpu_s: f64,
    /// Why it ended short of 100 %, if it did.
    stalled: Option<String>,
    notes: Vec<String>,
}

pub async fn peer(args: PeerArgs) -> anyhow::Result<()> {
    let SimulatedInput { messages, start, last_at, last_at_by_office } =
        simulated(args.backlog.events, args.backlog.offices, args.backlog.seed)?;
    let events = messages.len();
    let config = daemon_config(&args.daemon.set)?;
    let window_ms = config.tracking.reorder_window.as_millis() as i64;
    let expected = Expected::new(replay_points(&config, &messages, InputEnd::Drain)?)?;
    let ticket_points = expected.count("ticket");
    ensure!(ticket_points > 0, "the input closes no ticket: use more events");
    let span_days = (last_at.0 - start.0) as f64 / 86_400_000.0;
    eprintln!("peer: {events} events over {span_days:.1} days; {ticket_points} ticket points to reach");
    let install = match args.only {
        Some(System::Queuewatch) => None,
        _ => Some(tokio::task::block_in_place(|| Install::ensure(&args.node_red_dir))?),
    };

    let mut runs = Vec::new();
    if args.only != Some(System::NodeRed) {
        let mut servers = Servers::start_with("peer-queuewatch", &args.daemon, BrokerStore::Persistent).await?;
        let (queued_s, stored) = queue_backlog(&servers, messages.clone(), &args.backlog).await?;
        eprintln!("peer: queuewatch: {events} events queued in {queued_s:.1} s; the broker holds {stored}");
        let goal = Goal {
            expected: &expected,
            last_at_by_office: &last_at_by_office,
            window_ms,
            timeout_s: args.backlog.timeout_s,
            poll_ms: args.backlog.poll_ms,
            kill_after_s: None,
        };
        let caught_up = catch_up(&mut servers, &args.daemon, &goal).await?;
        runs.push(queuewatch_run(&caught_up, &expected, ticket_points));
    }
    if let Some(install) = &install {
        let servers = Servers::start_with("peer-node-red", &args.daemon, BrokerStore::Persistent).await?;
        let (queued_s, stored) = queue_backlog(&servers, messages, &args.backlog).await?;
        eprintln!("peer: node-red: {events} events queued in {queued_s:.1} s; the broker holds {stored}");
        runs.push(node_red_run(&servers, install, &args, &expected, ticket_points).await?);
    }

    let mut report = Report::new("peer");
    report.line(
        "input",
        format!(
            "{events} simulator events (seed {}, {} offices, {span_days:.1} days from {start}), queued for each \
             system in turn in a fresh persistent Mosquitto (max_inflight_messages {}) for its QoS 1 session \
             (client id fixed, clean = false) while the consumer is stopped; a fresh InfluxDB 1.x each",
            args.backlog.seed, args.backlog.offices, args.daemon.broker_inflight
        ),
    );
    report.line(
        "ticket points to reach",
        format!("{ticket_points} (a replay of the same events by the library's pipeline, the ground truth)"),
    );
    report.line("queuewatch", format!("queuewatch run, {}", settings_text(&args.daemon.set)));
    if let Some(install) = &install {
        report.line(
            "node-red",
            format!(
                "{}: mqtt in (QoS 1) -> json -> function (pairs issued with finished/no_show/cancelled/transferred) \
                 -> join ({} points or {} s) -> influxdb batch (1.x, precision ms)",
                install.versions, args.node_red_batch, 1
            ),
        );
    }
    for run in &runs {
        report.line(&format!("{} notes", run.system), run.notes.join("; "));
    }
    report.line("table", String::new());
    report.print();
    println!("{}", table(&runs, events, ticket_points));
    println!("peer: reproduce: {}", reproduce_command(&args));
    Ok(())
}

fn queuewatch_run(caught_up: &CatchUp, expected: &Expected, ticket_points: u64) -> Run {
    let started = caught_up.cpu_before.at;
    let seconds = |at: Instant| at.duration_since(started).as_secs_f64();
    let milestones = &caught_up.milestones;
    let exact = caught_up.comparison.equal.get("ticket").copied().unwrap_or(0);
    let stalled = match milestones.all_tickets {
        Some(_) => None,
        None => Some(format!("stalls at {:.1} %", caught_up.last_ticket_count as f64 * 100.0 / ticket_points as f64)),
    };
    let mut notes = vec![
        format!("connected after {:.2} s", caught_up.connected_s),
        format!("point for point: {}", caught_up.comparison.text(expected)),
        format!("CPU until the end: {}", caught_up.end_sample.shares_since(&caught_up.cpu_before)),
        format!("daemon summary: {}", caught_up.summary),
    ];
    if let Some(most) = &milestones.most_tickets {
        notes.push(format!("CPU until 99.5 %: {}", most.shares_since(&caught_up.cpu_before)));
    }
    Run {
        system: "queuewatch",
        first_s: milestones.first_ticket.map(seconds),
        most_s: milestones.most_tickets.as_ref().map(|sample| seconds(sample.at)),
        all_s: milestones.all_tickets.map(seconds),
        everything_s: milestones.everything.as_ref().map(|sample| seconds(sample.at)),
        reached: caught_up.last_ticket_count,
        exact,
        rss_peak_bytes: caught_up.rss_peak_bytes,
        cpu_s: caught_up.end_sample.used_since(&caught_up.cpu_before, "queuewatch"),
        stalled,
        notes,
    }
}

/// Starts Node-RED on the backlog and watches InfluxDB until it holds every
/// ticket point, or the consumer stalls or times out; then compares.
async fn node_red_run(
    servers: &Servers,
    install: &Install,
    args: &PeerArgs,
    expected: &Expected,
    ticket_points: u64,
) -> anyhow::Result<Run> {
    let most = (MOST * ticket_points as f64).ceil() as u64;
    let flow = FlowSettings { batch_points: args.node_red_batch, batch_timeout_s: 1 };
    let cpu_before = servers.cpu();
    let started = cpu_before.at;
    let mut node_red = NodeRed::spawn(
        install,
        &servers.dir().join("node-red"),
        servers.mqtt_port(),
        &servers.influx_url(),
        DATABASE,
        flow,
    )?;
    let pid = node_red.pid().context("node-red's pid")?.to_string();
    let deadline = started + Duration::from_secs(args.backlog.timeout_s);
    let stall = Duration::from_secs(args.stall_s);
    let (mut first, mut most_at, mut all_at) = (None, None, None);
    let mut connected_s = None;
    let mut rss_peak_bytes = None;
    let mut cpu_s = 0.0;
    let mut last_count = 0;
    let mut last_progress = started;
    let mut next_progress = started + PROGRESS_EVERY;
    let mut stalled = None;
    loop {
        let tickets = servers.influx.count_ticket_points().await.unwrap_or(last_count);
        let now = Instant::now();
        let elapsed_s = now.duration_since(started).as_secs_f64();
        if tickets > last_count {
            last_count = tickets;
            last_progress = now;
        }
        if first.is_none() && tickets > 0 {
            first = Some(elapsed_s);
        }
        if most_at.is_none() && tickets >= most {
            most_at = Some(elapsed_s);
        }
        if let Ok((_, peak)) = rss_of(&pid) {
            rss_peak_bytes = Some(peak);
        }
        if let Some(used) = cpu_seconds_of(&pid) {
            cpu_s = used;
        }
        if connected_s.is_none() && node_red.connected() {
            connected_s = Some(elapsed_s);
        }
        if tickets >= ticket_points {
            all_at = Some(elapsed_s);
            break;
        }
        if let Some(status) = node_red.exited() {
            stalled = Some(format!("exited ({status}) at {:.1} %", percent(tickets, ticket_points)));
            break;
        }
        if now.duration_since(last_progress) >= stall {
            stalled = Some(format!(
                "stalls at {:.1} % (no new ticket point for {} s)",
                percent(tickets, ticket_points),
                args.stall_s
            ));
            break;
        }
        if now >= deadline {
            stalled = Some(format!(
                "stalls at {:.1} % (not done within {} s)",
                percent(tickets, ticket_points),
                args.backlog.timeout_s
            ));
            break;
        }
        if now >= next_progress {
            eprintln!("peer: node-red: {elapsed_s:.1} s: {tickets} of {ticket_points} ticket points queryable");
            next_progress = now + PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(args.backlog.poll_ms)).await;
    }
    let end_sample = servers.cpu();
    let (reached, exact, foreign) = compare_tickets(servers, expected).await?;
    let complaints = node_red.complaints();
    if let Some(keep) = servers.keep_logs() {
        let _ = std::fs::create_dir_all(keep);
        let _ = std::fs::copy(node_red.log_path(), keep.join("node-red.log"));
    }
    drop(node_red);
    let mut notes = vec![
        format!("connected after {}", connected_s.map_or("(never)".into(), |s| format!("{s:.2} s"))),
        format!(
            "ticket points queryable {reached}, of them exact {exact}; {foreign} match no ground-truth point (or \
             differ from it)"
        ),
        format!("CPU until the end: {}", end_sample.shares_since(&cpu_before)),
    ];
    notes.push(format!(
        "its log's errors and warnings: {}",
        if complaints.is_empty() {
            "none".to_string()
        } else {
            complaints.iter().map(|(count, first)| format!("{count} x {first}")).collect::<Vec<_>>().join(" | ")
        }
    ));
    Ok(Run {
        system: "node-red",
        first_s: first,
        most_s: most_at,
        all_s: all_at,
        everything_s: None,
        reached,
        exact,
        rss_peak_bytes,
        cpu_s,
        stalled,
        notes,
    })
}

fn percent(count: u64, of: u64) -> f64 {
    count as f64 * 100.0 / of.max(1) as f64
}

/// A ticket point of the ground truth: its tags and fields.
type GroundTruth<'a> = (&'a BTreeMap<String, String>, &'a [(&'static str, FieldValue)]);

/// (ticket points stored, of them exact, the others) for a peer's points:
/// matched to the ground truth by office, ticket and millisecond.
async fn compare_tickets(servers: &Servers, expected: &Expected) -> anyhow::Result<(u64, u64, u64)> {
    let mut truth: HashMap<(String, String, i64), GroundTruth<'_>> = HashMap::new();
    for (tags, time_ns, fields) in expected.points_of("ticket") {
        let ticket = fields.iter().find_map(|(name, value)| match (*name, value) {
            ("ticket", FieldValue::Str(ticket)) => Some(ticket.to_string()),
            _ => None,
        });
        if let (Some(office), Some(ticket)) = (tags.get("office"), ticket) {
            truth.insert((office.clone(), ticket, time_ns.div_euclid(1_000_000)), (tags, fields));
        }
    }
    let offices = servers.influx.tag_values("office").await?;
    let (mut stored, mut exact) = (0u64, 0u64);
    for office in offices {
        let influxql = format!(
            "SELECT * FROM \"ticket\" WHERE \"office\" = '{}' GROUP BY *",
            office.replace('\\', "\\\\").replace('\'', "\\'")
        );
        for point in servers.influx.points(&influxql).await? {
            stored += 1;
            let ticket = point.fields.get("ticket").and_then(Value::as_str).unwrap_or_default().to_string();
            let key = (office.clone(), ticket, point.time_ns.div_euclid(1_000_000));
            let Some((tags, fields)) = truth.get(&key) else { continue };
            let tags_equal =
                ["service", "outcome", "counter"].iter().all(|name| tags.get(*name) == point.tags.get(*name));
            let field_equal = |name: &str| {
                let truth = fields.iter().find_map(|(field, value)| match value {
                    FieldValue::Float(value) if *field == name => Some(*value),
                    _ => None,
                });
                let stored = point.fields.get(name).and_then(Value::as_f64);
                match (truth, stored) {
                    (Some(truth), Some(stored)) => (truth - stored).abs() < 1e-9,
                    (None, None) => true,
                    _ => false,
                }
            };
            if tags_equal && field_equal("wait_s") && field_equal("total_s") {
                exact += 1;
            }
        }
    }
    Ok((stored, exact, stored - exact))
}

/// The side-by-side table, in Markdown.
fn table(runs: &[Run], events: usize, ticket_points: u64) -> String {
    let seconds = |value: Option<f64>| value.map_or("–".to_string(), |s| format!("{s:.2} s"));
    let mut text = format!(
        "| {events} events, {ticket_points} ticket points | first ticket point | 99.5 % | 100 % | every point (queuewatch: \
         all measurements, checked) | RSS peak | CPU | exact ticket points |\n|---|---|---|---|---|---|---|---|\n"
    );
    for run in runs {
        let all = match (&run.all_s, &run.stalled) {
            (Some(all_s), _) => format!("{all_s:.2} s"),
            (None, Some(stalled)) => stalled.clone(),
            (None, None) => "–".into(),
        };
        text.push_str(&format!(
            "| {} | {} | {} | {all} | {} | {} | {:.1} s | {} of {ticket_points} ({} queryable) |\n",
            run.system,
            seconds(run.first_s),
            seconds(run.most_s),
            seconds(run.everything_s),
            run.rss_peak_bytes.map_or("–".into(), |bytes| format!("{:.0} MB", mb(bytes))),
            run.cpu_s,
            run.exact,
            run.reached
        ));
    }
    let find = |name: &str| runs.iter().find(|run| run.system == name);
    if let (Some(queuewatch), Some(node_red)) = (find("queuewatch"), find("node-red")) {
        let ratio = |ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
            (Some(ours), Some(theirs)) => format!("{:.1}x", theirs / ours),
            (Some(_), None) => "Node-RED never got there".into(),
            _ => "–".into(),
        };
        text.push_str(&format!(
            "| ratio (Node-RED's time / queuewatch's) | {} | **{}** | {} | | | | |\n",
            ratio(queuewatch.first_s, node_red.first_s),
            ratio(queuewatch.most_s, node_red.most_s),
            ratio(queuewatch.all_s, node_red.all_s)
        ));
    }
    text
}

/// The command line that reproduces this run's figures.
fn reproduce_command(args: &PeerArgs) -> String {
    let mut command = format!(
        "target/release/queuewatch-load peer --events {} --offices {} --seed {}",
        args.backlog.events, args.backlog.offices, args.backlog.seed
    );
    if args.node_red_batch != 5_000 {
        command.push_str(&format!(" --node-red-batch {}", args.node_red_batch));
    }
    for setting in &args.daemon.set {
        command.push_str(&format!(" --set '{setting}'"));
    }
    command
}
