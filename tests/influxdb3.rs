//! queuewatch against InfluxDB 3 Core, the InfluxDB a new user installs
//! today. No package registry offers it: the server kit finds the project's
//! build (`QUEUEWATCH_INFLUXDB3`, or `../shared/influxdb3/influxdb3.xz`), and
//! these tests fail when it is missing. `scripts/test.sh` runs this test
//! binary whenever the build is found and says so plainly when it is not.
//!
//! - `writes`: the write path on 3.x: both APIs with and without a token, a
//!   wrong token, the server stopped mid-stream, a field type conflict
//!   (3.x refuses a whole batch, not only the bad lines), and what isolating
//!   refused lines costs by halving, against 3.x's own per-line report
//!   (`/api/v3/write_lp` with `accept_partial`).
//! - `kit`: every query of the Grafana kit run on InfluxDB 1.x and 3.x
//!   loaded with the same fixture, answers compared; the differences that
//!   remain are listed with their reasons.

#[allow(dead_code)]
#[path = "alerting/fixtures.rs"]
mod alerting;
mod common;
#[allow(dead_code)]
#[path = "durability/daemon.rs"]
mod daemon;
mod grafana_kit;
#[path = "influxdb3/kit.rs"]
mod kit;
#[allow(dead_code)]
#[path = "durability/mqtt.rs"]
mod mqtt;
#[allow(dead_code)]
#[path = "durability/points.rs"]
mod points;
mod scenario;
#[allow(dead_code)]
#[path = "durability/spool.rs"]
mod spool;
#[path = "influxdb3/writes.rs"]
mod writes;
