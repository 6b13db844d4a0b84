//! The final contents of the measurements, as comparable rows, and a
//! readable account of how two databases differ.

use std::collections::BTreeMap;

use serde_json::Value;

use queuewatch_servers::InfluxClient;

/// The measurements compared between runs.
pub const MEASUREMENTS: [&str; 6] = ["ticket", "breach", "queue", "counter", "feedback", "office"];

/// `office` fields that count arrivals or follow the wall clock, not event
/// time: a run that receives messages again after a kill counts differently.
const ARRIVAL_FIELDS: [&str; 4] = ["accepted", "rejected", "silent", "clock_ahead"];

/// One point: its time in nanoseconds and its tags and fields, `key=value`
/// sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub time_ns: i64,
    pub tags_and_fields: String,
}

impl std::fmt::Display for Row {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.time_ns, self.tags_and_fields)
    }
}

/// Every point of `measurement` in `db`, sorted by time, then tags and fields.
pub async fn rows(influx: &impl AsRef<InfluxClient>, db: &str, measurement: &str) -> Vec<Row> {
    let influxql = format!("SELECT * FROM {} GROUP BY *", queuewatch_servers::quote_ident(measurement));
    let mut rows: Vec<Row> = influx
        .as_ref()
        .rows_or_panic(db, &influxql)
        .await
        .into_iter()
        .map(|row| {
            let time_ns = row["time"].as_i64().expect("epoch=ns times");
            let values: BTreeMap<&str, &Value> = row
                .iter()
                .filter(|(key, value)| *key != "time" && !value.is_null())
                .filter(|(key, _)| measurement != "office" || !ARRIVAL_FIELDS.contains(&key.as_str()))
                .map(|(key, value)| (key.as_str(), value))
                .collect();
            let tags_and_fields =
                values.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(" ");
            Row { time_ns, tags_and_fields }
        })
        .collect();
    rows.sort();
    rows
}

/// Waits until `measurement` in database `qw` has at least `count` points;
/// fails with the daemon's logs after `DEADLINE`.
pub async fn wait_for_points(
    influx: &impl AsRef<InfluxClient>,
    measurement: &str,
    count: usize,
    daemon: &crate::daemon::Daemon,
) {
    let deadline = std::time::Instant::now() + crate::daemon::DEADLINE;
    while rows(influx, "qw", measurement).await.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} {measurement} points after {:?}\n{}",
            crate::daemon::DEADLINE,
            daemon.log_tails(60)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `None` when both have the same rows; otherwise the counts and the first
/// rows found in one only.
pub fn difference(measurement: &str, expected: &[Row], actual: &[Row]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let (mut only_expected, mut only_actual) = (Vec::new(), Vec::new());
    let (mut left, mut right) = (expected.iter().peekable(), actual.iter().peekable());
    loop {
        match (left.peek(), right.peek()) {
            (Some(a), Some(b)) if a == b => {
                left.next();
                right.next();
            }
            (Some(a), Some(b)) if a < b => only_expected.push(left.next().unwrap()),
            (Some(_), Some(_)) => only_actual.push(right.next().unwrap()),
            (Some(_), None) => only_expected.push(left.next().unwrap()),
            (None, Some(_)) => only_actual.push(right.next().unwrap()),
            (None, None) => break,
        }
    }
    let first = |rows: &[&Row]| rows.iter().take(12).map(|row| format!("    {row}")).collect::<Vec<_>>().join("\n");
    Some(format!(
        "{measurement}: {} rows in the clean run, {} in the killed run; {} only in the clean run, {} only in the killed run\n  only clean (first 12):\n{}\n  only killed (first 12):\n{}",
        expected.len(),
        actual.len(),
        only_expected.len(),
        only_actual.len(),
        first(&only_expected),
        first(&only_actual),
    ))
}
