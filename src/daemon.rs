//! `queuewatch run`: MQTT in, tracker in the middle, InfluxDB out.
//!
//! Three tasks, each the only owner of its state:
//! - the MQTT source ([`crate::mqtt::MqttSource`]) owns the connection;
//! - this module's loop owns the [`Pipeline`] (tracker, counts);
//! - the sink task ([`crate::sink`]) owns the batch being written.
//!
//! They talk over bounded channels; a full channel makes the sender wait
//! (back-pressure up to the broker, which keeps unacknowledged messages).
//! A message is acknowledged once the tracker has taken it in.
//!
//! Shutdown is a parameter: when the `shutdown` future resolves, the source
//! stops reading (what it had not handed over stays unacknowledged with the
//! broker), the tracker applies the events it holds for reordering and
//! writes the points that completes, and the sink flushes within
//! [`sink::SHUTDOWN_DEADLINE`].

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::alerts::AlertPublisher;
use crate::config::Config;
use crate::mqtt::{office_from_topic, Incoming, MqttSource};
use crate::pipeline::Pipeline;
use crate::sink::{self, Secrets, SinkHandle, SinkReport, SHUTDOWN_DEADLINE};
use crate::stats::Stats;
use crate::time::Millis;
use crate::tracker::Mode;

/// How often held events are released and expiries checked between messages.
const TICK: Duration = Duration::from_millis(200);

/// Capacity of the source → tracker channel, in messages.
const MESSAGE_CHANNEL_CAPACITY: usize = 1024;

/// What a run did, for the exit summary.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: Stats,
    pub sink: SinkReport,
}

/// Inputs of the tracker loop: a closed set.
enum Input {
    Message(Incoming),
    Tick,
    Shutdown,
}

/// Lines gathered before they are handed to the writers between ticks.
const SEND_CHUNK_LINES: usize = 1000;

/// The wall time the office clocks run on: the real clock less the time the
/// loop spent waiting on a full writer, while the backlog that wait caused is
/// being worked off.
///
/// Office clocks follow the wall clock between events so that deadlines pass
/// while nothing happens. While the daemon itself is stalled, messages queue
/// up behind the stall (in the channel, then at the broker); if office clocks
/// ran on meanwhile, those messages would all arrive late. So a stall is
/// excluded from the clocks for as long as it has consequences: until the
/// daemon has caught up, which is when a tick finds the message channel empty
/// (the same condition under which ticks let wall time move the clocks).
///
/// Then the shift returns to zero at once, and office clocks jump to real
/// time: the deadlines, snapshots and silences that came due during the stall
/// fire now, which is right, since every message that could have disproved
/// them has been taken in. Keeping the shift would leave every office that
/// stays quiet that far behind the wall clock for good: opening hours and
/// silence judged at the wrong time, `silent` alerts stamped so late that
/// they are dropped as stale. An office heard during the backlog does not run
/// ahead of the wall clock when the shift drops, because an office clock never
/// runs ahead of the wall time it is given (`tracking.clock = "wall"`).
///
/// Pure: the real wall time is a parameter, so the rule is tested without sleeping.
#[derive(Debug, Default)]
struct LoopClock {
    stalled_ms: i64,
}

impl LoopClock {
    /// The office clocks' wall time when the real clock reads `wall`.
    fn now(&self, wall: Millis) -> Millis {
        wall.minus_ms(self.stalled_ms)
    }

    /// Excludes a wait longer than a tick from the office clocks.
    fn exclude(&mut self, waited: Duration) {
        if waited > TICK {
            self.stalled_ms = self.stalled_ms.saturating_add(i64::try_from(waited.as_millis()).unwrap_or(i64::MAX));
        }
    }

    /// Nothing waits in the message channel: the backlog of every stall so
    /// far has been worked off.
    fn caught_up(&mut self) {
        self.stalled_ms = 0;
    }
}

/// Where a run's output goes besides MQTT alerts.
pub struct Outputs {
    /// Writer tasks; every line goes to each of them.
    pub sinks: Vec<(SinkHandle, tokio::task::JoinHandle<SinkReport>)>,
    /// A copy of every point and alert, for a live display (the demo). Sent
    /// with `try_send`: a slow reader misses updates, the pipeline never waits.
    pub tap: Option<mpsc::Sender<Tapped>>,
}

