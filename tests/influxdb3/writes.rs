//! The write path on InfluxDB 3 Core: `queuewatch replay` and `queuewatch
//! run` writing through its v1 (`/write`) and v2 (`/api/v2/write`)
//! compatibility APIs and its own v3 API (`/api/v3/write_lp`), and what
//! happens when 3.x refuses the token, stops, or refuses lines.
//!
//! On 3.x a token is the password of the v1 API (any user name) and the
//! token of the v2 and v3 APIs; the v2 API's bucket is the database, its org
//! is ignored. Unlike 1.x, which stores the good lines of a batch and answers
//! "partial write", 3.x's v1 and v2 APIs refuse the whole batch when one
//! line is refused (400, naming the first bad line), so the sink's halving
//! is what stores the good lines there; its v3 API with `accept_partial`
//! stores them and names every refused line in one answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queuewatch::config::InfluxApi;
use queuewatch::sink::{self, InfluxConfig, Secrets, SinkStore};
use queuewatch_servers::{Influx3, Influx3Auth, Influx3Options};

use crate::common::{self, Mosquitto};
use crate::daemon::Daemon;
use crate::mqtt::{Message, Publisher};
use crate::points;
use crate::scenario;
use crate::spool::{
    assert_same_tickets, ndjson, publish_until_refused_and_spooled, resend_dead_letters, spool_bytes, spool_holds,
    tickets, wait_until, wait_until_spool_empty, CLIENT_ID,
};

/// How long 3.x may take to show what it was sent.
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);

