//! The MQTT edge of the simulator: paces the generator's events onto a
//! broker, QoS 1, and waits for their acknowledgements.
//!
//! Two tasks: this one owns the generator and the pacing and queues publishes
//! into rumqttc's request channel (waiting when it is full: that is the
//! back-pressure); a spawned task owns the event loop and only polls it, so
//! it never waits on anything that needs itself. It reports the connection
//! state and the PUBACK count through a `watch` channel (one value, so it
//! cannot grow).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use super::{SimOptions, Simulation};
use crate::mqtt::Backoff;
use crate::time::Millis;

/// What a publishing run did.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Events handed to the MQTT client.
    pub events_published: u64,
    /// Events the broker acknowledged (PUBACK).
    pub events_acknowledged: u64,
    /// From the first connection to the last acknowledgement waited for.
    pub elapsed: Duration,
    /// The shutdown future resolved before the simulation ended.
    pub interrupted: bool,
    /// The `ts` of the last event published.
    pub simulated_until: Option<Millis>,
}

impl SimReport {
    /// True when the broker acknowledged every event published.
    pub fn complete(&self) -> bool {
        self.events_acknowledged >= self.events_published
    }

    /// One line for the end of a run.
    pub fn summary(&self) -> String {
        let elapsed_s = self.elapsed.as_secs_f64();
        let mut text = format!(
            "events published: {}, acknowledged: {}, in {:.1} s ({:.0} events/s)",
            self.events_published,
            self.events_acknowledged,
            elapsed_s,
            self.events_published as f64 / elapsed_s.max(1e-9)
        );
        if let Some(until) = self.simulated_until {
            text.push_str(&format!(", simulated until {until}"));
        }
        if self.interrupted {
            text.push_str(", interrupted");
        }
        text
    }
}

/// Room in rumqttc's request channel: the publisher runs this far ahead of
/// the connection before it waits.
const REQUEST_CAPACITY: usize = 10_000;
/// Publishes awaiting their PUBACK at once.
const INFLIGHT: u16 = 100;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// After the last publish, how long to wait without any new PUBACK before giving up on the rest.
const ACK_STALL_LIMIT: Duration = Duration::from_secs(30);
/// After an interruption, how long the outstanding PUBACKs are waited for.
const ACK_WAIT_AFTER_INTERRUPT: Duration = Duration::from_secs(5);
/// How long the DISCONNECT may take to go out.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// Publishes the simulation of `options` to its broker until it ends or
/// `shutdown` resolves, then waits for the outstanding PUBACKs.
///
/// With `rate`, event `n` is published at `n / rate` seconds after the
/// connection; otherwise an event at `at` is published when the wall clock
/// has advanced by `(at − start) / speed` since the connection. A publisher
/// that falls behind publishes as fast as the broker takes it.
///
/// Fails when the options are invalid or the first connection fails; once
/// connected, a lost connection is retried with backoff.
pub async fn publish(options: &SimOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<SimReport> {
    options.validate()?;
    let (host, port) = crate::config::parse_mqtt_url(&options.url).map_err(anyhow::Error::msg)?;
    let client_id = options.client_id.clone().unwrap_or_else(|| format!("queuewatch-simulate-{}", std::process::id()));
    let mut mqtt_options = MqttOptions::new(client_id, host, port);
    mqtt_options.set_keep_alive(KEEP_ALIVE).set_clean_session(true).set_inflight(INFLIGHT);
    let (client, event_loop) = AsyncClient::new(mqtt_options, REQUEST_CAPACITY);
    let (link_sender, mut link) = watch::channel(Link::default());
    let (stop_sender, stop) = oneshot::channel();
    let driver = tokio::spawn(drive(event_loop, link_sender, stop));
    tokio::pin!(shutdown);

    let mut report = SimReport {
        events_published: 0,
        events_acknowledged: 0,
        elapsed: Duration::ZERO,
        interrupted: false,
        simulated_until: None,
    };

    // Pacing starts at the first connection.
    loop {
        let state = link.borrow_and_update().clone();
        if state.connected {
            break;
        }
        if let Some(failure) = state.failure {
            let _ = driver.await;
            anyhow::bail!("cannot connect to {}: {failure}", options.url);
        }
        tokio::select! {
            biased;
            () = &mut shutdown => {
                report.interrupted = true;
                stop_driver(stop_sender, driver, Duration::ZERO).await;
                return Ok(report);
            }
            changed = link.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the MQTT event loop stopped before connecting to {}", options.url);
                }
            }
        }
    }

    let started = Instant::now();
    let mut progress = Progress::new(started);
    'events: for event in Simulation::new(options) {
        let due = match options.rate {
            Some(rate) => seconds_after(started, report.events_published as f64 / rate),
            None => seconds_after(started, event.at.since(options.start).max(0) as f64 / 1000.0 / options.speed),
        };
        // Wait for the event's turn, reporting progress during long waits.
        while due.is_none_or(|due| due > Instant::now()) {
            let wake = due.map_or(progress.next_report, |due| due.min(progress.next_report));
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    report.interrupted = true;
                    break 'events;
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            progress.maybe_report(&report, acknowledged(&link));
        }
        tokio::select! {
            biased;
            () = &mut shutdown => {
                report.interrupted = true;
                break 'events;
            }
            queued = client.publish(event.topic, QoS::AtLeastOnce, false, event.payload) => {
                queued.context("the MQTT event loop has stopped")?;
            }
        }
        report.events_published += 1;
        report.simulated_until = Some(event.at);
        progress.maybe_report(&report, acknowledged(&link));
    }

    // Wait for the PUBACKs: all of them, unless they stall or we were interrupted.
    let mut deadline = Instant::now() + if report.interrupted { ACK_WAIT_AFTER_INTERRUPT } else { ACK_STALL_LIMIT };
    let mut last_acknowledged = acknowledged(&link);
    while acknowledged(&link) < report.events_published {
        tokio::select! {
            biased;
            () = &mut shutdown, if !report.interrupted => {
                report.interrupted = true;
                deadline = deadline.min(Instant::now() + ACK_WAIT_AFTER_INTERRUPT);
            }
            changed = link.changed() => {
                if changed.is_err() {
                    break;
                }
                let now_acknowledged = acknowledged(&link);
                if now_acknowledged > last_acknowledged && !report.interrupted {
                    last_acknowledged = now_acknowledged;
                    deadline = Instant::now() + ACK_STALL_LIMIT;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                warn!(
                    unacknowledged = report.events_published.saturating_sub(acknowledged(&link)),
                    "Gave up waiting for the broker's acknowledgements."
                );
                break;
            }
        }
        progress.maybe_report(&report, acknowledged(&link));
    }
    report.events_acknowledged = acknowledged(&link).min(report.events_published);
    report.elapsed = started.elapsed();

    // A clean DISCONNECT, then the event loop stops.
    let _ = client.try_disconnect();
    stop_driver(stop_sender, driver, DISCONNECT_GRACE).await;
    Ok(report)
}

