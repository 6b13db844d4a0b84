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
//! The daemon measures itself: a `queuewatch` point at start and at every
//! whole minute of the wall clock ([`SelfReport`]), through the same sinks,
//! so that a dashboard sees it alive while every office is quiet.
//!
//! The operations endpoint ([`crate::ops`]) renders a snapshot this loop
//! publishes once a second; it never reads the pipeline itself.
//!
//! Shutdown is a parameter: when the `shutdown` future resolves, one budget
//! of `shutdown_timeout` starts ([`ShutdownBudget`]), shared by the phases:
//! the source stops reading (what it had not handed over stays
//! unacknowledged with the broker), the journal is synced and closed (with
//! `storage.journal = false`, the tracker first applies the events it holds
//! for reordering, which would otherwise be lost), the pending points go to
//! the writers, and the writers flush within what is left. With a journal
//! the events held for reordering stay held: the next start recovers them
//! and they are released as if the daemon had never stopped, so an event
//! that arrives after the restart within the reorder window is still in
//! time. Points not written by then are not lost either: no snapshot covers
//! them until they are settled, so the next start writes them again from
//! the journal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::alerts::AlertPublisher;
use crate::config::Config;
use crate::durable::Durability;
use crate::ids::Interned;
use crate::mqtt::{office_from_topic_cached, ConnectionState, Incoming, MqttSource, SessionMemory};
use crate::ops::{self, OpsPublisher, OpsSnapshot};
use crate::pipeline::Pipeline;
use crate::point::{FieldValue, Point};
use crate::privacy::StaffPrivacy;
use crate::sink::{self, Secrets, SinkHandle, SinkProgress, SinkReport};
use crate::stats::Stats;
use crate::time::Millis;
use crate::tracker::Mode;

/// How often held events are released and expiries checked between messages.
const TICK: Duration = Duration::from_millis(200);

/// Capacity of the source → tracker channel, in messages.
const MESSAGE_CHANNEL_CAPACITY: usize = 1024;

/// Most messages the loop takes from the channel at once. During a backlog
/// the channel is full and the MQTT task waits for room: taken one at a time,
/// every message would free one place and wake that task on another thread
/// (a futex call and a context switch each); taken in runs, the task wakes
/// once a run and refills the channel without stopping. A run is short
/// enough (well under a millisecond) that shutdown, the self-report and the
/// ticks, polled between runs, are not held up.
const MESSAGE_BATCH: usize = 64;

/// What a run did, for the exit summary.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: Stats,
    pub sink: SinkReport,
    /// The MQTT source's counts (sessions lost).
    pub mqtt: ConnectionState,
}

/// Inputs of the tracker loop: a closed set.
enum Input {
    /// Messages taken from the channel, in `batch`, in arrival order.
    Messages,
    Tick,
    /// The wall clock reached this whole minute: time for a [`SelfReport`].
    SelfReport(Millis),
    /// More journal records are on disk: their acknowledgements may go.
    Durable,
    /// Time to snapshot the tracker's state (`storage.checkpoint_interval`).
    Checkpoint,
    Shutdown,
}

/// How often the loop publishes its counts for the operations endpoint.
const OPS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// When the loop publishes for the endpoint: on its own timer while it has
/// time, and, while a backlog keeps it from the timer (messages come first),
/// after every [`OPS_CHECK_EVERY`] inputs once a second has passed. An input
/// costs an increment and a comparison.
#[derive(Debug)]
struct OpsCadence {
    inputs: u32,
    last: std::time::Instant,
}

/// Inputs between looks at the clock (at 55,000 messages a second, about 50 a second).
const OPS_CHECK_EVERY: u32 = 1024;

impl OpsCadence {
    fn new() -> OpsCadence {
        OpsCadence { inputs: 0, last: std::time::Instant::now() }
    }

    /// Counts one input; true when it is time to publish.
    fn input_due(&mut self) -> bool {
        self.inputs += 1;
        if self.inputs < OPS_CHECK_EVERY {
            return false;
        }
        self.inputs = 0;
        self.last.elapsed() >= OPS_PUBLISH_INTERVAL
    }

