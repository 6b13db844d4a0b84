//! `queuewatch demo`: the whole system on one machine with nothing installed.
//!
//! Owns the wiring of four parts, all in this process:
//! - an embedded MQTT broker (rumqttd) on 127.0.0.1 (`broker.rs`);
//! - the real daemon ([`daemon::run_with`]), subscribed over MQTT exactly as
//!   in production (persistent session, QoS 1, manual acks), writing line
//!   protocol to a file and, when asked, to an InfluxDB;
//! - the simulator ([`simulate::publish`]) publishing simulated offices to
//!   the broker, starting at today's 07:30 in the first office's zone;
//! - a live table (`board.rs`, pure) fed by the daemon's tap.
//!
//! What must stay true:
//! - Nothing is published before the daemon's session exists: the session
//!   (client id [`CLIENT_ID`], `clean_session = false`) is created and
//!   subscribed first, so the broker keeps every event for the daemon however
//!   late it connects.
//! - Stopping (Ctrl-C, `--duration`) is in phases: the simulator stops and
//!   waits for its acknowledgements, then the daemon applies what it holds and
//!   flushes its sinks (its shutdown future), then the final table and the
//!   summary. The broker's threads are left to end with the process.
//! - The tap never slows the daemon: it is bounded and the daemon uses
//!   `try_send`, so a board that falls behind misses updates (the table then
//!   undercounts; the sinks do not).
//!
//! The table owns standard output; logs go to standard error at `warn` by
//! default, without rumqttd's (it logs ordinary disconnections as errors; set
//! `QUEUEWATCH_LOG` to see them). The simulator's own progress line still
//! appears on standard error every 5 s.

mod board;
mod broker;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::TimeZone as _;
use chrono_tz::Tz;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::board::{Board, BoardOffice, Phase, Status, Tapped};
pub use self::broker::{broker_config, EmbeddedBroker};
use crate::config::{
    ClockMode, Config, HttpConfig, InfluxApi, InfluxConfig, MqttConfig, OfficeConfig, ServiceSla, SlaConfig,
};
use crate::daemon::{self, Outputs, RunReport};
use crate::ids::{validate_ident, OfficeId, ServiceId};
use crate::mqtt::incoming_packet_limit;
pub use crate::simulate::display_name;
use crate::simulate::{self, Realism, SimOptions, SimReport, Simulation};
use crate::sink::{self, FileWriter, Secrets, SinkHandle, SinkReport, WriteFuture, Writer, SHUTDOWN_DEADLINE};
use crate::time::Millis;

/// The daemon's MQTT client id in the demo.
pub const CLIENT_ID: &str = "queuewatch-demo";
/// The environment variable the InfluxDB token is read from, when set.
pub const TOKEN_ENV: &str = "QUEUEWATCH_INFLUX_TOKEN";

/// `tracking.silence_after` in the demo: the longest the config takes.
const MAX_SILENCE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Simulated events carry timestamps up to `speed ×` ahead of the wall clock.
const MAX_FUTURE_SKEW: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Idle-counter breaches are on in the demo.
const IDLE_TARGET: Duration = Duration::from_secs(5 * 60);
/// Targets stricter than the defaults (wait 15 min, service 20 min) for a few
/// services, so that breaches show within the first simulated hours:
/// (service, wait target, service target), in minutes.
const SERVICE_TARGETS_MIN: [(&str, Option<u64>, Option<u64>); 4] =
    [("pkb", Some(10), None), ("ktp", Some(10), None), ("farmasi", Some(10), None), ("paspor", None, Some(15))];
/// The simulated day starts when the offices open.
const OPENING_HOUR: u32 = 7;
const OPENING_MINUTE: u32 = 30;
/// Tapped points and alerts the board may lag behind before it misses some.
const TAP_CAPACITY: usize = 16_384;
/// How often the table is drawn: in place on a terminal, appended otherwise.
const REDRAW_TERMINAL: Duration = Duration::from_secs(1);
const REDRAW_LOG: Duration = Duration::from_secs(10);

