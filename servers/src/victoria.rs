//! VictoriaMetrics, single node: a real server that speaks InfluxDB's `/api/v2/write`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{find_binary, http_status, start_on_free_ports, ServerProcess};
use crate::{http_client, or_panic, temp_dir, try_free_port, Error, TempDir, POLL_INTERVAL};

/// A single-node VictoriaMetrics on `127.0.0.1:port`. It accepts InfluxDB line
/// protocol on `/write` and `/api/v2/write`, naming each series
/// `{measurement}_{field}`, keeping numeric fields only, and storing
/// millisecond timestamps. Samples more than about two days in the future or
/// older than the retention (100 years here) are dropped.
pub struct VictoriaMetrics {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    process: ServerProcess,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Panics if it does not start.
    pub fn start() -> VictoriaMetrics {
        or_panic(VictoriaMetrics::try_start())
    }

    pub fn try_start() -> Result<VictoriaMetrics, Error> {
        let program = find_binary("victoria-metrics", "/usr/bin/victoria-metrics", "victoria-metrics")?;
        let dir = temp_dir("victoria-metrics")?;
        let log_path = dir.path().join("victoria-metrics.log");
        let storage = dir.path().join("vm");
        let (process, port) = start_on_free_ports(
            || {
                let port = try_free_port()?;
                let process = ServerProcess::new("victoria-metrics", program.clone(), log_path.clone())
                    .debian_package("victoria-metrics")
                    .args([
                        format!("-httpListenAddr=127.0.0.1:{port}"),
                        format!("-storageDataPath={}", storage.display()),
                        "-retentionPeriod=100y".into(),
                        "-loggerLevel=WARN".into(),
                        // Readers see what was just written: no response cache,
                        // and no 30 s delay before recent samples show in query results.
                        "-search.disableCache".into(),
                        "-search.latencyOffset=0s".into(),
                    ]);
                Ok((process, port))
            },
            |port| http_status(*port, "/health") == Some(200),
        )?;
        Ok(VictoriaMetrics { port, url: format!("http://127.0.0.1:{port}"), http: http_client(), process, dir })
    }

    /// Makes everything ingested so far searchable (`/internal/force_flush`;
    /// otherwise recent samples show up only after about a second).
    pub async fn force_flush(&self) {
        let response = self
            .http
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /internal/force_flush: {error}"));
        assert!(response.status().is_success(), "force_flush: HTTP {}", response.status());
    }

    /// Flushes, then exports every series matching `match_selector` (for
    /// example `{__name__=~"queue_.*"}`) over all time, one JSON object per
    /// series: `{"metric":{"__name__":..,label:..},"values":[..],"timestamps":[ms..]}`,
    /// sorted by their `metric` object for stable comparisons.
    pub async fn export(&self, match_selector: &str) -> Vec<Value> {
        self.force_flush().await;
        let response = self
            .http
            .get(format!("{}/api/v1/export", self.url))
            // `end` defaults to now; allow the two days ahead that ingestion accepts.
            .query(&[("match[]", match_selector), ("start", "0"), ("end", &far_future_end())])
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /api/v1/export {match_selector}: {error}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "export {match_selector}: HTTP {status}: {body}");
        let mut series: Vec<Value> = body
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("export line {line:?}: {error}")))
            .collect();
        series.sort_by_key(|one| one["metric"].to_string());
        series
    }

    /// Polls `export(match_selector)` until at least `min_samples` samples in
    /// all have arrived and returns the series. Panics with what it last saw
    /// when `timeout` passes first.
    pub async fn wait_for_samples(&self, match_selector: &str, min_samples: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let series = self.export(match_selector).await;
            let samples: usize = series.iter().map(|one| one["values"].as_array().map_or(0, Vec::len)).sum();
            if samples >= min_samples {
                return series;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {min_samples} samples matching {match_selector}; last export: {series:?}"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Unix seconds three days from now, as text for an `end` query parameter.
fn far_future_end() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the clock is after 1970");
    (now.as_secs() + 3 * 24 * 3600).to_string()
}