    fn published(&mut self) {
        self.inputs = 0;
        self.last = std::time::Instant::now();
    }
}

/// The one time budget of a shutdown, from the moment it was asked for, and
/// its split among the phases (shares of `shutdown_timeout`; 8 s by default):
/// - the source stops: until 1/8 (1 s); it stops reading at once, and
///   spends at most half a second on a clean DISCONNECT;
/// - the journal is synced and closed and the last points are handed to the
///   writers: until 3/8 (3 s); a sync takes milliseconds, unless the disk
///   stalls, and then what is not synced is not acknowledged either;
/// - the writers write what they hold, retrying, for 1/2 (4 s) from when
///   they are asked to finish, so by 7/8 at the latest;
/// - and the daemon waits for them until 15/16 (7.5 s), leaving the rest
///   to log and exit.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownBudget {
    started: tokio::time::Instant,
    timeout: Duration,
}

impl ShutdownBudget {
    pub fn new(started: tokio::time::Instant, timeout: Duration) -> ShutdownBudget {
        ShutdownBudget { started, timeout }
    }

    /// How long a writer may keep writing once asked to finish.
    pub fn writer_deadline(timeout: Duration) -> Duration {
        timeout / 2
    }

    fn at(&self, sixteenths: u32) -> tokio::time::Instant {
        self.started + self.timeout * sixteenths / 16
    }

    /// When the source must have stopped.
    pub fn source_stopped(&self) -> tokio::time::Instant {
        self.at(2)
    }

    /// When the journal must be closed and the last points handed over.
    pub fn handed_over(&self) -> tokio::time::Instant {
        self.at(6)
    }

    /// When the daemon stops waiting for its writers.
    pub fn writers_finished(&self) -> tokio::time::Instant {
        self.at(15)
    }
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
    // A password variable cannot change while the daemon runs, so a missing
    // one is an error at start; a password file is read again on every
    // connection attempt, so an operator may still fix it while we retry.
    if config.mqtt.password_env.is_some() {
        crate::mqtt::CredentialSource::from_config(&config.mqtt).read_password().context("MQTT credentials")?;
    }
    let secrets = Secrets::resolve(&config.influxdb).context("InfluxDB credentials")?;
    let writer_deadline = ShutdownBudget::writer_deadline(config.shutdown_timeout);
    // The spool and the dead letters live in the state folder.
    let store = sink::SinkStore::open(&config.storage.data_dir, config.storage.spool_max_bytes)
        .context("InfluxDB writer's spool (storage.data_dir)")?
        .with_dead_letter_max_bytes(config.storage.dead_letter_max_bytes);
    let sink = sink::spawn(&config.influxdb, secrets, Some(store), writer_deadline).context("InfluxDB writer")?;
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

    // Bound before anything else is opened: a port in use stops the start at once.
    let ops_listener = match config.http.listen {
        Some(address) => Some(ops::Listener::bind(address)?),
        None => None,
    };

