//! The office day, proven on a realistic simulation with known ground truth:
//! a week of 12 offices over the three Indonesian time zones, with people
//! who walk out unseen, busy days that leave people waiting at closing,
//! counters lunching while people wait and a silent kiosk hour, replayed
//! through `queuewatch replay` (the library call behind the command) with
//! the offices' opening hours.
//!
//! - No segment stays open past its day's close + grace: no `queue` or
//!   `office` row outside an open day shows anyone waiting or in service.
//! - Nobody is waiting at 20:00.
//! - The `abandoned` points are exactly the simulator's tickets that ended
//!   with no event (walked out, or left at closing) and whose segment the
//!   tracker saw.

use queuewatch::config::Config;
use queuewatch::replay::{replay, ReplayOutput};
use queuewatch::simulate::audit::{DayAudit, OfficeWeek};
use queuewatch::simulate::SimOptions;
use queuewatch::time::Millis;

/// Monday 2026-11-02, 06:00 in Jakarta: a whole week in the past.
const START: Millis = Millis(1_793_574_000_000);

#[tokio::test]
async fn a_simulated_week_is_closed_every_evening_and_abandons_exactly_the_unseen_walkouts() {
    let options = SimOptions { offices: 12, counters: 5, seed: 19, days: 7, ..SimOptions::new(START) };
    let week = OfficeWeek::simulate(&options);
    let ends = week.ends();
    // The scenario exercises what it claims to.
    for end in ["served", "cancelled", "walked_out", "left_at_close"] {
        assert!(ends.get(end).copied().unwrap_or(0) > 0, "no {end} in {ends:?}");
    }

    let folder = tempfile::tempdir().unwrap();
    let events = folder.path().join("week.ndjson");
    let lines_path = folder.path().join("week.lp");
    std::fs::write(&events, &week.events_ndjson).unwrap();
    let config = Config::parse(&week.offices_toml).unwrap();
    let grace_ms = queuewatch::time::duration_ms(config.tracking.close_grace);
    let report =
        replay(&config, &[events.display().to_string()], ReplayOutput::File(lines_path.clone())).await.unwrap();
    assert!(report.complete(), "{}", report.summary());
    assert_eq!(report.lines_read, week.events);
    assert_eq!(report.stats.rejected_total(), 0, "{}", report.summary());

    let lines = std::fs::read_to_string(&lines_path).unwrap();
    let audit = DayAudit::of(&lines, &config.offices, grace_ms);
    eprintln!("{audit:#?}\nground truth: {ends:?}");
    assert_eq!(audit.rows_outside_hours_with_people, 0, "rows showing people outside opening hours + grace");
    assert_eq!(audit.waiting_at_evening, 0, "people waiting at 20:00");
    assert_eq!(audit.evenings, 12 * 7, "every office-day has a row before 20:00");
    assert_eq!(audit.tickets("abandoned"), week.expected_abandoned());
    assert!(week.expected_abandoned() > 0);
    // Every point the summary counts is in the file.
    assert_eq!(audit.points, report.stats.points);
    assert_eq!(
        audit.tickets("abandoned"),
        report.stats.ticket_points_of(queuewatch::tracker::Outcome::Abandoned),
        "the replay summary's table of outcomes"
    );
}
