//! The MQTT adapter: subscribes, hands messages to the tracker task, and
//! acknowledges them only when that task says so.
//!
//! Owns the rumqttc event loop. Invariants:
//! - The poll loop never awaits anything that needs the poll loop itself:
//!   subscriptions and acknowledgements go through `try_*`, which only queue.
//! - Messages are acknowledged by the consumer ([`Acker`]) after it has taken
//!   them into its state, never on receipt (manual acks), so what has not been
//!   processed is redelivered by the broker's persistent session.
//! - The hand-off channel is bounded. When it is full the poll loop waits:
//!   the broker holds the rest (QoS 1, `clean_session = false`), bounded by its
//!   in-flight window since nothing unprocessed is acknowledged.
//! - Reconnects back off exponentially (rumqttc's poll does not), capped.
//!   A failed connection never ends the loop: an operator fixes the broker
//!   or the password while queuewatch waits, and each distinct failure
//!   (a refused CONNACK names the broker's answer) is logged once.
//! - Whether the connection is up is this module's to say
//!   ([`ConnectionState`]): set on every CONNACK, cleared on every failure,
//!   read by the operations endpoint without asking the poll loop.
//! - The password is read where `mqtt.password_env` or `mqtt.password_file`
//!   says before every connection attempt (a corrected file takes effect
//!   without a restart), and is never logged nor shown in an error. The
//!   password file is a secret file ([`crate::secret`]).
//! - For `mqtts://`, the TLS configuration ([`tls`]) is built from its files
//!   before every connection attempt too; a handshake that fails says why in
//!   the operator's words (untrusted broker certificate, client certificate
//!   required or refused) and is retried like any other failure.
//! - **Connections are marked in the stream.** Every CONNACK goes to the
//!   consumer as [`Incoming::Connected`], after everything received on the
//!   connection before (rumqttc keeps packets read before a failure and
//!   yields them after the next CONNACK; they are handed over at the failure
//!   instead). So the consumer knows which messages may be the broker's
//!   redeliveries: those right after a marker whose session is present.
//! - **The session is watched** ([`session`]): every configured filter is
//!   subscribed on every CONNACK (a session tampered with is mended; the
//!   retained copies this brings are not events, and the consumer skips
//!   them), the filters the config no longer names are unsubscribed when the
//!   session is present, and a session found lost or taken over is counted
//!   ([`ConnectionState`]) and logged as an error.

pub mod session;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Packet, Publish, QoS,
    StateError, SubAck, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

pub use session::{SessionLoss, SessionMemory};

use crate::config::{MqttConfig, MqttTlsConfig};
use crate::event::{RejectReason, Rejection};
use crate::ids::{Interned, InvalidId, OfficeId};
use crate::secret::SecretFileError;
use crate::throttle::LogLimiter;

/// A failure that repeats on every attempt is logged again only this often,
/// with the number of attempts in between.
const REPEATED_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(3600);

/// A session lost or taken over is logged again only this often, with the
/// number of losses in between (all are counted).
const SESSION_LOSS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the source hands to its consumer, in the order it happened.
#[derive(Debug)]
pub enum Incoming {
    /// One message received, with what is needed to acknowledge it.
    Message(Publish),
    /// The broker accepted a connection; what follows came on it. Whatever
    /// the previous connection received was handed over before.
    Connected { session_present: bool },
}

/// Acknowledges processed messages, in order, without ever waiting on the
/// poll loop: what rumqttc's request queue cannot take now waits here and
/// goes first next time (brokers such as rumqttd insist on in-order acks).
/// Owned by the one task that processes messages.
pub struct Acker {
    client: AsyncClient,
    waiting: std::collections::VecDeque<Publish>,
}

impl Acker {
    /// Acknowledges through `client` (normally from [`MqttSource::acker`]).
    pub fn new(client: AsyncClient) -> Acker {
        Acker { client, waiting: std::collections::VecDeque::new() }
    }

