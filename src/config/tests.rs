use super::*;
use crate::ids::ServiceId;
use crate::time::Millis;

#[test]
fn a_typical_config_parses() {
    let config = Config::parse(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "queuewatch"
topics = ["queue/+/events"]
[influxdb]
api = "v1"
url = "http://127.0.0.1:8086"
database = "queuewatch"
flush_interval = "1s"
[tracking]
reorder_window = "10s"
max_ticket_age = "12h"
[sla]
wait_target = "15m"
service_target = "20m"
[sla.services.ktp]
wait_target = "10m"
service_target = "15m"
"#,
    )
    .unwrap();
    assert_eq!(config.influxdb.api, InfluxApi::V1);
    let v3 = Config::parse("[influxdb]\napi = \"v3\"\ndatabase = \"qw\"\n").unwrap();
    assert_eq!((v3.influxdb.api, v3.influxdb.database.as_str()), (InfluxApi::V3, "qw"));
    let problems = Config::parse("[influxdb]\napi = \"v4\"\n").unwrap_err();
    assert_eq!(problems, ["influxdb.api: \"v4\" is none of \"v1\", \"v2\" and \"v3\""]);
    let ktp = config.sla.targets_for(None, &ServiceId::parse("ktp").unwrap());
    assert_eq!(ktp, Targets { wait_ms: 600_000, service_ms: 900_000 });
    let other = config.sla.targets_for(None, &ServiceId::parse("sim").unwrap());
    assert_eq!(other, Targets { wait_ms: 900_000, service_ms: 1_200_000 });
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let problems = Config::parse(
        r#"
[mqtt]
url = "tcp://x"
colour = "blue"
[influxdb]
flush_interval = "1 parsec"
api = "v9"
token = "secret"
[tracking]
reorder_window = 10
[sla.services."k t p"]
wait_target = "1m"
"#,
    )
    .unwrap_err();
    let joined = problems.join("\n");
    for expected in [
        "mqtt.url",
        "mqtt.colour: unknown key",
        "influxdb.flush_interval: invalid duration \"1 parsec\"",
        "influxdb.api",
        "secrets are never read",
        "tracking.reorder_window",
        "sla.services.k t p",
    ] {
        assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
    }
}

#[test]
fn mqtt_urls_need_the_scheme_and_default_the_port() {
    assert_eq!(parse_mqtt_url("mqtt://broker:1884").unwrap(), ("broker".into(), 1884));
    assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
    assert!(parse_mqtt_url("http://broker").is_err());
    assert!(parse_mqtt_url("mqtt://broker:0").is_err());
    assert!(parse_mqtt_url("mqtts://broker").is_err(), "the simulator speaks plain MQTT only");
    let tls = |host: &str, port| BrokerUrl { host: host.into(), port, tls: true };
    assert_eq!(parse_broker_url("mqtts://broker").unwrap(), tls("broker", 8883));
    assert_eq!(parse_broker_url("mqtts://broker:8884/").unwrap(), tls("broker", 8884));
    assert_eq!(parse_broker_url("mqtt://broker").unwrap(), BrokerUrl { host: "broker".into(), port: 1883, tls: false });
}

#[test]
fn a_topic_filter_without_an_office_level_is_warned_about() {
    let config = Config::parse("[mqtt]\ntopics = [\"queue/+/events\", \"queue/all/events\", \"queue/#\"]\n").unwrap();
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("mqtt.topics: \"queue/all/events\" has no \"+\" level"), "{warnings:?}");
    assert!(warnings[1].starts_with("mqtt.topics: \"queue/#\" has no \"+\" level"), "{warnings:?}");
    assert!(Config::parse("").unwrap().warnings().is_empty());
}

#[test]
fn mqtt_credentials_name_where_the_password_is() {
    let config =
        Config::parse("[mqtt]\nusername = \"queuewatch\"\npassword_file = \"/etc/queuewatch/mqtt-password\"\n")
            .unwrap();
    assert_eq!(config.mqtt.username.as_deref(), Some("queuewatch"));
    assert_eq!(config.mqtt.password_file.as_deref(), Some("/etc/queuewatch/mqtt-password"));
    assert_eq!(config.mqtt.password_env, None);
    let config =
        Config::parse("[mqtt]\nusername = \"queuewatch\"\npassword_env = \"QUEUEWATCH_MQTT_PASSWORD\"\n").unwrap();
    assert_eq!(config.mqtt.password_env.as_deref(), Some("QUEUEWATCH_MQTT_PASSWORD"));
    let config = Config::parse("[mqtt]\nusername = \"queuewatch\"\n").unwrap();
    assert_eq!((config.mqtt.password_env, config.mqtt.password_file), (None, None), "a user name alone is valid");
    assert_eq!(Config::parse("").unwrap().mqtt.username, None, "anonymous by default");
}

