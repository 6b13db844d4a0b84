//! The `queuewatch` command: parse the command line, set up logging, load
//! the config, call the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use queuewatch::config::Config;
use queuewatch::replay::{replay, ReplayOutput};
#[cfg(feature = "simulate")]
use queuewatch::simulate::{self, SimOptions};
#[cfg(feature = "simulate")]
use queuewatch::time::Millis;

#[derive(Parser)]
#[command(
    name = "queuewatch",
    version,
    about = "Service-queue timing monitor: ticket-machine events over MQTT become exact timing points in InfluxDB."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum StateAction {
    /// Keep the saved state and record the configured broker and client id as its session: the same broker
    /// under another name or address.
    Adopt {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Rename the saved state to state.set-aside-<time> (kept, not deleted), so that `run` starts afresh.
    SetAside {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: subscribe over MQTT, write points to InfluxDB.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Feed NDJSON event files (one event with its `office` per line; `-` for stdin) through the tracker.
    Replay {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Write line protocol to this file instead of InfluxDB.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Gauge rows (`queue`, `office`): `off`, or an interval such as `1h` instead of the config's
        /// tracking.snapshot_interval (backfills of months rarely need 10-second gauges). Other points
        /// do not change.
        #[arg(long, value_name = "off|INTERVAL", value_parser = queuewatch::replay::Gauges::parse)]
        gauges: Option<queuewatch::replay::Gauges>,
        #[arg(required = true, value_name = "EVENTS")]
        events: Vec<String>,
    },
    /// Send the lines InfluxDB refused (storage.data_dir/dead-letters.lp) again, once their cause is fixed:
    /// lines it now takes leave the file, lines it still refuses stay with its new answer.
    ResendDeadLetters {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Decide about saved state (storage.data_dir) that belongs to another MQTT session, which `run` refuses
    /// to start on. Not while the daemon runs.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Print the hash `privacy.staff = "hash"` gives each staff id, one `NAME<TAB>HASH` a line, so that an
    /// office can find its own staff in the points.
    StaffHash {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Validate a config file, report every problem, exit non-zero on any.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Publish the events of simulated offices over MQTT (or write them as NDJSON), for demos and load tests.
    #[cfg(feature = "simulate")]
    Simulate(SimulateArgs),
    /// Run everything on this machine: an embedded MQTT broker, the daemon, the simulator, and a live table.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

// `simulate`'s options (their help is the variant's).
#[cfg(feature = "simulate")]
#[derive(clap::Args)]
struct SimulateArgs {
    /// The broker.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    url: String,
    /// Number of offices.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    offices: u32,
    /// Counters per office.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    counters: u32,
    /// The same seed and options give the same events.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per wall second (60: an hour a minute). Above 1, event timestamps run ahead of
    /// the wall clock: raise the daemon's tracking.max_future_skew to cover the simulated span, or --start
    /// the simulation in the past.
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = simulate::parse_positive)]
    speed: f64,
    /// Publish N events per second regardless of the day's pacing (load tests); timestamps still follow
    /// the model.
    #[arg(long, value_name = "N", conflicts_with = "speed", value_parser = simulate::parse_positive)]
    rate: Option<f64>,
    /// Office days to simulate; 0 = forever.
    #[arg(long, value_name = "N", default_value_t = 1)]
    days: u32,
    /// The simulated start, RFC 3339 with an offset [default: now].
    #[arg(long, value_name = "RFC3339", value_parser = simulate::parse_start)]
    start: Option<Millis>,
    /// Topics are PREFIX/<office>/events.
    #[arg(long, value_name = "PREFIX", default_value = "queue", value_parser = simulate::validate_topic_prefix)]
    topic_prefix: String,
    /// MQTT client id [default: queuewatch-simulate-<pid>].
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Write the events as NDJSON to FILE (`-`: standard output) as fast as they are generated, instead of
    /// publishing them.
    #[arg(long, value_name = "FILE")]
    ndjson: Option<PathBuf>,
    /// Also write each ticket's ground truth (how it ended, whether a tracker could see it) as NDJSON to
    /// FILE, before publishing. Needs --days above 0.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// Print the simulated offices' [offices.<id>] config sections (zones, opening hours) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    realism: RealismArgs,
}

// `demo`'s options (their help is the variant's).
#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct DemoArgs {
    /// Number of simulated offices.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    offices: u32,
    /// Counters per office.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    counters: u32,
    /// The same seed gives the same events.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per wall second (60: an hour a minute). The day starts at today's 07:30.
    #[arg(long, value_name = "X", default_value_t = 60.0, value_parser = simulate::parse_positive)]
    speed: f64,
    /// Office days to simulate; 0 = until stopped. The daemon and the table run on after the last day.
    #[arg(long, value_name = "N", default_value_t = 1)]
    days: u32,
    /// Stop by itself after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = simulate::parse_positive)]
    duration: Option<f64>,
    /// Append line protocol to this file.
    #[arg(long, value_name = "FILE", default_value = "queuewatch-demo.lp")]
    out: PathBuf,
    /// The embedded broker's port on 127.0.0.1 [default: a free port].
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    mqtt_port: u16,
    /// Also write to this InfluxDB (token from QUEUEWATCH_INFLUX_TOKEN when set).
    #[arg(long, value_name = "URL", value_parser = queuewatch::demo::parse_influx_url)]
    influx_url: Option<String>,
    /// `v2`: /api/v2/write (InfluxDB 1.8+, 2.x, 3.x); `v1`: /write (1.x); `v3`: /api/v3/write_lp (3.x).
    #[arg(long, value_name = "v1|v2|v3", default_value = "v2", requires = "influx_url",
          value_parser = queuewatch::demo::parse_influx_api)]
    influx_api: queuewatch::config::InfluxApi,
    /// The v1 and v3 database.
    #[arg(long, value_name = "NAME", default_value = "queuewatch", requires = "influx_url")]
    influx_database: String,
    /// The v2 organisation.
    #[arg(long, value_name = "ORG", default_value = "", requires = "influx_url")]
    influx_org: String,
    /// The v2 bucket.
    #[arg(long, value_name = "NAME", default_value = "queuewatch", requires = "influx_url")]
    influx_bucket: String,
    #[command(flatten)]
    realism: RealismArgs,
}

