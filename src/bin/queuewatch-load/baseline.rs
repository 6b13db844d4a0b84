//! `baseline`: the drain's backlog through the plainest MQTT-to-InfluxDB
//! consumer one would write for the same job, to show what the broker and
//! InfluxDB allow on this machine and what queuewatch's exactness costs.
//!
//! The consumer, in this process, is what an integrator's flow does (the
//! Node-RED flow of the issue, or Telegraf's MQTT input): a QoS 1 persistent
//! session with acknowledgements on receipt (nothing durable), JSON parsed
//! into a generic value, `issued` remembered per office and ticket,
//! `finished` paired with it into one `ticket` point (`total_s`), lines
//! batched by 5,000 or every second and written one request at a time to
//! InfluxDB 1.x. No reordering, dedup, gauges, breaches, transfers or
//! journal: it is a floor, not a competitor. It is fair in what it shares
//! with the drain: the same events, broker settings, backlog and InfluxDB,
//! and the same clock from the consumer's start to 99.5 % of its ticket
//! points queryable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::Value;

use queuewatch::ids::TicketNo;
use queuewatch::time::Millis;
use queuewatch::tracker::point_time_ns;

use crate::drain::{queue_backlog, BacklogArgs};
use crate::input::{simulated, SimulatedInput};
use crate::report::{rate_text, Report};
use crate::servers::{BrokerStore, DaemonArgs, Servers, DAEMON_CLIENT_ID};

#[derive(Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    backlog: BacklogArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
}

const BATCH_LINES: usize = 5_000;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const MOST: f64 = 0.995;

pub async fn baseline(args: BaselineArgs) -> anyhow::Result<()> {
    let SimulatedInput { messages, .. } = simulated(args.backlog.events, args.backlog.offices, args.backlog.seed)?;
    let events = messages.len() as u64;
    let mut pairing = Pairing::default();
    let expected = messages.iter().filter(|(topic, payload)| pairing.line(topic, payload.as_bytes()).is_some()).count();
    anyhow::ensure!(expected > 0, "the input finishes no ticket: use more events");
    let most = (MOST * expected as f64).ceil() as u64;

    let servers = Servers::start_with("baseline", &args.daemon, BrokerStore::Persistent).await?;
    let (_, stored) = queue_backlog(&servers, messages, &args.backlog).await?;
    eprintln!("baseline: {events} events queued; the broker holds {stored}; expecting {expected} ticket points");

    let cpu_before = servers.cpu();
    let started = cpu_before.at;
    let consumer = tokio::spawn(consume(servers.mqtt_port(), servers.influx_url(), events));
    let deadline = started + Duration::from_secs(args.backlog.timeout_s);
    let mut most_at = None;
    let all_at = loop {
        let tickets = servers.influx.count_ticket_points().await.unwrap_or(0);
        if most_at.is_none() && tickets >= most {
            most_at = Some(servers.cpu());
        }
        if tickets >= expected as u64 {
            break Some(servers.cpu());
        }
        if Instant::now() >= deadline || consumer.is_finished() && tickets < expected as u64 && most_at.is_some() {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(args.backlog.poll_ms)).await;
    };
    consumer.abort();

    let mut report = Report::new("baseline");
    report.line(
        "path",
        format!(
            "{events} simulator events ({} offices, seed {}) queued in Mosquitto (persistence on, \
             max_inflight_messages {}) -> a plain consumer in this process (see src/bin/queuewatch-load/baseline.rs: \
             acknowledgement on receipt, generic JSON, issued/finished pairing, batches of {BATCH_LINES} lines or 1 s, \
             one request at a time) -> InfluxDB 1.x",
            args.backlog.offices, args.backlog.seed, args.daemon.broker_inflight
        ),
    );
    let seconds = |at: Instant| at.duration_since(started).as_secs_f64();
    for (name, sample, count) in
        [("99.5 % of its ticket points", &most_at, most), ("all of them", &all_at, expected as u64)]
    {
        report.line(
            name,
            match sample {
                Some(sample) => format!(
                    "{count} queryable after {:.1} s: {}; CPU: {}",
                    seconds(sample.at),
                    rate_text(events as f64 / seconds(sample.at)),
                    sample.shares_since(&cpu_before)
                ),
                None => format!("not reached within {} s", args.backlog.timeout_s),
            },
        );
    }
    report.print();
    anyhow::ensure!(all_at.is_some(), "not every ticket point of the plain consumer was queryable");
    Ok(())
}

/// The consumer: MQTT in, pairing, batched writes; until `events` messages were taken.
async fn consume(port: u16, influx_url: String, events: u64) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(DAEMON_CLIENT_ID, "127.0.0.1", port);
    options.set_clean_session(false).set_keep_alive(Duration::from_secs(30)).set_inflight(1_000);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut event_loop) = AsyncClient::new(options, 10_000);
    client.subscribe("queue/+/events", QoS::AtLeastOnce).await?;
    let (batches, mut to_write) = tokio::sync::mpsc::channel::<String>(2);
    let writer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let url = format!("{influx_url}/write?db=queuewatch&precision=ns");
        while let Some(body) = to_write.recv().await {
            while http
                .post(&url)
                .body(body.clone())
                .send()
                .await
                .and_then(|response| response.error_for_status())
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut pairing = Pairing::default();
    let mut batch = String::new();
    let mut lines = 0;
    let mut first_line_at = Instant::now();
    let mut taken = 0u64;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            event = event_loop.poll() => {
                if let Ok(MqttEvent::Incoming(Packet::Publish(publish))) = event {
                    taken += 1;
                    if let Some(line) = pairing.line(&publish.topic, &publish.payload) {
                        if lines == 0 {
                            first_line_at = Instant::now();
                        }
                        batch.push_str(&line);
                        batch.push('\n');
                        lines += 1;
                    }
                }
            }
            _ = flush.tick() => {}
        }
        if lines >= BATCH_LINES
            || (lines > 0 && first_line_at.elapsed() >= FLUSH_EVERY)
            || (taken >= events && lines > 0)
        {
            batches.send(std::mem::take(&mut batch)).await?;
            lines = 0;
        }
        if taken >= events && lines == 0 {
            drop(batches);
            let _ = writer.await;
            return Ok(());
        }
    }
}

/// `issued` remembered per office and ticket; `finished` makes one line.
#[derive(Default)]
struct Pairing {
    issued: HashMap<(String, String), i64>,
}

impl Pairing {
    fn line(&mut self, topic: &str, payload: &[u8]) -> Option<String> {
        let office = topic.split('/').nth(1)?;
        let event: Value = serde_json::from_slice(payload).ok()?;
        let ticket = event.get("ticket")?.as_str()?;
        let ts = chrono::DateTime::parse_from_rfc3339(event.get("ts")?.as_str()?).ok()?.timestamp_millis();
        match event.get("type")?.as_str()? {
            "issued" => {
                self.issued.insert((office.to_owned(), ticket.to_owned()), ts);
                None
            }
            "finished" => {
                let issued = self.issued.remove(&(office.to_owned(), ticket.to_owned()))?;
                let time_ns = point_time_ns(Millis(ts), &TicketNo::parse(ticket).ok()?);
                Some(format!(
                    "ticket,office={office} ticket=\"{ticket}\",total_s={} {time_ns}",
                    (ts - issued) as f64 / 1000.0
                ))
            }
            _ => None,
        }
    }
}