/// What `queuewatch demo` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOptions {
    pub offices: u32,
    pub counters: u32,
    pub seed: u64,
    /// Simulated seconds per wall second.
    pub speed: f64,
    /// Office days to simulate; 0 = until stopped.
    pub days: u32,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Line protocol is appended to this file.
    pub out: PathBuf,
    /// The embedded broker's port on 127.0.0.1; 0 = a free one.
    pub mqtt_port: u16,
    /// Also write to this InfluxDB.
    pub influx: Option<InfluxOptions>,
    /// How untidy the simulated days are.
    pub realism: Realism,
}

/// Where to write besides the file; the token comes from [`TOKEN_ENV`].
#[derive(Debug, Clone, PartialEq)]
pub struct InfluxOptions {
    pub url: String,
    pub api: InfluxApi,
    pub database: String,
    pub org: String,
    pub bucket: String,
}

/// What a demo run did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub simulation: SimReport,
    pub run: RunReport,
    /// Each sink's description and report (`None` if its writer did not report).
    pub sinks: Vec<(String, Option<SinkReport>)>,
}

impl DemoReport {
    /// Every point reached every sink.
    pub fn complete(&self) -> bool {
        self.run.sink.points_rejected == 0 && self.run.sink.points_unwritten_at_shutdown == 0
    }

    /// A multi-line summary for the end of a run.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "events published: {} (acknowledged by the broker: {})\n{}",
            self.simulation.events_published,
            self.simulation.events_acknowledged,
            self.run.stats.summary()
        );
        for (description, report) in &self.sinks {
            match report {
                Some(report) => {
                    text.push_str(&format!("points written to {description}: {}", report.points_written));
                    if report.points_rejected > 0 || report.points_unwritten_at_shutdown > 0 {
                        text.push_str(&format!(
                            " (refused: {}, unwritten at shutdown: {})",
                            report.points_rejected, report.points_unwritten_at_shutdown
                        ));
                    }
                    text.push('\n');
                }
                None => text.push_str(&format!("points written to {description}: unknown (no report)\n")),
            }
        }
        // The daemon counts points it could not hand to every writer in its total only.
        let unwritten_by_sinks: u64 = self
            .sinks
            .iter()
            .filter_map(|(_, report)| report.as_ref())
            .map(|report| report.points_unwritten_at_shutdown)
            .sum();
        let not_handed = self.run.sink.points_unwritten_at_shutdown.saturating_sub(unwritten_by_sinks);
        if not_handed > 0 {
            text.push_str(&format!("points not handed to every writer before shutdown: {not_handed}\n"));
        }
        text
    }
}

/// Runs the demo until `shutdown` resolves, `duration` has passed, or the
/// daemon stops; then stops in phases and reports.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<DemoReport> {
    // Listen for the signal at once, so an early Ctrl-C is not lost.
    let (stop_sender, stop_receiver) = oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(());
    });
    let deadline = options.duration.map(|duration| tokio::time::Instant::now() + duration);

    let mut demo = Demo::start(&options).await?;

    let stop_asked = async move {
        match deadline {
            Some(deadline) => tokio::select! {
                _ = stop_receiver => {}
                () = tokio::time::sleep_until(deadline) => {}
            },
            None => {
                let _ = stop_receiver.await;
            }
        }
    };
    let mut screen = Screen::for_stdout();
    let simulation = demo.show_until_stopped(&mut screen, stop_asked).await;
    demo.stop(&mut screen, simulation).await
}

/// A running demo: the daemon and the simulator tasks with their stop
/// signals, and what the board shows.
struct Demo {
    /// The daemon's state folder, removed when the demo is over.
    _state_dir: tempfile::TempDir,
    monitor: broker::Monitor,
    board: Board,
    /// What the daemon writes and publishes, for the board.
    tap: mpsc::Receiver<Tapped>,
    /// Lines the file writer has written so far.
    file_written: Arc<AtomicU64>,
    sink_reports: Vec<(String, oneshot::Receiver<SinkReport>)>,
    daemon: JoinHandle<anyhow::Result<RunReport>>,
    stop_daemon: Option<oneshot::Sender<()>>,
    simulator: JoinHandle<anyhow::Result<SimReport>>,
    stop_simulator: Option<oneshot::Sender<()>>,
}