    // When the shutdown was asked for: the start of its budget.
    let (stop_sender, stop_receiver) = watch::channel(None);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(Some(tokio::time::Instant::now()));
    });

    // Staff ids are rewritten where a message arrives, before anything keeps
    // or shows it (see `crate::privacy`).
    let privacy = StaffPrivacy::from_config(&config).map_err(anyhow::Error::msg)?;
    let mut pipeline = Pipeline::new(&config, Mode::Live);
    // Recover before reading any message: the broker redelivers what the
    // journal lacks, and the recovered state must be in place to take it.
    let mut durability = if config.storage.journal {
        let recovery_started = std::time::Instant::now();
        let (durability, recovery) = Durability::recover(&config, &mut pipeline, Millis::now())
            .await
            .context("state folder (storage.data_dir)")?;
        info!(
            data_dir = %config.storage.data_dir.display(),
            snapshot = recovery.snapshot,
            replayed = recovery.replayed,
            bytes_discarded = recovery.bytes_discarded,
            open_tickets = recovery.open_tickets,
            took_ms = recovery_started.elapsed().as_millis() as u64,
            "State recovered."
        );
        Some(durability)
    } else {
        None
    };
    let mut checkpoint_due = tokio::time::interval(config.storage.checkpoint_interval);
    checkpoint_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoint_due.tick().await;
    if let Some(tap) = &tap {
        let tap = tap.clone();
        pipeline.observe_points(Box::new(move |point| {
            let _ = tap.try_send(Tapped::Point(point.clone()));
        }));
    }
    // What the state folder remembers of the broker's session: whether
    // there was one, and the filters to unsubscribe if the config dropped them.
    let session = durability
        .as_ref()
        .map_or_else(SessionMemory::in_memory, |durability| SessionMemory::load(durability.state_path()));
    let source = MqttSource::new(&config.mqtt, session);
    let mqtt_status = source.connection();
    let ops_publisher = match ops_listener {
        Some(listener) => {
            let stall_limit = config.influxdb.request_timeout + config.influxdb.max_backoff;
            // `run` has one writer; with several (the demo), the first one's counts.
            let sink = sinks.first().map(SinkHandle::progress_reader);
            let (endpoint, publisher) = ops::Endpoint::new(source.connection(), sink, stall_limit);
            info!(address = %listener.address(), "Operations endpoint listening.");
            let stop = stopped(stop_receiver.clone());
            tokio::spawn(async move {
                if let Err(error) = ops::serve(listener, endpoint, stop).await {
                    error!(%error, "The operations endpoint stopped.");
                }
            });
            Some(publisher)
        }
        None => None,
    };
    let mut ops_cadence = OpsCadence::new();
    let mut acker = source.acker();
    let mut alerts = AlertPublisher::new(source.client(), &config.alerts);
    let own_topics_reachable = alerts.may_receive_own(&config.mqtt.topics);
    let (message_sender, mut messages) = mpsc::channel(MESSAGE_CHANNEL_CAPACITY);
    let mut batch: Vec<Incoming> = Vec::with_capacity(MESSAGE_BATCH);
    let mut topic_offices = Interned::default();
    let source_task = tokio::spawn(source.run(message_sender, stopped(stop_receiver.clone())));
    info!(mqtt = %config.mqtt.url, topics = ?config.mqtt.topics, influxdb = %config.influxdb.url, "queuewatch running.");

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_log = tokio::time::interval(Duration::from_secs(60));
    stats_log.tick().await;
    let mut ops_due = tokio::time::interval(OPS_PUBLISH_INTERVAL);
    ops_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stopped(stop_receiver.clone()));
    let mut clock = LoopClock::default();
    let mut unsent_at_shutdown = 0usize;
    // The daemon's own points, sent with the pipeline's next chunk.
    let mut own_lines = String::new();
    let mut own_count = 0usize;
    let instance: Arc<str> = Arc::from(config.mqtt.client_id.as_str());
    let started_at = Millis::now();
    let self_report = |at: Millis, pipeline: &Pipeline| SelfReport {
        instance: Arc::clone(&instance),
        at,
        started: started_at,
        accepted: pipeline.stats().accepted,
        rejected: pipeline.stats().rejected_total(),
        // `run` has one writer; with several (the demo), the first one's counts.
        sink: sinks.first().map(SinkHandle::progress).unwrap_or_default(),
        open_tickets: pipeline.tracker().open_segments(),
        newest_event: pipeline.newest_event(),
        mqtt_sessions_lost: mqtt_status.sessions_lost_total(),
    };
    self_report(started_at, &pipeline).to_point().write_line(&mut own_lines);
    own_count += 1;
    let mut next_self_report = next_whole_minute(started_at);
    let mut sessions_lost_shown = 0;
    let mut self_report_due = std::pin::pin!(tokio::time::sleep_until(until(next_self_report)));

    loop {
        let input = tokio::select! {
            biased;
            () = &mut stop => Input::Shutdown,
            // Before messages: once a minute, and due even while a backlog keeps the channel full.
            () = &mut self_report_due => Input::SelfReport(next_self_report),
            // Acknowledgements, ticks and checkpoints before messages too: a
            // flood that keeps the channel full must not hold acknowledgements
            // back nor starve the snapshots that keep the journal short. Each
            // is cheap and comes at most once per its interval (`Delay`).
            () = durable_changed(&mut durability) => Input::Durable,
            _ = tick.tick() => Input::Tick,
            _ = checkpoint_due.tick(), if durability.is_some() => Input::Checkpoint,
            // Zero only once the channel is closed and empty.
            taken = messages.recv_many(&mut batch, MESSAGE_BATCH) => match taken {
                0 => Input::Shutdown,
                _ => Input::Messages,
            },
            _ = stats_log.tick() => {
                info!(stats = %pipeline.stats().one_line(), "Totals so far.");
                continue;
            }
            _ = ops_due.tick(), if ops_publisher.is_some() => {
                if let Some(publisher) = &ops_publisher {
                    publish_ops(publisher, &pipeline, durability.as_ref());
                    ops_cadence.published();
                }
                continue;
            }
        };
        if let Some(publisher) = ops_publisher.as_ref().filter(|_| ops_cadence.input_due()) {
            publish_ops(publisher, &pipeline, durability.as_ref());
            ops_cadence.published();
        }
        let send_now = matches!(input, Input::Tick | Input::SelfReport(_));
        match input {
            Input::Messages => {
                for incoming in batch.drain(..) {
                    let mut publish = match incoming {
                        Incoming::Message(publish) => publish,
                        Incoming::Connected { session_present } => {
                            // What follows may be redeliveries of what is journaled already.
                            if let Some(durability) = &mut durability {
                                durability.connected(session_present);
                            }
                            // A lost session shows in the daemon's row at once, not a minute later.
                            if mqtt_status.sessions_lost_total() != sessions_lost_shown {
                                sessions_lost_shown = mqtt_status.sessions_lost_total();
                                self_report(Millis::now(), &pipeline).to_point().write_line(&mut own_lines);
                                own_count += 1;
                            }
                            continue;
                        }
                    };
                    let not_an_event = if publish.retain {
                        // A retained copy, sent again at every subscription: its
                        // original was taken when it was published.
                        pipeline.note_retained();
                        true
                    } else {
                        // Our own alerts, matched by a broad subscription.
                        own_topics_reachable && alerts.is_own_topic(&publish.topic)
                    };
                    if not_an_event {
                        match &mut durability {
                            Some(durability) => durability.ack_in_order(publish),
                            None => acker.ack(&publish),
                        }
                        continue;
                    }
                    // First of all: the journal, the redelivery hash, the decoder,
                    // logs and echoes see only the rewritten payload.
                    privacy.rewrite_publish(&mut publish);
                    if let Some(durability) = &mut durability {
                        if durability.is_redelivery(&publish) {
                            // Taken in and journaled before the reconnection or restart.
                            pipeline.note_redelivery();
                            durability.ack_in_order(publish);
                            continue;
                        }
                    }
                    let topic_office =
                        office_from_topic_cached(&config.mqtt.topics, &publish.topic, &mut topic_offices);
                    // A rejection is counted and logged inside; it is still acknowledged,
                    // since redelivering a bad message would only repeat the rejection.
                    let wall_now = Millis::now();
                    let tracker_now = clock.now(wall_now);
                    let handled = pipeline.handle(topic_office, &publish.payload, tracker_now, wall_now);
                    if let Err(rejection) = handled {
                        alerts.rejection(&rejection, std::time::Instant::now());
                    }
                    match &mut durability {
                        // Journaled with the run after the loop (`hand_over`).
                        Some(durability) => durability.message(publish, tracker_now, wall_now),
                        None => acker.ack(&publish),
                    }
                }
                // Those of earlier runs that are durable by now; the rest
                // go on `Input::Durable`.
                if let Some(durability) = &mut durability {
                    durability.release_acks(&mut acker);
                }
                // A flood fills the journal faster than the checkpoint
                // interval empties it: a checkpoint by size, now.
                if durability.as_ref().is_some_and(Durability::journal_outgrown) {
                    checkpoint(&mut pipeline, &sinks, &mut durability).await;
                    checkpoint_due.reset();
                }
            }
            // While messages wait in the channel the daemon is behind: letting
            // wall time move the office clocks now would make those messages
            // late. A backlog runs on its own timestamps.
            Input::Tick if messages.is_empty() => {
                acker.flush();
                clock.caught_up();
                let tracker_now = clock.now(Millis::now());
                pipeline.advance(tracker_now);
                if let Some(durability) = &mut durability {
                    durability.advance(tracker_now);
                    durability.poll_checkpoint(&sinks, &acker).await;
                }
            }
            Input::Tick => {
                acker.flush();
                if let Some(durability) = &mut durability {
                    durability.poll_checkpoint(&sinks, &acker).await;
                }
            }
            Input::Durable => {
                if let Some(durability) = &mut durability {
                    durability.release_acks(&mut acker);
                }
                continue;
            }
            Input::Checkpoint => {
                checkpoint(&mut pipeline, &sinks, &mut durability).await;
                continue;
            }
            Input::SelfReport(at) => {
                self_report(at, &pipeline).to_point().write_line(&mut own_lines);
                own_count += 1;
                next_self_report = next_whole_minute(Millis::now().max(at));
                self_report_due.as_mut().reset(until(next_self_report));
            }
            Input::Shutdown => break,
        }
        // The records of this input go to the journal thread together; their
        // acknowledgements follow once they are durable.
        if let Some(durability) = &mut durability {
            let started = std::time::Instant::now();
            durability.hand_over().await;
            clock.exclude(started.elapsed());
        }
        for refused in pipeline.take_refused() {
            alerts.rejection(&refused, std::time::Instant::now());
        }
        for alert in pipeline.take_alerts() {
            alerts.alert(&alert, Millis::now());
            if let Some(tap) = &tap {
                let _ = tap.try_send(Tapped::Alert(alert));
            }
        }
        // Lines go to the writers in chunks: on every tick, or once enough
        // have gathered, not after every message.
        if !send_now && pipeline.pending_lines() < SEND_CHUNK_LINES {
            continue;
        }
        let (mut lines, mut count) = pipeline.take_lines().unwrap_or_default();
        lines.push_str(&own_lines);
        count += std::mem::take(&mut own_count);
        own_lines.clear();
        if count > 0 {
            let started = std::time::Instant::now();
            let mut sending = std::pin::pin!(send_to_all(&sinks, lines, count));
            let stopping = loop {
                tokio::select! {
                    sent = &mut sending => {
                        if !sent {
                            error!(points = count, "The InfluxDB writer has stopped; points lost.");
                        }
                        break false;
                    }
                    () = stopped(stop_receiver.clone()) => break true,
                    // A writer that takes nothing (InfluxDB down) holds the
                    // loop here; the endpoint still sees the counts move.
                    _ = ops_due.tick(), if ops_publisher.is_some() => {
                        if let Some(publisher) = &ops_publisher {
                            publish_ops(publisher, &pipeline, durability.as_ref());
                        }
                    }
                }
            };
            if stopping {
                unsent_at_shutdown += count;
                break;
            }
            clock.exclude(started.elapsed());
        }
    }
    let budget =
        ShutdownBudget::new(stop_receiver.borrow().unwrap_or_else(tokio::time::Instant::now), config.shutdown_timeout);
    if let Some(publisher) = &ops_publisher {
        publisher.send_modify(|snapshot| snapshot.stopping = true);
    }

    // Phase 1: stop the source; unprocessed messages stay with the broker.
    drop(messages);
    let _ = tokio::time::timeout_at(budget.source_stopped(), source_task).await;
    // Phase 2: make the state durable. With a journal, the events held for
    // reordering stay held (the next start recovers them from the journal);
    // without one they would be lost, so they are applied now.
    let handed_over = budget.handed_over();
    match durability.take() {
        Some(durability) => {
            if tokio::time::timeout_at(handed_over, durability.close(&mut acker)).await.is_err() {
                error!("The journal did not sync in time; what it lacks is still with the broker.");
            }
        }
        None => pipeline.drain(clock.now(Millis::now())),
    }
    let (mut lines, mut count) = pipeline.take_lines().unwrap_or_default();
    lines.push_str(&own_lines);
    count += own_count;
    if tokio::time::timeout_at(handed_over, send_to_all(&sinks, lines, count)).await.is_err() {
        unsent_at_shutdown += count;
    }
    // Phase 3: the writers flush within their deadline once the last handle
    // is gone, and the daemon waits for them within the budget.
    let mut sink_report = SinkReport::default();
    for (sink, task) in sinks.into_iter().zip(sink_tasks) {
        sink_report.add(&sink::finish_by(sink, task, budget.writers_finished()).await);
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
    Ok(RunReport { stats, sink: sink_report, mqtt: mqtt_status })
}

