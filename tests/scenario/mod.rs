//! The two-day, three-office scenario of `tests/data/scenario.ndjson` and the
//! exact points the contract says it yields, written out by hand from the
//! rules (not computed by the tracker).
//!
//! It covers duplicates (by id and by content), reordering within the window,
//! late events (applied and dropped), orphans, an orphan close, a recall after
//! close, transfers (known and unknown tickets), an expiry by age, an expiry
//! by re-issue, numbers reused the next day, a negative duration, epoch
//! millisecond timestamps, and three malformed messages.

#![allow(dead_code)]

use serde_json::{Map, Value};

pub const EVENTS: &str = include_str!("../data/scenario.ndjson");

/// One expected `ticket` point per line:
/// `office outcome service counter|- time ticket field=value...`.
/// Floats are written with a dot, integers without; `staff` is a string.
pub const EXPECTED: &str = "
mpp-jkt served ktp c1 2026-11-25T08:16:30+07:00 A001 recalls=0 wait_s=240. walk_s=30. service_s=720. total_s=990. visit_s=990. wait_target_s=600. service_target_s=900. wait_within_target=1 service_within_target=1 staff=budi
mpp-jkt served ktp c2 2026-11-25T08:30:08+07:00 A002 recalls=0 wait_s=5. walk_s=3. service_s=600. total_s=608. visit_s=608. wait_target_s=600. service_target_s=900. wait_within_target=1 service_within_target=1
mpp-jkt no_show sim c3 2026-11-25T08:33:00+07:00 B001 recalls=1 wait_s=1200. total_s=1380. visit_s=1380. wait_target_s=900. service_target_s=1200. wait_within_target=0
mpp-jkt transferred ktp c1 2026-11-25T08:50:00+07:00 A003 recalls=0 wait_s=300. service_s=300. total_s=600. wait_target_s=600. service_target_s=900. wait_within_target=1 service_within_target=1
mpp-jkt served sim c2 2026-11-25T09:05:30+07:00 C001 recalls=0 walk_s=30. service_s=300. wait_target_s=900. service_target_s=1200. service_within_target=1
mpp-jkt cancelled sim - 2026-11-25T09:20:00+07:00 B002 recalls=0 total_s=1200. visit_s=1200. wait_target_s=900. service_target_s=1200. wait_within_target=0
mpp-jkt served kk c4 2026-11-25T09:20:20+07:00 A003 recalls=0 wait_s=1200. walk_s=20. service_s=600. total_s=1820. visit_s=2420. wait_target_s=900. service_target_s=1200. wait_within_target=0 service_within_target=1 staff=sari
mpp-jkt served ktp c1 2026-11-25T11:25:00+07:00 E001 recalls=0 wait_s=300. walk_s=30. service_s=1170. total_s=1500. visit_s=1500. wait_target_s=600. service_target_s=900. wait_within_target=1 service_within_target=0
mpp-jkt expired ktp c1 2026-11-25T22:30:00+07:00 D001 recalls=0 wait_s=1800. wait_target_s=600. service_target_s=900.
mpp-jkt served ktp c1 2026-11-26T08:07:00+07:00 A001 recalls=0 wait_s=120. service_s=300. total_s=420. visit_s=420. wait_target_s=600. service_target_s=900. wait_within_target=1 service_within_target=1
mpp-jkt cancelled ktp - 2026-11-26T08:32:00+07:00 D001 recalls=0 total_s=120. visit_s=120. wait_target_s=600. service_target_s=900.
samsat-bdg served pkb k1 2026-11-25T08:06:00+07:00 A001 recalls=0 wait_s=60. service_s=300. total_s=360. visit_s=360. wait_target_s=900. service_target_s=1200. wait_within_target=1 service_within_target=1
samsat-bdg served bbn k3 2026-11-25T10:15:00+07:00 T050 recalls=0 wait_s=300. service_s=600. total_s=900. wait_target_s=900. service_target_s=1200. wait_within_target=1 service_within_target=1
samsat-bdg expired pkb - 2026-11-25T13:00:00+07:00 A002 recalls=0 wait_target_s=900. service_target_s=1200.
samsat-bdg served pkb k2 2026-11-25T13:10:00+07:00 A002 recalls=0 wait_s=300. service_s=300. total_s=600. visit_s=600. wait_target_s=900. service_target_s=1200. wait_within_target=1 service_within_target=1
samsat-bdg served pkb k1 2026-11-25T14:30:00+07:00 S1 recalls=0 wait_s=600. service_s=1260. total_s=1800. visit_s=1800. wait_target_s=900. service_target_s=1200. wait_within_target=1 service_within_target=0
rs-mks served poli r1 2026-11-26T09:21:00+08:00 P01 recalls=0 wait_s=600. walk_s=60. service_s=600. total_s=1260. visit_s=1260. wait_target_s=900. service_target_s=1200. wait_within_target=1 service_within_target=1 staff=dr.wati
";