impl Demo {
    /// Checks the options, then starts the writers, the embedded broker, the
    /// daemon and the simulator.
    async fn start(options: &DemoOptions) -> anyhow::Result<Demo> {
        // Everything that can be refused, before anything starts.
        let probe = SimOptions {
            offices: options.offices,
            counters: options.counters,
            seed: options.seed,
            speed: options.speed,
            days: options.days,
            realism: options.realism,
            ..SimOptions::new(Millis::now())
        };
        probe.validate()?;
        let offices = simulated_offices(&probe);
        let first_zone = offices.first().map_or(chrono_tz::Asia::Jakarta, |office| office.zone);
        let influx = options.influx.as_ref().map(|influx| influx_config(influx, std::env::var_os(TOKEN_ENV).is_some()));

        let OpenedSinks { sinks, reports: sink_reports, file_written } = open_sinks(&options.out, influx.as_ref())?;

        let max_packet_bytes = incoming_packet_limit(MqttConfig::default().max_payload_bytes);
        let mqtt_port = options.mqtt_port;
        let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(mqtt_port, max_packet_bytes))
            .await
            .context("the embedded MQTT broker's start failed")??;
        let mut config = demo_config(broker.port, &offices, influx);
        // The embedded broker keeps nothing across runs, so neither does the daemon.
        let state_dir =
            tempfile::Builder::new().prefix("queuewatch-demo-").tempdir().context("a temporary state folder")?;
        config.storage.data_dir = state_dir.path().to_path_buf();
        broker::create_session(broker.port, CLIENT_ID, &config.mqtt.topics).await?;
        let monitor =
            broker::Monitor::start(broker.port, "queuewatch-demo-monitor", &config.mqtt.topics[0], max_packet_bytes)
                .await?;

        let board = Board::new(
            offices.iter().map(|office| office.board_office()).collect(),
            format!("broker {} · line protocol appended to {}", broker.url(), options.out.display()),
        );
        let (tap_sender, tap) = mpsc::channel(TAP_CAPACITY);
        let (stop_daemon, daemon_stop) = oneshot::channel::<()>();
        let stop_daemon = Some(stop_daemon);
        // The board sees what the daemon writes and publishes; `try_send`: a slow
        // board misses updates, the daemon never waits.
        let points_tap = tap_sender.clone();
        let outputs = Outputs {
            sinks,
            on_point: Some(Box::new(move |point| {
                let _ = points_tap.try_send(Tapped::Point(point.clone()));
            })),
            on_alert: Some(Box::new(move |alert| {
                let _ = tap_sender.try_send(Tapped::Alert(alert.clone()));
            })),
        };
        let daemon = tokio::spawn(daemon::run_with(config, outputs, async move {
            let _ = daemon_stop.await;
        }));

