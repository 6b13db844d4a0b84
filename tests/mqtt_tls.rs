//! queuewatch over `mqtts://` against a real Mosquitto with a TLS listener
//! and a password file: certificates made by the test (a CA, the broker's
//! certificate for 127.0.0.1 and localhost, a client certificate, and a
//! second CA that queuewatch does not trust), the daemon's binary as it runs
//! in production, its log and `check-config`'s output read as an operator
//! would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::client::{publish_ticket, wait_until_queuewatch_listens, Client};
use common::pki::{certificate_authority, set_mode, write_server_certificate};
use common::{logins, queuewatch_bin, write_config, Daemon, Influx1, Mosquitto};
use queuewatch::config::{ClientAuthFiles, MqttTlsConfig};
use queuewatch_servers::{mosquitto_passwd, TlsListener};
use rcgen::{CertificateParams, CertifiedIssuer, DnType, KeyPair};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use tokio::time::Instant;

/// Only a hang fails a wait: far beyond what any step needs, even on a busy machine.
const GENEROUS: Duration = Duration::from_secs(60);

/// Planted: a test fails if it ever shows up in a log or in `check-config`'s output.
const QUEUEWATCH_PASSWORD: &str = "planted-Secret-7f3a9c";
/// Planted too: queuewatch's InfluxDB password, and wrong ones it is given first.
const INFLUX_PASSWORD: &str = "planted-Influx-5c8e21";
const WRONG_INFLUX_PASSWORD: &str = "planted-InfluxWrong-d4a7f0";
const WRONG_MQTT_PASSWORD: &str = "planted-Wrong-0b1d2e";
const PLANTED: [&str; 4] = [QUEUEWATCH_PASSWORD, INFLUX_PASSWORD, WRONG_INFLUX_PASSWORD, WRONG_MQTT_PASSWORD];
const OFFICE: &str = "mpp-a";
const OTHER_OFFICE: &str = "mpp-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queuewatch_logs_in_over_tls_and_writes_the_tickets_published_over_tls() {
    let pki = Pki::new();
    let broker = pki.broker(Trust::OwnCa, ClientCertificate::Optional);
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let config = pki.daemon_config(&broker, &influx, &pki.password_file(QUEUEWATCH_PASSWORD), "");
    // At debug level (rumqttc's and rustls's logs included) the password must not show either.
    let mut daemon = Daemon::spawn(&config, &[("QUEUEWATCH_LOG", "debug")]);

    let mut machine = tls_client(&pki, &broker, "mpp-a-kiosk-1", Login::OfficeA, WithClientCert::No).await;
    wait_until_queuewatch_listens(&mut machine, OFFICE, &mut daemon).await;
    publish_ticket(&mut machine, OFFICE, "A1").await;
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!((rows[0]["office"].as_str(), rows[0]["ticket"].as_str()), (Some(OFFICE), Some("A1")));
    assert!(!daemon.log().contains(QUEUEWATCH_PASSWORD), "{}", daemon.log());
}