    /// Queues the acknowledgement of `publish` after those still waiting.
    pub fn ack(&mut self, publish: &Publish) {
        if publish.qos == QoS::AtMostOnce {
            return;
        }
        self.flush();
        if !self.waiting.is_empty() || self.client.try_ack(publish).is_err() {
            self.waiting.push_back(publish.clone());
        }
    }

    /// Hands waiting acknowledgements to rumqttc while it takes them.
    pub fn flush(&mut self) {
        while let Some(publish) = self.waiting.front() {
            if self.client.try_ack(publish).is_err() {
                break;
            }
            self.waiting.pop_front();
        }
    }

    /// Acknowledgements not yet handed over (the broker redelivers them if
    /// the connection drops first; dedup then recognises them).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The client handle used to publish alerts and rejection echoes, and to acknowledge.
pub struct MqttSource {
    client: AsyncClient,
    event_loop: EventLoop,
    topics: Vec<String>,
    client_id: String,
    credentials: CredentialSource,
    tls: Option<MqttTlsConfig>,
    connected: ConnectionState,
    session: SessionMemory,
}

/// Whether the source is connected to the broker now, and how often its
/// session was lost: written by the poll loop alone, read by anyone (the
/// operations endpoint, the daemon's own row).
#[derive(Debug, Clone, Default)]
pub struct ConnectionState(Arc<Status>);

#[derive(Debug, Default)]
struct Status {
    connected: AtomicBool,
    /// By [`SessionLoss`], in the order of [`SessionLoss::ALL`].
    sessions_lost: [AtomicU64; SessionLoss::ALL.len()],
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    fn set(&self, connected: bool) {
        self.0.connected.store(connected, Ordering::Relaxed);
    }

    /// Sessions lost for `cause` since the start.
    pub fn sessions_lost(&self, cause: SessionLoss) -> u64 {
        self.0.sessions_lost[cause as usize].load(Ordering::Relaxed)
    }

    /// Sessions lost for any cause since the start.
    pub fn sessions_lost_total(&self) -> u64 {
        SessionLoss::ALL.iter().map(|cause| self.sessions_lost(*cause)).sum()
    }

    fn count_loss(&self, cause: SessionLoss) {
        self.0.sessions_lost[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection attempt failed. Never carries the password nor key material.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("mqtt.password_env: the environment variable {name} is not set")]
    PasswordEnvUnset { name: String },
    #[error("mqtt.password_env: the environment variable {name} is empty or not UTF-8")]
    PasswordEnvUnusable { name: String },
    #[error(transparent)]
    PasswordFile(#[from] SecretFileError),
    /// A TLS file is missing, unreadable, not PEM or not private.
    #[error(transparent)]
    TlsSetup(#[from] tls::TlsSetupError),
    /// A TLS handshake failed; the operator's words (see [`tls::explain`]).
    #[error("{0}")]
    Tls(String),
    /// The broker refused the user name and password queuewatch sent.
    #[error(
        "mqtt: the broker refused the user name or password (mqtt.username {username:?}): {} (CONNACK return code {})",
        refusal_text(*.code), *.code as u8
    )]
    CredentialsRefused { username: String, code: ConnectReturnCode },
    /// The broker answered the CONNECT with a refusal.
    #[error("mqtt: the broker refused the connection: {} (CONNACK return code {})", refusal_text(*.0), *.0 as u8)]
    Refused(ConnectReturnCode),
    /// The network, a timeout or the protocol.
    #[error("{0}")]
    Connection(Box<ConnectionError>),
}

impl ConnectError {
    /// `error` in the operator's words: a refusal of the credentials when a
    /// user name was sent, a TLS failure with what to check.
    fn from_poll(error: ConnectionError, username: Option<&str>, tls: Option<&MqttTlsConfig>) -> ConnectError {
        match error {
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) if username.is_some() => {
                ConnectError::CredentialsRefused { username: username.unwrap_or_default().to_string(), code }
            }
            ConnectionError::ConnectionRefused(code) => ConnectError::Refused(code),
            other => match (tls, crate::tls::find_cause::<rustls::Error>(&other)) {
                (Some(tls), Some(tls_error)) => ConnectError::Tls(tls::explain(tls_error, tls)),
                _ => ConnectError::Connection(Box::new(other)),
            },
        }
    }

