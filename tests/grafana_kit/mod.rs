//! Grafana's side of a query, for tests that prove dashboards and alert rules
//! against a real InfluxDB: what Grafana would send for a given time range,
//! interval and variable values, the queries a dashboard holds, and running
//! one of them.
//!
//! Grafana itself cannot run in the test suite, so this module renders queries
//! the way its InfluxDB datasource does for raw InfluxQL:
//!
//! - `$timeFilter` becomes `time >= FROMms and time <= TOms` (epoch milliseconds);
//! - `${__from}` and `${__to}` become the range's ends in epoch milliseconds;
//! - `$__interval` becomes the interval as written (`1m`, `1h`), and
//!   `$__interval_ms` its milliseconds;
//! - a variable with several values becomes `(a|b)`, each value regex-escaped,
//!   as Grafana formats multi-value variables for InfluxDB (to be used inside
//!   `=~ /^$var$/`; Grafana's "Formatting multi-value variables": "InfluxDB and
//!   Prometheus use regex expressions, so the same variable would be
//!   interpolated as `(host1|host2|host3)`. Every value would also be regex
//!   escaped", grafana/grafana docs/sources/variables/formatting-multi-value-variables.md),
//!   so an office id `kcp.bdg-1` becomes `kcp\.bdg-1`; a single value is regex-escaped alone; "All" becomes the
//!   variable's custom all-value (`.*`) as written;
//! - `$var` and `${var}` are both recognised; any other `$name` is an error, so a
//!   query that uses an undefined variable fails the test instead of reaching
//!   InfluxDB with a `$` in it. A `$` not followed by a name (`/^x$/`) stays.
//!
//! Alert-rule queries use no template variables: render them with an empty
//! variable map and the rule's relative time range as `from_ms`/`to_ms`.

#![allow(dead_code)]

pub mod day;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use queuewatch_servers::{flatten_rows, InfluxClient};
use serde_json::{Map, Value};

/// The uid of the provisioned datasource that every panel, variable and rule uses.
pub const DATASOURCE_UID: &str = "queuewatch-influxdb";

/// Names Grafana defines itself, which a dashboard may use without declaring them.
pub const BUILT_IN_VARIABLES: &[&str] = &[
    "timeFilter",
    "__timeFilter",
    "__interval",
    "__interval_ms",
    "__from",
    "__to",
    "__range",
    "__range_s",
    "__range_ms",
    "__rate_interval",
    "__dashboard",
    "__org",
    "__user",
    "__url_time_range",
    "__all_variables",
    "__data",
    "__field",
    "__series",
    "__value",
];

/// `deploy/grafana` of this repository.
pub fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join("grafana")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The dashboards of `deploy/grafana/dashboards`, by file name, in name order.
pub fn dashboards() -> Vec<(String, Value)> {
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

/// What a variable is set to for one rendering.
#[derive(Clone, Debug)]
pub enum VariableValue {
    /// One value chosen.
    One(String),
    /// Several values chosen (a multi-value variable).
    Many(Vec<String>),
    /// "All" of a variable with a custom all-value: the all-value, as written.
    All(String),
    /// Inserted as written, not regex-escaped: custom variables used outside
    /// regexes, such as `$tz` in `tz('$tz')`.
    Raw(String),
}

/// A time range, an interval and variable values: what Grafana substitutes.
#[derive(Clone, Debug)]
pub struct Substitution {
    pub from_ms: i64,
    pub to_ms: i64,
    /// As Grafana writes it: `10s`, `1m`, `1h`, `1d`.
    pub interval: String,
    pub variables: BTreeMap<String, VariableValue>,
}

impl Substitution {
    pub fn new(from_ms: i64, to_ms: i64, interval: &str) -> Substitution {
        Substitution { from_ms, to_ms, interval: interval.to_string(), variables: BTreeMap::new() }
    }

    /// Sets `name` and returns the substitution, for chaining.
    pub fn with(mut self, name: &str, value: VariableValue) -> Substitution {
        self.variables.insert(name.to_string(), value);
        self
    }

    /// The query as Grafana would send it; an error naming every `$name`
    /// that is neither a macro nor a variable set here.
    pub fn render(&self, query: &str) -> Result<String, String> {
        let mut out = String::with_capacity(query.len() + 64);
        let mut unknown = Vec::new();
        let mut rest = query;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let (name, consumed) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    // `${name:format}`: the format is not used by these dashboards.
                    Some(end) => (braced[..end].split(':').next().unwrap_or_default(), end + 2),
                    None => ("", 0),
                },
                None => {
                    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            if name.is_empty() {
                out.push('$');
                rest = after;
                continue;
            }
            match self.expand(name) {
                Some(value) => out.push_str(&value),
                None => unknown.push(name.to_string()),
            }
            rest = &after[consumed..];
        }
        out.push_str(rest);
        if unknown.is_empty() {
            Ok(out)
        } else {
            Err(format!("undefined variables {unknown:?} in {query}"))
        }
    }

    fn expand(&self, name: &str) -> Option<String> {
        match name {
            "timeFilter" | "__timeFilter" => Some(format!("time >= {}ms and time <= {}ms", self.from_ms, self.to_ms)),
            "__interval" => Some(self.interval.clone()),
            "__interval_ms" => interval_ms(&self.interval).map(|ms| ms.to_string()),
            // Epoch milliseconds of the range's ends, Grafana's default format for them.
            "__from" => Some(self.from_ms.to_string()),
            "__to" => Some(self.to_ms.to_string()),
            _ => self.variables.get(name).map(|value| match value {
                VariableValue::One(one) => regex_escape(one),
                VariableValue::Many(many) if many.len() == 1 => regex_escape(&many[0]),
                VariableValue::Many(many) => {
                    format!("({})", many.iter().map(|one| regex_escape(one)).collect::<Vec<_>>().join("|"))
                }
                VariableValue::All(all_value) => all_value.clone(),
                VariableValue::Raw(raw) => raw.clone(),
            }),
        }
    }
}

