//! HTTPS to InfluxDB: the HTTP client every InfluxDB writer is built with
//! (v1, v2, `resend-dead-letters`), the roots an `https://` URL is checked
//! against, and the words for a failed handshake.
//!
//! Invariants:
//! - One way to build the client: [`ClientSetup::builder`], so every path to
//!   InfluxDB trusts the same roots and follows no redirect. TLS is reqwest's
//!   rustls (ring); no OpenSSL.
//! - With `influxdb.ca_file` the server's certificate must chain to a
//!   certificate in that file only (reqwest's built-in roots are off); without
//!   it, to a root of the platform's trust store, as for MQTT.
//! - The roots are read when a writer starts and again after every TLS
//!   failure (a corrected `ca_file` takes effect on the next try, no restart).
//! - A TLS failure is a [`super::WriteError::Tls`]: the operator fixes a certificate
//!   while the points wait in the spool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Url;
use reqwest_rustls::{CertificateError, Error as RustlsError};

use crate::tls::{ca_certificates, platform_certificates, CertificateFileError};

pub const CA_FILE: &str = "influxdb.ca_file";

/// What an InfluxDB writer's HTTP client is built from; rebuilt after a TLS
/// failure (and, on the v2 path, after a new token is read).
#[derive(Debug, Clone)]
pub(crate) struct ClientSetup {
    /// `Some` for an `https://` URL: its host, for messages.
    https_host: Option<String>,
    ca_file: Option<PathBuf>,
    request_timeout: Duration,
    headers: HeaderMap,
}

impl ClientSetup {
    pub fn new(url: &Url, ca_file: Option<&Path>, request_timeout: Duration, headers: HeaderMap) -> ClientSetup {
        let https_host = (url.scheme() == "https").then(|| url.host_str().unwrap_or_default().to_string());
        ClientSetup { https_host, ca_file: ca_file.map(Path::to_path_buf), request_timeout, headers }
    }

    /// A client builder with the timeout, the default headers and, for
    /// `https://`, the roots as they are now. The error names the key.
    pub fn builder(&self) -> Result<reqwest::ClientBuilder, String> {
        // Redirects are not followed: the credentials would go along to
        // wherever they point, and a 301 or 302 turns the write into a GET
        // without its body. A redirect is an `influxdb.url` to correct.
        let mut builder = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .default_headers(self.headers.clone())
            .redirect(reqwest::redirect::Policy::none());
        if self.https_host.is_some() {
            builder = builder.tls_built_in_root_certs(false);
            for root in root_certificates(self.ca_file.as_deref())? {
                builder = builder.add_root_certificate(root);
            }
        }
        Ok(builder)
    }

    /// What to log for `error` (the message of a [`WriteError::Tls`]), in
    /// the operator's words, if a TLS handshake is what failed.
    pub fn tls_failure(&self, error: &reqwest::Error) -> Option<String> {
        let host = self.https_host.as_deref()?;
        let failure = crate::tls::find_cause::<RustlsError>(error)?;
        Some(explain(failure, host, self.ca_file.as_deref()))
    }
}

/// Every problem with `influxdb.ca_file` at `path`, for config validation:
/// it must exist and hold PEM CA certificates the HTTP client accepts.
pub fn check(path: &Path) -> Option<String> {
    root_certificates(Some(path)).err()
}

