//! The sink against a scripted local HTTP responder (`tests/common/responder.rs`):
//! exact requests for the three InfluxDB APIs, and what each answer makes the
//! writer task do.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::responder::{Recorded, Reply, Responder};

use queuewatch::config::Compression;
use queuewatch::sink::{
    self, InfluxApi, InfluxConfig, RefusedLine, Secrets, SinkError, SinkReport, SinkStore, V1Writer, V2Writer,
    V3Writer, WriteError, Writer,
};
use tokio::net::TcpListener;

const ALL_APIS: [InfluxApi; 3] = [InfluxApi::V1, InfluxApi::V2, InfluxApi::V3];
const WAIT_LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn v2_request_carries_org_bucket_precision_token_and_gzip_body() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let secrets = Secrets { token: Some("xyz".into()), password: None };
    let report = write_and_shut_down(&config(InfluxApi::V2, &responder.url), secrets, &lines(0..3)).await;

    let requests = responder.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v2/write");
    assert_eq!(sorted(&request.query), pairs(&[("bucket", "queues"), ("org", "acme"), ("precision", "ns")]));
    assert_eq!(request.header("authorization"), Some("Token xyz"));
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(request.lines(), lines(0..3));
    assert_eq!(report, SinkReport { points_written: 3, requests: 1, ..SinkReport::default() });
}

#[tokio::test]
async fn v2_without_a_token_sends_no_authorization() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    write_and_shut_down(&config(InfluxApi::V2, &responder.url), Secrets::default(), &lines(0..1)).await;
    assert_eq!(responder.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn v1_request_carries_db_precision_rp_basic_auth_and_gzip_body() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let config = InfluxConfig {
        retention_policy: Some("autogen".into()),
        username: Some("writer".into()),
        ..config(InfluxApi::V1, &responder.url)
    };
    let secrets = Secrets { token: None, password: Some("s3cret".into()) };
    let report = write_and_shut_down(&config, secrets, &lines(0..3)).await;

    let requests = responder.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/write");
    assert_eq!(request.query, pairs(&[("db", "queuewatch"), ("precision", "ns"), ("rp", "autogen")]));
    // base64("writer:s3cret")
    assert_eq!(request.header("authorization"), Some("Basic d3JpdGVyOnMzY3JldA=="));
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(request.lines(), lines(0..3));
    assert_eq!(report, SinkReport { points_written: 3, requests: 1, ..SinkReport::default() });
}

#[tokio::test]
async fn v3_request_carries_db_nanosecond_precision_accept_partial_bearer_token_and_gzip_body() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let secrets = Secrets { token: Some("apiv3_xyz".into()), password: None };
    let report = write_and_shut_down(&config(InfluxApi::V3, &responder.url), secrets, &lines(0..3)).await;

    let requests = responder.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v3/write_lp");
    assert_eq!(request.query, pairs(&[("db", "queuewatch"), ("precision", "nanosecond"), ("accept_partial", "true")]));
    assert_eq!(request.header("authorization"), Some("Bearer apiv3_xyz"));
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(request.lines(), lines(0..3));
    assert_eq!(report, SinkReport { points_written: 3, requests: 1, ..SinkReport::default() });
}

#[tokio::test]
async fn v3_without_a_token_sends_no_authorization() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    write_and_shut_down(&config(InfluxApi::V3, &responder.url), Secrets::default(), &lines(0..1)).await;
    assert_eq!(responder.requests()[0].header("authorization"), None);
}

/// InfluxDB 3's answer to a partial write, naming `line_numbers` (from 1).
fn partial_write_answer(line_numbers: &[usize]) -> String {
    let data: Vec<String> = line_numbers
        .iter()
        .map(|number| {
            format!(
                "{{\"error_message\":\"invalid column type for column 'wait_s' (line {number})\",\"line_number\":{number},\"original_line\":\"ticket,office=o\"}}"
            )
        })
        .collect();
    format!("{{\"error\":\"partial write of line protocol occurred\",\"data\":[{}]}}", data.join(","))
}