#[test]
fn mqtt_credential_problems_are_all_reported_and_never_show_a_secret() {
    let problems = problems_of(
        r#"
[mqtt]
password = "hunter2"
password_env = "QUEUEWATCH_MQTT_PASSWORD"
password_file = "/etc/queuewatch/mqtt-password"
"#,
    );
    assert_reported(
        &problems,
        &[
            "mqtt.password: secrets are never read from the config file",
            "mqtt.password_file: give password_env or password_file, not both",
            "mqtt.username: needed with mqtt.password_env or mqtt.password_file",
        ],
    );
    assert!(!problems.contains("hunter2"), "{problems}");
    assert!(!problems.contains("unknown key"), "{problems}");
    let problems = problems_of("[mqtt]\nusername = \"\"\npassword_env = \"A=B\"\npassword_file = \"\"\n");
    assert_reported(
        &problems,
        &[
            "mqtt.username: must be 1-65535 bytes",
            "mqtt.password_env: \"A=B\" is not an environment variable name",
            "mqtt.password_file: must not be empty",
        ],
    );
    assert_reported(&problems_of("[mqtt]\nusername = 7\n"), &["mqtt.username: expected a string"]);
}

#[test]
fn topic_filters_follow_mqtt_rules() {
    assert!(validate_topic_filter("queue/+/events").is_ok());
    assert!(validate_topic_filter("queue/#").is_ok());
    assert!(validate_topic_filter("queue/#/x").is_err());
    assert!(validate_topic_filter("queue/a+/x").is_err());
}

#[test]
fn offices_take_hours_days_zone_region_and_their_own_targets() {
    let config = Config::parse(
        r#"
[sla]
wait_target = "15m"
[sla.services.ktp]
wait_target = "10m"
[offices.mpp-mks]
name = "MPP Makassar"
region = "sulsel"
timezone = "Asia/Makassar"
hours = "07:30-12:00,13:00-15:30"
days = "Mon-Fri"
[offices.mpp-mks.sla]
wait_target = "20m"
idle_target = "5m"
[offices.mpp-mks.sla.services.paspor]
wait_target = "30m"
"#,
    )
    .unwrap();
    let office = &config.offices[&OfficeId::parse("mpp-mks").unwrap()];
    assert_eq!(office.region.as_deref(), Some("sulsel"));
    assert_eq!(office.hours, vec![(450, 720), (780, 930)]);
    assert_eq!(office.days, [true, true, true, true, true, false, false]);
    let targets = |service: &str| config.sla.targets_for(Some(&office.sla), &ServiceId::parse(service).unwrap());
    assert_eq!(targets("paspor").wait_ms, 1_800_000);
    assert_eq!(targets("ktp").wait_ms, 1_200_000, "the office's own default beats the global service table");
    assert_eq!(targets("ktp").service_ms, 1_200_000);
    assert_eq!(config.sla.idle_target_ms(Some(&office.sla)), Some(300_000));
    assert_eq!(config.sla.idle_target_ms(None), None);
    // Friday 2026-11-27 08:00 WITA is 00:00 UTC; 12:30 WITA is the lunch break.
    let friday_8 = crate::time::Millis(1_795_737_600_000);
    assert!(office.is_open_at(friday_8));
    assert!(!office.is_open_at(friday_8.plus_ms(270 * 60_000)));
    assert!(!office.is_open_at(friday_8.plus_ms(24 * 3_600_000)), "Saturday");
}