/// Escapes what is special in a regex, as Grafana does for InfluxDB variables.
pub fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\^$*+?.()|[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Milliseconds of a Grafana interval such as `10s`, `5m`, `1h`, `1d`.
pub fn interval_ms(interval: &str) -> Option<i64> {
    let split = interval.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = interval.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    Some(number * unit_ms)
}

/// The `$name` and `${name}` references of a query or URL, in order, repeated.
pub fn variables_used(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        let after = &rest[dollar + 1..];
        let name = match after.strip_prefix('{') {
            Some(braced) => braced.find('}').map(|end| braced[..end].split(':').next().unwrap_or_default()),
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                Some(&after[..end])
            }
        };
        if let Some(name) = name.filter(|name| !name.is_empty()) {
            // `${__data.fields.office}`: the variable is the part before the first dot.
            names.push(name.split('.').next().unwrap_or_default().to_string());
        }
        rest = after;
    }
    names
}

/// Where a query sits in a dashboard.
#[derive(Clone, Debug)]
pub enum QuerySource {
    /// A panel's target: panel title and refId.
    Panel { title: String, ref_id: String },
    /// A query variable.
    Variable { name: String },
    /// An annotation query.
    Annotation { name: String },
}

/// One query of a dashboard, as stored.
#[derive(Clone, Debug)]
pub struct DashboardQuery {
    pub source: QuerySource,
    pub query: String,
}

impl DashboardQuery {
    /// `panel "Served" A`, `variable office`, `annotation Breaches`.
    pub fn label(&self) -> String {
        match &self.source {
            QuerySource::Panel { title, ref_id } => format!("panel {title:?} {ref_id}"),
            QuerySource::Variable { name } => format!("variable {name}"),
            QuerySource::Annotation { name } => format!("annotation {name}"),
        }
    }
}

/// Every query of a dashboard: its panels' targets (rows' nested panels
/// included), its query variables and its annotation queries (Grafana's
/// built-in annotation excepted).
pub fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(DashboardQuery {
                source: QuerySource::Panel {
                    title: title.clone(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                },
                query: target["query"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] == "query" {
            queries.push(DashboardQuery {
                source: QuerySource::Variable { name: variable["name"].as_str().unwrap_or_default().to_string() },
                query: variable["query"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if annotation.get("builtIn").and_then(Value::as_i64) == Some(1) {
            continue;
        }
        queries.push(DashboardQuery {
            source: QuerySource::Annotation { name: annotation["name"].as_str().unwrap_or_default().to_string() },
            query: annotation["query"].as_str().unwrap_or_default().to_string(),
        });
    }
    queries
}

/// The dashboard's panels, those nested in collapsed rows included.
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// Runs a rendered query on `db` of InfluxDB 1.x or 3.x and returns its rows
/// (tags merged in, times in nanoseconds); an error when InfluxDB reports one.
pub async fn run(
    influx: &impl AsRef<InfluxClient>,
    db: &str,
    rendered: &str,
) -> Result<Vec<Map<String, Value>>, String> {
    let response = influx.as_ref().query(db, rendered).await.map_err(|error| error.to_string())?;
    flatten_rows(&response).map_err(|error| format!("{error} in {rendered}"))
}

/// Renders `query` with `substitution`, runs it, and returns its rows; panics
/// naming `label` on an undefined variable or an InfluxDB error.
pub async fn rows(
    influx: &impl AsRef<InfluxClient>,
    db: &str,
    label: &str,
    query: &str,
    substitution: &Substitution,
) -> Vec<Map<String, Value>> {
    let rendered = substitution.render(query).unwrap_or_else(|error| panic!("{label}: {error}"));
    run(influx, db, &rendered).await.unwrap_or_else(|error| panic!("{label}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_and_variables_render_as_grafana_sends_them() {
        let substitution = Substitution::new(1_000, 2_000, "1h")
            .with("office", VariableValue::One("mpp-jkt".into()))
            .with("region", VariableValue::Many(vec!["dki".into(), "a.b".into()]))
            .with("service", VariableValue::All(".*".into()))
            .with("tz", VariableValue::Raw("Asia/Jakarta".into()));
        let rendered = substitution
            .render("x =~ /^$office$/ AND r =~ /^${region}$/ AND s =~ /^$service$/ AND $timeFilter GROUP BY time($__interval) tz('$tz')")
            .unwrap();
        assert_eq!(
            rendered,
            "x =~ /^mpp-jkt$/ AND r =~ /^(dki|a\\.b)$/ AND s =~ /^.*$/ AND time >= 1000ms and time <= 2000ms GROUP BY time(1h) tz('Asia/Jakarta')"
        );
        assert!(substitution.render("$nope").unwrap_err().contains("nope"));
        assert_eq!(variables_used("a ${__data.fields.office} $tz $ /x$/"), ["__data", "tz"]);
    }
}
