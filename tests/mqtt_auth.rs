//! The shipped Mosquitto config (`deploy/mosquitto/`) on a real Mosquitto,
//! and queuewatch logging in to it: only the listener, the persistence folder
//! and the password and ACL files' paths are swapped for the test's, every
//! other line is as shipped. Ticket machines log in with per-device logins
//! made by the kit's own `device-login` script.
//!
//! The ACL is proven by delivery (see `common::client`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::client::{publish_ticket, wait_until_queuewatch_listens, Client};
use common::{logins, write_config, Daemon, Influx1, Mosquitto};
use queuewatch_servers::mosquitto_passwd;
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions};
use tokio::time::Instant;

/// Only a hang fails a wait: far beyond what any step needs, even on a busy machine.
const GENEROUS: Duration = Duration::from_secs(60);

const QUEUEWATCH_PASSWORD: &str = "qw-secret pass";
const OFFICE_A: &str = "mpp-a";
const OFFICE_B: &str = "mpp-b";
/// The first device of each office (`device-login add <office> kiosk-1`).
const MACHINE_A: &str = "mpp-a.kiosk-1";
const MACHINE_B: &str = "mpp-b.kiosk-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_config_starts_and_lets_in_only_known_users_with_their_password() {
    let broker = Broker::start();
    let password_of_a = broker.password(MACHINE_A);
    // An office's old shared login is no login.
    for refused in [
        None,
        Some((MACHINE_A, "wrong")),
        Some(("mpp-unknown.kiosk-1", password_of_a)),
        Some((OFFICE_A, password_of_a)),
    ] {
        let outcome = connect(&broker, "refused-client", refused).await;
        let Err(ConnectionError::ConnectionRefused(code)) = outcome else {
            panic!("{refused:?}: not refused by the broker");
        };
        // Mosquitto answers an MQTT 3.1.1 client's failed login with "not authorized".
        assert_eq!(code, ConnectReturnCode::NotAuthorized, "{refused:?}");
    }
    let machine = connect(&broker, "mpp-a-kiosk-1", Some((MACHINE_A, password_of_a))).await;
    assert!(machine.is_ok(), "{:?}\n{}", machine.err(), broker.mqtt.log());
    let queuewatch = connect(&broker, "queuewatch", Some(("queuewatch", QUEUEWATCH_PASSWORD))).await;
    assert!(queuewatch.is_ok(), "{:?}", queuewatch.err());
    assert!(!broker.mqtt.log().contains("Error"), "{}", broker.mqtt.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_machine_cannot_publish_events_or_alerts_for_another_office() {
    let broker = Broker::start();
    let mut events_reader = broker.client("queuewatch-reader", "queuewatch").await;
    events_reader.subscribe("queue/+/events").await;
    let mut machine_b = broker.client("mpp-b-kiosk-1", MACHINE_B).await;
    machine_b.subscribe("queue/mpp-b/alerts").await;
    let mut machine_a = broker.client("mpp-a-kiosk-1", MACHINE_A).await;

    machine_a.publish("queue/mpp-b/events", "forged event").await;
    machine_a.publish("queue/mpp-b/alerts", "forged alert").await;
    machine_a.publish("queue/mpp-a/events", "own event").await;

    let seen = events_reader.receive_until("own event").await;
    assert!(!seen.iter().any(|message| message.payload == "forged event"), "{seen:?}");
    // queuewatch's own alert goes through after the forged one was refused.
    let mut queuewatch = broker.client("queuewatch", "queuewatch").await;
    queuewatch.publish("queue/mpp-b/alerts", "real alert").await;
    let seen = machine_b.receive_until("real alert").await;
    assert!(!seen.iter().any(|message| message.payload == "forged alert"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_machine_never_receives_another_offices_alerts_or_rejections() {
    let broker = Broker::start();
    let mut machine_a = broker.client("mpp-a-kiosk-1", MACHINE_A).await;
    for filter in ["queue/+/alerts", "queue/mpp-b/alerts", "queue/+/rejected", "queue/#", "#"] {
        machine_a.subscribe(filter).await;
    }
    let mut machine_b = broker.client("mpp-b-kiosk-1", MACHINE_B).await;
    machine_b.subscribe("queue/mpp-b/alerts").await;
    machine_b.subscribe("queue/mpp-b/rejected").await;

    let mut queuewatch = broker.client("queuewatch", "queuewatch").await;
    queuewatch.publish("queue/mpp-b/alerts", "alert for b").await;
    queuewatch.publish("queue/mpp-b/rejected", "rejection for b").await;
    queuewatch.publish("queue/mpp-a/alerts", "alert for a").await;

    let seen_by_b = machine_b.receive_until("rejection for b").await;
    assert!(seen_by_b.iter().any(|message| message.payload == "alert for b"), "{seen_by_b:?}");
    let seen_by_a = machine_a.receive_until("alert for a").await;
    assert!(seen_by_a.iter().all(|message| message.topic.starts_with("queue/mpp-a/")), "{seen_by_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queuewatch_logs_in_with_its_password_from_the_environment_and_writes_tickets() {
    let broker = Broker::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = "username = \"queuewatch\"\npassword_env = \"QUEUEWATCH_TEST_MQTT_PASSWORD\"";
    let config = daemon_config(dir.path(), &broker, &influx, credentials);
    let mut daemon = Daemon::spawn(&config, &[("QUEUEWATCH_TEST_MQTT_PASSWORD", QUEUEWATCH_PASSWORD)]);

    let mut machine_a = broker.client("mpp-a-kiosk-1", MACHINE_A).await;
    wait_until_queuewatch_listens(&mut machine_a, OFFICE_A, &mut daemon).await;
    publish_ticket(&mut machine_a, OFFICE_A, "A1").await;
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!((rows[0]["office"].as_str(), rows[0]["ticket"].as_str()), (Some(OFFICE_A), Some("A1")));
    assert!(!daemon.log().contains(QUEUEWATCH_PASSWORD), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_logged_once_with_the_brokers_answer_and_a_corrected_file_needs_no_restart() {
    let broker = Broker::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, "an old password\n").unwrap();
    let credentials = format!("username = \"queuewatch\"\npassword_file = \"{}\"", password_file.display());
    let config = daemon_config(dir.path(), &broker, &influx, &credentials);
    let mut daemon = Daemon::spawn(&config, &[]);

    let refusal = "mqtt: the broker refused the user name or password (mqtt.username \"queuewatch\"): not authorized (CONNACK return code 5)";
    daemon.wait_for_log(refusal).await;
    // Several attempts, each refused by the broker, while the daemon runs on
    // (no other client connects meanwhile; Mosquitto does not name a client
    // it refused).
    let deadline = Instant::now() + GENEROUS;
    while broker.mqtt.log().matches("disconnected, not authorised").count() < 3 {
        assert!(Instant::now() < deadline, "fewer than 3 attempts:\n{}", broker.mqtt.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(daemon.is_running(), "the daemon ended:\n{}", daemon.log());
    assert_eq!(daemon.log().matches(refusal).count(), 1, "{}", daemon.log());
    assert!(!daemon.log().contains("an old password"), "{}", daemon.log());

    std::fs::write(&password_file, format!("{QUEUEWATCH_PASSWORD}\n")).unwrap();
    let mut machine_a = broker.client("mpp-a-kiosk-1", MACHINE_A).await;
    wait_until_queuewatch_listens(&mut machine_a, OFFICE_A, &mut daemon).await;
    publish_ticket(&mut machine_a, OFFICE_A, "A2").await;
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!(rows[0]["ticket"], "A2");
    assert_eq!(daemon.log().matches(refusal).count(), 1, "{}", daemon.log());
}

/// Issue 21, item 1: a ticket machine's login that asks for queuewatch's
/// client id once took its persistent session, and the broker dropped every
/// event queued in it that the machine may not read. With the shipped config
/// the broker names every client after its login, so the machine gets a
/// session of its own and queuewatch's backlog is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_cannot_take_queuewatchs_session_and_the_backlog_queued_in_it_survives() {
    let broker = Broker::start();
    let influx = Influx1::start();
    influx.create_database("qw").await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = "username = \"queuewatch\"\npassword_env = \"QUEUEWATCH_TEST_MQTT_PASSWORD\"";
    let config = daemon_config(dir.path(), &broker, &influx, credentials);
    let env = [("QUEUEWATCH_TEST_MQTT_PASSWORD", QUEUEWATCH_PASSWORD)];
    let mut daemon = Daemon::spawn(&config, &env);
    let mut machine = broker.client("mpp-a-kiosk-1", MACHINE_A).await;
    wait_until_queuewatch_listens(&mut machine, OFFICE_A, &mut daemon).await;
    drop(daemon);

    // While queuewatch is away, a ticket is served: its events wait in queuewatch's session.
    publish_ticket(&mut machine, OFFICE_A, "T1").await;
    // The attack: the machine's login asks for queuewatch's client id, with a
    // clean session (which would delete the session) and with a persistent
    // one (which would take it over). The broker lets the login in, under its own name.
    for clean_session in [true, false] {
        let mut options = MqttOptions::new("queuewatch", "127.0.0.1", broker.mqtt.port);
        options.set_credentials(MACHINE_A, broker.password(MACHINE_A)).set_clean_session(clean_session);
        let thief = Client::connect(options).await;
        assert!(thief.is_ok(), "the machine's login is valid: {:?}", thief.err());
    }

    let mut daemon = Daemon::spawn(&config, &env);
    daemon.wait_for_log("Connected to the MQTT broker.").await;
    assert!(daemon.log().contains("session_present=true"), "queuewatch's session was taken:\n{}", daemon.log());
    let rows = influx.wait_for_rows("qw", "ticket", 1, GENEROUS).await;
    assert_eq!((rows[0]["office"].as_str(), rows[0]["ticket"].as_str()), (Some(OFFICE_A), Some("T1")));
    assert!(!daemon.log().contains(" ERROR "), "{}", daemon.log());
    let log = broker.mqtt.log();
    assert!(log.matches(&format!(" as {MACHINE_A} ")).count() >= 3, "named after its login:\n{log}");
}

/// Every device has its own login: revoking one (with `device-login revoke`
/// and a reload of the broker) shuts that device out, at once, and leaves
/// the other devices of its office as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_login_is_revoked_without_touching_the_other_devices_of_its_office() {
    let mut broker = Broker::start();
    let second = broker.add_device(OFFICE_A, "kiosk-2");
    broker.mqtt.reload();
    let mut events_reader = broker.client("queuewatch-reader", "queuewatch").await;
    events_reader.subscribe("queue/+/events").await;
    let mut first_machine = eventually_connected(&broker, MACHINE_A).await;
    let mut second_machine = eventually_connected(&broker, &second).await;
    first_machine.publish("queue/mpp-a/events", "first machine, before").await;
    second_machine.publish("queue/mpp-a/events", "second machine, before").await;
    events_reader.receive_until("second machine, before").await;

    logins::revoke_device(&broker.password_file, &broker.acl_file, MACHINE_A);
    broker.mqtt.reload();
    let deadline = Instant::now() + GENEROUS;
    while first_machine.is_connected() {
        assert!(Instant::now() < deadline, "the revoked machine is still connected:\n{}", broker.mqtt.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = connect(&broker, "mpp-a-kiosk-1", Some((MACHINE_A, broker.password(MACHINE_A)))).await;
    assert!(
        matches!(again, Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized))),
        "{:?}",
        again.err()
    );
    assert!(second_machine.is_connected());
    second_machine.publish("queue/mpp-a/events", "second machine, after").await;
    events_reader.receive_until("second machine, after").await;
}

/// A client logged in as `user`, once the broker has read the login (a reload is asynchronous).
async fn eventually_connected(broker: &Broker, user: &str) -> Client {
    let deadline = Instant::now() + GENEROUS;
    loop {
        match connect(broker, user, Some((user, broker.password(user)))).await {
            Ok(client) => return client,
            Err(error) => assert!(Instant::now() < deadline, "{user}: {error}\n{}", broker.mqtt.log()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shipped broker config with the test's port and files, the user
/// `queuewatch` and the devices `mpp-a.kiosk-1` and `mpp-b.kiosk-1`.
struct Broker {
    mqtt: Mosquitto,
    password_file: PathBuf,
    acl_file: PathBuf,
    /// Each user's password.
    passwords: BTreeMap<String, String>,
    /// The password and ACL files and the persistence folder.
    _files: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let files = tempfile::tempdir().unwrap();
        let password_file = files.path().join("passwd");
        std::fs::write(&password_file, "").unwrap();
        mosquitto_passwd(&password_file, "queuewatch", QUEUEWATCH_PASSWORD);
        let acl_file = files.path().join("acl");
        std::fs::write(&acl_file, include_str!("../deploy/mosquitto/acl")).unwrap();
        let mut passwords = BTreeMap::from([("queuewatch".to_string(), QUEUEWATCH_PASSWORD.to_string())]);
        for office in [OFFICE_A, OFFICE_B] {
            passwords.extend([logins::add_device(&password_file, &acl_file, office, "kiosk-1")]);
        }
        let persistence = files.path().join("persistence");
        std::fs::create_dir(&persistence).unwrap();
        // Mosquitto started by root runs as the `mosquitto` user: it must
        // reach the files and write its database.
        set_mode(files.path(), 0o755);
        set_mode(&persistence, 0o777);
        for file in [&password_file, &acl_file] {
            set_mode(file, 0o644);
        }
        let shipped = include_str!("../deploy/mosquitto/queuewatch.conf");
        let mqtt = Mosquitto::start_with_config(|port| {
            test_broker_config(shipped, port, &password_file, &acl_file, &persistence)
        });
        Broker { mqtt, password_file, acl_file, passwords, _files: files }
    }

    fn password(&self, user: &str) -> &str {
        self.passwords.get(user).unwrap_or_else(|| panic!("no user {user}"))
    }

    /// A connected client logged in as `user`, asking for `client_id`.
    async fn client(&self, client_id: &str, user: &str) -> Client {
        match connect(self, client_id, Some((user, self.password(user)))).await {
            Ok(client) => client,
            Err(error) => panic!("{user} cannot log in: {error}\n{}", self.mqtt.log()),
        }
    }

    /// One more device login, with `device-login add`.
    fn add_device(&mut self, office: &str, device: &str) -> String {
        let (user, password) = logins::add_device(&self.password_file, &self.acl_file, office, device);
        self.passwords.insert(user.clone(), password);
        user
    }
}

/// `shipped` with the test's listener and files. What Debian's main
/// mosquitto.conf adds to the shipped drop-in (the persistence folder and the
/// log) is appended.
fn test_broker_config(shipped: &str, port: u16, password_file: &Path, acl_file: &Path, persistence: &Path) -> String {
    let mut swapped = Vec::new();
    let mut config = String::new();
    for line in shipped.lines() {
        let setting = line.split_whitespace().next().unwrap_or("");
        let replacement = match setting {
            "listener" => format!("listener {port} 127.0.0.1"),
            "password_file" => format!("password_file {}", password_file.display()),
            "acl_file" => format!("acl_file {}", acl_file.display()),
            _ => line.to_string(),
        };
        if replacement != line {
            swapped.push(setting);
        }
        config.push_str(&replacement);
        config.push('\n');
    }
    assert_eq!(swapped, ["listener", "password_file", "acl_file"], "the shipped config changed shape");
    config.push_str(&format!("persistence_location {}/\nlog_dest stderr\nlog_timestamp true\n", persistence.display()));
    config
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Connects as `client_id` with `login` (user, password), or anonymously;
/// the broker's refusal as an error.
async fn connect(broker: &Broker, client_id: &str, login: Option<(&str, &str)>) -> Result<Client, ConnectionError> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.mqtt.port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    Client::connect(options).await
}

/// queuewatch's config for the test broker, with `credentials` in `[mqtt]`.
fn daemon_config(dir: &Path, broker: &Broker, influx: &Influx1, credentials: &str) -> PathBuf {
    write_config(dir, &common::daemon_config_text(&broker.mqtt.url, "queuewatch", credentials, &influx.url, ""))
}
