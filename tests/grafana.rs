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

use chrono::{Datelike, NaiveDate, TimeZone, Timelike};
use common::Influx1;
use grafana_kit::day::{
    self, local_ms, office_substitution, region_substitution, whole_day, CONFIG, DB, FIXTURE, OFFICES,
};
use grafana_kit::{
    all_panels, dashboard_queries, dashboards, grafana_dir, read, variables_used, Substitution, VariableValue,
    BUILT_IN_VARIABLES, DATASOURCE_UID,
};
use model::Day;
use serde_json::{Map, Value};

const PANEL_TYPES: &[&str] = &["table", "timeseries", "stat", "barchart", "bargauge"];

// ------------------------------------------------------------------ structure

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()))
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
    assert_eq!(names, ["all-offices.json", "office.json", "queuewatch.json"]);
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
        // Percentiles of buckets of a few tickets mean nothing: a panel whose
        // percentiles follow $__interval sets a minimum interval of an hour.
        let percentile_per_interval = targets.iter().any(|t| {
            let query = t["query"].as_str().unwrap_or_default();
            query.contains("PERCENTILE(") && query.contains("time($__interval)")
        });
        let min_interval_ms = panel["interval"].as_str().and_then(grafana_kit::interval_ms).unwrap_or(0);
        if percentile_per_interval && min_interval_ms < 3_600_000 {
            problem(format!("panel {title:?}: percentiles per $__interval without a minimum interval of 1h"));
        }
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
        // A week-ago query shifts the range itself: `time >= ${__from}ms - 7d AND time <= ${__to}ms - 7d`.
        let shifted_range = text.contains("${__from}ms - ") && text.contains("${__to}ms - ");
        if matches!(query.source, grafana_kit::QuerySource::Panel { .. })
            && !text.contains("$timeFilter")
            && !shifted_range
        {
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
    assert_eq!(uids, ["queuewatch-all-offices", "queuewatch-office", "queuewatch-daemon"]);
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
    let office_variable =
        office["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "office").unwrap();
    assert!(office_variable["query"].as_str().unwrap().contains("FROM \"office\""), "offices from office rows");
    assert_eq!(office_variable["multi"], true, "several offices may be chosen");

    // "Service level per hour": one threshold line, at 0.8.
    let per_hour = all_panels(&office).into_iter().find(|p| p["title"] == "Service level per hour").unwrap();
    let steps: Vec<f64> = per_hour["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|step| step["value"].as_f64())
        .collect();
    assert_eq!(steps, [0.8]);
    assert_eq!(per_hour["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"], "line");

    // $service is honoured wherever the measurement has a service tag.
    for query in dashboard_queries(&office) {
        let measurements = ["\"queue\"", "\"ticket\"", "\"breach\"", "\"feedback\""];
        let is_variable = matches!(query.source, grafana_kit::QuerySource::Variable { .. });
        if !is_variable && measurements.iter().any(|m| query.query.contains(&format!("FROM {m}"))) {
            assert!(
                query.query.contains("\"service\" =~ /^$service$/"),
                "{} does not honour $service: {}",
                query.label(),
                query.query
            );
        }
    }
}

// ------------------------------------------------------------------ behaviour

/// A real InfluxDB 1.x holding what `queuewatch replay` wrote for the fixture day.
async fn loaded_influx() -> Influx1 {
    let influx = Influx1::start();
    common::replay_into(&influx, DB, CONFIG, FIXTURE).await;
    influx
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

/// Panels of buckets (waits of 0-5 min, ratings of 3) where a bucket of a
/// fixture day may hold nothing, which InfluxDB answers with no row (the
/// panel shows its noValue, 0). The figures of these panels are proven on
/// the simulated week.
const BUCKET_PANELS: &[&str] = &["Waiting time distribution", "Satisfaction, ratings 1 to 5"];

fn may_be_empty(query: &grafana_kit::DashboardQuery) -> bool {
    // The range's last hour, and the same range a week earlier, may hold no ticket of the fixture day.
    let shifted = query.query.contains("${__to}ms - ");
    shifted
        || matches!(&query.source, grafana_kit::QuerySource::Panel { title, .. } if BUCKET_PANELS.contains(&title.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_with_grafana_macros_and_returns_rows() {
    let influx = loaded_influx().await;
    let mut failures = Vec::new();
    for (name, dashboard) in dashboards() {
        let cases = day::cases(&name);
        for query in dashboard_queries(&dashboard) {
            for day::Case { label: case, substitution, must_have_rows } in &cases {
                let label = format!("{name} {} ({case})", query.label());
                match substitution.render(&query.query) {
                    Err(error) => failures.push(format!("{label}: {error}")),
                    Ok(rendered) => match grafana_kit::run(&influx, DB, &rendered).await {
                        Err(error) => failures.push(format!("{label}: {error}")),
                        Ok(rows) if rows.is_empty() && *must_have_rows && !may_be_empty(&query) => {
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

/// The "Now" table's first query: names, open, waiting, counters open.
const NAMES: (&str, &str) = ("Now", "A");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_offices_figures_equal_those_of_the_fixture_day() {
    let influx = loaded_influx().await;
    let day = Day::from_ndjson(FIXTURE);
    let all = dashboard("queuewatch-all-offices");
    let (from, to) = whole_day("Asia/Jakarta");
    let every_region = region_substitution(VariableValue::All(".*".into()), from, to, "1m");
    // (table, refId): the "Today" and "Now" tables, one query per figure.
    let run = |(table, ref_id): (&str, &str), substitution: Substitution| {
        let query = target_query(&all, table, ref_id);
        let label = format!("{table} {ref_id}");
        let influx = &influx;
        async move { grafana_kit::rows(influx, DB, &label, &query, &substitution).await }
    };

    let names = by_office(&run(NAMES, every_region.clone()).await, "name");
    let name_of = |rows: &[Map<String, Value>], office: &str| {
        rows.iter().find(|row| row["office"] == office).and_then(|row| row["name"].as_str().map(str::to_string))
    };
    let name_rows = run(NAMES, every_region.clone()).await;
    assert_eq!(name_of(&name_rows, "mpp-jkt").as_deref(), Some("MPP Jakarta"));
    assert_eq!(name_of(&name_rows, "mpp-mks").as_deref(), Some("MPP Makassar"));
    assert_eq!(name_of(&name_rows, "pkm-abepura"), None, "{names:?}");

    let waits = run(("Today", "B"), every_region.clone()).await;
    let service_level = by_office(&waits, "of those called");
    let of_everyone = by_office(&waits, "of everyone who came");
    let served = by_office(&run(("Today", "A"), every_region.clone()).await, "served");
    let cancelled = by_office(&run(("Now", "D"), every_region.clone()).await, "left without service");
    let satisfaction = by_office(&run(("Today", "C"), every_region.clone()).await, "satisfaction");
    let breaches = by_office(&run(("Today", "D"), every_region.clone()).await, "breaches");
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
        // Every fixture ticket closes as served, no-show or cancelled: everyone who came is every closed one.
        let closed = expected.served + expected.no_shows + expected.cancelled;
        let within = day.closed_in(office, from, to).filter(|t| t.wait_within_target() == Some(1.0)).count();
        assert_close(
            figure(&of_everyone),
            (closed > 0).then(|| within as f64 / closed as f64),
            &format!("{office} service level of everyone who came"),
        );
        let cancellation = figure(&cancelled).unwrap_or(0.0);
        assert_close(Some(cancellation), Some(expected.cancelled as f64), &format!("{office} left without service"));
    }
    assert!(offices.iter().any(|o| day.figures(o, from, to).cancelled > 0));

    // "Now" at 10:00 in Jakarta (11:00 in Makassar, 12:00 in Jayapura), today so far.
    let now = local_ms("Asia/Jakarta", 0, 10, 0);
    let so_far = region_substitution(VariableValue::All(".*".into()), from, now, "1m");
    let waiting = by_office(&run(("Now", "A"), so_far.clone()).await, "waiting");
    let oldest = by_office(&run(("Now", "B"), so_far.clone()).await, "oldest wait now");
    let top = run(("Most waiting now, top 10", "A"), so_far.clone()).await;
    assert_eq!(by_office(&top, "waiting"), waiting, "the top 10 reads the same rows");
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
        single(&stat("Service level today, of those called", every_region.clone()).await, "service level", "sl"),
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
        let rows = run(("Today", "A"), region_substitution(region.clone(), from, to, "1m")).await;
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
        assert_close(
            stat("Service level, of those called", "service level").await,
            expected.service_level,
            &what("service level of those called"),
        );
        // Every fixture ticket closes as served, no-show or cancelled: everyone who came is every closed ticket.
        let closed: Vec<&model::Ticket> = day.closed_in(office, from, to).collect();
        let within_of_everyone = closed.iter().filter(|t| t.wait_within_target() == Some(1.0)).count() as f64;
        assert_close(
            stat("Service level, of everyone who came", "service level").await,
            (!closed.is_empty()).then(|| within_of_everyone / closed.len() as f64),
            &what("service level of everyone who came"),
        );
        assert_close(
            stat("Left without service", "left without service").await.or(Some(0.0)),
            Some(expected.cancelled as f64),
            &what("left without service (the fixture cancels, nobody is abandoned)"),
        );
        assert_close(stat("Average wait", "average wait").await, expected.average_wait_s, &what("average wait"));
        assert_close(stat("p90 wait", "p90 wait").await, expected.p90_wait_s, &what("p90 wait"));
        assert_close(stat("Satisfaction", "satisfaction").await, expected.satisfaction, &what("satisfaction"));
        // Breaches, one figure per kind.
        let by_kind: BTreeMap<String, f64> = query("Breaches by kind", "A", today.clone())
            .await
            .iter()
            .map(|row| (row["kind"].as_str().unwrap().to_string(), number(row, "breaches").unwrap()))
            .collect();
        let mut expected_by_kind: BTreeMap<String, f64> = BTreeMap::new();
        for (kind, at) in day.tickets.iter().filter(|t| &t.office == office).flat_map(|t| t.breaches()) {
            if (from..=to).contains(&at) {
                *expected_by_kind.entry(kind.to_string()).or_default() += 1.0;
            }
        }
        assert_eq!(by_kind, expected_by_kind, "{}", what("breaches by kind"));
        assert_eq!(by_kind.values().sum::<f64>(), expected.breaches as f64);

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

        // Both service levels per hour.
        for row in query("Service level per hour", "A", today.clone()).await {
            let start = row["time"].as_i64().unwrap() / 1_000_000;
            let closed: Vec<&model::Ticket> = day.closed_in(office, start, start + 3_600_000 - 1).collect();
            let within: Vec<f64> = closed.iter().filter_map(|t| t.wait_within_target()).collect();
            assert_close(
                number(&row, "of those called"),
                model::mean(&within),
                &what(&format!("service level of those called in the hour from {start}")),
            );
            let of_everyone = (!closed.is_empty()).then(|| within.iter().sum::<f64>() / closed.len() as f64);
            assert_close(
                number(&row, "of everyone who came"),
                of_everyone,
                &what(&format!("service level of everyone in the hour from {start}")),
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
    }
}

// ------------------------------------------------------------------ a simulated week

/// The simulated week's offices, one of them renamed to an id with `.` and
/// `-`, which Grafana regex-escapes (`samsat\.bandung-1`).
const DOTTED: &str = "samsat.bandung-1";
/// An office without hours whose one ticket is still waiting: no ticket point, but office rows.
const QUIET: &str = "kiosk.baru-1";
/// The office whose first `counter_opened` is dropped, so one session has busy time and no open time.
const UNSEEN_OPENING: &str = "mpp-jakarta-pusat";
/// Monday 2026-11-02, 06:00 in Jakarta.
const WEEK_START_MS: i64 = 1_793_574_000_000;
const WEEK_DAYS: i64 = 8;

/// A week of four offices with opening hours, walk-outs and people left at
/// closing, replayed into a real InfluxDB, with the simulator's ground truth
/// and its events.
struct SimWeek {
    influx: Influx1,
    truth: Vec<queuewatch::simulate::TicketTruth>,
    /// Every event, parsed, in file order.
    events: Vec<Value>,
    /// (office id, its zone).
    offices: Vec<(String, chrono_tz::Tz)>,
}

fn event_ms(event: &Value) -> i64 {
    match &event["ts"] {
        Value::Number(ms) => ms.as_i64().unwrap(),
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis(),
        other => panic!("ts {other}"),
    }
}

impl SimWeek {
    async fn load() -> SimWeek {
        use queuewatch::simulate::{audit::OfficeWeek, SimOptions};
        use queuewatch::time::Millis;
        let options = SimOptions {
            offices: 4,
            counters: 3,
            seed: 23,
            days: WEEK_DAYS as u32,
            ..SimOptions::new(Millis(WEEK_START_MS))
        };
        let week = OfficeWeek::simulate(&options);
        let mut dropped_opening = false;
        let mut events_text = String::new();
        for line in week.events_ndjson.replace("samsat-bandung", DOTTED).lines() {
            if !dropped_opening && line.contains("\"counter_opened\"") && line.contains(UNSEEN_OPENING) {
                dropped_opening = true;
                continue;
            }
            events_text.push_str(line);
            events_text.push('\n');
        }
        assert!(dropped_opening);
        events_text.push_str(&format!(
            "{{\"type\":\"issued\",\"ts\":{},\"office\":\"{QUIET}\",\"ticket\":\"A-001\",\"service\":\"umum\",\"id\":\"quiet-1\"}}\n",
            WEEK_START_MS + 3_600_000
        ));
        // Its clock passes a few snapshots, so its rows are decided.
        events_text.push_str(&format!(
            "{{\"type\":\"heartbeat\",\"ts\":{},\"office\":\"{QUIET}\"}}\n",
            WEEK_START_MS + 4_200_000
        ));
        let offices_toml = week.offices_toml.replace("[offices.samsat-bandung]", &format!("[offices.\"{DOTTED}\"]"));
        let config = format!("[tracking]\nsnapshot_interval = \"1m\"\n{offices_toml}");
        let influx = Influx1::start();
        common::replay_into(&influx, DB, &config, &events_text).await;
        let mut truth = week.truth;
        for ticket in &mut truth {
            ticket.office = ticket.office.replace("samsat-bandung", DOTTED);
        }
        let events: Vec<Value> = events_text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        let config = queuewatch::config::Config::parse(&config).unwrap();
        let offices = config.offices.iter().map(|(id, office)| (id.to_string(), office.timezone)).collect();
        SimWeek { influx, truth, events, offices }
    }

    /// The whole week and a day either side.
    fn range(&self) -> (i64, i64) {
        (WEEK_START_MS - 86_400_000, WEEK_START_MS + (WEEK_DAYS + 1) * 86_400_000)
    }

    fn zone(&self, office: &str) -> chrono_tz::Tz {
        self.offices.iter().find(|(id, _)| id == office).unwrap().1
    }

    /// The office's local midnights of the week's days: (date, from_ms, to_ms).
    fn days(&self, office: &str) -> Vec<(NaiveDate, i64, i64)> {
        let zone = self.zone(office);
        let first = zone.timestamp_millis_opt(WEEK_START_MS).unwrap().date_naive();
        (0..WEEK_DAYS)
            .map(|offset| {
                let date = first + chrono::Duration::days(offset);
                let midnight = |date: NaiveDate| {
                    zone.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap()).unwrap().timestamp_millis()
                };
                (date, midnight(date), midnight(date + chrono::Duration::days(1)) - 1)
            })
            .collect()
    }

    fn local_date(&self, office: &str, at_ms: i64) -> NaiveDate {
        self.zone(office).timestamp_millis_opt(at_ms).unwrap().date_naive()
    }

    /// The truth's tickets that left without service on `date`, as the
    /// tracker can know them: cancelled (the point at the cancel), walked out
    /// or left at closing (abandoned, the point at that day's close), of a
    /// segment it saw.
    fn left_without_service(&self, office: &str, date: NaiveDate) -> u64 {
        use queuewatch::simulate::TicketEnd;
        self.truth
            .iter()
            .filter(|t| t.office == office && t.seen)
            .filter(|t| match t.end {
                TicketEnd::Cancelled => self.local_date(office, t.end_at.0) == date,
                TicketEnd::WalkedOut | TicketEnd::LeftAtClose => self.local_date(office, t.issued_at.0) == date,
                TicketEnd::Served | TicketEnd::NoShow => false,
            })
            .count() as u64
    }

    /// The truth's tickets served on `date` (a served ticket always has a point: its counter events were seen).
    fn served(&self, office: &str, date: NaiveDate) -> u64 {
        use queuewatch::simulate::TicketEnd;
        self.truth
            .iter()
            .filter(|t| t.office == office && t.end == TicketEnd::Served && self.local_date(office, t.end_at.0) == date)
            .count() as u64
    }

    fn office_events<'a>(&'a self, office: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["office"] == office)
    }

    /// Segments opened, as the queue gauge counts them: at the first
    /// snapshot at or after the event (snapshots every whole minute), by
    /// service (`issued`, and `transferred` for its `to_service`).
    fn arrivals(&self, office: &str) -> Vec<(String, i64)> {
        self.office_events(office)
            .filter_map(|e| match e["type"].as_str().unwrap() {
                "issued" => Some((e["service"].as_str().unwrap().to_string(), event_ms(e))),
                "transferred" => Some((e["to_service"].as_str().unwrap().to_string(), event_ms(e))),
                _ => None,
            })
            .map(|(service, at)| (service, (at + 59_999).div_euclid(60_000) * 60_000))
            .collect()
    }

    /// Waits (issue or transfer to first call or start), in ms, by the rules of docs/tracking.md.
    fn waits_ms(&self, office: &str) -> Vec<i64> {
        let rank = |kind: &str| match kind {
            "issued" => 0,
            "called" => 1,
            "recalled" => 2,
            "started" => 3,
            _ => 4,
        };
        let mut events: Vec<&Value> = self.office_events(office).collect();
        events.sort_by_key(|e| (event_ms(e), rank(e["type"].as_str().unwrap())));
        let mut open: BTreeMap<String, (Option<i64>, bool)> = BTreeMap::new();
        let mut waits = Vec::new();
        for event in events {
            let Some(ticket) = event["ticket"].as_str().map(str::to_string) else { continue };
            let at = event_ms(event);
            match event["type"].as_str().unwrap() {
                "issued" | "transferred" => {
                    open.insert(ticket, (Some(at), false));
                }
                "called" | "started" => {
                    let segment = open.entry(ticket).or_insert((None, false));
                    // A call after the issue day's close + grace (15:30 + 30 min, the
                    // simulated hours) finds the segment closed as abandoned.
                    let in_time = segment.0.is_none_or(|issued| at <= self.close_and_grace_ms(office, issued));
                    if !segment.1 && in_time {
                        segment.1 = true;
                        waits.extend(segment.0.map(|issued| at - issued));
                    }
                }
                "finished" | "no_show" | "cancelled" => {
                    open.remove(&ticket);
                }
                _ => {}
            }
        }
        waits
    }

    /// The simulated day's close (15:30 local) + the default close grace (30 min) of the day of `at_ms`.
    fn close_and_grace_ms(&self, office: &str, at_ms: i64) -> i64 {
        let zone = self.zone(office);
        let date = self.local_date(office, at_ms);
        zone.from_local_datetime(&date.and_hms_opt(16, 0, 0).unwrap()).unwrap().timestamp_millis()
    }

    async fn rows(&self, label: &str, query: &str, substitution: &Substitution) -> Vec<Map<String, Value>> {
        grafana_kit::rows(&self.influx, DB, label, query, substitution).await
    }
}

fn sim_substitution(
    office: VariableValue,
    zone: chrono_tz::Tz,
    (from, to): (i64, i64),
    interval: &str,
) -> Substitution {
    Substitution::new(from, to, interval)
        .with("office", office)
        .with("service", VariableValue::All(".*".into()))
        .with("tz", VariableValue::Raw(zone.name().into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn office_panels_equal_the_simulated_weeks_truth_and_events() {
    let week = SimWeek::load().await;
    let board = dashboard("queuewatch-office");
    let offices: Vec<String> = week.offices.iter().map(|(id, _)| id.clone()).collect();
    assert!(offices.contains(&DOTTED.to_string()));

    // The office variable lists offices from their rows in the range: the one that only sent a heartbeat too.
    let variable = board["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "office").unwrap();
    let (from, to) = week.range();
    let listed: Vec<String> = week
        .rows("variable office", variable["query"].as_str().unwrap(), &Substitution::new(from, to, "1m"))
        .await
        .iter()
        .map(|row| row["value"].as_str().unwrap().to_string())
        .collect();
    for office in offices.iter().chain([&QUIET.to_string()]) {
        assert!(listed.contains(office), "{office} not in {listed:?}");
    }

    for office in &offices {
        let zone = week.zone(office);
        let whole = sim_substitution(VariableValue::One(office.clone()), zone, week.range(), "1h");
        let what = |figure: &str| format!("{office} ({zone}) {figure}");
        let panel = |title: &str, ref_id: &str| target_query(&board, title, ref_id);

        // Left without service, each day of the office's zone, against the truth.
        let mut left_total = 0;
        for (date, from, to) in week.days(office) {
            let day = sim_substitution(VariableValue::One(office.clone()), zone, (from, to), "1h");
            let rows = week.rows("left", &panel("Left without service", "A"), &day).await;
            let expected = week.left_without_service(office, date);
            left_total += expected;
            assert_close(
                single(&rows, "left without service", "left").or(Some(0.0)),
                Some(expected as f64),
                &what(&format!("left without service on {date}")),
            );
        }
        assert!(left_total > 0, "{}", what("someone left without service during the week"));

        // The 30-day trend: one bucket per local day, served and left as the truth says.
        let trend_range = (week.range().1 - 30 * 86_400_000, week.range().1);
        let trend = sim_substitution(VariableValue::One(office.clone()), zone, trend_range, "1h");
        let served_rows = week.rows("trend A", &panel("Daily trend, last 30 days", "A"), &trend).await;
        let left_rows = week.rows("trend B", &panel("Daily trend, last 30 days", "B"), &trend).await;
        for (date, from, _) in week.days(office) {
            let at = |rows: &[Map<String, Value>], column: &str| {
                rows.iter()
                    .find(|row| row["time"].as_i64() == Some(from * 1_000_000))
                    .and_then(|row| number(row, column))
            };
            assert_close(
                at(&served_rows, "served"),
                Some(week.served(office, date) as f64),
                &what(&format!("served on {date}, a bucket from local midnight")),
            );
            assert_close(
                at(&left_rows, "left without service"),
                Some(week.left_without_service(office, date) as f64),
                &what(&format!("left on {date} in the trend")),
            );
        }

        // Arrivals per weekday and hour of the office's zone, from the events.
        let mut expected: BTreeMap<(u32, u32), f64> = BTreeMap::new();
        for (_, at) in week.arrivals(office) {
            let local = zone.timestamp_millis_opt(at).unwrap();
            *expected.entry((local.weekday().num_days_from_monday(), local.hour())).or_default() += 1.0;
        }
        let mut seen: BTreeMap<(u32, u32), f64> = BTreeMap::new();
        for row in week.rows("heatmap", &panel("Arrivals by weekday and hour", "A"), &whole).await {
            let local = zone.timestamp_millis_opt(row["time"].as_i64().unwrap() / 1_000_000).unwrap();
            assert_eq!(local.minute(), 0, "{}", what("hourly buckets start on the hour of the zone"));
            let arrivals = number(&row, "arrivals").unwrap_or(0.0);
            if arrivals > 0.0 {
                *seen.entry((local.weekday().num_days_from_monday(), local.hour())).or_default() += arrivals;
            }
        }
        assert_eq!(seen, expected, "{}", what("arrivals per weekday and hour"));

        // The waiting-time distribution, from the events.
        let waits = week.waits_ms(office);
        let bounds =
            [(0, 300_000), (300_000, 600_000), (600_000, 900_000), (900_000, 1_800_000), (1_800_000, i64::MAX)];
        let names = ["0-5 min", "5-10 min", "10-15 min", "15-30 min", "> 30 min"];
        for ((ref_id, (low, high)), name) in ["A", "B", "C", "D", "E"].iter().zip(bounds).zip(names) {
            let rows = week.rows(name, &panel("Waiting time distribution", ref_id), &whole).await;
            let expected = waits.iter().filter(|wait| (low..high).contains(*wait)).count();
            assert_close(
                single(&rows, name, name).or(Some(0.0)),
                Some(expected as f64),
                &what(&format!("waits {name}")),
            );
        }

        // Satisfaction: ratings 1 to 5 from the events; the response rate's two parts.
        let ratings: Vec<i64> = week
            .office_events(office)
            .filter(|e| e["type"] == "feedback")
            .map(|e| e["rating"].as_i64().unwrap())
            .collect();
        for (rating, ref_id) in (1..=5).zip(["A", "B", "C", "D", "E"]) {
            let rows = week.rows("ratings", &panel("Satisfaction, ratings 1 to 5", ref_id), &whole).await;
            let expected = ratings.iter().filter(|r| **r == rating).count();
            assert_close(
                single(&rows, &rating.to_string(), "rating").or(Some(0.0)),
                Some(expected as f64),
                &what(&format!("ratings of {rating}")),
            );
        }
        let rate = |ref_id: &'static str, column: &'static str| {
            let query = panel("Satisfaction response rate", ref_id);
            let week = &week;
            let whole = whole.clone();
            async move { single(&week.rows("response rate", &query, &whole).await, column, column) }
        };
        let served_week: u64 = week.days(office).iter().map(|(date, _, _)| week.served(office, *date)).sum();
        assert_close(rate("A", "ratings").await, Some(ratings.len() as f64), &what("ratings"));
        assert_close(rate("B", "served").await, Some(served_week as f64), &what("served, the rate's denominator"));
        assert!(!ratings.is_empty() && ratings.len() as u64 <= served_week);

        // Per service: arrivals from the events; both service levels and the waits from the points themselves.
        let per_service = |ref_id: &str| {
            let query = panel("Per service", ref_id);
            let week = &week;
            let whole = whole.clone();
            async move { week.rows("per service", &query, &whole).await }
        };
        let arrivals = per_service("A").await;
        let figures = per_service("C").await;
        let mut by_service: BTreeMap<String, f64> = BTreeMap::new();
        for (service, _) in week.arrivals(office) {
            *by_service.entry(service).or_default() += 1.0;
        }
        for (service, expected) in &by_service {
            let row = arrivals.iter().find(|row| row["service"] == service.as_str());
            assert_close(
                row.and_then(|r| number(r, "arrivals")),
                Some(*expected),
                &what(&format!("{service} arrivals")),
            );
        }
        let raw = week
            .rows(
                "raw points",
                &format!(
                    "SELECT \"wait_within_target\", \"recalls\", \"wait_s\" FROM \"ticket\" WHERE \"office\" = '{office}' AND $timeFilter GROUP BY \"service\""
                ),
                &whole,
            )
            .await;
        for row in &figures {
            let service = row["service"].as_str().unwrap();
            let points: Vec<&Map<String, Value>> = raw.iter().filter(|r| r["service"] == service).collect();
            let within: Vec<f64> = points.iter().filter_map(|p| number(p, "wait_within_target")).collect();
            let waits: Vec<f64> = points.iter().filter_map(|p| number(p, "wait_s")).collect();
            let label = |figure: &str| what(&format!("{service} {figure}"));
            assert_close(
                number(row, "service level, of those called"),
                model::mean(&within),
                &label("of those called"),
            );
            assert_close(
                number(row, "service level, of everyone"),
                Some(within.iter().sum::<f64>() / points.len() as f64),
                &label("of everyone who came"),
            );
            assert_close(number(row, "average wait"), model::mean(&waits), &label("average wait"));
            assert_close(number(row, "p90 wait"), model::percentile(&waits, 90.0), &label("p90 wait"));
            assert_close(number(row, "max wait"), waits.iter().copied().reduce(f64::max), &label("max wait"));
        }
        assert_eq!(figures.len(), by_service.len(), "{}", what("a row per service"));

        // Occupancy and busy share never pass 100 %, also with a session whose opening was not seen.
        let sessions = week
            .rows(
                "raw sessions",
                &format!("SELECT \"busy_s\", \"open_s\" FROM \"counter\" WHERE \"office\" = '{office}' AND $timeFilter GROUP BY \"counter\""),
                &whole,
            )
            .await;
        let unseen_openings = sessions.iter().filter(|s| number(s, "open_s").is_none()).count();
        assert_eq!(unseen_openings > 0, office == UNSEEN_OPENING, "{}", what("sessions without open_s"));
        for (title, column) in [("Occupancy per counter", "occupancy"), ("Per counter", "busy share")] {
            let ref_id = if title == "Per counter" { "B" } else { "A" };
            for row in week.rows(title, &panel(title, ref_id), &whole).await {
                let counter = row["counter"].as_str().unwrap();
                let consistent: Vec<&Map<String, Value>> =
                    sessions.iter().filter(|s| s["counter"] == counter && number(s, "open_s").is_some()).collect();
                let busy: f64 = consistent.iter().filter_map(|s| number(s, "busy_s")).sum();
                let open: f64 = consistent.iter().filter_map(|s| number(s, "open_s")).sum();
                let share = number(&row, column).unwrap();
                assert!(share <= 1.0, "{}", what(&format!("{title} of {counter}: {share}")));
                assert_close(Some(share), Some(busy / open), &what(&format!("{title} of {counter}")));
            }
        }
    }

    // One office with `.` and `-` in its id, and two offices at once, as Grafana renders them.
    let zone = week.zone(DOTTED);
    let served_query = target_query(&board, "Served", "A");
    let served_in_week =
        |office: &str| -> f64 { week.days(office).iter().map(|(date, _, _)| week.served(office, *date) as f64).sum() };
    for (office, expected) in [
        (VariableValue::One(DOTTED.into()), served_in_week(DOTTED)),
        (
            VariableValue::Many(vec![DOTTED.into(), "mpp-jakarta-pusat".into()]),
            served_in_week(DOTTED) + served_in_week("mpp-jakarta-pusat"),
        ),
    ] {
        let substitution = sim_substitution(office.clone(), zone, week.range(), "1h");
        let rows = week.rows("served", &served_query, &substitution).await;
        assert_close(single(&rows, "served", "served"), Some(expected), &format!("served at {office:?}"));
    }
    // $service: the services' figures add up to All's.
    let office = VariableValue::One(DOTTED.into());
    let services: Vec<String> = week
        .rows(
            "variable service",
            board["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "service").unwrap()["query"]
                .as_str()
                .unwrap(),
            &sim_substitution(office.clone(), zone, week.range(), "1h"),
        )
        .await
        .iter()
        .map(|row| row["value"].as_str().unwrap().to_string())
        .collect();
    assert!(services.len() >= 2, "{services:?}");
    for title in ["Served", "Left without service"] {
        let query = target_query(&board, title, "A");
        let column = if title == "Served" { "served" } else { "left without service" };
        let all = single(
            &week.rows(title, &query, &sim_substitution(office.clone(), zone, week.range(), "1h")).await,
            column,
            title,
        );
        let mut sum = 0.0;
        for service in &services {
            let one = sim_substitution(office.clone(), zone, week.range(), "1h")
                .with("service", VariableValue::One(service.clone()));
            sum += single(&week.rows(title, &query, &one).await, column, title).unwrap_or(0.0);
        }
        assert_close(Some(sum), all, &format!("{title}: the services add up to All"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_offices_week_over_week_and_left_without_service_equal_the_simulated_weeks_truth() {
    let week = SimWeek::load().await;
    let all = dashboard("queuewatch-all-offices");
    let zone: chrono_tz::Tz = "Asia/Jakarta".parse().unwrap();
    let office = "mpp-jakarta-pusat";
    let days = week.days(office);
    // The week's last day and the same weekday a week before it.
    let (date, from, to) = days[7];
    let (week_ago, _, _) = days[0];
    assert_eq!(date - week_ago, chrono::Duration::days(7));
    let substitution = Substitution::new(from, to, "1h")
        .with("region", VariableValue::All(".*".into()))
        .with("tz", VariableValue::Raw(zone.name().into()));
    let rows = |title: &str, ref_id: &str| {
        let query = target_query(&all, title, ref_id);
        let week = &week;
        let substitution = substitution.clone();
        async move { week.rows("all offices", &query, &substitution).await }
    };
    let served_now = by_office(&rows("Today", "A").await, "served");
    let served_before = by_office(&rows("Today", "E").await, "served a week ago");
    let left = by_office(&rows("Now", "D").await, "left without service");
    for (office, _) in &week.offices {
        let office_days = week.days(office);
        assert_close(
            served_now.get(office).copied().flatten(),
            Some(week.served(office, office_days[7].0) as f64),
            &format!("{office} served on the last day"),
        );
        assert_close(
            served_before.get(office).copied().flatten(),
            Some(week.served(office, office_days[0].0) as f64),
            &format!("{office} served a week before (7-day shift)"),
        );
        assert_close(
            left.get(office).copied().flatten().or(Some(0.0)),
            Some(week.left_without_service(office, office_days[7].0) as f64),
            &format!("{office} left without service on the last day"),
        );
    }
    // Both service levels a week ago, against the points of that day read directly.
    let levels_before = rows("Today", "F").await;
    let raw = week
        .rows(
            "raw",
            "SELECT \"wait_within_target\", \"recalls\" FROM \"ticket\" WHERE time >= ${__from}ms - 7d AND time <= ${__to}ms - 7d GROUP BY \"office\"",
            &substitution,
        )
        .await;
    for row in &levels_before {
        let office = row["office"].as_str().unwrap();
        let points: Vec<_> = raw.iter().filter(|r| r["office"] == office).collect();
        let within: Vec<f64> = points.iter().filter_map(|p| number(p, "wait_within_target")).collect();
        assert_close(number(row, "of those called a week ago"), model::mean(&within), &format!("{office} a week ago"));
        assert_close(
            number(row, "of everyone a week ago"),
            Some(within.iter().sum::<f64>() / points.len() as f64),
            &format!("{office} of everyone a week ago"),
        );
    }
    // The service level of the range's last hour reads only that hour.
    let last_hour = by_office(&rows("Now", "C").await, "service level, last hour");
    let raw_hour = week
        .rows(
            "raw hour",
            "SELECT MEAN(\"wait_within_target\") AS \"sl\" FROM \"ticket\" WHERE time > ${__to}ms - 1h AND time <= ${__to}ms GROUP BY \"office\"",
            &substitution,
        )
        .await;
    assert_eq!(last_hour, by_office(&raw_hour, "sl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_dashboard_reads_heartbeat_rows_and_each_offices_rejected_messages() {
    let influx = loaded_influx().await;
    let day = Day::from_ndjson(FIXTURE);
    let board = dashboard("queuewatch-daemon");
    let (from, to) = whole_day("Asia/Jakarta");
    // Two instances' heartbeat rows a minute apart; the second restarts after 5 minutes (counts from zero).
    influx.write(DB, "ns", &day::heartbeat_lines()).await;
    let substitution = |instance: VariableValue| {
        Substitution::new(from, to, "1m")
            .with("instance", instance)
            .with("tz", VariableValue::Raw("Asia/Jakarta".into()))
    };
    let all = substitution(VariableValue::All(".*".into()));
    let query = |title: &str| target_query(&board, title, "A");
    let rows =
        grafana_kit::rows(&influx, DB, "accepted", &query("Events accepted and messages rejected per minute"), &all)
            .await;
    let sum = |instance: &str, column: &str| -> f64 {
        rows.iter().filter(|r| r["instance"] == instance).filter_map(|r| number(r, column)).sum()
    };
    assert_close(Some(sum("queuewatch-a.1", "accepted")), Some(63.0), "a: 9 minutes of 7");
    assert_close(Some(sum("queuewatch-a.1", "rejected")), Some(9.0), "a: one a minute");
    // b: 4 a minute, except the minute of its restart, which counts from zero again.
    assert_close(Some(sum("queuewatch-b", "accepted")), Some(32.0), "b: 8 minutes of 4");
    let refused = grafana_kit::rows(&influx, DB, "refused", &query("Points refused in the range"), &all).await;
    assert_close(single(&refused, "points refused", "refused"), Some(1.0), "one point refused by b");
    let one = substitution(VariableValue::One("queuewatch-a.1".into()));
    let uptime = grafana_kit::rows(&influx, DB, "uptime", &query("Last heartbeat row"), &one).await;
    assert_close(single(&uptime, "uptime", "uptime"), Some(540.0), "a's newest row");

    // The messages each office's machines sent, moved here from the office dashboard.
    let per_office = grafana_kit::rows(&influx, DB, "per office", &query("Messages per office"), &all).await;
    for (office, _) in OFFICES {
        let rejected = by_office(&per_office, "rejected").get(*office).copied().flatten();
        assert_close(
            rejected,
            Some(day.rejected.get(*office).copied().unwrap_or(0) as f64),
            &format!("{office} rejected"),
        );
    }
    assert!(day.rejected.values().sum::<u64>() > 0);
}

// ------------------------------------------------------------------ installed together

/// What `deploy/README.md` section 5 installs (and the alert rules of
/// section 6), copied into a temporary root the way `install` would.
fn installed_kit() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &str| {
        let to = root.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|error| panic!("{}: {error}", from.display()));
    };
    let kit = grafana_dir();
    for kind in ["datasources", "dashboards", "alerting"] {
        copy(
            &kit.join(format!("provisioning/{kind}/queuewatch.yaml")),
            &format!("/etc/grafana/provisioning/{kind}/queuewatch.yaml"),
        );
    }
    for (name, _) in dashboards() {
        copy(&kit.join("dashboards").join(&name), &format!("/var/lib/grafana/dashboards/queuewatch/{name}"));
    }
    root
}

#[test]
fn the_installed_kit_has_one_folder_resolvable_datasources_and_links_to_existing_dashboards_and_variables() {
    let root = installed_kit();
    let at = |path: &str| root.path().join(path.trim_start_matches('/'));
    let datasources = yaml(&at("/etc/grafana/provisioning/datasources/queuewatch.yaml"));
    let datasource_uids: BTreeSet<&str> =
        datasources["datasources"].as_array().unwrap().iter().filter_map(|d| d["uid"].as_str()).collect();
    let provider = &yaml(&at("/etc/grafana/provisioning/dashboards/queuewatch.yaml"))["providers"][0];
    let alerting = yaml(&at("/etc/grafana/provisioning/alerting/queuewatch.yaml"));

    // One folder. Grafana's file provisioning of alert rules names a group's
    // folder by its title (`folder`), and so does the dashboard provider, without a
    // uid: whichever Grafana provisions first creates the folder and the other finds
    // it by title (a uid on one side only would make two folders, or be refused).
    let folder_title = provider["folder"].as_str().unwrap();
    assert!(provider.get("folderUid").is_none(), "the provider names its folder by title only");
    for group in alerting["groups"].as_array().unwrap() {
        assert_eq!(group["folder"].as_str(), Some(folder_title), "rule group {} folder", group["name"]);
        assert!(group.get("folderUid").or(group.get("folderUID")).is_none(), "rule group {}", group["name"]);
        // Every rule's queries name a provisioned datasource or Grafana's expressions.
        for rule in group["rules"].as_array().unwrap() {
            for query in rule["data"].as_array().unwrap() {
                let uid = query["datasourceUid"].as_str().unwrap();
                assert!(uid == "__expr__" || datasource_uids.contains(uid), "rule {}: datasource {uid}", rule["uid"]);
            }
        }
    }

    // The provider loads the folder the dashboards were copied to, and every link resolves.
    let folder = at(provider["options"]["path"].as_str().unwrap());
    let mut installed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut boards = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let board: Value = serde_json::from_str(&read(&entry.unwrap().path())).unwrap();
        let variables = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        installed.insert(board["uid"].as_str().unwrap().to_string(), variables);
        boards.push(board);
    }
    assert_eq!(installed.len(), 3, "{installed:?}");
    let mut checked = 0;
    for board in &boards {
        let mut urls: Vec<String> = all_panels(board).into_iter().flat_map(panel_links).collect();
        urls.extend(
            board["links"].as_array().into_iter().flatten().filter_map(|l| l["url"].as_str().map(str::to_string)),
        );
        for url in urls {
            let Some(rest) = url.strip_prefix("/d/") else { continue };
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let uid = path.split('/').next().unwrap();
            let variables =
                installed.get(uid).unwrap_or_else(|| panic!("{}: link to unknown dashboard {url}", board["uid"]));
            for parameter in query.split('&') {
                if let Some(name) = parameter.strip_prefix("var-").and_then(|p| p.split('=').next()) {
                    assert!(
                        variables.contains(name),
                        "{}: {url} sets ${name}, which {uid} does not define",
                        board["uid"]
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "links checked: {checked}");
}
