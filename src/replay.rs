//! `queuewatch replay`: the tracker fed from NDJSON files instead of MQTT.
//!
//! One event object per line, each with its `office` field; the tracker's
//! state carries across the files in the order given. No wall time passes
//! (office clocks are pure event time), so a replay writes exactly the points
//! a live run of the same events writes. Operators backfill history from a
//! queue system's export this way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::privacy::StaffPrivacy;
use crate::sink::{self, FileWriter, Secrets, SinkHandle, SinkReport, SHUTDOWN_DEADLINE};
use crate::stats::Stats;
use crate::time::Millis;
use crate::tracker::Mode;

/// Where replayed points go.
#[derive(Debug, Clone)]
pub enum ReplayOutput {
    /// The InfluxDB of the config file.
    Influx,
    /// A line-protocol file (appended to), for inspection or later import.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub stats: Stats,
    pub sink: SinkReport,
    pub lines_read: u64,
}

impl ReplayReport {
    /// The summary printed at the end of a replay.
    pub fn summary(&self) -> String {
        let mut summary = format!(
            "lines read: {}\n{}points written to the sink: {}\npoints refused by the sink: {}\npoints unwritten: {}\n",
            self.lines_read,
            self.stats.summary(),
            self.sink.points_written,
            self.sink.points_rejected,
            self.sink.points_unwritten_at_shutdown
        );
        if let Some(failure) = self.sink.failure {
            summary.push_str(&format!("{failure}: the counts above are what it had reported before\n"));
        }
        summary
    }

    /// True when every point reached its destination and the writer ended normally.
    pub fn complete(&self) -> bool {
        self.sink.failure.is_none() && self.sink.points_rejected == 0 && self.sink.points_unwritten_at_shutdown == 0
    }
}

/// `replay --gauges`: the config's gauge interval, a coarser one, or none.
/// Backfills of months rarely need gauge rows every 10 s; the `ticket`,
/// `breach`, `counter` and `feedback` points do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauges {
    Off,
    Every(Duration),
}

impl Gauges {
    /// `off`, or a duration of at least one second (`1h`, `15m`).
    pub fn parse(text: &str) -> Result<Gauges, String> {
        if text == "off" {
            return Ok(Gauges::Off);
        }
        match humantime::parse_duration(text) {
            Ok(interval) if interval >= Duration::from_secs(1) && interval <= Duration::from_secs(365 * 86_400) => {
                Ok(Gauges::Every(interval))
            }
            Ok(_) => Err(format!("{text:?}: the gauge interval must be between 1s and 365 days")),
            Err(_) => Err(format!("{text:?}: expected \"off\" or a duration such as \"1h\"")),
        }
    }

    /// Applies the choice to `config`: an interval becomes
    /// `tracking.snapshot_interval`, with `gauge_keepalive` rounded up to a
    /// multiple of it.
    pub fn apply(self, config: &mut Config) {
        let tracking = &mut config.tracking;
        match self {
            Gauges::Off => tracking.gauges = false,
            Gauges::Every(interval) => {
                tracking.gauges = true;
                tracking.snapshot_interval = interval;
                let interval_ms = interval.as_millis().max(1);
                let keepalive_ms = tracking.gauge_keepalive.as_millis().div_ceil(interval_ms) * interval_ms;
                tracking.gauge_keepalive = Duration::from_millis(u64::try_from(keepalive_ms).unwrap_or(u64::MAX));
            }
        }
    }
}

/// The tracker's wall time during a replay: constant, so office clocks are event time.
const REPLAY_WALL: Millis = Millis(0);

/// How often progress is reported on long inputs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Replays `inputs` (`-` is standard input) in order.
pub async fn replay(config: &Config, inputs: &[String], output: ReplayOutput) -> anyhow::Result<ReplayReport> {
    let (sink, sink_task) = match &output {
        ReplayOutput::Influx => {
            let secrets = Secrets::resolve(&config.influxdb).context("InfluxDB credentials")?;
            sink::spawn(&config.influxdb, secrets, None, SHUTDOWN_DEADLINE).context("InfluxDB writer")?
        }
        ReplayOutput::File(path) => {
            let writer = FileWriter::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            sink::spawn_with(
                Box::new(writer),
                config.influxdb.batch_size,
                config.influxdb.flush_interval,
                config.influxdb.max_backoff,
                SHUTDOWN_DEADLINE,
            )
        }
    };

    replay_into(config, inputs, sink, sink_task).await
}

/// Replays `inputs` into a writer task already started.
async fn replay_into(
    config: &Config,
    inputs: &[String],
    sink: SinkHandle,
    sink_task: JoinHandle<SinkReport>,
) -> anyhow::Result<ReplayReport> {
    let mut pipeline = Pipeline::new(config, Mode::Replay);
    let privacy = StaffPrivacy::from_config(config).map_err(anyhow::Error::msg)?;
    let mut progress = Progress::new();
    for input in inputs {
        let mut feeding = Feeding { pipeline: &mut pipeline, privacy: &privacy, sink: &sink, progress: &mut progress };
        if input == "-" {
            feeding.feed("stdin", tokio::io::stdin()).await?;
        } else {
            let file = tokio::fs::File::open(input).await.with_context(|| format!("cannot open {input}"))?;
            feeding.feed(input, file).await?;
        }
    }
    pipeline.drain(REPLAY_WALL);
    send(&mut pipeline, &sink).await;
    let sink_report = sink::finish(sink, sink_task).await;
    Ok(ReplayReport { stats: pipeline.stats().clone(), sink: sink_report, lines_read: progress.lines })
}