#[tokio::test]
async fn a_v3_partial_write_dead_letters_the_lines_it_names_and_counts_the_others_written_in_one_request() {
    let responder = Responder::start(|request| {
        let numbers: Vec<usize> = request
            .lines()
            .lines()
            .enumerate()
            .filter(|(_, line)| line.contains("o3 ") || line.contains("o12 "))
            .map(|(index, _)| index + 1)
            .collect();
        if numbers.is_empty() {
            Reply::status(204)
        } else {
            Reply::status(400).body(&partial_write_answer(&numbers))
        }
    })
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = InfluxConfig { batch_size: 16, ..config(InfluxApi::V3, &responder.url) };
    let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
    let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    handle.send(lines(0..16), 16).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    let progress = handle.progress();
    assert_eq!((progress.points_written, progress.points_rejected, progress.points_dead_lettered), (14, 2, 2));
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!((report.points_written, report.points_rejected, report.requests), (14, 2, 1));
    let entries =
        sink::dead_letter::parse(&std::fs::read_to_string(data_dir.path().join(sink::DEAD_LETTER_FILE)).unwrap());
    let refused: Vec<&str> = entries.iter().map(|entry| entry.line.as_str()).collect();
    assert_eq!(refused, [lines(3..4).trim_end(), lines(12..13).trim_end()]);
    assert!(entries[0].reason.ends_with("status 400: invalid column type for column 'wait_s' (line 4)"), "{entries:?}");
    assert!(entries[1].reason.ends_with("(line 13)"), "{entries:?}");
}

#[tokio::test]
async fn a_v3_partial_answer_naming_a_line_the_batch_lacks_is_not_trusted() {
    let responder = Responder::start(|_| Reply::status(400).body(&partial_write_answer(&[3, 9]))).await;
    let writer = V3Writer::new(&config(InfluxApi::V3, &responder.url), &Secrets::default()).unwrap();
    // Line 3 of 3 is named with its reason; line 9 of 3 makes the answer unusable.
    assert!(matches!(writer.write(&lines(0..3)).await, Err(WriteError::Permanent { status: 400, .. })));
    let responder = Responder::start(|_| Reply::status(400).body(&partial_write_answer(&[3]))).await;
    let writer = V3Writer::new(&config(InfluxApi::V3, &responder.url), &Secrets::default()).unwrap();
    let refused = vec![RefusedLine { index: 2, message: "invalid column type for column 'wait_s' (line 3)".into() }];
    assert_eq!(writer.write(&lines(0..3)).await, Err(WriteError::LinesRefused { status: 400, refused }));
}

#[tokio::test]
async fn resending_through_v3_keeps_the_lines_it_names_with_the_new_answer_and_drops_the_others() {
    let data_dir = tempfile::tempdir().unwrap();
    let dead_letters = sink::DeadLetters::in_dir(data_dir.path());
    dead_letters.append(&lines(0..6), 400, "old answer", queuewatch::time::Millis(0)).unwrap();
    let responder = Responder::start(|request| {
        let line = request.lines().lines().position(|line| line.contains("o4 ")).unwrap() + 1;
        Reply::status(400).body(&partial_write_answer(&[line]))
    })
    .await;
    let writer = V3Writer::new(&config(InfluxApi::V3, &responder.url), &Secrets::default()).unwrap();
    let report = sink::dead_letter::resend(&writer, data_dir.path(), 100, Duration::from_millis(5)).await.unwrap();
    assert_eq!(report, sink::ResendReport { written: 5, refused: 1, kept: 0 });
    assert_eq!(responder.requests().len(), 1, "one request, no halving");
    let entries = sink::dead_letter::parse(&std::fs::read_to_string(dead_letters.path()).unwrap());
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].line, lines(4..5).trim_end());
    assert!(entries[0].reason.ends_with("status 400: invalid column type for column 'wait_s' (line 5)"));
}

#[tokio::test]
async fn with_compression_none_every_api_sends_the_lines_as_they_are() {
    for api in ALL_APIS {
        let responder = Responder::start(|_| Reply::status(204)).await;
        let config = InfluxConfig { compression: Compression::None, ..config(api, &responder.url) };
        write_and_shut_down(&config, Secrets::default(), &lines(0..3)).await;
        let requests = responder.requests();
        assert_eq!(requests.len(), 1, "{api:?}");
        assert_eq!(requests[0].header("content-encoding"), None, "{api:?}");
        assert_eq!(String::from_utf8(requests[0].body.clone()).unwrap(), lines(0..3), "{api:?}");
    }
}

