//! The fixture day the dashboards are proven on: three offices in three time
//! zones on 2026-11-26 (`tests/data/dashboard_day.ndjson`), the config it is
//! replayed with, Grafana's time ranges on it, and the cases (time range,
//! interval, variable values) every query of each dashboard is run with.

use chrono::{NaiveDate, TimeZone};

use super::{Substitution, VariableValue};

/// The fixture's events, as `queuewatch replay` takes them.
pub const FIXTURE: &str = include_str!("../data/dashboard_day.ndjson");
/// The database the fixture is replayed into.
pub const DB: &str = "queuewatch";

/// The fixture's offices: two configured in two regions and zones, one
/// neither configured nor in a region, in a third zone. Targets as in `model::targets_s`.
pub const CONFIG: &str = r#"
[tracking]
snapshot_interval = "1m"
[sla]
wait_target = "15m"
service_target = "20m"
[sla.services.ktp]
wait_target = "10m"
service_target = "15m"
[sla.services.paspor]
wait_target = "30m"
service_target = "25m"
[offices.mpp-jkt]
name = "MPP Jakarta"
region = "dki"
timezone = "Asia/Jakarta"
[offices.mpp-mks]
name = "MPP Makassar"
region = "sulsel"
timezone = "Asia/Makassar"
"#;

/// Each office of the fixture and the zone whose day it is read in.
pub const OFFICES: &[(&str, &str)] =
    &[("mpp-jkt", "Asia/Jakarta"), ("mpp-mks", "Asia/Makassar"), ("pkm-abepura", "Asia/Jayapura")];

/// Epoch milliseconds of `hour:minute` on the fixture's day in `zone`.
pub fn local_ms(zone: &str, day_offset: i64, hour: u32, minute: u32) -> i64 {
    let zone: chrono_tz::Tz = zone.parse().unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap() + chrono::Duration::days(day_offset);
    zone.from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap()).unwrap().timestamp_millis()
}

/// Grafana's "today" in `zone` for the fixture's day: now/d to the day's last millisecond.
pub fn whole_day(zone: &str) -> (i64, i64) {
    (local_ms(zone, 0, 0, 0), local_ms(zone, 1, 0, 0) - 1)
}

pub fn office_substitution(office: &str, zone: &str, from_ms: i64, to_ms: i64, interval: &str) -> Substitution {
    Substitution::new(from_ms, to_ms, interval)
        .with("office", VariableValue::One(office.into()))
        .with("service", VariableValue::All(".*".into()))
        .with("tz", VariableValue::Raw(zone.into()))
}

pub fn region_substitution(region: VariableValue, from_ms: i64, to_ms: i64, interval: &str) -> Substitution {
    Substitution::new(from_ms, to_ms, interval)
        .with("region", region)
        .with("tz", VariableValue::Raw("Asia/Jakarta".into()))
}

/// One rendering of every query of a dashboard.
pub struct Case {
    /// What it sets, for messages: `office=mpp-jkt tz=Asia/Jakarta interval=1h`.
    pub label: String,
    pub substitution: Substitution,
    /// Whether every query but those that may be empty must return rows.
    pub must_have_rows: bool,
}

impl Case {
    fn new(label: impl Into<String>, substitution: Substitution, must_have_rows: bool) -> Case {
        Case { label: label.into(), substitution, must_have_rows }
    }
}

/// The cases every query of `dashboard_file` (`office.json`, ...) runs with:
/// each office in its zone's day, at three intervals, and several values at
/// once; each region and all; each daemon instance and all.
pub fn cases(dashboard_file: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    if dashboard_file == "all-offices.json" {
        let (from, to) = whole_day("Asia/Jakarta");
        for (label, region) in [
            ("All", VariableValue::All(".*".into())),
            ("dki", VariableValue::One("dki".into())),
            ("dki,sulsel", VariableValue::Many(vec!["dki".into(), "sulsel".into()])),
        ] {
            for interval in ["1m", "1h"] {
                cases.push(Case::new(
                    format!("region={label} interval={interval}"),
                    region_substitution(region.clone(), from, to, interval),
                    true,
                ));
            }
        }
    } else if dashboard_file == "queuewatch.json" {
        // The fixture has no heartbeat rows (replay writes none): they are written by the test.
        let (from, to) = whole_day("Asia/Jakarta");
        for (label, instance) in
            [("All", VariableValue::All(".*".into())), ("one", VariableValue::One("queuewatch-a.1".into()))]
        {
            for interval in ["1m", "1h"] {
                cases.push(Case::new(
                    format!("instance={label} interval={interval}"),
                    Substitution::new(from, to, interval)
                        .with("instance", instance.clone())
                        .with("tz", VariableValue::Raw("Asia/Jakarta".into())),
                    false,
                ));
            }
        }
    } else {
        for (office, zone) in OFFICES {
            let (from, to) = whole_day(zone);
            for interval in ["1m", "1h", "1d"] {
                // The office without a region had no breach: its queries must run, rows may be absent.
                let must_have_rows = *office != "pkm-abepura";
                cases.push(Case::new(
                    format!("office={office} tz={zone} interval={interval}"),
                    office_substitution(office, zone, from, to, interval),
                    must_have_rows,
                ));
            }
        }
        // One service, and several offices at once: every query must still run.
        let (from, to) = whole_day("Asia/Jakarta");
        cases.push(Case::new(
            "office=mpp-jkt service=ktp",
            office_substitution("mpp-jkt", "Asia/Jakarta", from, to, "1h")
                .with("service", VariableValue::One("ktp".into())),
            false,
        ));
        cases.push(Case::new(
            "office=mpp-jkt,mpp-mks service=ktp,paspor",
            office_substitution("mpp-jkt", "Asia/Jakarta", from, to, "1h")
                .with("office", VariableValue::Many(vec!["mpp-jkt".into(), "mpp-mks".into()]))
                .with("service", VariableValue::Many(vec!["ktp".into(), "paspor".into()])),
            false,
        ));
    }
    cases
}

/// Two daemon instances' heartbeat rows (`queuewatch`) for ten minutes from
/// 08:00 in Jakarta, a minute apart; the second restarts after 5 minutes
/// (counts from zero again) and refuses a point in its last two minutes.
/// `replay` writes none, so the daemon dashboard's tests write these.
pub fn heartbeat_lines() -> String {
    let (from, _) = whole_day("Asia/Jakarta");
    let mut lines = String::new();
    let start = from + 8 * 3_600_000;
    for minute in 0..10_i64 {
        let at = (start + minute * 60_000) * 1_000_000;
        let a = minute * 7;
        lines.push_str(&format!(
            "queuewatch,instance=queuewatch-a.1 accepted={a}i,rejected={}i,points_written={}i,points_refused=0i,open_tickets=3i,newest_event_age_s=2.5,uptime_s={} {at}\n",
            minute,
            a * 3,
            minute * 60
        ));
        let b = if minute < 5 { minute * 4 } else { (minute - 5) * 4 };
        lines.push_str(&format!(
            "queuewatch,instance=queuewatch-b accepted={b}i,rejected=0i,points_written={b}i,points_refused={}i,open_tickets=1i,uptime_s={} {at}\n",
            i64::from(minute >= 8),
            (minute % 5) * 60
        ));
    }
    lines
}
