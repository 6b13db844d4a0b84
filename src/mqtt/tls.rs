//! TLS for `mqtts://`: the rustls client configuration built from
//! `mqtt.ca_file`, `mqtt.client_cert_file` and `mqtt.client_key_file`, and
//! the words for what goes wrong in a handshake.
//!
//! Invariants:
//! - rustls with the ring crypto provider, named here (no process-wide default
//!   provider is installed, no OpenSSL).
//! - Without `mqtt.ca_file` the broker's certificate must chain to a root in
//!   the platform's trust store (see [`crate::tls`]); with it, to a
//!   certificate in that file only.
//! - The files are read again for every connection attempt (a renewed client
//!   certificate or CA takes effect on the next reconnect); the private key is
//!   a secret file ([`crate::secret`]).
//! - A problem names its key and file, never the key's content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::config::MqttTlsConfig;
use crate::secret::{self, SecretFileError};
use crate::tls::{ca_certificates, certificates, platform_certificates, read_file, root_store, CertificateFileError};

pub const CA_FILE: &str = "mqtt.ca_file";
pub const CLIENT_CERT_FILE: &str = "mqtt.client_cert_file";
pub const CLIENT_KEY_FILE: &str = "mqtt.client_key_file";

/// Why the TLS configuration cannot be built. Carries no key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Certificates(#[from] CertificateFileError),
    #[error("mqtt.client_key_file: {path:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("mqtt.client_key_file: {path:?} does not fit the certificate in mqtt.client_cert_file: {source}")]
    KeyDoesNotFit { path: PathBuf, source: rustls::Error },
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("mqtt: TLS setup failed: {0}")]
    Rustls(rustls::Error),
}

/// The client configuration for a connection now, from the files as they are now.
pub fn client_config(tls: &MqttTlsConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = match &tls.ca_file {
        Some(path) => root_store(ca_certificates(CA_FILE, path)?),
        None => root_store(platform_certificates(CA_FILE)?),
    };
    let client_auth = match &tls.client_auth {
        Some(files) => {
            let chain =
                certificates(CLIENT_CERT_FILE, &files.cert_file, &read_file(CLIENT_CERT_FILE, &files.cert_file)?)?;
            let key = private_key(&files.key_file, &secret::read(CLIENT_KEY_FILE, &files.key_file)?)?;
            Some((chain, key, files.key_file.as_path()))
        }
        None => None,
    };
    build(roots, client_auth).map(Arc::new)
}

/// Every problem with the TLS files, for config validation: each file must
/// exist and hold PEM of its kind, the key must fit the certificate and be a
/// private file. Anyone-readable keys are left to the config's warnings.
pub fn check(tls: &MqttTlsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let mut roots = Some(RootCertStore::empty());
    if let Some(path) = &tls.ca_file {
        roots = ca_certificates(CA_FILE, path).map(root_store).map_err(|e| problems.push(e.to_string())).ok();
    }
    if let Some(files) = &tls.client_auth {
        let chain = read_file(CLIENT_CERT_FILE, &files.cert_file)
            .and_then(|pem| certificates(CLIENT_CERT_FILE, &files.cert_file, &pem))
            .map_err(TlsSetupError::from)
            .map_err(|error| problems.push(error.to_string()))
            .ok();
        // The mode first: the content of a key that others may write is not worth parsing.
        let key = secret::inspect(CLIENT_KEY_FILE, &files.key_file)
            .map_err(TlsSetupError::from)
            .and_then(|_| Ok(read_file(CLIENT_KEY_FILE, &files.key_file)?))
            .and_then(|pem| private_key(&files.key_file, &pem))
            .map_err(|error| problems.push(error.to_string()))
            .ok();
        if let (Some(roots), Some(chain), Some(key)) = (roots, chain, key) {
            if let Err(error) = build(roots, Some((chain, key, &files.key_file))) {
                problems.push(error.to_string());
            }
        }
    }
    problems
}

/// What a failed TLS handshake means for the operator, if `error` is one:
/// the sentence to log instead of rustls's own words.
pub fn explain(error: &rustls::Error, tls: &MqttTlsConfig) -> String {
    let trusted = match &tls.ca_file {
        Some(path) => format!("mqtt.ca_file {path:?}"),
        None => "the platform's trust store; set mqtt.ca_file for a private CA".to_string(),
    };
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!("mqtt: the broker's certificate is not trusted ({trusted}): {error}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("mqtt: the broker's certificate is not valid for the host in mqtt.url: {error}"),
        rustls::Error::InvalidCertificate(_) => format!("mqtt: the broker's certificate is not accepted: {error}"),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "mqtt: the broker requires a client certificate (set mqtt.client_cert_file and mqtt.client_key_file)"
                .to_string()
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) if tls.client_auth.is_some() => {
            format!("mqtt: the broker did not accept the client certificate (mqtt.client_cert_file): {error}")
        }
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure | AlertDescription::BadCertificate) => format!(
            "mqtt: the broker refused the TLS handshake, which a broker that requires a client certificate does \
             (set mqtt.client_cert_file and mqtt.client_key_file): {error}"
        ),
        other => format!("mqtt: TLS failed: {other}"),
    }
}

fn build(
    roots: RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, &Path)>,
) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_root_certificates(roots);
    match client_auth {
        Some((chain, key, key_file)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsSetupError::KeyDoesNotFit { path: key_file.to_path_buf(), source }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The first private key in `pem`. Errors say nothing of the content.
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsSetupError::NoPrivateKey { path: path.to_path_buf() })
}
