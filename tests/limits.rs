//! `[limits]` against a real Mosquitto and a real InfluxDB: a flood of
//! 100,000 messages that invent offices, services and tickets is refused as
//! `cardinality_limit`, counted and echoed, keeps what the daemon holds
//! within the limits, and an office that behaves keeps flowing, its points
//! exactly those of a replay of its own events.

mod common;
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "durability/mqtt.rs"]
mod mqtt;
#[allow(dead_code)]
#[path = "durability/points.rs"]
mod points;

use std::time::{Duration, Instant};

use common::{Influx1, Mosquitto, MosquittoOptions};
use daemon::{Daemon, DEADLINE};
use mqtt::{Message, Publisher};
use queuewatch::time::Millis;

const FLOOD: usize = 100_000;
const MAX_OFFICES: usize = 20;
const MAX_SERVICES: usize = 10;
const MAX_OPEN_TICKETS: usize = 300;
const GOOD_TICKETS: usize = 30;

const LIMITS: &str = "
[limits]
max_offices = 20
max_services_per_office = 10
max_counters_per_office = 10
max_staff_per_office = 10
max_open_tickets_per_office = 300
";

/// The well-behaved office's day: tickets issued a minute apart, each called
/// two minutes and finished five minutes after its issue.
fn good_office_events(base: Millis) -> Vec<String> {
    let at = |ms: i64| Millis(base.0 + ms).to_rfc3339();
    let mut events = Vec::new();
    for n in 0..GOOD_TICKETS as i64 {
        let issued = n * 60_000;
        let ticket = format!("G{n:03}");
        events.push(format!(
            r#"{{"type":"issued","ts":"{}","ticket":"{ticket}","service":"ktp","id":"g-{n}-i"}}"#,
            at(issued)
        ));
        events.push(format!(
            r#"{{"type":"called","ts":"{}","ticket":"{ticket}","counter":"c1","staff":"budi","id":"g-{n}-c"}}"#,
            at(issued + 120_000)
        ));
        events.push(format!(
            r#"{{"type":"finished","ts":"{}","ticket":"{ticket}","counter":"c1","id":"g-{n}-f"}}"#,
            at(issued + 300_000)
        ));
    }
    events
}