/// The `queuewatch` measurement: what the daemon has done since it started.
/// Written at start and at every whole minute of the wall clock, so that a
/// dashboard (and the "queuewatch stopped writing" alert) sees the daemon
/// alive while every office is quiet. Pure: the caller gathers the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfReport {
    /// `mqtt.client_id`: one series per daemon.
    pub instance: Arc<str>,
    /// The point's time.
    pub at: Millis,
    /// When the daemon started, on the wall clock.
    pub started: Millis,
    /// Events accepted and messages rejected since the start.
    pub accepted: u64,
    pub rejected: u64,
    pub sink: SinkProgress,
    pub open_tickets: usize,
    /// The newest accepted event's ts over all offices.
    pub newest_event: Option<Millis>,
    /// MQTT sessions lost or taken over since the start (see `mqtt::session`).
    pub mqtt_sessions_lost: u64,
}

impl SelfReport {
    pub fn to_point(&self) -> Point {
        let mut point = Point::new("queuewatch", self.at.0.saturating_mul(1_000_000));
        point.tag("instance", Arc::clone(&self.instance));
        let count = |number: u64| FieldValue::Int(i64::try_from(number).unwrap_or(i64::MAX));
        let seconds = |span_ms: i64| FieldValue::Float(span_ms as f64 / 1000.0);
        point.field("accepted", count(self.accepted));
        point.field("rejected", count(self.rejected));
        point.field("points_written", count(self.sink.points_written));
        point.field("points_refused", count(self.sink.points_rejected));
        point.field("points_dead_letter_dropped", count(self.sink.points_dead_letter_dropped));
        point.field("open_tickets", count(self.open_tickets as u64));
        if let Some(newest) = self.newest_event {
            point.field("newest_event_age_s", seconds(self.at.since(newest)));
        }
        point.field("uptime_s", seconds(self.at.since(self.started)));
        point.field("mqtt_sessions_lost", count(self.mqtt_sessions_lost));
        point
    }
}

