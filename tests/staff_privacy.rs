//! Staff privacy against real servers: `queuewatch run` with
//! `privacy.staff = "hash"` (a key file) or `"drop"` over a real Mosquitto
//! into a real InfluxDB 1.x. The `ticket` and `counter` points carry the
//! documented hash (computed here independently: HMAC-SHA256 built from
//! SHA-256) or no staff at all, the same hash after a restart, and the plain
//! name appears nowhere: not in InfluxDB, not in any file of the state
//! folder (journal, snapshots), not in the daemon's output, not in the
//! alerts and echoes a subscriber to `#` receives. `queuewatch replay`
//! hashes the same way.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Influx1, Mosquitto, Subscriber};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;

const KEY: &str = "office-key-0123456789-abcdef";
const NAME: &str = "budi-santoso";
/// Parts of the name that must appear nowhere (hex digits cannot spell them).
const NAME_PARTS: [&str; 2] = ["budi", "santoso"];

/// HMAC-SHA256 (RFC 2104) from SHA-256 alone, independent of the code under test.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use ring::digest::{digest, SHA256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(digest(&SHA256, key).as_ref());
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = digest(&SHA256, &[pad(0x36), message.to_vec()].concat());
    digest(&SHA256, &[pad(0x5c), inner.as_ref().to_vec()].concat()).as_ref().to_vec()
}

/// The computation of docs/security.md ("Staff privacy"): `s-` + the first 16 hex digits of
/// HMAC-SHA256(key, staff).
fn documented_hash(staff: &str) -> String {
    let tag = hmac_sha256(KEY.as_bytes(), staff.as_bytes());
    format!("s-{}", tag[..8].iter().map(|byte| format!("{byte:02x}")).collect::<String>())
}

#[track_caller]
fn assert_no_name(what: &str, text: &str) {
    let lower = text.to_lowercase();
    for part in NAME_PARTS {
        assert!(!lower.contains(part), "{what} names the staff member ({part:?}):\n{text}");
    }
}

/// A key file the daemon accepts (mode 0600, a trailing newline).
fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("staff.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn ms_now() -> i64 {
    queuewatch::time::Millis::now().0
}