/// The deploy kit's ACL with TLS and passwords on, and queuewatch over
/// `mqtts://` with its own login: a ticket machine of office A can neither
/// report for office B nor read what queuewatch sends office B. Proven by
/// delivery (see `common::client`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_acl_over_tls_a_machine_can_neither_report_for_nor_read_another_office() {
    let pki = Pki::new();
    let broker = pki.broker_with_shipped_acl();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let ops_port = common::free_port();
    // A wait alert one second after issue, for B's ticket below.
    let config = pki.daemon_config(
        &broker,
        &influx,
        &pki.password_file(QUEUEWATCH_PASSWORD),
        "[sla.services.fast]\nwait_target = \"1s\"\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{ops_port}\"")))
        .unwrap();
    let mut daemon = Daemon::spawn(&config, &[]);

    let mut machine_a = tls_client(&pki, &broker, "mpp-a-kiosk-1", Login::OfficeA, WithClientCert::No).await;
    let mut machine_b = tls_client(&pki, &broker, "mpp-b-kiosk-1", Login::OfficeB, WithClientCert::No).await;
    wait_until_queuewatch_listens(&mut machine_a, OFFICE, &mut daemon).await;
    wait_until_queuewatch_listens(&mut machine_b, OTHER_OFFICE, &mut daemon).await;
    machine_b.subscribe("queue/mpp-b/alerts").await;
    // Every filter that would match office B's alerts and echoes.
    for filter in ["queue/mpp-b/alerts", "queue/mpp-b/rejected", "queue/+/alerts", "queue/+/rejected", "queue/#", "#"] {
        machine_a.subscribe(filter).await;
    }

    // Injection on B's topic: the broker acknowledges and drops it. Had it
    // reached queuewatch, its heartbeat would have written F1 before B's own
    // B1 below, or made B1's events late.
    publish_ticket(&mut machine_a, OTHER_OFFICE, "F1").await;
    // Injection on A's own topic, naming office B: rejected and counted.
    let naming_b = r#"{"type":"issued","ts":"2026-11-20T08:00:00+07:00","ticket":"F2","service":"ktp","office":"mpp-b","id":"spoof-1"}"#;
    machine_a.publish("queue/mpp-a/events", naming_b).await;
    let seen =
        machine_a.receive_until_match(|message| message.payload.as_ref().windows(7).any(|w| w == b"spoof-1")).await;
    let echo: serde_json::Value = serde_json::from_slice(&seen.last().unwrap().payload).unwrap();
    assert_eq!(seen.last().unwrap().topic, "queue/mpp-a/rejected");
    assert_eq!((echo["reason"].as_str(), echo["office"].as_str()), (Some("office_mismatch"), Some(OFFICE)), "{echo}");

    publish_ticket(&mut machine_b, OTHER_OFFICE, "B1").await;
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    let written: Vec<_> = rows.iter().map(|row| (row["office"].as_str(), row["ticket"].as_str())).collect();
    assert_eq!(written, [(Some(OTHER_OFFICE), Some("B1"))]);

    // B's own alert and echo reach B; A, subscribed to all of them, gets
    // neither: its own echo, sent by queuewatch after B's alert, arrives
    // first (the broker keeps queuewatch's order).
    let now = queuewatch::time::Millis::now().0;
    let issued = format!(r#"{{"type":"issued","ts":{now},"ticket":"B2","service":"fast"}}"#);
    machine_b.publish("queue/mpp-b/events", issued).await;
    machine_b.publish("queue/mpp-b/events", r#"{"type":"warp","ts":1,"id":"b-warp"}"#).await;
    let seen_by_b = machine_b.receive_until_match(|message| message.topic == "queue/mpp-b/alerts").await;
    let alert: serde_json::Value = serde_json::from_slice(&seen_by_b.last().unwrap().payload).unwrap();
    assert_eq!((alert["kind"].as_str(), alert["ticket"].as_str()), (Some("wait"), Some("B2")), "{alert}");
    assert!(seen_by_b.iter().any(|message| message.topic == "queue/mpp-b/rejected"), "{seen_by_b:?}");
    machine_a.publish("queue/mpp-a/events", r#"{"type":"warp","ts":1,"id":"a-marker"}"#).await;
    let mut seen_by_a = seen;
    seen_by_a.extend(
        machine_a.receive_until_match(|message| message.payload.as_ref().windows(8).any(|w| w == b"a-marker")).await,
    );
    assert!(seen_by_a.iter().all(|message| message.topic.starts_with("queue/mpp-a/")), "{seen_by_a:?}");

    let (_, metrics) = common::http_get(&format!("http://127.0.0.1:{ops_port}/metrics")).await;
    assert!(
        metrics.lines().any(|line| line == r#"queuewatch_events_rejected_total{reason="office_mismatch"} 1"#),
        "{metrics}"
    );
    assert!(!daemon.log().contains(QUEUEWATCH_PASSWORD), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_named_as_untrusted_and_retried_until_the_broker_is_fixed() {
    let pki = Pki::new();
    let mut broker = pki.broker(Trust::OtherCa, ClientCertificate::Optional);
    let config = pki.daemon_config_without_sink(&broker, &pki.password_file(QUEUEWATCH_PASSWORD), WithClientCert::No);
    let mut daemon = Daemon::spawn(&config, &[]);

    let untrusted = format!("mqtt: the broker's certificate is not trusted (mqtt.ca_file {:?})", pki.ca_file());
    daemon.wait_for_log(&untrusted).await;
    wait_for_attempts(&broker, &mut daemon, 3).await;
    assert_eq!(daemon.log().matches(&untrusted).count(), 1, "logged once:\n{}", daemon.log());

    // The broker gets a certificate from the trusted CA and restarts: the
    // daemon, retrying all along, connects without being restarted.
    pki.install_broker_certificate(Trust::OwnCa);
    broker.restart();
    daemon.wait_for_log("Connected to the MQTT broker.").await;
    assert!(!daemon.log().contains(QUEUEWATCH_PASSWORD), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_over_tls_is_named_as_refused_credentials_and_retried() {
    let pki = Pki::new();
    let broker = pki.broker(Trust::OwnCa, ClientCertificate::Optional);
    let wrong_password = WRONG_MQTT_PASSWORD;
    let config = pki.daemon_config_without_sink(&broker, &pki.password_file(wrong_password), WithClientCert::No);
    let mut daemon = Daemon::spawn(&config, &[]);

    daemon.wait_for_log("mqtt: the broker refused the user name or password (mqtt.username \"queuewatch\")").await;
    wait_for_attempts(&broker, &mut daemon, 3).await;
    assert!(!daemon.log().contains(wrong_password), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_lets_in_queuewatch_with_one_and_says_why_without() {
    let pki = Pki::new();
    let broker = pki.broker(Trust::OwnCa, ClientCertificate::Required);
    let password_file = pki.password_file(QUEUEWATCH_PASSWORD);

    let with_certificate = pki.daemon_config_without_sink(&broker, &password_file, WithClientCert::Yes);
    let mut daemon = Daemon::spawn(&with_certificate, &[]);
    daemon.wait_for_log("Connected to the MQTT broker.").await;

    let without_certificate = pki.daemon_config_without_sink(&broker, &password_file, WithClientCert::No);
    let mut refused = Daemon::spawn(&without_certificate, &[]);
    refused.wait_for_log("mqtt: the broker requires a client certificate").await;
    wait_for_attempts(&broker, &mut refused, 4).await;
    assert!(daemon.is_running(), "{}", daemon.log());
    for log in [daemon.log(), refused.log()] {
        assert!(!log.contains(QUEUEWATCH_PASSWORD), "{log}");
    }
}

/// Every secret queuewatch is given is planted with a distinctive value, and
/// the logins fail first (a wrong MQTT password: refused; a wrong InfluxDB
/// password: 401), so that what an operator sees when things go wrong is
/// searched too: the daemon's whole output at debug level, every body of the
/// operations endpoint along the way, and `check-config`'s output. None of
/// them holds a secret; once both passwords are corrected the ticket arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_planted_secret_shows_in_the_output_the_operations_endpoint_or_check_config_while_logins_fail() {
    let pki = Pki::new();
    let broker = pki.broker(Trust::OwnCa, ClientCertificate::Optional);
    let influx = Influx1::start_with_auth("queuewatch", INFLUX_PASSWORD);
    influx.create_database("qw").await;
    let mqtt_password_file = pki.password_file(WRONG_MQTT_PASSWORD);
    let influx_password_file = pki.path("influx-password");
    std::fs::write(&influx_password_file, format!("{WRONG_INFLUX_PASSWORD}\n")).unwrap();
    set_mode(&influx_password_file, 0o600);
    let ops_port = common::free_port();
    let ops = format!("http://127.0.0.1:{ops_port}");
    let config = pki.daemon_config(&broker, &influx, &mqtt_password_file, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[influxdb]\n",
        &format!(
            "[influxdb]\nusername = \"queuewatch\"\npassword_file = \"{}\"\nmax_backoff = \"500ms\"\n",
            influx_password_file.display()
        ),
    );
    std::fs::write(&config, text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{ops_port}\"")))
        .unwrap();
    let mut seen = Vec::new();
    let (success, output) = check_config(&config);
    assert!(success, "{output}");
    seen.push(output);

    let mut daemon = Daemon::spawn(&config, &[("QUEUEWATCH_LOG", "debug")]);
    daemon.wait_for_log("mqtt: the broker refused the user name or password").await;
    let (status, ready) = common::http_get(&format!("{ops}/readyz")).await;
    assert_eq!((status, ready.trim()), (503, "not ready: mqtt: not connected to the broker"));
    seen.extend(ops_bodies(&ops).await);

    std::fs::write(&mqtt_password_file, format!("{QUEUEWATCH_PASSWORD}\n")).unwrap();
    let mut machine = tls_client(&pki, &broker, "mpp-a-kiosk-1", Login::OfficeA, WithClientCert::No).await;
    wait_until_queuewatch_listens(&mut machine, OFFICE, &mut daemon).await;
    publish_ticket(&mut machine, OFFICE, "A1").await;
    let deadline = Instant::now() + GENEROUS;
    loop {
        let (_, metrics) = common::http_get(&format!("{ops}/metrics")).await;
        if metrics.lines().any(|line| {
            line.starts_with(r#"queuewatch_write_errors_total{kind="unauthorized"} "#) && !line.ends_with(" 0")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no 401 counted:\n{metrics}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.extend(ops_bodies(&ops).await);

    std::fs::write(&influx_password_file, format!("{INFLUX_PASSWORD}\n")).unwrap();
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!((rows.len(), rows[0]["ticket"].as_str()), (1, Some("A1")));
    seen.extend(ops_bodies(&ops).await);
    seen.push(daemon.log());
    assert!(daemon.log().contains("authorization failed"), "the 401 is logged:\n{}", daemon.log());
    for text in &seen {
        for secret in PLANTED {
            assert!(!text.contains(secret), "{secret} shows in:\n{text}");
        }
    }
}

/// The bodies of `/metrics`, `/healthz` and `/readyz` at `ops`.
async fn ops_bodies(ops: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        bodies.push(common::http_get(&format!("{ops}{path}")).await.1);
    }
    bodies
}

#[test]
fn check_config_accepts_the_tls_setup_warns_without_showing_a_secret_and_refuses_a_writable_key() {
    let pki = Pki::new();
    let password_file = pki.password_file(QUEUEWATCH_PASSWORD);
    let mqtt = format!(
        "topics = [\"queue/+/events\", \"queue/all/events\"]\n{}",
        pki.mqtt_lines(&password_file, WithClientCert::Yes)
    );
    let influx_password_file = pki.path("influx-password");
    std::fs::write(&influx_password_file, format!("{INFLUX_PASSWORD}\n")).unwrap();
    let text = common::daemon_config_text("mqtts://127.0.0.1", "qw", &mqtt, "https://127.0.0.1:1", "").replace(
        "[influxdb]\n",
        &format!(
            "[influxdb]\nca_file = \"{}\"\nusername = \"queuewatch\"\npassword_file = \"{}\"\n",
            pki.ca_file().display(),
            influx_password_file.display()
        ),
    );
    let config = write_config(pki.dir(), &text);

    set_mode(&password_file, 0o644);
    set_mode(&influx_password_file, 0o644);
    let (success, output) = check_config(&config);
    assert!(success, "{output}");
    assert!(output.contains("warning: mqtt.topics: \"queue/all/events\" has no \"+\" level"), "{output}");
    assert!(!output.contains("\"queue/+/events\" has no"), "{output}");
    assert!(output.contains("warning: mqtt.password_file:") && output.contains("any user"), "{output}");
    assert!(output.contains("warning: influxdb.password_file:"), "{output}");
    for secret in PLANTED {
        assert!(!output.contains(secret), "{output}");
    }

    set_mode(&pki.path("client.key"), 0o666);
    set_mode(&influx_password_file, 0o666);
    let (success, output) = check_config(&config);
    assert!(!success, "{output}");
    assert!(output.contains("mqtt.client_key_file: ") && output.contains("(mode 0666)"), "{output}");
    assert!(output.contains("influxdb.password_file: "), "{output}");
    assert!(!output.contains("PRIVATE KEY"), "{output}");
    for secret in PLANTED {
        assert!(!output.contains(secret), "{output}");
    }

    // A CA file with nothing in it, and one given with a plain http:// URL.
    std::fs::write(pki.path("empty.pem"), "").unwrap();
    let broken = text.replace(&pki.ca_file().display().to_string(), &pki.path("empty.pem").display().to_string());
    let (success, output) = check_config(&write_config(&tempfile::tempdir_in(pki.dir()).unwrap().keep(), &broken));
    assert!(
        !success && output.contains("influxdb.ca_file: ") && output.contains("holds no PEM certificate"),
        "{output}"
    );
    let plain = text.replace("https://127.0.0.1:1", "http://127.0.0.1:1");
    let (success, output) = check_config(&write_config(&tempfile::tempdir_in(pki.dir()).unwrap().keep(), &plain));
    assert!(!success && output.contains("influxdb.ca_file: needs an https:// influxdb.url"), "{output}");
}

/// `queuewatch check-config FILE`: whether it passed, and all it printed.
fn check_config(config: &Path) -> (bool, String) {
    let output = Command::new(queuewatch_bin()).arg("check-config").arg(config).output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// Waits until the broker has seen `attempts` connections (each retry is
/// one) while the daemon runs on.
async fn wait_for_attempts(broker: &Mosquitto, daemon: &mut Daemon, attempts: usize) {
    let deadline = Instant::now() + GENEROUS;
    while broker.log().matches("New connection from").count() < attempts {
        assert!(daemon.is_running(), "the daemon ended:\n{}", daemon.log());
        assert!(Instant::now() < deadline, "fewer than {attempts} attempts:\n{}", broker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(daemon.is_running(), "the daemon ended:\n{}", daemon.log());
}

#[derive(Clone, Copy, PartialEq)]
enum Trust {
    /// The broker's certificate is signed by the CA in queuewatch's `mqtt.ca_file`.
    OwnCa,
    /// By another CA.
    OtherCa,
}

#[derive(Clone, Copy, PartialEq)]
enum ClientCertificate {
    Optional,
    Required,
}

#[derive(Clone, Copy, PartialEq)]
enum WithClientCert {
    Yes,
    No,
}

/// The test's certificates and keys, PEM files in a folder of their own:
/// `ca.pem`, `server.pem`/`server.key` (the broker's, as installed now),
/// `client.pem`/`client.key`, and the broker's password file.
struct Pki {
    dir: tempfile::TempDir,
    own_ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    /// The ticket machines' logins, made with the deploy kit's `device-login`
    /// (in the password file and the shipped ACL): user name and password.
    machines: [(String, String); 2],
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started by root runs as the `mosquitto` user: it must reach the files.
        set_mode(dir.path(), 0o755);
        let own_ca = certificate_authority("queuewatch test CA");
        let other_ca = certificate_authority("another CA");
        let broker_passwords = dir.path().join("passwd");
        std::fs::write(&broker_passwords, "").unwrap();
        mosquitto_passwd(&broker_passwords, "queuewatch", QUEUEWATCH_PASSWORD);
        let acl_file = dir.path().join("acl");
        std::fs::write(&acl_file, include_str!("../deploy/mosquitto/acl")).unwrap();
        let machines =
            [OFFICE, OTHER_OFFICE].map(|office| logins::add_device(&broker_passwords, &acl_file, office, "kiosk-1"));
        set_mode(&broker_passwords, 0o644);
        set_mode(&acl_file, 0o644);
        let pki = Pki { dir, own_ca, other_ca, machines };
        std::fs::write(pki.ca_file(), pki.own_ca.pem()).unwrap();
        pki.install_broker_certificate(Trust::OwnCa);
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "queuewatch");
        let client = client.signed_by(&client_key, &pki.own_ca).unwrap();
        std::fs::write(pki.path("client.pem"), client.pem()).unwrap();
        std::fs::write(pki.path("client.key"), client_key.serialize_pem()).unwrap();
        set_mode(&pki.path("client.key"), 0o600);
        pki
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Writes the broker's certificate and key, signed by the CA `trust` says.
    fn install_broker_certificate(&self, trust: Trust) {
        let issuer = if trust == Trust::OwnCa { &self.own_ca } else { &self.other_ca };
        let names = ["127.0.0.1", "localhost"];
        write_server_certificate(issuer, &names, &self.path("server.pem"), &self.path("server.key"));
    }

    /// A broker with a TLS listener, the current broker certificate and the password file.
    fn broker(&self, trust: Trust, client_certificate: ClientCertificate) -> Mosquitto {
        self.start_broker(trust, client_certificate, None)
    }

    /// A broker with a TLS listener, the password file and the deploy kit's
    /// ACL (`deploy/mosquitto/acl`) as shipped, with the machines' blocks.
    fn broker_with_shipped_acl(&self) -> Mosquitto {
        self.start_broker(Trust::OwnCa, ClientCertificate::Optional, Some(self.path("acl")))
    }

    fn start_broker(
        &self,
        trust: Trust,
        client_certificate: ClientCertificate,
        acl_file: Option<PathBuf>,
    ) -> Mosquitto {
        self.install_broker_certificate(trust);
        Mosquitto::start_tls(&TlsListener {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            ca_file: self.ca_file(),
            require_certificate: client_certificate == ClientCertificate::Required,
            password_file: Some(self.path("passwd")),
            acl_file,
        })
    }

    /// A private file holding `password` and a newline.
    fn password_file(&self, password: &str) -> PathBuf {
        let path = self.path(&format!("password-{}", password.len()));
        std::fs::write(&path, format!("{password}\n")).unwrap();
        set_mode(&path, 0o600);
        path
    }

    /// The `[mqtt]` lines for TLS and the login as `queuewatch`.
    fn mqtt_lines(&self, password_file: &Path, client_cert: WithClientCert) -> String {
        let mut lines = format!(
            "ca_file = \"{}\"\nusername = \"queuewatch\"\npassword_file = \"{}\"\n",
            self.ca_file().display(),
            password_file.display()
        );
        if client_cert == WithClientCert::Yes {
            lines.push_str(&format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                self.path("client.pem").display(),
                self.path("client.key").display()
            ));
        }
        lines
    }

    fn daemon_config(&self, broker: &Mosquitto, influx: &Influx1, password_file: &Path, more: &str) -> PathBuf {
        let mqtt = self.mqtt_lines(password_file, WithClientCert::No);
        let config = tempfile::tempdir_in(self.dir()).unwrap().keep();
        write_config(&config, &common::daemon_config_text(&broker.url, "queuewatch-tls", &mqtt, &influx.url, more))
    }

    /// A daemon config whose InfluxDB is never reached (the test watches the MQTT side only).
    fn daemon_config_without_sink(
        &self,
        broker: &Mosquitto,
        password_file: &Path,
        client_cert: WithClientCert,
    ) -> PathBuf {
        let mqtt = self.mqtt_lines(password_file, client_cert);
        let client_id = if client_cert == WithClientCert::Yes { "queuewatch-cert" } else { "queuewatch-tls" };
        let config = tempfile::tempdir_in(self.dir()).unwrap().keep();
        let text = common::daemon_config_text(&broker.url, client_id, &mqtt, "http://127.0.0.1:1", "");
        write_config(&config, &text)
    }
}

/// A ticket machine over TLS, logged in with `login`, a device of its office, that trusts
/// the test CA through queuewatch's own TLS setup.
async fn tls_client(
    pki: &Pki,
    broker: &Mosquitto,
    client_id: &str,
    login: Login,
    client_cert: WithClientCert,
) -> Client {
    let tls = MqttTlsConfig {
        ca_file: Some(pki.ca_file()),
        client_auth: (client_cert == WithClientCert::Yes)
            .then(|| ClientAuthFiles { cert_file: pki.path("client.pem"), key_file: pki.path("client.key") }),
    };
    let config = queuewatch::mqtt::tls::client_config(&tls).unwrap();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    let (user, password) = &pki.machines[login as usize];
    options.set_credentials(user, password);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    match Client::connect(options).await {
        Ok(client) => client,
        Err(error) => panic!("the ticket machine cannot connect: {error}\n{}", broker.log()),
    }
}

/// The ticket machines' logins (`Pki::machines`): one device of each office.
#[derive(Clone, Copy, PartialEq)]
enum Login {
    OfficeA = 0,
    OfficeB = 1,
}
