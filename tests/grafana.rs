//! The Grafana kit of `deploy/grafana`, proven without Grafana: every
//! provisioning file parses and refers to the one provisioned datasource;
//! every dashboard query and variable query, rendered as Grafana renders it
//! (time range, interval, variable values), runs on a real InfluxDB 1.x loaded
//! by `queuewatch replay` with a fixture day of three offices in three time
//! zones, and returns rows; and the dashboards' key figures equal the ones
//! computed from the fixture's events alone (`grafana/model.rs`).

mod common;
mod grafana_kit;
#[path = "grafana/model.rs"]
mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{NaiveDate, TimeZone};
use common::Influx1;
use grafana_kit::{
    all_panels, dashboard_queries, grafana_dir, variables_used, Substitution, VariableValue, BUILT_IN_VARIABLES,
    DATASOURCE_UID,
};
use model::Day;
use serde_json::{Map, Value};

const FIXTURE: &str = include_str!("data/dashboard_day.ndjson");
const DB: &str = "queuewatch";

/// The fixture's offices: two configured in two regions and zones, one
/// neither configured nor in a region, in a third zone. Targets as in `model::targets_s`.
const CONFIG: &str = r#"
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
const OFFICES: &[(&str, &str)] =
    &[("mpp-jkt", "Asia/Jakarta"), ("mpp-mks", "Asia/Makassar"), ("pkm-abepura", "Asia/Jayapura")];

const PANEL_TYPES: &[&str] = &["table", "timeseries", "stat", "barchart"];

// ------------------------------------------------------------------ structure

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()))
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana_dir().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let value =
                serde_json::from_str(&read(&path)).unwrap_or_else(|error| panic!("{name} is not JSON: {error}"));
            (name, value)
        })
        .collect()
}

fn dashboard(uid: &str) -> Value {
    dashboards()
        .into_iter()
        .map(|(_, value)| value)
        .find(|value| value["uid"] == uid)
        .unwrap_or_else(|| panic!("no dashboard with uid {uid}"))
}

fn well_formed_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 40 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The 2.x/3.x alternative of the datasource file, uncommented.
fn alternative_datasource_file(text: &str) -> String {
    let begin = text.find("# --- 2.x/3.x begin ---").expect("the file has the 2.x/3.x alternative");
    let end = text.find("# --- 2.x/3.x end ---").expect("the alternative has an end marker");
    let block: Vec<&str> = text[begin..end]
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix("# ").unwrap_or_else(|| panic!("commented line expected: {line:?}")))
        .collect();
    format!("apiVersion: 1\ndatasources:\n{}\n", block.join("\n"))
}

#[test]
fn the_datasource_is_influxql_with_the_fixed_uid_and_secrets_from_the_environment_only() {
    let path = grafana_dir().join("provisioning/datasources/queuewatch.yaml");
    let text = read(&path);
    let active = yaml(&path);
    assert_eq!(active["apiVersion"], 1);
    let datasources = active["datasources"].as_array().expect("datasources list");
    assert_eq!(datasources.len(), 1, "one active datasource");
    let alternative: Value = serde_norway::from_str(&alternative_datasource_file(&text)).expect("alternative parses");
    let alternatives = alternative["datasources"].as_array().unwrap();
    assert_eq!(alternatives.len(), 1);

    for datasource in [&datasources[0], &alternatives[0]] {
        assert_eq!(datasource["uid"], DATASOURCE_UID);
        assert!(well_formed_uid(DATASOURCE_UID));
        assert_eq!(datasource["type"], "influxdb");
        assert_eq!(datasource["access"], "proxy");
        assert_eq!(datasource["jsonData"]["version"], "InfluxQL");
        assert_eq!(datasource["jsonData"]["dbName"], "queuewatch");
        // Secrets: only references to the environment, expanded by Grafana.
        for (key, value) in datasource["secureJsonData"].as_object().expect("secureJsonData") {
            let value = value.as_str().unwrap();
            assert!(value.contains("${QUEUEWATCH_INFLUX_"), "{key} holds a literal secret: {value}");
        }
    }
    let v1 = &datasources[0];
    assert_eq!(v1["user"], "${QUEUEWATCH_INFLUX_USER}");
    assert_eq!(v1["secureJsonData"]["password"], "${QUEUEWATCH_INFLUX_PASSWORD}");
    let v2 = &alternatives[0];
    assert_eq!(v2["jsonData"]["httpHeaderName1"], "Authorization");
    assert_eq!(v2["secureJsonData"]["httpHeaderValue1"], "Token ${QUEUEWATCH_INFLUX_TOKEN}");
    assert!(v2.get("user").is_none() && v2["secureJsonData"].get("password").is_none());
}

