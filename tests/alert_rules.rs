//! The Grafana alert rules of `deploy/grafana/provisioning/alerting/queuewatch.yaml`, proven
//! without Grafana (it cannot be installed here):
//!
//! - their structure: what Grafana's provisioning requires and what this project promises
//!   (uids, titles, refIds, state values, the datasource uid, no dashboard variables);
//! - their behaviour: each rule runs against a real InfluxDB 1.x loaded with a fixture made to
//!   breach it and with a healthy one (`tests/data/alerting/`, replayed by `queuewatch replay`;
//!   line protocol only for rows replay never writes: `silent`, and the `queuewatch` heartbeat).
//!   Its query runs with `$timeFilter` rendered the way Grafana's InfluxQL backend renders it
//!   (`time > FROMms and time < TOms`, from the query's `relativeTimeRange` and a fixed "now"),
//!   then the server-side expressions are evaluated per series the way Grafana evaluates them:
//!   `reduce` (its reducer and its mode: strict, dropNN, replaceNN), `threshold`, `math` (labels
//!   joined like Grafana's: equal or a subset), no data mapped by `noDataState`, and the
//!   Normal → Pending → Alerting state machine of `for`, at the group's interval.
//!
//! The fixtures are a morning of 2026-11-25 in Asia/Jakarta, "now" is 10:00 there.

mod common;
#[path = "alerting/fixtures.rs"]
mod fixtures;
#[path = "alerting/week.rs"]
mod week;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::Influx1;
use fixtures::{at, fixture_path, fixture_text, heartbeat_rows, render_macros, NOW};
use serde::Deserialize;
use serde_json::Value;

const PROVISIONING_FILE: &str = "deploy/grafana/provisioning/alerting/queuewatch.yaml";
const DATASOURCE_UID: &str = "queuewatch-influxdb";

// ---------------------------------------------------------------------------------------------
// Structure
// ---------------------------------------------------------------------------------------------

