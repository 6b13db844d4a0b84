//! A QoS 1 publisher for the scenarios that go through the broker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

/// A QoS 1 publisher: a task polls the event loop and counts PUBACKs.
pub struct Publisher {
    client: AsyncClient,
    pub acked: Arc<AtomicU64>,
    /// Set by `close`: the connection's end is no error.
    closing: Arc<AtomicBool>,
    driver: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, client_id: &str, inflight: u16) -> anyhow::Result<Publisher> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_clean_session(true).set_inflight(inflight.max(1)).set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let (connected_sender, connected) = tokio::sync::oneshot::channel();
        let driver = {
            let acked = acked.clone();
            let closing = closing.clone();
            tokio::spawn(async move {
                let mut connected_sender = Some(connected_sender);
                let mut failures = 0u32;
                loop {
                    match event_loop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            if let Some(sender) = connected_sender.take() {
                                let _ = sender.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            if closing.load(Ordering::Relaxed) {
                                return;
                            }
                            failures += 1;
                            eprintln!("publisher: MQTT error: {error}");
                            if failures >= 20 {
                                return; // bounded: the scenario's deadline reports the rest
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .context("the publisher did not connect in 10 s")?
            .context("the publisher's event loop stopped")?;
        Ok(Publisher { client, acked, closing, driver })
    }

    pub async fn publish(&self, topic: String, payload: String) -> anyhow::Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.context("publish")
    }

    /// When all `count` PUBACKs had arrived, or `None` at the deadline.
    pub async fn wait_acked(&self, count: u64, deadline: Instant) -> Option<Instant> {
        loop {
            if self.acked.load(Ordering::Relaxed) >= count {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn close(self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while !self.driver.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.driver.abort();
    }
}
