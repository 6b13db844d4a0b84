//! `[limits]` and forgetting: what a publisher inventing names or tickets
//! can make the tracker remember, and that unused names go again.

use super::*;
use crate::tracker::state::{decode, encode};

fn limited(adjust: impl FnOnce(&mut LimitsConfig)) -> TrackerSettings {
    let mut settings = settings();
    adjust(&mut settings.limits);
    settings
}

/// Runs a script through `tracker` (ingesting, as `run_script`), returning the output.
fn feed(tracker: &mut Tracker, script: &str) -> Output {
    let mut out = Output::default();
    for line in script.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (event, arrival) = script_event(line);
        tracker.ingest(event, arrival.unwrap_or(Millis(0)), &mut out);
    }
    out
}

#[test]
fn an_open_ticket_beyond_the_limit_is_refused_whatever_the_arrival_order_within_the_window() {
    // A3 arrives first but is the third in event time: it is the one refused.
    let script = "08:02 issued A3 service=ktp id=k3
                  08:01 issued A2 service=ktp id=k2
                  08:00 issued A1 service=ktp id=k1
                  08:05 finished A1 counter=c1
                  08:06 issued A4 service=ktp
                  08:07 finished A2 counter=c1
                  08:08 finished A4 counter=c1
                  08:09 finished A3 counter=c1";
    let settings = limited(|limits| limits.max_open_tickets_per_office = 2);
    let mut tracker = Tracker::new(settings);
    let mut out = feed(&mut tracker, script);
    tracker.drain(Millis(0), &mut out);
    let mut tickets: Vec<String> = out
        .points
        .iter()
        .filter(|point| point.measurement == "ticket")
        .map(|point| render_value(&point.fields.iter().find(|(key, _)| *key == "ticket").unwrap().1))
        .collect();
    tickets.sort();
    assert_eq!(tickets, ["A1", "A2", "A4"]);
    assert_eq!(out.notes.get(Note::CardinalityLimit), 1);
    assert_eq!(out.notes.get(Note::OrphanClose), 1, "A3's finish finds nothing open");
    let [refused] = out.rejections.as_slice() else { panic!("{:?}", out.rejections) };
    assert_eq!(refused.reason, RejectReason::CardinalityLimit);
    assert_eq!(refused.id.as_deref(), Some("k3"));
    assert_eq!(refused.office.as_ref().map(OfficeId::as_str), Some("o1"));
    assert!(refused.detail.contains("limits.max_open_tickets_per_office"), "{}", refused.detail);
}

#[test]
fn new_services_counters_and_staff_beyond_their_limits_are_refused_and_known_ones_flow() {
    let settings = limited(|limits| {
        limits.max_services_per_office = 1;
        limits.max_counters_per_office = 1;
        limits.max_staff_per_office = 1;
    });
    check_with(
        settings,
        "08:00 issued A1 service=ktp
         08:01 issued A2 service=paspor
         08:02 called A1 counter=c1 staff=budi
         08:03 finished A1 counter=c2
         08:04 finished A1 counter=c1 staff=siti
         08:05 finished A1 counter=c1 staff=budi",
        "o1 served ktp c1 @08:05:00 ticket=A1 recalls=0 wait_s=120 service_s=180 total_s=300 visit_s=300
         wait_within_target=1 service_within_target=1 staff=budi",
        "cardinality_limit=3",
    );
}

