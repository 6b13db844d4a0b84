//! What the spool tests share, on InfluxDB 1.x and 3.x alike: the daemon's
//! config, ticket messages and their replay form, the spool's files, the
//! dead-letter command, and comparing the daemon's ticket points with a
//! clean replay's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use queuewatch::time::Millis;
use queuewatch_servers::InfluxClient;

use crate::daemon::{data_dir_of, Daemon, DEADLINE};
use crate::mqtt::{Message, Publisher};
use crate::points::{self, Row};

pub const CLIENT_ID: &str = "queuewatch-spool";
const MINUTE_MS: i64 = 60_000;

/// A config file for client `CLIENT_ID` in a new folder, for the broker at
/// `mqtt_url` and InfluxDB at `influx_url` (`api = "v1"`, database `qw`),
/// with `influx_keys` added to `[influxdb]` and `storage_keys` to `[storage]`; returns the
/// folder, the file and its state folder.
pub fn config_for(
    mqtt_url: &str,
    influx_url: &str,
    influx_keys: &str,
    storage_keys: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let text = crate::common::daemon_config_text(mqtt_url, CLIENT_ID, "", influx_url, "")
        .replacen("flush_interval = \"100ms\"\n", &format!("flush_interval = \"100ms\"\n{influx_keys}\n"), 1)
        .replacen("[storage]\n", &format!("[storage]\n{storage_keys}"), 1);
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::write_config(dir.path(), &text);
    (dir, config, data_dir_of(&text))
}

/// `count` tickets at `office`, 20 s apart, each issued, called, started and
/// finished, all in the past, in time order.
pub fn tickets(office: &str, count: i64) -> Vec<Message> {
    let start = Millis::now().0 - count * 20_000 - 30 * MINUTE_MS;
    let mut events = Vec::new();
    for number in 0..count {
        let issued = start + number * 20_000;
        let called = issued + 60_000 + (number % 5) * 7_000;
        for (kind, ts, extra) in [
            ("issued", issued, r#","service":"ktp""#),
            ("called", called, r#","counter":"c1""#),
            ("started", called + 15_000, r#","counter":"c1""#),
            ("finished", called + 200_000 + (number % 3) * 30_000, r#","counter":"c1""#),
        ] {
            let payload = format!(
                r#"{{"type":"{kind}","ts":{ts},"ticket":"T{number:03}","id":"{office}-{number}-{kind}"{extra}}}"#
            );
            events.push((ts, Message::event(office, payload)));
        }
    }
    events.sort_by_key(|(ts, _)| *ts);
    events.into_iter().map(|(_, message)| message).collect()
}

/// The messages as `replay` takes them: one event per line, with its office.
pub fn ndjson<'a>(messages: impl IntoIterator<Item = &'a Message>) -> String {
    messages
        .into_iter()
        .map(|message| {
            let office = message.topic.split('/').nth(1).unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&message.payload) {
                Ok(serde_json::Value::Object(mut event)) => {
                    event.entry("office").or_insert(office.into());
                    format!("{}\n", serde_json::Value::Object(event))
                }
                _ => format!("{}\n", message.payload),
            }
        })
        .collect()
}

/// Publishes `messages` as kiosks through the broker on `mqtt_port`, then
/// waits until the daemon, whose credentials InfluxDB refuses, has logged a
/// 401 and holds ticket points in its spool.
pub async fn publish_until_refused_and_spooled(
    mqtt_port: u16,
    messages: &[Message],
    daemon: &mut Daemon,
    data_dir: &Path,
) {
    let publisher = Publisher::connect(mqtt_port, "kiosks");
    publisher.publish_all(messages).await;
    publisher.wait_until_acknowledged().await;
    daemon.wait_for_log("status=Some(401)").await;
    wait_until(daemon, "ticket points in the spool", || spool_bytes(data_dir) > 0 && spool_holds(data_dir, "ticket,"))
        .await;
}

/// The daemon's `ticket` points in `qw` are those of the clean replay in `expected`.
pub async fn assert_same_tickets(influx: &impl AsRef<InfluxClient>, daemon: &Daemon) {
    let expected: Vec<Row> = points::rows(influx, "expected", "ticket").await;
    let actual: Vec<Row> = points::rows(influx, "qw", "ticket").await;
    assert!(!expected.is_empty());
    if let Some(difference) = points::difference("ticket", &expected, &actual) {
        panic!("{difference}\n{}", daemon.log_tails(60));
    }
}

pub async fn wait_until(daemon: &Daemon, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "no {what} after {DEADLINE:?}\n{}", daemon.log_tails(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_until_spool_empty(data_dir: &Path, daemon: &Daemon) {
    wait_until(daemon, "empty spool", || spool_bytes(data_dir) == 0).await;
}

/// Bytes of batches in the spool's segment files (their headers not counted).
pub fn spool_bytes(data_dir: &Path) -> u64 {
    spool_segments(data_dir)
        .iter()
        .map(|path| std::fs::metadata(path).map_or(0, |meta| meta.len().saturating_sub(16)))
        .sum()
}

pub fn spool_holds(data_dir: &Path, needle: &str) -> bool {
    spool_segments(data_dir).iter().any(|path| {
        std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle.as_bytes()))
    })
}

pub fn spool_segments(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("spool"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "qwsp"))
        .collect()
}

pub fn resend_dead_letters(config: &Path) -> std::process::Output {
    std::process::Command::new(crate::common::queuewatch_bin())
        .args(["resend-dead-letters", "--config"])
        .arg(config)
        .output()
        .expect("queuewatch resend-dead-letters runs")
}
