//! The operations endpoint: `/healthz`, `/readyz` and `/metrics` over HTTP
//! (`[http] listen`).
//!
//! Owns the listening socket and nothing else. Invariants:
//! - **It never touches the pipeline.** The daemon loop, which owns the
//!   pipeline, publishes an [`OpsSnapshot`] of its counts about once a second
//!   (a copy of a few hundred bytes, nothing per event); this task renders
//!   the newest one. Whether MQTT is connected comes from the MQTT source's
//!   own [`ConnectionState`]. So a scrape costs the daemon nothing, and a
//!   daemon stalled on InfluxDB still answers, with its last counts.
//! - **Nothing secret is exposed**: counts, ages and states only; no URL,
//!   user name, topic or office name (which would also make the label sets
//!   grow with the input: labels are closed sets, reasons, outcomes and
//!   measurements).
//! - A listen address that cannot be bound (in use, not local) is an error
//!   at start, naming `http.listen`.
//!
//! The metrics are written by `prometheus-client` in the OpenMetrics text
//! format, which Prometheus reads; the HTTP server is hyper's, already in the
//! build through the InfluxDB client.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::event::RejectReason;
use crate::mqtt::{ConnectionState, SessionLoss};
use crate::sink::{ProgressReader, SinkProgress};
use crate::stats::{Stats, MEASUREMENTS};
use crate::time::Millis;
use crate::tracker::Note;

/// What the daemon loop publishes for the endpoint: its own counts and the
/// writer's and journal's, as they were at `at`.
#[derive(Debug, Clone, Default)]
pub struct OpsSnapshot {
    /// When it was taken; `None` until the daemon has recovered its state
    /// and started its loop.
    pub at: Option<Instant>,
    pub stats: Stats,
    pub sink: SinkProgress,
    /// Since when points have waited at the writer without any being
    /// settled; `None` while the writer keeps up.
    pub sink_stalled_since: Option<Instant>,
    pub open_tickets: u64,
    /// The newest accepted event's ts over all offices.
    pub newest_event: Option<Millis>,
    /// The journal's bytes on disk; `None` without a journal.
    pub journal_bytes: Option<u64>,
    pub last_snapshot_at: Option<SystemTime>,
    /// The journal cannot be written (a full disk): nothing is acknowledged.
    pub journal_failing: bool,
    /// The daemon is stopping.
    pub stopping: bool,
}

/// The sending side, held by the daemon loop.
pub type OpsPublisher = watch::Sender<OpsSnapshot>;

/// Follows the writer's settled count to tell a writer that keeps up from
/// one that has stopped settling points (InfluxDB down or refusing).
#[derive(Debug, Default)]
pub struct SinkWatch {
    settled: u64,
    stalled_since: Option<Instant>,
}

impl SinkWatch {
    /// Since when points have waited with none settled, as of `now`.
    pub fn observe(&mut self, progress: &SinkProgress, now: Instant) -> Option<Instant> {
        let waiting = progress.points_handed > progress.points_settled;
        if !waiting || progress.points_settled != self.settled {
            self.settled = progress.points_settled;
            self.stalled_since = None;
            return None;
        }
        Some(*self.stalled_since.get_or_insert(now))
    }
}

/// Whether the daemon is ready, or the short reason it is not.
pub fn readiness(
    snapshot: &OpsSnapshot,
    mqtt_connected: bool,
    sink_stall_limit: Duration,
    now: Instant,
) -> Result<(), String> {
    if snapshot.stopping {
        return Err("stopping".into());
    }
    if snapshot.at.is_none() {
        return Err("starting: recovering state".into());
    }
    if !mqtt_connected {
        return Err("mqtt: not connected to the broker".into());
    }
    if snapshot.journal_failing {
        return Err("journal: cannot write to the state folder; nothing is acknowledged".into());
    }
    if snapshot.sink.spool_full {
        return Err(format!(
            "influxdb: the spool is full ({} points waiting); nothing more is acknowledged",
            snapshot.sink.spool_points
        ));
    }
    if let Some(since) = snapshot.sink_stalled_since {
        let stalled = now.saturating_duration_since(since);
        if stalled >= sink_stall_limit {
            let waiting = snapshot.sink.points_handed.saturating_sub(snapshot.sink.points_settled);
            return Err(format!("influxdb: {waiting} points waiting, none written for {} s", stalled.as_secs()));
        }
    }
    Ok(())
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("http.listen: cannot listen on {address}: {source}")]
pub struct ListenError {
    address: SocketAddr,
    source: std::io::Error,
}

