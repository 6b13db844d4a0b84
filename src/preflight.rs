//! Loading a config file for a command: its values (`Config::parse_values`),
//! then the files they name, which `config` leaves alone: TLS certificates
//! and keys (PEM of their kind, a key that fits its certificate), the staff
//! hash key, and secret files that others may write (refused) or anyone may
//! read (warned about).
//!
//! `check-config`, `run`, `replay` and every other command that takes
//! `--config` load through [`load`]. What must stay true: every problem, of
//! the values and of the files, is reported at once and in the order of the
//! file, each naming its key and never a secret; a file's content is read
//! only to check it (the adapters read the files again when they use them).

use std::path::Path;

use crate::config::{Config, ConfigError, FileCheck, Parsed};

/// The config in the file at `path`, or every problem it has.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
    parse(&text).map_err(|problems| ConfigError::Invalid { file, problems })
}

/// The config in TOML text, its files checked; on failure every problem,
/// each prefixed by its key, in the order of the text.
pub fn parse(text: &str) -> Result<Config, Vec<String>> {
    let Parsed { config, problems, file_checks } = Config::parse_values(text)?;
    let mut all = Vec::with_capacity(problems.len());
    let mut value_problems = problems.into_iter();
    let mut placed = 0;
    for (at, check) in &file_checks {
        all.extend(value_problems.by_ref().take(at - placed));
        placed = *at;
        all.extend(check_file(&config, check));
    }
    all.extend(value_problems);
    if all.is_empty() {
        Ok(config)
    } else {
        Err(all)
    }
}

/// What the config allows but an operator should know weakens it, each
/// prefixed by its key: its values' warnings ([`Config::warnings`]), then
/// the secret files any user may read (each file once per process).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = config.warnings();
    for (key, path) in config.secret_files() {
        let Some(path) = path else { continue };
        if matches!(crate::secret::inspect(key, path), Ok(crate::secret::Readers::Anyone)) {
            warnings.extend(crate::secret::readable_by_anyone_warning_once(key, path));
        }
    }
    warnings
}

