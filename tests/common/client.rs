//! An MQTT client for the tests that waits for the broker's acknowledgements,
//! so that an ACL is proven by delivery: Mosquitto acknowledges a QoS 1
//! publish that its ACL denies and then drops it, so a denied message is sent
//! first, an allowed marker after it by the same client, and the receiver
//! must see the marker and not the denied one (the broker keeps each
//! client's order).

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

/// Only a hang fails a wait: far beyond what any step needs, even on a busy machine.
const GENEROUS: Duration = Duration::from_secs(60);

/// What the client receives, and how many of its publishes and
/// subscriptions the broker has acknowledged.
pub struct Client {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    acknowledged: watch::Receiver<(usize, usize)>,
    sent: (usize, usize),
    pump: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects with `options` (login and transport included); the broker's
    /// refusal as an error.
    pub async fn connect(options: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        loop {
            let polled = tokio::time::timeout(GENEROUS, event_loop.poll()).await.expect("a CONNACK");
            if let Event::Incoming(Packet::ConnAck(_)) = polled? {
                break;
            }
        }
        let (received_sender, received) = mpsc::unbounded_channel();
        let (acknowledged_sender, acknowledged) = watch::channel((0, 0));
        let pump = tokio::spawn(async move {
            while let Ok(event) = event_loop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(publish)) => {
                        let _ = received_sender.send(publish);
                    }
                    Event::Incoming(Packet::PubAck(_)) => acknowledged_sender.send_modify(|counts| counts.0 += 1),
                    Event::Incoming(Packet::SubAck(_)) => acknowledged_sender.send_modify(|counts| counts.1 += 1),
                    _ => {}
                }
            }
        });
        Ok(Client { client, received, acknowledged, sent: (0, 0), pump })
    }

    /// Subscribes with QoS 1 and waits for the broker's SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        self.sent.1 += 1;
        self.wait_acknowledged().await;
    }

    /// Publishes with QoS 1 and waits for the broker's PUBACK (which it also
    /// sends for what its ACL denies).
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
        self.sent.0 += 1;
        self.wait_acknowledged().await;
    }

    /// Publishes with QoS 1 and the retain flag, and waits for the PUBACK.
    pub async fn publish_retained(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.into()).await.unwrap();
        self.sent.0 += 1;
        self.wait_acknowledged().await;
    }

    async fn wait_acknowledged(&mut self) {
        let sent = self.sent;
        let waited = tokio::time::timeout(
            GENEROUS,
            self.acknowledged.wait_for(|(published, subscribed)| *published >= sent.0 && *subscribed >= sent.1),
        );
        assert!(
            matches!(waited.await, Ok(Ok(_))),
            "the broker acknowledged {:?} of {sent:?}",
            *self.acknowledged.borrow()
        );
    }

    /// Everything received up to and including the first message for which `is_marker` holds.
    pub async fn receive_until_match(&mut self, is_marker: impl Fn(&Publish) -> bool) -> Vec<Publish> {
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout(GENEROUS, self.received.recv()).await;
            let message = next.unwrap_or_else(|_| panic!("no marker after {seen:?}")).expect("connected");
            let found = is_marker(&message);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }

    /// Everything received up to and including the message whose payload is `marker`.
    pub async fn receive_until(&mut self, marker: &str) -> Vec<Publish> {
        self.receive_until_match(|message| message.payload == marker).await
    }

    /// The next message within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Publish> {
        tokio::time::timeout(wait, self.received.recv()).await.ok().flatten()
    }

    /// Whether the connection is still up (the broker has not closed it).
    pub fn is_connected(&self) -> bool {
        !self.pump.is_finished()
    }

    /// What has arrived so far and not been taken yet.
    pub fn drain(&mut self) -> Vec<Publish> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Publishes, as a ticket machine of `office`, a message queuewatch rejects
/// until its echo arrives on the office's rejection topic: queuewatch is then
/// logged in and subscribed (it has no session before its first login, so
/// earlier events are not kept for it). Proves along the way that it may
/// write rejection echoes. Subscribes `machine` to that topic.
pub async fn wait_until_queuewatch_listens(machine: &mut Client, office: &str, daemon: &mut super::Daemon) {
    let rejected = format!("queue/{office}/rejected");
    machine.subscribe(&rejected).await;
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        machine.publish(&format!("queue/{office}/events"), r#"{"type":"probe","ts":1,"id":"probe"}"#).await;
        if let Some(echo) = machine.next_within(Duration::from_millis(500)).await {
            assert_eq!(echo.topic, rejected);
            return;
        }
        assert!(daemon.is_running(), "queuewatch ended:\n{}", daemon.log());
        assert!(tokio::time::Instant::now() < deadline, "queuewatch never echoed a rejection:\n{}", daemon.log());
    }
}

/// A ticket served at `office`, and a later event that moves the office's
/// clock past the reorder window so that its point is written.
pub async fn publish_ticket(machine: &mut Client, office: &str, ticket: &str) {
    for event in [
        format!(r#"{{"type":"issued","ts":"2026-11-20T08:00:00+07:00","ticket":"{ticket}","service":"ktp"}}"#),
        format!(r#"{{"type":"called","ts":"2026-11-20T08:00:10+07:00","ticket":"{ticket}","counter":"c1"}}"#),
        format!(r#"{{"type":"finished","ts":"2026-11-20T08:00:20+07:00","ticket":"{ticket}","counter":"c1"}}"#),
        r#"{"type":"heartbeat","ts":"2026-11-20T08:05:00+07:00"}"#.to_string(),
    ] {
        machine.publish(&format!("queue/{office}/events"), event).await;
    }
}