    /// Only a change of broker, config or secret ends these; plain network
    /// failures are also expected while a broker restarts.
    fn needs_an_operator(&self) -> bool {
        !matches!(self, ConnectError::Connection(_))
    }

    /// The broker ended the connection (end of stream, reset): as it does
    /// when it stops, and when another client logs in with our client id.
    fn closed_by_broker(&self) -> bool {
        let ConnectError::Connection(error) = self else { return false };
        if matches!(**error, ConnectionError::MqttState(StateError::ConnectionAborted)) {
            return true;
        }
        crate::tls::find_cause::<std::io::Error>(error.as_ref()).is_some_and(|io| {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
            matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
        })
    }
}

/// What MQTT 3.1.1 (section 3.2.2.3) calls each CONNACK return code.
fn refusal_text(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "connection accepted",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "identifier rejected (mqtt.client_id)",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

/// Where the user name and password come from: the config names them, the
/// password itself is read on every connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSource {
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

impl CredentialSource {
    pub fn from_config(config: &MqttConfig) -> CredentialSource {
        CredentialSource {
            username: config.username.clone(),
            password_env: config.password_env.clone(),
            password_file: config.password_file.clone(),
        }
    }

    /// The password as it is now: the variable's value, or the file's text
    /// without one trailing newline (`echo` and editors add one). `None`
    /// when no password is configured.
    pub fn read_password(&self) -> Result<Option<String>, ConnectError> {
        if let Some(name) = &self.password_env {
            return match std::env::var(name) {
                Ok(password) if !password.is_empty() => Ok(Some(password)),
                Err(std::env::VarError::NotPresent) => Err(ConnectError::PasswordEnvUnset { name: name.clone() }),
                _ => Err(ConnectError::PasswordEnvUnusable { name: name.clone() }),
            };
        }
        if let Some(path) = &self.password_file {
            return Ok(Some(crate::secret::read_text("mqtt.password_file", std::path::Path::new(path))?));
        }
        Ok(None)
    }

    /// Puts the current user name and password into `options`.
    fn apply(&self, options: &mut MqttOptions) -> Result<(), ConnectError> {
        let password = self.read_password()?;
        if let Some(username) = &self.username {
            options.set_credentials(username.clone(), password.unwrap_or_default());
        }
        Ok(())
    }
}

/// Incoming packet limit: far above the payload limit so that an oversized
/// payload reaches the decoder and is rejected and acknowledged there. A
/// packet over rumqttc's own limit drops the connection, and the broker would
/// redeliver it forever.
pub fn incoming_packet_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes.saturating_mul(64).max(1024 * 1024)
}

impl MqttSource {
    /// A source for `config`'s broker that knows what `session` remembers.
    pub fn new(config: &MqttConfig, session: SessionMemory) -> MqttSource {
        let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(incoming_packet_limit(config.max_payload_bytes), 1024 * 1024)
            .set_inflight(100);
        // Room for in-flight acks plus subscriptions and alert publishes;
        // acks that do not fit wait in the `Acker`, alerts are counted and dropped.
        let (client, event_loop) = AsyncClient::new(options, 16_384);
        let credentials = CredentialSource::from_config(config);
        MqttSource {
            client,
            event_loop,
            topics: config.topics.clone(),
            client_id: config.client_id.clone(),
            credentials,
            tls: config.tls.clone(),
            connected: Default::default(),
            session,
        }
    }

    /// Whether this source is connected, as it changes.
    pub fn connection(&self) -> ConnectionState {
        self.connected.clone()
    }

    /// The acknowledger for the task that processes this source's messages.
    pub fn acker(&self) -> Acker {
        Acker { client: self.client.clone(), waiting: std::collections::VecDeque::new() }
    }

    /// A client that can publish through this connection.
    pub fn client(&self) -> AsyncClient {
        self.client.clone()
    }