#[test]
fn names_nothing_uses_any_more_are_forgotten_and_make_room_again() {
    let mut settings = limited(|limits| {
        limits.max_services_per_office = 2;
        limits.max_counters_per_office = 2;
        limits.max_staff_per_office = 2;
    });
    // B1 stays open across the gap.
    settings.max_ticket_age_ms = 10 * 86_400_000;
    let keep_ms = settings.forget_after_ms();
    let mut tracker = Tracker::new(settings.clone());
    // ktp, c1 and budi serve A1 on day 0 only; B1 (umum, c2, siti) stays open.
    let mut out = feed(
        &mut tracker,
        "08:00 issued A1 service=ktp
         08:01 finished A1 counter=c1 staff=budi
         08:02 issued B1 service=umum
         08:03 called B1 counter=c2 staff=siti",
    );
    // Long after: ktp, c1 and budi are forgotten, so a new service, counter
    // and staff id fit again; what B1 refers to is kept, renumbered.
    let later = Millis(parse_time("08:03").0 + keep_ms + 3_600_000);
    let at = |offset_ms: i64| render_time(later.0 + offset_ms);
    let more = feed(
        &mut tracker,
        &format!(
            "{} issued P1 service=paspor
             {} called P1 counter=c3 staff=tono
             {} heartbeat",
            at(0),
            at(1000),
            at(60_000)
        ),
    );
    assert_eq!(
        out.notes.get(Note::CardinalityLimit) + more.notes.get(Note::CardinalityLimit),
        0,
        "{:?}",
        more.rejections
    );
    out.points.extend(more.points);
    let office = &tracker.offices[&OfficeId::parse("o1").unwrap()];
    let names = |values: Vec<&str>| values.join(" ");
    assert_eq!(names(office.ctx.services.values().iter().map(ServiceId::as_str).collect()), "umum paspor");
    assert_eq!(names(office.ctx.counters.values().iter().map(CounterId::as_str).collect()), "c2 c3");
    assert_eq!(names(office.ctx.staff.values().iter().map(StaffId::as_str).collect()), "siti tono");

    // A state taken after the renumbering restores to a tracker that writes
    // the same points, and B1's point names its service, counter and staff.
    let restored = decode(settings, &encode(&tracker)).unwrap();
    let finish = format!("{} finished B1 counter=c2\n{} finished P1 counter=c3", at(120_000), at(121_000));
    let mut finished = Vec::new();
    for mut copy in [tracker, restored] {
        let mut out = feed(&mut copy, &finish);
        copy.drain(Millis(0), &mut out);
        let mut points: Vec<String> =
            out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
        points.sort();
        finished.push(points);
    }
    assert_eq!(finished[0], finished[1]);
    // Sorted: paspor before umum.
    let [p1, b1] = finished[0].as_slice() else { panic!("{:?}", finished[0]) };
    assert!(b1.starts_with("o1 served umum c2 ") && b1.contains("ticket=B1") && b1.ends_with("staff=siti"), "{b1}");
    assert!(p1.starts_with("o1 served paspor c3 ") && p1.ends_with("staff=tono"), "{p1}");
}

#[test]
fn offices_beyond_the_limit_or_not_configured_are_refused_and_an_idle_one_is_forgotten() {
    let mut settings = limited(|limits| limits.max_offices = 1);
    settings.offices.insert(OfficeId::parse("conf").unwrap(), OfficeConfig::default());
    let keep_ms = settings.forget_after_ms();
    let mut tracker = Tracker::new(settings.clone());
    let mut out = Output::default();
    let admit = |tracker: &mut Tracker, event: &Event, out: &mut Output| {
        tracker.ingest_admitted(event.clone(), Millis(0), Millis(0), out)
    };
    let (first, _) = script_event("08:00 issued A1 service=ktp office=o1");
    admit(&mut tracker, &first, &mut out).unwrap();
    let (second, _) = script_event("08:00 issued A1 service=ktp office=o2 id=x");
    let refused = admit(&mut tracker, &second, &mut out).unwrap_err();
    assert!(!tracker.knows(&second.office), "a refused office is not created");
    assert_eq!((refused.reason, refused.id.as_deref()), (RejectReason::CardinalityLimit, Some("x")));
    assert!(refused.detail.contains("limits.max_offices"), "{}", refused.detail);
    // A configured office never counts against the limit.
    let (configured, _) = script_event("08:00 issued A1 service=ktp office=conf");
    admit(&mut tracker, &configured, &mut out).unwrap();

    // o1 closes its ticket and falls idle; once the office clock has passed
    // the time names are kept, it is forgotten and o2 fits.
    let (close, _) = script_event("08:01 finished A1 counter=c1 office=o1");
    tracker.ingest(close, Millis(0), &mut out);
    tracker.advance(Millis(0), &mut out);
    assert!(tracker.offices.contains_key(&OfficeId::parse("o1").unwrap()));
    let (tick, _) = script_event("08:02 heartbeat office=o1");
    tracker.ingest(tick, Millis(0), &mut out);
    // Wall time since the last event moves the office clock on.
    tracker.advance(Millis(keep_ms / 2), &mut out);
    assert!(tracker.offices.contains_key(&OfficeId::parse("o1").unwrap()), "o1 kept while names are");
    tracker.advance(Millis(keep_ms + 60_000), &mut out);
    tracker.advance(Millis(2 * keep_ms), &mut out);
    assert!(!tracker.offices.contains_key(&OfficeId::parse("o1").unwrap()), "o1 forgotten");
    assert!(tracker.offices.contains_key(&OfficeId::parse("conf").unwrap()), "configured offices stay");
    admit(&mut tracker, &second, &mut out).unwrap();

    let mut only = settings;
    only.only_configured = true;
    let mut tracker = Tracker::new(only);
    let (stranger, _) = script_event("08:00 issued A1 office=o9");
    assert_eq!(admit(&mut tracker, &stranger, &mut out).unwrap_err().reason, RejectReason::UnknownOffice);
    admit(&mut tracker, &configured, &mut out).unwrap();
}