const ALL_APIS: [InfluxApi; 3] = [InfluxApi::V1, InfluxApi::V2, InfluxApi::V3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_each_api_with_and_without_a_token_writes_exactly_the_contract_points() {
    let open = Influx3::start();
    let guarded = Influx3::start_with_auth();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = write_token(secrets.path(), guarded.token.as_deref().unwrap());
    let expected_rows = scenario::expected_points().len();
    // 3.x holds at most 5 databases.
    for (server, auth) in [(&open, Influx3Auth::Off), (&guarded, Influx3Auth::AdminToken)] {
        for api in ALL_APIS {
            let label = format!("{api:?}, authentication {auth:?}");
            let database = format!("{api:?}").to_lowercase();
            let keys = influx_keys(api, &server.url, &database, auth, &token_file);
            let dir = tempfile::tempdir().unwrap();
            let config = common::write_config(dir.path(), &format!("{keys}{}", scenario::TRACKING_AND_SLA));
            let events = dir.path().join("scenario.ndjson");
            std::fs::write(&events, scenario::EVENTS).unwrap();
            let output = std::process::Command::new(common::queuewatch_bin())
                .args(["replay", "--config"])
                .arg(&config)
                .arg(&events)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{label}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            assert!(stdout.contains("points refused by the sink: 0"), "{label}: {stdout}");
            let rows = server.wait_for_rows(&database, "ticket", expected_rows, VISIBLE_WITHIN).await;
            let problems = scenario::compare_influx_rows(&rows);
            assert!(problems.is_empty(), "{label}:\n{}", problems.join("\n"));
        }
    }
    // The token is checked: without it, 3.x refuses the v1 query API too.
    let anonymous = queuewatch_servers::InfluxClient::new(&guarded.url).query("v1", "SELECT * FROM ticket").await;
    let answer = anonymous.unwrap_or_else(|error| panic!("{error}"));
    assert!(answer["error"].as_str().is_some_and(|error| error.contains("not authenticated")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_answered_401_spooled_and_everything_arrives_once_the_file_holds_the_right_one() {
    let mqtt = Mosquitto::start();
    let influx = Influx3::start_with_auth();
    let token = influx.token.clone().unwrap();
    influx.create_database("qw").await;
    for api in ALL_APIS {
        let secrets = tempfile::tempdir().unwrap();
        let token_file = write_token(secrets.path(), "apiv3_wrong");
        let database = "qw";
        let keys = influx_keys(api, &influx.url, database, Influx3Auth::AdminToken, &token_file);
        let (dir, config, data_dir) = daemon_config(&mqtt, &keys, "");
        common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
        let mut daemon = Daemon::start(&config, dir.path(), &format!("token-{api:?}"));
        daemon.wait_until_connected().await;

        let messages = tickets("o1", 20);
        publish_until_refused_and_spooled(mqtt.port, &messages, &mut daemon, &data_dir).await;
        assert!(points::rows(&influx, database, "ticket").await.is_empty(), "{api:?}: written with a wrong token");

        write_token(secrets.path(), &token);
        points::wait_for_points(&influx, "ticket", 20, &daemon).await;
        wait_until_spool_empty(&data_dir, &daemon).await;
        daemon.terminate().await;

        common::replay_to(&influx.url, "expected", &v1_credentials(&token_file), &ndjson(&messages));
        assert_same_tickets(&influx, &daemon).await;
        assert!(!data_dir.join(sink::DEAD_LETTER_FILE).exists(), "{api:?}\n{}", daemon.log_tails(60));
        // The next API's run starts from empty databases.
        influx.delete_table(database, "ticket").await;
        influx.delete_table("expected", "ticket").await;
        drop(daemon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb3_stopped_mid_stream_spools_and_every_point_arrives_once_it_is_back() {
    /// Three offices' mornings: 1,200 messages in about 12 s.
    const RATE: f64 = 100.0;
    const OUTAGE: Duration = Duration::from_secs(4);
    let mqtt = Mosquitto::start();
    let mut influx = Influx3::start();
    // The shipped flush interval, 1 s: while the spool holds something, each
    // interval's lines go into it as one batch, and it drains one batch per
    // write, each waiting for a WAL flush of 3.x (every 1 s by default).
    let keys = influx_keys(InfluxApi::V2, &influx.url, "qw", Influx3Auth::Off, Path::new(""))
        .replace("flush_interval = \"100ms\"", "flush_interval = \"1s\"");
    let (dir, config, data_dir) = daemon_config(&mqtt, &format!("{keys}max_backoff = \"500ms\"\n"), "");
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), "stopped");
    daemon.wait_until_connected().await;

    let messages: Vec<Message> = ["o1", "o2", "o3"].iter().flat_map(|office| tickets(office, 100)).collect();
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    let publishing = publisher.publish_paced(Arc::new(messages.clone()), RATE);
    while publisher.handed() < messages.len() / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    influx.stop();
    let stopped_at = Instant::now();
    let handed_at_stop = publisher.handed();
    wait_until(&daemon, "ticket points in the spool", || spool_holds(&data_dir, "ticket,")).await;
    tokio::time::sleep(OUTAGE.saturating_sub(stopped_at.elapsed())).await;
    let spooled = spool_bytes(&data_dir);
    let handed_during_outage = publisher.handed() - handed_at_stop;
    influx.restart();

    let restarted_at = Instant::now();
    publishing.await.unwrap();
    publisher.wait_until_acknowledged().await;
    points::wait_for_points(&influx, "ticket", 300, &daemon).await;
    wait_until_spool_empty(&data_dir, &daemon).await;
    let drained_after = restarted_at.elapsed();
    daemon.terminate().await;

    common::replay_to(&influx.url, "expected", "", &ndjson(&messages));
    assert_same_tickets(&influx, &daemon).await;
    assert!(spooled > 0 && handed_during_outage > 100, "{spooled} bytes spooled, {handed_during_outage} published");
    assert!(!data_dir.join(sink::DEAD_LETTER_FILE).exists(), "{}", daemon.log_tails(60));
    println!(
        "3.x stopped for {OUTAGE:?}: {handed_during_outage} messages published meanwhile, {spooled} bytes spooled; \
         the spool empty {:.1} s after the restart; every ticket point identical to a clean replay",
        drained_after.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_type_conflict_through_v1_is_halved_down_to_the_refused_lines_which_alone_are_dead_lettered() {
    let requests = field_type_conflict(InfluxApi::V1).await;
    println!("v1: {requests} write requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_type_conflict_through_v3_dead_letters_exactly_the_lines_named_refused_in_one_request_each() {
    let requests = field_type_conflict(InfluxApi::V3).await;
    println!("v3: {requests} write requests");
}

/// Another writer stored `queue`'s `waiting` as a string, so 3.x refuses
/// every `queue` line of the daemon's (and through v1 and v2, each batch
/// that holds one): the dead letters hold exactly those lines, every other
/// point is stored, and `resend-dead-letters` stores them once the table is
/// deleted. Returns the write requests the daemon made.
async fn field_type_conflict(api: InfluxApi) -> u64 {
    let mqtt = Mosquitto::start();
    // Halving waits for one WAL flush per request (1 s by default, see the
    // figures below); 100 ms keeps the test short and changes nothing else.
    let options = Influx3Options { wal_flush_interval: Duration::from_millis(100), ..Influx3Options::default() };
    let influx = Influx3::try_start(&options).unwrap_or_else(|error| panic!("{error}"));
    // `waiting` of `queue` is an integer: a string already there makes 3.x
    // refuse every `queue` line, and with it each batch that holds one.
    influx.write("qw", "ns", "queue,office=other,service=x waiting=\"conflict\" 1000000000\n").await;
    let keys = influx_keys(api, &influx.url, "qw", Influx3Auth::Off, Path::new(""));
    let (dir, config, data_dir) = daemon_config(&mqtt, &keys, "");
    common::create_session(&mqtt, CLIENT_ID, "queue/+/events").await;
    let mut daemon = Daemon::start(&config, dir.path(), &format!("conflict-{api:?}"));
    daemon.wait_until_connected().await;
    let ops = daemon.ops_url().await;

    let messages = tickets("o1", 20);
    let publisher = Publisher::connect(mqtt.port, "kiosks");
    publisher.publish_all(&messages).await;
    publisher.wait_until_acknowledged().await;
    points::wait_for_points(&influx, "ticket", 20, &daemon).await;
    // Settled: every point produced is written or dead-lettered.
    let settled = |metrics: &str| {
        metric(metrics, "queuewatch_points_unsettled") == Some(0.0)
            && metric(metrics, "queuewatch_points_dead_lettered_total")
                == metric(metrics, "queuewatch_points_produced_total{measurement=\"queue\"}")
    };
    let deadline = Instant::now() + VISIBLE_WITHIN;
    let metrics = loop {
        let metrics = common::http_get(&format!("{ops}/metrics")).await.1;
        if settled(&metrics) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "not settled:\n{metrics}\n{}", daemon.log_tails(60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.terminate().await;

    common::replay_to(&influx.url, "expected", "", &ndjson(&messages));
    assert_same_tickets(&influx, &daemon).await;
    // The live run may add `office` rows after the last event (they follow
    // the wall clock too); all of the replay's are there.
    let expected = points::rows(&influx, "expected", "office").await;
    let actual = points::rows(&influx, "qw", "office").await;
    let missing: Vec<_> = expected.iter().filter(|row| !actual.contains(row)).collect();
    assert!(!expected.is_empty() && missing.is_empty(), "office rows missing: {missing:?}");
    let dead_letter_path = data_dir.join(sink::DEAD_LETTER_FILE);
    let entries = sink::dead_letter::parse(&std::fs::read_to_string(&dead_letter_path).unwrap());
    let queue_lines = metric(&metrics, "queuewatch_points_produced_total{measurement=\"queue\"}").unwrap();
    assert!(queue_lines > 0.0, "{metrics}");
    assert_eq!(entries.len() as f64, queue_lines, "every queue line, and only those, dead-lettered");
    for entry in &entries {
        assert!(entry.line.starts_with("queue,office=o1,service=ktp "), "{entry:?}");
        assert!(entry.reason.contains("status 400") && entry.reason.contains("invalid column type"), "{entry:?}");
    }
    let requests = metric(&metrics, "queuewatch_write_requests_total").unwrap() as u64;
    // Only the conflicting row of another writer is stored.
    assert_eq!(influx.rows("qw", "SELECT waiting FROM queue").await.len(), 1);

    // Not fixed yet: the lines stay.
    let resend = resend_dead_letters(&config);
    assert!(!resend.status.success(), "{}", String::from_utf8_lossy(&resend.stdout));
    let left = sink::dead_letter::parse(&std::fs::read_to_string(&dead_letter_path).unwrap());
    assert_eq!(left.len(), entries.len());

    // 3.x has no DROP MEASUREMENT: the table is deleted (renamed aside).
    influx.delete_table("qw", "queue").await;
    let resend = resend_dead_letters(&config);
    let output = String::from_utf8_lossy(&resend.stdout);
    assert!(resend.status.success(), "{output}\n{}", String::from_utf8_lossy(&resend.stderr));
    assert!(output.contains(&format!("re-sent and written: {}", entries.len())), "{output}");
    let left = std::fs::read_to_string(&dead_letter_path).unwrap_or_default();
    assert!(sink::dead_letter::parse(&left).is_empty(), "{left}");
    let stored = influx.wait_for_rows("qw", "queue", entries.len(), VISIBLE_WITHIN).await;
    assert_eq!(stored.len(), entries.len(), "{stored:?}");
    assert!(stored.iter().all(|row| row["waiting"].is_i64()), "{stored:?}");
    requests
}

/// Lines in one batch, as the shipped `batch_size`.
const BATCH_LINES: usize = 5000;

/// What telling refused lines apart costs on 3.x, for a batch of the
/// shipped size: through v2 (as through v1) 3.x refuses the whole batch and
/// the sink halves it down to the refused lines, each request waiting for a
/// WAL flush; through v3 it stores the good lines and names the refused ones
/// in one answer. Prints the figures; `QUEUEWATCH_INFLUXDB3_WAL_FLUSH_MS`
/// sets the server's WAL flush interval (100 ms unless set; 3.x's default is
/// 1000), which is what each request waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_lines_of_a_full_batch_cost_halving_requests_through_v2_and_one_request_through_v3() {
    let wal_flush_ms =
        std::env::var("QUEUEWATCH_INFLUXDB3_WAL_FLUSH_MS").ok().and_then(|ms| ms.parse().ok()).unwrap_or(100);
    let options =
        Influx3Options { wal_flush_interval: Duration::from_millis(wal_flush_ms), ..Influx3Options::default() };
    let influx = Influx3::try_start(&options).unwrap_or_else(|error| panic!("{error}"));
    let mut figures = Vec::new();
    for refused in [1, 10] {
        for api in [InfluxApi::V2, InfluxApi::V3] {
            // 3.x holds at most 5 databases: one per API, a table per case.
            let database = format!("{api:?}").to_lowercase();
            let table = format!("m{refused}");
            let body = batch_with_refused_lines(&table, refused);
            influx.write(&database, "ns", &format!("{table},k=conflict v=\"text\" 1\n")).await;
            let config = InfluxConfig {
                api,
                url: influx.url.clone(),
                bucket: database.clone(),
                database: database.clone(),
                batch_size: BATCH_LINES,
                ..InfluxConfig::default()
            };
            let data_dir = tempfile::tempdir().unwrap();
            let store = SinkStore::open(data_dir.path(), 1 << 30).unwrap();
            let started = Instant::now();
            let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), VISIBLE_WITHIN).unwrap();
            handle.send(body.clone(), BATCH_LINES).await.unwrap();
            handle.flush().await.unwrap();
            drop(handle);
            let report = task.await.unwrap();
            let took = started.elapsed();
            let label = format!("{api:?}, {refused} refused");
            assert_eq!(
                (report.points_written, report.points_rejected),
                ((BATCH_LINES - refused) as u64, refused as u64),
                "{label}"
            );
            let text = std::fs::read_to_string(data_dir.path().join(sink::DEAD_LETTER_FILE)).unwrap();
            let dead: Vec<String> = sink::dead_letter::parse(&text).into_iter().map(|entry| entry.line).collect();
            assert_eq!(dead, refused_lines(&body), "{label}: exactly the refused lines");
            let stored = influx.wait_for_rows(&database, &table, BATCH_LINES - refused + 1, VISIBLE_WITHIN).await;
            assert_eq!(stored.len(), BATCH_LINES - refused + 1, "{label}");
            match api {
                InfluxApi::V3 => assert_eq!(report.requests, 1, "{label}"),
                _ => {
                    // Each refused line costs at most two requests per level of halving.
                    let levels = (BATCH_LINES / refused).next_power_of_two().ilog2() as u64 + 1;
                    let bound = 1 + 2 * refused as u64 * levels;
                    assert!(report.requests <= bound, "{label}: {} requests (bound {bound})", report.requests);
                }
            }
            figures.push(format!(
                "{label} in {BATCH_LINES}: {} requests in {:.2} s",
                report.requests,
                took.as_secs_f64()
            ));
        }
    }
    println!("3.x WAL flush every {wal_flush_ms} ms:\n{}", figures.join("\n"));
}

// ---- helpers ----

/// `BATCH_LINES` lines of `table`, `refused` of them (spread evenly) with a
/// float `v` where a string is already stored.
fn batch_with_refused_lines(table: &str, refused: usize) -> String {
    let every = BATCH_LINES / refused;
    (0..BATCH_LINES)
        .map(|index| {
            let value = if index % every == every / 2 { "1.5".to_string() } else { format!("\"{index}\"") };
            format!("{table},k=k{index} v={value} {}\n", 1_000_000_000 + index as i64)
        })
        .collect()
}

fn refused_lines(body: &str) -> Vec<String> {
    body.lines().filter(|line| line.contains(" v=1.5 ")).map(str::to_string).collect()
}

/// The `[influxdb]` section for 3.x at `url` through `api`, writing to
/// `database` (the v2 API's bucket), with the token of `token_file` when
/// `auth` is on.
fn influx_keys(api: InfluxApi, url: &str, database: &str, auth: Influx3Auth, token_file: &Path) -> String {
    let credentials = match (api, auth) {
        (_, Influx3Auth::Off) => String::new(),
        (InfluxApi::V1, Influx3Auth::AdminToken) => v1_credentials(token_file),
        (InfluxApi::V2 | InfluxApi::V3, Influx3Auth::AdminToken) => {
            format!("token_file = \"{}\"\n", token_file.display())
        }
    };
    let target = match api {
        InfluxApi::V1 => format!("api = \"v1\"\ndatabase = \"{database}\"\n"),
        InfluxApi::V2 => format!("api = \"v2\"\nbucket = \"{database}\"\norg = \"queuewatch\"\n"),
        InfluxApi::V3 => format!("api = \"v3\"\ndatabase = \"{database}\"\n"),
    };
    format!("[influxdb]\nurl = \"{url}\"\nflush_interval = \"100ms\"\n{target}{credentials}")
}

/// 3.x takes the token as the v1 API's password, with any user name.
pub fn v1_credentials(token_file: &Path) -> String {
    format!("username = \"queuewatch\"\npassword_file = \"{}\"\n", token_file.display())
}

/// Writes `token` into a token file in `dir`; its path.
pub fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("influxdb-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// A daemon config as [`crate::spool::config_for`] makes it, with
/// `influx_keys` (from [`influx_keys`]) as its `[influxdb]` section.
fn daemon_config(mqtt: &Mosquitto, influx_keys: &str, storage_keys: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, config, data_dir) = crate::spool::config_for(&mqtt.url, "http://replaced", "", storage_keys);
    let mut text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[influxdb]").unwrap();
    let end = start + text[start..].find("\n[tracking]").unwrap() + 1;
    text.replace_range(start..end, influx_keys);
    std::fs::write(&config, text).unwrap();
    (dir, config, data_dir)
}

/// The value of the metric line that starts with `name ` in `/metrics`.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
