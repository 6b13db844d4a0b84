//! `queuewatch-load`: the load harness behind `scripts/load.sh`.
//!
//! The scenarios, each a subcommand that prints its figures on standard
//! output (progress goes to standard error):
//! - `replay`: events/s through decode, and through decode + track + encode,
//!   on one thread with nothing written, plus allocations per event;
//! - `memory`: resident bytes per open ticket in a tracker holding a million
//!   open tickets, and the resident memory of an idle `queuewatch run`;
//! - `office-memory`: the tracker's heap for an office flooding at its
//!   message rate limit for longer than the dedup horizon (the most `[limits]`
//!   let one office make the daemon hold);
//! - `e2e`: events/s from a QoS 1 publisher through a real Mosquitto and
//!   `queuewatch run` into a real InfluxDB 1.x, checking nothing is lost;
//! - `latency`: event-to-point latency at a fixed offered rate;
//! - `drain`: a backlog queued in a real Mosquitto while the daemon is away,
//!   timed from the daemon's start until its points are in InfluxDB 1.x and
//!   checked point for point;
//! - `flood`: offices flooding at their message rate limit for 30 min
//!   (valid events, copies, malformed and over-rate messages) through real
//!   servers: the daemon's memory and journal over time, then its recovery
//!   after a SIGKILL at the flood's end;
//! - `peer`: the drain's backlog caught up by `queuewatch run` and by a
//!   Node-RED flow, each in turn on fresh servers: times to the first ticket
//!   point, 99.5 % and 100 % of them, memory, CPU and exactness side by side;
//! - `office-day`: a simulated week at offices with opening hours, replayed
//!   by a `queuewatch` binary (this build's or another), and what its output
//!   says about the day (rows outside hours, people waiting at 20:00,
//!   `abandoned` against the simulator's ground truth).
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
//!
//! Layout: one module per scenario (`replay`, `memory`, `office_memory`,
//! `e2e`, `latency`, `drain`, `baseline`, `flood`, `office_day`, `peer` with its Node-RED flow in `node_red`); `input` (the simulated input and the points the pipeline makes
//! of it),
//! `servers` (Mosquitto and InfluxDB from `queuewatch-servers`, and the daemon
//! run against them), `publisher` (a QoS 1 publisher counting PUBACKs),
//! `measure` (CPU, memory, statistics), `open_tickets` (tickets issued and
//! never called, for `memory` and `replay`), `alloc` (the counting allocator) and
//! `report` (how figures are printed) are shared by them.

mod alloc;
mod baseline;
mod drain;
mod e2e;
mod flood;
mod input;
mod latency;
mod measure;
mod memory;
mod node_red;
mod office_day;
mod office_memory;
mod open_tickets;
mod peer;
mod publisher;
mod replay;
mod report;
mod servers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use queuewatch::time::Millis;

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

/// A wall clock beyond every simulated timestamp (2100-01-01), so nothing is `future_timestamp`.
const FAR_FUTURE_WALL: Millis = Millis(4_102_444_800_000);
/// The tracker's wall time in replay mode: constant, office clocks run on event time.
const REPLAY_NOW: Millis = Millis(0);

#[derive(Parser)]
#[command(name = "queuewatch-load", about = "Load scenarios for queuewatch; see scripts/load.sh.")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Events/s through decode, and decode + track + encode, on one thread; allocations per event.
    Replay(replay::ReplayArgs),
    /// Resident bytes per open ticket in the tracker; resident memory of an idle daemon.
    Memory(memory::MemoryArgs),
    /// Events/s publisher → Mosquitto (QoS 1) → queuewatch run → InfluxDB 1.x, nothing lost.
    E2e(e2e::E2eArgs),
    /// Event-to-point latency at a fixed offered rate.
    Latency(latency::LatencyArgs),
    /// A backlog queued in Mosquitto while the daemon is away, drained into InfluxDB 1.x: time and exactness.
    Drain(drain::DrainArgs),
    /// The drain's backlog through a plain MQTT-to-InfluxDB consumer: the floor the broker and InfluxDB set.
    Baseline(baseline::BaselineArgs),
    /// Offices flooding at their rate limit for 30 min: memory and journal over time, recovery after SIGKILL.
    Flood(flood::FloodArgs),
    /// One backlog caught up side by side: queuewatch run, then a Node-RED flow, each on fresh servers.
    Peer(peer::PeerArgs),
    /// A simulated week at offices with opening hours, replayed by a queuewatch binary: rows outside
    /// hours, people waiting at 20:00, abandoned points against the ground truth.
    OfficeDay(office_day::OfficeDayArgs),
    /// The tracker's heap for offices flooding at their rate limit past the dedup horizon, inventing tickets.
    OfficeMemory(office_memory::OfficeMemoryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Scenario::Replay(args) => replay::replay(&args),
        Scenario::Memory(args) => memory::memory(&args),
        Scenario::E2e(args) => servers::with_servers(e2e::e2e(args)),
        Scenario::Latency(args) => servers::with_servers(latency::latency(args)),
        Scenario::Drain(args) => servers::with_servers(drain::drain(args)),
        Scenario::Baseline(args) => servers::with_servers(baseline::baseline(args)),
        Scenario::Flood(args) => servers::with_servers(flood::flood(args)),
        Scenario::Peer(args) => servers::with_servers(peer::peer(args)),
        Scenario::OfficeDay(args) => office_day::office_day(&args),
        Scenario::OfficeMemory(args) => office_memory::office_memory(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("queuewatch-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}