#[test]
fn the_message_rate_is_measured_on_the_office_clock() {
    let settings = limited(|limits| {
        limits.max_messages_per_second_per_office = 1;
        limits.max_burst_per_office = 2;
    });
    let mut tracker = Tracker::new(settings);
    let mut out = Output::default();
    let mut admitted = Vec::new();
    // Three at once: the burst takes two. A second of event time later, one more fits.
    for (n, line) in
        ["08:00 heartbeat", "08:00 heartbeat", "08:00 heartbeat", "08:00:01 heartbeat", "08:00:01 heartbeat"]
            .iter()
            .enumerate()
    {
        let (mut event, _) = script_event(line);
        event.id = Some(format!("h{n}").into());
        admitted.push(tracker.ingest_admitted(event, Millis(0), Millis(0), &mut out).is_ok());
    }
    assert_eq!(admitted, [true, true, false, true, false]);
    // A backlog a day long passes at once: it carries its own times.
    for minute in 0..600 {
        let (event, _) = script_event(&format!("{:02}:{:02}:30 heartbeat", 9 + minute / 60, minute % 60));
        assert!(tracker.ingest_admitted(event, Millis(0), Millis(0), &mut out).is_ok(), "minute {minute}");
    }
}

/// What an office remembers of closed segments: (closed tickets, their and
/// ticketless events' dedup keys).
fn remembered(tracker: &Tracker) -> (usize, usize) {
    let office = &tracker.offices[&OfficeId::parse("o1").unwrap()];
    (office.tickets.len() - office.open_segments, office.seen.closed_keys())
}

fn forgotten_early(out: &Output) -> u64 {
    out.forgotten_early.iter().map(|(_, count)| count).sum()
}

#[test]
fn closed_tickets_and_dedup_keys_beyond_the_limit_are_forgotten_least_recently_closed_first() {
    // Each ticket leaves 1 closed ticket and 4 keys (two events, each with
    // an id and a content key): 5 fit in 6, 10 do not.
    let settings = limited(|limits| limits.max_remembered_per_office = 6);
    let mut tracker = Tracker::new(settings);
    let mut out = feed(
        &mut tracker,
        "08:00 issued A1 service=ktp id=a1
         08:01 finished A1 counter=c1 id=a2
         08:02 issued A2 service=ktp id=b1
         08:03 finished A2 counter=c1 id=b2
         08:04 issued A3 service=ktp id=c1
         08:05 finished A3 counter=c1 id=c2
         08:06 called A4 counter=c1 id=d1",
    );
    assert_eq!(remembered(&tracker), (1, 4), "A3 only: A1, then A2, were forgotten as A2, then A3, closed");
    assert_eq!(forgotten_early(&out), 2 * 5);
    assert_eq!(out.forgotten_early.first().map(|(office, _)| office.as_str()), Some("o1"));

    // A copy of A3's finish is still a duplicate; one of A1's is not
    // recognised any more and, late with no open segment, changes nothing.
    let copies = feed(
        &mut tracker,
        "08:05 finished A3 counter=c1 id=c2
         08:01 finished A1 counter=c1 id=a2",
    );
    assert_eq!((copies.notes.get(Note::Duplicate), copies.notes.get(Note::LateDropped)), (1, 1));
    // The dropped copy's keys closed at 08:01, before A3: they go first.
    assert_eq!(remembered(&tracker), (1, 4));
    assert_eq!(forgotten_early(&copies), 2);
    out.points.extend(copies.points);
    tracker.drain(Millis(0), &mut out);
    let tickets: Vec<String> =
        out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
    assert_eq!(tickets.len(), 3, "{tickets:?}");
}