/// One message of the flood: a new office, a new service at `evil`, or a new ticket at `evil`.
fn flood_message(n: usize, base: Millis) -> Message {
    let ts = Millis(base.0 + n as i64).to_rfc3339();
    match n % 3 {
        0 => Message::event(
            &format!("junk-{n}"),
            format!(r#"{{"type":"issued","ts":"{ts}","ticket":"J{n}","service":"ktp","id":"j-{n}"}}"#),
        ),
        1 => Message::event(
            "evil",
            format!(r#"{{"type":"issued","ts":"{ts}","ticket":"S{n}","service":"svc-{n}","id":"s-{n}"}}"#),
        ),
        _ => Message::event(
            "evil",
            format!(r#"{{"type":"issued","ts":"{ts}","ticket":"T{n}","service":"ktp","id":"t-{n}"}}"#),
        ),
    }
}

/// The resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// One sample of `/metrics`, by its exact name and labels as written.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_inventing_offices_services_and_tickets_stays_within_the_limits_and_a_good_office_stays_exact() {
    let mqtt = Mosquitto::start_persistent(&MosquittoOptions::default());
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let config_text = common::daemon_config_text(&mqtt.url, "limits", "", &influx.url, LIMITS);
    let config = common::write_config(dir.path(), &config_text);
    let mut daemon = Daemon::start(&config, dir.path(), "daemon");
    daemon.wait_until_connected().await;
    let base_url = daemon.ops_url().await;
    let mut echoes = common::Subscriber::start(mqtt.port, "evil-machine", "queue/evil/rejected").await;

    // An hour ago, so that every time is in the past however long publishing takes.
    let base = Millis(Millis::now().0 - 3_600_000);
    let good = good_office_events(base);
    let mut messages: Vec<Message> = (0..FLOOD).map(|n| flood_message(n, base)).collect();
    // The good office's events go out amid the flood, in their order.
    for (index, payload) in good.iter().enumerate() {
        messages.insert(index * (FLOOD / good.len()) + index, Message::event("good", payload.clone()));
    }
    let started = Instant::now();
    let publisher = Publisher::connect(mqtt.port, "flood");
    publisher.publish_all(&messages).await;
    publisher.wait_until_acknowledged().await;

    // Everything received and decided: every message is accepted or rejected.
    let deadline = Instant::now() + DEADLINE * 3;
    let body = loop {
        let (_, body) = common::http_get(&format!("{base_url}/metrics")).await;
        let received = sample(&body, "queuewatch_events_received_total");
        if received >= messages.len() as f64 && sample(&body, "queuewatch_open_tickets") > 0.0 {
            break body;
        }
        assert!(Instant::now() < deadline, "{received} of {} received\n{}", messages.len(), daemon.log_tails(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let refused_at_arrival = sample(&body, r#"queuewatch_events_rejected_total{reason="cardinality_limit"}"#);
    // The junk offices beyond the first MAX_OFFICES are refused as they arrive.
    assert!(refused_at_arrival >= (FLOOD / 3 - MAX_OFFICES) as f64, "{refused_at_arrival}\n{body}");

    // The good office's tickets, exactly as a replay of its events alone writes them.
    points::wait_for_points(&influx, "ticket", GOOD_TICKETS, &daemon).await;
    let expected_events: String =
        good.iter().map(|payload| payload.replacen('{', r#"{"office":"good","#, 1) + "\n").collect();
    common::replay_into(&influx, "expected", "", &expected_events).await;
    let expected = points::rows(&influx, "expected", "ticket").await;
    assert_eq!(expected.len(), GOOD_TICKETS);
    let actual = points::rows(&influx, "qw", "ticket").await;
    if let Some(difference) = points::difference("ticket", &expected, &actual) {
        panic!("{difference}");
    }

    // What the daemon holds stays within the limits: at most MAX_OPEN_TICKETS
    // at `evil`, one ticket at each of MAX_OFFICES junk offices. Read once
    // every accepted event has left the reorder buffer with its outcome
    // (`evil`'s last ones wait for its window after the good office's).
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        let (_, body) = common::http_get(&format!("{base_url}/metrics")).await;
        let accepted = sample(&body, "queuewatch_events_accepted_total");
        let decided: f64 = body
            .lines()
            .filter(|line| line.starts_with("queuewatch_event_outcomes_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if decided >= accepted {
            break body;
        }
        assert!(Instant::now() < deadline, "{decided} of {accepted} accepted events decided\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let open = sample(&body, "queuewatch_open_tickets");
    assert!(open <= (MAX_OPEN_TICKETS + MAX_OFFICES) as f64, "{open} open tickets");
    let refused_when_applied = sample(&body, r#"queuewatch_event_outcomes_total{outcome="cardinality_limit"}"#);
    // Past the first offices, services and open tickets, the flood is
    // refused: on arrival (new offices; `evil` past its message rate, since
    // the flood's times run faster than 200 a second) or when applied (new
    // services and tickets beyond the limits).
    let admitted = FLOOD as f64 - refused_at_arrival - refused_when_applied;
    assert!(refused_when_applied > 0.0, "{body}");
    assert!(admitted <= (MAX_OFFICES + MAX_SERVICES + MAX_OPEN_TICKETS) as f64, "{admitted} admitted\n{body}");
    let resident = resident_bytes(daemon.pid().unwrap());
    assert!(resident < 150_000_000, "{resident} bytes resident after the flood");

    // Counted per office: `evil`'s `office` rows carry its refusals, a junk office's none of them.
    let deadline = Instant::now() + DEADLINE;
    let office_rejected = |office: &'static str| {
        let influx = &influx;
        async move {
            let query = format!("SELECT sum(\"rejected\") FROM \"office\" WHERE \"office\" = '{office}'");
            influx.rows("qw", &query).await.first().and_then(|row| row["sum"].as_f64()).unwrap_or(0.0)
        }
    };
    while office_rejected("evil").await < refused_when_applied {
        assert!(Instant::now() < deadline, "evil's office rows count {} refusals", office_rejected("evil").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(office_rejected("good").await, 0.0);

    // `evil` hears why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut reasons = Vec::new();
    while let Some((_, echo)) = echoes.next_before(deadline).await {
        reasons.push(echo["reason"].as_str().unwrap_or("").to_string());
        if reasons.iter().any(|reason| reason == "cardinality_limit") {
            break;
        }
    }
    assert!(reasons.iter().any(|reason| reason == "cardinality_limit"), "{reasons:?}");
    eprintln!(
        "{} messages in {:.1} s; {refused_at_arrival} refused on arrival, {refused_when_applied} when applied; \
         {open} open tickets; {:.1} MB resident",
        messages.len(),
        took.as_secs_f64(),
        resident as f64 / 1e6
    );
}
