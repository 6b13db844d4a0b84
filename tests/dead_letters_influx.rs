//! Refused lines against a real InfluxDB 1.6, whose answers name a cause
//! for the whole batch: points beyond the retention policy, a field type
//! conflict. The writer finds the refused lines from the answer (not by
//! halving down to single lines), writes every other line, and puts the
//! refused ones in the dead-letter file in one append, under one comment.

mod common;

use std::time::Duration;

use common::Influx1;
use queuewatch::config::Compression;
use queuewatch::sink::{self, InfluxApi, InfluxConfig, Secrets, SinkReport, SinkStore};

const WAIT_LIMIT: Duration = Duration::from_secs(30);
const DAY_NS: i64 = 86_400 * 1_000_000_000;

#[tokio::test]
async fn lines_beyond_the_retention_policy_are_refused_together_and_every_other_line_is_written() {
    let influx = database_with_an_hour_policy().await;
    let now = now_ns();
    // Every tenth line is ten days old: beyond the policy of one hour.
    let lines: Vec<String> = (0..1_000)
        .map(|number| {
            let time = if number % 10 == 0 { now - 10 * DAY_NS + number } else { now - number * 1_000 };
            format!("ticket,office=o{number} wait_s={number}i {time}")
        })
        .collect();
    let (report, dead) = write_one_batch(&influx, &lines).await;
    let old: Vec<String> = lines.iter().step_by(10).cloned().collect();
    assert_eq!((report.points_written, report.points_rejected), (900, 100), "{report:?}");
    assert!(report.requests <= 3, "{} requests for one batch with 100 old lines", report.requests);
    assert_eq!(dead.lines, old, "exactly the old lines are dead letters");
    assert_eq!(dead.comments, 1, "refused together, under one comment");
    assert!(dead.reasons.iter().all(|reason| reason.contains("points beyond retention policy")), "{:?}", dead.reasons);
    assert_eq!(stored(&influx, "wait_s").await, 900);
}

#[tokio::test]
async fn lines_in_a_field_type_conflict_are_refused_together_and_every_other_line_is_written() {
    let influx = database_with_an_hour_policy().await;
    let now = now_ns();
    influx_write(&influx, &format!("ticket,office=first wait_s=1i {}", now - 60_000_000_000)).await;
    // Every twentieth line writes wait_s as a float, which is an integer already.
    let lines: Vec<String> = (0..1_000)
        .map(|number| {
            let value = if number % 20 == 0 { format!("{number}.5") } else { format!("{number}i") };
            format!("ticket,office=o{number} wait_s={value} {}", now - number * 1_000)
        })
        .collect();
    let (report, dead) = write_one_batch(&influx, &lines).await;
    let floats: Vec<String> = lines.iter().step_by(20).cloned().collect();
    assert_eq!((report.points_written, report.points_rejected), (950, 50), "{report:?}");
    assert!(report.requests <= 3, "{} requests for one batch with 50 conflicting lines", report.requests);
    assert_eq!(dead.lines, floats);
    assert_eq!(dead.comments, 1);
    assert!(dead.reasons[0].contains("field type conflict"), "{:?}", dead.reasons);
    assert_eq!(stored(&influx, "wait_s").await, 951);
}

#[tokio::test]
async fn a_batch_with_both_causes_costs_a_few_requests_and_loses_no_good_line() {
    let influx = database_with_an_hour_policy().await;
    let now = now_ns();
    influx_write(&influx, &format!("ticket,office=first wait_s=1i {}", now - 60_000_000_000)).await;
    // Old lines, lines of the wrong type and good ones, mixed.
    let (mut lines, mut refused) = (Vec::new(), Vec::new());
    for number in 0..1_000i64 {
        let (line, is_refused) = match number % 25 {
            0 => (format!("ticket,office=o{number} wait_s={number}i {}", now - 10 * DAY_NS + number), true),
            1 | 2 => (format!("ticket,office=o{number} wait_s={number}.5 {}", now - number * 1_000), true),
            _ => (format!("ticket,office=o{number} wait_s={number}i {}", now - number * 1_000), false),
        };
        if is_refused {
            refused.push(line.clone());
        }
        lines.push(line);
    }
    let (report, dead) = write_one_batch(&influx, &lines).await;
    let refused_count = refused.len() as u64;
    assert_eq!((report.points_written, report.points_rejected), (1_000 - refused_count, refused_count), "{report:?}");
    assert!(report.requests <= 5, "{} requests for one batch with both causes", report.requests);
    let mut dead_lines = dead.lines.clone();
    dead_lines.sort();
    refused.sort();
    assert_eq!(dead_lines, refused);
    assert_eq!(dead.comments, 2, "one group per cause, in one append");
    assert_eq!(stored(&influx, "wait_s").await, 1 + 1_000 - refused_count);
}

// ---- helpers ----

/// InfluxDB with database `qw` and, besides its default policy, `hour`, a
/// retention policy of one hour (the shortest InfluxDB takes).
async fn database_with_an_hour_policy() -> Influx1 {
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let response = reqwest::Client::new()
        .post(format!("{}/query", influx.url))
        .form(&[("q", "CREATE RETENTION POLICY \"hour\" ON \"qw\" DURATION 1h REPLICATION 1")])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success() && !body.contains("\"error\""), "{status}: {body}");
    influx
}

async fn influx_write(influx: &Influx1, line: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/write?db=qw&rp=hour&precision=ns", influx.url))
        .body(format!("{line}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204, "{}", response.text().await.unwrap());
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// What the dead-letter file holds.
struct DeadLetters {
    lines: Vec<String>,
    reasons: Vec<String>,
    /// Comment lines: one for each group of lines refused together.
    comments: usize,
}

/// Writes `lines` as one batch through a writer with a spool and a
/// dead-letter file, to policy `hour` of `qw`; the report and the file.
async fn write_one_batch(influx: &Influx1, lines: &[String]) -> (SinkReport, DeadLetters) {
    let data_dir = tempfile::tempdir().unwrap();
    let config = InfluxConfig {
        api: InfluxApi::V1,
        url: influx.url.clone(),
        database: "qw".into(),
        retention_policy: Some("hour".into()),
        batch_size: lines.len(),
        flush_interval: Duration::from_secs(60),
        max_backoff: Duration::from_millis(50),
        compression: Compression::None,
        ..InfluxConfig::default()
    };
    let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
    let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    handle.send(text, lines.len()).await.unwrap();
    tokio::time::timeout(WAIT_LIMIT, handle.flush()).await.unwrap().unwrap();
    drop(handle);
    let report = tokio::time::timeout(WAIT_LIMIT, task).await.unwrap().unwrap();
    let text = std::fs::read_to_string(data_dir.path().join(sink::DEAD_LETTER_FILE)).unwrap_or_default();
    let entries = sink::dead_letter::parse(&text);
    let dead = DeadLetters {
        lines: entries.iter().map(|entry| entry.line.clone()).collect(),
        reasons: entries.iter().map(|entry| entry.reason.clone()).collect(),
        comments: text.lines().filter(|line| line.starts_with('#')).count(),
    };
    (report, dead)
}

/// How many values of `field` policy `hour` of `qw` holds.
async fn stored(influx: &Influx1, field: &str) -> u64 {
    let rows = influx.rows("qw", &format!("SELECT count(\"{field}\") FROM \"qw\".\"hour\".\"ticket\"")).await;
    rows.first().and_then(|row| row.get("count")).and_then(|count| count.as_u64()).unwrap_or(0)
}