#[test]
fn the_dashboard_provider_loads_the_folder_the_dashboards_are_copied_to() {
    let provider = yaml(&grafana_dir().join("provisioning/dashboards/queuewatch.yaml"));
    assert_eq!(provider["apiVersion"], 1);
    let providers = provider["providers"].as_array().expect("providers list");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0]["type"], "file");
    assert_eq!(providers[0]["options"]["path"], "/var/lib/grafana/dashboards/queuewatch");
    // The folder by title only, as the alert rules name it: a uid here would collide with the
    // folder alerting provisioning creates first (see the provider file).
    assert_eq!(providers[0]["folder"], "queuewatch");
    assert!(providers[0].get("folderUid").is_none(), "{:?}", providers[0]);
    let names: Vec<String> = dashboards().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["all-offices.json", "office.json"]);
}

/// Every problem of one dashboard's structure, as sentences.
fn structure_problems(name: &str, dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |text: String| problems.push(format!("{name}: {text}"));
    if dashboard["schemaVersion"].as_i64().unwrap_or(0) < 39 {
        problem(format!("schemaVersion {} is older than 39", dashboard["schemaVersion"]));
    }
    if dashboard["time"]["from"] != "now/d" || dashboard["time"]["to"] != "now" {
        problem(format!("default time range {} is not today so far", dashboard["time"]));
    }
    let datasource_ok = |value: &Value| value["uid"] == DATASOURCE_UID && value["type"] == "influxdb";

    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    let defined: BTreeSet<String> = variables.iter().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
    let multi: BTreeSet<String> = variables
        .iter()
        .filter(|v| v["multi"] == true || v["includeAll"] == true)
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    for variable in &variables {
        let variable_name = variable["name"].as_str().unwrap_or_default();
        if variable["type"] == "query" && !datasource_ok(&variable["datasource"]) {
            problem(format!("variable {variable_name} does not use the provisioned datasource"));
        }
        if variable["includeAll"] == true && variable["allValue"] != ".*" {
            problem(format!("variable {variable_name} has All without the custom all-value .*"));
        }
    }
    match variables.iter().find(|v| v["name"] == "tz") {
        Some(tz) => {
            let zones: Vec<&str> =
                tz["options"].as_array().into_iter().flatten().filter_map(|o| o["value"].as_str()).collect();
            if tz["type"] != "custom" || zones != ["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"] {
                problem(format!("$tz is not the custom variable of the three zones: {tz}"));
            }
        }
        None => problem("no $tz variable".into()),
    }

    let mut ids = BTreeSet::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        if !ids.insert(panel["id"].as_i64().unwrap_or(-1)) {
            problem(format!("panel {title:?}: id {} is not unique", panel["id"]));
        }
        if !PANEL_TYPES.contains(&panel["type"].as_str().unwrap_or_default()) {
            problem(format!("panel {title:?}: type {} is not one of {PANEL_TYPES:?}", panel["type"]));
        }
        if panel["description"].as_str().is_none_or(|text| text.len() < 40) {
            problem(format!("panel {title:?} has no description"));
        }
        if !datasource_ok(&panel["datasource"]) {
            problem(format!("panel {title:?} does not use the provisioned datasource"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("panel {title:?} has no query"));
        }
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            if !datasource_ok(&target["datasource"]) {
                problem(format!("panel {title:?} {ref_id}: not the provisioned datasource"));
            }
            if target["rawQuery"] != true {
                problem(format!("panel {title:?} {ref_id}: not a raw query"));
            }
            if !["time_series", "table"].contains(&target["resultFormat"].as_str().unwrap_or_default()) {
                problem(format!("panel {title:?} {ref_id}: resultFormat {}", target["resultFormat"]));
            }
        }
        for link in panel_links(panel) {
            for used in variables_used(&link) {
                if !defined.contains(&used) && !BUILT_IN_VARIABLES.contains(&used.as_str()) {
                    problem(format!("panel {title:?}: link uses undefined ${used}"));
                }
            }
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if annotation.get("builtIn").is_none() && !datasource_ok(&annotation["datasource"]) {
            problem(format!("annotation {} does not use the provisioned datasource", annotation["name"]));
        }
    }

    for query in dashboard_queries(dashboard) {
        let label = query.label();
        let text = &query.query;
        if text.trim().is_empty() {
            problem(format!("{label}: empty query"));
        }
        for used in variables_used(text) {
            if !defined.contains(&used) && !BUILT_IN_VARIABLES.contains(&used.as_str()) {
                problem(format!("{label}: uses undefined ${used}"));
            }
            // A multi-value variable renders as (a|b): only a regex match can take it.
            if multi.contains(&used) && !text.contains(&format!("=~ /^${used}$/")) {
                problem(format!("{label}: multi-value ${used} outside =~ /^${used}$/"));
            }
        }
        let upper = text.to_uppercase();
        for missing_in_v3 in ["INTEGRAL(", "SAMPLE(", "SHOW SERIES", "CARDINALITY"] {
            if upper.contains(missing_in_v3) {
                problem(format!("{label}: {missing_in_v3} is not InfluxQL that InfluxDB 3 answers"));
            }
        }
        if matches!(query.source, grafana_kit::QuerySource::Panel { .. }) && !text.contains("$timeFilter") {
            problem(format!("{label}: no $timeFilter"));
        }
        if upper.contains("GROUP BY TIME(") && !text.ends_with("tz('$tz')") {
            problem(format!("{label}: grouped by time without tz('$tz')"));
        }
    }
    problems
}