        let sim_options = SimOptions { url: broker.url(), start: opening_today(first_zone, Millis::now()), ..probe };
        let (stop_simulator, simulator_stop) = oneshot::channel::<()>();
        let stop_simulator = Some(stop_simulator);
        let simulator = tokio::spawn(async move {
            simulate::publish(&sim_options, async move {
                let _ = simulator_stop.await;
            })
            .await
        });
        Ok(Demo {
            _state_dir: state_dir,
            monitor,
            board,
            tap,
            file_written,
            sink_reports,
            daemon,
            stop_daemon,
            simulator,
            stop_simulator,
        })
    }

    /// Redraws the board and takes in what the daemon writes until it has
    /// finished: asked to (by `stop_asked`, or at the end of an unsuccessful
    /// simulation) or on its own. Returns how the simulation ended, if it did.
    async fn show_until_stopped(
        &mut self,
        screen: &mut Screen,
        stop_asked: impl Future<Output = ()>,
    ) -> Option<anyhow::Result<SimReport>> {
        tokio::pin!(stop_asked);
        let mut redraw = tokio::time::interval(screen.redraw_every());
        redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut phase = Phase::Running;
        let mut simulation: Option<anyhow::Result<SimReport>> = None;

        loop {
            let input = tokio::select! {
                biased;
                () = &mut stop_asked, if phase != Phase::Stopping => Input::Stop,
                joined = &mut self.simulator, if simulation.is_none() => {
                    Input::SimulationEnded(joined.context("the simulator task failed").and_then(|result| result))
                }
                _ = redraw.tick() => Input::Redraw,
                tapped = self.tap.recv() => match tapped {
                    Some(tapped) => Input::Tapped(tapped),
                    None => Input::TapClosed,
                },
            };
            match input {
                Input::Stop => {
                    phase = Phase::Stopping;
                    send(&mut self.stop_simulator);
                    if simulation.is_some() {
                        send(&mut self.stop_daemon);
                    }
                }
                Input::SimulationEnded(result) => {
                    // The daemon keeps running after the last simulated day, until stopped.
                    if phase == Phase::Stopping || result.is_err() {
                        phase = Phase::Stopping;
                        send(&mut self.stop_daemon);
                    } else {
                        phase = Phase::SimulationEnded;
                    }
                    simulation = Some(result);
                }
                Input::Redraw => screen.show(&self.board.render(&status(&self.monitor, &self.file_written, phase))),
                Input::Tapped(tapped) => self.board.apply(&tapped),
                // The daemon has finished (asked to, or on its own).
                Input::TapClosed => break,
            }
        }
        simulation
    }

    /// Stops the simulator, then the daemon, and gathers their reports and the writers'.
    async fn stop(
        mut self,
        screen: &mut Screen,
        simulation: Option<anyhow::Result<SimReport>>,
    ) -> anyhow::Result<DemoReport> {
        send(&mut self.stop_simulator);
        let simulation = match simulation {
            Some(result) => result,
            None => self.simulator.await.context("the simulator task failed").and_then(|result| result),
        };
        send(&mut self.stop_daemon);
        let run = self.daemon.await.context("the daemon task failed")??;
        screen.show(&self.board.render(&status(&self.monitor, &self.file_written, Phase::Stopped)));
        let simulation = simulation?;
        let mut sinks = Vec::with_capacity(self.sink_reports.len());
        for (description, report) in self.sink_reports {
            sinks.push((description, report.await.ok()));
        }
        Ok(DemoReport { simulation, run, sinks })
    }
}

/// The writers, each with a copy of its report for the summary.
struct OpenedSinks {
    sinks: Vec<(SinkHandle, JoinHandle<SinkReport>)>,
    reports: Vec<(String, oneshot::Receiver<SinkReport>)>,
    /// Lines the file writer has written so far.
    file_written: Arc<AtomicU64>,
}

/// A line-protocol file at `out` (appended to), and an InfluxDB when configured.
fn open_sinks(out: &Path, influx: Option<&InfluxConfig>) -> anyhow::Result<OpenedSinks> {
    let file_writer =
        FileWriter::open(out).with_context(|| format!("--out {}: cannot open for appending", out.display()))?;
    let file_written = Arc::new(AtomicU64::new(0));
    let defaults = InfluxConfig::default();
    let (file_sink, file_task) = sink::spawn_with(
        Box::new(CountingWriter { inner: Box::new(file_writer), written: Arc::clone(&file_written) }),
        defaults.batch_size,
        defaults.flush_interval,
        defaults.max_backoff,
        SHUTDOWN_DEADLINE,
    );
    let (file_task, file_report) = with_report_copy(file_task);
    let mut opened = OpenedSinks {
        sinks: vec![(file_sink, file_task)],
        reports: vec![(out.display().to_string(), file_report)],
        file_written,
    };
    if let Some(influx) = influx {
        let secrets = Secrets::resolve(influx).context("InfluxDB token")?;
        let (influx_sink, influx_task) =
            sink::spawn(influx, secrets, None, SHUTDOWN_DEADLINE).context("--influx-url: cannot write to InfluxDB")?;
        let (influx_task, influx_report) = with_report_copy(influx_task);
        opened.sinks.push((influx_sink, influx_task));
        opened.reports.push((describe_influx(influx), influx_report));
    }
    Ok(opened)
}

/// Inputs of the demo's loop: a closed set.
enum Input {
    Stop,
    SimulationEnded(anyhow::Result<SimReport>),
    Redraw,
    Tapped(Tapped),
    TapClosed,
}

fn send(stop: &mut Option<oneshot::Sender<()>>) {
    if let Some(stop) = stop.take() {
        let _ = stop.send(());
    }
}

fn status(monitor: &broker::Monitor, file_written: &AtomicU64, phase: Phase) -> Status {
    Status { events_published: monitor.count(), points_written: file_written.load(Ordering::Relaxed), phase }
}

