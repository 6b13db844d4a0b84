//! Faults injected into what `queuewatch run` keeps on disk, between runs or
//! while it runs, and what becomes of the points. Each test is a row of the
//! "Faults injected" table of docs/guarantees.md: the fault, then the result it
//! checks.
//!
//! InfluxDB is the scripted local responder of `tests/common/responder.rs`
//! here: it records every line it is sent, so that "every line that reads
//! back arrives, once" can be checked line by line.

mod common;
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::responder::{Reply, Responder};
use queuewatch::config::Compression;
use queuewatch::sink::{self, InfluxApi, InfluxConfig, Secrets, SinkHandle, SinkReport, SinkStore};

const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Lines per batch, and so per spooled frame.
const BATCH: usize = 10;
/// The spool's size in these tests: segments of 128 KiB (an eighth of it).
const SPOOL_BYTES: u64 = 1 << 20;

#[tokio::test]
async fn a_bad_frame_between_runs_costs_only_the_rest_of_its_segment() {
    let data_dir = tempfile::tempdir().unwrap();
    spool_while_influx_is_down(data_dir.path(), 6_000).await;
    let mut segments = spooled(data_dir.path());
    // The 5th batch of a segment of many is damaged: its first 4 batches
    // read back, the rest of it does not, every other segment does.
    let damaged = segments.iter().position(|segment| segment.batches.len() > 20).expect("a segment of many batches");
    flip_a_bit_in_batch(&segments[damaged].path, 5);
    segments[damaged].batches.truncate(4);

    let (written, progress) = send_the_spool(data_dir.path()).await;
    assert_same_lines(&written, &lines_of(&segments));
    assert_eq!(progress.spool_segments_quarantined, 1);
    assert_eq!(quarantine_files(data_dir.path()).len(), 1, "the damaged segment is kept");
}

#[tokio::test]
async fn a_bad_header_between_runs_does_not_stop_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    spool_while_influx_is_down(data_dir.path(), 6_000).await;
    let mut segments = spooled(data_dir.path());
    let damaged = segments.iter().position(|segment| segment.batches.len() > 20).expect("a segment of many batches");
    let mut bytes = std::fs::read(&segments[damaged].path).unwrap();
    bytes[..8].copy_from_slice(b"notaspoo");
    std::fs::write(&segments[damaged].path, bytes).unwrap();
    segments[damaged].batches.clear();

    let (written, progress) = send_the_spool(data_dir.path()).await;
    assert_same_lines(&written, &lines_of(&segments));
    assert_eq!(progress.spool_segments_quarantined, 1);
    assert_eq!(quarantine_files(data_dir.path()).len(), 1);
}

#[tokio::test]
async fn a_segment_damaged_while_the_writer_runs_leaves_the_counts_and_the_spool_drains() {
    let data_dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let influx = Responder::start({
        let up = Arc::clone(&up);
        move |_| if up.load(Ordering::SeqCst) { Reply::status(204) } else { Reply::status(503) }
    })
    .await;
    let (handle, task) = spawn(data_dir.path(), &influx.url);
    for first in (0..6_000).step_by(BATCH) {
        handle.send(lines(first..first + BATCH), BATCH).await.unwrap();
    }
    within_limit(handle.flush()).await.unwrap();
    assert_eq!(handle.progress().spool_points, 6_000);
    // A segment after the one being sent is damaged on disk.
    let mut segments = spooled(data_dir.path());
    let damaged = 1 + segments[1..].iter().position(|segment| segment.batches.len() > 20).expect("a later segment");
    flip_a_bit_in_batch(&segments[damaged].path, 3);
    segments[damaged].batches.truncate(2);
    let expected = lines_of(&segments);
    up.store(true, Ordering::SeqCst);
    wait_until(|| handle.progress().spool_points == 0, &handle).await;
    let progress = handle.progress();
    assert_eq!(progress.points_written, expected.len() as u64);
    assert_eq!(progress.spool_segments_quarantined, 1);
    // New lines go straight out again: the spool is empty, not stuck.
    handle.send(lines(6_000..6_010), BATCH).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    assert_eq!(handle.progress().points_written, expected.len() as u64 + 10);
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(report.points_left_in_spool, 0);
    let mut expected = expected;
    expected.extend(sorted_lines(6_000..6_010));
    expected.sort();
    assert_same_lines(&written_sorted(&influx), &expected);
}

