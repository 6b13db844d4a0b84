//! Request bodies to a real InfluxDB 1.x, gzipped and as they are
//! (`influxdb.compression`): both arrive whole, and `auto` picks plain
//! bodies for a server on this machine and gzip for any other.

mod common;

use common::Influx1;
use queuewatch::config::{Compression, InfluxApi, InfluxConfig};
use queuewatch::sink::{Secrets, V1Writer, Writer};

#[tokio::test]
async fn gzipped_and_plain_bodies_both_arrive_whole() {
    let influx = Influx1::start();
    influx.create_database("qw").await;
    for (compression, measurement) in [(Compression::Gzip, "zipped"), (Compression::None, "plain")] {
        let config = InfluxConfig {
            api: InfluxApi::V1,
            url: influx.url.clone(),
            database: "qw".into(),
            compression,
            ..InfluxConfig::default()
        };
        assert_eq!(config.gzip(), compression == Compression::Gzip);
        let writer = V1Writer::new(&config, &Secrets::default()).unwrap();
        let body: String = (0..500)
            .map(|index| format!("{measurement},office=mpp-{} v={index}i {}\n", index % 7, 1_000_000_000 + index))
            .collect();
        assert_eq!(writer.write(&body).await, Ok(()));
        let rows = influx.rows("qw", &format!("SELECT SUM(v), COUNT(v) FROM {measurement}")).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["count"], 500, "{rows:?}");
        assert_eq!(rows[0]["sum"], (0..500).sum::<i64>(), "{rows:?}");
    }
}

#[test]
fn auto_gzips_for_other_machines_only() {
    let gzip = |url: &str| InfluxConfig { url: url.into(), ..InfluxConfig::default() }.gzip();
    assert_eq!(InfluxConfig::default().compression, Compression::Auto);
    for here in
        ["http://127.0.0.1:8086", "http://localhost:8086", "https://LOCALHOST", "http://[::1]:8086", "http://127.0.0.2"]
    {
        assert!(!gzip(here), "{here}");
    }
    for elsewhere in ["http://10.0.0.5:8086", "https://influx.example.org", "http://[2001:db8::1]:8086"] {
        assert!(gzip(elsewhere), "{elsewhere}");
    }
}