/// What the event loop task tells the publisher.
#[derive(Debug, Clone, Default)]
struct Link {
    connected: bool,
    ever_connected: bool,
    acknowledged: u64,
    /// Why the first connection failed (the task has then stopped).
    failure: Option<String>,
}

fn acknowledged(link: &watch::Receiver<Link>) -> u64 {
    link.borrow().acknowledged
}

/// Polls the event loop until told to stop or a DISCONNECT has gone out.
async fn drive(mut event_loop: EventLoop, link: watch::Sender<Link>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures_logged = 0u32;
    loop {
        let polled = tokio::select! {
            biased;
            _ = &mut stop => break,
            polled = event_loop.poll() => polled,
        };
        match polled {
            Ok(MqttEvent::Incoming(Packet::PubAck(_))) => link.send_modify(|link| link.acknowledged += 1),
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                failures_logged = 0;
                link.send_modify(|link| {
                    link.connected = true;
                    link.ever_connected = true;
                });
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                if !link.borrow().ever_connected {
                    link.send_modify(|link| link.failure = Some(error.to_string()));
                    break;
                }
                link.send_modify(|link| link.connected = false);
                let delay = backoff.next_delay();
                if failures_logged < 3 || failures_logged.is_multiple_of(20) {
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost; reconnecting.");
                }
                failures_logged += 1;
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Lets the event loop send what is queued (the DISCONNECT) for up to `grace`, then stops it.
async fn stop_driver(stop: oneshot::Sender<()>, mut driver: tokio::task::JoinHandle<()>, grace: Duration) {
    if tokio::time::timeout(grace, &mut driver).await.is_err() {
        let _ = stop.send(());
        let _ = driver.await;
    }
}

/// `start + seconds`, or `None` when that is too far away to represent (wait forever).
fn seconds_after(start: Instant, seconds: f64) -> Option<Instant> {
    Duration::try_from_secs_f64(seconds).ok().and_then(|offset| start.checked_add(offset))
}

/// A line on standard error every few seconds.
struct Progress {
    next_report: Instant,
    last_report: Instant,
    published_at_last_report: u64,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress { next_report: started + PROGRESS_EVERY, last_report: started, published_at_last_report: 0 }
    }

    fn maybe_report(&mut self, report: &SimReport, acknowledged: u64) {
        let now = Instant::now();
        if now < self.next_report {
            return;
        }
        let interval_s = now.duration_since(self.last_report).as_secs_f64().max(1e-9);
        let rate = (report.events_published - self.published_at_last_report) as f64 / interval_s;
        let simulated = report.simulated_until.map_or_else(|| "-".to_string(), |at| at.to_string());
        let published = report.events_published;
        eprintln!(
            "simulate: {published} events published, {acknowledged} acknowledged, {rate:.0} events/s, at {simulated}"
        );
        self.last_report = now;
        self.next_report = now + PROGRESS_EVERY;
        self.published_at_last_report = report.events_published;
    }
}