/// One ticket's life at office o1, served by `NAME` at counter c1: the
/// counter opens, the ticket waits past its 1 s target (an alert), is called,
/// started and finished, the counter closes. Then two messages naming the
/// staff member are rejected and echoed: an invalid ticket, and the name
/// written as no identifier may be.
async fn publish_a_ticket(kiosk: &AsyncClient, ticket: &str, watcher: &mut Subscriber) {
    let publish = |payload: String| async move {
        kiosk.publish("queue/o1/events", QoS::AtLeastOnce, false, payload).await.unwrap();
    };
    let t0 = ms_now();
    publish(format!(r#"{{"type":"counter_opened","ts":{t0},"counter":"c1","staff":"{NAME}"}}"#)).await;
    publish(format!(r#"{{"type":"issued","ts":{t0},"ticket":"{ticket}","service":"fast","staff":"{NAME}"}}"#)).await;
    // The wait alert: after the 1 s target and the 1 s window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (topic, alert) = watcher.next_before(deadline).await.expect("a wait alert in time");
        if topic.ends_with("/alerts") && alert["ticket"] == ticket && alert["state"] == "firing" {
            break;
        }
    }
    let t1 = ms_now();
    for (kind, ts) in [("called", t1), ("started", t1 + 1), ("finished", t1 + 2)] {
        publish(format!(r#"{{"type":"{kind}","ts":{ts},"ticket":"{ticket}","counter":"c1","staff":"{NAME}"}}"#)).await;
    }
    publish(format!(r#"{{"type":"counter_closed","ts":{},"counter":"c1","staff":"{NAME}"}}"#, t1 + 3)).await;
    publish(format!(r#"{{"type":"called","ts":{t1},"ticket":"","counter":"c1","staff":"{NAME}","id":"bad-1"}}"#)).await;
    publish(format!(
        r#"{{"type":"called","ts":{t1},"ticket":"X","counter":"c1","staff":"Budi Santoso","id":"bad-2"}}"#
    ))
    .await;
}

/// Rows of `measurement` whose `field` is `value`, waited for.
async fn wait_for_row(influx: &Influx1, measurement: &str, field: &str, value: &str) -> serde_json::Map<String, Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = influx.rows("qw", &format!("SELECT * FROM {measurement}")).await;
        if let Some(row) = rows.into_iter().find(|row| row.get(field).and_then(Value::as_str) == Some(value)) {
            return row;
        }
        assert!(std::time::Instant::now() < deadline, "no {measurement} row with {field} = {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon run, a restart on the same state folder, and the checks; `staff`
/// is what the points must carry. `drop` removes even the invalid name, so
/// that message is accepted (as if it named nobody) and only one is echoed.
async fn run_and_check(mode: &str, staff: Option<String>) {
    let echoes_per_run = if mode == "drop" { 1 } else { 2 };
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let privacy = match mode {
        "hash" => format!("[privacy]\nstaff = \"hash\"\nstaff_key_file = \"{}\"\n", key_file(dir.path()).display()),
        _ => format!("[privacy]\nstaff = \"{mode}\"\n"),
    };
    let client_id = format!("privacy-{mode}");
    let text = common::daemon_config_text(
        &mqtt.url,
        &client_id,
        "",
        &influx.url,
        &format!("checkpoint_interval = \"1s\"\n[sla.services.fast]\nwait_target = \"1s\"\n{privacy}"),
    );
    let data_dir = queuewatch::config::Config::parse(&text).unwrap().storage.data_dir;
    let config = common::write_config(dir.path(), &text);
    common::create_session(&mqtt, &client_id, "queue/+/events").await;
    let mut watcher = Subscriber::start(mqtt.port, "watcher", "#").await;
    let mut options = MqttOptions::new("kiosk", "127.0.0.1", mqtt.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (kiosk, mut kiosk_loop) = AsyncClient::new(options, 64);
    let _kiosk_pump = tokio::spawn(async move { while kiosk_loop.poll().await.is_ok() {} });

    let mut outputs = String::new();
    let mut received = Vec::new();
    for (run, ticket) in ["F1", "F2"].into_iter().enumerate() {
        // Debug logs too: nothing the daemon says may name the staff member.
        let mut daemon = Daemon::spawn(&config, &[("QUEUEWATCH_LOG", "queuewatch=debug,info")]);
        daemon.wait_for_log("queuewatch running.").await;
        publish_a_ticket(&kiosk, ticket, &mut watcher).await;
        let point = wait_for_row(&influx, "ticket", "ticket", ticket).await;
        assert_eq!(point.get("staff").and_then(Value::as_str), staff.as_deref(), "run {run}: {point:?}");
        // The rejections, echoed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut echoes = 0;
        while echoes < echoes_per_run {
            let (topic, message) = watcher.next_before(deadline).await.expect("both echoes in time");
            if topic.ends_with("/rejected") {
                echoes += 1;
            }
            received.push((topic, message));
        }
        daemon.wait_for_log("Snapshot taken").await;
        outputs.push_str(&daemon.log());
        // Killed: the next start recovers from the journal and the snapshot.
        drop(daemon);
    }
    let counters = influx.rows("qw", "SELECT * FROM counter").await;
    assert_eq!(counters.len(), 2, "{counters:?}");
    for counter in &counters {
        assert_eq!(counter.get("staff").and_then(Value::as_str), staff.as_deref(), "{counter:?}");
    }

    // What the watcher on `#` received besides the kiosk's own events.
    while let Some(message) = watcher.next_before(tokio::time::Instant::now() + Duration::from_millis(500)).await {
        received.push(message);
    }
    let ours: Vec<_> = received.iter().filter(|(topic, _)| !topic.ends_with("/events")).collect();
    assert!(ours.iter().any(|(topic, _)| topic.ends_with("/alerts")), "{ours:?}");
    let echoes: Vec<_> = ours.iter().filter(|(topic, _)| topic.ends_with("/rejected")).collect();
    assert_eq!(echoes.len(), 2 * echoes_per_run, "{ours:?}");
    let invalid_name_rejected =
        echoes.iter().any(|(_, echo)| echo["reason"] == "invalid_identifier" && echo["id"] == "bad-2");
    assert_eq!(invalid_name_rejected, mode == "hash", "{echoes:?}");
    assert_no_name("an alert or echo", &format!("{ours:?}"));
    assert_no_name("the daemon's output", &outputs);
    assert!(outputs.contains("Rejected event."), "the rejections were logged:\n{outputs}");
    let everything = influx.query("qw", "SELECT * FROM /.*/").await;
    assert_no_name("InfluxDB", &everything.to_string());
    let files = files_under(&data_dir);
    let named =
        |prefix: &str| files.iter().any(|(path, _)| path.file_name().unwrap().to_string_lossy().starts_with(prefix));
    assert!(named("journal-") && named("snapshot-"), "{:?}", files.iter().map(|(path, _)| path).collect::<Vec<_>>());
    for (path, bytes) in &files {
        assert_no_name(&path.display().to_string(), &String::from_utf8_lossy(bytes));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_staff_reach_influxdb_as_the_documented_hash_across_a_restart_and_the_name_nowhere() {
    let hash = documented_hash(NAME);
    assert!(hash.len() == 18 && hash.starts_with("s-"), "{hash}");
    run_and_check("hash", Some(hash)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_staff_leave_no_staff_field_and_the_name_nowhere() {
    run_and_check("drop", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_hashes_staff_as_run_does_and_staff_hash_prints_the_same() {
    let influx = Influx1::start();
    let dir = tempfile::tempdir().unwrap();
    let privacy = format!("[privacy]\nstaff = \"hash\"\nstaff_key_file = \"{}\"\n", key_file(dir.path()).display());
    let events = format!(
        "{}\n{}\n",
        format_args!(
            r#"{{"office":"o1","type":"issued","ts":"2026-11-26T08:00:00+07:00","ticket":"A1","service":"ktp"}}"#
        ),
        format_args!(
            r#"{{"office":"o1","type":"finished","ts":"2026-11-26T08:05:00+07:00","ticket":"A1","counter":"c1","staff":"{NAME}"}}"#
        ),
    );
    common::replay_into(&influx, "qw", &privacy, &events).await;
    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["staff"], Value::from(documented_hash(NAME)));

    let config = common::write_config(dir.path(), &privacy);
    let output = std::process::Command::new(common::queuewatch_bin())
        .args(["staff-hash", "--config"])
        .arg(&config)
        .args([NAME, "rina"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, format!("{NAME}\t{}\nrina\t{}\n", documented_hash(NAME), documented_hash("rina")));
    assert!(!String::from_utf8_lossy(&output.stderr).contains(KEY));
}