    /// The credentials and the TLS configuration for the next connection
    /// attempt, from where the config says they are now.
    fn prepare_connection(&mut self) -> Result<(), ConnectError> {
        let options = &mut self.event_loop.mqtt_options;
        self.credentials.apply(options)?;
        if let Some(tls) = &self.tls {
            let config = tls::client_config(tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        Ok(())
    }

    /// Polls until `shutdown` resolves or the receiver is gone. Each message
    /// and each connection goes to `messages`; waiting on it is the
    /// back-pressure.
    pub async fn run(mut self, messages: mpsc::Sender<Incoming>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut link = Link::new();
        'polling: loop {
            // rumqttc connects on the next poll when it has no connection.
            let connecting = self.event_loop.network.is_none();
            let polled = match connecting.then(|| self.prepare_connection()) {
                Some(Err(error)) => Err(error),
                _ => tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    polled = self.event_loop.poll() => polled.map_err(|error| {
                        ConnectError::from_poll(error, self.credentials.username.as_deref(), self.tls.as_ref())
                    }),
                },
            };
            let mut handed = Vec::new();
            let mut retry_in = None;
            match polled {
                Ok(MqttEvent::Incoming(Packet::Publish(publish))) => handed.push(Incoming::Message(publish)),
                Ok(MqttEvent::Incoming(Packet::ConnAck(connack))) => {
                    self.on_connack(connack.session_present, &mut link);
                    handed.push(Incoming::Connected { session_present: connack.session_present });
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(suback))) => self.on_suback(&suback, &mut link),
                Ok(MqttEvent::Incoming(Packet::UnsubAck(_))) => self.on_unsuback(&mut link),
                Ok(_) => {}
                Err(error) => {
                    // What the lost connection received goes before the next
                    // connection's marker (rumqttc would yield it after).
                    handed.extend(self.take_received().into_iter().map(Incoming::Message));
                    retry_in = Some(self.on_failure(error, &mut link));
                }
            }
            for incoming in handed {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'polling,
                    sent = messages.send(incoming) => if sent.is_err() { break 'polling },
                }
            }
            if let Some(delay) = retry_in {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        self.disconnect().await;
    }

    /// A CONNACK: judges the session, and subscribes every configured
    /// filter and unsubscribes those no longer configured.
    fn on_connack(&mut self, session_present: bool, link: &mut Link) {
        info!(session_present, "Connected to the MQTT broker.");
        let retry_after_close = std::mem::take(&mut link.retry_after_close);
        if let Some(loss) = session::judge(self.session.had_session(), session_present, retry_after_close) {
            self.session_lost(loss, link);
        }
        self.session.connected(session_present);
        self.connected.set(true);
        link.up = true;
        link.backoff.reset();
        link.failure_log = LogLimiter::new(REPEATED_FAILURE_LOG_INTERVAL);
        // Subscribing again when the session survived mends one a takeover
        // or an operator changed; the broker then sends the retained
        // messages again, which the consumer skips.
        let filters = self.topics.iter().map(|topic| SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce));
        match self.client.try_subscribe_many(filters) {
            Ok(()) => link.subscribing = Some(self.topics.clone()),
            Err(error) => warn!(%error, topics = ?self.topics, "Could not queue the subscription."),
        }
        link.unsubscribing = Vec::new();
        link.unsubacks_due = 0;
        if session_present {
            for filter in self.session.to_unsubscribe(&self.topics) {
                match self.client.try_unsubscribe(filter.clone()) {
                    Ok(()) => link.unsubscribing.push(filter),
                    Err(error) => warn!(%error, filter, "Could not queue the removal of a filter."),
                }
            }
            link.unsubacks_due = link.unsubscribing.len();
        }
    }

    /// The one place a lost session is counted and logged.
    fn session_lost(&self, loss: SessionLoss, link: &mut Link) {
        self.connected.count_loss(loss);
        if let Some(repeats_not_logged) = link.loss_log.allow(loss.as_str(), Instant::now()) {
            let lost = self.connected.sessions_lost(loss);
            error!(client_id = %self.client_id, cause = loss.as_str(), lost, repeats_not_logged, "{}", loss.explanation());
        }
    }

