//! The input of the scenarios that go through the broker, and what the
//! daemon must make of it: simulator events with a fixed seed, starting in
//! the recent past, and the points the library's pipeline writes for them in
//! replay mode (the same build and config as the daemon under test).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure};

use queuewatch::config::Config;
use queuewatch::mqtt::office_from_topic;
use queuewatch::pipeline::Pipeline;
use queuewatch::point::Point;
use queuewatch::simulate::{Realism, SimOptions, Simulation};
use queuewatch::time::Millis;
use queuewatch::tracker::Mode;

use crate::{FAR_FUTURE_WALL, REPLAY_NOW};

/// Simulator events as published: topic and payload, in time order.
pub struct SimulatedInput {
    pub messages: Vec<(String, String)>,
    /// The simulated start.
    pub start: Millis,
    /// The newest event's ts.
    pub last_at: Millis,
    /// The newest event's ts of each office, by office name.
    pub last_at_by_office: BTreeMap<String, Millis>,
}

/// The first `events` events of the simulator (`seed`, `offices`). Timestamps
/// must be in the past for a live daemon: the simulation starts at 06:00
/// (UTC+7) three weeks ago, so the events are the same every day but for
/// whole days.
pub fn simulated(events: usize, offices: u32, seed: u64) -> anyhow::Result<SimulatedInput> {
    let start = local_morning_days_ago(21);
    let options =
        SimOptions { offices, counters: 6, seed, days: 0, realism: Realism::tidy(), ..SimOptions::new(start) };
    let mut messages: Vec<(String, String)> = Vec::with_capacity(events + 3 * offices as usize);
    let mut last_at_by_office = BTreeMap::new();
    let mut last_at = start;
    for event in Simulation::new(&options).take(events) {
        last_at = event.at;
        last_at_by_office.insert(event.office, event.at);
        messages.push((event.topic, event.payload));
    }
    ensure!(messages.len() == events, "the simulation gave {} events, not {events}", messages.len());
    Ok(SimulatedInput { messages, start, last_at, last_at_by_office })
}

/// How a replay of the input ends.
#[derive(Clone, Copy)]
pub enum InputEnd {
    /// No wall time passes and nothing more is released: what the daemon has
    /// written once the input's own heartbeats moved every office clock on.
    Advance,
    /// End of input, as `queuewatch replay` ends: every held event applied,
    /// then what is due by each office's final clock.
    Drain,
}

/// Every point the pipeline in replay mode writes for `messages`, in order.
pub fn replay_points(config: &Config, messages: &[(String, String)], end: InputEnd) -> anyhow::Result<Vec<Point>> {
    let mut pipeline = Pipeline::new(config, Mode::Replay);
    let points = Arc::new(Mutex::new(Vec::new()));
    {
        let points = points.clone();
        pipeline.observe_points(Box::new(move |point: &Point| {
            points.lock().expect("the observer does not panic while holding the lock").push(point.clone())
        }));
    }
    for (topic, payload) in messages {
        let topic_office = office_from_topic(&config.mqtt.topics, topic);
        if let Err(rejection) = pipeline.handle(topic_office, payload.as_bytes(), REPLAY_NOW, FAR_FUTURE_WALL) {
            bail!("the pipeline rejected a simulated event: {rejection}: {payload}");
        }
        // Encoded lines are not needed: the observer has seen their points.
        let _ = pipeline.take_lines();
    }
    match end {
        InputEnd::Advance => pipeline.advance(REPLAY_NOW),
        InputEnd::Drain => pipeline.drain(REPLAY_NOW),
    }
    drop(pipeline);
    let points = Arc::try_unwrap(points).map_err(|_| anyhow::anyhow!("the pipeline's observer outlived it"))?;
    Ok(points.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// 06:00 at UTC+7 (where most simulated offices are), `days` days before today there.
fn local_morning_days_ago(days: i64) -> Millis {
    const DAY_MS: i64 = 86_400_000;
    const OFFSET_MS: i64 = 7 * 3_600_000;
    let local = Millis::now().0 + OFFSET_MS;
    let local_midnight = local - local.rem_euclid(DAY_MS);
    Millis(local_midnight - OFFSET_MS - days * DAY_MS + 6 * 3_600_000)
}