fn panel_links(panel: &Value) -> Vec<String> {
    let mut links = Vec::new();
    let mut collect = |value: &Value| {
        for link in value.as_array().into_iter().flatten() {
            if let Some(url) = link["url"].as_str() {
                links.push(url.to_string());
            }
        }
    };
    collect(&panel["links"]);
    collect(&panel["fieldConfig"]["defaults"]["links"]);
    for field_override in panel["fieldConfig"]["overrides"].as_array().into_iter().flatten() {
        for property in field_override["properties"].as_array().into_iter().flatten() {
            if property["id"] == "links" {
                collect(&property["value"]);
            }
        }
    }
    links
}

#[test]
fn dashboards_are_well_formed_and_use_only_the_provisioned_datasource_and_defined_variables() {
    let dashboards = dashboards();
    let uids: Vec<&str> = dashboards.iter().map(|(_, d)| d["uid"].as_str().unwrap_or_default()).collect();
    assert_eq!(uids, ["queuewatch-all-offices", "queuewatch-office"]);
    assert!(uids.iter().all(|uid| well_formed_uid(uid)), "{uids:?}");
    let mut problems = Vec::new();
    for (name, dashboard) in &dashboards {
        problems.extend(structure_problems(name, dashboard));
        // Links to other dashboards name an existing uid.
        let mut urls: Vec<String> = all_panels(dashboard).into_iter().flat_map(panel_links).collect();
        urls.extend(
            dashboard["links"].as_array().into_iter().flatten().filter_map(|l| l["url"].as_str().map(str::to_string)),
        );
        for url in urls {
            if let Some(rest) = url.strip_prefix("/d/") {
                let uid = rest.split('/').next().unwrap_or_default();
                if !uids.contains(&uid) {
                    problems.push(format!("{name}: link to unknown dashboard {url}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let all = dashboard("queuewatch-all-offices");
    let region = all["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "region").expect("$region");
    assert_eq!((region["multi"].as_bool(), region["includeAll"].as_bool()), (Some(true), Some(true)));
    let office = dashboard("queuewatch-office");
    let names: Vec<&str> =
        office["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["tz", "office", "service"]);
}

// ------------------------------------------------------------------ behaviour

/// A real InfluxDB 1.x holding what `queuewatch replay` wrote for the fixture day.
async fn loaded_influx() -> Influx1 {
    let influx = Influx1::start();
    common::replay_into(&influx, DB, CONFIG, FIXTURE).await;
    influx
}

/// Epoch milliseconds of `hour:minute` on the fixture's day in `zone`.
fn local_ms(zone: &str, day_offset: i64, hour: u32, minute: u32) -> i64 {
    let zone: chrono_tz::Tz = zone.parse().unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap() + chrono::Duration::days(day_offset);
    zone.from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap()).unwrap().timestamp_millis()
}

/// Grafana's "today" in `zone` for the fixture's day: now/d to the day's last millisecond.
fn whole_day(zone: &str) -> (i64, i64) {
    (local_ms(zone, 0, 0, 0), local_ms(zone, 1, 0, 0) - 1)
}

fn office_substitution(office: &str, zone: &str, from_ms: i64, to_ms: i64, interval: &str) -> Substitution {
    Substitution::new(from_ms, to_ms, interval)
        .with("office", VariableValue::One(office.into()))
        .with("service", VariableValue::All(".*".into()))
        .with("tz", VariableValue::Raw(zone.into()))
}

fn region_substitution(region: VariableValue, from_ms: i64, to_ms: i64, interval: &str) -> Substitution {
    Substitution::new(from_ms, to_ms, interval)
        .with("region", region)
        .with("tz", VariableValue::Raw("Asia/Jakarta".into()))
}

fn target_query(dashboard: &Value, title: &str, ref_id: &str) -> String {
    all_panels(dashboard)
        .into_iter()
        .find(|panel| panel["title"] == title)
        .and_then(|panel| panel["targets"].as_array()?.iter().find(|t| t["refId"] == ref_id).cloned())
        .and_then(|target| target["query"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no query {title:?} {ref_id}"))
}

fn number(row: &Map<String, Value>, column: &str) -> Option<f64> {
    row.get(column).and_then(Value::as_f64)
}

/// Asserts two optional figures agree to 1e-9 relative.
#[track_caller]
fn assert_close(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (Some(a), Some(e)) => {
            assert!((a - e).abs() <= 1e-9 * e.abs().max(1.0), "{what}: {a} from InfluxDB, {e} expected")
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

/// The single value of `column` over a query's rows (a figure without GROUP BY).
fn single(rows: &[Map<String, Value>], column: &str, what: &str) -> Option<f64> {
    assert!(rows.len() <= 1, "{what}: one row expected, got {rows:?}");
    rows.first().and_then(|row| number(row, column))
}

/// `column` by the `office` tag.
fn by_office(rows: &[Map<String, Value>], column: &str) -> BTreeMap<String, Option<f64>> {
    rows.iter().map(|row| (row["office"].as_str().unwrap().to_string(), number(row, column))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_with_grafana_macros_and_returns_rows() {
    let influx = loaded_influx().await;
    let mut failures = Vec::new();
    for (name, dashboard) in dashboards() {
        for query in dashboard_queries(&dashboard) {
            let mut cases: Vec<(String, Substitution, bool)> = Vec::new();
            if name == "all-offices.json" {
                let (from, to) = whole_day("Asia/Jakarta");
                for (label, region) in [
                    ("All", VariableValue::All(".*".into())),
                    ("dki", VariableValue::One("dki".into())),
                    ("dki,sulsel", VariableValue::Many(vec!["dki".into(), "sulsel".into()])),
                ] {
                    for interval in ["1m", "1h"] {
                        cases.push((
                            format!("region={label} interval={interval}"),
                            region_substitution(region.clone(), from, to, interval),
                            true,
                        ));
                    }
                }
            } else {
                for (office, zone) in OFFICES {
                    let (from, to) = whole_day(zone);
                    for interval in ["1m", "1h", "1d"] {
                        // The office without a region had no breach: its queries must run, rows may be absent.
                        let must_have_rows = *office != "pkm-abepura";
                        cases.push((
                            format!("office={office} tz={zone} interval={interval}"),
                            office_substitution(office, zone, from, to, interval),
                            must_have_rows,
                        ));
                    }
                }
            }
            for (case, substitution, must_have_rows) in cases {
                let label = format!("{name} {} ({case})", query.label());
                match substitution.render(&query.query) {
                    Err(error) => failures.push(format!("{label}: {error}")),
                    Ok(rendered) => match grafana_kit::run(&influx, DB, &rendered).await {
                        Err(error) => failures.push(format!("{label}: {error}")),
                        Ok(rows) if rows.is_empty() && must_have_rows => {
                            failures.push(format!("{label}: no rows from {rendered}"))
                        }
                        Ok(_) => {}
                    },
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_queries_list_the_fixtures_regions_offices_and_services() {
    let influx = loaded_influx().await;
    let values = |rows: Vec<Map<String, Value>>| -> Vec<String> {
        rows.iter().map(|row| row["value"].as_str().unwrap().to_string()).collect()
    };
    let all = dashboard("queuewatch-all-offices");
    let office = dashboard("queuewatch-office");
    let variable_query = |dashboard: &Value, name: &str| -> String {
        dashboard["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["query"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (from, to) = whole_day("Asia/Jakarta");
    let any = Substitution::new(from, to, "1m");
    let regions = grafana_kit::rows(&influx, DB, "region", &variable_query(&all, "region"), &any).await;
    assert_eq!(values(regions), ["dki", "sulsel"]);
    let offices = grafana_kit::rows(&influx, DB, "office", &variable_query(&office, "office"), &any).await;
    assert_eq!(values(offices), ["mpp-jkt", "mpp-mks", "pkm-abepura"]);
    let services = grafana_kit::rows(
        &influx,
        DB,
        "service",
        &variable_query(&office, "service"),
        &any.clone().with("office", VariableValue::One("mpp-jkt".into())),
    )
    .await;
    assert_eq!(values(services), ["ktp", "paspor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_offices_figures_equal_those_of_the_fixture_day() {
    let influx = loaded_influx().await;
    let day = Day::from_ndjson(FIXTURE);
    let all = dashboard("queuewatch-all-offices");
    let table = "Offices, worst service level first";
    let (from, to) = whole_day("Asia/Jakarta");
    let every_region = region_substitution(VariableValue::All(".*".into()), from, to, "1m");
    let run = |ref_id: &str, substitution: Substitution| {
        let query = target_query(&all, table, ref_id);
        let label = format!("{table} {ref_id}");
        let influx = &influx;
        async move { grafana_kit::rows(influx, DB, &label, &query, &substitution).await }
    };

    let names = by_office(&run("A", every_region.clone()).await, "name");
    let name_of = |rows: &[Map<String, Value>], office: &str| {
        rows.iter().find(|row| row["office"] == office).and_then(|row| row["name"].as_str().map(str::to_string))
    };
    let name_rows = run("A", every_region.clone()).await;
    assert_eq!(name_of(&name_rows, "mpp-jkt").as_deref(), Some("MPP Jakarta"));
    assert_eq!(name_of(&name_rows, "mpp-mks").as_deref(), Some("MPP Makassar"));
    assert_eq!(name_of(&name_rows, "pkm-abepura"), None, "{names:?}");

    let service_level = by_office(&run("D", every_region.clone()).await, "service level");
    let waits = run("E", every_region.clone()).await;
    let served = by_office(&run("F", every_region.clone()).await, "served");
    let no_shows = by_office(&run("G", every_region.clone()).await, "no-shows");
    let cancelled = by_office(&run("H", every_region.clone()).await, "cancelled");
    let closed = by_office(&run("I", every_region.clone()).await, "closed");
    let satisfaction = by_office(&run("J", every_region.clone()).await, "satisfaction");
    let breaches = by_office(&run("K", every_region.clone()).await, "breaches");
    let rejected = by_office(&run("L", every_region.clone()).await, "rejected");
    let offices = day.offices();
    assert_eq!(served.keys().cloned().collect::<Vec<_>>(), offices, "All includes the office without a region");
    for office in &offices {
        let expected = day.figures(office, from, to);
        let figure = |map: &BTreeMap<String, Option<f64>>| map.get(office).copied().flatten();
        assert_close(figure(&served), Some(expected.served as f64), &format!("{office} served"));
        assert_close(figure(&service_level), expected.service_level, &format!("{office} service level"));
        assert_close(
            by_office(&waits, "average wait").get(office).copied().flatten(),
            expected.average_wait_s,
            &format!("{office} average wait"),
        );
        assert_close(
            by_office(&waits, "p90 wait").get(office).copied().flatten(),
            expected.p90_wait_s,
            &format!("{office} p90 wait"),
        );
        assert_close(figure(&satisfaction), expected.satisfaction, &format!("{office} satisfaction"));
        assert_close(figure(&breaches).or(Some(0.0)), Some(expected.breaches as f64), &format!("{office} breaches"));
        assert_close(
            figure(&rejected),
            Some(day.rejected.get(office).copied().unwrap_or(0) as f64),
            &format!("{office} rejected"),
        );
        // What the table's transformation computes: no-shows / closed (empty when none).
        let rate = figure(&no_shows).zip(figure(&closed)).map(|(n, c)| n / c);
        let expected_rate = expected.no_show_rate().filter(|rate| *rate > 0.0);
        assert_close(rate, expected_rate, &format!("{office} no-show rate"));
        let cancellation = figure(&cancelled).unwrap_or(0.0);
        assert_close(Some(cancellation), Some(expected.cancelled as f64), &format!("{office} cancelled"));
    }
    assert!(day.rejected.values().sum::<u64>() > 0 && offices.iter().any(|o| day.figures(o, from, to).cancelled > 0));

    // "Now" at 10:00 in Jakarta (11:00 in Makassar, 12:00 in Jayapura), today so far.
    let now = local_ms("Asia/Jakarta", 0, 10, 0);
    let so_far = region_substitution(VariableValue::All(".*".into()), from, now, "1m");
    let waiting = by_office(&run("B", so_far.clone()).await, "waiting now");
    let oldest = by_office(&run("C", so_far.clone()).await, "oldest wait now");
    for office in &offices {
        let expected_waiting = day.waiting_at(office, now);
        assert_close(
            waiting.get(office).copied().flatten(),
            Some(expected_waiting as f64),
            &format!("{office} waiting now"),
        );
        let expected_oldest = day
            .tickets
            .iter()
            .filter(|t| &t.office == office && t.issued_ms <= now)
            .filter(|t| t.called_ms.is_none_or(|c| c > now) && t.closed.is_none_or(|(_, c)| c > now))
            .map(|t| (now - t.issued_ms) as f64 / 1000.0)
            .fold(0.0, f64::max);
        assert_close(
            oldest.get(office).copied().flatten(),
            Some(expected_oldest),
            &format!("{office} oldest wait now"),
        );
    }
    assert!(offices.iter().any(|office| day.waiting_at(office, now) > 0), "the fixture has people waiting at 10:00");

    // The stats above the table, over every office.
    let stat = |title: &str, substitution: Substitution| {
        let query = target_query(&all, title, "A");
        let influx = &influx;
        let title = title.to_string();
        async move { grafana_kit::rows(influx, DB, &title, &query, &substitution).await }
    };
    let total: u64 = offices.iter().map(|o| day.figures(o, from, to).served).sum();
    assert_close(
        single(&stat("Served today", every_region.clone()).await, "served", "served"),
        Some(total as f64),
        "served today",
    );
    let within: Vec<f64> = day.tickets.iter().filter_map(|t| t.wait_within_target()).collect();
    assert_close(
        single(&stat("Service level today", every_region.clone()).await, "service level", "sl"),
        model::mean(&within),
        "service level today",
    );
    let breaches_total: u64 = offices.iter().map(|o| day.figures(o, from, to).breaches).sum();
    assert_close(
        single(&stat("Breaches today", every_region.clone()).await, "breaches", "b"),
        Some(breaches_total as f64),
        "breaches today",
    );
    let waiting_total: u64 = offices.iter().map(|o| day.waiting_at(o, now)).sum();
    assert_close(
        single(&stat("Waiting now", so_far).await, "waiting now", "w"),
        Some(waiting_total as f64),
        "waiting now",
    );

    // The region filter: one region, two, and All with the office without a region.
    for (region, expected) in [
        (VariableValue::One("dki".into()), vec!["mpp-jkt"]),
        (VariableValue::Many(vec!["dki".into(), "sulsel".into()]), vec!["mpp-jkt", "mpp-mks"]),
        (VariableValue::All(".*".into()), vec!["mpp-jkt", "mpp-mks", "pkm-abepura"]),
    ] {
        let rows = run("F", region_substitution(region.clone(), from, to, "1m")).await;
        assert_eq!(by_office(&rows, "served").keys().collect::<Vec<_>>(), expected, "region {region:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn office_figures_equal_those_of_the_fixture_day_in_the_offices_zone() {
    let influx = loaded_influx().await;
    let day = Day::from_ndjson(FIXTURE);
    let board = dashboard("queuewatch-office");
    for (office, zone) in OFFICES {
        let (from, to) = whole_day(zone);
        let expected = day.figures(office, from, to);
        let today = office_substitution(office, zone, from, to, "1m");
        let query = |title: &str, ref_id: &str, substitution: Substitution| {
            let text = target_query(&board, title, ref_id);
            let label = format!("{office}: {title} {ref_id}");
            let influx = &influx;
            async move { grafana_kit::rows(influx, DB, &label, &text, &substitution).await }
        };
        let stat = |title: &'static str, column: &'static str| {
            let today = today.clone();
            let query = &query;
            async move { single(&query(title, "A", today).await, column, title) }
        };
        let what = |figure: &str| format!("{office} ({zone}) {figure}");
        assert_close(stat("Served", "served").await, Some(expected.served as f64), &what("served"));
        assert_close(stat("Service level", "service level").await, expected.service_level, &what("service level"));
        assert_close(stat("Average wait", "average wait").await, expected.average_wait_s, &what("average wait"));
        assert_close(stat("p90 wait", "p90 wait").await, expected.p90_wait_s, &what("p90 wait"));
        assert_close(stat("Satisfaction", "satisfaction").await, expected.satisfaction, &what("satisfaction"));
        assert_close(
            stat("Breaches", "breaches").await.or(Some(0.0)),
            Some(expected.breaches as f64),
            &what("breaches"),
        );

        // Waiting now at 10:00 local, today so far.
        let now = local_ms(zone, 0, 10, 0);
        let so_far = office_substitution(office, zone, from, now, "1m");
        let waiting = single(&query("Waiting now", "A", so_far).await, "waiting now", "waiting now");
        assert_close(waiting, Some(day.waiting_at(office, now) as f64), &what("waiting now at 10:00"));

        // p50/p90 per interval with a one-day interval: one bucket, from local midnight, the whole day.
        let per_day = office_substitution(office, zone, from, to, "1d");
        let buckets: Vec<_> = query("Wait and service time, p50 and p90", "A", per_day)
            .await
            .into_iter()
            .filter(|row| number(row, "p90 wait").is_some())
            .collect();
        assert_eq!(buckets.len(), 1, "{}: {buckets:?}", what("daily buckets"));
        assert_eq!(
            buckets[0]["time"].as_i64(),
            Some(from * 1_000_000),
            "{}",
            what("the day's bucket starts at local midnight")
        );
        assert_close(number(&buckets[0], "p90 wait"), expected.p90_wait_s, &what("p90 wait of the day"));
        let waits: Vec<f64> = day.closed_in(office, from, to).filter_map(|t| t.wait_s()).collect();
        assert_close(number(&buckets[0], "p50 wait"), model::percentile(&waits, 50.0), &what("p50 wait of the day"));

        // And per hour: buckets of every size, where nearest rank differs from other percentile rules.
        let per_hour = office_substitution(office, zone, from, to, "1h");
        for row in query("Wait and service time, p50 and p90", "A", per_hour).await {
            let start = row["time"].as_i64().unwrap() / 1_000_000;
            let waits: Vec<f64> =
                day.closed_in(office, start, start + 3_600_000 - 1).filter_map(|t| t.wait_s()).collect();
            for (column, p) in [("p50 wait", 50.0), ("p90 wait", 90.0)] {
                let figure = what(&format!("{column} in the hour from {start} ({} waits)", waits.len()));
                assert_close(number(&row, column), model::percentile(&waits, p), &figure);
            }
        }

        // Served per hour of the zone, and arrivals over the day.
        let hourly = query("Arrivals and served per hour", "B", today.clone()).await;
        let mut hours_seen = 0;
        for row in &hourly {
            let start = row["time"].as_i64().unwrap() / 1_000_000;
            let served_then = day
                .closed_in(office, start, start + 3_600_000 - 1)
                .filter(|t| t.outcome_at(model::Outcome::Served).is_some())
                .count();
            assert_close(
                number(row, "served"),
                Some(served_then as f64),
                &what(&format!("served in the hour from {start}")),
            );
            hours_seen += usize::from(served_then > 0);
        }
        assert!(hours_seen >= 2, "{}", what("served in several hours"));
        let arrivals: f64 = query("Arrivals and served per hour", "A", today.clone())
            .await
            .iter()
            .filter_map(|r| number(r, "arrivals"))
            .sum();
        let issued = day.tickets.iter().filter(|t| &t.office == office).count();
        assert_close(Some(arrivals), Some(issued as f64), &what("arrivals of the day"));

        // Service level per hour.
        for row in query("Service level per hour", "A", today.clone()).await {
            let start = row["time"].as_i64().unwrap() / 1_000_000;
            let within: Vec<f64> =
                day.closed_in(office, start, start + 3_600_000 - 1).filter_map(|t| t.wait_within_target()).collect();
            assert_close(
                number(&row, "service level"),
                model::mean(&within),
                &what(&format!("service level in the hour from {start}")),
            );
        }

        // The breach table lists the tickets.
        let mut listed: Vec<String> = query("Breaches, ticket by ticket", "A", today.clone())
            .await
            .iter()
            .map(|row| format!("{} {}", row["kind"].as_str().unwrap(), row["ticket"].as_str().unwrap_or("-")))
            .collect();
        let mut breached: Vec<String> = day
            .tickets
            .iter()
            .filter(|t| &t.office == office)
            .flat_map(|t| t.breaches().into_iter().map(move |(kind, _)| format!("{kind} {}", t.number)))
            .collect();
        listed.sort();
        breached.sort();
        assert_eq!(listed, breached, "{}", what("breach table"));

        // Counters: occupancy and satisfaction per counter, counters open.
        let occupancy = query("Occupancy per counter", "A", today.clone()).await;
        let satisfaction = query("Satisfaction per counter", "A", today.clone()).await;
        let sessions: Vec<_> = day.counters.iter().filter(|((o, _), _)| o == office).collect();
        assert_eq!(occupancy.len(), sessions.len(), "{}", what("counters with occupancy"));
        for ((_, counter), session) in &sessions {
            let row = occupancy.iter().find(|row| row["counter"] == counter.as_str()).unwrap();
            let expected_occupancy = session.busy_ms as f64 / (session.closed_ms - session.opened_ms) as f64;
            assert_close(number(row, "occupancy"), Some(expected_occupancy), &what(&format!("occupancy of {counter}")));
            let ratings: Vec<f64> = day
                .feedback
                .iter()
                .filter(|f| &f.office == office && &f.counter == counter)
                .map(|f| f.rating)
                .collect();
            let row = satisfaction.iter().find(|row| row["counter"] == counter.as_str());
            assert_close(
                row.and_then(|row| number(row, "average rating")),
                model::mean(&ratings),
                &what(&format!("satisfaction at {counter}")),
            );
        }
        let open_most = query("Counters open", "A", today.clone())
            .await
            .iter()
            .filter_map(|r| number(r, "counters open"))
            .fold(0.0, f64::max);
        assert_close(Some(open_most), Some(sessions.len() as f64), &what("counters open at most"));

        // Messages rejected over the day.
        let rejected: f64 = query("Messages accepted and rejected", "A", today.clone())
            .await
            .iter()
            .filter_map(|r| number(r, "rejected"))
            .sum();
        assert_close(Some(rejected), Some(day.rejected.get(*office).copied().unwrap_or(0) as f64), &what("rejected"));
    }
}