/// The bound socket, before the daemon has recovered (so that a port in use
/// stops it at once).
pub struct Listener {
    socket: std::net::TcpListener,
    address: SocketAddr,
}

impl Listener {
    pub fn bind(address: SocketAddr) -> Result<Listener, ListenError> {
        let error = |source| ListenError { address, source };
        let socket = std::net::TcpListener::bind(address).map_err(error)?;
        socket.set_nonblocking(true).map_err(error)?;
        let address = socket.local_addr().map_err(error)?;
        Ok(Listener { socket, address })
    }

    /// The address bound (with the port chosen when the config said 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// What the endpoint reads: the loop's snapshots and the MQTT state.
pub struct Endpoint {
    live: Arc<Live>,
    mqtt: ConnectionState,
    sink_stall_limit: Duration,
    registry: Registry,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    connections_refused: Counter,
}

/// Connections the endpoint serves at once. A scraper, a load balancer's
/// probe and an operator's curl need a handful; beyond this a connection is
/// closed at once and counted, so a client that opens connections without
/// end costs neither memory nor file descriptors (the daemon's own sockets
/// and files share its limit).
pub const MAX_CONNECTIONS: usize = 64;

impl Endpoint {
    /// The endpoint and the publisher the daemon loop sends snapshots through.
    /// With `sink`, the writer's counts are read live on every request rather
    /// than from the loop's snapshot: the loop itself waits while the spool
    /// is full, and that is exactly when the endpoint must say so.
    pub fn new(
        mqtt: ConnectionState,
        sink: Option<ProgressReader>,
        sink_stall_limit: Duration,
    ) -> (Endpoint, OpsPublisher) {
        let (publisher, snapshots) = watch::channel(OpsSnapshot::default());
        let live = Arc::new(Live { snapshots, sink, sink_watch: Mutex::new(SinkWatch::default()) });
        let mut registry = Registry::with_prefix("queuewatch");
        registry.register_collector(Box::new(Metrics { live: Arc::clone(&live), mqtt: mqtt.clone() }));
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            format!("Connections to this endpoint closed at once because {MAX_CONNECTIONS} were open."),
            connections_refused.clone(),
        );
        (Endpoint { live, mqtt, sink_stall_limit, registry, connections_refused }, publisher)
    }

    /// The answer to one request.
    fn answer(&self, request: &Request<Body>) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let snapshot = self.live.current();
                match readiness(&snapshot, self.mqtt.is_connected(), self.sink_stall_limit, Instant::now()) {
                    Ok(()) => text(StatusCode::OK, "ready\n".into()),
                    Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
                }
            }
            "/metrics" => {
                let mut body = String::with_capacity(8 * 1024);
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => Response::builder()
                        .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(Body::from(body))
                        .unwrap_or_default(),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n".into()),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n".into()),
        }
    }
}

/// The loop's newest snapshot, with the writer's counts read live.
#[derive(Debug)]
struct Live {
    snapshots: watch::Receiver<OpsSnapshot>,
    sink: Option<ProgressReader>,
    /// Owned by the endpoint: looked at every second by [`serve`] and on
    /// every request, so a stall is timed even while the loop waits.
    sink_watch: Mutex<SinkWatch>,
}