#[test]
fn bad_office_settings_name_their_keys() {
    let problems = Config::parse(
        r#"
[offices.x]
timezone = "Mars/Olympus"
hours = "12:00-08:00"
days = "Funday"
region = "a b"
colour = "red"
[alerts]
topic = "queue/+/alerts"
"#,
    )
    .unwrap_err()
    .join("\n");
    for expected in [
        "offices.x.timezone",
        "offices.x.hours",
        "offices.x.days",
        "offices.x.region",
        "offices.x.colour: unknown key",
        "alerts.topic",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
}

#[test]
fn the_influx_password_file_and_the_spool_size_are_read_and_checked() {
    let config = Config::parse(
        "[influxdb]\nusername = \"qw\"\npassword_file = \"/etc/queuewatch/influx-password\"\n\
         [storage]\nspool_max_bytes = 65536\n",
    )
    .unwrap();
    assert_eq!(config.influxdb.password_file.as_deref(), Some("/etc/queuewatch/influx-password"));
    assert_eq!(config.storage.spool_max_bytes, 65536);
    assert_eq!(Config::default().storage.spool_max_bytes, 1 << 30);
    assert_eq!(Config::parse("[storage]\nspool_max_bytes = 0\n").unwrap().storage.spool_max_bytes, 0);
    assert_eq!(Config::default().storage.dead_letter_max_bytes, 256 << 20);
    let config = Config::parse("[storage]\ndead_letter_max_bytes = 4096\n").unwrap();
    assert_eq!(config.storage.dead_letter_max_bytes, 4096);
    let problems = problems_of("[storage]\ndead_letter_max_bytes = -1\n");
    assert_reported(&problems, &["storage.dead_letter_max_bytes: expected a number of bytes"]);
    let problems =
        problems_of("[influxdb]\npassword_env = \"P\"\npassword_file = \"\"\n[storage]\nspool_max_bytes = \"1GiB\"\n");
    assert_reported(
        &problems,
        &[
            "influxdb.password_file: must not be empty",
            "influxdb.password_file: give password_env or password_file, not both",
            "storage.spool_max_bytes: expected a number of bytes",
        ],
    );
}

#[test]
fn an_influx_url_with_a_user_and_password_is_refused_without_showing_them() {
    for url in ["http://writer:hunter2@influx:8086", "https://writer:hunter2@influx", "http//writer:hunter2@influx"] {
        let problems = problems_of(&format!("[influxdb]\nurl = \"{url}\"\n"));
        assert!(problems.contains("influxdb.url"), "{problems}");
        assert!(!problems.contains("hunter2"), "{problems}");
    }
    let problems = problems_of("[influxdb]\nurl = \"http://writer@influx:8086\"\n");
    assert!(problems.contains("holds a user name or password"), "{problems}");
}

/// Every problem `text` has, joined, for `contains` checks.
fn problems_of(text: &str) -> String {
    Config::parse(text).expect_err("the config has problems").join("\n")
}

#[track_caller]
pub(crate) fn assert_reported(problems: &str, expected: &[&str]) {
    for expected in expected {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
}

#[test]
fn durations_below_their_bounds_are_each_reported_with_the_key() {
    let problems = problems_of(
        r#"
[mqtt]
keep_alive = "500ms"
[influxdb]
flush_interval = "500us"
request_timeout = "0s"
max_backoff = "999us"
[tracking]
snapshot_interval = "500us"
silence_after = "999ms"
max_ticket_age = "0s"
[sla]
wait_target = "500us"
service_target = "0s"
idle_target = "0s"
[sla.services.ktp]
wait_target = "0s"
[offices.o1.sla]
service_target = "100us"
"#,
    );
    assert_reported(
        &problems,
        &[
            "mqtt.keep_alive: must be at least 1s",
            "influxdb.flush_interval: must be at least 1ms",
            "influxdb.request_timeout: must be at least 1ms",
            "influxdb.max_backoff: must be at least 1ms",
            "tracking.snapshot_interval: must be at least 1s",
            "tracking.silence_after: must be at least 1s",
            "tracking.max_ticket_age: must be at least 1ms",
            "sla.wait_target: must be at least 1ms",
            "sla.service_target: must be at least 1ms",
            "sla.idle_target: must be at least 1ms",
            "sla.services.ktp.wait_target: must be at least 1ms",
            "offices.o1.sla.service_target: must be at least 1ms",
        ],
    );
}

#[test]
fn no_duration_exceeds_a_year_so_event_times_stay_in_influxdb_range() {
    let problems = problems_of(
        r#"
[mqtt]
keep_alive = "19h"
[influxdb]
max_backoff = "400days"
[tracking]
max_ticket_age = "366days"
dedup_horizon = "100years"
max_future_skew = "2years"
gauge_idle_after = "1000days"
close_grace = "400days"
[sla.services.ktp]
service_target = "367days"
"#,
    );
    assert_reported(
        &problems,
        &[
            "mqtt.keep_alive: must be at most 18h 12m 15s",
            "influxdb.max_backoff: must be at most 365days",
            "tracking.max_ticket_age: must be at most 365days",
            "tracking.dedup_horizon: must be at most 365days",
            "tracking.max_future_skew: must be at most 365days",
            "tracking.gauge_idle_after: must be at most 365days",
            "tracking.close_grace: must be at most 365days",
            "sla.services.ktp.service_target: must be at most 365days",
        ],
    );
    assert!(Config::parse("[tracking]\nmax_ticket_age = \"365days\"\n").is_ok());
    let grace = Config::parse("[tracking]\nclose_grace = \"45m\"\n").unwrap().tracking.close_grace;
    assert_eq!(grace, Duration::from_secs(45 * 60));
    assert_eq!(TrackingConfig::default().close_grace, Duration::from_secs(30 * 60));
}

#[test]
fn the_reorder_window_is_below_the_ticket_age_and_within_the_dedup_horizon() {
    let problems = problems_of("[tracking]\nreorder_window = \"2h\"\nmax_ticket_age = \"2h\"\n");
    assert_reported(&problems, &["tracking.reorder_window: must be below tracking.max_ticket_age (2h)"]);
    let problems = problems_of("[tracking]\nreorder_window = \"30s\"\ndedup_horizon = \"10s\"\n");
    assert_reported(&problems, &["tracking.dedup_horizon: must be at least tracking.reorder_window (30s)"]);
    let config = Config::parse("[tracking]\nreorder_window = \"0s\"\ndedup_horizon = \"0s\"\n").unwrap();
    assert_eq!(config.tracking.reorder_window, Duration::ZERO);
}

#[test]
fn gauges_can_be_turned_off() {
    assert!(Config::default().tracking.gauges);
    assert!(!Config::parse("[tracking]\ngauges = false\n").unwrap().tracking.gauges);
    let problems = Config::parse("[tracking]\ngauges = \"no\"\n").unwrap_err();
    assert_eq!(problems, ["tracking.gauges: expected true or false"]);
}

#[test]
fn gauge_keepalive_is_a_positive_multiple_of_the_snapshot_interval() {
    let config = Config::parse("[tracking]\nsnapshot_interval = \"30s\"\ngauge_keepalive = \"5m\"\n").unwrap();
    assert_eq!(config.tracking.gauge_keepalive, Duration::from_secs(300));
    for keepalive in ["45s", "0s"] {
        let text = format!("[tracking]\nsnapshot_interval = \"30s\"\ngauge_keepalive = \"{keepalive}\"\n");
        assert_reported(
            &problems_of(&text),
            &["tracking.gauge_keepalive: must be a positive multiple of tracking.snapshot_interval (30s)"],
        );
    }
    // Unset, the default (1m) is rounded up to a multiple of the interval.
    let keepalive = |interval: &str| {
        let text = format!("[tracking]\nsnapshot_interval = \"{interval}\"\n");
        Config::parse(&text).unwrap().tracking.gauge_keepalive
    };
    assert_eq!(keepalive("25s"), Duration::from_secs(75));
    assert_eq!(keepalive("1h"), Duration::from_secs(3600));
    assert_eq!(keepalive("10s"), Duration::from_secs(60));
}

#[test]
fn min_timestamp_is_rfc3339_with_an_offset_and_not_before_1970() {
    let config = Config::parse("[tracking]\nmin_timestamp = \"2015-06-01T00:00:00+07:00\"\n").unwrap();
    assert_eq!(config.tracking.min_timestamp, Millis(1_433_091_600_000));
    let config = Config::parse("[tracking]\nmin_timestamp = \"1970-01-01T00:00:00Z\"\n").unwrap();
    assert_eq!(config.tracking.min_timestamp, Millis(0));
    for (value, why) in [
        ("\"2015-06-01T00:00:00\"", "is not RFC 3339 with an offset"),
        ("\"yesterday\"", "is not RFC 3339 with an offset"),
        ("\"1969-12-31T23:59:59.999Z\"", "must not be before 1970-01-01T00:00:00Z"),
        ("2015", "expected a string"),
    ] {
        let problems = problems_of(&format!("[tracking]\nmin_timestamp = {value}\n"));
        assert_reported(&problems, &["tracking.min_timestamp: ", why]);
    }
}

#[test]
fn clock_is_wall_or_event() {
    assert_eq!(Config::parse("[tracking]\nclock = \"event\"\n").unwrap().tracking.clock, ClockMode::Event);
    assert_eq!(Config::parse("[tracking]\nclock = \"wall\"\n").unwrap().tracking.clock, ClockMode::Wall);
    assert_reported(
        &problems_of("[tracking]\nclock = \"Event\"\n"),
        &["tracking.clock: \"Event\" is neither \"wall\" nor \"event\""],
    );
}

#[test]
fn the_example_config_parses_and_documents_the_tracking_defaults() {
    let config = Config::parse(include_str!("../../config/queuewatch.toml")).unwrap();
    assert_eq!(config.tracking, TrackingConfig::default());
    assert_eq!(config.tracking.clock, ClockMode::Wall);
    for key in ["gauge_keepalive", "min_timestamp", "clock"] {
        assert!(include_str!("../../config/queuewatch.toml").contains(&format!("\n{key} = ")), "{key}");
    }
}

#[test]
fn limits_and_only_configured_parse_and_the_example_documents_the_defaults() {
    let example = Config::parse(include_str!("../../config/queuewatch.toml")).unwrap();
    assert_eq!((example.limits, example.only_configured), (LimitsConfig::default(), false));
    let config = Config::parse(
        "[limits]\nmax_offices = 0\nmax_open_tickets_per_office = 7\nmax_remembered_per_office = 9\n\
         [offices]\nonly_configured = true\n[offices.o1]\n",
    )
    .unwrap();
    assert_eq!((config.limits.max_offices, config.limits.max_open_tickets_per_office), (0, 7));
    assert_eq!(config.limits.max_remembered_per_office, 9);
    assert!(config.only_configured && config.offices.len() == 1);
    assert_reported(
        &problems_of(
            "[limits]\nmax_staff_per_office = -1\nmax_offce = 3\nmax_remembered_per_office = \"lots\"\n\
             [offices]\nonly_configured = \"yes\"\n",
        ),
        &[
            "limits.max_staff_per_office: expected a whole number (0 for no limit), found -1",
            "limits.max_remembered_per_office: expected a whole number (0 for no limit), found \"lots\"",
            "limits.max_offce: unknown key",
            "offices.only_configured: expected true or false",
        ],
    );
}

#[test]
fn day_ranges_may_wrap_the_week() {
    assert_eq!(parse_days("Sat-Mon").unwrap(), [true, false, false, false, false, true, true]);
    assert_eq!(parse_days("Mon,Wed").unwrap(), [true, false, true, false, false, false, false]);
}
#[test]
fn the_operations_endpoint_and_the_shutdown_timeout_have_defaults() {
    let config = Config::parse("").unwrap();
    assert_eq!(config.http.listen, Some("127.0.0.1:9108".parse().unwrap()));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(8));
    let config = Config::parse("shutdown_timeout = \"20s\"\n[http]\nlisten = \"[::1]:0\"\n").unwrap();
    assert_eq!(config.http.listen, Some("[::1]:0".parse().unwrap()));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(20));
}