/// A simulated office as the demo configures and shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOffice {
    pub id: OfficeId,
    pub name: String,
    /// The zone's abbreviation in lower case (`wib`, `wita`, `wit`): Indonesia's time-zone regions.
    pub region: Option<String>,
    pub zone: Tz,
}

impl DemoOffice {
    fn board_office(&self) -> BoardOffice {
        BoardOffice { id: self.id.to_string(), name: self.name.clone(), zone: self.zone }
    }
}

/// The offices `options` simulates, in order, each in the zone its
/// timestamps' offset names.
pub fn simulated_offices(options: &SimOptions) -> Vec<DemoOffice> {
    let mut simulation = Simulation::new(options);
    let names = simulation.office_names();
    // Every office starts with a heartbeat at the start: its first event.
    let mut offsets_s = std::collections::HashMap::new();
    for event in simulation.by_ref().take(names.len() * 100) {
        offsets_s.entry(event.office).or_insert_with(|| payload_offset_s(&event.payload));
        if offsets_s.len() == names.len() {
            break;
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let id = OfficeId::parse(&name).ok()?;
            let zone = offsets_s.get(&name).copied().flatten().map_or(chrono_tz::Asia::Jakarta, zone_for_offset);
            Some(DemoOffice { name: display_name(&name), region: zone_region(zone, options.start), zone, id })
        })
        .collect()
}

/// Indonesia's zones by offset; elsewhere a fixed-offset zone.
fn zone_for_offset(offset_s: i32) -> Tz {
    match offset_s {
        25_200 => chrono_tz::Asia::Jakarta,
        28_800 => chrono_tz::Asia::Makassar,
        32_400 => chrono_tz::Asia::Jayapura,
        // `Etc/GMT-7` is UTC+7 (POSIX signs are inverted).
        _ if offset_s % 3600 == 0 => format!("Etc/GMT{:+}", -offset_s / 3600).parse().unwrap_or(chrono_tz::UTC),
        _ => chrono_tz::UTC,
    }
}

/// The UTC offset of a payload's `ts`.
fn payload_offset_s(payload: &str) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let ts = chrono::DateTime::parse_from_rfc3339(value.get("ts")?.as_str()?).ok()?;
    Some(ts.offset().local_minus_utc())
}

fn zone_region(zone: Tz, at: Millis) -> Option<String> {
    let abbreviation = zone.timestamp_millis_opt(at.0).single()?.format("%Z").to_string().to_lowercase();
    validate_ident(&abbreviation).is_ok().then_some(abbreviation)
}

/// Today's opening time (07:30) in `zone`, today being the date there at `now`.
pub fn opening_today(zone: Tz, now: Millis) -> Millis {
    let opening = zone
        .timestamp_millis_opt(now.0)
        .single()
        .and_then(|local| local.date_naive().and_hms_opt(OPENING_HOUR, OPENING_MINUTE, 0))
        .and_then(|opening| zone.from_local_datetime(&opening).earliest());
    opening.map_or(now, |opening| Millis(opening.timestamp_millis()))
}

/// The daemon's configuration for the demo: the embedded broker, a large
/// future skew, idle breaches and a few strict targets, the offices' names,
/// regions and zones.
pub fn demo_config(broker_port: u16, offices: &[DemoOffice], influx: Option<InfluxConfig>) -> Config {
    let mut config = Config {
        mqtt: MqttConfig {
            url: format!("mqtt://127.0.0.1:{broker_port}"),
            host: "127.0.0.1".into(),
            port: broker_port,
            client_id: CLIENT_ID.into(),
            ..MqttConfig::default()
        },
        influxdb: influx.unwrap_or_default(),
        sla: SlaConfig { idle_target: Some(IDLE_TARGET), ..SlaConfig::default() },
        // The demo runs beside anything, a production daemon on 9108 included.
        http: HttpConfig { listen: None },
        ..Config::default()
    };
    config.tracking.max_future_skew = MAX_FUTURE_SKEW;
    config.tracking.clock = ClockMode::Event;
    // `silent` is judged on the wall clock, which the demo's compressed
    // days do not follow: never silent.
    config.tracking.silence_after = MAX_SILENCE;
    let minutes = |minutes: Option<u64>| minutes.map(|minutes| Duration::from_secs(minutes * 60));
    for (service, wait_min, service_min) in SERVICE_TARGETS_MIN {
        // The table above holds valid identifiers.
        let service = ServiceId::parse(service).expect("a valid service id");
        config
            .sla
            .services
            .insert(service, ServiceSla { wait_target: minutes(wait_min), service_target: minutes(service_min) });
    }
    for office in offices {
        config.offices.insert(
            office.id.clone(),
            OfficeConfig {
                name: Some(office.name.clone()),
                region: office.region.clone(),
                timezone: office.zone,
                // The simulated hours, so that the day closes on event time and
                // walk-outs are counted as left (`abandoned`).
                hours: simulate::opening_hours().to_vec(),
                ..OfficeConfig::default()
            },
        );
    }
    config
}