impl Live {
    fn current(&self) -> OpsSnapshot {
        let mut snapshot = self.snapshots.borrow().clone();
        if let Some(reader) = &self.sink {
            snapshot.sink = reader.read();
            let mut watch = self.sink_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            snapshot.sink_stalled_since = watch.observe(&snapshot.sink, Instant::now());
        }
        snapshot
    }
}

/// Serves `endpoint` on `listener` until `shutdown` resolves.
pub async fn serve(listener: Listener, endpoint: Endpoint, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let endpoint = Arc::new(endpoint);
    let live = Arc::clone(&endpoint.live);
    let watching = tokio::spawn(async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            every_second.tick().await;
            live.current();
        }
    });
    let listener = tokio::net::TcpListener::from_std(listener.socket)?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::Http::new();
    // One request per connection: a client cannot hold a permit with an idle keep-alive.
    http.http1_only(true).http1_keep_alive(false).http1_header_read_timeout(Duration::from_secs(10));
    let mut shutdown = std::pin::pin!(shutdown);
    let served = loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before it was
                // taken: the listener itself is fine; try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            endpoint.connections_refused.inc();
            drop(stream);
            continue;
        };
        let service = {
            let endpoint = Arc::clone(&endpoint);
            service_fn(move |request| {
                let response = endpoint.answer(&request);
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let connection = http.serve_connection(stream, service);
        tokio::spawn(async move {
            // A client's error (a reset, a header timeout) ends its connection only.
            let _ = connection.await;
            drop(permit);
        });
    };
    watching.abort();
    served
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// Renders the newest snapshot on each scrape.
#[derive(Debug)]
struct Metrics {
    live: Arc<Live>,
    mqtt: ConnectionState,
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.live.current();
        let mut out = Out(&mut encoder);
        encode_events(&mut out, &snapshot.stats)?;
        encode_sink(&mut out, &snapshot.sink)?;
        out.gauge("open_tickets", "Tickets with an open segment.", None, snapshot.open_tickets)?;
        self.encode_mqtt(&mut out, &snapshot.stats)?;
        encode_state(&mut out, &snapshot)
    }
}

impl Metrics {
    /// The connection and session to the broker, and what the daemon skipped of its deliveries.
    fn encode_mqtt(&self, out: &mut Out<'_, '_>, stats: &Stats) -> Result<(), std::fmt::Error> {
        out.gauge(
            "mqtt_connected",
            "1 while connected to the MQTT broker, else 0.",
            None,
            u64::from(self.mqtt.is_connected()),
        )?;
        out.counter_family(
            "mqtt_sessions_lost",
            "Times queuewatch's persistent session was lost, by cause: absent (the broker no longer had it), \
             taken_over (another client logged in with queuewatch's client id).",
            "cause",
            SessionLoss::ALL.iter().map(|cause| (cause.as_str(), self.mqtt.sessions_lost(*cause))),
        )?;
        out.counter(
            "mqtt_redeliveries",
            "Messages the broker delivered again after a reconnection or restart that the journal already held: \
             acknowledged, not taken twice (also counted as duplicates).",
            stats.redelivered,
        )?;
        out.counter(
            "mqtt_retained_skipped",
            "Retained copies the broker sent because of a subscription: acknowledged, not taken as events.",
            stats.retained,
        )?;
        Ok(())
    }
}

/// The messages taken in and what became of them, up to the points produced.
fn encode_events(out: &mut Out<'_, '_>, stats: &Stats) -> Result<(), std::fmt::Error> {
    out.counter(
        "events_received",
        "Messages taken in: accepted as events or rejected.",
        stats.accepted + stats.rejected_total(),
    )?;
    out.counter("events_accepted", "Messages accepted as events (redelivered duplicates included).", stats.accepted)?;
    out.counter_family(
        "events_rejected",
        "Messages rejected, by reason.",
        "reason",
        RejectReason::ALL.iter().map(|reason| (reason.as_str(), stats.rejected(*reason))),
    )?;
    out.counter_family(
        "event_outcomes",
        "Accepted events by what became of them once out of the reorder buffer.",
        "outcome",
        Note::OUTCOMES.iter().map(|note| (note.as_str(), stats.notes.get(*note))),
    )?;
    out.counter_family(
        "event_remarks",
        "Remarks on applied or held events: late, clock_skew, clock_ahead.",
        "remark",
        Note::REMARKS.iter().map(|note| (note.as_str(), stats.notes.get(*note))),
    )?;
    out.counter(
        "remembered_forgotten_early",
        "Closed tickets and dedup keys forgotten before tracking.dedup_horizon because their office \
         reached limits.max_remembered_per_office (least recently closed or touched first).",
        stats.forgotten_early,
    )?;
    out.counter_family(
        "points_produced",
        "Points handed to the InfluxDB writer, by measurement.",
        "measurement",
        MEASUREMENTS.iter().map(|measurement| (*measurement, stats.points_of(measurement))),
    )?;
    Ok(())
}

/// The writer's counts: points written, refused, dead-lettered and spooled, and its requests.
fn encode_sink(out: &mut Out<'_, '_>, sink: &SinkProgress) -> Result<(), std::fmt::Error> {
    out.counter("points_written", "Points InfluxDB accepted.", sink.points_written)?;
    out.counter(
        "points_refused",
        "Points InfluxDB refused for their content (single lines, after halving).",
        sink.points_rejected,
    )?;
    out.counter(
        "points_dead_lettered",
        "Refused points written to the dead-letter file (data_dir/dead-letters.lp).",
        sink.points_dead_lettered,
    )?;
    out.counter(
        "points_dead_letter_dropped",
        "Refused points not kept: the dead-letter file had reached storage.dead_letter_max_bytes.",
        sink.points_dead_letter_dropped,
    )?;
    out.counter("points_spooled", "Points put in the disk spool while InfluxDB was unavailable.", sink.points_spooled)?;
    let errors = sink.write_errors;
    out.counter_family(
        "write_errors",
        "Failed write requests, by kind: transport (no answer), unauthorized (401, 403), \
         not_found (404), too_large (413), refused (400, 422), throttled (429), \
         server (5xx), tls (a failed TLS handshake: untrusted certificate, wrong host), \
         unexpected (a redirect, never followed, 405, 408, other 4xx: a URL or proxy to correct).",
        "kind",
        [
            ("transport", errors.transport),
            ("unauthorized", errors.unauthorized),
            ("not_found", errors.not_found),
            ("too_large", errors.too_large),
            ("refused", errors.refused),
            ("throttled", errors.throttled),
            ("server", errors.server),
            ("tls", errors.tls),
            ("unexpected", errors.unexpected),
        ]
        .into_iter(),
    )?;
    out.counter("write_requests", "Write requests made to InfluxDB.", sink.requests)?;
    out.counter("write_retries", "Write requests made again after a transient failure.", sink.retries)?;
    out.gauge("spool", "Bytes in the disk spool.", Some(Unit::Bytes), sink.spool_bytes)?;
    out.gauge("spool_points", "Points waiting in the disk spool.", None, sink.spool_points)?;
    out.gauge(
        "spool_full",
        "1 while the spool is full: no more messages are taken or acknowledged.",
        None,
        u64::from(sink.spool_full),
    )?;
    out.counter(
        "spool_segments_quarantined",
        "Damaged spool segments set aside in data_dir/spool/quarantine (kept, not sent).",
        sink.spool_segments_quarantined,
    )?;
    if let Some(oldest) = sink.spool_oldest {
        out.age("spool_oldest_point_age", "Wall time since the oldest batch in the spool was spooled.", oldest)?;
    }
    out.gauge(
        "points_unsettled",
        "Points handed to the writer and not yet written, refused or spooled.",
        None,
        sink.points_handed.saturating_sub(sink.points_settled),
    )?;
    Ok(())
}

/// Ages and sizes of the daemon's state: the newest event, the journal, the last snapshot.
fn encode_state(out: &mut Out<'_, '_>, snapshot: &OpsSnapshot) -> Result<(), std::fmt::Error> {
    if let Some(newest) = snapshot.newest_event {
        out.age(
            "newest_event_age",
            "Wall time since the newest accepted event's timestamp, over all offices.",
            newest,
        )?;
    }
    if let Some(bytes) = snapshot.journal_bytes {
        out.gauge("journal", "Bytes of the journal's segment files.", Some(Unit::Bytes), bytes)?;
    }
    if let Some(at) = snapshot.last_snapshot_at {
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        out.gauge(
            "last_snapshot_age",
            "Time since the newest state snapshot was committed.",
            Some(Unit::Seconds),
            age.as_secs_f64(),
        )?;
    }
    Ok(())
}

/// Writes one metric at a time through a descriptor encoder.
struct Out<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(value);
        counter.encode(self.0.encode_descriptor(name, help, None, counter.metric_type())?)
    }

    fn counter_family<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = (&'v str, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self.0.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (label_value, value) in values {
            let labels = [(label, label_value)];
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge of the wall time since `since`, in seconds (never negative).
    fn age(&mut self, name: &str, help: &str, since: Millis) -> Result<(), std::fmt::Error> {
        let age_ms = Millis::now().since(since).max(0);
        self.gauge(name, help, Some(Unit::Seconds), age_ms as f64 / 1000.0)
    }

    fn gauge<N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        value: N,
    ) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(value);
        gauge.encode(self.0.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(40);

    fn progress(handed: u64, settled: u64) -> SinkProgress {
        SinkProgress {
            points_handed: handed,
            points_written: settled,
            points_settled: settled,
            ..SinkProgress::default()
        }
    }

    fn running(now: Instant) -> OpsSnapshot {
        OpsSnapshot { at: Some(now), ..OpsSnapshot::default() }
    }

    #[test]
    fn a_writer_that_keeps_settling_is_never_stalled() {
        let start = Instant::now();
        let mut watch = SinkWatch::default();
        assert_eq!(watch.observe(&progress(0, 0), start), None);
        assert_eq!(watch.observe(&progress(100, 40), start + Duration::from_secs(1)), None, "it settled some");
        assert_eq!(watch.observe(&progress(200, 90), start + Duration::from_secs(2)), None);
        assert_eq!(watch.observe(&progress(200, 200), start + Duration::from_secs(3)), None, "nothing waits");
    }

    #[test]
    fn points_waiting_with_none_settled_are_a_stall_from_the_first_look_that_saw_no_progress() {
        let start = Instant::now();
        let mut watch = SinkWatch::default();
        watch.observe(&progress(100, 40), start);
        let later = start + Duration::from_secs(1);
        assert_eq!(watch.observe(&progress(150, 40), later), Some(later));
        assert_eq!(watch.observe(&progress(150, 40), later + Duration::from_secs(60)), Some(later));
        assert_eq!(watch.observe(&progress(150, 41), later + Duration::from_secs(61)), None, "progress ends it");
    }

    #[test]
    fn ready_needs_a_running_loop_a_broker_and_a_writer_that_is_not_stalled() {
        let now = Instant::now();
        assert_eq!(readiness(&running(now), true, LIMIT, now), Ok(()));
        let starting = OpsSnapshot::default();
        assert_eq!(readiness(&starting, true, LIMIT, now), Err("starting: recovering state".into()));
        assert_eq!(readiness(&running(now), false, LIMIT, now), Err("mqtt: not connected to the broker".into()));
        let stalled = OpsSnapshot { sink: progress(500, 200), sink_stalled_since: Some(now), ..running(now) };
        assert_eq!(readiness(&stalled, true, LIMIT, now + Duration::from_secs(39)), Ok(()), "within the limit");
        assert_eq!(
            readiness(&stalled, true, LIMIT, now + Duration::from_secs(45)),
            Err("influxdb: 300 points waiting, none written for 45 s".into())
        );
        let spooling = SinkProgress { spool_points: 300, ..progress(500, 500) };
        let spooling = OpsSnapshot { sink: spooling, ..running(now) };
        assert_eq!(readiness(&spooling, true, LIMIT, now), Ok(()), "spooling within its limit is delivering");
        let full = SinkProgress { spool_points: 300, spool_full: true, ..progress(500, 500) };
        let full = OpsSnapshot { sink: full, ..running(now) };
        assert!(
            readiness(&full, true, LIMIT, now).is_err_and(|reason| reason.starts_with("influxdb: the spool is full"))
        );
        let disk_full = OpsSnapshot { journal_failing: true, ..running(now) };
        assert!(readiness(&disk_full, true, LIMIT, now).is_err_and(|reason| reason.starts_with("journal: ")));
        let stopping = OpsSnapshot { stopping: true, ..running(now) };
        assert_eq!(readiness(&stopping, true, LIMIT, now), Err("stopping".into()));
    }

    #[test]
    fn metrics_render_every_reason_outcome_and_measurement_and_nothing_else_from_the_input() {
        let (endpoint, publisher) = Endpoint::new(ConnectionState::default(), None, LIMIT);
        let mut stats = Stats { accepted: 7, ..Stats::default() };
        stats.reject(RejectReason::MalformedJson);
        stats.notes.add(Note::Duplicate);
        stats.point("ticket");
        stats.point("ticket");
        stats.forgotten_early = 12;
        publisher.send_replace(OpsSnapshot {
            stats,
            sink: SinkProgress {
                points_spooled: 40,
                spool_points: 40,
                spool_bytes: 9000,
                spool_oldest: Some(Millis::now().minus_ms(60_000)),
                write_errors: crate::sink::WriteErrors { server: 3, unexpected: 1, ..Default::default() },
                retries: 2,
                points_dead_letter_dropped: 5,
                spool_segments_quarantined: 1,
                ..progress(2, 1)
            },
            newest_event: Some(Millis::now().minus_ms(2_500)),
            journal_bytes: Some(4096),
            ..running(Instant::now())
        });
        let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let response = endpoint.answer(&request);
        assert_eq!(response.status(), StatusCode::OK);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &endpoint.registry).unwrap();
        for line in [
            "queuewatch_events_received_total 8",
            "queuewatch_events_accepted_total 7",
            "queuewatch_events_rejected_total{reason=\"malformed_json\"} 1",
            "queuewatch_events_rejected_total{reason=\"oversized\"} 0",
            "queuewatch_event_outcomes_total{outcome=\"duplicate\"} 1",
            "queuewatch_event_outcomes_total{outcome=\"late_dropped\"} 0",
            "queuewatch_remembered_forgotten_early_total 12",
            "queuewatch_points_produced_total{measurement=\"ticket\"} 2",
            "queuewatch_points_produced_total{measurement=\"office\"} 0",
            "queuewatch_points_unsettled 1",
            "queuewatch_mqtt_connected 0",
            "queuewatch_journal_bytes 4096",
            "queuewatch_points_spooled_total 40",
            "queuewatch_spool_points 40",
            "queuewatch_spool_bytes 9000",
            "queuewatch_spool_full 0",
            "queuewatch_write_errors_total{kind=\"server\"} 3",
            "queuewatch_write_errors_total{kind=\"unauthorized\"} 0",
            "queuewatch_write_errors_total{kind=\"unexpected\"} 1",
            "queuewatch_write_retries_total 2",
            "queuewatch_points_dead_letter_dropped_total 5",
            "queuewatch_spool_segments_quarantined_total 1",
        ] {
            assert!(text.lines().any(|rendered| rendered == line), "{line:?} in:\n{text}");
        }
        assert!(text.contains("# TYPE queuewatch_newest_event_age_seconds gauge"), "{text}");
        assert!(text.contains("# TYPE queuewatch_spool_oldest_point_age_seconds gauge"), "{text}");
        assert!(!text.contains("last_snapshot_age"), "no snapshot yet: {text}");
    }
}