    /// The SUBACK of the filters subscribed on this connection: the broker
    /// granted some (remembered), and may have refused others (its ACL).
    fn on_suback(&mut self, suback: &SubAck, link: &mut Link) {
        let Some(filters) = link.subscribing.take_if(|filters| filters.len() == suback.return_codes.len()) else {
            debug!(?suback.return_codes, "Subscribed.");
            return;
        };
        let mut granted = Vec::new();
        for (filter, code) in filters.into_iter().zip(&suback.return_codes) {
            match code {
                SubscribeReasonCode::Success(_) => granted.push(filter),
                SubscribeReasonCode::Failure => error!(
                    filter,
                    username = self.credentials.username.as_deref().unwrap_or("(anonymous)"),
                    "The broker refused the subscription: nothing published on it reaches queuewatch \
                     (check the broker's ACL for mqtt.username)."
                ),
            }
        }
        debug!(?granted, "Subscribed.");
        self.session.granted(&granted);
    }

    /// One UNSUBACK: once every filter removed on this connection is
    /// confirmed, they are forgotten.
    fn on_unsuback(&mut self, link: &mut Link) {
        if link.unsubacks_due == 0 {
            return;
        }
        link.unsubacks_due -= 1;
        if link.unsubacks_due == 0 {
            let removed = std::mem::take(&mut link.unsubscribing);
            info!(filters = ?removed, "Unsubscribed from filters no longer in mqtt.topics.");
            self.session.removed(&removed);
        }
    }

    /// The publishes rumqttc read before the connection failed and has not
    /// yielded yet. The rest of what it buffered belongs to the dead
    /// connection and is dropped.
    fn take_received(&mut self) -> Vec<Publish> {
        self.event_loop
            .state
            .events
            .drain(..)
            .filter_map(|event| match event {
                MqttEvent::Incoming(Packet::Publish(publish)) => Some(publish),
                _ => None,
            })
            .collect()
    }

    /// A failed poll: logs it (once per distinct failure and interval) and
    /// says how long to wait before the next attempt. When the broker
    /// closed a connection that was up, the next attempt comes at once:
    /// a broker that stops refuses it, one that closed us for another
    /// login with our client id accepts it (a takeover, judged at its CONNACK).
    fn on_failure(&mut self, error: ConnectError, link: &mut Link) -> Duration {
        self.connected.set(false);
        let was_up = std::mem::take(&mut link.up);
        link.retry_after_close = was_up && error.closed_by_broker();
        let delay = if link.retry_after_close { Duration::ZERO } else { link.backoff.next_delay() };
        link.subscribing = None;
        if let Some(repeats_not_logged) = link.failure_log.allow(&error.to_string(), Instant::now()) {
            let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            let username = self.credentials.username.as_deref().unwrap_or("(anonymous)");
            if error.needs_an_operator() {
                error!(%error, username, retry_in_ms, repeats_not_logged, "MQTT connection failed; retrying.");
            } else {
                warn!(%error, retry_in_ms, repeats_not_logged, "MQTT connection failed; retrying.");
            }
        }
        delay
    }