fn influx_config(influx: &InfluxOptions, token_set: bool) -> InfluxConfig {
    InfluxConfig {
        api: influx.api,
        url: influx.url.clone(),
        org: influx.org.clone(),
        bucket: influx.bucket.clone(),
        database: influx.database.clone(),
        token_env: token_set.then(|| TOKEN_ENV.to_string()),
        ..InfluxConfig::default()
    }
}

fn describe_influx(influx: &InfluxConfig) -> String {
    let api = match influx.api {
        InfluxApi::V1 => format!("v1, database {}", influx.database),
        InfluxApi::V2 => format!("v2, bucket {}", influx.bucket),
        InfluxApi::V3 => format!("v3, database {}", influx.database),
    };
    let url = reqwest::Url::parse(&influx.url).map_or_else(
        |_| influx.url.clone(),
        |mut url| {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        },
    );
    format!("InfluxDB {url} ({api})")
}

/// `--influx-url`: an http:// or https:// URL with a host.
pub fn parse_influx_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(text.to_string()),
        Ok(_) => Err(format!("{text:?} is not an http:// or https:// URL")),
        Err(error) => Err(format!("{text:?} is not a valid URL: {error}")),
    }
}

/// `--influx-api`: `v1`, `v2` or `v3`.
pub fn parse_influx_api(text: &str) -> Result<InfluxApi, String> {
    match text {
        "v1" => Ok(InfluxApi::V1),
        "v2" => Ok(InfluxApi::V2),
        "v3" => Ok(InfluxApi::V3),
        other => Err(format!("{other:?} is none of \"v1\", \"v2\" and \"v3\"")),
    }
}

/// Counts the lines its writer has written, for the table's header.
struct CountingWriter {
    inner: Box<dyn Writer>,
    written: Arc<AtomicU64>,
}

