//! The demo's MQTT side: an embedded broker (rumqttd), the daemon's
//! persistent session created before anything is published, and a monitor
//! that counts the events on the broker for the table's header.
//!
//! The broker runs on its own threads (rumqttd's `Broker::start` blocks and
//! has no stop); it is left to end with the process. Its log of messages is
//! held in memory, bounded by `max_segment_size × max_segment_count` per
//! topic filter; a demo day is a few megabytes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;

/// How long the broker may take to listen, and an MQTT exchange to complete.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port when the port is ours to choose (another process
/// may take it between our probe and the broker's bind).
const FREE_PORT_ATTEMPTS: usize = 3;

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    pub port: u16,
}

impl EmbeddedBroker {
    /// Starts a broker on 127.0.0.1:`port` (0: a free port) and waits until it
    /// accepts connections. `max_packet_bytes` bounds incoming packets.
    pub fn start(port: u16, max_packet_bytes: usize) -> anyhow::Result<EmbeddedBroker> {
        if port != 0 {
            return start_on(port, max_packet_bytes);
        }
        let mut last_error = None;
        for _ in 0..FREE_PORT_ATTEMPTS {
            let free_port = free_port().context("cannot find a free port on 127.0.0.1")?;
            match start_on(free_port, max_packet_bytes) {
                Ok(broker) => return Ok(broker),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the embedded MQTT broker did not start")))
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The rumqttd configuration: one MQTT 3.1.1 server on 127.0.0.1:`port`.
pub fn broker_config(port: u16, max_packet_bytes: usize) -> rumqttd::Config {
    let server = rumqttd::ServerSettings {
        name: "queuewatch-demo".into(),
        listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            // Time allowed between the TCP accept and the CONNECT packet.
            connection_timeout_ms: 60_000,
            max_payload_size: max_packet_bytes,
            // Packets read from a connection in one go.
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            // Publishing to a topic nobody has subscribed to yet creates it.
            dynamic_filters: true,
        },
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 200,
            max_segment_size: 8 * 1024 * 1024,
            max_segment_count: 8,
            ..rumqttd::RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..rumqttd::Config::default()
    }
}

fn start_on(port: u16, max_packet_bytes: usize) -> anyhow::Result<EmbeddedBroker> {
    let address = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    // rumqttd only logs a failed bind, so find out here, with a clear message.
    drop(TcpListener::bind(address).with_context(|| format!("cannot listen on {address} for MQTT"))?);
    let mut broker = rumqttd::Broker::new(broker_config(port, max_packet_bytes));
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Returns only once its servers have stopped, e.g. when the port was taken.
            if let Err(error) = broker.start() {
                tracing::error!(%error, "The embedded MQTT broker stopped.");
            }
        })
        .context("cannot start the embedded MQTT broker's thread")?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if thread.is_finished() {
            bail!("the embedded MQTT broker could not listen on {address} (taken by another process?)");
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker { port });
        }
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not listen on {address} within {STARTUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Creates the persistent session `client_id` subscribed to `topics` (QoS 1),
/// then disconnects: from then on the broker keeps every matching message for
/// that session, so the daemon (same client id, `clean_session = false`) gets
/// all of them whenever it connects.
pub async fn create_session(port: u16, client_id: &str, topics: &[String]) -> anyhow::Result<()> {
    retry_while_starting(STARTUP_TIMEOUT, || try_create_session(port, client_id, topics))
        .await
        .with_context(|| format!("cannot create the MQTT session {client_id:?}"))
}

/// Retries `attempt` until it succeeds or `timeout` has passed: a broker
/// that has just started listening may still reset the first connections
/// while its router comes up (seen on a loaded machine).
async fn retry_while_starting<T, F, Fut>(timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("timed out after {timeout:?}"),
        };
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(error);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The pause between two attempts to reach a starting broker.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

async fn try_create_session(port: u16, client_id: &str, topics: &[String]) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false).set_keep_alive(Duration::from_secs(10));
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    let exchange = async {
        for topic in topics {
            client.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
        }
        wait_for_subacks(&mut event_loop, topics.len()).await?;
        client.disconnect().await?;
        loop {
            if let MqttEvent::Outgoing(Outgoing::Disconnect) = event_loop.poll().await? {
                return anyhow::Ok(());
            }
        }
    };
    exchange.await
}

/// Counts the messages on `topic` (QoS 0, its own clean session) until aborted.
pub struct Monitor {
    count: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Connects, subscribes, and returns once the broker has confirmed the subscription.
    pub async fn start(port: u16, client_id: &str, topic: &str, max_packet_bytes: usize) -> anyhow::Result<Monitor> {
        let subscribe = || async {
            let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
            options.set_clean_session(true).set_max_packet_size(max_packet_bytes, 64 * 1024);
            let (client, mut event_loop) = AsyncClient::new(options, 16);
            client.subscribe(topic, QoS::AtMostOnce).await?;
            wait_for_subacks(&mut event_loop, 1).await?;
            anyhow::Ok((client, event_loop))
        };
        let (client, event_loop) = retry_while_starting(STARTUP_TIMEOUT, subscribe)
            .await
            .context("cannot subscribe the demo's event counter")?;
        let count = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(count_publishes(client, event_loop, topic.to_string(), Arc::clone(&count)));
        Ok(Monitor { count, task })
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls until `count` SUBACKs have arrived.
async fn wait_for_subacks(event_loop: &mut EventLoop, count: usize) -> anyhow::Result<()> {
    let mut acknowledged = 0;
    while acknowledged < count {
        if let MqttEvent::Incoming(Packet::SubAck(_)) = event_loop.poll().await? {
            acknowledged += 1;
        }
    }
    Ok(())
}

async fn count_publishes(client: AsyncClient, mut event_loop: EventLoop, topic: String, count: Arc<AtomicU64>) {
    loop {
        match event_loop.poll().await {
            Ok(MqttEvent::Incoming(Packet::Publish(_))) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            // A reconnection: the clean session lost the subscription.
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(topic.clone(), QoS::AtMostOnce);
            }
            Ok(_) => {}
            // The count is for display only: reconnect quietly.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_starting_broker_that_resets_the_first_connections_is_tried_again() {
        let mut attempts = 0;
        let value = retry_while_starting(STARTUP_TIMEOUT, || {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt < 3 {
                    anyhow::bail!("Connection reset by peer (os error 104)")
                }
                Ok(attempt)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn a_broker_that_never_answers_fails_with_the_last_error_once_the_time_is_up() {
        let mut attempts = 0;
        let error = retry_while_starting(Duration::from_millis(350), || {
            attempts += 1;
            async { anyhow::bail!("Connection refused") as anyhow::Result<()> }
        })
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "Connection refused");
        assert!(attempts >= 2, "tried again before giving up: {attempts}");
    }
}