/// What the tap carries.
#[derive(Debug, Clone)]
pub enum Tapped {
    Point(crate::point::Point),
    Alert(crate::tracker::Alert),
}

/// Runs the daemon until `shutdown` resolves, writing to the configured InfluxDB.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<RunReport> {
    let secrets = Secrets::resolve(&config.influxdb).context("InfluxDB credentials")?;
    let sink = sink::spawn(&config.influxdb, secrets, SHUTDOWN_DEADLINE).context("InfluxDB writer")?;
    run_with(config, Outputs { sinks: vec![sink], tap: None }, shutdown).await
}

/// Runs the daemon until `shutdown` resolves, writing to `outputs`.
pub async fn run_with(
    config: Config,
    outputs: Outputs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunReport> {
    let (sinks, sink_tasks): (Vec<SinkHandle>, Vec<_>) = outputs.sinks.into_iter().unzip();
    let tap = outputs.tap;

    let (stop_sender, stop_receiver) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });

    let source = MqttSource::new(&config.mqtt);
    let mut acker = source.acker();
    let mut alerts = AlertPublisher::new(source.client(), &config.alerts);
    let (message_sender, mut messages) = mpsc::channel(MESSAGE_CHANNEL_CAPACITY);
    let source_task = tokio::spawn(source.run(message_sender, stopped(stop_receiver.clone())));
    info!(mqtt = %config.mqtt.url, topics = ?config.mqtt.topics, influxdb = %config.influxdb.url, "queuewatch running.");

    let mut pipeline = Pipeline::new(&config, Mode::Live);
    if let Some(tap) = &tap {
        let tap = tap.clone();
        pipeline.observe_points(Box::new(move |point| {
            let _ = tap.try_send(Tapped::Point(point.clone()));
        }));
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_log = tokio::time::interval(Duration::from_secs(60));
    stats_log.tick().await;
    let mut stop = std::pin::pin!(stopped(stop_receiver.clone()));
    let mut clock = LoopClock::default();
    let mut unsent_at_shutdown = 0usize;

    loop {
        let input = tokio::select! {
            biased;
            () = &mut stop => Input::Shutdown,
            message = messages.recv() => match message {
                Some(message) => Input::Message(message),
                None => Input::Shutdown,
            },
            _ = tick.tick() => Input::Tick,
            _ = stats_log.tick() => {
                info!(stats = %pipeline.stats().one_line(), "Totals so far.");
                continue;
            }
        };
        let is_tick = matches!(input, Input::Tick);
        match input {
            Input::Message(message) => {
                if alerts.is_own_topic(&message.publish.topic) {
                    // Our own alerts, matched by a broad subscription: not events.
                    acker.ack(&message.publish);
                    continue;
                }
                let topic_office = office_from_topic(&config.mqtt.topics, &message.publish.topic);
                // A rejection is counted and logged inside; it is still acknowledged,
                // since redelivering a bad message would only repeat the rejection.
                let handled =
                    pipeline.handle(topic_office, &message.publish.payload, clock.now(Millis::now()), Millis::now());
                if let Err(rejection) = handled {
                    alerts.rejection(&rejection, std::time::Instant::now());
                }
                acker.ack(&message.publish);
            }
            // While messages wait in the channel the daemon is behind: letting
            // wall time move the office clocks now would make those messages
            // late. A backlog runs on its own timestamps.
            Input::Tick if messages.is_empty() => {
                acker.flush();
                clock.caught_up();
                pipeline.advance(clock.now(Millis::now()));
            }
            Input::Tick => acker.flush(),
            Input::Shutdown => break,
        }
        for alert in pipeline.take_alerts() {
            alerts.alert(&alert, Millis::now());
            if let Some(tap) = &tap {
                let _ = tap.try_send(Tapped::Alert(alert));
            }
        }
        // Lines go to the writers in chunks: on every tick, or once enough
        // have gathered, not after every message.
        if !is_tick && pipeline.pending_lines() < SEND_CHUNK_LINES {
            continue;
        }
        if let Some((lines, count)) = pipeline.take_lines() {
            let started = std::time::Instant::now();
            tokio::select! {
                sent = send_to_all(&sinks, lines, count) => if !sent {
                    error!(points = count, "The InfluxDB writer has stopped; points lost.");
                },
                () = stopped(stop_receiver.clone()) => {
                    unsent_at_shutdown += count;
                    break;
                }
            }
            clock.exclude(started.elapsed());
        }
    }

    // Phase 1: stop the source; unprocessed messages stay with the broker.
    drop(messages);
    let _ = tokio::time::timeout(Duration::from_secs(2), source_task).await;
    // Phase 2: apply what the tracker holds, write what that completes.
    pipeline.drain(clock.now(Millis::now()));
    if let Some((lines, count)) = pipeline.take_lines() {
        if tokio::time::timeout(SHUTDOWN_DEADLINE, send_to_all(&sinks, lines, count)).await.is_err() {
            unsent_at_shutdown += count;
        }
    }
    // Phase 3: the sinks flush within their deadline once the last handle is gone.
    let mut sink_report = SinkReport::default();
    for (sink, task) in sinks.into_iter().zip(sink_tasks) {
        sink_report.add(&sink::finish(sink, task).await);
    }
    if unsent_at_shutdown > 0 {
        error!(points = unsent_at_shutdown, "Points not handed to the writer before shutdown.");
    }
    sink_report.points_unwritten_at_shutdown += unsent_at_shutdown as u64;
    let stats = pipeline.stats().clone();
    info!(
        stats = %stats.one_line(),
        written = sink_report.points_written,
        alerts_published = alerts.published,
        alerts_dropped = alerts.dropped,
        alerts_stale = alerts.stale_skipped,
        echoes_suppressed = alerts.echoes_suppressed,
        acks_waiting = acker.waiting(),
        "queuewatch stopped."
    );
    Ok(RunReport { stats, sink: sink_report })
}