impl Writer for CountingWriter {
    fn write<'a>(&'a self, body: &'a str) -> WriteFuture<'a> {
        Box::pin(async move {
            let written = self.inner.write(body).await;
            if written.is_ok() {
                // Lines cannot contain a raw newline: each ends with one.
                self.written.fetch_add(body.matches('\n').count() as u64, Ordering::Relaxed);
            }
            written
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Passes `task`'s report on unchanged (the daemon sums the reports of all
/// sinks) and keeps a copy for the per-sink summary.
fn with_report_copy(task: JoinHandle<SinkReport>) -> (JoinHandle<SinkReport>, oneshot::Receiver<SinkReport>) {
    let (copy_sender, copy) = oneshot::channel();
    let forwarding = tokio::spawn(async move {
        match task.await {
            Ok(report) => {
                let _ = copy_sender.send(report.clone());
                report
            }
            // A panic stays a panic, for the daemon to report.
            Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
            Err(_) => SinkReport::default(),
        }
    });
    (forwarding, copy)
}

/// Where the table goes: a terminal (redrawn in place) or anything else
/// (appended every [`REDRAW_LOG`]).
struct Screen {
    terminal: bool,
    drawn: bool,
}

impl Screen {
    fn for_stdout() -> Screen {
        Screen { terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()), drawn: false }
    }

    fn redraw_every(&self) -> Duration {
        if self.terminal {
            REDRAW_TERMINAL
        } else {
            REDRAW_LOG
        }
    }

    fn show(&mut self, table: &str) {
        let frame = frame(table, self.terminal, !self.drawn);
        self.drawn = true;
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`| head`) must not stop the demo.
        let _ = stdout.write_all(frame.as_bytes()).and_then(|()| stdout.flush());
    }
}

/// On a terminal: home, each line clearing its rest, then clear below (the
/// whole screen first on the first draw). Otherwise the table and a blank line.
fn frame(table: &str, terminal: bool, first: bool) -> String {
    if !terminal {
        return format!("{table}\n");
    }
    let mut frame = String::with_capacity(table.len() + 256);
    if first {
        frame.push_str("\x1b[2J");
    }
    frame.push_str("\x1b[H");
    for line in table.lines() {
        frame.push_str(line);
        frame.push_str("\x1b[K\n");
    }
    frame.push_str("\x1b[J");
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Millis {
        simulate::parse_start(text).unwrap()
    }

    #[test]
    fn office_ids_become_display_names() {
        assert_eq!(display_name("mpp-jakarta-pusat"), "MPP Jakarta Pusat");
        assert_eq!(display_name("samsat-bandung"), "Samsat Bandung");
        assert_eq!(display_name("rs-makassar"), "RS Makassar");
        assert_eq!(display_name("mpp-jakarta-pusat-2"), "MPP Jakarta Pusat 2");
    }

    #[test]
    fn simulated_offices_take_the_zone_of_their_timestamps() {
        let options = SimOptions { offices: 13, ..SimOptions::new(at("2026-11-27T06:00:00+07:00")) };
        let offices = simulated_offices(&options);
        assert_eq!(offices.len(), 13);
        let by_id = |id: &str| offices.iter().find(|office| office.id.as_str() == id).unwrap().clone();
        let jakarta = by_id("mpp-jakarta-pusat");
        assert_eq!((jakarta.zone, jakarta.region.as_deref()), (chrono_tz::Asia::Jakarta, Some("wib")));
        assert_eq!(jakarta.name, "MPP Jakarta Pusat");
        assert_eq!(by_id("rs-makassar").zone, chrono_tz::Asia::Makassar);
        assert_eq!(by_id("rs-makassar").region.as_deref(), Some("wita"));
        assert_eq!(by_id("rs-jayapura").zone, chrono_tz::Asia::Jayapura);
        assert_eq!(by_id("rs-jayapura").region.as_deref(), Some("wit"));
        assert_eq!(by_id("mpp-jakarta-pusat-2").zone, chrono_tz::Asia::Jakarta);
    }

    #[test]
    fn other_whole_hour_offsets_get_a_fixed_zone() {
        assert_eq!(zone_for_offset(36_000), chrono_tz::Etc::GMTMinus10);
        assert_eq!(zone_for_offset(-18_000), chrono_tz::Etc::GMTPlus5);
        assert_eq!(zone_for_offset(19_800), chrono_tz::UTC);
    }

    #[test]
    fn the_day_starts_at_today_s_opening_in_the_office_zone() {
        let zone = chrono_tz::Asia::Jakarta;
        assert_eq!(opening_today(zone, at("2026-11-27T20:00:00+07:00")), at("2026-11-27T07:30:00+07:00"));
        assert_eq!(opening_today(zone, at("2026-11-27T05:00:00+07:00")), at("2026-11-27T07:30:00+07:00"));
        // 23:30 UTC on the 26th is already the 27th in Jakarta.
        assert_eq!(opening_today(zone, at("2026-11-26T23:30:00Z")), at("2026-11-27T07:30:00+07:00"));
    }

    #[test]
    fn the_config_names_the_broker_session_offices_and_targets() {
        let offices = simulated_offices(&SimOptions::new(at("2026-11-27T06:00:00+07:00")));
        let config = demo_config(18_830, &offices, None);
        assert_eq!(config.mqtt.url, "mqtt://127.0.0.1:18830");
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("127.0.0.1", 18_830));
        assert_eq!(config.mqtt.client_id, CLIENT_ID);
        assert!(config.tracking.max_future_skew >= Duration::from_secs(365 * 24 * 3600));
        assert_eq!(config.tracking.clock, ClockMode::Event, "simulated time runs ahead of the wall clock");
        assert_eq!(config.sla.idle_target, Some(IDLE_TARGET));
        let pkb = config.sla.targets_for(None, &ServiceId::parse("pkb").unwrap());
        assert_eq!((pkb.wait_ms, pkb.service_ms), (600_000, 1_200_000));
        let paspor = config.sla.targets_for(None, &ServiceId::parse("paspor").unwrap());
        assert_eq!((paspor.wait_ms, paspor.service_ms), (900_000, 900_000));
        assert_eq!(config.offices.len(), 3);
        let samsat = &config.offices[&OfficeId::parse("samsat-bandung").unwrap()];
        assert_eq!(samsat.name.as_deref(), Some("Samsat Bandung"));
        assert_eq!(samsat.region.as_deref(), Some("wib"));
        assert!(samsat.has_hours(), "the day closes, so walk-outs are counted as left");
        assert_eq!(config.tracking.silence_after, MAX_SILENCE, "hours on the wall clock must not make offices silent");
    }

    #[test]
    fn the_broker_listens_on_loopback_with_dynamic_filters_and_large_packets() {
        let config = broker_config(18_831, 1 << 20);
        let servers = config.v4.as_ref().unwrap();
        assert_eq!(servers.len(), 1);
        let server = servers.values().next().unwrap();
        assert_eq!(server.listen.to_string(), "127.0.0.1:18831");
        assert!(server.connections.dynamic_filters);
        assert_eq!(server.connections.max_payload_size, 1 << 20);
        assert!(config.v5.is_none() && config.ws.is_none() && config.console.is_none());
    }

    #[test]
    fn a_terminal_frame_redraws_in_place_and_a_log_frame_appends() {
        let table = "a\nb\n";
        assert_eq!(frame(table, true, true), "\x1b[2J\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J");
        assert_eq!(frame(table, true, false), "\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J");
        assert_eq!(frame(table, false, true), "a\nb\n\n");
    }

    #[test]
    fn the_summary_names_each_sink_and_what_it_could_not_write() {
        let file = SinkReport { points_written: 10, ..SinkReport::default() };
        let influx = SinkReport { points_written: 4, points_unwritten_at_shutdown: 5, ..SinkReport::default() };
        let report = DemoReport {
            simulation: SimReport {
                events_published: 12,
                events_acknowledged: 12,
                elapsed: Duration::from_secs(3),
                interrupted: true,
                simulated_until: None,
            },
            run: RunReport {
                stats: crate::stats::Stats { accepted: 12, points: 10, ..Default::default() },
                // The sum of both sinks, plus one point handed to the file only.
                sink: SinkReport { points_written: 14, points_unwritten_at_shutdown: 6, ..SinkReport::default() },
                mqtt: Default::default(),
            },
            sinks: vec![
                ("demo.lp".into(), Some(file)),
                ("InfluxDB http://db:8086/ (v1, database q)".into(), Some(influx)),
            ],
        };
        let summary = report.summary();
        assert!(summary.starts_with("events published: 12 (acknowledged by the broker: 12)\nevents accepted: 12\n"));
        assert!(summary.contains("\npoints written to demo.lp: 10\n"), "{summary}");
        assert!(summary.contains(
            "\npoints written to InfluxDB http://db:8086/ (v1, database q): 4 (refused: 0, unwritten at shutdown: 5)\n"
        ));
        assert!(summary.ends_with("\npoints not handed to every writer before shutdown: 1\n"), "{summary}");
        assert!(!report.complete());
    }

    #[test]
    fn influx_options_are_checked() {
        assert!(parse_influx_url("http://127.0.0.1:8086").is_ok());
        assert!(parse_influx_url("ftp://x").is_err());
        assert!(parse_influx_url("127.0.0.1:8086").is_err());
        assert_eq!(parse_influx_api("v1"), Ok(InfluxApi::V1));
        assert_eq!(parse_influx_api("v3"), Ok(InfluxApi::V3));
        assert!(parse_influx_api("v4").is_err());
        let config = InfluxConfig { url: "http://user:secret@db:8086/".into(), ..InfluxConfig::default() };
        let described = describe_influx(&config);
        assert!(!described.contains("secret"), "{described}");
        assert_eq!(described, "InfluxDB http://db:8086/ (v2, bucket queuewatch)");
    }
}
