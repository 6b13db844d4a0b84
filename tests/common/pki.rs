//! Certificates made at test time with rcgen (ring, as rustls here): CAs and
//! server certificates written as PEM files, for the TLS tests of MQTT and
//! InfluxDB.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A self-signed CA named `name`.
pub fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes a server certificate for `names` (host names or IP addresses)
/// signed by `issuer` to `cert_file`, and its key to `key_file`, readable by
/// everyone: a server started by root may run as its own user (Mosquitto does).
pub fn write_server_certificate(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    cert_file: &Path,
    key_file: &Path,
) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
    let certificate = params.signed_by(&key, issuer).unwrap();
    std::fs::write(cert_file, certificate.pem()).unwrap();
    std::fs::write(key_file, key.serialize_pem()).unwrap();
    set_mode(key_file, 0o644);
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