#[tokio::test]
async fn v1_without_username_or_retention_policy_sends_neither() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    write_and_shut_down(&config(InfluxApi::V1, &responder.url), Secrets::default(), &lines(0..1)).await;
    let request = &responder.requests()[0];
    assert_eq!(request.query, pairs(&[("db", "queuewatch"), ("precision", "ns")]));
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn ok_answers_200_and_204_both_count_as_written() {
    for api in ALL_APIS {
        for status in [200, 204] {
            let responder = Responder::start(move |_| Reply::status(status)).await;
            let report = write_and_shut_down(&config(api, &responder.url), Secrets::default(), &lines(0..2)).await;
            assert_eq!(
                report,
                SinkReport { points_written: 2, requests: 1, ..SinkReport::default() },
                "{api:?} {status}"
            );
        }
    }
}

#[tokio::test]
async fn unauthorized_forbidden_and_not_found_wait_in_the_spool_and_go_out_once_fixed() {
    for api in ALL_APIS {
        for status in [401, 403, 404] {
            let fixed = Arc::new(AtomicBool::new(false));
            let responder = Responder::start({
                let fixed = Arc::clone(&fixed);
                move |_| if fixed.load(Ordering::SeqCst) { Reply::status(204) } else { Reply::status(status) }
            })
            .await;
            let data_dir = tempfile::tempdir().unwrap();
            let config = InfluxConfig { batch_size: 5, ..config(api, &responder.url) };
            let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
            let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
            handle.send(lines(0..20), 20).await.unwrap();
            // Spooled lines are settled: a flush returns while InfluxDB still refuses.
            within_limit(handle.flush()).await.unwrap();
            let progress = handle.progress();
            assert_eq!(progress.points_settled, 20, "{api:?} {status}");
            assert_eq!((progress.points_written, progress.points_rejected), (0, 0), "{api:?} {status}");
            assert_eq!(progress.spool_points, 20, "{api:?} {status}");
            let errors = progress.write_errors;
            assert!(errors.unauthorized + errors.not_found >= 1, "{api:?} {status}: {errors:?}");
            fixed.store(true, Ordering::SeqCst);
            within_limit(async {
                while handle.progress().spool_points > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            // Two batches were in flight when the failures began: they may
            // have reached the spool in either order (see the sink's invariants).
            assert_eq!(written_sorted(&responder), sorted_lines(0..20), "{api:?} {status}: every line once");
            drop(handle);
            let report = within_limit(task).await.unwrap();
            assert_eq!((report.points_written, report.points_rejected, report.points_left_in_spool), (20, 0, 0));
            assert!(!data_dir.path().join(sink::DEAD_LETTER_FILE).exists());
        }
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_their_lines_wait_in_the_spool_until_the_url_is_right() {
    for api in ALL_APIS {
        for status in [301, 302, 307, 308] {
            let fixed = Arc::new(AtomicBool::new(false));
            // The write path answers with a redirect to another path of the
            // same server, which would take anything (a GET after a 301 or 302).
            let responder = Responder::start({
                let fixed = Arc::clone(&fixed);
                move |request| {
                    if request.path == "/moved" || fixed.load(Ordering::SeqCst) {
                        Reply::status(204)
                    } else {
                        Reply::status(status).header("Location", "/moved")
                    }
                }
            })
            .await;
            let (report, moved) = wait_in_the_spool_until_fixed(api, &responder, &fixed).await;
            assert!(moved.is_empty(), "{api:?} {status}: the redirect was followed: {moved:?}");
            assert_eq!((report.points_written, report.points_rejected), (20, 0), "{api:?} {status}");
        }
    }
}

#[tokio::test]
async fn method_not_allowed_and_request_timeout_wait_in_the_spool_rather_than_refuse_the_lines() {
    for api in ALL_APIS {
        for status in [405, 408] {
            let fixed = Arc::new(AtomicBool::new(false));
            let responder = Responder::start({
                let fixed = Arc::clone(&fixed);
                move |_| if fixed.load(Ordering::SeqCst) { Reply::status(204) } else { Reply::status(status) }
            })
            .await;
            let (report, _) = wait_in_the_spool_until_fixed(api, &responder, &fixed).await;
            assert_eq!((report.points_written, report.points_rejected), (20, 0), "{api:?} {status}");
        }
    }
}

/// Sends 20 lines through a sink with a spool to `responder`, which answers
/// badly until `fixed`: checks that they wait in the spool, none refused or
/// dead-lettered, then fixes it and waits until they all arrive. Returns the
/// report and every request that reached `/moved`.
async fn wait_in_the_spool_until_fixed(
    api: InfluxApi,
    responder: &Responder,
    fixed: &AtomicBool,
) -> (SinkReport, Vec<Recorded>) {
    let data_dir = tempfile::tempdir().unwrap();
    let config = InfluxConfig { batch_size: 5, username: Some("writer".into()), ..config(api, &responder.url) };
    let secrets = Secrets { token: Some("xyz".into()), password: Some("s3cret".into()) };
    let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
    let (handle, task) = sink::spawn(&config, secrets, Some(store), WAIT_LIMIT).unwrap();
    handle.send(lines(0..20), 20).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    let progress = handle.progress();
    assert_eq!((progress.points_written, progress.points_rejected), (0, 0), "{api:?}: {progress:?}");
    assert_eq!(progress.spool_points, 20, "{api:?}: {progress:?}");
    assert!(progress.write_errors.unexpected >= 1, "{api:?}: {:?}", progress.write_errors);
    fixed.store(true, Ordering::SeqCst);
    within_limit(async {
        while handle.progress().spool_points > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert!(!data_dir.path().join(sink::DEAD_LETTER_FILE).exists(), "{api:?}: nothing is dead-lettered");
    let written: Vec<String> = responder
        .requests()
        .iter()
        .filter(|request| request.status == 204 && request.path != "/moved")
        .flat_map(|request| request.lines().lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut written = written;
    written.sort();
    assert_eq!(written, sorted_lines(0..20), "{api:?}: every line once, to the configured URL");
    let moved = responder.requests().into_iter().filter(|request| request.path == "/moved").collect();
    (report, moved)
}

#[tokio::test]
async fn a_partial_write_is_halved_down_to_the_refused_lines_which_alone_are_dead_lettered() {
    // 1.x answers 400 "partial write" naming the first bad line; 2.x answers
    // 422; an answer of 3.x's v3 API that names no line is halved the same way.
    for (api, status) in [(InfluxApi::V1, 400), (InfluxApi::V2, 422), (InfluxApi::V3, 400)] {
        let responder = Responder::start(move |request| {
            let body = request.lines();
            match body.lines().filter(|line| line.contains("o3 ") || line.contains("o12 ")).count() {
                0 => Reply::status(204),
                dropped => Reply::status(status).body(&format!(
                    "{{\"error\":\"partial write: field type conflict: input field \\\"wait_s\\\" on measurement \\\"ticket\\\" is type float, already exists as type integer dropped={dropped}\"}}"
                )),
            }
        })
        .await;
        let data_dir = tempfile::tempdir().unwrap();
        let config = InfluxConfig { batch_size: 16, ..config(api, &responder.url) };
        let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
        let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
        handle.send(lines(0..16), 16).await.unwrap();
        within_limit(handle.flush()).await.unwrap();
        drop(handle);
        let report = within_limit(task).await.unwrap();
        assert_eq!((report.points_written, report.points_rejected), (14, 2), "{api:?}");
        let written: String =
            responder.requests().iter().filter(|request| request.status == 204).map(Recorded::lines).collect();
        let expected: String = lines(0..16)
            .lines()
            .filter(|line| !line.contains("o3 ") && !line.contains("o12 "))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(written, expected, "{api:?}: every good line once, in order");
        let text = std::fs::read_to_string(data_dir.path().join(sink::DEAD_LETTER_FILE)).unwrap();
        let entries = sink::dead_letter::parse(&text);
        let refused: Vec<&str> = entries.iter().map(|entry| entry.line.as_str()).collect();
        assert_eq!(refused, [lines(3..4).trim_end(), lines(12..13).trim_end()], "{api:?}");
        assert!(
            entries[0].reason.contains(&format!("status {status}: "))
                && entries[0].reason.contains("partial write: field type conflict"),
            "{}",
            entries[0].reason
        );
        // [16] → [8] → [4] → [2] → [1] bad, [1]; [2]; [4]; [8] → [4] → [2] → [1] bad …
        assert!(report.requests <= 2 * 16, "{api:?}: {}", report.requests);
    }
}

#[tokio::test]
async fn dead_letters_that_now_succeed_leave_the_file_and_those_still_refused_stay_with_the_new_answer() {
    let data_dir = tempfile::tempdir().unwrap();
    let dead_letters = sink::DeadLetters::in_dir(data_dir.path());
    dead_letters.append(&lines(0..6), 400, "partial write: old answer", queuewatch::time::Millis(0)).unwrap();
    let responder = Responder::start(|request| {
        if request.lines().contains("o4 ") {
            Reply::status(400).body("partial write: still refused")
        } else {
            Reply::status(204)
        }
    })
    .await;
    let writer = V1Writer::new(&config(InfluxApi::V1, &responder.url), &Secrets::default()).unwrap();
    let report = sink::dead_letter::resend(&writer, data_dir.path(), 100, Duration::from_millis(5)).await.unwrap();
    assert_eq!(report, sink::ResendReport { written: 5, refused: 1, kept: 0 });
    let text = std::fs::read_to_string(dead_letters.path()).unwrap();
    let entries = sink::dead_letter::parse(&text);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].line, lines(4..5).trim_end());
    assert!(entries[0].reason.ends_with("status 400: partial write: still refused"), "{}", entries[0].reason);

    // InfluxDB down: nothing is lost, the entry stays as it was.
    drop(responder);
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let writer = V1Writer::new(&config(InfluxApi::V1, &url), &Secrets::default()).unwrap();
    let report = sink::dead_letter::resend(&writer, data_dir.path(), 100, Duration::from_millis(5)).await.unwrap();
    assert_eq!(report, sink::ResendReport { written: 0, refused: 0, kept: 1 });
    assert_eq!(std::fs::read_to_string(dead_letters.path()).unwrap(), text);
}

#[tokio::test]
async fn a_second_resend_of_the_dead_letters_is_refused_while_one_runs() {
    let data_dir = tempfile::tempdir().unwrap();
    let dead_letters = sink::DeadLetters::in_dir(data_dir.path());
    dead_letters.append(&lines(0..6), 400, "partial write: old answer", queuewatch::time::Millis(0)).unwrap();
    let before = std::fs::read_to_string(dead_letters.path()).unwrap();
    // InfluxDB never answers: the first resend waits on it for a while.
    let responder = Responder::start(|_| Reply::never()).await;
    let config = InfluxConfig { request_timeout: Duration::from_millis(500), ..config(InfluxApi::V1, &responder.url) };
    let writer = V1Writer::new(&config, &Secrets::default()).unwrap();
    let first = sink::dead_letter::resend(&writer, data_dir.path(), 100, Duration::from_millis(5));
    let second = async {
        responder.wait_for_requests(1).await;
        let writer = V1Writer::new(&config, &Secrets::default()).unwrap();
        sink::dead_letter::resend(&writer, data_dir.path(), 100, Duration::from_millis(5)).await
    };
    let (first, second) = tokio::join!(first, second);
    let error = second.expect_err("a second resend runs alongside the first");
    assert!(error.to_string().contains("another resend-dead-letters is running"), "{error}");
    assert_eq!(first.unwrap(), sink::ResendReport { written: 0, refused: 0, kept: 6 });
    let after = sink::dead_letter::parse(&std::fs::read_to_string(dead_letters.path()).unwrap());
    assert_eq!(after, sink::dead_letter::parse(&before), "every dead letter kept once, with its answer");
}

#[tokio::test]
async fn a_full_spool_stops_taking_lines_and_everything_goes_out_in_order_once_influx_answers() {
    let up = Arc::new(AtomicBool::new(false));
    let responder = Responder::start({
        let up = Arc::clone(&up);
        move |_| if up.load(Ordering::SeqCst) { Reply::status(204) } else { Reply::status(503) }
    })
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = InfluxConfig {
        batch_size: 10,
        flush_interval: Duration::from_millis(1),
        ..config(InfluxApi::V1, &responder.url)
    };
    // Room for about four batches of ten lines.
    let store = SinkStore::open(data_dir.path(), 4 * 10 * 60).unwrap();
    let (handle, task) = sink::spawn(&config, Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    let mut sent = 0;
    let blocked = loop {
        match tokio::time::timeout(Duration::from_millis(500), handle.send(lines(sent..sent + 10), 10)).await {
            Ok(result) => {
                result.unwrap();
                sent += 10;
                assert!(sent < 10_000, "the sink never stopped taking lines");
            }
            Err(_) => break sent,
        }
    };
    let progress = handle.progress();
    assert!(progress.spool_full, "{progress:?}");
    assert!(progress.spool_bytes <= 4 * 10 * 60, "{progress:?}");
    assert!(blocked >= 40, "{blocked}");
    up.store(true, Ordering::SeqCst);
    handle.send(lines(blocked..blocked + 10), 10).await.unwrap();
    within_limit(async {
        while handle.progress().points_written < (blocked + 10) as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!handle.progress().spool_full);
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(
        (report.points_written, report.points_left_in_spool, report.points_unwritten_at_shutdown),
        ((blocked + 10) as u64, 0, 0)
    );
    let written = written_sorted(&responder);
    assert_eq!(written.len(), blocked + 10, "no line twice");
    assert_eq!(written, sorted_lines(0..blocked + 10));
}

#[tokio::test]
async fn points_left_in_the_spool_at_shutdown_are_sent_first_at_the_next_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let down = Responder::start(|_| Reply::status(503)).await;
    let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
    let (handle, task) =
        sink::spawn(&config(InfluxApi::V1, &down.url), Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    handle.send(lines(0..30), 30).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!((report.points_left_in_spool, report.points_unwritten_at_shutdown, report.points_written), (30, 0, 0));

    let up = Responder::start(|_| Reply::status(204)).await;
    let store = SinkStore::open(data_dir.path(), 1 << 20).unwrap();
    let (handle, task) =
        sink::spawn(&config(InfluxApi::V1, &up.url), Secrets::default(), Some(store), WAIT_LIMIT).unwrap();
    assert_eq!(handle.progress().points_spooled_before_start, 30);
    handle.send(lines(30..40), 10).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    within_limit(async {
        while handle.progress().points_written < 40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let written: String = up.requests().iter().map(Recorded::lines).collect();
    assert_eq!(written, lines(0..40), "the spool first, then the new lines");
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!((report.points_written, report.points_left_in_spool), (40, 0));
}

#[tokio::test]
async fn too_large_batch_is_split_until_every_line_arrives_exactly_once() {
    for api in ALL_APIS {
        let responder = Responder::start(|request| {
            if request.lines().lines().count() > 2 {
                Reply::status(413).body("request entity too large")
            } else {
                Reply::status(204)
            }
        })
        .await;
        let report = write_and_shut_down(&config(api, &responder.url), Secrets::default(), &lines(0..7)).await;

        let accepted: String =
            responder.requests().iter().filter(|request| request.status == 204).map(Recorded::lines).collect();
        assert_eq!(accepted, lines(0..7), "{api:?}: every line once, in order");
        assert_eq!(report.points_written, 7, "{api:?}");
        assert_eq!(report.points_rejected, 0, "{api:?}");
        assert_eq!(report.retries, 0, "{api:?}");
        // [7] 413 → [3] 413 → [1] [2]; [4] 413 → [2] [2].
        assert_eq!(responder.requests().len(), 7, "{api:?}");
        assert_eq!(report.requests, 7, "{api:?}");
    }
}

#[tokio::test]
async fn v1_reads_retry_after_seconds_from_a_429() {
    let responder = Responder::start(|_| Reply::status(429).header("Retry-After", "1").body("slow down")).await;
    let writer = V1Writer::new(&config(InfluxApi::V1, &responder.url), &Secrets::default()).unwrap();
    let error = writer.write(&lines(0..1)).await.unwrap_err();
    assert_eq!(
        error,
        WriteError::Transient {
            status: Some(429),
            retry_after: Some(Duration::from_secs(1)),
            message: "slow down".into()
        }
    );
}

#[tokio::test]
async fn too_many_requests_with_retry_after_is_retried_then_written() {
    for api in ALL_APIS {
        let responder = Responder::start(|request| match request.index {
            0 => Reply::status(429).header("Retry-After", "1"),
            _ => Reply::status(204),
        })
        .await;
        // max_backoff caps Retry-After, which keeps this test fast.
        let report = write_and_shut_down(&config(api, &responder.url), Secrets::default(), &lines(0..3)).await;
        assert_eq!(responder.requests().len(), 2, "{api:?}");
        assert_eq!(responder.requests()[1].lines(), lines(0..3), "{api:?}: the same batch again");
        assert_eq!(report, SinkReport { points_written: 3, requests: 2, retries: 1, ..SinkReport::default() });
    }
}

#[tokio::test]
async fn service_unavailable_is_retried_until_written() {
    for api in ALL_APIS {
        let responder = Responder::start(|request| match request.index {
            0 | 1 => Reply::status(503),
            _ => Reply::status(204),
        })
        .await;
        let report = write_and_shut_down(&config(api, &responder.url), Secrets::default(), &lines(0..3)).await;
        assert_eq!(responder.requests().len(), 3, "{api:?}");
        assert_eq!(report, SinkReport { points_written: 3, requests: 3, retries: 2, ..SinkReport::default() });
    }
}

#[tokio::test]
async fn connection_refused_is_retried_as_transient_until_the_shutdown_deadline() {
    for api in ALL_APIS {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (handle, task) =
            sink::spawn(&config(api, &url), Secrets::default(), None, Duration::from_millis(200)).unwrap();
        handle.send(lines(0..3), 3).await.unwrap();
        drop(handle);
        let report = within_limit(task).await.unwrap();
        assert_eq!(report.points_unwritten_at_shutdown, 3, "{api:?}");
        assert_eq!(report.points_written + report.points_rejected, 0, "{api:?}");
        assert!(report.requests >= 1, "{api:?}");
    }
}

#[tokio::test]
async fn a_request_timeout_is_a_transient_failure() {
    let responder = Responder::start(|_| Reply::never()).await;
    let config = InfluxConfig { request_timeout: Duration::from_millis(100), ..config(InfluxApi::V1, &responder.url) };
    for writer in [
        Box::new(V1Writer::new(&config, &Secrets::default()).unwrap()) as Box<dyn Writer>,
        Box::new(V2Writer::new(&InfluxConfig { api: InfluxApi::V2, ..config.clone() }, &Secrets::default()).unwrap()),
        Box::new(V3Writer::new(&InfluxConfig { api: InfluxApi::V3, ..config.clone() }, &Secrets::default()).unwrap()),
    ] {
        let error = within_limit(writer.write(&lines(0..1))).await.unwrap_err();
        assert!(matches!(error, WriteError::Transient { status: None, .. }), "{}: {error:?}", writer.describe());
    }
}

#[tokio::test]
async fn batch_size_is_respected() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let config = InfluxConfig { batch_size: 4, ..config(InfluxApi::V2, &responder.url) };
    let report = write_and_shut_down(&config, Secrets::default(), &lines(0..10)).await;
    // Two batches are in flight at once and may land in either order; each keeps its lines' order.
    let expected = lines(0..10);
    let mut batches: Vec<String> = responder.requests().iter().map(Recorded::lines).collect();
    batches.sort_by_key(|batch| expected.find(batch.as_str()));
    let sizes: Vec<usize> = batches.iter().map(|batch| batch.lines().count()).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(batches.concat(), expected);
    assert_eq!(report, SinkReport { points_written: 10, requests: 3, ..SinkReport::default() });
}

#[tokio::test]
async fn lines_sent_in_several_chunks_share_a_batch() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let (handle, task) =
        sink::spawn(&config(InfluxApi::V1, &responder.url), Secrets::default(), None, WAIT_LIMIT).unwrap();
    for number in 0..5 {
        handle.send(lines(number..number + 1), 1).await.unwrap();
    }
    handle.flush().await.unwrap();
    assert_eq!(responder.requests().len(), 1, "flush resolves after the write");
    drop(handle);
    assert_eq!(within_limit(task).await.unwrap().points_written, 5);
    assert_eq!(responder.requests()[0].lines(), lines(0..5));
}

#[tokio::test]
async fn flush_interval_sends_without_an_explicit_flush() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let config = InfluxConfig { flush_interval: Duration::from_millis(20), ..config(InfluxApi::V2, &responder.url) };
    let (handle, task) = sink::spawn(&config, Secrets::default(), None, WAIT_LIMIT).unwrap();
    handle.send(lines(0..2), 2).await.unwrap();

    responder.wait_for_requests(1).await;
    assert_eq!(responder.requests()[0].lines(), lines(0..2));
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(report, SinkReport { points_written: 2, requests: 1, ..SinkReport::default() });
}

#[tokio::test]
async fn shutdown_against_a_failing_server_ends_after_the_deadline_counting_unwritten() {
    for api in ALL_APIS {
        let responder = Responder::start(|_| Reply::status(503)).await;
        let config = InfluxConfig { batch_size: 4, ..config(api, &responder.url) };
        let (handle, task) = sink::spawn(&config, Secrets::default(), None, Duration::from_millis(200)).unwrap();
        handle.send(lines(0..10), 10).await.unwrap();
        responder.wait_for_requests(2).await;
        drop(handle);

        let report = within_limit(task).await.unwrap();
        assert_eq!(report.points_unwritten_at_shutdown, 10, "{api:?}");
        assert_eq!(report.points_written + report.points_rejected, 0, "{api:?}");
        // A request in flight at the deadline is cancelled, maybe before the responder read it all.
        assert!(report.requests >= responder.requests().len() as u64, "{api:?}");
        assert!(report.retries >= 1, "{api:?}");
    }
}

#[tokio::test]
async fn lines_left_at_shutdown_are_written_when_the_server_answers() {
    let responder = Responder::start(|_| Reply::status(204)).await;
    let (handle, task) =
        sink::spawn(&config(InfluxApi::V1, &responder.url), Secrets::default(), None, WAIT_LIMIT).unwrap();
    handle.send(lines(0..3), 3).await.unwrap();
    drop(handle);
    let report = within_limit(task).await.unwrap();
    assert_eq!(report, SinkReport { points_written: 3, requests: 1, ..SinkReport::default() });
}

#[tokio::test]
async fn bad_url_gives_a_config_error_not_a_panic() {
    for api in ALL_APIS {
        for url in ["not a url", "/3242/23", "ftp://influx:8086", "http://"] {
            match sink::spawn(&config(api, url), Secrets::default(), None, WAIT_LIMIT) {
                Err(SinkError::Config(message)) => {
                    assert!(message.contains("influxdb.url"), "{message}")
                }
                Err(other) => panic!("{api:?} {url:?}: expected a config error, got {other:?}"),
                Ok(_) => panic!("{api:?} {url:?}: accepted"),
            }
        }
    }
}

#[tokio::test]
async fn a_url_with_a_user_and_password_is_refused_without_showing_them() {
    for api in ALL_APIS {
        let config = config(api, "http://writer:hunter2@127.0.0.1:8086");
        match sink::spawn(&config, Secrets::default(), None, WAIT_LIMIT) {
            Err(SinkError::Config(message)) => {
                assert!(message.contains("influxdb.url"), "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
            Err(other) => panic!("{api:?}: expected a config error, got {other:?}"),
            Ok(_) => panic!("{api:?}: a URL with credentials was accepted"),
        }
    }
}

// ---- helpers ----

fn config(api: InfluxApi, url: &str) -> InfluxConfig {
    InfluxConfig {
        api,
        url: url.into(),
        org: "acme".into(),
        bucket: "queues".into(),
        database: "queuewatch".into(),
        batch_size: 100,
        flush_interval: Duration::from_secs(60),
        request_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(5),
        // The responder is on this machine, where `auto` would not compress;
        // these tests read every body as gzip.
        compression: Compression::Gzip,
        ..InfluxConfig::default()
    }
}

/// Lines with nanosecond timestamps, numbered from `range`.
fn lines(range: std::ops::Range<usize>) -> String {
    range
        .map(|number| {
            format!("ticket,office=o{number} wait_s={number}.5 {}\n", 1_700_000_000_000_000_000u64 + number as u64)
        })
        .collect()
}

/// Every line the responder answered 204 to, sorted.
fn written_sorted(responder: &Responder) -> Vec<String> {
    let mut written: Vec<String> = responder
        .requests()
        .iter()
        .filter(|request| request.status == 204)
        .flat_map(|request| request.lines().lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    written.sort();
    written
}

/// [`lines`] one by one, sorted.
fn sorted_lines(range: std::ops::Range<usize>) -> Vec<String> {
    let mut sorted: Vec<String> = lines(range).lines().map(str::to_string).collect();
    sorted.sort();
    sorted
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fn sorted(items: &[(String, String)]) -> Vec<(String, String)> {
    let mut items = items.to_vec();
    items.sort();
    items
}

/// Spawns the sink, sends `text` in one chunk, flushes, drops the handle and
/// returns the report.
async fn write_and_shut_down(config: &InfluxConfig, secrets: Secrets, text: &str) -> SinkReport {
    let (handle, task) = sink::spawn(config, secrets, None, WAIT_LIMIT).unwrap();
    handle.send(text.to_string(), text.lines().count()).await.unwrap();
    within_limit(handle.flush()).await.unwrap();
    drop(handle);
    within_limit(task).await.unwrap()
}

async fn within_limit<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT_LIMIT, future).await.expect("did not finish within the limit")
}