    /// Best effort: a clean DISCONNECT. Unacknowledged messages stay with
    /// the broker's session either way.
    async fn disconnect(mut self) {
        self.connected.set(false);
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(event) = self.event_loop.poll().await {
                if matches!(event, MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The poll loop's knowledge of the connection between two events.
struct Link {
    backoff: Backoff,
    failure_log: LogLimiter,
    loss_log: LogLimiter,
    /// A CONNACK came and no failure since.
    up: bool,
    /// The next attempt is the one made at once after the broker closed a
    /// connection that was up.
    retry_after_close: bool,
    /// The filters of the SUBSCRIBE sent on this connection, until its SUBACK.
    subscribing: Option<Vec<String>>,
    /// The filters unsubscribed on this connection, and their UNSUBACKs still due.
    unsubscribing: Vec<String>,
    unsubacks_due: usize,
}

impl Link {
    fn new() -> Link {
        Link {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            failure_log: LogLimiter::new(REPEATED_FAILURE_LOG_INTERVAL),
            loss_log: LogLimiter::new(SESSION_LOSS_LOG_INTERVAL),
            up: false,
            retry_after_close: false,
            subscribing: None,
            unsubscribing: Vec::new(),
            unsubacks_due: 0,
        }
    }
}

/// Capped exponential backoff.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Which office a topic names under the configured filters: the level matched
/// by the first `+` of the first filter that matches. `Ok(None)` when the
/// matching filter has no `+` (the payload must then name the office). A
/// topic that matches no filter (one removed from the config and still
/// subscribed, or a broader subscription made by hand) is rejected as
/// `unexpected_topic`: its office is never taken from the payload.
pub fn office_from_topic(filters: &[String], topic: &str) -> Result<Option<OfficeId>, Rejection> {
    office_from_topic_with(filters, topic, OfficeId::parse)
}

/// [`office_from_topic`], with the offices named before taken from `known`
/// rather than checked and allocated again: the daemon's path, where the
/// same few offices name every message.
pub(crate) fn office_from_topic_cached(
    filters: &[String],
    topic: &str,
    known: &mut Interned<OfficeId>,
) -> Result<Option<OfficeId>, Rejection> {
    office_from_topic_with(filters, topic, |text| known.get(text, OfficeId::parse))
}

fn office_from_topic_with(
    filters: &[String],
    topic: &str,
    mut parse: impl FnMut(&str) -> Result<OfficeId, InvalidId>,
) -> Result<Option<OfficeId>, Rejection> {
    for filter in filters {
        if let Some(level) = matching_office_level(filter, topic) {
            return match level {
                None => Ok(None),
                Some(text) => parse(text).map(Some).map_err(|error| Rejection {
                    reason: RejectReason::InvalidIdentifier,
                    detail: format!("office in topic {topic:?}: {error}"),
                    office: None,
                    id: None,
                }),
            };
        }
    }
    Err(Rejection {
        reason: RejectReason::UnexpectedTopic,
        detail: format!("topic {topic:?} matches none of mqtt.topics"),
        office: None,
        id: None,
    })
}

/// `Some(office level)` if `topic` matches `filter`.
fn matching_office_level<'t>(filter: &str, topic: &'t str) -> Option<Option<&'t str>> {
    let mut office = None;
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        if filter_level == "#" {
            return Some(office);
        }
        let topic_level = topic_levels.next()?;
        match filter_level {
            "+" => {
                if office.is_none() {
                    office = Some(topic_level);
                }
            }
            literal if literal == topic_level => {}
            _ => return None,
        }
    }
    if topic_levels.next().is_some() {
        return None;
    }
    Some(office)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn the_office_is_the_level_under_the_first_plus() {
        let office = office_from_topic(&filters(&["queue/+/events"]), "queue/mpp-1/events").unwrap();
        assert_eq!(office.unwrap().as_str(), "mpp-1");
        let office = office_from_topic(&filters(&["region/+/+/events"]), "region/jabar/bdg-2/events").unwrap();
        assert_eq!(office.unwrap().as_str(), "jabar");
    }

    #[test]
    fn a_filter_without_plus_leaves_the_office_to_the_payload() {
        assert_eq!(office_from_topic(&filters(&["queue/all/events"]), "queue/all/events").unwrap(), None);
        assert_eq!(office_from_topic(&filters(&["queue/#"]), "queue/x/events").unwrap(), None);
    }

    #[test]
    fn a_topic_that_matches_no_filter_is_rejected_rather_than_read_from_the_payload() {
        let rejection = office_from_topic(&filters(&["queue/+/events"]), "old/mpp-1/events").unwrap_err();
        assert_eq!(rejection.reason, RejectReason::UnexpectedTopic);
        assert_eq!(rejection.detail, r#"topic "old/mpp-1/events" matches none of mqtt.topics"#);
        assert!(office_from_topic(&filters(&["queue/+/events"]), "queue/mpp-1/events/extra").is_err());
    }

    #[test]
    fn only_an_end_of_the_stream_or_a_reset_is_the_broker_closing_the_connection() {
        let closed = |error: ConnectionError| ConnectError::Connection(Box::new(error)).closed_by_broker();
        assert!(closed(ConnectionError::MqttState(StateError::ConnectionAborted)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(closed(ConnectionError::MqttState(StateError::Io(reset))));
        assert!(closed(ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))));
        assert!(!closed(ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!closed(ConnectionError::NetworkTimeout));
        assert!(!closed(ConnectionError::MqttState(StateError::AwaitPingResp)));
        assert!(!ConnectError::Refused(ConnectReturnCode::NotAuthorized).closed_by_broker());
    }

    #[test]
    fn an_office_level_that_is_not_an_identifier_is_rejected() {
        let rejection = office_from_topic(&filters(&["queue/+/events"]), "queue/bad office/events").unwrap_err();
        assert_eq!(rejection.reason, RejectReason::InvalidIdentifier);
    }

    fn from_file(path: &std::path::Path) -> CredentialSource {
        CredentialSource {
            username: Some("queuewatch".into()),
            password_env: None,
            password_file: Some(path.display().to_string()),
        }
    }

    #[test]
    fn a_password_file_loses_one_trailing_newline_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        for (written, read) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            (" pass word \n\n", " pass word \n"),
        ] {
            std::fs::write(&path, written).unwrap();
            let password = from_file(&path).read_password().unwrap().unwrap();
            assert_eq!(password, read, "{written:?}");
        }
    }

    #[test]
    fn an_unusable_password_source_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        let missing = from_file(&path).read_password().unwrap_err().to_string();
        assert!(missing.starts_with("mqtt.password_file: cannot read"), "{missing}");
        std::fs::write(&path, "\n").unwrap();
        let empty = from_file(&path).read_password().unwrap_err().to_string();
        assert!(empty.starts_with("mqtt.password_file:") && empty.ends_with("is empty"), "{empty}");
        let unset = CredentialSource {
            username: Some("queuewatch".into()),
            password_env: Some("QUEUEWATCH_TEST_UNSET_MQTT_PASSWORD".into()),
            password_file: None,
        };
        let message = unset.read_password().unwrap_err().to_string();
        assert_eq!(
            message,
            "mqtt.password_env: the environment variable QUEUEWATCH_TEST_UNSET_MQTT_PASSWORD is not set"
        );
        let anonymous = CredentialSource { username: None, password_env: None, password_file: None };
        assert_eq!(anonymous.read_password().unwrap(), None);
    }