/// Every field a `ticket` point can have.
pub const FIELDS: [&str; 12] = [
    "ticket",
    "recalls",
    "wait_s",
    "walk_s",
    "service_s",
    "total_s",
    "visit_s",
    "wait_target_s",
    "service_target_s",
    "wait_within_target",
    "service_within_target",
    "staff",
];

/// The config the scenario runs under (besides connection settings).
pub const TRACKING_AND_SLA: &str = r#"
[tracking]
reorder_window = "10s"
max_ticket_age = "12h"
[sla]
wait_target = "15m"
service_target = "20m"
[sla.services.ktp]
wait_target = "10m"
service_target = "15m"
"#;

/// Counts the replay summary must show.
pub const SUMMARY_LINES: [&str; 13] = [
    "events accepted: 60",
    "applied: 55",
    "late_dropped: 0",
    "events rejected: 3",
    "rejected malformed_json: 1",
    "rejected unknown_type: 1",
    "rejected invalid_identifier: 1",
    "duplicate: 3",
    "orphan_close: 1",
    "after_close: 1",
    "late: 2",
    "clock_skew: 1",
    "points refused by the sink: 0",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedPoint {
    pub office: String,
    pub outcome: String,
    pub service: String,
    pub counter: Option<String>,
    pub time_ms: i64,
    pub fields: Map<String, Value>,
}

pub fn expected_points() -> Vec<ExpectedPoint> {
    EXPECTED
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let time = chrono::DateTime::parse_from_rfc3339(words[4]).expect("expected time");
            let mut fields = Map::new();
            fields.insert("ticket".into(), Value::String(words[5].into()));
            for pair in &words[6..] {
                let (key, value) = pair.split_once('=').expect("key=value");
                let value = if key == "staff" {
                    Value::String(value.into())
                } else if let Some(float) = value.strip_suffix('.') {
                    serde_json::json!(float.parse::<f64>().unwrap())
                } else {
                    serde_json::json!(value.parse::<i64>().unwrap())
                };
                fields.insert(key.into(), value);
            }
            ExpectedPoint {
                office: words[0].into(),
                outcome: words[1].into(),
                service: words[2].into(),
                counter: (words[3] != "-").then(|| words[3].to_string()),
                time_ms: time.timestamp_millis(),
                fields,
            }
        })
        .collect()
}

/// Compares InfluxDB rows (`SELECT * FROM ticket`, epoch=ns) with the
/// expectation, field by field; returns every difference.
pub fn compare_influx_rows(rows: &[Map<String, Value>]) -> Vec<String> {
    let expected = expected_points();
    let mut problems = Vec::new();
    if rows.len() != expected.len() {
        problems.push(format!("{} rows, expected {}", rows.len(), expected.len()));
    }
    for point in &expected {
        let ticket = point.fields["ticket"].as_str().unwrap();
        let matching: Vec<&Map<String, Value>> = rows
            .iter()
            .filter(|row| {
                row.get("office").and_then(Value::as_str) == Some(point.office.as_str())
                    && row.get("ticket").and_then(Value::as_str) == Some(ticket)
                    && row.get("time").and_then(Value::as_i64).map(|ns| ns.div_euclid(1_000_000)) == Some(point.time_ms)
            })
            .collect();
        let label = format!("{} {} @{}", point.office, ticket, point.time_ms);
        let [row] = matching.as_slice() else {
            problems.push(format!("{label}: {} matching rows", matching.len()));
            continue;
        };
        for (tag, want) in
            [("outcome", Some(&point.outcome)), ("service", Some(&point.service)), ("counter", point.counter.as_ref())]
        {
            let got = row.get(tag).and_then(Value::as_str).filter(|text| !text.is_empty());
            if got != want.map(String::as_str) {
                problems.push(format!("{label}: tag {tag} is {got:?}, expected {want:?}"));
            }
        }
        for field in FIELDS {
            let got = row.get(field).filter(|value| !value.is_null());
            let want = point.fields.get(field);
            let same = match (got, want) {
                (None, None) => true,
                (Some(got), Some(want)) if want.is_f64() => {
                    got.as_f64().is_some_and(|got| (got - want.as_f64().unwrap()).abs() < 1e-9)
                }
                (Some(got), Some(want)) => got == want,
                _ => false,
            };
            if !same {
                problems.push(format!("{label}: field {field} is {got:?}, expected {want:?}"));
            }
        }
    }
    problems
}
