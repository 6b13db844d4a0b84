//! Decode + track + encode, shared by `run`, `replay` and the benchmarks.
//!
//! Owns the tracker, the counts and the line-protocol buffer of pending
//! points. Still no IO: callers feed payloads and wall times in and take
//! encoded lines out for the sink. What a caller does with a copy of each
//! point (the demo's live table) is its own business: it sets an observer.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Config;
use crate::event::{decode_with, DecodeLimits, Rejection};
use crate::ids::IdCache;
use crate::ids::OfficeId;
use crate::point::Point;
use crate::stats::Stats;
use crate::throttle::LogLimiter;
use crate::time::{duration_ms, Millis};
use crate::tracker::{Alert, Mode, Output, Tracker, TrackerSettings};

/// Sees every point as it is encoded. It must not block: the pipeline waits for it.
pub type PointObserver = Box<dyn FnMut(&Point) + Send>;

pub struct Pipeline {
    tracker: Tracker,
    limits: DecodeLimits,
    /// Identifiers already seen, shared rather than allocated per message.
    ids: IdCache,
    stats: Stats,
    out: Output,
    lines: String,
    pending_lines: usize,
    alerts: Vec<Alert>,
    /// Accepted events the tracker refused when applying them (over a
    /// `[limits]` value), for the caller to echo.
    refused: Vec<Rejection>,
    mode: Mode,
    observer: Option<PointObserver>,
    reject_log: LogLimiter,
    /// The newest ts of any accepted event.
    newest_event: Option<Millis>,
}

impl Pipeline {
    pub fn new(config: &Config, mode: Mode) -> Pipeline {
        Pipeline {
            tracker: Tracker::new(TrackerSettings::new(config, mode)),
            ids: IdCache::default(),
            limits: DecodeLimits {
                max_payload_bytes: config.mqtt.max_payload_bytes,
                max_future_skew_ms: duration_ms(config.tracking.max_future_skew),
                min_timestamp: config.tracking.min_timestamp,
            },
            stats: Stats::default(),
            out: Output::default(),
            lines: String::new(),
            pending_lines: 0,
            alerts: Vec::new(),
            refused: Vec::new(),
            mode,
            observer: None,
            reject_log: LogLimiter::new(Duration::from_secs(10)),
            newest_event: None,
        }
    }

    /// Takes one message. `topic_office` is what the topic said (or why it
    /// was refused); `tracker_now` is the wall time the tracker's office
    /// clocks run on (constant in a replay); `wall_now` guards against
    /// timestamps from the future. A rejection is counted, logged without
    /// flooding, and returned so the caller can echo it.
    pub fn handle(
        &mut self,
        topic_office: Result<Option<OfficeId>, Rejection>,
        payload: &[u8],
        tracker_now: Millis,
        wall_now: Millis,
    ) -> Result<(), Rejection> {
        let decoded = topic_office
            .and_then(|office| decode_with(payload, office.as_ref(), wall_now, &self.limits, &mut self.ids))
            .and_then(|event| {
                let ts = event.ts;
                self.tracker.ingest_admitted(event, tracker_now, wall_now, &mut self.out).map(|()| ts)
            });
        match decoded {
            Ok(ts) => {
                self.stats.accepted += 1;
                self.newest_event = self.newest_event.max(Some(ts));
                self.collect();
                Ok(())
            }
            Err(rejection) => {
                self.stats.reject(rejection.reason);
                if let Some(office) = &rejection.office {
                    self.tracker.note_rejection(office, tracker_now, &mut self.out);
                    self.collect();
                }
                self.log_rejection(&rejection, "Rejected event.");
                Err(rejection)
            }
        }
    }

    /// Logs a rejection, at most once per office and reason every 10 s.
    fn log_rejection(&mut self, rejection: &Rejection, message: &str) {
        let office = rejection.office.as_ref().map_or("", |office| office.as_str());
        // Offices the tracker does not know share one key: a flood of
        // invented offices logs once per interval, not once per office.
        let known = rejection.office.as_ref().is_some_and(|office| self.tracker.knows(office));
        let key = format!("{}/{}", if known { office } else { "" }, rejection.reason.as_str());
        if let Some(suppressed) = self.reject_log.allow(&key, Instant::now()) {
            warn!(
                office,
                reason = rejection.reason.as_str(),
                detail = %rejection.detail,
                id = rejection.id.as_deref().unwrap_or(""),
                suppressed,
                "{message}"
            );
        }
    }

    /// Counts closed tickets and dedup keys an office forgot before the dedup
    /// horizon (at `limits.max_remembered_per_office`), and logs it at most
    /// once per office every 10 s.
    fn note_forgotten_early(&mut self, office: &OfficeId, forgotten: u64) {
        self.stats.forgotten_early += forgotten;
        let key = format!("{office}/forgotten_early");
        if let Some(suppressed) = self.reject_log.allow(&key, Instant::now()) {
            warn!(
                office = %office,
                reason = "max_remembered_per_office",
                forgotten,
                suppressed,
                "Forgot closed tickets and dedup keys before the dedup horizon: the office is at \
                 limits.max_remembered_per_office (a copy of their events would no longer be recognised)."
            );
        }
    }

    /// Accepted events refused since the last call because they would have
    /// gone over one of their office's `[limits]` (echoed by `run`).
    pub fn take_refused(&mut self) -> Vec<Rejection> {
        std::mem::take(&mut self.refused)
    }

