//! The `queuewatch` command: parse the command line, set up logging, load
//! the config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use queuewatch::config::Config;
use queuewatch::replay::{replay, ReplayOutput};

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
        #[arg(required = true, value_name = "EVENTS")]
        events: Vec<String>,
    },
    /// Validate a config file, report every problem, exit non-zero on any.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUEUEWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            runtime().block_on(async {
                match queuewatch::daemon::run(config, shutdown_signal()).await {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("queuewatch: {error:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Replay { config, out, events } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            let output = out.map_or(ReplayOutput::Influx, ReplayOutput::File);
            runtime().block_on(async {
                match replay(&config, &events, output).await {
                    Ok(report) => {
                        print!("{}", report.summary());
                        if report.complete() {
                            ExitCode::SUCCESS
                        } else {
                            eprintln!("queuewatch: some points were not written (see above)");
                            ExitCode::FAILURE
                        }
                    }
                    Err(error) => {
                        eprintln!("queuewatch: {error:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
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