#[test]
fn the_example_config_and_the_systemd_unit_agree_on_the_stop() {
    let example = Config::parse(include_str!("../../config/queuewatch.toml")).unwrap();
    assert_eq!((example.shutdown_timeout, &example.http), (DEFAULT_SHUTDOWN_TIMEOUT, &HttpConfig::default()));
    let unit = include_str!("../../deploy/systemd/queuewatch.service");
    let stop_s: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec=")?.strip_suffix('s')?.parse().ok())
        .expect("TimeoutStopSec=<n>s in the unit");
    assert!(Duration::from_secs(stop_s) > example.shutdown_timeout, "systemd would SIGKILL before shutdown_timeout");
}

#[test]
fn an_empty_listen_address_turns_the_endpoint_off() {
    assert_eq!(Config::parse("[http]\nlisten = \"\"\n").unwrap().http.listen, None);
}

#[test]
fn bad_listen_addresses_and_shutdown_timeouts_are_each_reported_with_the_key() {
    for (text, expected) in [
        ("[http]\nlisten = \"localhost:9108\"\n", "http.listen: \"localhost:9108\" is not an IP address and port"),
        ("[http]\nlisten = \"127.0.0.1\"\n", "http.listen: \"127.0.0.1\" is not an IP address and port"),
        ("[http]\nlisten = \"127.0.0.1:99999\"\n", "http.listen: \"127.0.0.1:99999\""),
        ("[http]\nlisten = 9108\n", "http.listen: expected a string"),
        ("[http]\nport = 9108\n", "http.port: unknown key"),
        ("shutdown_timeout = \"500ms\"\n", "shutdown_timeout: must be at least 1s"),
        ("shutdown_timeout = \"1h\"\n", "shutdown_timeout: must be at most 10m"),
        ("shutdown_timeout = \"eight\"\n", "shutdown_timeout: invalid duration \"eight\""),
        ("shutdown_timeout = 8\n", "shutdown_timeout: expected a duration string"),
    ] {
        assert_reported(&problems_of(text), &[expected]);
    }
    let both = problems_of("shutdown_timeout = \"0s\"\n[http]\nlisten = \"nowhere\"\n");
    assert_reported(&both, &["shutdown_timeout: must be at least 1s", "http.listen: \"nowhere\""]);
}