/// Hands the same lines to every sink; false if one has stopped.
async fn send_to_all(sinks: &[SinkHandle], lines: String, count: usize) -> bool {
    let mut delivered = true;
    if let Some((last, others)) = sinks.split_last() {
        for sink in others {
            delivered &= sink.send(lines.clone(), count).await.is_ok();
        }
        delivered &= last.send(lines, count).await.is_ok();
    }
    delivered
}

/// Resolves once the stop flag is set.
async fn stopped(mut receiver: watch::Receiver<bool>) {
    while !*receiver.borrow_and_update() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: Millis = Millis(1_795_737_600_000);

    #[test]
    fn a_writer_stall_holds_office_clocks_back_while_its_backlog_is_worked_off() {
        let mut clock = LoopClock::default();
        clock.exclude(Duration::from_secs(90));
        assert_eq!(clock.now(WALL), WALL.minus_ms(90_000));
        clock.exclude(Duration::from_secs(30));
        assert_eq!(clock.now(WALL.plus_ms(1_000)), WALL.minus_ms(119_000), "stalls add up while behind");
    }

    #[test]
    fn once_caught_up_office_clocks_follow_the_wall_clock_again() {
        let mut clock = LoopClock::default();
        // An hour of writer stalls (one InfluxDB outage)...
        for _ in 0..60 {
            clock.exclude(Duration::from_secs(60));
        }
        assert_eq!(clock.now(WALL), WALL.minus_ms(3_600_000));
        // ...and the channel is empty again: no shift remains.
        clock.caught_up();
        assert_eq!(clock.now(WALL), WALL);
        clock.exclude(Duration::from_secs(5));
        assert_eq!(clock.now(WALL), WALL.minus_ms(5_000), "a later stall counts from zero");
    }

    #[test]
    fn waits_no_longer_than_a_tick_are_not_stalls() {
        let mut clock = LoopClock::default();
        clock.exclude(TICK);
        clock.exclude(Duration::from_millis(1));
        assert_eq!(clock.now(WALL), WALL);
    }
}