/// The first whole minute of the wall clock after `now`.
fn next_whole_minute(now: Millis) -> Millis {
    const MINUTE_MS: i64 = 60_000;
    Millis(now.0.div_euclid(MINUTE_MS).saturating_add(1).saturating_mul(MINUTE_MS))
}

/// The Tokio instant at which the wall clock reads `at` (now, if it has passed).
fn until(at: Millis) -> tokio::time::Instant {
    let ahead_ms = u64::try_from(at.since(Millis::now())).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(ahead_ms)
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

/// Resolves when more journal records are durable; never without a journal.
async fn durable_changed(durability: &mut Option<Durability>) {
    match durability {
        Some(durability) => durability.durable_changed().await,
        None => std::future::pending().await,
    }
}

/// Publishes the loop's counts for the operations endpoint (the writer's it
/// reads live).
fn publish_ops(publisher: &OpsPublisher, pipeline: &Pipeline, durability: Option<&Durability>) {
    let snapshot = OpsSnapshot {
        at: Some(std::time::Instant::now()),
        stats: pipeline.stats().clone(),
        open_tickets: pipeline.tracker().open_segments() as u64,
        newest_event: pipeline.newest_event(),
        journal_bytes: durability.map(Durability::journal_bytes),
        last_snapshot_at: durability.and_then(Durability::last_snapshot_at),
        journal_failing: durability.is_some_and(Durability::failing),
        ..OpsSnapshot::default()
    };
    publisher.send_replace(snapshot);
}

/// Resolves once the stop was asked for.
async fn stopped(mut receiver: watch::Receiver<Option<tokio::time::Instant>>) {
    while receiver.borrow_and_update().is_none() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

/// Begins a snapshot of the tracker, if one is wanted. Every point of the
/// records the snapshot covers goes to the writers first, so that their
/// settling can be awaited.
async fn checkpoint(pipeline: &mut Pipeline, sinks: &[SinkHandle], durability: &mut Option<Durability>) {
    if let Some((lines, count)) = pipeline.take_lines() {
        if !send_to_all(sinks, lines, count).await {
            error!(points = count, "The InfluxDB writer has stopped; points lost.");
        }
    }
    if let Some(durability) = durability.as_mut().filter(|durability| durability.checkpoint_wanted()) {
        let tracker = pipeline.tracker().clone();
        durability.begin_checkpoint(tracker, sinks).await;
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn an_unset_mqtt_password_variable_stops_the_daemon_at_start() {
        let mut config = Config::default();
        config.mqtt.username = Some("queuewatch".into());
        config.mqtt.password_env = Some("QUEUEWATCH_TEST_PASSWORD_NEVER_SET".into());
        let error = run(config, std::future::pending()).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("MQTT credentials"), "{message}");
        assert!(message.contains("QUEUEWATCH_TEST_PASSWORD_NEVER_SET"), "{message}");
    }
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
    fn self_reports_fall_on_the_next_whole_minute() {
        assert_eq!(next_whole_minute(Millis(1_795_737_600_000)), Millis(1_795_737_660_000));
        assert_eq!(next_whole_minute(Millis(1_795_737_600_001)), Millis(1_795_737_660_000));
        assert_eq!(next_whole_minute(Millis(1_795_737_659_999)), Millis(1_795_737_660_000));
    }

    #[test]
    fn the_self_report_is_one_point_tagged_with_the_instance() {
        let report = SelfReport {
            instance: Arc::from("qw-1"),
            at: WALL,
            started: WALL.minus_ms(90_500),
            accepted: 1200,
            rejected: 3,
            sink: SinkProgress {
                points_handed: 9000,
                points_written: 8990,
                points_rejected: 2,
                points_dead_letter_dropped: 1,
                points_settled: 8992,
                ..SinkProgress::default()
            },
            open_tickets: 41,
            newest_event: Some(WALL.minus_ms(2_250)),
            mqtt_sessions_lost: 1,
        };
        assert_eq!(
            report.to_point().to_line(),
            "queuewatch,instance=qw-1 accepted=1200i,rejected=3i,points_written=8990i,points_refused=2i,\
             points_dead_letter_dropped=1i,open_tickets=41i,newest_event_age_s=2.25,uptime_s=90.5,mqtt_sessions_lost=1i 1795737600000000000"
        );
        let before_any_event = SelfReport { newest_event: None, ..report };
        assert!(!before_any_event.to_point().to_line().contains("newest_event_age_s"));
    }

    #[test]
    fn every_phase_of_a_shutdown_ends_within_its_timeout() {
        let timeout = Duration::from_secs(8);
        let signal = tokio::time::Instant::now();
        let budget = ShutdownBudget::new(signal, timeout);
        assert_eq!(budget.source_stopped() - signal, Duration::from_secs(1));
        assert_eq!(budget.handed_over() - signal, Duration::from_secs(3));
        // A writer asked to finish at the latest hand-over time gives up before the daemon stops waiting.
        let writer_gives_up = budget.handed_over() + ShutdownBudget::writer_deadline(timeout);
        assert_eq!(writer_gives_up - signal, Duration::from_secs(7));
        assert!(writer_gives_up < budget.writers_finished());
        assert_eq!(budget.writers_finished() - signal, Duration::from_millis(7_500));
    }

    #[test]
    fn waits_no_longer_than_a_tick_are_not_stalls() {
        let mut clock = LoopClock::default();
        clock.exclude(TICK);
        clock.exclude(Duration::from_millis(1));
        assert_eq!(clock.now(WALL), WALL);
    }
}