#[test]
fn alert_provisioning_parses_and_every_rule_is_well_formed() {
    let provisioning = provisioning();
    assert_eq!(provisioning.api_version, 1);
    assert!(!provisioning.groups.is_empty(), "no rule group");
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for group in &provisioning.groups {
        if let Err(error) = humantime::parse_duration(&group.interval) {
            problems.push(format!("group {}: interval {:?}: {error}", group.name, group.interval));
        }
        assert!(!group.folder.is_empty(), "group {} has no folder", group.name);
        for rule in &group.rules {
            problems.extend(rule_problems(rule).into_iter().map(|problem| format!("rule {}: {problem}", rule.uid)));
            if !uids.insert(rule.uid.clone()) {
                problems.push(format!("rule uid {} is used twice", rule.uid));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let expected: BTreeSet<String> = [
        "queuewatch-service-level",
        "queuewatch-waiting-past-target",
        "queuewatch-waiting-no-counter",
        "queuewatch-office-silent",
        "queuewatch-messages-rejected",
        "queuewatch-no-events",
        "queuewatch-office-not-open",
        "queuewatch-oldest-wait-twice-target",
        "queuewatch-counter-idle",
        "queuewatch-points-refused",
        "queuewatch-mqtt-session-lost",
        "queuewatch-stopped",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(uids, expected);
}

/// The rules about the daemon as a whole, not one office.
const DAEMON_RULES: [&str; 4] =
    ["queuewatch-stopped", "queuewatch-no-events", "queuewatch-points-refused", "queuewatch-mqtt-session-lost"];

#[test]
fn only_the_heartbeat_rule_alerts_on_no_data_the_others_keep_their_state_and_office_rules_carry_office_and_region() {
    for rule in all_rules() {
        // An outage of queuewatch, InfluxDB or the broker empties every query: no office rule may
        // then resolve (or fire) for a queue that did not change.
        let expected = if rule.uid == "queuewatch-stopped" { "Alerting" } else { "KeepLast" };
        assert_eq!(rule.no_data_state, expected, "rule {}", rule.uid);
        assert_eq!(rule.exec_err_state, if rule.uid == "queuewatch-stopped" { "Alerting" } else { "KeepLast" });
        let per_office = !DAEMON_RULES.contains(&rule.uid.as_str());
        let office_queries: Vec<&str> = rule
            .data
            .iter()
            .filter_map(|query| query.model.get("query").and_then(Value::as_str))
            // The guard every office rule has: whether queuewatch writes at all.
            .filter(|query| !query.contains("FROM \"queuewatch\""))
            .collect();
        let groups_by_office = !office_queries.is_empty()
            && office_queries.iter().all(|query| {
                // Per office, or per service or counter of an office (joined with the office's `open`).
                ["", ", \"service\"", ", \"counter\""]
                    .iter()
                    .any(|finer| query.ends_with(&format!("GROUP BY \"office\", \"region\"{finer}")))
            });
        assert_eq!(groups_by_office, per_office, "rule {}: GROUP BY \"office\", \"region\"", rule.uid);
        for key in ["summary", "description", "runbook"] {
            let text = rule.annotations.get(key).map(String::as_str).unwrap_or_default();
            assert!(text.len() > 20, "rule {}: annotation {key} missing or too short: {text:?}", rule.uid);
        }
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(matches!(severity, Some("page" | "warning")), "rule {}: severity {severity:?}", rule.uid);
        if per_office {
            let link = rule.annotations.get("dashboard").map(String::as_str).unwrap_or_default();
            assert_eq!(
                link, "{{ externalURL }}/d/queuewatch-office/office?var-office={{ $labels.office }}",
                "rule {}: a link to the office's dashboard",
                rule.uid
            );
        }
    }
}

#[test]
fn rules_that_page_need_the_office_open_and_rolling_windows_wait_ten_minutes_or_more() {
    for rule in all_rules() {
        let reads_open = rule.data.iter().any(|query| {
            query.model.get("query").and_then(Value::as_str).is_some_and(|query| query.contains("\"open\""))
        });
        let pages = rule.labels.get("severity").map(String::as_str) == Some("page");
        if pages && rule.uid != "queuewatch-stopped" {
            assert!(reads_open, "rule {} pages without asking whether the office is open", rule.uid);
        }
        if ["queuewatch-service-level", "queuewatch-messages-rejected", "queuewatch-waiting-past-target"]
            .contains(&rule.uid.as_str())
        {
            let for_duration = humantime::parse_duration(&rule.for_duration).unwrap();
            assert!(for_duration >= std::time::Duration::from_secs(600), "rule {}: for {for_duration:?}", rule.uid);
        }
    }
}

#[test]
fn contact_point_reads_its_addresses_from_the_environment_and_the_policy_groups_by_office_and_rule() {
    let provisioning = provisioning();
    let [contact_point] = provisioning.contact_points.as_slice() else {
        panic!("expected one contact point: {:?}", provisioning.contact_points)
    };
    let settings: BTreeMap<&str, &Value> =
        contact_point.receivers.iter().map(|receiver| (receiver.kind.as_str(), &receiver.settings)).collect();
    assert_eq!(settings["webhook"]["url"], "$QUEUEWATCH_ALERT_WEBHOOK_URL");
    assert_eq!(settings["email"]["addresses"], "$QUEUEWATCH_ALERT_EMAIL");
    let receiver_uids: BTreeSet<&str> = contact_point.receivers.iter().map(|receiver| receiver.uid.as_str()).collect();
    assert_eq!(receiver_uids.len(), contact_point.receivers.len(), "receiver uids repeat");
    assert!(receiver_uids.iter().all(|uid| is_well_formed_uid(uid)), "{receiver_uids:?}");

    let [policy] = provisioning.policies.as_slice() else { panic!("expected one policy: {:?}", provisioning.policies) };
    assert_eq!(policy.receiver, contact_point.name);
    let group_by: BTreeSet<&str> = policy.group_by.iter().map(String::as_str).collect();
    assert_eq!(group_by, BTreeSet::from(["alertname", "office"]));
    // Child routes: pages and warnings apart, and every `silent` office in one notification.
    let matchers: Vec<Vec<Vec<String>>> = policy.routes.iter().map(|route| route.object_matchers.clone()).collect();
    for severity in ["page", "warning"] {
        assert!(matchers.contains(&vec![vec!["severity".into(), "=".into(), severity.into()]]), "{matchers:?}");
    }
    let silent_title = rule("queuewatch-office-silent").title;
    let silent = policy
        .routes
        .iter()
        .find(|route| route.object_matchers == vec![vec!["alertname".to_string(), "=".into(), silent_title.clone()]])
        .expect("a route for silent offices");
    assert_eq!(silent.group_by.as_deref(), Some(&["alertname".to_string()][..]));
    assert!(policy.routes.iter().all(|route| route.receiver == contact_point.name));
}

fn rule_problems(rule: &Rule) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_well_formed_uid(&rule.uid) {
        problems.push("uid is not 1-40 letters, digits, '-' or '_'".to_string());
    }
    if rule.title.is_empty() || rule.title.chars().count() > 190 {
        problems.push(format!("title is empty or longer than 190 characters: {:?}", rule.title));
    }
    if let Err(error) = humantime::parse_duration(&rule.for_duration) {
        problems.push(format!("for {:?}: {error}", rule.for_duration));
    }
    if !["NoData", "Alerting", "OK", "KeepLast"].contains(&rule.no_data_state.as_str()) {
        problems.push(format!("noDataState {:?}", rule.no_data_state));
    }
    if !["Error", "Alerting", "OK", "KeepLast"].contains(&rule.exec_err_state.as_str()) {
        problems.push(format!("execErrState {:?}", rule.exec_err_state));
    }
    let ref_ids: Vec<&str> = rule.data.iter().map(|query| query.ref_id.as_str()).collect();
    if ref_ids.iter().collect::<BTreeSet<_>>().len() != ref_ids.len() {
        problems.push(format!("refIds repeat: {ref_ids:?}"));
    }
    if !ref_ids.contains(&rule.condition.as_str()) {
        problems.push(format!("condition {:?} names none of {ref_ids:?}", rule.condition));
    }
    if rule.labels.values().any(|value| value.contains('$')) {
        // Grafana interpolates environment variables into labels when it provisions them.
        problems.push(format!("a label holds a '$': {:?}", rule.labels));
    }
    for (position, query) in rule.data.iter().enumerate() {
        let model_ref_id = query.model.get("refId").and_then(Value::as_str);
        if model_ref_id.is_some_and(|model_ref_id| model_ref_id != query.ref_id) {
            problems.push(format!("{}: model.refId {model_ref_id:?}", query.ref_id));
        }
        if query.datasource_uid == "__expr__" {
            let expression = query.model.get("expression").and_then(Value::as_str).unwrap_or_default();
            let kind = query.model.get("type").and_then(Value::as_str).unwrap_or_default();
            let referenced = match kind {
                "math" => math_references(expression),
                "reduce" | "threshold" => vec![expression.to_string()],
                other => {
                    problems.push(format!("{}: expression type {other:?}", query.ref_id));
                    continue;
                }
            };
            // An expression reads refIds defined before it.
            let earlier = &ref_ids[..position];
            for name in referenced {
                if !earlier.contains(&name.as_str()) {
                    problems.push(format!("{}: expression names {name:?}, not an earlier refId", query.ref_id));
                }
            }
            if kind == "reduce" {
                let reducer = query.model.get("reducer").and_then(Value::as_str).unwrap_or_default();
                let mode = query.model.pointer("/settings/mode").and_then(Value::as_str).unwrap_or_default();
                if !["last", "mean", "sum", "min", "max", "count"].contains(&reducer) {
                    problems.push(format!("{}: reducer {reducer:?}", query.ref_id));
                }
                if !["strict", "dropNN", "replaceNN"].contains(&mode) {
                    problems.push(format!("{}: reduce mode {mode:?}", query.ref_id));
                }
            }
        } else {
            if query.datasource_uid != DATASOURCE_UID {
                problems.push(format!("{}: datasource uid {:?}", query.ref_id, query.datasource_uid));
            }
            if query.relative_time_range.is_none() {
                problems.push(format!("{}: no relativeTimeRange", query.ref_id));
            }
            if query.model.get("rawQuery") != Some(&Value::Bool(true)) {
                problems.push(format!("{}: not a raw query", query.ref_id));
            }
            let influxql = query.model.get("query").and_then(Value::as_str).unwrap_or_default();
            if influxql.is_empty() {
                problems.push(format!("{}: no query", query.ref_id));
            }
            let rendered = render_macros(influxql, 0, 0);
            if rendered.contains('$') {
                problems.push(format!("{}: a variable other than Grafana's alerting macros: {influxql}", query.ref_id));
            }
        }
    }
    problems
}

fn is_well_formed_uid(uid: &str) -> bool {
    (1..=40).contains(&uid.len()) && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

// ---------------------------------------------------------------------------------------------
// Behaviour, one test per rule
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_level_below_80_percent_fires_for_that_office_and_not_once_the_slow_hour_is_past() {
    let rule = rule("queuewatch-service-level");
    let influx = Influx1::start();
    let breach = load_events(&influx, "breach", "service-level-breach.ndjson").await;
    let healthy = load_events(&influx, "healthy", "service-level-healthy.ndjson").await;

    // lambat called 3 of 5 tickets within target in the last hour, cepat 3 of 3.
    let values = reduced_values(&influx, &breach, &rule, "B", at(NOW)).await;
    assert_eq!(values, BTreeMap::from([(office("cepat"), 1.0), (office("lambat"), 0.6)]));
    assert_eq!(alerting(&influx, &breach, &rule, at(NOW)).await, BTreeSet::from([office("lambat")]));

    // The same slow tickets two hours earlier, and a good last hour; sepi's one ticket of the
    // hour was late (service level 0), but one ticket is too few to page anyone.
    let values = reduced_values(&influx, &healthy, &rule, "B", at(NOW)).await;
    assert_eq!(values.get(&office("sepi")), Some(&0.0), "{values:?}");
    assert_eq!(alerting(&influx, &healthy, &rule, at(NOW)).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_past_target_fire_after_10_minutes_for_that_office_only() {
    let rule = rule("queuewatch-waiting-past-target");
    let influx = Influx1::start();
    let breach = load_events(&influx, "breach", "waiting-past-target-breach.ndjson").await;
    let healthy = load_events(&influx, "healthy", "waiting-past-target-healthy.ndjson").await;

    // lambat's A1 (issued 09:30, target 10 min) waits past target from 09:40:10 on: pending at
    // 09:49, alerting once 10 minutes have passed. sebentar's B1 was past target from 09:45:10
    // until its call at 09:50: pending, never alerting.
    let states = states_at(&influx, &breach, &rule, at("2026-11-25T09:49:00+07:00")).await;
    assert_eq!(states.get(&office("lambat")), Some(&State::Pending), "{states:?}");
    assert_eq!(states.get(&office("sebentar")), Some(&State::Pending), "{states:?}");
    assert_eq!(alerting(&influx, &breach, &rule, at(NOW)).await, BTreeSet::from([office("lambat")]));

    // Every ticket called within its target.
    assert_eq!(alerting(&influx, &healthy, &rule, at(NOW)).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_waiting_with_every_counter_closed_fire_only_for_offices_that_report_counters() {
    let rule = rule("queuewatch-waiting-no-counter");
    let influx = Influx1::start();
    let breach = load_events(&influx, "breach", "waiting-no-counter-breach.ndjson").await;
    let healthy = load_events(&influx, "healthy", "waiting-no-counter-healthy.ndjson").await;

    // tutup closed its only counter at 09:45 with A1 waiting; buka keeps its counter open;
    // tanpa-loket sends no counter events, so nothing is known about its counters.
    let waiting = reduced_values(&influx, &breach, &rule, "C", at(NOW)).await;
    assert_eq!(waiting, BTreeMap::from([(office("buka"), 1.0), (office("tanpa-loket"), 1.0), (office("tutup"), 1.0)]));
    let counters_open = reduced_values(&influx, &breach, &rule, "D", at(NOW)).await;
    assert_eq!(counters_open, BTreeMap::from([(office("buka"), 1.0), (office("tutup"), 0.0)]));
    assert_eq!(alerting(&influx, &breach, &rule, at(NOW)).await, BTreeSet::from([office("tutup")]));

    // tutup served everyone before closing its counter.
    assert_eq!(alerting(&influx, &healthy, &rule, at(NOW)).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_office_fires_until_its_latest_row_says_it_is_heard_again() {
    let rule = rule("queuewatch-office-silent");
    let influx = Influx1::start();
    // `silent` is wall-clock state of `queuewatch run`; replay never writes it.
    let breach = load_line_protocol(&influx, "breach", &fixture_text("office-silent-breach.lp")).await;
    let healthy = load_line_protocol(&influx, "healthy", &fixture_text("office-silent-healthy.lp")).await;

    // sepi went silent at 09:30; ramai is heard; tanpa-jam has no opening hours, so no `silent`.
    assert_eq!(alerting(&influx, &breach, &rule, at(NOW)).await, BTreeSet::from([office("sepi")]));
    // sepi was silent at 08:00 and heard again at 08:30.
    assert_eq!(alerting(&influx, &healthy, &rule, at(NOW)).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_in_the_last_15_minutes_fire_for_the_office_that_sent_them() {
    let rule = rule("queuewatch-messages-rejected");
    let influx = Influx1::start();
    let breach = load_events(&influx, "breach", "messages-rejected-breach.ndjson").await;
    let healthy = load_events(&influx, "healthy", "messages-rejected-healthy.ndjson").await;

    // rusak sent an unknown type and an `issued` without a ticket around 09:50, among a few
    // heartbeats: far more than 5 % of its messages, for the 10 minutes of the rule's `for`.
    let values = reduced_values(&influx, &breach, &rule, "B", at(NOW)).await;
    assert_eq!(values.get(&office("rusak")), Some(&2.0), "{values:?}");
    let later = at("2026-11-25T10:02:00+07:00");
    assert_eq!(alerting(&influx, &breach, &rule, later).await, BTreeSet::from([office("rusak")]));

    // The same two rejections around 09:20, over 15 minutes ago.
    assert_eq!(alerting(&influx, &healthy, &rule, later).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_row_for_3_minutes_fires_on_no_data_whatever_the_offices_do() {
    let rule = rule("queuewatch-stopped");
    let influx = Influx1::start();
    let now = at(NOW);
    // The daemon writes a row at every whole minute; in the breach it stopped after 09:56.
    let stopped_at = now - 4 * 60_000;
    let breach = load_line_protocol(&influx, "breach", &heartbeat_rows(now - 3_600_000, stopped_at)).await;
    // Offices quiet for hours are no reason to alert: the healthy database has no office row.
    let healthy = load_line_protocol(&influx, "healthy", &heartbeat_rows(now - 3_600_000, now)).await;

    assert_eq!(evaluate(&influx, &breach, &rule, now).await, Evaluation::NoData);
    assert_eq!(alerting(&influx, &breach, &rule, now).await, BTreeSet::from([Labels::new()]));
    assert_eq!(alerting(&influx, &healthy, &rule, now).await, BTreeSet::new());
    // Two minutes after its last row, the breach database does not alert yet.
    assert_eq!(alerting(&influx, &breach, &rule, stopped_at + 2 * 60_000).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_rules_stay_quiet_once_the_office_has_closed_with_people_still_waiting() {
    let influx = Influx1::start();
    // lambat's A1 and tutup's A1 still wait when the office closes at 16:00; a heartbeat after
    // the close + grace lets the day close (A1 abandoned at 16:30).
    let mut events = fixture_text("waiting-past-target-breach.ndjson");
    events.push_str(&fixture_text("waiting-no-counter-breach.ndjson"));
    for office in ["lambat", "sebentar", "tutup", "buka", "tanpa-loket"] {
        events.push_str(&format!(
            "{{\"office\":\"{office}\",\"type\":\"heartbeat\",\"ts\":\"2026-11-25T16:40:00+07:00\"}}\n"
        ));
    }
    let db = load_event_text(&influx, "closing", &events).await;
    for uid in ["queuewatch-waiting-past-target", "queuewatch-waiting-no-counter"] {
        let rule = rule(uid);
        assert!(!alerting(&influx, &db, &rule, at(NOW)).await.is_empty(), "{uid} pages while open");
        // At 16:05 the latest rows say closed: the rule resolves although rows still show people.
        let states = states_at(&influx, &db, &rule, at("2026-11-25T16:05:00+07:00")).await;
        assert!(states.values().all(|state| *state == State::Normal), "{uid}: {states:?}");
        let states = states_at(&influx, &db, &rule, at("2026-11-25T20:00:00+07:00")).await;
        assert!(states.values().all(|state| *state == State::Normal), "{uid}: {states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_from_any_office_pages_once_while_an_office_is_open() {
    let rule = rule("queuewatch-no-events");
    let influx = Influx1::start();
    let now = at(NOW);
    let heartbeats = |age_s: f64| -> String {
        heartbeat_rows(now - 3_600_000, now).replace("newest_event_age_s=1.5", &format!("newest_event_age_s={age_s}"))
    };
    let office_rows = |open: i64| -> String {
        ["a", "b"]
            .iter()
            .map(|office| {
                format!(
                    "office,office={office},region=jabar waiting=0i,in_service=0i,open={open}i {}\n",
                    (now - 7_200_000) * 1_000_000
                )
            })
            .collect()
    };
    // The broker delivers nothing for 12 minutes while the offices are open: one page, no labels.
    let quiet = load_line_protocol(&influx, "quiet", &(heartbeats(720.0) + &office_rows(1))).await;
    assert_eq!(alerting(&influx, &quiet, &rule, now).await, BTreeSet::from([Labels::new()]));
    // The same silence at night is no reason to page.
    let night = load_line_protocol(&influx, "night", &(heartbeats(720.0) + &office_rows(0))).await;
    assert_eq!(alerting(&influx, &night, &rule, now).await, BTreeSet::new());
    // Events flowing: nothing.
    let flowing = load_line_protocol(&influx, "flowing", &(heartbeats(3.0) + &office_rows(1))).await;
    assert_eq!(alerting(&influx, &flowing, &rule, now).await, BTreeSet::new());
}

/// NDJSON events of `office`: each `(time, rest)` is a local time of 2026-11-25 (or, prefixed
/// `d-1 `, of the day before) and the rest of the event's members.
fn events_of(office: &str, events: &[(&str, &str)]) -> String {
    events
        .iter()
        .map(|(time, rest)| {
            let (date, time) = match time.strip_prefix("d-1 ") {
                Some(time) => ("2026-11-24", time),
                None => ("2026-11-25", *time),
            };
            format!("{{\"office\":\"{office}\",\"ts\":\"{date}T{time}:00+07:00\",{rest}}}\n")
        })
        .collect()
}

/// A heartbeat every 10 minutes of 2026-11-25 from `from` to `to` (HH:MM, on the hour or half).
fn heartbeats_of(office: &str, from_hour: u32, to_hour: u32) -> String {
    let times: Vec<String> =
        (from_hour * 6..=to_hour * 6).map(|tenth| format!("{:02}:{:02}", tenth / 6, tenth % 6 * 10)).collect();
    let events: Vec<(&str, &str)> = times.iter().map(|time| (time.as_str(), "\"type\":\"heartbeat\"")).collect();
    events_of(office, &events)
}

fn with_label(mut labels: Labels, key: &str, value: &str) -> Labels {
    labels.insert(key.to_string(), value.to_string());
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_office_with_no_counter_open_15_minutes_after_opening_pages() {
    let rule = rule("queuewatch-office-not-open");
    let influx = Influx1::start();
    // Both offices worked the day before; at 07:00 they open by their hours. tepat opens a
    // counter at 07:05, telat only at 07:40.
    let day_before = |office: &str| {
        events_of(
            office,
            &[
                ("d-1 07:05", r#""type":"counter_opened","counter":"c1""#),
                ("d-1 15:55", r#""type":"counter_closed","counter":"c1""#),
                ("d-1 23:00", r#""type":"heartbeat""#),
            ],
        )
    };
    let mut events = day_before("tepat") + &day_before("telat");
    events.push_str(&events_of("tepat", &[("07:05", r#""type":"counter_opened","counter":"c1""#)]));
    events.push_str(&events_of("telat", &[("07:40", r#""type":"counter_opened","counter":"c1""#)]));
    events.push_str(&(heartbeats_of("tepat", 6, 8) + &heartbeats_of("telat", 6, 8)));
    let db = load_event_text(&influx, "opening", &events).await;
    assert_eq!(alerting(&influx, &db, &rule, at("2026-11-25T07:12:00+07:00")).await, BTreeSet::new());
    assert_eq!(alerting(&influx, &db, &rule, at("2026-11-25T07:20:00+07:00")).await, BTreeSet::from([office("telat")]));
    // Once its counter is open, and at night before the opening, nothing.
    assert_eq!(alerting(&influx, &db, &rule, at("2026-11-25T07:45:00+07:00")).await, BTreeSet::new());
    assert_eq!(alerting(&influx, &db, &rule, at("2026-11-25T06:50:00+07:00")).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_waiting_more_than_twice_its_target_pages_for_its_service() {
    let rule = rule("queuewatch-oldest-wait-twice-target");
    let influx = Influx1::start();
    // lupa's A1 (target 10 min) waits from 09:30 on; ingat's B1 waits 13 minutes, then is called.
    let mut events = events_of("lupa", &[("09:30", r#""type":"issued","ticket":"A1","service":"ktp""#)]);
    events.push_str(&events_of(
        "ingat",
        &[
            ("09:45", r#""type":"issued","ticket":"B1","service":"ktp""#),
            ("09:58", r#""type":"called","ticket":"B1","counter":"c1""#),
        ],
    ));
    events.push_str(&(heartbeats_of("lupa", 9, 10) + &heartbeats_of("ingat", 9, 10)));
    let db = load_event_text(&influx, "forgotten", &events).await;
    let lupa_ktp = with_label(office("lupa"), "service", "ktp");
    // Twice the target from 09:50 on: pending, then alerting 5 minutes later.
    let states = states_at(&influx, &db, &rule, at("2026-11-25T09:53:00+07:00")).await;
    assert_eq!(states.get(&lupa_ktp), Some(&State::Pending), "{states:?}");
    assert_eq!(alerting(&influx, &db, &rule, at(NOW)).await, BTreeSet::from([lupa_ktp]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_idle_while_people_wait_warns_for_that_counter() {
    let rule = rule("queuewatch-counter-idle");
    let influx = Influx1::start();
    // diam's c1 is open from 09:30 and calls nobody while A1 waits from 09:40: an idle breach at
    // 09:45 (idle target 5 min). sibuk's c1 calls its ticket at once.
    let mut events = events_of(
        "diam",
        &[
            ("09:30", r#""type":"counter_opened","counter":"c1""#),
            ("09:40", r#""type":"issued","ticket":"A1","service":"ktp""#),
        ],
    );
    events.push_str(&events_of(
        "sibuk",
        &[
            ("09:30", r#""type":"counter_opened","counter":"c1""#),
            ("09:40", r#""type":"issued","ticket":"B1","service":"ktp""#),
            ("09:41", r#""type":"called","ticket":"B1","counter":"c1""#),
        ],
    ));
    events.push_str(&(heartbeats_of("diam", 9, 10) + &heartbeats_of("sibuk", 9, 10)));
    let db = load_event_text(&influx, "idle", &events).await;
    let expected = BTreeSet::from([with_label(office("diam"), "counter", "c1")]);
    assert_eq!(alerting(&influx, &db, &rule, at("2026-11-25T09:55:00+07:00")).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_refused_by_influxdb_in_the_last_15_minutes_warn_once() {
    let rule = rule("queuewatch-points-refused");
    let influx = Influx1::start();
    let now = at(NOW);
    // The cumulative count rises from 0 to 4 at 09:50.
    let rows = |refused_from_ms: i64| -> String {
        heartbeat_rows(now - 3_600_000, now)
            .lines()
            .map(|line| {
                let time_ms = line.rsplit(' ').next().unwrap().parse::<i64>().unwrap() / 1_000_000;
                let refused = if time_ms >= refused_from_ms { 4 } else { 0 };
                format!("{}\n", line.replace("points_refused=0i", &format!("points_refused={refused}i")))
            })
            .collect()
    };
    let recent = load_line_protocol(&influx, "recent", &rows(now - 10 * 60_000)).await;
    assert_eq!(alerting(&influx, &recent, &rule, now).await, BTreeSet::from([Labels::new()]));
    let long_ago = load_line_protocol(&influx, "long_ago", &rows(now - 40 * 60_000)).await;
    assert_eq!(alerting(&influx, &long_ago, &rule, now).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mqtt_session_pages_while_an_office_is_open_for_12_hours_after() {
    let rule = rule("queuewatch-mqtt-session-lost");
    let influx = Influx1::start();
    let now = at(NOW);
    // Rows over the last 13 h; the cumulative count rises from 0 to 1 at `lost_at`, and goes
    // back to 0 at `restarted_at`, when the daemon restarts.
    let rows = |lost_at: i64, restarted_at: i64| -> String {
        heartbeat_rows(now - 13 * 3_600_000, now)
            .lines()
            .map(|line| {
                let time_ms = line.rsplit(' ').next().unwrap().parse::<i64>().unwrap() / 1_000_000;
                let lost = i64::from(time_ms >= lost_at && time_ms < restarted_at);
                format!("{}\n", line.replace("mqtt_sessions_lost=0i", &format!("mqtt_sessions_lost={lost}i")))
            })
            .collect()
    };
    let office_rows =
        |open: i64| format!("office,office=a,region=jabar waiting=0i,open={open}i {}\n", (now - 7_200_000) * 1_000_000);
    let never = i64::MAX;
    let cases = [
        ("lost_this_morning", rows(now - 2 * 3_600_000, never), 1, true),
        // A loss at night pages once an office opens.
        ("lost_last_night", rows(now - 9 * 3_600_000, never), 1, true),
        // Lost, then the daemon restarted (its count starts again at 0): still in the window.
        ("lost_then_restarted", rows(now - 5 * 3_600_000, now - 3_600_000), 1, true),
        ("lost_while_closed", rows(now - 2 * 3_600_000, never), 0, false),
        ("lost_long_ago", rows(now - 12 * 3_600_000 - 1_800_000, never), 1, false),
        ("never_lost", rows(never, never), 1, false),
    ];
    for (db, rows, open, pages) in cases {
        let db = load_line_protocol(&influx, db, &(rows + &office_rows(open))).await;
        let expected = if pages { BTreeSet::from([Labels::new()]) } else { BTreeSet::new() };
        assert_eq!(alerting(&influx, &db, &rule, now).await, expected, "{db}");
    }
}

// ---------------------------------------------------------------------------------------------
// The provisioning file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provisioning {
    api_version: u32,
    groups: Vec<Group>,
    contact_points: Vec<ContactPoint>,
    policies: Vec<Policy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    name: String,
    folder: String,
    interval: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    uid: String,
    title: String,
    condition: String,
    data: Vec<RuleQuery>,
    #[serde(rename = "for")]
    for_duration: String,
    no_data_state: String,
    exec_err_state: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// The group's evaluation interval, filled in when rules are looked up.
    #[serde(skip)]
    interval_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleQuery {
    ref_id: String,
    relative_time_range: Option<RelativeTimeRange>,
    datasource_uid: String,
    model: Value,
}

/// Seconds before the evaluation time.
#[derive(Debug, Clone, Copy, Deserialize)]
struct RelativeTimeRange {
    from: i64,
    to: i64,
}

#[derive(Debug, Deserialize)]
struct ContactPoint {
    name: String,
    receivers: Vec<Receiver>,
}

#[derive(Debug, Deserialize)]
struct Receiver {
    uid: String,
    #[serde(rename = "type")]
    kind: String,
    settings: Value,
}

#[derive(Debug, Deserialize)]
struct Policy {
    receiver: String,
    group_by: Vec<String>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
struct Route {
    receiver: String,
    #[serde(default)]
    object_matchers: Vec<Vec<String>>,
    group_by: Option<Vec<String>>,
}

fn provisioning() -> Provisioning {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PROVISIONING_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn all_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for group in provisioning().groups {
        let interval = humantime::parse_duration(&group.interval).expect("group interval");
        for mut rule in group.rules {
            rule.interval_ms = interval.as_millis() as i64;
            rules.push(rule);
        }
    }
    rules
}

fn rule(uid: &str) -> Rule {
    all_rules().into_iter().find(|rule| rule.uid == uid).unwrap_or_else(|| panic!("no rule {uid}"))
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Creates database `db` and fills it with `queuewatch replay` of the fixture (wait target 10 min).
async fn load_events(influx: &Influx1, db: &str, fixture: &str) -> String {
    let events = std::fs::read_to_string(fixture_path(fixture)).expect("fixture exists");
    load_event_text(influx, db, &events).await
}

/// Creates database `db` and fills it with `queuewatch replay` of `events`: every office open
/// 07:00-16:00 (Asia/Jakarta, the default zone), in region `jabar`, wait target 10 min, idle
/// target 5 min.
async fn load_event_text(influx: &Influx1, db: &str, events: &str) -> String {
    common::replay_into(influx, db, &fixtures::replay_config(events), events).await;
    // The daemon's own row every minute of the day, as `run` writes it: the office rules
    // judge their windows only while queuewatch writes.
    let day = heartbeat_rows(at("2026-11-24T23:00:00+07:00"), at("2026-11-25T23:00:00+07:00"));
    load_line_protocol(influx, db, &day).await;
    db.to_string()
}

/// Creates database `db` and writes `lines` (line protocol, nanosecond times) into it.
async fn load_line_protocol(influx: &Influx1, db: &str, lines: &str) -> String {
    influx.create_database(db).await;
    let response = reqwest::Client::new()
        .post(format!("{}/write", influx.url))
        .query(&[("db", db)])
        .body(lines.to_string())
        .send()
        .await
        .expect("InfluxDB answers /write");
    let status = response.status();
    assert_eq!(status.as_u16(), 204, "write refused: {}", response.text().await.unwrap_or_default());
    db.to_string()
}

/// An office's alert labels: every fixture office is configured in region `jabar`.
fn office(name: &str) -> Labels {
    Labels::from([("office".to_string(), name.to_string()), ("region".to_string(), "jabar".to_string())])
}

// ---------------------------------------------------------------------------------------------
// Evaluation, the way Grafana evaluates a rule
// ---------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

/// A datasource query's answer: one series per InfluxDB series (its tags are the labels).
#[derive(Debug, Clone)]
struct Series {
    labels: Labels,
    values: Vec<Option<f64>>,
}

#[derive(Debug, Clone)]
enum Results {
    Series(Vec<Series>),
    Numbers(Vec<(Labels, f64)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Evaluation {
    /// The condition returned nothing: `noDataState` decides.
    NoData,
    /// The condition's value per instance (labels).
    Values(BTreeMap<Labels, f64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Pending,
    Alerting,
}

/// Runs every node of the rule at `now_ms` and returns every node's results.
async fn evaluate_nodes(influx: &Influx1, db: &str, rule: &Rule, now_ms: i64) -> BTreeMap<String, Results> {
    let mut results: BTreeMap<String, Results> = BTreeMap::new();
    for query in &rule.data {
        let result = if query.datasource_uid == "__expr__" {
            evaluate_expression(&query.model, &results)
        } else {
            let range = query.relative_time_range.expect("relativeTimeRange");
            let influxql = query.model["query"].as_str().expect("model.query");
            let rendered = render_macros(influxql, now_ms - range.from * 1000, now_ms - range.to * 1000);
            Results::Series(run_query(influx, db, &rendered).await)
        };
        results.insert(query.ref_id.clone(), result);
    }
    results
}

async fn evaluate(influx: &Influx1, db: &str, rule: &Rule, now_ms: i64) -> Evaluation {
    let mut results = evaluate_nodes(influx, db, rule, now_ms).await;
    match results.remove(&rule.condition).expect("condition node") {
        Results::Numbers(numbers) if numbers.is_empty() => Evaluation::NoData,
        Results::Numbers(numbers) => Evaluation::Values(numbers.into_iter().collect()),
        Results::Series(series) if series.iter().all(|series| series.values.is_empty()) => Evaluation::NoData,
        Results::Series(series) => panic!("condition {} is a time series, not numbers: {series:?}", rule.condition),
    }
}

/// The values of one expression node, per instance.
async fn reduced_values(influx: &Influx1, db: &str, rule: &Rule, ref_id: &str, now_ms: i64) -> BTreeMap<Labels, f64> {
    match evaluate_nodes(influx, db, rule, now_ms).await.remove(ref_id) {
        Some(Results::Numbers(numbers)) => numbers.into_iter().collect(),
        other => panic!("{ref_id} is not a numbers node: {other:?}"),
    }
}

/// Each instance's state after evaluating the rule at its group interval from long enough before
/// `now_ms` (its `for` plus two intervals) up to `now_ms`, as Grafana's scheduler would.
async fn states_at(influx: &Influx1, db: &str, rule: &Rule, now_ms: i64) -> BTreeMap<Labels, State> {
    let for_ms = humantime::parse_duration(&rule.for_duration).expect("for").as_millis() as i64;
    let interval_ms = rule.interval_ms;
    let mut evaluation_ms = now_ms - for_ms - 2 * interval_ms;
    let mut pending_since: BTreeMap<Labels, i64> = BTreeMap::new();
    let mut states: BTreeMap<Labels, State> = BTreeMap::new();
    while evaluation_ms <= now_ms {
        let firing: BTreeSet<Labels> = match evaluate(influx, db, rule, evaluation_ms).await {
            Evaluation::Values(values) => values
                .into_iter()
                .filter(|(_, value)| *value != 0.0 && !value.is_nan())
                .map(|(labels, _)| labels)
                .collect(),
            Evaluation::NoData => match rule.no_data_state.as_str() {
                "Alerting" => BTreeSet::from([Labels::new()]),
                "OK" => BTreeSet::new(),
                // Every instance keeps its state, and its pending time runs on.
                "KeepLast" => {
                    evaluation_ms += interval_ms;
                    continue;
                }
                other => panic!("noDataState {other} is not modelled here"),
            },
        };
        for labels in states.keys().cloned().collect::<Vec<_>>() {
            if !firing.contains(&labels) {
                states.insert(labels.clone(), State::Normal);
                pending_since.remove(&labels);
            }
        }
        for labels in firing {
            let since = *pending_since.entry(labels.clone()).or_insert(evaluation_ms);
            let state = if evaluation_ms - since >= for_ms { State::Alerting } else { State::Pending };
            states.insert(labels, state);
        }
        evaluation_ms += interval_ms;
    }
    states
}

/// The instances alerting at `now_ms`.
async fn alerting(influx: &Influx1, db: &str, rule: &Rule, now_ms: i64) -> BTreeSet<Labels> {
    states_at(influx, db, rule, now_ms)
        .await
        .into_iter()
        .filter(|(_, state)| *state == State::Alerting)
        .map(|(labels, _)| labels)
        .collect()
}

/// One series per InfluxDB series and value column; the query must run without error.
async fn run_query(influx: &Influx1, db: &str, influxql: &str) -> Vec<Series> {
    series_of(influxql, &influx.query(db, influxql).await)
}

/// The series of a query's answer: one per InfluxDB series (its tags are the labels), whose
/// one value column is its values; the query must have run without error.
fn series_of(influxql: &str, response: &Value) -> Vec<Series> {
    let result = &response["results"][0];
    if let Some(error) = response.get("error").or_else(|| result.get("error")) {
        panic!("{influxql}: {error}");
    }
    let mut all_series = Vec::new();
    for series in result.get("series").and_then(Value::as_array).into_iter().flatten() {
        let columns = series["columns"].as_array().expect("columns");
        assert_eq!(columns.len(), 2, "{influxql}: one value column per query, so labels stay unique: {columns:?}");
        let labels: Labels = series
            .get("tags")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
            .collect();
        let values = series["values"].as_array().into_iter().flatten().map(|row| row[1].as_f64()).collect();
        all_series.push(Series { labels, values });
    }
    all_series
}

fn evaluate_expression(model: &Value, results: &BTreeMap<String, Results>) -> Results {
    let kind = model["type"].as_str().expect("expression type");
    let expression = model["expression"].as_str().expect("expression");
    match kind {
        "reduce" => {
            let Some(Results::Series(input)) = results.get(expression) else {
                panic!("reduce of {expression}: not a time series")
            };
            let reducer = model["reducer"].as_str().expect("reducer");
            let mode = model.pointer("/settings/mode").and_then(Value::as_str).unwrap_or("strict");
            let replacement = model.pointer("/settings/replaceWithValue").and_then(Value::as_f64);
            Results::Numbers(
                input
                    .iter()
                    .map(|series| (series.labels.clone(), reduce(&series.values, reducer, mode, replacement)))
                    .collect(),
            )
        }
        "threshold" => {
            let Some(Results::Numbers(input)) = results.get(expression) else {
                panic!("threshold of {expression}: not numbers")
            };
            let evaluator = &model["conditions"][0]["evaluator"];
            let kind = evaluator["type"].as_str().expect("evaluator type");
            let params: Vec<f64> =
                evaluator["params"].as_array().expect("params").iter().map(|p| p.as_f64().expect("number")).collect();
            let holds = |value: f64| match kind {
                "gt" => value > params[0],
                "lt" => value < params[0],
                "within_range" => value > params[0] && value < params[1],
                "outside_range" => value < params[0] || value > params[1],
                other => panic!("evaluator {other}"),
            };
            Results::Numbers(
                input.iter().map(|(labels, value)| (labels.clone(), if holds(*value) { 1.0 } else { 0.0 })).collect(),
            )
        }
        "math" => Results::Numbers(math::evaluate(expression, results)),
        other => panic!("expression type {other}"),
    }
}

/// Grafana's reduce: the mode first (strict: a null or NaN makes the result NaN; dropNN: drop
/// them; replaceNN: replace them), then the reducer; an empty series reduces to NaN (count: 0).
fn reduce(values: &[Option<f64>], reducer: &str, mode: &str, replacement: Option<f64>) -> f64 {
    let mut kept = Vec::with_capacity(values.len());
    for value in values {
        match (value.filter(|value| !value.is_nan()), mode) {
            (Some(value), _) => kept.push(value),
            (None, "dropNN") => {}
            (None, "replaceNN") => kept.push(replacement.expect("replaceWithValue")),
            (None, _) => return f64::NAN,
        }
    }
    if kept.is_empty() {
        return if reducer == "count" { 0.0 } else { f64::NAN };
    }
    match reducer {
        "last" => kept[kept.len() - 1],
        "mean" => kept.iter().sum::<f64>() / kept.len() as f64,
        "sum" => kept.iter().sum(),
        "min" => kept.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => kept.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "count" => kept.len() as f64,
        other => panic!("reducer {other}"),
    }
}

/// The `$X` names a math expression reads.
fn math_references(expression: &str) -> Vec<String> {
    math::tokens(expression)
        .into_iter()
        .filter_map(|token| match token {
            math::Token::Reference(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// The part of Grafana's math expressions the rules use: `$refId`, numbers, `+ - * /`,
/// comparisons, `&&`, `||`, parentheses. Binary operations join numbers by labels as Grafana does: a pair
/// matches when one side's labels are a subset of the other's (a side with a single unlabelled
/// number matches everything); unmatched numbers are dropped.
mod math {
    use super::{Labels, Results};
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Token {
        Reference(String),
        Number(f64),
        Operator(&'static str),
        Open,
        Close,
    }

    pub fn tokens(expression: &str) -> Vec<Token> {
        let chars: Vec<char> = expression.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if c == '$' {
                let start = i + 1;
                i = start;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Reference(chars[start..i].iter().collect()));
            } else if c.is_ascii_digit() || c == '.' {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token::Number(text.parse().unwrap_or_else(|_| panic!("number {text:?}"))));
            } else if c == '(' {
                tokens.push(Token::Open);
                i += 1;
            } else if c == ')' {
                tokens.push(Token::Close);
                i += 1;
            } else {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let operator = ["&&", "||", "==", "!=", ">=", "<="]
                    .into_iter()
                    .find(|operator| *operator == two)
                    .or_else(|| [">", "<", "+", "-", "*", "/"].into_iter().find(|operator| operator.starts_with(c)))
                    .unwrap_or_else(|| panic!("math expression {expression:?}: unexpected {c:?}"));
                i += operator.len();
                tokens.push(Token::Operator(operator));
            }
        }
        tokens
    }

    type Numbers = Vec<(Labels, f64)>;

    pub fn evaluate(expression: &str, results: &BTreeMap<String, Results>) -> Numbers {
        let tokens = tokens(expression);
        let mut position = 0;
        let value = parse(&tokens, &mut position, 0, results);
        assert_eq!(position, tokens.len(), "math expression {expression:?}: trailing tokens");
        value
    }

    fn precedence(operator: &str) -> u8 {
        match operator {
            "||" => 1,
            "&&" => 2,
            "+" | "-" => 4,
            "*" | "/" => 5,
            _ => 3,
        }
    }

    fn parse(
        tokens: &[Token],
        position: &mut usize,
        min_precedence: u8,
        results: &BTreeMap<String, Results>,
    ) -> Numbers {
        let mut left = match tokens.get(*position) {
            Some(Token::Reference(name)) => {
                *position += 1;
                match results.get(name) {
                    Some(Results::Numbers(numbers)) => numbers.clone(),
                    other => panic!("${name} is not numbers: {other:?}"),
                }
            }
            Some(Token::Number(number)) => {
                *position += 1;
                vec![(Labels::new(), *number)]
            }
            Some(Token::Open) => {
                *position += 1;
                let inner = parse(tokens, position, 0, results);
                assert_eq!(tokens.get(*position), Some(&Token::Close), "missing ')'");
                *position += 1;
                inner
            }
            other => panic!("unexpected {other:?}"),
        };
        while let Some(Token::Operator(operator)) = tokens.get(*position) {
            let operator_precedence = precedence(operator);
            if operator_precedence <= min_precedence {
                break;
            }
            *position += 1;
            let right = parse(tokens, position, operator_precedence, results);
            left = combine(&left, &right, operator);
        }
        left
    }

    fn combine(left: &Numbers, right: &Numbers, operator: &str) -> Numbers {
        let apply = |a: f64, b: f64| -> f64 {
            match operator {
                "+" => return a + b,
                "-" => return a - b,
                "*" => return a * b,
                "/" => return a / b,
                _ => {}
            }
            let truth = match operator {
                "&&" => a != 0.0 && b != 0.0,
                "||" => a != 0.0 || b != 0.0,
                "==" => a == b,
                "!=" => a != b,
                ">" => a > b,
                "<" => a < b,
                ">=" => a >= b,
                "<=" => a <= b,
                other => panic!("operator {other}"),
            };
            if truth {
                1.0
            } else {
                0.0
            }
        };
        let is_scalar = |side: &Numbers| side.len() == 1 && side[0].0.is_empty();
        let subset = |small: &Labels, large: &Labels| small.iter().all(|(key, value)| large.get(key) == Some(value));
        let mut combined = Vec::new();
        for (left_labels, left_value) in left {
            for (right_labels, right_value) in right {
                let matches = is_scalar(left)
                    || is_scalar(right)
                    || subset(left_labels, right_labels)
                    || subset(right_labels, left_labels);
                if matches {
                    let labels = if left_labels.len() >= right_labels.len() {
                        left_labels.clone()
                    } else {
                        right_labels.clone()
                    };
                    combined.push((labels, apply(*left_value, *right_value)));
                }
            }
        }
        combined
    }
}