/// How untidy the simulated days are (`simulate` and `demo`); each part has a way to turn it off.
#[cfg(feature = "simulate")]
#[derive(clap::Args)]
struct RealismArgs {
    /// Share of tickets whose customer walks out unseen, never called (0: none).
    #[arg(long, value_name = "PCT", default_value = "4", value_parser = simulate::parse_percent)]
    walkouts: f64,
    /// `on-time`: counters close at 15:30 and whoever still waits leaves unseen; `when-empty`: they stay
    /// until their queues are empty.
    #[arg(long, value_name = "on-time|when-empty", default_value = "on-time", value_parser = simulate::parse_closing)]
    closing: simulate::Closing,
    /// Share of office-days with arrivals at 110-125 % of what the counters can serve (0: none).
    #[arg(long, value_name = "PCT", default_value = "20", value_parser = simulate::parse_percent)]
    busy_days: f64,
    /// Share of office-days on which every counter of one service lunches at once (0: none).
    #[arg(long, value_name = "PCT", default_value = "10", value_parser = simulate::parse_percent)]
    service_lunch_days: f64,
    /// Hours per office and simulated week in which the kiosk publishes no `issued` (0: none).
    #[arg(long, value_name = "N", default_value_t = 1)]
    kiosk_outages: u32,
    /// None of the above: every ticket issued is published and closed by an event.
    #[arg(long, conflicts_with_all = ["walkouts", "closing", "busy_days", "service_lunch_days", "kiosk_outages"])]
    tidy: bool,
}

