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
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tracing::{error, info};

use crate::alerts::AlertPublisher;
use crate::config::Config;
use crate::durable::Durability;
use crate::ids::Interned;
use crate::mqtt::{office_from_topic_cached, Acker, ConnectionState, Incoming, MqttSource, SessionMemory};
use crate::ops;
use crate::pipeline::{Pipeline, PointObserver};
use crate::privacy::StaffPrivacy;
use crate::sink::{self, Secrets, SinkHandle, SinkReport};
use crate::stats::Stats;
use crate::time::Millis;
use crate::tracker::{Alert, Mode};

mod budget;
mod clock;
mod ops_feed;
mod self_report;

pub use budget::ShutdownBudget;
pub use self_report::SelfReport;

use clock::LoopClock;
use ops_feed::{publish_ops, OpsCadence, OPS_PUBLISH_INTERVAL};
use self_report::next_whole_minute;

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

/// Inputs of the tracker loop: a closed set, one [`Daemon`] method each.
enum Input {
    /// Messages taken from the channel, in `batch`, in arrival order.
    Messages,
    Tick,
    /// The wall clock reached the next whole minute: time for a [`SelfReport`].
    SelfReport,
    /// More journal records are on disk: their acknowledgements may go.
    Durable,
    /// Time to snapshot the tracker's state (`storage.checkpoint_interval`).
    Checkpoint,
    /// Time to log the totals (once a minute).
    StatsLog,
    /// Time to publish the counts for the operations endpoint.
    PublishOps,
    Shutdown,
}

/// Lines gathered before they are handed to the writers between ticks.
const SEND_CHUNK_LINES: usize = 1000;

/// Where a run's output goes besides MQTT alerts.
pub struct Outputs {
    /// Writer tasks; every line goes to each of them.
    pub sinks: Vec<(SinkHandle, JoinHandle<SinkReport>)>,
    /// Sees every point as it is made, for a live display (the demo). Called
    /// on the loop: it must never wait (the demo's uses `try_send`).
    pub on_point: Option<PointObserver>,
    /// Sees every alert change, likewise.
    pub on_alert: Option<AlertObserver>,
}

/// Sees every alert change the daemon publishes.
pub type AlertObserver = Box<dyn FnMut(&Alert) + Send>;

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
    run_with(config, Outputs { sinks: vec![sink], on_point: None, on_alert: None }, shutdown).await
}