/// What feeding one input needs.
struct Feeding<'a> {
    pipeline: &'a mut Pipeline,
    privacy: &'a StaffPrivacy,
    sink: &'a SinkHandle,
    progress: &'a mut Progress,
}

impl Feeding<'_> {
    async fn feed(&mut self, name: &str, reader: impl AsyncRead + Unpin) -> anyhow::Result<()> {
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let mut line = Vec::with_capacity(512);
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).await.with_context(|| format!("cannot read {name}"))?;
            if read == 0 {
                break;
            }
            self.progress.lines += 1;
            let payload = trim_ascii(&line);
            if payload.is_empty() {
                continue;
            }
            // Before the decoder, its logs and its counts see the line.
            let payload = self.privacy.rewrite(payload);
            let _ = self.pipeline.handle(Ok(None), &payload, REPLAY_WALL, Millis::now());
            if self.pipeline.pending_lines() >= 1000 {
                send(self.pipeline, self.sink).await;
            }
            self.progress.maybe_report(name, self.pipeline);
        }
        send(self.pipeline, self.sink).await;
        Ok(())
    }
}

async fn send(pipeline: &mut Pipeline, sink: &SinkHandle) {
    if let Some((lines, count)) = pipeline.take_lines() {
        if sink.send(lines, count).await.is_err() {
            tracing::error!(points = count, "The writer has stopped; points lost.");
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |end| end + 1);
    &bytes[start..end]
}

struct Progress {
    lines: u64,
    started: Instant,
    last_report: Instant,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress { lines: 0, started: now, last_report: now }
    }

    fn maybe_report(&mut self, name: &str, pipeline: &Pipeline) {
        if !self.lines.is_multiple_of(4096) {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_report) < PROGRESS_EVERY {
            return;
        }
        self.last_report = now;
        let elapsed_s = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let stats = pipeline.stats();
        eprintln!(
            "replay: {name}: {} lines, {} accepted, {} rejected, {} points, {:.0} lines/s",
            self.lines,
            stats.accepted,
            stats.rejected_total(),
            stats.points,
            self.lines as f64 / elapsed_s
        );
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn gauges_off_or_every_interval() {
        assert_eq!(Gauges::parse("off"), Ok(Gauges::Off));
        assert_eq!(Gauges::parse("1h"), Ok(Gauges::Every(Duration::from_secs(3600))));
        assert!(Gauges::parse("500ms").is_err());
        assert!(Gauges::parse("sometimes").is_err());
        let mut config = Config::default();
        Gauges::parse("90s").unwrap().apply(&mut config);
        assert_eq!(config.tracking.snapshot_interval, Duration::from_secs(90));
        assert_eq!(config.tracking.gauge_keepalive, Duration::from_secs(90));
        assert!(config.tracking.gauges);
        Gauges::Off.apply(&mut config);
        assert!(!config.tracking.gauges);
    }
    use super::*;
    use crate::sink::{WriteFuture, Writer};

    /// A writer whose task dies on the first write.
    struct PanickingWriter;

    impl Writer for PanickingWriter {
        fn write<'a>(&'a self, _body: &'a str) -> WriteFuture<'a> {
            Box::pin(async { panic!("the writer breaks") })
        }

        fn describe(&self) -> String {
            "panicking".into()
        }
    }

    const ONE_TICKET: &str = r#"{"type":"issued","ts":"2026-11-20T08:00:00+07:00","ticket":"A1","service":"ktp","office":"o1"}
{"type":"called","ts":"2026-11-20T08:01:00+07:00","ticket":"A1","counter":"c1","office":"o1"}
{"type":"finished","ts":"2026-11-20T08:05:00+07:00","ticket":"A1","counter":"c1","office":"o1"}
"#;

    #[tokio::test]
    async fn a_writer_that_fails_makes_the_replay_incomplete_and_counts_what_was_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.ndjson");
        std::fs::write(&events, ONE_TICKET).unwrap();
        let ms = Duration::from_millis(1);
        let (sink, task) = sink::spawn_with(Box::new(PanickingWriter), 10, ms, ms, Duration::from_secs(1));

        let inputs = [events.display().to_string()];
        let report = replay_into(&Config::default(), &inputs, sink, task).await.unwrap();

        let handed = report.stats.points;
        assert!(handed >= 1, "the ticket point at least");
        assert!(!report.complete(), "{}", report.summary());
        assert_eq!(report.sink.points_written, 0);
        assert_eq!(report.sink.points_unwritten_at_shutdown, handed);
        let summary = report.summary();
        assert!(summary.contains(&format!("points unwritten: {handed}")), "{summary}");
    }
}
