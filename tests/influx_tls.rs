//! queuewatch writing to a real InfluxDB 1.x that speaks HTTPS, with
//! certificates made by the test (a CA, the server's certificate for
//! 127.0.0.1, and a second CA that queuewatch is not told to trust): the
//! daemon's binary as it runs in production, its log and `/metrics` read as
//! an operator would, and the writers of the library for the v2 path and a
//! wrong host name.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::client::{wait_until_queuewatch_listens, Client};
use common::pki::{certificate_authority, write_server_certificate};
use common::{write_config, Daemon, Influx1, Mosquitto};
use queuewatch::config::{InfluxApi, InfluxConfig};
use queuewatch::sink::{Secrets, V1Writer, V2Writer, WriteError, Writer};
use queuewatch_servers::HttpsFiles;
use rcgen::{CertifiedIssuer, KeyPair};
use rumqttc::MqttOptions;
use tokio::time::Instant;

/// Only a hang fails a wait: far beyond what any step needs, even on a busy machine.
const GENEROUS: Duration = Duration::from_secs(60);
const OFFICE: &str = "mpp-a";
const TICKETS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_writes_over_https_trusting_influxdb_ca_file_and_every_point_arrives_once() {
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let influx = Influx1::start_https(&pki.https_files());
    influx.create_database("qw").await;
    let broker = Mosquitto::start();
    let setup = DaemonSetup::new(&pki, &broker, &influx, &pki.ca_file);
    let mut daemon = Daemon::spawn(&setup.config, &[]);

    publish_tickets(&broker, &mut daemon).await;
    assert_eq!(ticket_rows(&influx).await, expected_rows());
    let metrics = setup.metrics().await;
    assert_eq!(metric(&metrics, r#"queuewatch_write_errors_total{kind="tls"}"#), 0.0, "{metrics}");
    assert!(!daemon.log().contains("influxdb: "), "{}", daemon.log());
}

/// The CA file names another CA: each try fails in the handshake, which the
/// log names plainly and `/metrics` counts, while the points wait in the
/// spool. Once the operator puts the right CA in the file, the next try
/// (which reads the file again) delivers every point, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_named_counted_and_its_points_arrive_once_the_ca_file_is_corrected() {
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let influx = Influx1::start_https(&pki.https_files());
    influx.create_database("qw").await;
    let broker = Mosquitto::start();
    let daemon_ca_file = pki.dir.path().join("daemon-ca.pem");
    std::fs::write(&daemon_ca_file, pki.other_ca.pem()).unwrap();
    // Short backoff: the correction below is seen within a second.
    let setup = DaemonSetup::new(&pki, &broker, &influx, &daemon_ca_file).with_influx_lines("max_backoff = \"500ms\"");
    let mut daemon = Daemon::spawn(&setup.config, &[]);

    publish_tickets(&broker, &mut daemon).await;
    let untrusted = format!(
        "influxdb: the certificate of 127.0.0.1 is not trusted (influxdb.ca_file {:?})",
        daemon_ca_file.display().to_string()
    );
    daemon.wait_for_log(&untrusted).await;
    // Tried again from the spool and failed again, the ticket points spooled.
    setup.wait_for_metric(r#"queuewatch_write_errors_total{kind="tls"}"#, |count| count >= 2.0).await;
    let metrics = setup.wait_for_metric("queuewatch_points_spooled_total", |points| points >= f64::from(TICKETS)).await;
    assert_eq!(metric(&metrics, r#"queuewatch_write_errors_total{kind="transport"}"#), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "queuewatch_points_written_total"), 0.0, "{metrics}");
    let (status, ready) = common::http_get(&format!("{}/readyz", setup.ops_url)).await;
    assert_eq!((status, ready.trim()), (200, "ready"), "spooling counts as delivering");
    assert_eq!(influx.query("qw", "SELECT * FROM \"ticket\"").await["results"][0].get("series"), None);

    std::fs::write(&daemon_ca_file, pki.own_ca.pem()).unwrap();
    assert_eq!(ticket_rows(&influx).await, expected_rows());
    let metrics = setup.wait_for_metric("queuewatch_spool_points", |points| points == 0.0).await;
    assert_eq!(metric(&metrics, "queuewatch_points_refused_total"), 0.0, "{metrics}");
    daemon.wait_for_log("InfluxDB writes succeed again.").await;
    assert!(daemon.is_running(), "{}", daemon.log());
}

/// Through the library's writers: the v2 path trusts `influxdb.ca_file` as
/// the v1 path does (InfluxDB 1.6 has no `/api/v2/write`, so a 404 proves
/// the handshake passed), and a URL whose host the certificate does not name
/// fails with a sentence that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_check_the_certificate_against_the_ca_file_and_the_host_name() {
    let pki = Pki::new(&["127.0.0.1"]);
    let influx = Influx1::start_https(&pki.https_files());
    influx.create_database("qw").await;
    let other_ca_file = pki.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, pki.other_ca.pem()).unwrap();
    let config = |api, url: &str, ca_file: &Path| InfluxConfig {
        api,
        url: url.to_string(),
        database: "qw".into(),
        ca_file: Some(ca_file.to_path_buf()),
        ..InfluxConfig::default()
    };
    let line = "probe v=1i 1\n";

    let v1 = V1Writer::new(&config(InfluxApi::V1, &influx.url, &pki.ca_file), &Secrets::default()).unwrap();
    assert_eq!(v1.write(line).await, Ok(()));
    let v2 = V2Writer::new(&config(InfluxApi::V2, &influx.url, &pki.ca_file), &Secrets::default()).unwrap();
    let answer = v2.write(line).await;
    assert!(matches!(answer, Err(WriteError::Transient { status: Some(404), .. })), "{answer:?}");

    let v2 = V2Writer::new(&config(InfluxApi::V2, &influx.url, &other_ca_file), &Secrets::default()).unwrap();
    match v2.write(line).await {
        Err(WriteError::Tls { message }) => assert!(
            message.starts_with(&format!(
                "influxdb: the certificate of 127.0.0.1 is not trusted (influxdb.ca_file {:?})",
                other_ca_file.display().to_string()
            )),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }

    let by_name = format!("https://localhost:{}", influx.port);
    let v1 = V1Writer::new(&config(InfluxApi::V1, &by_name, &pki.ca_file), &Secrets::default()).unwrap();
    match v1.write(line).await {
        Err(WriteError::Tls { message }) => {
            assert!(message.starts_with("influxdb: the certificate of localhost does not name localhost"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Plain http:// to the TLS port: the lines are not to blame (no dead
    // letters), the URL is; said as such and retried like any TLS failure.
    let plain = influx.url.replacen("https://", "http://", 1);
    let v1 = V1Writer::new(
        &InfluxConfig { ca_file: None, ..config(InfluxApi::V1, &plain, &pki.ca_file) },
        &Secrets::default(),
    )
    .unwrap();
    match v1.write(line).await {
        Err(WriteError::Tls { message }) => {
            assert!(
                message.starts_with("influxdb: the server speaks HTTPS; write influxdb.url with https://"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let probes = influx.rows("qw", "SELECT * FROM \"probe\"").await;
    assert_eq!(probes.len(), 1, "{probes:?}");
}

/// The test's CAs and the server's certificate, PEM files in a folder of their own.
struct Pki {
    dir: tempfile::TempDir,
    own_ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA that signed the server's certificate.
    ca_file: PathBuf,
}

impl Pki {
    /// A server certificate for `names`, signed by the test's own CA.
    fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let own_ca = certificate_authority("queuewatch test CA");
        let other_ca = certificate_authority("another CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, own_ca.pem()).unwrap();
        write_server_certificate(&own_ca, names, &dir.path().join("server.pem"), &dir.path().join("server.key"));
        Pki { dir, own_ca, other_ca, ca_file }
    }

    fn https_files(&self) -> HttpsFiles {
        HttpsFiles {
            cert_file: self.dir.path().join("server.pem"),
            key_file: self.dir.path().join("server.key"),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// A daemon's config: the broker, InfluxDB over HTTPS trusting `ca_file`,
/// the operations endpoint on a port of its own.
struct DaemonSetup {
    config: PathBuf,
    ops_url: String,
}

impl DaemonSetup {
    fn new(pki: &Pki, broker: &Mosquitto, influx: &Influx1, ca_file: &Path) -> DaemonSetup {
        let ops_port = common::free_port();
        let text = common::daemon_config_text(&broker.url, "queuewatch-https", "", &influx.url, "")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{ops_port}\""))
            .replace("[influxdb]\n", &format!("[influxdb]\nca_file = \"{}\"\n", ca_file.display()));
        let dir = tempfile::tempdir_in(pki.dir.path()).unwrap().keep();
        DaemonSetup { config: write_config(&dir, &text), ops_url: format!("http://127.0.0.1:{ops_port}") }
    }

    /// The same config with `lines` added to `[influxdb]`.
    fn with_influx_lines(self, lines: &str) -> DaemonSetup {
        let text =
            std::fs::read_to_string(&self.config).unwrap().replace("[influxdb]\n", &format!("[influxdb]\n{lines}\n"));
        std::fs::write(&self.config, text).unwrap();
        self
    }

    async fn metrics(&self) -> String {
        common::http_get(&format!("{}/metrics", self.ops_url)).await.1
    }

    /// `/metrics` once the value of the sample `name` is `wanted`.
    async fn wait_for_metric(&self, name: &str, wanted: impl Fn(f64) -> bool) -> String {
        let deadline = Instant::now() + GENEROUS;
        loop {
            let metrics = self.metrics().await;
            if wanted(metric(&metrics, name)) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{name} never as wanted:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of the sample `name` (labels included) in a `/metrics` body; NaN when absent.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(f64::NAN)
}

/// Publishes `TICKETS` tickets of `OFFICE`, each with its own wait and
/// service times, and an event that moves the office clock past them all.
async fn publish_tickets(broker: &Mosquitto, daemon: &mut Daemon) {
    let mut machine = Client::connect(MqttOptions::new("mpp-a-kiosk-1", "127.0.0.1", broker.port)).await.unwrap();
    wait_until_queuewatch_listens(&mut machine, OFFICE, daemon).await;
    let topic = format!("queue/{OFFICE}/events");
    for n in 1..=TICKETS {
        let ticket = format!("T{n}");
        for event in [
            format!(r#"{{"type":"issued","ts":"2026-11-20T08:0{n}:00+07:00","ticket":"{ticket}","service":"ktp"}}"#),
            format!(
                r#"{{"type":"called","ts":"2026-11-20T08:0{n}:{:02}+07:00","ticket":"{ticket}","counter":"c1"}}"#,
                10 * n
            ),
            format!(r#"{{"type":"finished","ts":"2026-11-20T08:0{n}:50+07:00","ticket":"{ticket}","counter":"c1"}}"#),
        ] {
            machine.publish(&topic, event).await;
        }
    }
    machine.publish(&topic, r#"{"type":"heartbeat","ts":"2026-11-20T08:30:00+07:00"}"#).await;
}

/// Ticket, wait and service seconds of every `ticket` point, in ticket order.
async fn ticket_rows(influx: &Influx1) -> Vec<(String, f64, f64)> {
    let rows = influx.wait_for_rows("qw", "ticket", TICKETS as usize, GENEROUS).await;
    let mut found: Vec<_> = rows
        .iter()
        .map(|row| {
            let ticket = row["ticket"].as_str().unwrap_or_default().to_string();
            (ticket, row["wait_s"].as_f64().unwrap_or(f64::NAN), row["service_s"].as_f64().unwrap_or(f64::NAN))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn expected_rows() -> Vec<(String, f64, f64)> {
    (1..=TICKETS).map(|n| (format!("T{n}"), f64::from(10 * n), f64::from(50 - 10 * n))).collect()
}