    #[test]
    fn a_refused_connack_names_the_brokers_answer_and_its_code() {
        let refused = |code| ConnectError::from_poll(ConnectionError::ConnectionRefused(code), None, None);
        let anonymous = refused(ConnectReturnCode::NotAuthorized);
        assert_eq!(
            anonymous.to_string(),
            "mqtt: the broker refused the connection: not authorized (CONNACK return code 5)"
        );
        assert!(anonymous.needs_an_operator());
        let unavailable = refused(ConnectReturnCode::ServiceUnavailable).to_string();
        assert_eq!(unavailable, "mqtt: the broker refused the connection: server unavailable (CONNACK return code 3)");
        let network = ConnectError::from_poll(ConnectionError::NetworkTimeout, Some("queuewatch"), None);
        assert!(!network.needs_an_operator());
    }

    #[test]
    fn a_refusal_of_a_login_says_the_user_name_or_password_was_refused() {
        for (code, answer) in [
            (ConnectReturnCode::BadUserNamePassword, "bad user name or password (CONNACK return code 4)"),
            (ConnectReturnCode::NotAuthorized, "not authorized (CONNACK return code 5)"),
        ] {
            let error =
                ConnectError::from_poll(ConnectionError::ConnectionRefused(code), Some("queuewatch"), None).to_string();
            assert_eq!(
                error,
                format!("mqtt: the broker refused the user name or password (mqtt.username \"queuewatch\"): {answer}")
            );
        }
    }