#[test]
fn without_the_limit_closed_tickets_and_keys_stay_for_the_dedup_horizon() {
    let settings = limited(|limits| limits.max_remembered_per_office = 0);
    let mut tracker = Tracker::new(settings);
    let out = feed(
        &mut tracker,
        "08:00 issued A1 service=ktp id=a1
         08:01 finished A1 counter=c1 id=a2
         08:02 issued A2 service=ktp id=b1
         08:03 finished A2 counter=c1 id=b2
         08:10 heartbeat",
    );
    assert_eq!(remembered(&tracker), (2, 8));
    assert_eq!(forgotten_early(&out), 0);
}

/// Which tickets and keys are forgotten early depends on the events, not on
/// their arrival order within the reorder window, and a state taken when the
/// limit bites resumes to the same output.
#[test]
fn forgetting_early_is_the_same_whatever_the_arrival_order_within_the_window() {
    let settings = limited(|limits| limits.max_remembered_per_office = 7);
    let script = "08:00:00 issued A1 service=ktp id=a1
                  08:00:01 issued A2 service=ktp id=b1
                  08:00:02 finished A2 counter=c1 id=b2
                  08:00:03 finished A1 counter=c1 id=a2
                  08:00:04 heartbeat
                  08:00:05 issued A3 service=ktp
                  08:00:06 finished A3 counter=c2
                  08:00:30 heartbeat";
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let mut results = Vec::new();
    for order in [[0, 1, 2, 3, 4, 5, 6, 7], [3, 2, 1, 0, 6, 5, 4, 7], [6, 4, 0, 2, 5, 1, 3, 7]] {
        let mut tracker = Tracker::new(settings.clone());
        let shuffled: Vec<&str> = order.iter().map(|index| lines[*index]).collect();
        let out = feed(&mut tracker, &shuffled.join("\n"));
        let restored = decode(settings.clone(), &encode(&tracker)).unwrap();
        let mut outcome = Vec::new();
        for mut copy in [tracker, restored] {
            // Copies of every event: recognised exactly where remembered.
            let mut more = feed(&mut copy, script);
            copy.drain(Millis(0), &mut more);
            outcome.push((remembered(&copy), render_notes(&more.notes)));
        }
        assert_eq!(outcome[0], outcome[1], "restored");
        let mut tickets: Vec<String> =
            out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
        tickets.sort();
        results.push((tickets, forgotten_early(&out), outcome[0].clone()));
    }
    assert!(results[0].1 > 0, "the limit bites");
    assert!(results.iter().all(|result| *result == results[0]), "{results:#?}");
}

/// Recalls with an `id` every second for 5.5 hours, to ticket A1 that stays
/// open throughout (each recall keeps it alive): the tracker's output and
/// what it remembers.
fn recall_flood(settings: TrackerSettings) -> (Tracker, Output) {
    let mut tracker = Tracker::new(settings);
    let mut out = feed(&mut tracker, "08:00 issued A1 service=ktp id=i1");
    let first = parse_time("08:00:01").0;
    for n in 0..20_000 {
        let (mut event, _) = script_event(&format!("{} recalled A1 counter=c1", render_time(first + n * 1000)));
        event.id = Some(format!("r{n}").into());
        tracker.ingest(event, Millis(0), &mut out);
    }
    (tracker, out)
}

