//! MQTT sessions prepared before a subscriber connects.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{Error, Mosquitto};

/// Creates a persistent session (`clean_session = false`) for `client_id`
/// subscribed to `filter`, then disconnects: from now on the broker queues
/// what is published for that client, whether or not it has connected yet.
/// This is also how a caller knows the subscription is in place before it
/// publishes. Panics if the broker does not confirm the subscription.
pub async fn create_session(mqtt: &Mosquitto, client_id: &str, filter: &str) {
    if let Err(error) = try_create_session(mqtt.port, client_id, filter).await {
        panic!("{error}");
    }
}

/// [`create_session`] on the broker at 127.0.0.1:`port`, returning what went wrong.
pub async fn try_create_session(port: u16, client_id: &str, filter: &str) -> Result<(), Error> {
    let failed =
        |what: &str, detail: String| Error::Mqtt(format!("creating the session of {client_id}: {what}{detail}"));
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|error| failed("queue SUBSCRIBE: ", error.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Instant::now() >= deadline {
            return Err(failed("no SUBACK from the broker in 10 s", String::new()));
        }
        match tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Err(error)) => return Err(failed("", error.to_string())),
            _ => {}
        }
    }
    client.disconnect().await.map_err(|error| failed("queue DISCONNECT: ", error.to_string()))?;
    let _ = tokio::time::timeout(Duration::from_secs(1), event_loop.poll()).await;
    Ok(())
}