    #[test]
    fn a_failed_handshake_says_what_to_check() {
        let tls = MqttTlsConfig { ca_file: Some("/etc/queuewatch/ca.pem".into()), client_auth: None };
        let wrapped = |error: rustls::Error| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            ConnectionError::Tls(rumqttc::TlsError::Io(io))
        };
        let untrusted = wrapped(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        let untrusted = ConnectError::from_poll(untrusted, None, Some(&tls));
        assert!(
            untrusted.to_string().starts_with(
                "mqtt: the broker's certificate is not trusted (mqtt.ca_file \"/etc/queuewatch/ca.pem\"): "
            ),
            "{untrusted}"
        );
        assert!(untrusted.needs_an_operator());
        // Seen after the handshake, on the first read.
        let required = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let required = ConnectionError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, required));
        let required = ConnectError::from_poll(required, None, Some(&tls)).to_string();
        assert!(required.starts_with("mqtt: the broker requires a client certificate"), "{required}");
        let system_roots = MqttTlsConfig::default();
        let name = wrapped(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName));
        let name = ConnectError::from_poll(name, None, Some(&system_roots)).to_string();
        assert!(name.starts_with("mqtt: the broker's certificate is not valid for the host in mqtt.url"), "{name}");
        let plain = ConnectError::from_poll(ConnectionError::NetworkTimeout, None, Some(&tls));
        assert!(matches!(plain, ConnectError::Connection(_)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    /// What the vendored rumqttc adds (vendor/rumqttc/PATCH.md), which the
    /// acknowledgements after a group commit rely on: the requests queued while
    /// the event loop was busy leave with its next turn, in one write, not one
    /// turn and one write each. A broker of a few lines on loopback: it
    /// delivers publishes, the client queues an acknowledgement for each, one
    /// turn of the event loop runs, and a single read finds every one.
    #[tokio::test]
    async fn queued_acknowledgements_leave_in_one_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const PUBLISHES: u16 = 50;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut options = MqttOptions::new("batching", "127.0.0.1", listener.local_addr().unwrap().port());
        options.set_manual_acks(true).set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(PUBLISHES));
        let broker = async {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_packet(&mut socket).await; // CONNECT
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap(); // CONNACK, accepted
            for packet_id in 1..=PUBLISHES {
                let [high, low] = packet_id.to_be_bytes();
                // PUBLISH, QoS 1, topic "t", payload "x"
                socket.write_all(&[0x32, 0x06, 0x00, 0x01, b't', high, low, b'x']).await.unwrap();
            }
            socket
        };
        let (connected, mut socket) = tokio::join!(eventloop.poll(), broker);
        assert!(matches!(connected, Ok(MqttEvent::Incoming(Packet::ConnAck(_)))), "{connected:?}");
        let mut publishes = Vec::new();
        while publishes.len() < usize::from(PUBLISHES) {
            if let MqttEvent::Incoming(Packet::Publish(publish)) = eventloop.poll().await.unwrap() {
                publishes.push(publish);
            }
        }
        for publish in &publishes {
            client.try_ack(publish).unwrap();
        }

        let turn = eventloop.poll().await.unwrap();
        assert!(matches!(turn, MqttEvent::Outgoing(rumqttc::Outgoing::PubAck(1))), "{turn:?}");
        // The turn has flushed what it wrote: it is all on this side of the socket now.
        let expected: Vec<u8> =
            (1..=PUBLISHES).flat_map(|packet_id| [[0x40, 0x02], packet_id.to_be_bytes()].concat()).collect();
        let mut received = vec![0; expected.len() * 2];
        let length = socket.read(&mut received).await.unwrap();
        assert_eq!(
            received[..length],
            expected,
            "one turn of the event loop sent {} of {PUBLISHES} queued acknowledgements: \
             is this rumqttc the vendored copy (vendor/rumqttc/PATCH.md)?",
            length / 4
        );
    }

    /// One MQTT packet, whole: its fixed header, its remaining length, the rest.
    async fn read_packet(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut packet = vec![socket.read_u8().await.unwrap()];
        let (mut remaining, mut shift) = (0usize, 0);
        loop {
            let byte = socket.read_u8().await.unwrap();
            packet.push(byte);
            remaining |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + remaining, 0);
        socket.read_exact(&mut packet[start..]).await.unwrap();
        packet
    }
}
