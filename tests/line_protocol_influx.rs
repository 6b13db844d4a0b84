//! Property: every ticket number the decoder accepts (1–64 characters, any
//! Unicode but control characters: spaces, quotes, backslashes, commas,
//! equals signs, emoji) written as a string field by queuewatch's encoder
//! (`Point::write_line`) into a real InfluxDB 1.x reads back unchanged.
//! One InfluxDB for the test; each case is one write of a batch of points.

mod common;

use std::cell::Cell;
use std::sync::Arc;

use common::Influx1;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use queuewatch::ids::TicketNo;
use queuewatch::point::{FieldValue, Point};

/// Cases (writes) and points per case: 128 ticket numbers in all.
const CASES: u32 = 8;
const POINTS_PER_CASE: usize = 16;

#[test]
fn every_ticket_number_the_decoder_accepts_reads_back_from_influxdb_unchanged() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let influx = Influx1::start();
    runtime.block_on(influx.create_database("qw"));
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let case = Cell::new(0);
    let strategy = proptest::collection::vec(ticket_number(), POINTS_PER_CASE);
    let outcome = runner.run(&strategy, |tickets| {
        case.set(case.get() + 1);
        let case_tag = format!("c{}", case.get());
        let mut lines = String::new();
        for (index, ticket) in tickets.iter().enumerate() {
            let mut point = Point::new("ticket", 1_795_572_600_000_000_000 + index as i64);
            point.tag("office", Arc::from("mpp-a")).tag("case", Arc::from(case_tag.as_str()));
            point.field("ticket", FieldValue::Str(ticket.as_str().into()));
            point.field("wait_s", FieldValue::Float(1.5));
            point.write_line(&mut lines);
        }
        runtime.block_on(influx.write("qw", "ns", &lines));
        let query = format!("SELECT ticket FROM ticket WHERE \"case\" = '{case_tag}' ORDER BY time");
        let rows = runtime.block_on(influx.rows("qw", &query));
        let read: Vec<Option<&str>> = rows.iter().map(|row| row["ticket"].as_str()).collect();
        let written: Vec<Option<&str>> = tickets.iter().map(|ticket| Some(ticket.as_str())).collect();
        if read != written {
            return Err(TestCaseError::fail(format!("wrote {written:?}\nread {read:?}\nlines:\n{lines}")));
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

/// Ticket numbers as the decoder accepts them, biased towards what line
/// protocol escapes or InfluxDB might mangle.
fn ticket_number() -> impl Strategy<Value = TicketNo> {
    let character = prop_oneof![
        4 => prop::sample::select(vec!['"', '\\', ',', '=', ' ', '\'', '\u{a0}', '\u{2028}', 'é', '漢', '🎫', '\u{200d}', '\u{feff}']),
        3 => prop::char::range('!', '~'),
        2 => any::<char>(),
    ];
    proptest::collection::vec(character, 1..=64)
        .prop_map(|characters| characters.into_iter().collect::<String>())
        .prop_filter_map("a control character", |text| TicketNo::parse(&text).ok())
}
