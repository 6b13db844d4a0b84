//! Inputs the fuzz targets of `fuzz/` found (`scripts/fuzz.sh`), each kept as
//! a plain test of what must hold for it.

mod common;

use std::sync::Arc;

use common::Influx1;
use queuewatch::point::{FieldValue, Point};

/// `encode_line`: a newline in a tag value became a bare space, which ends the
/// tag set, so the rest of the tag was read as a field and the line was refused
/// (or misread). It becomes an escaped space, as a newline in a string field
/// becomes a space.
#[tokio::test]
async fn a_newline_in_a_tag_value_becomes_an_escaped_space_and_the_line_stays_valid() {
    let mut point = Point::new("ticket", 1_795_572_600_000_000_000);
    point.tag("office", Arc::from("x\ny")).tag("service", Arc::from("a\r\nb"));
    point.field("ticket", FieldValue::Str("c\nd".into()));
    let line = point.to_line();
    assert_eq!(line, r#"ticket,office=x\ y,service=a\ \ b ticket="c d" 1795572600000000000"#);

    let influx = Influx1::start();
    influx.create_database("qw").await;
    influx.write("qw", "ns", &line).await;
    let rows = influx.rows("qw", "SELECT * FROM ticket").await;
    let read: Vec<_> =
        rows.iter().map(|row| (row["office"].as_str(), row["service"].as_str(), row["ticket"].as_str())).collect();
    assert_eq!(read, [(Some("x y"), Some("a  b"), Some("c d"))]);
}
