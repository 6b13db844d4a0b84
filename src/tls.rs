//! What every TLS client of queuewatch shares (MQTT in `mqtt::tls`,
//! InfluxDB in `sink::tls`): reading PEM certificate files, the platform's
//! trust store, and finding the TLS error behind a connection error.
//!
//! Invariants:
//! - A problem names the config key and the file, never a file's content.
//! - A CA file must hold at least one PEM certificate, each usable as a
//!   trust anchor; the platform's store must hold at least one usable root.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Why a certificate file or the platform's trust store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateFileError {
    #[error("{key}: cannot read {path:?}: {source}")]
    Unreadable { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key}: {path:?}: {detail}")]
    BadCertificates { key: &'static str, path: PathBuf, detail: String },
    #[error("{key} is not set and the platform's trust store holds no usable root certificate{detail}; set {key}")]
    NoPlatformRoots { key: &'static str, detail: String },
}

/// The file at `path`, given as `key`.
pub fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, CertificateFileError> {
    std::fs::read(path).map_err(|source| CertificateFileError::Unreadable { key, path: path.to_path_buf(), source })
}

/// Every PEM certificate in `pem` (read from `path`, given as `key`); at least one.
pub fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CertificateFileError> {
    let bad = |detail: String| CertificateFileError::BadCertificates { key, path: path.to_path_buf(), detail };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("not valid PEM: {error}")))?;
    if chain.is_empty() {
        return Err(bad("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(chain)
}

/// The CA certificates in the file at `path` (given as `key`), read now,
/// each checked usable as a trust anchor.
pub fn ca_certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateFileError> {
    let found = certificates(key, path, &read_file(key, path)?)?;
    let mut roots = RootCertStore::empty();
    for certificate in &found {
        roots.add(certificate.clone()).map_err(|error| CertificateFileError::BadCertificates {
            key,
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate: {error}"),
        })?;
    }
    Ok(found)
}

/// The usable roots of the platform's trust store (`rustls-native-certs`: on
/// Linux the system's bundle, e.g. `/etc/ssl/certs`, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), read now; an error naming `key` (the CA file setting that
/// would replace it) when there is none.
pub fn platform_certificates(key: &'static str) -> Result<Vec<CertificateDer<'static>>, CertificateFileError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let usable: Vec<_> = found.certs.into_iter().filter(|certificate| roots.add(certificate.clone()).is_ok()).collect();
    if usable.is_empty() {
        let detail = match found.errors.first() {
            Some(error) => format!(" ({error})"),
            None => String::new(),
        };
        return Err(CertificateFileError::NoPlatformRoots { key, detail });
    }
    Ok(usable)
}

/// A rustls root store of `certificates` (checked usable already).
pub fn root_store(certificates: Vec<CertificateDer<'static>>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certificates);
    roots
}

/// The error of type `T` behind `error`, if any: clients wrap the TLS
/// library's error in their own, and tokio-rustls in an `io::Error` (whose
/// `source` skips it).
pub fn find_cause<'e, T: std::error::Error + 'static>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = match error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => error.source(),
        };
    }
    None
}
