//! The alert rules' fixtures (`tests/data/alerting/`, a morning of
//! 2026-11-25 in Asia/Jakarta), how they are replayed, the daemon's heartbeat
//! rows, and how Grafana's alerting renders a rule's query: what the alert
//! tests and the 1.x/3.x comparison share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// 2026-11-25T10:00:00+07:00: "now" for the fixtures.
pub const NOW: &str = "2026-11-25T10:00:00+07:00";

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/alerting").join(name)
}

pub fn fixture_text(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The config `queuewatch replay` reads `events` with: every office open
/// 07:00-16:00 (Asia/Jakarta, the default zone), in region `jabar`, wait
/// target 10 min, idle target 5 min.
pub fn replay_config(events: &str) -> String {
    let offices: BTreeSet<String> = events
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| event["office"].as_str().map(str::to_owned))
        .collect();
    let mut config = String::from("[sla]\nwait_target = \"10m\"\nservice_target = \"20m\"\nidle_target = \"5m\"\n");
    for office in offices {
        config.push_str(&format!("[offices.{office}]\nregion = \"jabar\"\nhours = \"07:00-16:00\"\n"));
    }
    config
}

/// `queuewatch` rows as `queuewatch run` writes them, at every whole minute in [from, to].
pub fn heartbeat_rows(from_ms: i64, to_ms: i64) -> String {
    let start_ms = from_ms.div_euclid(60_000) * 60_000;
    (start_ms..=to_ms)
        .step_by(60_000)
        .filter(|minute| *minute >= from_ms)
        .map(|minute| {
            let uptime_s = (minute - start_ms) / 1000;
            format!(
                "queuewatch,instance=queuewatch accepted={uptime_s}i,rejected=0i,points_written={uptime_s}i,\
                 points_refused=0i,open_tickets=3i,newest_event_age_s=1.5,uptime_s={uptime_s},mqtt_sessions_lost=0i {}\n",
                minute * 1_000_000
            )
        })
        .collect()
}

/// Unix milliseconds of an RFC 3339 time.
pub fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("RFC 3339").timestamp_millis()
}

/// The query with Grafana's `$timeFilter` rendered for the range [from, to] (Unix milliseconds),
/// as Grafana's InfluxQL backend renders it for a raw query.
pub fn render_macros(influxql: &str, from_ms: i64, to_ms: i64) -> String {
    influxql.replace("$timeFilter", &format!("time > {from_ms}ms and time < {to_ms}ms"))
}