/// Runs the daemon until `shutdown` resolves, writing to `outputs`: the
/// setup, then one loop that takes the next input and hands it to its
/// [`Daemon`] method, then the shutdown in phases.
pub async fn run_with(
    config: Config,
    outputs: Outputs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunReport> {
    let (sinks, sink_tasks): (Vec<SinkHandle>, Vec<_>) = outputs.sinks.into_iter().unzip();
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
    let durability = recover(&config, &mut pipeline).await?;
    // Observed from here on: the points recovery wrote again are not news.
    if let Some(on_point) = outputs.on_point {
        pipeline.observe_points(on_point);
    }
    let parts = Parts { pipeline, durability, privacy, sinks, on_alert: outputs.on_alert };
    let (mut daemon, mut messages, source_task) = Daemon::start(config, parts, ops_listener, stop_receiver);

    let mut batch: Vec<Incoming> = Vec::with_capacity(MESSAGE_BATCH);
    let mut stop = std::pin::pin!(stopped(daemon.stop_receiver.clone()));
    loop {
        let timers = &mut daemon.timers;
        let input = tokio::select! {
            biased;
            () = &mut stop => Input::Shutdown,
            // Before messages: once a minute, and due even while a backlog keeps the channel full.
            () = &mut timers.self_report => Input::SelfReport,
            // Acknowledgements, ticks and checkpoints before messages too: a
            // flood that keeps the channel full must not hold acknowledgements
            // back nor starve the snapshots that keep the journal short. Each
            // is cheap and comes at most once per its interval (`Delay`).
            () = durable_changed(&mut daemon.durability) => Input::Durable,
            _ = timers.tick.tick() => Input::Tick,
            _ = timers.checkpoint.tick(), if daemon.durability.is_some() => Input::Checkpoint,
            // Zero only once the channel is closed and empty.
            taken = messages.recv_many(&mut batch, MESSAGE_BATCH) => match taken {
                0 => Input::Shutdown,
                _ => Input::Messages,
            },
            _ = timers.stats_log.tick() => Input::StatsLog,
            _ = timers.ops.tick(), if daemon.ops_publisher.is_some() => Input::PublishOps,
        };
        let send_now = match input {
            Input::Messages => {
                daemon.on_messages(&mut batch).await;
                false
            }
            // While messages wait in the channel the daemon is behind: letting
            // wall time move the office clocks now would make those messages
            // late. A backlog runs on its own timestamps.
            Input::Tick => {
                daemon.on_tick(messages.is_empty()).await;
                true
            }
            Input::SelfReport => {
                daemon.on_self_report();
                true
            }
            Input::Durable => {
                daemon.on_durable();
                continue;
            }
            Input::Checkpoint => {
                daemon.on_checkpoint().await;
                continue;
            }
            Input::StatsLog => {
                daemon.on_stats_log();
                continue;
            }
            Input::PublishOps => {
                daemon.on_publish_ops();
                continue;
            }
            Input::Shutdown => break,
        };
        if daemon.pass_on(send_now).await.is_break() {
            break;
        }
    }
    let started = daemon.stop_receiver.borrow().unwrap_or_else(tokio::time::Instant::now);
    let budget = ShutdownBudget::new(started, daemon.config.shutdown_timeout);
    Ok(daemon.shutdown(budget, messages, source_task, sink_tasks).await)
}

/// Recovers the tracker's state from the state folder, before any message
/// is read: the broker redelivers what the journal lacks, and the recovered
/// state must be in place to take it.
async fn recover(config: &Config, pipeline: &mut Pipeline) -> anyhow::Result<Option<Durability>> {
    if !config.storage.journal {
        return Ok(None);
    }
    let recovery_started = std::time::Instant::now();
    let (durability, recovery) =
        Durability::recover(config, pipeline, Millis::now()).await.context("state folder (storage.data_dir)")?;
    info!(
        data_dir = %config.storage.data_dir.display(),
        snapshot = recovery.snapshot,
        replayed = recovery.replayed,
        bytes_discarded = recovery.bytes_discarded,
        open_tickets = recovery.open_tickets,
        took_ms = recovery_started.elapsed().as_millis() as u64,
        "State recovered."
    );
    Ok(Some(durability))
}

/// The loop's timers, polled by `run_with`'s select.
struct Timers {
    tick: Interval,
    checkpoint: Interval,
    stats_log: Interval,
    ops: Interval,
    self_report: Pin<Box<Sleep>>,
}

/// What `run_with` prepares before the daemon starts reading.
struct Parts {
    pipeline: Pipeline,
    durability: Option<Durability>,
    privacy: StaffPrivacy,
    sinks: Vec<SinkHandle>,
    on_alert: Option<AlertObserver>,
}

/// The tracker loop's state, owned by the loop alone: one method per input.
struct Daemon {
    config: Config,
    pipeline: Pipeline,
    durability: Option<Durability>,
    sinks: Vec<SinkHandle>,
    on_alert: Option<AlertObserver>,
    privacy: StaffPrivacy,
    acker: Acker,
    alerts: AlertPublisher,
    /// Whether a broad subscription may bring our own alerts back.
    own_topics_reachable: bool,
    topic_offices: Interned<crate::ids::OfficeId>,
    mqtt_status: ConnectionState,
    ops_publisher: Option<ops::OpsPublisher>,
    ops_cadence: OpsCadence,
    clock: LoopClock,
    timers: Timers,
    stop_receiver: watch::Receiver<Option<tokio::time::Instant>>,
    /// The daemon's own points, sent with the pipeline's next chunk.
    own_lines: String,
    own_count: usize,
    instance: Arc<str>,
    started_at: Millis,
    next_self_report: Millis,
    sessions_lost_shown: u64,
    unsent_at_shutdown: usize,
}

impl Daemon {
    /// Wires the source, the operations endpoint and the alert publisher
    /// around a recovered pipeline, and starts the source.
    fn start(
        config: Config,
        parts: Parts,
        ops_listener: Option<ops::Listener>,
        stop_receiver: watch::Receiver<Option<tokio::time::Instant>>,
    ) -> (Daemon, mpsc::Receiver<Incoming>, JoinHandle<()>) {
        let Parts { pipeline, durability, privacy, sinks, on_alert } = parts;
        let mut checkpoint = tokio::time::interval(config.storage.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(MissedTickBehavior::Delay);
        checkpoint.reset();
        // What the state folder remembers of the broker's session: whether
        // there was one, and the filters to unsubscribe if the config dropped them.
        let session = durability
            .as_ref()
            .map_or_else(SessionMemory::in_memory, |durability| SessionMemory::load(durability.state_path()));
        let source = MqttSource::new(&config.mqtt, session);
        let mqtt_status = source.connection();
        let ops_publisher = ops_listener.map(|listener| {
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
            publisher
        });
        let acker = source.acker();
        let alerts = AlertPublisher::new(source.client(), &config.alerts);
        let own_topics_reachable = alerts.may_receive_own(&config.mqtt.topics);
        let (message_sender, messages) = mpsc::channel(MESSAGE_CHANNEL_CAPACITY);
        let source_task = tokio::spawn(source.run(message_sender, stopped(stop_receiver.clone())));
        info!(mqtt = %config.mqtt.url, topics = ?config.mqtt.topics, influxdb = %config.influxdb.url, "queuewatch running.");

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stats_log = tokio::time::interval(Duration::from_secs(60));
        stats_log.reset();
        let mut ops = tokio::time::interval(OPS_PUBLISH_INTERVAL);
        ops.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started_at = Millis::now();
        let next_self_report = next_whole_minute(started_at);
        let timers = Timers {
            tick,
            checkpoint,
            stats_log,
            ops,
            self_report: Box::pin(tokio::time::sleep_until(until(next_self_report))),
        };
        let mut daemon = Daemon {
            instance: Arc::from(config.mqtt.client_id.as_str()),
            config,
            pipeline,
            durability,
            sinks,
            on_alert,
            privacy,
            acker,
            alerts,
            own_topics_reachable,
            topic_offices: Interned::default(),
            mqtt_status,
            ops_publisher,
            ops_cadence: OpsCadence::new(),
            clock: LoopClock::default(),
            timers,
            stop_receiver,
            own_lines: String::new(),
            own_count: 0,
            started_at,
            next_self_report,
            sessions_lost_shown: 0,
            unsent_at_shutdown: 0,
        };
        daemon.write_self_report(started_at);
        (daemon, messages, source_task)
    }

    /// Adds the daemon's own row at `at` to the next chunk.
    fn write_self_report(&mut self, at: Millis) {
        let report = SelfReport {
            instance: Arc::clone(&self.instance),
            at,
            started: self.started_at,
            accepted: self.pipeline.stats().accepted,
            rejected: self.pipeline.stats().rejected_total(),
            // `run` has one writer; with several (the demo), the first one's counts.
            sink: self.sinks.first().map(SinkHandle::progress).unwrap_or_default(),
            open_tickets: self.pipeline.tracker().open_segments(),
            newest_event: self.pipeline.newest_event(),
            mqtt_sessions_lost: self.mqtt_status.sessions_lost_total(),
        };
        report.to_point().write_line(&mut self.own_lines);
        self.own_count += 1;
    }

    /// Publishes for the endpoint when its cadence says so: while a backlog
    /// keeps the loop from the endpoint's own timer.
    fn publish_ops_if_due(&mut self) {
        if let Some(publisher) = self.ops_publisher.as_ref().filter(|_| self.ops_cadence.input_due()) {
            publish_ops(publisher, &self.pipeline, self.durability.as_ref());
            self.ops_cadence.published();
        }
    }

    /// A run of messages from the channel, in arrival order.
    async fn on_messages(&mut self, batch: &mut Vec<Incoming>) {
        self.publish_ops_if_due();
        for incoming in batch.drain(..) {
            match incoming {
                Incoming::Message(publish) => self.on_message(publish),
                Incoming::Connected { session_present } => self.on_connected(session_present),
            }
        }
        // Those of earlier runs that are durable by now; the rest
        // go on `Input::Durable`.
        if let Some(durability) = &mut self.durability {
            durability.release_acks(&mut self.acker);
        }
        // A flood fills the journal faster than the checkpoint
        // interval empties it: a checkpoint by size, now.
        if self.durability.as_ref().is_some_and(Durability::journal_outgrown) {
            self.checkpoint().await;
            self.timers.checkpoint.reset();
        }
    }

    /// A (re)connection to the broker.
    fn on_connected(&mut self, session_present: bool) {
        // What follows may be redeliveries of what is journaled already.
        if let Some(durability) = &mut self.durability {
            durability.connected(session_present);
        }
        // A lost session shows in the daemon's row at once, not a minute later.
        if self.mqtt_status.sessions_lost_total() != self.sessions_lost_shown {
            self.sessions_lost_shown = self.mqtt_status.sessions_lost_total();
            self.write_self_report(Millis::now());
        }
    }

    /// One MQTT message.
    fn on_message(&mut self, mut publish: rumqttc::Publish) {
        let not_an_event = if publish.retain {
            // A retained copy, sent again at every subscription: its
            // original was taken when it was published.
            self.pipeline.note_retained();
            true
        } else {
            // Our own alerts, matched by a broad subscription.
            self.own_topics_reachable && self.alerts.is_own_topic(&publish.topic)
        };
        if not_an_event {
            match &mut self.durability {
                Some(durability) => durability.ack_in_order(publish),
                None => self.acker.ack(&publish),
            }
            return;
        }
        // First of all: the journal, the redelivery hash, the decoder,
        // logs and echoes see only the rewritten payload.
        self.privacy.rewrite_publish(&mut publish);
        if let Some(durability) = &mut self.durability {
            if durability.is_redelivery(&publish) {
                // Taken in and journaled before the reconnection or restart.
                self.pipeline.note_redelivery();
                durability.ack_in_order(publish);
                return;
            }
        }
        let topic_office = office_from_topic_cached(&self.config.mqtt.topics, &publish.topic, &mut self.topic_offices);
        // A rejection is counted and logged inside; it is still acknowledged,
        // since redelivering a bad message would only repeat the rejection.
        let wall_now = Millis::now();
        let tracker_now = self.clock.now(wall_now);
        if let Err(rejection) = self.pipeline.handle(topic_office, &publish.payload, tracker_now, wall_now) {
            self.alerts.rejection(&rejection, std::time::Instant::now());
        }
        match &mut self.durability {
            // Journaled with the run after the loop (`hand_over`).
            Some(durability) => durability.message(publish, tracker_now, wall_now),
            None => self.acker.ack(&publish),
        }
    }

    /// A tick: queued acknowledgements leave; once nothing waits in the
    /// channel (`caught_up`), wall time moves the office clocks.
    async fn on_tick(&mut self, caught_up: bool) {
        self.publish_ops_if_due();
        self.acker.flush();
        if caught_up {
            self.clock.caught_up();
            let tracker_now = self.clock.now(Millis::now());
            self.pipeline.advance(tracker_now);
            if let Some(durability) = &mut self.durability {
                durability.advance(tracker_now);
            }
        }
        if let Some(durability) = &mut self.durability {
            durability.poll_checkpoint(&self.sinks, &self.acker).await;
        }
    }

    /// The wall clock reached the next whole minute.
    fn on_self_report(&mut self) {
        self.publish_ops_if_due();
        let at = self.next_self_report;
        self.write_self_report(at);
        self.next_self_report = next_whole_minute(Millis::now().max(at));
        self.timers.self_report.as_mut().reset(until(self.next_self_report));
    }

    /// More journal records are durable: their acknowledgements go.
    fn on_durable(&mut self) {
        self.publish_ops_if_due();
        if let Some(durability) = &mut self.durability {
            durability.release_acks(&mut self.acker);
        }
    }

    /// The checkpoint interval passed.
    async fn on_checkpoint(&mut self) {
        self.publish_ops_if_due();
        self.checkpoint().await;
    }

    /// Begins a snapshot of the tracker, if one is wanted. Every point of the
    /// records the snapshot covers goes to the writers first, so that their
    /// settling can be awaited.
    async fn checkpoint(&mut self) {
        if let Some((lines, count)) = self.pipeline.take_lines() {
            if !send_to_all(&self.sinks, lines, count).await {
                error!(points = count, "The InfluxDB writer has stopped; points lost.");
            }
        }
        if let Some(durability) = self.durability.as_mut().filter(|durability| durability.checkpoint_wanted()) {
            let tracker = self.pipeline.tracker().clone();
            durability.begin_checkpoint(tracker, &self.sinks).await;
        }
    }

    fn on_stats_log(&mut self) {
        info!(stats = %self.pipeline.stats().one_line(), "Totals so far.");
    }

    fn on_publish_ops(&mut self) {
        if let Some(publisher) = &self.ops_publisher {
            publish_ops(publisher, &self.pipeline, self.durability.as_ref());
            self.ops_cadence.published();
        }
    }

    /// After an input: its journal records go to the journal thread
    /// together, its alerts are published, and its lines go to the writers
    /// in chunks (on every tick, or once enough have gathered, not after
    /// every message). Breaks when the stop is asked for while a writer
    /// that takes nothing holds the loop.
    async fn pass_on(&mut self, send_now: bool) -> std::ops::ControlFlow<()> {
        // Their acknowledgements follow once they are durable.
        if let Some(durability) = &mut self.durability {
            let started = std::time::Instant::now();
            durability.hand_over().await;
            self.clock.exclude(started.elapsed());
        }
        for refused in self.pipeline.take_refused() {
            self.alerts.rejection(&refused, std::time::Instant::now());
        }
        for alert in self.pipeline.take_alerts() {
            self.alerts.alert(&alert, Millis::now());
            if let Some(on_alert) = &mut self.on_alert {
                on_alert(&alert);
            }
        }
        if !send_now && self.pipeline.pending_lines() < SEND_CHUNK_LINES {
            return std::ops::ControlFlow::Continue(());
        }
        let (mut lines, mut count) = self.pipeline.take_lines().unwrap_or_default();
        lines.push_str(&self.own_lines);
        count += std::mem::take(&mut self.own_count);
        self.own_lines.clear();
        if count == 0 {
            return std::ops::ControlFlow::Continue(());
        }
        let started = std::time::Instant::now();
        let mut sending = std::pin::pin!(send_to_all(&self.sinks, lines, count));
        loop {
            tokio::select! {
                sent = &mut sending => {
                    if !sent {
                        error!(points = count, "The InfluxDB writer has stopped; points lost.");
                    }
                    break;
                }
                () = stopped(self.stop_receiver.clone()) => {
                    self.unsent_at_shutdown += count;
                    return std::ops::ControlFlow::Break(());
                }
                // A writer that takes nothing (InfluxDB down) holds the
                // loop here; the endpoint still sees the counts move.
                _ = self.timers.ops.tick(), if self.ops_publisher.is_some() => {
                    if let Some(publisher) = &self.ops_publisher {
                        publish_ops(publisher, &self.pipeline, self.durability.as_ref());
                    }
                }
            }
        }
        self.clock.exclude(started.elapsed());
        std::ops::ControlFlow::Continue(())
    }

    /// Stops in phases within one budget (see [`ShutdownBudget`]).
    async fn shutdown(
        mut self,
        budget: ShutdownBudget,
        messages: mpsc::Receiver<Incoming>,
        source_task: JoinHandle<()>,
        sink_tasks: Vec<JoinHandle<SinkReport>>,
    ) -> RunReport {
        if let Some(publisher) = &self.ops_publisher {
            publisher.send_modify(|snapshot| snapshot.stopping = true);
        }
        // Phase 1: stop the source; unprocessed messages stay with the broker.
        drop(messages);
        let _ = tokio::time::timeout_at(budget.source_stopped(), source_task).await;
        // Phase 2: make the state durable. With a journal, the events held for
        // reordering stay held (the next start recovers them from the journal);
        // without one they would be lost, so they are applied now.
        let handed_over = budget.handed_over();
        match self.durability.take() {
            Some(durability) => {
                if tokio::time::timeout_at(handed_over, durability.close(&mut self.acker)).await.is_err() {
                    error!("The journal did not sync in time; what it lacks is still with the broker.");
                }
            }
            None => self.pipeline.drain(self.clock.now(Millis::now())),
        }
        let (mut lines, mut count) = self.pipeline.take_lines().unwrap_or_default();
        lines.push_str(&self.own_lines);
        count += self.own_count;
        if tokio::time::timeout_at(handed_over, send_to_all(&self.sinks, lines, count)).await.is_err() {
            self.unsent_at_shutdown += count;
        }
        // Phase 3: the writers flush within their deadline once the last handle
        // is gone, and the daemon waits for them within the budget.
        let mut sink_report = SinkReport::default();
        for (sink, task) in self.sinks.into_iter().zip(sink_tasks) {
            sink_report.add(&sink::finish_by(sink, task, budget.writers_finished()).await);
        }
        if self.unsent_at_shutdown > 0 {
            error!(points = self.unsent_at_shutdown, "Points not handed to the writer before shutdown.");
        }
        sink_report.points_unwritten_at_shutdown += self.unsent_at_shutdown as u64;
        let stats = self.pipeline.stats().clone();
        info!(
            stats = %stats.one_line(),
            written = sink_report.points_written,
            alerts_published = self.alerts.published,
            alerts_dropped = self.alerts.dropped,
            alerts_stale = self.alerts.stale_skipped,
            echoes_suppressed = self.alerts.echoes_suppressed,
            acks_waiting = self.acker.waiting(),
            "queuewatch stopped."
        );
        RunReport { stats, sink: sink_report, mqtt: self.mqtt_status }
    }
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

/// Resolves once the stop was asked for.
async fn stopped(mut receiver: watch::Receiver<Option<tokio::time::Instant>>) {
    while receiver.borrow_and_update().is_none() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