#[test]
fn recalls_to_a_ticket_that_never_closes_are_remembered_within_the_offices_limit() {
    let settings = limited(|limits| limits.max_remembered_per_office = 1_000);
    let (mut tracker, mut out) = recall_flood(settings);
    // A segment's first keys, the keys of the events held for reordering,
    // and at most the limit of the rest.
    let keys = tracker.dedup_keys();
    assert!(keys <= 1_000 + 2 * SEGMENT_KEYS_KEPT + 64, "{keys} dedup keys for 40,002 events' keys");
    assert!(forgotten_early(&out) >= 30_000, "{}", forgotten_early(&out));
    // The least recently touched are forgotten first: copies of the issue
    // (among the segment's first keys) and of the last recall are still
    // recognised; one of the first recalls is not, and applied late to the
    // open segment.
    let copies = feed(
        &mut tracker,
        "08:00 issued A1 service=ktp id=i1
         13:33:20 recalled A1 counter=c1 id=r19999
         08:00:30 recalled A1 counter=c1 id=r29",
    );
    assert_eq!(
        (copies.notes.get(Note::Duplicate), copies.notes.get(Note::Late), copies.notes.get(Note::Applied)),
        (2, 1, 1)
    );
    out.points.extend(copies.points);
    let closing = feed(&mut tracker, "13:40 finished A1 counter=c1 id=f1");
    out.points.extend(closing.points);
    tracker.drain(Millis(0), &mut out);
    let tickets: Vec<String> =
        out.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
    assert_eq!(
        tickets,
        ["o1 served ktp c1 @13:40:00 ticket=A1 recalls=255 wait_s=1 service_s=400 total_s=20400 visit_s=20400 \
          wait_within_target=1 service_within_target=1"]
    );
}

#[test]
fn without_the_limit_the_keys_of_a_long_open_segment_go_after_the_dedup_horizon() {
    let settings = limited(|limits| limits.max_remembered_per_office = 0);
    let horizon_s = settings.dedup_horizon_ms / 1000;
    let (tracker, out) = recall_flood(settings);
    // Two keys a second for the horizon, and a quarter more between sweeps.
    let keys = tracker.dedup_keys() as i64;
    assert!(keys <= 2 * (horizon_s + horizon_s / 4) + 2 * SEGMENT_KEYS_KEPT as i64 + 64, "{keys} dedup keys");
    assert_eq!(forgotten_early(&out), 0);
}

/// A segment past the keys it keeps, stored and restored, goes on as the
/// original: the same keys remembered, the same copies recognised.
#[test]
fn a_segment_past_the_keys_it_keeps_resumes_from_a_state_as_it_was() {
    let settings = limited(|limits| limits.max_remembered_per_office = 50);
    let mut tracker = Tracker::new(settings.clone());
    let mut script = String::from("08:00 issued A1 service=ktp id=i1\n");
    for n in 0..100 {
        script.push_str(&format!("08:{:02}:{:02} recalled A1 counter=c1 id=r{n}\n", 1 + n / 60, n % 60));
    }
    feed(&mut tracker, &script);
    let restored = decode(settings, &encode(&tracker)).unwrap();
    let mut outcomes = Vec::new();
    for mut copy in [tracker, restored] {
        let mut more = feed(&mut copy, &script);
        more.points.extend(feed(&mut copy, "08:30 finished A1 counter=c1 id=f1").points);
        copy.drain(Millis(0), &mut more);
        let tickets: Vec<String> =
            more.points.iter().filter(|point| point.measurement == "ticket").map(render_point).collect();
        outcomes.push((copy.dedup_keys(), remembered(&copy), render_notes(&more.notes), tickets));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    // Copies of the segment's own keys (its first 8 events) and of the
    // latest recalls are duplicates; those of recalls forgotten early are
    // applied late to the open segment.
    assert_eq!(outcomes[0].2, "duplicate=44 late=57", "{:?}", outcomes[0]);
}
