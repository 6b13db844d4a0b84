//! The test's own MQTT clients: a kiosk-side publisher (QoS 1, optionally
//! paced at a steady rate, counting what the broker acknowledged), and
//! picking one topic's messages out of what a subscriber collects.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::common::Subscriber;
use super::daemon::DEADLINE;

/// One message as a ticket machine publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
}

impl Message {
    /// A message to `queue/<office>/events`.
    pub fn event(office: &str, payload: String) -> Message {
        Message { topic: format!("queue/{office}/events"), payload }
    }
}

/// One MQTT client publishing QoS 1.
pub struct Publisher {
    client: AsyncClient,
    /// Messages handed to the client so far.
    handed: Arc<AtomicUsize>,
    /// PUBACKs received so far.
    acknowledged: Arc<AtomicUsize>,
    _pump: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn connect(port: u16, client_id: &str) -> Publisher {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 1024);
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&acknowledged);
        let pump = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, handed: Arc::new(AtomicUsize::new(0)), acknowledged, _pump: pump }
    }

    /// Publishes `messages` in order at `per_second`, without pauses, in a
    /// task of its own; [`Publisher::handed`] follows its progress.
    pub fn publish_paced(&self, messages: Arc<Vec<Message>>, per_second: f64) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let handed = Arc::clone(&self.handed);
        tokio::spawn(async move {
            // Keep to the schedule a few messages at a time: steady on
            // average, without a timer per message.
            const STEP: usize = 16;
            let started = tokio::time::Instant::now();
            for (step, messages) in messages.chunks(STEP).enumerate() {
                tokio::time::sleep_until(started + Duration::from_secs_f64((step * STEP) as f64 / per_second)).await;
                for message in messages {
                    client.publish(&message.topic, QoS::AtLeastOnce, false, message.payload.clone()).await.unwrap();
                    handed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// Publishes `messages` in order as fast as the client takes them.
    pub async fn publish_all(&self, messages: &[Message]) {
        for message in messages {
            self.client.publish(&message.topic, QoS::AtLeastOnce, false, message.payload.clone()).await.unwrap();
            self.handed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages handed to the client so far.
    pub fn handed(&self) -> usize {
        self.handed.load(Ordering::Relaxed)
    }

    /// Waits until the broker has acknowledged every message handed over.
    pub async fn wait_until_acknowledged(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (handed, acknowledged) = (self.handed(), self.acknowledged.load(Ordering::Relaxed));
            if acknowledged >= handed {
                return;
            }
            assert!(Instant::now() < deadline, "the broker acknowledged {acknowledged} of {handed} publishes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The next message on `topic` within `DEADLINE` (others are returned in
/// `skipped`), or `None`.
pub async fn next_on(subscriber: &mut Subscriber, topic: &str, skipped: &mut Vec<(String, Value)>) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match subscriber.next_before(deadline).await {
            Some((received, value)) if received == topic => return Some(value),
            Some(other) => skipped.push(other),
            None => return None,
        }
    }
}