#[tokio::test]
async fn a_spool_that_cannot_be_read_for_a_while_is_read_again_and_new_lines_follow_it() {
    let data_dir = tempfile::tempdir().unwrap();
    spool_while_influx_is_down(data_dir.path(), 300).await;
    let influx = Responder::start(|_| Reply::status(204)).await;
    let store = SinkStore::open(data_dir.path(), SPOOL_BYTES).unwrap();
    // Once opened, the segment cannot be read (a folder in its place) …
    let segment = spooled(data_dir.path()).remove(0).path;
    let moved = data_dir.path().join("moved-away");
    std::fs::rename(&segment, &moved).unwrap();
    std::fs::create_dir(&segment).unwrap();
    let config = InfluxConfig { max_backoff: Duration::from_millis(200), ..config(&influx.url) };
    let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    // … and new lines go behind it, in the spool.
    handle.send(lines(300..310), BATCH).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(influx.requests().is_empty(), "nothing can be sent before the spool's oldest batch");
    assert_eq!(handle.progress().spool_points, 310);
    // … until it can be read again.
    std::fs::remove_dir(&segment).unwrap();
    std::fs::rename(&moved, &segment).unwrap();
    wait_until(|| handle.progress().points_written == 310, &handle).await;
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!((report.points_left_in_spool, report.points_unwritten_at_shutdown), (0, 0));
    assert_same_lines(&written_sorted(&influx), &sorted_lines(0..310));
    assert!(quarantine_files(data_dir.path()).is_empty(), "a passing read error sets nothing aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_starts_on_a_damaged_spool_and_sends_what_reads_back() {
    let influx = Responder::start(|_| Reply::status(204)).await;
    let run_dir = tempfile::tempdir().unwrap();
    // No broker: the daemon retries MQTT while its writer sends the spool.
    let mqtt_url = format!("mqtt://127.0.0.1:{}", common::free_port());
    let text = common::daemon_config_text(&mqtt_url, "queuewatch-faults", "", &influx.url, "");
    let text = text.replacen("api = \"v1\"", "api = \"v1\"\ncompression = \"gzip\"", 1);
    let config = common::write_config(run_dir.path(), &text);
    let data_dir = daemon::data_dir_of(&text);
    spool_while_influx_is_down(&data_dir, 6_000).await;
    let mut segments = spooled(&data_dir);
    assert!(segments.len() >= 3, "{}", segments.len());
    // The oldest segment's header is garbage, the next one has a bad frame.
    let mut bytes = std::fs::read(&segments[0].path).unwrap();
    bytes[..8].copy_from_slice(b"garbage!");
    std::fs::write(&segments[0].path, bytes).unwrap();
    segments[0].batches.clear();
    flip_a_bit_in_batch(&segments[1].path, 2);
    segments[1].batches.truncate(1);
    let expected = lines_of(&segments);

    let mut daemon = daemon::Daemon::start(&config, run_dir.path(), "damaged-spool");
    daemon.wait_for_log("queuewatch running.").await;
    let ops = daemon.ops_url().await;
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while written_sorted(&influx).len() < expected.len() {
        assert!(tokio::time::Instant::now() < deadline, "{}", daemon.log_tails(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same_lines(&written_sorted(&influx), &expected);
    let (_, metrics) = common::http_get(&format!("{ops}/metrics")).await;
    assert!(metrics.contains("queuewatch_spool_segments_quarantined_total 2"), "{metrics}");
    assert!(daemon.current_log_contains("A damaged spool segment is set aside"), "{}", daemon.log_tails(40));
    daemon.terminate().await;
    assert_eq!(quarantine_files(&data_dir).len(), 2);
}

// ---- helpers ----

fn config(url: &str) -> InfluxConfig {
    InfluxConfig {
        api: InfluxApi::V1,
        url: url.into(),
        database: "queuewatch".into(),
        batch_size: BATCH,
        flush_interval: Duration::from_millis(1),
        request_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(5),
        compression: Compression::Gzip,
        ..InfluxConfig::default()
    }
}

fn spawn(data_dir: &Path, url: &str) -> (SinkHandle, tokio::task::JoinHandle<SinkReport>) {
    let store = SinkStore::open(data_dir, SPOOL_BYTES).unwrap();
    sink::spawn(&config(url), Secrets::default(), Some(store), WAIT_LIMIT).unwrap()
}

/// A first run: `count` lines, InfluxDB answering 503 throughout, so they
/// are all left in the spool of `data_dir`.
async fn spool_while_influx_is_down(data_dir: &Path, count: usize) {
    let down = Responder::start(|_| Reply::status(503)).await;
    let (handle, task) = spawn(data_dir, &down.url);
    for first in (0..count).step_by(BATCH) {
        handle.send(lines(first..first + BATCH), BATCH).await.unwrap();
    }
    within_limit(handle.flush()).await.unwrap();
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(report.points_left_in_spool, count as u64);
}

/// A second run with InfluxDB up: sends what the spool of `data_dir` holds
/// and stops; every line InfluxDB took, sorted, and the writer's counts.
async fn send_the_spool(data_dir: &Path) -> (Vec<String>, sink::SinkProgress) {
    let up = Responder::start(|_| Reply::status(204)).await;
    let (handle, task) = spawn(data_dir, &up.url);
    wait_until(|| handle.progress().spool_points == 0, &handle).await;
    let progress = handle.progress();
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(report.points_left_in_spool, 0);
    (written_sorted(&up), progress)
}

async fn wait_until(condition: impl Fn() -> bool, handle: &SinkHandle) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not within {WAIT_LIMIT:?}: {:?}", handle.progress());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within_limit<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT_LIMIT, future).await.expect("did not finish within the limit")
}

/// A spool segment on disk and the lines of each of its batches.
struct Spooled {
    path: PathBuf,
    batches: Vec<Vec<String>>,
}

/// The spool's segments, oldest first, read with the format's framing: a
/// 16-byte header, then frames of `length u32 | crc u32 | number u64`
/// and a record `spooled_at i64 | lines u32 | text`.
fn spooled(data_dir: &Path) -> Vec<Spooled> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data_dir.join("spool"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "qwsp"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let mut batches = Vec::new();
            let mut offset = 16;
            while offset < bytes.len() {
                let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
                let text = std::str::from_utf8(&bytes[offset + 16 + 12..offset + 16 + length]).unwrap();
                batches.push(text.lines().map(str::to_string).collect());
                offset += 16 + length;
            }
            Spooled { path, batches }
        })
        .collect()
}

/// Every line of the segments' batches, sorted.
fn lines_of(segments: &[Spooled]) -> Vec<String> {
    let mut lines: Vec<String> = segments.iter().flat_map(|segment| segment.batches.concat()).collect();
    lines.sort();
    lines
}

/// Compares sorted lines, naming the first difference rather than printing thousands.
fn assert_same_lines(actual: &[String], expected: &[String]) {
    if actual != expected {
        let first = actual.iter().zip(expected).position(|(actual, expected)| actual != expected);
        panic!(
            "{} lines written, {} expected; first difference at {first:?}: {:?} for {:?}",
            actual.len(),
            expected.len(),
            first.map(|at| &actual[at]),
            first.map(|at| &expected[at])
        );
    }
}

fn quarantine_files(data_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(data_dir.join("spool").join("quarantine")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Flips a bit inside the record of batch `number` (1 for the first) of a
/// segment: its checksum fails. Segments begin with a 16-byte header; a
/// frame is a 16-byte header and its record, whose length comes first.
fn flip_a_bit_in_batch(segment: &Path, number: usize) {
    let mut bytes = std::fs::read(segment).unwrap();
    let mut offset = 16;
    for _ in 1..number {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 16 + length;
    }
    bytes[offset + 16 + 20] ^= 0x08;
    std::fs::write(segment, bytes).unwrap();
}

/// Lines with nanosecond timestamps, numbered from `range`.
fn lines(range: std::ops::Range<usize>) -> String {
    range
        .map(|number| {
            format!("ticket,office=o{number} wait_s={number}.5 {}\n", 1_700_000_000_000_000_000u64 + number as u64)
        })
        .collect()
}

fn sorted_lines(range: std::ops::Range<usize>) -> Vec<String> {
    let mut sorted: Vec<String> = lines(range).lines().map(str::to_string).collect();
    sorted.sort();
    sorted
}

/// Every `ticket` line the responder answered 204 to, sorted.
fn written_sorted(responder: &Responder) -> Vec<String> {
    let mut written: Vec<String> = responder
        .requests()
        .iter()
        .filter(|request| request.status == 204)
        .flat_map(|request| request.lines().lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|line| line.starts_with("ticket,"))
        .collect();
    written.sort();
    written
}