/// The roots for an `https://` URL: those in `ca_file`, or the platform's.
fn root_certificates(ca_file: Option<&Path>) -> Result<Vec<reqwest::Certificate>, String> {
    let found = match ca_file {
        Some(path) => ca_certificates(CA_FILE, path),
        None => platform_certificates(CA_FILE),
    };
    let found = found.map_err(|error| error.to_string())?;
    let mut usable = Vec::with_capacity(found.len());
    // reqwest's rustls is another version than the MQTT side's: a root it
    // cannot parse would fail the client's build, so it is checked here.
    let mut roots = reqwest_rustls::RootCertStore::empty();
    for certificate in found {
        if roots.add(&reqwest_rustls::Certificate(certificate.to_vec())).is_err() {
            match ca_file {
                Some(path) => {
                    return Err(CertificateFileError::BadCertificates {
                        key: CA_FILE,
                        path: path.to_path_buf(),
                        detail: "holds a certificate the HTTP client cannot use as a CA".into(),
                    }
                    .to_string())
                }
                // Platform stores carry old roots that only some parsers take.
                None => continue,
            }
        }
        usable.push(reqwest::Certificate::from_der(&certificate).map_err(|error| format!("{CA_FILE}: {error}"))?);
    }
    if usable.is_empty() {
        return Err(CertificateFileError::NoPlatformRoots { key: CA_FILE, detail: String::new() }.to_string());
    }
    Ok(usable)
}

/// What a failed handshake with InfluxDB at `host` means for the operator.
fn explain(error: &RustlsError, host: &str, ca_file: Option<&Path>) -> String {
    let trusted = match ca_file {
        Some(path) => format!("{CA_FILE} {path:?}"),
        None => format!("the platform's trust store; set {CA_FILE} for a private CA"),
    };
    match error {
        RustlsError::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!("influxdb: the certificate of {host} is not trusted ({trusted}): {error}")
        }
        RustlsError::InvalidCertificate(CertificateError::NotValidForName) => format!(
            "influxdb: the certificate of {host} does not name {host}, the host in influxdb.url \
             (use the name the certificate was made for): {error}"
        ),
        RustlsError::InvalidCertificate(_) => {
            format!("influxdb: the certificate of {host} is not accepted ({trusted}): {error}")
        }
        RustlsError::InvalidMessage(_) => {
            format!("influxdb: {host} does not answer in TLS (does influxdb.url name an https:// server?): {error}")
        }
        other => format!("influxdb: TLS with {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_wrapped(error: RustlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn an_untrusted_certificate_names_the_ca_file_and_the_host() {
        let error = io_wrapped(RustlsError::InvalidCertificate(CertificateError::UnknownIssuer));
        let found = crate::tls::find_cause::<RustlsError>(&error).unwrap();
        let message = explain(found, "influx.example", Some(Path::new("/etc/queuewatch/influx-ca.pem")));
        assert!(
            message.starts_with(
                "influxdb: the certificate of influx.example is not trusted \
                 (influxdb.ca_file \"/etc/queuewatch/influx-ca.pem\"): "
            ),
            "{message}"
        );
        let message = explain(found, "influx.example", None);
        assert!(message.contains("the platform's trust store; set influxdb.ca_file"), "{message}");
    }

    #[test]
    fn a_certificate_for_another_host_says_so() {
        let message = explain(&RustlsError::InvalidCertificate(CertificateError::NotValidForName), "10.1.2.3", None);
        assert!(message.starts_with("influxdb: the certificate of 10.1.2.3 does not name 10.1.2.3"), "{message}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let problem = check(&path).unwrap();
        assert!(problem.starts_with("influxdb.ca_file: ") && problem.contains("holds no PEM certificate"), "{problem}");
        let problem = check(&dir.path().join("missing.pem")).unwrap();
        assert!(problem.starts_with("influxdb.ca_file: cannot read "), "{problem}");
    }

    #[test]
    fn the_config_takes_a_ca_file_only_with_an_https_url_and_names_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let config = |url: &str, ca_file: &Path| {
            crate::preflight::parse(&format!("[influxdb]\nurl = \"{url}\"\nca_file = \"{}\"\n", ca_file.display()))
        };
        let problems = config("http://influx:8086", &empty).unwrap_err();
        assert_eq!(problems, ["influxdb.ca_file: needs an https:// influxdb.url, not \"http://influx:8086\""]);
        let problems = config("https://influx:8086", &empty).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("influxdb.ca_file: ") && problems[0].contains("holds no PEM"), "{problems:?}");
        let problems = config("https://influx:8086", &dir.path().join("missing.pem")).unwrap_err();
        assert!(problems[0].starts_with("influxdb.ca_file: cannot read "), "{problems:?}");
    }
}