    /// Counts a message the broker redelivered after a reconnection or a
    /// restart that the journal already holds: accepted once more, a
    /// duplicate, and a redelivery.
    pub fn note_redelivery(&mut self) {
        self.stats.accepted += 1;
        self.stats.notes.add(crate::tracker::Note::Duplicate);
        self.stats.redelivered += 1;
    }

    /// Counts a retained copy the broker sent because of a subscription:
    /// not an event, so neither accepted nor rejected.
    pub fn note_retained(&mut self) {
        self.stats.retained += 1;
    }

    /// Lets wall time pass (live runs).
    pub fn advance(&mut self, tracker_now: Millis) {
        self.tracker.advance(tracker_now, &mut self.out);
        self.collect();
    }

    /// End of input: applies everything held and writes what is due.
    pub fn drain(&mut self, tracker_now: Millis) {
        self.tracker.drain(tracker_now, &mut self.out);
        self.collect();
    }

    /// Office clocks restart at wall time `now` from the newest event time
    /// they had (after recovering state on a restart; see `Tracker::resume`).
    pub fn resume(&mut self, now: Millis) {
        self.tracker.resume(now);
    }

    /// Puts a recovered tracker in place of this one's.
    pub fn replace_tracker(&mut self, tracker: Tracker) {
        self.tracker = tracker;
    }

    /// Encoded lines not yet taken, and how many.
    pub fn take_lines(&mut self) -> Option<(String, usize)> {
        if self.pending_lines == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.pending_lines);
        // The next lines start with room for as many as these, rather than
        // growing (and copying) from nothing again.
        let room = self.lines.len();
        Some((std::mem::replace(&mut self.lines, String::with_capacity(room)), count))
    }

    /// Shows every point to `observer` from now on.
    pub fn observe_points(&mut self, observer: PointObserver) {
        self.observer = Some(observer);
    }

    /// Alert changes since the last call (published by `run`, dropped by `replay`).
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    pub fn pending_lines(&self) -> usize {
        self.pending_lines
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The newest ts of any event accepted so far, over all offices.
    pub fn newest_event(&self) -> Option<Millis> {
        self.newest_event
    }

    fn collect(&mut self) {
        self.stats.notes.merge(&self.out.notes);
        self.out.notes = Default::default();
        for (office, forgotten) in std::mem::take(&mut self.out.forgotten_early) {
            self.note_forgotten_early(&office, forgotten);
        }
        if !self.out.rejections.is_empty() {
            let refused = std::mem::take(&mut self.out.rejections);
            for rejection in &refused {
                self.log_rejection(rejection, "Refused event: over a limit.");
            }
            if self.mode == Mode::Live {
                self.refused.extend(refused);
            }
        }
        if self.mode == Mode::Live {
            self.alerts.append(&mut self.out.alerts);
        } else {
            self.out.alerts.clear(); // a replay publishes no alerts
        }
        let mut points = std::mem::take(&mut self.out.points);
        for point in points.drain(..) {
            point.write_line(&mut self.lines);
            if let Some(observer) = &mut self.observer {
                observer(&point);
            }
            self.pending_lines += 1;
            self.stats.count_point(&point);
            self.out.recycle(point);
        }
        self.out.points = points;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_depends_on_neither_tokio_nor_the_daemon() {
        let source = include_str!("pipeline.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        for caller in ["tokio", "daemon"] {
            assert!(!code.contains(caller), "the pipeline names `{caller}`, one of its callers' concerns");
        }
    }

    #[test]
    fn the_code_map_names_only_paths_that_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let map = include_str!("../ARCHITECTURE.md");
        let named: Vec<&str> = map
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|quoted| {
                ["src/", "tests/", "benches/", "scripts/", "config/", "docs/"].iter().any(|top| quoted.starts_with(top))
            })
            .collect();
        assert!(named.len() > 10, "{named:?}");
        let missing: Vec<&&str> = named.iter().filter(|path| !root.join(path).exists()).collect();
        assert!(missing.is_empty(), "ARCHITECTURE.md names paths that do not exist: {missing:?}");
    }

    #[test]
    fn the_observer_sees_every_point_the_pipeline_encodes() {
        let mut pipeline = Pipeline::new(&Config::default(), Mode::Replay);
        let (seen_sender, seen) = std::sync::mpsc::channel();
        pipeline.observe_points(Box::new(move |point| {
            let _ = seen_sender.send(point.to_line());
        }));
        for payload in [
            r#"{"type":"issued","ts":"2026-11-20T08:00:00+07:00","ticket":"A1","service":"ktp","office":"o1"}"#,
            r#"{"type":"finished","ts":"2026-11-20T08:05:00+07:00","ticket":"A1","counter":"c1","office":"o1"}"#,
        ] {
            pipeline.handle(Ok(None), payload.as_bytes(), Millis(0), Millis(i64::MAX)).unwrap();
        }
        pipeline.drain(Millis(0));
        let (lines, count) = pipeline.take_lines().unwrap();
        let observed: Vec<String> = seen.try_iter().collect();
        assert_eq!(observed.len(), count);
        assert_eq!(observed, lines.lines().collect::<Vec<_>>());
        assert!(observed.iter().any(|line| line.starts_with("ticket,")), "{observed:?}");
    }
}