/// The problems of one file the config names.
fn check_file(config: &Config, check: &FileCheck) -> Vec<String> {
    match check {
        FileCheck::SecretIfPresent { key, path } if path.exists() => {
            crate::secret::inspect(key, path).err().map(|error| error.to_string()).into_iter().collect()
        }
        FileCheck::SecretIfPresent { .. } => Vec::new(),
        FileCheck::MqttTls => config.mqtt.tls.as_ref().map(crate::mqtt::tls::check).unwrap_or_default(),
        FileCheck::InfluxCaFile { path } => crate::sink::tls::check(path).into_iter().collect(),
        FileCheck::StaffKey => crate::privacy::read_key(&config.privacy).err().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tests::assert_reported;
    use crate::config::{MqttTlsConfig, PrivacyConfig, StaffMode};

    /// Every problem `text` has, its files' included, joined, for `contains` checks.
    fn problems_of(text: &str) -> String {
        parse(text).expect_err("the config has problems").join("\n")
    }

    #[test]
    fn the_files_problems_come_among_the_values_in_the_order_of_the_file() {
        let text = "[mqtt]\nurl = \"mqtts://broker\"\nkeep_alive = \"0s\"\nca_file = \"/absent/mqtt-ca.pem\"\n\
                    [influxdb]\nurl = \"https://influx\"\nca_file = \"/absent/influx-ca.pem\"\nbatch_size = 0\n";
        let values = Config::parse(text).unwrap_err();
        assert_eq!(values.len(), 2, "the values alone read no file: {values:?}");
        let problems = parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|problem| problem.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            ["mqtt.keep_alive", "mqtt.ca_file", "influxdb.ca_file", "influxdb.batch_size"],
            "{problems:#?}"
        );
        assert!(problems[1].starts_with("mqtt.ca_file: cannot read"), "{problems:#?}");
        assert!(problems[2].starts_with("influxdb.ca_file: cannot read"), "{problems:#?}");
    }

    /// A folder with `ca.pem`, `client.pem` and `client.key` (mode 0600) made
    /// by rcgen, and `other.key`, a key that does not fit `client.pem`.
    fn tls_files() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["queuewatch".to_string()]).unwrap();
        let client = client.signed_by(&client_key, &ca).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("ca.pem", ca.pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        write("other.key", rcgen::KeyPair::generate().unwrap().serialize_pem());
        dir
    }

    fn tls_config(dir: &Path, url: &str, files: &[(&str, &str)]) -> String {
        let mut text = format!("[mqtt]\nurl = \"{url}\"\n");
        for (key, name) in files {
            text.push_str(&format!("{key} = \"{}\"\n", dir.join(name).display()));
        }
        text
    }

    #[test]
    fn mqtts_takes_a_ca_file_and_a_client_certificate_with_its_key() {
        let dir = tls_files();
        let files = [("ca_file", "ca.pem"), ("client_cert_file", "client.pem"), ("client_key_file", "client.key")];
        let config = parse(&tls_config(dir.path(), "mqtts://broker", &files)).unwrap();
        assert_eq!((config.mqtt.host.as_str(), config.mqtt.port), ("broker", 8883));
        let tls = config.mqtt.tls.unwrap();
        assert_eq!(tls.ca_file, Some(dir.path().join("ca.pem")));
        let client_auth = tls.client_auth.unwrap();
        assert_eq!(
            (client_auth.cert_file, client_auth.key_file),
            (dir.path().join("client.pem"), dir.path().join("client.key"))
        );
        let system_roots = parse("[mqtt]\nurl = \"mqtts://broker:8884\"\n").unwrap();
        assert_eq!(system_roots.mqtt.tls, Some(MqttTlsConfig::default()), "mqtts:// alone trusts the platform's roots");
        assert_eq!(parse("").unwrap().mqtt.tls, None);
    }

    #[test]
    fn tls_files_are_checked_now_and_each_problem_names_its_key() {
        let dir = tls_files();
        let plain = problems_of(&tls_config(
            dir.path(),
            "mqtt://broker",
            &[("ca_file", "ca.pem"), ("client_key_file", "client.key")],
        ));
        assert_reported(
            &plain,
            &[
                "mqtt.ca_file: TLS files need an mqtts:// mqtt.url, not \"mqtt://broker\"",
                "mqtt.client_key_file: TLS files need an mqtts:// mqtt.url",
            ],
        );
        let missing = problems_of(&tls_config(dir.path(), "mqtts://broker", &[("ca_file", "absent.pem")]));
        assert!(missing.starts_with("mqtt.ca_file: cannot read"), "{missing}");
        let half = problems_of(&tls_config(dir.path(), "mqtts://broker", &[("client_cert_file", "client.pem")]));
        assert_reported(&half, &["mqtt.client_key_file: needed with mqtt.client_cert_file (both or neither)"]);
        let swapped = [("ca_file", "client.key"), ("client_cert_file", "client.pem"), ("client_key_file", "ca.pem")];
        let swapped = problems_of(&tls_config(dir.path(), "mqtts://broker", &swapped));
        assert_reported(
            &swapped,
            &["mqtt.ca_file: ", "holds no PEM certificate", "mqtt.client_key_file: ", "holds no PEM private key"],
        );
        let unfit = [("client_cert_file", "client.pem"), ("client_key_file", "other.key")];
        let unfit = problems_of(&tls_config(dir.path(), "mqtts://broker", &unfit));
        assert_reported(&unfit, &["mqtt.client_key_file: ", "does not fit the certificate in mqtt.client_cert_file"]);
        assert!(!unfit.contains("PRIVATE KEY"), "{unfit}");
    }

    #[test]
    fn secret_files_others_may_write_are_refused_and_those_anyone_may_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tls_files();
        let password = dir.path().join("password");
        std::fs::write(&password, "planted-secret\n").unwrap();
        let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut text = tls_config(
            dir.path(),
            "mqtts://broker",
            &[("client_cert_file", "client.pem"), ("client_key_file", "client.key")],
        );
        text.push_str(&format!("username = \"queuewatch\"\npassword_file = \"{}\"\n", password.display()));
        let token = dir.path().join("token");
        std::fs::write(&token, "planted-token\n").unwrap();
        text.push_str(&format!("\n[influxdb]\napi = \"v2\"\ntoken_file = \"{}\"\n", token.display()));
        chmod(&password, 0o666);
        chmod(&dir.path().join("client.key"), 0o660);
        chmod(&token, 0o602);
        let problems = problems_of(&text);
        assert_reported(
            &problems,
            &["mqtt.password_file: ", "(mode 0666)", "mqtt.client_key_file: ", "(mode 0660)", "influxdb.token_file: "],
        );
        assert!(!problems.contains("planted-token"), "{problems}");
        chmod(&token, 0o600);
        assert!(!problems.contains("planted-secret") && !problems.contains("PRIVATE KEY"), "{problems}");

        chmod(&password, 0o644);
        chmod(&dir.path().join("client.key"), 0o444);
        let config = parse(&text).unwrap();
        let warned = warnings(&config).join("\n");
        assert_reported(&warned, &["mqtt.password_file: ", "mqtt.client_key_file: ", "may be read by any user"]);
        assert!(warnings(&config).is_empty(), "each file is warned about once: {:?}", warnings(&config));
    }

    #[test]
    fn staff_are_kept_by_default_and_hashing_needs_a_key_of_16_bytes_that_is_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(Config::default().privacy, PrivacyConfig::default());
        assert_eq!(parse("").unwrap().privacy.staff, StaffMode::Keep);
        assert_eq!(parse("[privacy]\nstaff = \"drop\"").unwrap().privacy.staff, StaffMode::Drop);
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("staff.key");
        let chmod = |mode| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let hash_with_file = format!("[privacy]\nstaff = \"hash\"\nstaff_key_file = \"{}\"\n", key.display());

        std::fs::write(&key, "planted-key-0123456789\n").unwrap();
        chmod(0o600);
        let config = parse(&hash_with_file).unwrap();
        assert_eq!(config.privacy.staff, StaffMode::Hash);
        assert_eq!(config.privacy.staff_key_file.as_deref(), Some(key.as_path()));
        assert!(!format!("{config:?}").contains("planted"), "the config holds where the key is, not the key");
        assert!(warnings(&config).is_empty(), "{:?}", warnings(&config));

        // 15 bytes once the newline is taken off.
        std::fs::write(&key, "planted-key-15b\n").unwrap();
        let problems = problems_of(&hash_with_file);
        assert_reported(&problems, &["privacy.staff_key_file: ", "is 15 bytes; at least 16"]);
        assert!(!problems.contains("planted"), "{problems}");
        std::fs::write(&key, "planted-key-0123456789\n").unwrap();
        chmod(0o620);
        let problems = problems_of(&hash_with_file);
        assert_reported(&problems, &["privacy.staff_key_file: ", "(mode 0620)"]);
        assert!(!problems.contains("planted"), "{problems}");
        chmod(0o644);
        let warned = warnings(&parse(&hash_with_file).unwrap()).join("\n");
        assert_reported(&warned, &["privacy.staff_key_file: ", "may be read by any user"]);
        std::fs::remove_file(&key).unwrap();
        assert_reported(&problems_of(&hash_with_file), &["privacy.staff_key_file: cannot read"]);

        let variable = "QUEUEWATCH_TEST_STAFF_KEY_CONFIG";
        let hash_with_env = format!("[privacy]\nstaff = \"hash\"\nstaff_key_env = \"{variable}\"\n");
        assert_reported(
            &problems_of(&hash_with_env),
            &[&format!("privacy.staff_key_env: the environment variable \"{variable}\" is not set")],
        );
        std::env::set_var(variable, "planted-short");
        let problems = problems_of(&hash_with_env);
        assert_reported(&problems, &["privacy.staff_key_env: the key in the environment variable", "is 13 bytes"]);
        assert!(!problems.contains("planted"), "{problems}");
        std::env::set_var(variable, "planted-key-0123456789");
        assert!(parse(&hash_with_env).is_ok());
        std::env::remove_var(variable);

        assert_reported(
            &problems_of("[privacy]\nstaff = \"hash\""),
            &["privacy.staff: \"hash\" needs a key of at least 16 bytes: set privacy.staff_key_env or privacy.staff_key_file"],
        );
        assert_reported(
            &problems_of(&format!("[privacy]\nstaff_key_env = \"{variable}\"")),
            &["privacy.staff_key_env: a key is used only with privacy.staff = \"hash\", and staff is \"keep\""],
        );
        assert_reported(
            &problems_of("[privacy]\nstaff = \"drop\"\nstaff_key_file = \"/k\""),
            &["privacy.staff_key_file: a key is used only with privacy.staff = \"hash\", and staff is \"drop\""],
        );
        let problems = problems_of(
            "[privacy]\nstaff = \"hide\"\nstaff_key = \"planted\"\nstaff_key_env = \"A\"\nstaff_key_file = \"\"\nsalt = 1",
        );
        assert_reported(
            &problems,
            &[
                "privacy.staff: \"hide\" is not \"keep\", \"hash\" or \"drop\"",
                "privacy.staff_key: secrets are never read from the config file",
                "privacy.staff_key_file: must not be empty",
                "privacy.salt: unknown key",
            ],
        );
        assert!(!problems.contains("planted"), "{problems}");
        assert_reported(
            &problems_of("[privacy]\nstaff = \"hash\"\nstaff_key_env = \"A\"\nstaff_key_file = \"/k\""),
            &["privacy.staff_key_file: give staff_key_env or staff_key_file, not both"],
        );
    }
}