#[cfg(feature = "simulate")]
impl RealismArgs {
    fn realism(&self) -> simulate::Realism {
        if self.tidy {
            return simulate::Realism::tidy();
        }
        simulate::Realism {
            walkout_share: self.walkouts,
            closing: self.closing,
            busy_day_share: self.busy_days,
            service_lunch_share: self.service_lunch_days,
            kiosk_outages_per_week: self.kiosk_outages,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::State { action } => state(action),
        Command::StaffHash { config, names } => staff_hash(&config, &names),
        Command::Run { config } => run(&config),
        Command::Replay { config, out, gauges, events } => replay_events(&config, out, gauges, &events),
        Command::ResendDeadLetters { config } => resend_dead_letters(&config),
        #[cfg(feature = "simulate")]
        Command::Simulate(args) => simulate_events(args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo(args),
    }
}

/// Logs to standard error, filtered by `QUEUEWATCH_LOG`.
#[cfg_attr(not(feature = "demo"), allow(unused_variables))]
fn init_logging(command: &Command) {
    // The demo's table owns the terminal: warnings only, and none from the embedded broker, which logs
    // ordinary disconnections as errors.
    #[cfg(feature = "demo")]
    let default_log_filter = if matches!(command, Command::Demo { .. }) { "warn,rumqttd=off" } else { "info" };
    #[cfg(not(feature = "demo"))]
    let default_log_filter = "info";
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUEUEWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `check-config`.
fn check_config(file: &Path) -> ExitCode {
    match load_config(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `state adopt`, `state set-aside`.
fn state(action: StateAction) -> ExitCode {
    let (config, choice) = match action {
        StateAction::Adopt { config } => (config, queuewatch::storage::OtherSession::Adopt),
        StateAction::SetAside { config } => (config, queuewatch::storage::OtherSession::SetAside),
    };
    let config = match load_config(&config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let session = queuewatch::storage::Session::of(&config);
    match queuewatch::storage::StateDir::open_with(&config.storage.data_dir, &session, choice) {
        Ok(state) => {
            println!("{}: the state belongs to {}", state.path().display(), session.describe());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error.into()),
    }
}

/// `staff-hash`.
fn staff_hash(config: &Path, names: &[String]) -> ExitCode {
    let config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    print_staff_hashes(&config, names)
}

/// `run`.
fn run(config: &Path) -> ExitCode {
    let config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = runtime();
    let code = runtime.block_on(async {
        match queuewatch::daemon::run(config, shutdown_signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        }
    });
    // `run` kept to its shutdown budget; a blocking task still
    // running (an encoding whose batch was given up) must not hold
    // the exit, which dropping the runtime would wait for.
    runtime.shutdown_background();
    code
}

/// `replay`.
fn replay_events(
    config: &Path,
    out: Option<PathBuf>,
    gauges: Option<queuewatch::replay::Gauges>,
    events: &[String],
) -> ExitCode {
    let mut config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(gauges) = gauges {
        gauges.apply(&mut config);
    }
    let output = out.map_or(ReplayOutput::Influx, ReplayOutput::File);
    runtime().block_on(async {
        match replay(&config, events, output).await {
            Ok(report) => finish(&report.summary(), report.complete()),
            Err(error) => fail(&error),
        }
    })
}

/// `resend-dead-letters`.
fn resend_dead_letters(config: &Path) -> ExitCode {
    let config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    runtime().block_on(async {
        match queuewatch::sink::dead_letter::resend_configured(&config).await {
            Ok(report) => finish(&report.summary(), report.refused + report.kept == 0),
            Err(error) => fail(&error.into()),
        }
    })
}

/// `simulate`: prints the offices' config, or writes the truth and then the
/// events as NDJSON, or publishes them.
#[cfg(feature = "simulate")]
fn simulate_events(args: SimulateArgs) -> ExitCode {
    let SimulateArgs {
        url,
        offices,
        counters,
        seed,
        speed,
        rate,
        days,
        start,
        topic_prefix,
        client_id,
        ndjson,
        truth,
        print_config,
        realism,
    } = args;
    let options = SimOptions {
        url,
        offices,
        counters,
        seed,
        speed,
        rate,
        days,
        start: start.unwrap_or_else(Millis::now),
        topic_prefix,
        client_id,
        realism: realism.realism(),
    };
    if print_config {
        print!("{}", simulate::office_config_toml(&options));
        return ExitCode::SUCCESS;
    }
    if let Some(path) = truth {
        if options.days == 0 {
            eprintln!("queuewatch: --truth needs a simulation that ends: --days above 0");
            return ExitCode::from(2);
        }
        match std::fs::File::create(&path).and_then(|file| simulate::write_truth(&options, file)) {
            Ok(count) => eprintln!("simulate: {count} tickets' truth written to {}", path.display()),
            Err(error) => {
                eprintln!("queuewatch: {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = ndjson {
        let written = if path.as_os_str() == "-" {
            simulate::write_ndjson(&options, std::io::stdout().lock())
        } else {
            std::fs::File::create(&path).and_then(|file| simulate::write_ndjson(&options, file))
        };
        return match written {
            Ok(count) => {
                eprintln!("simulate: {count} events written to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("queuewatch: {}: {error}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    runtime().block_on(async {
        match simulate::publish(&options, shutdown_signal()).await {
            Ok(report) => {
                println!("{}", report.summary());
                if report.complete() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("queuewatch: the broker did not acknowledge every event");
                    ExitCode::FAILURE
                }
            }
            Err(error) => fail(&error),
        }
    })
}

/// `demo`.
#[cfg(feature = "demo")]
fn demo(args: DemoArgs) -> ExitCode {
    let DemoArgs {
        offices,
        counters,
        seed,
        speed,
        days,
        duration,
        out,
        mqtt_port,
        influx_url,
        influx_api,
        influx_database,
        influx_org,
        influx_bucket,
        realism,
    } = args;
    let options = queuewatch::demo::DemoOptions {
        offices,
        counters,
        seed,
        speed,
        days,
        duration: duration.and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok()),
        out,
        mqtt_port,
        influx: influx_url.map(|url| queuewatch::demo::InfluxOptions {
            url,
            api: influx_api,
            database: influx_database,
            org: influx_org,
            bucket: influx_bucket,
        }),
        realism: realism.realism(),
    };
    runtime().block_on(async {
        match queuewatch::demo::run(options, shutdown_signal()).await {
            Ok(report) => finish(&report.summary(), report.complete()),
            Err(error) => fail(&error),
        }
    })
}

/// The config, or the exit code for a config that has problems (printed, all of them).
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    let config = queuewatch::preflight::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    queuewatch::preflight::warnings(&config)
        .iter()
        .for_each(|warning| eprintln!("{}: warning: {warning}", path.display()));
    Ok(config)
}

/// `staff-hash`'s output: each name with its hash; a name that is not a valid staff
/// id is named as such (an event carrying it is rejected, never hashed).
fn print_staff_hashes(config: &Config, names: &[String]) -> ExitCode {
    let privacy = match queuewatch::privacy::StaffPrivacy::from_config(config) {
        Ok(privacy) if privacy.hash("").is_some() => privacy,
        Ok(_) => {
            eprintln!("queuewatch: privacy.staff is not \"hash\" in this config: staff ids are not hashed");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("queuewatch: {error}");
            return ExitCode::from(2);
        }
    };
    let mut code = ExitCode::SUCCESS;
    for name in names {
        match (queuewatch::ids::StaffId::parse(name), privacy.hash(name)) {
            (Ok(_), Some(hash)) => println!("{name}\t{hash}"),
            (Err(why), _) => {
                eprintln!("queuewatch: {name:?}: not a staff id: it {why}");
                code = ExitCode::FAILURE;
            }
            (Ok(_), None) => code = ExitCode::FAILURE,
        }
    }
    code
}

/// Prints a run's summary; fails when some points were not written.
fn finish(summary: &str, complete: bool) -> ExitCode {
    print!("{summary}");
    if complete {
        ExitCode::SUCCESS
    } else {
        eprintln!("queuewatch: some points were not written (see above)");
        ExitCode::FAILURE
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("queuewatch: {error:#}");
    ExitCode::FAILURE
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the Tokio runtime starts")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
